#!/usr/bin/env bash
# Every GPU test and benchmark, as one run for a machine with an NVIDIA GPU.
#
#   scripts/gpu-check.sh build     here (needs cargo): release test binaries into target/gpu-check/
#   scripts/gpu-check.sh run       on the GPU machine (needs no cargo): runs them, < 8 minutes
#
# The GPU machines this project is lent have the NVIDIA driver but no Rust toolchain and no
# network, so the binaries travel: `build` writes stripped release binaries (the aitbc-cuda test
# suite, the worker's unit tests and aitbc-miner) to target/gpu-check/ (about 20 MiB, under the
# device tool's 64 MiB carry limit). `run` prints the device and the driver, then runs:
#   1. aitbc-cuda's GPU tests: the chain's known answers on both GEMM paths, chunked streaming,
#      the device's input generator, determinism, the VRAM cap (the host emulation of the same
#      kernels runs in CI, from source paths this machine does not have);
#   2. the worker's GPU tests: run_gpu's commitment is protocol's, a job over its cap is refused;
#   3. aitbc-miner bench --gpu, n=1024/4096: the whole GPU worker path, its hash against the CPU's;
#   4. the int8 throughput benchmark per GEMM path (n = 1024, 4096, 8192).
# A test that prints "SKIP: no NVIDIA GPU" on a machine where nvidia-smi sees one is a failure.
# Output goes to stdout and, when $OUT is set (the device tool), to $OUT/gpu-check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check

build() {
  rm -rf "$dir" && mkdir -p "$dir"
  local json
  json=$(cargo test --release --locked -p aitbc-cuda -p aitbc-worker --no-run --message-format=json 2>/dev/null)
  pick() { # target name, kind -> the test executable
    jq -r --arg name "$1" --arg kind "$2" \
      'select(.reason == "compiler-artifact" and .target.name == $name and (.target.kind | index($kind)) and .profile.test) | .executable' \
      <<<"$json" | tail -1
  }
  cp "$(pick suite test)" "$dir/cuda_suite"
  cp "$(pick aitbc_worker lib)" "$dir/worker_lib"
  cargo build --release --locked --bin aitbc-miner
  cp target/release/aitbc-miner "$dir/aitbc-miner"
  strip "$dir"/*
  ls -l "$dir"
}

run() {
  local log=${OUT:+$OUT/gpu-check.log}
  if [ -n "$log" ]; then exec > >(tee "$log") 2>&1; fi
  local failed=0 t0=$SECONDS
  step() { printf '\n=== %s (%ds)\n' "$1" $((SECONDS - t0)); }
  check() { # name, timeout seconds, command...
    local name=$1 limit=$2 out rc=0
    shift 2
    out=$(timeout "$limit" "$@" 2>&1) || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ]; then
      echo "FAILED: $name (exit $rc)"
      failed=1
    elif [ "$gpu" = 1 ] && grep -q "SKIP: no NVIDIA GPU" <<<"$out"; then
      echo "FAILED: $name skipped its GPU tests on a machine with a GPU"
      failed=1
    fi
  }
  step "device"
  gpu=0
  if nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader; then
    gpu=1
  fi
  nvidia-smi --query-gpu=cuda_version --format=csv,noheader 2>/dev/null || true
  uname -r
  export RUST_BACKTRACE=1 GGML_NO_BACKTRACE=1
  step "aitbc-cuda GPU tests"
  check cuda_gpu 180 "$dir/cuda_suite" gpu:: --test-threads 1 --nocapture
  step "worker GPU tests"
  check worker_gpu 120 "$dir/worker_lib" workload::torch_bench::gpu --test-threads 1 --nocapture
  step "aitbc-miner bench --gpu against the CPU's hash"
  for n in 1024 4096; do
    local params="{\"n\":$n,\"iters\":20,\"seed\":7}" g c
    g=$(timeout 120 "$dir/aitbc-miner" bench --gpu --workload torch_bench --params "$params" --json 2>&1) || {
      echo "$g"; echo "FAILED: bench --gpu n=$n"; failed=1; continue; }
    c=$(timeout 120 "$dir/aitbc-miner" bench --workload torch_bench --params "$params" --json 2>&1) || true
    echo "gpu: $g"
    echo "cpu: $c"
    if [ "$(jq -r .output_sha <<<"$g" 2>/dev/null)" != "$(jq -r .output_sha <<<"$c" 2>/dev/null)" ]; then
      echo "FAILED: n=$n: the GPU's output_sha is not the CPU's"
      failed=1
    fi
  done
  step "int8 throughput per GEMM path"
  check gpu_throughput 150 "$dir/cuda_suite" --ignored --exact gpu::gpu_throughput --nocapture
  step "done in $((SECONDS - t0)) s"
  [ "$failed" -eq 0 ] && echo "gpu-check: all passed" || echo "gpu-check: FAILED"
  return "$failed"
}

case "${1:-}" in
  build) build ;;
  run) run ;;
  *) echo "usage: $0 build|run" >&2; exit 2 ;;
esac

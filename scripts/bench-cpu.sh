#!/usr/bin/env bash
# CPU throughput through the whole worker path: `aitbc-miner bench` (a pre-started worker
# process, the wire protocol, the chain, the SHA-256) beside numpy doing the same chain, in
# the same run, alternating, best of N each. numpy runs without OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE (they slow a current OpenBLAS). Needs numpy: it is installed into
# .venv-bench on first use.
# Usage: scripts/bench-cpu.sh [n] [iters] [reps]   (default 1024 100 3)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1024} iters=${2:-100} reps=${3:-3}
if [ ! -x .venv-bench/bin/python ] || ! .venv-bench/bin/python -c 'import numpy' 2>/dev/null; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q numpy
fi
cargo build --release --quiet --bin aitbc-miner
params="{\"n\":$n,\"iters\":$iters}"
best_rust=0 best_np=0
for r in $(seq "$reps"); do
  g=$(./target/release/aitbc-miner bench --workload torch_bench --params "$params" --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["gflops"])')
  h=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv-bench/bin/python scripts/numpy_chain.py \
        --n "$n" --iters "$iters" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["gflops"])')
  printf 'rep %d: aitbc-miner bench %8.1f GFLOP/s   numpy %8.1f GFLOP/s\n' "$r" "$g" "$h"
  best_rust=$(python3 -c "print(max($best_rust, $g))")
  best_np=$(python3 -c "print(max($best_np, $h))")
done
python3 -c "print(f'best: aitbc-miner {$best_rust:.1f} GFLOP/s, numpy {$best_np:.1f} GFLOP/s, ratio {$best_rust/$best_np:.3f} (target >= 0.9)')"

#!/usr/bin/env bash
# CPU throughput through the whole worker path: `aitbc-miner bench` (a pre-started worker
# process, the wire protocol, the exact int8 chain, its SHA-256 and Merkle root) beside
# onnxruntime's MatMulInteger (u8 x s8, scripts/int8_baseline.py) at the same n and thread
# count, in the same run, alternating, best of N each. The bench's "gflops" field is int8
# Gop/s (2 n^3 per product). Needs onnxruntime: installed into target/venv-int8 on first use.
# Usage: scripts/bench-cpu.sh [n] [iters] [reps] [threads]   (default 1024 100 3 2)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1024} iters=${2:-100} reps=${3:-3} threads=${4:-2}
py=target/venv-int8/bin/python
if [ ! -x "$py" ] || ! "$py" -c 'import onnxruntime, onnx, numpy' 2>/dev/null; then
  python3 -m venv target/venv-int8
  "$py" -m pip install -q onnxruntime onnx numpy
fi
cargo build --release --quiet --bin aitbc-miner
params="{\"n\":$n,\"iters\":$iters}"
best_rust=0 best_ort=0
for r in $(seq "$reps"); do
  g=$(./target/release/aitbc-miner bench --workload torch_bench --params "$params" --json |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["gflops"])')
  h=$("$py" scripts/int8_baseline.py --n "$n" --threads "$threads" |
      python3 -c 'import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["gops"])')
  printf 'rep %d: aitbc-miner bench %8.1f Gop/s   onnxruntime %8.1f Gop/s\n' "$r" "$g" "$h"
  best_rust=$(python3 -c "print(max($best_rust, $g))")
  best_ort=$(python3 -c "print(max($best_ort, $h))")
done
python3 -c "print(f'best: aitbc-miner {$best_rust:.1f} Gop/s, onnxruntime {$best_ort:.1f} Gop/s, ratio {$best_rust/$best_ort:.3f} (target >= 0.9)')"

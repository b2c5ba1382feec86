#!/usr/bin/env python3
"""The int8 GEMM a user could install, for torch_bench's int8 chain to be measured against.

onnxruntime's MatMulInteger (its MLAS kernels: VNNI where the CPU has it) on n x n matrices,
uint8 x int8 -> int32 (the form vpdpbusd computes natively; s8 x s8 is far slower in MLAS),
with `--threads` intra-op threads. Prints one JSON line per size: the best and median time of
one product over `--reps` runs after a warm-up, and int8 Gop/s = 2 n^3 / best time.

Not a test: a benchmark baseline. worker/benches/torch_bench_cpu.rs runs it in the same run as
the Rust chain, alternating. Needs onnxruntime, onnx and numpy, e.g.

    python3 -m venv target/venv-int8
    target/venv-int8/bin/pip install onnxruntime onnx numpy

usage: scripts/int8_baseline.py [--n 1024[,2048...]] [--threads 2] [--reps 20] [--zero-point]
"""
import argparse
import json
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def model(n, zero_point):
    inputs = [
        helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]),
        helper.make_tensor_value_info("B", TensorProto.INT8, [n, n]),
    ]
    names = ["A", "B"]
    inits = []
    if zero_point:
        # The same correction the chain's kernels make: A stored as a + 128, zero point 128.
        inits.append(helper.make_tensor("a_zp", TensorProto.UINT8, [], [128]))
        names.append("a_zp")
    node = helper.make_node("MatMulInteger", names, ["C"])
    out = helper.make_tensor_value_info("C", TensorProto.INT32, [n, n])
    graph = helper.make_graph([node], "int8_gemm", inputs, [out], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


def bench(n, threads, reps, zero_point):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model(n, zero_point), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(n, n), dtype=np.uint8)
    b = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    feed = {"A": a, "B": b}
    c = sess.run(None, feed)[0]
    # A spot check that it computed the product: one row exactly, in int64.
    row = a[n // 2].astype(np.int64) - (128 if zero_point else 0)
    if not np.array_equal(c[n // 2].astype(np.int64), row @ b.astype(np.int64)):
        raise SystemExit("onnxruntime's MatMulInteger gave a wrong row")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "impl": "onnxruntime MatMulInteger u8 x s8" + (" zp=128" if zero_point else ""),
        "onnxruntime": ort.__version__,
        "n": n,
        "threads": threads,
        "reps": reps,
        "best_ms": best * 1e3,
        "median_ms": statistics.median(times) * 1e3,
        "gops": 2 * n**3 / best / 1e9,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1024", help="sizes, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--zero-point", action="store_true", help="a_zero_point = 128")
    args = ap.parse_args()
    for n in [int(x) for x in args.n.split(",")]:
        print(json.dumps(bench(n, args.threads, args.reps, args.zero_point)), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The torch_bench chain in numpy float32: the reference the Rust CPU worker is benchmarked against.

It follows the recipe documented in worker/src/torch_bench/input.rs and mod.rs exactly: inputs from
SplitMix64 keyed by (seed, matrix), generated vectorised; X_{k+1} = rescale(X_k @ W); SHA-256 of
X_iters as little-endian float32. It prints one JSON object:

    {"n", "iters", "seed", "gflops", "wall_ms", "inputs_sha", "output_sha", "fro", "numpy"}

where wall_ms times the products (with the rescale rule) only, inputs_sha is the SHA-256 of X_0's
bytes followed by W's, and fro is the Frobenius norm of X_iters (for a tolerance comparison: the
output hashes of two BLAS libraries need not agree bit for bit).

    python3 scripts/numpy_chain.py --n 1024 --iters 100 --seed 0
    python3 scripts/numpy_chain.py --input SEED MATRIX INDEX   # one element, pure Python ints

It never writes files and never touches the network. Needs numpy (pip install numpy).
"""

import argparse
import hashlib
import json
import sys
import time

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
RESCALE_LIMIT_LOG2 = 32


def mix_int(z):
    """SplitMix64's finaliser on a Python int (mod 2^64)."""
    z = ((z ^ (z >> 30)) * M1) & MASK
    z = ((z ^ (z >> 27)) * M2) & MASK
    return z ^ (z >> 31)


def stream_key(seed, matrix):
    return mix_int(seed ^ ((matrix * GAMMA) & MASK))


def input_one(seed, matrix, index):
    """Element `index` of matrix `matrix` (0 = X_0, 1 = W unscaled), without numpy."""
    import struct

    bits = mix_int((stream_key(seed, matrix) + (((index + 1) & MASK) * GAMMA)) & MASK)
    u = bits >> 40
    x = u / 8388608.0 - 1.0  # exact in binary64, and exactly representable in binary32
    return struct.unpack("<I", struct.pack("<f", x))[0], x


def inputs(np, seed, matrix, count):
    """Elements 0..count of a matrix as float32, vectorised (wrapping uint64 arithmetic)."""
    u64 = np.uint64
    key = u64(stream_key(seed, matrix))
    z = np.arange(1, count + 1, dtype=np.uint64)
    z *= u64(GAMMA)
    z += key
    z ^= z >> u64(30)
    z *= u64(M1)
    z ^= z >> u64(27)
    z *= u64(M2)
    z ^= z >> u64(31)
    z >>= u64(40)
    x = z.astype(np.float32)  # < 2^24: exact
    x *= np.float32(1.0 / 8388608.0)
    x -= np.float32(1.0)
    return x


def rescale_exponent(max_abs_bits):
    if max_abs_bits == 0:
        return None
    e = (max_abs_bits >> 23) - 127
    if -RESCALE_LIMIT_LOG2 <= e <= RESCALE_LIMIT_LOG2:
        return None
    return max(-126, min(126, -e))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", type=int, nargs=3, metavar=("SEED", "MATRIX", "INDEX"))
    a = ap.parse_args()

    if a.input:
        bits, x = input_one(*a.input)
        print(json.dumps({"bits": "0x%08x" % bits, "value": x}))
        return 0

    try:
        import numpy as np
    except ImportError:
        print("numpy_chain.py needs numpy: python3 -m venv .venv-bench && "
              ".venv-bench/bin/pip install numpy", file=sys.stderr)
        return 3

    n, iters, seed = a.n, a.iters, a.seed
    x = inputs(np, seed, 0, n * n).reshape(n, n)
    w = inputs(np, seed, 1, n * n)
    w *= np.float32(np.sqrt(3.0 / n))  # sqrt in binary64, rounded once to binary32
    w = w.reshape(n, n)
    inputs_sha = hashlib.sha256(x.astype("<f4").tobytes() + w.astype("<f4").tobytes()).hexdigest()

    nxt = np.empty_like(x)
    tmp = np.empty_like(x)
    np.matmul(x, w, out=tmp)  # warm-up: BLAS thread start and first-touch, not timed
    start = time.perf_counter()
    for _ in range(iters):
        np.matmul(x, w, out=nxt)
        np.abs(nxt, out=tmp)
        m = int(tmp.max().view(np.uint32))
        if m >= 0x7F800000:
            print("the chain went non-finite", file=sys.stderr)
            return 1
        k = rescale_exponent(m)
        if k is not None:
            nxt *= np.float32(2.0 ** k)
        x, nxt = nxt, x
    wall = time.perf_counter() - start

    out = {
        "n": n,
        "iters": iters,
        "seed": seed,
        "gflops": 2.0 * n ** 3 * iters / wall / 1e9,
        "wall_ms": wall * 1e3,
        "inputs_sha": inputs_sha,
        "output_sha": hashlib.sha256(x.astype("<f4").tobytes()).hexdigest(),
        "fro": float(np.linalg.norm(x.astype(np.float64))),
        "numpy": np.__version__,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""torch_bench's exact int8 chain, written again from its specification in plain Python.

An independent check of protocol/src/workload/torch_bench.rs: it shares no code with the Rust
implementation, only the recipe (docs/api.md, the module docs). It prints, for each
(n, iters, seed), the output's SHA-256 and the RFC 9162 Merkle root over its rows, which must
equal protocol's KNOWN_ANSWERS. Plain loops: meant for small n.

usage: scripts/int8_chain.py N ITERS SEED [N ITERS SEED ...]
"""
import hashlib
import sys

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1
GAMMA = 0x9E3779B97F4A7C15


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def as_i8(byte):
    return byte - 256 if byte >= 128 else byte


def matrix(seed, m, n):
    key = mix(seed ^ ((m * GAMMA) & M64))
    return [as_i8(mix((key + (i + 1) * GAMMA) & M64) >> 56) for i in range(n * n)]


def requant(c):
    return as_i8(((((c & M32) + 0x7F4A7C15) & M32) * 0x9E3779B1 & M32) >> 24)


def chain(n, iters, seed):
    a = matrix(seed, 0, n)
    b = matrix(seed, 1, n)
    cols = [[b[t * n + j] for t in range(n)] for j in range(n)]
    for _ in range(iters):
        nxt = []
        for i in range(n):
            row = a[i * n:(i + 1) * n]
            for j in range(n):
                nxt.append(requant(sum(x * y for x, y in zip(row, cols[j]))))
        a = nxt
    return bytes(x & 0xFF for x in a)


def mth(leaves):
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def main(args):
    if not args or len(args) % 3:
        sys.exit(__doc__)
    for i in range(0, len(args), 3):
        n, iters, seed = int(args[i]), int(args[i + 1]), int(args[i + 2])
        out = chain(n, iters, seed)
        rows = [out[r * n:(r + 1) * n] for r in range(n)]
        print(n, iters, seed, hashlib.sha256(out).hexdigest(), mth(rows).hex())


if __name__ == "__main__":
    main(sys.argv[1:])

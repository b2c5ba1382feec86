//! torch_bench as an exact integer chain: the specification every implementation (the CPU
//! kernels, the GPU kernels, a verifier recomputing a few rows) must reproduce bit for bit, and
//! its plain reference.
//!
//! # The chain
//!
//! A job with params `(n, iters, seed)` computes, over `n x n` matrices of `i8` stored
//! row-major,
//!
//! ```text
//! A_0 = input(seed, 0)          B = input(seed, 1)
//! C_k = A_k . B                 exact in i32 (sum over t of A_k[i][t] * B[t][j])
//! A_{k+1}[i][j] = requant(C_k[i][j])          for k = 0 .. iters-1
//! output = A_iters, n*n bytes (each i8 as its two's-complement byte), rows in order
//! ```
//!
//! * **Inputs** ([`element`]): element `index = row * n + col` of matrix `m` is the top 8 bits of
//!   `mix(key + (index + 1) * γ)` with `key = mix(seed ^ m * γ)`, as an `i8` (all 256 values,
//!   uniform). `mix` is SplitMix64's finaliser, `γ = 0x9E37_79B9_7F4A_7C15`, all `u64`
//!   arithmetic wrapping. Counter-based: any element can be made alone, in any order.
//! * **Products** are exact: `|C| <= n * 128 * 128 <= 2^28` for `n <= MAX_N = 16384`, far
//!   inside `i32`, so the order of the sum does not matter: any blocking, any thread count,
//!   any SIMD width, the CPU and the GPU give the same `C`. (A kernel may compute with the
//!   unsigned form `(a + 128) * b` and subtract `128 * sum(b)`; that too stays exact.)
//! * **Requantization** ([`requant`]): `((c as u32 + 0x7F4A_7C15) * 0x9E37_79B1) >> 24` as an
//!   `i8`, wrapping `u32` arithmetic: the top byte of an odd multiple, so every bit of `c`
//!   reaches it. It is not a numerical rounding on purpose: the chain cannot settle into a fixed
//!   point or a zero matrix, so no step can be skipped by guessing.
//! * **Rows are independent**: row `i` of `A_{k+1}` depends only on row `i` of `A_k` and on `B`,
//!   so a verifier recomputes one output row with `iters * n^2` multiply-adds ([`output_row`]).
//!
//! # The commitment
//!
//! The proof carries `output_sha = SHA-256(output)` and the [`crate::merkle`] root over the
//! output rows (leaf `i` = the `n` bytes of row `i`), so an audit can ask for single rows and
//! check each with its inclusion proof ([`commit`]).
//!
//! Known answers ([`KNOWN_ANSWERS`]) pin the recipe; `scripts/int8_chain.py` computes them
//! independently in plain Python. Pure: no I/O, no floating point, nothing host-specific.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{bad, Needs, PlanError};
use crate::merkle::{self, Digest};

/// `torch_bench`: a chain of `iters` exact n x n int8 matrix products with int32 accumulation
/// and an integer requantization between them, from inputs drawn from `seed`
/// ([this module](self) specifies it). The output is the final n x n int8 matrix, the same bytes on
/// every machine.
#[derive(Serialize, Deserialize, Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TorchBenchParams {
    #[serde(default = "TorchBenchParams::default_n")]
    pub n: u32,
    #[serde(default = "TorchBenchParams::default_iters")]
    pub iters: u32,
    #[serde(default)]
    pub seed: u64,
}

impl TorchBenchParams {
    /// The guide's chain: 1024 x 1024, 100 products.
    pub const DEFAULT_N: u32 = 1024;
    pub const DEFAULT_ITERS: u32 = 100;
    pub const MAX_N: u32 = 16384;
    pub const MAX_ITERS: u32 = 100_000;
    /// Resident memory a worker needs besides the matrices (code, stacks, allocator slack).
    pub const OVERHEAD_MB: u64 = 32;
    /// The workspace the GPU chain hands cuBLAS (`cublasSetWorkspace`, NVIDIA's recommendation
    /// for Hopper), so that cuBLAS allocates nothing of its own during a job.
    pub const GPU_CUBLAS_WORKSPACE_BYTES: u64 = 32 << 20;
    /// The GPU chain's device state besides its matrices (reserved for flags and counters).
    pub const GPU_STATE_BYTES: u64 = 16;

    /// The params of a submission: a JSON object of `n`, `iters` and `seed` (each optional;
    /// `null` means all defaults), each a whole number in its range. A refusal names the field
    /// and the value.
    pub fn parse(params: &Value) -> Result<TorchBenchParams, PlanError> {
        let obj = match params {
            Value::Null => return Ok(TorchBenchParams::default()),
            Value::Object(o) => o,
            other => return Err(bad("params", other, "must be a JSON object")),
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "n" | "iters" | "seed") {
                return Err(bad(
                    &format!("params.{key}"),
                    &obj[key],
                    "unknown parameter (torch_bench takes n, iters, seed)",
                ));
            }
        }
        let int = |field: &str, default: u64, min: u64, max: u64| -> Result<u64, PlanError> {
            match obj.get(field) {
                None => Ok(default),
                Some(v) => match v.as_u64() {
                    Some(x) if (min..=max).contains(&x) => Ok(x),
                    _ => Err(bad(
                        &format!("params.{field}"),
                        v,
                        &format!("expected a whole number from {min} to {max}"),
                    )),
                },
            }
        };
        Ok(TorchBenchParams {
            n: int(
                "n",
                TorchBenchParams::DEFAULT_N.into(),
                1,
                TorchBenchParams::MAX_N.into(),
            )? as u32,
            iters: int(
                "iters",
                TorchBenchParams::DEFAULT_ITERS.into(),
                1,
                TorchBenchParams::MAX_ITERS.into(),
            )? as u32,
            seed: int("seed", 0, 0, u64::MAX)?,
        })
    }

    fn default_n() -> u32 {
        Self::DEFAULT_N
    }
    fn default_iters() -> u32 {
        Self::DEFAULT_ITERS
    }

    /// Bytes of one n x n int8 matrix.
    pub fn matrix_bytes(&self) -> u64 {
        u64::from(self.n) * u64::from(self.n)
    }

    /// Memory the job needs on the host (CPU path), in MiB rounded up: `A`, the next `A` and
    /// `B` as int8, room for one n x n int32 buffer (a packed copy of `B` or the products), plus
    /// overhead. The CPU kernels must stay within it.
    pub fn memory_mb(&self) -> u64 {
        (7 * self.matrix_bytes()).div_ceil(1 << 20) + Self::OVERHEAD_MB
    }

    /// Device memory the GPU chain allocates (`aitbc-cuda`'s `Gpu::run_chain`), in bytes: the
    /// one formula the Coordinator, the supervisor, the worker and the CUDA crate share. See
    /// [`TorchBenchParams::vram_bytes_for`].
    pub fn vram_bytes(&self) -> u64 {
        Self::vram_bytes_for(self.n, true)
    }

    /// [`TorchBenchParams::vram_bytes`] in MiB, rounded up: the least `vram_mb` a GPU job of
    /// these params may be given.
    pub fn vram_mb(&self) -> u64 {
        self.vram_bytes().div_ceil(1 << 20)
    }

    /// What the GPU chain of size `n` allocates on the device, exactly: `A` and `B` as int8 and
    /// the int32 product buffer (`6n²` bytes), the chain's [`TorchBenchParams::GPU_STATE_BYTES`] and, when
    /// cuBLAS computes the products, its [`TorchBenchParams::GPU_CUBLAS_WORKSPACE_BYTES`] (the
    /// own-kernel path allocates that much less). Saturating: no `n` wraps. Not counted: the
    /// CUDA context itself (a driver-dependent few hundred MiB per process), which NVML's
    /// per-process figure includes.
    pub fn vram_bytes_for(n: u32, cublas: bool) -> u64 {
        let matrix = u64::from(n).saturating_mul(u64::from(n));
        let workspace = if cublas {
            Self::GPU_CUBLAS_WORKSPACE_BYTES
        } else {
            0
        };
        matrix
            .saturating_mul(6)
            .saturating_add(Self::GPU_STATE_BYTES)
            .saturating_add(workspace)
    }

    /// Operations of the chain (int8 multiplies and adds): `2 n^3` per product.
    pub fn flops(&self) -> u64 {
        2 * u64::from(self.n).pow(3) * u64::from(self.iters)
    }

    /// Length of the hashed output in bytes: the final n x n int8 matrix.
    pub fn output_len(&self) -> u64 {
        self.matrix_bytes()
    }
}

impl Needs for TorchBenchParams {
    fn memory_mb(&self) -> u64 {
        TorchBenchParams::memory_mb(self)
    }
    fn vram_mb(&self) -> u64 {
        TorchBenchParams::vram_mb(self)
    }
    fn flops(&self) -> u64 {
        TorchBenchParams::flops(self)
    }
    fn output_len(&self) -> u64 {
        TorchBenchParams::output_len(self)
    }
    fn describe(&self) -> String {
        format!(
            "torch_bench n={} iters={} seed={}",
            self.n, self.iters, self.seed
        )
    }
}

impl Default for TorchBenchParams {
    fn default() -> Self {
        TorchBenchParams {
            n: Self::DEFAULT_N,
            iters: Self::DEFAULT_ITERS,
            seed: 0,
        }
    }
}

/// SplitMix64's increment, the golden ratio in 64-bit fixed point.
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// Matrix number of `A_0` in [`element`].
pub const MATRIX_A0: u32 = 0;
/// Matrix number of `B` in [`element`].
pub const MATRIX_B: u32 = 1;

/// SplitMix64's output function (Steele, Lea & Flood 2014; the constants of Vigna's
/// `splitmix64.c`).
#[inline]
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 state that generates matrix `matrix` of a job with seed `seed`.
#[inline]
pub const fn stream_key(seed: u64, matrix: u32) -> u64 {
    mix(seed ^ (matrix as u64).wrapping_mul(GAMMA))
}

/// Element `index` (row-major) of matrix `matrix` from its stream key ([`stream_key`]).
#[inline]
pub const fn element_of(key: u64, index: u64) -> i8 {
    (mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))) >> 56) as u8 as i8
}

/// Element `index` (row-major) of matrix `matrix` of a job with seed `seed`.
#[inline]
pub const fn element(seed: u64, matrix: u32, index: u64) -> i8 {
    element_of(stream_key(seed, matrix), index)
}

/// An exact product's value back to `i8` (see the module docs).
#[inline]
pub const fn requant(c: i32) -> i8 {
    ((c as u32)
        .wrapping_add(0x7F4A_7C15)
        .wrapping_mul(0x9E37_79B1)
        >> 24) as u8 as i8
}

/// Row `row` of input matrix `matrix` (`n` elements).
pub fn input_row(seed: u64, matrix: u32, n: usize, row: usize) -> Vec<i8> {
    let key = stream_key(seed, matrix);
    let start = (row as u64) * (n as u64);
    (0..n as u64).map(|c| element_of(key, start + c)).collect()
}

/// The whole input matrix `matrix` (`n * n` elements, row-major).
pub fn input(seed: u64, matrix: u32, n: usize) -> Vec<i8> {
    let key = stream_key(seed, matrix);
    (0..(n as u64) * (n as u64))
        .map(|i| element_of(key, i))
        .collect()
}

/// One step of one row, in plain loops: `out[j] = requant(sum_t a[t] * b[t][j])`.
/// `b` is `n x n` row-major, `a` and `out` have `n` elements.
pub fn step_row(a: &[i8], b: &[i8], out: &mut [i8]) {
    let n = a.len();
    let mut acc = vec![0i32; n];
    for (t, &x) in a.iter().enumerate() {
        let x = i32::from(x);
        for (s, &y) in acc.iter_mut().zip(&b[t * n..(t + 1) * n]) {
            *s += x * i32::from(y);
        }
    }
    for (o, s) in out.iter_mut().zip(acc) {
        *o = requant(s);
    }
}

/// Output row `row` of the chain, given `B` (`input(seed, MATRIX_B, n)`): what a verifier
/// recomputes to check one opened row, with `iters * n^2` multiply-adds.
pub fn output_row(p: &TorchBenchParams, b: &[i8], row: usize) -> Vec<i8> {
    let n = p.n as usize;
    let mut a = input_row(p.seed, MATRIX_A0, n, row);
    let mut next = vec![0i8; n];
    for _ in 0..p.iters {
        step_row(&a, b, &mut next);
        std::mem::swap(&mut a, &mut next);
    }
    a
}

/// Output rows `rows` (each `< n`) of the chain, in the order given: what an audit opens, and
/// what both its verifier and the miner answering it recompute. The same bytes as
/// [`output_row`] for each (the tests compare them), fast enough that opening `k` rows costs a
/// small fraction of the job (`k * iters * n^2` multiply-adds against `iters * n^3`): the
/// product runs as dot products of the rows with the columns of `B` (drawn transposed, so it
/// holds `n^2` bytes besides the rows), four
/// rows by two columns at a time so each load serves several products, compiled for the
/// baseline and for AVX2 and chosen at run time. Integer arithmetic throughout, so every path
/// gives the same bytes; only the speed is host-specific.
pub fn output_rows(p: &TorchBenchParams, rows: &[usize]) -> Vec<Vec<i8>> {
    let n = p.n as usize;
    let bt = transposed_b(p.seed, n);
    // Padded to a multiple of four rows; the padding rows are computed and dropped.
    let padded = rows.len().div_ceil(4) * 4;
    let mut a: Vec<Vec<i8>> = (0..padded)
        .map(|i| input_row(p.seed, MATRIX_A0, n, rows.get(i).copied().unwrap_or(0)))
        .collect();
    let mut next = vec![vec![0i8; n]; padded];
    for _ in 0..p.iters {
        step(&a, &bt, n, &mut next);
        std::mem::swap(&mut a, &mut next);
    }
    a.truncate(rows.len());
    a
}

/// `B` transposed (`bt[j * n + t] = B[t][j]`), drawn straight from the counter-based inputs
/// in 64 x 64 tiles (the draws in row order within a tile, the writes within the tile), so
/// only one `n x n` matrix is ever held.
fn transposed_b(seed: u64, n: usize) -> Vec<i8> {
    const T: usize = 64;
    let key = stream_key(seed, MATRIX_B);
    let mut bt = vec![0i8; n * n];
    for t0 in (0..n).step_by(T) {
        for j0 in (0..n).step_by(T) {
            for t in t0..(t0 + T).min(n) {
                for j in j0..(j0 + T).min(n) {
                    bt[j * n + t] = element_of(key, (t * n + j) as u64);
                }
            }
        }
    }
    bt
}

/// One step of the chain for `a.len()` (a multiple of 4) rows: `out[r][j] =
/// requant(a[r] . column j of B)`.
fn step(a: &[Vec<i8>], bt: &[i8], n: usize, out: &mut [Vec<i8>]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only requirement of
        // `step_avx2`'s target feature; its body is safe Rust.
        unsafe { step_avx2(a, bt, n, out) };
        return;
    }
    step_portable(a, bt, n, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn step_avx2(a: &[Vec<i8>], bt: &[i8], n: usize, out: &mut [Vec<i8>]) {
    step_portable(a, bt, n, out);
}

#[inline(always)]
fn step_portable(a: &[Vec<i8>], bt: &[i8], n: usize, out: &mut [Vec<i8>]) {
    let pairs = n / 2;
    for jj in 0..pairs {
        let (c0, c1) = (
            &bt[2 * jj * n..(2 * jj + 1) * n],
            &bt[(2 * jj + 1) * n..(2 * jj + 2) * n],
        );
        for (ra, ro) in a.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            let s = dot4x2([&ra[0], &ra[1], &ra[2], &ra[3]], c0, c1);
            for k in 0..4 {
                ro[k][2 * jj] = requant(s[0][k]);
                ro[k][2 * jj + 1] = requant(s[1][k]);
            }
        }
    }
    if n % 2 == 1 {
        let c = &bt[(n - 1) * n..n * n];
        for (r, o) in a.iter().zip(out.iter_mut()) {
            o[n - 1] = requant(
                r.iter()
                    .zip(c)
                    .map(|(&x, &y)| i32::from(x) * i32::from(y))
                    .sum(),
            );
        }
    }
}

/// Four rows against two columns: eight exact i32 dot products in one pass over `t`.
#[inline(always)]
fn dot4x2(a: [&[i8]; 4], b0: &[i8], b1: &[i8]) -> [[i32; 4]; 2] {
    let n = b0.len();
    let (a0, a1, a2, a3, b1) = (&a[0][..n], &a[1][..n], &a[2][..n], &a[3][..n], &b1[..n]);
    let mut s = [[0i32; 4]; 2];
    for t in 0..n {
        let (y0, y1) = (i32::from(b0[t]), i32::from(b1[t]));
        let x = [
            i32::from(a0[t]),
            i32::from(a1[t]),
            i32::from(a2[t]),
            i32::from(a3[t]),
        ];
        for r in 0..4 {
            s[0][r] += x[r] * y0;
            s[1][r] += x[r] * y1;
        }
    }
    s
}

/// Why an opened row does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpeningFault {
    #[error("row {index} is not a row of an {n} x {n} output")]
    NoSuchRow { index: u64, n: u32 },
    #[error("row {index} has {got} bytes, not {n}")]
    WrongLength { index: u64, got: usize, n: u32 },
    #[error("row {index}'s audit path does not lead to the proof's merkle_root")]
    NotCommitted { index: u64 },
    #[error("row {index} is committed but is not the chain's row {index} (first wrong byte at column {column})")]
    WrongRow { index: u64, column: usize },
}

/// Checks one opened row against a proof: it is row `index` of the tree under `root` (its
/// `path` leads there), and it equals `expected`, the row the chain gives
/// ([`output_rows`]). The verifier's whole decision about one row; pure.
pub fn check_opening(
    p: &TorchBenchParams,
    root: &Digest,
    index: u64,
    row: &[u8],
    path: &[Digest],
    expected: &[i8],
) -> Result<(), OpeningFault> {
    if index >= u64::from(p.n) {
        return Err(OpeningFault::NoSuchRow { index, n: p.n });
    }
    if row.len() != p.n as usize {
        return Err(OpeningFault::WrongLength {
            index,
            got: row.len(),
            n: p.n,
        });
    }
    if !merkle::verify(root, u64::from(p.n), index, &merkle::leaf_hash(row), path) {
        return Err(OpeningFault::NotCommitted { index });
    }
    match row.iter().zip(expected).position(|(&x, &y)| x != y as u8) {
        Some(column) => Err(OpeningFault::WrongRow { index, column }),
        None if expected.len() == row.len() => Ok(()),
        None => Err(OpeningFault::WrongRow {
            index,
            column: expected.len().min(row.len()),
        }),
    }
}

/// The whole output, row by row in plain loops: the reference for small `n` (it costs
/// `iters * n^3` multiply-adds, with no blocking or SIMD to get wrong).
pub fn reference_output(p: &TorchBenchParams) -> Vec<i8> {
    let n = p.n as usize;
    let b = input(p.seed, MATRIX_B, n);
    (0..n).flat_map(|row| output_row(p, &b, row)).collect()
}

/// A row's bytes: each `i8` as its two's-complement byte.
pub fn row_bytes(row: &[i8]) -> Vec<u8> {
    row.iter().map(|&x| x as u8).collect()
}

/// What a proof commits to: the SHA-256 of the whole output and the Merkle root over its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commitment {
    pub output_sha: Digest,
    pub merkle_root: Digest,
}

/// The leaf hash of one output row (`n` elements).
pub fn row_leaf(row: &[i8]) -> Digest {
    merkle::leaf_hash(&row_bytes(row))
}

/// The commitment to an `n x n` output (`None` unless it has `n * n >= 1` elements).
pub fn commit(output: &[i8], n: usize) -> Option<Commitment> {
    let mut c = Committer::new(n);
    c.push_rows(output)?;
    c.finish()
}

/// [`commit`] for an output that arrives in pieces of whole rows (a GPU's chunks, a CPU's
/// row blocks), in order: the same commitment, without holding the whole output.
#[derive(Clone, Debug)]
pub struct Committer {
    n: usize,
    sha: Sha256,
    leaves: Vec<Digest>,
}

impl Committer {
    pub fn new(n: usize) -> Committer {
        Committer {
            n,
            sha: Sha256::new(),
            leaves: Vec::with_capacity(n),
        }
    }

    /// Adds the next rows; `None` (and nothing added) unless `rows` is whole rows that fit.
    pub fn push_rows(&mut self, rows: &[i8]) -> Option<()> {
        if self.n == 0
            || !rows.len().is_multiple_of(self.n)
            || self.leaves.len() + rows.len() / self.n > self.n
        {
            return None;
        }
        for row in rows.chunks(self.n) {
            let b = row_bytes(row);
            self.sha.update(&b);
            self.leaves.push(merkle::leaf_hash(&b));
        }
        Some(())
    }

    /// [`Committer::push_rows`] for rows given as their bytes (each `i8` as its byte).
    pub fn push_row_bytes(&mut self, rows: &[u8]) -> Option<()> {
        let rows: Vec<i8> = rows.iter().map(|&b| b as i8).collect();
        self.push_rows(&rows)
    }

    /// The commitment, once all `n` rows are in (`None` before).
    pub fn finish(self) -> Option<Commitment> {
        self.finish_with_leaves().map(|(c, _)| c)
    }

    /// [`Committer::finish`] and the row leaves the root is over: what a miner keeps to
    /// answer an audit (`32 n` bytes; an opened row is recomputed, its path built from these).
    pub fn finish_with_leaves(self) -> Option<(Commitment, Vec<Digest>)> {
        if self.n == 0 || self.leaves.len() != self.n {
            return None;
        }
        let merkle_root = merkle::root(&self.leaves)?;
        Some((
            Commitment {
                output_sha: self.sha.finalize().into(),
                merkle_root,
            },
            self.leaves,
        ))
    }
}

/// Published known answers: `(n, iters, seed, output_sha hex, merkle_root hex)`. Computed by
/// [`reference_output`] and, independently, by `scripts/int8_chain.py`.
pub const KNOWN_ANSWERS: &[(u32, u32, u64, &str, &str)] = &[
    (
        1,
        100,
        7,
        "7ace431cb61584cb9b8dc7ec08cf38ac0a2d649660be86d349fb43108b542fa4",
        "0d1abbe3b9da7a48d463edb0a844f3a102dcf7fdea35f9c771d885027b31b322",
    ),
    (
        7,
        3,
        1,
        "e818027674832b7d7a3814867f83fd0ab3d311350732693edd85453b470804fd",
        "cfdf57f087e3d47806673aa7cbaceaa47a22454a0ee75443bb2bf4a565d68bb6",
    ),
    (
        33,
        5,
        2026,
        "df4129701f4afdfa30deb11404b117d6d26deca58a52052524dfc2be2e0102f3",
        "497ba082d279e68121151d2c01c046d6b85782a0395d84b2b2964f98d0b87404",
    ),
    (
        64,
        2,
        42,
        "b2f6f1a4050fa22e0e87395405e55397fb7682daf205476b10f7c5618c9698e7",
        "6efcfc150c90ffdf15bd2bad978b9de34a4c49fd1953d951dd6490c0d98178ef",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FailReason, JobLimits};
    use crate::workload::WorkloadSpec;
    use serde_json::json;

    fn p(n: u32, iters: u32, seed: u64) -> TorchBenchParams {
        TorchBenchParams { n, iters, seed }
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The fast rows are the plain reference's bytes, for odd and even n, every row count
    /// (padding), repeated rows, and both code paths.
    #[test]
    fn equals_the_reference_on_every_path() {
        for (n, iters, seed) in [(1u32, 3u32, 1u64), (7, 3, 2), (33, 5, 2026), (64, 2, 42)] {
            let p = TorchBenchParams { n, iters, seed };
            let b = input(seed, MATRIX_B, n as usize);
            for k in 0..=9usize {
                let rows: Vec<usize> = (0..k).map(|i| (i * 5 + 3) % n as usize).collect();
                let want = rows
                    .iter()
                    .map(|&r| output_row(&p, &b, r))
                    .collect::<Vec<_>>();
                assert_eq!(output_rows(&p, &rows), want, "n={n} k={k}");
            }
            // The portable path alone, where the dispatch would pick AVX2.
            let rows = [0usize, n as usize - 1, 0, n as usize / 2];
            let bt = transposed_b(seed, n as usize);
            let mut a: Vec<Vec<i8>> = rows
                .iter()
                .map(|&r| input_row(seed, MATRIX_A0, n as usize, r))
                .collect();
            let mut next = vec![vec![0i8; n as usize]; 4];
            for _ in 0..iters {
                step_portable(&a, &bt, n as usize, &mut next);
                std::mem::swap(&mut a, &mut next);
            }
            assert_eq!(
                a,
                rows.iter()
                    .map(|&r| output_row(&p, &b, r))
                    .collect::<Vec<_>>(),
                "portable n={n}"
            );
        }
    }

    #[test]
    fn batched_rows_equal_single_rows_and_openings_check_all_three_ways() {
        let q = p(33, 5, 2026);
        let b = input(q.seed, MATRIX_B, 33);
        let out = reference_output(&q);
        let rows = [32usize, 0, 7, 7];
        for (r, got) in rows.iter().zip(output_rows(&q, &rows)) {
            assert_eq!(got, output_row(&q, &b, *r));
            assert_eq!(got, out[r * 33..(r + 1) * 33]);
        }
        let leaves: Vec<Digest> = out.chunks(33).map(row_leaf).collect();
        let root = merkle::root(&leaves).unwrap();
        let path = merkle::inclusion_proof(&leaves, 7).unwrap();
        let expected = output_row(&q, &b, 7);
        let row = row_bytes(&out[7 * 33..8 * 33]);
        assert_eq!(check_opening(&q, &root, 7, &row, &path, &expected), Ok(()));
        // A committed row that is wrong: a tree over a forged output.
        let mut forged = out.clone();
        forged[7 * 33 + 4] ^= 1;
        let fl: Vec<Digest> = forged.chunks(33).map(row_leaf).collect();
        let froot = merkle::root(&fl).unwrap();
        let fpath = merkle::inclusion_proof(&fl, 7).unwrap();
        let frow = row_bytes(&forged[7 * 33..8 * 33]);
        assert_eq!(
            check_opening(&q, &froot, 7, &frow, &fpath, &expected),
            Err(OpeningFault::WrongRow {
                index: 7,
                column: 4
            })
        );
        // The right row under the wrong path, or as another index.
        assert_eq!(
            check_opening(&q, &root, 8, &row, &path, &expected),
            Err(OpeningFault::NotCommitted { index: 8 })
        );
        assert_eq!(
            check_opening(&q, &froot, 7, &row, &fpath, &expected),
            Err(OpeningFault::NotCommitted { index: 7 })
        );
        assert_eq!(
            check_opening(&q, &root, 7, &row[..32], &path, &expected),
            Err(OpeningFault::WrongLength {
                index: 7,
                got: 32,
                n: 33
            })
        );
        assert_eq!(
            check_opening(&q, &root, 33, &row, &path, &expected),
            Err(OpeningFault::NoSuchRow { index: 33, n: 33 })
        );
    }

    #[test]
    fn inputs_are_counter_based_and_cover_every_byte() {
        let m = input(7, MATRIX_A0, 5);
        for row in 0..5 {
            assert_eq!(input_row(7, MATRIX_A0, 5, row), m[row * 5..(row + 1) * 5]);
        }
        assert_ne!(input(7, MATRIX_A0, 5), input(7, MATRIX_B, 5));
        assert_ne!(input(7, MATRIX_A0, 5), input(8, MATRIX_A0, 5));
        let mut seen = [false; 256];
        for x in input(1, MATRIX_B, 64) {
            seen[x as u8 as usize] = true;
        }
        assert!(seen.iter().all(|s| *s), "4096 draws miss a byte value");
    }

    #[test]
    fn products_stay_exact_at_the_largest_n() {
        let worst = i64::from(TorchBenchParams::MAX_N) * 128 * 128;
        assert!(worst < i64::from(i32::MAX));
        // The unsigned form a kernel may use: (a + 128) * b summed, then 128 * sum(b) removed.
        let unsigned = i64::from(TorchBenchParams::MAX_N) * 255 * 128;
        assert!(unsigned < i64::from(i32::MAX));
    }

    #[test]
    fn requant_spreads_and_has_no_trivial_fixed_point() {
        assert_ne!(requant(0), 0);
        let mut seen = [0u32; 256];
        for c in -20_000..20_000 {
            seen[requant(c) as u8 as usize] += 1;
        }
        // 40000 values over 256 bytes: every byte about 156 times.
        assert!(seen.iter().all(|&k| (100..220).contains(&k)), "{seen:?}");
    }

    #[test]
    fn rows_are_independent_and_the_chain_does_not_collapse() {
        let params = p(9, 5, 3);
        let out = reference_output(&params);
        let b = input(3, MATRIX_B, 9);
        for row in 0..9 {
            assert_eq!(output_row(&params, &b, row), out[row * 9..(row + 1) * 9]);
        }
        // Long chains keep their spread of values.
        let long = reference_output(&p(16, 300, 11));
        let distinct: std::collections::BTreeSet<i8> = long.iter().copied().collect();
        assert!(distinct.len() > 100, "{}", distinct.len());
        // Zero steps: the output is A_0.
        assert_eq!(reference_output(&p(4, 0, 5)), input(5, MATRIX_A0, 4));
    }

    #[test]
    fn the_commitment_opens_row_by_row() {
        let params = p(6, 2, 9);
        let out = reference_output(&params);
        let c = commit(&out, 6).unwrap();
        assert_eq!(hex(&c.output_sha), hex(&Sha256::digest(row_bytes(&out))));
        let leaves: Vec<Digest> = out.chunks(6).map(row_leaf).collect();
        for row in 0..6 {
            let path = merkle::inclusion_proof(&leaves, row).unwrap();
            assert!(merkle::verify(
                &c.merkle_root,
                6,
                row as u64,
                &row_leaf(&out[row * 6..(row + 1) * 6]),
                &path
            ));
            let mut forged = out[row * 6..(row + 1) * 6].to_vec();
            forged[0] = forged[0].wrapping_add(1);
            assert!(!merkle::verify(
                &c.merkle_root,
                6,
                row as u64,
                &row_leaf(&forged),
                &path
            ));
        }
        assert_eq!(commit(&out, 5), None);
        // Row by row, or in uneven pieces of whole rows: the same commitment.
        let mut pieces = Committer::new(6);
        pieces.push_rows(&out[..12]).unwrap();
        assert_eq!(pieces.push_rows(&out[12..13]), None);
        pieces.push_row_bytes(&row_bytes(&out[12..30])).unwrap();
        assert!(pieces.clone().finish().is_none());
        pieces.push_rows(&out[30..]).unwrap();
        assert_eq!(pieces.push_rows(&out[..6]), None);
        assert_eq!(pieces.finish(), Some(c));
        assert_eq!(commit(&[], 0), None);
    }

    #[test]
    fn known_answers_hold() {
        assert!(!KNOWN_ANSWERS.is_empty());
        for &(n, iters, seed, sha, root) in KNOWN_ANSWERS {
            let out = reference_output(&p(n, iters, seed));
            let c = commit(&out, n as usize).unwrap();
            assert_eq!(hex(&c.output_sha), sha, "n={n} iters={iters} seed={seed}");
            assert_eq!(hex(&c.merkle_root), root, "n={n} iters={iters} seed={seed}");
        }
    }

    #[test]
    fn guide_defaults_fit_the_default_limits() {
        let spec = crate::workload::plan("torch_bench", &json!({}), &JobLimits::default()).unwrap();
        let WorkloadSpec::TorchBench(p) = spec;
        assert_eq!((p.n, p.iters, p.seed), (1024, 100, 0));
        assert_eq!(p.flops(), 2 * 1024u64.pow(3) * 100);
        // A, the next A and B (1 MiB each) and one int32 buffer (4 MiB), plus overhead.
        assert_eq!(p.memory_mb(), 7 + 32);
    }

    #[test]
    fn vram_is_two_int8_matrices_an_int32_product_state_and_the_cublas_workspace() {
        let p = |n| TorchBenchParams {
            n,
            iters: 1,
            seed: 0,
        };
        let ws = TorchBenchParams::GPU_CUBLAS_WORKSPACE_BYTES;
        assert_eq!(p(1).vram_bytes(), 6 + 16 + ws);
        assert_eq!(p(1024).vram_bytes(), (6 << 20) + 16 + (32 << 20));
        assert_eq!(p(8192).vram_bytes(), (384 << 20) + 16 + (32 << 20));
        assert_eq!(
            TorchBenchParams::vram_bytes_for(1024, false),
            (6 << 20) + 16
        );
        // The state words push every size just past a whole MiB: rounded up.
        assert_eq!(p(1024).vram_mb(), 6 + 32 + 1);
        assert_eq!(p(8192).vram_mb(), 384 + 32 + 1);
        assert_eq!(p(1).vram_mb(), 33);
        assert_eq!(WorkloadSpec::TorchBench(p(1024)).vram_mb(), 39);
        assert_eq!(
            p(TorchBenchParams::MAX_N).vram_bytes(),
            (3 << 29) + 16 + (32 << 20)
        );
        assert_eq!(TorchBenchParams::vram_bytes_for(u32::MAX, true), u64::MAX);
        // vram_mb always covers vram_bytes, by less than one MiB.
        for n in (1..=TorchBenchParams::MAX_N).step_by(997) {
            let (b, mb) = (p(n).vram_bytes(), p(n).vram_mb());
            assert!(mb << 20 >= b && (mb << 20) - b < 1 << 20, "n={n}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_value() {
        let cases = [
            (json!({"n": 0}), "params.n = 0"),
            (json!({"n": "big"}), "params.n = \"big\""),
            (json!({"iters": -1}), "params.iters = -1"),
            (json!({"n": 20000}), "params.n = 20000"),
            (json!({"size": 3}), "params.size = 3"),
            (json!([1, 2]), "params = [1,2]"),
        ];
        for (params, want) in cases {
            let err = crate::workload::plan(
                "torch_bench",
                &params,
                &JobLimits {
                    ram_mb: 1 << 20,
                    ..JobLimits::default()
                },
            )
            .unwrap_err();
            assert!(err.to_string().starts_with(want), "{err} !~ {want}");
            assert_eq!(err.fail_reason(), FailReason::BadParams);
        }
    }
}

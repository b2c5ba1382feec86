//! The CPU chain: `gemm` products on a rayon pool of exactly the job's thread count, two
//! ping-pong buffers, nothing allocated inside the loop.
//!
//! It must never spawn threads beyond its pool, never allocate per iteration, and never let
//! an allocation failure abort the process where `try_reserve_exact` can report it.

use std::time::Instant;

use aitbc_protocol::wire::WorkerKind;
use aitbc_protocol::workload::TorchBenchParams;
use gemm::Parallelism;
use rayon::prelude::*;

use super::input::{fill, w_scale, MATRIX_W, MATRIX_X0};
use super::{check_params, hash_matrix, rescale, ChainRun};
use crate::WorkerError;

/// Elements generated per rayon task when filling the inputs.
const FILL_CHUNK: usize = 1 << 14;

/// A chain set up on the CPU: the inputs generated, the buffers allocated, the pool started.
/// [`CpuChain::run`] does the products, so a benchmark can time them alone.
pub struct CpuChain {
    n: usize,
    /// `X_k`, the current state of the chain.
    x: Vec<f32>,
    /// Where the next product is written before the buffers swap.
    next: Vec<f32>,
    w: Vec<f32>,
    pool: rayon::ThreadPool,
    threads: usize,
    /// How many products so far were followed by a rescale.
    rescales: u64,
}

impl CpuChain {
    /// Allocates the three matrices, starts `threads` compute threads and generates `X_0`
    /// and `W` for `p`. Fails with `OutOfMemory` when a matrix cannot be allocated.
    pub fn new(p: &TorchBenchParams, threads: usize) -> Result<CpuChain, WorkerError> {
        check_params(p)?;
        if threads == 0 {
            return Err(WorkerError::BadParams {
                field: "threads",
                value: "0".into(),
                reason: "at least one compute thread is needed".into(),
            });
        }
        let n = p.n as usize;
        let len = n * n; // n <= MAX_N = 2^14, so n*n <= 2^28 fits any usize we build for.
        let mut x = alloc_matrix(len, "X")?;
        let next = alloc_matrix(len, "the product buffer")?;
        let mut w = alloc_matrix(len, "W")?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("aitbc-compute-{i}"))
            .build()
            .map_err(|e| WorkerError::ThreadPool {
                threads,
                reason: e.to_string(),
            })?;
        let seed = p.seed;
        let scale = w_scale(p.n);
        pool.install(|| {
            let gen = |out: &mut Vec<f32>, matrix, scale| {
                out.par_chunks_mut(FILL_CHUNK)
                    .enumerate()
                    .for_each(|(c, chunk)| {
                        fill(chunk, seed, matrix, (c * FILL_CHUNK) as u64, scale)
                    });
            };
            gen(&mut x, MATRIX_X0, 1.0);
            gen(&mut w, MATRIX_W, scale);
        });
        Ok(CpuChain {
            n,
            x,
            next,
            w,
            pool,
            threads,
            rescales: 0,
        })
    }

    /// Advances the chain by `iters` products (each followed by the rescale rule).
    pub fn run(&mut self, iters: u32) -> Result<(), WorkerError> {
        let parallelism = if self.threads == 1 {
            Parallelism::None
        } else {
            Parallelism::Rayon(self.threads)
        };
        let CpuChain {
            n,
            x,
            next,
            w,
            pool,
            rescales,
            ..
        } = self;
        let n = *n;
        pool.install(|| {
            for _ in 0..iters {
                product(next, x, w, n, parallelism);
                if rescale(next)? {
                    *rescales += 1;
                }
                std::mem::swap(x, next);
            }
            Ok(())
        })
    }

    /// How many products so far triggered the rescale rule.
    pub fn rescales(&self) -> u64 {
        self.rescales
    }

    /// The current matrix `X_k`, row-major.
    pub fn output(&self) -> &[f32] {
        &self.x
    }

    /// `W`, row-major (already scaled).
    pub fn w(&self) -> &[f32] {
        &self.w
    }

    /// The current matrix, consuming the chain.
    pub fn into_output(self) -> Vec<f32> {
        self.x
    }
}

/// `dst = lhs · rhs` for row-major `n x n` matrices, on the current rayon pool.
fn product(dst: &mut [f32], lhs: &[f32], rhs: &[f32], n: usize, parallelism: Parallelism) {
    let len = n * n;
    assert!(
        dst.len() == len && lhs.len() == len && rhs.len() == len,
        "product buffers must all hold n*n = {len} elements"
    );
    let stride = n as isize;
    // SAFETY: the three buffers are distinct (`dst` is borrowed mutably), each holds `n * n`
    // elements (checked above), and with column stride 1 and row stride `n` every index gemm
    // touches, `row * n + col` for `row, col < n`, is inside them. `read_dst = false`, so `dst`'s
    // previous contents are never read (alpha is ignored) and it receives `1.0 * lhs · rhs`.
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            dst.as_mut_ptr(),
            1,
            stride,
            false,
            lhs.as_ptr(),
            1,
            stride,
            rhs.as_ptr(),
            1,
            stride,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A zeroed matrix of `len` elements, or `OutOfMemory` naming `what`.
fn alloc_matrix(len: usize, what: &'static str) -> Result<Vec<f32>, WorkerError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| WorkerError::OutOfMemory {
            what,
            bytes: len as u64 * 4,
        })?;
    v.resize(len, 0.0);
    Ok(v)
}

/// Makes `gemm` read, now, what it otherwise reads lazily from the filesystem on the first
/// product: the CPU cache sizes under `/sys/devices/system/cpu`, which a confined worker can
/// no longer see. Without this a confined worker would fall back to other cache sizes, block
/// its products differently, and could hash differently from the same machine unconfined.
/// One 8 x 8 product on this thread: no thread is started.
pub fn warm_up() {
    const N: usize = 8;
    let a = [1.0f32; N * N];
    let mut out = [0.0f32; N * N];
    product(&mut out, &a, &a, N, Parallelism::None);
}

/// The final matrix `X_iters` of the chain for `p`, computed with `threads` compute threads.
pub fn chain_cpu(p: &TorchBenchParams, threads: usize) -> Result<Vec<f32>, WorkerError> {
    let mut chain = CpuChain::new(p, threads)?;
    chain.run(p.iters)?;
    Ok(chain.into_output())
}

/// Runs the chain for `p` and hashes its output; `elapsed` covers everything but the checks.
pub fn run_cpu(p: &TorchBenchParams, threads: usize) -> Result<ChainRun, WorkerError> {
    check_params(p)?;
    let start = Instant::now();
    let x = chain_cpu(p, threads)?;
    let output_sha = hash_matrix(&x);
    let elapsed = start.elapsed();
    Ok(ChainRun {
        output_sha,
        output_len: p.output_len(),
        flops: p.flops(),
        elapsed,
        device_time: None,
        kind: WorkerKind::Cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch_bench::{chain_reference, input};

    fn params(n: u32, iters: u32, seed: u64) -> TorchBenchParams {
        TorchBenchParams { n, iters, seed }
    }

    /// `||a - b||_F / ||b||_F`, in f64.
    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let (mut d, mut r) = (0f64, 0f64);
        for (x, y) in a.iter().zip(b) {
            d += (f64::from(*x) - f64::from(*y)).powi(2);
            r += f64::from(*y).powi(2);
        }
        (d / r).sqrt()
    }

    /// Tolerance of the gemm chain against the f64-accumulating reference: the Frobenius-norm
    /// relative error stays below 1e-5 per product (f32 rounding, ~6e-8 per operation,
    /// amplified by the chain's conditioning); we allow 1e-5 * iters.
    #[test]
    fn gemm_chain_matches_the_naive_reference() {
        for (n, iters) in [(1, 5), (7, 10), (64, 8), (130, 3)] {
            for threads in [1, 2] {
                let p = params(n, iters, 11);
                let fast = chain_cpu(&p, threads).unwrap();
                let slow = chain_reference(&p);
                let err = rel_err(&fast, &slow);
                let tol = 1e-5 * f64::from(iters);
                assert!(
                    err < tol,
                    "n={n} iters={iters} threads={threads}: {err:e} >= {tol:e}"
                );
            }
        }
    }

    #[test]
    fn first_product_matches_inputs_by_hand() {
        // n = 2, one product, computed from input() directly.
        let p = params(2, 1, 99);
        let s = crate::torch_bench::input::w_scale(2);
        let x: Vec<f32> = (0..4).map(|i| input(99, MATRIX_X0, i)).collect();
        let w: Vec<f32> = (0..4).map(|i| input(99, MATRIX_W, i) * s).collect();
        let want = [
            x[0] * w[0] + x[1] * w[2],
            x[0] * w[1] + x[1] * w[3],
            x[2] * w[0] + x[3] * w[2],
            x[2] * w[1] + x[3] * w[3],
        ];
        let got = chain_cpu(&p, 1).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn same_params_same_hash_across_runs_and_thread_counts() {
        // n = 300 is large enough for gemm to split the work between threads.
        for n in [64, 130, 300] {
            let p = params(n, 4, 5);
            let one = run_cpu(&p, 1).unwrap();
            assert_eq!(run_cpu(&p, 1).unwrap().output_sha, one.output_sha, "n={n}");
            let two = run_cpu(&p, 2).unwrap();
            assert_eq!(two.output_sha, one.output_sha, "n={n}: 1 vs 2 threads");
            assert_eq!(
                run_cpu(&p, 3).unwrap().output_sha,
                one.output_sha,
                "n={n}: 3 threads"
            );
            assert_eq!(one.output_len, u64::from(n * n * 4));
            assert_eq!(one.flops, 2 * u64::from(n).pow(3) * 4);
            assert_eq!(one.kind, WorkerKind::Cpu);
        }
    }

    #[test]
    fn different_seeds_and_sizes_give_different_hashes() {
        let a = run_cpu(&params(32, 3, 1), 1).unwrap().output_sha;
        let b = run_cpu(&params(32, 3, 2), 1).unwrap().output_sha;
        let c = run_cpu(&params(32, 4, 1), 1).unwrap().output_sha;
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            run_cpu(&params(32, 3, 1), 1).unwrap().output_sha,
            hash_matrix(&chain_cpu(&params(32, 3, 1), 1).unwrap())
        );
    }

    #[test]
    fn long_chains_stay_finite_and_non_zero() {
        let mut rescaled = 0;
        for (n, seed) in [(64, 0), (64, 1), (7, 4)] {
            let mut c = CpuChain::new(&params(n, 10_000, seed), 2).unwrap();
            c.run(10_000).unwrap();
            rescaled += c.rescales();
            let x = c.output();
            assert!(x.iter().all(|v| v.is_finite()), "n={n} seed={seed}");
            assert!(x.iter().any(|v| *v != 0.0), "n={n} seed={seed}: all zero");
            let m = f32::from_bits(crate::torch_bench::max_abs_bits(x));
            assert!(
                (2f32.powi(-32)..2f32.powi(33)).contains(&m),
                "max |x| = {m:e}"
            );
        }
        // Without the rule these chains would have left f32's range.
        assert!(
            rescaled > 0,
            "no chain needed a rescale: the test proves nothing"
        );
    }

    #[test]
    fn an_impossible_allocation_is_out_of_memory_not_an_abort() {
        let e = alloc_matrix(usize::MAX / 8, "X").unwrap_err();
        assert!(
            matches!(e, WorkerError::OutOfMemory { what: "X", .. }),
            "{e}"
        );
        assert_eq!(alloc_matrix(3, "X").unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn zero_threads_is_refused() {
        let e = CpuChain::new(&params(4, 1, 0), 0).err().unwrap();
        assert!(
            matches!(
                e,
                WorkerError::BadParams {
                    field: "threads",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn chain_can_be_advanced_in_steps() {
        let p = params(40, 6, 8);
        let mut c = CpuChain::new(&p, 2).unwrap();
        c.run(2).unwrap();
        c.run(4).unwrap();
        assert_eq!(c.output(), &chain_cpu(&p, 2).unwrap()[..]);
    }
}

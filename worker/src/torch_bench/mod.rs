//! `torch_bench`: the guide's chain of matrix products, made deterministic and finite.
//!
//! # The chain (every implementation must follow this exactly)
//!
//! For [`TorchBenchParams`] `{ n, iters, seed }`, all matrices `n x n`, `f32`, row-major:
//!
//! 1. `X_0` and `W` come from the counter-based generator in [`input`](mod@input) (`W` already scaled by
//!    `sqrt(3/n)`).
//! 2. For `k` in `0..iters`: `X_{k+1} = rescale(X_k · W)`, the product computed in `f32`.
//! 3. The output is `X_iters` as little-endian `f32` bytes (`n*n*4` of them); the job's
//!    `output_sha` is their SHA-256.
//!
//! `rescale` ([`rescale_exponent`]) multiplies the matrix by an exact power of two when its
//! largest magnitude leaves `[2^-32, 2^33)`. A fixed `W` scaled to preserve the *expected*
//! norm still has a spectral radius a few percent away from 1 (about 1.08 for typical `n = 64`
//! seeds), so without it a long chain overflows to infinity or underflows to zero; with it the
//! chain stays finite and non-zero for any length. Default-sized jobs (`n = 1024`,
//! `iters = 100`) never trigger it, so for them the chain is literally `X_0 · W^iters`.
//!
//! # Determinism
//!
//! [`input`](mod@input) is bit-exact everywhere. The products are not: `f32` sums depend on the order of
//! accumulation, which the `gemm` crate picks from the CPU's cache sizes and instruction set.
//! So `output_sha` is a deterministic function of `(params, machine)`: the same params on the same
//! machine (any thread count, see the tests) give the same hash, but two different machines, or
//! the CPU and a GPU, agree only to within floating-point tolerance, as [`chain_reference`]
//! shows. This module must never make a result depend on timing or scheduling.
//!
//! # Backends
//!
//! A worker process has one [`Device`], set up while it confines itself: the CPU, or a GPU
//! opened (context, streams, PTX module, cuBLAS) during confinement step 6. A checked job gets
//! a [`Backend`], pure data: [`Backend::Cpu`] runs [`run_cpu`] with the job's thread count;
//! [`Backend::Gpu`] runs [`run_gpu`] on the device, `aitbc-cuda`'s `Gpu::run_chain`, which
//! generates the inputs on the device with the same recipe, applies the same
//! [`rescale_exponent`] rule after every product, and streams `X_iters` back in chunks that are
//! hashed as they arrive (the same bytes [`hash_matrix`] hashes on the CPU), within the job's
//! `vram_mb` cap.

mod cpu;
mod gpu;
pub mod input;
mod reference;

use std::time::Duration;

use aitbc_protocol::wire::WorkerKind;
use aitbc_protocol::workload::TorchBenchParams;
use sha2::{Digest, Sha256};

use crate::WorkerError;

pub use cpu::{chain_cpu, run_cpu, warm_up, CpuChain};
pub use gpu::run_gpu;
pub use input::input;
pub use reference::chain_reference;

/// A finished chain: what the worker reports in `FromWorker::Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRun {
    /// SHA-256 of `X_iters` as little-endian `f32` bytes.
    pub output_sha: [u8; 32],
    /// `n * n * 4`.
    pub output_len: u64,
    /// `2 n^3 iters`.
    pub flops: u64,
    /// Wall time of allocation, input generation, the products and the hash.
    pub elapsed: Duration,
    /// GPU only: device time of the products and rescales, from CUDA events with timing on.
    pub device_time: Option<Duration>,
    /// Where it ran.
    pub kind: WorkerKind,
}

impl ChainRun {
    /// The compute time a job's TFLOP/s is figured from (`JobOutput.compute_us`): the device
    /// time on a GPU, the whole wall time on the CPU.
    pub fn compute_time(&self) -> Duration {
        self.device_time.unwrap_or(self.elapsed)
    }
}

/// What a worker process computes on: chosen by `--kind`, opened during confinement (step 6)
/// and kept for the one job.
pub enum Device {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU, opened and warmed up before the sandbox was sealed.
    Gpu(Box<aitbc_cuda::Gpu>),
}

impl Device {
    /// The kind a worker on this device announces in its `Hello`.
    pub fn kind(&self) -> WorkerKind {
        match self {
            Device::Cpu => WorkerKind::Cpu,
            Device::Gpu(_) => WorkerKind::Gpu,
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("Cpu"),
            Device::Gpu(g) => f.debug_tuple("Gpu").field(g).finish(),
        }
    }
}

/// How a checked job runs (pure data, decided by `check_job` from the job and the worker's
/// device kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The host CPU with this many compute threads.
    Cpu { threads: usize },
    /// The worker's GPU, allocating at most `vram_cap_bytes` of device memory for the job.
    Gpu { vram_cap_bytes: u64 },
}

impl Backend {
    /// The kind of worker this backend runs on.
    pub fn kind(&self) -> WorkerKind {
        match self {
            Backend::Cpu { .. } => WorkerKind::Cpu,
            Backend::Gpu { .. } => WorkerKind::Gpu,
        }
    }

    /// Runs the chain for `p` on this backend, on `device`. A GPU backend on a CPU worker is a
    /// bug (the re-check picks the backend from the device), reported as `Internal`.
    pub fn run(&self, p: &TorchBenchParams, device: &Device) -> Result<ChainRun, WorkerError> {
        match (*self, device) {
            (Backend::Cpu { threads }, _) => run_cpu(p, threads),
            (Backend::Gpu { vram_cap_bytes }, Device::Gpu(gpu)) => run_gpu(gpu, p, vram_cap_bytes),
            (Backend::Gpu { .. }, Device::Cpu) => Err(WorkerError::Internal(
                "a GPU job reached a CPU worker".into(),
            )),
        }
    }
}

/// Largest magnitude allowed to stay unscaled is below `2^(RESCALE_LIMIT_LOG2 + 1)`; the
/// smallest non-zero one is at least `2^-RESCALE_LIMIT_LOG2`.
pub const RESCALE_LIMIT_LOG2: i32 = 32;

/// Most compute threads a job may ask for (a sanity bound on a wire value, not a tuning knob).
pub const MAX_THREADS: u32 = 4096;

/// The rescale rule, pure. `max_abs_bits` is the largest of `x.to_bits() & 0x7FFF_FFFF` over
/// the matrix (for finite values this orders like `|x|`, and is exact in any summation order).
///
/// Let `e = (max_abs_bits >> 23) - 127`, the unbiased exponent of the largest magnitude (`-127`
/// when it is subnormal). When the matrix is all zeros or `-32 <= e <= 32`, nothing happens
/// (`None`). Otherwise every element is multiplied by `2^k` with `k = clamp(-e, -126, 126)`,
/// returned as `Some(k)`; a power of two is a normal `f32`, so the multiply is exact except
/// where an element becomes subnormal (rounded to nearest even, no flush-to-zero).
pub fn rescale_exponent(max_abs_bits: u32) -> Option<i32> {
    if max_abs_bits == 0 {
        return None;
    }
    let e = (max_abs_bits >> 23) as i32 - 127;
    if (-RESCALE_LIMIT_LOG2..=RESCALE_LIMIT_LOG2).contains(&e) {
        None
    } else {
        Some((-e).clamp(-126, 126))
    }
}

/// `2^k` as an `f32`, for `k` in `-126..=127`.
pub fn pow2(k: i32) -> f32 {
    debug_assert!((-126..=127).contains(&k), "2^{k} is not a normal f32");
    f32::from_bits(((127 + k) as u32) << 23)
}

/// The largest `x.to_bits() & 0x7FFF_FFFF` of a matrix (see [`rescale_exponent`]).
pub fn max_abs_bits(x: &[f32]) -> u32 {
    x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF))
}

/// Applies the rescale rule to `x` in place and says whether it scaled. Fails when `x` holds a
/// non-finite value, which the rule exists to prevent: it would mean a bug, not bad input.
pub fn rescale(x: &mut [f32]) -> Result<bool, WorkerError> {
    let m = max_abs_bits(x);
    if m >= 0x7F80_0000 {
        return Err(WorkerError::Internal(format!(
            "the chain produced a non-finite value (bits 0x{m:08x})"
        )));
    }
    if let Some(k) = rescale_exponent(m) {
        let s = pow2(k);
        x.iter_mut().for_each(|v| *v *= s);
        return Ok(true);
    }
    Ok(false)
}

/// SHA-256 of `x` as little-endian `f32` bytes, streamed through a small stack buffer so the
/// matrix is never copied as a whole.
pub fn hash_matrix(x: &[f32]) -> [u8; 32] {
    const CHUNK: usize = 4096;
    let mut hasher = Sha256::new();
    let mut buf = [0u8; CHUNK * 4];
    for chunk in x.chunks(CHUNK) {
        let bytes = &mut buf[..chunk.len() * 4];
        for (dst, v) in bytes.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        hasher.update(&*bytes);
    }
    hasher.finalize().into()
}

/// The worker's own check of a chain's parameters (the supervisor already ran
/// `protocol::workload::plan`; this catches a broken or hostile supervisor).
pub fn check_params(p: &TorchBenchParams) -> Result<(), WorkerError> {
    let bad = |field, value: u32, max| WorkerError::BadParams {
        field,
        value: value.to_string(),
        reason: format!("expected a whole number from 1 to {max}"),
    };
    if !(1..=TorchBenchParams::MAX_N).contains(&p.n) {
        return Err(bad("params.n", p.n, TorchBenchParams::MAX_N));
    }
    if !(1..=TorchBenchParams::MAX_ITERS).contains(&p.iters) {
        return Err(bad("params.iters", p.iters, TorchBenchParams::MAX_ITERS));
    }
    Ok(())
}

/// Checks a compute thread count from the wire.
pub fn check_threads(threads: u32) -> Result<usize, WorkerError> {
    if (1..=MAX_THREADS).contains(&threads) {
        Ok(threads as usize)
    } else {
        Err(WorkerError::BadParams {
            field: "threads",
            value: threads.to_string(),
            reason: format!("expected a whole number from 1 to {MAX_THREADS}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescale_rule_leaves_the_band_alone_and_pulls_outliers_back() {
        let bits = |x: f32| x.to_bits() & 0x7FFF_FFFF;
        assert_eq!(rescale_exponent(0), None);
        assert_eq!(rescale_exponent(bits(1.0)), None);
        assert_eq!(rescale_exponent(bits(-3.5e9)), None); // 2^31.7
        assert_eq!(rescale_exponent(bits(pow2(32) * 1.999)), None);
        assert_eq!(rescale_exponent(bits(pow2(33))), Some(-33));
        assert_eq!(rescale_exponent(bits(pow2(-32))), None);
        assert_eq!(rescale_exponent(bits(pow2(-33) * 1.5)), Some(33));
        assert_eq!(rescale_exponent(bits(f32::MAX)), Some(-126));
        assert_eq!(rescale_exponent(1), Some(126)); // smallest subnormal
    }

    #[test]
    fn rescale_is_exact_and_refuses_non_finite_values() {
        let mut x = vec![3.0 * pow2(40), -pow2(35), 0.0, 1.0];
        assert!(rescale(&mut x).unwrap());
        // max 3 * 2^40 has exponent 41: everything is multiplied by 2^-41.
        assert_eq!(x, vec![1.5, -pow2(-6), 0.0, pow2(-41)]);
        let mut same = vec![1.0, -2.0];
        assert!(!rescale(&mut same).unwrap());
        assert_eq!(same, vec![1.0, -2.0]);
        let mut y = vec![1.0, f32::INFINITY];
        assert!(rescale(&mut y).is_err());
        let mut z = vec![f32::NAN];
        assert!(rescale(&mut z).is_err());
    }

    #[test]
    fn streaming_hash_equals_hash_of_the_whole_byte_vector() {
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096 + 17] {
            let x: Vec<f32> = (0..len as u64).map(|i| input(3, 0, i)).collect();
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let want: [u8; 32] = Sha256::digest(&bytes).into();
            assert_eq!(hash_matrix(&x), want, "len {len}");
        }
    }

    #[test]
    fn parameter_and_thread_checks_name_the_field() {
        let p = |n, iters| TorchBenchParams { n, iters, seed: 0 };
        assert!(check_params(&p(1, 1)).is_ok());
        assert!(check_params(&p(TorchBenchParams::MAX_N, TorchBenchParams::MAX_ITERS)).is_ok());
        let e = check_params(&p(0, 1)).unwrap_err().to_string();
        assert!(e.starts_with("params.n = 0: "), "{e}");
        let e = check_params(&p(8, 100_001)).unwrap_err().to_string();
        assert!(e.starts_with("params.iters = 100001: "), "{e}");
        assert_eq!(check_threads(2).unwrap(), 2);
        let e = check_threads(0).unwrap_err().to_string();
        assert!(e.starts_with("threads = 0: "), "{e}");
        assert!(check_threads(MAX_THREADS + 1).is_err());
    }
}

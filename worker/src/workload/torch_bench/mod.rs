//! `torch_bench`: the guide's chain of matrix products, as the exact int8 chain that
//! `protocol::workload::torch_bench` specifies (inputs from the seed, `A_{k+1} =
//! requant(A_k . B)` exact in `i32`, output `A_iters` as `n * n` bytes), so every CPU, every
//! kernel, every thread count and the GPU give the same bytes.
//!
//! The job reports `output_sha` (SHA-256 of the output) and the RFC 9162 Merkle root over its
//! rows, both from protocol's `Committer`, so a verifier with protocol alone can recompute
//! and check any row.
//!
//! # Backends
//!
//! A worker process has one [`Device`], set up while it confines itself: the CPU, or a GPU
//! opened (context, streams, module) during confinement step 6. A checked job gets a
//! [`Backend`], pure data: [`Backend::Cpu`] runs [`run_cpu`] (the int8 kernels of [`cpu`](mod@cpu),
//! chosen at run time) with the job's thread count; [`Backend::Gpu`] runs [`run_gpu`] on the
//! device within the job's `vram_mb` cap.
//!
//! This module must never make a result depend on timing, scheduling, the kernel or the
//! device, and never report a length or operation count that differ from the params'.

pub mod cpu;
mod gpu;

use std::time::Duration;

use aitbc_protocol::api::Mode;
use aitbc_protocol::workload::TorchBenchParams;

use crate::WorkerError;

pub use cpu::{chain_cpu_with, run_cpu, run_cpu_with, warm_up, CpuChain, Kernel};
pub use gpu::run_gpu;

/// A finished chain: what the worker reports in `FromWorker::Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRun {
    /// SHA-256 of `A_iters`, `n * n` bytes (each `i8` as its byte), rows in order.
    pub output_sha: [u8; 32],
    /// The RFC 9162 Merkle root over `A_iters`'s rows (`protocol::merkle`).
    pub merkle_root: [u8; 32],
    /// `n * n`.
    pub output_len: u64,
    /// `2 n^3 iters` int8 operations.
    pub flops: u64,
    /// Wall time of allocation, input generation, packing, the products and the commitment.
    pub elapsed: Duration,
    /// GPU only: device time of the products, from CUDA events with timing on.
    pub device_time: Option<Duration>,
    /// Where it ran.
    pub kind: Mode,
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
    pub fn kind(&self) -> Mode {
        match self {
            Device::Cpu => Mode::Cpu,
            Device::Gpu(_) => Mode::Gpu,
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
    pub fn kind(&self) -> Mode {
        match self {
            Backend::Cpu { .. } => Mode::Cpu,
            Backend::Gpu { .. } => Mode::Gpu,
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

/// Most compute threads a job may ask for (a sanity bound on a wire value, not a tuning knob).
pub const MAX_THREADS: u32 = 4096;

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

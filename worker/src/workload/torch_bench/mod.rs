//! `torch_bench`: the guide's chain of matrix products, as the exact int8 chain that
//! `protocol::workload::torch_bench` specifies (inputs from the seed, `A_{k+1} =
//! requant(A_k . B)` exact in `i32`, output `A_iters` as `n * n` bytes), so every CPU, every
//! kernel, every thread count and the GPU give the same bytes.
//!
//! The job reports `output_sha` (SHA-256 of the output) and the RFC 9162 Merkle root over its
//! rows, both from protocol's `Committer`, so a verifier with protocol alone can recompute
//! and check any row.
//!
//! What it gives the worker's dispatch (`crate::workload`): [`warm_up`] (the CPU kernel's
//! detection, before seccomp), [`open_gpu`] (its GPU module, `aitbc_cuda::Gpu`), [`check_params`]
//! and [`run`]: [`run_cpu_with`] (the int8 kernels of [`cpu`](mod@cpu), chosen at run time or
//! named by the operator, [`Kernel::choose`]) with the job's thread count, or [`run_gpu`] on the device within the job's `vram_mb` cap.
//!
//! This module must never make a result depend on timing, scheduling, the kernel or the
//! device, and never report a length or operation count that differ from the params'.

pub mod cpu;
mod gpu;

use aitbc_protocol::workload::torch_bench::TorchBenchParams;

use super::{Backend, Output};
use crate::WorkerError;

pub use cpu::{chain_cpu_with, run_cpu, run_cpu_with, warm_up, CpuChain, Kernel};
pub use gpu::{open_gpu, run_gpu};

/// Runs the chain for checked params `p` on `backend`: the CPU's `kernel` (the worker's
/// choice, [`Kernel::choose`]), or `gpu` (the worker's torch_bench module; the dispatch passes
/// it for a GPU backend only).
pub fn run(
    p: &TorchBenchParams,
    backend: Backend,
    kernel: Kernel,
    gpu: Option<&aitbc_cuda::Gpu>,
) -> Result<Output, WorkerError> {
    match (backend, gpu) {
        (Backend::Cpu { threads }, _) => run_cpu_with(kernel, p, threads),
        (Backend::Gpu { vram_cap_bytes }, Some(gpu)) => run_gpu(gpu, p, vram_cap_bytes),
        (Backend::Gpu { .. }, None) => Err(WorkerError::Internal(
            "a GPU job reached a worker without torch_bench's GPU module".into(),
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_checks_name_the_field() {
        let p = |n, iters| TorchBenchParams { n, iters, seed: 0 };
        assert!(check_params(&p(1, 1)).is_ok());
        assert!(check_params(&p(TorchBenchParams::MAX_N, TorchBenchParams::MAX_ITERS)).is_ok());
        let e = check_params(&p(0, 1)).unwrap_err().to_string();
        assert!(e.starts_with("params.n = 0: "), "{e}");
        let e = check_params(&p(8, 100_001)).unwrap_err().to_string();
        assert!(e.starts_with("params.iters = 100001: "), "{e}");
    }
}

//! The worker's one dispatch point to the workloads it computes: each workload is one folder
//! here (`torch_bench/`), and this file is the only place that names them.
//!
//! A workload gives the worker four things, each called from one place:
//! - its **warm-up** before seccomp ([`warm_up`], confinement step 0): whatever it would
//!   otherwise do lazily with system calls a sealed worker may not make;
//! - its **GPU module** ([`open_gpu`], confinement step 6, GPU workers only);
//! - its **check** of a job's params inside the sandbox, before anything is allocated
//!   ([`check`], the validate hook; the supervisor checked the same job already, but the
//!   worker trusts nothing it is sent);
//! - its **run** on a [`Backend`] ([`run`]), which answers with an [`Output`].
//!
//! Its system calls beyond the base list are its fragment in `aitbc_seccomp::fragment`, and its
//! resource formulas are protocol's `Needs`.
//!
//! # One worker serves every workload of the build
//! A worker is started (and confined) before its job is known, so that a job finds it ready:
//! the CPU worker's start-up is a few milliseconds, but a GPU worker's (CUDA context, PTX JIT,
//! warm-up) is hundreds. So a worker warms up, opens and is granted the **union** of what the
//! workloads in [`SERVED`] need, and any slot can take any job. The price is that each
//! workload's grants are open to the others' jobs; today that is one workload, and a later one
//! that needs a file (a model) gets it as a read-only descriptor at hand-off, never as a
//! standing grant, so the union stays the same for every job. The alternative, one worker per
//! (device, workload) pair, would need a pool per pair and would start a GPU worker per job
//! kind. `tests/suite/tidy.rs` checks that [`SERVED`] is the supervisor's `policy::RUNS`.
//!
//! This module must never make a result depend on timing, scheduling or the device, and never
//! report a length or operation count that differ from what the params declare.

pub mod torch_bench;

use std::time::Duration;

use aitbc_protocol::api::Mode;
use aitbc_protocol::wire::JobSpec;
use aitbc_protocol::workload::{Workload, WorkloadSpec};

use crate::WorkerError;

/// The workloads this worker computes, in protocol's names: every one it warms up, opens a GPU
/// module for and takes the seccomp fragment of.
pub const SERVED: &[Workload] = &[Workload::TorchBench];

/// A finished job: what the worker reports in `FromWorker::Done`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// SHA-256 of the committed output.
    pub output_sha: [u8; 32],
    /// The RFC 9162 Merkle root over the output's leaves (`protocol::merkle`).
    pub merkle_root: [u8; 32],
    /// The leaves `merkle_root` is over, one per committed row (`spec.rows()` of them): sent
    /// to the supervisor before `Done`, which keeps them to answer an audit.
    pub leaves: Vec<[u8; 32]>,
    /// The output's length in bytes, as the params declare it.
    pub output_len: u64,
    /// The job's operations, as the params declare them.
    pub flops: u64,
    /// Wall time of the computation and the commitment.
    pub elapsed: Duration,
    /// GPU only: device time of the compute, from CUDA events with timing on.
    pub device_time: Option<Duration>,
    /// Where it ran.
    pub kind: Mode,
}

impl Output {
    /// The compute time a job's TFLOP/s is figured from (`JobOutput.compute_us`): the device
    /// time on a GPU, the whole wall time on the CPU.
    pub fn compute_time(&self) -> Duration {
        self.device_time.unwrap_or(self.elapsed)
    }
}

/// What a worker process computes on: chosen by `--kind`, opened during confinement (step 6)
/// and kept for the one job.
pub enum Device {
    /// The host CPU, and the int8 kernel torch_bench's chain runs on it (the operator's
    /// `--cpu-kernel`, checked against the CPU before confinement: `Kernel::choose`).
    Cpu { kernel: torch_bench::Kernel },
    /// An NVIDIA GPU with every served workload's module, opened and warmed up before the
    /// sandbox was sealed.
    Gpu(Box<GpuModules>),
}

/// The GPU state of a worker: one module per served workload that runs on the GPU.
#[derive(Debug)]
pub struct GpuModules {
    /// torch_bench's context, streams, kernels and cuBLAS handle.
    pub torch_bench: aitbc_cuda::Gpu,
}

impl Device {
    /// The host CPU with the fastest kernel it runs (`--cpu-kernel auto`).
    pub fn detected_cpu() -> Device {
        Device::Cpu {
            kernel: torch_bench::Kernel::detect(),
        }
    }

    /// The kind a worker on this device announces in its `Hello`.
    pub fn kind(&self) -> Mode {
        match self {
            Device::Cpu { .. } => Mode::Cpu,
            Device::Gpu(_) => Mode::Gpu,
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu { kernel } => write!(f, "Cpu({})", kernel.name()),
            Device::Gpu(g) => f.debug_tuple("Gpu").field(g).finish(),
        }
    }
}

/// How a checked job runs (pure data, decided by [`check`] from the job and the worker's
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
}

/// Step 0: every served workload's warm-up.
pub fn warm_up() {
    for w in SERVED {
        match w {
            Workload::TorchBench => torch_bench::warm_up(),
            Workload::SdInfer | Workload::LlmGen => {}
        }
    }
}

/// Step 6: GPU `ordinal`'s modules for every served workload, each warmed up; and the Hello
/// line's summary of them.
pub fn open_gpu(ordinal: usize) -> Result<(GpuModules, String), String> {
    let (torch_bench, summary) = torch_bench::open_gpu(ordinal)?;
    Ok((GpuModules { torch_bench }, summary))
}

/// Most compute threads a job may ask for (a sanity bound on a wire value, not a tuning knob).
pub const MAX_THREADS: u32 = 4096;

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

/// The worker's re-check of a job for a worker of `kind`: the workload's own check of its
/// params, a usable thread count, and the job's declared memory need within its cap: on a CPU
/// worker `ram_mb` against `memory_mb()`; on a GPU worker `vram_mb` against `vram_mb()` (the
/// data lives on the device; the host's share is bounded by the cgroup). Returns how to run.
pub fn check(job: &JobSpec, kind: Mode) -> Result<Backend, WorkerError> {
    match &job.spec {
        WorkloadSpec::TorchBench(p) => torch_bench::check_params(p)?,
    }
    let threads = check_threads(job.threads)?;
    let needs = job.spec.needs();
    let over = |field, have: u64, needed: u64, what: &str| WorkerError::BadParams {
        field,
        value: have.to_string(),
        reason: format!("the job needs {needed} MiB{what} ({})", needs.describe()),
    };
    match kind {
        Mode::Cpu => {
            let needed = needs.memory_mb();
            if needed > job.ram_mb {
                return Err(over("ram_mb", job.ram_mb, needed, ""));
            }
            Ok(Backend::Cpu { threads })
        }
        Mode::Gpu => {
            let needed = needs.vram_mb();
            if needed > job.vram_mb {
                return Err(over("vram_mb", job.vram_mb, needed, " of GPU memory"));
            }
            Ok(Backend::Gpu {
                vram_cap_bytes: job.vram_mb.saturating_mul(1 << 20),
            })
        }
    }
}

/// Runs a checked job on `backend`, on `device`. A GPU backend on a CPU worker is a bug (the
/// re-check picks the backend from the device), reported as `Internal`.
pub fn run(spec: &WorkloadSpec, backend: Backend, device: &Device) -> Result<Output, WorkerError> {
    let gpu = match (backend, device) {
        (Backend::Cpu { .. }, _) => None,
        (Backend::Gpu { .. }, Device::Gpu(modules)) => Some(modules.as_ref()),
        (Backend::Gpu { .. }, Device::Cpu { .. }) => {
            return Err(WorkerError::Internal(
                "a GPU job reached a CPU worker".into(),
            ))
        }
    };
    // A CPU backend runs on a CPU worker (the re-check picks the backend from the device); a
    // GPU worker has no CPU kernel of its own and would detect one.
    let kernel = match device {
        Device::Cpu { kernel } => *kernel,
        Device::Gpu(_) => torch_bench::Kernel::detect(),
    };
    match spec {
        WorkloadSpec::TorchBench(p) => {
            torch_bench::run(p, backend, kernel, gpu.map(|m| &m.torch_bench))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_checks_name_the_field() {
        assert_eq!(check_threads(2).unwrap(), 2);
        let e = check_threads(0).unwrap_err().to_string();
        assert!(e.starts_with("threads = 0: "), "{e}");
        assert!(check_threads(MAX_THREADS + 1).is_err());
    }

    #[test]
    fn every_served_workload_has_a_typed_spec_in_protocol() {
        use aitbc_protocol::api::JobLimits;
        let limits = JobLimits {
            ram_mb: 1 << 20,
            ..JobLimits::default()
        };
        for w in SERVED {
            let spec = aitbc_protocol::workload::plan(w.as_str(), &serde_json::json!({}), &limits)
                .unwrap_or_else(|e| panic!("{}: {e}", w.as_str()));
            assert_eq!(spec.workload(), *w);
        }
    }
}

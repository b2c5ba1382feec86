//! Step 6 (device): a GPU worker initialises CUDA, after Landlock and before seccomp.
//!
//! In this order: [`aitbc_cuda::driver_present`] (a `dlopen` probe; cudarc panics when libcuda
//! is missing, so nothing else of CUDA runs before it says yes), then each served workload's GPU
//! module (`crate::workload::open_gpu`; torch_bench's: context, compute and copy streams, the
//! embedded PTX JIT-compiled by the driver, cuBLAS when `libcublas.so.12` loads, pinned staging
//! buffers, and a tiny chain on every GEMM path, so whatever the driver and cuBLAS do lazily
//! happens before seccomp). The opened modules are kept for the job. Every failure is a [`WorkerError::SetupRefused`] naming the
//! step: the worker prints it and exits before Hello, so the supervisor reports that the worker
//! could not start, with the reason.
//!
//! This module must never call into CUDA before the driver probe, never panic on a missing or
//! broken driver, and never run after seccomp (CUDA's set-up needs system calls a job may not
//! make). Which system calls and files the driver uses here is **unverified on a GPU**.

use aitbc_cuda::CudaError;

use crate::confine::Step;
use crate::workload::GpuModules;
use crate::WorkerError;

/// The device a GPU worker opens: CUDA ordinal 0 of what the driver shows it. Workers start
/// with an empty environment, so this is the host's first GPU; a supervisor that wants another
/// one must confine the worker to it (a later `--gpu` flag or the cgroup's device list).
pub const GPU_ORDINAL: usize = 0;

/// Opens GPU `ordinal` for every served workload (`crate::workload::open_gpu`: each workload's
/// module, warmed up) once the driver probe says libcuda loads; returns them and the Hello
/// line's summary.
pub fn open_gpu(ordinal: usize) -> Result<(GpuModules, String), WorkerError> {
    if !aitbc_cuda::driver_present() {
        return Err(refused(CudaError::NoDriver.to_string()));
    }
    crate::workload::open_gpu(ordinal).map_err(refused)
}

fn refused(reason: String) -> WorkerError {
    WorkerError::SetupRefused {
        step: Step::Device,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SKIP line on the real stderr (not captured by the test harness, so it shows).
    fn skip(line: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    #[test]
    fn without_a_driver_the_step_fails_naming_libcuda() {
        if aitbc_cuda::driver_present() {
            skip("SKIP: a CUDA driver is present; the no-driver path is not exercised here");
            return;
        }
        let e = open_gpu(GPU_ORDINAL).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("confinement step device: no CUDA driver: libcuda.so.1 not found"),
            "{e}"
        );
        assert!(matches!(
            e,
            WorkerError::SetupRefused {
                step: Step::Device,
                ..
            }
        ));
    }
}

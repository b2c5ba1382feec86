//! Step 6 (device): a GPU worker initialises CUDA, after Landlock and before seccomp.
//!
//! In this order: [`aitbc_cuda::driver_present`] (a `dlopen` probe; cudarc panics when libcuda
//! is missing, so nothing else of CUDA runs before it says yes), then `Gpu::open` (context,
//! compute and copy streams, the embedded PTX JIT-compiled by the driver, cuBLAS when
//! `libcublas.so.12` loads, two pinned staging buffers), then `Gpu::warm_up` (a tiny chain on
//! every SGEMM path, so whatever the driver and cuBLAS do lazily happens before seccomp). The
//! opened GPU is kept for the job. Every failure is a [`WorkerError::SetupRefused`] naming the
//! step: the worker prints it and exits before Hello, so the supervisor reports that the worker
//! could not start, with the reason.
//!
//! This module must never call into CUDA before the driver probe, never panic on a missing or
//! broken driver, and never run after seccomp (CUDA's set-up needs system calls a job may not
//! make). Which system calls and files the driver uses here is **unverified on a GPU**.

use aitbc_cuda::{CudaError, GemmPath, Gpu};

use crate::confine::Step;
use crate::WorkerError;

/// The device a GPU worker opens: CUDA ordinal 0 of what the driver shows it. Workers start
/// with an empty environment, so this is the host's first GPU; a supervisor that wants another
/// one must confine the worker to it (a later `--gpu` flag or the cgroup's device list).
pub const GPU_ORDINAL: usize = 0;

/// Opens and warms up GPU `ordinal`; returns it and the Hello line's summary of it.
pub fn open_gpu(ordinal: usize) -> Result<(Gpu, String), WorkerError> {
    if !aitbc_cuda::driver_present() {
        return Err(refused(CudaError::NoDriver.to_string()));
    }
    let gpu = Gpu::open(ordinal).map_err(|e| refused(format!("opening GPU {ordinal}: {e}")))?;
    gpu.warm_up()
        .map_err(|e| refused(format!("warming up GPU {ordinal} ({}): {e}", gpu.name())))?;
    let summary = describe(
        gpu.ordinal(),
        gpu.name(),
        gpu.default_gemm(),
        gpu.cublas_unavailable().is_some(),
    );
    Ok((gpu, summary))
}

/// `cuda gpu0 "NVIDIA H100 80GB HBM3" igemm cublas` (or `igemm own kernel (no cuBLAS)`).
/// The name comes from the driver: control characters are dropped and it is cut at 64
/// characters, so the Hello line stays one short line.
pub fn describe(ordinal: usize, name: &str, gemm: GemmPath, cublas_missing: bool) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    let gemm = match (gemm, cublas_missing) {
        (GemmPath::Cublas, _) => "igemm cublas",
        (GemmPath::OwnKernel, true) => "igemm own kernel (no cuBLAS)",
        (GemmPath::OwnKernel, false) => "igemm own kernel",
    };
    format!("cuda gpu{ordinal} {name:?} {gemm}")
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

    #[test]
    fn the_summary_names_the_device_and_the_igemm() {
        assert_eq!(
            describe(0, "NVIDIA H100 80GB HBM3", GemmPath::Cublas, false),
            "cuda gpu0 \"NVIDIA H100 80GB HBM3\" igemm cublas"
        );
        assert_eq!(
            describe(1, "X\n;y", GemmPath::OwnKernel, true),
            "cuda gpu1 \"X;y\" igemm own kernel (no cuBLAS)"
        );
        let long = describe(0, &"A".repeat(300), GemmPath::OwnKernel, false);
        assert_eq!(long.len(), "cuda gpu0 \"\" igemm own kernel".len() + 64);
    }
}

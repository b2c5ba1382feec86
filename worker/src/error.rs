//! The worker crate's one error type, and how each error is reported to the supervisor.
//!
//! Every variant names the thing that went wrong and the offending value. This module must
//! never decide what to do about an error (exit, retry, report); it only describes it.

use std::io;
use std::os::fd::RawFd;

use aitbc_protocol::wire::{WireError, WorkerFailReason};

use crate::confine::Step;

/// Everything that can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The descriptor handed over by the supervisor is not a connected Unix stream socket.
    #[error("fd {fd} is not the supervisor's socket: {reason}")]
    BadFd { fd: RawFd, reason: String },
    /// Reading or writing a frame failed, or the supervisor sent a malformed one.
    #[error("talking to the supervisor: {0}")]
    Wire(#[from] WireError),
    /// The job's parameters do not pass the worker's own re-check.
    #[error("{field} = {value}: {reason}")]
    BadParams {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A buffer the job needs could not be allocated.
    #[error("could not allocate {what} ({bytes} bytes): out of memory")]
    OutOfMemory { what: &'static str, bytes: u64 },
    /// The compute thread pool could not be started.
    #[error("could not start {threads} compute threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
    /// The worker's command line is wrong (the supervisor started it wrongly).
    #[error("{flag} = {value:?}: {reason}")]
    Usage {
        flag: String,
        value: String,
        reason: String,
    },
    /// A confinement step failed with an errno. The worker prints this and exits before its
    /// Hello, so the supervisor reports that the worker could not start.
    #[error("confinement step {step}: {what}: {source}")]
    Setup {
        step: Step,
        what: String,
        source: io::Error,
    },
    /// A confinement step could not be applied for a reason that is not one errno (Landlock
    /// missing when it was required, a capability still set after the drop, a seccomp policy
    /// that does not compile).
    #[error("confinement step {step}: {reason}")]
    SetupRefused { step: Step, reason: String },
    /// The job tried something the sandbox refused (EPERM/EACCES/EROFS/EFBIG from Landlock, the
    /// mount view, seccomp's deliberate EPERM answers or an rlimit).
    #[error("the sandbox refused {what}: {source}")]
    SandboxDenied { what: String, source: io::Error },
    /// The GPU path failed during a job (over the job's VRAM cap, the device out of memory, a
    /// driver or cuBLAS error, an inconsistent result).
    #[error("GPU: {0}")]
    Gpu(#[from] aitbc_cuda::CudaError),
    /// A bug: the computation panicked or produced what it must not (reported to the
    /// supervisor rather than crashing the conversation).
    #[error("internal error: {0}")]
    Internal(String),
}

impl WorkerError {
    /// The reason to put in a `FromWorker::Failed` frame when a job ends with this error.
    pub fn fail_reason(&self) -> WorkerFailReason {
        match self {
            WorkerError::BadParams { .. } => WorkerFailReason::BadParams,
            WorkerError::OutOfMemory { .. } => WorkerFailReason::OutOfMemory,
            WorkerError::SandboxDenied { .. } => WorkerFailReason::SandboxViolation,
            WorkerError::Gpu(e) if e.is_out_of_memory() => WorkerFailReason::OutOfMemory,
            WorkerError::Gpu(aitbc_cuda::CudaError::BadParams { .. }) => {
                WorkerFailReason::BadParams
            }
            WorkerError::BadFd { .. }
            | WorkerError::Usage { .. }
            | WorkerError::Setup { .. }
            | WorkerError::SetupRefused { .. }
            | WorkerError::Wire(_)
            | WorkerError::ThreadPool { .. }
            | WorkerError::Gpu(_)
            | WorkerError::Internal(_) => WorkerFailReason::Internal,
        }
    }
}

impl WorkerError {
    /// `SandboxDenied` when `source` is an error a confinement layer answers with (EPERM,
    /// EACCES, EROFS, EFBIG; ENOSPC or EDQUOT from the job's scratch tmpfs), otherwise `None`:
    /// for the worker's own I/O that it can attribute.
    pub fn sandbox_denied(what: impl Into<String>, source: io::Error) -> Option<WorkerError> {
        match source.raw_os_error() {
            Some(
                libc::EPERM
                | libc::EACCES
                | libc::EROFS
                | libc::EFBIG
                | libc::ENOSPC
                | libc::EDQUOT,
            ) => Some(WorkerError::SandboxDenied {
                what: what.into(),
                source,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_of_a_confinement_layer_are_sandbox_violations() {
        for errno in [
            libc::EPERM,
            libc::EACCES,
            libc::EROFS,
            libc::EFBIG,
            libc::ENOSPC,
            libc::EDQUOT,
        ] {
            let e =
                WorkerError::sandbox_denied("writing /etc/x", io::Error::from_raw_os_error(errno))
                    .expect("a sandbox refusal");
            assert_eq!(e.fail_reason(), WorkerFailReason::SandboxViolation);
            assert!(
                e.to_string()
                    .starts_with("the sandbox refused writing /etc/x: "),
                "{e}"
            );
        }
        for errno in [libc::ENOENT, libc::EIO, libc::EBADF] {
            assert!(
                WorkerError::sandbox_denied("x", io::Error::from_raw_os_error(errno)).is_none()
            );
        }
    }

    #[test]
    fn gpu_errors_map_to_the_reason_a_supervisor_can_act_on() {
        use aitbc_cuda::CudaError;
        let cap = WorkerError::from(CudaError::VramCap {
            what: "the torch_bench job",
            bytes: 47 << 20,
            used: 0,
            cap: 1 << 20,
        });
        assert_eq!(cap.fail_reason(), WorkerFailReason::OutOfMemory);
        assert!(
            cap.to_string()
                .starts_with("GPU: GPU memory cap exceeded: "),
            "{cap}"
        );
        let bad = WorkerError::from(CudaError::BadParams {
            field: "params.n",
            value: "0".into(),
            reason: "x".into(),
        });
        assert_eq!(bad.fail_reason(), WorkerFailReason::BadParams);
        let bug = WorkerError::from(CudaError::Inconsistent {
            what: "the device's count of requantizations",
            got: "[2, 0, 0, 0]".into(),
            expected: "[3, 0, 0, 0]".into(),
        });
        assert_eq!(bug.fail_reason(), WorkerFailReason::Internal);
    }
}

//! The worker crate's one error type, and how each error is reported to the supervisor.
//!
//! Every variant names the thing that went wrong and the offending value. This module must
//! never decide what to do about an error (exit, retry, report); it only describes it.

use std::os::fd::RawFd;

use aitbc_protocol::wire::{WireError, WorkerFailReason};

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
            WorkerError::BadFd { .. }
            | WorkerError::Wire(_)
            | WorkerError::ThreadPool { .. }
            | WorkerError::Internal(_) => WorkerFailReason::Internal,
        }
    }
}

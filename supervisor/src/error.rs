//! The supervisor's one error enum: everything `run`, `run_local` and their helpers can fail
//! with, each variant naming the thing that failed and the value involved.
//!
//! It must never carry the API key or a request header: errors end up in logs and on terminals.

use std::io;
use std::path::PathBuf;

use protocol::api::FailReason;

/// Why the supervisor (or one of its parts) could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `std::env::current_exe` failed, so the miner cannot re-run itself as a worker.
    #[error("cannot locate the miner's own executable to start workers (set WORKER_EXE): {0}")]
    CurrentExe(io::Error),
    /// A worker process could not be started.
    #[error("starting worker {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A worker started but did not say Hello properly.
    #[error("worker {program} did not start: {message}")]
    WorkerStart { program: PathBuf, message: String },
    /// A job attempt ended without output (used by `run_local`, where there is no Coordinator
    /// to report the failure to).
    #[error("job failed: {}: {message}", reason.as_str())]
    Job { reason: FailReason, message: String },
    /// The proof spool could not be read or written.
    #[error("proof spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// WORK_DIR could not be created.
    #[error("WORK_DIR {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The HTTP client could not be built (TLS backend, bad URL).
    #[error("HTTP client for {url}: {message}")]
    Client { url: String, message: String },
    /// A task of the supervisor panicked or was cancelled.
    #[error("supervisor task {task} ended abnormally: {message}")]
    Task { task: &'static str, message: String },
}

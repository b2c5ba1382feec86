//! How a worker attempt ended, as plain data: the [`Ending`] the supervisor observed and the
//! process's [`ExitStatus`]. `worker_proc` produces them and `policy` decides on them; this
//! module exists so that neither imports the other's internals. It must never do I/O or hold
//! a process, a file or a cgroup.

use protocol::merkle::Digest;
use protocol::wire::{JobOutput, WorkerFailure};

/// How a worker process ended, as `waitpid` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// Decodes a raw `wait` status word.
    pub fn from_raw(status: i32) -> ExitStatus {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }

    pub fn describe(self) -> String {
        match self {
            ExitStatus::Exited(code) => format!("exit code {code}"),
            ExitStatus::Signaled(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(s) => format!("signal {}", s.as_str()),
                Err(_) => format!("signal {sig}"),
            },
        }
    }
}

/// How a job attempt on a worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The worker's answer and the leaves of its output (as many as the job's rows, their
    /// root checked to be `merkle_root`).
    Done(JobOutput, Vec<Digest>),
    Failed(WorkerFailure),
    /// The worker ended or closed its socket without answering.
    Crashed,
    TimedOut,
    /// The worker sent something it must not; it was killed.
    Protocol(String),
    /// The supervisor gave up on the job (shutdown after the drain grace); it was killed.
    Cancelled,
    /// The job's limits could not be applied to the worker; it was killed before the job.
    Confinement(String),
    /// A watch over the running job (the VRAM watch) stopped it, saying why; it was killed.
    Stopped(String),
}

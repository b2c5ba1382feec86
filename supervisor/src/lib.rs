//! The miner's supervisor: it talks to the Coordinator (heartbeat, long-poll, proof, fail), runs
//! one job slot per MAX_CONCURRENCY, and runs each job in a fresh worker process spoken to over a
//! Unix socket pair.
//!
//! Map: [`config`] and [`logging`] set the miner up; [`runtime`] is the main loop (heartbeat,
//! dispatcher, slots, outbox, auditor); [`client`] speaks HTTP; [`spool`] keeps results durable
//! until the Coordinator has them; [`audit`] keeps what answers an audit of a proved job, and
//! builds the answer; [`plan`] decides everything a job is held to, [`execute`] runs a
//! planned job on a worker and [`worker_proc`] starts, feeds and reaps workers; [`local`] runs a
//! job with no Coordinator; [`status`] keeps what the daemon is doing for `aitbc-miner status` and
//! the Prometheus metrics, and [`notify`] tells systemd (ready, status, watchdog, stopping).
//! The decisions ([`plan`], [`policy`], [`backoff`], `client::classify`) are pure
//! functions, unit-tested without sockets or processes.
//!
//! Architecture invariants: only this crate talks to the Coordinator; it never runs job code in
//! its own process (every job gets a fresh worker); it never logs the API key; a result is
//! written to the spool before it is sent.

extern crate aitbc_protocol as protocol;

pub mod audit;
pub mod backoff;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod doctor;
pub mod ending;
mod error;
pub mod execute;
pub mod gpu;
pub mod local;
pub mod logging;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod privilege;
pub mod runtime;
pub mod spool;
pub mod status;
pub mod untrusted;
pub mod worker_proc;

use std::time::Duration;

pub use config::Config;
pub use error::Error;
pub use local::{run_local, LocalRun};
pub use runtime::run;
pub use worker_proc::WorkerCommand;

/// What the miner is doing, for a progress display (`aitbc-miner dev`) and for tests.
#[derive(Clone, Debug)]
pub enum Event {
    Heartbeat {
        ok: bool,
    },
    JobStarted {
        id: String,
        workload: String,
        slot: usize,
        /// From the job's creation (`created_at`) to now.
        pickup: Option<Duration>,
    },
    JobDone {
        id: String,
        wall_ms: u64,
        gflops: f64,
    },
    JobFailed {
        id: String,
        reason: protocol::api::FailReason,
        message: String,
    },
    ProofAccepted {
        id: String,
        credited: u64,
        /// The Coordinator asked an audit of it (answered from the audit spool).
        audited: bool,
        /// Not audited: when its credit settles (the end of the Coordinator's hold).
        settles_at: Option<time::OffsetDateTime>,
    },
    /// An audit's answer was decided (`Some` verdict) or refused (`None`: `NO_AUDIT` and the
    /// like).
    AuditAnswered {
        id: String,
        attempt: u32,
        verdict: Option<protocol::api::AuditVerdict>,
    },
    ProofRejected {
        id: String,
        status: u16,
        code: String,
    },
}

/// What a run achieved, returned once it has drained.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Jobs whose proof was produced (and spooled).
    pub jobs_done: u64,
    /// Jobs reported as failed.
    pub jobs_failed: u64,
}

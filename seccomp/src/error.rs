//! The crate's one error type: every way building or installing the filter can fail, each naming
//! the rule, filter or step involved and what to do about it.
//!
//! It must never hide a failure to confine: a caller that gets an error from `install` has no
//! filter (or only part of one) and must not run a job.

use std::io;

/// Why the policy could not be compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A rule of the policy does not translate to BPF (a bug in `policy.rs`).
    #[error("seccomp rule for `{syscall}` ({reason}) is invalid: {source}")]
    Rule {
        /// The system call the rule is about.
        syscall: &'static str,
        /// The rule's own one-line reason, to find it in `policy.rs`.
        reason: &'static str,
        /// What seccompiler refused.
        #[source]
        source: seccompiler::BackendError,
    },
    /// A whole filter does not compile (a bug in `compile.rs` or in the policy's shape).
    #[error("seccomp filter `{filter}` does not compile: {source}")]
    Filter {
        /// Which filter: `allow-list`, `refuse EPERM`, `refuse ENOSYS`.
        filter: String,
        /// What seccompiler refused.
        #[source]
        source: seccompiler::BackendError,
    },
    /// `install` needs no_new_privs already set by the caller (it is part of the worker's fixed
    /// set-up order, before capabilities are dropped).
    #[error(
        "no_new_privs is not set on this thread: call prctl(PR_SET_NO_NEW_PRIVS, 1) before \
         aitbc_seccomp::install (the worker does it right after its rlimits)"
    )]
    NoNewPrivs,
    /// `prctl(PR_GET_NO_NEW_PRIVS)` itself failed.
    #[error("prctl(PR_GET_NO_NEW_PRIVS) failed: {0}")]
    Prctl(#[source] io::Error),
    /// The SIGSYS reporter could not be installed.
    #[error("sigaction(SIGSYS) for the seccomp reporter failed: {0}")]
    Reporter(#[source] io::Error),
    /// The kernel refused a filter (seccomp missing from the kernel, or a filter too long).
    #[error(
        "installing seccomp filter `{filter}` failed: {source} (is the kernel built with \
         CONFIG_SECCOMP_FILTER? `aitbc-miner doctor` checks it)"
    )]
    Apply {
        /// Which filter.
        filter: String,
        /// What the kernel answered.
        #[source]
        source: seccompiler::Error,
    },
    /// TSYNC could not move another thread onto the filter (that thread already has a different
    /// seccomp filter of its own); the process is only partly confined and must exit.
    #[error(
        "seccomp filter `{filter}` could not be synchronised to thread {tid}: that thread has \
         its own diverging seccomp filter; the process is not confined and must exit"
    )]
    ThreadSync {
        /// Which filter.
        filter: String,
        /// The thread that could not be synchronised.
        tid: i64,
    },
}

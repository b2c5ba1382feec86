//! The worker's system-call policy: one allow-list per worker kind (`Profile::Cpu`,
//! `Profile::Gpu`) plus each served workload's fragment (`fragment`), written as data with a
//! reason per rule (`rules`), compiled to BPF with
//! seccompiler (`compile`), and installed on every thread of the process at once with a SIGSYS
//! reporter that names a forbidden call before the worker dies of it (`install`).
//!
//! Semantics: a call no rule allows traps (the reporter writes
//! `aitbc-worker: seccomp: forbidden system call NAME (NR)` to stderr and the process dies of
//! SIGSYS); calls refused on purpose fail with EPERM (sockets, fork-like clone, signals to other
//! processes, pidfds, `rt_sigaction(SIGSYS)`) or ENOSYS (`clone3`, so glibc falls back to
//! `clone`, whose flags a filter can read).
//!
//! This crate must never loosen the policy at run time (no environment switch, no "log only"
//! mode), never install a partial policy and report success, and never be used by the
//! supervisor on itself: it confines workers.

mod compile;
mod error;
mod names;
mod policy;
mod report;
pub mod rule;
mod workload;

pub use error::SeccompError;
pub use names::syscall_name;
pub use policy::rules;
pub use report::REPORT_PREFIX;
pub use rule::{decide, Action, Rule, Verdict};
pub use seccompiler::BpfProgram;
pub use workload::fragment;

use aitbc_protocol::workload::Workload;

/// Which allow-list a worker gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// A CPU worker: compute threads, its socket, its job directory.
    Cpu,
    /// A GPU worker: the Cpu list plus what the CUDA driver needs (not yet verified on a GPU).
    Gpu,
}

impl Profile {
    /// `"cpu"` or `"gpu"`, as in the worker's `--kind` and its Hello `sandbox` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Cpu => "cpu",
            Profile::Gpu => "gpu",
        }
    }
}

/// What the policy needs to know about the process it confines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    /// The worker's own pid (`getpid()`): signals may go to this process only.
    pub pid: u32,
}

impl Context {
    /// The context of the calling process.
    pub fn current() -> Context {
        Context {
            pid: std::process::id(),
        }
    }
}

/// Compiles `profile` for context `cx` into BPF programs, in the order `install` applies them:
/// the refusal filters (EPERM, ENOSYS) first, the allow-list (whose default is trap) last. The
/// kernel runs all of them on every call and keeps the most restrictive answer, which makes the
/// set behave exactly like `decide(&rules(profile, workloads), ..)`.
pub fn compile(
    profile: Profile,
    workloads: &[Workload],
    cx: &Context,
) -> Result<Vec<BpfProgram>, SeccompError> {
    Ok(compile::compile_rules(&rules(profile, workloads), cx)?
        .into_iter()
        .map(|f| f.program)
        .collect())
}

/// Confines the calling process with `profile` and the fragments of the `workloads` it serves: installs the SIGSYS reporter, then applies every
/// filter to all threads at once (TSYNC), so threads started earlier (rayon's pool, CUDA's
/// helpers) are covered too.
///
/// The caller must already have set no_new_privs (the worker's fixed set-up order does it before
/// dropping capabilities); this is checked and `SeccompError::NoNewPrivs` returned otherwise.
/// Everything that allocates happens before the first filter is applied. On any error the
/// process must not run a job: it may be partly confined.
pub fn install(profile: Profile, workloads: &[Workload], cx: &Context) -> Result<(), SeccompError> {
    let filters = compile::compile_rules(&rules(profile, workloads), cx)?;
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointer arguments.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    match nnp {
        1 => {}
        0 => return Err(SeccompError::NoNewPrivs),
        _ => return Err(SeccompError::Prctl(std::io::Error::last_os_error())),
    }
    report::install_reporter()?;
    for f in &filters {
        seccompiler::apply_filter_all_threads(&f.program).map_err(|source| match source {
            seccompiler::Error::ThreadSync(tid) => SeccompError::ThreadSync {
                filter: f.name.clone(),
                tid,
            },
            source => SeccompError::Apply {
                filter: f.name.clone(),
                source,
            },
        })?;
    }
    Ok(())
}

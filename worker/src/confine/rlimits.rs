//! Step 2: resource limits the worker sets on itself (soft = hard, so a job cannot raise them
//! back once capabilities are gone), as a backstop behind the cgroup.
//!
//! * `RLIMIT_CORE` 0: a crash never writes a core file (which could hold job data).
//! * `RLIMIT_NOFILE`: a handful of descriptors ([`nofile`]).
//! * `RLIMIT_FSIZE`: from `--file-size-mb`. `SIGXFSZ` is ignored so a write past it fails with
//!   `EFBIG`, which the worker can report as a sandbox violation, instead of killing it.
//! * `RLIMIT_NPROC`: [`NPROC`]. Set *after* the new user namespace exists, so (Linux >= 5.14,
//!   per-namespace ucounts) it counts only this worker's own tasks: several workers under one
//!   uid never share the count (tested in tests/suite/confinement.rs). It bounds threads, not
//!   jobs; the cgroup's pids limit is the real fork-bomb stop, and seccomp refuses fork itself.
//!
//! Limits known only when a job is handed over (RLIMIT_CPU, RLIMIT_AS) are set by the supervisor
//! from outside with prlimit(2). This module must never raise a limit.

use std::io;

use crate::confine::Step;
use crate::workload::MAX_THREADS;
use crate::WorkerError;
use aitbc_protocol::api::Mode;

/// RLIMIT_NPROC: the most compute threads a job may ask for, plus headroom for the main
/// thread and a runtime's helpers.
pub const NPROC: u64 = MAX_THREADS as u64 + 64;

/// RLIMIT_NOFILE for a worker kind. A CPU worker holds stdin/out/err, its socket and a few
/// transient descriptors; a GPU worker's driver opens several device nodes per context.
pub fn nofile(kind: Mode) -> u64 {
    match kind {
        Mode::Cpu => 64,
        Mode::Gpu => 1024,
    }
}

/// The limits, as applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub core: u64,
    pub nofile: u64,
    pub fsize_bytes: u64,
    pub nproc: u64,
}

impl Limits {
    /// The limits for a worker of `kind` allowed files of `file_size_mb` MiB.
    pub fn for_worker(kind: Mode, file_size_mb: u64) -> Limits {
        Limits {
            core: 0,
            nofile: nofile(kind),
            fsize_bytes: file_size_mb.saturating_mul(1 << 20),
            nproc: NPROC,
        }
    }

    /// The per-file limit in MiB, which is also the size of the job's scratch tmpfs.
    pub fn fsize_mb(&self) -> u64 {
        self.fsize_bytes >> 20
    }

    /// `rlimits core=0 nofile=64 fsize=1024MiB nproc=4160`.
    pub fn describe(&self) -> String {
        format!(
            "rlimits core={} nofile={} fsize={}MiB nproc={}",
            self.core,
            self.nofile,
            self.fsize_bytes >> 20,
            self.nproc
        )
    }
}

/// Applies `l` to this process (each value capped at the hard limit the worker inherited) and
/// ignores SIGXFSZ. Returns the limits as applied.
pub fn apply(l: &Limits) -> Result<Limits, WorkerError> {
    let applied = Limits {
        core: set(libc::RLIMIT_CORE, "RLIMIT_CORE", l.core)?,
        nofile: set(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", l.nofile)?,
        fsize_bytes: set(libc::RLIMIT_FSIZE, "RLIMIT_FSIZE", l.fsize_bytes)?,
        nproc: set(libc::RLIMIT_NPROC, "RLIMIT_NPROC", l.nproc)?,
    };
    // SAFETY: SIG_IGN is a valid disposition for SIGXFSZ; no handler code is involved.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        return Err(WorkerError::Setup {
            step: Step::Rlimits,
            what: "ignoring SIGXFSZ".into(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(applied)
}

/// The job's own limits, applied by the worker to itself when the job arrives (after the
/// sandbox is sealed, before any of the job's work): RLIMIT_CPU at `cpu_time_s` (hard one
/// second later, so the kernel's SIGXCPU comes first and SIGKILL follows), and RLIMIT_AS when
/// given. Never raises a limit. The seccomp policy allows exactly these two `setrlimit`s.
pub fn apply_job(cpu_time_s: u64, address_space_bytes: Option<u64>) -> Result<(), WorkerError> {
    if cpu_time_s > 0 {
        set_soft_hard(
            libc::RLIMIT_CPU,
            "RLIMIT_CPU",
            cpu_time_s,
            cpu_time_s.saturating_add(1),
        )?;
    }
    if let Some(bytes) = address_space_bytes {
        set(libc::RLIMIT_AS, "RLIMIT_AS", bytes)?;
    }
    Ok(())
}

/// Sets the limit to `soft`/`hard`, each capped at the current hard limit (never raised);
/// returns the soft value applied.
fn set_soft_hard(
    resource: libc::__rlimit_resource_t,
    name: &str,
    soft: u64,
    hard: u64,
) -> Result<u64, WorkerError> {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource, &mut cur) } != 0 {
        return Err(os(format!("getrlimit({name})"), io::Error::last_os_error()));
    }
    let hard = hard.min(cur.rlim_max);
    let lim = libc::rlimit {
        rlim_cur: soft.min(hard),
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(os(
            format!("setrlimit({name}, {}/{})", lim.rlim_cur, lim.rlim_max),
            io::Error::last_os_error(),
        ));
    }
    Ok(lim.rlim_cur)
}

/// Sets soft = hard = `min(value, current hard)`; returns that value.
fn set(resource: libc::__rlimit_resource_t, name: &str, value: u64) -> Result<u64, WorkerError> {
    set_soft_hard(resource, name, value, value)
}

fn os(what: String, source: io::Error) -> WorkerError {
    WorkerError::Setup {
        step: Step::Rlimits,
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_kind_and_their_description() {
        let l = Limits::for_worker(Mode::Cpu, 1024);
        assert_eq!(l.fsize_bytes, 1 << 30);
        assert_eq!(
            l.describe(),
            format!("rlimits core=0 nofile=64 fsize=1024MiB nproc={NPROC}")
        );
        assert_eq!(Limits::for_worker(Mode::Gpu, 1).nofile, 1024);
    }
}

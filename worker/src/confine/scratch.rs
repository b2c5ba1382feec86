//! Part of step 1: the job directory becomes a private tmpfs of the job's disk budget.
//!
//! Right after the namespaces are entered (the worker holds capabilities over its own mount
//! namespace only), mounts are made private and a tmpfs of `--file-size-mb` MiB is mounted on
//! the job directory, `nosuid,nodev,noexec`, mode 0700. What a job writes therefore lives in its
//! own mount namespace and is bounded in total (RLIMIT_FSIZE bounds one file only): a job that
//! fills it gets ENOSPC, the host's disk is never touched, and its pages are charged to the
//! worker's memory cgroup, so they also count against `ram_mb`. The files vanish with the
//! worker's mount namespace when it exits.
//!
//! This module must never mount anything outside the job directory, and never run after the
//! capabilities are dropped (it needs CAP_SYS_ADMIN over the worker's own namespace).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::confine::Step;
use crate::WorkerError;

/// Inodes the scratch tmpfs may hold: enough for any real job, small enough that a job
/// cannot spend kernel memory on millions of empty files.
pub const SCRATCH_INODES: u64 = 16_384;

/// Makes every mount private to this namespace, then mounts the scratch tmpfs of `size_mb` MiB
/// on `job_dir`. Returns the Hello summary, e.g. `scratch tmpfs 1024MiB`.
pub fn mount_scratch(job_dir: &Path, size_mb: u64) -> Result<String, WorkerError> {
    let root = c"/";
    // SAFETY: mount with NUL-terminated strings that outlive the call and null pointers where
    // the kernel takes none.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os("making / private".into(), io::Error::last_os_error()));
    }
    let target =
        CString::new(job_dir.as_os_str().as_bytes()).map_err(|_| WorkerError::SetupRefused {
            step: Step::Namespaces,
            reason: format!("--job-dir {} holds a NUL byte", job_dir.display()),
        })?;
    let options = CString::new(options(size_mb)).map_err(|_| WorkerError::SetupRefused {
        step: Step::Namespaces,
        reason: "tmpfs options hold a NUL byte".into(),
    })?;
    let tmpfs = c"tmpfs";
    // SAFETY: source, target, type and options are NUL-terminated strings that outlive the
    // call; tmpfs reads `options` as a string.
    let rc = unsafe {
        libc::mount(
            tmpfs.as_ptr(),
            target.as_ptr(),
            tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(os(
            format!("mounting a {size_mb} MiB tmpfs on {}", job_dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(format!("scratch tmpfs {size_mb}MiB"))
}

/// The tmpfs mount options for a scratch space of `size_mb` MiB.
pub fn options(size_mb: u64) -> String {
    format!("size={size_mb}m,nr_inodes={SCRATCH_INODES},mode=0700")
}

fn os(what: String, source: io::Error) -> WorkerError {
    WorkerError::Setup {
        step: Step::Namespaces,
        what,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_bound_size_and_inodes() {
        assert_eq!(options(8), "size=8m,nr_inodes=16384,mode=0700");
    }
}

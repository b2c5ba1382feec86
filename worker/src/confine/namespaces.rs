//! Step 1: new user, network and mount namespaces.
//!
//! `unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)`, then `setgroups` is denied and the
//! worker's own uid and gid are mapped to themselves (one line each), so files keep their owners
//! and nothing else is mapped. The new network namespace has only a loopback device, left down:
//! the worker has no network at all. Inside the new user namespace the worker briefly holds
//! every capability *over that namespace only*; step 4 drops them all.
//!
//! This must run while the process has one thread (the kernel refuses `CLONE_NEWUSER`
//! otherwise), and must never map any id but the worker's own.

use std::io;

use crate::confine::Step;
use crate::WorkerError;

/// Unshares the namespaces and writes the id maps. The mount namespace is always new: the
/// scratch tmpfs on the job directory lives in it (and, with `--fs mount`, the whole view).
pub fn enter() -> Result<(), WorkerError> {
    // Read before unsharing: inside the new namespace, until the map is written, every id
    // reads as the overflow id.
    // SAFETY: getuid/getgid cannot fail and touch no memory of ours.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS;
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(flags) } != 0 {
        let err = io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::EINVAL) => " (the process must be single-threaded)",
            Some(libc::EPERM) | Some(libc::ENOSPC) => {
                " (user namespaces disabled? see kernel.unprivileged_userns_clone, \
                 user.max_user_namespaces, AppArmor's restrict_unprivileged_userns)"
            }
            _ => "",
        };
        return Err(os(
            format!("unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS){hint}"),
            err,
        ));
    }
    write_proc("/proc/self/setgroups", "deny")?;
    write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1\n"))?;
    write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1\n"))?;
    Ok(())
}

fn write_proc(path: &str, text: &str) -> Result<(), WorkerError> {
    std::fs::write(path, text).map_err(|e| os(format!("writing {text:?} to {path}"), e))
}

fn os(what: String, source: io::Error) -> WorkerError {
    WorkerError::Setup {
        step: Step::Namespaces,
        what,
        source,
    }
}

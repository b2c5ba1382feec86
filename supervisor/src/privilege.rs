//! Giving up root: what a miner started as root does once its root-only set-up is done, and
//! what any supervisor does to protect itself from its own workers.
//!
//! - [`lookup_user`] turns `RUN_AS_USER` into a uid and gid (`getpwnam`);
//! - [`prepare_dir`] makes WORK_DIR, STATE_DIR and the spool usable by that user while still
//!   root (creating them owned by it, or handing a root-owned one over), without loosening an
//!   operator's modes and without following a symlink at the directory itself;
//! - [`drop_to`] drops for good: every capability out of the bounding set (while CAP_SETPCAP is
//!   still there), `setgroups([gid])`, `setresgid`, `setresuid`, then the ambient,
//!   inheritable, permitted and effective sets cleared, and the result checked
//!   ([`Credentials::check_dropped`], plus a `setuid(0)` that must fail);
//! - [`drop_capabilities`] is the non-root case: a supervisor that somehow holds capabilities
//!   (file capabilities, a unit's `AmbientCapabilities=`) gives them all up; it needs none;
//! - [`protect_self`] sets `PR_SET_DUMPABLE` to 0, so processes of the same uid (the workers)
//!   can neither ptrace the supervisor nor open its `/proc/<pid>/{mem,environ,fd}` (those files
//!   become root-owned), and `PR_SET_NO_NEW_PRIVS`, so nothing it executes can gain privileges.
//!   The supervisor itself reads only `/proc/<worker>/stat`, `/proc/meminfo` and world-readable
//!   files of its own (`/proc/self/cgroup`, `mountinfo`), which stay readable; a process may
//!   always read its own `/proc/self/fd` and `environ`.
//!
//! Credentials and capabilities are per thread in the kernel: [`drop_to`] refuses to run in a
//! process that has more than one thread (call it before the async runtime starts).
//!
//! This module must never leave a half-dropped process running (every failure is an error the
//! caller must treat as fatal), never raise a capability, and never change the mode or owner of
//! a directory it did not create unless that directory is owned by root and the run-as user
//! cannot use it otherwise.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use caps::CapSet;

use crate::Error;

/// The fix printed when `RUN_AS_USER` names no user.
const MISSING_USER_FIX: &str = "create it with `useradd --system --no-create-home aitbc-miner` \
                                (or the name you configured), or set RUN_AS_USER=nobody";

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The uid and primary gid of `name`, from the system's user database (`getpwnam`).
///
/// A user that does not exist is an error naming `RUN_AS_USER`, the value and the fix.
pub fn lookup_user(name: &str) -> Result<(u32, u32), Error> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) => Err(Error::RunAsUser {
            user: name.to_string(),
            message: format!("no such user on this system; {MISSING_USER_FIX}"),
        }),
        Err(errno) => Err(Error::RunAsUser {
            user: name.to_string(),
            message: format!("cannot look the user up: {errno}"),
        }),
    }
}

/// What the run-as user must be able to do in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Only pass through it to a sub-directory (search permission), e.g. STATE_DIR.
    Traverse,
    /// Create, read and remove entries in it, e.g. WORK_DIR and the spool.
    ReadWrite,
}

/// Whether a user (`uid`, member only of `gid`) may do `need` in a directory with this owner,
/// group and mode, by the classic permission bits (root is not special here).
pub fn may_access(uid: u32, gid: u32, owner: u32, group: u32, mode: u32, need: Need) -> bool {
    let bits = if owner == uid {
        (mode >> 6) & 7
    } else if group == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    match need {
        Need::Traverse => bits & 1 != 0,
        Need::ReadWrite => bits & 7 == 7,
    }
}

/// Makes `path` usable by `uid`:`gid` for `need`. Called as root before [`drop_to`].
///
/// - missing: created (parents too, mode 0755 as usual for parents) with mode 0700, owned by
///   the user;
/// - present and already usable by the user: left exactly as it is (`/tmp`, a shared parent);
/// - present, owned by root, not usable: handed to the user (`chown uid:gid`, the owner's
///   `rwx` added, group and other bits untouched);
/// - owned by anyone else, a symlink, or not a directory: an error with the fix.
///
/// Every ancestor must let the user pass (search permission); one that does not is an error
/// naming it, never changed.
pub fn prepare_dir(
    key: &'static str,
    path: &Path,
    uid: u32,
    gid: u32,
    need: Need,
) -> Result<(), Error> {
    let fail = |message: String| Error::Directory {
        key,
        path: path.to_path_buf(),
        message,
    };
    if !path.is_absolute() {
        return Err(fail("expected an absolute path".into()));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| fail(format!("cannot create its parent: {e}")))?;
    }
    let created = match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(fail(format!("cannot create it: {e}"))),
    };
    // Open the directory itself without following a symlink there, and work on the open
    // descriptor, so what is checked is what is changed.
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // O_DIRECTORY answers ENOTDIR for a symlink too; say which it is.
            Some(libc::ELOOP | libc::ENOTDIR)
                if std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink()) =>
            {
                fail("is a symbolic link; point the key at a real directory".into())
            }
            Some(libc::ENOTDIR) => fail("is not a directory".into()),
            _ => fail(format!("cannot open it: {e}")),
        })?;
    let meta = dir
        .metadata()
        .map_err(|e| fail(format!("cannot stat it: {e}")))?;
    let mode = meta.mode() & 0o7777;
    let usable = may_access(uid, gid, meta.uid(), meta.gid(), mode, need);
    if created || (!usable && meta.uid() == 0) {
        nix::unistd::fchown(&dir, Some(uid.into()), Some(gid.into()))
            .map_err(|e| fail(format!("cannot hand it to uid {uid}: {e}")))?;
        if mode & 0o700 != 0o700 {
            nix::sys::stat::fchmod(&dir, nix::sys::stat::Mode::from_bits_truncate(mode | 0o700))
                .map_err(|e| fail(format!("cannot give its owner rwx: {e}")))?;
        }
    } else if !usable {
        return Err(fail(format!(
            "is owned by uid {} (mode {mode:04o}), neither root nor the run-as user (uid {uid}); \
             fix: chown {uid}:{gid} {}, or point {key} elsewhere",
            meta.uid(),
            path.display()
        )));
    }
    drop(dir);
    for ancestor in path.ancestors().skip(1) {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| fail(format!("cannot stat {}: {e}", ancestor.display())))?;
        if !may_access(
            uid,
            gid,
            meta.uid(),
            meta.gid(),
            meta.mode(),
            Need::Traverse,
        ) {
            return Err(fail(format!(
                "the run-as user (uid {uid}) cannot pass through {} (owner uid {}, mode {:04o}); \
                 fix: chmod o+x {} or choose a directory it can reach",
                ancestor.display(),
                meta.uid(),
                meta.mode() & 0o7777,
                ancestor.display()
            )));
        }
    }
    Ok(())
}

/// A process's identity and privileges, as the kernel reports them for the calling thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective and saved uid.
    pub uids: (u32, u32, u32),
    /// Real, effective and saved gid.
    pub gids: (u32, u32, u32),
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capability sets as bit masks (bit n = capability n).
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
    /// The ambient set.
    pub ambient: u64,
    /// The bounding set.
    pub bounding: u64,
    /// `PR_GET_NO_NEW_PRIVS`.
    pub no_new_privs: bool,
    /// `PR_GET_DUMPABLE` is not 0.
    pub dumpable: bool,
}

impl Credentials {
    /// Reads the calling thread's credentials.
    pub fn current() -> Result<Credentials, Error> {
        let res_uid = nix::unistd::getresuid().map_err(|e| step_err("getresuid", e))?;
        let res_gid = nix::unistd::getresgid().map_err(|e| step_err("getresgid", e))?;
        let groups = nix::unistd::getgroups()
            .map_err(|e| step_err("getgroups", e))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mask = |set: CapSet| -> Result<u64, Error> {
            let caps = caps::read(None, set).map_err(|e| Error::Privilege {
                step: format!("reading the {set:?} capability set"),
                source: io::Error::other(e.to_string()),
            })?;
            Ok(caps.iter().fold(0u64, |m, c| m | c.bitmask()))
        };
        // SAFETY: prctl with PR_GET_* options only reads this thread's flags.
        let (nnp, dumpable) = unsafe {
            (
                libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
                libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0),
            )
        };
        Ok(Credentials {
            uids: (
                res_uid.real.as_raw(),
                res_uid.effective.as_raw(),
                res_uid.saved.as_raw(),
            ),
            gids: (
                res_gid.real.as_raw(),
                res_gid.effective.as_raw(),
                res_gid.saved.as_raw(),
            ),
            groups,
            effective: mask(CapSet::Effective)?,
            permitted: mask(CapSet::Permitted)?,
            inheritable: mask(CapSet::Inheritable)?,
            ambient: mask(CapSet::Ambient)?,
            bounding: bounding_mask(),
            no_new_privs: nnp == 1,
            dumpable: dumpable != 0,
        })
    }

    /// Whether any capability set other than the bounding set holds something.
    pub fn holds_capabilities(&self) -> bool {
        self.effective | self.permitted | self.inheritable | self.ambient != 0
    }

    /// What is wrong with these credentials for a process that dropped to `uid`:`gid`; `None`
    /// when the drop is complete (all ids equal, only `gid` as group, every capability set,
    /// bounding included, empty).
    pub fn check_dropped(&self, uid: u32, gid: u32) -> Option<String> {
        let mut wrong = Vec::new();
        if self.uids != (uid, uid, uid) {
            wrong.push(format!(
                "uids (real, effective, saved) are {:?}, expected {uid}",
                self.uids
            ));
        }
        if self.gids != (gid, gid, gid) {
            wrong.push(format!(
                "gids (real, effective, saved) are {:?}, expected {gid}",
                self.gids
            ));
        }
        if self.groups.iter().any(|g| *g != gid) {
            wrong.push(format!(
                "supplementary groups are {:?}, expected [{gid}]",
                self.groups
            ));
        }
        for (name, set) in [
            ("effective", self.effective),
            ("permitted", self.permitted),
            ("inheritable", self.inheritable),
            ("ambient", self.ambient),
            ("bounding", self.bounding),
        ] {
            if set != 0 {
                wrong.push(format!("the {name} capability set is {set:#x}, expected 0"));
            }
        }
        (!wrong.is_empty()).then(|| wrong.join("; "))
    }
}

fn step_err(step: &str, errno: nix::errno::Errno) -> Error {
    Error::Privilege {
        step: step.to_string(),
        source: io::Error::from(errno),
    }
}

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`); 63 when
/// unknown, since probing past the end only answers EINVAL.
fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(63)
        .min(63)
}

/// The bounding set as a mask, every capability the kernel knows (not only those the caps
/// crate names).
fn bounding_mask() -> u64 {
    let mut mask = 0u64;
    for cap in 0..=cap_last_cap() {
        // SAFETY: PR_CAPBSET_READ only reads this thread's bounding set.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) };
        if r == 1 {
            mask |= 1 << cap;
        }
    }
    mask
}

/// Drops every capability the kernel knows from the bounding set. Needs CAP_SETPCAP.
fn clear_bounding() -> Result<(), Error> {
    for cap in 0..=cap_last_cap() {
        // SAFETY: PR_CAPBSET_READ/PR_CAPBSET_DROP act on this thread's bounding set only.
        unsafe {
            if libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) != 1 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) != 0 {
                return Err(Error::Privilege {
                    step: format!("dropping capability {cap} from the bounding set"),
                    source: io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

/// Empties the ambient, inheritable, effective and permitted sets (in that order: the
/// ambient set may only hold what is permitted and inheritable).
fn clear_capability_sets() -> Result<(), Error> {
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| Error::Privilege {
            step: format!("clearing the {set:?} capability set"),
            source: io::Error::other(e.to_string()),
        })?;
    }
    Ok(())
}

/// How many threads this process has (`Threads:` of `/proc/self/status`).
fn thread_count() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Gives up root for good: bounding set emptied, groups set to `[gid]`, gids then uids set to
/// `gid`/`uid` (real, effective and saved), every capability set cleared, then checked; a
/// `setuid(0)` must fail. Call as root, in a process with a single thread, after everything
/// that needs root is done.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), Error> {
    if uid == 0 {
        return Err(Error::PrivilegeCheck(
            "the run-as user is root (uid 0); set RUN_AS_USER to an unprivileged user".into(),
        ));
    }
    match thread_count() {
        Some(1) => {}
        Some(n) => {
            return Err(Error::PrivilegeCheck(format!(
                "the process has {n} threads; credentials are per thread, so privileges must \
                 be dropped before any thread starts"
            )))
        }
        None => {
            return Err(Error::PrivilegeCheck(
                "cannot read the thread count from /proc/self/status".into(),
            ))
        }
    }
    // 1. The bounding set, while CAP_SETPCAP is still effective.
    clear_bounding()?;
    // 2. Groups before gids before uids: each later step takes away the right to the earlier.
    nix::unistd::setgroups(&[gid.into()])
        .map_err(|e| step_err(&format!("setgroups([{gid}])"), e))?;
    nix::unistd::setresgid(gid.into(), gid.into(), gid.into())
        .map_err(|e| step_err(&format!("setresgid({gid})"), e))?;
    nix::unistd::setresuid(uid.into(), uid.into(), uid.into())
        .map_err(|e| step_err(&format!("setresuid({uid})"), e))?;
    // 3. The kernel clears permitted, effective and ambient when every uid leaves 0, but not
    //    the inheritable set; clear all four explicitly.
    clear_capability_sets()?;
    // 4. Check.
    let now = Credentials::current()?;
    if let Some(wrong) = now.check_dropped(uid, gid) {
        return Err(Error::PrivilegeCheck(wrong));
    }
    // SAFETY: setuid(2) with a constant; expected to fail with EPERM. If it succeeds the
    // process is root again and the error below stops the miner.
    if unsafe { libc::setuid(0) } == 0 {
        return Err(Error::PrivilegeCheck(
            "setuid(0) succeeded after the drop".into(),
        ));
    }
    Ok(())
}

/// For a supervisor that does not start as root: gives up any capability it holds (it needs
/// none; a systemd-delegated cgroup is writable by its uid). Returns the effective mask it held
/// before, 0 when it held none. The bounding set is emptied too when CAP_SETPCAP allows it.
pub fn drop_capabilities() -> Result<u64, Error> {
    let before = Credentials::current()?;
    if !before.holds_capabilities() {
        return Ok(0);
    }
    if before.effective & caps::Capability::CAP_SETPCAP.bitmask() != 0 {
        clear_bounding()?;
    }
    clear_capability_sets()?;
    let after = Credentials::current()?;
    if after.holds_capabilities() {
        return Err(Error::PrivilegeCheck(format!(
            "capabilities remain after clearing them: effective {:#x}, permitted {:#x}, \
             inheritable {:#x}, ambient {:#x}",
            after.effective, after.permitted, after.inheritable, after.ambient
        )));
    }
    Ok(before.effective | before.permitted)
}

/// Makes the supervisor untouchable by processes of its own uid: not dumpable (no ptrace, no
/// `/proc/<pid>/{mem,environ,fd}` for them) and no_new_privs (nothing it executes gains
/// privileges). Workers set no_new_privs themselves as well.
pub fn protect_self() -> Result<(), Error> {
    // SAFETY: prctl with constant arguments on this process.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(Error::Privilege {
                step: "prctl(PR_SET_DUMPABLE, 0)".into(),
                source: io::Error::last_os_error(),
            });
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(Error::Privilege {
                step: "prctl(PR_SET_NO_NEW_PRIVS, 1)".into(),
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// The name of the user with this uid, or the number when it has none.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

/// What [`set_up`] did, for the log and for the worker command.
pub struct SetUp {
    /// The supervisor's cgroup subtree, when the host gives one (root, or a delegated v2
    /// cgroup); `None` means rlimits and process groups only.
    pub subtree: Option<std::sync::Arc<crate::cgroup::Subtree>>,
    /// The user the process dropped to: (name, uid, gid); `None` when it did not start as root.
    pub dropped_to: Option<(String, u32, u32)>,
    /// Capabilities (effective | permitted mask) a non-root process held and gave up.
    pub capabilities_dropped: u64,
}

/// Everything `aitbc-miner run` does between reading its config (and opening its log file)
/// and starting the supervisor, in this order:
///
/// 1. as root: look up `RUN_AS_USER` (a missing user stops the miner here);
/// 2. as root: make `STATE_DIR` (traverse), `STATE_DIR/spool` and `WORK_DIR` (read-write)
///    usable by that user ([`prepare_dir`]);
/// 3. create the cgroup subtree `<MINER_ID>.<pid>` ([`crate::cgroup::supervisor_subtree`]):
///    as root, hand it to the run-as user; move this process into its `supervisor` leaf (a
///    failure here is a logged warning, not fatal: workers then get no per-worker cgroup);
/// 4. as root: [`drop_to`] the run-as user; otherwise [`drop_capabilities`];
/// 5. [`protect_self`].
///
/// Must be called while the process has a single thread (before the async runtime starts).
pub fn set_up(config: &crate::Config) -> Result<SetUp, Error> {
    let run_as = if is_root() {
        let (uid, gid) = lookup_user(&config.run_as_user)?;
        if uid == 0 {
            return Err(Error::RunAsUser {
                user: config.run_as_user.clone(),
                message: "is root; set RUN_AS_USER to an unprivileged user, e.g. aitbc-miner"
                    .into(),
            });
        }
        prepare_dir("STATE_DIR", &config.state_dir, uid, gid, Need::Traverse)?;
        prepare_dir(
            "STATE_DIR/spool",
            &config.state_dir.join("spool"),
            uid,
            gid,
            Need::ReadWrite,
        )?;
        prepare_dir("WORK_DIR", &config.work_dir, uid, gid, Need::ReadWrite)?;
        Some((uid, gid))
    } else {
        None
    };
    // Non-fatal by design: without a subtree workers keep rlimits, namespaces and seccomp
    // (`supervisor_subtree` logs which); `aitbc-miner doctor` says why and how to fix it.
    let subtree = crate::cgroup::supervisor_subtree(&config.miner_id, run_as);
    let mut capabilities_dropped = 0;
    let dropped_to = match run_as {
        Some((uid, gid)) => {
            drop_to(uid, gid)?;
            tracing::info!(
                user = %config.run_as_user,
                uid,
                gid,
                "dropped root: no capabilities, no way back"
            );
            Some((config.run_as_user.clone(), uid, gid))
        }
        None => {
            capabilities_dropped = drop_capabilities()?;
            if capabilities_dropped != 0 {
                tracing::warn!(
                    "gave up capabilities {capabilities_dropped:#x}; the miner needs none \
                     (remove file capabilities or AmbientCapabilities=)"
                );
            }
            None
        }
    };
    protect_self()?;
    Ok(SetUp {
        subtree,
        dropped_to,
        capabilities_dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_follows_owner_then_group_then_other() {
        // owner bits win even when they are stricter than other's
        assert!(!may_access(5, 5, 5, 0, 0o077, Need::Traverse));
        assert!(may_access(5, 5, 5, 0, 0o700, Need::ReadWrite));
        assert!(may_access(5, 5, 0, 5, 0o070, Need::ReadWrite));
        assert!(!may_access(5, 5, 0, 5, 0o050, Need::ReadWrite));
        assert!(may_access(5, 5, 0, 5, 0o010, Need::Traverse));
        assert!(may_access(5, 5, 0, 0, 0o755, Need::Traverse));
        assert!(!may_access(5, 5, 0, 0, 0o755, Need::ReadWrite));
        assert!(may_access(5, 5, 0, 0, 0o1777, Need::ReadWrite), "/tmp");
        assert!(!may_access(5, 5, 0, 0, 0o700, Need::Traverse));
    }

    #[test]
    fn check_dropped_names_everything_left() {
        let clean = Credentials {
            uids: (65534, 65534, 65534),
            gids: (65534, 65534, 65534),
            groups: vec![65534],
            effective: 0,
            permitted: 0,
            inheritable: 0,
            ambient: 0,
            bounding: 0,
            no_new_privs: true,
            dumpable: false,
        };
        assert_eq!(clean.check_dropped(65534, 65534), None);
        assert!(!clean.holds_capabilities());
        let dirty = Credentials {
            uids: (65534, 65534, 0),
            groups: vec![0, 65534],
            permitted: 1 << 21,
            bounding: u64::MAX >> 23,
            ..clean.clone()
        };
        let wrong = dirty.check_dropped(65534, 65534).unwrap();
        assert!(
            wrong.contains("uids (real, effective, saved) are (65534, 65534, 0)"),
            "{wrong}"
        );
        assert!(
            wrong.contains("supplementary groups are [0, 65534]"),
            "{wrong}"
        );
        assert!(
            wrong.contains("the permitted capability set is 0x200000"),
            "{wrong}"
        );
        assert!(wrong.contains("the bounding capability set is"), "{wrong}");
        assert!(!wrong.contains("effective capability"), "{wrong}");
        assert!(dirty.holds_capabilities());
    }

    #[test]
    fn a_missing_user_names_the_key_the_value_and_the_fix() {
        let err = lookup_user("aitbc-no-such-user-x").unwrap_err().to_string();
        assert!(
            err.starts_with("RUN_AS_USER=\"aitbc-no-such-user-x\": no such user on this system"),
            "{err}"
        );
        assert!(
            err.contains("useradd --system --no-create-home aitbc-miner"),
            "{err}"
        );
        assert!(err.contains("RUN_AS_USER=nobody"), "{err}");
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
    }

    #[test]
    fn credentials_of_this_process_read_without_error() {
        let c = Credentials::current().unwrap();
        assert_eq!(c.uids.1, nix::unistd::geteuid().as_raw());
        if is_root() {
            assert!(c.holds_capabilities(), "root holds capabilities here");
        }
    }

    #[test]
    fn prepare_dir_creates_hands_over_and_refuses() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        let my_gid = nix::unistd::getegid().as_raw();
        // created: 0700, owned by the user (here: whoever runs the test)
        let work = base.path().join("a/b/work");
        prepare_dir("WORK_DIR", &work, me, my_gid, Need::ReadWrite).unwrap();
        let meta = std::fs::metadata(&work).unwrap();
        assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o700, me));
        // present and usable: untouched
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare_dir("WORK_DIR", &work, me, my_gid, Need::ReadWrite).unwrap();
        assert_eq!(std::fs::metadata(&work).unwrap().mode() & 0o7777, 0o750);
        // a symlink is refused
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&work, &link).unwrap();
        let err = prepare_dir("WORK_DIR", &link, me, my_gid, Need::ReadWrite)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("is a symbolic link; point the key at a real directory"),
            "{err}"
        );
        // a file is refused
        let file = base.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = prepare_dir("STATE_DIR", &file, me, my_gid, Need::Traverse)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a directory"), "{err}");
        if is_root() {
            // root-owned and unusable by uid 65534: handed over, group/other bits kept
            let state = base.path().join("state");
            std::fs::create_dir(&state).unwrap();
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o500)).unwrap();
            std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            prepare_dir("STATE_DIR", &state, 65534, 65534, Need::ReadWrite).unwrap();
            let meta = std::fs::metadata(&state).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid(), meta.mode() & 0o7777),
                (65534, 65534, 0o700)
            );
            // owned by a third user: refused with the fix
            let other = base.path().join("other");
            std::fs::create_dir(&other).unwrap();
            nix::unistd::chown(&other, Some(1234.into()), Some(1234.into())).unwrap();
            std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
            let err = prepare_dir("WORK_DIR", &other, 65534, 65534, Need::ReadWrite)
                .unwrap_err()
                .to_string();
            assert!(err.contains("is owned by uid 1234"), "{err}");
            assert!(err.contains("fix: chown 65534:65534"), "{err}");
            // an ancestor the user cannot pass: named, never changed
            std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            let err = prepare_dir(
                "WORK_DIR",
                &base.path().join("w2"),
                65534,
                65534,
                Need::ReadWrite,
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("cannot pass through {}", base.path().display())),
                "{err}"
            );
            assert_eq!(
                std::fs::metadata(base.path()).unwrap().mode() & 0o7777,
                0o700
            );
        }
    }
}

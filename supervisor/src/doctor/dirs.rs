//! The doctor's directory lines: can the user the miner runs as use `STATE_DIR` (pass through
//! it), its `spool` (write proofs there) and `WORK_DIR` (make job directories there)?
//!
//! The rules are `privilege::prepare_dir`'s, which a root `run` applies before it drops to
//! `RUN_AS_USER`: a missing directory is created for the user, a root-owned one is handed
//! over, one owned by anyone else is an error. Under the systemd unit the miner starts as that
//! user and does none of this (`StateDirectory=` makes STATE_DIR), so a root-owned directory
//! the user cannot write is worth a warning even when a root `run` would fix it.
//!
//! [`probe`] reads ownership and modes, and for a directory that must be writable it also
//! really creates and removes one empty file in it, as that user (a forked child switches to
//! the user first when the doctor runs as root), which catches read-only mounts and ACLs. It
//! never creates, chowns or chmods a directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{errno_text, Line, Status};
use crate::privilege::{may_access, Need};

/// One directory as the run-as user would meet it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFacts {
    /// `STATE_DIR`, `STATE_DIR/spool` or `WORK_DIR`.
    pub key: &'static str,
    /// The directory.
    pub path: PathBuf,
    /// What the miner does there.
    pub need: Need,
    /// What was found.
    pub state: DirState,
}

/// What [`probe`] found at a directory's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// It does not exist; `parent_usable` says whether the user could create it in its
    /// nearest existing ancestor `parent`.
    Missing {
        parent: PathBuf,
        parent_usable: bool,
    },
    /// An ancestor the user cannot pass through.
    Blocked {
        ancestor: PathBuf,
        owner: u32,
        mode: u32,
    },
    /// A symlink or not a directory.
    NotADirectory { symlink: bool },
    /// It exists. `usable`: by its permission bits; `write`: the real write probe (for
    /// [`Need::ReadWrite`] only; `Ok` for a directory that only needs passing through).
    Present {
        owner: u32,
        mode: u32,
        usable: bool,
        write: Result<(), i32>,
    },
    /// It could not be examined.
    Error(String),
}

/// Who the directories are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirUser {
    /// The user's name.
    pub name: String,
    /// Its uid and gid.
    pub uid: u32,
    pub gid: u32,
    /// Whether the doctor (and so, presumably, `run`) is root, which prepares directories.
    pub root: bool,
}

/// Examines `path` for `user`. `prepared` is a directory a root `run` hands to the user
/// before it prepares this one (STATE_DIR, for the spool): when it is root's, it does not
/// count as blocking the way.
pub fn probe(
    key: &'static str,
    path: &Path,
    need: Need,
    user: &DirUser,
    prepared: Option<&Path>,
) -> DirFacts {
    let state = examine(path, need, user, prepared);
    DirFacts {
        key,
        path: path.to_path_buf(),
        need,
        state,
    }
}

fn examine(path: &Path, need: Need, user: &DirUser, prepared: Option<&Path>) -> DirState {
    if !path.is_absolute() {
        return DirState::Error("not an absolute path".into());
    }
    // Every existing ancestor must let the user through. One that a root `run` hands over
    // first is taken as handed over; then the user cannot reach the directory yet, and the
    // write probe would only say so: the bits decide.
    let mut handed_over = false;
    for ancestor in path.ancestors().skip(1) {
        match std::fs::metadata(ancestor) {
            Ok(m) if user.root && m.uid() == 0 && prepared == Some(ancestor) => {
                handed_over = true;
            }
            Ok(m) => {
                if !may_access(
                    user.uid,
                    user.gid,
                    m.uid(),
                    m.gid(),
                    m.mode(),
                    Need::Traverse,
                ) {
                    return DirState::Blocked {
                        ancestor: ancestor.to_path_buf(),
                        owner: m.uid(),
                        mode: m.mode() & 0o7777,
                    };
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return DirState::Error(format!("cannot stat {}: {e}", ancestor.display())),
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path
                .ancestors()
                .skip(1)
                .find(|a| a.exists())
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            let parent_usable = std::fs::metadata(&parent).is_ok_and(|m| {
                may_access(
                    user.uid,
                    user.gid,
                    m.uid(),
                    m.gid(),
                    m.mode(),
                    Need::ReadWrite,
                )
            });
            DirState::Missing {
                parent,
                parent_usable,
            }
        }
        Err(e) => DirState::Error(format!("cannot stat it: {e}")),
        Ok(m) if m.is_symlink() => DirState::NotADirectory { symlink: true },
        Ok(m) if !m.is_dir() => DirState::NotADirectory { symlink: false },
        Ok(m) => {
            let usable = may_access(user.uid, user.gid, m.uid(), m.gid(), m.mode(), need);
            let write = match need {
                Need::Traverse => Ok(()),
                Need::ReadWrite if handed_over => {
                    if usable {
                        Ok(())
                    } else {
                        Err(libc::EACCES)
                    }
                }
                Need::ReadWrite => write_probe(path, user),
            };
            DirState::Present {
                owner: m.uid(),
                mode: m.mode() & 0o7777,
                usable,
                write,
            }
        }
    }
}

/// Creates and removes `.aitbc-doctor-<pid>` in `dir` as `user`; the errno when it cannot.
fn write_probe(dir: &Path, user: &DirUser) -> Result<(), i32> {
    let file = dir.join(format!(".aitbc-doctor-{}", std::process::id()));
    let c = CString::new(file.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    let attempt = |c: &CString| -> Result<(), i32> {
        // SAFETY: open/close/unlink on a NUL-terminated path; async-signal-safe, so also fine
        // in a forked child.
        unsafe {
            let fd = libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                return Err(*libc::__errno_location());
            }
            libc::close(fd);
            if libc::unlink(c.as_ptr()) != 0 {
                return Err(*libc::__errno_location());
            }
        }
        Ok(())
    };
    if !user.root {
        return attempt(&c);
    }
    // SAFETY: `attempt` makes only async-signal-safe system calls (open, close, unlink) on a
    // path allocated before the fork, and reads errno; no allocation, no lock, no panic.
    unsafe { super::in_child(Some((user.uid, user.gid)), || attempt(&c)) }
}

/// The line for one directory.
pub fn check(d: &DirFacts, user: &DirUser) -> Line {
    let shown = d.path.display();
    let who = &user.name;
    let check = d
        .key
        .to_lowercase()
        .replace("/spool", " spool")
        .replace('_', " ");
    let chown = format!("chown {who}: {shown}");
    // Under the systemd unit, StateDirectory= creates and hands over /var/lib/aitbc-miner.
    let unit_hint = if d.key.starts_with("STATE_DIR") {
        " (the systemd unit's StateDirectory=aitbc-miner does this for /var/lib/aitbc-miner)"
    } else {
        ""
    };
    let what = match d.need {
        Need::Traverse => "pass through",
        Need::ReadWrite => "write in",
    };
    match &d.state {
        DirState::Error(e) => Line::new(Status::Fail, &check, format!("{shown}: {e}"))
            .fix(format!("point {} at an absolute directory {who} can {what}", d.key)),
        DirState::Blocked {
            ancestor,
            owner,
            mode,
        } => Line::new(
            Status::Fail,
            &check,
            format!(
                "{who} cannot reach {shown}: it cannot pass through {} (owner uid {owner}, mode {mode:04o})",
                ancestor.display()
            ),
        )
        .fix(format!(
            "chmod o+x {}, or point {} at a directory {who} can reach",
            ancestor.display(),
            d.key
        )),
        DirState::NotADirectory { symlink } => Line::new(
            Status::Fail,
            &check,
            format!(
                "{shown} is {}",
                if *symlink {
                    "a symbolic link (the miner refuses those)"
                } else {
                    "not a directory"
                }
            ),
        )
        .fix(format!("point {} at a real directory", d.key)),
        DirState::Missing {
            parent,
            parent_usable,
        } => {
            if user.root {
                Line::new(
                    Status::Ok,
                    &check,
                    format!("{shown} does not exist yet; `run` as root creates it for {who} (mode 0700)"),
                )
            } else if *parent_usable {
                Line::new(
                    Status::Ok,
                    &check,
                    format!("{shown} does not exist yet; the miner creates it ({who} can write {})", parent.display()),
                )
            } else {
                Line::new(
                    Status::Fail,
                    &check,
                    format!(
                        "{shown} does not exist and {who} cannot create it in {}",
                        parent.display()
                    ),
                )
                .fix(format!(
                    "mkdir -p {shown} && {chown}{unit_hint}"
                ))
            }
        }
        DirState::Present {
            owner,
            mode,
            usable,
            write,
        } => {
            // The write probe is the truth for a directory the miner writes in (it sees ACLs,
            // supplementary groups and read-only mounts); the bits for one it passes through.
            let refused = match (d.need, write) {
                (Need::ReadWrite, Err(errno)) => Some(*errno),
                (Need::ReadWrite, Ok(())) => None,
                (Need::Traverse, _) => (!usable).then_some(libc::EACCES),
            };
            let Some(errno) = refused else {
                return Line::new(
                    Status::Ok,
                    &check,
                    format!("{shown} (owner uid {owner}, mode {mode:04o}): {who} can {what} it"),
                );
            };
            if !usable && *owner == 0 && user.root {
                Line::new(
                    Status::Warn,
                    &check,
                    format!(
                        "{shown} is owned by root (mode {mode:04o}): `run` as root hands it to {who} at start, but the systemd unit starts as {who} and could not {what} it"
                    ),
                )
                .fix(format!("{chown}{unit_hint}"))
            } else if !usable && *owner != user.uid {
                Line::new(
                    Status::Fail,
                    &check,
                    format!(
                        "{shown} is owned by uid {owner} (mode {mode:04o}), not {who}: {who} cannot {what} it"
                    ),
                )
                .fix(format!("{chown}, or point {} elsewhere", d.key))
            } else {
                Line::new(
                    Status::Fail,
                    &check,
                    format!("{who} cannot {what} {shown}: {}", errno_text(errno)),
                )
                .fix(if errno == libc::EROFS {
                    format!(
                        "{shown} is on a read-only filesystem: point {} elsewhere, or list it in the unit's ReadWritePaths=",
                        d.key
                    )
                } else {
                    format!("{chown} and chmod u+rwx {shown}, or point {} elsewhere", d.key)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(root: bool) -> DirUser {
        DirUser {
            name: "aitbc-miner".into(),
            uid: 998,
            gid: 998,
            root,
        }
    }

    fn dir(key: &'static str, need: Need, state: DirState) -> DirFacts {
        DirFacts {
            key,
            path: "/var/lib/aitbc-miner/spool".into(),
            need,
            state,
        }
    }

    fn present(owner: u32, usable: bool, write: Result<(), i32>) -> DirState {
        DirState::Present {
            owner,
            mode: 0o700,
            usable,
            write,
        }
    }

    #[test]
    fn verdicts_for_each_state() {
        let spool = |state| check(&dir("STATE_DIR/spool", Need::ReadWrite, state), &user(true));
        let ok = spool(present(998, true, Ok(())));
        assert_eq!(
            ok.to_string(),
            "ok    state dir spool: /var/lib/aitbc-miner/spool (owner uid 998, mode 0700): aitbc-miner can write in it"
        );
        let root_owned = spool(present(0, false, Err(libc::EACCES)));
        assert_eq!(root_owned.status, Status::Warn, "{root_owned}");
        assert_eq!(
            root_owned.fix.as_deref(),
            Some("chown aitbc-miner: /var/lib/aitbc-miner/spool (the systemd unit's StateDirectory=aitbc-miner does this for /var/lib/aitbc-miner)")
        );
        let foreign = spool(present(1000, false, Err(libc::EACCES)));
        assert_eq!(foreign.status, Status::Fail, "{foreign}");
        assert!(foreign.finding.contains("owned by uid 1000"), "{foreign}");
        let read_only = spool(present(998, true, Err(libc::EROFS)));
        assert_eq!(read_only.status, Status::Fail);
        assert!(
            read_only
                .fix
                .as_deref()
                .unwrap()
                .contains("ReadWritePaths="),
            "{read_only}"
        );
        let blocked = spool(DirState::Blocked {
            ancestor: "/var/lib".into(),
            owner: 0,
            mode: 0o700,
        });
        assert_eq!(blocked.status, Status::Fail);
        assert!(blocked
            .fix
            .as_deref()
            .unwrap()
            .starts_with("chmod o+x /var/lib"));
        assert_eq!(
            spool(DirState::NotADirectory { symlink: true }).status,
            Status::Fail
        );
        let missing = |root, parent_usable| {
            check(
                &dir(
                    "STATE_DIR",
                    Need::Traverse,
                    DirState::Missing {
                        parent: "/var/lib".into(),
                        parent_usable,
                    },
                ),
                &user(root),
            )
        };
        assert_eq!(missing(true, false).status, Status::Ok);
        assert_eq!(missing(false, true).status, Status::Ok);
        let cannot = missing(false, false);
        assert_eq!(cannot.status, Status::Fail);
        assert!(
            cannot.fix.as_deref().unwrap().starts_with("mkdir -p "),
            "{cannot}"
        );
        assert!(
            cannot.to_string().starts_with("FAIL  state dir: "),
            "{cannot}"
        );
        // A non-root miner cannot be helped by a root `run`: a root-owned spool it cannot
        // write is a FAIL.
        let as_user = check(
            &dir(
                "STATE_DIR/spool",
                Need::ReadWrite,
                present(0, false, Err(libc::EACCES)),
            ),
            &user(false),
        );
        assert_eq!(as_user.status, Status::Fail, "{as_user}");
        let no_work = check(
            &dir(
                "WORK_DIR",
                Need::ReadWrite,
                DirState::Missing {
                    parent: "/srv".into(),
                    parent_usable: false,
                },
            ),
            &user(false),
        );
        assert_eq!(no_work.status, Status::Fail);
        assert!(
            !no_work.fix.as_deref().unwrap().contains("StateDirectory"),
            "{no_work}"
        );
        let work = check(
            &dir("WORK_DIR", Need::ReadWrite, present(998, true, Ok(()))),
            &user(false),
        );
        assert!(work.to_string().starts_with("ok    work dir: "), "{work}");
    }

    #[test]
    fn probing_this_host_changes_nothing() {
        let tmp = std::env::temp_dir().join(format!("aitbc-dirs-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let me = DirUser {
            name: "me".into(),
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            root: false,
        };
        let f = probe("WORK_DIR", &tmp, Need::ReadWrite, &me, None);
        assert!(
            matches!(f.state, DirState::Present { write: Ok(()), .. }),
            "{f:?}"
        );
        assert_eq!(
            std::fs::read_dir(&tmp).unwrap().count(),
            0,
            "the probe file was removed"
        );
        let missing = probe("WORK_DIR", &tmp.join("a/b"), Need::ReadWrite, &me, None);
        assert_eq!(
            missing.state,
            DirState::Missing {
                parent: tmp.clone(),
                parent_usable: true
            }
        );
        assert!(!tmp.join("a").exists(), "nothing was created");
        assert!(matches!(
            probe(
                "WORK_DIR",
                Path::new("relative"),
                Need::ReadWrite,
                &me,
                None
            )
            .state,
            DirState::Error(_)
        ));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

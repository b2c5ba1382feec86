//! Step 1b (`--fs mount`, or `auto` without Landlock): the worker's filesystem becomes a fresh,
//! read-only tmpfs root holding only what it needs, inside its own mount namespace.
//!
//! Built with the classic mount(2) API (works on kernels older than Landlock and
//! `mount_setattr`, which is where this fallback is needed), in this order:
//!
//! 1. every mount is made private (nothing propagates in or out);
//! 2. each source is opened (`O_PATH`) while the old root is still visible: `/usr`, `/lib`,
//!    `/lib64` (recreated as symlinks when they are symlinks, as on merged-/usr systems),
//!    `/etc/ld.so.cache`, `/dev/{null,zero,full,random,urandom}` and the job directory;
//! 3. a small tmpfs is mounted on `/tmp` (it becomes the new root; the job directory was opened
//!    before, so it may live under `/tmp`);
//! 4. each source is bind-mounted at its own path inside it (through `/proc/self/fd/N`) and
//!    remounted read-only, nosuid, nodev (devices keep dev, lose exec); the job directory alone
//!    stays writable (nosuid, nodev, noexec). Flags the kernel locked on the original mount
//!    (a less privileged namespace may not clear them) are carried over;
//! 5. `pivot_root` into the tmpfs, the old root is detached, and the new root is remounted
//!    read-only.
//!
//! What is left: no /proc, /sys, /tmp (beyond the job directory's path), /home, /root, /run,
//! /var, /etc (beyond the loader cache), so no config and no state directory. This needs
//! CAP_SYS_ADMIN over the worker's new user namespace, so it runs right after `unshare`,
//! before step 4 drops capabilities. It must never bind anything writable but the job
//! directory.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::confine::Step;
use crate::WorkerError;

use super::{DEVICES, READ_ONLY_DIRS, READ_ONLY_FILES};
/// Where the new root's tmpfs is mounted before `pivot_root`.
const STAGING: &str = "/tmp";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ReadOnly,
    Device,
    JobDir,
}

/// One thing placed in the view.
enum Source {
    /// Bind-mounted from the descriptor.
    Bind {
        path: PathBuf,
        fd: OwnedFd,
        dir: bool,
        kind: Kind,
    },
    /// Recreated as a symlink with this target.
    Symlink { path: PathBuf, target: PathBuf },
}

/// What the view holds, for the Hello line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Paths present in the view besides the job directory, in order.
    pub paths: Vec<String>,
}

impl View {
    /// `mount view (tmpfs root ro; ro /usr /lib /lib64 /etc/ld.so.cache; dev null zero ...; rw job dir)`.
    pub fn describe(&self) -> String {
        let (dev, ro): (Vec<&String>, Vec<&String>) =
            self.paths.iter().partition(|p| p.starts_with("/dev/"));
        let ro: Vec<&str> = ro.iter().map(|s| s.as_str()).collect();
        let dev: Vec<&str> = dev.iter().map(|s| s.trim_start_matches("/dev/")).collect();
        format!(
            "mount view (tmpfs root ro; ro {}; dev {}; rw job dir)",
            ro.join(" "),
            dev.join(" ")
        )
    }
}

/// Builds the view described in the module docs and moves the process into it; the working
/// directory ends up at `/`. Needs a fresh mount namespace owned by the worker's user namespace.
pub fn build(job_dir: &Path) -> Result<View, WorkerError> {
    mount(
        None,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
        "making / private",
    )?;

    let mut sources = Vec::new();
    for p in READ_ONLY_DIRS.iter().chain(&READ_ONLY_FILES) {
        if let Some(s) = open_source(Path::new(p), Kind::ReadOnly)? {
            sources.push(s);
        }
    }
    for p in DEVICES {
        if let Some(s) = open_source(Path::new(p), Kind::Device)? {
            sources.push(s);
        }
    }
    match open_source(job_dir, Kind::JobDir)? {
        Some(s @ Source::Bind { dir: true, .. }) => sources.push(s),
        _ => {
            return Err(refused(format!(
                "the job directory {} is not a directory",
                job_dir.display()
            )))
        }
    }

    // It only ever holds directories, empty files and symlinks.
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=0755,size=256k,nr_inodes=256"),
        "mounting the new root's tmpfs on /tmp",
    )?;

    let root = Path::new(STAGING);
    let mut paths = Vec::new();
    for s in &sources {
        match s {
            Source::Symlink { path, target } => {
                let at = inside(root, path);
                std::os::unix::fs::symlink(target, &at).map_err(|e| {
                    os(
                        format!("symlink {} -> {}", at.display(), target.display()),
                        e,
                    )
                })?;
                paths.push(path.display().to_string());
            }
            Source::Bind {
                path,
                fd,
                dir,
                kind,
            } => {
                let at = inside(root, path);
                make_target(&at, *dir)?;
                let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
                let at_s = at.to_string_lossy().into_owned();
                mount(
                    Some(&from),
                    &at_s,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                    &format!("binding {}", path.display()),
                )?;
                let extra = match kind {
                    Kind::ReadOnly => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
                    Kind::Device => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                    Kind::JobDir => libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                };
                let flags = libc::MS_REMOUNT | libc::MS_BIND | extra | locked_flags(&at_s)?;
                mount(
                    None,
                    &at_s,
                    None,
                    flags,
                    None,
                    &format!("remounting {} with its restrictions", path.display()),
                )?;
                if *kind != Kind::JobDir {
                    paths.push(path.display().to_string());
                }
            }
        }
    }
    drop(sources);

    std::env::set_current_dir(root).map_err(|e| os("chdir to the new root".into(), e))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one and is detached next.
    let dot = c".";
    // SAFETY: pivot_root takes two NUL-terminated paths that outlive the call.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(os("pivot_root".into(), io::Error::last_os_error()));
    }
    // SAFETY: umount2 takes a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(os(
            "detaching the old root".into(),
            io::Error::last_os_error(),
        ));
    }
    std::env::set_current_dir("/").map_err(|e| os("chdir /".into(), e))?;
    let root_flags = libc::MS_REMOUNT
        | libc::MS_BIND
        | libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC;
    mount(
        None,
        "/",
        None,
        root_flags,
        None,
        "remounting the new root read-only",
    )?;
    Ok(View { paths })
}

/// Opens `path` for binding (`O_PATH`), or reads it as a symlink to recreate; `None` when it
/// does not exist (and it is not the job directory).
fn open_source(path: &Path, kind: Kind) -> Result<Option<Source>, WorkerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound && kind != Kind::JobDir => return Ok(None),
        Err(e) => return Err(os(format!("stat {}", path.display()), e)),
    };
    if meta.file_type().is_symlink() && kind == Kind::ReadOnly {
        let target =
            std::fs::read_link(path).map_err(|e| os(format!("readlink {}", path.display()), e))?;
        return Ok(Some(Source::Symlink {
            path: path.to_path_buf(),
            target,
        }));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| os(format!("opening {}", path.display()), e))?;
    let dir = file
        .metadata()
        .map_err(|e| os(format!("stat {}", path.display()), e))?
        .is_dir();
    Ok(Some(Source::Bind {
        path: path.to_path_buf(),
        fd: file.into(),
        dir,
        kind,
    }))
}

/// `root` + the absolute `path`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Creates the mount point: a directory (with its parents) or an empty file.
fn make_target(at: &Path, dir: bool) -> Result<(), WorkerError> {
    let made = if dir {
        std::fs::create_dir_all(at)
    } else {
        at.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(at)
                    .map(drop)
            })
    };
    made.map_err(|e| os(format!("creating the mount point {}", at.display()), e))
}

/// The flags a remount must keep because the kernel locked them on the original mount.
fn locked_flags(path: &str) -> Result<libc::c_ulong, WorkerError> {
    let c = CString::new(path).map_err(|_| refused(format!("{path:?} contains a NUL byte")))?;
    // SAFETY: statvfs is plain C data (integers only), for which all-zero bytes are valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes only into `st`, which we own; `c` is NUL-terminated and outlives
    // the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(os(format!("statvfs {path}"), io::Error::last_os_error()));
    }
    let pairs = [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ];
    Ok(pairs
        .iter()
        .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
        .fold(0, |acc, (_, ms)| acc | ms))
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    what: &str,
) -> Result<(), WorkerError> {
    let cstr = |s: &str| CString::new(s).map_err(|_| refused(format!("{s:?} contains a NUL byte")));
    let source = source.map(cstr).transpose()?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(os(what.to_string(), io::Error::last_os_error()));
    }
    Ok(())
}

fn os(what: String, source: io::Error) -> WorkerError {
    WorkerError::Setup {
        step: Step::Namespaces,
        what: format!("mount view: {what}"),
        source,
    }
}

fn refused(reason: String) -> WorkerError {
    WorkerError::SetupRefused {
        step: Step::Namespaces,
        reason: format!("mount view: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_lists_what_the_view_holds() {
        let v = View {
            paths: ["/usr", "/lib", "/etc/ld.so.cache", "/dev/null", "/dev/zero"]
                .map(String::from)
                .to_vec(),
        };
        assert_eq!(
            v.describe(),
            "mount view (tmpfs root ro; ro /usr /lib /etc/ld.so.cache; dev null zero; rw job dir)"
        );
    }

    #[test]
    fn mount_points_are_rebuilt_under_the_staging_root() {
        assert_eq!(
            inside(Path::new("/tmp"), Path::new("/var/lib/aitbc/jobs/w1")),
            PathBuf::from("/tmp/var/lib/aitbc/jobs/w1")
        );
    }
}

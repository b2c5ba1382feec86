//! The cgroup v2 backend: one directory in the unified hierarchy, either the cgroup systemd
//! delegated to the miner (`Delegate=yes`) or, as root, `<mount>/aitbc-miner/<name>`.
//!
//! v2's "no internal processes" rule shapes the set-up: controllers can only be enabled in a
//! cgroup's `cgroup.subtree_control` once no process lives in it, so in a delegated cgroup the
//! supervisor (and anything else there) first moves into the `supervisor` leaf. Then
//! `+memory +pids +cpu` (those the parent offers) go down to `workers`. The supervisor leaf
//! gets `cpu.weight` ten times the workers' and `memory.low`; `workers` gets a `cpu.max` of at
//! most 95% of the cores. A worker gets `memory.max`, `memory.swap.max` 0, `memory.oom.group`
//! 1, `pids.max` and `cpu.max`. Kill: `cgroup.kill` (Linux 5.14; a kill-until-empty loop
//! before that), then a wait on `cgroup.events` for `populated 0` with poll(2), bounded.
//!
//! It must never write outside its subtree except `+controller` lines on the path down to it,
//! and never remove the delegated cgroup itself (systemd owns it).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::{
    cg_err, cores, keyed_value, kill_until_empty, make_dir, move_self, read_pids, read_text,
    remove_dir, remove_stale, remove_tree, single_value, workers_cpu_quota_us, write_file,
    CgroupStats, Limits, CPU_PERIOD_US, KILL_TIMEOUT, SUBTREE_DIR, SUPERVISOR_CPU_WEIGHT,
    SUPERVISOR_MEMORY_LOW, SUPERVISOR_MEMORY_MAX, V2_CONTROLLERS,
};
use crate::Error;

enum Kind {
    /// systemd's cgroup for the service; only its contents are ours.
    Delegated,
    /// Created by a root supervisor; `origin` is where it came from.
    Owned { base: PathBuf, origin: PathBuf },
}

pub(super) struct Tree {
    dir: PathBuf,
    kind: Kind,
    controllers: Vec<String>,
    adopted: AtomicBool,
}

/// Whether `dir` (this process's own cgroup) was delegated to it: writable by a non-root
/// process, or marked by systemd (`trusted.delegate`, `user.delegate`) for a root one, who can
/// write everywhere.
pub(super) fn is_delegated(dir: &Path, root: bool) -> bool {
    if root {
        return ["trusted.delegate", "user.delegate"]
            .iter()
            .any(|attr| has_xattr(dir, attr));
    }
    use nix::unistd::{access, AccessFlags};
    access(dir, AccessFlags::W_OK).is_ok()
        && ["cgroup.procs", "cgroup.subtree_control"]
            .iter()
            .all(|f| access(&dir.join(f), AccessFlags::W_OK).is_ok())
}

fn has_xattr(path: &Path, name: &str) -> bool {
    let (Ok(p), Ok(n)) = (
        CString::new(path.as_os_str().as_bytes()),
        CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a null buffer of size 0 only asks for the length.
    unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Enables in `dir/cgroup.subtree_control` each wanted controller that `dir` offers and has not
/// enabled yet; returns the wanted ones now enabled.
fn enable(dir: &Path) -> Result<Vec<String>, Error> {
    let offered = read_text(&dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = read_text(&dir.join("cgroup.subtree_control")).unwrap_or_default();
    let want: Vec<String> = V2_CONTROLLERS
        .iter()
        .filter(|c| offered.split_whitespace().any(|o| o == **c))
        .map(|c| (*c).to_owned())
        .collect();
    let missing: Vec<String> = want
        .iter()
        .filter(|c| !enabled.split_whitespace().any(|e| e == c.as_str()))
        .map(|c| format!("+{c}"))
        .collect();
    if !missing.is_empty() {
        write_file(dir, "cgroup.subtree_control", &missing.join(" "))?;
    }
    Ok(want)
}

impl Tree {
    /// Takes over systemd's delegated cgroup `dir`: everything in it moves to `supervisor`,
    /// controllers are enabled, `workers` is created.
    pub(super) fn create_delegated(dir: &Path) -> Result<Tree, Error> {
        let sup = dir.join("supervisor");
        make_dir(&sup)?;
        let me = std::process::id() as i32;
        for pid in read_pids(&dir.join("cgroup.procs")) {
            match write_file(&sup, "cgroup.procs", &pid.to_string()) {
                Err(e) if pid == me => return Err(e),
                // Gone meanwhile, or not ours to move: enabling controllers will say if it matters.
                _ => {}
            }
        }
        let mut tree = Tree {
            dir: dir.to_path_buf(),
            kind: Kind::Delegated,
            controllers: Vec::new(),
            adopted: AtomicBool::new(true),
        };
        tree.controllers = enable(dir)?;
        tree.finish()?;
        Ok(tree)
    }

    /// As root without delegation: `<mount>/aitbc-miner/<name>`.
    pub(super) fn create_owned(mount: &Path, own_dir: &Path, name: &str) -> Result<Tree, Error> {
        enable(mount)?;
        let base = mount.join(SUBTREE_DIR);
        make_dir(&base)?;
        remove_stale(&base, name);
        enable(&base)?;
        let dir = base.join(name);
        make_dir(&dir)?;
        let mut tree = Tree {
            dir: dir.clone(),
            kind: Kind::Owned {
                base: base.clone(),
                origin: own_dir.to_path_buf(),
            },
            controllers: Vec::new(),
            adopted: AtomicBool::new(false),
        };
        tree.controllers = enable(&dir)?;
        make_dir(&dir.join("supervisor"))?;
        if tree.controllers.iter().any(|c| c == "memory") {
            // Protection only reaches as far as every ancestor grants it; best effort here.
            let low = SUPERVISOR_MEMORY_LOW.to_string();
            let _ = write_file(&base, "memory.low", &low);
            let _ = write_file(&dir, "memory.low", &low);
        }
        tree.finish()?;
        Ok(tree)
    }

    /// `workers` with its controllers, and the supervisor's protection.
    fn finish(&self) -> Result<(), Error> {
        let (sup, workers) = (self.dir.join("supervisor"), self.dir.join("workers"));
        make_dir(&workers)?;
        if !self.controllers.is_empty() {
            write_file(
                &workers,
                "cgroup.subtree_control",
                &self
                    .controllers
                    .iter()
                    .map(|c| format!("+{c}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )?;
        }
        if self.has("cpu") {
            write_file(&sup, "cpu.weight", &SUPERVISOR_CPU_WEIGHT.to_string())?;
            let quota = workers_cpu_quota_us(cores());
            write_file(&workers, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
        }
        if self.has("memory") {
            write_file(&sup, "memory.low", &SUPERVISOR_MEMORY_LOW.to_string())?;
            write_file(&sup, "memory.max", &SUPERVISOR_MEMORY_MAX.to_string())?;
        }
        Ok(())
    }

    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }

    pub(super) fn adopt_self(&self) -> Result<(), Error> {
        self.adopted.store(true, Ordering::SeqCst);
        move_self(&self.dir.join("supervisor"))
    }

    pub(super) fn worker(&self, name: &str) -> Result<Worker, Error> {
        let dir = self.dir.join("workers").join(name);
        make_dir(&dir)?;
        let procs_path = dir.join("cgroup.procs");
        let procs = match std::fs::OpenOptions::new().write(true).open(&procs_path) {
            Ok(f) => f,
            Err(e) => {
                let _ = remove_dir(&dir);
                return Err(cg_err(&procs_path, "open for the worker to join", e));
            }
        };
        Ok(Worker {
            dir,
            procs,
            controllers: self.controllers.clone(),
        })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn controllers(&self) -> &[String] {
        &self.controllers
    }

    pub(super) fn is_delegated(&self) -> bool {
        matches!(self.kind, Kind::Delegated)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Delegated => {
                // The supervisor still lives in `supervisor`; systemd removes the rest when
                // the service stops. Workers' cgroups left over go now.
                if let Err(e) = remove_tree(&self.dir.join("workers")) {
                    tracing::warn!("removing the workers' cgroups: {e}");
                }
            }
            Kind::Owned { base, origin } => {
                if self.adopted.load(Ordering::SeqCst) {
                    if let Err(e) = move_self(origin) {
                        // A supervisor that dropped root cannot write its parent's
                        // cgroup.procs; the next root start removes the stale subtree.
                        tracing::debug!(
                            "leaving the supervisor's cgroup: {e}; left for the next start"
                        );
                        return;
                    }
                }
                if let Err(e) = remove_tree(&self.dir) {
                    tracing::warn!("removing the supervisor's cgroup subtree: {e}");
                }
                let _ = std::fs::remove_dir(base);
            }
        }
    }
}

pub(super) struct Worker {
    pub(super) dir: PathBuf,
    pub(super) procs: File,
    controllers: Vec<String>,
}

impl Worker {
    fn has(&self, c: &str) -> bool {
        self.controllers.iter().any(|x| x == c)
    }

    pub(super) fn set_limits(&self, l: &Limits) -> Result<(), Error> {
        let d = &self.dir;
        if self.has("memory") {
            let max = if l.memory_bytes >= i64::MAX as u64 {
                "max".to_owned()
            } else {
                l.memory_bytes.to_string()
            };
            write_file(d, "memory.max", &max)?;
            if d.join("memory.swap.max").exists() {
                write_file(d, "memory.swap.max", "0")?;
            }
            if d.join("memory.oom.group").exists() {
                write_file(d, "memory.oom.group", "1")?;
            }
        }
        if self.has("pids") {
            write_file(d, "pids.max", &l.pids.to_string())?;
        }
        if self.has("cpu") {
            write_file(
                d,
                "cpu.max",
                &format!("{} {CPU_PERIOD_US}", l.cpu_quota_us()),
            )?;
        }
        Ok(())
    }

    fn populated(&self, events: &File) -> bool {
        let mut buf = [0u8; 256];
        match events.read_at(&mut buf, 0) {
            Ok(n) => keyed_value(&String::from_utf8_lossy(&buf[..n]), "populated") != Some(0),
            Err(_) => !read_pids(&self.dir.join("cgroup.procs")).is_empty(),
        }
    }

    pub(super) fn kill_all(&self) -> Result<(), Error> {
        let events_path = self.dir.join("cgroup.events");
        let events = File::open(&events_path).map_err(|e| cg_err(&events_path, "open", e))?;
        if !self.populated(&events) {
            return Ok(());
        }
        let started = Instant::now();
        let until = started + KILL_TIMEOUT;
        if self.dir.join("cgroup.kill").exists() {
            write_file(&self.dir, "cgroup.kill", "1")?;
        } else {
            kill_until_empty(&self.dir, until);
        }
        // cgroup.events signals POLLPRI on every change; re-read it after each.
        while self.populated(&events) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::CgroupKill {
                    path: self.dir.clone(),
                    left: read_pids(&self.dir.join("cgroup.procs")).len(),
                    waited: started.elapsed(),
                });
            }
            let mut pfd = libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            // Capped so a missed notification costs at most one short round.
            let ms = left.as_millis().min(50) as libc::c_int;
            // SAFETY: one valid pollfd for a descriptor we hold open.
            unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
        }
        Ok(())
    }

    pub(super) fn stats(&self) -> CgroupStats {
        let read = |file: &str| read_text(&self.dir.join(file));
        CgroupStats {
            peak_memory_bytes: read("memory.peak").and_then(|t| single_value(&t)),
            cpu_usage_us: read("cpu.stat").and_then(|t| keyed_value(&t, "usage_usec")),
            oom_killed: read("memory.events")
                .and_then(|t| keyed_value(&t, "oom_kill"))
                .is_some_and(|n| n > 0),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            tracing::warn!("{e}");
        }
        if let Err(e) = remove_dir(&self.dir) {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The unified hierarchy of this hybrid host (`/sys/fs/cgroup/unified`, no controllers):
    //! create, join, kill, stats, remove. Limits need a v2 host with controllers.
    use super::super::{
        tests::assert_kill_all_reaches_a_grandchild, tests::can_run, tests::tree_dirs, Subtree,
        Tree as AnyTree,
    };
    use super::*;
    use std::time::Duration;

    const UNIFIED: &str = "/sys/fs/cgroup/unified";

    fn owned(test: &str) -> Option<Subtree> {
        if !can_run(test, Path::new(UNIFIED).join("cgroup.procs").as_path()) {
            return None;
        }
        let name = format!("test-{test}.{}", std::process::id());
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .to_owned();
        let origin = super::super::join_cgroup_path(Path::new(UNIFIED), &own);
        Some(Subtree {
            tree: AnyTree::V2(Tree::create_owned(Path::new(UNIFIED), &origin, &name).unwrap()),
        })
    }

    #[test]
    fn create_join_kill_remove_on_the_unified_hierarchy() {
        let Some(sub) = owned("v2_lifecycle") else {
            return;
        };
        assert!(
            sub.describe().starts_with("cgroup v2"),
            "{}",
            sub.describe()
        );
        let cg = sub.worker("w1").unwrap();
        let dir = cg.path().to_path_buf();
        // No controllers here: limits are a no-op, not an error.
        cg.set_limits(&Limits::for_job(64, 1)).unwrap();
        assert_kill_all_reaches_a_grandchild(&cg, "v2");
        assert!(cg.stats().cpu_usage_us.is_some(), "{:?}", cg.stats());
        drop(cg);
        assert!(!dir.exists());
        let top = tree_dirs(&sub);
        drop(sub);
        for d in top {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }

    #[test]
    fn a_delegated_cgroup_moves_its_processes_into_the_supervisor_leaf() {
        if !can_run(
            "v2_delegated",
            Path::new(UNIFIED).join("cgroup.procs").as_path(),
        ) {
            return;
        }
        // Stand-in for systemd's delegated cgroup, with a process living in it.
        let deleg = Path::new(UNIFIED).join(format!("test-delegated.{}", std::process::id()));
        std::fs::create_dir(&deleg).unwrap();
        assert!(!is_delegated(&deleg, true), "no delegate mark yet");
        let mut resident = std::process::Command::new("/bin/sleep")
            .arg("300")
            .spawn()
            .unwrap();
        write_file(&deleg, "cgroup.procs", &resident.id().to_string()).unwrap();
        let tree = Tree::create_delegated(&deleg).unwrap();
        assert!(tree.is_delegated());
        assert_eq!(
            read_pids(&deleg.join("supervisor/cgroup.procs")),
            [resident.id() as i32]
        );
        assert!(read_pids(&deleg.join("cgroup.procs")).is_empty());
        let w = tree.worker("w").unwrap();
        assert!(w.dir.exists());
        drop(w);
        drop(tree);
        assert!(!deleg.join("workers").exists());
        resident.kill().unwrap();
        resident.wait().unwrap();
        std::fs::remove_dir(deleg.join("supervisor")).unwrap();
        std::fs::remove_dir(&deleg).unwrap();
    }

    #[test]
    fn killing_an_empty_cgroup_returns_at_once() {
        let Some(sub) = owned("v2_empty_kill") else {
            return;
        };
        let cg = sub.worker("idle").unwrap();
        let t0 = Instant::now();
        cg.kill_all().unwrap();
        assert!(t0.elapsed() < Duration::from_millis(100));
    }
}

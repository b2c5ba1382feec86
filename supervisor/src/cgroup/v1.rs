//! The cgroup v1 backend: one directory per hierarchy (memory, pids, cpu, cpuacct, freezer; some
//! hosts co-mount cpu and cpuacct), the same layout in each, the subtree nested under the
//! supervisor's own cgroup of that hierarchy.
//!
//! Limits: `memory.limit_in_bytes` and, where swap accounting exists,
//! `memory.memsw.limit_in_bytes` to the same value (no swap; else `memory.swappiness` 0),
//! `pids.max`, `cpu.cfs_quota_us` over `cpu.cfs_period_us` (clamped to the workers' parent,
//! which v1 requires). The supervisor leaf gets `cpu.shares` ten times the workers' and a memory
//! ceiling (`memory.limit_in_bytes`); v1 has no memory protection to give it. Kill: freeze (`freezer.state`), SIGKILL every pid of
//! `cgroup.procs` (frozen, they cannot fork or exit meanwhile, so no pid is reused under us),
//! thaw, then poll until every hierarchy's `cgroup.procs` is empty (v1 has no event to wait on).
//!
//! It must never write outside the directories it created, and never signal a pid it did not
//! just read from a worker's own `cgroup.procs`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{
    cg_err, cores, keyed_value, kill_until_empty, make_dir, move_self, read_pids, read_text,
    remove_dir, remove_stale, remove_tree, single_value, workers_cpu_quota_us, write_file,
    CgroupStats, Hierarchy, Limits, CPU_PERIOD_US, KILL_TIMEOUT, SUBTREE_DIR,
    SUPERVISOR_CPU_SHARES, SUPERVISOR_MEMORY_MAX,
};
use crate::Error;

/// How long a freeze may take before the kill goes on without it (a task in uninterruptible
/// sleep delays freezing).
const FREEZE_WAIT: Duration = Duration::from_secs(1);

/// The subtree in one hierarchy.
struct Dir {
    controllers: Vec<&'static str>,
    /// The cgroup this process was in (moved back there on drop after `adopt_self`).
    origin: PathBuf,
    /// `<origin>/aitbc-miner`, shared with other supervisors.
    base: PathBuf,
    /// `<base>/<name>`: this supervisor's subtree.
    dir: PathBuf,
}

pub(super) struct Tree {
    hier: Vec<Dir>,
    adopted: AtomicBool,
}

impl Tree {
    pub(super) fn create(hierarchies: &[Hierarchy], name: &str) -> Result<Tree, Error> {
        // Built up step by step so that a failure half-way removes what exists (Drop).
        let mut tree = Tree {
            hier: Vec::new(),
            adopted: AtomicBool::new(false),
        };
        for h in hierarchies {
            let base = h.own_dir.join(SUBTREE_DIR);
            make_dir(&base)?;
            remove_stale(&base, name);
            let dir = base.join(name);
            make_dir(&dir)?;
            tree.hier.push(Dir {
                controllers: h.controllers.clone(),
                origin: h.own_dir.clone(),
                base,
                dir: dir.clone(),
            });
            let (sup, workers) = (dir.join("supervisor"), dir.join("workers"));
            make_dir(&sup)?;
            make_dir(&workers)?;
            if h.controllers.contains(&"memory") {
                let max = SUPERVISOR_MEMORY_MAX.to_string();
                write_file(&sup, "memory.limit_in_bytes", &max)?;
            }
            if h.controllers.contains(&"cpu") {
                write_file(&sup, "cpu.shares", &SUPERVISOR_CPU_SHARES.to_string())?;
                write_file(&workers, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                let quota = workers_cpu_quota_us(cores());
                write_file(&workers, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        Ok(tree)
    }

    pub(super) fn adopt_self(&self) -> Result<(), Error> {
        self.adopted.store(true, Ordering::SeqCst);
        for d in &self.hier {
            move_self(&d.dir.join("supervisor"))?;
        }
        Ok(())
    }

    pub(super) fn worker(&self, name: &str) -> Result<Worker, Error> {
        let mut w = Worker {
            dirs: Vec::new(),
            procs: Vec::new(),
        };
        for d in &self.hier {
            let dir = d.dir.join("workers").join(name);
            make_dir(&dir)?;
            w.dirs.push((d.controllers.clone(), dir.clone()));
            let procs = dir.join("cgroup.procs");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)
                .map_err(|e| cg_err(&procs, "open for the worker to join", e))?;
            w.procs.push(f);
        }
        Ok(w)
    }

    pub(super) fn dirs(&self) -> Vec<PathBuf> {
        self.hier.iter().map(|d| d.dir.clone()).collect()
    }

    pub(super) fn controllers(&self) -> Vec<String> {
        self.hier
            .iter()
            .flat_map(|d| d.controllers.iter().map(|c| (*c).to_owned()))
            .collect()
    }

    pub(super) fn describe_location(&self) -> String {
        let dirs: Vec<String> = self
            .hier
            .iter()
            .map(|d| d.dir.display().to_string())
            .collect();
        dirs.join(", ")
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let adopted = self.adopted.load(Ordering::SeqCst);
        for d in &self.hier {
            if adopted {
                if let Err(e) = move_self(&d.origin) {
                    // A supervisor that dropped root cannot write its parent's cgroup.procs;
                    // the subtree stays until the next root start removes stale ones.
                    tracing::debug!(
                        "leaving the supervisor's cgroup: {e}; left for the next start"
                    );
                    continue;
                }
            }
            if let Err(e) = remove_tree(&d.dir) {
                tracing::warn!("removing the supervisor's cgroup subtree: {e}");
            }
            // Shared with other supervisors: removed only when it is empty.
            let _ = std::fs::remove_dir(&d.base);
        }
    }
}

pub(super) struct Worker {
    pub(super) dirs: Vec<(Vec<&'static str>, PathBuf)>,
    pub(super) procs: Vec<File>,
}

impl Worker {
    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c.contains(&controller))
            .map(|(_, d)| d.as_path())
    }

    /// The freezer's directory when there is one (kills go through it), else the first.
    pub(super) fn primary(&self) -> &Path {
        self.dir_of("freezer")
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()))
            .unwrap_or(Path::new("/nonexistent"))
    }

    pub(super) fn set_limits(&self, l: &Limits) -> Result<(), Error> {
        if let Some(d) = self.dir_of("memory") {
            // The kernel clamps what it cannot represent; i64::MAX reads back as "unlimited".
            let bytes = l.memory_bytes.min(i64::MAX as u64).to_string();
            write_file(d, "memory.limit_in_bytes", &bytes)?;
            if d.join("memory.memsw.limit_in_bytes").exists() {
                write_file(d, "memory.memsw.limit_in_bytes", &bytes)?;
            } else {
                write_file(d, "memory.swappiness", "0")?;
            }
        }
        if let Some(d) = self.dir_of("pids") {
            write_file(d, "pids.max", &l.pids.to_string())?;
        }
        if let Some(d) = self.dir_of("cpu") {
            // v1 refuses a quota above the parent's (the workers' share of the machine).
            let quota = l.cpu_quota_us().min(workers_cpu_quota_us(cores()));
            write_file(d, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
            write_file(d, "cpu.cfs_quota_us", &quota.to_string())?;
        }
        Ok(())
    }

    fn all_empty(&self) -> bool {
        self.dirs
            .iter()
            .all(|(_, d)| read_pids(&d.join("cgroup.procs")).is_empty())
    }

    pub(super) fn kill_all(&self) -> Result<(), Error> {
        if self.all_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let until = started + KILL_TIMEOUT;
        if let Some(fz) = self.dir_of("freezer") {
            if write_file(fz, "freezer.state", "FROZEN").is_ok() {
                let frozen_by = started + FREEZE_WAIT;
                let mut pause = Duration::from_micros(100);
                while read_text(&fz.join("freezer.state")).is_some_and(|s| s.trim() != "FROZEN")
                    && Instant::now() < frozen_by
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                for pid in read_pids(&fz.join("cgroup.procs")) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                write_file(fz, "freezer.state", "THAWED")?;
            }
        }
        for (_, d) in &self.dirs {
            let left = kill_until_empty(d, until);
            if left > 0 {
                return Err(Error::CgroupKill {
                    path: d.clone(),
                    left,
                    waited: started.elapsed(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn stats(&self) -> CgroupStats {
        let read = |ctl: &str, file: &str| self.dir_of(ctl).and_then(|d| read_text(&d.join(file)));
        CgroupStats {
            peak_memory_bytes: read("memory", "memory.max_usage_in_bytes")
                .and_then(|t| single_value(&t)),
            cpu_usage_us: read("cpuacct", "cpuacct.usage")
                .and_then(|t| single_value(&t))
                .map(|ns| ns / 1000),
            oom_killed: read("memory", "memory.oom_control")
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
        for (_, d) in &self.dirs {
            if let Err(e) = remove_dir(d) {
                tracing::warn!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real v1 hierarchies (this machine's), as root; a visible SKIP line elsewhere.
    use super::super::tests::{assert_kill_all_reaches_a_grandchild, can_run, spawn_in, tree_dirs};
    use super::super::{Host, Layout, Subtree, Tree as AnyTree};
    use super::*;

    fn hierarchies() -> Option<Vec<Hierarchy>> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        match Host::from_texts(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup")).layout {
            Layout::V1(h) => Some(h),
            other => {
                eprintln!("SKIP cgroup v1 test: this host is {other:?}");
                None
            }
        }
    }

    fn subtree(test: &str) -> Option<Subtree> {
        if !can_run(test, Path::new("/sys/fs/cgroup/memory")) {
            return None;
        }
        let h = hierarchies()?;
        let name = format!("test-{test}.{}", std::process::id());
        Some(Subtree {
            tree: AnyTree::V1(Tree::create(&h, &name).unwrap()),
        })
    }

    #[test]
    fn create_join_limit_kill_remove() {
        let Some(sub) = subtree("v1_lifecycle") else {
            return;
        };
        assert!(
            sub.describe()
                .starts_with("cgroup v1 (cpu, cpuacct, memory"),
            "{}",
            sub.describe()
        );
        let cg = sub.worker("w1").unwrap();
        let dirs = cg.dirs();
        cg.set_limits(&Limits::for_job(64, 1)).unwrap();
        let mem = dirs
            .iter()
            .find(|d| d.to_str().unwrap().contains("/memory/"))
            .unwrap();
        assert_eq!(
            read_text(&mem.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
        // The supervisor's own leaf has its ceiling, apart from the workers' limits.
        let sup = mem.parent().unwrap().parent().unwrap().join("supervisor");
        assert_eq!(
            read_text(&sup.join("memory.limit_in_bytes"))
                .unwrap()
                .trim(),
            super::super::SUPERVISOR_MEMORY_MAX.to_string()
        );
        let pids = dirs
            .iter()
            .find(|d| d.to_str().unwrap().contains("/pids/"))
            .unwrap();
        assert_eq!(read_text(&pids.join("pids.max")).unwrap().trim(), "17");
        let cpu = dirs
            .iter()
            .find(|d| d.to_str().unwrap().contains("/cpu/"))
            .unwrap();
        assert_eq!(
            read_text(&cpu.join("cpu.cfs_quota_us")).unwrap().trim(),
            "100000"
        );

        // A child and a grandchild that left its process group: both inside, both killed.
        assert_kill_all_reaches_a_grandchild(&cg, "v1");
        let stats = cg.stats();
        assert!(
            stats.cpu_usage_us.is_some() && stats.peak_memory_bytes.is_some(),
            "{stats:?}"
        );
        assert!(!stats.oom_killed);
        drop(cg);
        for d in &dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
        let top = tree_dirs(&sub);
        drop(sub);
        for d in top {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }

    #[test]
    fn a_child_past_its_memory_limit_is_oom_killed_and_the_stats_say_so() {
        let Some(sub) = subtree("v1_oom") else {
            return;
        };
        let cg = sub.worker("hog").unwrap();
        cg.set_limits(&Limits::for_job(16, 1)).unwrap();
        // 64 MiB of touched memory in a 16 MiB cgroup without swap.
        let mut child = spawn_in(
            &cg,
            "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo ${#x}",
        );
        let status = child.wait().unwrap();
        let stats = cg.stats();
        assert!(stats.oom_killed, "{stats:?} {status:?}");
        assert!(
            stats.peak_memory_bytes.is_some_and(|b| b <= 17 << 20),
            "{stats:?}"
        );
        cg.kill_all().unwrap();
    }
}

//! One cgroup per worker, in a subtree the supervisor owns: memory (swap off), pids and CPU
//! limits, a whole-cgroup kill, and the accounting read back into the proof (peak memory, CPU
//! time, whether the OOM killer struck).
//!
//! One small interface, two small backends chosen once at start from `/proc/self/mountinfo`:
//! `v1` (separate hierarchies per controller: the machines here) and `v2` (the unified
//! hierarchy: production Debian under systemd with `Delegate=yes`). A host that mounts both
//! (hybrid) keeps its controllers on v1, so v1 wins there.
//!
//! Layout, the same in both versions (v1: in every hierarchy used):
//!
//! ```text
//! <subtree>/supervisor     the supervisor itself: high CPU weight, a memory ceiling,
//!                          memory protection (v2)
//! <subtree>/workers        all workers: CPU quota of at most 95% of the cores
//! <subtree>/workers/<w>    one worker: memory (swap off), pids, CPU quota; killed as a whole
//! ```
//!
//! `<subtree>` is, on v2, the supervisor's own cgroup when systemd delegated it (it is
//! writable, or carries the `trusted.delegate` mark when the supervisor is root), else, as
//! root, `<mount>/aitbc-miner/<name>`; on v1 (root only) `<own cgroup>/aitbc-miner/<name>` in
//! each hierarchy, so an operator's placement of the miner (and its limits) still holds.
//! Without root or delegation there is no subtree ([`Subtree::create`] answers `Ok(None)`) and
//! the caller falls back to rlimits and process groups.
//!
//! The pure parts (parsing mountinfo, `/proc/self/cgroup` and stat files, computing limit
//! values) are plain functions tested without a cgroup filesystem.
//!
//! This module must never touch a cgroup outside the subtree it created (apart from enabling
//! controllers on the path down to it), never remove a cgroup that still holds a process it
//! did not kill, never signal a process that is not in a worker's cgroup, and never block
//! without a bound.

mod v1;
mod v2;

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// The CFS period every quota here is expressed against (100 ms, the kernel's default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Tasks (processes and threads) a worker may have beyond its compute threads: the main
/// thread, the runtime's helpers, and room for a GPU driver's threads.
pub const PIDS_MARGIN: u64 = 16;
/// The share of the machine's cores all workers together may use; the rest is the
/// supervisor's headroom so heartbeats stay on time.
pub const WORKERS_CPU_PERCENT: u64 = 95;
/// The supervisor leaf's CPU weight against its workers (v1 `cpu.shares`, default 1024;
/// v2 `cpu.weight`, default 100): ten times theirs.
pub const SUPERVISOR_CPU_SHARES: u64 = 10_240;
/// See [`SUPERVISOR_CPU_SHARES`].
pub const SUPERVISOR_CPU_WEIGHT: u64 = 1_000;
/// Memory of the supervisor leaf the kernel protects from reclaim (v2 `memory.low`).
pub const SUPERVISOR_MEMORY_LOW: u64 = 128 << 20;
/// The supervisor leaf's memory ceiling (v2 `memory.max`, v1 `memory.limit_in_bytes`): an
/// idle supervisor holds about 9 MiB and reads at most 1 MiB of any Coordinator answer, so
/// this is only reached by a defect; the OOM killer then ends the supervisor (systemd
/// restarts it) and never a worker, whose memory is its own cgroup's.
pub const SUPERVISOR_MEMORY_MAX: u64 = 512 << 20;
/// The longest a whole-cgroup kill waits for the cgroup to empty.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The directory under which a root supervisor without delegation creates its subtree.
pub const SUBTREE_DIR: &str = "aitbc-miner";

/// The controllers a worker's cgroup uses on v1 (each may be its own hierarchy).
pub const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];
/// The controllers enabled for workers on v2.
pub const V2_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// Which cgroup hierarchy a subtree lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A worker's limits, applied when its job is handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory the whole cgroup may use, bytes; swap is off, so this is all of it.
    /// `u64::MAX` (or anything the kernel cannot represent) means no limit.
    pub memory_bytes: u64,
    /// Tasks (processes plus threads) at once.
    pub pids: u64,
    /// CPU bandwidth in cores (quota = `cpus` × [`CPU_PERIOD_US`] per period).
    pub cpus: u32,
}

impl Limits {
    /// The limits of a job with `ram_mb` MiB of memory and `threads` compute threads.
    pub fn for_job(ram_mb: u64, threads: u32) -> Limits {
        let threads = threads.max(1);
        Limits {
            memory_bytes: ram_mb.saturating_mul(1 << 20),
            pids: u64::from(threads) + PIDS_MARGIN,
            cpus: threads,
        }
    }

    /// The CPU quota per [`CPU_PERIOD_US`], in microseconds.
    pub fn cpu_quota_us(&self) -> u64 {
        u64::from(self.cpus.max(1)).saturating_mul(CPU_PERIOD_US)
    }
}

/// The quota (µs per [`CPU_PERIOD_US`]) of the parent of all workers: [`WORKERS_CPU_PERCENT`]
/// of `cores`, and never less than one core.
pub fn workers_cpu_quota_us(cores: u64) -> u64 {
    (cores.max(1) * CPU_PERIOD_US * WORKERS_CPU_PERCENT / 100).max(CPU_PERIOD_US)
}

/// Accounting of a worker's cgroup, read after it ended. `None` where the host lacks the file
/// (e.g. v2 `memory.peak` before Linux 5.19, or a v2 hierarchy without the controller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// The most memory the cgroup ever used, bytes.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time of every task that ran in the cgroup, microseconds.
    pub cpu_usage_us: Option<u64>,
    /// The kernel's OOM killer killed a task in the cgroup (its memory limit was hit).
    pub oom_killed: bool,
}

/// The supervisor's own subtree. Dropping it moves the supervisor back where it came from
/// (if [`Subtree::adopt_self`] moved it) and removes the directories it created.
pub struct Subtree {
    tree: Tree,
}

enum Tree {
    V1(v1::Tree),
    V2(v2::Tree),
}

/// One worker's cgroup. Dropping it kills whatever is still inside and removes it.
pub struct WorkerCgroup {
    inner: Worker,
}

enum Worker {
    V1(v1::Worker),
    V2(v2::Worker),
}

impl Subtree {
    /// Creates this supervisor's subtree: under a systemd-delegated v2 cgroup (the one in
    /// `/proc/self/cgroup`; the supervisor moves into its `supervisor` leaf at once, as v2
    /// requires before controllers can be enabled) or, as root, `aitbc-miner/<name>` (v2: at
    /// the mount; v1: under the supervisor's own cgroup of each hierarchy). Empty subtrees of
    /// supervisors that are gone (`<anything>.<pid>` with no such pid) are removed first.
    ///
    /// `Ok(None)` when neither is possible (non-root on a host without delegation, or no
    /// cgroup filesystem): callers warn once and rely on rlimits and process groups.
    pub fn create(name: &str) -> Result<Option<Subtree>, Error> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let host = Host::from_texts(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"));
        let root = nix::unistd::geteuid().is_root();
        match host.layout {
            Layout::None => Ok(None),
            Layout::V1(hierarchies) => {
                if !root {
                    return Ok(None);
                }
                Ok(Some(Subtree {
                    tree: Tree::V1(v1::Tree::create(&hierarchies, name)?),
                }))
            }
            Layout::V2 { mount, own } => {
                let own_dir = join_cgroup_path(&mount, &own);
                if own != "/" && v2::is_delegated(&own_dir, root) {
                    return Ok(Some(Subtree {
                        tree: Tree::V2(v2::Tree::create_delegated(&own_dir)?),
                    }));
                }
                if !root {
                    return Ok(None);
                }
                Ok(Some(Subtree {
                    tree: Tree::V2(v2::Tree::create_owned(&mount, &own_dir, name)?),
                }))
            }
        }
    }

    /// Moves this process (all its threads) into `<subtree>/supervisor`, where it has a high
    /// CPU weight and (v2) memory protection. Call it before starting workers. Already done by
    /// [`Subtree::create`] for a delegated v2 cgroup.
    pub fn adopt_self(&self) -> Result<(), Error> {
        match &self.tree {
            Tree::V1(t) => t.adopt_self(),
            Tree::V2(t) => t.adopt_self(),
        }
    }

    /// Hands the subtree (directories and control files) to `uid`:`gid`, so a supervisor
    /// that drops root afterwards can still create, limit and remove its workers' cgroups.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), Error> {
        let dirs = match &self.tree {
            Tree::V1(t) => t.dirs(),
            Tree::V2(t) => vec![t.dir().to_path_buf()],
        };
        for d in dirs {
            chown_tree(&d, uid, gid)?;
        }
        Ok(())
    }

    /// Creates the cgroup of one worker, `<subtree>/workers/<name>` (`name`: a plain file
    /// name), with its `cgroup.procs` opened for the child to join before exec.
    pub fn worker(&self, name: &str) -> Result<WorkerCgroup, Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::Cgroup {
                path: PathBuf::from(name),
                action: "create a worker cgroup: the name must be a plain file name".into(),
                source: io::Error::from(io::ErrorKind::InvalidInput),
            });
        }
        Ok(WorkerCgroup {
            inner: match &self.tree {
                Tree::V1(t) => Worker::V1(t.worker(name)?),
                Tree::V2(t) => Worker::V2(t.worker(name)?),
            },
        })
    }

    /// Which hierarchy the subtree is in.
    pub fn version(&self) -> Version {
        match &self.tree {
            Tree::V1(_) => Version::V1,
            Tree::V2(_) => Version::V2,
        }
    }

    /// The controllers that limit workers (v1: the hierarchies found; v2: those enabled).
    pub fn controllers(&self) -> Vec<String> {
        match &self.tree {
            Tree::V1(t) => t.controllers(),
            Tree::V2(t) => t.controllers().to_vec(),
        }
    }

    /// One line for the log and `doctor`, e.g.
    /// `cgroup v1 (memory, pids, cpu, cpuacct, freezer) at .../aitbc-miner/m1.42`.
    pub fn describe(&self) -> String {
        let (v, at, delegated) = match &self.tree {
            Tree::V1(t) => ("v1", t.describe_location(), ""),
            Tree::V2(t) => (
                "v2",
                t.dir().display().to_string(),
                if t.is_delegated() { ", delegated" } else { "" },
            ),
        };
        let ctl = self.controllers();
        let ctl = if ctl.is_empty() {
            "no controllers: kill and membership only".to_owned()
        } else {
            ctl.join(", ")
        };
        format!("cgroup {v} ({ctl}{delegated}) at {at}")
    }
}

impl fmt::Debug for Subtree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl WorkerCgroup {
    /// The open `cgroup.procs` of each hierarchy (close-on-exec). The child writes `"0"` to
    /// each one between fork and exec, so the worker runs its first instruction inside.
    pub fn join_fds(&self) -> Vec<RawFd> {
        match &self.inner {
            Worker::V1(w) => w.procs.iter().map(AsRawFd::as_raw_fd).collect(),
            Worker::V2(w) => vec![w.procs.as_raw_fd()],
        }
    }

    /// Writes the memory (swap off), pids and CPU limits.
    pub fn set_limits(&self, l: &Limits) -> Result<(), Error> {
        match &self.inner {
            Worker::V1(w) => w.set_limits(l),
            Worker::V2(w) => w.set_limits(l),
        }
    }

    /// Kills every process in the cgroup at once and returns when it is empty (at most
    /// [`KILL_TIMEOUT`]). v2: `cgroup.kill`; v1: freeze, SIGKILL each, thaw.
    pub fn kill_all(&self) -> Result<(), Error> {
        match &self.inner {
            Worker::V1(w) => w.kill_all(),
            Worker::V2(w) => w.kill_all(),
        }
    }

    /// Peak memory, CPU time and the OOM verdict, as the kernel accounted them.
    pub fn stats(&self) -> CgroupStats {
        match &self.inner {
            Worker::V1(w) => w.stats(),
            Worker::V2(w) => w.stats(),
        }
    }

    /// Pids now in the cgroup (from its `cgroup.procs`; v1: the first hierarchy).
    pub fn pids(&self) -> Vec<i32> {
        read_pids(&self.path().join("cgroup.procs"))
    }

    /// The worker's cgroup directory (v1: in the first hierarchy, by preference freezer).
    pub fn path(&self) -> &Path {
        match &self.inner {
            Worker::V1(w) => w.primary(),
            Worker::V2(w) => &w.dir,
        }
    }

    /// Every directory of this cgroup (one per v1 hierarchy; one on v2).
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.inner {
            Worker::V1(w) => w.dirs.iter().map(|(_, d)| d.clone()).collect(),
            Worker::V2(w) => vec![w.dir.clone()],
        }
    }
}

impl fmt::Debug for WorkerCgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerCgroup({})", self.path().display())
    }
}

/// The subtree a supervisor runs its workers in, set up the way `run` wants it: created
/// (named `<miner_id>.<pid>`, with `-<n>` for a second one in the same process), handed to
/// `owner` when a root supervisor is about to drop to that user, and adopted (this process
/// moves into its `supervisor` leaf). Logs one line either way: where workers run, or a warning
/// that they are limited by rlimits and process groups only.
pub fn supervisor_subtree(
    miner_id: &str,
    owner: Option<(u32, u32)>,
) -> Option<std::sync::Arc<Subtree>> {
    set_up_subtree(miner_id, owner, true)
}

/// A subtree for workers only: like [`supervisor_subtree`] but the calling process stays where
/// it is. For a supervisor that shares its process with other code (the library `run` in `dev`
/// and in tests, `doctor`, benchmarks), where moving the whole process would move that code too.
pub fn workers_subtree(name: &str) -> Option<std::sync::Arc<Subtree>> {
    set_up_subtree(name, None, false)
}

fn set_up_subtree(
    miner_id: &str,
    owner: Option<(u32, u32)>,
    adopt: bool,
) -> Option<std::sync::Arc<Subtree>> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CREATED: AtomicU64 = AtomicU64::new(0);
    let n = CREATED.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let name = if n == 0 {
        format!("{miner_id}.{pid}")
    } else {
        format!("{miner_id}-{n}.{pid}")
    };
    let fallback = "workers are confined by rlimits, namespaces and seccomp but have no \
                    per-worker cgroup (no memory, pids or CPU-quota limit, no whole-cgroup kill)";
    let subtree = match Subtree::create(&name) {
        Ok(Some(s)) => s,
        Ok(None) => {
            let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
            let host = Host::from_texts(&read("/proc/self/mountinfo"), &read("/proc/self/cgroup"));
            // systemd sets INVOCATION_ID in every service it starts.
            let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
            let why = no_subtree_advice(&host.layout, under_systemd);
            tracing::warn!("no cgroup subtree: {why}; {fallback}");
            return None;
        }
        Err(e) => {
            tracing::warn!("cannot set up the workers' cgroups: {e}; {fallback}");
            return None;
        }
    };
    let setup = owner
        .map_or(Ok(()), |(uid, gid)| subtree.chown(uid, gid))
        .and_then(|()| if adopt { subtree.adopt_self() } else { Ok(()) });
    if let Err(e) = setup {
        tracing::warn!("cannot set up the workers' cgroups: {e}; {fallback}");
        return None;
    }
    tracing::info!("workers run in {}", subtree.describe());
    Some(std::sync::Arc::new(subtree))
}

// ---------------------------------------------------------------------------------------------
// Pure parts: what the host has, and the files' formats.

/// Why a supervisor got no subtree ([`Subtree::create`] answered `Ok(None)`) and the fix, for
/// the warning `run` logs. `under_systemd`: started by systemd as a service.
pub fn no_subtree_advice(layout: &Layout, under_systemd: bool) -> &'static str {
    match (layout, under_systemd) {
        (Layout::V1(_), true) => {
            "this host keeps its cgroup controllers on v1 (a hybrid or legacy hierarchy), and \
             systemd delegates none of those to a service that is not root. Fix: boot with the \
             unified hierarchy (Debian 12's default: remove systemd.unified_cgroup_hierarchy=0 \
             from the kernel command line)"
        }
        (Layout::V1(_), false) => {
            "not root, and cgroup v1 is not delegated to users. Fix: start the miner as root (it \
             drops to RUN_AS_USER after set-up) or from its systemd unit on a unified-hierarchy host"
        }
        (Layout::V2 { .. }, true) => {
            "systemd did not delegate this service's cgroup. Fix: Delegate=yes in the unit \
             (systemd/aitbc-miner.service has it; check `systemctl cat aitbc-miner`)"
        }
        (Layout::V2 { .. }, false) => {
            "not root and this cgroup is not delegated. Fix: run the miner from its systemd \
             unit (Delegate=yes) or start it as root"
        }
        (Layout::None, _) => "no cgroup filesystem is mounted. Fix: mount cgroup2 on /sys/fs/cgroup",
    }
}

/// One line of `/proc/self/mountinfo`, the fields used here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The path inside the filesystem that is mounted (`/` for a whole cgroup hierarchy).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    /// Per-superblock options: for v1 cgroups, the controllers (`memory`, `cpu,cpuacct`).
    pub super_options: Vec<String>,
}

/// Parses `/proc/self/mountinfo`; malformed lines are skipped. Paths have their octal escapes
/// (`\040` for a space) undone.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let super_options = post.next().unwrap_or("");
            Some(Mount {
                root: unescape(pre.get(3)?),
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                fstype: fstype.to_owned(),
                super_options: super_options.split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    pub id: u32,
    /// Empty for the v2 line (`0::/path`); `name=systemd` style names are kept as they are.
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/self/cgroup`; malformed lines are skipped.
pub fn parse_proc_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.splitn(3, ':');
            let id = it.next()?.parse().ok()?;
            let ctl = it.next()?;
            let path = it.next()?;
            Some(Membership {
                id,
                controllers: ctl
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                path: path.to_owned(),
            })
        })
        .collect()
}

/// A v1 hierarchy this module uses: its mount, the wanted controllers it carries, and this
/// process's cgroup in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub controllers: Vec<&'static str>,
    pub mount: PathBuf,
    /// This process's cgroup directory in the hierarchy.
    pub own_dir: PathBuf,
}

/// Which cgroup setup a host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// v1 hierarchies carrying at least the memory controller (hybrid hosts included).
    V1(Vec<Hierarchy>),
    /// The unified hierarchy only: its mount and this process's cgroup path in it.
    V2 { mount: PathBuf, own: String },
    /// No cgroup filesystem this module can use.
    None,
}

/// What the host offers, computed from the texts of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub layout: Layout,
}

impl Host {
    /// Pure: decides the layout. v1 when a v1 hierarchy has the memory controller, else v2
    /// when a cgroup2 filesystem is mounted (preferring `/sys/fs/cgroup`), else none.
    pub fn from_texts(mountinfo: &str, proc_cgroup: &str) -> Host {
        let mounts = parse_mountinfo(mountinfo);
        let members = parse_proc_cgroup(proc_cgroup);
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        for m in mounts.iter().filter(|m| m.fstype == "cgroup") {
            let controllers: Vec<&'static str> = V1_CONTROLLERS
                .iter()
                .copied()
                .filter(|c| m.super_options.iter().any(|o| o == c))
                .collect();
            if controllers.is_empty()
                || hierarchies.iter().any(|h| {
                    h.mount == m.mount_point
                        || h.controllers.iter().any(|c| controllers.contains(c))
                })
            {
                continue;
            }
            let own = members
                .iter()
                .find(|mb| mb.controllers.iter().any(|c| c == controllers[0]))
                .map(|mb| mb.path.as_str())
                .unwrap_or("/");
            let own = strip_mount_root(&m.root, own);
            hierarchies.push(Hierarchy {
                controllers,
                own_dir: join_cgroup_path(&m.mount_point, &own),
                mount: m.mount_point.clone(),
            });
        }
        if hierarchies
            .iter()
            .any(|h| h.controllers.contains(&"memory"))
        {
            return Host {
                layout: Layout::V1(hierarchies),
            };
        }
        let v2 = mounts
            .iter()
            .filter(|m| m.fstype == "cgroup2")
            .min_by_key(|m| m.mount_point != Path::new("/sys/fs/cgroup"));
        match v2 {
            Some(m) => {
                let own = members
                    .iter()
                    .find(|mb| mb.id == 0 && mb.controllers.is_empty())
                    .map(|mb| mb.path.as_str())
                    .unwrap_or("/");
                Host {
                    layout: Layout::V2 {
                        mount: m.mount_point.clone(),
                        own: strip_mount_root(&m.root, own),
                    },
                }
            }
            None => Host {
                layout: Layout::None,
            },
        }
    }
}

/// A cgroup path as `/proc/self/cgroup` shows it, relative to a mount whose root is
/// `mount_root` (`/` except inside some containers).
fn strip_mount_root(mount_root: &str, path: &str) -> String {
    if mount_root == "/" {
        return path.to_owned();
    }
    match path.strip_prefix(mount_root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            format!("/{}", rest.trim_start_matches('/'))
        }
        // Outside what is mounted: use the mount itself.
        _ => "/".to_owned(),
    }
}

/// `mount` + a cgroup path (`/a/b`), refusing `..` components.
pub fn join_cgroup_path(mount: &Path, path: &str) -> PathBuf {
    let mut out = mount.to_path_buf();
    for part in path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "." && *p != "..")
    {
        out.push(part);
    }
    out
}

/// The value of `key` in a flat-keyed file (`cpu.stat`, `memory.events`,
/// `memory.oom_control`: one `key value` per line).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Parses a file holding one number (`memory.peak`, `cpuacct.usage`); `max` is `None`.
pub fn single_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// Pids in a `cgroup.procs` text.
pub fn parse_pids(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The pid at the end of a subtree name `<anything>.<pid>`.
pub fn pid_of_subtree_name(name: &str) -> Option<i32> {
    name.rsplit_once('.')
        .and_then(|(_, p)| p.parse().ok())
        .filter(|p| *p > 0)
}

// ---------------------------------------------------------------------------------------------
// Small I/O helpers shared by the backends.

fn cg_err(path: &Path, action: impl Into<String>, source: io::Error) -> Error {
    Error::Cgroup {
        path: path.to_path_buf(),
        action: action.into(),
        source,
    }
}

/// Writes `value` to the control file `dir/file` in one `write(2)`.
fn write_file(dir: &Path, file: &str, value: &str) -> Result<(), Error> {
    let path = dir.join(file);
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    r.map_err(|e| cg_err(&path, format!("write {value:?}"), e))
}

fn read_text(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}

fn read_pids(path: &Path) -> Vec<i32> {
    read_text(path).map(|t| parse_pids(&t)).unwrap_or_default()
}

/// Creates `dir` (not its parents); an existing one is fine.
fn make_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cg_err(dir, "create", e)),
    }
}

/// Removes a cgroup directory; a missing one is fine.
fn remove_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cg_err(dir, "remove", e)),
    }
}

/// Removes a cgroup directory and its (empty) sub-cgroups, deepest first. Stops at the first
/// one that still holds a process (the kernel refuses with EBUSY).
fn remove_tree(dir: &Path) -> Result<(), Error> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path())?;
            }
        }
    }
    remove_dir(dir)
}

/// Removes the subtrees `<base>/<name>.<pid>` of supervisors that are gone. Best effort:
/// one that still holds processes stays.
fn remove_stale(base: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if n == name || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(pid) = pid_of_subtree_name(n) {
            let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH);
            if gone {
                match remove_tree(&e.path()) {
                    Ok(()) => tracing::info!("removed the stale cgroup {}", e.path().display()),
                    Err(err) => tracing::debug!("stale cgroup left in place: {err}"),
                }
            }
        }
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), Error> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(uid), Some(gid))
            .map_err(|e| cg_err(p, format!("chown {uid}:{gid}"), e))
    };
    chown(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| cg_err(dir, "list", e))?;
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            chown_tree(&p, uid, gid)?;
        } else {
            chown(&p)?;
        }
    }
    Ok(())
}

/// Writes this process's pid to `dir/cgroup.procs` (moves every thread of it).
fn move_self(dir: &Path) -> Result<(), Error> {
    write_file(dir, "cgroup.procs", &std::process::id().to_string())
}

/// SIGKILLs each pid in `dir/cgroup.procs` until it is empty or `until` passes, pausing a
/// little longer each round (the kernel needs a moment to tear a process down). Returns the
/// number left.
fn kill_until_empty(dir: &Path, until: Instant) -> usize {
    let procs = dir.join("cgroup.procs");
    let mut pause = Duration::from_micros(200);
    loop {
        let pids = read_pids(&procs);
        if pids.is_empty() {
            return 0;
        }
        for p in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if Instant::now() >= until {
            return pids.len();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The number of online cores, for the workers' quota.
fn cores() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/68f1
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn the_missing_subtree_warning_names_the_cause_and_its_fix() {
        let v1 = Layout::V1(Vec::new());
        let v2 = Layout::V2 {
            mount: PathBuf::from("/sys/fs/cgroup"),
            own: "/system.slice/aitbc-miner.service".into(),
        };
        // The case this host showed under a real systemd 252 (scripts/boot-check): the unit
        // has Delegate=yes, but the controllers are on v1, so "use Delegate=yes" is no fix.
        let hybrid = no_subtree_advice(&v1, true);
        assert!(hybrid.contains("unified hierarchy"), "{hybrid}");
        assert!(!hybrid.contains("Delegate=yes"), "{hybrid}");
        assert!(no_subtree_advice(&v1, false).contains("start the miner as root"));
        assert!(no_subtree_advice(&v2, true).contains("Delegate=yes"));
        assert!(no_subtree_advice(&v2, false).contains("Delegate=yes"));
        assert!(no_subtree_advice(&Layout::None, false).contains("cgroup2"));
    }

    #[test]
    fn a_hybrid_host_uses_its_v1_hierarchies_under_the_own_cgroup() {
        let host = Host::from_texts(HYBRID, HYBRID_SELF);
        let Layout::V1(h) = host.layout else {
            panic!("{:?}", host.layout)
        };
        let got: Vec<(Vec<&str>, &str)> = h
            .iter()
            .map(|h| (h.controllers.clone(), h.own_dir.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (vec!["cpu"], "/sys/fs/cgroup/cpu"),
                (vec!["cpuacct"], "/sys/fs/cgroup/cpuacct"),
                (vec!["memory"], "/sys/fs/cgroup/memory/process_api/68f1"),
                (vec!["freezer"], "/sys/fs/cgroup/freezer"),
                (vec!["pids"], "/sys/fs/cgroup/pids"),
            ]
        );
    }

    #[test]
    fn co_mounted_v1_controllers_share_one_hierarchy() {
        let mi = "\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let me = "3:cpu,cpuacct:/system.slice/aitbc-miner.service\n2:memory:/system.slice/aitbc-miner.service\n";
        let Layout::V1(h) = Host::from_texts(mi, me).layout else {
            panic!()
        };
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            h[0].own_dir,
            Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/aitbc-miner.service")
        );
    }

    #[test]
    fn a_unified_host_uses_v2_with_its_own_cgroup() {
        let mi = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
        let me = "0::/system.slice/aitbc-miner.service\n";
        assert_eq!(
            Host::from_texts(mi, me).layout,
            Layout::V2 {
                mount: "/sys/fs/cgroup".into(),
                own: "/system.slice/aitbc-miner.service".into()
            }
        );
        // A container whose cgroup2 mount is rooted below the host's root.
        let mi = "30 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let me = "0::/docker/abc/inner\n";
        assert_eq!(
            Host::from_texts(mi, me).layout,
            Layout::V2 {
                mount: "/sys/fs/cgroup".into(),
                own: "/inner".into()
            }
        );
        assert_eq!(Host::from_texts("", "").layout, Layout::None);
        // A v1 mount without the memory controller does not make a v1 host.
        let mi = "32 31 0:29 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(Host::from_texts(mi, "").layout, Layout::None);
    }

    #[test]
    fn mountinfo_escapes_and_garbage() {
        let m = parse_mountinfo("1 2 0:1 / /a\\040b rw shared:1 - cgroup2 none rw\nnonsense\n");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, Path::new("/a b"));
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(unescape("\\134x\\"), "\\x\\");
    }

    #[test]
    fn proc_cgroup_lines() {
        let m = parse_proc_cgroup("4:memory:/a/b\n0::/\nbad\n3:cpu,cpuacct:/x:y\n");
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].controllers, ["memory"]);
        assert_eq!(
            (m[1].id, m[1].controllers.len(), m[1].path.as_str()),
            (0, 0, "/")
        );
        assert_eq!(m[2].path, "/x:y");
        assert_eq!(
            join_cgroup_path(Path::new("/m"), "/a/../b/./c"),
            Path::new("/m/a/b/c")
        );
    }

    #[test]
    fn stat_files() {
        let cpu = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed_value(cpu, "usage_usec"), Some(1234));
        assert_eq!(keyed_value(cpu, "nr_periods"), None);
        let ev = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(ev, "oom_kill"), Some(1));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        assert_eq!(single_value("4096\n"), Some(4096));
        assert_eq!(single_value("max\n"), None);
        assert_eq!(parse_pids("12\n345\n\n"), [12, 345]);
        assert_eq!(pid_of_subtree_name("m1.example.org.4242"), Some(4242));
        assert_eq!(pid_of_subtree_name("m1"), None);
        assert_eq!(pid_of_subtree_name("m1.0"), None);
    }

    #[test]
    fn limit_values() {
        let l = Limits::for_job(512, 4);
        assert_eq!(l.memory_bytes, 512 << 20);
        assert_eq!(l.pids, 4 + PIDS_MARGIN);
        assert_eq!(l.cpu_quota_us(), 400_000);
        let l = Limits::for_job(u64::MAX / 2, 0);
        assert_eq!((l.memory_bytes, l.cpus), (u64::MAX, 1));
        assert_eq!(workers_cpu_quota_us(2), 190_000);
        assert_eq!(workers_cpu_quota_us(1), 100_000);
        assert_eq!(workers_cpu_quota_us(64), 6_080_000);
    }

    /// Starts `sh -c script` already inside `cg` (joined between fork and exec, as a worker).
    pub(crate) fn spawn_in(cg: &WorkerCgroup, script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        let fds = cg.join_fds();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        // SAFETY: only write(2) on descriptors opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.spawn().expect("spawn /bin/sh")
    }

    /// Starts a child in `cg` (worker `w1`) that leaves a grandchild outside its process group,
    /// waits for both, and checks that `kill_all` leaves the cgroup empty and the child dead of
    /// SIGKILL: nothing a worker starts outlives its cgroup.
    pub(crate) fn assert_kill_all_reaches_a_grandchild(cg: &WorkerCgroup, version: &str) {
        use std::time::{Duration, Instant};
        let mut child = spawn_in(cg, "setsid sleep 300 & exec sleep 300");
        let pid = child.id();
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.contains("/workers/w1"), "{own}");
        let t0 = Instant::now();
        while cg.pids().len() < 2 {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the grandchild never appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        cg.kill_all().unwrap();
        eprintln!("{version} kill_all of 2 processes took {:?}", t0.elapsed());
        assert!(cg.pids().is_empty());
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }

    /// The subtree's directories (one per v1 hierarchy).
    pub(crate) fn tree_dirs(sub: &Subtree) -> Vec<PathBuf> {
        match &sub.tree {
            Tree::V1(t) => t.dirs(),
            Tree::V2(t) => vec![t.dir().to_path_buf()],
        }
    }

    /// Whether the real-filesystem tests can run here; prints the skip line when not.
    pub(crate) fn can_run(what: &str, needs: &Path) -> bool {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP {what}: needs root");
            return false;
        }
        if !needs.exists() {
            eprintln!("SKIP {what}: {} is missing on this host", needs.display());
            return false;
        }
        true
    }
}

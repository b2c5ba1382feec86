//! `aitbc-miner doctor`: everything an operator should know before the first job, one line
//! per check, each non-ok line with its fix: the config file (valid, mode, owner), the user the
//! miner becomes, its directories, the Coordinator (a real heartbeat: reachable, key accepted),
//! the clock, every confinement mechanism, the GPU (NVML, libcuda, cuBLAS), and a live
//! self-test that runs a tiny job with a known answer through the real confined worker path
//! (on the GPU too when there is one).
//!
//! Two halves, kept apart so the decisions are tested without touching the host:
//! - small **probes** ([`gather`]) read facts: `prctl`, `/proc/self/status`, the Landlock ABI
//!   (`landlock_create_ruleset` with `LANDLOCK_CREATE_RULESET_VERSION`), the cgroup mounts in
//!   `/proc/self/mountinfo` and `/proc/self/cgroup`, swap accounting, each namespace created in
//!   a forked child running as the run-as user, this process's credentials, the config file,
//!   the directories ([`dirs`]), one heartbeat ([`coordinator`]), `adjtimex` ([`clock`]), NVML
//!   and the dynamic loader ([`gpu`]), and the self-test ([`self_test`]);
//! - pure **checks** ([`checks`]) turn [`Facts`] into [`Line`]s:
//!   `ok|warn|FAIL|skip  <check>: <finding>[ — fix: <what to do>]`.
//!
//! A report with any `FAIL` line means the miner would not run here, would run unconfined, or
//! would compute wrong answers; the exit status is then 1. `warn` means it runs with a weaker
//! fallback or a risk the operator should know about; `skip` that a check did not apply or
//! could not run (it says why, and how to make it apply).
//!
//! This module must never panic on what it finds (every probe error becomes a line), never
//! change the host beyond what the miner itself would do on start (the namespace and write
//! probes live and die in a child or remove what they create; the self-test's worker is
//! reaped and its cgroup and job directory removed; the heartbeat registers `MINER_ID` as
//! `run` would), and never print the API key.

pub mod clock;
pub mod coordinator;
pub mod dirs;
pub mod gpu;
pub mod self_test;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::api::Mode;

use crate::config::{self, Config};
use crate::privilege::{self, Credentials, Need};
use protocol::args::FsMode;

pub use coordinator::CoordinatorFacts;
pub use dirs::{DirFacts, DirUser};
pub use gpu::GpuFacts;
pub use self_test::SelfTest;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Present and as it should be.
    Ok,
    /// The miner runs, with a weaker fallback or a risk the operator should know about.
    Warn,
    /// The miner would not start, would run jobs without a confinement it promises, or would
    /// compute wrong answers.
    Fail,
    /// Not applicable here, or not attempted because something it needs is missing.
    Skip,
}

impl Status {
    /// `ok`, `warn`, `FAIL` or `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The verdict.
    pub status: Status,
    /// What was checked, e.g. `seccomp`.
    pub check: String,
    /// What was found.
    pub finding: String,
    /// What to do about it, when there is something to do.
    pub fix: Option<String>,
}

impl Line {
    fn new(status: Status, check: &str, finding: impl Into<String>) -> Line {
        Line {
            status,
            check: check.to_string(),
            finding: finding.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Line {
        self.fix = Some(fix.into());
        self
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<4}  {}: {}",
            self.status.as_str(),
            self.check,
            self.finding
        )?;
        if let Some(fix) = &self.fix {
            write!(f, " — fix: {fix}")?;
        }
        Ok(())
    }
}

/// Whether a report holds a `FAIL` line.
pub fn any_failed(lines: &[Line]) -> bool {
    lines.iter().any(|l| l.status == Status::Fail)
}

/// The config file as the doctor found it.
#[derive(Debug, Clone)]
pub struct ConfigFacts {
    /// The file.
    pub path: PathBuf,
    /// Whether it exists (when it does not, the settings come from the environment alone).
    pub exists: bool,
    /// Its permission bits, when it could be opened.
    pub mode: Option<u32>,
    /// Its owner's uid, when it could be opened.
    pub owner: Option<u32>,
    /// `Err(message)` when it could not be read or is not valid.
    pub loaded: Result<(), String>,
    /// Its warnings (unknown keys and the like).
    pub warnings: Vec<config::Warning>,
    /// Whether it holds `API_KEY`.
    pub holds_api_key: bool,
}

/// Which v1 controllers the miner uses.
pub const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "freezer"];

/// The cgroup hierarchies of this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFacts {
    /// v1 controllers of [`V1_CONTROLLERS`] that are mounted, with their mount point.
    pub v1: Vec<(String, PathBuf)>,
    /// The cgroup2 mount point, if any.
    pub v2_mount: Option<PathBuf>,
    /// `cgroup.controllers` of the cgroup2 root (may be empty on a hybrid host).
    pub v2_controllers: Vec<String>,
    /// This process's cgroup2 path (`0::/...` of `/proc/self/cgroup`).
    pub v2_own: Option<String>,
    /// Whether the run-as user can write this process's cgroup2 directory (delegation).
    pub v2_own_writable: bool,
    /// Whether swap is accounted (v1 `memory.memsw.*`, v2 `memory.swap.max`).
    pub swap_accounting: bool,
    /// The host's swap in KiB (`SwapTotal`).
    pub swap_total_kb: u64,
}

/// A namespace the worker creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// `CLONE_NEWUSER`.
    User,
    /// `CLONE_NEWUSER | CLONE_NEWNET`.
    Net,
    /// `CLONE_NEWUSER | CLONE_NEWNS`.
    Mount,
}

impl Namespace {
    /// All of them, in the order the report lists them.
    pub const ALL: [Namespace; 3] = [Namespace::User, Namespace::Net, Namespace::Mount];

    fn name(self) -> &'static str {
        match self {
            Namespace::User => "user",
            Namespace::Net => "net",
            Namespace::Mount => "mount",
        }
    }

    fn flags(self) -> libc::c_int {
        match self {
            Namespace::User => libc::CLONE_NEWUSER,
            Namespace::Net => libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
            Namespace::Mount => libc::CLONE_NEWUSER | libc::CLONE_NEWNS,
        }
    }
}

/// Who the miner is and whom it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Effective uid of this process.
    pub uid: u32,
    /// Its name.
    pub name: String,
    /// `RUN_AS_USER`.
    pub run_as_user: String,
    /// When root: the run-as user's (uid, gid), or why it cannot be used.
    pub run_as: Option<Result<(u32, u32), String>>,
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Facts {
    /// `prctl(PR_GET_SECCOMP)`: the mode, or the errno.
    pub seccomp_prctl: Result<i32, i32>,
    /// The `Seccomp:` field of `/proc/self/status`, if present.
    pub seccomp_status: Option<String>,
    /// The Landlock ABI version, or the errno of `landlock_create_ruleset`.
    pub landlock_abi: Result<i32, i32>,
    /// `SANDBOX_FS`.
    pub sandbox_fs: FsMode,
    /// The cgroup hierarchies.
    pub cgroup: CgroupFacts,
    /// Each namespace, created as the run-as user: Ok, or the errno.
    pub namespaces: Vec<(Namespace, Result<(), i32>)>,
    /// The process and the user it drops to.
    pub identity: Identity,
    /// This process's credentials, or why they could not be read.
    pub credentials: Result<Credentials, String>,
    /// The config file, when one was checked.
    pub config: Option<ConfigFacts>,
    /// `STATE_DIR`, its spool and `WORK_DIR`, as the run-as user meets them (empty when the
    /// run-as user is unknown).
    pub dirs: Vec<DirFacts>,
    /// Whom the directories were checked for.
    pub dir_user: Option<DirUser>,
    /// The heartbeat, when one was asked for.
    pub coordinator: Option<CoordinatorFacts>,
    /// The kernel's clock state (`adjtimex`).
    pub clock: Result<clock::KernelClock, i32>,
    /// The GPU probes.
    pub gpu: GpuFacts,
    /// The CPU self-test, when it was asked for.
    pub self_test: Option<SelfTest>,
    /// The GPU self-test, when the self-test was asked for.
    pub gpu_self_test: Option<SelfTest>,
}

/// `strerror` text and the errno's name, e.g. `Permission denied (EACCES)`.
pub fn errno_text(errno: i32) -> String {
    format!(
        "{} ({})",
        nix::errno::Errno::from_raw(errno).desc(),
        errno_name(errno)
    )
}

fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// The seccomp line.
pub fn check_seccomp(prctl: &Result<i32, i32>, status: Option<&str>) -> Line {
    match (prctl, status) {
        (Ok(mode), Some(field)) => Line::new(
            Status::Ok,
            "seccomp",
            format!(
                "available (prctl PR_GET_SECCOMP = {mode}, /proc/self/status Seccomp: {field}); \
                 each worker installs its filter on all threads"
            ),
        ),
        (Ok(_), None) => Line::new(
            Status::Fail,
            "seccomp",
            "prctl answers but /proc/self/status has no Seccomp field: the kernel lacks \
             CONFIG_SECCOMP",
        )
        .fix("use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (Debian's is)"),
        (Err(errno), _) => Line::new(
            Status::Fail,
            "seccomp",
            format!(
                "not available: prctl(PR_GET_SECCOMP) failed: {}",
                errno_text(*errno)
            ),
        )
        .fix("use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (Debian's is)"),
    }
}

/// The Landlock line: which filesystem confinement workers will use.
pub fn check_landlock(abi: &Result<i32, i32>, fs: FsMode) -> Line {
    let fix =
        "boot with Landlock among the LSMs, e.g. lsm=landlock,lockdown,yama,integrity,apparmor \
               on the kernel command line (kernel 5.13 or newer)";
    match (abi, fs) {
        (Ok(v), FsMode::Mount) => Line::new(
            Status::Ok,
            "landlock",
            format!("ABI {v} available, but SANDBOX_FS=mount: workers use the read-only mount-namespace view"),
        ),
        (Ok(v), _) => Line::new(
            Status::Ok,
            "landlock",
            format!(
                "ABI {v}: workers confine the filesystem with Landlock{}",
                if *v >= 6 {
                    " (signals and abstract unix sockets scoped)"
                } else {
                    ""
                }
            ),
        ),
        (Err(errno), FsMode::Landlock) => Line::new(
            Status::Fail,
            "landlock",
            format!(
                "not available ({}) and SANDBOX_FS=landlock: every worker would refuse to start",
                errno_text(*errno)
            ),
        )
        .fix(format!("{fix}, or set SANDBOX_FS=auto")),
        (Err(errno), FsMode::Mount) => Line::new(
            Status::Ok,
            "landlock",
            format!(
                "not available ({}); SANDBOX_FS=mount: workers use the read-only mount-namespace view",
                errno_text(*errno)
            ),
        ),
        (Err(errno), FsMode::Auto) => Line::new(
            Status::Warn,
            "landlock",
            format!(
                "not available ({}): the mount-namespace view will be used instead",
                errno_text(*errno)
            ),
        )
        .fix(fix),
    }
}

/// The `cgroup` line: ok with every controller, else a warning naming the missing ones.
fn controllers_line(finding: String, missing: &[&str], fix: &str) -> Line {
    if missing.is_empty() {
        return Line::new(Status::Ok, "cgroup", finding);
    }
    Line::new(
        Status::Warn,
        "cgroup",
        format!(
            "{finding}; missing {}: those limits fall back to rlimits",
            missing.join(", ")
        ),
    )
    .fix(fix)
}

/// The cgroup lines: version and controllers, delegation, swap accounting.
pub fn check_cgroup(c: &CgroupFacts, identity: &Identity) -> Vec<Line> {
    let mut lines = Vec::new();
    let root = identity.uid == 0;
    // A hybrid host keeps its controllers on v1, so v1 wins wherever it has any.
    let v2_usable = c.v1.is_empty() && c.v2_mount.is_some() && !c.v2_controllers.is_empty();
    let needed_v2 = ["memory", "pids", "cpu"];
    if v2_usable {
        let mount = c.v2_mount.as_deref().unwrap_or(Path::new("?"));
        let missing: Vec<&str> = needed_v2
            .iter()
            .copied()
            .filter(|n| !c.v2_controllers.iter().any(|c| c == n))
            .collect();
        let finding = format!(
            "v2 at {} (controllers: {})",
            mount.display(),
            c.v2_controllers.join(" ")
        );
        lines.push(controllers_line(
            finding,
            &missing,
            "enable the controllers in the parent's cgroup.subtree_control (systemd does with Delegate=yes)",
        ));
        let own = c.v2_own.as_deref().unwrap_or("?");
        lines.push(if root {
            Line::new(
                Status::Ok,
                "cgroup delegation",
                format!(
                    "running as root: the supervisor creates {}/aitbc-miner/<MINER_ID> and hands it to {}",
                    mount.display(),
                    identity.run_as_user
                ),
            )
        } else if c.v2_own_writable {
            Line::new(
                Status::Ok,
                "cgroup delegation",
                format!("{own} is delegated: writable by {}", identity.name),
            )
        } else {
            Line::new(
                Status::Warn,
                "cgroup delegation",
                format!(
                    "{own} is not writable by {}: workers run without their own cgroup (rlimits only)",
                    identity.name
                ),
            )
            .fix("run under systemd with Delegate=yes (systemd/aitbc-miner.service), or start as root")
        });
    }
    if !c.v1.is_empty() {
        let present: Vec<&str> = c.v1.iter().map(|(n, _)| n.as_str()).collect();
        let missing: Vec<&str> = V1_CONTROLLERS
            .iter()
            .copied()
            .filter(|n| !present.contains(n))
            .collect();
        let mut finding = format!("v1 (mounted: {})", present.join(", "));
        if let Some(m) = &c.v2_mount {
            let ctl = if c.v2_controllers.is_empty() {
                "no controllers".to_string()
            } else {
                format!("controllers: {}", c.v2_controllers.join(" "))
            };
            finding.push_str(&format!(
                "; cgroup2 at {} ({ctl}) is not used for limits (hybrid)",
                m.display()
            ));
        }
        lines.push(controllers_line(
            finding,
            &missing,
            "mount the missing hierarchies, or boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2",
        ));
        lines.push(if root {
            Line::new(
                Status::Ok,
                "cgroup delegation",
                format!(
                    "running as root: the supervisor creates aitbc-miner/<MINER_ID> in each hierarchy and hands it to {}",
                    identity.run_as_user
                ),
            )
        } else {
            Line::new(
                Status::Warn,
                "cgroup delegation",
                format!(
                    "cgroup v1 cannot be delegated to {}: workers run without their own cgroup (rlimits only)",
                    identity.name
                ),
            )
            .fix("start the miner as root (it drops to RUN_AS_USER after creating its subtree), or use cgroup v2 with Delegate=yes")
        });
    }
    if !v2_usable && c.v1.is_empty() {
        lines.push(
            Line::new(
                Status::Warn,
                "cgroup",
                "no usable cgroup hierarchy: no per-worker memory, pids or CPU limits (rlimits only)",
            )
            .fix("mount cgroup2 at /sys/fs/cgroup (systemd does by default)"),
        );
    }
    lines.push(if c.swap_accounting {
        Line::new(
            Status::Ok,
            "swap accounting",
            "present: a job's memory limit covers swap too",
        )
    } else if c.swap_total_kb == 0 {
        Line::new(
            Status::Ok,
            "swap accounting",
            "absent, but this host has no swap, so memory limits hold",
        )
    } else {
        Line::new(
            Status::Warn,
            "swap accounting",
            format!(
                "absent with {} MiB of swap: a job could use swap beyond its ram_mb",
                c.swap_total_kb / 1024
            ),
        )
        .fix("boot with swapaccount=1 (cgroup v1) or use cgroup v2, or turn swap off")
    });
    lines
}

/// One line per namespace; `needed_mount` says whether the mount namespace is required (no
/// Landlock, or SANDBOX_FS=mount).
pub fn check_namespaces(
    results: &[(Namespace, Result<(), i32>)],
    as_user: &str,
    needed_mount: bool,
) -> Vec<Line> {
    let fix = "allow unprivileged user namespaces: sysctl -w kernel.unprivileged_userns_clone=1 \
               (Debian) and user.max_user_namespaces > 0; under systemd, RestrictNamespaces= must \
               allow user, net (and mnt)";
    results
        .iter()
        .map(|(ns, result)| {
            let check = format!("{} namespace", ns.name());
            match result {
                Ok(()) => Line::new(Status::Ok, &check, format!("{as_user} can create one")),
                Err(errno) => {
                    let status = if *ns == Namespace::Mount && !needed_mount {
                        Status::Warn
                    } else {
                        Status::Fail
                    };
                    Line::new(
                        status,
                        &check,
                        format!(
                            "{as_user} cannot create one: unshare: {}",
                            errno_text(*errno)
                        ),
                    )
                    .fix(fix)
                }
            }
        })
        .collect()
}

/// The user line: who runs and whom it becomes.
pub fn check_identity(id: &Identity) -> Line {
    let me = format!("{} (uid {})", id.name, id.uid);
    match &id.run_as {
        None => Line::new(
            Status::Ok,
            "user",
            format!("runs as {me}; not root, so there is nothing to drop (RUN_AS_USER is not used)"),
        ),
        Some(Ok((0, _))) => Line::new(
            Status::Fail,
            "user",
            format!("runs as {me} and RUN_AS_USER={} is root too: jobs would run as root", id.run_as_user),
        )
        .fix("set RUN_AS_USER to an unprivileged user, e.g. aitbc-miner (useradd --system --no-create-home aitbc-miner)"),
        Some(Ok((uid, gid))) => Line::new(
            Status::Ok,
            "user",
            format!(
                "runs as {me}; after set-up drops to {} (uid {uid}, gid {gid}), and so do its workers",
                id.run_as_user
            ),
        ),
        Some(Err(message)) => Line::new(
            Status::Fail,
            "user",
            format!("runs as {me}; cannot drop to RUN_AS_USER={}: {message}", id.run_as_user),
        )
        .fix(format!(
            "useradd --system --no-create-home {}, or set RUN_AS_USER=nobody",
            id.run_as_user
        )),
    }
}

/// The no_new_privs and capabilities lines.
pub fn check_privileges(creds: &Result<Credentials, String>, root: bool) -> Vec<Line> {
    let c = match creds {
        Ok(c) => c,
        Err(e) => {
            return vec![Line::new(
                Status::Warn,
                "capabilities",
                format!("cannot read this process's credentials: {e}"),
            )
            .fix("make sure /proc is mounted and readable, then run doctor again")]
        }
    };
    let nnp = Line::new(
        Status::Ok,
        "no_new_privs",
        format!(
            "{} now; the supervisor sets it after set-up and every worker sets its own",
            u8::from(c.no_new_privs)
        ),
    );
    let held = c.effective | c.permitted;
    let caps = if held == 0 {
        Line::new(
            Status::Ok,
            "capabilities",
            format!(
                "none held (bounding set {:#x}); none are needed{}",
                c.bounding,
                if root { "" } else { " with a delegated cgroup" }
            ),
        )
    } else if root {
        Line::new(
            Status::Ok,
            "capabilities",
            format!(
                "effective {:#x} as root; all of them (bounding set too) are dropped after set-up",
                c.effective
            ),
        )
    } else {
        Line::new(
            Status::Warn,
            "capabilities",
            format!(
                "holds effective {:#x}, permitted {:#x} without being root; the miner drops them at start",
                c.effective, c.permitted
            ),
        )
        .fix("remove file capabilities (setcap -r) or AmbientCapabilities= from the unit; none are needed")
    };
    vec![nnp, caps]
}

/// The config lines: valid, then the file's mode and owner. `identity` says who must be able
/// to read it and who may own it (root, or the user the miner runs as).
pub fn check_config(c: &ConfigFacts, identity: &Identity) -> Vec<Line> {
    let shown = c.path.display().to_string();
    let write_one = format!(
        "aitbc-miner example-config > {shown}, fill in COORD_URL, WALLET_ADDR, API_KEY and \
         MINER_ID, then chmod 600 {shown}"
    );
    let mut lines = vec![match (&c.loaded, c.exists) {
        (Ok(()), true) => Line::new(Status::Ok, "config", format!("{shown} is readable and valid")),
        (Ok(()), false) => Line::new(
            Status::Ok,
            "config",
            format!("no file at {shown}; every setting comes from the environment"),
        ),
        (Err(message), true) => Line::new(Status::Fail, "config", message.clone())
            .fix("correct the value named above; `aitbc-miner example-config` prints every key with its default"),
        (Err(message), false) => Line::new(Status::Fail, "config", message.clone()).fix(write_one),
    }];
    for w in &c.warnings {
        let fix = match &w.kind {
            // The permission warning has its own line below.
            config::WarningKind::InsecurePermissions { .. } => continue,
            config::WarningKind::UnknownKey { .. } => {
                "correct or remove the line; `aitbc-miner example-config` lists every key"
            }
            config::WarningKind::DuplicateKey { .. } => "keep one of the two lines",
            config::WarningKind::LiteralDollar { .. } => {
                "write the value out in full; only $(hostname) and $(hostname -s) are expanded"
            }
        };
        lines.push(Line::new(Status::Warn, "config", w.to_string()).fix(fix));
    }
    if let Some(mode) = c.mode {
        let mode = mode & 0o7777;
        lines.push(if mode & 0o022 != 0 {
            Line::new(
                Status::Fail,
                "config mode",
                format!(
                    "{shown} is mode {mode:04o}: group or others can change it, and so redirect \
                     the rewards (WALLET_ADDR) or run their own program as the miner (WORKER_EXE)"
                ),
            )
            .fix(format!("chmod 600 {shown}"))
        } else if mode & 0o077 != 0 {
            Line::new(
                Status::Warn,
                "config mode",
                format!(
                    "{shown} is mode {mode:04o}: group or others can read it{}",
                    if c.holds_api_key {
                        ", and it holds API_KEY"
                    } else {
                        ""
                    }
                ),
            )
            .fix(format!("chmod 600 {shown}"))
        } else {
            Line::new(
                Status::Ok,
                "config mode",
                format!("{shown} is mode {mode:04o}"),
            )
        });
    }
    if let Some(owner) = c.owner {
        lines.push(check_config_owner(
            &shown,
            owner,
            c.mode.unwrap_or(0),
            identity,
        ));
    }
    lines
}

/// The `config owner` line: the file must belong to root or to the user the miner runs as
/// (anyone else who owns it can change the miner's settings), and that user must be able to
/// read it, since the systemd unit starts the miner as that user.
fn check_config_owner(shown: &str, owner: u32, mode: u32, id: &Identity) -> Line {
    // Who the miner runs as: RUN_AS_USER when the doctor is root, else this user.
    let (user, uid) = match &id.run_as {
        Some(Ok((uid, _))) => (id.run_as_user.as_str(), *uid),
        Some(Err(_)) => {
            return Line::new(
                Status::Skip,
                "config owner",
                format!("not checked: RUN_AS_USER={} does not exist", id.run_as_user),
            )
            .fix("fix the user line, then run doctor again")
        }
        None => (id.name.as_str(), id.uid),
    };
    let owner_name = privilege::user_name(owner);
    let chown = format!("chown {user}: {shown}");
    if owner == uid {
        Line::new(
            Status::Ok,
            "config owner",
            format!("{shown} belongs to {user}, the user the miner runs as"),
        )
    } else if owner == 0 && mode & 0o004 == 0 && id.uid == 0 {
        Line::new(
            Status::Warn,
            "config owner",
            format!(
                "{shown} belongs to root and {user} cannot read it: fine for `run` started as \
                 root (it reads the file before dropping to {user}), but the systemd unit starts \
                 as {user} and would fail"
            ),
        )
        .fix(chown)
    } else if owner == 0 {
        Line::new(
            Status::Ok,
            "config owner",
            format!("{shown} belongs to root"),
        )
    } else {
        Line::new(
            Status::Warn,
            "config owner",
            format!(
                "{shown} belongs to {owner_name} (uid {owner}), neither root nor {user}: that \
                 user can change the miner's settings"
            ),
        )
        .fix(chown)
    }
}

/// Every check over `facts`, in report order.
pub fn checks(facts: &Facts) -> Vec<Line> {
    let mut lines = Vec::new();
    if let Some(c) = &facts.config {
        lines.extend(check_config(c, &facts.identity));
    }
    lines.push(check_identity(&facts.identity));
    match &facts.dir_user {
        Some(user) => lines.extend(facts.dirs.iter().map(|d| dirs::check(d, user))),
        None => lines.push(
            Line::new(
                Status::Skip,
                "state dir",
                format!(
                    "STATE_DIR, its spool and WORK_DIR not checked: RUN_AS_USER={} does not exist",
                    facts.identity.run_as_user
                ),
            )
            .fix("fix the user line, then run doctor again"),
        ),
    }
    if let Some(c) = &facts.coordinator {
        lines.push(coordinator::check(c));
        let (offset, why) = match c {
            CoordinatorFacts::Probed(p) => (p.offset(), "the Coordinator did not answer"),
            CoordinatorFacts::Skipped(_) => (None, "the Coordinator was not contacted"),
        };
        lines.push(clock::check_offset(offset, why));
    }
    lines.push(clock::check_sync(&facts.clock));
    lines.extend(check_privileges(
        &facts.credentials,
        facts.identity.uid == 0,
    ));
    lines.push(check_seccomp(
        &facts.seccomp_prctl,
        facts.seccomp_status.as_deref(),
    ));
    lines.push(check_landlock(&facts.landlock_abi, facts.sandbox_fs));
    let needed_mount = facts.sandbox_fs == FsMode::Mount
        || (facts.sandbox_fs == FsMode::Auto && facts.landlock_abi.is_err());
    let as_user = match &facts.identity.run_as {
        Some(Ok(_)) => facts.identity.run_as_user.clone(),
        _ => facts.identity.name.clone(),
    };
    lines.extend(check_namespaces(&facts.namespaces, &as_user, needed_mount));
    lines.extend(check_cgroup(&facts.cgroup, &facts.identity));
    lines.extend(gpu::check(&facts.gpu));
    if let Some(result) = &facts.self_test {
        lines.push(self_test::check(result, Mode::Cpu));
    }
    if let Some(result) = &facts.gpu_self_test {
        lines.push(self_test::check(result, Mode::Gpu));
    }
    lines
}

// --- probes ---------------------------------------------------------------------------------

/// `prctl(PR_GET_SECCOMP)`.
pub fn probe_seccomp_prctl() -> Result<i32, i32> {
    // SAFETY: PR_GET_SECCOMP only reads this thread's seccomp mode.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r)
    }
}

/// The value of a `Name:` field of `/proc/self/status`.
pub fn status_field(status: &str, name: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// The Landlock ABI version (`landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`).
pub fn probe_landlock_abi() -> Result<i32, i32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the call only returns
    // the ABI version; it creates no descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(i32::try_from(r).unwrap_or(i32::MAX))
    }
}

/// The cgroup mounts in `/proc/self/mountinfo` text: v1 controllers of interest with their
/// mount points, and the cgroup2 mount point.
pub fn parse_mountinfo(text: &str) -> (Vec<(String, PathBuf)>, Option<PathBuf>) {
    let mut v1 = Vec::new();
    let mut v2 = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let _source = r.next();
        let options = r.next().unwrap_or("");
        match fstype {
            "cgroup2" if v2.is_none() => v2 = Some(PathBuf::from(mount_point)),
            "cgroup" => {
                for opt in options.split(',') {
                    if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(n, _)| n == opt) {
                        v1.push((opt.to_string(), PathBuf::from(mount_point)));
                    }
                }
            }
            _ => {}
        }
    }
    v1.sort_by_key(|(n, _)| V1_CONTROLLERS.iter().position(|c| c == n));
    (v1, v2)
}

/// This process's cgroup2 path from `/proc/self/cgroup` text.
pub fn parse_own_v2(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

fn probe_cgroup(run_as: Option<(u32, u32)>) -> CgroupFacts {
    use std::os::unix::fs::MetadataExt;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (v1, v2_mount) = parse_mountinfo(&mountinfo);
    let mut facts = CgroupFacts {
        v1,
        v2_mount,
        ..CgroupFacts::default()
    };
    if let Some(mount) = &facts.v2_mount {
        facts.v2_controllers = std::fs::read_to_string(mount.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        facts.v2_own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| parse_own_v2(&t));
        if let Some(own) = &facts.v2_own {
            let dir = mount.join(own.trim_start_matches('/'));
            let (uid, gid) = run_as.unwrap_or((
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            ));
            facts.v2_own_writable = std::fs::metadata(&dir).is_ok_and(|m| {
                privilege::may_access(
                    uid,
                    gid,
                    m.uid(),
                    m.gid(),
                    m.mode(),
                    privilege::Need::ReadWrite,
                )
            });
            let swap_here = dir.join("memory.swap.max").exists();
            let swap_child = std::fs::read_dir(mount).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|e| e.path().join("memory.swap.max").exists())
            });
            facts.swap_accounting |= swap_here || swap_child;
        }
    }
    if let Some((_, memory)) = facts.v1.iter().find(|(n, _)| n == "memory") {
        facts.swap_accounting |= memory.join("memory.memsw.limit_in_bytes").exists();
    }
    facts.swap_total_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| status_field(&t, "SwapTotal"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    facts
}

/// Forks a child that becomes `run_as` (when given; the parent must be root) and unshares
/// `ns`; Ok when it could, the errno otherwise.
pub fn probe_namespace(ns: Namespace, run_as: Option<(u32, u32)>) -> Result<(), i32> {
    let flags = ns.flags();
    // SAFETY: the closure makes one system call (unshare) and reads errno: async-signal-safe,
    // no allocation, no lock, no panic.
    unsafe {
        in_child(run_as, || {
            if libc::unshare(flags) != 0 {
                return Err(*libc::__errno_location());
            }
            Ok(())
        })
    }
}

/// Runs `child` in a forked child process, as `run_as` (`(uid, gid)`, when given; the parent
/// must be root) and returns what it returned: the child exits with 0 or the errno, and the
/// parent maps the exit status back. A failed switch to `run_as` is `EPERM`; a child that did
/// not exit normally is `ECHILD`; a failed fork its errno.
///
/// For probes that must act as another user or change the process (namespaces) without
/// touching the doctor's own process.
///
/// # Safety
///
/// The process may have other threads (the tokio runtime), so the forked child may call only
/// async-signal-safe functions: `child` must make plain system calls only — no allocation, no
/// lock (no `println!`, no `tracing`), no panic — and must not rely on any other thread. It
/// runs in the child and its result is turned into `_exit`, so it never returns into the
/// caller's Rust code there; the parent only waits.
pub(crate) unsafe fn in_child(
    run_as: Option<(u32, u32)>,
    child: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    // SAFETY: the child does only what the caller's contract allows plus setgroups, setresgid,
    // setresuid and _exit, all async-signal-safe, and never returns from this match arm.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)),
        // SAFETY: in the forked child: `groups` outlives setgroups and holds the 1 entry
        // passed; setgroups/setresgid/setresuid/_exit are async-signal-safe and `child` is too
        // by the caller's contract; both paths end in _exit, never back in the caller's code.
        0 => unsafe {
            let became = match run_as {
                None => true,
                Some((uid, gid)) => {
                    let groups = [gid];
                    libc::setgroups(1, groups.as_ptr()) == 0
                        && libc::setresgid(gid, gid, gid) == 0
                        && libc::setresuid(uid, uid, uid) == 0
                }
            };
            let result = if became { child() } else { Err(libc::EPERM) };
            match result {
                Ok(()) => libc::_exit(0),
                Err(errno) => libc::_exit(errno.clamp(1, 255)),
            }
        },
        pid => {
            let mut status = 0;
            // SAFETY: waiting for the child just forked.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r != pid || !libc::WIFEXITED(status) {
                return Err(libc::ECHILD);
            }
            match libc::WEXITSTATUS(status) {
                0 => Ok(()),
                e => Err(e),
            }
        }
    }
}

/// Reads the config file for the report: validity, warnings and mode.
pub fn probe_config(path: &Path) -> (ConfigFacts, Option<Config>) {
    probe_config_at(path, Some(path))
}

/// [`probe_config`] for the file `run` would read: `named` is `--config` (`None`: the default
/// path, which may be absent, in which case the environment alone must complete the settings).
fn probe_config_at(path: &Path, named: Option<&Path>) -> (ConfigFacts, Option<Config>) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok();
    let mode = meta.as_ref().map(MetadataExt::mode);
    let owner = meta.as_ref().map(MetadataExt::uid);
    let holds_api_key = std::fs::read_to_string(path)
        .map(|t| {
            t.lines().any(|l| {
                l.trim_start()
                    .trim_start_matches("export ")
                    .trim_start()
                    .starts_with("API_KEY")
            })
        })
        .unwrap_or(false);
    let (loaded, warnings, config) = match config::load(named) {
        Ok((c, w)) => (Ok(()), w, Some(c)),
        Err(e) => (Err(e.to_string()), Vec::new(), None),
    };
    (
        ConfigFacts {
            path: path.to_path_buf(),
            exists: meta.is_some(),
            mode,
            owner,
            loaded,
            warnings,
            holds_api_key,
        },
        config,
    )
}

/// The settings to check with when there is no valid config file: the environment and the
/// defaults, with placeholders for the keys only a Coordinator needs.
pub fn default_config() -> Result<Config, String> {
    let raw = config::RawConfig::without_file();
    let env = |key: &str| {
        std::env::var(key).ok().or_else(|| match key {
            "COORD_URL" => Some("http://127.0.0.1:9".into()),
            "WALLET_ADDR" | "API_KEY" => Some("doctor".into()),
            "MINER_ID" => Some("doctor".into()),
            _ => None,
        })
    };
    config::resolve(&raw, &env, &config::HostFacts::detect()).map_err(|e| e.to_string())
}

/// What [`gather`] needs to be told.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file to check (`--config`); `None`: the default path, or the environment
    /// alone when it is absent (as `run` does).
    pub config: Option<PathBuf>,
    /// Whether to run the self-test (real workers, a known-answer job).
    pub self_test: bool,
    /// How long a self-test worker may take to say Hello.
    pub self_test_timeout: Duration,
    /// How long the self-test's job may take once handed over.
    pub self_test_job_timeout: Duration,
    /// Whether to send one heartbeat to the Coordinator.
    pub coordinator: bool,
    /// How long the heartbeat may take, connection included.
    pub coordinator_timeout: Duration,
}

/// Runs every probe. Never panics; whatever fails becomes part of the facts.
///
/// Order matters: the probes that fork (namespaces, directory write probes) run while this
/// process still has one thread; the heartbeat, NVML and the self-test come after.
pub fn gather(options: &Options) -> Facts {
    let (config_facts, loaded) = match &options.config {
        Some(path) => probe_config_at(path, Some(path)),
        None => probe_config_at(Path::new(config::DEFAULT_PATH), None),
    };
    let config_facts = Some(config_facts);
    let real = loaded.is_some();
    let config = loaded.map(Ok).unwrap_or_else(default_config);
    let (run_as_user, sandbox_fs) = match &config {
        Ok(c) => (c.run_as_user.clone(), c.sandbox_fs),
        Err(_) => (config::DEFAULT_RUN_AS_USER.to_string(), FsMode::Auto),
    };
    let uid = nix::unistd::geteuid().as_raw();
    let run_as =
        (uid == 0).then(|| privilege::lookup_user(&run_as_user).map_err(|e| e.to_string()));
    let identity = Identity {
        uid,
        name: privilege::user_name(uid),
        run_as_user,
        run_as: run_as.clone().map(|r| {
            r.map_err(|e| {
                e.split_once(": ")
                    .map(|(_, m)| m.split(';').next().unwrap_or(m).to_string())
                    .unwrap_or(e)
            })
        }),
    };
    let probe_as = run_as.and_then(Result::ok);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let namespaces = Namespace::ALL
        .iter()
        .map(|ns| (*ns, probe_namespace(*ns, probe_as)))
        .collect();
    let dir_user = match (&identity.run_as, probe_as) {
        (None, _) => Some(DirUser {
            name: identity.name.clone(),
            uid,
            gid: nix::unistd::getegid().as_raw(),
            root: false,
        }),
        (Some(_), Some((uid, gid))) => Some(DirUser {
            name: identity.run_as_user.clone(),
            uid,
            gid,
            root: true,
        }),
        (Some(_), None) => None,
    };
    let dirs = match (&config, &dir_user) {
        (Ok(c), Some(user)) => vec![
            dirs::probe("STATE_DIR", &c.state_dir, Need::Traverse, user, None),
            dirs::probe(
                "STATE_DIR/spool",
                &c.state_dir.join("spool"),
                Need::ReadWrite,
                user,
                Some(&c.state_dir),
            ),
            dirs::probe("WORK_DIR", &c.work_dir, Need::ReadWrite, user, None),
        ],
        _ => Vec::new(),
    };
    let cgroup = probe_cgroup(probe_as);
    // Threads may start from here on (NVML, the runtimes of the heartbeat and self-test).
    let gpu = match &config {
        Ok(c) => gpu::probe(c.accel_mode, c.job_limits_max.vram_mb),
        Err(_) => gpu::probe(config::AccelMode::Auto, 0),
    };
    let coordinator = options.coordinator.then(|| match (&config, real) {
        (Ok(c), true) => {
            let report = gpu
                .probe
                .as_ref()
                .map(|p| p.report.clone())
                .unwrap_or_else(|| crate::gpu::GpuReport::not_probed("ACCEL_MODE=cpu"));
            let mode = gpu.mode();
            let health = (mode == Mode::Gpu)
                .then(|| crate::gpu::nvml::Nvml::get().ok())
                .flatten()
                .map(|n| {
                    let limits = crate::gpu::HealthLimits {
                        max_temp_c: c.gpu_max_temp_c,
                    };
                    crate::gpu::decide_health(&n.readings(), 0, limits)
                });
            let caps = crate::runtime::capabilities(c, mode, &report, health);
            coordinator::probe(c, &caps, options.coordinator_timeout)
        }
        _ => CoordinatorFacts::Skipped(
            "the config is missing or invalid (see the config line)".into(),
        ),
    });
    let user_ok = identity.run_as.as_ref().is_none_or(Result::is_ok);
    let self_test_of = |kind| match &config {
        Ok(c) if user_ok => self_test::probe(
            c,
            kind,
            options.self_test_timeout,
            options.self_test_job_timeout,
        ),
        Ok(_) => SelfTest::Skipped("the run-as user does not exist".into()),
        Err(e) => SelfTest::Skipped(format!("no usable config: {e}")),
    };
    let self_test = options.self_test.then(|| self_test_of(Mode::Cpu));
    let gpu_self_test = options.self_test.then(|| {
        if config.is_ok() && gpu.mode() != Mode::Gpu {
            SelfTest::Skipped("no usable GPU here (see the gpu lines); jobs run on the CPU".into())
        } else {
            self_test_of(Mode::Gpu)
        }
    });
    Facts {
        seccomp_prctl: probe_seccomp_prctl(),
        seccomp_status: status_field(&status, "Seccomp"),
        landlock_abi: probe_landlock_abi(),
        sandbox_fs,
        cgroup,
        namespaces,
        identity,
        credentials: Credentials::current().map_err(|e| e.to_string()),
        config: config_facts,
        dirs,
        dir_user,
        coordinator,
        clock: clock::probe_kernel(),
        gpu,
        self_test,
        gpu_self_test,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(uid: u32, run_as: Option<Result<(u32, u32), String>>) -> Identity {
        Identity {
            uid,
            name: if uid == 0 {
                "root".into()
            } else {
                "alice".into()
            },
            run_as_user: "nobody".into(),
            run_as,
        }
    }

    fn well_formed(line: &str) -> bool {
        let Some((status, rest)) = line.split_once("  ") else {
            return false;
        };
        matches!(status.trim_end(), "ok" | "warn" | "FAIL" | "skip")
            && rest.trim_start().split_once(": ").is_some()
    }

    #[test]
    fn lines_render_status_check_finding_and_fix() {
        let l = Line::new(Status::Warn, "landlock", "missing").fix("boot with it");
        assert_eq!(l.to_string(), "warn  landlock: missing — fix: boot with it");
        assert_eq!(Line::new(Status::Ok, "x", "y").to_string(), "ok    x: y");
        assert_eq!(Line::new(Status::Fail, "x", "y").to_string(), "FAIL  x: y");
        assert!(any_failed(&[Line::new(Status::Fail, "x", "y")]));
        assert!(!any_failed(&[l]));
    }

    #[test]
    fn seccomp_and_landlock_verdicts() {
        assert_eq!(check_seccomp(&Ok(0), Some("0")).status, Status::Ok);
        assert_eq!(check_seccomp(&Err(libc::EINVAL), None).status, Status::Fail);
        assert_eq!(check_seccomp(&Ok(0), None).status, Status::Fail);
        let ok = check_landlock(&Ok(7), FsMode::Auto);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.finding.contains("ABI 7"), "{ok}");
        let missing = check_landlock(&Err(libc::EOPNOTSUPP), FsMode::Auto);
        assert_eq!(missing.status, Status::Warn);
        assert!(
            missing
                .finding
                .contains("the mount-namespace view will be used"),
            "{missing}"
        );
        assert!(
            missing.fix.as_deref().unwrap().contains("lsm="),
            "{missing}"
        );
        assert_eq!(
            check_landlock(&Err(libc::ENOSYS), FsMode::Landlock).status,
            Status::Fail
        );
        assert_eq!(
            check_landlock(&Err(libc::ENOSYS), FsMode::Mount).status,
            Status::Ok
        );
    }

    #[test]
    fn namespaces_fail_unless_only_an_unneeded_mount_namespace_is_missing() {
        let results = [
            (Namespace::User, Ok(())),
            (Namespace::Net, Err(libc::EPERM)),
            (Namespace::Mount, Err(libc::EPERM)),
        ];
        let lines = check_namespaces(&results, "nobody", false);
        let statuses: Vec<Status> = lines.iter().map(|l| l.status).collect();
        assert_eq!(statuses, [Status::Ok, Status::Fail, Status::Warn]);
        assert!(lines[1].to_string().starts_with(
            "FAIL  net namespace: nobody cannot create one: unshare: Operation not permitted (EPERM)"
        ), "{}", lines[1]);
        assert_eq!(
            check_namespaces(&results, "nobody", true)[2].status,
            Status::Fail
        );
    }

    #[test]
    fn cgroup_verdicts_for_v1_hybrid_v2_and_none() {
        let v1 = CgroupFacts {
            v1: V1_CONTROLLERS
                .iter()
                .map(|c| (c.to_string(), PathBuf::from(format!("/sys/fs/cgroup/{c}"))))
                .collect(),
            v2_mount: Some("/sys/fs/cgroup/unified".into()),
            swap_accounting: true,
            ..CgroupFacts::default()
        };
        let lines = check_cgroup(&v1, &identity(0, Some(Ok((65534, 65534)))));
        assert_eq!(
            lines[0].to_string(),
            "ok    cgroup: v1 (mounted: memory, pids, cpu, cpuacct, freezer); cgroup2 at /sys/fs/cgroup/unified (no controllers) is not used for limits (hybrid)"
        );
        assert_eq!(lines[1].status, Status::Ok);
        assert_eq!(lines[2].status, Status::Ok);
        let as_user = check_cgroup(&v1, &identity(1000, None));
        assert_eq!(as_user[1].status, Status::Warn);

        let v2 = CgroupFacts {
            v2_mount: Some("/sys/fs/cgroup".into()),
            v2_controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
            v2_own: Some("/system.slice/aitbc-miner.service".into()),
            v2_own_writable: true,
            swap_total_kb: 1 << 20,
            ..CgroupFacts::default()
        };
        let lines = check_cgroup(&v2, &identity(1000, None));
        assert_eq!(
            lines[0].to_string(),
            "ok    cgroup: v2 at /sys/fs/cgroup (controllers: cpu memory pids)"
        );
        assert_eq!(
            lines[1].to_string(),
            "ok    cgroup delegation: /system.slice/aitbc-miner.service is delegated: writable by alice"
        );
        assert_eq!(lines[2].status, Status::Warn, "swap without accounting");
        let none = check_cgroup(&CgroupFacts::default(), &identity(1000, None));
        assert_eq!(none[0].status, Status::Warn);
        assert_eq!(none[1].status, Status::Ok, "no swap at all");
    }

    #[test]
    fn identity_and_privileges() {
        let missing = check_identity(&identity(
            0,
            Some(Err("no such user on this system".into())),
        ));
        assert_eq!(missing.status, Status::Fail);
        assert!(
            missing
                .to_string()
                .contains("useradd --system --no-create-home nobody"),
            "{missing}"
        );
        assert_eq!(
            check_identity(&identity(0, Some(Ok((0, 0))))).status,
            Status::Fail
        );
        let drop = check_identity(&identity(0, Some(Ok((65534, 65534)))));
        assert_eq!(
            drop.to_string(),
            "ok    user: runs as root (uid 0); after set-up drops to nobody (uid 65534, gid 65534), and so do its workers"
        );
        assert_eq!(check_identity(&identity(1000, None)).status, Status::Ok);
        let creds = Credentials {
            uids: (1000, 1000, 1000),
            gids: (1000, 1000, 1000),
            groups: vec![],
            effective: 1 << 21,
            permitted: 1 << 21,
            inheritable: 0,
            ambient: 0,
            bounding: u64::MAX,
            no_new_privs: false,
            dumpable: true,
        };
        let lines = check_privileges(&Ok(creds.clone()), false);
        assert_eq!(lines[1].status, Status::Warn);
        assert_eq!(check_privileges(&Ok(creds), true)[1].status, Status::Ok);
    }

    fn config(mode: u32, owner: u32) -> ConfigFacts {
        ConfigFacts {
            path: "/etc/aitbc/miner.conf".into(),
            exists: true,
            mode: Some(0o100000 | mode),
            owner: Some(owner),
            loaded: Ok(()),
            warnings: vec![],
            holds_api_key: true,
        }
    }

    #[test]
    fn config_lines() {
        let me = identity(0, Some(Ok((998, 998))));
        let mut c = config(0o644, 998);
        let lines = check_config(&c, &me);
        assert_eq!(lines[0].status, Status::Ok);
        assert_eq!(
            lines[1].to_string(),
            "warn  config mode: /etc/aitbc/miner.conf is mode 0644: group or others can read it, and it holds API_KEY — fix: chmod 600 /etc/aitbc/miner.conf"
        );
        assert_eq!(lines[2].status, Status::Ok, "{}", lines[2]);
        c.mode = Some(0o100600);
        c.loaded = Err("miner.conf:5: X=\"y\": bad".into());
        let lines = check_config(&c, &me);
        assert_eq!(lines[0].status, Status::Fail);
        assert_eq!(lines[1].status, Status::Ok);
        for l in &lines {
            assert!(well_formed(&l.to_string()), "{l}");
        }
        // Writable by others: anyone could redirect the rewards.
        let lines = check_config(&config(0o662, 998), &me);
        assert_eq!(lines[1].status, Status::Fail, "{}", lines[1]);
        assert!(lines[1].finding.contains("WALLET_ADDR"), "{}", lines[1]);
        // No file, and the environment does not complete the settings.
        let mut absent = config(0, 0);
        (absent.exists, absent.mode, absent.owner) = (false, None, None);
        absent.loaded = Err("required key COORD_URL is not set".into());
        let lines = check_config(&absent, &me);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].status, Status::Fail);
        assert!(
            lines[0]
                .fix
                .as_deref()
                .unwrap()
                .starts_with("aitbc-miner example-config > /etc/aitbc/miner.conf"),
            "{}",
            lines[0]
        );
        absent.loaded = Ok(());
        assert_eq!(check_config(&absent, &me)[0].status, Status::Ok);
    }

    #[test]
    fn config_warnings_each_carry_a_fix() {
        let mut c = config(0o600, 998);
        c.warnings = vec![
            config::Warning {
                location: "miner.conf:3".into(),
                kind: config::WarningKind::UnknownKey {
                    key: "COORD_ULR".into(),
                    suggestion: Some("COORD_URL"),
                },
            },
            config::Warning {
                location: "miner.conf".into(),
                kind: config::WarningKind::InsecurePermissions {
                    path: "/etc/aitbc/miner.conf".into(),
                    mode: 0o644,
                },
            },
        ];
        let lines = check_config(&c, &identity(0, Some(Ok((998, 998)))));
        let warns: Vec<&Line> = lines.iter().filter(|l| l.status == Status::Warn).collect();
        assert_eq!(warns.len(), 1, "{lines:?}");
        assert!(warns[0].finding.contains("COORD_ULR"), "{}", warns[0]);
        assert!(warns[0].fix.is_some());
    }

    #[test]
    fn config_owner_is_root_or_the_run_as_user() {
        let root = identity(0, Some(Ok((998, 998))));
        let owner = |mode, owner, id: &Identity| {
            check_config(&config(mode, owner), id)
                .into_iter()
                .find(|l| l.check == "config owner")
                .unwrap()
        };
        assert_eq!(owner(0o600, 998, &root).status, Status::Ok);
        // Root's 0600 file: a root `run` reads it, the unit (User=aitbc-miner) cannot.
        let root_only = owner(0o600, 0, &root);
        assert_eq!(root_only.status, Status::Warn, "{root_only}");
        assert_eq!(
            root_only.fix.as_deref(),
            Some("chown nobody: /etc/aitbc/miner.conf")
        );
        assert_eq!(owner(0o644, 0, &root).status, Status::Ok);
        let foreign = owner(0o600, 1234, &root);
        assert_eq!(foreign.status, Status::Warn);
        assert!(foreign.finding.contains("uid 1234"), "{foreign}");
        // Not root: the miner runs as this user.
        let alice = identity(1000, None);
        assert_eq!(owner(0o600, 1000, &alice).status, Status::Ok);
        assert_eq!(owner(0o644, 0, &alice).status, Status::Ok);
        assert_eq!(owner(0o600, 1234, &alice).status, Status::Warn);
        let missing = identity(0, Some(Err("no such user".into())));
        assert_eq!(owner(0o600, 0, &missing).status, Status::Skip);
    }

    #[test]
    fn mountinfo_and_cgroup_file_parsing() {
        let text = "\
35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
40 35 0:35 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
41 35 0:36 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
42 35 0:37 / /sys/fs/cgroup/net_cls rw - cgroup cgroup rw,net_cls\n";
        let (v1, v2) = parse_mountinfo(text);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let names: Vec<&str> = v1.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["memory", "cpu", "cpuacct"]);
        assert_eq!(v1[1].1, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(parse_mountinfo("garbage\n\n - \n"), (vec![], None));
        assert_eq!(
            parse_own_v2("12:memory:/x\n0::/user.slice/a.scope\n").as_deref(),
            Some("/user.slice/a.scope")
        );
        assert_eq!(
            status_field("Name:\tx\nSeccomp:\t2\n", "Seccomp").as_deref(),
            Some("2")
        );
        assert_eq!(status_field("Seccomp_filters:\t1\n", "Seccomp"), None);
    }

    #[test]
    fn probes_on_this_host_never_panic_and_every_non_ok_line_has_a_fix() {
        let facts = gather(&Options::default());
        for line in checks(&facts) {
            assert!(well_formed(&line.to_string()), "{line}");
            assert!(
                line.status == Status::Ok || line.fix.is_some(),
                "no fix: {line}"
            );
        }
        assert!(probe_namespace(Namespace::User, None).is_ok() || !privilege::is_root());
    }

    /// Every line the pure checks can produce for a host with nothing right, and for one
    /// with everything missing, says how to fix what is not ok.
    #[test]
    fn every_non_ok_line_of_a_bad_host_has_a_fix() {
        let mut facts = gather(&Options::default());
        facts.seccomp_prctl = Err(libc::EINVAL);
        facts.seccomp_status = None;
        facts.landlock_abi = Err(libc::EOPNOTSUPP);
        facts.sandbox_fs = FsMode::Landlock;
        facts.cgroup = CgroupFacts {
            swap_total_kb: 1 << 20,
            ..CgroupFacts::default()
        };
        facts.namespaces = Namespace::ALL
            .iter()
            .map(|ns| (*ns, Err(libc::EPERM)))
            .collect();
        facts.identity = identity(1000, None);
        facts.credentials = Err("no /proc".into());
        facts.clock = Err(libc::EPERM);
        facts.coordinator = Some(CoordinatorFacts::Skipped("no config".into()));
        facts.self_test = Some(SelfTest::NoStart("x".into()));
        facts.gpu_self_test = Some(SelfTest::Skipped("no GPU".into()));
        let lines = checks(&facts);
        assert!(any_failed(&lines));
        for line in &lines {
            assert!(
                line.status == Status::Ok || line.fix.is_some(),
                "no fix: {line}"
            );
        }
        for check in [
            "coordinator",
            "clock offset",
            "clock sync",
            "gpu",
            "self-test",
            "self-test gpu",
        ] {
            assert!(
                lines.iter().any(|l| l.check == check),
                "no {check} line: {lines:?}"
            );
        }
    }
}

//! `aitbc-miner doctor`: what confinement this host gives the miner, one line per check, with a
//! fix where one applies.
//!
//! Two halves, kept apart so the decisions are tested without touching the host:
//! - small **probes** ([`gather`]) read facts: `prctl`, `/proc/self/status`, the Landlock ABI
//!   (`landlock_create_ruleset` with `LANDLOCK_CREATE_RULESET_VERSION`), the cgroup mounts in
//!   `/proc/self/mountinfo` and `/proc/self/cgroup`, swap accounting, each namespace created in
//!   a forked child running as the run-as user, this process's credentials, the config file,
//!   and a live self-test (one real confined worker started through
//!   [`WorkerProcess::start`](crate::worker_proc::WorkerProcess::start), its `Hello.sandbox`
//!   line, then retired);
//! - pure **checks** ([`checks`]) turn [`Facts`] into [`Line`]s:
//!   `ok|warn|FAIL  <check>: <finding>[ — fix: <what to do>]`.
//!
//! A report with any `FAIL` line means the miner would not run (or would run unconfined) here;
//! `warn` means it runs with a weaker fallback.
//!
//! This module must never panic on what it finds (every probe error becomes a line), never
//! change the host (the namespace probes live and die in a child; the self-test's worker is
//! retired and reaped), and never print the API key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{self, Config, SandboxFs};
use crate::privilege::{self, Credentials};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Present and as it should be.
    Ok,
    /// The miner runs, with a weaker fallback or a risk the operator should know about.
    Warn,
    /// The miner would not start, or would run jobs without a confinement it promises.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `FAIL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
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
    /// Its permission bits, when it could be opened.
    pub mode: Option<u32>,
    /// `Err(message)` when it could not be read or is not valid.
    pub loaded: Result<(), String>,
    /// Its warnings (unknown keys and the like), as text.
    pub warnings: Vec<String>,
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
    pub sandbox_fs: SandboxFs,
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
    /// The self-test, when it was asked for.
    pub self_test: Option<SelfTest>,
}

fn errno_text(errno: i32) -> String {
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
pub fn check_landlock(abi: &Result<i32, i32>, fs: SandboxFs) -> Line {
    let fix =
        "boot with Landlock among the LSMs, e.g. lsm=landlock,lockdown,yama,integrity,apparmor \
               on the kernel command line (kernel 5.13 or newer)";
    match (abi, fs) {
        (Ok(v), SandboxFs::Mount) => Line::new(
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
        (Err(errno), SandboxFs::Landlock) => Line::new(
            Status::Fail,
            "landlock",
            format!(
                "not available ({}) and SANDBOX_FS=landlock: every worker would refuse to start",
                errno_text(*errno)
            ),
        )
        .fix(format!("{fix}, or set SANDBOX_FS=auto")),
        (Err(errno), SandboxFs::Mount) => Line::new(
            Status::Ok,
            "landlock",
            format!(
                "not available ({}); SANDBOX_FS=mount: workers use the read-only mount-namespace view",
                errno_text(*errno)
            ),
        ),
        (Err(errno), SandboxFs::Auto) => Line::new(
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
        lines.push(if missing.is_empty() {
            Line::new(Status::Ok, "cgroup", finding)
        } else {
            Line::new(
                Status::Warn,
                "cgroup",
                format!("{finding}; missing {}: those limits fall back to rlimits", missing.join(", ")),
            )
            .fix("enable the controllers in the parent's cgroup.subtree_control (systemd does with Delegate=yes)")
        });
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
        lines.push(if missing.is_empty() {
            Line::new(Status::Ok, "cgroup", finding)
        } else {
            Line::new(
                Status::Warn,
                "cgroup",
                format!("{finding}; missing {}: those limits fall back to rlimits", missing.join(", ")),
            )
            .fix("mount the missing hierarchies, or boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2")
        });
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
        Some(Ok((uid, gid))) if *uid == 0 => Line::new(
            Status::Fail,
            "user",
            format!("runs as {me} and RUN_AS_USER={} is root too: jobs would run as root", id.run_as_user),
        )
        .fix("set RUN_AS_USER to an unprivileged user, e.g. aitbc-miner; gid {gid}"),
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
            )]
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

/// The config lines.
pub fn check_config(c: &ConfigFacts) -> Vec<Line> {
    let shown = c.path.display().to_string();
    let mut lines = vec![match &c.loaded {
        Ok(()) => Line::new(Status::Ok, "config", format!("{shown} is readable and valid")),
        Err(message) => Line::new(Status::Fail, "config", message.clone())
            .fix("correct the value named above; `aitbc-miner example-config` prints every key with its default"),
    }];
    for w in &c.warnings {
        // The permission warning has its own line below.
        if !w.contains("lets group or others access") {
            lines.push(Line::new(Status::Warn, "config", w.clone()));
        }
    }
    if let Some(mode) = c.mode {
        let mode = mode & 0o7777;
        lines.push(if mode & 0o077 != 0 {
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
    lines
}

/// The self-test line.
pub fn check_self_test(result: &SelfTest) -> Line {
    match result {
        SelfTest::Skipped(why) => Line::new(Status::Warn, "self-test", format!("skipped: {why}"))
            .fix("fix the FAIL lines above, then run doctor again"),
        SelfTest::Started(sandbox) => Line::new(
            Status::Ok,
            "self-test",
            format!("a confined worker started and reported: {sandbox}"),
        ),
        SelfTest::Failed(message) => Line::new(
            Status::Fail,
            "self-test",
            format!("no confined worker could start: {message}"),
        )
        .fix("see the lines above; run with LOG_LEVEL=debug for the worker's own message"),
    }
}

/// Every check over `facts`, in report order.
pub fn checks(facts: &Facts) -> Vec<Line> {
    let mut lines = Vec::new();
    if let Some(c) = &facts.config {
        lines.extend(check_config(c));
    }
    lines.push(check_identity(&facts.identity));
    lines.extend(check_privileges(
        &facts.credentials,
        facts.identity.uid == 0,
    ));
    lines.push(check_seccomp(
        &facts.seccomp_prctl,
        facts.seccomp_status.as_deref(),
    ));
    lines.push(check_landlock(&facts.landlock_abi, facts.sandbox_fs));
    let needed_mount = facts.sandbox_fs == SandboxFs::Mount
        || (facts.sandbox_fs == SandboxFs::Auto && facts.landlock_abi.is_err());
    let as_user = match &facts.identity.run_as {
        Some(Ok(_)) => facts.identity.run_as_user.clone(),
        _ => facts.identity.name.clone(),
    };
    lines.extend(check_namespaces(&facts.namespaces, &as_user, needed_mount));
    lines.extend(check_cgroup(&facts.cgroup, &facts.identity));
    if let Some(result) = &facts.self_test {
        lines.push(check_self_test(result));
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
    // SAFETY: the child calls only async-signal-safe system calls (setgroups, setresgid,
    // setresuid, unshare, _exit) and never returns into Rust code; the parent only waits.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)),
        0 => unsafe {
            let errno = || *libc::__errno_location();
            if let Some((uid, gid)) = run_as {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    libc::_exit(200);
                }
            }
            if libc::unshare(ns.flags()) != 0 {
                libc::_exit(errno().clamp(1, 199));
            }
            libc::_exit(0)
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
                200 => Err(libc::EPERM),
                e => Err(e),
            }
        }
    }
}

/// Reads the config file for the report: validity, warnings and mode.
pub fn probe_config(path: &Path) -> (ConfigFacts, Option<Config>) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode());
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
    let (loaded, warnings, config) = match config::load(Some(path)) {
        Ok((c, w)) => (Ok(()), w.iter().map(ToString::to_string).collect(), Some(c)),
        Err(e) => (Err(e.to_string()), Vec::new(), None),
    };
    (
        ConfigFacts {
            path: path.to_path_buf(),
            mode,
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

/// Starts one real confined worker the way the supervisor does, reads its Hello and retires
/// it. Blocks; builds its own single-threaded runtime.
pub fn probe_self_test(config: &Config, timeout: Duration) -> SelfTest {
    match start_one_worker(config, timeout) {
        Ok(report) => SelfTest::Started(report),
        Err(message) => SelfTest::Failed(message),
    }
}

fn start_one_worker(config: &Config, timeout: Duration) -> Result<String, String> {
    use crate::worker_proc::{WorkerCommand, WorkerProcess};
    let mut cmd = WorkerCommand::for_config(config).map_err(|e| e.to_string())?;
    // Its job directory goes to a fresh temporary directory, not the operator's WORK_DIR;
    // a root doctor's worker runs as RUN_AS_USER, which must pass through it (0711).
    let scratch = tempfile_dir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    cmd.work_dir = scratch.0.clone();
    // The worker gets its own cgroup as under `run`; the subtree (`doctor.<pid>`) is removed
    // when the test ends.
    cmd.subtree = crate::cgroup::workers_subtree("doctor");
    let where_ = cmd.subtree.as_ref().map(|t| t.describe());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        let worker = WorkerProcess::start(&cmd, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let hello = worker.hello().clone();
        match worker.retire().await {
            Some(crate::policy::ExitStatus::Exited(0)) => {}
            other => {
                return Err(format!(
                    "the worker said Hello ({}) but then ended with {other:?}",
                    hello.sandbox
                ))
            }
        }
        Ok(format!(
            "{} (pid {}, {:?} worker, {})",
            hello.sandbox,
            hello.pid,
            hello.kind,
            where_.as_deref().unwrap_or("no per-worker cgroup")
        ))
    })
}

/// A temporary directory removed on drop (the library has no `tempfile` dependency).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates `/tmp/aitbc-doctor-<pid>-<random>` with mode 0711.
fn tempfile_dir() -> std::io::Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    let path = std::env::temp_dir().join(format!(
        "aitbc-doctor-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::DirBuilder::new().mode(0o711).create(&path)?;
    // DirBuilder applies the umask; set the mode exactly.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
    Ok(TempDir(path))
}

/// How the self-test went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfTest {
    /// A worker started; what it reported (`Hello.sandbox`) and where it ran.
    Started(String),
    /// No worker could start: why.
    Failed(String),
    /// Not attempted, because an earlier check already failed: why.
    Skipped(String),
}

/// What [`gather`] needs to be told.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The config file to check (`--config`), if any.
    pub config: Option<PathBuf>,
    /// Whether to start a real worker.
    pub self_test: bool,
    /// How long the self-test's worker may take to say Hello.
    pub self_test_timeout: Duration,
}

/// Runs every probe. Never panics; whatever fails becomes part of the facts.
pub fn gather(options: &Options) -> Facts {
    let (config_facts, loaded) = match &options.config {
        Some(path) => {
            let (facts, config) = probe_config(path);
            (Some(facts), config)
        }
        None => (None, None),
    };
    let config = loaded.map(Ok).unwrap_or_else(default_config);
    let (run_as_user, sandbox_fs) = match &config {
        Ok(c) => (c.run_as_user.clone(), c.sandbox_fs),
        Err(_) => (config::DEFAULT_RUN_AS_USER.to_string(), SandboxFs::Auto),
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
    let self_test = options.self_test.then(|| match &config {
        Ok(c) if identity.run_as.as_ref().is_none_or(Result::is_ok) => {
            probe_self_test(c, options.self_test_timeout)
        }
        Ok(_) => SelfTest::Skipped("the run-as user does not exist".into()),
        Err(e) => SelfTest::Skipped(format!("no usable config: {e}")),
    });
    Facts {
        seccomp_prctl: probe_seccomp_prctl(),
        seccomp_status: status_field(&status, "Seccomp"),
        landlock_abi: probe_landlock_abi(),
        sandbox_fs,
        cgroup: probe_cgroup(probe_as),
        namespaces: Namespace::ALL
            .iter()
            .map(|ns| (*ns, probe_namespace(*ns, probe_as)))
            .collect(),
        identity,
        credentials: Credentials::current().map_err(|e| e.to_string()),
        config: config_facts,
        self_test,
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
        matches!(status.trim_end(), "ok" | "warn" | "FAIL")
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
        let ok = check_landlock(&Ok(7), SandboxFs::Auto);
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.finding.contains("ABI 7"), "{ok}");
        let missing = check_landlock(&Err(libc::EOPNOTSUPP), SandboxFs::Auto);
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
            check_landlock(&Err(libc::ENOSYS), SandboxFs::Landlock).status,
            Status::Fail
        );
        assert_eq!(
            check_landlock(&Err(libc::ENOSYS), SandboxFs::Mount).status,
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

    #[test]
    fn config_lines() {
        let mut c = ConfigFacts {
            path: "/etc/aitbc/miner.conf".into(),
            mode: Some(0o100644),
            loaded: Ok(()),
            warnings: vec![],
            holds_api_key: true,
        };
        let lines = check_config(&c);
        assert_eq!(lines[0].status, Status::Ok);
        assert_eq!(
            lines[1].to_string(),
            "warn  config mode: /etc/aitbc/miner.conf is mode 0644: group or others can read it, and it holds API_KEY — fix: chmod 600 /etc/aitbc/miner.conf"
        );
        c.mode = Some(0o100600);
        c.loaded = Err("miner.conf:5: X=\"y\": bad".into());
        let lines = check_config(&c);
        assert_eq!(lines[0].status, Status::Fail);
        assert_eq!(lines[1].status, Status::Ok);
        for l in &lines {
            assert!(well_formed(&l.to_string()), "{l}");
        }
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
    fn probes_on_this_host_never_panic() {
        let facts = gather(&Options::default());
        for line in checks(&facts) {
            assert!(well_formed(&line.to_string()), "{line}");
        }
        assert!(probe_namespace(Namespace::User, None).is_ok() || !privilege::is_root());
    }
}

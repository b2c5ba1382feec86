//! Deployment, checked with the real tools and the real binary: the systemd unit
//! (`systemd-analyze verify` and `security`), the system calls its filter lets through against
//! what workers need (the aitbc-seccomp allow-lists, the set-up steps, and a traced real run),
//! `systemd/install.sh` into a scratch root, the Debian package built by cargo-deb, and the
//! logrotate file.
//!
//! There is no systemd PID 1 here, so nothing is started under the unit: these tests are what
//! makes it trustworthy without one. They must never touch the host's users, /etc or systemd
//! (everything is installed into a temporary DESTDIR). A test whose tool is missing writes
//! `SKIP: <tool> not installed` to stderr and passes; `.ci/run` installs every such tool.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aitbc_seccomp::{rules, syscall_name, Action, Profile};
use sha2::{Digest, Sha256};

const MINER: &str = env!("CARGO_BIN_EXE_aitbc-miner");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit_path() -> PathBuf {
    repo().join("systemd/aitbc-miner.service")
}

fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
}

/// The path of `tool` on PATH (or in cargo's bin directory, for cargo-deb).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
    })
}

/// All of `tools` found, or a SKIP line naming the first one missing.
fn tools(names: &[&str]) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    for name in names {
        match find_tool(name) {
            Some(p) => out.push(p),
            None => {
                skip(&format!("{name} not installed"));
                return None;
            }
        }
    }
    Some(out)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// --- The unit ----------------------------------------------------------------------------------

/// The overall exposure `systemd-analyze security` printed, e.g. 2.0.
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{output}"));
    let after = line.rsplit_once(": ").expect("`...: N.N LEVEL`").1;
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// The guide's unit (miner-guide.md section 4), as the self-check's bad example.
const GUIDE_UNIT: &str = "[Unit]
Description=AITBC Compute Miner
After=network-online.target
Wants=network-online.target
[Service]
Type=simple
ExecStart=/root/scripts/aitbc-miner/miner.sh
Restart=always
RestartSec=3
EnvironmentFile=/etc/aitbc/miner.conf
StandardOutput=append:/var/log/aitbc-miner.log
StandardError=append:/var/log/aitbc-miner.log
[Install]
WantedBy=multi-user.target
";

#[test]
fn the_units_exposure_is_at_most_2_0_and_the_bound_can_fail() {
    let Some(t) = tools(&["systemd-analyze"]) else {
        return;
    };
    let security = |unit: &Path| {
        run(Command::new(&t[0])
            .args(["security", "--offline=true", "--threshold=20"])
            .arg(unit))
    };
    let out = security(&unit_path());
    let report = text(&out);
    eprintln!("{report}");
    let score = exposure(&report);
    assert!(
        out.status.success(),
        "systemd-analyze security --threshold=20 failed ({:?}): exposure {score}",
        out.status
    );
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");

    // The bound can fail: the guide's unit is far above it.
    let dir = tempfile::tempdir().unwrap();
    let guide = dir.path().join("aitbc-miner.service");
    std::fs::write(&guide, GUIDE_UNIT).unwrap();
    let out = security(&guide);
    let bad = exposure(&text(&out));
    assert!(
        !out.status.success(),
        "the guide's unit passed the threshold (exposure {bad})"
    );
    assert!(bad > 9.0, "the guide's unit scored {bad}, expected 9.6");
}

/// What systemd itself makes of the unit: the lines of its debug dump (`unit_dump`), which
/// `systemd-analyze security --offline` prints when debug logging is on. The SystemCallFilter
/// line is systemd's own resolution of every SystemCallFilter= line, groups, `~` removals and
/// re-additions in order, so nothing here re-implements its semantics.
fn unit_dump(analyze: &Path, unit: &Path) -> BTreeMap<String, String> {
    let out = run(Command::new(analyze)
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .args(["security", "--offline=true"])
        .arg(unit));
    let mut fields = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with('\t') {
            continue;
        }
        if let Some((k, v)) = line.trim().split_once(": ") {
            fields.insert(k.to_string(), v.trim().to_string());
        }
    }
    assert!(
        fields.contains_key("SystemCallFilter"),
        "no SystemCallFilter in systemd's dump of {}:\n{}",
        unit.display(),
        text(&out)
    );
    fields
}

fn allowed_syscalls(analyze: &Path) -> BTreeSet<String> {
    let dump = unit_dump(analyze, &unit_path());
    assert_eq!(
        dump.get("SystemCallErrorNumber").map(String::as_str),
        Some("EPERM"),
        "a forbidden call fails with EPERM rather than killing the process"
    );
    dump["SystemCallFilter"]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// What a worker calls before its own seccomp filter is on (worker/src/confine/*), and what
/// the supervisor calls between fork and exec (supervisor/src/worker_proc.rs). Read from the
/// code and from `strace -f` of real workers (both filesystem modes); the traced test below
/// checks a real run as well, but only on this host's path (no GPU, one of Landlock or mount).
const SETUP: &[(&str, &str)] = &[
    (
        "clone",
        "the supervisor forks the worker (glibc, after clone3's ENOSYS)",
    ),
    ("clone3", "the supervisor forks the worker (std's Command)"),
    ("setpgid", "the worker gets its own process group"),
    ("dup2", "the worker's socket becomes fd 3"),
    ("close_range", "every descriptor above 3 is closed on exec"),
    (
        "prctl",
        "PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_CAPBSET_READ/DROP, PR_CAP_AMBIENT",
    ),
    ("execve", "the supervisor execs `aitbc-miner worker`"),
    (
        "unshare",
        "step 1: CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS",
    ),
    (
        "mount",
        "step 1: the job directory's tmpfs; the mount view's binds and remounts",
    ),
    ("umount2", "step 1, mount view: detach the old root"),
    ("pivot_root", "step 1, mount view: the new read-only root"),
    ("chdir", "step 1, mount view; step 5: the job directory"),
    (
        "symlink",
        "step 1, mount view: /lib64 and friends on merged-/usr hosts",
    ),
    (
        "symlinkat",
        "step 1, mount view (glibc may use the *at form)",
    ),
    ("mkdir", "step 1, mount view: mount points"),
    ("mkdirat", "step 1, mount view: mount points (*at form)"),
    ("statfs", "step 1, mount view: locked mount flags (statvfs)"),
    (
        "prlimit64",
        "step 2: CORE, NOFILE, FSIZE, NPROC (glibc's setrlimit)",
    ),
    (
        "rt_sigaction",
        "step 2: SIGXFSZ ignored; step 7: the SIGSYS reporter",
    ),
    ("capget", "step 4: read the capability sets"),
    ("capset", "step 4: empty them"),
    ("landlock_create_ruleset", "step 5"),
    ("landlock_add_rule", "step 5"),
    ("landlock_restrict_self", "step 5"),
    ("seccomp", "step 7: the worker's own filter, TSYNC"),
];

/// Calls a worker's allow-list names that the unit answers with EPERM on purpose, each with
/// why that is acceptable. Keep it short; the test fails when an entry is no longer needed.
const EPERM_BY_THE_UNIT: &[(&str, Profile, &str)] = &[(
    "sched_setaffinity",
    Profile::Gpu,
    "GPU profile: libcuda 'may pin its own threads' (unverified on a GPU); the unit drops \
     @resources to reach exposure 2.0, so the call fails with EPERM, as it does in a \
     restricted cpuset; pinning is an optimisation, not a requirement",
)];

/// The namespaces a worker unshares (worker/src/confine/namespaces.rs), as systemd names them.
const WORKER_NAMESPACES: [&str; 3] = ["mnt", "net", "user"];

#[test]
fn every_system_call_a_worker_needs_passes_the_units_filter() {
    let Some(t) = tools(&["systemd-analyze"]) else {
        return;
    };
    let allowed = allowed_syscalls(&t[0]);
    let mut missing = Vec::new();
    for profile in [Profile::Cpu, Profile::Gpu] {
        for rule in rules(profile, aitbc_worker::workload::SERVED) {
            let name = syscall_name(rule.syscall)
                .unwrap_or_else(|| panic!("unnamed system call {}", rule.syscall));
            // A refusal with EPERM reads the same whether the worker's filter or the unit's
            // answers; any other answer (clone3's ENOSYS) must come from the worker's filter,
            // so the unit must let the call through to it.
            let needed = match rule.action {
                Action::Allow => true,
                Action::Refuse(errno) => errno != nix::libc::EPERM,
            };
            let excused = EPERM_BY_THE_UNIT
                .iter()
                .any(|(n, p, _)| *n == name && *p == profile);
            if needed && !excused && !allowed.contains(name) {
                missing.push(format!("{name} ({profile:?} rule: {})", rule.reason));
            }
        }
    }
    for (name, why) in SETUP {
        if !allowed.contains(*name) {
            missing.push(format!("{name} (set-up: {why})"));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the unit's SystemCallFilter forbids what workers need:\n  {}",
        missing.join("\n  ")
    );
    for (name, profile, why) in EPERM_BY_THE_UNIT {
        let in_policy = rules(*profile, aitbc_worker::workload::SERVED)
            .iter()
            .any(|r| syscall_name(r.syscall) == Some(name) && r.action == Action::Allow);
        assert!(
            in_policy && !allowed.contains(*name),
            "EPERM_BY_THE_UNIT lists {name} ({why}) but it is no longer needed: remove it"
        );
    }

    let dump = unit_dump(&t[0], &unit_path());
    let namespaces: BTreeSet<&str> = dump["RestrictNamespaces"].split_whitespace().collect();
    let expected: BTreeSet<&str> = WORKER_NAMESPACES.into_iter().collect();
    assert_eq!(
        namespaces, expected,
        "RestrictNamespaces= must be exactly what workers unshare"
    );
}

/// One system call of a strace line: (pid, name, the rest of the line).
fn strace_call(line: &str) -> Option<(&str, &str, &str)> {
    let (pid, rest) = line.split_once(' ')?;
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("<... ").unwrap_or(rest);
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let (name, after) = rest.split_at(end);
    if name.is_empty() || !(after.starts_with('(') || after.starts_with(" resumed>")) {
        return None;
    }
    Some((pid, name, after))
}

/// Runs `aitbc-miner dev` (a Coordinator, the real supervisor `run` path and real confined
/// workers, in one process tree) under `strace -f`, as an unprivileged user as the unit would
/// (the binary copied where that user can run it), and returns the trace.
fn traced_dev_run(strace: &Path, sandbox_fs: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("aitbc-miner");
    std::fs::copy(MINER, &bin).unwrap();
    let trace = dir.path().join("trace");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(strace);
        c
    } else {
        Command::new(strace)
    };
    cmd.args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(&bin)
        .args([
            "dev",
            "--jobs",
            "2",
            "--slots",
            "1",
            "--timeout-secs",
            "120",
        ])
        .args(["--params", r#"{"n":64,"iters":2}"#])
        .current_dir("/")
        .env("TMPDIR", dir.path())
        .env("SANDBOX_FS", sandbox_fs)
        .env("ACCEL_MODE", "cpu");
    if is_root() {
        // The trace file is written by strace, running as the unprivileged user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "aitbc-miner dev (SANDBOX_FS={sandbox_fs}) under strace failed:\n{}",
        text(&out)
    );
    std::fs::read_to_string(&trace).expect("the strace output")
}

#[test]
fn a_traced_miner_and_its_workers_stay_inside_the_units_rules() {
    let Some(t) = tools(&["systemd-analyze", "strace", "setpriv"]) else {
        return;
    };
    let allowed = allowed_syscalls(&t[0]);
    for fs in ["mount", "auto"] {
        let trace = traced_dev_run(&t[1], fs);
        let mut forbidden = BTreeSet::new();
        let mut problems = Vec::new();
        let mut calls = 0;
        for line in trace.lines() {
            if line.contains("+++ killed by") {
                problems.push(format!("a process was killed: {line}"));
            }
            let Some((_, name, args)) = strace_call(line) else {
                continue;
            };
            calls += 1;
            if !allowed.contains(name) {
                forbidden.insert(name.to_string());
            }
            // MemoryDenyWriteExecute=yes: no W+X mapping, no mprotect to executable.
            let wx = match name {
                "mmap" => args.contains("PROT_WRITE") && args.contains("PROT_EXEC"),
                "mprotect" | "pkey_mprotect" => args.contains("PROT_EXEC"),
                _ => false,
            };
            if wx {
                problems.push(format!("MemoryDenyWriteExecute would refuse: {line}"));
            }
            // RestrictNamespaces=user net mnt.
            if matches!(name, "unshare" | "clone" | "clone3" | "setns") {
                for flag in [
                    "CLONE_NEWPID",
                    "CLONE_NEWIPC",
                    "CLONE_NEWUTS",
                    "CLONE_NEWCGROUP",
                ] {
                    if args.contains(flag) {
                        problems.push(format!("RestrictNamespaces would refuse: {line}"));
                    }
                }
            }
            // RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6.
            if matches!(name, "socket" | "socketpair") && args.starts_with("(AF_") {
                let family = args[1..].split([',', ')']).next().unwrap_or("");
                if !matches!(family, "AF_UNIX" | "AF_INET" | "AF_INET6") {
                    problems.push(format!("RestrictAddressFamilies would refuse: {line}"));
                }
            }
        }
        assert!(calls > 1000, "SANDBOX_FS={fs}: only {calls} calls traced");
        assert!(
            trace.contains("landlock_restrict_self") || trace.contains("pivot_root"),
            "SANDBOX_FS={fs}: the trace shows no worker confining itself"
        );
        if fs == "mount" {
            assert!(
                trace.contains("pivot_root("),
                "the mount view was not built"
            );
        }
        assert!(
            forbidden.is_empty(),
            "SANDBOX_FS={fs}: the unit's SystemCallFilter forbids calls the miner made: {forbidden:?}"
        );
        assert!(
            problems.is_empty(),
            "SANDBOX_FS={fs}:\n{}",
            problems.join("\n")
        );
    }
}

// --- install.sh --------------------------------------------------------------------------------

fn install_sh(destdir: &Path, args: &[&str]) -> Output {
    let out = run(Command::new("bash")
        .arg(repo().join("systemd/install.sh"))
        .args(args)
        .env("DESTDIR", destdir));
    eprintln!("install.sh {args:?}:\n{}", text(&out));
    out
}

fn install_ok(destdir: &Path, args: &[&str]) -> String {
    let out = install_sh(destdir, args);
    assert!(out.status.success(), "install.sh {args:?} failed");
    let all = text(&out);
    for line in all.lines() {
        assert!(line.starts_with("install.sh: "), "unprefixed line {line:?}");
    }
    all
}

/// Every path under `root`: (type and mode, uid, gid, sha256 or link target).
fn manifest(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.is_dir() {
                walk(root, &path, out);
                "dir".to_string()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else {
                let bytes = std::fs::read(&path).unwrap();
                format!("{:x}", Sha256::digest(&bytes))
            };
            let line = format!(
                "{:o} {}:{} {what}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            );
            out.insert(rel, line);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The uid and gid of aitbc-miner in the scratch root's passwd.
fn service_ids(root: &Path) -> (u32, u32) {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("DESTDIR/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("aitbc-miner:"))
        .expect("aitbc-miner in DESTDIR/etc/passwd");
    let f: Vec<&str> = line.split(':').collect();
    assert_eq!(f[5], "/nonexistent", "no home: {line}");
    assert_eq!(f[6], "/usr/sbin/nologin", "no login shell: {line}");
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

fn host_user_line() -> String {
    String::from_utf8_lossy(&run(Command::new("getent").args(["passwd", "aitbc-miner"])).stdout)
        .into_owned()
}

#[test]
fn install_sh_into_a_scratch_root_twice_is_the_same_and_keeps_the_config() {
    if tools(&["systemd-sysusers"]).is_none() {
        return;
    }
    if !is_root() {
        skip("install.sh sets owners: run the suite as root");
        return;
    }
    let host_user = host_user_line();
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let bin = ["--binary", MINER];

    let first = install_ok(d, &bin);
    assert!(
        first.contains("not starting the service (DESTDIR is set)"),
        "{first}"
    );
    let m1 = manifest(d);
    install_ok(d, &bin);
    let m2 = manifest(d);
    assert_eq!(m1, m2, "a second run changed the tree");

    // What is where, with which mode and owner.
    let (uid, gid) = service_ids(d);
    let svc = format!("{uid}:{gid}");
    for (path, mode, owner) in [
        ("usr/bin/aitbc-miner", "755", "0:0"),
        ("etc/systemd/system/aitbc-miner.service", "644", "0:0"),
        (
            "etc/systemd/system/aitbc-miner-nvidia.service",
            "644",
            "0:0",
        ),
        (
            "etc/systemd/system/aitbc-miner.service.d/50-coordinator.conf",
            "644",
            "0:0",
        ),
        ("etc/logrotate.d/aitbc-miner", "644", "0:0"),
        ("usr/lib/sysusers.d/aitbc-miner.conf", "644", "0:0"),
        ("usr/lib/aitbc-miner/install.sh", "755", "0:0"),
        ("etc/aitbc", "755", "0:0"),
        ("etc/aitbc/miner.conf", "600", svc.as_str()),
        ("var/log/aitbc-miner.log", "600", svc.as_str()),
    ] {
        let line = m1
            .get(path)
            .unwrap_or_else(|| panic!("{path} was not installed"));
        assert!(
            line.starts_with(&format!("{mode} {owner} ")),
            "{path}: {line}, expected mode {mode} owner {owner}"
        );
    }
    let unit = std::fs::read(d.join("etc/systemd/system/aitbc-miner.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read(unit_path()).unwrap(),
        "the unit's bytes"
    );
    let example = run(Command::new(MINER).arg("example-config")).stdout;
    let conf = d.join("etc/aitbc/miner.conf");
    assert_eq!(std::fs::read(&conf).unwrap(), example, "the default config");
    let dropin = std::fs::read_to_string(
        d.join("etc/systemd/system/aitbc-miner.service.d/50-coordinator.conf"),
    )
    .unwrap();
    assert!(
        dropin.contains("IPAddressAllow=127.0.0.1"),
        "the default COORD_URL's address:\n{dropin}"
    );

    // The operator edits the config: a rerun never touches it, but follows COORD_URL.
    let mut edited = std::fs::read_to_string(&conf).unwrap();
    edited.push_str("\n# edited by the operator\nCOORD_URL=\"http://localhost:9/\"\n");
    std::fs::write(&conf, &edited).unwrap();
    install_ok(d, &bin);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    let m3 = manifest(d);
    assert_eq!(m3["etc/aitbc/miner.conf"].split(' ').next(), Some("600"));
    let dropin = std::fs::read_to_string(
        d.join("etc/systemd/system/aitbc-miner.service.d/50-coordinator.conf"),
    )
    .unwrap();
    assert!(
        dropin.contains("the Coordinator: localhost"),
        "the drop-in follows COORD_URL:\n{dropin}"
    );

    // The unit in the installed root verifies (the host's own units supply sysinit.target &c.),
    // with the drop-in applied.
    if let Some(t) = tools(&["systemd-analyze"]) {
        verify_in(&t[0], d);
    }

    // Uninstall keeps the config, the spool and the log; --purge removes them.
    let spool = d.join("var/lib/aitbc-miner/spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("proof-1.json"), "{}").unwrap();
    let out = install_ok(d, &["--uninstall"]);
    assert!(out.contains("kept /etc/aitbc/miner.conf"), "{out}");
    for gone in [
        "usr/bin/aitbc-miner",
        "etc/systemd/system/aitbc-miner.service",
        "etc/systemd/system/aitbc-miner-nvidia.service",
        "etc/systemd/system/aitbc-miner.service.d",
        "etc/logrotate.d/aitbc-miner",
        "usr/lib/sysusers.d/aitbc-miner.conf",
        "usr/lib/aitbc-miner",
    ] {
        assert!(!d.join(gone).exists(), "{gone} is still there");
    }
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);
    assert!(spool.join("proof-1.json").exists(), "the spool was removed");
    assert!(d.join("var/log/aitbc-miner.log").exists());
    install_ok(d, &["--uninstall", "--purge"]);
    for gone in [
        "etc/aitbc",
        "var/lib/aitbc-miner",
        "var/log/aitbc-miner.log",
    ] {
        assert!(!d.join(gone).exists(), "{gone} survived --purge");
    }

    assert_eq!(host_user_line(), host_user, "the host's users were touched");
}

fn verify_in(analyze: &Path, root: &Path) {
    let units = root.join("lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        let to = units.join(entry.file_name());
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap();
            let _ = std::os::unix::fs::symlink(target, &to);
        } else if meta.is_file() {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    let verify = || {
        run(Command::new(analyze)
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .args(["aitbc-miner.service", "aitbc-miner-nvidia.service"]))
    };
    let out = verify();
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify: {:?}\n{}",
        out.status,
        text(&out)
    );
    // It checks what it should: without the binary the same root fails, naming it.
    let bin = root.join("usr/bin/aitbc-miner");
    let saved = root.join("aitbc-miner.saved");
    std::fs::rename(&bin, &saved).unwrap();
    let out = verify();
    std::fs::rename(&saved, &bin).unwrap();
    assert!(
        !out.status.success() && text(&out).contains("/usr/bin/aitbc-miner"),
        "verify passed without the binary:\n{}",
        text(&out)
    );
}

#[test]
fn install_sh_refuses_bad_arguments_with_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    for args in [
        &["--purge"][..],
        &["--bogus"],
        &["--binary"],
        &["--binary", "/nonexistent/aitbc-miner"],
    ] {
        let out = install_sh(root.path(), args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.lines().any(|l| l.starts_with("install.sh: error: ")),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(root.path()).unwrap().count(),
        0,
        "a refused run wrote into DESTDIR"
    );
}

// --- The Debian package ------------------------------------------------------------------------

/// Builds the .deb with cargo-deb from the test build's binary (stripped copy in a scratch
/// target directory standing in for target/release, so no release build is needed).
fn build_deb(cargo_deb: &Path, out_dir: &Path) -> PathBuf {
    let target = out_dir.join("target");
    std::fs::create_dir_all(target.join("release")).unwrap();
    let bin = target.join("release/aitbc-miner");
    std::fs::copy(MINER, &bin).unwrap();
    if let Some(strip) = find_tool("strip") {
        // 230 MB of debug info would make packaging slow; the package is the same otherwise.
        run(Command::new(strip).arg(&bin));
    }
    let out = run(Command::new(cargo_deb)
        .args(["--no-build", "--no-strip", "--fast", "-p", "aitbc"])
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .arg("-o")
        .arg(out_dir)
        .env("CARGO_TARGET_DIR", &target));
    assert!(out.status.success(), "cargo deb failed:\n{}", text(&out));
    let deb = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb in the output directory");
    deb
}

#[test]
fn the_debian_package_holds_the_miner_its_units_and_its_scripts() {
    let Some(t) = tools(&["cargo-deb", "dpkg-deb"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(&t[0], dir.path());
    let dpkg = |args: &[&str]| {
        let out = run(Command::new(&t[1]).args(args).arg(&deb));
        assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Contents: path -> mode string (drwxr-xr-x), everything owned by root.
    let listing = dpkg(&["-c"]);
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], "0/0", "not owned by root: {line}");
        let path = cols.last().unwrap().trim_start_matches('.').to_string();
        files.insert(path, cols[0].to_string());
    }
    for (path, mode) in [
        ("/usr/bin/aitbc-miner", "-rwxr-xr-x"),
        ("/lib/systemd/system/aitbc-miner.service", "-rw-r--r--"),
        (
            "/lib/systemd/system/aitbc-miner-nvidia.service",
            "-rw-r--r--",
        ),
        ("/etc/logrotate.d/aitbc-miner", "-rw-r--r--"),
        ("/usr/lib/sysusers.d/aitbc-miner.conf", "-rw-r--r--"),
        ("/usr/lib/aitbc-miner/install.sh", "-rwxr-xr-x"),
        ("/usr/lib/aitbc-miner/README.md", "-rw-r--r--"),
    ] {
        assert_eq!(
            files.get(path).map(String::as_str),
            Some(mode),
            "{path} in:\n{listing}"
        );
    }
    for absent in ["/etc/aitbc/miner.conf", "/usr/bin/aitbc-coordinator"] {
        assert!(!files.contains_key(absent), "{absent} is shipped");
    }

    // Control fields.
    let fields = dpkg(&["-f"]);
    let field = |name: &str| {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{fields}"))
            .to_string()
    };
    assert_eq!(field("Package"), "aitbc-miner");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"), "{fields}");
    assert!(field("Maintainer").contains('<'), "{fields}");

    // Maintainer scripts: present, executable, the repo's bytes, and valid sh. Only the
    // logrotate file is a conffile; the config is made by postinst, never shipped.
    let control = dir.path().join("control");
    let out = run(Command::new(&t[1]).arg("-e").arg(&deb).arg(&control));
    assert!(out.status.success(), "dpkg-deb -e: {}", text(&out));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let meta = std::fs::metadata(&path).unwrap_or_else(|_| panic!("no {script}"));
        assert_eq!(meta.mode() & 0o777, 0o755, "{script} mode");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(repo().join("systemd/debian").join(script)).unwrap(),
            "{script} differs from systemd/debian/{script}"
        );
        let out = run(Command::new("sh").arg("-n").arg(&path));
        assert!(out.status.success(), "sh -n {script}: {}", text(&out));
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap_or_default();
    assert_eq!(conffiles.trim(), "/etc/logrotate.d/aitbc-miner");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("/usr/lib/aitbc-miner/install.sh --configure"));

    // The packaged unit is the repo's unit.
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "'{}' --fsys-tarfile '{}' | tar -xO ./lib/systemd/system/aitbc-miner.service",
        t[1].display(),
        deb.display()
    )));
    assert_eq!(out.stdout, std::fs::read(unit_path()).unwrap());
}

// --- logrotate ---------------------------------------------------------------------------------

#[test]
fn the_logrotate_file_parses_with_the_guides_settings() {
    let Some(t) = tools(&["logrotate"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(&t[0])
        .arg("-d")
        .arg("-s")
        .arg(dir.path().join("state"))
        .arg(repo().join("systemd/aitbc-miner.logrotate")));
    let report = text(&out);
    assert!(out.status.success(), "logrotate -d: {report}");
    for expected in [
        "rotating pattern: /var/log/aitbc-miner.log",
        "after 1 days (7 rotations)",
        "empty log files are not rotated",
    ] {
        assert!(report.contains(expected), "no {expected:?} in:\n{report}");
    }
    assert!(!report.contains("error"), "{report}");
}

/// The unit under a real systemd: `scripts/boot-check/run.sh` boots systemd (Debian's 252) as
/// PID 1 of a throwaway container over this host's `/usr`, and inside it runs install.sh,
/// edits the config, restarts the service (Type=notify: active only after READY=1), runs four
/// jobs from a real Coordinator through it as `aitbc-miner` with every hardening directive
/// applied, asks `aitbc-miner status`, checks the watchdog was pinged and nothing restarted,
/// that `IPAddressDeny=` stops a heartbeat to an address the drop-in does not allow (until
/// `install.sh --configure` rewrites it),
/// runs the README's operations commands as written, and uninstalls; once more from the .deb
/// (dpkg runs the maintainer scripts, which start it; remove keeps, purge deletes the config).
/// What the other tests here check by reading the unit, this one checks by starting it.
#[test]
fn the_service_runs_under_a_real_systemd() {
    if !is_root() {
        skip("the systemd boot check needs root (systemd-nspawn)");
        return;
    }
    if tools(&["systemd-nspawn"]).is_none() {
        return;
    }
    let bin_dir = Path::new(MINER)
        .parent()
        .expect("the binary has a directory");
    // With this host's cgroup layout (here hybrid: no delegation systemd can give), with the
    // unified hierarchy production Debian 12 has (the delegated v2 path runs), and installed
    // from the Debian package with dpkg (postinst, prerm and postrm under a real systemd).
    let scratch = tempfile::tempdir().unwrap();
    let deb = match find_tool("cargo-deb") {
        Some(cargo_deb) => Some(build_deb(&cargo_deb, scratch.path())),
        None => {
            skip("cargo-deb not installed: the boot check of the Debian package");
            None
        }
    };
    let mut runs = vec![("host", None), ("1", None)];
    if let Some(deb) = &deb {
        runs.push(("1", Some(deb.as_path())));
    }
    for (unified, deb) in runs {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/boot-check/run.sh"))
            .arg(bin_dir);
        // Unset, systemd-nspawn gives the container this host's layout; "0" would force the
        // legacy one (no unified hierarchy at all, so no BPF IP firewall either).
        match unified {
            "1" => cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1"),
            _ => cmd.env_remove("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"),
        };
        if let Some(deb) = deb {
            cmd.env("BOOT_CHECK_DEB", deb);
        }
        let out = run(&mut cmd);
        let log = text(&out);
        let what = format!("unified hierarchy: {unified}, deb: {}", deb.is_some());
        assert!(
            out.status.success(),
            "the boot check ({what}) failed:\n{log}"
        );
        let mut steps = vec![
            "ok   active (running) after READY=1",
            "ok   4 jobs credited to the wallet",
            "ok   aitbc-miner status answers",
            "ok   the watchdog was pinged",
            "ok   LOG_FILE=/var/log/aitbc-miner.log gets the lines too",
            "ok   journalctl -p warning filters by the <N> priority",
            "ok   systemctl disable --now aitbc-miner.service",
        ];
        if log.contains("skip IPAddressDeny") {
            skip(&format!(
                "IPAddressDeny check ({what}): no non-loopback IPv4 address"
            ));
        } else {
            steps.push("ok   inside it, a heartbeat to");
            steps.push("ok     ... and the heartbeat gets through");
        }
        if unified == "1" {
            steps.push("ok   cgroup v2: the supervisor moved into its delegated leaf");
        }
        if deb.is_some() {
            steps.push("ok   the service is active with the default config");
            steps.push("ok     ... the config is gone");
        }
        for step in steps {
            assert!(log.contains(step), "missing {step:?} ({what}) in:\n{log}");
        }
    }
}

//! `aitbc-miner status` and the systemd notifications against a real daemon: the real
//! `aitbc-miner run` binary (root: dropping to `RUN_AS_USER` as in production) runs a job from
//! a real Coordinator, serves its status socket and `METRICS_FILE` in a temporary directory, and
//! notifies a `NOTIFY_SOCKET` datagram socket the test binds, with `SO_PASSCRED`, so each
//! message's sender pid is checked the way `NotifyAccess=main` checks it.
//!
//! `WATCHDOG_PID` must name the daemon's own pid, known only once it runs: the daemon is started
//! through `sh -c 'WATCHDOG_PID=$$ ... exec aitbc-miner run ...'`; `exec` keeps the shell's pid,
//! so `$$` is the pid of the daemon, which the test checks against `Child::id`.
//!
//! Nothing here sleeps for a fixed time: every wait polls a condition (the socket, a file) or
//! waits for a datagram, each with a deadline.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use aitbc_supervisor::status::{self, Request, SlotState, Snapshot};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{
    daemon_dir, reachable_tempdir, test_config, wait_for, TestCoordinator, RUN_AS,
};

const WALLET: &str = "wallet_status";
const DEADLINE: Duration = Duration::from_secs(30);

/// What arrives on the test's `NOTIFY_SOCKET`: (sender pid, message).
struct Notifications {
    rx: mpsc::Receiver<(Option<i32>, String)>,
    seen: Vec<(Option<i32>, String)>,
}

impl Notifications {
    /// Binds `path` (writable by the daemon's user) and reads datagrams on a thread.
    fn bind(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        Notifications::read(sock)
    }

    /// Binds the abstract address `@name` (no file, no permissions: any local process may
    /// send) and reads datagrams on a thread.
    fn bind_abstract(name: &str) -> Notifications {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("an abstract address");
        Notifications::read(UnixDatagram::bind_addr(&addr).expect("bind the abstract socket"))
    }

    fn read(sock: UnixDatagram) -> Notifications {
        use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags};
        setsockopt(&sock, sockopt::PassCred, &true).expect("SO_PASSCRED");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let (n, pid) = {
                let Ok(msg) = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                ) else {
                    return;
                };
                let pid = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                        _ => None,
                    })
                });
                (msg.bytes, pid)
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if tx.send((pid, text)).is_err() {
                return;
            }
        });
        Notifications {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next message containing `line` as one of its lines; panics after `within`.
    fn wait_for(&mut self, line: &str, within: Duration) -> (Option<i32>, String) {
        let until = Instant::now() + within;
        loop {
            let left = until
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no {line:?} within {within:?}; got {:?}", self.seen));
            let m = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {line:?} within {within:?}; got {:?}", self.seen));
            self.seen.push(m.clone());
            if m.1
                .lines()
                .any(|l| l == line || (line.ends_with('=') && l.starts_with(line)))
            {
                return m;
            }
        }
    }
}

/// The daemon: `aitbc-miner run --config CONFIG`, exec'd from a shell that sets `WATCHDOG_PID`
/// to its own (and so the daemon's) pid; stderr goes to `log`.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `NOTIFY_SOCKET=notify`; `WATCHDOG_PID` is its own pid unless
    /// `watchdog_pid` names another.
    fn start(
        config: &Path,
        notify: &std::ffi::OsStr,
        watchdog_pid: Option<&str>,
        log: &Path,
    ) -> Daemon {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(
                r#"WATCHDOG_PID=${OTHER_PID:-$$}; export WATCHDOG_PID; unset OTHER_PID;
                   exec "$0" run --config "$1""#,
            )
            .arg(env!("CARGO_BIN_EXE_aitbc-miner"))
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("create the log"));
        for key in aitbc_supervisor::config::KEYS {
            command.env_remove(key);
        }
        command
            .env("NOTIFY_SOCKET", notify)
            // A ping every 100 ms.
            .env("WATCHDOG_USEC", "200000");
        match watchdog_pid {
            Some(other) => command.env("OTHER_PID", other),
            None => command.env_remove("OTHER_PID"),
        };
        Daemon {
            child: command.spawn().expect("start aitbc-miner run"),
            log: log.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `aitbc-miner status ARGS`: (exit code, stdout, stderr).
fn status_cli(args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"));
    command.arg("status").args(args);
    for key in aitbc_supervisor::config::KEYS {
        command.env_remove(key);
    }
    let out = command.output().expect("run aitbc-miner status");
    (
        out.status.code().expect("status exits, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn snapshot(socket: &Path) -> Option<Snapshot> {
    let json = status::query(socket, Request::Status, Duration::from_secs(5)).ok()?;
    serde_json::from_str(&json).ok()
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Checks `text` is the classic Prometheus text format as this miner writes it: every line a
/// `# HELP`, a `# TYPE` (counter or gauge, after its HELP) or a sample `name{k="v",...} value`
/// of a family declared above; counters end in `_total`; no other comment (no `# EOF`); one
/// newline at the end. Returns the samples as `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    assert!(text.ends_with('\n'), "no final newline:\n{text}");
    let mut helped = HashSet::new();
    let mut typed = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            assert!(is_metric_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_owned()), "second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(helped.contains(name), "TYPE before HELP: {line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter without _total: {line}");
            }
            assert!(typed.insert(name.to_owned(), kind).is_none(), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let name_end = line.find(['{', ' ']).expect("a sample");
        let name = &line[..name_end];
        assert!(is_metric_name(name), "{line}");
        assert!(typed.contains_key(name), "sample without TYPE: {line}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(body) = rest.strip_prefix('{') {
            // k="v" pairs; v escapes \\, \" and \n.
            let mut chars = body.char_indices().peekable();
            loop {
                let start = chars.peek().map(|(i, _)| *i).expect("label or }");
                if body[start..].starts_with('}') {
                    rest = &body[start + 1..];
                    break;
                }
                let eq = body[start..].find("=\"").expect("k=\"v\"") + start;
                let key = &body[start..eq];
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !key.is_empty(),
                    "{line}"
                );
                while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                    chars.next();
                }
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated label value") {
                        (_, '\\') => match chars.next().expect("escape").1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other} in {line}"),
                        },
                        (_, '"') => break,
                        (_, '\n') => panic!("raw newline in {line}"),
                        (_, c) => value.push(c),
                    }
                }
                labels.push(format!("{key}={value:?}"));
                if chars.peek().is_some_and(|(_, c)| *c == ',') {
                    chars.next();
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("space before the value");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        };
        assert!(samples.insert(key, v).is_none(), "duplicate sample: {line}");
    }
    samples
}

/// A 0600 config for a two-slot CPU miner with test-sized durations, state under `dir`, and
/// `extra` lines.
fn write_config(dir: &Path, url: &str, key: &str, extra: &str) -> PathBuf {
    let config = dir.join("miner.conf");
    std::fs::write(
        &config,
        format!(
            "COORD_URL={url}\nWALLET_ADDR={WALLET}\nAPI_KEY={key}\nMINER_ID=status-miner\n\
             WORK_DIR={work}\nSTATE_DIR={state}\nHEARTBEAT_SECS=0.1\nJOB_POLL_SECS=0.02\n\
             POLL_WAIT_SECS=2\nMAX_CONCURRENCY=2\nACCEL_MODE=cpu\nBACKOFF_MIN_SECS=0.02\n\
             BACKOFF_MAX_SECS=0.3\nDRAIN_GRACE_SECS=5\nTHREADS_PER_JOB=1\nRUN_AS_USER={RUN_AS}\n\
             {extra}",
            work = dir.join("work").display(),
            state = dir.join("state").display(),
        ),
    )
    .expect("write the config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_systemd_notifications_of_a_running_daemon() {
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let run = daemon_dir(&dir.path().join("run"));
    let socket = run.join("status.sock");
    let metrics = run.join("aitbc_miner.prom");
    let notify_path = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&notify_path);
    let config = write_config(
        dir.path(),
        &c.url,
        &c.miner_key,
        &format!(
            "STATUS_SOCKET={}\nMETRICS_FILE={}\nMETRICS_INTERVAL_SECS=0.05\n",
            socket.display(),
            metrics.display()
        ),
    );
    let mut daemon = Daemon::start(
        &config,
        notify_path.as_os_str(),
        None,
        &dir.path().join("daemon.log"),
    );
    let pid = i32::try_from(daemon.child.id()).expect("a pid");

    // READY=1 from the daemon's own pid, with the status socket (0600) already there.
    let t0 = Instant::now();
    let (sender, ready) = notes.wait_for("READY=1", DEADLINE);
    eprintln!("READY=1 after {:?}: {ready:?}", t0.elapsed());
    assert_eq!(sender, Some(pid), "READY=1 comes from the main pid");
    assert!(ready.contains("STATUS="), "{ready:?}");
    let mode = std::fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("no socket at READY=1 ({e}); log:\n{}", daemon.log()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The watchdog pings go on, from the same pid.
    for _ in 0..3 {
        let (sender, _) = notes.wait_for("WATCHDOG=1", Duration::from_secs(5));
        assert_eq!(sender, Some(pid));
    }

    // The first snapshot: two idle slots, running, no job yet.
    let s = snapshot(&socket).expect("the daemon answers status");
    assert_eq!(
        (s.miner_id.as_str(), s.wallet.as_str(), s.pid),
        ("status-miner", WALLET, pid as u32)
    );
    assert_eq!(s.slots.len(), 2);
    assert_eq!(s.state, status::DaemonState::Running);

    // One job: done, its proof accepted and credited, audited (a new miner's first proofs
    // always are), the audit passed and the credit settled, the balance fetched.
    let job = c.submit_small(42).await;
    let s = wait_for(
        "the job done, audited and the balance fetched",
        DEADLINE,
        || {
            let socket = socket.clone();
            async move {
                snapshot(&socket).filter(|s| {
                    s.jobs_done == 1
                        && s.balance.amount == Some(42)
                        && s.spool_depth == 0
                        && s.audits.entries == 0
                        && s.audits.passed == 1
                        && s.slots.iter().all(|x| x.state == SlotState::Idle)
                })
            }
        },
    )
    .await;
    assert_eq!(
        s.audits,
        status::AuditStatus {
            entries: 0,
            bytes: 0,
            limit_bytes: 256 << 20,
            full: false,
            answered: 1,
            passed: 1,
            failed: 0,
            self_check_failures: 0,
        }
    );
    assert_eq!((s.balance.pending, s.balance.forfeited), (Some(0), Some(0)));
    assert_eq!(s.suspended, None);
    assert_eq!(s.jobs_failed.total, 0);
    assert_eq!(s.heartbeat.ok, Some(true));
    assert_eq!(s.coordinator_errors, 0);
    assert_eq!(s.balance.credits, Some(1));
    assert_eq!(c.balance(WALLET).await, (42, 1), "job {}", job.id);

    // The human summary, through the socket named on the command line.
    let (code, out, err) = status_cli(&["--socket", socket.to_str().unwrap()]);
    eprintln!("aitbc-miner status:\n{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    for want in [
        "): running, cpu\n",
        "  miner        status-miner (wallet wallet_status)\n",
        "  heartbeat    ok, ",
        "  slots        2 (0 busy)\n",
        "    slot 0     idle\n",
        "    slot 1     idle\n",
        "  jobs         1 done, 0 failed\n",
        "  spool        0 result(s) waiting to be delivered\n",
        "  audits       1 answered (1 passed, 0 failed)\n",
        "  audit spool  0 entries, 0 B of 256.0 MiB\n",
        "  balance      42 settled (1 credits), 0 pending, 0 forfeited, fetched ",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // The metrics, through the socket found in the config file.
    let (code, text, err) = status_cli(&["--config", config.to_str().unwrap(), "--metrics"]);
    assert_eq!(code, 0, "{text}{err}");
    let m = parse_prometheus(&text);
    assert_eq!(m["aitbc_miner_jobs_done_total"], 1.0, "{text}");
    assert_eq!(
        m["aitbc_miner_jobs_failed_total{reason=\"TIMED_OUT\"}"],
        0.0
    );
    assert_eq!(
        m[&format!("aitbc_miner_wallet_balance{{wallet=\"{WALLET}\"}}")],
        42.0
    );
    assert_eq!(m["aitbc_miner_slots{state=\"idle\"}"], 2.0);
    assert_eq!(m["aitbc_miner_state{state=\"running\"}"], 1.0);
    assert_eq!(m["aitbc_miner_heartbeat_ok"], 1.0);
    assert_eq!(m["aitbc_miner_spool_entries"], 0.0);
    assert_eq!(m["aitbc_miner_audits_answered_total"], 1.0);
    assert_eq!(m["aitbc_miner_audits_total{verdict=\"passed\"}"], 1.0);
    assert_eq!(m["aitbc_miner_audits_total{verdict=\"failed\"}"], 0.0);
    assert_eq!(m["aitbc_miner_audit_spool_entries"], 0.0);
    assert_eq!(m["aitbc_miner_audit_spool_full"], 0.0);
    assert_eq!(m["aitbc_miner_suspended"], 0.0);
    assert_eq!(
        m[&format!("aitbc_miner_wallet_pending{{wallet=\"{WALLET}\"}}")],
        0.0
    );

    // --json is the snapshot itself.
    let (code, json, err) = status_cli(&["--socket", socket.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{json}{err}");
    let s: Snapshot = serde_json::from_str(&json).expect("--json prints a snapshot");
    assert_eq!(s.jobs_done, 1);

    // The metrics file: complete, readable by node_exporter's user, showing the job.
    let file = wait_for("METRICS_FILE to show the job", DEADLINE, || {
        let metrics = metrics.clone();
        async move {
            std::fs::read_to_string(&metrics)
                .ok()
                .filter(|t| t.contains("\naitbc_miner_jobs_done_total 1\n"))
        }
    })
    .await;
    let m = parse_prometheus(&file);
    assert_eq!(m["aitbc_miner_jobs_done_total"], 1.0);
    let mode = std::fs::metadata(&metrics).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);

    // systemd heard a status line with the job in it.
    notes.wait_for(
        "STATUS=running: 0/2 slots busy, 1 done, 0 failed, spool 0, heartbeat ok",
        DEADLINE,
    );

    // A bad request gets one error line and takes nothing down.
    let mut bad = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    bad.write_all(b"rm -rf /\n").expect("send");
    let mut answer = String::new();
    bad.read_to_string(&mut answer).expect("read the answer");
    assert_eq!(
        answer,
        "error: unknown request \"rm -rf /\"; send one line: status or metrics\n"
    );
    assert!(snapshot(&socket).is_some(), "still answering");

    // SIGTERM: STOPPING=1, a clean exit, the socket removed, the last metrics say stopped.
    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    let (sender, _) = notes.wait_for("STOPPING=1", DEADLINE);
    assert_eq!(sender, Some(pid));
    let exit = wait_for("the daemon to exit", DEADLINE, || {
        let r = daemon.child.try_wait().expect("try_wait");
        async move { r }
    })
    .await;
    let log = daemon.log();
    eprintln!("daemon log:\n{log}");
    assert!(exit.success(), "exit {exit}; log:\n{log}");
    assert!(!socket.exists(), "the socket file is removed; log:\n{log}");
    let last = std::fs::read_to_string(&metrics).expect("the metrics file stays");
    let m = parse_prometheus(&last);
    assert_eq!(m["aitbc_miner_state{state=\"stopped\"}"], 1.0, "{last}");
    let left: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["aitbc_miner.prom"],
        "nothing else is left in {run:?}"
    );
    assert!(!log.contains(&c.miner_key), "the key is never logged");
}

/// Without a Coordinator (a closed port) the daemon is still READY (it never waits for the
/// Coordinator) and its status shows the failing heartbeat; with `WATCHDOG_PID` naming another
/// process it never pings the watchdog (sd_watchdog_enabled's rule); and an abstract
/// `NOTIFY_SOCKET` (`@name`) is reached.
#[test]
fn without_a_coordinator_ready_comes_and_a_foreign_watchdog_pid_means_no_pings() {
    let dir = reachable_tempdir();
    let run = daemon_dir(&dir.path().join("run"));
    let socket = run.join("status.sock");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = write_config(
        dir.path(),
        &format!("http://127.0.0.1:{closed}"),
        "aitbc_test_key",
        &format!("STATUS_SOCKET={}\n", socket.display()),
    );
    let name = format!("aitbc-status-test-{}", std::process::id());
    let mut notes = Notifications::bind_abstract(&name);
    let mut daemon = Daemon::start(
        &config,
        std::ffi::OsStr::new(&format!("@{name}")),
        Some("1"),
        &dir.path().join("daemon.log"),
    );
    let pid = i32::try_from(daemon.child.id()).expect("a pid");
    let (sender, _) = notes.wait_for("READY=1", DEADLINE);
    assert_eq!(sender, Some(pid));

    // Heartbeats fail (nothing listens): the status says so.
    let until = Instant::now() + DEADLINE;
    let s = loop {
        if let Some(s) = snapshot(&socket).filter(|s| s.coordinator_errors >= 2) {
            break s;
        }
        assert!(
            Instant::now() < until,
            "no failed heartbeat; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(s.heartbeat.ok, Some(false));
    assert!(s.heartbeat.error.is_some());
    let (code, out, err) = status_cli(&["--socket", socket.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("  heartbeat    FAILING, "), "{out}");
    assert!(out.contains("(never accepted yet)"), "{out}");
    assert!(
        out.contains("  balance      unknown (not fetched yet)"),
        "{out}"
    );

    kill(Pid::from_raw(pid), Signal::SIGTERM).expect("SIGTERM");
    notes.wait_for("STOPPING=1", DEADLINE);
    let until = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(Instant::now() < until, "the daemon did not exit");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(exit.success(), "{exit}; log:\n{}", daemon.log());
    // Datagrams from one sender arrive in order: any ping sent before STOPPING=1 is in `seen`.
    // (The watchdog's first tick is immediate, so an enabled watchdog would have pinged.)
    let pings: Vec<_> = notes
        .seen
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .collect();
    assert!(pings.is_empty(), "pinged for another pid: {pings:?}");
    assert!(!daemon.log().contains("systemd watchdog enabled"));
}

#[test]
fn status_without_a_daemon_exits_1_naming_the_socket() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let missing = dir.path().join("none.sock");
    let (code, out, err) = status_cli(&["--socket", missing.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert!(err.contains("systemctl status aitbc-miner"), "{err}");

    // A stale socket (nobody listening), found through the config file.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let config = dir.path().join("miner.conf");
    std::fs::write(&config, format!("STATUS_SOCKET={}\n", stale.display())).expect("write");
    let (code, out, err) = status_cli(&["--config", config.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains(&stale.display().to_string()), "{err}");
    assert!(
        err.contains("Connection refused") || err.contains("refused"),
        "{err}"
    );

    // Disabled in the config: says so, exit 1.
    std::fs::write(&config, "STATUS_SOCKET=\n").expect("write");
    let (code, _, err) = status_cli(&["--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("STATUS_SOCKET is empty"), "{err}");

    // A --config that cannot be read is a usage error (2), naming the file.
    let (code, _, err) = status_cli(&["--config", "/nonexistent/miner.conf"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/nonexistent/miner.conf"), "{err}");
}

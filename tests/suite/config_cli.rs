//! How the real `aitbc-miner run` binary treats its config file and environment, as an
//! operator sees it: exit status 2 and `FILE:LINE: KEY="VALUE": expected ...` on stderr for a
//! bad file, the `chmod 600` warning for a config file others can read, `--log-file`
//! appending, and the API key never appearing on stderr or in the log file.
//!
//! These tests must never talk to a real Coordinator: the miners they start point at a closed
//! port on 127.0.0.1 and are stopped with SIGTERM once they have shown what is tested.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::common::{reachable_tempdir, RUN_AS};

/// Every key the miner reads from the environment; removed from the child's environment so
/// the test runner's own variables cannot change what is tested.
const CONFIG_KEYS: &[&str] = aitbc_supervisor::config::KEYS;

/// How long a miner may take to print a line or to exit before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) const SECRET: &str = "sk-test-5f0c1d2e3a4b";

/// What the supervisor logs once it runs and finds no Coordinator at the closed port.
const RUNNING: &str = "heartbeat failed";

/// A port on 127.0.0.1 with nothing listening on it.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A valid config whose miner runs without a Coordinator (connection refused, backing off)
/// and keeps its directories inside `dir`.
pub(crate) fn valid_config(dir: &Path) -> String {
    format!(
        "COORD_URL=http://127.0.0.1:{port}\n\
         WALLET_ADDR=wallet_cli_test\n\
         API_KEY=\"{SECRET}\"\n\
         MINER_ID=\"$(hostname)-cli\"\n\
         WORK_DIR={work}\n\
         STATE_DIR={state}\n\
         HEARTBEAT_SECS=0.05\n\
         JOB_POLL_SECS=0.05\n\
         POLL_WAIT_SECS=0\n\
         BACKOFF_MIN_SECS=0.05\n\
         BACKOFF_MAX_SECS=0.2\n\
         DRAIN_GRACE_SECS=1\n\
         RUN_AS_USER={RUN_AS}\n",
        port = closed_port(),
        work = dir.join("work").display(),
        state = dir.join("state").display(),
    )
}

/// The number of the first line after [`valid_config`]'s, where tests append their own.
fn first_line_after(dir: &Path) -> usize {
    valid_config(dir).lines().count() + 1
}

pub(crate) fn write_config(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

/// A running `aitbc-miner run`, its stderr read line by line on a thread.
pub(crate) struct Miner {
    pub(crate) child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) stderr: Vec<String>,
}

impl Miner {
    pub(crate) fn start(args: &[&str], env: &[(&str, &str)]) -> Miner {
        let mut command = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"));
        command
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for key in CONFIG_KEYS {
            command.env_remove(key);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start aitbc-miner");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Miner {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// Reads stderr until a line contains `needle`; false when stderr ends or time runs out.
    pub(crate) fn wait_for(&mut self, needle: &str) -> bool {
        let until = Instant::now() + DEADLINE;
        if self.stderr.iter().any(|l| l.contains(needle)) {
            return true;
        }
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.stderr.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Reads stderr to its end and waits for the exit; panics if that takes past the deadline.
    pub(crate) fn finish(mut self) -> (ExitStatus, String) {
        let until = Instant::now() + DEADLINE;
        loop {
            let left = until
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| {
                    panic!(
                        "aitbc-miner did not exit within {DEADLINE:?}; stderr so far:\n{}",
                        self.stderr.join("\n")
                    )
                });
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stderr.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
            }
        }
        let status = self.child.wait().expect("wait for aitbc-miner");
        (status, self.stderr.join("\n"))
    }

    /// Waits until the miner is past its start-up (it has tried the closed Coordinator port, so
    /// its warnings are printed and its SIGTERM handler is in place), then SIGTERM, then
    /// [`Miner::finish`]. A miner that stops cleanly on SIGTERM exits with status 0.
    pub(crate) fn stop(mut self) -> (ExitStatus, String) {
        assert!(
            self.wait_for(RUNNING),
            "the miner never reported its failed heartbeat; stderr:\n{}",
            self.stderr.join("\n")
        );
        let pid = i32::try_from(self.child.id()).expect("pid fits in i32");
        kill(Pid::from_raw(pid), Signal::SIGTERM).expect("send SIGTERM");
        self.finish()
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        // Only reached with the child still running when a test failed half-way.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `aitbc-miner run --config PATH` that must refuse to start; returns its stderr.
pub(crate) fn refused(config: &Path, env: &[(&str, &str)]) -> String {
    let path = config.to_str().expect("temp paths are UTF-8");
    let (status, stderr) = Miner::start(&["--config", path], env).finish();
    assert_eq!(
        status.code(),
        Some(2),
        "a bad config must exit with status 2; stderr:\n{stderr}"
    );
    assert!(!stderr.contains(SECRET), "the API key leaked: {stderr}");
    stderr
}

#[test]
fn a_bad_value_exits_2_naming_file_line_key_and_value() {
    let dir = reachable_tempdir();
    let text = format!(
        "{}JOB_POLL_SECS=abc # fetch cadence\n",
        valid_config(dir.path())
    );
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let stderr = refused(&config, &[]);
    let want = format!(
        "{}:{}: JOB_POLL_SECS=\"abc\": expected seconds greater than 0, e.g. 3 or 0.5",
        config.display(),
        first_line_after(dir.path())
    );
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

#[test]
fn syntax_errors_and_command_substitution_are_refused_with_their_line() {
    let dir = reachable_tempdir();
    let marker = dir.path().join("ran");
    let cases = [
        (
            "WALLET_ADDR=\"never closed\n".to_string(),
            "WALLET_ADDR=\"never closed: unterminated double quote".to_string(),
        ),
        (
            format!("MINER_ID=\"$(touch {})\"\n", marker.display()),
            format!(
                "MINER_ID=\"$(touch {m})\": command substitution $(touch {m}) is not supported",
                m = marker.display()
            ),
        ),
        (
            "MINER_ID=`id -un`\n".to_string(),
            "MINER_ID=`id -un`: backtick command substitution is not supported".to_string(),
        ),
    ];
    for (line, want) in cases {
        let text = format!("{}{line}", valid_config(dir.path()));
        let config = write_config(dir.path(), "miner.conf", &text, 0o600);
        let stderr = refused(&config, &[]);
        let want = format!(
            "{}:{}: {want}",
            config.display(),
            first_line_after(dir.path())
        );
        assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
    }
    assert!(!marker.exists(), "a command in the config file was run");
}

#[test]
fn a_missing_file_or_key_is_named() {
    let dir = reachable_tempdir();
    let missing = dir.path().join("absent.conf");
    let stderr = refused(&missing, &[]);
    let want = format!("cannot read config file {}", missing.display());
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");

    let text: String = valid_config(dir.path())
        .lines()
        .filter(|l| !l.starts_with("WALLET_ADDR="))
        .map(|l| format!("{l}\n"))
        .collect();
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let stderr = refused(&config, &[]);
    let want = format!("{}: required key WALLET_ADDR is not set", config.display());
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

#[test]
fn environment_errors_name_the_variable_and_never_the_key() {
    let dir = reachable_tempdir();
    let config = write_config(dir.path(), "miner.conf", &valid_config(dir.path()), 0o600);

    let stderr = refused(&config, &[("HEARTBEAT_SECS", "soon")]);
    let want = "environment: HEARTBEAT_SECS=\"soon\": expected seconds greater than 0";
    assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");

    let bad_key = format!("{SECRET} with spaces");
    let stderr = refused(&config, &[("API_KEY", &bad_key)]);
    let want = "environment: API_KEY=<redacted>: expected the wallet-issued API key";
    assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");

    let text = valid_config(dir.path()).replace(
        &format!("API_KEY=\"{SECRET}\""),
        &format!("API_KEY=\"{SECRET}"),
    );
    let config = write_config(dir.path(), "unterminated.conf", &text, 0o600);
    let stderr = refused(&config, &[]);
    let want = format!("{}:3: API_KEY=<redacted>: unterminated", config.display());
    assert!(stderr.contains(&want), "want {want:?} in:\n{stderr}");
}

#[test]
fn a_world_readable_config_gets_the_chmod_warning() {
    let dir = reachable_tempdir();
    // The unknown key gives a warning that is printed first in both runs; the
    // permission warning, if any, comes right after it.
    let text = format!("{}HEARTBEAT_SEC=1\n", valid_config(dir.path()));
    let unknown = "unknown key HEARTBEAT_SEC is ignored (did you mean HEARTBEAT_SECS?)";

    for (mode, warned) in [(0o644, true), (0o600, false)] {
        let config = write_config(dir.path(), &format!("miner-{mode:o}.conf"), &text, mode);
        let path = config.to_str().expect("temp paths are UTF-8");
        let mut miner = Miner::start(&["--config", path], &[]);
        assert!(
            miner.wait_for(unknown),
            "no unknown-key warning; stderr:\n{}",
            miner.stderr.join("\n")
        );
        let (status, stderr) = miner.stop();
        assert!(
            status.success(),
            "SIGTERM stops the miner cleanly: {status}\n{stderr}"
        );
        let chmod = format!(
            "{p}: mode {mode:04o} lets group or others access this file, which holds API_KEY; \
             fix: chmod 600 {p}",
            p = config.display()
        );
        assert_eq!(
            stderr.contains(&chmod),
            warned,
            "mode {mode:o}; stderr:\n{stderr}"
        );
        assert!(
            stderr.contains("WARN"),
            "warnings are logged at WARN:\n{stderr}"
        );
        assert!(!stderr.contains(SECRET), "the API key leaked: {stderr}");
        assert!(
            !stderr.contains('\u{1b}'),
            "no ANSI colours when stderr is not a terminal:\n{stderr}"
        );
    }
}

#[test]
fn log_file_is_appended_to_and_never_holds_the_key() {
    let dir = reachable_tempdir();
    let text = format!(
        "{}LOG_LEVEL=debug\nWORK_DIRR=/x\n",
        valid_config(dir.path())
    );
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let path = config.to_str().expect("temp paths are UTF-8");
    let unknown = "unknown key WORK_DIRR is ignored (did you mean WORK_DIR?)";

    // --log-file: an existing file keeps its lines and its mode.
    let log = dir.path().join("miner.log");
    std::fs::write(&log, "line from an earlier run\n").expect("write log");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let log_arg = log.to_str().expect("temp paths are UTF-8");
    let mut miner = Miner::start(&["--config", path, "--log-file", log_arg], &[]);
    assert!(
        miner.wait_for(unknown),
        "stderr:\n{}",
        miner.stderr.join("\n")
    );
    let (_, stderr) = miner.stop();
    let written = std::fs::read_to_string(&log).expect("read log");
    assert!(
        written.starts_with("line from an earlier run\n"),
        "the log file was truncated:\n{written}"
    );
    assert!(
        written.contains(unknown),
        "warnings reach the file:\n{written}"
    );
    assert!(
        !written.contains(SECRET),
        "the API key leaked into the log: {written}"
    );
    assert!(!stderr.contains(SECRET), "the API key leaked: {stderr}");
    assert!(!written.contains('\u{1b}'), "no ANSI colours in the file");
    let mode = std::fs::metadata(&log)
        .expect("stat log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "an existing log keeps its mode");

    // LOG_FILE from the environment: a new file is created private.
    let fresh = dir.path().join("fresh.log");
    let fresh_arg = fresh.to_str().expect("temp paths are UTF-8");
    let mut miner = Miner::start(&["--config", path], &[("LOG_FILE", fresh_arg)]);
    assert!(
        miner.wait_for(unknown),
        "stderr:\n{}",
        miner.stderr.join("\n")
    );
    miner.stop();
    let written = std::fs::read_to_string(&fresh).expect("read fresh log");
    assert!(written.contains(unknown), "{written}");
    assert!(
        !written.contains(SECRET),
        "the API key leaked into the log: {written}"
    );
    let mode = std::fs::metadata(&fresh)
        .expect("stat log")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a new log file is created with mode 0600"
    );
}

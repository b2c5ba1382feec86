//! `aitbc-miner doctor` on this host, run as the real binary: every line is
//! `ok|warn|FAIL  <check>: <finding>[ — fix: ...]`, every confinement mechanism of the issue has
//! its line, the self-test starts a real confined worker, and the exit status is 1 exactly when
//! a line says FAIL.
//!
//! These tests must never depend on what this host lacks: they check the shape and the
//! consistency of the report, and force a FAIL only through the config they write.

use std::process::Command;

use crate::common::{reachable_tempdir, RUN_AS};
use crate::config_cli::{valid_config, write_config, SECRET};

/// Runs `aitbc-miner doctor` with `args`; returns (exit code, stdout lines, stderr).
fn doctor(args: &[&str]) -> (i32, Vec<String>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"));
    command.arg("doctor").args(args);
    for key in aitbc_supervisor::config::KEYS {
        command.env_remove(key);
    }
    let out = command.output().expect("run aitbc-miner doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("aitbc-miner doctor {args:?}:\n{stdout}{stderr}");
    (
        out.status.code().expect("doctor exits, not killed"),
        stdout.lines().map(str::to_string).collect(),
        stderr,
    )
}

/// (status, check, finding) of a well-formed line; panics otherwise.
fn parse(line: &str) -> (&str, &str, &str) {
    let (status, rest) = line
        .split_once("  ")
        .unwrap_or_else(|| panic!("no status column: {line:?}"));
    let status = status.trim_end();
    assert!(
        matches!(status, "ok" | "warn" | "FAIL"),
        "bad status {status:?} in {line:?}"
    );
    let (check, finding) = rest
        .trim_start()
        .split_once(": ")
        .unwrap_or_else(|| panic!("no `check: finding` in {line:?}"));
    assert!(!check.is_empty() && !finding.is_empty(), "{line:?}");
    if let Some((_, fix)) = finding.split_once(" — fix: ") {
        assert!(!fix.trim().is_empty(), "empty fix in {line:?}");
    }
    (status, check, finding)
}

fn assert_consistent(code: i32, lines: &[String]) {
    assert!(!lines.is_empty(), "doctor printed nothing");
    let failed = lines.iter().any(|l| parse(l).0 == "FAIL");
    assert_eq!(
        code,
        i32::from(failed),
        "exit status vs FAIL lines:\n{}",
        lines.join("\n")
    );
}

fn line_of<'a>(lines: &'a [String], check: &str) -> &'a str {
    lines
        .iter()
        .find(|l| parse(l).1 == check)
        .unwrap_or_else(|| panic!("no {check:?} line in:\n{}", lines.join("\n")))
}

#[test]
fn doctor_reports_every_mechanism_on_this_host_and_its_exit_status_matches() {
    let dir = reachable_tempdir();
    let config = write_config(dir.path(), "miner.conf", &valid_config(dir.path()), 0o600);
    let path = config.to_str().expect("temp paths are UTF-8");
    let (code, lines, stderr) = doctor(&["--config", path]);
    assert_consistent(code, &lines);
    for check in [
        "config",
        "config mode",
        "user",
        "no_new_privs",
        "capabilities",
        "seccomp",
        "landlock",
        "user namespace",
        "net namespace",
        "mount namespace",
        "cgroup",
        "swap accounting",
        "self-test",
    ] {
        line_of(&lines, check);
    }
    assert!(line_of(&lines, "config").starts_with("ok"), "{lines:?}");
    assert!(
        line_of(&lines, "config mode").contains("mode 0600"),
        "{lines:?}"
    );
    if nix::unistd::geteuid().is_root() {
        let user = line_of(&lines, "user");
        assert!(user.contains(&format!("drops to {RUN_AS}")), "{user}");
    }
    let self_test = line_of(&lines, "self-test");
    if self_test.starts_with("ok") {
        assert!(
            self_test.contains("a confined worker started and reported: "),
            "{self_test}"
        );
    }
    let all = lines.join("\n");
    assert!(
        !all.contains(SECRET) && !stderr.contains(SECRET),
        "the API key leaked"
    );
}

#[test]
fn a_fail_line_makes_doctor_exit_1_and_says_how_to_fix_it() {
    let dir = reachable_tempdir();
    let root = nix::unistd::geteuid().is_root();
    // As root a run-as user that does not exist fails; otherwise an invalid value does.
    let extra = if root {
        "RUN_AS_USER=aitbc-no-such-user\n"
    } else {
        "HEARTBEAT_SECS=abc\n"
    };
    let text = format!("{}{extra}", valid_config(dir.path()));
    let config = write_config(dir.path(), "miner.conf", &text, 0o644);
    let path = config.to_str().expect("temp paths are UTF-8");
    let (code, lines, _) = doctor(&["--config", path]);
    assert_consistent(code, &lines);
    assert_eq!(code, 1);
    let failing = if root { "user" } else { "config" };
    let line = line_of(&lines, failing);
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(line.contains(" — fix: "), "{line}");
    if root {
        assert!(
            line.contains("useradd --system --no-create-home aitbc-no-such-user"),
            "{line}"
        );
    }
    let mode = line_of(&lines, "config mode");
    assert!(
        mode.starts_with("warn") && mode.ends_with(&format!("fix: chmod 600 {path}")),
        "{mode}"
    );
}

#[test]
fn doctor_without_a_config_still_reports_the_host() {
    let (code, lines, _) = doctor(&["--no-self-test"]);
    assert_consistent(code, &lines);
    line_of(&lines, "seccomp");
    line_of(&lines, "landlock");
    assert!(lines.iter().all(|l| parse(l).1 != "self-test"), "{lines:?}");
}

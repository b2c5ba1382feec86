//! `aitbc-miner doctor` on this host, run as the real binary: every line is
//! `ok|warn|FAIL|skip  <check>: <finding>[ — fix: ...]`, every non-ok line says how to fix it,
//! every check of the issue has its line, the Coordinator line reflects a real heartbeat (to a
//! closed port, to a real in-process Coordinator with a good key, a bad key, a client key and a
//! taken MINER_ID), the self-test's known-answer job matches through a real confined worker,
//! and the exit status is 1 exactly when a line says FAIL. The known answer itself is checked
//! against the CPU chain with several thread counts and a plain scalar loop.
//!
//! These tests must never depend on what this host lacks: where a check depends on the host
//! (a GPU, working namespaces) they say `SKIP: reason` on stderr instead of asserting.

use std::io::Write;
use std::process::Command;

use aitbc_coordinator::Scope;
use aitbc_supervisor::doctor::self_test::{KNOWN_PARAMS, KNOWN_SHA};

use crate::common::{reachable_tempdir, test_config, TestCoordinator, RUN_AS};
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
        matches!(status, "ok" | "warn" | "FAIL" | "skip"),
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

/// The exit status is 1 exactly when a line says FAIL, and every line that is not ok says how
/// to fix it.
fn assert_consistent(code: i32, lines: &[String]) {
    assert!(!lines.is_empty(), "doctor printed nothing");
    for l in lines {
        let (status, _, finding) = parse(l);
        assert!(
            status == "ok" || finding.contains(" — fix: "),
            "a {status} line without a fix: {l}"
        );
    }
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
        "config owner",
        "user",
        "state dir",
        "state dir spool",
        "work dir",
        "coordinator",
        "clock offset",
        "clock sync",
        "no_new_privs",
        "capabilities",
        "seccomp",
        "landlock",
        "user namespace",
        "net namespace",
        "mount namespace",
        "cgroup",
        "swap accounting",
        "gpu",
        "self-test",
        "self-test gpu",
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
    // The known-answer job ran through a real confined worker and matched, wherever the
    // confinement lines say a worker can confine itself here.
    let self_test = line_of(&lines, "self-test");
    let confinable = ["seccomp", "user namespace", "net namespace"]
        .iter()
        .all(|c| line_of(&lines, c).starts_with("ok"));
    if confinable {
        assert!(
            self_test.starts_with(&format!(
                "ok    self-test: a confined CPU worker ran torch_bench n=64 iters=2 seed=42; \
                 its hash matches the known answer {}…",
                &KNOWN_SHA[..16]
            )),
            "{self_test}"
        );
    } else {
        skip(&format!("no confined worker on this host: {self_test}"));
    }
    assert!(!self_test.contains("not the known answer"), "{self_test}");
    let all = lines.join("\n");
    assert!(
        !all.contains(SECRET) && !stderr.contains(SECRET),
        "the API key leaked"
    );
}

fn skip(reason: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {reason}");
}

/// A host without a GPU and without a Coordinator (the config points at a closed port): exit
/// 1, every non-ok line with its fix, the coordinator line a FAIL naming the URL, the GPU lines
/// saying there is no GPU and never FAIL.
#[test]
fn without_gpu_or_coordinator_every_line_says_what_is_wrong_and_how_to_fix_it() {
    let dir = reachable_tempdir();
    let text = valid_config(dir.path());
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("COORD_URL="))
        .expect("valid_config sets COORD_URL")
        .to_owned();
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let path = config.to_str().expect("temp paths are UTF-8");
    let (code, lines, _) = doctor(&["--config", path, "--no-self-test"]);
    assert_consistent(code, &lines);
    assert_eq!(code, 1, "no Coordinator is a FAIL");
    let coordinator = line_of(&lines, "coordinator");
    assert!(
        coordinator.starts_with(&format!("FAIL  coordinator: cannot reach {url}: ")),
        "{coordinator}"
    );
    assert!(coordinator.contains("Connection refused"), "{coordinator}");
    assert!(
        coordinator.contains("fix: check COORD_URL"),
        "{coordinator}"
    );
    let offset = line_of(&lines, "clock offset");
    assert!(
        offset.starts_with("skip  clock offset: not compared"),
        "{offset}"
    );
    if aitbc_supervisor::gpu::detect().usable().is_ok() {
        skip("this host has a usable GPU: the no-GPU lines cannot be checked");
        return;
    }
    for check in ["gpu", "libcuda", "libcublas"] {
        assert!(!line_of(&lines, check).starts_with("FAIL"), "{lines:?}");
    }
    let gpu = line_of(&lines, "gpu");
    assert!(
        gpu.starts_with("skip  gpu: no NVIDIA GPU driver on this host")
            || gpu.starts_with("warn  gpu: the NVIDIA driver is installed but"),
        "{gpu}"
    );
    assert!(
        line_of(&lines, "libcuda").contains("no GPU, and "),
        "{lines:?}"
    );
}

/// Runs doctor (no self-test) against `url` with `key` and `miner_id`; returns the lines.
async fn doctor_against(url: &str, key: &str, miner_id: &str) -> (i32, Vec<String>) {
    let dir = reachable_tempdir();
    let mut text: String = valid_config(dir.path())
        .lines()
        .filter(|l| {
            !["COORD_URL=", "API_KEY=", "MINER_ID="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    text.push_str(&format!(
        "COORD_URL={url}\nAPI_KEY=\"{key}\"\nMINER_ID={miner_id}\n"
    ));
    let config = write_config(dir.path(), "miner.conf", &text, 0o600);
    let path = config.to_str().expect("temp paths are UTF-8").to_owned();
    let (code, lines, stderr) =
        tokio::task::spawn_blocking(move || doctor(&["--config", &path, "--no-self-test"]))
            .await
            .expect("doctor thread");
    assert!(
        !lines.join("\n").contains(key) && !stderr.contains(key),
        "the API key leaked"
    );
    assert_consistent(code, &lines);
    (code, lines)
}

/// A real Coordinator: the miner key is accepted (ok, clock compared), a key it does not know
/// is 401, a client key lacks the miner scope (403 FORBIDDEN), and a MINER_ID registered by
/// another key is 403 MINER_ID_TAKEN, each a FAIL with its fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_real_coordinator_the_key_is_accepted_or_refused_with_the_reason() {
    let coord = TestCoordinator::start(test_config()).await;

    let (_, lines) = doctor_against(&coord.url, &coord.miner_key, "rig-doctor").await;
    let ok = line_of(&lines, "coordinator");
    assert!(
        ok.starts_with(&format!(
            "ok    coordinator: {} accepted the key and a heartbeat for MINER_ID=rig-doctor (wallet wallet_cli_test) in ",
            coord.url
        )),
        "{ok}"
    );
    // Same host, same clock: the offset is the measurement's noise.
    let offset = line_of(&lines, "clock offset");
    assert!(
        offset.starts_with("ok    clock offset: ")
            && offset.contains("from the heartbeat's server_time"),
        "{offset}"
    );

    let bad = format!("aitbc_{}", "0".repeat(64));
    let (code, lines) = doctor_against(&coord.url, &bad, "rig-doctor").await;
    assert_eq!(code, 1);
    let refused = line_of(&lines, "coordinator");
    assert!(
        refused.starts_with("FAIL  coordinator: API_KEY rejected: ")
            && refused.contains(" answered 401 UNAUTHORIZED: ")
            && refused.contains("fix: set API_KEY to a miner key"),
        "{refused}"
    );
    // A refusal still carries the Date header: the clocks are compared anyway.
    let offset = line_of(&lines, "clock offset");
    assert!(
        offset.starts_with("ok    clock offset: ")
            && offset.contains("from the answer's Date header"),
        "{offset}"
    );

    let (_, lines) = doctor_against(&coord.url, &coord.client_key, "rig-doctor-2").await;
    let scope = line_of(&lines, "coordinator");
    assert!(
        scope.starts_with("FAIL  coordinator: API_KEY is known but lacks the miner scope: ")
            && scope.contains("403 FORBIDDEN"),
        "{scope}"
    );

    let other = coord.new_key(Scope::Miner);
    let (_, lines) = doctor_against(&coord.url, &other, "rig-doctor").await;
    let taken = line_of(&lines, "coordinator");
    assert!(
        taken.starts_with("FAIL  coordinator: MINER_ID=rig-doctor belongs to another key: ")
            && taken.contains("403 MINER_ID_TAKEN"),
        "{taken}"
    );
    coord.stop().await;
}

/// The known answer is what the CPU chain computes with any thread count, and what protocol's
/// plain-loops reference computes: exact integers, nothing depends on SIMD or threads.
#[test]
fn the_known_answer_is_what_any_thread_count_and_a_scalar_loop_compute() {
    use aitbc_protocol::workload::torch_bench::{commit, reference_output};
    use aitbc_worker::workload::torch_bench;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for threads in 1..=4 {
        let run = torch_bench::run_cpu(&KNOWN_PARAMS, threads).expect("the CPU chain runs");
        assert_eq!(hex(&run.output_sha), KNOWN_SHA, "{threads} thread(s)");
        assert_eq!(run.output_len, u64::from(KNOWN_PARAMS.n).pow(2));
    }
    let n = KNOWN_PARAMS.n as usize;
    let c = commit(&reference_output(&KNOWN_PARAMS), n).expect("a whole matrix");
    assert_eq!(hex(&c.output_sha), KNOWN_SHA);
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
fn without_a_config_file_or_environment_the_config_line_says_how_to_write_one() {
    let (code, lines, _) = doctor(&["--no-self-test", "--offline"]);
    assert_consistent(code, &lines);
    if std::path::Path::new(aitbc_supervisor::config::DEFAULT_PATH).exists() {
        skip("this host has /etc/aitbc/miner.conf");
        return;
    }
    let config = line_of(&lines, "config");
    assert!(
        config.starts_with("FAIL  config: no config file (/etc/aitbc/miner.conf is absent): required key COORD_URL is not set")
            && config.contains("fix: aitbc-miner example-config > /etc/aitbc/miner.conf"),
        "{config}"
    );
    assert!(
        lines.iter().all(|l| parse(l).1 != "coordinator"),
        "--offline sends no heartbeat"
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

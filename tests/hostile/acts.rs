//! One test per hostile act (`aitbc_worker::hostile::Act`): each starts its own Coordinator and
//! `aitbc-miner run`, submits the act as a job, and checks the precise failure, that the
//! attacked thing is intact, and the rig's shared containment checks (`Rig::assert_contained`).
//!
//! An act that escapes makes its job complete; the rig then fails the test with the worker's
//! own `ESCAPED` line, which says exactly what got out.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aitbc_protocol::api::FailReason;
use aitbc_worker::hostile::{write_targets, Act, PROBE};
use serde_json::json;

use crate::rig::{Outcome, Rig, Setup, EXCLUSIVE};

const WITHIN: Duration = Duration::from_secs(30);

/// Asserts the miner's reason and that the message names each of `needles`.
fn expect(o: &Outcome, reason: FailReason, needles: &[&str]) {
    eprintln!("hostile: {:?}: {}", o.reason, o.message);
    assert_eq!(
        o.reason, reason,
        "job {} ended {:?}: {}",
        o.job.id, o.reason, o.message
    );
    for n in needles {
        assert!(
            o.message.contains(n),
            "the fail message does not name {n:?}: {}",
            o.message
        );
    }
}

/// For the acts only a cgroup contains (memory past ram_mb, a pids limit): false, after a
/// visible skip line, when the miner's workers get no cgroup because it runs without root or
/// delegation. A root miner whose workers have none is not skipped: that is a failure.
async fn workers_have_cgroups(rig: &mut Rig, why: &str) -> bool {
    if crate::rig::is_root() || !rig.idle_worker().await.cgroups.is_empty() {
        return true;
    }
    crate::rig::skipped(
        rig.name,
        &format!("needs root or a delegated cgroup: {why}"),
    );
    false
}

/// Runs `act` against the rig's own supervisor on a fresh rig and applies the shared checks.
async fn contained_supervisor(name: &'static str, act: Act, needles: &[&str]) -> (Rig, Outcome) {
    let mut rig = Rig::start(name, Setup::default()).await;
    let o = rig.attack_supervisor(act, WITHIN).await;
    expect(&o, FailReason::SandboxViolation, needles);
    rig.assert_contained(&o).await;
    (rig, o)
}

/// Runs `act` on a fresh rig and applies the shared checks; returns the rig and outcome for
/// act-specific ones.
async fn contained(
    name: &'static str,
    act: Act,
    arg: u16,
    limits: serde_json::Value,
    reason: FailReason,
    needles: &[&str],
) -> (Rig, Outcome) {
    let mut rig = Rig::start(name, Setup::default()).await;
    let o = rig.attack(act, arg, limits, WITHIN).await;
    expect(&o, reason, needles);
    rig.assert_contained(&o).await;
    (rig, o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_to_loopback_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    contained(
        "tcp",
        Act::TcpConnect,
        port,
        json!({}),
        FailReason::SandboxViolation,
        &["TCP connect to 127.0.0.1"],
    )
    .await;
    match listener.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the listener on port {port} was reached: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_datagram_to_loopback_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_nonblocking(true).expect("nonblocking");
    let port = sock.local_addr().expect("address").port();
    contained(
        "udp",
        Act::UdpSend,
        port,
        json!({}),
        FailReason::SandboxViolation,
        &["UDP"],
    )
    .await;
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a datagram reached port {port}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_shell_is_killed_by_seccomp_naming_execve() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "exec",
        Act::ExecShell,
        0,
        json!({}),
        FailReason::SandboxViolation,
        &["execve"],
    )
    .await;
}

/// Every place the write act aims at, plus any probe anywhere under the rig's root.
fn probes_present(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = write_targets(&root.join("work").join("job"))
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if e.file_name() == PROBE && !found.contains(&p) {
                found.push(p);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_job_dir_are_refused() {
    let _shared = EXCLUSIVE.read().await;
    let mut rig = Rig::start("write", Setup::default()).await;
    // Left over by an earlier run that escaped (outside this rig's own root)? Start clean.
    for p in write_targets(&rig.root.path().join("work").join("job")) {
        if !p.starts_with(rig.root.path()) {
            let _ = std::fs::remove_file(&p);
        }
    }
    let o = rig.attack(Act::WriteOutside, 0, json!({}), WITHIN).await;
    let present = probes_present(rig.root.path());
    for p in &present {
        if !p.starts_with(rig.root.path()) {
            let _ = std::fs::remove_file(p);
        }
    }
    assert!(
        present.is_empty(),
        "files written outside the job dir: {present:?}"
    );
    expect(
        &o,
        FailReason::SandboxViolation,
        &["writing outside the job dir"],
    );
    let config = std::fs::read_to_string(&rig.config).expect("read miner.conf");
    assert_eq!(config, rig.config_text, "miner.conf changed");
    rig.assert_contained(&o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_holding_the_api_key_cannot_be_read() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "config",
        Act::ReadConfig,
        0,
        json!({}),
        FailReason::SandboxViolation,
        // Under the mount view the file is not even visible: the message then says so.
        &["reading the miner config"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptrace_of_the_supervisor_is_killed_by_seccomp() {
    let _shared = EXCLUSIVE.read().await;
    contained_supervisor("ptrace", Act::PtraceParent, &["ptrace"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_cannot_be_signalled() {
    let _shared = EXCLUSIVE.read().await;
    // assert_contained checks the supervisor is alive and still works.
    contained_supervisor("kill", Act::KillParent, &["kill("]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisors_memory_file_cannot_be_opened() {
    let _shared = EXCLUSIVE.read().await;
    contained_supervisor("procmem", Act::ParentMemFile, &["/mem"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_vm_readv_on_the_supervisor_is_killed_by_seccomp() {
    let _shared = EXCLUSIVE.read().await;
    contained_supervisor("vmread", Act::ParentMemRead, &["process_vm_readv"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisors_environment_cannot_be_read() {
    let _shared = EXCLUSIVE.read().await;
    // The miner's environment holds API_KEY and a canary; assert_contained checks neither
    // reaches a fail message or the log.
    contained_supervisor("environ", Act::ParentEnviron, &["/environ"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisors_descriptors_cannot_be_listed() {
    let _shared = EXCLUSIVE.read().await;
    contained_supervisor("fds", Act::ParentFds, &["/fd"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_refused_and_leaves_nothing_behind() {
    let _alone = EXCLUSIVE.write().await;
    contained(
        "forkbomb",
        Act::ForkBomb,
        0,
        json!({}),
        FailReason::SandboxViolation,
        &["fork"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_bomb_hits_a_limit_and_leaves_nothing_behind() {
    let _alone = EXCLUSIVE.write().await;
    let mut rig = Rig::start("threadbomb", Setup::default()).await;
    if !workers_have_cgroups(&mut rig, "the pids limit is the worker's cgroup").await {
        return;
    }
    let o = rig.attack(Act::ThreadBomb, 0, json!({}), WITHIN).await;
    expect(&o, FailReason::SandboxViolation, &["thread"]);
    rig.assert_contained(&o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocating_past_ram_mb_is_out_of_memory() {
    let _shared = EXCLUSIVE.read().await;
    let mut rig = Rig::start("alloc", Setup::default()).await;
    if !workers_have_cgroups(&mut rig, "ram_mb is the worker cgroup's memory limit").await {
        return;
    }
    let o = rig
        .attack(Act::AllocPastRam, 0, json!({"ram_mb": 64}), WITHIN)
        .await;
    expect(&o, FailReason::OutOfMemory, &[]);
    rig.assert_contained(&o).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_past_cpu_time_s_is_timed_out() {
    let _shared = EXCLUSIVE.read().await;
    let t0 = std::time::Instant::now();
    contained(
        "spin",
        Act::Spin,
        0,
        json!({"cpu_time_s": 1, "max_runtime_s": 60}),
        FailReason::TimedOut,
        &["cpu_time_s"],
    )
    .await;
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_past_max_runtime_s_is_timed_out() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "sleep",
        Act::Sleep,
        0,
        json!({"max_runtime_s": 1, "cpu_time_s": 60}),
        FailReason::TimedOut,
        &["max_runtime_s"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_is_a_crash_naming_sigsegv() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "segv",
        Act::Segfault,
        0,
        json!({}),
        FailReason::WorkerCrashed,
        &["SIGSEGV"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_is_a_crash_naming_sigabrt() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "abort",
        Act::Abort,
        0,
        json!({}),
        FailReason::WorkerCrashed,
        &["SIGABRT"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_file_past_the_file_size_limit_is_refused() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "bigfile",
        Act::FileTooBig,
        0,
        json!({}),
        FailReason::SandboxViolation,
        &["File too large"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filling_the_disk_is_stopped() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "filldisk",
        Act::FillDisk,
        0,
        json!({}),
        FailReason::SandboxViolation,
        &["filling the disk"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_cannot_be_opened() {
    let _shared = EXCLUSIVE.read().await;
    contained(
        "devices",
        Act::OpenDevices,
        0,
        json!({}),
        FailReason::SandboxViolation,
        &["opening devices"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_miner_puts_each_worker_in_its_own_cgroup() {
    const NAME: &str = "cgroup";
    let _shared = EXCLUSIVE.read().await;
    if !crate::rig::is_root() {
        crate::rig::skipped(
            NAME,
            "needs root (the per-worker cgroups of a root-started miner)",
        );
        return;
    }
    let mut rig = Rig::start(NAME, Setup::default()).await;
    let idle = rig.idle_worker().await;
    let has = |controller: &str| {
        idle.cgroups.iter().any(|d| {
            d.components()
                .any(|c| c.as_os_str().to_string_lossy().contains(controller))
        })
    };
    assert!(
        !idle.cgroups.is_empty() && (has("memory") || has("unified") || idle.cgroups.len() == 1),
        "worker {} shares every cgroup with the supervisor (no memory, pids or CPU limit can \
         apply to it); its cgroups: {:?}\nlog:\n{}",
        idle.pid,
        idle.cgroups,
        rig.log_tail()
    );
}

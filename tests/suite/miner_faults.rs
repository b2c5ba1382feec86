//! The miner under faults, with real processes and the real Coordinator: a worker killed
//! mid-job, the miner itself killed mid-job, a Coordinator outage and restart, workers that
//! break the wire protocol, jobs over the operator's caps, jobs that run past their deadline,
//! and the shutdown drain. Every wait is for an event or a state, with a deadline.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aitbc_coordinator::{Coordinator, CoordinatorConfig, Scope};
use aitbc_protocol::api::{FailReason, JobState};
use aitbc_protocol::wire::{encode, FromWorker, Hello, WIRE_VERSION};
use aitbc_supervisor::{Event, WorkerCommand};
use serde_json::json;

use crate::common::{reachable_tempdir, running, test_config, wait_for, TestCoordinator, RUN_AS};
use crate::miner_e2e::{counted_worker, miner_config, real_worker, settled, worker_pids, Miner};

/// User + system CPU ticks a process has used.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command name: state is field 3, utime 14, stime 15 (1-based).
    let f = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(14) + f(15)
}

/// Direct children of `pid` (all threads).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out
}

pub(crate) fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_reported_crashed_and_the_slot_recovers() {
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let (worker, pids) = counted_worker(dir.path());
    let config = miner_config(
        &c.url,
        &c.miner_key,
        "crash-miner",
        "w_crash",
        dir.path(),
        1,
    );
    let mut miner = Miner::start(config, worker);
    // 134 Gop on one thread (about 0.5 s in a test build with the VNNI kernel, a few seconds
    // with AVX2): long enough to be killed mid-way, short enough to complete on the retry.
    let long = c
        .submit(json!({"workload": "torch_bench", "reward": 5, "params": {"n": 512, "iters": 500}}))
        .await;
    miner
        .wait_event(
            "the long job to start",
            Duration::from_secs(10),
            |e| matches!(e, Event::JobStarted { id, .. } if *id == long.id),
        )
        .await;
    // The slot's only worker is the one running the job; kill it once it is computing.
    let pid = wait_for("the worker to compute", Duration::from_secs(10), || async {
        worker_pids(&pids)
            .into_iter()
            .find(|&p| running(p) && cpu_ticks(p) >= 5)
    })
    .await;
    sigkill(pid);
    let (_, reason, message) = miner
        .wait_failure("the crash report", Duration::from_secs(10), Some(&long.id))
        .await;
    assert_eq!(reason, FailReason::WorkerCrashed);
    assert!(message.contains("SIGKILL"), "{message}");
    assert!(!running(pid));
    let failure = wait_for(
        "the Coordinator to record the crash",
        Duration::from_secs(10),
        || async { c.job(&long.id).await.failure },
    )
    .await;
    assert_eq!(
        (failure.reason, failure.attempt),
        (FailReason::WorkerCrashed, 1)
    );

    // The same slot carries on: the requeued job and a new one both complete.
    let next = c.submit_small(1).await;
    for id in [&long.id, &next.id] {
        let v = settled(&c, id, Duration::from_secs(30)).await;
        assert_eq!(v.state, JobState::Completed, "{v:?}");
    }
    assert_eq!(c.job(&long.id).await.attempt, 2);
    assert_eq!(c.balance("w_crash").await, (6, 2));
    let summary = miner.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (2, 1));
    // No worker outlives the miner.
    for p in worker_pids(&pids) {
        assert!(!running(p), "worker {p} still running");
    }
}

/// Writes a miner config file for the real binary.
pub(crate) fn config_file(
    dir: &Path,
    url: &str,
    key: &str,
    miner_id: &str,
    wallet: &str,
) -> std::path::PathBuf {
    let path = dir.join("miner.conf");
    let text = format!(
        "COORD_URL={url}\nWALLET_ADDR={wallet}\nAPI_KEY={key}\nMINER_ID={miner_id}\n\
         WORK_DIR={work}\nSTATE_DIR={state}\nHEARTBEAT_SECS=0.1\nJOB_POLL_SECS=0.02\n\
         POLL_WAIT_SECS=1\nMAX_CONCURRENCY=1\nACCEL_MODE=cpu\nBACKOFF_MIN_SECS=0.02\n\
         BACKOFF_MAX_SECS=0.3\nDRAIN_GRACE_SECS=2\nTHREADS_PER_JOB=1\nLOG_LEVEL=trace\n\
         RUN_AS_USER={RUN_AS}\n",
        work = dir.join("work").display(),
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

pub(crate) fn spawn_miner(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_aitbc-miner"))
        .arg("run")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start aitbc-miner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_killed_mid_job_loses_the_lease_and_another_miner_completes_it_once() {
    let c = TestCoordinator::start(CoordinatorConfig {
        lease_margin: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    let dir_a = reachable_tempdir();
    let conf = config_file(dir_a.path(), &c.url, &c.miner_key, "miner-a", "wallet_a");
    let log = dir_a.path().join("miner-a.log");
    let mut a = spawn_miner(&conf, &log);
    let job = c
        .submit(json!({"workload": "torch_bench", "reward": 7,
            "params": {"n": 512, "iters": 500}, "limits": {"max_runtime_s": 8}}))
        .await;
    let apid = i32::try_from(a.id()).unwrap();
    // Wait until miner A holds the job and its worker computes it, then kill A outright.
    let worker = wait_for(
        "miner A's worker to compute the job",
        Duration::from_secs(20),
        || async {
            let v = c.job(&job.id).await;
            if v.state != JobState::Assigned {
                return None;
            }
            children(apid).into_iter().find(|&p| cpu_ticks(p) >= 5)
        },
    )
    .await;
    sigkill(apid);
    a.wait().unwrap();
    // The worker dies with its supervisor (parent-death signal), it is not left computing.
    wait_for(
        "A's worker to die with A",
        Duration::from_secs(5),
        || async { (!running(worker)).then_some(()) },
    )
    .await;
    assert_eq!(c.job(&job.id).await.miner_id.as_deref(), Some("miner-a"));
    // Its log (at LOG_LEVEL=trace, HTTP client internals included) never shows the API key.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("job started"), "{log_text}");
    assert!(
        !log_text.contains(&c.miner_key),
        "the API key leaked into the log"
    );

    // Miner B (another miner_id, another key) gets it once A's lease has expired.
    let key_b = c.new_key(Scope::Miner);
    let dir_b = reachable_tempdir();
    let b = Miner::start(
        miner_config(&c.url, &key_b, "miner-b", "wallet_b", dir_b.path(), 1),
        real_worker(),
    );
    let v = settled(&c, &job.id, Duration::from_secs(40)).await;
    assert_eq!(
        v.state,
        JobState::Completed,
        "{v:?}; miner A log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(v.attempt, 2);
    assert_eq!(v.proof.unwrap().miner_id.as_deref(), Some("miner-b"));
    assert_eq!(c.balance("wallet_b").await, (7, 1));
    assert_eq!(c.balance("wallet_a").await, (0, 0));
    let summary = b.stop().await;
    assert_eq!(summary.jobs_done, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_survive_a_coordinator_restart_and_are_credited_once() {
    let dir = reachable_tempdir();
    let db = dir.path().join("coordinator.db");
    let coord = Coordinator::open(&db, test_config()).unwrap();
    let miner_key = coord.add_key(Scope::Miner, "m").unwrap();
    let client_key = coord.add_key(Scope::Client, "c").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}");
    let (stop1, stopped1) = tokio::sync::oneshot::channel::<()>();
    let server1 = tokio::spawn(coord.clone().serve(listener, async move {
        let _ = stopped1.await;
    }));

    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for seed in 0..8u64 {
        let r = http
            .post(format!("{url}/v1/client/jobs"))
            .bearer_auth(&client_key)
            .json(&json!({"workload": "torch_bench", "reward": 3,
                "params": {"n": 384, "iters": 200, "seed": seed}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mdir = reachable_tempdir();
    let config = miner_config(
        &url,
        &miner_key,
        "restart-miner",
        "w_restart",
        mdir.path(),
        2,
    );
    let spool = config.state_dir.join("spool");
    let mut miner = Miner::start(config, real_worker());
    miner
        .wait_event("a first accepted proof", Duration::from_secs(30), |e| {
            matches!(e, Event::ProofAccepted { .. })
        })
        .await;
    // Outage: the Coordinator goes away while jobs run, and comes back on the same database
    // and port a few hundred milliseconds later.
    let _ = stop1.send(());
    server1.await.unwrap().unwrap();
    drop(coord);
    let outage = std::time::Instant::now();
    // A job finishes while the Coordinator is away, so its proof must wait in the spool.
    // (Each job takes long enough that jobs are still running when the first proof is in.)
    miner.drain_now();
    let pending = |m: &Miner| {
        m.count(|e| matches!(e, Event::JobDone { .. }))
            - m.count(|e| matches!(e, Event::ProofAccepted { .. }))
    };
    if pending(&miner) == 0 {
        assert!(
            miner.count(|e| matches!(e, Event::JobDone { .. })) < ids.len(),
            "every job finished before the outage began; the jobs are too small for this test"
        );
        miner
            .wait_event(
                "a job to finish during the outage",
                Duration::from_secs(30),
                |e| matches!(e, Event::JobDone { .. }),
            )
            .await;
    }
    assert!(pending(&miner) >= 1);
    // The outage lasts a few hundred milliseconds (this is the scenario, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(outage.elapsed())).await;
    let coord2 = Coordinator::open(&db, test_config()).unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
    let server2 = tokio::spawn(coord2.clone().serve(listener, async move {
        let _ = stopped2.await;
    }));

    while miner.count(|e| matches!(e, Event::ProofAccepted { .. })) < ids.len() {
        miner
            .wait_event("every proof to arrive", Duration::from_secs(60), |e| {
                matches!(e, Event::ProofAccepted { .. })
            })
            .await;
    }
    let r = http
        .get(format!("{url}/v1/wallet/ledger?wallet=w_restart&limit=100"))
        .send()
        .await
        .unwrap();
    let ledger: Vec<serde_json::Value> = r.json().await.unwrap();
    let mut credited: Vec<String> = ledger
        .iter()
        .filter(|e| e["kind"] == "credit")
        .map(|e| e["job_id"].as_str().unwrap().to_owned())
        .collect();
    credited.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(credited, want, "each job credited exactly once");
    assert_eq!(miner.count(|e| matches!(e, Event::ProofRejected { .. })), 0);
    let summary = miner.stop().await;
    assert_eq!(summary.jobs_done as usize, ids.len());
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    let _ = stop2.send(());
    server2.await.unwrap().unwrap();
}

/// A fake worker (bash): a valid Hello, then on the Run frame, by attempt: an oversized frame
/// header, then a malformed payload, then an out-of-order second Hello.
fn lying_worker(dir: &Path) -> WorkerCommand {
    let hello = encode(&FromWorker::Hello(Hello {
        version: WIRE_VERSION,
        pid: 1,
        kind: aitbc_protocol::api::Mode::Cpu,
        sandbox: "none (a fake worker)".into(),
    }))
    .unwrap();
    let hello_path = dir.join("hello.bin");
    std::fs::write(&hello_path, hello).unwrap();
    let counter = dir.join("runs");
    let script = dir.join("lying-worker.sh");
    std::fs::write(
        &script,
        format!(
            r#"cat '{hello}' >&3
head -c 4 <&3 >/dev/null || exit 0
echo x >> '{counter}'
case $(wc -l < '{counter}') in
  1) printf '\xff\xff\xff\x7f' >&3 ;;
  2) printf '\x05\x00\x00\x00\xff\xff\xff\xff\xff' >&3 ;;
  *) cat '{hello}' >&3 ;;
esac
sleep 30
"#,
            hello = hello_path.display(),
            counter = counter.display()
        ),
    )
    .unwrap();
    WorkerCommand::new("/bin/bash", [script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_break_the_protocol_are_reported_and_the_miner_carries_on() {
    let c = TestCoordinator::start(test_config()).await; // 3 attempts
    let dir = reachable_tempdir();
    let config = miner_config(
        &c.url,
        &c.miner_key,
        "proto-miner",
        "w_proto",
        dir.path(),
        1,
    );
    let mut miner = Miner::start(config, lying_worker(dir.path()));
    let job = c.submit_small(1).await;
    let mut messages = Vec::new();
    for _ in 0..3 {
        let (id, reason, message) = miner
            .wait_failure("a protocol error", Duration::from_secs(20), None)
            .await;
        assert_eq!(
            (id.as_str(), reason),
            (job.id.as_str(), FailReason::ProtocolError),
            "{message}"
        );
        messages.push(message);
    }
    assert!(
        messages[0].contains("2147483647 bytes exceeds the maximum"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("malformed"), "{}", messages[1]);
    assert!(messages[2].contains("unexpected Hello"), "{}", messages[2]);
    let v = settled(&c, &job.id, Duration::from_secs(10)).await;
    assert_eq!(v.state, JobState::Failed);
    assert_eq!(v.failure.unwrap().reason, FailReason::AttemptsExhausted);
    assert_eq!(c.balance("w_proto").await, (0, 0));
    let summary = miner.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_the_operators_caps_is_refused_without_touching_a_worker() {
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let (worker, pids) = counted_worker(dir.path());
    let mut config = miner_config(&c.url, &c.miner_key, "caps-miner", "w_caps", dir.path(), 1);
    config.job_limits_max.ram_mb = 256;
    config.heartbeat = Duration::from_secs(600);
    let mut miner = Miner::start(config, worker);
    miner
        .wait_event("the first heartbeat", Duration::from_secs(10), |e| {
            matches!(e, Event::Heartbeat { ok: true })
        })
        .await;
    wait_for(
        "the slot's worker to be started",
        Duration::from_secs(10),
        || async { (worker_pids(&pids).len() == 1).then_some(()) },
    )
    .await;
    // A Coordinator that believes this miner takes anything (as an older Coordinator, or the
    // guide's, would): re-declare the miner with no limits. Its next own heartbeat is 10 min away.
    c.heartbeat(&c.miner_key, "caps-miner", "w_caps").await;
    let job = c
        .submit(json!({"workload": "torch_bench", "reward": 1,
            "params": {"n": 8, "iters": 1}, "limits": {"ram_mb": 512}}))
        .await;
    let (id, reason, message) = miner
        .wait_failure("the refusal", Duration::from_secs(10), None)
        .await;
    assert_eq!((id, reason), (job.id.clone(), FailReason::CapsRefused));
    assert_eq!(
        message,
        "limits.ram_mb = 512 exceeds this miner's MAX_JOB_RAM_MB = 256"
    );
    let failure = wait_for(
        "the refusal to be recorded",
        Duration::from_secs(10),
        || async { c.job(&job.id).await.failure },
    )
    .await;
    assert!(matches!(
        failure.reason,
        FailReason::CapsRefused | FailReason::AttemptsExhausted
    ));
    // No worker was started or consumed for it: still the one pre-started worker.
    assert_eq!(worker_pids(&pids).len(), 1);
    assert!(!miner
        .seen
        .iter()
        .any(|e| matches!(e, Event::JobDone { .. })));
    miner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_past_its_deadline_is_killed_and_a_shutdown_drain_gives_the_next_one_back() {
    let c = TestCoordinator::start(test_config()).await; // 3 attempts
    let dir = reachable_tempdir();
    let (worker, pids) = counted_worker(dir.path());
    let mut config = miner_config(&c.url, &c.miner_key, "slow-miner", "w_slow", dir.path(), 1);
    config.drain_grace = Duration::from_millis(200);
    let mut miner = Miner::start(config, worker);
    // Far more work than one second allows.
    let job = c
        .submit(json!({"workload": "torch_bench", "reward": 1,
            "params": {"n": 512, "iters": 100000}, "limits": {"max_runtime_s": 1}}))
        .await;
    let (_, reason, message) = miner
        .wait_failure("the timeout", Duration::from_secs(20), None)
        .await;
    assert_eq!(reason, FailReason::TimedOut, "{message}");
    let first = worker_pids(&pids)[0];
    assert!(!running(first), "the timed-out worker {first} is gone");
    let failure = wait_for(
        "the timeout to be recorded",
        Duration::from_secs(10),
        || async { c.job(&job.id).await.failure },
    )
    .await;
    assert_eq!(failure.reason, FailReason::TimedOut);

    // The job is retried (attempt 2); a shutdown now waits the 200 ms grace, then kills it and
    // gives it back as MINER_SHUTDOWN.
    miner
        .wait_event("the retry", Duration::from_secs(10), |e| {
            matches!(e, Event::JobStarted { .. })
        })
        .await;
    let summary = miner.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (0, 2));
    let v = c.job(&job.id).await;
    assert_eq!(v.state, JobState::Queued, "{v:?}");
    assert_eq!(v.failure.unwrap().reason, FailReason::MinerShutdown);
    for p in worker_pids(&pids) {
        assert!(!running(p), "worker {p} outlived the miner");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_left_in_the_spool_by_a_previous_run_are_delivered_at_start_and_credited_once() {
    use aitbc_protocol::api::{Metrics, Mode, Proof};
    use aitbc_protocol::workload::WorkloadSpec;
    use aitbc_supervisor::audit::{self, AuditSpool};
    use aitbc_supervisor::spool::{Entry, Spool};

    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let config = miner_config(
        &c.url,
        &c.miner_key,
        "spool-miner",
        "w_spool",
        dir.path(),
        1,
    );
    // A previous run of this miner took two jobs and spooled both proofs; it sent the first
    // (the Coordinator credited it, but the answer was lost) and crashed before sending the second.
    c.heartbeat(&c.miner_key, "spool-miner", "w_spool").await;
    let spool = Spool::open(&config.state_dir).unwrap();
    let audits = AuditSpool::open(&config.state_dir).unwrap();
    let mut entries = Vec::new();
    for reward in [4, 6] {
        c.submit_small(reward).await;
        let job = c
            .next(&c.miner_key, "spool-miner", 1.0)
            .await
            .expect("a job");
        let params = aitbc_protocol::workload::torch_bench::TorchBenchParams {
            n: 8,
            iters: 1,
            seed: 0,
        };
        let run = aitbc_worker::workload::torch_bench::run_cpu(&params, 1).unwrap();
        // As the previous run did: the audit entry first, then the proof.
        audits
            .write(&audit::Entry {
                meta: audit::Meta {
                    job_id: job.id.clone(),
                    attempt: job.attempt,
                    spec: WorkloadSpec::TorchBench(params),
                    merkle_root: aitbc_protocol::hex::encode(&run.merkle_root),
                    proved_at: aitbc_protocol::api::ts::now(),
                    challenge: None,
                },
                leaves: run.leaves.clone(),
            })
            .unwrap();
        let entry = Entry::proof(Proof {
            id: job.id.clone(),
            miner_id: Some("spool-miner".into()),
            attempt: Some(job.attempt),
            mode: Mode::Cpu,
            output_sha: run.output_sha.iter().map(|b| format!("{b:02x}")).collect(),
            merkle_root: Some(aitbc_protocol::hex::encode(&run.merkle_root)),
            output_len: Some(run.output_len),
            metrics: Metrics::default(),
            started_at: None,
            finished_at: None,
        });
        spool.write(&entry).unwrap();
        entries.push((job.id, entry));
    }
    let Entry::Proof {
        idempotency_key,
        body,
    } = &entries[0].1
    else {
        unreachable!()
    };
    let r = c
        .request(
            reqwest::Method::POST,
            "/v1/miner/proof",
            Some(&c.miner_key),
            Some(serde_json::to_vec(body).unwrap()),
            &[("Idempotency-Key", idempotency_key.as_str())],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let spool_dir = config.state_dir.join("spool");
    let mut miner = Miner::start(config, real_worker());
    while miner.count(|e| matches!(e, Event::ProofAccepted { .. })) < 2 {
        miner
            .wait_event("both spooled proofs", Duration::from_secs(20), |e| {
                matches!(e, Event::ProofAccepted { .. } | Event::ProofRejected { .. })
            })
            .await;
    }
    // Both were audited (a new miner's first proofs are); the resent first proof is a replay
    // whose ack carries the same audit, and the miner answers both from its audit spool.
    for (id, _) in &entries {
        let v = settled(&c, id, Duration::from_secs(20)).await;
        assert_eq!(v.state, JobState::Completed, "{v:?}");
        assert_eq!(
            v.verification.map(|x| x.status),
            Some(aitbc_protocol::api::VerificationStatus::Passed)
        );
    }
    assert_eq!(
        c.balance("w_spool").await,
        (10, 2),
        "each job credited exactly once"
    );
    assert_eq!(std::fs::read_dir(&spool_dir).unwrap().count(), 0);
    let audit_dir = audits.dir().to_owned();
    wait_for(
        "the audit entries to go",
        Duration::from_secs(10),
        || async { (std::fs::read_dir(&audit_dir).unwrap().count() == 0).then_some(()) },
    )
    .await;
    let summary = miner.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (0, 0));
}

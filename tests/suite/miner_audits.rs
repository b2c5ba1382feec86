//! The miner's side of verified work, against the real Coordinator with verification on
//! ([`test_config`]: a new miner's first proofs are always audited, held credits settle after
//! 200 ms): an audit asked of a miner that is then killed with SIGKILL before its answer gets
//! through is answered by the restarted miner from its audit spool, under the same
//! Idempotency-Key; open audits are found by polling after a restart and answered, and entries
//! no audit names are dropped; a full audit spool stops the miner taking jobs until entries go.
//!
//! To hold the miner between two steps, the miner talks to a second listener serving the same
//! Coordinator's own router behind a [`Gate`] (a middleware that answers chosen requests with
//! 503 `UNAVAILABLE`, as a Coordinator that is going down would, and counts them): nothing of
//! the Coordinator is faked. Every wait is for an event or a state, with a deadline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aitbc_protocol::api::{JobState, Proof, ProofAck, VerificationStatus};
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_protocol::workload::WorkloadSpec;
use aitbc_supervisor::audit::{self, AuditSpool};
use aitbc_supervisor::status::{self, Request};
use aitbc_supervisor::Event;
use serde_json::json;
use tokio::sync::watch;

use crate::common::{reachable_tempdir, test_config, wait_for, TestCoordinator};
use crate::miner_e2e::{miner_config, real_worker, settled, Miner};
use crate::miner_faults::{config_file, sigkill, spawn_miner};

/// Holds back the requests to one path (while `hold` is set), answering them 503, and
/// records the `Idempotency-Key` of every request to it.
struct Gate {
    path: &'static str,
    hold: AtomicBool,
    keys: Mutex<Vec<String>>,
    /// How many requests were held back so far.
    held: watch::Sender<usize>,
}

impl Gate {
    fn new(path: &'static str) -> Arc<Gate> {
        Arc::new(Gate {
            path,
            hold: AtomicBool::new(true),
            keys: Mutex::new(Vec::new()),
            held: watch::channel(0).0,
        })
    }

    /// Waits until at least `n` requests were held back.
    async fn wait_held(&self, n: usize, within: Duration) {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(within, rx.wait_for(|h| *h >= n))
            .await
            .unwrap_or_else(|_| panic!("no {n} held request(s) to {} in {within:?}", self.path))
            .expect("the gate lives");
    }

    fn open(&self) {
        self.hold.store(false, Ordering::SeqCst);
    }

    fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }
}

/// Serves `c`'s own router behind `gate` on another loopback port; its URL.
async fn gated(c: &TestCoordinator, gate: Arc<Gate>) -> String {
    use axum::extract::Request;
    use axum::middleware::Next;
    use axum::response::IntoResponse;
    let app = c
        .coordinator
        .router()
        .layer(axum::middleware::from_fn(move |req: Request, next: Next| {
            let gate = gate.clone();
            async move {
                if req.uri().path() == gate.path {
                    let key = req
                        .headers()
                        .get("Idempotency-Key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    gate.keys.lock().unwrap().push(key);
                    if gate.hold.load(Ordering::SeqCst) {
                        gate.held.send_modify(|n| *n += 1);
                        return (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [(axum::http::header::CONTENT_TYPE, "application/json")],
                            r#"{"error":{"code":"UNAVAILABLE","message":"held back by the test","details":{}}}"#,
                        )
                            .into_response();
                    }
                }
                next.run(req).await
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The audit entries in `state/audit`, decoded.
fn entries(state: &Path) -> Vec<audit::Entry> {
    let dir = state.join("audit");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "audit") {
            out.push(audit::Entry::decode(&std::fs::read(e.path()).unwrap()).unwrap());
        }
    }
    out
}

fn audit_files(state: &Path) -> usize {
    std::fs::read_dir(state.join("audit"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The first `Event::AuditAnswered` of `id`.
async fn answered(m: &mut Miner, id: &str) -> Option<aitbc_protocol::api::AuditVerdict> {
    match m
        .wait_event(
            "the audit's verdict",
            Duration::from_secs(30),
            |e| matches!(e, Event::AuditAnswered { id: j, .. } if j == id),
        )
        .await
    {
        Event::AuditAnswered { verdict, .. } => verdict,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_asked_before_a_sigkill_is_answered_after_the_restart() {
    let c = TestCoordinator::start(test_config()).await;
    let gate = Gate::new("/v1/miner/audit");
    let url = gated(&c, gate.clone()).await;
    let dir = reachable_tempdir();
    let conf = config_file(dir.path(), &url, &c.miner_key, "audit-miner", "w_audit");
    let state = dir.path().join("state");
    let mut first = spawn_miner(&conf, &dir.path().join("run1.log"));
    let job = c
        .submit(json!({"workload": "torch_bench", "reward": 9,
            "params": {"n": 64, "iters": 3, "seed": 7}}))
        .await;

    // The proof is in and audited; the miner stored the challenge, then tried to answer.
    gate.wait_held(1, Duration::from_secs(30)).await;
    let v = c.job(&job.id).await;
    assert_eq!(v.state, JobState::Verifying, "{v:?}");
    let verification = v.verification.expect("a verification");
    assert_eq!(verification.status, VerificationStatus::Challenged);
    let kept = entries(&state);
    assert_eq!(kept.len(), 1);
    let challenge = kept[0]
        .meta
        .challenge
        .clone()
        .expect("the challenge is on disk");
    assert_eq!(
        (challenge.id.as_str(), challenge.attempt),
        (job.id.as_str(), 1)
    );
    assert_eq!(challenge.rows, verification.audit_rows);
    assert_eq!(kept[0].leaves.len(), 64);

    sigkill(i32::try_from(first.id()).unwrap());
    first.wait().unwrap();
    assert_eq!(c.job(&job.id).await.state, JobState::Verifying);

    // Restarted (the Coordinator answers again), it answers from its audit spool.
    gate.open();
    let log2 = dir.path().join("run2.log");
    let mut second = spawn_miner(&conf, &log2);
    let v = settled(&c, &job.id, Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&log2).unwrap_or_default();
    assert_eq!(v.state, JobState::Completed, "{v:?}\nrun 2:\n{log}");
    assert_eq!(v.attempt, 1, "the audited attempt itself completed");
    assert_eq!(
        v.verification.map(|x| x.status),
        Some(VerificationStatus::Passed)
    );
    assert_eq!(c.balance("w_audit").await, (9, 1));
    // Every answer, before and after the kill, carried the key of (job, attempt 1): the last
    // one is a replay of whatever got through.
    let keys = gate.keys();
    assert!(keys.len() >= 2, "{keys:?}");
    let want = audit::idempotency_key(&job.id, 1);
    assert!(keys.iter().all(|k| *k == want), "{keys:?} != {want}");
    wait_for("the audit entry to go", Duration::from_secs(10), || async {
        (audit_files(&state) == 0).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(log.contains("audit passed"), "{log}");
    assert!(
        log.contains("audit entries left by a previous run"),
        "{log}"
    );
    sigkill(i32::try_from(second.id()).unwrap());
    second.wait().unwrap();
}

/// A previous run's proof of `job` (its real output) posted by hand, and its audit entry
/// written without the challenge (the run crashed after the ack, before storing it): the ack.
async fn proved_by_a_previous_run(
    c: &TestCoordinator,
    miner: &str,
    state: &Path,
) -> (String, ProofAck) {
    let job = c.next(&c.miner_key, miner, 1.0).await.expect("a job");
    let p = TorchBenchParams {
        n: 8,
        iters: 1,
        seed: 0,
    };
    let run = aitbc_worker::workload::torch_bench::run_cpu(&p, 1).unwrap();
    AuditSpool::open(state)
        .unwrap()
        .write(&audit::Entry {
            meta: audit::Meta {
                job_id: job.id.clone(),
                attempt: job.attempt,
                spec: WorkloadSpec::TorchBench(p),
                merkle_root: aitbc_protocol::hex::encode(&run.merkle_root),
                proved_at: aitbc_protocol::api::ts::now(),
                challenge: None,
            },
            leaves: run.leaves,
        })
        .unwrap();
    let proof = Proof {
        id: job.id.clone(),
        miner_id: Some(miner.into()),
        attempt: Some(job.attempt),
        mode: aitbc_protocol::api::Mode::Cpu,
        output_sha: aitbc_protocol::hex::encode(&run.output_sha),
        merkle_root: Some(aitbc_protocol::hex::encode(&run.merkle_root)),
        output_len: Some(run.output_len),
        metrics: Default::default(),
        started_at: None,
        finished_at: None,
    };
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&c.miner_key),
            &serde_json::to_value(&proof).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    (job.id, r.parse())
}

/// A stale entry: a job this Coordinator never had, its proof long answered.
fn stale_entry(state: &Path, job: &str, n: u32) -> PathBuf {
    let p = TorchBenchParams {
        n,
        iters: 1,
        seed: 0,
    };
    AuditSpool::open(state)
        .unwrap()
        .write(&audit::Entry {
            meta: audit::Meta {
                job_id: job.into(),
                attempt: 1,
                spec: WorkloadSpec::TorchBench(p),
                merkle_root: "00".repeat(32),
                proved_at: aitbc_protocol::api::ts::now(),
                challenge: None,
            },
            leaves: vec![[0; 32]; n as usize],
        })
        .unwrap()
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_audits_are_found_by_polling_after_a_restart_and_stale_entries_go() {
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let config = miner_config(&c.url, &c.miner_key, "poll-miner", "w_poll", dir.path(), 1);
    let state = config.state_dir.clone();
    c.heartbeat(&c.miner_key, "poll-miner", "w_poll").await;
    c.submit_small(5).await;
    let (id, ack) = proved_by_a_previous_run(&c, "poll-miner", &state).await;
    assert_eq!(ack.state, JobState::Verifying);
    assert!(
        ack.audit.is_some(),
        "a new miner's first proof is audited: {ack:?}"
    );
    let stale = stale_entry(&state, "gone-job", 8);

    let mut m = Miner::start(config, real_worker());
    assert_eq!(
        answered(&mut m, &id).await,
        Some(aitbc_protocol::api::AuditVerdict::Passed)
    );
    let v = settled(&c, &id, Duration::from_secs(10)).await;
    assert_eq!(v.state, JobState::Completed, "{v:?}");
    assert_eq!(c.balance("w_poll").await, (5, 1));
    wait_for("both entries to go", Duration::from_secs(10), || async {
        (audit_files(&state) == 0).then_some(())
    })
    .await;
    assert!(!stale.exists());
    let summary = m.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_spool_takes_no_job_until_entries_go() {
    let c = TestCoordinator::start(test_config()).await;
    // Proofs are held back: the two stale entries below wait for their proofs' answers.
    let gate = Gate::new("/v1/miner/proof");
    let url = gated(&c, gate.clone()).await;
    let dir = reachable_tempdir();
    let socket = dir.path().join("status.sock");
    let mut config = miner_config(&url, &c.miner_key, "full-miner", "w_full", dir.path(), 1);
    config.audit_spool_mb = 1;
    config.status_socket = Some(socket.clone());
    let state = config.state_dir.clone();
    // A previous run left two proved jobs of 16384 rows (512 KiB of leaves each) whose proofs
    // wait in the outbox: 1 MiB and more, the whole AUDIT_SPOOL_MB.
    let outbox = aitbc_supervisor::spool::Spool::open(&state).unwrap();
    for job in ["big-1", "big-2"] {
        stale_entry(&state, job, 16384);
        outbox
            .write(&aitbc_supervisor::spool::Entry::proof(Proof {
                id: job.into(),
                miner_id: Some("full-miner".into()),
                attempt: Some(1),
                mode: aitbc_protocol::api::Mode::Cpu,
                output_sha: "00".repeat(32),
                merkle_root: Some("00".repeat(32)),
                output_len: Some(16384 * 16384),
                metrics: Default::default(),
                started_at: None,
                finished_at: None,
            }))
            .unwrap();
    }
    let job = c.submit_small(3).await;
    let mut m = Miner::start(config, real_worker());
    let snapshot = |socket: PathBuf| async move {
        status::query(&socket, Request::Status, Duration::from_secs(5))
            .ok()
            .and_then(|j| serde_json::from_str::<status::Snapshot>(&j).ok())
    };
    // Full, and taking nothing: the proofs were tried (held), the miner heartbeats, the job
    // stays queued.
    gate.wait_held(2, Duration::from_secs(20)).await;
    let s = wait_for(
        "the status to show the full spool",
        Duration::from_secs(10),
        || {
            let socket = socket.clone();
            async move {
                snapshot(socket)
                    .await
                    .filter(|s| s.audits.full && s.heartbeat.ok == Some(true))
            }
        },
    )
    .await;
    assert_eq!(s.audits.entries, 2);
    assert!(s.audits.bytes >= 1 << 20, "{:?}", s.audits);
    assert_eq!(s.audits.limit_bytes, 1 << 20);
    let beats = s.heartbeat.last_ok_at;
    wait_for("another heartbeat", Duration::from_secs(10), || {
        let socket = socket.clone();
        async move {
            snapshot(socket)
                .await
                .filter(|s| s.heartbeat.last_ok_at > beats)
        }
    })
    .await;
    assert_eq!(c.job(&job.id).await.state, JobState::Queued);
    m.drain_now();
    assert_eq!(m.count(|e| matches!(e, Event::JobStarted { .. })), 0);

    // The proofs get their answers (404: the Coordinator never had those jobs): their entries
    // go, and the job is taken.
    gate.open();
    let v = settled(&c, &job.id, Duration::from_secs(30)).await;
    assert_eq!(v.state, JobState::Completed, "{v:?}");
    wait_for(
        "the stale entries to go",
        Duration::from_secs(10),
        || async { (audit_files(&state) == 0).then_some(()) },
    )
    .await;
    let s = snapshot(socket).await.expect("status");
    assert!(!s.audits.full);
    let summary = m.stop().await;
    assert_eq!(summary.jobs_done, 1);
}

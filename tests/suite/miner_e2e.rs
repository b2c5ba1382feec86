//! The miner end to end: the real supervisor (`aitbc_supervisor::run`, in-process so its
//! events can be read) against the real Coordinator over loopback HTTP, running every job in a
//! real `aitbc-miner worker` process. Also holds the miner helpers the fault suite shares.
//!
//! Nothing here fakes a part: the hashes are checked against an independent computation, the
//! credits against the Coordinator's ledger.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aitbc_protocol::api::{FailReason, JobState, JobView};
use aitbc_protocol::args::FsMode;
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_supervisor::config::{AccelMode, ApiKey, MaxLimits};
use aitbc_supervisor::{Config, Event, Summary, WorkerCommand};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::common::{reachable_tempdir, test_config, wait_for, TestCoordinator};

/// The real worker: this build's `aitbc-miner worker`.
pub(crate) fn real_worker() -> WorkerCommand {
    WorkerCommand::new(env!("CARGO_BIN_EXE_aitbc-miner"), ["worker"])
}

/// The real worker behind a bash wrapper that appends each worker's pid to `dir/pids` before
/// exec'ing it (same pid) with the supervisor's arguments (`--job-dir ...`), so a test can
/// count and find workers.
pub(crate) fn counted_worker(dir: &Path) -> (WorkerCommand, PathBuf) {
    let pids = dir.join("pids");
    let script = dir.join("counted-worker.sh");
    std::fs::write(
        &script,
        format!(
            "echo $$ >> '{}'\nexec '{}' worker \"$@\"\n",
            pids.display(),
            env!("CARGO_BIN_EXE_aitbc-miner")
        ),
    )
    .expect("write the wrapper script");
    let cmd = WorkerCommand::new("/bin/bash", [script]);
    (cmd, pids)
}

/// Pids a [`counted_worker`] recorded so far.
pub(crate) fn worker_pids(pids: &Path) -> Vec<i32> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A miner config with test-sized durations; state and scratch under `dir`.
pub(crate) fn miner_config(
    url: &str,
    key: &str,
    miner_id: &str,
    wallet: &str,
    dir: &Path,
    slots: u32,
) -> Config {
    Config {
        source: None,
        coord_url: url.to_owned(),
        wallet_addr: wallet.to_owned(),
        api_key: ApiKey::new(key),
        miner_id: miner_id.to_owned(),
        work_dir: dir.join("work"),
        state_dir: dir.join("state"),
        audit_spool_mb: 256,
        heartbeat: Duration::from_millis(100),
        job_poll: Duration::from_millis(20),
        poll_wait: Duration::from_secs(2),
        max_concurrency: slots,
        accel_mode: AccelMode::Cpu,
        log_file: None,
        log_level: "info".into(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        drain_grace: Duration::from_secs(5),
        job_limits_max: MaxLimits {
            ram_mb: 4096,
            runtime_s: 600,
            cpu_time_s: 3600,
            vram_mb: 0,
            disk_mb: 1024,
        },
        threads_per_job: 1,
        worker_exe: None,
        run_as_user: crate::common::RUN_AS.into(),
        sandbox_fs: FsMode::Auto,
        cpu_kernel: aitbc_protocol::args::CpuKernel::Auto,
        gpu_poll: Duration::from_millis(500),
        gpu_max_temp_c: 90,
        status_socket: None,
        metrics_file: None,
        metrics_interval: Duration::from_secs(15),
    }
}

/// A supervisor running in this process.
pub(crate) struct Miner {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub seen: Vec<Event>,
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<Summary, aitbc_supervisor::Error>>,
}

impl Miner {
    pub(crate) fn start(config: Config, worker: WorkerCommand) -> Miner {
        let (tx, events) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(aitbc_supervisor::run(
            config,
            worker,
            Some(tx),
            async move {
                let _ = stopped.await;
            },
        ));
        Miner {
            events,
            seen: Vec::new(),
            stop: Some(stop),
            handle,
        }
    }

    /// The next event matching `pred` (all events are kept in `seen`); panics after `within`.
    pub(crate) async fn wait_event(
        &mut self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Event {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("timed out waiting for {what}; events: {:#?}", self.seen)
                })
                .unwrap_or_else(|| panic!("the miner stopped while waiting for {what}"));
            self.seen.push(e.clone());
            if pred(&e) {
                return e;
            }
        }
    }

    /// The next `JobFailed` (of `job`, when given) as `(id, reason, message)`; panics after
    /// `within`.
    pub(crate) async fn wait_failure(
        &mut self,
        what: &str,
        within: Duration,
        job: Option<&str>,
    ) -> (String, FailReason, String) {
        let e = self
            .wait_event(
                what,
                within,
                |e| matches!(e, Event::JobFailed { id, .. } if job.is_none_or(|j| j == id)),
            )
            .await;
        match e {
            Event::JobFailed {
                id,
                reason,
                message,
            } => (id, reason, message),
            other => unreachable!("wait_event matched {other:?}"),
        }
    }

    /// Moves every event already sent into `seen`, without waiting.
    pub(crate) fn drain_now(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.seen.push(e);
        }
    }

    /// How many events seen so far match `pred`.
    pub(crate) fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e)).count()
    }

    /// SIGTERM-equivalent: resolves the shutdown future and waits for the drain.
    pub(crate) async fn stop(mut self) -> Summary {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the miner drains within 30 s")
            .expect("the miner task does not panic")
            .expect("run returns Ok")
    }
}

/// The job's final view once it is completed or failed.
pub(crate) async fn settled(c: &TestCoordinator, id: &str, within: Duration) -> JobView {
    wait_for(&format!("job {id} to finish"), within, || async {
        let v = c.job(id).await;
        v.state.is_final().then_some(v)
    })
    .await
}

fn expected_sha(p: &TorchBenchParams) -> String {
    let run = aitbc_worker::workload::torch_bench::run_cpu(p, 1).expect("the reference chain runs");
    run.output_sha.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_jobs_on_two_slots_are_proved_and_credited_once_each() {
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let wallet = "wallet_e2e";
    let config = miner_config(&c.url, &c.miner_key, "e2e-miner", wallet, dir.path(), 2);
    let spool = config.state_dir.join("spool");
    let mut miner = Miner::start(config, real_worker());
    miner
        .wait_event("the first heartbeat", Duration::from_secs(10), |e| {
            matches!(e, Event::Heartbeat { ok: true })
        })
        .await;

    // Two jobs at a time (one per slot), each pair once both slots are free, so pickup
    // measures the long-poll hand-off, not a queue: created_at -> the miner starting it.
    let mut jobs = Vec::new();
    let mut pickups = Vec::new();
    for pair in 0..10u64 {
        let mut ids = Vec::new();
        for k in 0..2u64 {
            let seed = pair * 2 + k;
            let params = TorchBenchParams {
                n: 32 + (seed as u32 % 3) * 16,
                iters: 5,
                seed,
            };
            let v = c
                .submit(json!({"workload": "torch_bench", "reward": 10 + seed,
                    "params": {"n": params.n, "iters": params.iters, "seed": params.seed}}))
                .await;
            ids.push(v.id.clone());
            jobs.push((v.id, params, 10 + seed));
        }
        for _ in 0..2 {
            let e = miner
                .wait_event(
                    "a job to start",
                    Duration::from_secs(20),
                    |e| matches!(e, Event::JobStarted { id, .. } if ids.contains(id)),
                )
                .await;
            if let Event::JobStarted {
                pickup: Some(p), ..
            } = e
            {
                pickups.push(p);
            }
        }
        // Both slots free again before the next pair (so pickup never includes queueing).
        while ids.iter().any(|id| {
            miner.count(|e| matches!(e, Event::ProofAccepted { id: i, .. } if i == id)) == 0
        }) {
            miner
                .wait_event("the pair's proofs", Duration::from_secs(20), |e| {
                    matches!(e, Event::ProofAccepted { .. })
                })
                .await;
        }
    }
    while miner.count(|e| matches!(e, Event::ProofAccepted { .. })) < 20 {
        miner
            .wait_event("20 accepted proofs", Duration::from_secs(60), |e| {
                matches!(e, Event::ProofAccepted { .. })
            })
            .await;
    }

    for (id, params, reward) in &jobs {
        let v = settled(&c, id, Duration::from_secs(10)).await;
        assert_eq!(v.state, JobState::Completed, "{id}: {v:?}");
        let proof = v.proof.expect("a completed job carries its proof");
        assert_eq!(proof.output_sha, expected_sha(params), "{id} {params:?}");
        assert_eq!(proof.output_len, Some(params.output_len()));
        assert_eq!(proof.miner_id.as_deref(), Some("e2e-miner"));
        assert_eq!(proof.metrics.flops, Some(params.flops()));
        assert!(proof.metrics.peak_rss_mb.is_some_and(|m| m > 0));
        assert_eq!(v.reward, *reward);
    }
    let total: u64 = jobs.iter().map(|j| j.2).sum();
    assert_eq!(c.balance(wallet).await, (total, 20));
    // One credit per job (and, once verified, one settlement of it).
    let ledger: Vec<_> = c
        .ledger(wallet)
        .await
        .into_iter()
        .filter(|e| e["kind"] == "credit")
        .collect();
    assert_eq!(ledger.len(), 20, "{ledger:?}");
    let mut credited: Vec<_> = ledger
        .iter()
        .map(|e| e["job_id"].as_str().unwrap().to_owned())
        .collect();
    credited.sort();
    credited.dedup();
    assert_eq!(credited.len(), 20, "each job credited exactly once");

    pickups.sort();
    assert_eq!(pickups.len(), 20);
    let p50 = pickups[pickups.len() / 2];
    eprintln!("pickup p50 {p50:?}, max {:?}", pickups[pickups.len() - 1]);
    assert!(
        p50 < Duration::from_millis(50),
        "pickup p50 {p50:?} ({pickups:?})"
    );

    // Idle for a while (empty answers): three more heartbeats, no failure or extra proof.
    for _ in 0..3 {
        miner
            .wait_event("an idle heartbeat", Duration::from_secs(10), |e| {
                matches!(e, Event::Heartbeat { ok: true })
            })
            .await;
    }
    let summary = miner.stop().await;
    assert_eq!((summary.jobs_done, summary.jobs_failed), (20, 0));
    let credits = c.ledger(wallet).await;
    assert_eq!(credits.iter().filter(|e| e["kind"] == "credit").count(), 20);
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "the spool is empty"
    );
    let dir_entries = std::fs::read_dir(dir.path().join("work")).unwrap().count();
    assert_eq!(dir_entries, 0, "scratch directories are removed");
}

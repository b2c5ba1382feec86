//! The miner's main loop: heartbeat, fetch, one task per job slot with a pre-started worker,
//! the outbox sender, and the drain on shutdown. It wires the pure decisions of [`crate::plan`],
//! [`crate::policy`] and [`crate::backoff`] to the I/O of [`crate::client`], [`crate::spool`]
//! and [`crate::worker_proc`]; a job is planned by [`plan_job`] and run by [`execute`], as
//! `bench` and the doctor's self-test run theirs. Unless the caller's [`WorkerCommand`] brings
//! a cgroup subtree (the `run` command's, into whose leaf the supervisor has moved), `run` makes
//! one for its workers only ([`crate::cgroup::workers_subtree`]: the calling process stays
//! where it is, since it may host other code); without root or delegation it warns once and
//! workers go without cgroups.
//! Each slot keeps one worker pre-started; the worker's own job directory is the job's scratch
//! space.
//!
//! The GPU ([`crate::gpu`]): at start the host is probed (NVML, the `libcuda.so.1` probe) unless
//! `ACCEL_MODE=cpu`, and [`policy::detect_mode`] picks the mode. In GPU mode slots pre-start
//! `--kind gpu` workers; a slot whose GPU worker cannot set up (exit 3) falls back to CPU
//! workers (warned once). Each heartbeat carries the GPUs and a fresh health reading; while the
//! GPU is unhealthy the dispatcher fetches nothing, with one log line per change. During a GPU
//! job [`execute`]'s VRAM watch polls NVML every `GPU_POLL_MS`, and it reads the energy
//! counters around each job.
//!
//! Audits ([`crate::audit`]): before a proof is enqueued, the job's audit entry (its spec, root
//! and the worker's leaves) is written durably to `STATE_DIR/audit`. The auditor task owns that
//! spool: an ack without an audit drops the entry, an ack with one stores the challenge and
//! answers it (the rows recomputed on the blocking pool, `POST /v1/miner/audit` with a key
//! derived from the job and attempt, retried like the outbox until the Coordinator's verdict
//! or an API refusal). After the first accepted heartbeat, and every `HEARTBEAT_SECS` while
//! the spool holds entries, it polls `GET /v1/miner/audits` and answers whatever it has an
//! entry for (also after a restart), dropping entries no open audit names once their proof
//! was answered. While the spool holds `AUDIT_SPOOL_MB` or more, the dispatcher fetches
//! nothing. A key suspended after failed audits (`MINER_SUSPENDED` from `next`) is logged once,
//! shown in the status, and polled at the slowest backoff.
//!
//! What the daemon is doing is kept in one [`Status`] record, updated here where slots change,
//! heartbeats finish and results are spooled or delivered; [`crate::status`] serves it on
//! `STATUS_SOCKET` and writes `METRICS_FILE`, and [`crate::notify`] tells systemd (`READY=1`
//! once the slots and the status socket are up, never waiting for the Coordinator;
//! `STOPPING=1` at the drain; `WATCHDOG=1` while the essential loops keep their promises).
//! The balance shown there is fetched by a task of its own after each credited proof and every
//! [`BALANCE_EVERY_HEARTBEATS`] accepted heartbeats, never on a status request.
//!
//! Invariants: never more jobs in flight than slots (a job is only fetched while a slot's permit
//! is held); a result is on disk before it is sent; nothing here formats the API key; no task
//! panics on input from the network or a worker.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::api::{
    ts, AuditAnswer, AuditChallenge, AuditVerdict, EnergySource, FailReport, GpuFlag, GpuHealth,
    Job, MinerCapabilities, Mode, Proof,
};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

use crate::audit::{self, AuditSpool, PollFate};
use crate::backoff::Backoff;
use crate::client::{CallError, Client, REQUEST_TIMEOUT};
use crate::execute::{execute, Done, Failed, Meters};
use crate::gpu::{self, GpuReport, HealthLimits};
use crate::notify::{self, Liveness};
use crate::plan::plan_job;
use crate::policy;
use crate::spool::{Entry, Spool};
use crate::status::{self, Status};
use crate::worker_proc::{WorkerCommand, WorkerProcess};
use crate::{Config, Error, Event, Summary};

/// How long a freshly started worker has to say Hello.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The balance is fetched again after this many accepted heartbeats (and after each credited
/// proof).
pub const BALANCE_EVERY_HEARTBEATS: u64 = 15;

/// The most a GPU health reading may take before the heartbeat loop counts as wedged.
const HEALTH_READ_BOUND: Duration = Duration::from_secs(10);

/// Added to every promise the heartbeat loop makes to the watchdog (scheduling, logging).
const LIVENESS_MARGIN: Duration = Duration::from_secs(5);

/// Everything the tasks share.
struct Ctx {
    config: Config,
    client: Client,
    spool: Spool,
    worker: WorkerCommand,
    events: Option<mpsc::UnboundedSender<Event>>,
    mode: Mode,
    /// What the GPU probe found (empty when `ACCEL_MODE=cpu`).
    report: GpuReport,
    /// NVML (health, the VRAM watch, GPU energy) when it answered, RAPL when readable.
    meters: Meters,
    /// Per slot: its GPU worker could not set up, so it runs CPU workers.
    cpu_fallback: Vec<AtomicBool>,
    /// The fall-back warning has been logged.
    fallback_warned: AtomicBool,
    /// False while the GPU is unhealthy (GPU mode only): no jobs are fetched.
    gpu_ok: watch::Sender<bool>,
    outbox: mpsc::UnboundedSender<(PathBuf, Entry)>,
    /// The audit spool (`STATE_DIR/audit`): written by the slots, owned by the auditor.
    audit_spool: AuditSpool,
    /// Tells the auditor about new entries and proof acks.
    auditor: mpsc::UnboundedSender<AuditMsg>,
    /// False while the audit spool is full: no jobs are fetched.
    audit_room: watch::Sender<bool>,
    /// `MINER_SUSPENDED` was the last answer of `next` (logged once).
    suspended: AtomicBool,
    jobs_done: AtomicU64,
    jobs_failed: AtomicU64,
    /// What the daemon is doing, for the status socket, the metrics file and systemd.
    status: Arc<Status>,
    /// The essential loops' promises, for the systemd watchdog.
    liveness: Arc<Liveness>,
    /// Wakes the balance fetcher.
    balance_kick: Notify,
    /// The (job id, attempt) pairs a slot holds now: the same lease handed out twice is
    /// refused, not run twice into one spool file.
    in_flight: Mutex<HashSet<(String, u32)>>,
    /// Jobs refused in a row before any process was touched (BAD_PARAMS, CAPS_REFUSED, ...):
    /// the dispatcher backs off by it, so a Coordinator that keeps offering jobs this miner
    /// refuses cannot drive it into a loop.
    refused_in_row: AtomicU32,
}

impl Ctx {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }

    /// The kind of worker `slot` runs: GPU in GPU mode unless it fell back to the CPU.
    fn slot_kind(&self, slot: usize) -> Mode {
        let fell_back = self
            .cpu_fallback
            .get(slot)
            .is_some_and(|f| f.load(Ordering::Relaxed));
        if self.mode == Mode::Gpu && !fell_back {
            Mode::Gpu
        } else {
            Mode::Cpu
        }
    }
}

/// Resolves once the watch holds `true` (or its sender is gone).
async fn raised(rx: &watch::Receiver<bool>) {
    let mut rx = rx.clone();
    let _ = rx.wait_for(|v| *v).await;
}

/// Runs the miner until `shutdown` resolves, then drains (see the crate docs).
pub async fn run(
    config: Config,
    worker: WorkerCommand,
    events: Option<mpsc::UnboundedSender<Event>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Summary, Error> {
    let client = Client::new(&config.coord_url, &config.api_key)?;
    let spool = Spool::open(&config.state_dir)?;
    let audit_spool = AuditSpool::open(&config.state_dir)?;
    std::fs::create_dir_all(&config.work_dir).map_err(|source| Error::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let mut worker = worker;
    if worker.subtree.is_none() {
        worker.subtree = crate::cgroup::workers_subtree(&config.miner_id);
    }
    let report = match config.accel_mode {
        crate::config::AccelMode::Cpu => GpuReport::not_probed("ACCEL_MODE=cpu"),
        _ => tokio::task::spawn_blocking(gpu::detect)
            .await
            .unwrap_or_else(|e| GpuReport::not_probed(&format!("the GPU probe failed: {e}"))),
    };
    let (mode, mode_warning) = policy::detect_mode(config.accel_mode, &report);
    match (&mode_warning, mode, report.usable()) {
        (Some(w), _, _) => warn!("{w}"),
        (None, Mode::Gpu, Ok(g)) => info!(
            gpu = %g.name,
            vram_mb = g.vram_mb,
            driver = g.driver_version.as_deref().unwrap_or("?"),
            cuda = g.cuda_version.as_deref().unwrap_or("?"),
            "GPU mode"
        ),
        (None, _, Err(why)) if config.accel_mode == crate::config::AccelMode::Auto => {
            info!("ACCEL_MODE=auto: no usable GPU ({why}); running jobs on the CPU")
        }
        _ => {}
    }
    if mode == Mode::Gpu && config.job_limits_max.vram_mb == 0 {
        warn!(
            "GPU mode with MAX_JOB_VRAM_MB=0: every job that asks for device memory will be \
             refused; set MAX_JOB_VRAM_MB (MiB) to accept GPU jobs"
        );
    }
    let meters = Meters::open(report.available, config.gpu_poll);
    if let Some(n) = meters.nvml {
        if let Err(why) = n.watch_xids() {
            info!("GPU health without XID errors: {why}");
        }
    }
    let slots = usize::try_from(config.max_concurrency.max(1)).unwrap_or(1);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let (gpu_ok, _) = watch::channel(true);
    let (audit_room, _) = watch::channel(true);
    let (auditor_tx, auditor_rx) = mpsc::unbounded_channel();
    let status = Status::new(status::Facts {
        miner_id: config.miner_id.clone(),
        wallet: config.wallet_addr.clone(),
        coordinator: config.coord_url.clone(),
        mode,
        slots,
        audit_limit_bytes: config.audit_spool_mb.saturating_mul(1 << 20),
    });
    let ctx = Arc::new(Ctx {
        config,
        client,
        spool,
        worker,
        events,
        mode,
        report,
        meters,
        cpu_fallback: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        fallback_warned: AtomicBool::new(false),
        gpu_ok,
        outbox: outbox_tx,
        audit_spool,
        auditor: auditor_tx,
        audit_room,
        suspended: AtomicBool::new(false),
        jobs_done: AtomicU64::new(0),
        jobs_failed: AtomicU64::new(0),
        status,
        liveness: Liveness::new(),
        balance_kick: Notify::new(),
        in_flight: Mutex::new(HashSet::new()),
        refused_in_row: AtomicU32::new(0),
    });
    info!(
        miner_id = %ctx.config.miner_id,
        coordinator = %ctx.config.coord_url,
        slots,
        mode = mode.as_str(),
        "miner starting"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let (kill_tx, kill_rx) = watch::channel(false);
    let (flush_tx, flush_rx) = watch::channel(false);
    let (hb_ok_tx, hb_ok_rx) = watch::channel(false);
    let nudge = Arc::new(Notify::new());

    // The status socket first, so it is up before READY=1; without it the miner still runs.
    let status_server = match &ctx.config.status_socket {
        Some(path) => match status::bind(path) {
            Ok(listener) => {
                info!(socket = %path.display(), "status socket ready");
                Some(listener.serve(ctx.status.clone()))
            }
            Err(e) => {
                warn!("{e}");
                None
            }
        },
        None => None,
    };
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    let metrics = ctx.config.metrics_file.clone().map(|path| {
        tokio::spawn(status::metrics_task(
            path,
            ctx.config.metrics_interval,
            ctx.status.clone(),
            metrics_stopped,
        ))
    });
    let mut helpers = vec![tokio::spawn(balance_task(ctx.clone()))];
    if let Some(every) = notify::watchdog_interval() {
        info!(
            every_ms = every.as_millis() as u64,
            "systemd watchdog enabled"
        );
        helpers.push(tokio::spawn(notify::watchdog_task(
            every,
            ctx.liveness.clone(),
        )));
    }
    if notify::enabled() {
        helpers.push(tokio::spawn(notify::status_task(ctx.status.clone())));
    }

    // The audit spool is loaded (and its gate set) before the dispatcher can fetch a job.
    let auditor = load_audit_spool(&ctx).await;
    let auditor = tokio::spawn(auditor_task(
        ctx.clone(),
        auditor,
        auditor_rx,
        hb_ok_rx.clone(),
        flush_rx.clone(),
    ));
    let outbox = tokio::spawn(outbox_task(ctx.clone(), outbox_rx, flush_rx));
    let heartbeat = tokio::spawn(heartbeat_task(ctx.clone(), hb_ok_tx, nudge.clone()));

    let idle = Arc::new(Mutex::new((0..slots).rev().collect::<Vec<usize>>()));
    let permits = Arc::new(Semaphore::new(slots));
    let mut slot_txs = Vec::with_capacity(slots);
    let mut slot_tasks = Vec::with_capacity(slots);
    for i in 0..slots {
        let (tx, rx) = mpsc::channel(1);
        slot_txs.push(tx);
        slot_tasks.push(tokio::spawn(slot_task(
            ctx.clone(),
            i,
            rx,
            idle.clone(),
            kill_rx.clone(),
        )));
    }
    let dispatcher = tokio::spawn(dispatcher_task(
        ctx.clone(),
        slot_txs,
        idle,
        permits,
        stop_rx,
        hb_ok_rx,
        nudge,
    ));
    // Up: slots started, status socket bound. The Coordinator is not waited for.
    notify::ready(&status::status_line(&ctx.status.snapshot()));

    shutdown.await;
    ctx.liveness.stopping();
    ctx.status.set_draining();
    notify::stopping();
    info!(
        grace_ms = ctx.config.drain_grace.as_millis() as u64,
        "shutdown requested: no new jobs; running jobs may finish within the drain grace"
    );
    let _ = stop_tx.send(true);
    join("dispatcher", dispatcher).await?;
    let deadline = tokio::time::Instant::now() + ctx.config.drain_grace;
    for t in slot_tasks {
        tokio::pin!(t);
        tokio::select! {
            r = &mut t => flatten("slot", r)?,
            () = tokio::time::sleep_until(deadline) => {
                warn!("drain grace over: killing running jobs");
                let _ = kill_tx.send(true);
                flatten("slot", t.await)?;
            }
        }
    }
    heartbeat.abort();
    let _ = flush_tx.send(true);
    join("outbox", outbox).await?;
    join("auditor", auditor).await?;
    ctx.status.set_stopped();
    let _ = metrics_stop.send(true);
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(server) = status_server {
        server.shutdown().await;
    }
    for h in helpers {
        h.abort();
    }
    let summary = Summary {
        jobs_done: ctx.jobs_done.load(Ordering::Relaxed),
        jobs_failed: ctx.jobs_failed.load(Ordering::Relaxed),
    };
    info!(
        jobs_done = summary.jobs_done,
        jobs_failed = summary.jobs_failed,
        "miner stopped"
    );
    Ok(summary)
}

fn flatten(task: &'static str, r: Result<(), tokio::task::JoinError>) -> Result<(), Error> {
    r.map_err(|e| Error::Task {
        task,
        message: e.to_string(),
    })
}

async fn join(task: &'static str, h: tokio::task::JoinHandle<()>) -> Result<(), Error> {
    flatten(task, h.await)
}

/// The heartbeat body: who the miner is, what it runs, the GPUs it found and their health.
pub(crate) fn capabilities(
    config: &Config,
    mode: Mode,
    report: &GpuReport,
    gpu_health: Option<GpuHealth>,
) -> MinerCapabilities {
    let host = crate::config::HostFacts::detect();
    MinerCapabilities {
        miner_id: config.miner_id.clone(),
        wallet: config.wallet_addr.clone(),
        mode,
        gpu: GpuFlag(mode == Mode::Gpu),
        concurrency: Some(config.max_concurrency),
        workloads: policy::RUNS.iter().map(|w| w.as_str().to_owned()).collect(),
        limits: policy::miner_limits(&config.job_limits_max, mode),
        cores: Some(host.cores),
        ram_mb: (host.ram_mb > 0).then_some(host.ram_mb),
        version: Some(concat!("aitbc-miner/", env!("CARGO_PKG_VERSION")).to_owned()),
        gpus: report.gpus.clone(),
        gpu_health,
    }
}

/// Reads the GPU's health (when NVML answers), logs a change once, and in GPU mode opens or
/// closes the dispatcher's gate. `xid_seen` is the XID count of the previous reading.
async fn refresh_health(
    ctx: &Ctx,
    last: &mut Option<GpuHealth>,
    xid_seen: &mut u64,
) -> Option<GpuHealth> {
    let nvml = ctx.meters.nvml?;
    let readings = tokio::task::spawn_blocking(move || nvml.readings())
        .await
        .unwrap_or_else(|e| gpu::Readings {
            error: Some(format!("the health reader failed: {e}")),
            ..gpu::Readings::default()
        });
    let limits = HealthLimits {
        max_temp_c: ctx.config.gpu_max_temp_c,
    };
    let health = gpu::decide_health(&readings, *xid_seen, limits);
    *xid_seen = readings.xid_total;
    if let Some(line) = gpu::health_change(last.as_ref(), &health) {
        if health.healthy {
            info!("{line}");
        } else {
            warn!("{line}");
        }
    }
    if ctx.mode == Mode::Gpu {
        ctx.gpu_ok.send_replace(health.healthy);
        ctx.status.set_paused((!health.healthy).then(|| {
            format!(
                "GPU unhealthy: {}",
                health.reason.as_deref().unwrap_or("no reason given")
            )
        }));
    }
    *last = Some(health.clone());
    Some(health)
}

/// The heartbeat loop. Its `beat` is its standing with the watchdog: before each step it
/// promises when it will be back (the step's bound plus [`LIVENESS_MARGIN`]).
async fn heartbeat_task(ctx: Arc<Ctx>, ok_tx: watch::Sender<bool>, nudge: Arc<Notify>) {
    let beat = ctx.liveness.register("heartbeat", None);
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    let (mut last_health, mut xid_seen) = (None, 0u64);
    let mut accepted = 0u64;
    loop {
        beat.promise(HEALTH_READ_BOUND + LIVENESS_MARGIN);
        let health = refresh_health(&ctx, &mut last_health, &mut xid_seen).await;
        let caps = capabilities(&ctx.config, ctx.mode, &ctx.report, health);
        // Each heartbeat is its own logical request (it states the miner as of now), so each
        // gets a fresh Idempotency-Key.
        let key = uuid::Uuid::new_v4().to_string();
        beat.promise(REQUEST_TIMEOUT + LIVENESS_MARGIN);
        let answer = ctx.client.heartbeat(&caps, &key).await;
        ctx.status.coordinator(answered(&answer));
        let pause = match answer {
            Ok(_) => {
                if !*ok_tx.borrow() {
                    info!(miner_id = %ctx.config.miner_id, "registered with the Coordinator");
                }
                let _ = ok_tx.send(true);
                ctx.emit(Event::Heartbeat { ok: true });
                ctx.status.heartbeat(Ok(()));
                if accepted.is_multiple_of(BALANCE_EVERY_HEARTBEATS) {
                    ctx.balance_kick.notify_one();
                }
                accepted += 1;
                backoff.reset();
                ctx.config.heartbeat
            }
            Err(e) => {
                ctx.emit(Event::Heartbeat { ok: false });
                ctx.status.heartbeat(Err(e.to_string()));
                let d = backoff.after(e.wait());
                if let CallError::Refused { .. } = e {
                    error!("heartbeat refused: {e}; retrying in {d:?}");
                } else {
                    warn!("heartbeat failed: {e}; retrying in {d:?}");
                }
                d
            }
        };
        beat.promise(pause + LIVENESS_MARGIN);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = nudge.notified() => {}
        }
    }
}

/// Whether a Coordinator call got a usable answer: a success, or a definitive refusal that
/// only a working Coordinator gives (409 on a proof, 422, ...). No answer, a 5xx, 408, 429 and
/// a refused key (401, 403) count as errors.
fn answered<T>(r: &Result<T, CallError>) -> bool {
    match r {
        Ok(_) | Err(CallError::BadJob { .. }) => true,
        // A suspended key is a working Coordinator's definitive answer about this key.
        Err(CallError::Refused { code, .. }) if code == SUSPENDED => true,
        Err(CallError::Refused { status, .. }) => !matches!(status, 401 | 403),
        Err(CallError::Transport(_) | CallError::Retry { .. } | CallError::Unusable { .. }) => {
            false
        }
    }
}

/// The error code of `next` for a key suspended after failed audits.
const SUSPENDED: &str = "MINER_SUSPENDED";

/// Fetches the wallet's balance whenever kicked (after credited proofs, audit verdicts and
/// every few heartbeats), for the status report only.
async fn balance_task(ctx: Arc<Ctx>) {
    loop {
        ctx.balance_kick.notified().await;
        let r = ctx.client.balance(&ctx.config.wallet_addr).await;
        if let Err(e) = &r {
            debug!("fetching the wallet balance: {e}");
        }
        ctx.status
            .balance(r.map_err(|e| format!("fetching the balance: {e}")));
    }
}

type SlotJob = (Job, OwnedSemaphorePermit);

async fn dispatcher_task(
    ctx: Arc<Ctx>,
    slots: Vec<mpsc::Sender<SlotJob>>,
    idle: Arc<Mutex<Vec<usize>>>,
    permits: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    hb_ok: watch::Receiver<bool>,
    nudge: Arc<Notify>,
) {
    // Dropped when the task ends: before the drain, the watchdog stops vouching.
    let _beat = ctx.liveness.register("dispatcher", None);
    let gpu_ok = ctx.gpu_ok.subscribe();
    let audit_room = ctx.audit_room.subscribe();
    // The first heartbeat names the wallet; no fetching before it succeeded.
    tokio::select! {
        () = raised(&hb_ok) => {}
        () = raised(&stop) => return,
    }
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    let mut permit: Option<OwnedSemaphorePermit> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let held = match permit.take() {
            Some(p) => p,
            None => tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                () = raised(&stop) => return,
            },
        };
        // While the GPU is unhealthy no slot is offered (the heartbeat reopens the gate).
        tokio::select! {
            () = raised(&gpu_ok) => {}
            () = raised(&stop) => return,
        }
        // While the audit spool is full no slot is offered either (the auditor logs it and
        // reopens the gate as entries go).
        tokio::select! {
            () = raised(&audit_room) => {}
            () = raised(&stop) => return,
        }
        // After jobs this miner refused before touching a process, a pause that grows with
        // each one in a row.
        let refused = ctx.refused_in_row.load(Ordering::Relaxed);
        if refused > 0 {
            let pause = crate::backoff::next_delay(
                refused - 1,
                ctx.config.backoff_min,
                ctx.config.backoff_max,
                None,
                fastrand::f64(),
            );
            debug!(refused, "jobs refused in a row; next poll in {pause:?}");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = raised(&stop) => return,
            }
        }
        let Some(slots_wanted) = policy::slots_to_request(permits.available_permits() + 1, false)
        else {
            return;
        };
        let t0 = Instant::now();
        let answer = tokio::select! {
            a = ctx.client.next(&ctx.config.miner_id, slots_wanted, ctx.config.poll_wait) => a,
            () = raised(&stop) => return,
        };
        ctx.status.coordinator(answered(&answer));
        if answer.is_ok() && ctx.suspended.swap(false, Ordering::Relaxed) {
            info!("the Coordinator takes this miner's key again: it is no longer suspended");
            ctx.status.suspended(None);
        }
        let pause = match answer {
            Ok(Some(job)) => {
                let lease = (job.id.clone(), job.attempt);
                // A poisoned lock still holds a valid set (nothing panics while holding it).
                let fresh = ctx
                    .in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(lease);
                if !fresh {
                    // Reporting it would fail the copy that runs; the lease is that copy's.
                    permit = Some(held);
                    let d = backoff.delay(None);
                    warn!(job = %job.id, attempt = job.attempt, "the Coordinator handed out a job this miner already runs, under the same attempt; not running it twice (next poll in {d:?})");
                    d
                } else {
                    backoff.reset();
                    let idx = idle
                        .lock()
                        .ok()
                        .and_then(|mut v| v.pop())
                        .expect("a held permit guarantees an idle slot");
                    if slots[idx].send((job, held)).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
            Ok(None) => {
                backoff.reset();
                permit = Some(held);
                policy::pause_after_empty(t0.elapsed(), ctx.config.job_poll)
            }
            Err(e) => {
                permit = Some(held);
                match &e {
                    CallError::Refused { code, .. } if code == "UNKNOWN_MINER" => {
                        warn!("fetching jobs: {e}; sending a heartbeat first");
                        nudge.notify_one();
                        backoff.delay(None)
                    }
                    CallError::Refused { code, message, .. } if code == SUSPENDED => {
                        let d = backoff.max();
                        if !ctx.suspended.swap(true, Ordering::Relaxed) {
                            error!("this miner's key is SUSPENDED from taking jobs after failed audits: {e}; an admin of the Coordinator must reinstate it; asking again every {d:?}");
                            ctx.status.suspended(Some(message));
                        } else {
                            debug!("still suspended; asking again in {d:?}");
                        }
                        d
                    }
                    CallError::Refused { .. } => {
                        let d = backoff.after(e.wait());
                        error!("fetching jobs refused: {e}; retrying in {d:?}");
                        d
                    }
                    CallError::Retry { .. }
                    | CallError::Transport(_)
                    | CallError::Unusable { .. } => {
                        let d = backoff.after(e.wait());
                        warn!("fetching jobs failed: {e}; retrying in {d:?}");
                        d
                    }
                    CallError::BadJob { id, attempt, why } => {
                        let d = backoff.after(e.wait());
                        warn!(job = %id, "the Coordinator offered a job this miner cannot take: {why}; reporting it as BAD_PARAMS (next poll in {d:?})");
                        let report = FailReport {
                            id: id.clone(),
                            miner_id: Some(ctx.config.miner_id.clone()),
                            attempt: *attempt,
                            reason: protocol::api::FailReason::BadParams,
                            message: format!("the miner cannot take this job: {why}"),
                        };
                        enqueue(&ctx, Entry::fail(report)).await;
                        d
                    }
                }
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = raised(&stop) => return,
            }
        }
    }
}

/// Starts a worker of `kind` for `slot`. A GPU worker whose set-up fails (exit 3: no CUDA
/// driver, no device) turns the slot into a CPU slot, with one warning for the whole miner,
/// and a CPU worker is started instead.
async fn start_worker(ctx: &Ctx, slot: usize, kind: Mode) -> Result<WorkerProcess, Error> {
    let r = WorkerProcess::start(&ctx.worker.with_kind(kind), WORKER_START_TIMEOUT).await;
    match r {
        Ok(w) => {
            debug!(slot, worker_pid = w.pid(), kind = ?kind, sandbox = %w.hello().sandbox, "worker ready");
            Ok(w)
        }
        Err(Error::WorkerStart {
            exit_code: Some(3),
            message,
            ..
        }) if kind == Mode::Gpu => {
            if let Some(f) = ctx.cpu_fallback.get(slot) {
                f.store(true, Ordering::Relaxed);
            }
            if !ctx.fallback_warned.swap(true, Ordering::Relaxed) {
                warn!(
                    slot,
                    "a GPU worker could not set up ({message}); falling back to CPU workers"
                );
            }
            Box::pin(start_worker(ctx, slot, Mode::Cpu)).await
        }
        Err(e) => {
            error!(slot, "cannot start a worker: {e}");
            Err(e)
        }
    }
}

/// A slot's next worker, started in the background as soon as the previous job ends, so the
/// slot is free for the next job at once and the job finds its worker ready (or nearly).
type NextWorker = tokio::task::JoinHandle<Result<WorkerProcess, Error>>;

/// Starts the slot's next worker, of the kind the slot runs, in the background.
fn prestart(ctx: &Arc<Ctx>, slot: usize) -> (Mode, NextWorker) {
    let kind = ctx.slot_kind(slot);
    let ctx = ctx.clone();
    // If the handle is dropped unused, the task still finishes and its WorkerProcess is
    // killed and reaped by Drop.
    (
        kind,
        tokio::spawn(async move { start_worker(&ctx, slot, kind).await }),
    )
}

async fn slot_task(
    ctx: Arc<Ctx>,
    slot: usize,
    mut jobs: mpsc::Receiver<SlotJob>,
    idle: Arc<Mutex<Vec<usize>>>,
    kill: watch::Receiver<bool>,
) {
    let _beat = ctx.liveness.register("slot", None);
    let mut ready = Some(prestart(&ctx, slot));
    while let Some((job, permit)) = jobs.recv().await {
        let lease = (job.id.clone(), job.attempt);
        run_job(&ctx, slot, job, &mut ready, &kill).await;
        ctx.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&lease);
        ctx.status.slot_idle(slot);
        // The next job on this slot finds its worker already started.
        if ready.is_none() && !*kill.borrow() {
            ready = Some(prestart(&ctx, slot));
        }
        if let Ok(mut v) = idle.lock() {
            v.push(slot);
        }
        drop(permit);
    }
    if let Some((_, next)) = ready {
        if let Ok(Ok(w)) = next.await {
            w.retire().await;
        }
    }
}

/// A worker for a job that runs on `kind`: the slot's pre-started worker when it was started
/// for that kind and is alive and quiet, otherwise a freshly started one. A pre-started worker
/// of the other kind (a CPU job on a GPU slot) stays ready for the slot's next job. A GPU
/// pre-start that fell back to the CPU serves the job on the CPU.
async fn take_worker(
    ctx: &Ctx,
    slot: usize,
    ready: &mut Option<(Mode, NextWorker)>,
    kind: Mode,
) -> Result<WorkerProcess, Error> {
    let handle = match ready.take() {
        Some((k, h)) if k == kind => h,
        other => {
            *ready = other;
            return start_worker(ctx, slot, kind).await;
        }
    };
    let pre = handle.await.map_err(|e| Error::Task {
        task: "worker start",
        message: e.to_string(),
    });
    // After a fall-back the slot is a CPU slot: ask for what it runs now.
    let kind = if ctx.slot_kind(slot) == Mode::Cpu {
        Mode::Cpu
    } else {
        kind
    };
    match pre {
        Ok(Ok(w)) if w.is_ready() => Ok(w),
        Ok(Ok(mut dead)) => {
            warn!(
                slot,
                worker_pid = dead.pid(),
                "idle worker died or spoke out of turn; starting another"
            );
            dead.kill_and_reap().await;
            start_worker(ctx, slot, kind).await
        }
        // The pre-start failed (already logged): one more try for this job.
        Ok(Err(_)) | Err(_) => start_worker(ctx, slot, kind).await,
    }
}

async fn run_job(
    ctx: &Ctx,
    slot: usize,
    job: Job,
    ready: &mut Option<(Mode, NextWorker)>,
    kill: &watch::Receiver<bool>,
) {
    let started_at = ts::now();
    let pickup = (started_at - job.created_at).try_into().ok();
    ctx.status.slot_starting(slot, &job.id, &job.workload);
    ctx.emit(Event::JobStarted {
        id: job.id.clone(),
        workload: job.workload.clone(),
        slot,
        pickup,
    });
    // Refusals come before any process is touched: the slot's worker stays ready, and the
    // dispatcher backs off (see `Ctx::refused_in_row`).
    let max = &ctx.config.job_limits_max;
    let plan = match plan_job(&job, max, ctx.config.threads_per_job, ctx.slot_kind(slot)) {
        Ok(plan) => plan,
        Err(refusal) => {
            let _ = ctx
                .refused_in_row
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
            return report_failure(ctx, &job, refusal.reason, refusal.message).await;
        }
    };
    ctx.refused_in_row.store(0, Ordering::Relaxed);
    let worker = match take_worker(ctx, slot, ready, plan.kind).await {
        Ok(w) => w,
        Err(e) => {
            let msg = format!("cannot start a worker: {e}");
            return report_failure(ctx, &job, protocol::api::FailReason::Internal, msg).await;
        }
    };
    // The worker that came may be a CPU one after a fall-back: the plan follows the worker.
    let plan = match plan.for_worker(worker.hello().kind, &job, max) {
        Ok(plan) => plan,
        Err(r) => return report_failure(ctx, &job, r.reason, r.message).await,
    };
    ctx.status.slot_busy(slot, plan.kind);
    info!(job = %job.id, workload = %job.workload, slot, attempt = job.attempt, worker_pid = worker.pid(), kind = ?plan.kind, "job started");
    // The worker's own job directory (created with it, removed when it is reaped) is the
    // job's scratch space.
    let executed = execute(worker, &plan, &ctx.meters, raised(kill)).await;
    let finished_at = ts::now();
    match executed {
        Ok(Done {
            output: out,
            metrics,
            leaves,
            ..
        }) => {
            let wall_ms = metrics.wall_ms.unwrap_or(0);
            let gflops = metrics.gflops.unwrap_or(0.0);
            let energy = metrics.energy_source.unwrap_or(EnergySource::Unavailable);
            info!(job = %job.id, workload = %job.workload, ms = wall_ms, gflops, energy_mj = metrics.energy_mj, energy = energy.as_str(), "job done");
            let proof = Proof {
                id: job.id.clone(),
                miner_id: Some(ctx.config.miner_id.clone()),
                attempt: Some(job.attempt),
                mode: out.kind,
                output_sha: protocol::hex::encode(&out.output_sha),
                merkle_root: Some(protocol::hex::encode(&out.merkle_root)),
                output_len: Some(out.output_len),
                metrics,
                started_at: Some(started_at),
                finished_at: Some(finished_at),
            };
            ctx.jobs_done.fetch_add(1, Ordering::Relaxed);
            ctx.status.job_done();
            ctx.emit(Event::JobDone {
                id: job.id.clone(),
                wall_ms,
                gflops,
            });
            // The audit entry is on disk before the proof can be acked.
            keep_for_audit(
                ctx,
                &job,
                plan.spec.spec,
                &out.merkle_root,
                leaves,
                finished_at,
            )
            .await;
            enqueue(ctx, Entry::proof(proof)).await;
        }
        Err(Failed { reason, message }) => {
            report_failure(ctx, &job, reason, message).await;
        }
    }
}

async fn report_failure(ctx: &Ctx, job: &Job, reason: protocol::api::FailReason, message: String) {
    warn!(job = %job.id, workload = %job.workload, reason = reason.as_str(), "job failed: {message}");
    ctx.jobs_failed.fetch_add(1, Ordering::Relaxed);
    ctx.status.job_failed(reason);
    ctx.emit(Event::JobFailed {
        id: job.id.clone(),
        reason,
        message: message.clone(),
    });
    let report = FailReport {
        id: job.id.clone(),
        miner_id: Some(ctx.config.miner_id.clone()),
        attempt: Some(job.attempt),
        reason,
        message,
    };
    enqueue(ctx, Entry::fail(report)).await;
}

/// Writes the job's audit entry durably and tells the auditor. If the disk refuses, the proof
/// is still sent (an audit of it then cannot be answered) and the error logged.
async fn keep_for_audit(
    ctx: &Ctx,
    job: &Job,
    spec: protocol::workload::WorkloadSpec,
    root: &protocol::merkle::Digest,
    leaves: Vec<protocol::merkle::Digest>,
    proved_at: time::OffsetDateTime,
) {
    let meta = audit::Meta {
        job_id: job.id.clone(),
        attempt: job.attempt,
        spec,
        merkle_root: protocol::hex::encode(root),
        proved_at,
        challenge: None,
    };
    let entry = audit::Entry {
        meta: meta.clone(),
        leaves,
    };
    let spool = ctx.audit_spool.clone();
    match tokio::task::spawn_blocking(move || spool.write(&entry)).await {
        Ok(Ok((path, bytes))) => {
            let _ = ctx.auditor.send(AuditMsg::Stored { meta, path, bytes });
        }
        Ok(Err(e)) => {
            error!(job = %job.id, "{e}; an audit of this proof cannot be answered")
        }
        Err(e) => {
            error!(job = %job.id, "audit spool writer failed: {e}; an audit of this proof cannot be answered")
        }
    }
}

/// Writes the entry to the spool (durably) and hands it to the sender. If the disk refuses,
/// the entry is still sent (from memory) and the error logged: a lost spool must not lose a
/// result that can still be delivered.
async fn enqueue(ctx: &Ctx, entry: Entry) {
    let spool = ctx.spool.clone();
    let e2 = entry.clone();
    let path = match tokio::task::spawn_blocking(move || spool.write(&e2)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            error!(job = entry.job_id(), "{e}; sending without a spool copy");
            PathBuf::new()
        }
        Err(e) => {
            error!(
                job = entry.job_id(),
                "spool writer failed: {e}; sending without a spool copy"
            );
            PathBuf::new()
        }
    };
    // Counted before the sender can settle it.
    ctx.status.spooled(1);
    let _ = ctx.outbox.send((path, entry));
}

/// What to do with an outbox entry after one send.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The Coordinator answered definitively (its ack, or an API refusal that retrying cannot
    /// change): drop it.
    Settled,
    /// No answer at all: the Coordinator is unreachable, so every entry waits (with backoff).
    Unreachable,
    /// This entry alone is retried later with its own backoff (408/429/5xx, an answer that is
    /// not the API's), at least `Retry-After` when one came (bounded by BACKOFF_MAX_SECS).
    Retry(Option<Duration>),
    /// Retry at the slowest pace: 401, which an operator may fix by correcting the key.
    RetrySlowly,
}

/// Pure: an outbox send's outcome as a verdict. Only the call's own ack or a 4xx with the API's
/// error body settles an entry: an HTML page, a redirect or any other answer that is not the
/// API's never does.
pub(crate) fn verdict<T>(r: &Result<T, CallError>) -> Verdict {
    match r {
        Ok(_) => Verdict::Settled,
        Err(CallError::Transport(_)) => Verdict::Unreachable,
        Err(CallError::Retry { retry_after, .. }) => Verdict::Retry(*retry_after),
        Err(CallError::Unusable { .. } | CallError::BadJob { .. }) => Verdict::Retry(None),
        Err(CallError::Refused { status: 401, .. }) => Verdict::RetrySlowly,
        Err(CallError::Refused { .. }) => Verdict::Settled,
    }
}

/// Sends one entry; emits the proof events and logs refusals with the server's code.
async fn send_entry(ctx: &Ctx, entry: &Entry) -> Verdict {
    match entry {
        Entry::Proof {
            idempotency_key,
            body,
        } => {
            let r = ctx.client.proof(body, idempotency_key).await;
            ctx.status.coordinator(answered(&r));
            let key = (body.id.clone(), body.attempt.unwrap_or(0));
            match &r {
                Ok(ack) => {
                    info!(job = %body.id, credited = ack.credited, wallet = %ack.wallet, state = ack.state.as_str(), audit = ack.audit.is_some(), "proof accepted");
                    if ack.credited > 0 {
                        ctx.balance_kick.notify_one();
                    }
                    let _ = ctx.auditor.send(AuditMsg::Acked {
                        key,
                        audit: ack.audit.clone(),
                    });
                    ctx.emit(Event::ProofAccepted {
                        id: body.id.clone(),
                        credited: ack.credited,
                        audited: ack.audit.is_some(),
                        settles_at: ack.settles_at,
                    });
                }
                Err(CallError::Refused { status, code, .. }) if *status != 401 => {
                    let _ = ctx.auditor.send(AuditMsg::Refused { key });
                    error!(job = %body.id, status, code = %code, "proof refused: {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default());
                    ctx.emit(Event::ProofRejected {
                        id: body.id.clone(),
                        status: *status,
                        code: code.clone(),
                    });
                }
                Err(e) => {
                    warn!(job = %body.id, "sending proof: {e}; it stays in the spool and is sent again")
                }
            }
            verdict(&r)
        }
        Entry::Fail {
            idempotency_key,
            body,
        } => {
            let r = ctx.client.fail(body, idempotency_key).await;
            ctx.status.coordinator(answered(&r));
            match &r {
                Ok(ack) => {
                    debug!(job = %body.id, state = ack.state.as_str(), "fail report accepted")
                }
                Err(CallError::Refused { status, code, .. }) if *status != 401 => {
                    error!(job = %body.id, status, code = %code, "fail report refused: {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default())
                }
                Err(e) => {
                    warn!(job = %body.id, "sending fail report: {e}; it stays in the spool and is sent again")
                }
            }
            verdict(&r)
        }
    }
}

async fn settle(ctx: &Ctx, path: PathBuf) {
    ctx.status.delivered();
    if path.as_os_str().is_empty() {
        return;
    }
    let spool = ctx.spool.clone();
    match tokio::task::spawn_blocking(move || spool.remove(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!("{e}"),
        Err(e) => error!("spool remover failed: {e}"),
    }
}

/// One undelivered result in the sender's queue: where it is spooled, what it is, and when it
/// may be tried again, with its own backoff.
struct Pending {
    path: PathBuf,
    entry: Entry,
    not_before: tokio::time::Instant,
    backoff: Backoff,
}

impl Pending {
    fn new(ctx: &Ctx, (path, entry): (PathBuf, Entry)) -> Pending {
        Pending {
            path,
            entry,
            not_before: tokio::time::Instant::now(),
            backoff: Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max),
        }
    }
}

/// Adds a new result to the queue. One with the spool file of a result already queued (the
/// same job and attempt) replaces that one's entry rather than being sent twice.
fn push(ctx: &Ctx, queue: &mut VecDeque<Pending>, item: (PathBuf, Entry)) {
    let same = |p: &&mut Pending| !item.0.as_os_str().is_empty() && p.path == item.0;
    match queue.iter_mut().find(same) {
        Some(p) => {
            p.entry = item.1;
            ctx.status.delivered();
        }
        None => queue.push_back(Pending::new(ctx, item)),
    }
}

/// The sender: entries left by a previous run first, then new ones in order. Each entry is
/// retried on its own schedule, so one result the Coordinator keeps refusing (or answers with a
/// long `Retry-After`) does not hold back the others; when the Coordinator gives no answer at
/// all, every entry waits. On `flush`, one last bounded pass, leaving whatever is undelivered
/// on disk.
async fn outbox_task(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<(PathBuf, Entry)>,
    flush: watch::Receiver<bool>,
) {
    let _beat = ctx.liveness.register("outbox", None);
    let spool = ctx.spool.clone();
    let found: Vec<(PathBuf, Entry)> = match tokio::task::spawn_blocking(move || spool.list()).await
    {
        Ok(Ok(crate::spool::Listing {
            entries: found,
            corrupt,
        })) => {
            for c in corrupt {
                error!("unreadable spool entry set aside as {}", c.display());
            }
            if !found.is_empty() {
                info!(
                    entries = found.len(),
                    "resending results left by a previous run"
                );
            }
            found
        }
        Ok(Err(e)) => {
            error!("{e}");
            Vec::new()
        }
        Err(e) => {
            error!("spool reader failed: {e}");
            Vec::new()
        }
    };
    ctx.status.spooled(found.len() as u64);
    let mut queue: VecDeque<Pending> = found.into_iter().map(|i| Pending::new(&ctx, i)).collect();
    // When the Coordinator last gave no answer: nothing is sent before this.
    let mut unreachable = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    let mut all_wait_until = tokio::time::Instant::now();
    loop {
        while let Ok(item) = rx.try_recv() {
            push(&ctx, &mut queue, item);
        }
        // The entry due first (the oldest among equals).
        let Some(due) = queue
            .iter()
            .enumerate()
            .min_by_key(|(i, p)| (p.not_before, *i))
            .map(|(i, _)| i)
        else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => { push(&ctx, &mut queue, item); continue; }
                    None => return,
                },
                () = raised(&flush) => return final_flush(&ctx, &mut rx, queue).await,
            }
        };
        let at = queue[due].not_before.max(all_wait_until);
        if at > tokio::time::Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(at) => {}
                item = rx.recv() => if let Some(item) = item { push(&ctx, &mut queue, item) },
                () = raised(&flush) => return final_flush(&ctx, &mut rx, queue).await,
            }
            continue;
        }
        let Some(mut p) = queue.remove(due) else {
            continue;
        };
        let now = tokio::time::Instant::now();
        match send_entry(&ctx, &p.entry).await {
            Verdict::Settled => {
                unreachable.reset();
                settle(&ctx, p.path).await;
                continue;
            }
            Verdict::Unreachable => {
                all_wait_until = now + unreachable.delay(None);
            }
            Verdict::Retry(ra) => {
                unreachable.reset();
                p.not_before = now + p.backoff.delay(ra);
            }
            Verdict::RetrySlowly => {
                unreachable.reset();
                p.not_before = now + p.backoff.max();
            }
        }
        // Back in its place in the order; `not_before` says when it is due.
        queue.insert(due.min(queue.len()), p);
        if *flush.borrow() {
            return final_flush(&ctx, &mut rx, queue).await;
        }
    }
}

async fn final_flush(
    ctx: &Ctx,
    rx: &mut mpsc::UnboundedReceiver<(PathBuf, Entry)>,
    mut queue: VecDeque<Pending>,
) {
    while let Ok(item) = rx.try_recv() {
        push(ctx, &mut queue, item);
    }
    let bound = ctx.config.drain_grace.max(Duration::from_millis(100));
    let pass = async {
        let mut left = 0usize;
        for p in queue {
            match send_entry(ctx, &p.entry).await {
                Verdict::Settled => settle(ctx, p.path).await,
                _ => left += 1,
            }
        }
        left
    };
    match tokio::time::timeout(bound, pass).await {
        Ok(0) => {}
        Ok(left) => warn!(
            left,
            "results not yet delivered stay in the spool for the next start"
        ),
        Err(_) => {
            warn!("spool flush ran out of time; the rest stays in the spool for the next start")
        }
    }
}

/// What the auditor is told by the slots and the outbox.
pub(crate) enum AuditMsg {
    /// A job's audit entry was written (before its proof was enqueued).
    Stored {
        meta: audit::Meta,
        path: PathBuf,
        bytes: u64,
    },
    /// The proof of (job, attempt) was acked, with this audit or none.
    Acked {
        key: (String, u32),
        audit: Option<AuditChallenge>,
    },
    /// The proof of (job, attempt) was refused for good: no audit will come.
    Refused { key: (String, u32) },
}

/// One audit entry as the auditor keeps it in memory (its leaves stay on disk).
struct Kept {
    path: PathBuf,
    meta: audit::Meta,
    bytes: u64,
    /// Its proof has not been answered yet (so no poll may drop it).
    awaiting_ack: bool,
    /// The answer once built (recomputing is the expensive part; a retry resends it).
    answer: Option<Arc<AuditAnswer>>,
    /// When its answer may be sent (again).
    not_before: tokio::time::Instant,
    backoff: Backoff,
}

/// The auditor's state: the entries, their total size and the gate it keeps.
struct Auditor {
    kept: BTreeMap<(String, u32), Kept>,
    /// Open audits this miner has no entry for, already warned about.
    unknown: HashSet<(String, u32)>,
    full: bool,
}

impl Auditor {
    fn bytes(&self) -> u64 {
        self.kept.values().map(|k| k.bytes).sum()
    }

    /// Shows the spool in the status and opens or closes the dispatcher's gate, with one log
    /// line per change.
    fn publish(&mut self, ctx: &Ctx) {
        let bytes = self.bytes();
        let limit = ctx.config.audit_spool_mb.saturating_mul(1 << 20);
        let full = bytes >= limit;
        if full != self.full {
            if full {
                warn!(
                    entries = self.kept.len(),
                    bytes,
                    limit,
                    "the audit spool is full (AUDIT_SPOOL_MB): taking no new job until entries go"
                );
            } else {
                info!(
                    entries = self.kept.len(),
                    bytes, limit, "the audit spool has room again: taking jobs"
                );
            }
            self.full = full;
        }
        ctx.audit_room.send_replace(!full);
        ctx.status.audit_spool(self.kept.len() as u64, bytes, full);
    }

    fn new_kept(
        ctx: &Ctx,
        path: PathBuf,
        meta: audit::Meta,
        bytes: u64,
        awaiting_ack: bool,
    ) -> Kept {
        Kept {
            path,
            meta,
            bytes,
            awaiting_ack,
            answer: None,
            not_before: tokio::time::Instant::now(),
            backoff: Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max),
        }
    }

    /// Removes (job, attempt)'s entry from disk and memory.
    async fn drop_entry(&mut self, ctx: &Ctx, key: &(String, u32)) {
        let Some(k) = self.kept.remove(key) else {
            return;
        };
        let spool = ctx.audit_spool.clone();
        match tokio::task::spawn_blocking(move || spool.remove(&k.path)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("{e}"),
            Err(e) => error!("audit spool remover failed: {e}"),
        }
        self.publish(ctx);
    }

    /// Stores `challenge` durably in (job, attempt)'s entry; it is answered at once. A
    /// challenge the entry cannot answer (rows out of range, too many) drops it, with an error.
    async fn challenge(&mut self, ctx: &Ctx, key: &(String, u32), challenge: AuditChallenge) {
        let Some(k) = self.kept.get_mut(key) else {
            if self.unknown.insert(key.clone()) {
                warn!(job = %key.0, attempt = key.1, "the Coordinator asks an audit of a job this miner keeps no audit entry for; it cannot be answered");
            }
            return;
        };
        k.awaiting_ack = false;
        if k.meta.challenge.as_ref() == Some(&challenge) {
            return;
        }
        let spool = ctx.audit_spool.clone();
        let path = k.path.clone();
        let c = challenge.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut entry = spool.read(&path)?;
            if let Err(why) = audit::check_challenge(&entry, &c) {
                return Ok(Err(why));
            }
            entry.meta.challenge = Some(c);
            spool
                .write(&entry)
                .map(|(_, bytes)| Ok((entry.meta, bytes)))
        })
        .await;
        match stored {
            Ok(Ok(Ok((meta, bytes)))) => {
                info!(job = %key.0, attempt = key.1, rows = ?challenge.rows, "audit asked; answering");
                k.meta = meta;
                k.bytes = bytes;
                k.answer = None;
                k.not_before = tokio::time::Instant::now();
                k.backoff.reset();
                self.publish(ctx);
            }
            Ok(Ok(Err(why))) => {
                error!(job = %key.0, attempt = key.1, "the audit cannot be answered: {why}; dropping its entry");
                self.drop_entry(ctx, key).await;
            }
            Ok(Err(e)) => {
                error!(job = %key.0, attempt = key.1, "{e}; the audit cannot be answered, dropping its entry");
                self.drop_entry(ctx, key).await;
            }
            Err(e) => error!(job = %key.0, "audit spool writer failed: {e}"),
        }
    }

    async fn handle(&mut self, ctx: &Ctx, msg: AuditMsg) {
        match msg {
            AuditMsg::Stored { meta, path, bytes } => {
                let key = meta.key();
                self.kept
                    .insert(key, Self::new_kept(ctx, path, meta, bytes, true));
                self.publish(ctx);
            }
            AuditMsg::Acked { key, audit: None } => {
                debug!(job = %key.0, attempt = key.1, "not audited: the credit settles when its hold ends");
                self.drop_entry(ctx, &key).await;
            }
            AuditMsg::Acked {
                key,
                audit: Some(c),
            } => {
                if (c.id.as_str(), c.attempt) != (key.0.as_str(), key.1) || !audit::plausible(&c) {
                    error!(job = %key.0, attempt = key.1, "the proof's ack carries an audit this miner cannot answer (another job's, or more than {} rows); dropping its entry", audit::MAX_AUDIT_ROWS);
                    self.drop_entry(ctx, &key).await;
                } else {
                    self.challenge(ctx, &key, c).await;
                }
            }
            AuditMsg::Refused { key } => self.drop_entry(ctx, &key).await,
        }
    }

    /// The entry whose answer is due first, and when.
    fn next_due(&self) -> Option<((String, u32), tokio::time::Instant)> {
        self.kept
            .iter()
            .filter(|(_, k)| k.meta.challenge.is_some())
            .min_by_key(|(_, k)| k.not_before)
            .map(|(key, k)| (key.clone(), k.not_before))
    }

    /// Builds (once) and sends the answer of `key`'s audit; settles the entry on the
    /// Coordinator's verdict or an API refusal, else schedules a retry. `false` when the
    /// Coordinator gave no answer at all.
    async fn answer(&mut self, ctx: &Ctx, key: &(String, u32)) -> bool {
        let Some(k) = self.kept.get(key) else {
            return true;
        };
        let Some(challenge) = k.meta.challenge.clone() else {
            return true;
        };
        let answer = match &k.answer {
            Some(a) => a.clone(),
            None => {
                let spool = ctx.audit_spool.clone();
                let path = k.path.clone();
                let miner = ctx.config.miner_id.clone();
                let c = challenge.clone();
                let built = tokio::task::spawn_blocking(move || {
                    let entry = spool.read(&path).map_err(|e| e.to_string())?;
                    audit::open_rows(&entry, &c, &miner).map_err(|e| e.to_string())
                })
                .await;
                match built {
                    Ok(Ok((answer, faults))) => {
                        for f in &faults {
                            error!(job = %key.0, attempt = key.1, row = f.row, "SELF-CHECK FAILED: the recomputed row is not the row this miner committed to; its own result was wrong (faulty CPU, memory or GPU? CPU_KERNEL=portable rules out the fast int8 kernel); answering the recomputed row");
                        }
                        if !faults.is_empty() {
                            ctx.status.audit_self_check_failed(faults.len() as u64);
                        }
                        let answer = Arc::new(answer);
                        if let Some(k) = self.kept.get_mut(key) {
                            k.answer = Some(answer.clone());
                        }
                        answer
                    }
                    Ok(Err(why)) => {
                        error!(job = %key.0, attempt = key.1, "the audit cannot be answered: {why}; dropping its entry");
                        self.drop_entry(ctx, key).await;
                        return true;
                    }
                    Err(e) => {
                        error!(job = %key.0, "audit row recomputation failed: {e}; dropping its entry");
                        self.drop_entry(ctx, key).await;
                        return true;
                    }
                }
            }
        };
        let idem = audit::idempotency_key(&key.0, key.1);
        let r = ctx.client.audit(&answer, &idem).await;
        ctx.status.coordinator(answered(&r));
        let outcome = verdict(&r);
        match r {
            Ok(ack) => {
                match ack.verdict {
                    AuditVerdict::Passed => {
                        info!(job = %key.0, attempt = key.1, state = ack.state.as_str(), "audit passed")
                    }
                    AuditVerdict::Failed => {
                        error!(job = %key.0, attempt = key.1, state = ack.state.as_str(), "audit FAILED: {}", crate::untrusted::bounded(&ack.message, 300))
                    }
                }
                self.settled(ctx, key, Some(ack.verdict)).await;
            }
            Err(e) if outcome == Verdict::Settled => {
                warn!(job = %key.0, attempt = key.1, "audit answer refused: {e}; dropping its entry");
                self.settled(ctx, key, None).await;
            }
            Err(e) => {
                let now = tokio::time::Instant::now();
                if let Some(k) = self.kept.get_mut(key) {
                    let d = match outcome {
                        Verdict::Retry(ra) => k.backoff.delay(ra),
                        Verdict::RetrySlowly => k.backoff.max(),
                        Verdict::Unreachable | Verdict::Settled => k.backoff.delay(None),
                    };
                    k.not_before = now + d;
                    warn!(job = %key.0, attempt = key.1, "sending the audit answer: {e}; again in {d:?}");
                }
                return outcome != Verdict::Unreachable;
            }
        }
        true
    }

    async fn settled(&mut self, ctx: &Ctx, key: &(String, u32), v: Option<AuditVerdict>) {
        ctx.status.audit_answered(v);
        ctx.balance_kick.notify_one();
        ctx.emit(Event::AuditAnswered {
            id: key.0.clone(),
            attempt: key.1,
            verdict: v,
        });
        self.drop_entry(ctx, key).await;
    }

    /// Asks for this miner's open audits and applies [`audit::after_poll`] to every entry.
    async fn poll(&mut self, ctx: &Ctx) {
        let r = ctx.client.audits(&ctx.config.miner_id).await;
        ctx.status.coordinator(answered(&r));
        let open = match r {
            Ok(open) => open,
            Err(e) => {
                debug!("asking for the open audits: {e}");
                return;
            }
        };
        let open: Vec<AuditChallenge> = open.into_iter().filter(audit::plausible).collect();
        let now = ts::now();
        let mut fates = Vec::new();
        for (key, k) in &self.kept {
            let fate = audit::after_poll(&k.meta, k.awaiting_ack, &open, now, audit::MAX_ENTRY_AGE);
            if fate != PollFate::Keep {
                fates.push((key.clone(), fate));
            }
        }
        for (key, fate) in fates {
            match fate {
                PollFate::Keep => {}
                PollFate::Challenge(c) => self.challenge(ctx, &key, c).await,
                PollFate::Drop => {
                    debug!(job = %key.0, attempt = key.1, "no open audit names it: dropping its audit entry");
                    self.drop_entry(ctx, &key).await;
                }
            }
        }
        for c in &open {
            let key = (c.id.clone(), c.attempt);
            if !self.kept.contains_key(&key) && self.unknown.insert(key) {
                warn!(job = %c.id, attempt = c.attempt, "the Coordinator holds an open audit of a job this miner keeps no audit entry for; it cannot be answered");
            }
        }
    }
}

/// Reads the audit spool left by a previous run: each entry's header, and whether its proof
/// still waits in the outbox (then only its ack decides); sets the dispatcher's gate.
async fn load_audit_spool(ctx: &Ctx) -> Auditor {
    let spool = ctx.audit_spool.clone();
    let listing = tokio::task::spawn_blocking(move || spool.list()).await;
    let mut a = Auditor {
        kept: BTreeMap::new(),
        unknown: HashSet::new(),
        full: false,
    };
    match listing {
        Ok(Ok(l)) => {
            for c in l.corrupt {
                error!("unreadable audit entry set aside as {}", c.display());
            }
            for (path, meta, bytes) in l.entries {
                let awaiting = ctx.spool.holds(&meta.job_id, meta.attempt);
                let key = meta.key();
                a.kept
                    .insert(key, Auditor::new_kept(ctx, path, meta, bytes, awaiting));
            }
            if !a.kept.is_empty() {
                info!(
                    entries = a.kept.len(),
                    "audit entries left by a previous run: answering what the Coordinator asks"
                );
            }
        }
        Ok(Err(e)) => error!("{e}"),
        Err(e) => error!("audit spool reader failed: {e}"),
    }
    a.publish(ctx);
    a
}

/// The auditor: owns the audit spool (see the module docs). Until `flush`, it takes the
/// slots' and the outbox's messages, answers due audits one at a time, and polls the open
/// audits after the first accepted heartbeat and every `HEARTBEAT_SECS` while it keeps
/// entries.
async fn auditor_task(
    ctx: Arc<Ctx>,
    mut a: Auditor,
    mut rx: mpsc::UnboundedReceiver<AuditMsg>,
    hb_ok: watch::Receiver<bool>,
    flush: watch::Receiver<bool>,
) {
    // The first poll comes once a heartbeat was accepted (the Coordinator knows the miner).
    let mut poll_at: Option<tokio::time::Instant> = None;
    let mut registered = false;
    loop {
        while let Ok(msg) = rx.try_recv() {
            a.handle(&ctx, msg).await;
        }
        if *flush.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        if !registered && *hb_ok.borrow() {
            registered = true;
            poll_at = Some(now);
        }
        if poll_at.is_some_and(|t| t <= now) {
            a.poll(&ctx).await;
            poll_at =
                (!a.kept.is_empty()).then(|| tokio::time::Instant::now() + ctx.config.heartbeat);
            continue;
        }
        if let Some((key, at)) = a.next_due() {
            if at <= now {
                a.answer(&ctx, &key).await;
                continue;
            }
        }
        if registered && poll_at.is_none() && !a.kept.is_empty() {
            poll_at = Some(now + ctx.config.heartbeat);
        }
        let wake = [a.next_due().map(|(_, t)| t), poll_at]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => a.handle(&ctx, msg).await,
                None => return,
            },
            () = sleep_until_some(wake) => {}
            () = raised(&hb_ok), if !registered => {}
            () = raised(&flush) => return,
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_verdicts() {
        let ok: Result<(), CallError> = Ok(());
        assert_eq!(verdict(&ok), Verdict::Settled);
        let refused = |status| -> Result<(), CallError> {
            Err(CallError::Refused {
                status,
                code: "X".into(),
                message: String::new(),
            })
        };
        for s in [400, 403, 404, 409, 413, 422] {
            assert_eq!(verdict(&refused(s)), Verdict::Settled, "{s}");
        }
        assert_eq!(verdict(&refused(401)), Verdict::RetrySlowly);
        let t: Result<(), CallError> = Err(CallError::Transport("reset".into()));
        assert_eq!(verdict(&t), Verdict::Unreachable);
        // A 2xx that is not the ack, a redirect, a page from a proxy: never settled.
        for status in [200, 201, 302, 307, 404] {
            let u: Result<(), CallError> = Err(CallError::Unusable {
                status,
                why: "not the API's".into(),
            });
            assert_eq!(verdict(&u), Verdict::Retry(None), "{status}");
        }
        let r: Result<(), CallError> = Err(CallError::Retry {
            status: 429,
            code: "RATE_LIMITED".into(),
            message: String::new(),
            retry_after: Some(Duration::from_secs(1)),
        });
        assert_eq!(verdict(&r), Verdict::Retry(Some(Duration::from_secs(1))));
    }

    #[test]
    fn the_heartbeat_declares_what_this_build_runs_and_the_operator_maxima() {
        use crate::config::{AccelMode, ApiKey, MaxLimits};
        let config = Config {
            source: None,
            coord_url: "http://127.0.0.1:1".into(),
            wallet_addr: "w1".into(),
            api_key: ApiKey::new("aitbc_secret"),
            miner_id: "m1".into(),
            work_dir: "/tmp/w".into(),
            state_dir: "/tmp/s".into(),
            audit_spool_mb: 256,
            heartbeat: Duration::from_secs(20),
            job_poll: Duration::from_secs(3),
            poll_wait: Duration::from_secs(25),
            max_concurrency: 3,
            accel_mode: AccelMode::Gpu,
            log_file: None,
            log_level: "info".into(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            drain_grace: Duration::from_secs(30),
            job_limits_max: MaxLimits {
                ram_mb: 2048,
                runtime_s: 600,
                cpu_time_s: 1200,
                vram_mb: 0,
                disk_mb: 1024,
            },
            threads_per_job: 1,
            worker_exe: None,
            run_as_user: "nobody".into(),
            sandbox_fs: protocol::args::FsMode::Auto,
            cpu_kernel: protocol::args::CpuKernel::Auto,
            gpu_poll: Duration::from_millis(500),
            gpu_max_temp_c: 90,
            status_socket: None,
            metrics_file: None,
            metrics_interval: Duration::from_secs(15),
        };
        // This host as a GPU-less one sees it: no NVML.
        let none = GpuReport::not_probed("NVML unavailable: cannot load libnvidia-ml.so.1");
        let (mode, _) = policy::detect_mode(config.accel_mode, &none);
        let caps = capabilities(&config, mode, &none, None);
        assert_eq!((caps.miner_id.as_str(), caps.wallet.as_str()), ("m1", "w1"));
        assert_eq!((caps.mode, caps.gpu), (Mode::Cpu, GpuFlag(false)));
        assert!(caps.gpus.is_empty() && caps.gpu_health.is_none());
        assert_eq!(caps.limits.vram_mb, Some(0));
        assert_eq!(caps.concurrency, Some(3));
        assert_eq!(caps.workloads, ["torch_bench"]);
        assert_eq!(caps.limits.ram_mb, Some(2048));
        assert_eq!(caps.limits.cpu_time_s, Some(1200));
        assert!(caps.cores.is_some_and(|c| c >= 1));
        assert!(caps.version.unwrap().starts_with("aitbc-miner/"));
        let body = serde_json::to_string(&capabilities(&config, mode, &none, None)).unwrap();
        assert!(!body.contains("aitbc_secret"));
        assert!(
            !body.contains("gpus") && !body.contains("gpu_health"),
            "{body}"
        );

        // A GPU host: the devices, their health, the GPU flag and the VRAM maximum.
        let gpu = GpuReport {
            available: true,
            why: None,
            gpus: vec![protocol::api::GpuInfo {
                index: 0,
                name: "NVIDIA H100".into(),
                vram_mb: 81559,
                driver_version: Some("580.65.06".into()),
                cuda_version: Some("13.0".into()),
            }],
            libcuda_error: None,
        };
        let mut config = config;
        config.job_limits_max.vram_mb = 40000;
        let (mode, warning) = policy::detect_mode(config.accel_mode, &gpu);
        assert_eq!((mode, warning), (Mode::Gpu, None));
        let health = GpuHealth {
            healthy: false,
            temperature_c: Some(93),
            reason: Some("temperature 93 °C at or above GPU_MAX_TEMP_C = 90".into()),
            ..GpuHealth::default()
        };
        let caps = capabilities(&config, mode, &gpu, Some(health.clone()));
        assert_eq!((caps.mode, caps.gpu), (Mode::Gpu, GpuFlag(true)));
        assert_eq!(caps.gpus, gpu.gpus);
        assert_eq!(caps.gpu_health, Some(health));
        assert_eq!(caps.limits.vram_mb, Some(40000));
    }

    #[test]
    fn coordinator_errors_are_calls_without_a_usable_answer() {
        let ok: Result<(), CallError> = Ok(());
        assert!(answered(&ok));
        let refused = |status| -> Result<(), CallError> {
            Err(CallError::Refused {
                status,
                code: "X".into(),
                message: String::new(),
            })
        };
        for s in [400, 404, 409, 422] {
            assert!(answered(&refused(s)), "{s}: a working Coordinator said no");
        }
        for s in [401, 403] {
            assert!(!answered(&refused(s)), "{s}: the key is refused");
        }
        let t: Result<(), CallError> = Err(CallError::Transport("reset".into()));
        assert!(!answered(&t));
        let r: Result<(), CallError> = Err(CallError::Retry {
            status: 503,
            code: "X".into(),
            message: String::new(),
            retry_after: None,
        });
        assert!(!answered(&r));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(protocol::hex::encode(&[0x00, 0xab, 0x10]), "00ab10");
    }
}

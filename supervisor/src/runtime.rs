//! The miner's main loop: heartbeat, fetch, one task per job slot with a pre-started worker,
//! the outbox sender, and the drain on shutdown. It wires the pure decisions of [`crate::policy`]
//! and [`crate::backoff`] to the I/O of [`crate::client`], [`crate::spool`] and
//! [`crate::worker_proc`]. Unless the caller's [`WorkerCommand`] brings a cgroup subtree (the
//! `run` command's, into whose leaf the supervisor has moved), `run` makes one for its workers
//! only ([`crate::cgroup::workers_subtree`]: the calling process stays where it is, since it may
//! host other code); without root or delegation it warns once and workers go without cgroups.
//! Each slot keeps one worker pre-started; the worker's own job directory is the job's scratch
//! space.
//!
//! Invariants: never more jobs in flight than slots (a job is only fetched while a slot's permit
//! is held); a result is on disk before it is sent; nothing here formats the API key; no task
//! panics on input from the network or a worker.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::api::{ts, FailReport, GpuFlag, Job, Metrics, MinerCapabilities, Mode, Proof};
use protocol::wire::JobSpec;
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::client::{CallError, Client};
use crate::policy::{self, admit, failure_of, safe_job_id};
use crate::spool::{Entry, Spool};
use crate::worker_proc::{Ending, WorkerCommand, WorkerProcess};
use crate::{Config, Error, Event, Summary};

/// How long a freshly started worker has to say Hello.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the tasks share.
struct Ctx {
    config: Config,
    client: Client,
    spool: Spool,
    worker: WorkerCommand,
    events: Option<mpsc::UnboundedSender<Event>>,
    mode: Mode,
    outbox: mpsc::UnboundedSender<(PathBuf, Entry)>,
    jobs_done: AtomicU64,
    jobs_failed: AtomicU64,
}

impl Ctx {
    fn emit(&self, e: Event) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
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
    std::fs::create_dir_all(&config.work_dir).map_err(|source| Error::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let mut worker = worker;
    if worker.subtree.is_none() {
        worker.subtree = crate::cgroup::workers_subtree(&config.miner_id);
    }
    let (mode, mode_warning) = policy::detect_mode(config.accel_mode);
    if let Some(w) = mode_warning {
        warn!("{w}");
    }
    let slots = usize::try_from(config.max_concurrency.max(1)).unwrap_or(1);
    let (outbox_tx, outbox_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        config,
        client,
        spool,
        worker,
        events,
        mode,
        outbox: outbox_tx,
        jobs_done: AtomicU64::new(0),
        jobs_failed: AtomicU64::new(0),
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

    shutdown.await;
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

/// The heartbeat body.
fn capabilities(config: &Config, mode: Mode) -> MinerCapabilities {
    let host = crate::config::HostFacts::detect();
    MinerCapabilities {
        miner_id: config.miner_id.clone(),
        wallet: config.wallet_addr.clone(),
        mode,
        gpu: GpuFlag(false),
        concurrency: Some(config.max_concurrency),
        workloads: policy::WORKLOADS.iter().map(|w| (*w).to_owned()).collect(),
        limits: policy::miner_limits(&config.job_limits_max),
        cores: Some(host.cores),
        ram_mb: (host.ram_mb > 0).then_some(host.ram_mb),
        version: Some(concat!("aitbc-miner/", env!("CARGO_PKG_VERSION")).to_owned()),
    }
}

async fn heartbeat_task(ctx: Arc<Ctx>, ok_tx: watch::Sender<bool>, nudge: Arc<Notify>) {
    let caps = capabilities(&ctx.config, ctx.mode);
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    loop {
        // Each heartbeat is its own logical request (it states the miner as of now), so each
        // gets a fresh Idempotency-Key.
        let key = uuid::Uuid::new_v4().to_string();
        let pause = match ctx.client.heartbeat(&caps, &key).await {
            Ok(_) => {
                if !*ok_tx.borrow() {
                    info!(miner_id = %ctx.config.miner_id, "registered with the Coordinator");
                }
                let _ = ok_tx.send(true);
                ctx.emit(Event::Heartbeat { ok: true });
                backoff.reset();
                ctx.config.heartbeat
            }
            Err(e) => {
                ctx.emit(Event::Heartbeat { ok: false });
                match &e {
                    CallError::Refused { status, .. } => {
                        error!(
                            status,
                            "heartbeat refused: {e}; retrying every {:?}",
                            backoff.max()
                        );
                        backoff.max()
                    }
                    CallError::Retry { retry_after, .. } => {
                        let d = backoff.delay(*retry_after);
                        warn!("heartbeat failed: {e}; retrying in {d:?}");
                        d
                    }
                    CallError::Transport(_) => {
                        let d = backoff.delay(None);
                        warn!("heartbeat failed: {e}; retrying in {d:?}");
                        d
                    }
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = nudge.notified() => {}
        }
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
        let Some(slots_wanted) = policy::slots_to_request(permits.available_permits() + 1, false)
        else {
            return;
        };
        let t0 = Instant::now();
        let answer = tokio::select! {
            a = ctx.client.next(&ctx.config.miner_id, slots_wanted, ctx.config.poll_wait) => a,
            () = raised(&stop) => return,
        };
        let pause = match answer {
            Ok(Some(job)) => {
                backoff.reset();
                if !safe_job_id(&job.id) {
                    error!(job = ?job.id, "the Coordinator sent a job id that is not 1..=128 of [A-Za-z0-9._-]; ignoring the job (its lease will expire)");
                    permit = Some(held);
                    continue;
                }
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
                    CallError::Refused { .. } => {
                        error!(
                            "fetching jobs refused: {e}; retrying in {:?}",
                            backoff.max()
                        );
                        backoff.max()
                    }
                    CallError::Retry { retry_after, .. } => {
                        let d = backoff.delay(*retry_after);
                        warn!("fetching jobs failed: {e}; retrying in {d:?}");
                        d
                    }
                    CallError::Transport(_) => {
                        let d = backoff.delay(None);
                        warn!("fetching jobs failed: {e}; retrying in {d:?}");
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

async fn start_worker(ctx: &Ctx, slot: usize) -> Result<WorkerProcess, Error> {
    let r = WorkerProcess::start(&ctx.worker, WORKER_START_TIMEOUT).await;
    match &r {
        Ok(w) => debug!(slot, worker_pid = w.pid(), sandbox = %w.hello().sandbox, "worker ready"),
        Err(e) => error!(slot, "cannot start a worker: {e}"),
    }
    r
}

/// A slot's next worker, started in the background as soon as the previous job ends, so the
/// slot is free for the next job at once and the job finds its worker ready (or nearly).
type NextWorker = tokio::task::JoinHandle<Result<WorkerProcess, Error>>;

fn prestart(ctx: &Arc<Ctx>, slot: usize) -> NextWorker {
    let ctx = ctx.clone();
    // If the handle is dropped unused, the task still finishes and its WorkerProcess is
    // killed and reaped by Drop.
    tokio::spawn(async move { start_worker(&ctx, slot).await })
}

async fn slot_task(
    ctx: Arc<Ctx>,
    slot: usize,
    mut jobs: mpsc::Receiver<SlotJob>,
    idle: Arc<Mutex<Vec<usize>>>,
    kill: watch::Receiver<bool>,
) {
    let mut ready = Some(prestart(&ctx, slot));
    while let Some((job, permit)) = jobs.recv().await {
        run_job(&ctx, slot, job, &mut ready, &kill).await;
        // The next job on this slot finds its worker already started.
        if ready.is_none() && !*kill.borrow() {
            ready = Some(prestart(&ctx, slot));
        }
        if let Ok(mut v) = idle.lock() {
            v.push(slot);
        }
        drop(permit);
    }
    if let Some(next) = ready {
        if let Ok(Ok(w)) = next.await {
            w.retire().await;
        }
    }
}

/// The slot's pre-started worker if it is alive and quiet, otherwise a freshly started one.
async fn take_worker(
    ctx: &Ctx,
    slot: usize,
    next: Option<NextWorker>,
) -> Result<WorkerProcess, Error> {
    let pre = match next {
        Some(h) => h.await.map_err(|e| Error::Task {
            task: "worker start",
            message: e.to_string(),
        }),
        None => return start_worker(ctx, slot).await,
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
            start_worker(ctx, slot).await
        }
        // The pre-start failed (already logged): one more try for this job.
        Ok(Err(_)) | Err(_) => start_worker(ctx, slot).await,
    }
}

async fn run_job(
    ctx: &Ctx,
    slot: usize,
    job: Job,
    ready: &mut Option<NextWorker>,
    kill: &watch::Receiver<bool>,
) {
    let started_at = ts::now();
    let pickup = (started_at - job.created_at).try_into().ok();
    ctx.emit(Event::JobStarted {
        id: job.id.clone(),
        workload: job.workload.clone(),
        slot,
        pickup,
    });
    let spec = match admit(&job, &ctx.config.job_limits_max) {
        Ok(spec) => spec,
        // Refused before any process is touched: the slot's worker stays ready for the next job.
        Err(refusal) => return report_failure(ctx, &job, refusal.reason, refusal.message).await,
    };
    let worker = take_worker(ctx, slot, ready.take()).await;
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            let msg = format!("cannot start a worker: {e}");
            return report_failure(ctx, &job, protocol::api::FailReason::Internal, msg).await;
        }
    };
    info!(job = %job.id, workload = %job.workload, slot, attempt = job.attempt, worker_pid = worker.pid(), "job started");
    if let Err(e) = worker.limit_cpu(job.limits.cpu_time_s) {
        // A root supervisor without CAP_SYS_RESOURCE cannot set it on a worker that switched
        // to another user; the worker lowers its own limit from the JobSpec before computing.
        debug!(job = %job.id, "setting the worker's CPU-time limit from outside: {e}; the worker sets it itself");
    }
    let deadline = Duration::from_secs(job.limits.max_runtime_s);
    let run = JobSpec {
        job_id: job.id.clone(),
        spec,
        threads: ctx.config.threads_per_job.max(1),
        ram_mb: job.limits.ram_mb,
        cpu_time_s: job.limits.cpu_time_s,
        // Filled in by `WorkerProcess::run`, which knows the worker's kind.
        address_space_bytes: None,
    };
    // The worker's own job directory (created with it, removed when it is reaped) is the
    // job's scratch space.
    let finished = worker.run(run, deadline, raised(kill)).await;
    let finished_at = ts::now();
    match &finished.ending {
        Ending::Done(out) => {
            let wall_ms = finished.handoff_to_answer.as_millis() as u64;
            let gflops = policy::gflops(out.flops, out.compute_us);
            let proof = Proof {
                id: job.id.clone(),
                miner_id: Some(ctx.config.miner_id.clone()),
                attempt: Some(job.attempt),
                mode: ctx.mode,
                output_sha: hex(&out.output_sha),
                output_len: Some(out.output_len),
                metrics: Metrics {
                    wall_ms: Some(wall_ms),
                    cpu_ms: Some(finished.usage.cpu_ms),
                    flops: Some(out.flops),
                    gflops: Some(gflops),
                    peak_rss_mb: Some(finished.usage.peak_rss_mb),
                },
                started_at: Some(started_at),
                finished_at: Some(finished_at),
            };
            info!(job = %job.id, workload = %job.workload, ms = wall_ms, gflops, "job done");
            ctx.jobs_done.fetch_add(1, Ordering::Relaxed);
            ctx.emit(Event::JobDone {
                id: job.id.clone(),
                wall_ms,
                gflops,
            });
            enqueue(ctx, Entry::proof(proof)).await;
        }
        _ => {
            let (reason, message) = failure_of(&finished, &job.limits);
            report_failure(ctx, &job, reason, message).await;
        }
    }
}

async fn report_failure(ctx: &Ctx, job: &Job, reason: protocol::api::FailReason, message: String) {
    warn!(job = %job.id, workload = %job.workload, reason = reason.as_str(), "job failed: {message}");
    ctx.jobs_failed.fetch_add(1, Ordering::Relaxed);
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
    let _ = ctx.outbox.send((path, entry));
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// What to do with an outbox entry after one send.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The Coordinator answered definitively (2xx, or a 4xx retrying cannot change): drop it.
    Settled,
    /// Retry later with backoff (no answer, 408/429/5xx).
    Retry(Option<Duration>),
    /// Retry at the slowest pace: 401, which an operator may fix by correcting the key.
    RetrySlowly,
}

/// Pure: an outbox send's outcome as a verdict.
pub(crate) fn verdict<T>(r: &Result<T, CallError>) -> Verdict {
    match r {
        Ok(_) => Verdict::Settled,
        Err(CallError::Transport(_)) => Verdict::Retry(None),
        Err(CallError::Retry { retry_after, .. }) => Verdict::Retry(*retry_after),
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
            match &r {
                Ok(ack) => {
                    info!(job = %body.id, credited = ack.credited, wallet = %ack.wallet, "proof accepted");
                    ctx.emit(Event::ProofAccepted {
                        id: body.id.clone(),
                        credited: ack.credited,
                    });
                }
                Err(CallError::Refused { status, code, .. }) if *status != 401 => {
                    error!(job = %body.id, status, code = %code, "proof refused: {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default());
                    ctx.emit(Event::ProofRejected {
                        id: body.id.clone(),
                        status: *status,
                        code: code.clone(),
                    });
                }
                Err(e) => warn!(job = %body.id, "sending proof: {e}"),
            }
            verdict(&r)
        }
        Entry::Fail {
            idempotency_key,
            body,
        } => {
            let r = ctx.client.fail(body, idempotency_key).await;
            match &r {
                Ok(ack) => {
                    debug!(job = %body.id, state = ack.state.as_str(), "fail report accepted")
                }
                Err(CallError::Refused { status, code, .. }) if *status != 401 => {
                    error!(job = %body.id, status, code = %code, "fail report refused: {}", r.as_ref().err().map(ToString::to_string).unwrap_or_default())
                }
                Err(e) => warn!(job = %body.id, "sending fail report: {e}"),
            }
            verdict(&r)
        }
    }
}

async fn settle(ctx: &Ctx, path: PathBuf) {
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

/// The sender: entries left by a previous run first, then new ones in order; retries with
/// backoff; on `flush` one last bounded pass, leaving whatever is undelivered on disk.
async fn outbox_task(
    ctx: Arc<Ctx>,
    mut rx: mpsc::UnboundedReceiver<(PathBuf, Entry)>,
    flush: watch::Receiver<bool>,
) {
    let spool = ctx.spool.clone();
    let mut queue: VecDeque<(PathBuf, Entry)> =
        match tokio::task::spawn_blocking(move || spool.list()).await {
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
                found.into()
            }
            Ok(Err(e)) => {
                error!("{e}");
                VecDeque::new()
            }
            Err(e) => {
                error!("spool reader failed: {e}");
                VecDeque::new()
            }
        };
    let mut backoff = Backoff::new(ctx.config.backoff_min, ctx.config.backoff_max);
    loop {
        while let Ok(item) = rx.try_recv() {
            queue.push_back(item);
        }
        let Some((path, entry)) = queue.pop_front() else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => { queue.push_back(item); continue; }
                    None => return,
                },
                () = raised(&flush) => return final_flush(&ctx, &mut rx, queue).await,
            }
        };
        let pause = match send_entry(&ctx, &entry).await {
            Verdict::Settled => {
                backoff.reset();
                settle(&ctx, path).await;
                continue;
            }
            Verdict::Retry(ra) => backoff.delay(ra),
            Verdict::RetrySlowly => backoff.max(),
        };
        queue.push_front((path, entry));
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = raised(&flush) => return final_flush(&ctx, &mut rx, queue).await,
        }
    }
}

async fn final_flush(
    ctx: &Ctx,
    rx: &mut mpsc::UnboundedReceiver<(PathBuf, Entry)>,
    mut queue: VecDeque<(PathBuf, Entry)>,
) {
    while let Ok(item) = rx.try_recv() {
        queue.push_back(item);
    }
    let bound = ctx.config.drain_grace.max(Duration::from_millis(100));
    let pass = async {
        let mut left = 0usize;
        for (path, entry) in queue {
            match send_entry(ctx, &entry).await {
                Verdict::Settled => settle(ctx, path).await,
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
        assert_eq!(verdict(&t), Verdict::Retry(None));
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
            sandbox_fs: crate::config::SandboxFs::Auto,
        };
        let (mode, _) = policy::detect_mode(config.accel_mode);
        let caps = capabilities(&config, mode);
        assert_eq!((caps.miner_id.as_str(), caps.wallet.as_str()), ("m1", "w1"));
        assert_eq!((caps.mode, caps.gpu), (Mode::Cpu, GpuFlag(false)));
        assert_eq!(caps.concurrency, Some(3));
        assert_eq!(caps.workloads, ["torch_bench"]);
        assert_eq!(caps.limits.ram_mb, Some(2048));
        assert_eq!(caps.limits.cpu_time_s, Some(1200));
        assert!(caps.cores.is_some_and(|c| c >= 1));
        assert!(caps.version.unwrap().starts_with("aitbc-miner/"));
        let body = serde_json::to_string(&capabilities(&config, mode)).unwrap();
        assert!(!body.contains("aitbc_secret"));
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}

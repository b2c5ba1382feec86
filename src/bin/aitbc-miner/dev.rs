//! `aitbc-miner dev`: the whole flow on one machine, in the manner of `nomad agent -dev`.
//!
//! A reference Coordinator runs in-process on 127.0.0.1 with its SQLite file in a temporary
//! directory; a miner with two slots (the real supervisor, spawning real worker processes)
//! and a client that submits jobs run beside it. The client keeps exactly as many jobs in
//! flight as the miner has slots, so pickup latency measures how fast a job reaches an idle
//! miner rather than how long it queued. Nothing here is simulated; nothing outlives the run.
//!
//! Run as root, the in-process supervisor stays root (it shares the process with the
//! Coordinator and the client), but it must never give its workers root: the generated config
//! sets `RUN_AS_USER=nobody`, so a root supervisor's workers switch to `nobody` before exec,
//! and the temporary directory lets `nobody` pass through (mode 0711) to the work directory,
//! which is handed to it. As a normal user `RUN_AS_USER` is ignored and nothing changes.
//!
//! The GPU: the supervisor decides the mode from `ACCEL_MODE` (the environment overrides the
//! generated config, default `auto`) and logs why it runs on the CPU when `gpu` was asked for
//! (its warnings go to stderr). When this host has a usable GPU and `ACCEL_MODE` is not `cpu`,
//! the client's jobs ask for the device memory their params need and the generated config
//! allows up to the device's VRAM, so the jobs run on the GPU.
//!
//! The miner serves its status socket in the temporary directory (printed at start), so
//! `aitbc-miner status --socket PATH` works against it while the run lasts.
//!
//! Verification stays on, as with the Coordinator's defaults: proofs are audited (the first
//! ones of a miner always) and the miner answers from its audit spool; the others are held.
//! The hold is [`DEV_HOLD`] so the run can wait for its credits to settle: a job counts as done
//! when its audit passed or its proof was held, and at the end the run waits for the last hold
//! to end (a known time, then one sweep of the Coordinator) before it reads the balance. The
//! summary shows the audits (passed, failed) and the settlement (settled, pending, forfeited).

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use aitbc_coordinator::{Coordinator, CoordinatorConfig, Scope, VerifyConfig};
use aitbc_protocol::api::{AuditVerdict, Balance, JobLimits, JobView, SubmitJob};
use aitbc_protocol::workload::{plan, WorkloadSpec};
use aitbc_supervisor::{Event, WorkerCommand};

const WALLET: &str = "wallet_dev";
const REWARD: u64 = 100;
/// The user a root `dev` run's workers switch to.
const DEV_RUN_AS_USER: &str = "nobody";
/// How long the dev Coordinator holds a credit that was not audited before it settles.
const DEV_HOLD: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct DevArgs {
    /// Number of jobs the client submits.
    #[arg(long, default_value_t = 8)]
    jobs: u32,
    /// Job slots of the miner (MAX_CONCURRENCY).
    #[arg(long, default_value_t = 2)]
    slots: u32,
    /// torch_bench params of every job.
    #[arg(long, default_value = r#"{"n":1024,"iters":20}"#)]
    params: String,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
}

#[derive(Debug, Default)]
struct Summary {
    jobs_done: u64,
    jobs_failed: u64,
    pickup_ms: Vec<f64>,
    job_ms: Vec<f64>,
    flops: u64,
    elapsed: Duration,
    audits_passed: u64,
    audits_failed: u64,
    /// Jobs whose credit was held (not audited).
    held: u64,
    settled: u64,
    pending: u64,
    forfeited: u64,
}

pub fn main(args: DevArgs) -> anyhow::Result<ExitCode> {
    if args.jobs == 0 || args.slots == 0 {
        bail!("--jobs and --slots must be at least 1");
    }
    let params: Value = serde_json::from_str(&args.params)
        .with_context(|| format!("--params {:?} is not JSON", args.params))?;
    let spec = plan("torch_bench", &params, &JobLimits::default())
        .with_context(|| format!("--params {}", args.params))?;
    let flops_per_job = spec.flops();
    // The supervisor's warnings (e.g. why ACCEL_MODE=gpu runs on the CPU) go to stderr.
    let _log = aitbc_supervisor::logging::init("error,aitbc_supervisor=warn", None).ok();
    let gpu = gpu_for_jobs(&spec);
    let dir = tempfile::Builder::new()
        .prefix("aitbc-dev-")
        .tempdir()
        .context("creating the temporary directory")?;
    if aitbc_supervisor::privilege::is_root() {
        // Workers run as nobody: they must reach their job directories under work/, and only
        // that (0711: pass through, no listing; the database stays unreadable to them).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .context("opening the temporary directory to the workers' user")?;
        let (uid, gid) = aitbc_supervisor::privilege::lookup_user(DEV_RUN_AS_USER)?;
        aitbc_supervisor::privilege::prepare_dir(
            "WORK_DIR",
            &dir.path().join("work"),
            uid,
            gid,
            aitbc_supervisor::privilege::Need::ReadWrite,
        )?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(run(&args, params, flops_per_job, gpu, dir.path()))?;
    print_summary(&args, &summary);
    Ok(if summary.jobs_failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `(the job's vram_mb, the device's VRAM)` when the jobs should run on this host's GPU: it has
/// a usable one and `ACCEL_MODE` (from the environment) does not say `cpu`.
fn gpu_for_jobs(spec: &WorkloadSpec) -> Option<(u64, u64)> {
    let mode = std::env::var("ACCEL_MODE").unwrap_or_default();
    if mode.eq_ignore_ascii_case("cpu") {
        return None;
    }
    let report = aitbc_supervisor::gpu::detect();
    let device = report.usable().ok()?;
    Some((spec.vram_mb(), device.vram_mb))
}

async fn run(
    args: &DevArgs,
    params: Value,
    flops_per_job: u64,
    gpu: Option<(u64, u64)>,
    dir: &std::path::Path,
) -> anyhow::Result<Summary> {
    // 1. The Coordinator, in-process, on an ephemeral loopback port.
    let coordinator = Coordinator::open(
        &dir.join("coordinator.db"),
        CoordinatorConfig {
            sweep_interval: Duration::from_millis(200),
            verify: VerifyConfig {
                hold: DEV_HOLD,
                ..VerifyConfig::default()
            },
            ..CoordinatorConfig::default()
        },
    )?;
    let sweeper = coordinator.clone();
    let miner_key = coordinator.add_key(Scope::Miner, "dev-miner")?;
    let client_key = coordinator.add_key(Scope::Client, "dev-client")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_coord, coord_stopped) = oneshot::channel::<()>();
    let coord = tokio::spawn(coordinator.serve(listener, async {
        let _ = coord_stopped.await;
    }));

    // 2. The miner: the real config parser on a generated file, the real supervisor.
    let config_path = dir.join("miner.conf");
    // A status socket in the temporary directory, unless its path is too long for one.
    let socket = dir.join("status.sock");
    let socket = match socket.to_str() {
        Some(s) if s.len() <= aitbc_supervisor::config::MAX_SOCKET_PATH => s.to_owned(),
        _ => String::new(),
    };
    let conf = format!(
        "# generated by aitbc-miner dev\n\
         COORD_URL=\"{url}\"\nWALLET_ADDR=\"{WALLET}\"\nAPI_KEY=\"{miner_key}\"\n\
         MINER_ID=\"$(hostname)-dev\"\nWORK_DIR=\"{work}\"\nSTATE_DIR=\"{state}\"\n\
         HEARTBEAT_SECS=2\nJOB_POLL_SECS=0.05\nPOLL_WAIT_SECS=10\nMAX_CONCURRENCY={slots}\n\
         BACKOFF_MIN_SECS=0.05\nBACKOFF_MAX_SECS=1\nDRAIN_GRACE_SECS=5\n\
         RUN_AS_USER=\"{DEV_RUN_AS_USER}\"\nMAX_JOB_VRAM_MB={max_vram}\n\
         STATUS_SOCKET=\"{socket}\"\n",
        work = dir.join("work").display(),
        state = dir.join("state").display(),
        slots = args.slots,
        max_vram = gpu.map_or(0, |(_, device)| device),
    );
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&config_path)
        .and_then(|mut f| f.write_all(conf.as_bytes()))
        .with_context(|| format!("writing {}", config_path.display()))?;
    let (config, warnings) = aitbc_supervisor::config::load(Some(&config_path))?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_miner, miner_stopped) = oneshot::channel::<()>();
    // From the config: job directories in its WORK_DIR, its sandbox settings, and (as root)
    // RUN_AS_USER for the workers.
    let worker = WorkerCommand::for_config(&config)?;
    if let Some(socket) = &config.status_socket {
        eprintln!(
            "while it runs: aitbc-miner status --socket {}",
            socket.display()
        );
    }
    let miner = tokio::spawn(aitbc_supervisor::run(
        config,
        worker,
        Some(events_tx),
        async {
            let _ = miner_stopped.await;
        },
    ));

    // 3. The client: keep `slots` jobs in flight until `jobs` were submitted.
    let http = reqwest::Client::new();
    let submit = SubmitJob {
        workload: "torch_bench".into(),
        params,
        limits: JobLimits {
            vram_mb: gpu.map_or(0, |(job, _)| job),
            ..JobLimits::default()
        },
        reward: REWARD,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut submitted = 0u32;
    let mut outstanding: HashMap<String, ()> = HashMap::new();
    let mut computed: HashMap<String, String> = HashMap::new();
    let mut summary = Summary::default();
    // When the last held credit settles.
    let mut last_hold: Option<time::OffsetDateTime> = None;
    while submitted < args.jobs.min(args.slots) {
        let id = submit_job(&http, &url, &client_key, &submit).await?;
        outstanding.insert(id, ());
        submitted += 1;
    }
    let total = u64::from(args.jobs);
    while summary.jobs_done + summary.jobs_failed < total {
        let event = tokio::time::timeout_at(deadline.into(), events.recv()).await;
        let event = match event {
            Ok(Some(e)) => e,
            Ok(None) => bail!("the miner stopped unexpectedly"),
            Err(_) => bail!("timed out after {} s", args.timeout_secs),
        };
        let finished = match event {
            Event::JobStarted { pickup, .. } => {
                if let Some(p) = pickup {
                    summary.pickup_ms.push(p.as_secs_f64() * 1e3);
                }
                false
            }
            Event::JobDone {
                id,
                wall_ms,
                gflops,
            } => {
                summary.job_ms.push(wall_ms as f64);
                computed.insert(id, format!("{wall_ms} ms, {gflops:.1} Gop/s"));
                false
            }
            Event::ProofAccepted {
                id,
                credited,
                audited: true,
                ..
            } if outstanding.contains_key(&id) => {
                if let Some(how) = computed.get_mut(&id) {
                    how.push_str(&format!(", credited {credited}"));
                }
                false
            }
            Event::ProofAccepted {
                id,
                credited,
                audited: false,
                settles_at,
            } if outstanding.remove(&id).is_some() => {
                summary.jobs_done += 1;
                summary.held += 1;
                summary.flops += flops_per_job;
                last_hold = last_hold.max(settles_at);
                let how = computed.remove(&id).unwrap_or_default();
                progress(
                    args,
                    &summary,
                    &format!("{id} done ({how}), credited {credited}, held until it settles"),
                );
                true
            }
            Event::AuditAnswered { id, verdict, .. } if outstanding.remove(&id).is_some() => {
                let how = computed.remove(&id).unwrap_or_default();
                let what = match verdict {
                    Some(AuditVerdict::Passed) => {
                        summary.jobs_done += 1;
                        summary.audits_passed += 1;
                        summary.flops += flops_per_job;
                        format!("{id} done ({how}), audit passed, settled")
                    }
                    Some(AuditVerdict::Failed) => {
                        summary.jobs_failed += 1;
                        summary.audits_failed += 1;
                        format!("{id} audit FAILED: its credit is forfeited")
                    }
                    None => {
                        summary.jobs_failed += 1;
                        format!("{id} audit answer refused")
                    }
                };
                progress(args, &summary, &what);
                true
            }
            Event::ProofRejected { id, status, code } if outstanding.remove(&id).is_some() => {
                summary.jobs_failed += 1;
                progress(
                    args,
                    &summary,
                    &format!("{id} proof refused: {status} {code}"),
                );
                true
            }
            Event::JobFailed {
                id,
                reason,
                message,
            } if outstanding.remove(&id).is_some() => {
                summary.jobs_failed += 1;
                progress(
                    args,
                    &summary,
                    &format!("{id} failed: {} {message}", reason.as_str()),
                );
                true
            }
            _ => false,
        };
        if finished && submitted < args.jobs {
            let id = submit_job(&http, &url, &client_key, &submit).await?;
            outstanding.insert(id, ());
            submitted += 1;
        }
    }
    summary.elapsed = started.elapsed();
    // The held credits settle once their hold ends: wait for that time, then have the
    // Coordinator sweep (its sweeper would, within `sweep_interval`).
    let balance = || async {
        anyhow::Ok(
            http.get(format!("{url}/v1/wallet/balance?wallet={WALLET}"))
                .send()
                .await?
                .error_for_status()?
                .json::<Balance>()
                .await?,
        )
    };
    let mut b = balance().await?;
    if let Some(at) = last_hold {
        let mut at = at;
        loop {
            let wait = (at - time::OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            let wait = Duration::try_from(wait).unwrap_or_default() + Duration::from_millis(2);
            if Instant::now() + wait > deadline {
                bail!(
                    "timed out after {} s waiting for held credits to settle",
                    args.timeout_secs
                );
            }
            tokio::time::sleep(wait).await;
            sweeper.sweep_once().await?;
            b = balance().await?;
            if b.pending == 0 {
                break;
            }
            // The Coordinator's clock is its own: try again a little later.
            at = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(50);
        }
    }
    (summary.settled, summary.pending, summary.forfeited) = (b.balance, b.pending, b.forfeited);

    let _ = stop_miner.send(());
    match miner.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("miner: {e}"),
        Err(e) => eprintln!("miner task: {e}"),
    }
    let _ = stop_coord.send(());
    if let Ok(Err(e)) = coord.await {
        eprintln!("coordinator: {e}");
    }
    Ok(summary)
}

async fn submit_job(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    job: &SubmitJob,
) -> anyhow::Result<String> {
    let resp = http
        .post(format!("{url}/v1/client/jobs"))
        .bearer_auth(key)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(job)
        .send()
        .await
        .context("submitting a job")?;
    let status = resp.status();
    if !status.is_success() {
        bail!(
            "submitting a job: {status}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(resp.json::<JobView>().await?.id)
}

fn progress(args: &DevArgs, s: &Summary, what: &str) {
    let done = s.jobs_done + s.jobs_failed;
    let width = 20usize;
    let filled = (done as usize * width) / args.jobs as usize;
    eprintln!(
        "[{}{}] {done:>3}/{} {what}",
        "#".repeat(filled),
        ".".repeat(width - filled),
        args.jobs
    );
}

fn p50(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) / 2]
}

fn print_summary(args: &DevArgs, s: &Summary) {
    let gflops = if s.elapsed.is_zero() {
        0.0
    } else {
        s.flops as f64 / s.elapsed.as_secs_f64() / 1e9
    };
    let pickup = p50(&s.pickup_ms);
    let job = p50(&s.job_ms);
    if args.json {
        println!(
            "{}",
            json!({
                "jobs_done": s.jobs_done,
                "jobs_failed": s.jobs_failed,
                "pickup_p50_ms": (pickup * 100.0).round() / 100.0,
                "job_p50_ms": (job * 100.0).round() / 100.0,
                "gflops": (gflops * 100.0).round() / 100.0,
                "balance": s.settled,
                "pending": s.pending,
                "forfeited": s.forfeited,
                "audits_passed": s.audits_passed,
                "audits_failed": s.audits_failed,
                "held": s.held,
            })
        );
    } else {
        println!(
            "aitbc-miner dev: {} jobs on {} slots in {:.2} s",
            args.jobs,
            args.slots,
            s.elapsed.as_secs_f64()
        );
        println!("  jobs done       {}", s.jobs_done);
        println!("  jobs failed     {}", s.jobs_failed);
        println!("  pickup p50      {pickup:.2} ms");
        println!("  job time p50    {job:.1} ms");
        println!("  throughput      {gflops:.2} Gop/s (int8)");
        println!(
            "  audits          {} passed, {} failed ({} held, not audited)",
            s.audits_passed, s.audits_failed, s.held
        );
        println!(
            "  wallet          {} settled, {} pending, {} forfeited ({WALLET})",
            s.settled, s.pending, s.forfeited
        );
    }
}

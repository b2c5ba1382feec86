//! One job through the real worker path with no Coordinator: plan the job, start a worker, wait
//! for its Hello, hand it the job, read the answer, reap it. `aitbc-miner bench` and the
//! overhead benchmark use it; the timings separate process start-up from the per-job hand-off.
//! The job is planned ([`plan_job`]) and run ([`execute`]) as the daemon's are, held to its own
//! limits. The worker gets a cgroup only when the [`WorkerCommand`] carries a subtree, and is a
//! GPU worker when the command's kind says so and the job asks for device memory (then
//! `limits.vram_mb` must cover the workload, the VRAM watch holds it to that and the energy
//! comes from NVML; a CPU job's from RAPL where readable).
//!
//! It must never talk to the network or touch the spool.

use std::time::{Duration, Instant};

use protocol::api::{JobLimits, Metrics};

use crate::execute::{execute, Done, Failed, Meters, DEFAULT_GPU_POLL};
use crate::plan::{own_job, plan_job};
use crate::runtime::WORKER_START_TIMEOUT;
use crate::worker_proc::{WorkerCommand, WorkerProcess};
use crate::Error;

/// The outcome of one local job.
#[derive(Clone, Debug)]
pub struct LocalRun {
    /// Lower-case hex SHA-256 of the output.
    pub output_sha: String,
    pub output_len: u64,
    /// Lower-case hex Merkle root over the output's rows.
    pub merkle_root: String,
    /// The rows' leaves the worker sent (what an audit's paths are built from).
    pub leaves: Vec<protocol::merkle::Digest>,
    pub metrics: Metrics,
    /// From spawning the worker to its Hello.
    pub spawn_to_ready: Duration,
    /// The worker's Hello line: the confinement it applied and, on a CPU worker, the int8
    /// kernel it ran (`int8 kernel NAME`).
    pub sandbox: String,
    /// From handing the job to the ready worker to its answer (Run frame, compute, hash, answer).
    pub handoff_to_answer: Duration,
}

/// Runs `workload` with `params` under `limits` on a fresh worker with `threads` threads, of
/// the kind `worker` says (a job with no `limits.vram_mb` runs on a CPU worker).
pub async fn run_local(
    worker: &WorkerCommand,
    workload: &str,
    params: &serde_json::Value,
    limits: JobLimits,
    threads: u32,
) -> Result<LocalRun, Error> {
    let refused = |r: crate::policy::Refusal| Error::Job {
        reason: r.reason,
        message: r.message,
    };
    let (job, max) = own_job(
        "local",
        workload,
        params.clone(),
        limits,
        worker.file_size_mb,
    );
    let plan = plan_job(&job, &max, threads, worker.kind).map_err(refused)?;
    let meters = Meters::open(plan.kind == protocol::api::Mode::Gpu, DEFAULT_GPU_POLL);
    let t0 = Instant::now();
    let w = WorkerProcess::start(&worker.with_kind(plan.kind), WORKER_START_TIMEOUT).await?;
    let spawn_to_ready = t0.elapsed();
    let sandbox = w.hello().sandbox.clone();
    let plan = plan
        .for_worker(w.hello().kind, &job, &max)
        .map_err(refused)?;
    match execute(w, &plan, &meters, std::future::pending()).await {
        Ok(Done {
            output,
            metrics,
            handoff,
            leaves,
        }) => Ok(LocalRun {
            output_sha: protocol::hex::encode(&output.output_sha),
            output_len: output.output_len,
            merkle_root: protocol::hex::encode(&output.merkle_root),
            leaves,
            metrics,
            spawn_to_ready,
            sandbox,
            handoff_to_answer: handoff,
        }),
        Err(Failed { reason, message }) => Err(Error::Job { reason, message }),
    }
}

//! One job through the real worker path with no Coordinator: plan the job, start a worker, wait
//! for its Hello, hand it the job, read the answer, reap it. `aitbc-miner bench` and the
//! overhead benchmark use it; the timings separate process start-up from the per-job hand-off.
//! The worker gets a cgroup only when the [`WorkerCommand`] carries a subtree, and is a GPU
//! worker when the command's kind says so (then `limits.vram_mb` must cover the workload and
//! the energy comes from NVML; a CPU job's from RAPL where readable).
//!
//! It must never talk to the network or touch the spool.

use std::time::{Duration, Instant};

use protocol::api::Mode;
use protocol::api::{JobLimits, Metrics};
use protocol::wire::JobSpec;
use protocol::workload::plan;

use crate::ending::Ending;
use crate::policy;
use crate::runtime::WORKER_START_TIMEOUT;
use crate::worker_proc::{WorkerCommand, WorkerProcess};
use crate::Error;

/// The outcome of one local job.
#[derive(Clone, Debug)]
pub struct LocalRun {
    /// Lower-case hex SHA-256 of the output.
    pub output_sha: String,
    pub output_len: u64,
    pub metrics: Metrics,
    /// From spawning the worker to its Hello.
    pub spawn_to_ready: Duration,
    /// From handing the job to the ready worker to its answer (Run frame, compute, hash, answer).
    pub handoff_to_answer: Duration,
}

/// Runs `workload` with `params` under `limits` on a fresh worker with `threads` threads.
pub async fn run_local(
    worker: &WorkerCommand,
    workload: &str,
    params: &serde_json::Value,
    limits: JobLimits,
    threads: u32,
) -> Result<LocalRun, Error> {
    let spec = plan(workload, params, &limits).map_err(|e| Error::Job {
        reason: e.fail_reason(),
        message: e.to_string(),
    })?;
    let vram_mb = match worker.kind {
        Mode::Gpu => policy::check_vram(&spec, &limits).map_err(|r| Error::Job {
            reason: r.reason,
            message: r.message,
        })?,
        Mode::Cpu => 0,
    };
    let nvml = match worker.kind {
        Mode::Gpu => crate::gpu::nvml::Nvml::get().ok(),
        Mode::Cpu => None,
    };
    let rapl = crate::gpu::rapl::Rapl::open(std::path::Path::new(crate::gpu::rapl::POWERCAP));
    let t0 = Instant::now();
    let w = WorkerProcess::start(worker, WORKER_START_TIMEOUT).await?;
    let spawn_to_ready = t0.elapsed();
    let deadline = Duration::from_secs(limits.max_runtime_s);
    let job = JobSpec {
        job_id: "local".into(),
        spec,
        threads: threads.max(1),
        ram_mb: limits.ram_mb,
        cpu_time_s: limits.cpu_time_s,
        address_space_bytes: None,
        vram_mb,
    };
    let meter = crate::runtime::EnergyMeter::start(w.hello().kind, nvml, rapl.as_ref()).await;
    let f = w.run(job, deadline, std::future::pending()).await;
    let (energy_mj, energy_source) = meter.finish().await;
    match &f.ending {
        Ending::Done(out) => Ok(LocalRun {
            output_sha: crate::runtime::hex(&out.output_sha),
            output_len: out.output_len,
            metrics: Metrics {
                wall_ms: Some(f.handoff_to_answer.as_millis() as u64),
                cpu_ms: Some(f.usage.cpu_ms),
                flops: Some(out.flops),
                gflops: Some(policy::gflops(out.flops, out.compute_us)),
                peak_rss_mb: Some(f.usage.peak_rss_mb),
                energy_mj,
                energy_source: Some(energy_source),
                tflops: Some(policy::tflops(out.flops, out.compute_us)),
            },
            spawn_to_ready,
            handoff_to_answer: f.handoff_to_answer,
        }),
        _ => {
            let (reason, message) = f.failure(&limits);
            Err(Error::Job { reason, message })
        }
    }
}

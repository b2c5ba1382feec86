//! The one way a planned job runs on a ready worker, for the daemon (`run`, `dev`), `bench`
//! ([`crate::local`]) and the doctor's self-test alike: the energy counter read around the job
//! (NVML for a GPU job, RAPL for a CPU job, where readable), the VRAM watch beside a GPU job
//! (NVML's used device memory of the worker every `gpu_poll`, killed past its cap), the
//! hand-off and answer through [`WorkerProcess::run_watched`], and the result: the output with
//! its [`Metrics`], built here only, or the fail reason and message.
//!
//! It takes the plan as it is ([`crate::plan`]) and decides no limit. What comes before (where
//! the job comes from, which worker) and after (a proof and the spool, a benchmark line, a
//! doctor line) is the caller's.

use std::future::Future;
use std::time::Duration;

use protocol::api::{EnergySource, FailReason, Metrics, Mode};
use protocol::wire::JobOutput;
use tracing::warn;

use crate::ending::Ending;
use crate::gpu;
use crate::gpu::nvml::Nvml;
use crate::gpu::rapl::Rapl;
use crate::plan::JobPlan;
use crate::policy;
use crate::worker_proc::WorkerProcess;

/// How often the VRAM watch polls where no config says (`GPU_POLL_MS`'s default).
pub const DEFAULT_GPU_POLL: Duration = Duration::from_millis(500);

/// What a job is measured and watched with.
#[derive(Clone)]
pub struct Meters {
    /// NVML, when it answered: the GPU's energy counter and the VRAM watch.
    pub nvml: Option<Nvml>,
    /// The CPU packages' energy counters, when readable.
    pub rapl: Option<Rapl>,
    /// How often the VRAM watch reads a GPU job's device memory.
    pub gpu_poll: Duration,
}

impl Meters {
    /// No meters: no energy figure (`energy_source = unavailable`) and no VRAM watch.
    pub fn none() -> Meters {
        Meters {
            nvml: None,
            rapl: None,
            gpu_poll: DEFAULT_GPU_POLL,
        }
    }

    /// This host's meters: NVML when `nvml` says to try it (the GPU probe found it, or the job
    /// is a GPU job) and it loads; RAPL where the powercap counters are readable.
    pub fn open(nvml: bool, gpu_poll: Duration) -> Meters {
        Meters {
            nvml: nvml.then(|| Nvml::get().ok()).flatten(),
            rapl: Rapl::open(std::path::Path::new(gpu::rapl::POWERCAP)),
            gpu_poll,
        }
    }
}

/// A job the worker answered with its output.
#[derive(Clone, Debug)]
pub struct Done {
    pub output: JobOutput,
    /// The leaves of the output's rows, checked against `output.merkle_root`: what an audit's
    /// paths are built from.
    pub leaves: Vec<protocol::merkle::Digest>,
    pub metrics: Metrics,
    /// From handing the job over to the answer.
    pub handoff: Duration,
}

/// A job that ended any other way, as the fail report says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failed {
    pub reason: FailReason,
    pub message: String,
}

/// Runs `plan` on `worker` (a ready worker of `plan.kind`) until it answers, its deadline
/// passes, the VRAM watch fires or `cancel` resolves; the worker is reaped before this returns.
pub async fn execute(
    worker: WorkerProcess,
    plan: &JobPlan,
    meters: &Meters,
    cancel: impl Future<Output = ()>,
) -> Result<Done, Failed> {
    let meter = EnergyMeter::start(plan.kind, meters.nvml, meters.rapl.as_ref()).await;
    let finished = match (plan.kind, meters.nvml) {
        (Mode::Gpu, Some(nvml)) => {
            let pid = u32::try_from(worker.pid()).unwrap_or(0);
            // What the worker holds before the job (its CUDA context) is not the job's.
            let baseline = tokio::task::spawn_blocking(move || nvml.process_vram_bytes(pid))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .unwrap_or(0);
            let watch = vram_watch(nvml, pid, baseline, plan.vram_cap_mb(), meters.gpu_poll);
            worker.run_watched(plan, cancel, watch).await
        }
        _ => worker.run(plan, cancel).await,
    };
    let Ending::Done(out, leaves) = &finished.ending else {
        let (reason, message) = finished.failure(&plan.limits);
        return Err(Failed { reason, message });
    };
    let (energy_mj, energy_source) = meter.finish().await;
    Ok(Done {
        metrics: Metrics {
            wall_ms: Some(finished.handoff_to_answer.as_millis() as u64),
            cpu_ms: Some(finished.usage.cpu_ms),
            flops: Some(out.flops),
            gflops: Some(policy::gflops(out.flops, out.compute_us)),
            peak_rss_mb: Some(finished.usage.peak_rss_mb),
            energy_mj,
            energy_source: Some(energy_source),
            tflops: Some(policy::tflops(out.flops, out.compute_us)),
        },
        output: out.clone(),
        leaves: leaves.clone(),
        handoff: finished.handoff_to_answer,
    })
}

/// The VRAM watch of one GPU job: every `every`, NVML's used device memory of process `pid`;
/// resolves with the fail message once it exceeds `baseline` by more than `cap_mb` (never
/// otherwise). A failed reading is logged once and polling goes on.
async fn vram_watch(nvml: Nvml, pid: u32, baseline: u64, cap_mb: u64, every: Duration) -> String {
    let mut complained = false;
    loop {
        tokio::time::sleep(every).await;
        match tokio::task::spawn_blocking(move || nvml.process_vram_bytes(pid)).await {
            Ok(Ok(used)) => {
                if let Some(message) = gpu::vram_over(used, baseline, cap_mb) {
                    return message;
                }
            }
            Ok(Err(e)) if !complained => {
                complained = true;
                warn!(
                    worker_pid = pid,
                    "VRAM watch: cannot read the worker's device memory: {e}"
                );
            }
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

/// An energy counter read before a job, to be read again after it.
enum EnergyMeter {
    Nvml(Nvml, u64),
    Rapl(Rapl, gpu::rapl::Sample),
    Unavailable,
}

impl EnergyMeter {
    /// NVML's counter for a GPU job, RAPL's for a CPU job, when readable.
    async fn start(kind: Mode, nvml: Option<Nvml>, rapl: Option<&Rapl>) -> EnergyMeter {
        match (kind, nvml, rapl) {
            (Mode::Gpu, Some(nvml), _) => {
                match tokio::task::spawn_blocking(move || nvml.energy_mj()).await {
                    Ok(Ok(mj)) => EnergyMeter::Nvml(nvml, mj),
                    _ => EnergyMeter::Unavailable,
                }
            }
            (Mode::Cpu, _, Some(rapl)) => match rapl.sample() {
                Some(s) => EnergyMeter::Rapl(rapl.clone(), s),
                None => EnergyMeter::Unavailable,
            },
            _ => EnergyMeter::Unavailable,
        }
    }

    /// The energy since [`EnergyMeter::start`] and where it came from; no figure when a
    /// counter could not be read.
    async fn finish(self) -> (Option<u64>, EnergySource) {
        match self {
            EnergyMeter::Nvml(nvml, before) => {
                match tokio::task::spawn_blocking(move || nvml.energy_mj()).await {
                    Ok(Ok(after)) => (
                        Some(gpu::energy_delta(before, after, u64::MAX)),
                        EnergySource::Nvml,
                    ),
                    _ => (None, EnergySource::Unavailable),
                }
            }
            EnergyMeter::Rapl(rapl, before) => {
                match rapl
                    .sample()
                    .and_then(|after| rapl.delta_mj(&before, &after))
                {
                    Some(mj) => (Some(mj), EnergySource::Rapl),
                    None => (None, EnergySource::Unavailable),
                }
            }
            EnergyMeter::Unavailable => (None, EnergySource::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Unset, DEFS};

    #[test]
    fn the_default_poll_is_the_config_tables_default() {
        let def = DEFS.iter().find(|d| d.name == "GPU_POLL_MS").unwrap();
        let Unset::Value(ms) = def.unset else {
            panic!("GPU_POLL_MS has a plain default");
        };
        assert_eq!(DEFAULT_GPU_POLL, Duration::from_millis(ms.parse().unwrap()));
    }
}

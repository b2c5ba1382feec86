//! A job's plan, decided in one place. [`plan_job`] turns the untrusted [`Job`] (from the
//! Coordinator, or built on this machine by `bench` and the doctor's self-test) into a complete
//! [`JobPlan`], or refuses it before any process is touched: the typed [`JobSpec`] the worker
//! is sent (with the RLIMIT_AS and RLIMIT_CPU it lowers itself to), the cgroup limits written
//! at hand-off, the RLIMIT_CPU set from outside, the wall-clock deadline and the VRAM cap.
//! [`crate::worker_proc`] only applies a plan and [`crate::execute`] runs it.
//!
//! Pure: no I/O, no clock, no processes, so every figure is unit-tested here. It must never be
//! bypassed or finished elsewhere: no limit a worker is held to is computed outside this file
//! (the cgroup's own arithmetic, [`Limits::for_job`], is called from here only).

use std::time::Duration;

use protocol::api::{FailReason, Job, JobLimits, Mode};
use protocol::wire::JobSpec;
use protocol::workload::{plan, PlanError, Workload, WorkloadSpec};

use crate::cgroup::Limits;
use crate::config::MaxLimits;
use crate::policy::{Refusal, RUNS};

/// Everything one attempt of a job is held to, for a worker of one kind.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    /// The kind of worker it runs on.
    pub kind: Mode,
    /// What the worker is sent, complete: the typed workload, threads, `ram_mb`, `cpu_time_s`,
    /// the address-space limit (CPU workers; `None` on the GPU) and the `vram_mb` cap (0 on
    /// the CPU).
    pub spec: JobSpec,
    /// The worker's cgroup limits: memory = `ram_mb` (swap off), pids, CPU quota.
    pub cgroup: Limits,
    /// RLIMIT_CPU in seconds, `(soft, hard)`: SIGXCPU at `limits.cpu_time_s`, SIGKILL one
    /// second later.
    pub cpu_time: (u64, u64),
    /// How long the supervisor waits for the answer before it kills the worker's cgroup.
    pub deadline: Duration,
    /// The job's own limits, which the fail messages quote.
    pub limits: JobLimits,
}

impl JobPlan {
    /// The device memory the job may use in MiB, what the VRAM watch holds it to (0 on the
    /// CPU): the `vram_mb` the worker is sent, so the two cannot differ.
    pub fn vram_cap_mb(&self) -> u64 {
        self.spec.vram_mb
    }

    /// This plan for the worker that came, of `kind`: itself when it was made for that kind,
    /// else `job` planned again for it (a GPU slot whose worker fell back to the CPU runs the
    /// job as a CPU job), so that the plan always matches the worker.
    pub fn for_worker(self, kind: Mode, job: &Job, max: &MaxLimits) -> Result<JobPlan, Refusal> {
        if self.kind == kind {
            Ok(self)
        } else {
            plan_job(job, max, self.spec.threads, kind)
        }
    }
}

/// Plans `job` for a worker of kind `slot` (GPU only for a GPU slot of a GPU miner) with
/// `threads` compute threads (0 counts as 1), or refuses it, in this order:
/// 1. protocol's validity: the workload's name, its params, its memory against
///    `limits.ram_mb` (`UNKNOWN_WORKLOAD`, `BAD_PARAMS`);
/// 2. this build's capability, [`RUNS`] (`UNKNOWN_WORKLOAD`), and protocol's typed plan;
/// 3. the operator's maxima (`CAPS_REFUSED`);
/// 4. the kind: a job that asks for no device memory (`limits.vram_mb = 0`) runs on the CPU,
///    even on a GPU slot;
/// 5. on the GPU, whether `limits.vram_mb` covers what the workload allocates on the device
///    (`BAD_PARAMS`).
pub fn plan_job(job: &Job, max: &MaxLimits, threads: u32, slot: Mode) -> Result<JobPlan, Refusal> {
    let spec = admit(job, max)?;
    let limits = job.limits;
    let kind = match slot {
        Mode::Gpu if limits.vram_mb > 0 => Mode::Gpu,
        _ => Mode::Cpu,
    };
    let vram_cap_mb = match kind {
        Mode::Gpu => check_vram(&spec, &limits)?,
        Mode::Cpu => 0,
    };
    let threads = threads.max(1);
    Ok(JobPlan {
        kind,
        spec: JobSpec {
            job_id: job.id.clone(),
            spec,
            threads,
            ram_mb: limits.ram_mb,
            vram_mb: vram_cap_mb,
            cpu_time_s: limits.cpu_time_s,
            address_space_bytes: match kind {
                Mode::Cpu => Some(address_space_limit(limits.ram_mb, threads)),
                Mode::Gpu => None,
            },
        },
        cgroup: Limits::for_job(limits.ram_mb, threads),
        cpu_time: (limits.cpu_time_s, limits.cpu_time_s.saturating_add(1)),
        deadline: Duration::from_secs(limits.max_runtime_s),
        limits,
    })
}

/// A job that comes from this machine, not from the Coordinator (`bench`, the doctor's
/// self-test), and maxima equal to its own limits, so that only protocol's rules, this build's
/// capability and the VRAM check can refuse it. `disk_mb` is the worker's `--file-size-mb`,
/// which planning does not use.
pub fn own_job(
    id: &str,
    workload: &str,
    params: serde_json::Value,
    limits: JobLimits,
    disk_mb: u64,
) -> (Job, MaxLimits) {
    let job = Job {
        id: id.to_owned(),
        workload: workload.to_owned(),
        params,
        limits,
        reward: 0,
        attempt: 1,
        lease_expires_at: time::OffsetDateTime::UNIX_EPOCH,
        created_at: time::OffsetDateTime::UNIX_EPOCH,
    };
    let max = MaxLimits {
        ram_mb: limits.ram_mb,
        runtime_s: limits.max_runtime_s,
        cpu_time_s: limits.cpu_time_s,
        vram_mb: limits.vram_mb,
        disk_mb,
    };
    (job, max)
}

/// Steps 1 to 3 of [`plan_job`]: the typed workload of a job this miner runs within its
/// maxima. Protocol's [`plan`] parses the params once: a valid job of a workload protocol has
/// no spec for comes back as [`PlanError::NoSpec`], which is a capability refusal here.
fn admit(job: &Job, max: &MaxLimits) -> Result<WorkloadSpec, Refusal> {
    let not_run = |w: Workload| Refusal {
        reason: FailReason::UnknownWorkload,
        message: format!("workload {:?} is not run by this miner", w.as_str()),
    };
    let spec = match plan(&job.workload, &job.params, &job.limits) {
        Ok(spec) if RUNS.contains(&spec.workload()) => spec,
        Ok(spec) => return Err(not_run(spec.workload())),
        Err(PlanError::NoSpec(w)) => return Err(not_run(w)),
        Err(e) => {
            return Err(Refusal {
                reason: e.fail_reason(),
                message: e.to_string(),
            })
        }
    };
    check_caps(&job.limits, max)?;
    Ok(spec)
}

/// The operator clamp: every job limit must be within this miner's maxima.
fn check_caps(limits: &JobLimits, max: &MaxLimits) -> Result<(), Refusal> {
    let checks = [
        ("ram_mb", limits.ram_mb, max.ram_mb, "MAX_JOB_RAM_MB"),
        ("vram_mb", limits.vram_mb, max.vram_mb, "MAX_JOB_VRAM_MB"),
        (
            "max_runtime_s",
            limits.max_runtime_s,
            max.runtime_s,
            "MAX_JOB_RUNTIME_SECS",
        ),
        (
            "cpu_time_s",
            limits.cpu_time_s,
            max.cpu_time_s,
            "MAX_JOB_CPU_SECS",
        ),
    ];
    for (field, asked, allowed, key) in checks {
        if asked > allowed {
            return Err(Refusal {
                reason: FailReason::CapsRefused,
                message: format!("limits.{field} = {asked} exceeds this miner's {key} = {allowed}"),
            });
        }
    }
    Ok(())
}

/// Step 5 of [`plan_job`]: `limits.vram_mb` (already within `MAX_JOB_VRAM_MB`) must cover
/// what the workload allocates on the device. Returns the cap the worker gets.
fn check_vram(spec: &WorkloadSpec, limits: &JobLimits) -> Result<u64, Refusal> {
    let need = spec.vram_mb();
    if limits.vram_mb < need {
        return Err(Refusal {
            reason: FailReason::BadParams,
            message: format!(
                "limits.vram_mb = {} is below the {need} MiB that {} allocates on the GPU",
                limits.vram_mb,
                spec.describe()
            ),
        });
    }
    Ok(limits.vram_mb)
}

/// The address-space limit (RLIMIT_AS) of a CPU worker running a job of `ram_mb` MiB on
/// `threads` compute threads, in bytes: a generous backstop behind the cgroup's memory limit,
/// not the limit itself (address space is not memory). The formula:
/// `ram_mb` + 256 MiB (the binary, its libraries, the loader's and the kernel's mappings) +
/// 72 MiB for each thread including the main one (glibc reserves up to 64 MiB of address space
/// per malloc arena, one arena per thread at most, and a thread's stack is at most 8 MiB).
/// Saturates to "unlimited" (`u64::MAX` is RLIM_INFINITY). GPU workers get none: CUDA reserves
/// about twice the device memory in host address space.
pub fn address_space_limit(ram_mb: u64, threads: u32) -> u64 {
    const MIB: u64 = 1 << 20;
    let per_thread = 72 * MIB;
    let threads = u64::from(threads.max(1)) + 1;
    ram_mb
        .saturating_mul(MIB)
        .saturating_add(256 * MIB)
        .saturating_add(per_thread.saturating_mul(threads))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const MIB: u64 = 1 << 20;

    fn max(vram_mb: u64) -> MaxLimits {
        MaxLimits {
            ram_mb: 2048,
            runtime_s: 600,
            cpu_time_s: 1200,
            vram_mb,
            disk_mb: 1024,
        }
    }

    fn job(workload: &str, params: Value, vram_mb: u64) -> Job {
        let limits = JobLimits {
            ram_mb: 512,
            vram_mb,
            cpu_time_s: 30,
            max_runtime_s: 20,
        };
        own_job("j1", workload, params, limits, 0).0
    }

    fn refused(j: &Job, max: &MaxLimits, slot: Mode) -> Refusal {
        match plan_job(j, max, 1, slot) {
            Err(r) => r,
            Ok(p) => panic!("planned: {p:?}"),
        }
    }

    #[test]
    fn a_cpu_plan_holds_every_limit_of_the_job() {
        let p = plan_job(
            &job("torch_bench", json!({"n": 64, "iters": 2}), 0),
            &max(0),
            2,
            Mode::Cpu,
        )
        .unwrap();
        assert_eq!(p.kind, Mode::Cpu);
        assert_eq!(p.spec.job_id, "j1");
        assert_eq!(p.spec.spec.describe(), "torch_bench n=64 iters=2 seed=0");
        assert_eq!(
            (p.spec.threads, p.spec.ram_mb, p.spec.cpu_time_s),
            (2, 512, 30)
        );
        assert_eq!(p.spec.address_space_bytes, Some((512 + 256 + 3 * 72) * MIB));
        assert_eq!((p.spec.vram_mb, p.vram_cap_mb()), (0, 0));
        assert_eq!(p.cgroup, Limits::for_job(512, 2));
        assert_eq!(p.cgroup.memory_bytes, 512 * MIB);
        assert_eq!(p.cpu_time, (30, 31));
        assert_eq!(p.deadline, Duration::from_secs(20));
        assert_eq!(p.limits, job("torch_bench", json!({}), 0).limits);
        // No threads is one thread, everywhere.
        let one = plan_job(&job("torch_bench", json!({}), 0), &max(0), 0, Mode::Cpu).unwrap();
        assert_eq!(one.spec.threads, 1);
        assert_eq!(one.cgroup, Limits::for_job(512, 1));
        assert_eq!(
            one.spec.address_space_bytes,
            Some(address_space_limit(512, 1))
        );
    }

    #[test]
    fn a_gpu_plan_caps_vram_and_sets_no_address_space_limit() {
        let j = job("torch_bench", json!({"n": 1024}), 100);
        let p = plan_job(&j, &max(4096), 2, Mode::Gpu).unwrap();
        assert_eq!(p.kind, Mode::Gpu);
        assert_eq!((p.spec.vram_mb, p.vram_cap_mb()), (100, 100));
        assert_eq!(p.spec.address_space_bytes, None);
        assert_eq!(p.cgroup, Limits::for_job(512, 2));
        assert_eq!(
            (p.cpu_time, p.deadline),
            ((30, 31), Duration::from_secs(20))
        );
        // The same job for a CPU worker (a GPU slot whose worker fell back) is a CPU plan.
        let p = plan_job(&j, &max(4096), 2, Mode::Cpu).unwrap();
        assert_eq!((p.kind, p.spec.vram_mb, p.vram_cap_mb()), (Mode::Cpu, 0, 0));
        assert_eq!(
            p.spec.address_space_bytes,
            Some(address_space_limit(512, 2))
        );
    }

    #[test]
    fn a_plan_follows_the_worker_that_came() {
        let j = job("torch_bench", json!({"n": 1024}), 100);
        let gpu = plan_job(&j, &max(4096), 3, Mode::Gpu).unwrap();
        assert_eq!(
            gpu.clone().for_worker(Mode::Gpu, &j, &max(4096)),
            Ok(gpu.clone())
        );
        let cpu = gpu.for_worker(Mode::Cpu, &j, &max(4096)).unwrap();
        assert_eq!(cpu, plan_job(&j, &max(4096), 3, Mode::Cpu).unwrap());
    }

    #[test]
    fn a_job_without_device_memory_runs_on_the_cpu_of_a_gpu_slot() {
        let p = plan_job(&job("torch_bench", json!({}), 0), &max(4096), 2, Mode::Gpu).unwrap();
        assert_eq!((p.kind, p.vram_cap_mb()), (Mode::Cpu, 0));
        assert!(p.spec.address_space_bytes.is_some());
    }

    #[test]
    fn refusals_come_in_order_and_name_what_is_wrong() {
        let r = refused(&job("bitcoin", json!({}), 0), &max(0), Mode::Cpu);
        assert_eq!(r.reason, FailReason::UnknownWorkload);
        // Known to protocol, not run by this build.
        let r = refused(&job("sd_infer", json!({}), 0), &max(0), Mode::Cpu);
        assert_eq!(
            (r.reason, r.message.as_str()),
            (
                FailReason::UnknownWorkload,
                "workload \"sd_infer\" is not run by this miner"
            )
        );
        let r = refused(
            &job("torch_bench", json!({"n": "x"}), 0),
            &max(0),
            Mode::Cpu,
        );
        assert_eq!(r.reason, FailReason::BadParams);
        assert!(r.message.contains("params.n"), "{}", r.message);
        // Bad params are named before the caps are looked at.
        let r = refused(&job("torch_bench", json!({"n": 0}), 10), &max(0), Mode::Gpu);
        assert_eq!(r.reason, FailReason::BadParams, "{}", r.message);
        // The caps before the VRAM check.
        let r = refused(
            &job("torch_bench", json!({"n": 1024}), 10),
            &max(0),
            Mode::Gpu,
        );
        assert_eq!(
            (r.reason, r.message.as_str()),
            (
                FailReason::CapsRefused,
                "limits.vram_mb = 10 exceeds this miner's MAX_JOB_VRAM_MB = 0"
            )
        );
        let r = refused(
            &job("torch_bench", json!({"n": 1024, "iters": 2}), 10),
            &max(4096),
            Mode::Gpu,
        );
        assert_eq!(
            (r.reason, r.message.as_str()),
            (
                FailReason::BadParams,
                "limits.vram_mb = 10 is below the 39 MiB that torch_bench n=1024 iters=2 \
                 seed=0 allocates on the GPU"
            )
        );
        // The same short cap is no question for a CPU worker.
        let j = job("torch_bench", json!({"n": 1024, "iters": 2}), 10);
        assert_eq!(
            plan_job(&j, &max(4096), 1, Mode::Cpu).unwrap().kind,
            Mode::Cpu
        );
    }

    #[test]
    fn every_job_limit_is_held_to_the_operator_maxima() {
        let over = |f: fn(&mut JobLimits)| {
            let mut j = job("torch_bench", json!({"n": 8}), 0);
            f(&mut j.limits);
            refused(&j, &max(0), Mode::Cpu)
        };
        let r = over(|l| l.ram_mb = 4096);
        assert_eq!(r.reason, FailReason::CapsRefused);
        assert_eq!(
            r.message,
            "limits.ram_mb = 4096 exceeds this miner's MAX_JOB_RAM_MB = 2048"
        );
        assert_eq!(over(|l| l.vram_mb = 1).reason, FailReason::CapsRefused);
        assert!(over(|l| l.max_runtime_s = 601)
            .message
            .contains("MAX_JOB_RUNTIME_SECS = 600"));
        assert!(over(|l| l.cpu_time_s = 1201)
            .message
            .contains("MAX_JOB_CPU_SECS = 1200"));
        // Limits exactly at the maxima are fine.
        let mut j = job("torch_bench", json!({"n": 8}), 0);
        j.limits = JobLimits {
            ram_mb: 2048,
            vram_mb: 0,
            cpu_time_s: 1200,
            max_runtime_s: 600,
        };
        assert!(plan_job(&j, &max(0), 1, Mode::Cpu).is_ok());
    }

    #[test]
    fn every_workload_this_build_runs_plans() {
        for w in RUNS {
            let p = plan_job(&job(w.as_str(), json!({}), 0), &max(0), 1, Mode::Cpu).unwrap();
            assert_eq!(p.spec.spec.workload(), *w);
        }
    }

    #[test]
    fn the_vram_cap_must_cover_what_the_workload_allocates() {
        let spec = WorkloadSpec::TorchBench(protocol::workload::torch_bench::TorchBenchParams {
            n: 1024,
            iters: 2,
            seed: 0,
        });
        let need = spec.vram_mb();
        assert!(need >= 12, "three 4 MiB matrices at least: {need}");
        for (vram_mb, planned) in [(need, true), (need + 100, true), (need - 1, false)] {
            let j = job("torch_bench", json!({"n": 1024, "iters": 2}), vram_mb);
            let p = plan_job(&j, &max(1 << 20), 1, Mode::Gpu);
            assert_eq!(p.map(|p| p.vram_cap_mb()).ok(), planned.then_some(vram_mb));
        }
    }

    #[test]
    fn an_own_job_is_held_to_its_own_limits() {
        let limits = JobLimits {
            vram_mb: 7,
            ..JobLimits::default()
        };
        let (j, max) = own_job("local", "torch_bench", json!({"n": 8}), limits, 64);
        assert_eq!(
            (j.id.as_str(), j.workload.as_str(), j.limits),
            ("local", "torch_bench", limits)
        );
        assert_eq!(
            (
                max.ram_mb,
                max.runtime_s,
                max.cpu_time_s,
                max.vram_mb,
                max.disk_mb
            ),
            (
                limits.ram_mb,
                limits.max_runtime_s,
                limits.cpu_time_s,
                7,
                64
            )
        );
        assert!(plan_job(&j, &max, 1, Mode::Cpu).is_ok());
    }

    #[test]
    fn the_address_space_limit_saturates() {
        assert_eq!(address_space_limit(1024, 1), (1024 + 256 + 2 * 72) * MIB);
        assert_eq!(address_space_limit(64, 0), address_space_limit(64, 1));
        assert_eq!(address_space_limit(64, 8), (64 + 256 + 9 * 72) * MIB);
        assert_eq!(address_space_limit(u64::MAX / 2, 4), u64::MAX);
    }
}

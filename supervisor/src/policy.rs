//! The supervisor's decisions as plain functions over plain values: the workloads this build
//! runs ([`RUNS`]), which mode the miner declares, how a worker's end (answer, exit status,
//! signal, timeout) becomes a [`FailReason`], whether a job id is safe to use as a file name,
//! and how long to pause between empty polls. Whether a job is taken, and what it is held to,
//! is [`crate::plan`]'s.
//!
//! Nothing here does I/O, reads a clock or spawns anything; the runtime calls these functions
//! and the unit tests below pin their behaviour.

use std::time::Duration;

use protocol::api::{FailReason, JobLimits, MinerLimits, Mode};
use protocol::wire::{WorkerFailReason, WorkerFailure, SECCOMP_REPORT_PREFIX};
use protocol::workload::Workload;

use crate::config::{AccelMode, MaxLimits};
use crate::ending::{Ending, ExitStatus};
use crate::gpu::GpuReport;

/// The workloads this build runs: the miner's capability, declared in the heartbeat and checked
/// by [`crate::plan::plan_job`]. Names come from protocol's registry ([`Workload`]); which of them are valid is
/// protocol's question alone.
pub const RUNS: &[Workload] = &[Workload::TorchBench];

/// A job the miner will not start, with the reason and message for the fail report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: FailReason,
    pub message: String,
}

/// What the heartbeat declares as this miner's limits: the operator's maxima; no device
/// memory unless the miner computes on a GPU.
pub fn miner_limits(max: &MaxLimits, mode: Mode) -> MinerLimits {
    MinerLimits {
        vram_mb: Some(if mode == Mode::Gpu { max.vram_mb } else { 0 }),
        ram_mb: Some(max.ram_mb),
        max_runtime_s: Some(max.runtime_s),
        cpu_time_s: Some(max.cpu_time_s),
    }
}

/// The mode the miner computes in, from `ACCEL_MODE` and what [`crate::gpu::detect`] found,
/// and a warning to log when the operator asked for the GPU and does not get it:
/// - `cpu`: the CPU, whatever the host has;
/// - `auto`: the GPU when NVML sees a device and `libcuda.so.1` loads, else the CPU quietly;
/// - `gpu`: the same, but falling back to the CPU is a warning that says why.
pub fn detect_mode(requested: AccelMode, report: &GpuReport) -> (Mode, Option<String>) {
    match (requested, report.usable()) {
        (AccelMode::Cpu, _) => (Mode::Cpu, None),
        (AccelMode::Auto | AccelMode::Gpu, Ok(_)) => (Mode::Gpu, None),
        (AccelMode::Auto, Err(_)) => (Mode::Cpu, None),
        (AccelMode::Gpu, Err(why)) => (
            Mode::Cpu,
            Some(format!(
                "ACCEL_MODE=gpu but this host has no usable GPU: {why}; running jobs on the CPU"
            )),
        ),
    }
}

/// A worker that ended (or closed its socket) without answering, by how it ended and whether
/// the kernel's OOM killer struck in its cgroup:
/// - SIGSYS (the seccomp filter) and SIGXFSZ (past RLIMIT_FSIZE): `SANDBOX_VIOLATION`;
/// - SIGXCPU (RLIMIT_CPU): `TIMED_OUT`;
/// - SIGKILL with `oom_killed`: `OUT_OF_MEMORY`;
/// - anything else: `WORKER_CRASHED`.
pub fn crash_reason(status: ExitStatus, oom_killed: bool) -> FailReason {
    match status {
        ExitStatus::Signaled(libc::SIGSYS | libc::SIGXFSZ) => FailReason::SandboxViolation,
        ExitStatus::Signaled(libc::SIGXCPU) => FailReason::TimedOut,
        ExitStatus::Signaled(libc::SIGKILL) if oom_killed => FailReason::OutOfMemory,
        _ => FailReason::WorkerCrashed,
    }
}

/// The system call the worker's seccomp reporter named on stderr just before it died:
/// `name (nr)` from the last `{SECCOMP_REPORT_PREFIX}name (nr)` line, if it is well formed.
pub fn forbidden_syscall(stderr: &str) -> Option<String> {
    let at = stderr.rfind(SECCOMP_REPORT_PREFIX)?;
    let rest = stderr[at + SECCOMP_REPORT_PREFIX.len()..].lines().next()?;
    let (name, nr) = rest.trim_end().split_once(" (")?;
    let nr = nr.strip_suffix(')')?;
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'?');
    let nr_ok = (1..=20).contains(&nr.len()) && nr.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    (name_ok && nr_ok).then(|| format!("{name} ({nr})"))
}

/// A worker's own `Failed` answer as the API's reason.
pub fn worker_failure_reason(f: &WorkerFailure) -> FailReason {
    match f.reason {
        WorkerFailReason::BadParams => FailReason::BadParams,
        WorkerFailReason::OutOfMemory => FailReason::OutOfMemory,
        WorkerFailReason::Internal => FailReason::Internal,
        WorkerFailReason::SandboxViolation => FailReason::SandboxViolation,
    }
}

/// A job id is used as a directory and file name: it must be 1..=128 of `[A-Za-z0-9._-]` and not
/// start with a dot (no `.`, `..`, hidden names, no `/`).
pub fn safe_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// After an empty answer that took `elapsed`, how long to wait before the next poll:
/// the rest of `job_poll` (long-polls that waited already count towards it).
pub fn pause_after_empty(elapsed: Duration, job_poll: Duration) -> Duration {
    job_poll.saturating_sub(elapsed)
}

/// How many slots to ask the Coordinator for: all free ones, or none (then do not poll).
pub fn slots_to_request(free: usize, stopping: bool) -> Option<u32> {
    if stopping || free == 0 {
        None
    } else {
        Some(u32::try_from(free).unwrap_or(u32::MAX))
    }
}

/// The reason and message of the fail report for a job attempt that did not end in `Done`:
/// how it ended, how the process exited, whether the OOM killer struck in its cgroup, and its
/// last words on stderr, against the job's `limits`.
pub fn failure_of(
    ending: &Ending,
    exit: Option<ExitStatus>,
    oom_killed: bool,
    stderr: &str,
    limits: &JobLimits,
) -> (FailReason, String) {
    let exit_text = exit
        .map(|s| s.describe())
        .unwrap_or_else(|| "status unknown".into());
    let (reason, mut message) = match ending {
        Ending::Done(..) => (
            FailReason::Internal,
            "a finished job was reported as a failure (supervisor bug)".to_owned(),
        ),
        Ending::Failed(f) => (worker_failure_reason(f), f.message.clone()),
        Ending::Crashed => match exit {
            Some(ExitStatus::Signaled(libc::SIGSYS)) => (
                FailReason::SandboxViolation,
                match forbidden_syscall(stderr) {
                    Some(call) => format!(
                        "the worker was killed by its sandbox: forbidden system call {call}"
                    ),
                    None => format!("the worker was killed by its sandbox ({exit_text})"),
                },
            ),
            Some(ExitStatus::Signaled(libc::SIGXFSZ)) => (
                FailReason::SandboxViolation,
                format!(
                    "the job wrote past the file-size limit (MAX_JOB_DISK_MB) and was stopped \
                     ({exit_text})"
                ),
            ),
            Some(s) => match crash_reason(s, oom_killed) {
                FailReason::TimedOut => (
                    FailReason::TimedOut,
                    format!("the job used up limits.cpu_time_s and was stopped ({exit_text})"),
                ),
                FailReason::OutOfMemory => (
                    FailReason::OutOfMemory,
                    format!(
                        "the job exceeded limits.ram_mb = {} MiB and was killed by the kernel's \
                         OOM killer ({exit_text})",
                        limits.ram_mb
                    ),
                ),
                _ => (
                    FailReason::WorkerCrashed,
                    format!("the worker ended without answering ({exit_text})"),
                ),
            },
            None => (
                FailReason::WorkerCrashed,
                format!("the worker ended without answering ({exit_text})"),
            ),
        },
        Ending::TimedOut => (
            FailReason::TimedOut,
            format!(
                "the job ran past limits.max_runtime_s = {} s; its processes were killed",
                limits.max_runtime_s
            ),
        ),
        Ending::Protocol(what) => (
            FailReason::ProtocolError,
            format!("the worker broke the wire protocol ({what}); it was killed"),
        ),
        Ending::Confinement(what) => (
            FailReason::Internal,
            format!("the worker could not be confined for the job ({what}); it was killed"),
        ),
        Ending::Cancelled => (
            FailReason::MinerShutdown,
            "the miner is shutting down and its drain grace ran out; the job was killed".to_owned(),
        ),
        // The one watch is the VRAM watch; its message names the figures.
        Ending::Stopped(why) => (FailReason::OutOfMemory, why.clone()),
    };
    if !stderr.is_empty()
        && matches!(
            ending,
            Ending::Crashed | Ending::Protocol(_) | Ending::Failed(_)
        )
    {
        let tail: String = {
            let chars: Vec<char> = stderr.chars().collect();
            chars[chars.len().saturating_sub(512)..].iter().collect()
        };
        message.push_str("; stderr: ");
        message.push_str(&tail);
    }
    (reason, message)
}

/// Tera-FLOP/s from a FLOP count and microseconds; 0 when no time was measured.
pub fn tflops(flops: u64, micros: u64) -> f64 {
    gflops(flops, micros) / 1e3
}

/// Giga-FLOP/s from a FLOP count and microseconds; 0 when no time was measured.
pub fn gflops(flops: u64, micros: u64) -> f64 {
    if micros == 0 {
        0.0
    } else {
        flops as f64 / micros as f64 / 1e3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max() -> MaxLimits {
        MaxLimits {
            ram_mb: 2048,
            runtime_s: 600,
            cpu_time_s: 1200,
            vram_mb: 0,
            disk_mb: 1024,
        }
    }

    #[test]
    fn exit_statuses_map_to_reasons() {
        let sig = ExitStatus::Signaled;
        let cases = [
            (sig(libc::SIGKILL), false, FailReason::WorkerCrashed),
            (sig(libc::SIGKILL), true, FailReason::OutOfMemory),
            (sig(libc::SIGSYS), false, FailReason::SandboxViolation),
            (sig(libc::SIGXFSZ), false, FailReason::SandboxViolation),
            (sig(libc::SIGXCPU), false, FailReason::TimedOut),
            (sig(libc::SIGSEGV), true, FailReason::WorkerCrashed),
            (ExitStatus::Exited(101), false, FailReason::WorkerCrashed),
        ];
        for (status, oom, want) in cases {
            assert_eq!(crash_reason(status, oom), want, "{status:?} oom={oom}");
        }
        assert_eq!(
            ExitStatus::Signaled(libc::SIGKILL).describe(),
            "signal SIGKILL"
        );
        assert_eq!(ExitStatus::Exited(3).describe(), "exit code 3");
        assert_eq!(ExitStatus::Signaled(200).describe(), "signal 200");
        // Raw wait statuses as the kernel encodes them.
        assert_eq!(ExitStatus::from_raw(9), ExitStatus::Signaled(9));
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited(3));
    }

    #[test]
    fn the_seccomp_report_names_the_system_call() {
        let p = SECCOMP_REPORT_PREFIX;
        assert_eq!(
            forbidden_syscall(&format!("noise\n{p}ptrace (101)\n")).as_deref(),
            Some("ptrace (101)")
        );
        // The last report wins; a truncated or doctored one names nothing.
        assert_eq!(
            forbidden_syscall(&format!("{p}socket (41)\n{p}execve (59)")).as_deref(),
            Some("execve (59)")
        );
        for bad in [
            format!("{p}ptrace"),
            format!("{p}ptrace (1x1)"),
            format!("{p}rm -rf / (1)"),
            format!("{p} (1)"),
            "ptrace (101)".to_owned(),
        ] {
            assert_eq!(forbidden_syscall(&bad), None, "{bad}");
        }
    }

    #[test]
    fn worker_failures_map_one_to_one() {
        let f = |reason| WorkerFailure {
            reason,
            message: String::new(),
        };
        assert_eq!(
            worker_failure_reason(&f(WorkerFailReason::BadParams)),
            FailReason::BadParams
        );
        assert_eq!(
            worker_failure_reason(&f(WorkerFailReason::OutOfMemory)),
            FailReason::OutOfMemory
        );
        assert_eq!(
            worker_failure_reason(&f(WorkerFailReason::Internal)),
            FailReason::Internal
        );
        assert_eq!(
            worker_failure_reason(&f(WorkerFailReason::SandboxViolation)),
            FailReason::SandboxViolation
        );
    }

    #[test]
    fn endings_become_fail_reports() {
        let limits = JobLimits {
            ram_mb: 256,
            vram_mb: 0,
            cpu_time_s: 10,
            max_runtime_s: 1,
        };
        let fail =
            |ending, exit, oom, stderr: &str| failure_of(&ending, exit, oom, stderr, &limits);
        let killed = Some(ExitStatus::Signaled(libc::SIGKILL));
        let (r, m) = fail(Ending::Crashed, killed, false, "panicked at x");
        assert_eq!(r, FailReason::WorkerCrashed);
        assert_eq!(
            m,
            "the worker ended without answering (signal SIGKILL); stderr: panicked at x"
        );
        let (r, m) = fail(Ending::Crashed, killed, true, "");
        assert_eq!(r, FailReason::OutOfMemory);
        assert!(
            m.starts_with("the job exceeded limits.ram_mb = 256 MiB"),
            "{m}"
        );
        let sys = Some(ExitStatus::Signaled(libc::SIGSYS));
        let (r, m) = fail(Ending::Crashed, sys, false, "");
        assert_eq!(r, FailReason::SandboxViolation);
        assert_eq!(m, "the worker was killed by its sandbox (signal SIGSYS)");
        let report = format!("{SECCOMP_REPORT_PREFIX}ptrace (101)");
        let (r, m) = fail(Ending::Crashed, sys, false, &report);
        assert_eq!(r, FailReason::SandboxViolation);
        assert!(
            m.starts_with(
                "the worker was killed by its sandbox: forbidden system call ptrace (101)"
            ),
            "{m}"
        );
        let (r, m) = fail(
            Ending::Crashed,
            Some(ExitStatus::Signaled(libc::SIGXFSZ)),
            false,
            "",
        );
        assert_eq!(r, FailReason::SandboxViolation);
        assert!(m.contains("wrote past the file-size limit"), "{m}");
        let (r, m) = fail(
            Ending::Crashed,
            Some(ExitStatus::Signaled(libc::SIGXCPU)),
            false,
            "",
        );
        assert_eq!(r, FailReason::TimedOut);
        assert!(m.contains("limits.cpu_time_s"), "{m}");
        // A timeout stays a timeout even when memory also ran out on the way.
        let (r, m) = fail(Ending::TimedOut, killed, true, "noise");
        assert_eq!(r, FailReason::TimedOut);
        assert!(
            m.contains("max_runtime_s = 1 s") && !m.contains("noise"),
            "{m}"
        );
        let (r, m) = fail(
            Ending::Protocol("frame of 2147483647 bytes exceeds".into()),
            killed,
            false,
            "",
        );
        assert_eq!(r, FailReason::ProtocolError);
        assert!(m.contains("2147483647"), "{m}");
        assert_eq!(
            fail(Ending::Cancelled, killed, false, "").0,
            FailReason::MinerShutdown
        );
        let (r, m) = fail(Ending::Confinement("EPERM".into()), killed, false, "");
        assert_eq!(r, FailReason::Internal);
        assert!(
            m.contains("could not be confined") && m.contains("EPERM"),
            "{m}"
        );
        let oom = Ending::Failed(WorkerFailure {
            reason: WorkerFailReason::OutOfMemory,
            message: "cannot allocate 3 GiB".into(),
        });
        let (r, m) = fail(oom, Some(ExitStatus::Exited(0)), false, "");
        assert_eq!(
            (r, m.as_str()),
            (FailReason::OutOfMemory, "cannot allocate 3 GiB")
        );
        let refused = Ending::Failed(WorkerFailure {
            reason: WorkerFailReason::SandboxViolation,
            message: "writing /etc/x: permission denied".into(),
        });
        assert_eq!(
            fail(refused, Some(ExitStatus::Exited(0)), false, "").0,
            FailReason::SandboxViolation
        );
        let long = "x".repeat(5000);
        assert!(fail(Ending::Crashed, None, false, &long).1.len() < 700);
    }

    #[test]
    fn job_ids_safe_as_file_names() {
        for ok in ["j1", "0192-abc_DEF.x", &"a".repeat(128)] {
            assert!(safe_job_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"a".repeat(129),
        ] {
            assert!(!safe_job_id(bad), "{bad}");
        }
    }

    fn report(nvml: bool, libcuda: bool) -> GpuReport {
        GpuReport {
            available: nvml,
            why: (!nvml).then(|| "NVML unavailable: cannot load libnvidia-ml.so.1".to_owned()),
            gpus: if nvml {
                vec![protocol::api::GpuInfo {
                    index: 0,
                    name: "NVIDIA H100".into(),
                    vram_mb: 81559,
                    driver_version: Some("580.65.06".into()),
                    cuda_version: Some("13.0".into()),
                }]
            } else {
                Vec::new()
            },
            libcuda_error: (!libcuda)
                .then(|| "no CUDA driver: libcuda.so.1 cannot be loaded".to_owned()),
        }
    }

    #[test]
    fn the_mode_table() {
        use AccelMode::{Auto, Cpu, Gpu};
        let none = report(false, false);
        let nvml_only = report(true, false);
        let libcuda_only = report(false, true);
        let both = report(true, true);
        for r in [&none, &nvml_only, &libcuda_only, &both] {
            assert_eq!(detect_mode(Cpu, r), (Mode::Cpu, None));
        }
        assert_eq!(detect_mode(Auto, &both), (Mode::Gpu, None));
        assert_eq!(detect_mode(Gpu, &both), (Mode::Gpu, None));
        for r in [&none, &nvml_only, &libcuda_only] {
            assert_eq!(detect_mode(Auto, r), (Mode::Cpu, None));
        }
        let (m, w) = detect_mode(Gpu, &none);
        assert_eq!(m, Mode::Cpu);
        assert_eq!(
            w.as_deref(),
            Some(
                "ACCEL_MODE=gpu but this host has no usable GPU: NVML unavailable: cannot load \
                 libnvidia-ml.so.1; running jobs on the CPU"
            )
        );
        let (m, w) = detect_mode(Gpu, &nvml_only);
        assert_eq!(m, Mode::Cpu);
        assert!(w.unwrap().contains("libcuda.so.1 cannot be loaded"));
        assert_eq!(detect_mode(Gpu, &libcuda_only).0, Mode::Cpu);
        assert_eq!(
            detect_mode(Gpu, &GpuReport::not_probed("x")).0,
            Mode::Cpu,
            "nothing probed, nothing used"
        );
    }

    #[test]
    fn modes_and_polling() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after_empty(ms(10), ms(3000)), ms(2990));
        assert_eq!(pause_after_empty(ms(25_000), ms(3000)), Duration::ZERO);
        assert_eq!(slots_to_request(0, false), None);
        assert_eq!(slots_to_request(2, true), None);
        assert_eq!(slots_to_request(3, false), Some(3));
        assert_eq!(gflops(2_000_000_000, 1_000_000), 2.0);
        assert_eq!(gflops(5, 0), 0.0);
        let mut m = max();
        m.vram_mb = 8192;
        let l = miner_limits(&m, Mode::Cpu);
        assert_eq!((l.ram_mb, l.vram_mb), (Some(2048), Some(0)));
        assert_eq!(miner_limits(&m, Mode::Gpu).vram_mb, Some(8192));
        assert_eq!(tflops(3_000_000_000_000, 1_000_000), 3.0);
    }
}

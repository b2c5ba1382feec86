//! The doctor's live self-test: one real confined worker, started the way the supervisor
//! starts them ([`WorkerProcess::start`], its own cgroup, the run-as user), handed one tiny
//! `torch_bench` job planned and run as the daemon's are ([`plan_job`], [`execute`]: the real
//! hand-off, without energy meters or the VRAM watch), and its answer's hash compared with a
//! known answer committed here. On a host with a usable GPU the same job runs on a GPU worker
//! too and must give the same hash.
//!
//! # The known answer
//!
//! [`KNOWN_PARAMS`] is `n = 64, iters = 2, seed = 42`, one of protocol's published known
//! answers (`protocol::workload::torch_bench::KNOWN_ANSWERS`). torch_bench is an exact integer
//! chain, so its hash is the same on every correct machine, at any thread count, with any of the
//! CPU kernels and on a GPU; `n = 64` is large enough to run the real blocked kernels (and the
//! threads' split of rows). The answer was computed by protocol's plain reference and,
//! independently, by `scripts/int8_chain.py`; `tests/suite/exact_chain.rs` keeps the two in
//! step.
//!
//! The self-test must never use the operator's `WORK_DIR` or leave anything behind: the job
//! directory lives in a fresh temporary directory and the worker's cgroup is removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use protocol::api::JobLimits;
use protocol::api::Mode;
use protocol::workload::torch_bench::KNOWN_ANSWERS;
use protocol::workload::{torch_bench::TorchBenchParams, WorkloadSpec};

use super::{Line, Status};
use crate::config::Config;
use crate::execute::{execute, Done, Failed, Meters};
use crate::plan::{own_job, plan_job};
use crate::policy::Refusal;
use crate::worker_proc::{WorkerCommand, WorkerProcess};

/// The self-test's known answer: `(n, iters, seed, output_sha, merkle_root)`.
const KNOWN: (u32, u32, u64, &str, &str) = KNOWN_ANSWERS[3];

/// The self-test's job (see the module docs).
pub const KNOWN_PARAMS: TorchBenchParams = TorchBenchParams {
    n: KNOWN.0,
    iters: KNOWN.1,
    seed: KNOWN.2,
};

/// SHA-256 of [`KNOWN_PARAMS`]' output (`A_2`, 64 x 64 int8).
pub const KNOWN_SHA: &str = KNOWN.3;

/// Compute threads the self-test job asks for: more than one, so the worker's pool is used.
pub const THREADS: u32 = 2;

/// How a self-test went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelfTest {
    /// The worker started and answered the job.
    Ran {
        /// `Hello.sandbox` and where the worker ran (pid, kind, cgroup).
        sandbox: String,
        /// The answer's hash, lower-case hex.
        output_sha: String,
        /// From handing over the job to the answer.
        handoff: Duration,
        /// From starting the worker to its Hello.
        start: Duration,
    },
    /// No worker could start (no Hello): why.
    NoStart(String),
    /// The worker started but the job did not complete: the fail reason and message.
    JobFailed { sandbox: String, message: String },
    /// Not attempted: why.
    Skipped(String),
}

/// Runs the known-answer job on one real confined worker of `kind` configured by `config`.
/// Blocks; builds its own single-threaded runtime.
pub fn probe(
    config: &Config,
    kind: Mode,
    start_timeout: Duration,
    job_timeout: Duration,
) -> SelfTest {
    match run(config, kind, start_timeout, job_timeout) {
        Ok(t) => t,
        Err(message) => SelfTest::NoStart(message),
    }
}

fn run(
    config: &Config,
    kind: Mode,
    start_timeout: Duration,
    job_timeout: Duration,
) -> Result<SelfTest, String> {
    let mut cmd = WorkerCommand::for_config(config).map_err(|e| e.to_string())?;
    // Its job directory goes to a fresh temporary directory, not the operator's WORK_DIR;
    // a root doctor's worker runs as RUN_AS_USER, which must pass through it (0711).
    let scratch = TempDir::new().map_err(|e| format!("creating a temporary directory: {e}"))?;
    cmd.work_dir = scratch.0.clone();
    // The worker gets its own cgroup as under `run`; the subtree (`doctor.<pid>`) is removed
    // when the test ends.
    cmd.subtree = crate::cgroup::workers_subtree("doctor");
    let where_ = cmd
        .subtree
        .as_ref()
        .map(|t| t.describe())
        .unwrap_or_else(|| "no per-worker cgroup".to_owned());
    let params = serde_json::json!({
        "n": KNOWN_PARAMS.n,
        "iters": KNOWN_PARAMS.iters,
        "seed": KNOWN_PARAMS.seed,
    });
    let limits = JobLimits {
        max_runtime_s: job_timeout.as_secs().max(1),
        cpu_time_s: job_timeout.as_secs().max(1),
        vram_mb: match kind {
            Mode::Gpu => WorkloadSpec::TorchBench(KNOWN_PARAMS).vram_mb(),
            Mode::Cpu => 0,
        },
        ..JobLimits::default()
    };
    let (job, max) = own_job(
        "doctor-self-test",
        "torch_bench",
        params,
        limits,
        cmd.file_size_mb,
    );
    let not_planned =
        |r: Refusal| format!("the self-test job does not plan (a bug): {}", r.message);
    let plan = plan_job(&job, &max, THREADS, kind).map_err(not_planned)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    rt.block_on(async {
        let t0 = Instant::now();
        let worker = WorkerProcess::start(&cmd.with_kind(plan.kind), start_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let start = t0.elapsed();
        let hello = worker.hello().clone();
        let sandbox = format!(
            "{} (pid {}, {:?} worker, {where_})",
            hello.sandbox, hello.pid, hello.kind
        );
        let plan = plan
            .for_worker(hello.kind, &job, &max)
            .map_err(not_planned)?;
        Ok(
            match execute(worker, &plan, &Meters::none(), std::future::pending()).await {
                Ok(Done {
                    output, handoff, ..
                }) => SelfTest::Ran {
                    sandbox,
                    output_sha: crate::runtime::hex(&output.output_sha),
                    handoff,
                    start,
                },
                Err(Failed { reason, message }) => SelfTest::JobFailed {
                    sandbox,
                    message: format!("{}: {message}", reason.as_str()),
                },
            },
        )
    })
}

/// A temporary directory removed on drop (the library has no `tempfile` dependency).
struct TempDir(PathBuf);

impl TempDir {
    /// Creates `/tmp/aitbc-doctor-<pid>-<random>` with mode 0711.
    fn new() -> std::io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "aitbc-doctor-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::DirBuilder::new().mode(0o711).create(&path)?;
        let dir = TempDir(path);
        // DirBuilder applies the umask; set the mode exactly.
        std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The self-test line for a worker of `kind`.
pub fn check(result: &SelfTest, kind: Mode) -> Line {
    let (name, what) = match kind {
        Mode::Cpu => ("self-test", "CPU"),
        Mode::Gpu => ("self-test gpu", "GPU"),
    };
    let job = format!(
        "torch_bench n={} iters={} seed={}",
        KNOWN_PARAMS.n, KNOWN_PARAMS.iters, KNOWN_PARAMS.seed
    );
    let debug = "run doctor with LOG_LEVEL=debug for the worker's own messages";
    match result {
        SelfTest::Skipped(why) => Line::new(Status::Skip, name, format!("not run: {why}")).fix(
            match kind {
                Mode::Cpu => "fix the FAIL lines above, then run doctor again",
                Mode::Gpu => "make the gpu and libcuda lines above ok, then run doctor again",
            },
        ),
        SelfTest::Ran {
            sandbox,
            output_sha,
            handoff,
            start,
        } if output_sha == KNOWN_SHA => Line::new(
            Status::Ok,
            name,
            format!(
                "a confined {what} worker ran {job}; its hash matches the known answer {}… \
                 (start {:.1} ms, job {:.1} ms; sandbox: {sandbox})",
                &KNOWN_SHA[..16],
                start.as_secs_f64() * 1e3,
                handoff.as_secs_f64() * 1e3
            ),
        ),
        SelfTest::Ran {
            sandbox,
            output_sha,
            ..
        } => Line::new(
            Status::Fail,
            name,
            format!(
                "a confined {what} worker ran {job} but its hash {output_sha} is not the known \
                 answer {KNOWN_SHA}: this host computes wrong results, and its proofs would be \
                 wrong (sandbox: {sandbox})"
            ),
        )
        .fix(match kind {
            Mode::Cpu => "do not mine on this host until it is explained: run `aitbc-miner bench` and report the hash with the CPU model (lscpu) to the miner's maintainers; check the RAM (memtest86+)".to_owned(),
            Mode::Gpu => "do not mine on this GPU: set ACCEL_MODE=cpu, check the GPU with nvidia-smi -q (ECC errors, XIDs in the kernel log) and the driver version, and report the hash to the miner's maintainers".to_owned(),
        }),
        SelfTest::JobFailed { sandbox, message } => Line::new(
            Status::Fail,
            name,
            format!(
                "a confined {what} worker started but the job failed: {message} (sandbox: {sandbox})"
            ),
        )
        .fix(format!("every {what} job would fail the same way; {debug}")),
        SelfTest::NoStart(message) => match kind {
            Mode::Cpu => Line::new(
                Status::Fail,
                name,
                format!("no confined CPU worker could start: {message}"),
            )
            .fix(format!("see the confinement lines above; {debug}")),
            // `run` turns a slot whose GPU worker cannot start into a CPU slot, with a warning.
            Mode::Gpu => Line::new(
                Status::Warn,
                name,
                format!(
                    "no confined GPU worker could start: {message}; `run` would compute on the CPU instead"
                ),
            )
            .fix(format!(
                "check that the NVIDIA device nodes exist (nvidia-modprobe -u -c0) and that the driver is in ld.so.cache; {debug}"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(sha: &str) -> SelfTest {
        SelfTest::Ran {
            sandbox: "userns+netns; seccomp cpu (pid 7, Cpu worker, cg)".into(),
            output_sha: sha.into(),
            handoff: Duration::from_millis(3),
            start: Duration::from_millis(5),
        }
    }

    #[test]
    fn the_known_answer_is_a_sha256_and_the_job_is_valid() {
        assert!(protocol::api::is_sha256_hex(KNOWN_SHA));
        let spec = protocol::workload::plan(
            "torch_bench",
            &serde_json::json!({"n": 64, "iters": 2, "seed": 42}),
            &JobLimits::default(),
        )
        .unwrap();
        assert_eq!(
            spec,
            protocol::workload::WorkloadSpec::TorchBench(KNOWN_PARAMS)
        );
    }

    #[test]
    fn verdicts() {
        let ok = check(&ran(KNOWN_SHA), Mode::Cpu);
        assert_eq!(ok.status, Status::Ok);
        assert!(
            ok.finding.starts_with(
                "a confined CPU worker ran torch_bench n=64 iters=2 seed=42; its hash matches the known answer b2f6f1a4050fa22e…"
            ),
            "{ok}"
        );
        let wrong = check(&ran(&"0".repeat(64)), Mode::Gpu);
        assert_eq!(wrong.status, Status::Fail);
        assert!(
            wrong.to_string().starts_with("FAIL  self-test gpu: "),
            "{wrong}"
        );
        assert!(wrong.finding.contains(KNOWN_SHA), "{wrong}");
        let failed = SelfTest::JobFailed {
            sandbox: "s".into(),
            message: "SANDBOX_VIOLATION: forbidden system call ioctl".into(),
        };
        assert_eq!(check(&failed, Mode::Gpu).status, Status::Fail);
        let no_start = SelfTest::NoStart("exit 3".into());
        assert_eq!(check(&no_start, Mode::Cpu).status, Status::Fail);
        assert_eq!(check(&no_start, Mode::Gpu).status, Status::Warn);
        let skipped = check(&SelfTest::Skipped("no usable GPU".into()), Mode::Gpu);
        assert_eq!(skipped.status, Status::Skip);
        for l in [ok, wrong, skipped, check(&failed, Mode::Cpu)] {
            assert_eq!(l.fix.is_some(), l.status != Status::Ok, "{l}");
        }
    }
}

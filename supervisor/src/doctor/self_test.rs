//! The doctor's live self-test: one real confined worker, started the way the supervisor
//! starts them ([`WorkerProcess::start`], its own cgroup, the run-as user), handed one tiny
//! `torch_bench` job planned and run as the daemon's are ([`plan_job`], [`execute`]: the real
//! hand-off, without energy meters or the VRAM watch), and its answer's hash compared with a
//! known answer committed here. On a host with a usable GPU the same job runs on a GPU worker
//! too and must give the same hash.
//!
//! The self-test then audits its own job as a Coordinator would ([`self_audit`]): it picks
//! [`AUDIT_ROWS`] rows at random, opens them the way the daemon answers an audit
//! (`audit::open_rows`: recomputed with protocol's `output_rows`, paths from the worker's
//! leaves) and checks each opening with protocol's `check_opening` against the worker's root
//! and the plain reference row (`output_row`). A host whose audits would fail is told so.
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

use protocol::api::{AuditChallenge, JobLimits, Mode};
use protocol::merkle::Digest;
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

/// Rows the self-test's own audit opens.
pub const AUDIT_ROWS: usize = 4;

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
        /// The self-audit ([`self_audit`]): the rows that opened, or why one did not.
        audit: Result<Vec<u64>, String>,
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
                    output,
                    handoff,
                    leaves,
                    ..
                }) => SelfTest::Ran {
                    sandbox,
                    output_sha: protocol::hex::encode(&output.output_sha),
                    handoff,
                    start,
                    audit: self_audit(KNOWN_PARAMS, &output.merkle_root, leaves, &pick_rows()),
                },
                Err(Failed { reason, message }) => SelfTest::JobFailed {
                    sandbox,
                    message: format!("{}: {message}", reason.as_str()),
                },
            },
        )
    })
}

/// [`AUDIT_ROWS`] distinct rows of the known job, at random, ascending.
fn pick_rows() -> Vec<u64> {
    let n = u64::from(KNOWN_PARAMS.n);
    let mut rows: Vec<u64> = Vec::with_capacity(AUDIT_ROWS);
    while rows.len() < AUDIT_ROWS.min(n as usize) {
        let r = fastrand::u64(..n);
        if !rows.contains(&r) {
            rows.push(r);
        }
    }
    rows.sort_unstable();
    rows
}

/// Audits a finished job of `p` whose worker answered `root` and `leaves`: opens `rows` as the
/// daemon answers an audit and checks each opening as the Coordinator does, against the
/// plain reference row. The rows that held, or the first that did not.
pub fn self_audit(
    p: TorchBenchParams,
    root: &Digest,
    leaves: Vec<Digest>,
    rows: &[u64],
) -> Result<Vec<u64>, String> {
    use protocol::workload::torch_bench::{check_opening, input, output_row, MATRIX_B};
    let entry = crate::audit::Entry {
        meta: crate::audit::Meta {
            job_id: "doctor-self-test".into(),
            attempt: 1,
            spec: WorkloadSpec::TorchBench(p),
            merkle_root: protocol::hex::encode(root),
            proved_at: protocol::api::ts::now(),
            challenge: None,
        },
        leaves,
    };
    let challenge = AuditChallenge {
        id: entry.meta.job_id.clone(),
        attempt: 1,
        rows: rows.to_vec(),
        answer_by: protocol::api::ts::now(),
    };
    let (answer, faults) =
        crate::audit::open_rows(&entry, &challenge, "doctor").map_err(|e| e.to_string())?;
    if let Some(f) = faults.first() {
        return Err(format!(
            "row {} recomputed is not the row the worker committed to",
            f.row
        ));
    }
    let b = input(p.seed, MATRIX_B, p.n as usize);
    for r in &answer.rows {
        let data = protocol::hex::decode(&r.data).ok_or("an opened row is not hex (a bug)")?;
        let path: Option<Vec<Digest>> = r.path.iter().map(|h| protocol::hex::digest(h)).collect();
        let path = path.ok_or("an audit path is not hex (a bug)")?;
        let expected = output_row(&p, &b, r.index as usize);
        check_opening(&p, root, r.index, &data, &path, &expected).map_err(|e| e.to_string())?;
    }
    Ok(rows.to_vec())
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
            audit: Ok(rows),
        } if output_sha == KNOWN_SHA => Line::new(
            Status::Ok,
            name,
            format!(
                "a confined {what} worker ran {job}; its hash matches the known answer {}… \
                 and its audit of rows {rows:?} passed (start {:.1} ms, job {:.1} ms; \
                 sandbox: {sandbox})",
                &KNOWN_SHA[..16],
                start.as_secs_f64() * 1e3,
                handoff.as_secs_f64() * 1e3
            ),
        ),
        SelfTest::Ran {
            sandbox,
            output_sha,
            audit: Err(why),
            ..
        } if output_sha == KNOWN_SHA => Line::new(
            Status::Fail,
            name,
            format!(
                "a confined {what} worker ran {job} and its hash is the known answer, but \
                 auditing it failed: {why}; audits of this miner's proofs would fail and \
                 forfeit its credits (sandbox: {sandbox})"
            ),
        )
        .fix(format!(
            "do not mine until it is explained: report this line to the miner's maintainers; {debug}"
        )),
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
            audit: Ok(vec![1, 5, 9, 60]),
        }
    }

    /// The known job's honest leaves: the self-audit passes; a worker whose leaves (and root)
    /// are over other rows fails it, naming the row.
    #[test]
    fn the_self_audit_passes_honest_leaves_and_catches_others() {
        use protocol::workload::torch_bench::{reference_output, row_leaf};
        let p = KNOWN_PARAMS;
        let out = reference_output(&p);
        let leaves: Vec<Digest> = out.chunks(p.n as usize).map(row_leaf).collect();
        let root = protocol::merkle::root(&leaves).unwrap();
        assert_eq!(protocol::hex::encode(&root), KNOWN.4);
        let rows = pick_rows();
        assert_eq!(rows.len(), AUDIT_ROWS);
        assert!(rows.windows(2).all(|w| w[0] < w[1]) && rows.iter().all(|&r| r < 64));
        assert_eq!(
            self_audit(p, &root, leaves.clone(), &rows),
            Ok(rows.clone())
        );
        let mut wrong = leaves.clone();
        wrong[9] = [0xab; 32];
        let wrong_root = protocol::merkle::root(&wrong).unwrap();
        let e = self_audit(p, &wrong_root, wrong, &[3, 9]).unwrap_err();
        assert!(e.contains("row 9"), "{e}");
        let e = self_audit(p, &root, leaves, &[64]).unwrap_err();
        assert!(e.contains("row 64"), "{e}");
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
                "a confined CPU worker ran torch_bench n=64 iters=2 seed=42; its hash matches the known answer b2f6f1a4050fa22e… and its audit of rows [1, 5, 9, 60] passed"
            ),
            "{ok}"
        );
        let mut unaudited = ran(KNOWN_SHA);
        if let SelfTest::Ran { audit, .. } = &mut unaudited {
            *audit = Err("row 9 recomputed is not the row the worker committed to".into());
        }
        let l = check(&unaudited, Mode::Cpu);
        assert_eq!(l.status, Status::Fail);
        assert!(l.finding.contains("auditing it failed: row 9"), "{l}");
        assert!(l.fix.is_some());
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

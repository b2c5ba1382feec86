//! The worker's side of the supervisor conversation (protocol::wire): say hello (naming the
//! sandbox the worker applied to itself), take one order, answer it exactly once (a finished
//! job's leaves first, in `Leaves` frames, then `Done`), return.
//!
//! With the `hostile` feature (test builds only), a job is first offered to
//! `crate::hostile::intercept`, which runs an attack on the sandbox instead when the job's seed
//! selects one.
//!
//! The decisions (is this job acceptable, what does an outcome become on the wire) are the pure
//! functions `workload::check` and [`answer`]; [`serve`] only moves frames. This module must never
//! open a socket of its own, start an async runtime, answer more than one job, or panic on
//! anything the supervisor sends.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;

use crate::workload::{self, Device, Output};
use crate::WorkerError;
use aitbc_protocol::wire::{
    leaf_frames, read_frame, write_frame, FromWorker, Hello, JobOutput, JobSpec, ToWorker,
    WorkerFailure, WIRE_VERSION,
};

/// Exit code when the descriptor is unusable (the supervisor started us wrongly).
pub const EXIT_BAD_FD: u8 = 2;
/// Exit code when the conversation broke (malformed frame, closed socket, write failure).
pub const EXIT_CONVERSATION: u8 = 1;

/// Serves one job over the socket inherited at `fd` and returns the process exit code: 0 when
/// the conversation completed (including a job that failed and was reported as `Failed`),
/// [`EXIT_CONVERSATION`] when it broke, [`EXIT_BAD_FD`] when `fd` is not a Unix stream socket.
/// Errors are printed on stderr. `sandbox` is the Hello line: the caller states what
/// confinement it applied ([`crate::worker_main`] confines first, then serves).
pub fn serve_fd(fd: RawFd, sandbox: &str) -> ExitCode {
    let sock = match socket_from_fd(fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aitbc-miner worker: {e}");
            return ExitCode::from(EXIT_BAD_FD);
        }
    };
    serve_exit(sock, sandbox, &Device::detected_cpu())
}

/// [`serve`] on `device`, turned into the process exit code (see [`serve_fd`]).
/// This is the process-level entry: the job's own limits (RLIMIT_CPU, RLIMIT_AS) are applied to
/// this process when the job arrives.
pub(crate) fn serve_exit(sock: UnixStream, sandbox: &str, device: &Device) -> ExitCode {
    match converse(sock, sandbox, Process::Worker, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitbc-miner worker: {e}");
            ExitCode::from(EXIT_CONVERSATION)
        }
    }
}

/// Takes ownership of `fd` after checking that it is a Unix stream socket, and marks it
/// close-on-exec.
pub(crate) fn socket_from_fd(fd: RawFd) -> Result<UnixStream, WorkerError> {
    let bad = |reason: String| WorkerError::BadFd { fd, reason };
    if fd < 0 {
        return Err(bad("a descriptor cannot be negative".into()));
    }
    // SAFETY: stat is plain C data (integers only), for which all-zero bytes are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `st`, which we own; an invalid fd is reported through the
    // return value.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(bad(format!(
            "{} (was the worker started by the supervisor?)",
            io::Error::last_os_error()
        )));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("not a socket".into()));
    }
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| bad(format!("SO_DOMAIN: {e}")))?;
    if domain != libc::AF_UNIX {
        return Err(bad(format!("socket domain {domain}, expected AF_UNIX")));
    }
    let ty = sockopt(fd, libc::SO_TYPE).map_err(|e| bad(format!("SO_TYPE: {e}")))?;
    if ty != libc::SOCK_STREAM {
        return Err(bad(format!("socket type {ty}, expected SOCK_STREAM")));
    }
    // SAFETY: fcntl on a descriptor we checked is open; F_SETFD takes an int argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(bad(format!("F_SETFD: {}", io::Error::last_os_error())));
    }
    // SAFETY: the descriptor is an open Unix stream socket handed to this process for the
    // worker's exclusive use (the supervisor's contract); nothing else in the process owns it.
    Ok(unsafe { UnixStream::from_raw_fd(fd) })
}

/// An integer `SOL_SOCKET` option of `fd`.
fn sockopt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are valid for writes and `len` holds `val`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(val)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs the conversation on `sock`: `Hello` (carrying `sandbox`), then one `ToWorker`.
/// `Shutdown` returns `Ok`; `Run` is checked, computed and answered with exactly one `Done` or
/// `Failed`, then returns `Ok`. A malformed or oversized frame, or a closed socket, is an `Err`
/// (never a panic).
///
/// This never changes the calling process's limits (it may be a test harness); the worker
/// process's entry ([`serve_fd`], [`crate::worker_main`]) does. It computes on the CPU; a GPU
/// worker's [`Device`] exists only inside a confined worker process.
pub fn serve(sock: UnixStream, sandbox: &str) -> Result<(), WorkerError> {
    converse(sock, sandbox, Process::Shared, &Device::detected_cpu())
}

/// Whether the process serving the job is a worker of its own (which takes the job's limits
/// on itself) or shared with other code.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Process {
    Worker,
    Shared,
}

fn converse(
    mut sock: UnixStream,
    sandbox: &str,
    process: Process,
    device: &Device,
) -> Result<(), WorkerError> {
    write_frame(
        &mut sock,
        &FromWorker::Hello(Hello {
            version: WIRE_VERSION,
            pid: std::process::id(),
            kind: device.kind(),
            sandbox: sandbox.to_string(),
        }),
    )?;
    match read_frame::<ToWorker, _>(&mut sock)? {
        ToWorker::Shutdown => Ok(()),
        ToWorker::Run(job) => {
            let limited = match process {
                Process::Worker => {
                    crate::confine::apply_job_limits(job.cpu_time_s, job.address_space_bytes)
                }
                Process::Shared => Ok(()),
            };
            for frame in answer(limited.and_then(|()| run_job(&job, device))) {
                write_frame(&mut sock, &frame)?;
            }
            Ok(())
        }
    }
}

/// Checks and runs one job, turning a panic into an error. A job that passed the re-check is
/// first offered to the hostile hook (test builds only).
fn run_job(job: &JobSpec, device: &Device) -> Result<Output, WorkerError> {
    let backend = workload::check(job, device.kind())?;
    catch_unwind(AssertUnwindSafe(|| {
        #[cfg(feature = "hostile")]
        if let Some(outcome) = crate::hostile::intercept(job) {
            return outcome;
        }
        workload::run(&job.spec, backend, device)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(WorkerError::Internal(format!(
            "the computation panicked: {what}"
        )))
    })
}

/// The frames that report a job's outcome, in order: a finished job's leaves
/// (`wire::leaf_frames`) and its `Done`, or one `Failed`. The last frame is the answer.
pub fn answer(outcome: Result<Output, WorkerError>) -> Vec<FromWorker> {
    match outcome {
        Ok(run) => {
            let mut frames: Vec<FromWorker> = leaf_frames(&run.leaves).collect();
            frames.push(FromWorker::Done(JobOutput {
                output_sha: run.output_sha,
                merkle_root: run.merkle_root,
                output_len: run.output_len,
                flops: run.flops,
                compute_us: u64::try_from(run.compute_time().as_micros()).unwrap_or(u64::MAX),
                kind: run.kind,
            }));
            frames
        }
        Err(e) => vec![FromWorker::Failed(WorkerFailure {
            reason: e.fail_reason(),
            message: e.to_string(),
        })],
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixDatagram;
    use std::thread;

    use aitbc_protocol::wire::{WireError, WorkerFailReason};

    use super::*;
    use crate::workload::torch_bench::run_cpu;
    use crate::workload::{check, Backend};
    use aitbc_protocol::api::Mode;
    use aitbc_protocol::workload::{torch_bench::TorchBenchParams, WorkloadSpec};

    fn job(n: u32, iters: u32, threads: u32, ram_mb: u64) -> JobSpec {
        JobSpec {
            job_id: "job-1".into(),
            spec: WorkloadSpec::TorchBench(TorchBenchParams { n, iters, seed: 3 }),
            threads,
            ram_mb,
            vram_mb: 0,
            cpu_time_s: 60,
            address_space_bytes: None,
        }
    }

    /// Starts `serve` on one end of a socket pair and reads its `Hello` on the other.
    fn start() -> (UnixStream, thread::JoinHandle<Result<(), WorkerError>>) {
        let (mut sup, worker) = UnixStream::pair().unwrap();
        let handle = thread::spawn(move || serve(worker, "unconfined (unit test)"));
        match read_frame::<FromWorker, _>(&mut sup).unwrap() {
            FromWorker::Hello(h) => {
                assert_eq!(h.version, WIRE_VERSION);
                assert_eq!(h.pid, std::process::id());
                assert_eq!(h.kind, Mode::Cpu);
                assert_eq!(h.sandbox, "unconfined (unit test)");
            }
            other => panic!("expected Hello, got {other:?}"),
        }
        (sup, handle)
    }

    /// Sends `Run(job)`, returns the one answer (after any `Leaves` frames, which are
    /// checked to be the answer's leaves in order), and checks the worker then hangs up
    /// cleanly.
    fn run(job: JobSpec) -> FromWorker {
        run_with_leaves(job).1
    }

    fn run_with_leaves(job: JobSpec) -> (Vec<[u8; 32]>, FromWorker) {
        let (mut sup, handle) = start();
        write_frame(&mut sup, &ToWorker::Run(job)).unwrap();
        let mut leaves = Vec::new();
        let reply = loop {
            match read_frame::<FromWorker, _>(&mut sup).unwrap() {
                FromWorker::Leaves(l) => {
                    assert!(l.len() <= aitbc_protocol::wire::MAX_LEAVES_PER_FRAME);
                    leaves.extend(l);
                }
                other => break other,
            }
        };
        handle.join().unwrap().unwrap();
        assert!(matches!(
            read_frame::<FromWorker, _>(&mut sup),
            Err(WireError::Closed)
        ));
        (leaves, reply)
    }

    #[test]
    fn run_answers_done_with_the_chains_hash() {
        let (leaves, reply) = run_with_leaves(job(48, 5, 2, 64));
        let want = run_cpu(
            &TorchBenchParams {
                n: 48,
                iters: 5,
                seed: 3,
            },
            2,
        )
        .unwrap();
        let FromWorker::Done(out) = reply else {
            panic!("expected Done, got {reply:?}");
        };
        assert_eq!(out.output_sha, want.output_sha);
        assert_eq!(out.merkle_root, want.merkle_root);
        assert_eq!(leaves, want.leaves);
        assert_eq!(leaves.len(), 48);
        assert_eq!(aitbc_protocol::merkle::root(&leaves), Some(out.merkle_root));
        assert_eq!(out.output_len, 48 * 48);
        assert_eq!(out.flops, 2 * 48u64.pow(3) * 5);
        assert_eq!(out.kind, Mode::Cpu);
        assert!(out.compute_us > 0);
    }

    #[test]
    fn bad_jobs_are_answered_with_failed_bad_params() {
        let cases = [
            (job(0, 1, 1, 64), "params.n = 0"),
            (job(8, 0, 1, 64), "params.iters = 0"),
            (job(8, 1, 0, 64), "threads = 0"),
            (job(8192, 1, 1, 400), "ram_mb = 400: the job needs 480 MiB"),
        ];
        for (j, want) in cases {
            match run(j) {
                FromWorker::Failed(f) => {
                    assert_eq!(f.reason, WorkerFailReason::BadParams);
                    assert!(f.message.starts_with(want), "{} !~ {want}", f.message);
                }
                other => panic!("expected Failed, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_gpu_job_is_checked_against_its_vram_cap() {
        let gpu_job = |n, vram_mb| JobSpec {
            vram_mb,
            ..job(n, 10, 1, 0)
        };
        // n = 1024 needs 6 x 1 MiB (A, B, the i32 product), 16 bytes of state and cuBLAS's
        // 32 MiB: 39 MiB rounded up.
        let backend = check(&gpu_job(1024, 39), Mode::Gpu).unwrap();
        assert_eq!(
            backend,
            Backend::Gpu {
                vram_cap_bytes: 39 << 20
            }
        );
        assert_eq!(backend.kind(), Mode::Gpu);
        let e = check(&gpu_job(1024, 38), Mode::Gpu).unwrap_err();
        assert_eq!(e.fail_reason(), WorkerFailReason::BadParams);
        assert_eq!(
            e.to_string(),
            "vram_mb = 38: the job needs 39 MiB of GPU memory (torch_bench n=1024 iters=10 seed=3)"
        );
        let e = check(&gpu_job(8, 0), Mode::Gpu).unwrap_err();
        assert!(e.to_string().starts_with("vram_mb = 0: "), "{e}");
        // ram_mb is the CPU's cap: a GPU job is not refused for it, a CPU job is.
        // (n = 8192: 480 MiB of host memory, 417 MiB of GPU memory.)
        assert!(check(&gpu_job(8192, 479), Mode::Gpu).is_ok());
        assert!(check(&gpu_job(8192, 479), Mode::Cpu).is_err());
        // Parameters and threads are checked on both kinds, before the cap.
        let e = check(&job(0, 1, 1, 64), Mode::Gpu).unwrap_err();
        assert!(e.to_string().starts_with("params.n = 0"), "{e}");
        // A huge cap saturates instead of wrapping.
        let backend = check(&gpu_job(8, u64::MAX), Mode::Gpu).unwrap();
        assert_eq!(
            backend,
            Backend::Gpu {
                vram_cap_bytes: u64::MAX
            }
        );
    }

    #[test]
    fn a_gpu_backend_on_a_cpu_device_is_a_bug_not_a_panic() {
        let p = TorchBenchParams {
            n: 8,
            iters: 1,
            seed: 0,
        };
        let e = workload::run(
            &WorkloadSpec::TorchBench(p),
            Backend::Gpu {
                vram_cap_bytes: 1 << 30,
            },
            &Device::detected_cpu(),
        )
        .unwrap_err();
        assert_eq!(e.fail_reason(), WorkerFailReason::Internal);
    }

    #[test]
    fn the_compute_time_reported_is_the_device_time_when_there_is_one() {
        let run = Output {
            output_sha: [7; 32],
            merkle_root: [8; 32],
            leaves: vec![[9; 32]; 1500],
            output_len: 4,
            flops: 2,
            elapsed: std::time::Duration::from_millis(30),
            device_time: Some(std::time::Duration::from_micros(1234)),
            kind: Mode::Gpu,
        };
        let frames = answer(Ok(run.clone()));
        // 1500 leaves: two Leaves frames (1024 + 476), then Done.
        assert_eq!(frames.len(), 3);
        assert!(matches!(&frames[0], FromWorker::Leaves(l) if l.len() == 1024));
        assert!(matches!(&frames[1], FromWorker::Leaves(l) if l.len() == 476));
        let Some(FromWorker::Done(out)) = frames.last() else {
            panic!("expected Done");
        };
        assert_eq!((out.compute_us, out.kind), (1234, Mode::Gpu));
        assert_eq!((out.output_sha, out.merkle_root), ([7; 32], [8; 32]));
        let cpu = Output {
            device_time: None,
            kind: Mode::Cpu,
            ..run
        };
        let Some(FromWorker::Done(out)) = answer(Ok(cpu)).pop() else {
            panic!("expected Done");
        };
        assert_eq!(out.compute_us, 30_000);
    }

    #[test]
    fn shutdown_ends_the_conversation_cleanly() {
        let (mut sup, handle) = start();
        write_frame(&mut sup, &ToWorker::Shutdown).unwrap();
        handle.join().unwrap().unwrap();
    }

    #[test]
    fn broken_supervisors_get_errors_not_panics() {
        // A payload that is not a ToWorker.
        let (mut sup, handle) = start();
        sup.write_all(&[3, 0, 0, 0, 0xde, 0xad, 0xbe]).unwrap();
        let err = handle.join().unwrap().unwrap_err();
        assert!(
            matches!(err, WorkerError::Wire(WireError::Malformed(_))),
            "{err}"
        );

        // A header announcing more than MAX_FRAME_LEN: refused before reading the payload.
        let (mut sup, handle) = start();
        sup.write_all(&u32::MAX.to_le_bytes()).unwrap();
        let err = handle.join().unwrap().unwrap_err();
        assert!(
            matches!(err, WorkerError::Wire(WireError::TooLarge { .. })),
            "{err}"
        );

        // The supervisor hangs up without an order.
        let (sup, handle) = start();
        drop(sup);
        let err = handle.join().unwrap().unwrap_err();
        assert!(matches!(err, WorkerError::Wire(WireError::Closed)), "{err}");
    }

    #[test]
    fn answers_map_errors_to_reasons() {
        let oom = answer(Err(WorkerError::OutOfMemory {
            what: "W",
            bytes: 1 << 40,
        }));
        let [FromWorker::Failed(f)] = &oom[..] else {
            panic!("{oom:?}")
        };
        assert_eq!(f.reason, WorkerFailReason::OutOfMemory);
        assert_eq!(
            f.message,
            "could not allocate W (1099511627776 bytes): out of memory"
        );
        let bug = answer(Err(WorkerError::Internal("x".into())));
        assert!(matches!(
            &bug[..],
            [FromWorker::Failed(WorkerFailure {
                reason: WorkerFailReason::Internal,
                ..
            })]
        ));
    }

    #[test]
    fn only_a_unix_stream_socket_is_accepted_as_the_fd() {
        let err = |fd| socket_from_fd(fd).unwrap_err().to_string();
        assert!(err(-1).contains("cannot be negative"), "{}", err(-1));
        let file = tempfile_fd();
        assert!(
            err(file.as_raw_fd()).ends_with("not a socket"),
            "{}",
            err(file.as_raw_fd())
        );
        let (dgram, _other) = UnixDatagram::pair().unwrap();
        let e = err(dgram.as_raw_fd());
        assert!(e.contains("expected SOCK_STREAM"), "{e}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = err(udp.as_raw_fd());
        assert!(e.contains("expected AF_UNIX"), "{e}");
        assert_eq!(serve_fd(file.as_raw_fd(), ""), ExitCode::from(EXIT_BAD_FD));
    }

    #[test]
    fn serve_fd_serves_an_inherited_socket() {
        let (mut sup, worker) = UnixStream::pair().unwrap();
        let fd = worker.into_raw_fd();
        let handle = thread::spawn(move || serve_fd(fd, ""));
        assert!(matches!(
            read_frame::<FromWorker, _>(&mut sup).unwrap(),
            FromWorker::Hello(_)
        ));
        write_frame(&mut sup, &ToWorker::Shutdown).unwrap();
        assert_eq!(handle.join().unwrap(), ExitCode::SUCCESS);

        let (mut sup, worker) = UnixStream::pair().unwrap();
        let fd = worker.into_raw_fd();
        let handle = thread::spawn(move || serve_fd(fd, ""));
        let _hello = read_frame::<FromWorker, _>(&mut sup).unwrap();
        sup.write_all(&[0, 0, 0, 0]).unwrap();
        assert_eq!(handle.join().unwrap(), ExitCode::from(EXIT_CONVERSATION));
    }

    proptest::proptest! {
        /// The re-check accepts exactly the jobs whose every field is in range, and never panics.
        #[test]
        fn the_check_accepts_exactly_the_sane_jobs(
            n in 0u32..20_000,
            iters in 0u32..200_000,
            threads in 0u32..5000,
            ram_mb in 0u64..4096,
        ) {
            let j = job(n, iters, threads, ram_mb);
            let sane = (1..=TorchBenchParams::MAX_N).contains(&n)
                && (1..=TorchBenchParams::MAX_ITERS).contains(&iters)
                && (1..=crate::workload::MAX_THREADS).contains(&threads)
                && j.spec.memory_mb() <= ram_mb;
            match check(&j, Mode::Cpu) {
                Ok(backend) => {
                    proptest::prop_assert!(sane);
                    proptest::prop_assert_eq!(backend, Backend::Cpu { threads: threads as usize });
                }
                Err(e) => {
                    proptest::prop_assert!(!sane, "refused a sane job: {}", e);
                    let bad_params = matches!(e, WorkerError::BadParams { .. });
                    proptest::prop_assert!(bad_params, "not BadParams: {}", e);
                }
            }
        }
    }

    /// An open descriptor that is not a socket (this test binary's own executable).
    fn tempfile_fd() -> std::fs::File {
        std::fs::File::open(std::env::current_exe().unwrap()).unwrap()
    }
}

//! Worker processes: start one (socket pair on fd 3, clean environment, own process group),
//! wait for its Hello, hand it one job, read exactly one answer under a deadline, and reap it
//! with its resource usage. Every way a worker can end is turned into an [`Ending`].
//!
//! Reaping: once the answer is in (or the socket closed, or the deadline passed), a blocking
//! `waitid(WEXITED | WNOWAIT)` on `spawn_blocking` waits for the leader to exit without reaping
//! it (bounded: on expiry the group gets SIGKILL). While the leader is an unreaped zombie its pid
//! (= the group id) cannot be reused, so `killpg(SIGKILL)` then safely removes anything it left
//! behind, and `wait4` finally reaps it and yields `rusage` (cpu_ms, peak RSS). A process dropped
//! without that (task cancelled) is killed and reaped in `Drop`. No zombies, ever.
//!
//! This module must never trust the worker: frame headers are checked against `MAX_FRAME_LEN`
//! before allocating, any unexpected frame is a protocol error, and it never panics on what the
//! worker sends.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use protocol::wire::{
    self, FromWorker, Hello, JobOutput, JobSpec, ToWorker, WireError, WorkerFailure, HEADER_LEN,
    WIRE_VERSION,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::policy::ExitStatus;
use crate::Error;

/// The fd number the worker finds its socket on.
pub const WORKER_FD: i32 = 3;
/// How much of a worker's stderr is kept for failure messages.
pub const STDERR_TAIL: usize = 4096;
/// How long a worker that answered (or closed its socket) may take to exit before SIGKILL.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// The program started as a worker: e.g. the miner's own binary with `["worker"]`.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl WorkerCommand {
    /// This very executable, re-run as `<exe> worker`.
    pub fn current_exe() -> Result<WorkerCommand, Error> {
        Ok(WorkerCommand {
            program: std::env::current_exe().map_err(Error::CurrentExe)?,
            args: vec!["worker".into()],
        })
    }

    /// The worker a config asks for: `WORKER_EXE worker` when WORKER_EXE is set, otherwise
    /// this very executable (see [`WorkerCommand::current_exe`]).
    pub fn for_config(config: &crate::Config) -> Result<WorkerCommand, Error> {
        match &config.worker_exe {
            Some(exe) => Ok(WorkerCommand {
                program: exe.clone(),
                args: vec!["worker".into()],
            }),
            None => WorkerCommand::current_exe(),
        }
    }
}

/// Resource usage of a reaped worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ms: u64,
    pub peak_rss_mb: u64,
}

/// How a job attempt on a worker ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    Done(JobOutput),
    Failed(WorkerFailure),
    /// The worker ended or closed its socket without answering.
    Crashed,
    TimedOut,
    /// The worker sent something it must not; it was killed.
    Protocol(String),
    /// The supervisor gave up on the job (shutdown after the drain grace); it was killed.
    Cancelled,
}

/// A finished attempt: the ending, the time from Run to answer, and how the process ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ending: Ending,
    pub handoff_to_answer: Duration,
    pub exit: Option<ExitStatus>,
    pub usage: Usage,
    pub stderr_tail: String,
}

#[derive(Default)]
struct StderrTail {
    job: Option<String>,
    bytes: VecDeque<u8>,
}

/// A started worker that has said Hello and waits for its one job.
pub struct WorkerProcess {
    pid: i32,
    sock: UnixStream,
    stderr: Arc<Mutex<StderrTail>>,
    hello: Hello,
    reaped: bool,
}

impl WorkerProcess {
    /// Starts `cmd` with a fresh socket pair as fd 3 and waits up to `start_timeout` for a
    /// Hello whose version matches [`WIRE_VERSION`].
    pub async fn start(
        cmd: &WorkerCommand,
        start_timeout: Duration,
    ) -> Result<WorkerProcess, Error> {
        let spawn_err = |source| Error::Spawn {
            program: cmd.program.clone(),
            source,
        };
        let (parent, child): (OwnedFd, OwnedFd) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| spawn_err(e.into()))?;
        let child_fd = child.as_raw_fd();
        let mut command = std::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe system calls dup2(2), fcntl(2), close_range(2) and prctl(2) on descriptors of
        // the child; it allocates nothing and touches no lock. dup2 gives fd 3 without
        // FD_CLOEXEC, so it survives exec; every descriptor above 3 (including any the
        // supervisor itself inherited without CLOEXEC) is marked CLOEXEC, so the worker starts
        // with exactly 0, 1, 2 and 3. std's own exec-error pipe stays usable until exec.
        unsafe {
            command.pre_exec(move || {
                if child_fd == WORKER_FD {
                    if libc::fcntl(WORKER_FD, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(child_fd, WORKER_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                cloexec_above(WORKER_FD + 1);
                // If the supervisor dies (even by SIGKILL) the worker gets SIGKILL too. The
                // signal follows the *thread* that forked: workers are spawned from tokio's
                // long-lived runtime threads (or a caller's block_on thread), never from the
                // transient blocking pool, so a live supervisor never triggers it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child_proc = command.spawn().map_err(spawn_err)?;
        drop(child);
        let pid = i32::try_from(child_proc.id()).expect("pids fit in i32");
        let stderr = Arc::new(Mutex::new(StderrTail::default()));
        if let Some(pipe) = child_proc.stderr.take() {
            spawn_stderr_reader(pid, pipe, stderr.clone());
        }
        // Dropping a std Child neither kills nor waits; this module reaps by pid.
        drop(child_proc);

        let std_sock = std::os::unix::net::UnixStream::from(parent);
        let mut w = WorkerProcess {
            pid,
            // Filled below; a placeholder Hello keeps the struct (and its Drop) whole meanwhile.
            hello: Hello {
                version: 0,
                pid: 0,
                kind: wire::WorkerKind::Cpu,
            },
            sock: match std_sock
                .set_nonblocking(true)
                .and_then(|()| UnixStream::from_std(std_sock))
            {
                Ok(s) => s,
                Err(e) => {
                    kill_and_reap_now(pid);
                    return Err(spawn_err(e));
                }
            },
            stderr,
            reaped: false,
        };
        let start_err = |w: &WorkerProcess, message: String| Error::WorkerStart {
            program: cmd.program.clone(),
            message: format!("{message}{}", w.stderr_suffix()),
        };
        let hello = match tokio::time::timeout(start_timeout, read_frame(&mut w.sock)).await {
            Err(_) => {
                let msg = format!("no Hello within {start_timeout:?}");
                w.kill_and_reap().await;
                return Err(start_err(&w, msg));
            }
            Ok(Err(e)) => {
                let (_, exit) = w.kill_and_reap().await;
                let exit = exit
                    .map(|s| format!(" ({})", s.describe()))
                    .unwrap_or_default();
                return Err(start_err(&w, format!("reading Hello: {e}{exit}")));
            }
            Ok(Ok(FromWorker::Hello(h))) => h,
            Ok(Ok(other)) => {
                w.kill_and_reap().await;
                return Err(start_err(
                    &w,
                    format!("expected Hello, got {}", frame_name(&other)),
                ));
            }
        };
        if hello.version != WIRE_VERSION {
            w.kill_and_reap().await;
            return Err(start_err(
                &w,
                format!(
                    "wire version {} but this supervisor speaks {WIRE_VERSION}",
                    hello.version
                ),
            ));
        }
        w.hello = hello;
        Ok(w)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// True when the idle worker's socket is still open with nothing unread on it (a worker
    /// that died or spoke out of turn while idle must not be handed a job).
    pub fn is_ready(&self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.sock.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Caps the worker's CPU time at `secs` from now on (RLIMIT_CPU via prlimit(2)): the kernel
    /// sends SIGXCPU at the soft limit and SIGKILL one second later. Set when the job is handed
    /// over, because the worker was started before the job was known.
    pub fn limit_cpu(&self, secs: u64) -> std::io::Result<()> {
        let lim = libc::rlimit {
            rlim_cur: secs as libc::rlim_t,
            rlim_max: secs.saturating_add(1) as libc::rlim_t,
        };
        // SAFETY: prlimit on our own (unreaped, so not reused) child's pid, valid pointers.
        let r = unsafe { libc::prlimit(self.pid, libc::RLIMIT_CPU, &lim, std::ptr::null_mut()) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Runs one job: sends `Run`, waits for one answer for at most `deadline` (or until
    /// `cancel` resolves), then makes sure the process and its group are gone and reaped.
    pub async fn run(
        mut self,
        spec: JobSpec,
        deadline: Duration,
        cancel: impl Future<Output = ()>,
    ) -> Finished {
        if let Ok(mut t) = self.stderr.lock() {
            t.job = Some(spec.job_id.clone());
        }
        let started = Instant::now();
        let frame = wire::encode(&ToWorker::Run(spec));
        let ending = match frame {
            Err(e) => Ending::Protocol(format!("cannot encode the job: {e}")),
            Ok(frame) => match self.sock.write_all(&frame).await {
                Err(_) => Ending::Crashed,
                Ok(()) => {
                    tokio::select! {
                        r = read_frame(&mut self.sock) => match r {
                            Ok(FromWorker::Done(out)) => Ending::Done(out),
                            Ok(FromWorker::Failed(f)) => Ending::Failed(f),
                            Ok(other @ FromWorker::Hello(_)) => Ending::Protocol(format!(
                                "unexpected {} frame while running a job", frame_name(&other))),
                            Err(WireError::Closed) | Err(WireError::Io(_)) => Ending::Crashed,
                            Err(e) => Ending::Protocol(e.to_string()),
                        },
                        () = tokio::time::sleep(deadline) => Ending::TimedOut,
                        () = cancel => Ending::Cancelled,
                    }
                }
            },
        };
        let handoff_to_answer = started.elapsed();
        let grace = match ending {
            Ending::Done(_) | Ending::Failed(_) | Ending::Crashed => EXIT_GRACE,
            Ending::TimedOut | Ending::Protocol(_) | Ending::Cancelled => Duration::ZERO,
        };
        let (usage, exit) = self.reap(grace).await;
        Finished {
            ending,
            handoff_to_answer,
            exit,
            usage,
            stderr_tail: self.stderr_tail(),
        }
    }

    /// Retires an idle worker: `Shutdown`, then reap (SIGKILL after the grace).
    pub async fn retire(mut self) -> Option<ExitStatus> {
        if let Ok(frame) = wire::encode(&ToWorker::Shutdown) {
            let _ = self.sock.write_all(&frame).await;
        }
        self.reap(EXIT_GRACE).await.1
    }

    /// Kills the worker's group at once and reaps it.
    pub async fn kill_and_reap(&mut self) -> (Usage, Option<ExitStatus>) {
        self.reap(Duration::ZERO).await
    }

    /// The last bytes the worker wrote to stderr, as text.
    pub fn stderr_tail(&self) -> String {
        match self.stderr.lock() {
            Ok(t) => {
                let (a, b) = t.bytes.as_slices();
                let mut v = a.to_vec();
                v.extend_from_slice(b);
                String::from_utf8_lossy(&v).trim().to_owned()
            }
            Err(_) => String::new(),
        }
    }

    fn stderr_suffix(&self) -> String {
        let t = self.stderr_tail();
        if t.is_empty() {
            String::new()
        } else {
            format!("; stderr: {t}")
        }
    }

    /// Waits up to `grace` for the leader to exit (without reaping), SIGKILLs the group, then
    /// reaps the leader with its rusage.
    async fn reap(&mut self, grace: Duration) -> (Usage, Option<ExitStatus>) {
        if self.reaped {
            return (Usage::default(), None);
        }
        let pid = self.pid;
        if !grace.is_zero() {
            let exited = tokio::task::spawn_blocking(move || wait_exited(pid));
            if tokio::time::timeout(grace, exited).await.is_err() {
                // The blocking wait returns once the kill below lands.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let result = tokio::task::spawn_blocking(move || wait4_reap(pid)).await;
        self.reaped = true;
        match result {
            Ok(Some((status, usage))) => (usage, Some(status)),
            _ => (Usage::default(), None),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if !self.reaped {
            kill_and_reap_now(self.pid);
        }
    }
}

/// Marks every descriptor from `first` up as close-on-exec. Async-signal-safe (raw system
/// calls only): `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11), else a bounded fcntl loop.
fn cloexec_above(first: i32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain system calls on the calling process's own descriptor table.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        for fd in first..4096 {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// SIGKILL to the group and a blocking reap; used where nothing async is possible. After
/// SIGKILL the wait is short (the kernel tears the process down).
fn kill_and_reap_now(pid: i32) {
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    let _ = wait4_reap(pid);
}

/// Blocks until `pid` has exited, leaving it unreaped (`WNOWAIT`).
fn wait_exited(pid: i32) {
    loop {
        // SAFETY: siginfo_t is plain data, zero is a valid bit pattern; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a plain syscall on our own child's pid with a valid out-pointer.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// Reaps `pid` (blocking) and returns its exit status and resource usage.
fn wait4_reap(pid: i32) -> Option<(ExitStatus, Usage)> {
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data; zero is valid; wait4 only writes it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a plain syscall on our own child's pid with valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            let ms = |tv: libc::timeval| tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000;
            let usage = Usage {
                cpu_ms: ms(ru.ru_utime) + ms(ru.ru_stime),
                peak_rss_mb: (ru.ru_maxrss.max(0) as u64).div_ceil(1024),
            };
            return Some((ExitStatus::from_raw(status), usage));
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// Reads one frame; the header is checked before the payload buffer is allocated.
async fn read_frame(sock: &mut UnixStream) -> Result<FromWorker, WireError> {
    let mut header = [0u8; HEADER_LEN];
    if let Err(e) = sock.read_exact(&mut header).await {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        });
    }
    let len = wire::frame_len(header)?;
    let mut payload = vec![0u8; len];
    if let Err(e) = sock.read_exact(&mut payload).await {
        return Err(match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                WireError::Malformed(format!("frame announced {len} bytes but the worker closed"))
            }
            _ => WireError::Io(e),
        });
    }
    wire::decode_payload(&payload)
}

fn frame_name(f: &FromWorker) -> &'static str {
    match f {
        FromWorker::Hello(_) => "Hello",
        FromWorker::Done(_) => "Done",
        FromWorker::Failed(_) => "Failed",
    }
}

/// Logs the worker's stderr lines at debug (with the job id once known) and keeps the last
/// [`STDERR_TAIL`] bytes for failure messages.
fn spawn_stderr_reader(pid: i32, pipe: std::process::ChildStderr, tail: Arc<Mutex<StderrTail>>) {
    let Ok(pipe) = tokio::process::ChildStderr::from_std(pipe) else {
        return;
    };
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let Ok(mut t) = tail.lock() else { break };
            let text = String::from_utf8_lossy(&line);
            tracing::debug!(
                worker_pid = pid,
                job = t.job.as_deref().unwrap_or("-"),
                "worker: {}",
                text.trim_end()
            );
            t.bytes.extend(line.iter().copied());
            let excess = t.bytes.len().saturating_sub(STDERR_TAIL);
            t.bytes.drain(..excess);
        }
    });
}

#[cfg(test)]
mod tests {
    //! Real processes: small bash scripts stand in for workers that misbehave in exact ways.
    use super::*;
    use protocol::wire::WorkerKind;
    use protocol::workload::{TorchBenchParams, WorkloadSpec};

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        /// A worker that sends a valid Hello and then runs `then` (bash, fd 3 is the socket).
        fn new(then: &str) -> (Fake, WorkerCommand) {
            Self::with_version(WIRE_VERSION, then)
        }

        fn with_version(version: u32, then: &str) -> (Fake, WorkerCommand) {
            let dir = tempfile::tempdir().unwrap();
            let hello = wire::encode(&FromWorker::Hello(Hello {
                version,
                pid: 1,
                kind: WorkerKind::Cpu,
            }))
            .unwrap();
            std::fs::write(dir.path().join("hello.bin"), hello).unwrap();
            let script = dir.path().join("worker.sh");
            std::fs::write(
                &script,
                format!(
                    "cat '{}' >&3\n{then}\n",
                    dir.path().join("hello.bin").display()
                ),
            )
            .unwrap();
            let cmd = WorkerCommand {
                program: "/bin/bash".into(),
                args: vec![script.into()],
            };
            (Fake { dir }, cmd)
        }
    }

    fn job() -> JobSpec {
        JobSpec {
            job_id: "j1".into(),
            spec: WorkloadSpec::TorchBench(TorchBenchParams {
                n: 4,
                iters: 1,
                seed: 0,
            }),
            threads: 1,
            ram_mb: 64,
        }
    }

    fn alive(pid: i32) -> bool {
        // Signal 0 probes existence; a reaped process is gone (ESRCH).
        nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok()
    }

    async fn run(cmd: &WorkerCommand, deadline: Duration) -> (Finished, i32) {
        let w = WorkerProcess::start(cmd, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(w.is_ready());
        let pid = w.pid();
        (w.run(job(), deadline, std::future::pending()).await, pid)
    }

    #[tokio::test]
    async fn oversized_frame_header_is_a_protocol_error() {
        let (_f, cmd) =
            Fake::new(r"head -c 4 <&3 >/dev/null; printf '\xff\xff\xff\x7f' >&3; sleep 30");
        let (fin, pid) = run(&cmd, Duration::from_secs(10)).await;
        match &fin.ending {
            Ending::Protocol(m) => assert!(m.contains("exceeds the maximum"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(fin.exit, Some(ExitStatus::Signaled(libc::SIGKILL)));
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn garbage_payload_is_a_protocol_error() {
        let (_f, cmd) = Fake::new(
            r"head -c 4 <&3 >/dev/null; printf '\x03\x00\x00\x00\xff\xff\xff' >&3; sleep 30",
        );
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        assert!(
            matches!(fin.ending, Ending::Protocol(_)),
            "{:?}",
            fin.ending
        );
    }

    #[tokio::test]
    async fn a_second_hello_is_a_protocol_error() {
        let (_f, cmd) =
            Fake::new(r#"head -c 4 <&3 >/dev/null; cat "$(dirname "$0")/hello.bin" >&3; sleep 30"#);
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        match &fin.ending {
            Ending::Protocol(m) => assert!(m.contains("unexpected Hello"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn exit_without_answer_is_a_crash_with_its_code_and_stderr() {
        let (_f, cmd) = Fake::new("head -c 4 <&3 >/dev/null; echo 'boom: out of luck' >&2; exit 7");
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        assert_eq!(fin.ending, Ending::Crashed);
        assert_eq!(fin.exit, Some(ExitStatus::Exited(7)));
        assert!(
            fin.stderr_tail.contains("boom: out of luck"),
            "{}",
            fin.stderr_tail
        );
    }

    #[tokio::test]
    async fn deadline_kills_the_whole_group() {
        // The worker starts a grandchild in its group; both must be gone afterwards.
        let (f, cmd) = Fake::new("sleep 300 & echo $! > \"$(dirname \"$0\")/grandchild\"; wait");
        let t0 = Instant::now();
        let (fin, pid) = run(&cmd, Duration::from_millis(300)).await;
        assert_eq!(fin.ending, Ending::TimedOut);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(!alive(pid));
        let gc: i32 = std::fs::read_to_string(f.dir.path().join("grandchild"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was SIGKILLed; once its new parent (init) reaps it, it is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(gc) && !is_zombie(gc) {
            assert!(Instant::now() < deadline, "grandchild {gc} survived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn cpu_time_limit_stops_a_spinning_worker() {
        let (_f, cmd) = Fake::new("while :; do :; done");
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        w.limit_cpu(1).unwrap();
        let fin = w
            .run(job(), Duration::from_secs(30), std::future::pending())
            .await;
        assert_eq!(fin.ending, Ending::Crashed);
        assert_eq!(fin.exit, Some(ExitStatus::Signaled(libc::SIGXCPU)));
        assert!(fin.usage.cpu_ms >= 900, "{:?}", fin.usage);
    }

    #[tokio::test]
    async fn cancel_kills_and_reports_cancelled() {
        let (_f, cmd) = Fake::new("sleep 300");
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        let pid = w.pid();
        let fin = w
            .run(
                job(),
                Duration::from_secs(60),
                tokio::time::sleep(Duration::from_millis(50)),
            )
            .await;
        assert_eq!(fin.ending, Ending::Cancelled);
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn wrong_version_or_no_hello_fails_the_start() {
        let (_f, cmd) = Fake::with_version(WIRE_VERSION + 1, "sleep 30");
        let e = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("wire version"), "{e}");
        let cmd = WorkerCommand {
            program: "/bin/sleep".into(),
            args: vec!["30".into()],
        };
        let e = WorkerProcess::start(&cmd, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("no Hello"), "{e}");
        let cmd = WorkerCommand {
            program: "/nonexistent/worker".into(),
            args: vec![],
        };
        let e = WorkerProcess::start(&cmd, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Error::Spawn { .. }), "{e}");
    }

    #[tokio::test]
    async fn environment_is_clean_and_fd3_is_the_only_extra_fd() {
        // The fake reports its environment and open fds on stderr, then exits.
        let (_f, cmd) =
            Fake::new("head -c 4 <&3 >/dev/null; env >&2; exec /bin/ls /proc/self/fd >&2");
        std::env::set_var("AITBC_SECRET_FOR_TEST", "leak");
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        assert!(
            !fin.stderr_tail.contains("AITBC_SECRET_FOR_TEST"),
            "{}",
            fin.stderr_tail
        );
        assert!(fin.stderr_tail.contains("PATH=/usr/bin:/bin"));
        let fds: Vec<&str> = fin
            .stderr_tail
            .lines()
            .filter(|l| l.chars().all(|c| c.is_ascii_digit()))
            .collect();
        // 0,1,2, the socket (3), and the directory ls itself opened to list them (4):
        // any leaked descriptor would push that one higher.
        assert_eq!(fds, ["0", "1", "2", "3", "4"]);
    }

    #[tokio::test]
    async fn idle_worker_that_died_is_not_ready() {
        let (_f, cmd) = Fake::new("exit 0");
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.is_ready() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

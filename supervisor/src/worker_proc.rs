//! Worker processes: start one (socket pair on fd 3, clean environment, own process group, its
//! own cgroup and job directory, the run-as user), wait for its Hello, apply the job's limits
//! at hand-off, hand it one job, read exactly one answer under a deadline, and reap it with its
//! resource usage. Every way a worker can end is turned into an [`Ending`].
//!
//! Launch: before the fork the supervisor creates the worker's job directory
//! (`WORK_DIR/<unique>`, mode 0700, owned by the run-as user) and cgroup
//! (`<subtree>/workers/<unique>`, its `cgroup.procs` opened). Between fork and exec the child
//! only makes raw system calls on what was prepared: it joins the cgroup (writes `0` to each
//! `cgroup.procs`), switches to the run-as user (`setgroups`, `setresgid`, `setresuid`) when
//! the supervisor is root, moves its socket to fd 3, marks every other descriptor
//! close-on-exec and sets its parent-death signal (after the uid switch, which clears it).
//! The worker then runs `worker` with [`WorkerArgs::to_args`] (`--job-dir DIR --fs ..
//! --file-size-mb N --kind .. --cpu-kernel ..`) and confines the rest itself.
//!
//! Hand-off ([`WorkerProcess::run`]): the job's [`JobPlan`] is applied as it is, nothing here
//! computes a limit: the cgroup's memory (swap off), pids and CPU limits (`plan.cgroup`),
//! RLIMIT_AS for CPU workers (`plan.spec.address_space_bytes`) and RLIMIT_CPU (`plan.cpu_time`)
//! from outside where the kernel lets us, then `Run(plan.spec)`, from which the worker lowers
//! its own RLIMIT_AS and RLIMIT_CPU before it touches the job; the deadline is
//! `plan.deadline`.
//!
//! Reaping: once the answer is in (or the socket closed, or the deadline passed), a blocking
//! `waitid(WEXITED | WNOWAIT)` on `spawn_blocking` waits for the leader to exit without reaping
//! it (bounded: on expiry it is killed). While the leader is an unreaped zombie its pid
//! (= the group id) cannot be reused, so `killpg(SIGKILL)` then safely removes anything it left
//! behind in its group, the whole-cgroup kill anything that left the group, the cgroup's
//! accounting is read (CPU time, peak memory, OOM kills), `wait4` reaps the leader with its
//! `rusage` (the fallback accounting without a cgroup), and the cgroup and job directory are
//! removed. A process dropped without that (task cancelled) is killed and reaped in `Drop`.
//! No zombies, no stray processes, no leftover directories.
//!
//! The answer (`read_answer`): `Leaves` frames, then `Done`, or one `Failed`. The leaves are
//! counted as they come (more than the job's `spec.rows()` is a protocol error at once, so a
//! worker cannot make the supervisor hold more than `32 * rows` bytes of them), and a `Done`
//! is taken only with exactly that many whose Merkle root is its `merkle_root`.
//!
//! This module must never trust the worker: frame headers are checked against `MAX_FRAME_LEN`
//! before allocating, any unexpected frame is a protocol error, and it never panics on what the
//! worker sends. Between fork and exec it must never allocate, lock or call anything that is
//! not async-signal-safe.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use protocol::api::Mode;
use protocol::wire::{self, FromWorker, Hello, ToWorker, WireError, HEADER_LEN, WIRE_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use protocol::args::{CpuKernel, FsMode, WorkerArgs, DEFAULT_FILE_SIZE_MB};

use crate::cgroup::{CgroupStats, Subtree, WorkerCgroup};
use crate::ending::{Ending, ExitStatus};
use crate::plan::JobPlan;
use crate::Error;

/// The fd number the worker finds its socket on.
pub const WORKER_FD: i32 = 3;
/// How much of a worker's stderr is kept for failure messages.
pub const STDERR_TAIL: usize = 4096;
/// How long a reaped worker's stderr may take to reach its end (the last line in flight).
pub const STDERR_DRAIN: Duration = Duration::from_millis(250);
/// How long a worker that answered (or closed its socket) may take to exit before SIGKILL.
pub const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Where job directories go when nothing else is said (the config's `WORK_DIR` default).
pub const DEFAULT_WORK_DIR: &str = "/tmp/aitbc-work";

/// Everything a worker launch needs: the program (e.g. the miner's own binary with
/// `["worker"]`), the sandbox arguments from the config, where job directories go, the
/// supervisor's cgroup subtree (none: rlimits and process groups only), and the user a root
/// supervisor runs workers as.
///
/// The command line is `program args..` followed by [`WorkerArgs::to_args`] (the job
/// directory, `fs`, `file_size_mb`, `kind` and `cpu_kernel`); a GPU worker also gets
/// `CUDA_DEVICE_ORDER=PCI_BUS_ID` (so its CUDA device 0 is NVML's device 0, the one the
/// supervisor watches).
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// `--fs`: how the worker confines its view of the filesystem (`SANDBOX_FS`).
    pub fs: FsMode,
    /// `--file-size-mb`: the worker's RLIMIT_FSIZE (`MAX_JOB_DISK_MB`).
    pub file_size_mb: u64,
    /// `--cpu-kernel`: the int8 kernel of the worker's CPU chain (`CPU_KERNEL`).
    pub cpu_kernel: CpuKernel,
    /// The parent of each worker's job directory (`WORK_DIR`).
    pub work_dir: PathBuf,
    /// The supervisor's cgroup subtree; `None`: no per-worker cgroup.
    pub subtree: Option<Arc<Subtree>>,
    /// `(uid, gid)` the child switches to before exec, when the supervisor runs as root.
    /// Ignored when it does not (a non-root supervisor's workers already run as its user).
    pub run_as: Option<(u32, u32)>,
    /// Which kind of worker to start (default CPU).
    pub kind: Mode,
}

impl WorkerCommand {
    /// `program args..` with the defaults: the worker's own `--fs` and `--file-size-mb`, job directories under
    /// [`DEFAULT_WORK_DIR`], no cgroup subtree, no user switch.
    pub fn new<I, A>(program: impl Into<PathBuf>, args: I) -> WorkerCommand
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        WorkerCommand {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            fs: FsMode::default(),
            file_size_mb: DEFAULT_FILE_SIZE_MB,
            cpu_kernel: CpuKernel::Auto,
            work_dir: PathBuf::from(DEFAULT_WORK_DIR),
            subtree: None,
            run_as: None,
            kind: Mode::Cpu,
        }
    }

    /// The same command for a worker of `kind`.
    pub fn with_kind(&self, kind: Mode) -> WorkerCommand {
        WorkerCommand {
            kind,
            ..self.clone()
        }
    }

    /// This very executable, re-run as `<exe> worker`.
    pub fn current_exe() -> Result<WorkerCommand, Error> {
        Ok(WorkerCommand::new(
            std::env::current_exe().map_err(Error::CurrentExe)?,
            ["worker"],
        ))
    }

    /// The worker a config asks for: `WORKER_EXE worker` when WORKER_EXE is set, otherwise
    /// this very executable (see [`WorkerCommand::current_exe`]); `--fs SANDBOX_FS`,
    /// `--file-size-mb MAX_JOB_DISK_MB`, `--cpu-kernel CPU_KERNEL`; job directories in `WORK_DIR`; and, when this
    /// process is root, `RUN_AS_USER` for the workers. The cgroup subtree is left to the
    /// caller ([`crate::cgroup::supervisor_subtree`]; `run` makes one when none is given).
    pub fn for_config(config: &crate::Config) -> Result<WorkerCommand, Error> {
        let mut cmd = match &config.worker_exe {
            Some(exe) => WorkerCommand::new(exe.clone(), ["worker"]),
            None => WorkerCommand::current_exe()?,
        };
        cmd.fs = config.sandbox_fs;
        cmd.file_size_mb = config.job_limits_max.disk_mb;
        cmd.cpu_kernel = config.cpu_kernel;
        cmd.work_dir = config.work_dir.clone();
        if crate::privilege::is_root() {
            cmd.run_as = Some(crate::privilege::lookup_user(&config.run_as_user)?);
        }
        Ok(cmd)
    }
}

/// Resource usage of a reaped worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ms: u64,
    pub peak_rss_mb: u64,
}

/// A finished attempt: the ending, the time from Run to answer, and how the process ended.
#[derive(Debug, Clone)]
pub struct Finished {
    pub ending: Ending,
    pub handoff_to_answer: Duration,
    pub exit: Option<ExitStatus>,
    /// CPU time and peak memory: from the worker's cgroup when it had one (every process
    /// of the job counted), else from `wait4`'s rusage of the worker process.
    pub usage: Usage,
    /// The cgroup's own accounting, when the worker had a cgroup (`oom_killed` among it).
    pub cgroup: Option<CgroupStats>,
    pub stderr_tail: String,
}

impl Finished {
    /// Whether the kernel's OOM killer struck in the worker's cgroup.
    pub fn oom_killed(&self) -> bool {
        self.cgroup.is_some_and(|s| s.oom_killed)
    }

    /// The fail report for an attempt that did not end in `Done` ([`crate::policy::failure_of`]).
    pub fn failure(
        &self,
        limits: &protocol::api::JobLimits,
    ) -> (protocol::api::FailReason, String) {
        crate::policy::failure_of(
            &self.ending,
            self.exit,
            self.oom_killed(),
            &self.stderr_tail,
            limits,
        )
    }
}

#[derive(Default)]
struct StderrTail {
    job: Option<String>,
    bytes: VecDeque<u8>,
}

/// What a worker has outside its process: its cgroup and its job directory. Dropping it
/// kills whatever is left in the cgroup, then removes both.
#[derive(Default)]
struct Resources {
    cgroup: Option<WorkerCgroup>,
    job_dir: Option<PathBuf>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        drop(self.cgroup.take());
        if let Some(dir) = self.job_dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove the job directory {}: {e}", dir.display());
                }
            }
        }
    }
}

/// A unique name for a worker's job directory and cgroup: `w<supervisor pid>-<n>`.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "w{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the job directory (mode 0700; its parent as needed) and, for a root supervisor
/// that switches users, hands it to the worker's user.
fn create_job_dir(dir: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Sets both limits of `resource` of process `pid` to `value` (prlimit(2)).
fn set_rlimit(
    pid: i32,
    resource: libc::__rlimit_resource_t,
    soft: u64,
    hard: u64,
) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: prlimit on our own (unreaped, so not reused) child's pid, valid pointers.
    let r = unsafe { libc::prlimit(pid, resource, &lim, std::ptr::null_mut()) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A started worker that has said Hello and waits for its one job.
pub struct WorkerProcess {
    pid: i32,
    sock: UnixStream,
    stderr: Arc<Mutex<StderrTail>>,
    /// The task copying the worker's stderr into `stderr`; awaited (briefly) after the reap so
    /// the worker's last line (e.g. the seccomp report) is in the tail before it is read.
    stderr_reader: Option<tokio::task::JoinHandle<()>>,
    hello: Hello,
    res: Resources,
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
        let name = unique_name();
        // Only a root supervisor switches users; one that already dropped root runs its
        // workers as itself.
        let run_as = cmd.run_as.filter(|_| nix::unistd::geteuid().is_root());
        let mut res = Resources::default();
        let job_dir = cmd.work_dir.join(&name);
        create_job_dir(&job_dir, run_as).map_err(|source| Error::WorkDir {
            path: job_dir.clone(),
            source,
        })?;
        res.job_dir = Some(job_dir.clone());
        if let Some(subtree) = &cmd.subtree {
            res.cgroup = Some(subtree.worker(&name)?);
        }
        let join_fds = res
            .cgroup
            .as_ref()
            .map(WorkerCgroup::join_fds)
            .unwrap_or_default();
        let mut command = std::process::Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .args(
                WorkerArgs {
                    job_dir: job_dir.clone(),
                    fs: cmd.fs,
                    file_size_mb: cmd.file_size_mb,
                    kind: cmd.kind,
                    cpu_kernel: cmd.cpu_kernel,
                }
                .to_args(),
            )
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        if cmd.kind == Mode::Gpu {
            command.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        }
        // SAFETY: the closure runs in the forked child before exec and only makes raw,
        // async-signal-safe system calls (write(2), setgroups(2), setresgid(2), setresuid(2),
        // dup2(2), fcntl(2), close_range(2), prctl(2)) on descriptors and values prepared
        // before the fork; it allocates nothing and touches no lock (iterating the captured
        // Vec reads memory only). The cgroup is joined first, while the child surely may
        // (before the uid switch, and before dup2 could close a cgroup.procs descriptor that
        // happens to be fd 3). The raw setres*id calls change only this (the child's only)
        // thread. dup2 gives fd 3 without FD_CLOEXEC, so it survives exec; every descriptor
        // above 3 (the cgroup.procs ones, and any the supervisor itself inherited without
        // CLOEXEC) is marked CLOEXEC, so the worker starts with exactly 0, 1, 2 and 3. std's
        // own exec-error pipe stays usable until exec.
        unsafe {
            command.pre_exec(move || {
                for fd in &join_fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some((uid, gid)) = run_as {
                    let groups = [gid as libc::gid_t];
                    if libc::syscall(libc::SYS_setgroups, 1 as libc::c_long, groups.as_ptr()) != 0
                        || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
                        || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
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
                // transient blocking pool, so a live supervisor never triggers it. Set after
                // the uid switch, which would clear it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // On failure `res` is dropped: the cgroup and the job directory go again.
        let mut child_proc = command.spawn().map_err(spawn_err)?;
        drop(child);
        let pid = i32::try_from(child_proc.id()).expect("pids fit in i32");
        let stderr = Arc::new(Mutex::new(StderrTail::default()));
        let stderr_reader = child_proc
            .stderr
            .take()
            .and_then(|pipe| spawn_stderr_reader(pid, pipe, stderr.clone()));
        // Dropping a std Child neither kills nor waits; this module reaps by pid.
        drop(child_proc);

        let std_sock = std::os::unix::net::UnixStream::from(parent);
        let mut w = WorkerProcess {
            pid,
            // Filled below; a placeholder Hello keeps the struct (and its Drop) whole meanwhile.
            hello: Hello {
                version: 0,
                pid: 0,
                kind: Mode::Cpu,
                sandbox: String::new(),
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
            stderr_reader,
            res,
            reaped: false,
        };
        let start_err = |w: &WorkerProcess, message: String| Error::WorkerStart {
            program: cmd.program.clone(),
            message: format!("{message}{}", w.stderr_suffix()),
            exit_code: None,
        };
        let hello = match tokio::time::timeout(start_timeout, read_frame(&mut w.sock)).await {
            Err(_) => {
                let msg = format!("no Hello within {start_timeout:?}");
                w.kill_and_reap().await;
                return Err(start_err(&w, msg));
            }
            Ok(Err(e)) => {
                let (_, exit) = w.kill_and_reap().await;
                let text = exit
                    .map(|s| format!(" ({})", s.describe()))
                    .unwrap_or_default();
                let mut err = start_err(&w, format!("reading Hello: {e}{text}"));
                if let (Error::WorkerStart { exit_code, .. }, Some(ExitStatus::Exited(code))) =
                    (&mut err, exit)
                {
                    *exit_code = Some(code);
                }
                return Err(err);
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

    /// The worker's cgroup directory, when it has one (v1: the freezer's, else the first).
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.res.cgroup.as_ref().map(WorkerCgroup::path)
    }

    /// The worker's job directory.
    pub fn job_dir(&self) -> Option<&Path> {
        self.res.job_dir.as_deref()
    }

    /// Applies `plan` to the worker when its job is handed over (the worker was started before
    /// the job was known): the cgroup's limits, then RLIMIT_AS (CPU workers) and RLIMIT_CPU from
    /// outside. Those two are set where the kernel lets us (same user, or CAP_SYS_RESOURCE); a
    /// refusal is only logged, since the worker applies the same limits to itself from the
    /// `JobSpec` before it touches the job. A plan for another kind of worker is refused: a CPU
    /// worker must not run without its address-space limit.
    fn confine(&self, plan: &JobPlan) -> Result<(), String> {
        if plan.kind != self.hello.kind {
            return Err(format!(
                "the job was planned for a {} worker but this is a {} worker (supervisor bug)",
                plan.kind.as_str(),
                self.hello.kind.as_str()
            ));
        }
        if let Some(cg) = &self.res.cgroup {
            cg.set_limits(&plan.cgroup).map_err(|e| e.to_string())?;
        }
        if let Some(bytes) = plan.spec.address_space_bytes {
            if let Err(e) = set_rlimit(self.pid, libc::RLIMIT_AS, bytes, bytes) {
                tracing::debug!(
                    worker_pid = self.pid,
                    "setting RLIMIT_AS to {bytes} bytes from outside: {e}; the worker sets it itself"
                );
            }
        }
        let (soft, hard) = plan.cpu_time;
        if let Err(e) = set_rlimit(self.pid, libc::RLIMIT_CPU, soft, hard) {
            // A root supervisor without CAP_SYS_RESOURCE cannot set it on a worker that
            // switched to another user.
            tracing::debug!(
                worker_pid = self.pid,
                job = %plan.spec.job_id,
                "setting the worker's CPU-time limit from outside: {e}; the worker sets it itself"
            );
        }
        Ok(())
    }

    /// Runs one job: applies `plan`, sends `Run(plan.spec)`, waits for one answer for at most
    /// `plan.deadline` (or until `cancel` resolves), then makes sure the process and its group
    /// are gone and reaped.
    pub async fn run(self, plan: &JobPlan, cancel: impl Future<Output = ()>) -> Finished {
        self.run_watched(plan, cancel, std::future::pending()).await
    }

    /// [`WorkerProcess::run`] with a `watch` beside the job: when it resolves before the
    /// answer (e.g. the VRAM watch saw the worker over its cap), the worker's group and cgroup
    /// are killed and the attempt ends as [`Ending::Stopped`] with the watch's message.
    pub async fn run_watched(
        mut self,
        plan: &JobPlan,
        cancel: impl Future<Output = ()>,
        watch: impl Future<Output = String>,
    ) -> Finished {
        if let Ok(mut t) = self.stderr.lock() {
            t.job = Some(plan.spec.job_id.clone());
        }
        let started = Instant::now();
        let confined = self.confine(plan);
        let frame = wire::encode(&ToWorker::Run(plan.spec.clone()));
        let ending = match (confined, frame) {
            (Err(e), _) => Ending::Confinement(e),
            (Ok(()), Err(e)) => Ending::Protocol(format!("cannot encode the job: {e}")),
            (Ok(()), Ok(frame)) => match self.sock.write_all(&frame).await {
                Err(_) => Ending::Crashed,
                Ok(()) => {
                    let rows = plan.spec.spec.rows();
                    tokio::select! {
                        ending = read_answer(&mut self.sock, rows) => ending,
                        () = tokio::time::sleep(plan.deadline) => Ending::TimedOut,
                        () = cancel => Ending::Cancelled,
                        why = watch => Ending::Stopped(why),
                    }
                }
            },
        };
        let handoff_to_answer = started.elapsed();
        let grace = match ending {
            Ending::Done(..) | Ending::Failed(_) | Ending::Crashed => EXIT_GRACE,
            Ending::TimedOut
            | Ending::Protocol(_)
            | Ending::Cancelled
            | Ending::Confinement(_)
            | Ending::Stopped(_) => Duration::ZERO,
        };
        let (usage, exit, cgroup) = self.reap(grace).await;
        self.drain_stderr().await;
        Finished {
            ending,
            handoff_to_answer,
            exit,
            usage,
            cgroup,
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

    /// Kills the worker (its group and its cgroup) at once and reaps it.
    pub async fn kill_and_reap(&mut self) -> (Usage, Option<ExitStatus>) {
        let (usage, exit, _) = self.reap(Duration::ZERO).await;
        self.drain_stderr().await;
        (usage, exit)
    }

    /// Waits (at most [`STDERR_DRAIN`]) until the stderr reader has seen the end of the pipe,
    /// which comes as soon as every process holding it is gone. Call after reaping.
    async fn drain_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN, reader).await;
        }
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

    /// Waits up to `grace` for the leader to exit (without reaping), kills its group and its
    /// cgroup, reads the cgroup's accounting, reaps the leader with its rusage, and removes the
    /// cgroup and the job directory.
    async fn reap(&mut self, grace: Duration) -> (Usage, Option<ExitStatus>, Option<CgroupStats>) {
        if self.reaped {
            return (Usage::default(), None, None);
        }
        let pid = self.pid;
        if !grace.is_zero() {
            let exited = tokio::task::spawn_blocking(move || wait_exited(pid));
            if tokio::time::timeout(grace, exited).await.is_err() {
                // The blocking wait returns once the kill below lands.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let res = std::mem::take(&mut self.res);
        let result = tokio::task::spawn_blocking(move || {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            // Whatever left the process group (setsid) is still in the cgroup.
            if let Some(cg) = &res.cgroup {
                if let Err(e) = cg.kill_all() {
                    tracing::warn!(worker_pid = pid, "{e}");
                }
            }
            let stats = res.cgroup.as_ref().map(WorkerCgroup::stats);
            let reaped = wait4_reap(pid);
            drop(res);
            (reaped, stats)
        })
        .await;
        self.reaped = true;
        match result {
            Ok((Some((status, usage)), stats)) => {
                (merge_usage(usage, stats.as_ref()), Some(status), stats)
            }
            Ok((None, stats)) => (merge_usage(Usage::default(), stats.as_ref()), None, stats),
            Err(_) => (Usage::default(), None, None),
        }
    }
}

/// The usage to report: the cgroup's numbers (every process of the job) where it has them,
/// else the worker process's rusage.
fn merge_usage(rusage: Usage, cgroup: Option<&CgroupStats>) -> Usage {
    Usage {
        cpu_ms: cgroup
            .and_then(|s| s.cpu_usage_us)
            .map_or(rusage.cpu_ms, |us| us / 1000),
        peak_rss_mb: cgroup
            .and_then(|s| s.peak_memory_bytes)
            .map_or(rusage.peak_rss_mb, |b| b.div_ceil(1 << 20)),
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

/// Reads a job's answer: `Leaves` frames (at most `rows` leaves in all), then `Done` with
/// exactly `rows` leaves whose root is its `merkle_root`, or `Failed`. Anything else, more
/// leaves than `rows`, too few or the wrong ones is [`Ending::Protocol`].
async fn read_answer(sock: &mut UnixStream, rows: u64) -> Ending {
    let want = usize::try_from(rows).unwrap_or(usize::MAX);
    let mut leaves: Vec<protocol::merkle::Digest> = Vec::new();
    loop {
        match read_frame(sock).await {
            Ok(FromWorker::Leaves(more)) => {
                if more.len() > wire::MAX_LEAVES_PER_FRAME
                    || leaves.len().saturating_add(more.len()) > want
                {
                    return Ending::Protocol(format!(
                        "the worker sent more than the job's {rows} leaves (a frame of {} after {})",
                        more.len(),
                        leaves.len()
                    ));
                }
                if leaves.capacity() == 0 {
                    leaves.reserve_exact(want);
                }
                leaves.extend(more);
            }
            Ok(FromWorker::Done(out)) => {
                return match check_leaves(&leaves, rows, &out.merkle_root) {
                    Ok(()) => Ending::Done(out, leaves),
                    Err(why) => Ending::Protocol(why),
                }
            }
            Ok(FromWorker::Failed(f)) => return Ending::Failed(f),
            Ok(other @ FromWorker::Hello(_)) => {
                return Ending::Protocol(format!(
                    "unexpected {} frame while running a job",
                    frame_name(&other)
                ))
            }
            Err(WireError::Closed) | Err(WireError::Io(_)) => return Ending::Crashed,
            Err(e) => return Ending::Protocol(e.to_string()),
        }
    }
}

/// Pure: whether `leaves` are a finished job's: `rows` of them, under `root`.
pub fn check_leaves(
    leaves: &[protocol::merkle::Digest],
    rows: u64,
    root: &protocol::merkle::Digest,
) -> Result<(), String> {
    if leaves.len() as u64 != rows {
        return Err(format!(
            "the worker answered Done with {} leaves; the job has {rows} rows",
            leaves.len()
        ));
    }
    if rows > 0 && protocol::merkle::root(leaves).as_ref() != Some(root) {
        return Err("the worker's leaves are not under the merkle_root it answered".into());
    }
    Ok(())
}

fn frame_name(f: &FromWorker) -> &'static str {
    match f {
        FromWorker::Hello(_) => "Hello",
        FromWorker::Leaves(_) => "Leaves",
        FromWorker::Done(_) => "Done",
        FromWorker::Failed(_) => "Failed",
    }
}

/// Logs the worker's stderr lines at debug (with the job id once known) and keeps the last
/// [`STDERR_TAIL`] bytes for failure messages.
fn spawn_stderr_reader(
    pid: i32,
    pipe: std::process::ChildStderr,
    tail: Arc<Mutex<StderrTail>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let pipe = tokio::process::ChildStderr::from_std(pipe).ok()?;
    Some(tokio::spawn(async move {
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
    }))
}

#[cfg(test)]
mod tests {
    //! Real processes: small bash scripts stand in for workers that misbehave in exact ways.
    use super::*;

    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        /// A worker that sends a valid Hello and then runs `then` (bash, fd 3 is the socket).
        fn new(then: &str) -> (Fake, WorkerCommand) {
            Self::with_version(WIRE_VERSION, then)
        }

        fn with_version(version: u32, then: &str) -> (Fake, WorkerCommand) {
            Self::with_prelude(version, "", then)
        }

        /// Runs `prelude` before sending Hello, so it has happened once the worker is ready.
        fn with_prelude(version: u32, prelude: &str, then: &str) -> (Fake, WorkerCommand) {
            let dir = tempfile::tempdir().unwrap();
            let hello = wire::encode(&FromWorker::Hello(Hello {
                version,
                pid: 1,
                kind: Mode::Cpu,
                sandbox: "fake".into(),
            }))
            .unwrap();
            std::fs::write(dir.path().join("hello.bin"), hello).unwrap();
            let script = dir.path().join("worker.sh");
            std::fs::write(
                &script,
                format!(
                    "{prelude}\ncat '{}' >&3\n{then}\n",
                    dir.path().join("hello.bin").display()
                ),
            )
            .unwrap();
            let mut cmd = WorkerCommand::new("/bin/bash", [script]);
            cmd.work_dir = dir.path().join("work");
            (Fake { dir }, cmd)
        }
    }

    /// The plan of a small CPU job (64 MiB, one thread, 60 s of CPU time) with `deadline`.
    fn plan(deadline: Duration) -> JobPlan {
        let limits = protocol::api::JobLimits {
            ram_mb: 64,
            vram_mb: 0,
            cpu_time_s: 60,
            max_runtime_s: 60,
        };
        let params = serde_json::json!({"n": 4, "iters": 1});
        let (job, max) = crate::plan::own_job("j1", "torch_bench", params, limits, 0);
        let plan = crate::plan::plan_job(&job, &max, 1, Mode::Cpu).expect("a valid job");
        JobPlan { deadline, ..plan }
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
        (w.run(&plan(deadline), std::future::pending()).await, pid)
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

    /// A worker that answers its job with exactly `frames` and exits.
    fn answering(frames: &[FromWorker]) -> (Fake, WorkerCommand) {
        let (fake, cmd) = Fake::new("");
        let mut bytes = Vec::new();
        for f in frames {
            bytes.extend(wire::encode(f).unwrap());
        }
        let answer = fake.dir.path().join("answer.bin");
        std::fs::write(&answer, bytes).unwrap();
        let script = fake.dir.path().join("worker.sh");
        let mut text = std::fs::read_to_string(&script).unwrap();
        text.push_str(&format!(
            "head -c 4 <&3 >/dev/null; cat '{}' >&3\n",
            answer.display()
        ));
        std::fs::write(&script, text).unwrap();
        (fake, cmd)
    }

    fn done(root: protocol::merkle::Digest) -> FromWorker {
        FromWorker::Done(wire::JobOutput {
            output_sha: [1; 32],
            merkle_root: root,
            output_len: 16,
            flops: 128,
            compute_us: 1,
            kind: Mode::Cpu,
        })
    }

    /// The plan's job has n = 4 rows: exactly 4 leaves under the answer's root are taken (in
    /// any split into frames); more, fewer, none or the wrong root are protocol errors.
    #[tokio::test]
    async fn a_workers_leaves_are_counted_and_checked_against_its_root() {
        let leaves: Vec<[u8; 32]> = (0..5u8)
            .map(|i| protocol::merkle::leaf_hash(&[i]))
            .collect();
        let root4 = protocol::merkle::root(&leaves[..4]).unwrap();
        let split = [
            FromWorker::Leaves(leaves[..1].to_vec()),
            FromWorker::Leaves(leaves[1..4].to_vec()),
            done(root4),
        ];
        let (_f, cmd) = answering(&split);
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        match fin.ending {
            Ending::Done(out, got) => {
                assert_eq!(got, leaves[..4]);
                assert_eq!(out.merkle_root, root4);
            }
            other => panic!("{other:?}"),
        }
        let root3 = protocol::merkle::root(&leaves[..3]).unwrap();
        let root5 = protocol::merkle::root(&leaves).unwrap();
        let cases: [(Vec<FromWorker>, &str); 5] = [
            (
                vec![FromWorker::Leaves(leaves.clone()), done(root5)],
                "more than the job's 4 leaves",
            ),
            (
                vec![
                    FromWorker::Leaves(leaves[..4].to_vec()),
                    FromWorker::Leaves(leaves[4..].to_vec()),
                    done(root4),
                ],
                "more than the job's 4 leaves",
            ),
            (
                vec![FromWorker::Leaves(leaves[..3].to_vec()), done(root3)],
                "Done with 3 leaves; the job has 4 rows",
            ),
            (vec![done(root4)], "Done with 0 leaves"),
            (
                vec![FromWorker::Leaves(leaves[1..5].to_vec()), done(root4)],
                "not under the merkle_root",
            ),
        ];
        for (frames, want) in cases {
            let (_f, cmd) = answering(&frames);
            let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
            match &fin.ending {
                Ending::Protocol(why) => assert!(why.contains(want), "{why} !~ {want}"),
                other => panic!("{want}: {other:?}"),
            }
            let (reason, _) = fin.failure(&protocol::api::JobLimits::default());
            assert_eq!(reason, protocol::api::FailReason::ProtocolError);
        }
    }

    #[test]
    fn leaves_are_checked_purely_too() {
        let leaves: Vec<[u8; 32]> = (0..3u8)
            .map(|i| protocol::merkle::leaf_hash(&[i]))
            .collect();
        let root = protocol::merkle::root(&leaves).unwrap();
        assert_eq!(check_leaves(&leaves, 3, &root), Ok(()));
        assert!(check_leaves(&leaves, 2, &root).is_err());
        assert!(check_leaves(&leaves, 3, &[0; 32]).is_err());
        assert_eq!(check_leaves(&[], 0, &[0; 32]), Ok(()));
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
        let plan = JobPlan {
            cpu_time: (1, 2),
            ..plan(Duration::from_secs(30))
        };
        let fin = w.run(&plan, std::future::pending()).await;
        assert_eq!(fin.ending, Ending::Crashed);
        assert_eq!(fin.exit, Some(ExitStatus::Signaled(libc::SIGXCPU)));
        // The kernel stops it at 1 s of tick-sampled CPU time; rusage reports the precise
        // run time, which on a loaded machine (ticks charged to whoever is on the CPU) is less.
        assert!(fin.usage.cpu_ms >= 500, "{:?}", fin.usage);
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
                &plan(Duration::from_secs(60)),
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
        // Extra arguments (`--job-dir DIR`) become bash's positional parameters.
        let cmd = WorkerCommand::new("/bin/bash", ["-c", "sleep 30"]);
        let e = WorkerProcess::start(&cmd, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("no Hello"), "{e}");
        let cmd = WorkerCommand::new("/nonexistent/worker", Vec::<OsString>::new());
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
    async fn a_watch_that_fires_stops_the_job_and_kills_the_worker() {
        let (_f, cmd) = Fake::new("sleep 300");
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        let pid = w.pid();
        let watch = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            "used 9 MiB of VRAM, limit 8 MiB".to_owned()
        };
        let fin = w
            .run_watched(
                &plan(Duration::from_secs(60)),
                std::future::pending(),
                watch,
            )
            .await;
        assert_eq!(
            fin.ending,
            Ending::Stopped("used 9 MiB of VRAM, limit 8 MiB".into())
        );
        assert!(!alive(pid));
        let (reason, message) = fin.failure(&Default::default());
        assert_eq!(reason, protocol::api::FailReason::OutOfMemory);
        assert_eq!(message, "used 9 MiB of VRAM, limit 8 MiB");
    }

    #[tokio::test]
    async fn a_gpu_worker_gets_its_kind_and_device_order_and_a_setup_failure_keeps_its_code() {
        let (_f, cmd) =
            Fake::new(r#"head -c 4 <&3 >/dev/null; echo "args: $* order: $CUDA_DEVICE_ORDER" >&2"#);
        let (fin, _) = run(&cmd.with_kind(Mode::Gpu), Duration::from_secs(10)).await;
        let line = fin
            .stderr_tail
            .lines()
            .find(|l| l.starts_with("args: "))
            .unwrap_or_default()
            .to_owned();
        assert!(
            line.ends_with(" --kind gpu --cpu-kernel auto order: PCI_BUS_ID"),
            "{line}"
        );
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        assert!(
            fin.stderr_tail.contains("--kind cpu") && !fin.stderr_tail.contains("PCI_BUS_ID"),
            "a CPU worker: {}",
            fin.stderr_tail
        );

        // A worker whose set-up fails exits 3 before Hello: the start error keeps the code.
        let cmd = WorkerCommand::new(
            "/bin/bash",
            [
                "-c",
                "echo 'no CUDA driver: libcuda.so.1 not found' >&2; exit 3",
            ],
        );
        match WorkerProcess::start(&cmd, Duration::from_secs(10)).await {
            Err(Error::WorkerStart {
                exit_code, message, ..
            }) => {
                assert_eq!(exit_code, Some(3));
                assert!(message.contains("libcuda.so.1 not found"), "{message}");
            }
            other => panic!("{:?}", other.err()),
        }
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

    #[tokio::test]
    async fn the_plan_is_applied_as_it_is_and_only_to_its_kind_of_worker() {
        // The fake reads the Run header, then reports the limits it is held to.
        let (_f, cmd) = Fake::new(
            r"head -c 4 <&3 >/dev/null; grep -E 'Max (cpu time|address space)' /proc/$$/limits >&2",
        );
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        let limits: Vec<Vec<&str>> = fin
            .stderr_tail
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let bytes = plan(Duration::ZERO).spec.address_space_bytes.unwrap();
        assert_eq!(bytes, (64 + 256 + 2 * 72) << 20);
        assert!(
            limits.contains(&vec!["Max", "cpu", "time", "60", "61", "seconds"]),
            "{}",
            fin.stderr_tail
        );
        assert!(
            limits.contains(&vec![
                "Max",
                "address",
                "space",
                &bytes.to_string(),
                &bytes.to_string(),
                "bytes"
            ]),
            "{}",
            fin.stderr_tail
        );
        // A plan for a GPU worker is not applied to a CPU one.
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        let pid = w.pid();
        let gpu = JobPlan {
            kind: Mode::Gpu,
            ..plan(Duration::from_secs(10))
        };
        let fin = w.run(&gpu, std::future::pending()).await;
        match &fin.ending {
            Ending::Confinement(m) => assert!(m.contains("planned for a gpu worker"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!alive(pid));
    }

    #[tokio::test]
    async fn the_command_line_carries_the_job_dir_and_sandbox_args_and_the_dir_goes_after() {
        let (f, mut cmd) = Fake::new(
            r#"head -c 4 <&3 >/dev/null; echo "args: $*" >&2; stat -c 'mode %a' "$2" >&2"#,
        );
        cmd.fs = FsMode::Mount;
        cmd.cpu_kernel = CpuKernel::Portable;
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        let work = f.dir.path().join("work");
        let line = fin
            .stderr_tail
            .lines()
            .find(|l| l.starts_with("args: "))
            .unwrap();
        let rest = line
            .strip_prefix(&format!("args: --job-dir {}/w", work.display()))
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            rest.ends_with(" --fs mount --file-size-mb 1024 --kind cpu --cpu-kernel portable"),
            "{line}"
        );
        assert!(fin.stderr_tail.contains("mode 700"), "{}", fin.stderr_tail);
        assert_eq!(
            std::fs::read_dir(&work).unwrap().count(),
            0,
            "job dir left behind"
        );
    }

    /// A subtree for a test, or a printed SKIP line when this host cannot give one.
    fn test_subtree(test: &str) -> Option<Arc<Subtree>> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP {test}: needs root for cgroups");
            return None;
        }
        match Subtree::create(&format!("test-{test}.{}", std::process::id())) {
            Ok(Some(s)) => Some(Arc::new(s)),
            other => {
                eprintln!("SKIP {test}: no cgroup subtree here ({other:?})");
                None
            }
        }
    }

    /// The worker's cgroup of `controller` as /proc/<pid>/cgroup names it, under `mount`.
    fn cgroup_file(pid: i32, controller: &str, file: &str) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let line = text.lines().find(|l| {
            let mut it = l.splitn(3, ':');
            let _ = it.next();
            it.next()
                .is_some_and(|c| c.split(',').any(|c| c == controller))
        })?;
        let path = line.splitn(3, ':').nth(2)?;
        std::fs::read_to_string(format!("/sys/fs/cgroup/{controller}{path}/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    #[tokio::test]
    async fn a_worker_runs_in_its_limited_cgroup_and_nothing_outlives_it() {
        let Some(subtree) = test_subtree("worker_cgroup") else {
            return;
        };
        let (f, mut cmd) = Fake::with_prelude(
            WIRE_VERSION,
            r#"setsid sleep 300 & echo $! > "$(dirname "$0")/escapee""#,
            "head -c 4 <&3 >/dev/null; sleep 300",
        );
        cmd.subtree = Some(subtree.clone());
        let w = WorkerProcess::start(&cmd, Duration::from_secs(10))
            .await
            .unwrap();
        let pid = w.pid();
        let cg = w.cgroup_path().unwrap().to_path_buf();
        let name = cg.file_name().unwrap().to_str().unwrap().to_owned();
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(own.contains(&format!("/workers/{name}")), "{own}");
        // Read the limits while the job runs, then cancel it.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let probe = async move {
            let v1 = subtree.version() == crate::cgroup::Version::V1;
            let seen = if v1 {
                (
                    cgroup_file(pid, "memory", "memory.limit_in_bytes"),
                    cgroup_file(pid, "pids", "pids.max"),
                    cgroup_file(pid, "cpu", "cpu.cfs_quota_us"),
                )
            } else {
                (None, None, None)
            };
            let _ = tx.send((v1, seen));
        };
        let fin = w.run(&plan(Duration::from_secs(30)), probe).await;
        assert_eq!(fin.ending, Ending::Cancelled);
        let (v1, (mem, pids, cpu)) = rx.await.unwrap();
        if v1 {
            assert_eq!(mem.as_deref(), Some("67108864"));
            assert_eq!(pids.as_deref(), Some("17"));
            assert_eq!(cpu.as_deref(), Some("100000"));
        } else {
            eprintln!("SKIP limit values: v2 without controllers here");
        }
        // The escapee left the process group but not the cgroup: it is dead already.
        let gc: i32 = std::fs::read_to_string(f.dir.path().join("escapee"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(!alive(gc) || is_zombie(gc), "{gc} survived the cgroup kill");
        assert!(!alive(pid));
        assert!(!cg.exists(), "{} left behind", cg.display());
        let stats = fin.cgroup.expect("cgroup stats");
        assert!(stats.cpu_usage_us.is_some(), "{stats:?}");
        assert!(!stats.oom_killed);
    }

    #[tokio::test]
    async fn a_worker_past_its_memory_limit_ends_as_out_of_memory() {
        let Some(subtree) = test_subtree("worker_oom") else {
            return;
        };
        if subtree.version() == crate::cgroup::Version::V2
            && !subtree.controllers().iter().any(|c| c == "memory")
        {
            eprintln!("SKIP worker_oom: no memory controller");
            return;
        }
        // 100 MiB held by the worker itself (bash keeps the substitution's output) in a
        // 64 MiB cgroup without swap; RLIMIT_AS (464 MiB here) is not what stops it.
        let (_f, mut cmd) = Fake::new(
            r"head -c 4 <&3 >/dev/null; x=$(head -c 104857600 /dev/zero | tr '\0' a); echo ${#x} >&2",
        );
        cmd.subtree = Some(subtree);
        let (fin, _) = run(&cmd, Duration::from_secs(30)).await;
        assert_eq!(fin.ending, Ending::Crashed);
        assert!(
            fin.cgroup.is_some_and(|s| s.oom_killed),
            "{:?} {:?} {}",
            fin.cgroup,
            fin.exit,
            fin.stderr_tail
        );
        let limits = protocol::api::JobLimits {
            ram_mb: 64,
            ..Default::default()
        };
        let (reason, message) = fin.failure(&limits);
        assert_eq!(reason, protocol::api::FailReason::OutOfMemory, "{message}");
        assert!(message.contains("limits.ram_mb = 64 MiB"), "{message}");
        assert!(fin.usage.peak_rss_mb <= 65, "{:?}", fin.usage);
    }

    #[tokio::test]
    async fn a_root_supervisor_runs_its_worker_as_the_run_as_user() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP run_as: needs root");
            return;
        }
        let (f, mut cmd) = Fake::new(
            r#"head -c 4 <&3 >/dev/null; echo "ids $(id -u) $(id -g) $(id -G)" >&2; stat -c 'owner %u %g' "$2" >&2"#,
        );
        // The user must be able to read the script.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.run_as = Some((65534, 65534));
        // Without CAP_SYS_RESOURCE (some containers) root cannot prlimit another user's
        // process; the cgroup's memory limit then carries the job alone.
        cmd.subtree = test_subtree("run_as");
        let (fin, _) = run(&cmd, Duration::from_secs(10)).await;
        assert!(fin.stderr_tail.contains("ids 65534 65534 65534"), "{fin:?}");
        assert!(
            fin.stderr_tail.contains("owner 65534 65534"),
            "{}",
            fin.stderr_tail
        );
    }

    #[tokio::test]
    async fn creating_joining_and_removing_a_worker_cgroup_costs_little() {
        let Some(subtree) = test_subtree("cgroup_cost") else {
            return;
        };
        let rounds = 200u32;
        let (mut create, mut spawn, mut remove) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for i in 0..rounds {
            let t0 = Instant::now();
            let cg = subtree.worker(&format!("bench{i}")).unwrap();
            create += t0.elapsed();
            let t0 = Instant::now();
            let mut child = std::process::Command::new("/bin/true");
            let fds = cg.join_fds();
            // SAFETY: write(2) on descriptors opened before the fork.
            unsafe {
                child.pre_exec(move || {
                    for fd in &fds {
                        libc::write(*fd, b"0".as_ptr().cast(), 1);
                    }
                    Ok(())
                });
            }
            child.status().unwrap();
            spawn += t0.elapsed();
            let t0 = Instant::now();
            drop(cg);
            remove += t0.elapsed();
        }
        let with = (create + spawn + remove) / rounds;
        eprintln!(
            "per worker: create {:?}, spawn+join+exit {:?}, kill check+remove {:?}",
            create / rounds,
            spawn / rounds,
            remove / rounds
        );
        let t0 = Instant::now();
        for _ in 0..rounds {
            std::process::Command::new("/bin/true").status().unwrap();
        }
        let without = t0.elapsed() / rounds;
        eprintln!(
            "{}: spawn+exit of /bin/true {without:?}; with create+join+remove of a worker cgroup {with:?} (+{:?})",
            subtree.describe(),
            with.saturating_sub(without)
        );
    }
}

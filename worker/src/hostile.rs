//! Hostile workloads: attacks on the worker's own sandbox, for the hostile test suite
//! (`tests/hostile`). Compiled only with the `hostile` feature, which the root package enables
//! through a dev-dependency: test and bench builds of `aitbc-miner` carry these acts, release
//! builds never do.
//!
//! An act is selected by a torch_bench job's `seed`: the high 32 bits are [`MARKER`] ("HOST"),
//! bits 16..32 an argument (a port, a thread count; 0 when unused) and the low 16 bits the
//! [`Act`] number ([`Act::seed`], [`Act::from_seed`]). Any other seed is a normal job
//! ([`intercept`] answers `None`). The acts on the supervisor take its pid from the job
//! ([`target_params`]: the seed's argument and `iters`), as an attacker who guessed it would
//! have it, since the sandbox may refuse `getppid` itself; without one they ask `getppid`.
//!
//! Every act makes a real attempt and reports what happened, honestly:
//! * the attack worked: `Ok(Output)` (the job ends `Done`, so a test expecting a failure
//!   fails) after a line `aitbc-hostile: ESCAPED: <what>` on stderr, which the supervisor logs;
//! * a confinement layer refused it: `Err(WorkerError::SandboxDenied)`, naming the target and
//!   the error, so the job fails `SANDBOX_VIOLATION`;
//! * the sandbox kills the process (seccomp's SIGSYS, the cgroup's OOM killer, RLIMIT_CPU, the
//!   supervisor's deadline) or the act kills itself (segfault, abort): it simply dies.
//!
//! This module must never run without the magic seed, never report an attack as refused when
//! it worked, and never put a secret it managed to read into its answer or its log line (it says
//! *that* it read one, not what).

use std::ffi::CStr;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aitbc_protocol::api::Mode;
use aitbc_protocol::wire::JobSpec;
use aitbc_protocol::workload::WorkloadSpec;
use sha2::{Digest, Sha256};

use crate::workload::Output;
use crate::WorkerError;

/// The high 32 bits of a hostile seed: ASCII "HOST".
pub const MARKER: u32 = 0x484F_5354;

/// The file name the write attacks try to create outside the job directory.
pub const PROBE: &str = "aitbc-hostile-probe";

/// How long the acts that wait to be stopped (spin, sleep) go on before they declare that
/// nothing stopped them.
pub const UNSTOPPED_AFTER: Duration = Duration::from_secs(120);

/// Most children the fork bomb starts before it declares the sandbox did not stop it.
pub const FORK_CAP: u32 = 1024;

/// Most threads the thread bomb starts before it declares the sandbox did not stop it.
pub const THREAD_CAP: u32 = 2048;

/// How many times `--file-size-mb` the disk filler writes (in files each under the limit)
/// before it declares that nothing bounds a job's disk use.
pub const FILL_FACTOR: u64 = 16;

/// The attacks. The discriminant is the act number in the seed's low 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Act {
    /// TCP connect to 127.0.0.1:<arg>.
    TcpConnect = 1,
    /// A UDP datagram to 127.0.0.1:<arg>.
    UdpSend = 2,
    /// execve("/bin/sh") in place of the worker.
    ExecShell = 3,
    /// Create [`PROBE`] files outside the job directory ([`write_targets`]) and open the
    /// config for appending.
    WriteOutside = 4,
    /// Read a miner config that holds API_KEY ([`config_targets`]).
    ReadConfig = 5,
    /// ptrace(PTRACE_ATTACH) the supervisor (pid from [`target_params`], else the parent).
    PtraceParent = 6,
    /// kill(supervisor, SIGKILL).
    KillParent = 7,
    /// open /proc/<supervisor>/mem.
    ParentMemFile = 8,
    /// process_vm_readv from the supervisor.
    ParentMemRead = 9,
    /// read /proc/<supervisor>/environ.
    ParentEnviron = 10,
    /// list /proc/<supervisor>/fd and reopen what is there.
    ParentFds = 11,
    /// fork() in a loop (children hold a pid each), up to [`FORK_CAP`].
    ForkBomb = 12,
    /// std::thread spawn in a loop, up to [`THREAD_CAP`].
    ThreadBomb = 13,
    /// Allocate and touch 4 x ram_mb (at least 256 MiB).
    AllocPastRam = 14,
    /// Spin <arg> threads (0: 64) until stopped.
    Spin = 15,
    /// Sleep until stopped.
    Sleep = 16,
    /// Write through an unmapped pointer (SIGSEGV).
    Segfault = 17,
    /// abort() (SIGABRT).
    Abort = 18,
    /// One file past RLIMIT_FSIZE (`--file-size-mb`), with SIGXFSZ ignored.
    FileTooBig = 19,
    /// Files under the size limit in the job directory until a write fails or
    /// [`FILL_FACTOR`] x `--file-size-mb` is written.
    FillDisk = 20,
    /// open /dev/mem, /dev/kmsg, block devices, /dev/nvidia*.
    OpenDevices = 21,
}

impl Act {
    /// Every act, in number order.
    pub const ALL: [Act; 21] = [
        Act::TcpConnect,
        Act::UdpSend,
        Act::ExecShell,
        Act::WriteOutside,
        Act::ReadConfig,
        Act::PtraceParent,
        Act::KillParent,
        Act::ParentMemFile,
        Act::ParentMemRead,
        Act::ParentEnviron,
        Act::ParentFds,
        Act::ForkBomb,
        Act::ThreadBomb,
        Act::AllocPastRam,
        Act::Spin,
        Act::Sleep,
        Act::Segfault,
        Act::Abort,
        Act::FileTooBig,
        Act::FillDisk,
        Act::OpenDevices,
    ];

    /// The torch_bench seed that runs this act with `arg`.
    pub fn seed(self, arg: u16) -> u64 {
        (u64::from(MARKER) << 32) | (u64::from(arg) << 16) | self as u64
    }

    /// The act and argument a seed selects, if it is a hostile seed.
    pub fn from_seed(seed: u64) -> Option<(Act, u16)> {
        if (seed >> 32) as u32 != MARKER {
            return None;
        }
        let number = (seed & 0xFFFF) as u16;
        let arg = ((seed >> 16) & 0xFFFF) as u16;
        Act::ALL
            .into_iter()
            .find(|a| *a as u16 == number)
            .map(|a| (a, arg))
    }
}

/// The seed argument and `iters` that name `pid` as the target of the acts on the
/// supervisor: `pid = (iters - 1) << 16 | arg`.
pub fn target_params(pid: u32) -> (u16, u32) {
    ((pid & 0xFFFF) as u16, (pid >> 16) + 1)
}

/// The hook the worker calls before running a torch_bench job: `Some(outcome)` when the seed
/// selects an act (see the module docs), `None` for a normal job.
pub fn intercept(job: &JobSpec) -> Option<Result<Output, WorkerError>> {
    let WorkloadSpec::TorchBench(p) = job.spec;
    let (act, arg) = Act::from_seed(p.seed)?;
    eprintln!(
        "aitbc-hostile: act {act:?} (arg {arg}) for job {}",
        job.job_id
    );
    let target = (p.iters.saturating_sub(1) << 16) | u32::from(arg);
    let args = Args::from_env(libc::pid_t::try_from(target).unwrap_or(0));
    Some(run(act, arg, job, &args).map(|out| committed(out, p.n)))
}

/// An escaped act's answer with `n` leaves (the hash of its description, once per row) and
/// their root, so it passes the supervisor's wire checks and reaches the Coordinator as a
/// proof, where the test sees it.
fn committed(mut out: Output, n: u32) -> Output {
    out.leaves = vec![aitbc_protocol::merkle::leaf_hash(&out.output_sha); n as usize];
    if let Some(root) = aitbc_protocol::merkle::root(&out.leaves) {
        out.merkle_root = root;
    }
    out
}

/// What an act needs from the worker's command line.
struct Args {
    job_dir: PathBuf,
    file_size_mb: u64,
    /// The supervisor's pid as the job names it; 0: ask getppid.
    target: libc::pid_t,
}

impl Args {
    /// `--job-dir` and `--file-size-mb` from this process's arguments (saved by the runtime at
    /// start, so no file is read); the current directory and 1024 when absent.
    fn from_env(target: libc::pid_t) -> Args {
        let mut job_dir = None;
        let mut file_size_mb = 1024;
        let mut args = std::env::args_os();
        while let Some(a) = args.next() {
            let a = a.to_string_lossy().into_owned();
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (a, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().map(|v| v.to_string_lossy().into_owned()))
            };
            match key.as_str() {
                "--job-dir" => job_dir = value().map(PathBuf::from),
                "--file-size-mb" => {
                    file_size_mb = value().and_then(|v| v.parse().ok()).unwrap_or(1024);
                }
                _ => {}
            }
        }
        Args {
            job_dir: job_dir
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from("/nonexistent-job-dir")),
            file_size_mb,
            target,
        }
    }
}

/// Paths [`Act::WriteOutside`] tries to create, for a worker whose job directory is `job_dir`:
/// [`PROBE`] in every ancestor and in every ancestor's `state/`, and in /etc, /var/lib,
/// /var/tmp, /dev/shm and /tmp. Tests check that none of them exists afterwards.
pub fn write_targets(job_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for a in job_dir.ancestors().skip(1) {
        out.push(a.join(PROBE));
        out.push(a.join("state").join(PROBE));
    }
    for d in ["/etc", "/var/lib", "/var/tmp", "/dev/shm", "/tmp"] {
        out.push(Path::new(d).join(PROBE));
    }
    dedup(out)
}

/// Config files [`Act::ReadConfig`] tries to read (and [`Act::WriteOutside`] to open for
/// appending): `miner.conf` in every ancestor of `job_dir`, and the packaged locations.
pub fn config_targets(job_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = job_dir
        .ancestors()
        .skip(1)
        .map(|a| a.join("miner.conf"))
        .collect();
    out.push("/etc/aitbc/miner.conf".into());
    out.push("/etc/aitbc-miner/miner.conf".into());
    dedup(out)
}

/// Device nodes [`Act::OpenDevices`] tries to open (those that exist).
pub const DEVICES: &[&str] = &[
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/dev/kmsg",
    "/dev/sda",
    "/dev/vda",
    "/dev/xvda",
    "/dev/nvme0n1",
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/dev/nvidia-uvm",
];

fn dedup(paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::with_capacity(paths.len());
    for p in paths {
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn run(act: Act, arg: u16, job: &JobSpec, args: &Args) -> Result<Output, WorkerError> {
    let t0 = Instant::now();
    match act {
        Act::TcpConnect => tcp_connect(arg, t0),
        Act::UdpSend => udp_send(arg, t0),
        Act::ExecShell => exec_shell(),
        Act::WriteOutside => write_outside(&args.job_dir, t0),
        Act::ReadConfig => read_config(&args.job_dir, t0),
        Act::PtraceParent => ptrace_parent(supervisor(args)?, t0),
        Act::KillParent => kill_parent(supervisor(args)?, t0),
        Act::ParentMemFile => parent_mem_file(supervisor(args)?, t0),
        Act::ParentMemRead => parent_mem_read(supervisor(args)?, t0),
        Act::ParentEnviron => parent_environ(supervisor(args)?, t0),
        Act::ParentFds => parent_fds(supervisor(args)?, t0),
        Act::ForkBomb => fork_bomb(t0),
        Act::ThreadBomb => thread_bomb(t0),
        Act::AllocPastRam => alloc_past_ram(job.ram_mb, t0),
        Act::Spin => spin(if arg == 0 { 64 } else { arg.into() }, t0),
        Act::Sleep => sleep_until_stopped(t0),
        Act::Segfault => segfault(),
        Act::Abort => std::process::abort(),
        Act::FileTooBig => file_too_big(&args.job_dir, args.file_size_mb, t0),
        Act::FillDisk => fill_disk(&args.job_dir, args.file_size_mb, t0),
        Act::OpenDevices => open_devices(t0),
    }
}

/// The attack worked: say so on stderr and answer `Done` with a hash of the description.
fn escaped(what: String, t0: Instant) -> Result<Output, WorkerError> {
    eprintln!("aitbc-hostile: ESCAPED: {what}");
    Ok(Output {
        output_sha: Sha256::digest(what.as_bytes()).into(),
        merkle_root: [0; 32],
        leaves: Vec::new(),
        output_len: what.len() as u64,
        flops: 0,
        elapsed: t0.elapsed(),
        device_time: None,
        kind: Mode::Cpu,
    })
}

/// The attack was refused: say so on stderr and fail the job as a sandbox violation.
fn contained(what: String, source: io::Error) -> Result<Output, WorkerError> {
    eprintln!("aitbc-hostile: contained: {what}: {source}");
    Err(WorkerError::SandboxDenied { what, source })
}

/// Several refusals as one error: the first one's kind, every one's text.
fn refusals(list: Vec<(String, io::Error)>) -> io::Error {
    let kind = list
        .first()
        .map(|(_, e)| e.kind())
        .unwrap_or(io::ErrorKind::NotFound);
    let text: Vec<String> = list.iter().map(|(p, e)| format!("{p}: {e}")).collect();
    if text.is_empty() {
        io::Error::new(kind, "no target exists on this machine")
    } else {
        io::Error::new(kind, text.join("; "))
    }
}

fn tcp_connect(port: u16, t0: Instant) -> Result<Output, WorkerError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(mut s) => {
            let _ = s.write_all(b"aitbc-hostile\n");
            escaped(format!("TCP connection to {addr}"), t0)
        }
        Err(e) => contained(format!("TCP connect to {addr}"), e),
    }
}

fn udp_send(port: u16, t0: Instant) -> Result<Output, WorkerError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = match UdpSocket::bind(("127.0.0.1", 0)) {
        Ok(s) => s,
        Err(e) => return contained("a UDP socket on 127.0.0.1".into(), e),
    };
    match sock.send_to(b"aitbc-hostile\n", addr) {
        Ok(n) => escaped(format!("sent a {n}-byte UDP datagram to {addr}"), t0),
        Err(e) => contained(format!("UDP send to {addr}"), e),
    }
}

fn exec_shell() -> Result<Output, WorkerError> {
    const SH: &CStr = c"/bin/sh";
    const DASH_C: &CStr = c"-c";
    const SCRIPT: &CStr = c"echo 'aitbc-hostile: ESCAPED: /bin/sh runs in place of the worker' >&2";
    let argv = [
        SH.as_ptr(),
        DASH_C.as_ptr(),
        SCRIPT.as_ptr(),
        std::ptr::null(),
    ];
    let envp = [std::ptr::null()];
    // SAFETY: argv and envp are null-terminated arrays of pointers to NUL-terminated strings
    // that outlive the call; execve only returns on failure.
    unsafe { libc::execve(SH.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    contained("execve /bin/sh".into(), io::Error::last_os_error())
}

fn write_outside(job_dir: &Path, t0: Instant) -> Result<Output, WorkerError> {
    let mut wrote = Vec::new();
    let mut refused = Vec::new();
    for p in write_targets(job_dir) {
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                let _ = f.write_all(b"aitbc-hostile\n");
                wrote.push(format!("created {}", p.display()));
            }
            Err(e) => refused.push((p.display().to_string(), e)),
        }
    }
    for p in config_targets(job_dir) {
        match OpenOptions::new().append(true).open(&p) {
            // Opening it for writing is the escape; nothing is written to it.
            Ok(_) => wrote.push(format!("opened {} for appending", p.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => refused.push((p.display().to_string(), e)),
        }
    }
    if !wrote.is_empty() {
        return escaped(
            format!("wrote outside the job dir: {}", wrote.join(", ")),
            t0,
        );
    }
    contained(
        format!(
            "writing outside the job dir {} ({} targets)",
            job_dir.display(),
            refused.len()
        ),
        refusals(refused),
    )
}

fn read_config(job_dir: &Path, t0: Instant) -> Result<Output, WorkerError> {
    let mut refused = Vec::new();
    for p in config_targets(job_dir) {
        match std::fs::read(&p) {
            Ok(bytes) => {
                let has_key = bytes.windows(8).any(|w| w == b"API_KEY=");
                return escaped(
                    format!(
                        "read {} ({} bytes, an API_KEY line: {has_key})",
                        p.display(),
                        bytes.len()
                    ),
                    t0,
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => refused.push((p.display().to_string(), e)),
        }
    }
    contained("reading the miner config".into(), refusals(refused))
}

/// The supervisor's pid: the one the job names, else the parent's when this process can see
/// it (not in another pid namespace).
fn supervisor(args: &Args) -> Result<libc::pid_t, WorkerError> {
    if args.target > 0 {
        return Ok(args.target);
    }
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    if ppid <= 1 {
        return Err(WorkerError::SandboxDenied {
            what: "finding the supervisor".into(),
            source: io::Error::other(format!("getppid() = {ppid}: the parent is not visible")),
        });
    }
    Ok(ppid)
}

fn ptrace_parent(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_ATTACH takes a pid and ignores addr and data.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, ppid, null, null) };
    if r == 0 {
        // Wait for the attach's SIGSTOP, then detach suppressing it, so the supervisor is not
        // left stopped.
        let mut status = 0;
        // SAFETY: plain system calls; waitpid writes only `status`, a local we own, and
        // PTRACE_DETACH with data 0 ignores addr and delivers no signal.
        unsafe {
            libc::waitpid(ppid, &mut status, libc::__WALL);
            libc::ptrace(libc::PTRACE_DETACH, ppid, null, null);
        }
        return escaped(
            format!("attached to the supervisor (pid {ppid}) with ptrace"),
            t0,
        );
    }
    contained(
        format!("ptrace(PTRACE_ATTACH, {ppid})"),
        io::Error::last_os_error(),
    )
}

fn kill_parent(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(ppid, libc::SIGKILL) } == 0 {
        return escaped(format!("sent SIGKILL to the supervisor (pid {ppid})"), t0);
    }
    contained(format!("kill({ppid}, SIGKILL)"), io::Error::last_os_error())
}

fn parent_mem_file(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    let path = format!("/proc/{ppid}/mem");
    match std::fs::File::open(&path) {
        Ok(_) => escaped(format!("opened {path}"), t0),
        Err(e) => contained(format!("opening {path}"), e),
    }
}

/// What [`Act::ParentMemRead`] aims at in the supervisor.
static TARGET: [u8; 64] = [0; 64];

fn parent_mem_read(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    let mut buf = [0u8; 64];
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // An address of this binary's data: the supervisor runs the same executable, so without
    // ASLR it would be mapped there too; any answer but a refusal is an escape anyway.
    let remote = libc::iovec {
        iov_base: TARGET.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` points into `buf`, which outlives the call; `remote` is only read by
    // the kernel in the other process.
    let n = unsafe { libc::process_vm_readv(ppid, &local, 1, &remote, 1, 0) };
    if n >= 0 {
        return escaped(
            format!("read {n} bytes of the supervisor's memory (pid {ppid})"),
            t0,
        );
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EFAULT) {
        return escaped(
            format!("process_vm_readv on the supervisor (pid {ppid}) was allowed (EFAULT at the address)"),
            t0,
        );
    }
    contained(format!("process_vm_readv({ppid})"), e)
}

fn parent_environ(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    let path = format!("/proc/{ppid}/environ");
    match std::fs::read(&path) {
        Ok(bytes) => escaped(
            format!(
                "read {path} ({} bytes, {} variables)",
                bytes.len(),
                bytes.iter().filter(|b| **b == 0).count()
            ),
            t0,
        ),
        Err(e) => contained(format!("reading {path}"), e),
    }
}

fn parent_fds(ppid: libc::pid_t, t0: Instant) -> Result<Output, WorkerError> {
    let path = format!("/proc/{ppid}/fd");
    match std::fs::read_dir(&path) {
        Ok(entries) => {
            let fds: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            // Try to reopen each through the magic links, as a real attacker would.
            let opened = fds
                .iter()
                .filter(|fd| std::fs::File::open(format!("{path}/{fd}")).is_ok())
                .count();
            escaped(
                format!(
                    "listed {path} ({} descriptors, {opened} reopened)",
                    fds.len()
                ),
                t0,
            )
        }
        Err(e) => contained(format!("listing {path}"), e),
    }
}

fn fork_bomb(t0: Instant) -> Result<Output, WorkerError> {
    let mut children = 0u32;
    let mut error = None;
    while children < FORK_CAP {
        // SAFETY: the child only calls pause(), which is async-signal-safe, and never returns
        // into Rust code.
        match unsafe { libc::fork() } {
            0 => loop {
                // SAFETY: pause has no preconditions.
                unsafe { libc::pause() };
            },
            -1 => {
                error = Some(io::Error::last_os_error());
                break;
            }
            _ => children += 1,
        }
    }
    match error {
        None => escaped(format!("forked {children} processes, none refused"), t0),
        Some(e) if children == 0 => contained("fork".into(), e),
        Some(e) => contained(format!("fork (refused only after {children} children)"), e),
    }
}

fn thread_bomb(t0: Instant) -> Result<Output, WorkerError> {
    let mut started = 0u32;
    while started < THREAD_CAP {
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(|| loop {
                std::thread::park();
            });
        match spawned {
            Ok(_) => started += 1,
            Err(e) => {
                return contained(
                    format!("starting thread {} (after {started})", started + 1),
                    e,
                )
            }
        }
    }
    escaped(format!("started {started} threads, none refused"), t0)
}

fn alloc_past_ram(ram_mb: u64, t0: Instant) -> Result<Output, WorkerError> {
    const CHUNK: usize = 16 << 20;
    let target = ram_mb.saturating_mul(4).max(256) << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let mut total = 0u64;
    while total < target {
        let mut chunk: Vec<u8> = Vec::new();
        if chunk.try_reserve_exact(CHUNK).is_err() {
            eprintln!("aitbc-hostile: contained: allocation refused after {total} bytes");
            return Err(WorkerError::OutOfMemory {
                what: "the hostile allocation",
                bytes: total + CHUNK as u64,
            });
        }
        // Touch every page: the memory must really be used, not just reserved.
        chunk.resize(CHUNK, 0xA5);
        held.push(chunk);
        total += CHUNK as u64;
    }
    std::hint::black_box(&held);
    escaped(
        format!(
            "allocated and touched {} MiB with ram_mb = {ram_mb}",
            total >> 20
        ),
        t0,
    )
}

fn spin(threads: u32, t0: Instant) -> Result<Output, WorkerError> {
    let spinner = move || {
        let mut x = 0u64;
        while t0.elapsed() < UNSTOPPED_AFTER {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
    };
    let mut handles = Vec::new();
    for _ in 1..threads {
        match std::thread::Builder::new().spawn(spinner) {
            Ok(h) => handles.push(h),
            Err(_) => break,
        }
    }
    spinner();
    let n = handles.len() + 1;
    for h in handles {
        let _ = h.join();
    }
    escaped(
        format!(
            "spun {n} threads for {:?} without being stopped",
            t0.elapsed()
        ),
        t0,
    )
}

fn sleep_until_stopped(t0: Instant) -> Result<Output, WorkerError> {
    while t0.elapsed() < UNSTOPPED_AFTER {
        std::thread::sleep(Duration::from_secs(1));
    }
    escaped(
        format!("slept {:?} without being stopped", t0.elapsed()),
        t0,
    )
}

fn segfault() -> Result<Output, WorkerError> {
    // A non-null, aligned address in the never-mapped first page (below mmap_min_addr).
    let p = std::ptr::dangling_mut::<u64>();
    // SAFETY: deliberately not safe: the write faults and the kernel kills the process with
    // SIGSEGV. That is the act.
    unsafe { std::ptr::write_volatile(p, 0xdead) };
    Err(WorkerError::Internal(
        "a write to an unmapped address did not fault".into(),
    ))
}

/// Writes `mb` MiB to `path` in 1 MiB chunks; the error and how many MiB were written.
fn write_mb(path: &Path, mb: u64) -> (u64, Option<io::Error>) {
    let chunk = vec![0x5Au8; 1 << 20];
    let mut f = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return (0, Some(e)),
    };
    for written in 0..mb {
        if let Err(e) = f.write_all(&chunk) {
            return (written, Some(e));
        }
    }
    match f.sync_all() {
        Ok(()) => (mb, None),
        Err(e) => (mb, Some(e)),
    }
}

fn file_too_big(job_dir: &Path, limit_mb: u64, t0: Instant) -> Result<Output, WorkerError> {
    // A real attacker ignores SIGXFSZ, so that writes past the limit fail with EFBIG instead of
    // killing the process.
    // SAFETY: installs SIG_IGN for SIGXFSZ; no handler code runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let path = job_dir.join("too-big");
    let want = limit_mb + 1;
    match write_mb(&path, want) {
        (_, None) => escaped(
            format!(
                "wrote a {want} MiB file with --file-size-mb {limit_mb} at {}",
                path.display()
            ),
            t0,
        ),
        (n, Some(e)) => contained(
            format!("writing one {want} MiB file (refused after {n} MiB; limit {limit_mb} MiB)"),
            e,
        ),
    }
}

fn fill_disk(job_dir: &Path, limit_mb: u64, t0: Instant) -> Result<Output, WorkerError> {
    // SAFETY: installs SIG_IGN for SIGXFSZ; no handler code runs.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let per_file = limit_mb.max(1);
    let goal = per_file.saturating_mul(FILL_FACTOR);
    let mut total = 0u64;
    let mut files = 0u32;
    while total < goal {
        files += 1;
        let (n, err) = write_mb(&job_dir.join(format!("fill-{files}")), per_file);
        total += n;
        if let Some(e) = err {
            return contained(
                format!("filling the disk (refused after {total} MiB in {files} files)"),
                e,
            );
        }
    }
    escaped(
        format!(
            "wrote {total} MiB in {files} files under {} with --file-size-mb {limit_mb}: \
             nothing bounds a job's total disk use",
            job_dir.display()
        ),
        t0,
    )
}

fn open_devices(t0: Instant) -> Result<Output, WorkerError> {
    let mut opened = Vec::new();
    let mut refused = Vec::new();
    for dev in DEVICES {
        if std::fs::symlink_metadata(dev).is_err() {
            continue; // not on this machine (or not even visible)
        }
        match std::fs::File::open(dev) {
            Ok(mut f) => {
                let mut b = [0u8; 1];
                let read = f.read(&mut b).is_ok();
                opened.push(format!("{dev} (read: {read})"));
            }
            Err(e) => refused.push((dev.to_string(), e)),
        }
    }
    if !opened.is_empty() {
        return escaped(format!("opened {}", opened.join(", ")), t0);
    }
    contained("opening devices".into(), refusals(refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_round_trip_and_other_seeds_are_normal_jobs() {
        for act in Act::ALL {
            for arg in [0, 1, 4242, u16::MAX] {
                assert_eq!(Act::from_seed(act.seed(arg)), Some((act, arg)));
            }
        }
        assert_eq!(Act::from_seed(0), None);
        assert_eq!(Act::from_seed(u64::from(MARKER)), None);
        assert_eq!(Act::from_seed((u64::from(MARKER) << 32) | 999), None);
        assert_eq!(Act::ALL.len(), Act::OpenDevices as usize);
    }

    #[test]
    fn target_pids_round_trip_through_arg_and_iters() {
        for pid in [1u32, 0xFFFF, 0x1_0000, 4_194_304] {
            let (arg, iters) = target_params(pid);
            assert!(iters >= 1);
            assert_eq!(((iters - 1) << 16) | u32::from(arg), pid);
        }
    }

    #[test]
    fn targets_are_outside_the_job_dir() {
        let job = Path::new("/srv/miner/work/w1");
        let w = write_targets(job);
        assert!(w.contains(&PathBuf::from("/srv/miner/work/aitbc-hostile-probe")));
        assert!(w.contains(&PathBuf::from("/srv/miner/state/aitbc-hostile-probe")));
        assert!(w.contains(&PathBuf::from("/etc/aitbc-hostile-probe")));
        assert!(w.iter().all(|p| !p.starts_with(job)));
        let c = config_targets(job);
        assert_eq!(c[1], PathBuf::from("/srv/miner/miner.conf"));
    }
}

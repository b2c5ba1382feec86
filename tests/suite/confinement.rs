//! The worker's confinement, checked step by step from outside the worker process.
//!
//! Each test starts the real `aitbc-miner worker --job-dir DIR ...` with a socket pair as fd 3
//! (as the supervisor does), reads its Hello, and then, while the worker waits for its job,
//! reads what the kernel says about it: `/proc/<pid>/status` (no_new_privs, seccomp, every
//! capability set), `/proc/<pid>/ns/*` (its own user, network and, with the mount view, mount
//! namespaces), `/proc/<pid>/limits`, its network devices and routes, and with `--fs mount` its
//! root directory and mounts. Then a job must still compute the same hash as an unconfined
//! in-process run of the same parameters.
//!
//! Not testable here: `--fs landlock` on a kernel *without* Landlock (this machine has ABI 7),
//! which must refuse to start (covered by the worker's `Plan` unit test). Landlock leaves no
//! trace in /proc, so its effect is shown by the Hello line here and by the hostile suite's
//! attacks. These tests never wait by sleeping: they block on the worker's frames and exit.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aitbc_protocol::api::Mode;
use aitbc_protocol::wire::{
    read_frame, write_frame, FromWorker, Hello, JobSpec, ToWorker, WIRE_VERSION,
};
use aitbc_protocol::workload::{torch_bench::TorchBenchParams, WorkloadSpec};

/// How long a worker may take to confine itself and say Hello, or to answer a small job.
const FRAME_TIMEOUT: Duration = Duration::from_secs(60);

fn miner() -> &'static str {
    env!("CARGO_BIN_EXE_aitbc-miner")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A started worker that has said Hello.
struct Worker {
    child: Child,
    sock: UnixStream,
    hello: Hello,
}

impl Worker {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn proc(&self, what: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{what}", self.pid()))
    }

    fn proc_text(&self, what: &str) -> String {
        std::fs::read_to_string(self.proc(what))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.proc(what).display()))
    }

    /// Sends `Run(job)` and returns the one answer; the worker must then exit 0.
    fn run(mut self, job: JobSpec) -> FromWorker {
        write_frame(&mut self.sock, &ToWorker::Run(job)).expect("send the job");
        // A finished job's row leaves come first, in `Leaves` frames; then the answer.
        let reply = loop {
            match read_frame::<FromWorker, _>(&mut self.sock).expect("the worker's answer") {
                FromWorker::Leaves(_) => continue,
                other => break other,
            }
        };
        let status = self.child.wait().expect("reap the worker");
        assert!(status.success(), "worker exited {status:?}");
        reply
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `aitbc-miner worker` with `args`, fd 3 a socket pair, a clean environment, and as
/// `run_as` (uid, gid) when given (the test must be root), like the supervisor does.
fn spawn(args: &[&str], run_as: Option<(u32, u32)>) -> std::io::Result<(Child, UnixStream)> {
    let (parent, child_end) = UnixStream::pair()?;
    let child_fd = child_end.as_raw_fd();
    let mut cmd = Command::new(miner());
    cmd.arg("worker")
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (dup2, fcntl, setgroups, setgid, setuid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Fd 3 becomes the socket: whatever it was in the parent is replaced (and it was
            // close-on-exec there); never dropped here, so never closed.
            let mut three = std::mem::ManuallyDrop::new(OwnedFd::from_raw_fd(3));
            if child_fd != 3 {
                nix::unistd::dup2(BorrowedFd::borrow_raw(child_fd), &mut three)?;
            }
            nix::fcntl::fcntl(
                three.as_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            if let Some((uid, gid)) = run_as {
                nix::unistd::setgroups(&[])?;
                nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
                nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(child_end);
    parent.set_read_timeout(Some(FRAME_TIMEOUT))?;
    Ok((child, parent))
}

/// Starts a worker and reads its Hello; on failure panics with the worker's stderr.
fn start(args: &[&str], run_as: Option<(u32, u32)>) -> Worker {
    let (mut child, mut sock) = spawn(args, run_as).expect("spawn the worker");
    match read_frame::<FromWorker, _>(&mut sock) {
        Ok(FromWorker::Hello(hello)) => {
            assert_eq!(hello.version, WIRE_VERSION);
            assert_eq!(
                hello.pid,
                child.id(),
                "no pid namespace: the pid is the host's"
            );
            assert_eq!(hello.kind, Mode::Cpu);
            Worker { child, sock, hello }
        }
        other => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap the worker");
            panic!(
                "expected Hello, got {other:?}; worker {:?}, stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// A job directory as the supervisor makes it: mode 0700, owned by the worker's uid.
fn job_dir(owner: Option<(u32, u32)>) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let job = dir.path().join("job");
    std::fs::create_dir(&job).expect("create the job dir");
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&job, Some(uid), Some(gid)).expect("chown the job dir");
        // The worker must be able to reach it: the temporary parent is root's 0700 dir.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod the parent");
    }
    std::fs::set_permissions(&job, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod the job dir");
    let path = job.to_str().expect("a UTF-8 temp path").to_string();
    (dir, path)
}

/// The value of `key:` in /proc/<pid>/status.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .unwrap_or_else(|| panic!("{key} missing from status:\n{status}"))
        .trim()
}

/// (soft, hard) of a row of /proc/<pid>/limits.
fn limit(limits: &str, name: &str) -> (String, String) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} missing from limits:\n{limits}"));
    let mut cols = line[name.len()..].split_whitespace();
    (
        cols.next().unwrap_or_default().to_string(),
        cols.next().unwrap_or_default().to_string(),
    )
}

fn ns(pid: &str, which: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{which}")).expect("read a namespace link")
}

/// Every step that leaves a trace in /proc, checked on a worker waiting for its job.
fn check_common_steps(w: &Worker, file_size_mb: u64) {
    let pid = w.pid().to_string();
    // Step 1: own user and network namespaces, mapping only the worker's own uid.
    for which in ["user", "net"] {
        assert_ne!(ns(&pid, which), ns("self", which), "{which} namespace");
    }
    let uid_map = w.proc_text("uid_map");
    let rows: Vec<&str> = uid_map.lines().collect();
    assert_eq!(rows.len(), 1, "one uid mapped: {uid_map}");
    let cols: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(
        cols[0], cols[1],
        "the worker's uid maps to itself: {uid_map}"
    );
    assert_eq!(cols[2], "1", "{uid_map}");
    assert_eq!(w.proc_text("setgroups").trim(), "deny");
    // No network: only a loopback device, left down (so no route at all).
    let dev = w.proc_text("net/dev");
    let ifaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    assert_eq!(ifaces, ["lo"], "{dev}");
    let routes = w.proc_text("net/route");
    assert!(
        routes.lines().all(|l| l.starts_with("Iface")),
        "no IPv4 route: {routes}"
    );
    assert_eq!(w.proc_text("net/if_inet6").trim(), "", "no IPv6 address");

    // Step 2: rlimits, soft = hard.
    let limits = w.proc_text("limits");
    let both = |v: &str| (v.to_string(), v.to_string());
    assert_eq!(limit(&limits, "Max core file size"), both("0"));
    assert_eq!(
        limit(&limits, "Max file size"),
        both(&(file_size_mb << 20).to_string())
    );
    assert_eq!(limit(&limits, "Max open files"), both("64"));
    assert_eq!(
        limit(&limits, "Max processes"),
        both(&aitbc_worker::confine::NPROC.to_string())
    );

    // Steps 3, 4 and 7: no_new_privs, every capability set empty, seccomp filtering.
    let status = w.proc_text("status");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&status, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(&status, "Seccomp"), "2", "filter mode");
    let filters: u32 = status_field(&status, "Seccomp_filters")
        .parse()
        .expect("a count");
    assert!(filters >= 1, "{filters} seccomp filters");
    assert_eq!(
        status_field(&status, "Threads"),
        "1",
        "no thread before the job"
    );

    // Step 0: nothing but stdin, stdout, stderr and the socket.
    let mut fds: Vec<u32> = std::fs::read_dir(w.proc("fd"))
        .expect("list the worker's fds")
        .map(|e| {
            e.expect("an fd")
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("a number")
        })
        .collect();
    fds.sort_unstable();
    assert_eq!(fds, [0, 1, 2, 3]);

    let line = &w.hello.sandbox;
    for part in [
        "userns+netns",
        "rlimits core=0 nofile=64",
        "no_new_privs",
        "caps=0",
        "seccomp cpu",
    ] {
        assert!(line.contains(part), "Hello.sandbox {line:?} lacks {part:?}");
    }
}

/// A job whose products are large enough for gemm to block them by its cache sizes, and the
/// hash an unconfined run of it gives in this process.
fn job_and_expected_hash() -> (JobSpec, [u8; 32]) {
    let p = TorchBenchParams {
        n: 160,
        iters: 4,
        seed: 11,
    };
    let want = aitbc_worker::workload::torch_bench::run_cpu(&p, 2).expect("the unconfined run");
    let job = JobSpec {
        job_id: "confined-1".into(),
        spec: WorkloadSpec::TorchBench(p),
        threads: 2,
        ram_mb: 64,
        vram_mb: 0,
        cpu_time_s: 60,
        address_space_bytes: Some(1 << 30),
    };
    (job, want.output_sha)
}

/// The job directory, seen from inside the worker, is a tmpfs of `size_mb` MiB mounted
/// nosuid, nodev, noexec: a job's total disk use is bounded, and never on the host's disk.
fn assert_scratch_tmpfs(pid: &str, dir: &str, size_mb: u64) {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir))
        .unwrap_or_else(|| panic!("no mount at {dir} in the worker's mountinfo:\n{info}"));
    let (mount, fs) = line.split_once(" - ").expect("a mountinfo separator");
    let mut fs = fs.split(' ');
    assert_eq!(fs.next(), Some("tmpfs"), "{line}");
    let opts = mount.split(' ').nth(5).expect("mount options");
    for o in ["nosuid", "nodev", "noexec"] {
        assert!(opts.split(',').any(|x| x == o), "{o} missing: {line}");
    }
    let super_opts = fs.nth(1).expect("super options");
    let want = format!("size={}k", size_mb * 1024);
    assert!(
        super_opts.split(',').any(|x| x == want),
        "{want} missing: {line}"
    );
    // The host's directory stays empty: the scratch lives in the worker's namespace.
    assert_eq!(std::fs::read_dir(dir).expect("the job dir").count(), 0);
}

fn assert_done_with(reply: FromWorker, want: [u8; 32]) {
    match reply {
        FromWorker::Done(out) => assert_eq!(out.output_sha, want, "confined hash differs"),
        other => panic!("expected Done, got {other:?}"),
    }
}

#[test]
fn landlock_worker_is_confined_at_every_step_and_still_computes() {
    let (_tmp, dir) = job_dir(None);
    let w = start(&["--job-dir", &dir, "--file-size-mb", "8"], None);
    check_common_steps(&w, 8);
    let pid = w.pid().to_string();
    // Its own mount namespace, for the scratch tmpfs on the job directory.
    assert_ne!(ns(&pid, "mnt"), ns("self", "mnt"), "own mount namespace");
    assert_scratch_tmpfs(&pid, &dir, 8);
    let line = &w.hello.sandbox;
    assert!(line.contains("scratch tmpfs 8MiB"), "{line}");
    assert!(line.contains("landlock abi "), "{line}");
    assert!(!line.contains("mount view"), "{line}");
    // Step 5 ends in the job directory.
    assert_eq!(
        std::fs::read_link(w.proc("cwd")).expect("cwd"),
        Path::new(&dir)
    );
    let (job, want) = job_and_expected_hash();
    assert_done_with(w.run(job), want);
}

#[test]
fn mount_view_worker_sees_only_what_it_needs() {
    let (_tmp, dir) = job_dir(None);
    let w = start(&["--job-dir", &dir, "--fs", "mount"], None);
    check_common_steps(&w, aitbc_protocol::args::DEFAULT_FILE_SIZE_MB);
    let pid = w.pid().to_string();
    assert_ne!(ns(&pid, "mnt"), ns("self", "mnt"), "own mount namespace");
    let line = &w.hello.sandbox;
    assert!(line.contains("userns+netns+mntns"), "{line}");
    assert!(line.contains("mount view (tmpfs root ro"), "{line}");
    assert!(!line.contains("landlock"), "{line}");

    // Its root holds the libraries, the loader cache, a few devices and the job dir's path.
    let root = w.proc("root");
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .expect("list the worker's root")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    top.sort();
    let job_top = dir
        .trim_start_matches('/')
        .split('/')
        .next()
        .expect("a component");
    for name in &top {
        assert!(
            ["usr", "lib", "lib64", "etc", "dev", job_top].contains(&name.as_str()),
            "unexpected /{name} in the worker's root: {top:?}"
        );
    }
    for hidden in ["proc", "sys", "home", "root", "run", "var"] {
        assert!(
            !top.iter().any(|n| n == hidden),
            "/{hidden} is visible: {top:?}"
        );
    }
    let etc: Vec<String> = std::fs::read_dir(root.join("etc"))
        .expect("list its /etc")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(etc, ["ld.so.cache"], "no config in its /etc");
    let mut dev: Vec<String> = std::fs::read_dir(root.join("dev"))
        .expect("list its /dev")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dev.sort();
    assert_eq!(dev, ["full", "null", "random", "urandom", "zero"]);

    // Mounts: the root and everything bound is read-only except the job directory.
    let mountinfo = w.proc_text("mountinfo");
    let mut saw_job = false;
    for l in mountinfo.lines() {
        let cols: Vec<&str> = l.split_whitespace().collect();
        let (point, opts) = (cols[4], cols[5]);
        let ro = opts.split(',').any(|o| o == "ro");
        if point == dir {
            saw_job = true;
            assert!(!ro, "the job dir must be writable: {l}");
            assert!(
                opts.contains("nosuid") && opts.contains("nodev") && opts.contains("noexec"),
                "{l}"
            );
        } else {
            assert!(ro, "{point} must be read-only: {l}");
        }
    }
    assert!(saw_job, "job dir not mounted:\n{mountinfo}");

    let (job, want) = job_and_expected_hash();
    assert_done_with(w.run(job), want);
}

/// RLIMIT_NPROC is set inside each worker's own user namespace, so two workers under one uid
/// (as under one supervisor) each start their compute threads. Run as `nobody` when the test is
/// root (root is exempt from RLIMIT_NPROC, which would prove nothing).
#[test]
fn workers_sharing_a_uid_each_start_their_threads() {
    let run_as = is_root().then_some((65534, 65534));
    let (_t1, d1) = job_dir(run_as);
    let (_t2, d2) = job_dir(run_as);
    let a = start(&["--job-dir", &d1], run_as);
    let b = start(&["--job-dir", &d2], run_as);
    if run_as.is_some() {
        let status = a.proc_text("status");
        assert_eq!(
            status_field(&status, "Uid").split_whitespace().next(),
            Some("65534")
        );
    }
    let (mut job, want) = job_and_expected_hash();
    job.threads = 8;
    // Both workers are alive and confined before either computes.
    assert_done_with(a.run(job.clone()), want);
    assert_done_with(b.run(job), want);
}

/// Finished worker output: exit code and stderr.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let (child, _sock) = spawn(args, None).expect("spawn the worker");
    let out = child.wait_with_output().expect("reap the worker");
    assert!(out.status.signal().is_none(), "killed: {:?}", out.status);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_worker_that_cannot_confine_itself_exits_before_hello_naming_why() {
    // A wrong command line: exit 2, naming the flag and the value.
    let (code, err) = run_to_exit(&["--job-dir", "relative/dir"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--job-dir = \"relative/dir\": must be an absolute path"),
        "{err}"
    );
    let (code, err) = run_to_exit(&["--job-dir", "/tmp", "--fs", "chroot"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--fs = \"chroot\""), "{err}");

    // A job directory that does not exist: exit 3, naming the step.
    let (code, err) = run_to_exit(&["--job-dir", "/nonexistent/aitbc/job"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("confinement step prepare: --job-dir /nonexistent/aitbc/job"),
        "{err}"
    );

    // A job directory that belongs to someone else.
    if is_root() {
        let (_tmp, dir) = job_dir(Some((65534, 65534)));
        let (code, err) = run_to_exit(&["--job-dir", &dir]);
        assert_eq!(code, Some(3), "{err}");
        assert!(
            err.contains("owned by uid 65534, not by the worker's uid 0"),
            "{err}"
        );
    }

    // A GPU worker cannot use the mount view (it has no NVIDIA device nodes): refused before
    // the first step, whatever the host has.
    let (_tmp, dir) = job_dir(None);
    let (code, err) = run_to_exit(&["--job-dir", &dir, "--kind", "gpu", "--fs", "mount"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("confinement step filesystem: --kind gpu needs Landlock"),
        "{err}"
    );
}

/// `--cpu-kernel`: a worker runs exactly the named kernel (its Hello line says which) and gets
/// the same bytes with it; one this CPU lacks is refused before the first step (exit 3, one
/// line naming it and what the CPU runs), never run.
#[test]
fn a_worker_runs_the_named_kernel_and_refuses_one_the_cpu_lacks() {
    use aitbc_worker::workload::torch_bench::Kernel;
    for k in Kernel::ALL {
        let (_tmp, dir) = job_dir(None);
        let args = ["--job-dir", dir.as_str(), "--cpu-kernel", k.name()];
        if k.available() {
            let w = start(&args, None);
            let line = &w.hello.sandbox;
            assert!(
                line.contains(&format!("int8 kernel {}", k.name())),
                "{line}"
            );
            let (job, want) = job_and_expected_hash();
            assert_done_with(w.run(job), want);
        } else {
            let (code, err) = run_to_exit(&args);
            assert_eq!(code, Some(3), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(&format!(
                    "aitbc-miner worker: confinement step device: --cpu-kernel {0}: this CPU \
                     lacks the {0} int8 kernel (it runs ",
                    k.name()
                )),
                "{err}"
            );
        }
    }
    // `auto` names the kernel detection picks.
    let (_tmp, dir) = job_dir(None);
    let w = start(&["--job-dir", &dir], None);
    let want = format!("int8 kernel {}", Kernel::detect().name());
    assert!(w.hello.sandbox.contains(&want), "{}", w.hello.sandbox);
}

/// A GPU worker on a host without the NVIDIA driver (this machine and CI) stops at the device
/// step, after Landlock and before seccomp: exit 3 before Hello, one line on stderr naming the
/// missing `libcuda.so.1`, no panic. Where the driver is present, it says Hello as a GPU worker
/// instead and computes a small job (unverified here: no GPU).
#[test]
fn a_gpu_worker_without_a_driver_exits_before_hello_naming_it() {
    let (_tmp, dir) = job_dir(None);
    let args = ["--job-dir", dir.as_str(), "--kind", "gpu"];
    if aitbc_worker::cuda_driver_present() {
        eprintln!("note: a CUDA driver is present; checking the GPU worker's Hello instead");
        return a_gpu_worker_with_a_driver_says_hello_and_computes(&args);
    }
    let (code, err) = run_to_exit(&args);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one line, no panic or backtrace: {err}"
    );
    assert!(
        err.starts_with(
            "aitbc-miner worker: confinement step device: no CUDA driver: libcuda.so.1 not found"
        ),
        "{err}"
    );
    assert!(err.contains("ACCEL_MODE=cpu"), "{err}");
}

/// The other half of the test above, for a host with a driver.
fn a_gpu_worker_with_a_driver_says_hello_and_computes(args: &[&str]) {
    let (mut child, mut sock) = spawn(args, None).expect("spawn the worker");
    let hello = match read_frame::<FromWorker, _>(&mut sock) {
        Ok(FromWorker::Hello(h)) => h,
        other => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reap the worker");
            panic!(
                "expected Hello from a GPU worker, got {other:?}; worker {:?}, stderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    assert_eq!(hello.kind, Mode::Gpu);
    assert!(hello.sandbox.contains("cuda gpu0 "), "{}", hello.sandbox);
    assert!(hello.sandbox.ends_with("seccomp gpu"), "{}", hello.sandbox);
    let p = TorchBenchParams {
        n: 160,
        iters: 4,
        seed: 11,
    };
    let job = JobSpec {
        job_id: "confined-gpu-1".into(),
        spec: WorkloadSpec::TorchBench(p),
        threads: 1,
        ram_mb: 64,
        vram_mb: p.vram_mb(),
        cpu_time_s: 60,
        address_space_bytes: None,
    };
    write_frame(&mut sock, &ToWorker::Run(job)).expect("send the job");
    let reply = read_frame::<FromWorker, _>(&mut sock).expect("the worker's answer");
    let status = child.wait().expect("reap the worker");
    assert!(status.success(), "worker exited {status:?}");
    let FromWorker::Done(out) = reply else {
        panic!("expected Done, got {reply:?}");
    };
    assert_eq!(
        (out.output_len, out.flops, out.kind),
        (p.output_len(), p.flops(), Mode::Gpu)
    );
}

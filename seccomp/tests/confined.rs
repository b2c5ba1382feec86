//! The filter tested in real processes: each test re-executes this test binary as a child (the
//! environment variable `AITBC_SECCOMP_TEST_CHILD` names what the child does), the child
//! confines itself with `aitbc_seccomp::install` and tries things, and the parent checks the
//! child's exit (code or signal) and its stdout/stderr.
//!
//! A filter is irreversible and process-wide, so it must never be installed in the test harness
//! itself: only in a child, and never by forking the multi-threaded harness.

use aitbc_protocol::workload::Workload;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};
use std::sync::mpsc;

use aitbc_seccomp::{install, Context, Profile, SeccompError, REPORT_PREFIX};

const CHILD_ENV: &str = "AITBC_SECCOMP_TEST_CHILD";
const DIR_ENV: &str = "AITBC_SECCOMP_TEST_DIR";

// ---------------------------------------------------------------------------------------------
// The parent side.

/// Runs this binary's `child_entry` test in a fresh process with `mode`.
fn run_child(mode: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    Command::new(exe)
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .env(DIR_ENV, dir.path())
        .output()
        .expect("spawn the child test process")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The child finished its checks and exited 0.
fn assert_passed(mode: &str) {
    let out = run_child(mode);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child ok"),
        "{mode}: {}",
        describe(&out)
    );
}

/// The child died of SIGSYS and its stderr names `name` (number `nr`).
fn assert_killed_naming(mode: &str, name: &str, nr: i64) {
    let out = run_child(mode);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "{mode}: {}",
        describe(&out)
    );
    let line = format!("{REPORT_PREFIX}{name} ({nr})\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&line),
        "{mode}: no {line:?}: {}",
        describe(&out)
    );
}

#[test]
fn cpu_worker_does_ordinary_work() {
    assert_passed("work_cpu");
}

#[test]
fn gpu_profile_does_ordinary_work_too() {
    assert_passed("work_gpu");
}

#[test]
fn refused_calls_fail_with_their_errno_and_the_process_lives() {
    assert_passed("refusals");
}

#[test]
fn execve_kills_with_sigsys_and_is_named() {
    assert_killed_naming("execve", "execve", libc::SYS_execve);
}

#[test]
fn ptrace_of_the_parent_kills_with_sigsys_and_is_named() {
    assert_killed_naming("ptrace", "ptrace", libc::SYS_ptrace);
}

#[test]
fn a_thread_started_before_install_is_confined_too() {
    assert_killed_naming("tsync", "mount", libc::SYS_mount);
}

#[test]
fn an_ioctl_request_not_on_the_list_traps() {
    assert_killed_naming("ioctl_trap", "ioctl", libc::SYS_ioctl);
}

#[test]
fn install_requires_no_new_privs() {
    assert_passed("no_nnp");
}

// ---------------------------------------------------------------------------------------------
// The child side.

/// The child's entry: does nothing in a normal test run; in a child, runs its mode and exits
/// without returning to the harness (whose own system calls the filter does not allow).
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let code = child(&mode);
    let _ = std::io::stdout().flush();
    // SAFETY: ends the process at once; nothing needs unwinding.
    unsafe { libc::_exit(code) }
}

fn child(mode: &str) -> i32 {
    if mode == "no_nnp" {
        return child_without_no_new_privs();
    }
    // The caller's part of the set-up order: no core files for the SIGSYS deaths, no_new_privs.
    // SAFETY: plain system calls with valid arguments.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    }
    match mode {
        "work_cpu" => work(Profile::Cpu),
        "work_gpu" => work(Profile::Gpu),
        "refusals" => refusals(),
        "execve" => {
            confine(Profile::Cpu);
            let path = c"/bin/true";
            let argv = [path.as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: valid NUL-terminated argv/envp arrays.
            unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            println!("execve returned: not confined");
            1
        }
        "ptrace" => {
            // SAFETY: getppid has no arguments; read before the filter forbids it.
            let parent = unsafe { libc::getppid() };
            confine(Profile::Cpu);
            // SAFETY: PTRACE_ATTACH takes a pid and two ignored arguments.
            let rc = unsafe { libc::ptrace(libc::PTRACE_ATTACH, parent, 0, 0) };
            println!("ptrace returned {rc}: not confined");
            1
        }
        "tsync" => {
            let (go, wait) = mpsc::channel::<()>();
            let early = std::thread::spawn(move || {
                let _ = wait.recv();
                // SAFETY: mount with null arguments; the filter must trap it before the kernel
                // looks at them.
                let rc = unsafe { libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0) };
                println!("mount returned {rc}: thread not confined");
            });
            confine(Profile::Cpu);
            let _ = go.send(());
            let _ = early.join();
            1
        }
        "ioctl_trap" => {
            let null = File::open("/dev/null").expect("open /dev/null");
            confine(Profile::Cpu);
            // SAFETY: TCGETS on /dev/null with a valid termios buffer.
            let rc = unsafe {
                let mut t: libc::termios = std::mem::zeroed();
                libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&null), libc::TCGETS, &mut t)
            };
            println!("ioctl(TCGETS) returned {rc}: not confined");
            1
        }
        other => {
            println!("unknown child mode {other}");
            2
        }
    }
}

fn confine(profile: Profile) {
    if let Err(e) = install(profile, &Workload::ALL, &Context::current()) {
        println!("install failed: {e}");
        let _ = std::io::stdout().flush();
        // SAFETY: ends the process at once.
        unsafe { libc::_exit(3) }
    }
}

/// Counts failed checks and prints each one, so the parent's message shows what went wrong.
struct Checks {
    failed: u32,
}

impl Checks {
    fn expect(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if ok {
            println!("ok   {what}");
        } else {
            println!("FAIL {what}: {detail}");
            self.failed += 1;
        }
    }

    /// A raw return value `rc` that must be -1 with `errno`.
    fn errno(&mut self, what: &str, rc: i64, errno: i32) {
        let got = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let detail = format!("rc {rc}, errno {got}, wanted -1 errno {errno}");
        self.expect(what, rc == -1 && got == errno, detail);
    }

    fn done(self) -> i32 {
        if self.failed == 0 {
            println!("child ok");
            0
        } else {
            1
        }
    }
}

/// Ordinary work after confinement: memory, threads (one started before install), files opened
/// before and after, randomness, a signal to itself.
fn work(profile: Profile) -> i32 {
    let mut c = Checks { failed: 0 };
    let dir = std::path::PathBuf::from(std::env::var_os(DIR_ENV).unwrap_or_default());
    let mut before = File::create(dir.join("before")).expect("create before install");
    let (go, wait) = mpsc::channel::<u64>();
    let early = std::thread::spawn(move || wait.recv().map(|n| (0..n).sum::<u64>()).ok());

    confine(profile);

    let big = vec![7u8; 64 << 20];
    let sum: u64 = big.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    c.expect(
        "64 MiB allocated and touched",
        sum == 7 * (64 << 20) / 4096,
        sum,
    );
    drop(big);

    let handles: Vec<_> = (0..4u64)
        .map(|i| std::thread::spawn(move || (0..100_000u64).map(|x| x ^ i).sum::<u64>()))
        .collect();
    let joined = handles.into_iter().filter_map(|h| h.join().ok()).count();
    c.expect(
        "4 threads started and joined after install",
        joined == 4,
        joined,
    );

    let _ = go.send(1000);
    let early_sum = early.join().ok().flatten();
    c.expect(
        "thread from before install works",
        early_sum == Some(499_500),
        format!("{early_sum:?}"),
    );

    let wrote = before.write_all(b"before").and_then(|()| before.sync_all());
    c.expect(
        "write to a file opened before install",
        wrote.is_ok(),
        format!("{wrote:?}"),
    );
    let after = dir.join("after");
    let roundtrip = File::create(&after)
        .and_then(|mut f| f.write_all(b"after"))
        .and_then(|()| fs::read(&after));
    let ok = matches!(&roundtrip, Ok(bytes) if bytes == b"after");
    c.expect(
        "create, write, read a file after install",
        ok,
        format!("{roundtrip:?}"),
    );
    let mut text = String::new();
    let read = File::open(dir.join("before")).and_then(|mut f| f.read_to_string(&mut text));
    c.expect(
        "reopen the early file",
        read.is_ok() && text == "before",
        format!("{read:?}"),
    );
    let removed = fs::remove_file(&after);
    c.expect("remove a file", removed.is_ok(), format!("{removed:?}"));

    let mut buf = [0u8; 16];
    // SAFETY: valid buffer of the stated length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    c.expect("getrandom", n == 16, n);
    // SAFETY: signal 0 only checks.
    let rc = unsafe { libc::kill(libc::getpid(), 0) };
    c.expect("kill(own pid, 0)", rc == 0, rc);
    c.done()
}

/// Each refused call fails with its errno; the allowed neighbours of refused calls still work.
fn refusals() -> i32 {
    let mut c = Checks { failed: 0 };
    // SAFETY: getppid has no arguments; read before the filter forbids it.
    let parent = unsafe { libc::getppid() };
    let null = File::open("/dev/null").expect("open /dev/null");
    let null_fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let mut pair = [0; 2];
    // SAFETY: valid array of two descriptors.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, pair.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair before install");

    confine(Profile::Cpu);

    // SAFETY: every call below is a plain system call with valid or null arguments; the filter
    // answers the refused ones before the kernel looks at them.
    unsafe {
        let rc = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        c.errno("socket(AF_INET)", rc.into(), libc::EPERM);
        let rc = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        c.errno("socket(AF_UNIX)", rc.into(), libc::EPERM);
        let rc = libc::fork();
        if rc == 0 {
            libc::_exit(0);
        }
        c.errno("fork()", rc.into(), libc::EPERM);
        let rc = libc::syscall(libc::SYS_clone3, 0, 0);
        c.errno("clone3", rc, libc::ENOSYS);
        let rc = libc::kill(parent, 0);
        c.errno("kill(parent, 0)", rc.into(), libc::EPERM);
        let rc = libc::kill(-1, 0);
        c.errno("kill(-1, 0)", rc.into(), libc::EPERM);
        let rc = libc::kill(libc::getpid(), 0);
        c.expect("kill(own pid, 0)", rc == 0, rc);
        let rc = libc::syscall(libc::SYS_tgkill, parent, parent, 0);
        c.errno("tgkill(parent)", rc, libc::EPERM);
        let rc = libc::syscall(libc::SYS_tkill, libc::syscall(libc::SYS_gettid), 0);
        c.errno("tkill(own tid)", rc, libc::EPERM);
        let rc = libc::syscall(libc::SYS_pidfd_open, parent, 0);
        c.errno("pidfd_open(parent)", rc, libc::EPERM);

        let mut old: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(libc::SIGSYS, std::ptr::null(), &mut old);
        c.errno("rt_sigaction(SIGSYS)", rc.into(), libc::EPERM);
        let rc = libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut old);
        c.expect("rt_sigaction(SIGUSR1) still works", rc == 0, rc);

        let msg = b"x";
        let n = libc::send(pair[0], msg.as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
        c.expect("send on an inherited socket", n == 1, n);
        let mut buf = [0u8; 4];
        let n = libc::recv(pair[1], buf.as_mut_ptr().cast(), buf.len(), 0);
        c.expect("recv on an inherited socket", n == 1, n);
        let mut to: libc::sockaddr_un = std::mem::zeroed();
        to.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let dest = (&to as *const libc::sockaddr_un).cast();
        let n = libc::sendto(pair[0], msg.as_ptr().cast(), 1, 0, dest, len);
        c.errno("sendto with a destination address", n as i64, libc::EPERM);

        // An allowed request passes whatever the upper half of the 64-bit argument holds.
        let on: libc::c_int = 1;
        let request = 0xdead_beef_0000_0000u64 | libc::FIONBIO;
        let rc = libc::syscall(libc::SYS_ioctl, null_fd, request, &on as *const libc::c_int);
        c.expect("ioctl(FIONBIO | garbage << 32)", rc == 0, rc);
        let flags = libc::fcntl(null_fd, libc::F_GETFL);
        c.expect("FIONBIO took effect", flags & libc::O_NONBLOCK != 0, flags);
    }
    c.done()
}

/// Without no_new_privs, install refuses and says what to do.
fn child_without_no_new_privs() -> i32 {
    // SAFETY: no pointer arguments.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1 {
        println!("skip: no_new_privs is inherited from the test runner");
        println!("child ok");
        return 0;
    }
    let mut c = Checks { failed: 0 };
    match install(Profile::Cpu, &Workload::ALL, &Context::current()) {
        Err(e @ SeccompError::NoNewPrivs) => {
            let text = e.to_string();
            c.expect(
                "error names the fix",
                text.contains("PR_SET_NO_NEW_PRIVS"),
                text,
            );
        }
        other => c.expect("install refused", false, format!("{other:?}")),
    }
    c.done()
}

//! How long a confined worker takes to start, beside bubblewrap and a bare process, in the
//! same run.
//!
//! Each round times three things, interleaved so machine noise hits all of them alike:
//! * **confined worker**: the supervisor's real launch path, `WorkerProcess::start` — job
//!   directory, the worker's own cgroup (when this runs as root: a real cgroup subtree), fork,
//!   joining the cgroup and switching to `nobody` before exec, then inside the worker its
//!   user + network namespaces, rlimits, no_new_privs, capability drop, Landlock (or the mount
//!   view), seccomp, and the Hello frame on the socket; the clock stops when Hello is read.
//!   Retiring the worker (Shutdown, reap, cgroup removal) is off the clock.
//! * **the same without its cgroup** (as root only): the launch above minus the per-worker
//!   cgroup, to show what creating and joining it costs.
//! * **bwrap**: `bwrap --unshare-all --ro-bind / / true`, spawned and waited for.
//! * **fork+exec /bin/true**: fork, exec, wait — the floor of any process-per-job design.
//!
//! Run: `scripts/bench-sandbox.sh [rounds]` (installs bubblewrap when missing), or
//! `cargo bench --bench confined_start -- [rounds]` (default 200). Prints p50/p99/mean per
//! case and the ratios. Target (issue 4): confined p50 no slower than bwrap's. This is a
//! measurement, never a test: it asserts nothing about timings.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aitbc_supervisor::cgroup::Subtree;
use aitbc_supervisor::worker_proc::WorkerProcess;
use aitbc_supervisor::WorkerCommand;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(u32::MAX)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// fork + exec + wait of `/bin/true` (a no-op `pre_exec` makes std fork rather than
/// posix_spawn, as the supervisor's own launch does).
fn fork_exec_true() -> Duration {
    let t0 = Instant::now();
    let mut cmd = Command::new("/bin/true");
    // SAFETY: the closure does nothing, so nothing that is not async-signal-safe runs between
    // fork and exec.
    unsafe { cmd.pre_exec(|| Ok(())) };
    let status = cmd.status().expect("/bin/true runs");
    let d = t0.elapsed();
    assert!(status.success());
    d
}

/// `bwrap --unshare-all --ro-bind / / true`, or `None` when bwrap cannot run here.
fn bwrap_true() -> Option<Duration> {
    let t0 = Instant::now();
    let status = Command::new("bwrap")
        .args(["--unshare-all", "--ro-bind", "/", "/", "true"])
        .stdin(Stdio::null())
        .status()
        .ok()?;
    let d = t0.elapsed();
    status.success().then_some(d)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let root = nix::unistd::geteuid().is_root();
    let work = tempfile::Builder::new()
        .prefix("aitbc-confined-start-")
        .tempdir()
        .expect("a temporary WORK_DIR");
    // Job directories are created inside and handed to the workers' user, who must be able to
    // reach them.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the WORK_DIR");
    let mut cmd = WorkerCommand::new(env!("CARGO_BIN_EXE_aitbc-miner"), ["worker"]);
    cmd.work_dir = work.path().to_path_buf();
    let mut setting = vec![];
    if root {
        match Subtree::create(&format!("confined-start-bench.{}", std::process::id())) {
            Ok(Some(s)) => {
                setting.push(s.describe());
                cmd.subtree = Some(Arc::new(s));
            }
            Ok(None) => setting.push("no cgroup subtree on this host".into()),
            Err(e) => setting.push(format!("no cgroup subtree: {e}")),
        }
        match aitbc_supervisor::privilege::lookup_user("nobody") {
            Ok(ids) => {
                cmd.run_as = Some(ids);
                setting.push(format!("workers run as nobody ({}:{})", ids.0, ids.1));
            }
            Err(e) => setting.push(format!("workers run as root: {e}")),
        }
    } else {
        setting.push("not root: no cgroup subtree, workers run as this user".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The same launch without the per-worker cgroup, to show what the cgroup costs.
    let bare = WorkerCommand {
        subtree: None,
        ..cmd.clone()
    };
    let start_with = |cmd: &WorkerCommand| {
        rt.block_on(async {
            let t0 = Instant::now();
            let w = WorkerProcess::start(cmd, Duration::from_secs(10))
                .await
                .expect("a confined worker starts");
            let d = t0.elapsed();
            let sandbox = w.hello().sandbox.clone();
            w.retire().await;
            (d, sandbox)
        })
    };
    let start = || start_with(&cmd);
    let with_cgroup = cmd.subtree.is_some();
    // Warm-up: page cache, the dynamic loader, cgroup directories.
    let mut sandbox = String::new();
    for _ in 0..10 {
        sandbox = start().1;
        if with_cgroup {
            start_with(&bare);
        }
        let _ = bwrap_true();
        fork_exec_true();
    }
    let have_bwrap = bwrap_true().is_some();
    let (mut confined, mut no_cgroup, mut bwrap, mut truth) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        confined.push(start().0);
        if with_cgroup {
            no_cgroup.push(start_with(&bare).0);
        }
        if have_bwrap {
            bwrap.extend(bwrap_true());
        }
        truth.push(fork_exec_true());
    }
    for v in [&mut confined, &mut no_cgroup, &mut bwrap, &mut truth] {
        v.sort();
    }
    println!("confined_start: {rounds} rounds, times in ms");
    for s in &setting {
        println!("  {s}");
    }
    println!("  worker's Hello.sandbox: {sandbox}");
    println!("{:<44} {:>9} {:>9} {:>9}", "case", "p50", "p99", "mean");
    let mut rows = vec![("confined worker: spawn -> Hello", &confined)];
    if with_cgroup {
        rows.push(("  the same without its cgroup", &no_cgroup));
    }
    if have_bwrap {
        rows.push(("bwrap --unshare-all --ro-bind / / true", &bwrap));
    }
    rows.push(("fork+exec+wait /bin/true", &truth));
    for (name, v) in rows {
        println!(
            "{name:<44} {:>9} {:>9} {:>9}",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(mean(v))
        );
    }
    let ratio = |a: &[Duration], b: &[Duration], p: f64| {
        pct(a, p).as_secs_f64() / pct(b, p).as_secs_f64().max(1e-9)
    };
    if have_bwrap {
        println!(
            "confined / bwrap: p50 {:.2}x, p99 {:.2}x (target: p50 <= 1.00x)",
            ratio(&confined, &bwrap, 0.5),
            ratio(&confined, &bwrap, 0.99)
        );
    } else {
        println!("bwrap: not available (scripts/bench-sandbox.sh installs bubblewrap)");
    }
    println!(
        "confined / fork+exec: p50 {:.2}x, p99 {:.2}x",
        ratio(&confined, &truth, 0.5),
        ratio(&confined, &truth, 0.99)
    );
}

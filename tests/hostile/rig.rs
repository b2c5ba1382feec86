//! The hostile suite's rig: a Coordinator, a real `aitbc-miner run` process with a config in a
//! temporary root (`miner.conf` holding the API key, `work/`, `state/`, the miner's log), and
//! the checks every act shares — what the job's failure says, that the supervisor lives on and
//! completes a normal job, that nothing secret leaked into a fail message, and that no process
//! of the worker survives it (by pid, process group and the worker's own cgroups, read from
//! /proc and /sys/fs/cgroup).
//!
//! The rig never weakens the sandbox to make a test pass: it only chooses small limits so the
//! suite is quick. Waits are for events where there are any, otherwise bounded polls of another
//! process's state (`common::wait_for`).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aitbc_coordinator::CoordinatorConfig;
use aitbc_protocol::api::{FailReason, JobState, JobView};
use aitbc_worker::hostile::Act;
use serde_json::{json, Value};

use crate::common::{test_config, wait_for, TestCoordinator};

/// Tests that load the machine (bombs, the heartbeat measurement) take this for writing; all
/// others for reading, so the measurements are not disturbed and per-user process limits are
/// not shared between bombs.
pub static EXCLUSIVE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The user the miner drops to when the suite runs as root.
pub const RUN_AS: &str = "nobody";

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A visible skip line: written to the real stderr, past the test harness's capture.
pub fn skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "hostile: SKIPPED {test}: {why}");
}

/// A visible note (a finding that does not fail the test, or a check that could not run).
pub fn note(test: &str, what: &str) {
    let _ = writeln!(std::io::stderr(), "hostile: NOTE {test}: {what}");
}

/// How the rig's miner is set up.
#[derive(Clone, Debug)]
pub struct Setup {
    /// HEARTBEAT_SECS, in milliseconds.
    pub heartbeat_ms: u64,
    /// MAX_JOB_DISK_MB (the worker's RLIMIT_FSIZE).
    pub disk_mb: u64,
    /// The Coordinator's lease margin.
    pub lease_margin: Duration,
    /// THREADS_PER_JOB.
    pub threads: u32,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            heartbeat_ms: 100,
            disk_mb: 4,
            lease_margin: Duration::from_secs(30),
            threads: 1,
        }
    }
}

/// A Coordinator and one real miner process attached to it.
pub struct Rig {
    pub c: TestCoordinator,
    pub name: &'static str,
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub config_text: String,
    /// A value only the miner's environment holds.
    pub canary: String,
    miner: Child,
    pub miner_pid: i32,
}

/// The idle worker a job is about to be handed to.
#[derive(Clone, Debug)]
pub struct Idle {
    pub pid: i32,
    /// The worker's own cgroup directories (those it does not share with the miner).
    pub cgroups: Vec<PathBuf>,
}

/// A hostile job's end, as the Coordinator recorded it.
#[derive(Debug)]
pub struct Outcome {
    pub job: JobView,
    /// The miner's reason (unwrapped from ATTEMPTS_EXHAUSTED: the rig's jobs have one attempt).
    pub reason: FailReason,
    /// The miner's message.
    pub message: String,
    /// The worker that ran the job (from the miner's "job started" log line).
    pub worker_pid: Option<i32>,
    pub idle: Idle,
}

impl Rig {
    /// Starts a Coordinator (one attempt per job) and `aitbc-miner run` against it.
    pub async fn start(name: &'static str, setup: Setup) -> Rig {
        let c = TestCoordinator::start(CoordinatorConfig {
            max_attempts: 1,
            lease_margin: setup.lease_margin,
            ..test_config()
        })
        .await;
        let url = c.url.clone();
        Rig::start_with(c, &url, name, setup).await
    }

    /// As [`Rig::start`], with the miner talking to `url` (e.g. a recording proxy in front of
    /// `c`).
    pub async fn start_with(c: TestCoordinator, url: &str, name: &'static str, s: Setup) -> Rig {
        let root = tempfile::Builder::new()
            .prefix("aitbc-hostile-")
            .tempdir()
            .expect("a temporary root");
        let canary = format!("canary-{}", crate::common::sha_of(name));
        let config = root.path().join("miner.conf");
        let hb = s.heartbeat_ms as f64 / 1000.0;
        let config_text = format!(
            "COORD_URL={url}\nWALLET_ADDR=w_{name}\nAPI_KEY={key}\nMINER_ID={name}\n\
             WORK_DIR={work}\nSTATE_DIR={state}\nHEARTBEAT_SECS={hb}\nJOB_POLL_SECS=0.02\n\
             POLL_WAIT_SECS=1\nMAX_CONCURRENCY=1\nACCEL_MODE=cpu\nBACKOFF_MIN_SECS=0.02\n\
             BACKOFF_MAX_SECS=0.3\nDRAIN_GRACE_SECS=1\nTHREADS_PER_JOB={threads}\n\
             LOG_LEVEL=debug\nMAX_JOB_RAM_MB=2048\nMAX_JOB_RUNTIME_SECS=600\n\
             MAX_JOB_CPU_SECS=600\nMAX_JOB_DISK_MB={disk}\nRUN_AS_USER={RUN_AS}\n",
            key = c.miner_key,
            work = root.path().join("work").display(),
            state = root.path().join("state").display(),
            threads = s.threads,
            disk = s.disk_mb,
        );
        std::fs::write(&config, &config_text).expect("write miner.conf");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .expect("chmod miner.conf");
        if is_root() {
            // As deployed: the miner's user owns its directory and its config, so only the
            // sandbox (not file permissions) stands between a worker of that user and them.
            let user = nix::unistd::User::from_name(RUN_AS)
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("user {RUN_AS} exists"));
            for p in [root.path(), config.as_path()] {
                nix::unistd::chown(p, Some(user.uid), Some(user.gid)).expect("chown to nobody");
            }
        }
        let log = std::fs::File::create(root.path().join("miner.log")).expect("miner.log");
        let miner = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("API_KEY", &c.miner_key)
            .env("HOSTILE_CANARY", &canary)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start aitbc-miner run");
        let miner_pid = i32::try_from(miner.id()).expect("pid fits");
        Rig {
            c,
            name,
            root,
            config,
            config_text,
            canary,
            miner,
            miner_pid,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("miner.log")).unwrap_or_default()
    }

    /// The miner's set-up lines (privileges, cgroups, sandbox) and the last lines of its log,
    /// for assertion messages.
    pub fn log_tail(&self) -> String {
        const SETUP: &[&str] = &["cgroup", "confined", "dropped", "sandbox", "WARN", "ERROR"];
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines.len().saturating_sub(40);
        let setup: Vec<&str> = lines[..tail]
            .iter()
            .filter(|l| SETUP.iter().any(|k| l.contains(k)))
            .take(20)
            .copied()
            .collect();
        format!("{}\n...\n{}", setup.join("\n"), lines[tail..].join("\n"))
    }

    /// Panics (with the log) unless the miner process is still running.
    pub fn assert_miner_alive(&mut self) {
        if let Ok(Some(status)) = self.miner.try_wait() {
            panic!(
                "{}: the miner exited ({status}); log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The slot's pre-started worker, once there is exactly one, with its own cgroups.
    pub async fn idle_worker(&mut self) -> Idle {
        self.assert_miner_alive();
        let miner = self.miner_pid;
        let what = format!("{}: the miner's idle worker", self.name);
        // Ready means fully confined: its seccomp filter (the last set-up step) is on. A child
        // seen earlier may still be between fork and exec, outside its cgroup.
        let pid = wait_for(&what, Duration::from_secs(20), || async move {
            match children(miner).as_slice() {
                [one] if running(*one) && seccomp_filtered(*one) => Some(*one),
                _ => None,
            }
        })
        .await;
        let mine = cgroup_of(miner);
        let cgroups = cgroup_of(pid)
            .into_iter()
            .filter(|entry| !mine.contains(entry))
            .filter_map(|(controllers, path)| cgroup_dir(&controllers, &path))
            .collect();
        Idle { pid, cgroups }
    }

    /// Runs `act` with `arg` as a job with `limits`, waits for it to end, and returns how.
    pub async fn attack(&mut self, act: Act, arg: u16, limits: Value, within: Duration) -> Outcome {
        self.attack_with(act, arg, 1, limits, within).await
    }

    /// Runs an act on the supervisor, naming this rig's miner as the target
    /// (`hostile::target_params`).
    pub async fn attack_supervisor(&mut self, act: Act, within: Duration) -> Outcome {
        let pid = u32::try_from(self.miner_pid).expect("a positive pid");
        let (arg, iters) = aitbc_worker::hostile::target_params(pid);
        self.attack_with(act, arg, iters, json!({}), within).await
    }

    async fn attack_with(
        &mut self,
        act: Act,
        arg: u16,
        iters: u32,
        limits: Value,
        within: Duration,
    ) -> Outcome {
        let idle = self.idle_worker().await;
        let params = json!({"n": 8, "iters": iters, "seed": act.seed(arg)});
        let job = self
            .c
            .submit(
                json!({"workload": "torch_bench", "reward": 1, "limits": limits,
                "params": params}),
            )
            .await;
        let view = self.settled_or_proved(&job.id, within).await;
        let worker_pid = self.worker_pid_of(&job.id);
        // A proof is in (verifying: audited or held) or the job completed: the act's worker
        // answered Done.
        if matches!(view.state, JobState::Completed | JobState::Verifying) {
            panic!(
                "{}: {act:?} ESCAPED (the job was proved); the worker said:\n{}\nlog:\n{}",
                self.name,
                self.escapes(),
                self.log_tail()
            );
        }
        let failure = view
            .failure
            .clone()
            .unwrap_or_else(|| panic!("{}: failed job without a failure: {view:?}", self.name));
        let (reason, message) = unwrap_exhausted(failure.reason, &failure.message);
        Outcome {
            job: view,
            reason,
            message,
            worker_pid,
            idle,
        }
    }

    /// The worker's `aitbc-hostile: ESCAPED` lines from the miner's log.
    pub fn escapes(&self) -> String {
        self.log()
            .lines()
            .filter(|l| l.contains("ESCAPED"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The job's final view.
    pub async fn settled(&self, id: &str, within: Duration) -> JobView {
        let what = format!("{}: job {id} to end", self.name);
        let c = &self.c;
        let (miner, name) = (self.miner_pid, self.name);
        wait_for(&what, within, || async move {
            assert!(running(miner), "{name}: the miner died while job {id} ran");
            let v = c.job(id).await;
            v.state.is_final().then_some(v)
        })
        .await
    }

    /// The job's view once it has ended, or once a proof of it is in (`verifying`).
    async fn settled_or_proved(&self, id: &str, within: Duration) -> JobView {
        let what = format!("{}: job {id} to end or be proved", self.name);
        let c = &self.c;
        let (miner, name) = (self.miner_pid, self.name);
        wait_for(&what, within, || async move {
            assert!(running(miner), "{name}: the miner died while job {id} ran");
            let v = c.job(id).await;
            (v.state.is_final() || v.state == JobState::Verifying).then_some(v)
        })
        .await
    }

    /// The worker pid the miner logged for `job` ("job started ... worker_pid=N").
    fn worker_pid_of(&self, job: &str) -> Option<i32> {
        let job_field = format!("job={job}");
        self.log()
            .lines()
            .filter(|l| l.contains("job started") && l.contains(&job_field))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix("worker_pid="))
                    .and_then(|v| v.parse().ok())
            })
    }

    /// The checks every contained act must pass: no secret in the message, the supervisor
    /// alive, no process of the worker left, and a normal job completing afterwards.
    pub async fn assert_contained(&mut self, o: &Outcome) {
        for secret in [self.c.miner_key.as_str(), self.canary.as_str()] {
            assert!(
                !o.message.contains(secret),
                "{}: a secret reached the fail message: {}",
                self.name,
                o.message
            );
            assert!(
                !self.log().contains(secret),
                "{}: a secret reached the miner's log",
                self.name
            );
        }
        self.assert_miner_alive();
        self.assert_nothing_left(o).await;
        let normal = self.c.submit_small(1).await;
        let v = self.settled(&normal.id, Duration::from_secs(30)).await;
        assert_eq!(
            v.state,
            JobState::Completed,
            "{}: the normal job after the attack: {v:?}\nlog:\n{}",
            self.name,
            self.log_tail()
        );
        self.assert_miner_alive();
    }

    /// No process of the attacking worker survives: not the worker itself, nothing in its
    /// process group, nothing in its own cgroups.
    pub async fn assert_nothing_left(&self, o: &Outcome) {
        let pid = o.worker_pid.unwrap_or(o.idle.pid);
        if o.worker_pid.is_some_and(|p| p != o.idle.pid) {
            note(
                self.name,
                &format!(
                    "the job ran on worker {pid}, not the idle worker {} seen before; its \
                     cgroups were not recorded",
                    o.idle.pid
                ),
            );
        }
        let cgroups = if o.worker_pid.is_none_or(|p| p == o.idle.pid) {
            o.idle.cgroups.clone()
        } else {
            Vec::new()
        };
        if cgroups.is_empty() {
            note(
                self.name,
                "the worker had no cgroup of its own: the cgroup check did not run",
            );
        }
        let miner = self.miner_pid;
        let what = format!(
            "{}: worker {pid} and everything it started to be gone",
            self.name
        );
        wait_for(&what, Duration::from_secs(10), || {
            let cgroups = cgroups.clone();
            async move {
                let mut left: Vec<i32> = group_members(pid);
                if running(pid) && !left.contains(&pid) {
                    left.push(pid);
                }
                // A cgroup reused by the slot's next idle worker may hold that worker only.
                let fresh = children(miner);
                for dir in &cgroups {
                    left.extend(
                        cgroup_members(dir)
                            .into_iter()
                            .filter(|p| !fresh.contains(p)),
                    );
                }
                left.is_empty().then_some(())
            }
        })
        .await;
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Its workers die with it (parent-death signal).
        let _ = self.miner.kill();
        let _ = self.miner.wait();
    }
}

/// The miner's reason and message from a failure: a rig job has one attempt, so the
/// Coordinator records `ATTEMPTS_EXHAUSTED` with "attempt 1 failed (REASON): message; no
/// attempts left" for reasons it would otherwise requeue.
pub fn unwrap_exhausted(reason: FailReason, message: &str) -> (FailReason, String) {
    if reason != FailReason::AttemptsExhausted {
        return (reason, message.to_owned());
    }
    let inner = message
        .split_once(" failed (")
        .and_then(|(_, rest)| rest.split_once("): "));
    match inner {
        Some((code, rest)) => {
            let r = FailReason::ALL
                .into_iter()
                .find(|r| r.as_str() == code)
                .unwrap_or(reason);
            let rest = rest.strip_suffix("; no attempts left").unwrap_or(rest);
            (r, rest.to_owned())
        }
        None => (reason, message.to_owned()),
    }
}

/// Fields of /proc/<pid>/stat after the command name: (state, ppid, pgrp).
fn stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = text.rsplit_once(')')?.1;
    let mut f = after.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// True while `pid` exists and is not a zombie.
/// True once `pid` runs under a seccomp filter (`Seccomp: 2` in its status).
pub fn seccomp_filtered(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"])
}

pub fn running(pid: i32) -> bool {
    matches!(stat(pid), Some((s, _, _)) if s != 'Z')
}

/// Direct children of `pid` (all its threads').
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Every process (zombies included) in process group `pgrp` or whose parent is `pgrp`.
fn group_members(pgrp: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| matches!(stat(p), Some((_, ppid, g)) if g == pgrp || ppid == pgrp))
        .collect()
}

/// `(controllers, path)` for each hierarchy in /proc/<pid>/cgroup.
fn cgroup_of(pid: i32) -> Vec<(String, String)> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// The directory of cgroup `path` in the hierarchy with `controllers` ("" for cgroup v2),
/// found through this process's mount table.
fn cgroup_dir(controllers: &str, path: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4)?;
        let mut r = right.split_whitespace();
        let fstype = r.next()?;
        let _source = r.next();
        let opts: Vec<&str> = r.next().unwrap_or("").split(',').collect();
        let matches = match fstype {
            "cgroup2" => wanted.is_empty(),
            "cgroup" => !wanted.is_empty() && wanted.iter().all(|c| opts.contains(c)),
            _ => false,
        };
        if matches {
            return Some(Path::new(mount_point).join(path.trim_start_matches('/')));
        }
    }
    None
}

/// Pids in a cgroup directory (none once it is removed).
fn cgroup_members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

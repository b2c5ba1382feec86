//! What the running daemon is doing, for its operator: the live record the runtime keeps
//! ([`Status`]), the point-in-time [`Snapshot`] taken from it, and three renderings of a
//! snapshot — JSON (the `status` answer), the classic Prometheus text exposition format (the
//! `metrics` answer and `METRICS_FILE`; not OpenMetrics: no `# EOF`), and the human summary of
//! `aitbc-miner status`.
//!
//! The pure part (snapshot, renderings, request framing, the once-per-change complaint) is
//! unit-tested without sockets. The I/O part is small: [`bind`] and [`StatusServer`] serve the
//! local Unix socket `STATUS_SOCKET` (one request line `status` or `metrics`, one answer, then
//! the connection closes; requests are bounded in size and time), [`metrics_task`] rewrites
//! `METRICS_FILE` atomically, and [`query`] is the client side for the command line.
//!
//! This module must never open a TCP port, never talk to the Coordinator (the runtime fetches
//! the balance and hands it in), never block the runtime on a client, never delete a file it
//! did not create (a stale socket is removed only when nothing answers on it), and never let
//! a bad request or a failed write stop the daemon.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::api::{ts, FailReason, Mode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::config::MAX_SOCKET_PATH;
use crate::Error;

/// The longest request line the socket reads (`metrics` is 7 bytes).
pub const MAX_REQUEST: usize = 64;
/// How long a client has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at the same time; more are told the daemon is busy.
pub const MAX_CLIENTS: usize = 8;
/// The largest answer [`query`] reads.
const MAX_ANSWER: u64 = 4 << 20;

/// What the daemon as a whole is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Fetching and running jobs.
    Running,
    /// Fetching nothing because the GPU reports itself unhealthy (GPU mode only).
    Paused,
    /// Shutting down: no new jobs, running ones may finish within the drain grace.
    Draining,
    /// Stopped (only ever seen in the last `METRICS_FILE` a daemon writes).
    Stopped,
}

impl DaemonState {
    pub const ALL: [DaemonState; 4] = [
        DaemonState::Running,
        DaemonState::Paused,
        DaemonState::Draining,
        DaemonState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DaemonState::Running => "running",
            DaemonState::Paused => "paused",
            DaemonState::Draining => "draining",
            DaemonState::Stopped => "stopped",
        }
    }
}

/// What one job slot is doing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlotState {
    /// No job (its next worker is started ahead, in the background).
    Idle,
    /// A job was handed to the slot; its worker is being taken or started.
    Starting,
    /// The job runs in its worker.
    Busy,
}

impl SlotState {
    pub const ALL: [SlotState; 3] = [SlotState::Idle, SlotState::Starting, SlotState::Busy];

    pub fn as_str(self) -> &'static str {
        match self {
            SlotState::Idle => "idle",
            SlotState::Starting => "starting",
            SlotState::Busy => "busy",
        }
    }
}

/// One slot in a [`Snapshot`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SlotStatus {
    pub index: usize,
    pub state: SlotState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Where the job runs, once its worker has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "ts::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_secs: Option<f64>,
}

/// Failed jobs: the total and how many per reason (reasons with none are left out).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct JobsFailed {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
}

/// The heartbeat as last seen.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct HeartbeatStatus {
    /// When the last heartbeat finished (either way); none yet: `null`.
    #[serde(default, with = "ts::option")]
    pub last_at: Option<OffsetDateTime>,
    /// Whether it was accepted; none yet: `null`.
    pub ok: Option<bool>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last accepted one.
    #[serde(default, with = "ts::option")]
    pub last_ok_at: Option<OffsetDateTime>,
}

/// The wallet's balance as the daemon last fetched it (`GET /v1/wallet/balance`): after each
/// credited proof and every few heartbeats, never because someone asked for the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BalanceStatus {
    /// Integer base units; `null` until a fetch succeeded.
    pub amount: Option<u64>,
    /// Ledger credits behind the balance.
    pub credits: Option<u64>,
    /// When `amount` was fetched.
    #[serde(default, with = "ts::option")]
    pub fetched_at: Option<OffsetDateTime>,
    /// Why the last fetch gave nothing (or why there is no figure yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the daemon is doing, at one instant: the `status` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    pub miner_id: String,
    pub wallet: String,
    pub coordinator: String,
    pub pid: u32,
    #[serde(with = "ts")]
    pub started_at: OffsetDateTime,
    /// When this snapshot was taken.
    #[serde(with = "ts")]
    pub now: OffsetDateTime,
    pub uptime_secs: f64,
    pub state: DaemonState,
    /// Why the daemon is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// Where jobs run: `gpu` or `cpu` (ACCEL_MODE as resolved at start).
    pub accel_mode: Mode,
    pub slots: Vec<SlotStatus>,
    pub jobs_done: u64,
    pub jobs_failed: JobsFailed,
    pub heartbeat: HeartbeatStatus,
    /// Coordinator calls in a row that got no usable answer (reset by the next good one).
    pub coordinator_errors: u64,
    /// Results (proofs and fail reports) written to the spool and not yet delivered.
    pub spool_depth: u64,
    pub balance: BalanceStatus,
}

/// What never changes while the daemon runs.
#[derive(Clone, Debug)]
pub struct Facts {
    pub miner_id: String,
    pub wallet: String,
    pub coordinator: String,
    pub mode: Mode,
    pub slots: usize,
}

#[derive(Clone, Debug)]
struct SlotJob {
    id: String,
    workload: String,
    at: OffsetDateTime,
    since: Instant,
    mode: Option<Mode>,
}

#[derive(Debug)]
struct Live {
    state: DaemonState,
    state_reason: Option<String>,
    slots: Vec<Option<SlotJob>>,
    jobs_done: u64,
    failed: BTreeMap<&'static str, u64>,
    heartbeat: HeartbeatStatus,
    coordinator_errors: u64,
    spool_depth: u64,
    balance: BalanceStatus,
}

/// The daemon's live record: one place, updated by the runtime where slots change, heartbeats
/// finish and results are spooled or delivered; read by the socket, the metrics file and the
/// systemd status line. Every update bumps a [`watch`] counter ([`Status::subscribe`]).
#[derive(Debug)]
pub struct Status {
    facts: Facts,
    pid: u32,
    started_at: OffsetDateTime,
    started: Instant,
    live: Mutex<Live>,
    changed: watch::Sender<u64>,
}

impl Status {
    pub fn new(facts: Facts) -> Arc<Status> {
        let slots = facts.slots;
        Arc::new(Status {
            facts,
            pid: std::process::id(),
            started_at: ts::now(),
            started: Instant::now(),
            live: Mutex::new(Live {
                state: DaemonState::Running,
                state_reason: None,
                slots: vec![None; slots],
                jobs_done: 0,
                failed: BTreeMap::new(),
                heartbeat: HeartbeatStatus::default(),
                coordinator_errors: 0,
                spool_depth: 0,
                balance: BalanceStatus {
                    error: Some("not fetched yet".into()),
                    ..BalanceStatus::default()
                },
            }),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        // A panic while holding the lock leaves plain counters behind: still worth showing.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Live)) {
        f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Paused (with the reason) while the GPU is unhealthy, running otherwise; a draining or
    /// stopped daemon stays so.
    pub fn set_paused(&self, reason: Option<String>) {
        self.update(|l| {
            if matches!(l.state, DaemonState::Running | DaemonState::Paused) {
                l.state = if reason.is_some() {
                    DaemonState::Paused
                } else {
                    DaemonState::Running
                };
                l.state_reason = reason;
            }
        });
    }

    pub fn set_draining(&self) {
        self.update(|l| {
            l.state = DaemonState::Draining;
            l.state_reason = None;
        });
    }

    pub fn set_stopped(&self) {
        self.update(|l| {
            l.state = DaemonState::Stopped;
            l.state_reason = None;
        });
    }

    /// A job was handed to `slot`.
    pub fn slot_starting(&self, slot: usize, job_id: &str, workload: &str) {
        self.update(|l| {
            if let Some(s) = l.slots.get_mut(slot) {
                *s = Some(SlotJob {
                    id: job_id.to_owned(),
                    workload: workload.to_owned(),
                    at: ts::now(),
                    since: Instant::now(),
                    mode: None,
                });
            }
        });
    }

    /// The slot's job runs in a worker of `mode`.
    pub fn slot_busy(&self, slot: usize, mode: Mode) {
        self.update(|l| {
            if let Some(Some(job)) = l.slots.get_mut(slot) {
                job.mode = Some(mode);
            }
        });
    }

    pub fn slot_idle(&self, slot: usize) {
        self.update(|l| {
            if let Some(s) = l.slots.get_mut(slot) {
                *s = None;
            }
        });
    }

    pub fn job_done(&self) {
        self.update(|l| l.jobs_done += 1);
    }

    pub fn job_failed(&self, reason: FailReason) {
        self.update(|l| *l.failed.entry(reason.as_str()).or_default() += 1);
    }

    /// A heartbeat finished: accepted, or refused / unanswered with the error's text.
    pub fn heartbeat(&self, result: Result<(), String>) {
        let now = ts::now();
        self.update(|l| {
            l.heartbeat.last_at = Some(now);
            l.heartbeat.ok = Some(result.is_ok());
            match result {
                Ok(()) => {
                    l.heartbeat.error = None;
                    l.heartbeat.last_ok_at = Some(now);
                }
                Err(e) => l.heartbeat.error = Some(e),
            }
        });
    }

    /// A call to the Coordinator got a usable answer (`true`) or did not.
    pub fn coordinator(&self, answered: bool) {
        self.update(|l| {
            if answered {
                l.coordinator_errors = 0;
            } else {
                l.coordinator_errors = l.coordinator_errors.saturating_add(1);
            }
        });
    }

    /// `n` results were written to the spool (or found there at start).
    pub fn spooled(&self, n: u64) {
        self.update(|l| l.spool_depth = l.spool_depth.saturating_add(n));
    }

    /// One result was delivered (settled) and left the spool.
    pub fn delivered(&self) {
        self.update(|l| l.spool_depth = l.spool_depth.saturating_sub(1));
    }

    /// A balance fetch ended: `(balance, credits)`, or why not. A failure keeps the last
    /// figure (with its time) and adds the error.
    pub fn balance(&self, result: Result<(u64, u64), String>) {
        let now = ts::now();
        self.update(|l| match result {
            Ok((amount, credits)) => {
                l.balance = BalanceStatus {
                    amount: Some(amount),
                    credits: Some(credits),
                    fetched_at: Some(now),
                    error: None,
                }
            }
            Err(e) => l.balance.error = Some(e),
        });
    }

    /// The record as of now.
    pub fn snapshot(&self) -> Snapshot {
        let l = self.lock();
        let slots = l
            .slots
            .iter()
            .enumerate()
            .map(|(index, s)| match s {
                None => SlotStatus {
                    index,
                    state: SlotState::Idle,
                    job_id: None,
                    workload: None,
                    mode: None,
                    started_at: None,
                    elapsed_secs: None,
                },
                Some(job) => SlotStatus {
                    index,
                    state: if job.mode.is_some() {
                        SlotState::Busy
                    } else {
                        SlotState::Starting
                    },
                    job_id: Some(job.id.clone()),
                    workload: Some(job.workload.clone()),
                    mode: job.mode,
                    started_at: Some(job.at),
                    elapsed_secs: Some(millis(job.since.elapsed())),
                },
            })
            .collect();
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            miner_id: self.facts.miner_id.clone(),
            wallet: self.facts.wallet.clone(),
            coordinator: self.facts.coordinator.clone(),
            pid: self.pid,
            started_at: self.started_at,
            now: ts::now(),
            uptime_secs: millis(self.started.elapsed()),
            state: l.state,
            state_reason: l.state_reason.clone(),
            accel_mode: self.facts.mode,
            slots,
            jobs_done: l.jobs_done,
            jobs_failed: JobsFailed {
                total: l.failed.values().sum(),
                by_reason: l
                    .failed
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
            },
            heartbeat: l.heartbeat.clone(),
            coordinator_errors: l.coordinator_errors,
            spool_depth: l.spool_depth,
            balance: l.balance.clone(),
        }
    }
}

/// Seconds with millisecond precision.
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

// ---------------------------------------------------------------------------------------------
// Renderings (pure).

/// A label value or HELP text escaped for the Prometheus text format: `\` and newline always,
/// `"` in label values only.
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

/// Seconds since the epoch with milliseconds, exactly (no floating point).
fn unix_secs(t: OffsetDateTime) -> String {
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// The classic text exposition format, one family at a time.
#[derive(Default)]
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v, true));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: &str) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The snapshot as Prometheus metrics, in the classic text format (what node_exporter's textfile
/// collector reads): `# HELP` and `# TYPE` before each family, counters end in `_total`, times
/// are Unix seconds, no timestamps on samples and no `# EOF`. Families with nothing to say yet
/// (no heartbeat, no balance) are left out rather than shown as 0.
pub fn render_metrics(s: &Snapshot) -> String {
    let mut p = Exposition::default();
    p.family(
        "aitbc_miner_info",
        "gauge",
        "Always 1; the labels say which miner this is.",
    );
    p.sample(
        "aitbc_miner_info",
        &[
            ("version", &s.version),
            ("miner_id", &s.miner_id),
            ("wallet", &s.wallet),
            ("mode", s.accel_mode.as_str()),
        ],
        "1",
    );
    p.single(
        "aitbc_miner_start_time_seconds",
        "gauge",
        "When the daemon started, in Unix seconds.",
        &unix_secs(s.started_at),
    );
    p.family(
        "aitbc_miner_state",
        "gauge",
        "1 for the daemon's current state, 0 for the others (paused: the GPU is unhealthy).",
    );
    for state in DaemonState::ALL {
        let v = if state == s.state { "1" } else { "0" };
        p.sample("aitbc_miner_state", &[("state", state.as_str())], v);
    }
    p.family(
        "aitbc_miner_slots",
        "gauge",
        "Job slots by what they are doing.",
    );
    for state in SlotState::ALL {
        let n = s.slots.iter().filter(|x| x.state == state).count();
        p.sample(
            "aitbc_miner_slots",
            &[("state", state.as_str())],
            &n.to_string(),
        );
    }
    p.family(
        "aitbc_miner_slot_job_seconds",
        "gauge",
        "How long the slot's current job has run (0 when the slot is idle).",
    );
    for slot in &s.slots {
        p.sample(
            "aitbc_miner_slot_job_seconds",
            &[("slot", &slot.index.to_string())],
            &format!("{:.3}", slot.elapsed_secs.unwrap_or(0.0)),
        );
    }
    p.single(
        "aitbc_miner_jobs_done_total",
        "counter",
        "Jobs whose proof was produced and spooled since the daemon started.",
        &s.jobs_done.to_string(),
    );
    p.family(
        "aitbc_miner_jobs_failed_total",
        "counter",
        "Jobs reported as failed since the daemon started, by reason.",
    );
    for reason in FailReason::ALL {
        let n = s
            .jobs_failed
            .by_reason
            .get(reason.as_str())
            .copied()
            .unwrap_or(0);
        p.sample(
            "aitbc_miner_jobs_failed_total",
            &[("reason", reason.as_str())],
            &n.to_string(),
        );
    }
    if let (Some(at), Some(ok)) = (s.heartbeat.last_at, s.heartbeat.ok) {
        p.single(
            "aitbc_miner_heartbeat_last_timestamp_seconds",
            "gauge",
            "When the last heartbeat finished, accepted or not, in Unix seconds.",
            &unix_secs(at),
        );
        p.single(
            "aitbc_miner_heartbeat_ok",
            "gauge",
            "1 when the last heartbeat was accepted by the Coordinator, else 0.",
            if ok { "1" } else { "0" },
        );
    }
    if let Some(at) = s.heartbeat.last_ok_at {
        p.single(
            "aitbc_miner_heartbeat_last_success_timestamp_seconds",
            "gauge",
            "When the Coordinator last accepted a heartbeat, in Unix seconds.",
            &unix_secs(at),
        );
    }
    p.single(
        "aitbc_miner_coordinator_consecutive_errors",
        "gauge",
        "Coordinator calls in a row that got no usable answer.",
        &s.coordinator_errors.to_string(),
    );
    p.single(
        "aitbc_miner_spool_entries",
        "gauge",
        "Results (proofs and fail reports) in the spool, not yet delivered to the Coordinator.",
        &s.spool_depth.to_string(),
    );
    if let (Some(amount), Some(at)) = (s.balance.amount, s.balance.fetched_at) {
        p.family(
            "aitbc_miner_wallet_balance",
            "gauge",
            "The wallet's balance in base units, as last fetched from the Coordinator.",
        );
        p.sample(
            "aitbc_miner_wallet_balance",
            &[("wallet", &s.wallet)],
            &amount.to_string(),
        );
        p.single(
            "aitbc_miner_wallet_balance_timestamp_seconds",
            "gauge",
            "When the balance was fetched, in Unix seconds.",
            &unix_secs(at),
        );
    }
    p.out
}

/// A duration the way people read it: `950ms`, `42s`, `3m 07s`, `5h 02m`, `2d 03h`.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `5s ago` from the snapshot's own clock.
fn ago(now: OffsetDateTime, then: OffsetDateTime) -> String {
    let secs = (now - then).as_seconds_f64().max(0.0);
    format!("{} ago", human_duration(secs))
}

fn state_text(s: &Snapshot) -> String {
    match (&s.state, &s.state_reason) {
        (DaemonState::Paused, Some(why)) => format!("paused ({why})"),
        (state, _) => state.as_str().to_owned(),
    }
}

fn failed_text(f: &JobsFailed) -> String {
    if f.by_reason.is_empty() {
        return format!("{} failed", f.total);
    }
    let reasons: Vec<String> = f
        .by_reason
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    format!("{} failed ({})", f.total, reasons.join(", "))
}

fn heartbeat_text(s: &Snapshot) -> String {
    match (&s.heartbeat.last_at, s.heartbeat.ok) {
        (Some(at), Some(true)) => format!("ok, {}", ago(s.now, *at)),
        (Some(at), Some(false)) => {
            let last_ok = match s.heartbeat.last_ok_at {
                Some(t) => format!("last accepted {}", ago(s.now, t)),
                None => "never accepted yet".into(),
            };
            format!(
                "FAILING, {}: {} ({last_ok})",
                ago(s.now, *at),
                s.heartbeat.error.as_deref().unwrap_or("unknown error")
            )
        }
        _ => "none yet".into(),
    }
}

/// The human summary `aitbc-miner status` prints.
pub fn render_summary(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "aitbc-miner {} (pid {}): {}, {}",
        s.version,
        s.pid,
        state_text(s),
        s.accel_mode.as_str()
    );
    let _ = writeln!(o, "  miner        {} (wallet {})", s.miner_id, s.wallet);
    let _ = writeln!(
        o,
        "  up           {} (since {})",
        human_duration(s.uptime_secs),
        s.started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    let _ = writeln!(o, "  coordinator  {}", s.coordinator);
    let _ = writeln!(o, "  heartbeat    {}", heartbeat_text(s));
    let _ = writeln!(
        o,
        "  errors       {} coordinator call(s) in a row without an answer",
        s.coordinator_errors
    );
    let busy = s
        .slots
        .iter()
        .filter(|x| x.state != SlotState::Idle)
        .count();
    let _ = writeln!(o, "  slots        {} ({busy} busy)", s.slots.len());
    for slot in &s.slots {
        let what = match (&slot.job_id, slot.state) {
            (Some(id), state) => format!(
                "{}: job {id} ({}{}) for {}",
                state.as_str(),
                slot.workload.as_deref().unwrap_or("?"),
                slot.mode
                    .map(|m| format!(", {}", m.as_str()))
                    .unwrap_or_default(),
                human_duration(slot.elapsed_secs.unwrap_or(0.0))
            ),
            (None, state) => state.as_str().to_owned(),
        };
        let _ = writeln!(o, "    slot {:<6}{what}", slot.index);
    }
    let _ = writeln!(
        o,
        "  jobs         {} done, {}",
        s.jobs_done,
        failed_text(&s.jobs_failed)
    );
    let _ = writeln!(
        o,
        "  spool        {} result(s) waiting to be delivered",
        s.spool_depth
    );
    let balance = match (s.balance.amount, s.balance.fetched_at) {
        (Some(amount), Some(at)) => {
            let mut b = format!(
                "{amount} ({} credits), fetched {}",
                s.balance.credits.unwrap_or(0),
                ago(s.now, at)
            );
            if let Some(e) = &s.balance.error {
                let _ = write!(b, "; the last fetch failed: {e}");
            }
            b
        }
        _ => format!(
            "unknown ({})",
            s.balance.error.as_deref().unwrap_or("not fetched yet")
        ),
    };
    let _ = writeln!(o, "  balance      {balance}");
    o
}

/// One line for systemd's `STATUS=` (what `systemctl status` shows): only what changes with
/// events, no clock, so it is resent only when something happened.
pub fn status_line(s: &Snapshot) -> String {
    let busy = s
        .slots
        .iter()
        .filter(|x| x.state != SlotState::Idle)
        .count();
    let heartbeat = match s.heartbeat.ok {
        Some(true) => "ok",
        Some(false) => "failing",
        None => "pending",
    };
    format!(
        "{}: {busy}/{} slots busy, {} done, {} failed, spool {}, heartbeat {heartbeat}",
        state_text(s),
        s.slots.len(),
        s.jobs_done,
        s.jobs_failed.total,
        s.spool_depth,
    )
}

// ---------------------------------------------------------------------------------------------
// The request line (pure).

/// What a client may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The JSON [`Snapshot`].
    Status,
    /// [`render_metrics`].
    Metrics,
}

impl Request {
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Metrics => "metrics",
        }
    }
}

/// Whether a whole request is buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// No newline yet and the client may send more.
    Incomplete,
    /// The line, without its newline (or all that came before the client closed).
    Line(&'a [u8]),
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLong,
}

/// Looks for the request line in what was read so far; `eof` when the client closed.
pub fn frame(buf: &[u8], eof: bool) -> Framed<'_> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) if i <= MAX_REQUEST => Framed::Line(&buf[..i]),
        Some(_) => Framed::TooLong,
        None if buf.len() > MAX_REQUEST => Framed::TooLong,
        None if eof => Framed::Line(buf),
        None => Framed::Incomplete,
    }
}

/// Parses a request line (surrounding blanks and a trailing `\r` are ignored).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = String::from_utf8_lossy(line);
    match text.trim() {
        "status" => Ok(Request::Status),
        "metrics" => Ok(Request::Metrics),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(format!(
                "unknown request {shown:?}; send one line: status or metrics"
            ))
        }
    }
}

/// The answer to a request.
pub fn answer(status: &Status, request: Result<Request, String>) -> String {
    match request {
        Ok(Request::Status) => match serde_json::to_string(&status.snapshot()) {
            Ok(json) => json + "\n",
            Err(e) => format!("error: the snapshot does not serialise: {e}\n"),
        },
        Ok(Request::Metrics) => render_metrics(&status.snapshot()),
        Err(message) => format!("error: {message}\n"),
    }
}

/// Tells each new failure once, and the recovery once: for a periodic task whose failures
/// must be seen but must not fill the log.
#[derive(Debug, Default)]
pub struct Complaint {
    last: Option<String>,
}

/// What [`Complaint::note`] says to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// A failure different from the last one.
    Failed(String),
    /// Success after a failure.
    Recovered,
}

impl Complaint {
    pub fn note(&mut self, result: Result<(), String>) -> Option<Note> {
        match result {
            Ok(()) => self.last.take().map(|_| Note::Recovered),
            Err(e) if self.last.as_deref() == Some(e.as_str()) => None,
            Err(e) => {
                self.last = Some(e.clone());
                Some(Note::Failed(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The socket (I/O).

/// Identifies the socket file this daemon bound, so it removes only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Connects to the Unix socket `path` without waiting: a listener whose backlog is full (one
/// that accepts nothing) is `WouldBlock` at once instead of a hang. The stream is blocking.
fn connect(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Binds the status socket at `path`, mode 0600: the socket is bound under a temporary name
/// in the same directory, restricted, then renamed into place, so it is never reachable with
/// looser permissions. An existing socket file is replaced only when nothing answers on it
/// (a stale one from a crash); anything else in the way (another daemon answering, a file
/// that is not a socket, a missing directory) is an error that names the fix — the caller
/// warns and runs without the socket.
pub fn bind(path: &Path) -> Result<StatusListener, Error> {
    let fail = |message: String| Error::StatusSocket {
        path: path.to_owned(),
        message,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Err(fail("no directory in the path".into())),
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "directory {} does not exist (systemd creates /run/aitbc-miner through \
             RuntimeDirectory=aitbc-miner); running without a status socket",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("cannot inspect it: {e}"))),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail(
                "something that is not a socket is in the way; it is left alone (remove it \
                 or set STATUS_SOCKET elsewhere)"
                    .into(),
            ))
        }
        Ok(_) => match connect(path) {
            Ok(_) => {
                return Err(fail(
                    "another process answers on it (a second miner?); running without a \
                     status socket (give each miner its own STATUS_SOCKET)"
                        .into(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(fail(
                    "another process listens on it but accepts nothing (a wedged miner?); \
                     running without a status socket"
                        .into(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Stale: a socket file nobody listens on.
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
            }
            Err(e) => {
                return Err(fail(format!(
                    "cannot tell whether the socket there is in use ({e}); it is left alone"
                )))
            }
        },
    }
    // The temporary name must fit a socket address too; when it does not (a directory path
    // near the limit), the socket is bound in place and restricted at once, guarded meanwhile
    // by its directory alone.
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let at = if tmp.as_os_str().len() <= MAX_SOCKET_PATH {
        tmp.as_path()
    } else {
        path
    };
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(at)
        .map_err(|e| fail(format!("cannot bind {}: {e}", at.display())))?;
    let mut placed = std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600));
    if at != path {
        placed = placed.and_then(|()| std::fs::rename(at, path));
    }
    if let Err(e) = placed {
        let _ = std::fs::remove_file(at);
        return Err(fail(format!("cannot put the socket in place: {e}")));
    }
    let id = file_id(path).ok_or_else(|| fail("the socket vanished after binding".into()))?;
    Ok(StatusListener {
        listener,
        path: path.to_owned(),
        id,
    })
}

/// A bound status socket, not yet served.
#[derive(Debug)]
pub struct StatusListener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    id: FileId,
}

impl StatusListener {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `status` until [`StatusServer::shutdown`].
    pub fn serve(self, status: Arc<Status>) -> StatusServer {
        let (stop, stopped) = watch::channel(false);
        let StatusListener { listener, path, id } = self;
        let task = tokio::spawn(accept_loop(listener, status, stopped));
        StatusServer {
            path,
            id,
            stop,
            task,
        }
    }
}

/// The running status socket.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
    id: FileId,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    /// Stops accepting and removes the socket file, if it is still the one this daemon bound.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if file_id(&self.path) == Some(self.id) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!("removing the status socket {}: {e}", self.path.display());
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    status: Arc<Status>,
    mut stopped: watch::Receiver<bool>,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut complaint = Complaint::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = complaint.note(Ok(()));
                let permit = clients.clone().try_acquire_owned().ok();
                let status = status.clone();
                tokio::spawn(async move {
                    match permit {
                        Some(_permit) => serve_one(stream, &status).await,
                        None => {
                            reply(stream, "error: busy, try again\n").await;
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: say so once, pause a little, keep serving.
                if let Some(Note::Failed(m)) = complaint.note(Err(e.to_string())) {
                    warn!("status socket: accept failed: {m}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_one(mut stream: tokio::net::UnixStream, status: &Status) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err(format!(
            "no request line within {READ_TIMEOUT:?}; send one line: status or metrics"
        )),
    };
    let text = answer(status, request);
    reply(stream, &text).await;
}

/// Writes the answer and closes. What the client sent beyond its request is read and dropped
/// first (at most 64 KiB, within the time bound): closing a Unix socket with unread input
/// resets it, and the client would lose the answer.
async fn reply(mut stream: tokio::net::UnixStream, text: &str) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> io::Result<Result<Request, String>> {
    let mut buf = Vec::with_capacity(MAX_REQUEST + 1);
    let mut chunk = [0u8; MAX_REQUEST + 1];
    let mut eof = false;
    loop {
        match frame(&buf, eof) {
            Framed::Line(line) => return Ok(parse_request(line)),
            Framed::TooLong => {
                return Ok(Err(format!(
                    "request longer than {MAX_REQUEST} bytes; send one line: status or metrics"
                )))
            }
            Framed::Incomplete => {}
        }
        let n = stream.read(&mut chunk).await?;
        eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asks the daemon at `path` (blocking; for the command line): the JSON snapshot or the
/// metrics text.
pub fn query(path: &Path, request: Request, timeout: Duration) -> Result<String, Error> {
    let unreachable = |source| Error::StatusUnreachable {
        path: path.to_owned(),
        source,
    };
    let bad = |message: String| Error::StatusReply {
        path: path.to_owned(),
        message,
    };
    let mut stream = connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(unreachable)?;
    stream
        .write_all(format!("{}\n", request.as_str()).as_bytes())
        .map_err(|e| bad(format!("sending the request: {e}")))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| bad(format!("reading the answer: {e}")))?;
    let text = String::from_utf8(answer).map_err(|_| bad("the answer is not UTF-8".into()))?;
    if let Some(e) = text.strip_prefix("error: ") {
        return Err(bad(e.trim_end().to_owned()));
    }
    if text.is_empty() {
        return Err(bad("an empty answer".into()));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// The metrics file (I/O).

/// Writes `text` to `path` atomically: a temporary file beside it (dot-prefixed and not ending
/// in `.prom`, so the textfile collector skips it), mode 0644 (node_exporter runs as another
/// user), fsync, rename. A reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let fail = |source| Error::MetricsFile {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::other("no file name")))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask (UMask=0077 under systemd) would leave it 0600.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Rewrites `path` from `status` every `every`, and once more when `stop` is raised (so the
/// last file shows the final state). A failure is logged once per change, never fatal.
pub async fn metrics_task(
    path: PathBuf,
    every: Duration,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut complaint = Complaint::default();
    loop {
        let stopping = *stop.borrow();
        let text = render_metrics(&status.snapshot());
        let p = path.clone();
        let result = match tokio::task::spawn_blocking(move || write_atomically(&p, &text)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the metrics writer failed: {e}")),
        };
        match complaint.note(result) {
            Some(Note::Failed(m)) => warn!("{m}; the metrics file is retried every {every:?}"),
            Some(Note::Recovered) => info!("METRICS_FILE {} written again", path.display()),
            None => {}
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            miner_id: "node7-cpu0".into(),
            wallet: "wallet \"a\"\\b\nc".into(),
            coordinator: "http://127.0.0.1:8080".into(),
            pid: 4242,
            started_at: datetime!(2026-01-02 03:04:05.678 UTC),
            now: datetime!(2026-01-02 04:04:15.678 UTC),
            uptime_secs: 3610.0,
            state: DaemonState::Running,
            state_reason: None,
            accel_mode: Mode::Cpu,
            slots: vec![
                SlotStatus {
                    index: 0,
                    state: SlotState::Busy,
                    job_id: Some("job-1".into()),
                    workload: Some("torch_bench".into()),
                    mode: Some(Mode::Cpu),
                    started_at: Some(datetime!(2026-01-02 04:04:13.178 UTC)),
                    elapsed_secs: Some(2.5),
                },
                SlotStatus {
                    index: 1,
                    state: SlotState::Idle,
                    job_id: None,
                    workload: None,
                    mode: None,
                    started_at: None,
                    elapsed_secs: None,
                },
            ],
            jobs_done: 7,
            jobs_failed: JobsFailed {
                total: 2,
                by_reason: [("TIMED_OUT".to_owned(), 2)].into(),
            },
            heartbeat: HeartbeatStatus {
                last_at: Some(datetime!(2026-01-02 04:04:10 UTC)),
                ok: Some(true),
                error: None,
                last_ok_at: Some(datetime!(2026-01-02 04:04:10 UTC)),
            },
            coordinator_errors: 0,
            spool_depth: 1,
            balance: BalanceStatus {
                amount: Some(700),
                credits: Some(7),
                fetched_at: Some(datetime!(2026-01-02 04:03:55.678 UTC)),
                error: None,
            },
        }
    }

    #[test]
    fn metrics_are_the_classic_text_format_exactly() {
        let want = r#"# HELP aitbc_miner_info Always 1; the labels say which miner this is.
# TYPE aitbc_miner_info gauge
aitbc_miner_info{version="0.1.0",miner_id="node7-cpu0",wallet="wallet \"a\"\\b\nc",mode="cpu"} 1
# HELP aitbc_miner_start_time_seconds When the daemon started, in Unix seconds.
# TYPE aitbc_miner_start_time_seconds gauge
aitbc_miner_start_time_seconds 1767323045.678
# HELP aitbc_miner_state 1 for the daemon's current state, 0 for the others (paused: the GPU is unhealthy).
# TYPE aitbc_miner_state gauge
aitbc_miner_state{state="running"} 1
aitbc_miner_state{state="paused"} 0
aitbc_miner_state{state="draining"} 0
aitbc_miner_state{state="stopped"} 0
# HELP aitbc_miner_slots Job slots by what they are doing.
# TYPE aitbc_miner_slots gauge
aitbc_miner_slots{state="idle"} 1
aitbc_miner_slots{state="starting"} 0
aitbc_miner_slots{state="busy"} 1
# HELP aitbc_miner_slot_job_seconds How long the slot's current job has run (0 when the slot is idle).
# TYPE aitbc_miner_slot_job_seconds gauge
aitbc_miner_slot_job_seconds{slot="0"} 2.500
aitbc_miner_slot_job_seconds{slot="1"} 0.000
# HELP aitbc_miner_jobs_done_total Jobs whose proof was produced and spooled since the daemon started.
# TYPE aitbc_miner_jobs_done_total counter
aitbc_miner_jobs_done_total 7
# HELP aitbc_miner_jobs_failed_total Jobs reported as failed since the daemon started, by reason.
# TYPE aitbc_miner_jobs_failed_total counter
aitbc_miner_jobs_failed_total{reason="WORKER_CRASHED"} 0
aitbc_miner_jobs_failed_total{reason="TIMED_OUT"} 2
aitbc_miner_jobs_failed_total{reason="SANDBOX_VIOLATION"} 0
aitbc_miner_jobs_failed_total{reason="CAPS_REFUSED"} 0
aitbc_miner_jobs_failed_total{reason="UNKNOWN_WORKLOAD"} 0
aitbc_miner_jobs_failed_total{reason="BAD_PARAMS"} 0
aitbc_miner_jobs_failed_total{reason="OUT_OF_MEMORY"} 0
aitbc_miner_jobs_failed_total{reason="PROTOCOL_ERROR"} 0
aitbc_miner_jobs_failed_total{reason="MINER_SHUTDOWN"} 0
aitbc_miner_jobs_failed_total{reason="ATTEMPTS_EXHAUSTED"} 0
aitbc_miner_jobs_failed_total{reason="INTERNAL"} 0
# HELP aitbc_miner_heartbeat_last_timestamp_seconds When the last heartbeat finished, accepted or not, in Unix seconds.
# TYPE aitbc_miner_heartbeat_last_timestamp_seconds gauge
aitbc_miner_heartbeat_last_timestamp_seconds 1767326650.000
# HELP aitbc_miner_heartbeat_ok 1 when the last heartbeat was accepted by the Coordinator, else 0.
# TYPE aitbc_miner_heartbeat_ok gauge
aitbc_miner_heartbeat_ok 1
# HELP aitbc_miner_heartbeat_last_success_timestamp_seconds When the Coordinator last accepted a heartbeat, in Unix seconds.
# TYPE aitbc_miner_heartbeat_last_success_timestamp_seconds gauge
aitbc_miner_heartbeat_last_success_timestamp_seconds 1767326650.000
# HELP aitbc_miner_coordinator_consecutive_errors Coordinator calls in a row that got no usable answer.
# TYPE aitbc_miner_coordinator_consecutive_errors gauge
aitbc_miner_coordinator_consecutive_errors 0
# HELP aitbc_miner_spool_entries Results (proofs and fail reports) in the spool, not yet delivered to the Coordinator.
# TYPE aitbc_miner_spool_entries gauge
aitbc_miner_spool_entries 1
# HELP aitbc_miner_wallet_balance The wallet's balance in base units, as last fetched from the Coordinator.
# TYPE aitbc_miner_wallet_balance gauge
aitbc_miner_wallet_balance{wallet="wallet \"a\"\\b\nc"} 700
# HELP aitbc_miner_wallet_balance_timestamp_seconds When the balance was fetched, in Unix seconds.
# TYPE aitbc_miner_wallet_balance_timestamp_seconds gauge
aitbc_miner_wallet_balance_timestamp_seconds 1767326635.678
"#;
        let got = render_metrics(&sample());
        for (i, (g, w)) in got.lines().zip(want.lines()).enumerate() {
            assert_eq!(g, w, "line {}", i + 1);
        }
        assert_eq!(got, want);
        assert!(!got.contains("# EOF"), "classic format, not OpenMetrics");
    }

    #[test]
    fn metrics_leave_out_what_is_not_known_yet() {
        let mut s = sample();
        s.heartbeat = HeartbeatStatus::default();
        s.balance = BalanceStatus {
            error: Some("not fetched yet".into()),
            ..BalanceStatus::default()
        };
        let text = render_metrics(&s);
        for absent in ["heartbeat_", "wallet_balance"] {
            assert!(!text.contains(absent), "{absent} in:\n{text}");
        }
        // A failed heartbeat after a good one: ok 0, the success time stays.
        let mut s = sample();
        s.heartbeat.ok = Some(false);
        s.heartbeat.error = Some("no answer".into());
        let text = render_metrics(&s);
        assert!(text.contains("\naitbc_miner_heartbeat_ok 0\n"), "{text}");
        assert!(text.contains("\naitbc_miner_heartbeat_last_success_timestamp_seconds "));
    }

    #[test]
    fn escaping_follows_the_text_format() {
        assert_eq!(escape("a\\b\"c\nd", true), "a\\\\b\\\"c\\nd");
        assert_eq!(escape("a\\b\"c\nd", false), "a\\\\b\"c\\nd");
        assert_eq!(escape("plain é", true), "plain é");
    }

    #[test]
    fn unix_seconds_are_exact_even_before_1970() {
        assert_eq!(unix_secs(datetime!(1970-01-01 00:00:01.5 UTC)), "1.500");
        assert_eq!(unix_secs(datetime!(1969-12-31 23:59:59.25 UTC)), "-0.750");
        assert_eq!(
            unix_secs(datetime!(2026-01-02 03:04:05.678 UTC)),
            "1767323045.678"
        );
    }

    #[test]
    fn the_snapshot_round_trips_as_json() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"state\":\"running\""), "{json}");
        assert!(
            json.contains("\"started_at\":\"2026-01-02T03:04:05.678Z\""),
            "{json}"
        );
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn the_summary_says_what_an_operator_asks() {
        let text = render_summary(&sample());
        let want = "aitbc-miner 0.1.0 (pid 4242): running, cpu
  miner        node7-cpu0 (wallet wallet \"a\"\\b
c)
  up           1h 00m (since 2026-01-02T03:04:05.678Z)
  coordinator  http://127.0.0.1:8080
  heartbeat    ok, 5s ago
  errors       0 coordinator call(s) in a row without an answer
  slots        2 (1 busy)
    slot 0     busy: job job-1 (torch_bench, cpu) for 2s
    slot 1     idle
  jobs         7 done, 2 failed (TIMED_OUT 2)
  spool        1 result(s) waiting to be delivered
  balance      700 (7 credits), fetched 20s ago
";
        assert_eq!(text, want);

        let mut s = sample();
        s.state = DaemonState::Paused;
        s.state_reason = Some("GPU unhealthy: temperature 93 °C".into());
        s.heartbeat.ok = Some(false);
        s.heartbeat.error = Some("no answer: connection refused".into());
        s.balance = BalanceStatus {
            error: Some("not fetched yet".into()),
            ..BalanceStatus::default()
        };
        let text = render_summary(&s);
        assert!(text.starts_with(
            "aitbc-miner 0.1.0 (pid 4242): paused (GPU unhealthy: temperature 93 °C), cpu\n"
        ));
        assert!(text.contains(
            "  heartbeat    FAILING, 5s ago: no answer: connection refused (last accepted 5s ago)\n"
        ));
        assert!(
            text.contains("  balance      unknown (not fetched yet)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_status_line_changes_only_with_events() {
        let s = sample();
        assert_eq!(
            status_line(&s),
            "running: 1/2 slots busy, 7 done, 2 failed, spool 1, heartbeat ok"
        );
        let mut later = s.clone();
        later.now = datetime!(2026-01-02 05:00:00 UTC);
        later.uptime_secs += 3000.0;
        later.slots[0].elapsed_secs = Some(99.0);
        assert_eq!(status_line(&later), status_line(&s));
    }

    #[test]
    fn human_durations() {
        for (secs, want) in [
            (0.25, "250ms"),
            (42.9, "42s"),
            (187.0, "3m 07s"),
            (18_120.0, "5h 02m"),
            (183_600.0, "2d 03h"),
            (-1.0, "?"),
            (f64::NAN, "?"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn requests_are_framed_and_bounded() {
        assert_eq!(frame(b"", false), Framed::Incomplete);
        assert_eq!(frame(b"stat", false), Framed::Incomplete);
        assert_eq!(frame(b"status\n", false), Framed::Line(b"status"));
        assert_eq!(frame(b"status\nmore", false), Framed::Line(b"status"));
        assert_eq!(frame(b"metrics", true), Framed::Line(b"metrics"));
        assert_eq!(frame(&[b'x'; MAX_REQUEST + 1], false), Framed::TooLong);
        let mut long = vec![b'x'; MAX_REQUEST + 1];
        long.push(b'\n');
        assert_eq!(frame(&long, false), Framed::TooLong);
        let mut edge = vec![b'x'; MAX_REQUEST];
        edge.push(b'\n');
        assert_eq!(frame(&edge, false), Framed::Line(&edge[..MAX_REQUEST]));

        assert_eq!(parse_request(b"status"), Ok(Request::Status));
        assert_eq!(parse_request(b" metrics\r"), Ok(Request::Metrics));
        let e = parse_request(b"STATUS").unwrap_err();
        assert_eq!(
            e,
            "unknown request \"STATUS\"; send one line: status or metrics"
        );
        let e = parse_request(&[0xff, b'\n']).unwrap_err();
        assert!(e.starts_with("unknown request"), "{e}");
    }

    #[test]
    fn a_complaint_is_logged_once_per_change() {
        let mut c = Complaint::default();
        assert_eq!(c.note(Ok(())), None);
        assert_eq!(
            c.note(Err("EACCES".into())),
            Some(Note::Failed("EACCES".into()))
        );
        assert_eq!(c.note(Err("EACCES".into())), None);
        assert_eq!(
            c.note(Err("ENOSPC".into())),
            Some(Note::Failed("ENOSPC".into()))
        );
        assert_eq!(c.note(Ok(())), Some(Note::Recovered));
        assert_eq!(c.note(Ok(())), None);
    }

    #[test]
    fn the_live_record_tracks_slots_jobs_and_state() {
        let status = Status::new(Facts {
            miner_id: "m".into(),
            wallet: "w".into(),
            coordinator: "http://c".into(),
            mode: Mode::Cpu,
            slots: 2,
        });
        let mut rx = status.subscribe();
        status.slot_starting(1, "j1", "torch_bench");
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let s = status.snapshot();
        assert_eq!(s.slots[1].state, SlotState::Starting);
        assert_eq!(s.slots[1].job_id.as_deref(), Some("j1"));
        status.slot_busy(1, Mode::Cpu);
        assert_eq!(status.snapshot().slots[1].state, SlotState::Busy);
        status.slot_starting(7, "out of range", "x");
        status.slot_idle(1);
        status.job_done();
        status.job_failed(FailReason::TimedOut);
        status.job_failed(FailReason::TimedOut);
        status.job_failed(FailReason::OutOfMemory);
        status.spooled(3);
        status.delivered();
        status.delivered();
        status.delivered();
        status.delivered();
        status.coordinator(false);
        status.coordinator(false);
        status.heartbeat(Err("no answer".into()));
        let s = status.snapshot();
        assert!(s.slots.iter().all(|x| x.state == SlotState::Idle));
        assert_eq!(s.jobs_done, 1);
        assert_eq!(s.jobs_failed.total, 3);
        assert_eq!(s.jobs_failed.by_reason["TIMED_OUT"], 2);
        assert_eq!(s.spool_depth, 0, "never below zero");
        assert_eq!(s.coordinator_errors, 2);
        assert_eq!(s.heartbeat.ok, Some(false));
        assert_eq!(s.heartbeat.last_ok_at, None);
        assert_eq!(s.balance.amount, None);
        assert_eq!(s.balance.error.as_deref(), Some("not fetched yet"));

        status.balance(Ok((42, 1)));
        status.balance(Err("HTTP 503".into()));
        let s = status.snapshot();
        assert_eq!((s.balance.amount, s.balance.credits), (Some(42), Some(1)));
        assert!(s.balance.fetched_at.is_some());
        assert_eq!(s.balance.error.as_deref(), Some("HTTP 503"));

        status.set_paused(Some("GPU unhealthy".into()));
        assert_eq!(status.snapshot().state, DaemonState::Paused);
        status.set_paused(None);
        assert_eq!(status.snapshot().state, DaemonState::Running);
        status.set_draining();
        status.set_paused(Some("late reading".into()));
        let s = status.snapshot();
        assert_eq!((s.state, s.state_reason), (DaemonState::Draining, None));
    }

    #[tokio::test]
    async fn the_socket_answers_refuses_bad_requests_and_cleans_up() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        // A stale socket file (bound, then its listener dropped) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let status = Status::new(Facts {
            miner_id: "m".into(),
            wallet: "w".into(),
            coordinator: "http://c".into(),
            mode: Mode::Cpu,
            slots: 1,
        });
        let server = bind(&path).unwrap().serve(status.clone());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A second daemon must not take it over while this one answers.
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another process answers on it"), "{err}");

        let p = path.clone();
        let json =
            tokio::task::spawn_blocking(move || query(&p, Request::Status, Duration::from_secs(5)))
                .await
                .unwrap()
                .unwrap();
        let snap: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(snap.miner_id, "m");
        let p = path.clone();
        let metrics = tokio::task::spawn_blocking(move || {
            query(&p, Request::Metrics, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert!(metrics.starts_with("# HELP aitbc_miner_info "), "{metrics}");

        // A bad request gets one error line; an endless one is cut off; the server goes on.
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"gimme\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(
            out,
            "error: unknown request \"gimme\"; send one line: status or metrics\n"
        );
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = s.write_all(&[b'a'; 10_000]).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(
            out.starts_with("error: request longer than 64 bytes"),
            "{out}"
        );
        let p = path.clone();
        let err = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"bogus\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(err.starts_with("error: "), "{err}");
        assert!(status.snapshot().miner_id == "m");

        server.shutdown().await;
        assert!(!path.exists(), "the socket file is removed at shutdown");
        let err = query(&path, Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::StatusUnreachable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("systemctl status aitbc-miner"), "{text}");
    }

    #[tokio::test]
    async fn bind_leaves_what_is_not_its_own_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let err = bind(&dir.path().join("missing/status.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("running without a status socket"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_path_at_the_length_limit_still_binds_0600() {
        let dir = tempfile::tempdir().unwrap();
        let room = 107 - dir.path().as_os_str().len() - "/s".len() - 1;
        let deep = dir.path().join("d".repeat(room));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join("s");
        assert_eq!(
            path.as_os_str().len(),
            107,
            "the longest path STATUS_SOCKET accepts"
        );
        let server = bind(&path).unwrap().serve(Status::new(Facts {
            miner_id: "m".into(),
            wallet: "w".into(),
            coordinator: "http://c".into(),
            mode: Mode::Cpu,
            slots: 1,
        }));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || {
            query(&p, Request::Metrics, Duration::from_secs(5))
        })
        .await
        .unwrap()
        .unwrap();
        assert!(answer.contains("aitbc_miner_info"));
        server.shutdown().await;
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0);
    }

    #[test]
    fn the_metrics_file_is_replaced_whole_and_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aitbc_miner.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["aitbc_miner.prom"], "no temporary file is left");
        let err = write_atomically(&dir.path().join("missing/m.prom"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("METRICS_FILE "), "{err}");
        assert!(err.contains("missing/m.prom"), "{err}");
    }
}

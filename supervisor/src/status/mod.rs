//! What the running daemon is doing, for its operator: the live record the runtime keeps
//! ([`Status`]), the point-in-time [`Snapshot`] taken from it, and three renderings of a
//! snapshot — JSON (the `status` answer), the classic Prometheus text exposition format (the
//! `metrics` answer and `METRICS_FILE`; not OpenMetrics: no `# EOF`), and the human summary of
//! `aitbc-miner status`.
//!
//! The module is three files:
//! - this one: the live record and the snapshot's types (pure; the JSON rendering is their
//!   serde form);
//! - `render.rs`: the Prometheus text, the human summary and systemd's status line (pure);
//! - `server.rs`: the I/O — [`bind`] and [`StatusServer`] serve the local Unix socket
//!   `STATUS_SOCKET` (one request line `status` or `metrics`, one answer, then the connection
//!   closes; requests are bounded in size and time), [`metrics_task`] rewrites `METRICS_FILE`
//!   atomically, and [`query`] is the client side for the command line. The request framing
//!   and the once-per-change [`Complaint`] live there too, pure and unit-tested without
//!   sockets.
//!
//! Callers use the names re-exported here (`status::bind`, `status::render_summary`, ...).
//!
//! This module must never open a TCP port, never talk to the Coordinator (the runtime fetches
//! the balance and hands it in), never block the runtime on a client, never delete a file it
//! did not create (a stale socket is removed only when nothing answers on it), and never let
//! a bad request or a failed write stop the daemon. This file in particular does no I/O at
//! all: its lock is held only to copy or bump plain values.

mod render;
mod server;

pub use render::{human_bytes, human_duration, render_metrics, render_summary, status_line};
pub use server::{
    answer, bind, frame, metrics_task, parse_request, query, write_atomically, Complaint, Framed,
    Note, Request, StatusListener, StatusServer, MAX_CLIENTS, MAX_REQUEST, READ_TIMEOUT,
    WRITE_TIMEOUT,
};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::api::{ts, AuditVerdict, Balance, FailReason, Mode};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::untrusted;

/// How much of a job's id or workload the status keeps, in characters.
const UNTRUSTED_MAX_CHARS: usize = 128;
/// How much of an error's text the status keeps, in characters.
const ERROR_MAX_CHARS: usize = 500;

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
/// credited proof, each audit verdict and every few heartbeats, never because someone asked
/// for the status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BalanceStatus {
    /// The settled amount, integer base units; `null` until a fetch succeeded.
    pub amount: Option<u64>,
    /// Ledger credits behind the settled amount.
    pub credits: Option<u64>,
    /// Credited but not settled yet: its jobs are being verified (audited or held).
    #[serde(default)]
    pub pending: Option<u64>,
    /// Credited and taken back because a proof failed its audit.
    #[serde(default)]
    pub forfeited: Option<u64>,
    /// When `amount` was fetched.
    #[serde(default, with = "ts::option")]
    pub fetched_at: Option<OffsetDateTime>,
    /// Why the last fetch gave nothing (or why there is no figure yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The audits this miner was asked and the audit spool (`STATE_DIR/audit`) it answers them
/// from.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AuditStatus {
    /// Proved jobs kept to answer an audit (their proof awaits its ack, or an audit is open).
    pub entries: u64,
    /// Their size on disk.
    pub bytes: u64,
    /// `AUDIT_SPOOL_MB` in bytes.
    pub limit_bytes: u64,
    /// At or past the limit: no new job is fetched until entries go.
    pub full: bool,
    /// Answers the Coordinator decided (or refused, e.g. `NO_AUDIT` for one decided already).
    pub answered: u64,
    pub passed: u64,
    pub failed: u64,
    /// Recomputed rows whose leaf was not the one committed: this miner's own result was wrong.
    pub self_check_failures: u64,
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
    #[serde(default)]
    pub audits: AuditStatus,
    /// Why this miner's key is suspended from taking jobs (`MINER_SUSPENDED`, the
    /// Coordinator's message), while it is; the miner polls slowly until an admin reinstates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<String>,
}

/// What never changes while the daemon runs.
#[derive(Clone, Debug)]
pub struct Facts {
    pub miner_id: String,
    pub wallet: String,
    pub coordinator: String,
    pub mode: Mode,
    pub slots: usize,
    /// `AUDIT_SPOOL_MB` in bytes.
    pub audit_limit_bytes: u64,
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
    audits: AuditStatus,
    suspended: Option<String>,
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
        let audit_limit_bytes = facts.audit_limit_bytes;
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
                audits: AuditStatus {
                    limit_bytes: audit_limit_bytes,
                    ..AuditStatus::default()
                },
                suspended: None,
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

    /// A job was handed to `slot`. Its id and workload came from the Coordinator: they are
    /// kept escaped and cut ([`crate::untrusted::bounded`]), as is every error text here.
    pub fn slot_starting(&self, slot: usize, job_id: &str, workload: &str) {
        self.update(|l| {
            if let Some(s) = l.slots.get_mut(slot) {
                *s = Some(SlotJob {
                    id: untrusted::bounded(job_id, UNTRUSTED_MAX_CHARS),
                    workload: untrusted::bounded(workload, UNTRUSTED_MAX_CHARS),
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
                Err(e) => l.heartbeat.error = Some(untrusted::bounded(&e, ERROR_MAX_CHARS)),
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

    /// A balance fetch ended: the balance, or why not. A failure keeps the last figures (with
    /// their time) and adds the error.
    pub fn balance(&self, result: Result<Balance, String>) {
        let now = ts::now();
        self.update(|l| match result {
            Ok(b) => {
                l.balance = BalanceStatus {
                    amount: Some(b.balance),
                    credits: Some(b.credits),
                    pending: Some(b.pending),
                    forfeited: Some(b.forfeited),
                    fetched_at: Some(now),
                    error: None,
                }
            }
            Err(e) => l.balance.error = Some(untrusted::bounded(&e, ERROR_MAX_CHARS)),
        });
    }

    /// The audit spool now holds `entries` entries of `bytes` bytes in all; `full`: at or past
    /// its limit.
    pub fn audit_spool(&self, entries: u64, bytes: u64, full: bool) {
        self.update(|l| {
            l.audits.entries = entries;
            l.audits.bytes = bytes;
            l.audits.full = full;
        });
    }

    /// An audit's answer was decided with `verdict`, or refused (`None`: e.g. `NO_AUDIT`).
    pub fn audit_answered(&self, verdict: Option<AuditVerdict>) {
        self.update(|l| {
            l.audits.answered += 1;
            match verdict {
                Some(AuditVerdict::Passed) => l.audits.passed += 1,
                Some(AuditVerdict::Failed) => l.audits.failed += 1,
                None => {}
            }
        });
    }

    /// `rows` recomputed rows did not match this miner's own committed leaves.
    pub fn audit_self_check_failed(&self, rows: u64) {
        self.update(|l| l.audits.self_check_failures += rows);
    }

    /// The key is suspended from `next` (the Coordinator's message, escaped and cut), or no
    /// longer.
    pub fn suspended(&self, why: Option<&str>) {
        self.update(|l| l.suspended = why.map(|w| untrusted::bounded(w, ERROR_MAX_CHARS)));
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
            audits: l.audits.clone(),
            suspended: l.suspended.clone(),
        }
    }
}

/// Seconds with millisecond precision.
fn millis(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// A fresh live record of a CPU miner `m` with `slots` slots.
    pub(super) fn live(slots: usize) -> Arc<Status> {
        Status::new(Facts {
            miner_id: "m".into(),
            wallet: "w".into(),
            coordinator: "http://c".into(),
            mode: Mode::Cpu,
            slots,
            audit_limit_bytes: 1 << 20,
        })
    }

    /// A snapshot with something in every field, for the renderings' tests too.
    pub(super) fn sample() -> Snapshot {
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
                pending: Some(200),
                forfeited: Some(100),
                fetched_at: Some(datetime!(2026-01-02 04:03:55.678 UTC)),
                error: None,
            },
            audits: AuditStatus {
                entries: 2,
                bytes: 65_600,
                limit_bytes: 256 << 20,
                full: false,
                answered: 4,
                passed: 3,
                failed: 1,
                self_check_failures: 0,
            },
            suspended: None,
        }
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
    fn text_from_the_coordinator_is_kept_escaped() {
        let status = live(1);
        let forged = "torch_bench\n2026-01-01T00:00:00Z ERROR forged\u{1b}[31m\u{202e}";
        status.slot_starting(0, forged, &forged.repeat(50));
        status.heartbeat(Err(format!("HTTP 403 {forged}")));
        status.balance(Err(forged.to_owned()));
        status.suspended(Some(forged));
        let s = status.snapshot();
        let text = format!(
            "{}{}{}{}{}",
            s.slots[0].job_id.as_deref().unwrap_or_default(),
            s.slots[0].workload.as_deref().unwrap_or_default(),
            s.heartbeat.error.as_deref().unwrap_or_default(),
            s.balance.error.as_deref().unwrap_or_default(),
            s.suspended.as_deref().unwrap_or_default()
        );
        assert!(!text.chars().any(untrusted::is_unsafe), "{text}");
        assert!(text.contains("torch_bench\\n2026"), "{text}");
        // Cut to UNTRUSTED_MAX_CHARS characters of what was sent (escapes make it longer).
        let kept = s.slots[0].workload.as_deref().unwrap_or_default();
        assert!(
            kept.ends_with('…') && kept.len() < 8 * UNTRUSTED_MAX_CHARS,
            "{kept}"
        );
    }

    #[test]
    fn the_live_record_tracks_slots_jobs_and_state() {
        let status = live(2);
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

        status.balance(Ok(Balance {
            wallet: "w".into(),
            balance: 42,
            credits: 1,
            pending: 5,
            forfeited: 3,
        }));
        status.balance(Err("HTTP 503".into()));
        let s = status.snapshot();
        assert_eq!((s.balance.amount, s.balance.credits), (Some(42), Some(1)));
        assert_eq!((s.balance.pending, s.balance.forfeited), (Some(5), Some(3)));
        assert!(s.balance.fetched_at.is_some());
        assert_eq!(s.balance.error.as_deref(), Some("HTTP 503"));

        assert_eq!(
            s.audits,
            AuditStatus {
                limit_bytes: 1 << 20,
                ..AuditStatus::default()
            }
        );
        status.audit_spool(3, 900, true);
        status.audit_answered(Some(AuditVerdict::Passed));
        status.audit_answered(Some(AuditVerdict::Failed));
        status.audit_answered(None);
        status.audit_self_check_failed(2);
        status.suspended(Some("suspended after 3 failed audits"));
        let s = status.snapshot();
        assert_eq!(
            s.audits,
            AuditStatus {
                entries: 3,
                bytes: 900,
                limit_bytes: 1 << 20,
                full: true,
                answered: 3,
                passed: 1,
                failed: 1,
                self_check_failures: 2,
            }
        );
        assert_eq!(
            s.suspended.as_deref(),
            Some("suspended after 3 failed audits")
        );
        status.suspended(None);
        assert_eq!(status.snapshot().suspended, None);

        status.set_paused(Some("GPU unhealthy".into()));
        assert_eq!(status.snapshot().state, DaemonState::Paused);
        status.set_paused(None);
        assert_eq!(status.snapshot().state, DaemonState::Running);
        status.set_draining();
        status.set_paused(Some("late reading".into()));
        let s = status.snapshot();
        assert_eq!((s.state, s.state_reason), (DaemonState::Draining, None));
    }
}

//! The renderings of a [`Snapshot`] for people and tools: the classic Prometheus text
//! exposition format ([`render_metrics`], the `metrics` answer and `METRICS_FILE`), the human
//! summary of `aitbc-miner status` ([`render_summary`]) and the one line systemd shows
//! ([`status_line`]), with their helpers.
//!
//! Everything here is a pure function of a snapshot. It must never do I/O, never read the
//! clock (times are shown relative to the snapshot's own `now`), and never take the live
//! record's lock: it sees only the copy it is given.

use std::fmt::Write as _;

use protocol::api::FailReason;
use time::OffsetDateTime;

use super::{DaemonState, JobsFailed, SlotState, Snapshot};

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
    // AUDIT_FAILED and AUDIT_TIMEOUT are the Coordinator's; audits are counted below.
    let reported = FailReason::ALL
        .into_iter()
        .filter(|r| !matches!(r, FailReason::AuditFailed | FailReason::AuditTimeout));
    for reason in reported {
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
    let a = &s.audits;
    p.single(
        "aitbc_miner_audits_answered_total",
        "counter",
        "Audit answers the Coordinator decided or refused since the daemon started.",
        &a.answered.to_string(),
    );
    p.family(
        "aitbc_miner_audits_total",
        "counter",
        "Audit verdicts since the daemon started.",
    );
    p.sample(
        "aitbc_miner_audits_total",
        &[("verdict", "passed")],
        &a.passed.to_string(),
    );
    p.sample(
        "aitbc_miner_audits_total",
        &[("verdict", "failed")],
        &a.failed.to_string(),
    );
    p.single(
        "aitbc_miner_audit_self_check_failures_total",
        "counter",
        "Recomputed audit rows that were not the rows this miner committed to (its own result was wrong).",
        &a.self_check_failures.to_string(),
    );
    p.single(
        "aitbc_miner_audit_spool_entries",
        "gauge",
        "Proved jobs kept in STATE_DIR/audit to answer an audit.",
        &a.entries.to_string(),
    );
    p.single(
        "aitbc_miner_audit_spool_bytes",
        "gauge",
        "The audit spool's size on disk, in bytes.",
        &a.bytes.to_string(),
    );
    p.single(
        "aitbc_miner_audit_spool_limit_bytes",
        "gauge",
        "AUDIT_SPOOL_MB in bytes: at or past it no new job is taken.",
        &a.limit_bytes.to_string(),
    );
    p.single(
        "aitbc_miner_audit_spool_full",
        "gauge",
        "1 while the audit spool is full and no new job is taken, else 0.",
        if a.full { "1" } else { "0" },
    );
    p.single(
        "aitbc_miner_suspended",
        "gauge",
        "1 while the Coordinator refuses this miner's key jobs after failed audits, else 0.",
        if s.suspended.is_some() { "1" } else { "0" },
    );
    if let (Some(amount), Some(at)) = (s.balance.amount, s.balance.fetched_at) {
        p.family(
            "aitbc_miner_wallet_balance",
            "gauge",
            "The wallet's settled balance in base units, as last fetched from the Coordinator.",
        );
        p.sample(
            "aitbc_miner_wallet_balance",
            &[("wallet", &s.wallet)],
            &amount.to_string(),
        );
        for (name, value, help) in [
            (
                "aitbc_miner_wallet_pending",
                s.balance.pending,
                "Credited to the wallet but not settled yet (its jobs are being verified), in base units.",
            ),
            (
                "aitbc_miner_wallet_forfeited",
                s.balance.forfeited,
                "Credited to the wallet and taken back after failed audits, in base units.",
            ),
        ] {
            if let Some(v) = value {
                p.family(name, "gauge", help);
                p.sample(name, &[("wallet", &s.wallet)], &v.to_string());
            }
        }
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

/// A size the way people read it: `512 B`, `64.1 KiB`, `256.0 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
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
    let a = &s.audits;
    let _ = writeln!(
        o,
        "  audits       {} answered ({} passed, {} failed){}",
        a.answered,
        a.passed,
        a.failed,
        if a.self_check_failures > 0 {
            format!(
                "; {} recomputed row(s) were not this miner's committed rows",
                a.self_check_failures
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        o,
        "  audit spool  {} entr{}, {} of {}{}",
        a.entries,
        if a.entries == 1 { "y" } else { "ies" },
        human_bytes(a.bytes),
        human_bytes(a.limit_bytes),
        if a.full {
            " - FULL: no new job until entries go"
        } else {
            ""
        }
    );
    if let Some(why) = &s.suspended {
        let _ = writeln!(
            o,
            "  SUSPENDED    the Coordinator gives this key no jobs: {why}"
        );
    }
    let balance = match (s.balance.amount, s.balance.fetched_at) {
        (Some(amount), Some(at)) => {
            let mut b = format!(
                "{amount} settled ({} credits), {} pending, {} forfeited, fetched {}",
                s.balance.credits.unwrap_or(0),
                s.balance.pending.unwrap_or(0),
                s.balance.forfeited.unwrap_or(0),
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
    let mut line = format!(
        "{}: {busy}/{} slots busy, {} done, {} failed, spool {}, heartbeat {heartbeat}",
        state_text(s),
        s.slots.len(),
        s.jobs_done,
        s.jobs_failed.total,
        s.spool_depth,
    );
    if s.audits.full {
        line.push_str(", audit spool full");
    }
    if s.suspended.is_some() {
        line.push_str(", SUSPENDED");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::sample;
    use crate::status::{BalanceStatus, HeartbeatStatus};
    use time::macros::datetime;

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
# HELP aitbc_miner_audits_answered_total Audit answers the Coordinator decided or refused since the daemon started.
# TYPE aitbc_miner_audits_answered_total counter
aitbc_miner_audits_answered_total 4
# HELP aitbc_miner_audits_total Audit verdicts since the daemon started.
# TYPE aitbc_miner_audits_total counter
aitbc_miner_audits_total{verdict="passed"} 3
aitbc_miner_audits_total{verdict="failed"} 1
# HELP aitbc_miner_audit_self_check_failures_total Recomputed audit rows that were not the rows this miner committed to (its own result was wrong).
# TYPE aitbc_miner_audit_self_check_failures_total counter
aitbc_miner_audit_self_check_failures_total 0
# HELP aitbc_miner_audit_spool_entries Proved jobs kept in STATE_DIR/audit to answer an audit.
# TYPE aitbc_miner_audit_spool_entries gauge
aitbc_miner_audit_spool_entries 2
# HELP aitbc_miner_audit_spool_bytes The audit spool's size on disk, in bytes.
# TYPE aitbc_miner_audit_spool_bytes gauge
aitbc_miner_audit_spool_bytes 65600
# HELP aitbc_miner_audit_spool_limit_bytes AUDIT_SPOOL_MB in bytes: at or past it no new job is taken.
# TYPE aitbc_miner_audit_spool_limit_bytes gauge
aitbc_miner_audit_spool_limit_bytes 268435456
# HELP aitbc_miner_audit_spool_full 1 while the audit spool is full and no new job is taken, else 0.
# TYPE aitbc_miner_audit_spool_full gauge
aitbc_miner_audit_spool_full 0
# HELP aitbc_miner_suspended 1 while the Coordinator refuses this miner's key jobs after failed audits, else 0.
# TYPE aitbc_miner_suspended gauge
aitbc_miner_suspended 0
# HELP aitbc_miner_wallet_balance The wallet's settled balance in base units, as last fetched from the Coordinator.
# TYPE aitbc_miner_wallet_balance gauge
aitbc_miner_wallet_balance{wallet="wallet \"a\"\\b\nc"} 700
# HELP aitbc_miner_wallet_pending Credited to the wallet but not settled yet (its jobs are being verified), in base units.
# TYPE aitbc_miner_wallet_pending gauge
aitbc_miner_wallet_pending{wallet="wallet \"a\"\\b\nc"} 200
# HELP aitbc_miner_wallet_forfeited Credited to the wallet and taken back after failed audits, in base units.
# TYPE aitbc_miner_wallet_forfeited gauge
aitbc_miner_wallet_forfeited{wallet="wallet \"a\"\\b\nc"} 100
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
        for absent in [
            "heartbeat_",
            "wallet_balance",
            "wallet_pending",
            "wallet_forfeited",
        ] {
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
  audits       4 answered (3 passed, 1 failed)
  audit spool  2 entries, 64.1 KiB of 256.0 MiB
  balance      700 settled (7 credits), 200 pending, 100 forfeited, fetched 20s ago
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

        let mut s = sample();
        s.audits.full = true;
        s.audits.self_check_failures = 1;
        s.suspended = Some("failed 3 audits".into());
        let text = render_summary(&s);
        assert!(
            text.contains("  audit spool  2 entries, 64.1 KiB of 256.0 MiB - FULL: no new job until entries go\n"),
            "{text}"
        );
        assert!(text.contains("; 1 recomputed row(s) were not this miner's committed rows\n"));
        assert!(
            text.contains(
                "  SUSPENDED    the Coordinator gives this key no jobs: failed 3 audits\n"
            ),
            "{text}"
        );
        assert!(status_line(&s).ends_with(", audit spool full, SUSPENDED"));
        let metrics = render_metrics(&s);
        assert!(metrics.contains("\naitbc_miner_suspended 1\n"));
        assert!(metrics.contains("\naitbc_miner_audit_spool_full 1\n"));
    }

    #[test]
    fn human_bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
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
}

//! The doctor's clock checks: is the kernel's clock disciplined by a time service (`adjtimex`
//! with no modes, which only reads), and how far is it from the Coordinator's clock (from the
//! heartbeat's `server_time`, else the answer's HTTP `Date` header).
//!
//! The thresholds, and why:
//! - **warn beyond 30 s**: the miner stamps every proof with its own `started_at` and
//!   `finished_at` and measures pickup latency against the Coordinator's `created_at`; 30 s is
//!   the Coordinator's default lease margin, so a skew past it makes those figures wrong by more
//!   than the slack the protocol itself allows, and log lines no longer line up with the
//!   Coordinator's.
//! - **FAIL beyond 5 minutes**: that is no longer drift but a wrong or unsynchronised clock
//!   (the customary bound of Kerberos and signed-token schemes); the proofs' times are then
//!   plainly false, and at larger errors HTTPS certificate checks start to fail. Fix it before
//!   taking paid work.
//!
//! The offset is compared net of its uncertainty (half the round trip, plus the `Date` header's
//! one-second resolution), so a slow link never causes a false alarm.
//!
//! Everything here but [`probe_kernel`] is pure. Nothing here ever sets the clock.

use std::time::Duration;

use super::{Line, Status};

/// Beyond this offset (net of uncertainty) the clock line warns.
pub const WARN_OFFSET: Duration = Duration::from_secs(30);
/// Beyond this offset (net of uncertainty) the clock line fails.
pub const FAIL_OFFSET: Duration = Duration::from_secs(300);

/// `TIME_ERROR`, the `adjtimex` state of a clock that is not synchronised.
pub const TIME_ERROR: i32 = 5;
/// `STA_UNSYNC`, the status bit a time service clears once it disciplines the clock.
pub const STA_UNSYNC: i32 = 0x0040;

/// What `adjtimex(2)` with `modes = 0` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    /// The return value: the clock state (`TIME_OK` = 0 ... `TIME_ERROR` = 5).
    pub state: i32,
    /// `timex.status` bits.
    pub status: i32,
    /// `timex.esterror`, microseconds.
    pub esterror_us: i64,
}

/// Reads the kernel's clock state; `Err(errno)` when the call fails.
pub fn probe_kernel() -> Result<KernelClock, i32> {
    // SAFETY: timex is plain C data (integers only), for which all-zero bytes are valid.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a live timex we own; with modes = 0 adjtimex only reads the clock state
    // into it and changes nothing.
    let r = unsafe { libc::adjtimex(&mut t) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok(KernelClock {
        state: r,
        status: t.status,
        esterror_us: t.esterror,
    })
}

/// The `clock sync` line.
pub fn check_sync(kernel: &Result<KernelClock, i32>) -> Line {
    let fix = "install and enable a time service: apt install systemd-timesyncd (then \
               timedatectl set-ntp true) or apt install chrony";
    match kernel {
        Err(errno) => Line::new(
            Status::Warn,
            "clock sync",
            format!(
                "cannot ask the kernel (adjtimex: {})",
                super::errno_text(*errno)
            ),
        )
        .fix(format!("make sure a time service runs: {fix}")),
        Ok(k) if k.state == TIME_ERROR || k.status & STA_UNSYNC != 0 => {
            let mut why = Vec::new();
            if k.state == TIME_ERROR {
                why.push("TIME_ERROR");
            }
            if k.status & STA_UNSYNC != 0 {
                why.push("STA_UNSYNC");
            }
            Line::new(
                Status::Warn,
                "clock sync",
                format!(
                    "the clock is not synchronised (adjtimex: {}): nothing keeps it from drifting",
                    why.join(", ")
                ),
            )
            .fix(fix)
        }
        Ok(k) => Line::new(
            Status::Ok,
            "clock sync",
            format!(
                "synchronised by a time service (estimated error {} ms)",
                k.esterror_us / 1000
            ),
        ),
    }
}

/// Where the Coordinator's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerTime {
    /// The heartbeat answer's `server_time`, Unix milliseconds.
    Ack(i64),
    /// The `Date` header, Unix seconds (truncated: the true time is within the next second).
    Date(i64),
}

/// How far the local clock is from the Coordinator's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset {
    /// Coordinator minus local, seconds (positive: the local clock is behind).
    pub secs: f64,
    /// How much of that is measurement uncertainty, seconds.
    pub uncertainty: f64,
    /// Which source gave it.
    pub source: ServerTime,
}

/// The offset from a request sent at local Unix time `sent_ms` that took `rtt`, and the time
/// the Coordinator stated. The Coordinator's moment is assumed to be the middle of the trip.
pub fn offset(sent_ms: i64, rtt: Duration, server: ServerTime) -> Offset {
    let half = rtt.as_secs_f64() / 2.0;
    let local_mid = sent_ms as f64 / 1000.0 + half;
    let (server_secs, resolution) = match server {
        ServerTime::Ack(ms) => (ms as f64 / 1000.0, 0.001),
        // The header drops the fraction: its second began up to 1 s before the true time.
        ServerTime::Date(s) => (s as f64 + 0.5, 0.5),
    };
    Offset {
        secs: server_secs - local_mid,
        uncertainty: half + resolution,
        source: server,
    }
}

/// The `clock offset` line; `None` when the Coordinator gave no time (`why` says why).
pub fn check_offset(offset: Option<Offset>, why: &str) -> Line {
    let Some(o) = offset else {
        return Line::new(
            Status::Skip,
            "clock offset",
            format!("not compared with the Coordinator's clock: {why}"),
        )
        .fix("make the coordinator line ok, then run doctor again");
    };
    let net = (o.secs.abs() - o.uncertainty).max(0.0);
    let source = match o.source {
        ServerTime::Ack(_) => "the heartbeat's server_time",
        ServerTime::Date(_) => "the answer's Date header",
    };
    let direction = if o.secs > 0.0 { "behind" } else { "ahead of" };
    let finding = format!(
        "this host's clock is {:.3} s {direction} the Coordinator's (±{:.3} s, from {source})",
        o.secs.abs(),
        o.uncertainty
    );
    let fix = "synchronise the clock: apt install systemd-timesyncd (timedatectl set-ntp true) \
               or chrony; check the clock sync line";
    if net > FAIL_OFFSET.as_secs_f64() {
        Line::new(
            Status::Fail,
            "clock offset",
            format!(
                "{finding}: more than {} s off, so proof timestamps are false",
                FAIL_OFFSET.as_secs()
            ),
        )
        .fix(fix)
    } else if net > WARN_OFFSET.as_secs_f64() {
        Line::new(
            Status::Warn,
            "clock offset",
            format!(
                "{finding}: more than {} s off, so proof times and pickup latency are skewed",
                WARN_OFFSET.as_secs()
            ),
        )
        .fix(fix)
    } else {
        Line::new(Status::Ok, "clock offset", finding)
    }
}

/// Parses an HTTP `Date` header in the IMF-fixdate form every server sends
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) into Unix seconds; `None` for anything else.
pub fn parse_http_date(text: &str) -> Option<i64> {
    let mut words = text.split_whitespace();
    let _weekday = words.next()?.strip_suffix(',')?;
    let day: u8 = words.next()?.parse().ok()?;
    let month = match words.next()? {
        "Jan" => time::Month::January,
        "Feb" => time::Month::February,
        "Mar" => time::Month::March,
        "Apr" => time::Month::April,
        "May" => time::Month::May,
        "Jun" => time::Month::June,
        "Jul" => time::Month::July,
        "Aug" => time::Month::August,
        "Sep" => time::Month::September,
        "Oct" => time::Month::October,
        "Nov" => time::Month::November,
        "Dec" => time::Month::December,
        _ => return None,
    };
    let year: i32 = words.next()?.parse().ok()?;
    let mut hms = words.next()?.split(':');
    let mut part = || -> Option<u8> { hms.next()?.parse().ok() };
    let (h, m, s) = (part()?, part()?, part()?);
    if words.next()? != "GMT" || words.next().is_some() {
        return None;
    }
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms(h, m, s).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_and_nonsense_does_not() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in [
            "",
            "Sun, 06 Nov 1994 08:49:37",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn offset_takes_the_middle_of_the_trip_and_counts_its_uncertainty() {
        // Sent at t = 1000 s, 200 ms round trip; the server said 1000.1 s: no offset.
        let o = offset(
            1_000_000,
            Duration::from_millis(200),
            ServerTime::Ack(1_000_100),
        );
        assert!(o.secs.abs() < 1e-9, "{o:?}");
        assert!((o.uncertainty - 0.101).abs() < 1e-9, "{o:?}");
        // A Date header of 1000 means [1000, 1001): its middle, ±0.5 s more.
        let d = offset(1_000_000, Duration::ZERO, ServerTime::Date(1_000));
        assert!((d.secs - 0.5).abs() < 1e-9 && (d.uncertainty - 0.5).abs() < 1e-9);
        // Local clock 40 s ahead.
        let ahead = offset(
            1_040_000,
            Duration::from_millis(2),
            ServerTime::Ack(1_000_001),
        );
        assert!((ahead.secs + 40.0).abs() < 1e-6, "{ahead:?}");
    }

    #[test]
    fn offset_verdicts_warn_past_30_s_and_fail_past_5_min_net_of_uncertainty() {
        let at = |secs: f64, uncertainty: f64| Offset {
            secs,
            uncertainty,
            source: ServerTime::Ack(0),
        };
        assert_eq!(check_offset(Some(at(0.2, 0.01)), "").status, Status::Ok);
        assert_eq!(check_offset(Some(at(-29.0, 0.5)), "").status, Status::Ok);
        // 31 s with 2 s of uncertainty could be 29 s: not enough to warn.
        assert_eq!(check_offset(Some(at(31.0, 2.0)), "").status, Status::Ok);
        let warn = check_offset(Some(at(-45.0, 0.5)), "");
        assert_eq!(warn.status, Status::Warn);
        assert!(warn.finding.contains("45.000 s ahead of"), "{warn}");
        assert!(warn.fix.is_some());
        let fail = check_offset(Some(at(400.0, 0.5)), "");
        assert_eq!(fail.status, Status::Fail);
        assert!(fail.finding.contains("behind"), "{fail}");
        let skip = check_offset(None, "no answer");
        assert_eq!(skip.status, Status::Skip);
        assert!(
            skip.finding.ends_with("no answer") && skip.fix.is_some(),
            "{skip}"
        );
    }

    #[test]
    fn sync_verdicts() {
        let k = |state, status| {
            Ok(KernelClock {
                state,
                status,
                esterror_us: 1500,
            })
        };
        let ok = check_sync(&k(0, 0x2001));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.finding.contains("1 ms"), "{ok}");
        let unsynced = check_sync(&k(TIME_ERROR, STA_UNSYNC));
        assert_eq!(unsynced.status, Status::Warn);
        assert!(
            unsynced.finding.contains("TIME_ERROR, STA_UNSYNC"),
            "{unsynced}"
        );
        assert!(
            unsynced
                .fix
                .as_deref()
                .unwrap()
                .contains("systemd-timesyncd"),
            "{unsynced}"
        );
        assert_eq!(check_sync(&k(0, STA_UNSYNC)).status, Status::Warn);
        assert_eq!(check_sync(&Err(libc::EPERM)).status, Status::Warn);
        // Whatever this host says, the probe answers.
        let _ = check_sync(&probe_kernel());
    }
}

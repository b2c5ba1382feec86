//! The doctor's Coordinator check: one real `POST /v1/miner/heartbeat` with the miner's real
//! capabilities, as `run` sends first, through the supervisor's own [`Client`], bounded by a
//! short timeout; and the pure mapping of what came back to one line with its fix.
//!
//! The heartbeat registers `MINER_ID` with this key and names the wallet, exactly as the
//! miner's first heartbeat would; it changes nothing else at the Coordinator. This module must
//! never print the API key (the client never formats it; neither does anything here).

use std::time::{Duration, Instant};

use protocol::api::{ErrorCode, MinerCapabilities};

use super::clock::{self, Offset, ServerTime};
use super::{Line, Status};
use crate::client::{CallError, Client};
use crate::config::Config;

/// What the heartbeat probe saw.
#[derive(Debug, Clone, PartialEq)]
pub enum CoordinatorFacts {
    /// Not attempted: why (no usable config, or the operator said not to).
    Skipped(String),
    /// One heartbeat was sent.
    Probed(Probe),
}

/// One heartbeat, its answer and its timing.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// `COORD_URL`.
    pub url: String,
    /// `MINER_ID` as sent.
    pub miner_id: String,
    /// The answer; a timeout is a `Transport` error saying so.
    pub result: Result<protocol::api::HeartbeatAck, CallError>,
    /// Local Unix time when the request was sent, milliseconds.
    pub sent_ms: i64,
    /// From sending to the whole answer.
    pub rtt: Duration,
    /// The answer's `Date` header.
    pub date: Option<String>,
    /// The answer's `Server` header.
    pub server: Option<String>,
}

impl Probe {
    /// The Coordinator's clock against ours, when it stated a time.
    pub fn offset(&self) -> Option<Offset> {
        let server = match &self.result {
            Ok(ack) => ServerTime::Ack(
                i64::try_from(ack.server_time.unix_timestamp_nanos() / 1_000_000).ok()?,
            ),
            Err(_) => ServerTime::Date(clock::parse_http_date(self.date.as_deref()?)?),
        };
        Some(clock::offset(self.sent_ms, self.rtt, server))
    }
}

/// Sends one heartbeat with `caps` to the Coordinator of `config`, waiting at most `timeout`.
/// Blocks; builds its own single-threaded runtime.
pub fn probe(config: &Config, caps: &MinerCapabilities, timeout: Duration) -> CoordinatorFacts {
    let client = match Client::new(&config.coord_url, &config.api_key) {
        Ok(c) => c,
        Err(e) => return CoordinatorFacts::Skipped(format!("cannot build the HTTP client: {e}")),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return CoordinatorFacts::Skipped(format!("cannot start a runtime: {e}")),
    };
    let idempotency_key = uuid::Uuid::new_v4().to_string();
    let sent_ms = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(0);
    let t0 = Instant::now();
    let answer = rt.block_on(async {
        tokio::time::timeout(timeout, client.heartbeat_probe(caps, &idempotency_key)).await
    });
    let rtt = t0.elapsed();
    let (result, date, server) = match answer {
        Ok(p) => (p.result, p.date, p.server),
        Err(_) => (
            Err(CallError::Transport(format!(
                "no answer within {} s",
                timeout.as_secs_f64()
            ))),
            None,
            None,
        ),
    };
    CoordinatorFacts::Probed(Probe {
        url: config.coord_url.clone(),
        miner_id: config.miner_id.clone(),
        result,
        sent_ms,
        rtt,
        date,
        server,
    })
}

/// The error code of a refusal, when the body named a known one.
fn code_of(code: &str) -> ErrorCode {
    serde_json::from_value(serde_json::Value::String(code.to_owned())).unwrap_or(ErrorCode::Other)
}

/// The `coordinator` line.
pub fn check(facts: &CoordinatorFacts) -> Line {
    let probe = match facts {
        CoordinatorFacts::Skipped(why) => {
            return Line::new(Status::Skip, "coordinator", format!("not contacted: {why}"))
                .fix("make the config line ok, then run doctor again")
        }
        CoordinatorFacts::Probed(p) => p,
    };
    let url = &probe.url;
    let ms = probe.rtt.as_millis();
    match &probe.result {
        Ok(ack) => {
            let server = probe
                .server
                .as_deref()
                .map(|s| format!(", server {s}"))
                .unwrap_or_else(|| ", the Coordinator states no version".to_owned());
            Line::new(
                Status::Ok,
                "coordinator",
                format!(
                    "{url} accepted the key and a heartbeat for MINER_ID={} (wallet {}) in {ms} ms{server}",
                    ack.miner_id, ack.wallet
                ),
            )
        }
        Err(CallError::Transport(why)) => Line::new(
            Status::Fail,
            "coordinator",
            format!("cannot reach {url}: {why}"),
        )
        .fix(
            "check COORD_URL (scheme, host, port), DNS and the network path to it; for https, \
             the server's certificate; under systemd the unit's IPAddressAllow= drop-in must \
             allow the Coordinator's address (systemctl edit aitbc-miner)",
        ),
        Err(CallError::Refused {
            status,
            code,
            message,
        })
        | Err(CallError::Retry {
            status,
            code,
            message,
            ..
        }) => refusal(url, &probe.miner_id, *status, code, message),
        Err(CallError::Unusable { status, why }) => {
            refusal(url, &probe.miner_id, *status, "(not an API answer)", why)
        }
        // Only `next` gives it; a heartbeat never does.
        Err(CallError::BadJob { why, .. }) => {
            refusal(url, &probe.miner_id, 200, "(not an API answer)", why)
        }
    }
}

fn refusal(url: &str, miner_id: &str, status: u16, code: &str, message: &str) -> Line {
    let said = format!("{url} answered {status} {code}: {message}");
    let line = |status, finding: String| Line::new(status, "coordinator", finding);
    match (status, code_of(code)) {
        (200..=299, _) => line(
            Status::Fail,
            format!("{said}: that is not an AITBC Coordinator's heartbeat answer"),
        )
        .fix("COORD_URL must be the Coordinator's base URL (no /v1 path), e.g. https://coord.example:8080"),
        (300..=399, _) => line(
            Status::Fail,
            format!("{said}: the miner follows no redirect"),
        )
        .fix("set COORD_URL to the Coordinator's own base URL (where it redirects, if you trust that place)"),
        (401, _) => line(Status::Fail, format!("API_KEY rejected: {said}"))
            .fix("set API_KEY to a miner key the Coordinator issued (its operator runs: aitbc-coordinator keys add --scope miner)"),
        (403, ErrorCode::MinerIdTaken) => line(
            Status::Fail,
            format!("MINER_ID={miner_id} belongs to another key: {said}"),
        )
        .fix("choose another MINER_ID, or use the API_KEY that registered this one"),
        (403, _) => line(
            Status::Fail,
            format!("API_KEY is known but lacks the miner scope: {said}"),
        )
        .fix("ask the Coordinator's operator for a key with scope miner"),
        (404, _) => line(
            Status::Fail,
            format!("no heartbeat endpoint at this URL: {said}"),
        )
        .fix("COORD_URL must be the Coordinator's base URL (no /v1 path), e.g. https://coord.example:8080"),
        (422, _) => line(Status::Fail, format!("the heartbeat was refused: {said}"))
            .fix("correct the setting the message names (WALLET_ADDR, MINER_ID, the MAX_JOB_* limits)"),
        (429, _) => line(
            Status::Warn,
            format!("the key is known but rate-limited: {said}"),
        )
        .fix("wait and run doctor again; if it persists, another miner may be using the same API_KEY"),
        _ => line(Status::Fail, format!("the Coordinator failed: {said}"))
            .fix("retry later; if it persists, tell the Coordinator's operator the status and code above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(result: Result<protocol::api::HeartbeatAck, CallError>) -> CoordinatorFacts {
        CoordinatorFacts::Probed(Probe {
            url: "http://127.0.0.1:9".into(),
            miner_id: "rig-1".into(),
            result,
            sent_ms: 1_000_000,
            rtt: Duration::from_millis(4),
            date: Some("Thu, 01 Jan 1970 00:16:40 GMT".into()),
            server: None,
        })
    }

    fn refused(status: u16, code: &str) -> CoordinatorFacts {
        probed(Err(CallError::Refused {
            status,
            code: code.into(),
            message: "m".into(),
        }))
    }

    #[test]
    fn each_outcome_has_its_verdict_and_fix() {
        let ok = check(&probed(Ok(protocol::api::HeartbeatAck {
            miner_id: "rig-1".into(),
            wallet: "w".into(),
            server_time: time::OffsetDateTime::UNIX_EPOCH,
        })));
        assert_eq!(ok.status, Status::Ok);
        assert!(
            ok.finding
                .starts_with("http://127.0.0.1:9 accepted the key and a heartbeat for MINER_ID=rig-1 (wallet w) in 4 ms"),
            "{ok}"
        );
        let down = check(&probed(Err(CallError::Transport(
            "error sending request: Connection refused (os error 111)".into(),
        ))));
        assert_eq!(down.status, Status::Fail);
        assert!(
            down.finding
                .starts_with("cannot reach http://127.0.0.1:9: ")
                && down.fix.as_deref().unwrap().contains("IPAddressAllow="),
            "{down}"
        );
        let cases = [
            (401, "UNAUTHORIZED", Status::Fail, "API_KEY rejected"),
            (
                403,
                "MINER_ID_TAKEN",
                Status::Fail,
                "MINER_ID=rig-1 belongs to another key",
            ),
            (403, "FORBIDDEN", Status::Fail, "lacks the miner scope"),
            (404, "HTTP_404", Status::Fail, "no heartbeat endpoint"),
            (422, "VALIDATION_FAILED", Status::Fail, "refused"),
            (429, "RATE_LIMITED", Status::Warn, "rate-limited"),
            (500, "INTERNAL", Status::Fail, "answered 500 INTERNAL: m"),
            (503, "UNAVAILABLE", Status::Fail, "answered 503 UNAVAILABLE"),
            (418, "HTTP_418", Status::Fail, "418"),
        ];
        for (status, code, want, text) in cases {
            let l = check(&refused(status, code));
            assert_eq!(l.status, want, "{l}");
            assert!(l.finding.contains(text), "{status}: {l}");
            assert!(l.fix.is_some(), "{l}");
        }
        for (status, text) in [
            (200, "not an AITBC Coordinator"),
            (307, "follows no redirect"),
            (404, "no heartbeat endpoint"),
        ] {
            let l = check(&probed(Err(CallError::Unusable {
                status,
                why: "an HTML page".into(),
            })));
            assert_eq!(l.status, Status::Fail, "{l}");
            assert!(
                l.finding.contains(text) && l.finding.contains("an HTML page"),
                "{l}"
            );
            assert!(l.fix.is_some(), "{l}");
        }
        let retry = check(&probed(Err(CallError::Retry {
            status: 503,
            code: "UNAVAILABLE".into(),
            message: "shutting down".into(),
            retry_after: None,
        })));
        assert_eq!(retry.status, Status::Fail);
        let skipped = check(&CoordinatorFacts::Skipped("no usable config".into()));
        assert_eq!(skipped.status, Status::Skip);
        assert!(skipped.fix.is_some());
    }

    #[test]
    fn the_offset_comes_from_the_ack_else_the_date_header() {
        let CoordinatorFacts::Probed(mut p) = refused(401, "UNAUTHORIZED") else {
            unreachable!()
        };
        // Date 1000 s; sent at 1000 s: +0.5 s (the header's middle), ±0.502 s.
        let o = p.offset().unwrap();
        assert_eq!(o.source, ServerTime::Date(1000));
        assert!((o.secs - 0.498).abs() < 1e-9, "{o:?}");
        p.date = None;
        assert_eq!(p.offset(), None);
        p.result = Ok(protocol::api::HeartbeatAck {
            miner_id: "rig-1".into(),
            wallet: "w".into(),
            server_time: time::OffsetDateTime::from_unix_timestamp(990).unwrap(),
        });
        let o = p.offset().unwrap();
        assert_eq!(o.source, ServerTime::Ack(990_000));
        assert!((o.secs + 10.002).abs() < 1e-9, "{o:?}");
    }
}

//! The Coordinator API v1 client: heartbeat, long-poll for a job, proof and fail report, over
//! HTTP(S) with `Authorization: Bearer` and an `Idempotency-Key` on every POST.
//!
//! The decision "what does this answer mean" ([`classify`]) is pure and unit-tested; the rest is
//! a thin reqwest wrapper. A transport failure carries its whole cause chain ("error sending
//! request: ...: Connection refused"); [`Client::heartbeat_probe`] also returns the answer's
//! `Date` and `Server` headers for `aitbc-miner doctor`. This module must never log or format the API key or any request
//! header, and never treat an empty 2xx body as a job.

use std::time::Duration;

use protocol::api::{
    Balance, FailAck, FailReport, HeartbeatAck, Job, MinerCapabilities, Proof, ProofAck,
};
use serde::de::DeserializeOwned;

use crate::backoff::parse_retry_after;
use crate::config::ApiKey;
use crate::Error;

/// Timeout of a POST and the margin added to a long-poll's `wait`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not give an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No HTTP answer at all (refused, reset, timeout): retry with backoff.
    Transport(String),
    /// An answer worth retrying later: 408, 429, 5xx. `retry_after` from the header.
    Retry {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// A definitive refusal (other 4xx), or a 2xx whose body is not what the API promises.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "no answer: {m}"),
            CallError::Retry {
                status,
                code,
                message,
                ..
            }
            | CallError::Refused {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
        }
    }
}

/// What an HTTP answer means to the miner.
#[derive(Debug, Clone, PartialEq)]
pub enum Classified {
    /// 2xx with a body: parse it.
    Body,
    /// 2xx with an empty body (the 204 of `next`): nothing.
    Empty,
    Error(CallError),
}

/// Classifies an answer by status, `Retry-After` header and body (pure).
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Classified {
    if (200..300).contains(&status) {
        return if body.iter().all(u8::is_ascii_whitespace) {
            Classified::Empty
        } else {
            Classified::Body
        };
    }
    let (code, message) = error_fields(status, body);
    if status == 408 || status == 429 || status >= 500 {
        Classified::Error(CallError::Retry {
            status,
            code,
            message,
            retry_after: retry_after.and_then(parse_retry_after),
        })
    } else {
        Classified::Error(CallError::Refused {
            status,
            code,
            message,
        })
    }
}

/// The `error.code` and `error.message` of an error body, or stand-ins when the body is not one.
fn error_fields(status: u16, body: &[u8]) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = v["error"]["code"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP_{status}"));
    let message = match v["error"]["message"].as_str() {
        Some(m) => m.to_owned(),
        None => {
            let text = String::from_utf8_lossy(body);
            text.chars().take(200).collect()
        }
    };
    (code, message)
}

/// A Coordinator client for one miner.
/// Deliberately not `Debug`: it holds the API key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: &ApiKey) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("aitbc-miner/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Client {
                url: base.to_owned(),
                message: e.to_string(),
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key: key.expose().to_owned(),
        })
    }

    pub async fn heartbeat(
        &self,
        caps: &MinerCapabilities,
        idempotency_key: &str,
    ) -> Result<HeartbeatAck, CallError> {
        self.post("/v1/miner/heartbeat", caps, idempotency_key)
            .await
    }

    pub async fn proof(&self, proof: &Proof, idempotency_key: &str) -> Result<ProofAck, CallError> {
        self.post("/v1/miner/proof", proof, idempotency_key).await
    }

    pub async fn fail(
        &self,
        report: &FailReport,
        idempotency_key: &str,
    ) -> Result<FailAck, CallError> {
        self.post("/v1/miner/fail", report, idempotency_key).await
    }

    /// `GET /v1/miner/next`: `Ok(None)` on 204 or any empty 2xx body.
    pub async fn next(
        &self,
        miner_id: &str,
        slots: u32,
        wait: Duration,
    ) -> Result<Option<Job>, CallError> {
        let wait_s = format!("{}", wait.as_secs_f64());
        let slots_s = slots.to_string();
        let req = self
            .http
            .get(format!("{}/v1/miner/next", self.base))
            .query(&[
                ("miner", miner_id),
                ("slots", slots_s.as_str()),
                ("wait", wait_s.as_str()),
            ])
            .timeout(wait + REQUEST_TIMEOUT)
            .bearer_auth(&self.key);
        send(req).await?.decode()
    }

    /// [`Client::heartbeat`] for `aitbc-miner doctor`: the same request, answered together
    /// with the `Date` and `Server` headers of the answer (when there was one), so the doctor
    /// can compare clocks even when the key is refused.
    pub async fn heartbeat_probe(
        &self,
        caps: &MinerCapabilities,
        idempotency_key: &str,
    ) -> HeartbeatProbe {
        let (result, headers) = self
            .post_with_headers("/v1/miner/heartbeat", caps, idempotency_key)
            .await;
        HeartbeatProbe {
            result,
            date: headers.date,
            server: headers.server,
        }
    }

    /// `GET /v1/wallet/balance?wallet=`: the wallet's balance, for the status report.
    pub async fn balance(&self, wallet: &str) -> Result<Balance, CallError> {
        let req = self
            .http
            .get(format!("{}/v1/wallet/balance", self.base))
            .query(&[("wallet", wallet)])
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&self.key);
        send(req).await?.decode_required("/v1/wallet/balance")
    }

    async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: &str,
    ) -> Result<T, CallError> {
        self.post_with_headers(path, body, idempotency_key).await.0
    }

    async fn post_with_headers<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: &str,
    ) -> (Result<T, CallError>, AnswerHeaders) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(protocol::api::IDEMPOTENCY_HEADER, idempotency_key)
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&self.key)
            .json(body);
        let answer = match send(req).await {
            Ok(a) => a,
            Err(e) => return (Err(e), AnswerHeaders::default()),
        };
        (answer.decode_required(path), answer.headers)
    }
}

/// A heartbeat's answer with the headers `doctor` reads (see [`Client::heartbeat_probe`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatProbe {
    pub result: Result<HeartbeatAck, CallError>,
    /// The answer's `Date` header (RFC 9110 IMF-fixdate), when it had one.
    pub date: Option<String>,
    /// The answer's `Server` header, when it had one.
    pub server: Option<String>,
}

/// The headers of an answer the client looks at. None of them is a request header.
#[derive(Debug, Clone, Default)]
struct AnswerHeaders {
    retry_after: Option<String>,
    date: Option<String>,
    server: Option<String>,
}

/// An HTTP answer: status, the headers above, body.
struct Answer {
    status: u16,
    headers: AnswerHeaders,
    body: Vec<u8>,
}

impl Answer {
    /// What the answer means for a call: its body as `T`, `None` for an empty 2xx (a 204 or
    /// blanks), or the [`CallError`] that [`classify`] makes of an error status.
    fn decode<T: DeserializeOwned>(&self) -> Result<Option<T>, CallError> {
        match classify(self.status, self.headers.retry_after.as_deref(), &self.body) {
            Classified::Empty => Ok(None),
            Classified::Body => parse(self.status, &self.body).map(Some),
            Classified::Error(e) => Err(e),
        }
    }

    /// [`Answer::decode`] for a call whose success always has a body: an empty one is refused
    /// as `EMPTY_BODY`, naming `path`.
    fn decode_required<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        self.decode()?.ok_or_else(|| CallError::Refused {
            status: self.status,
            code: "EMPTY_BODY".into(),
            message: format!("{path} answered {} with an empty body", self.status),
        })
    }
}

/// `e` and its sources joined with `": "` (reqwest's own Display stops at "error sending
/// request"; the cause, e.g. "Connection refused" or a TLS complaint, is in the sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

async fn send(req: reqwest::RequestBuilder) -> Result<Answer, CallError> {
    // reqwest's error Display names the URL (removed here), never the headers.
    let transport = |e: reqwest::Error| CallError::Transport(error_chain(&e.without_url()));
    let resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let headers = AnswerHeaders {
        retry_after: header(reqwest::header::RETRY_AFTER),
        date: header(reqwest::header::DATE),
        server: header(reqwest::header::SERVER),
    };
    let body = resp.bytes().await.map_err(transport)?;
    Ok(Answer {
        status,
        headers,
        body: body.to_vec(),
    })
}

fn parse<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::Refused {
        status,
        code: "BAD_RESPONSE".into(),
        message: format!("the Coordinator's answer does not parse: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_success_is_never_a_job() {
        assert_eq!(classify(204, None, b""), Classified::Empty);
        assert_eq!(classify(200, None, b""), Classified::Empty);
        assert_eq!(classify(200, None, b" \n"), Classified::Empty);
        assert_eq!(classify(200, None, b"{}"), Classified::Body);
    }

    #[test]
    fn errors_split_into_retry_and_refused() {
        let body = br#"{"error":{"code":"RATE_LIMITED","message":"slow down","details":{}}}"#;
        assert_eq!(
            classify(429, Some("2"), body),
            Classified::Error(CallError::Retry {
                status: 429,
                code: "RATE_LIMITED".into(),
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(2)),
            })
        );
        assert!(matches!(
            classify(503, None, b"<html>oops</html>"),
            Classified::Error(CallError::Retry { status: 503, ref code, ref message, retry_after: None })
                if code == "HTTP_503" && message == "<html>oops</html>"
        ));
        for status in [400, 401, 403, 404, 409, 422] {
            assert!(matches!(
                classify(status, Some("5"), b""),
                Classified::Error(CallError::Refused { .. })
            ));
        }
        assert!(matches!(
            classify(408, None, b""),
            Classified::Error(CallError::Retry { .. })
        ));
    }

    #[test]
    fn transport_errors_name_their_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: Connection refused");
    }

    #[test]
    fn display_names_status_and_code() {
        let e = CallError::Refused {
            status: 403,
            code: "FORBIDDEN".into(),
            message: "not yours".into(),
        };
        assert_eq!(e.to_string(), "HTTP 403 FORBIDDEN: not yours");
    }
}

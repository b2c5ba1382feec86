//! The Coordinator API v1 client: heartbeat, long-poll for a job, proof and fail report, the
//! open audits and an audit's answer, the balance, over HTTP(S) with `Authorization: Bearer` and an `Idempotency-Key` on every POST.
//!
//! The decision "what does this answer mean" ([`classify`], [`decode`]) is pure and
//! unit-tested; the rest is a thin reqwest wrapper. The Coordinator is not trusted to be what
//! `COORD_URL` promises (a proxy, a captive portal or a hostile server may answer instead):
//! - only the API's own bodies count: a success is the documented body of that call, a refusal
//!   is a 4xx carrying the API's error body; anything else (an HTML page, a redirect, a 4xx
//!   without the error body, a body over its bound) is [`CallError::Unusable`], to be retried,
//!   never taken as final;
//! - redirects are never followed (the miner talks to `COORD_URL`'s origin only, and never
//!   re-sends a proof elsewhere), and no `Referer` is sent;
//! - every body read is bounded per call ([`NEXT_BODY_MAX`], [`ACK_BODY_MAX`]), before it is
//!   buffered;
//! - every string taken from an answer (an error's code and message, a `Location`) is
//!   escaped and cut ([`crate::untrusted`]) before it is kept.
//!
//! A transport failure carries its whole cause chain ("error sending request: ...: Connection
//! refused"); [`Client::heartbeat_probe`] also returns the answer's `Date` and `Server` headers
//! for `aitbc-miner doctor`. This module must never log or format the API key or any request
//! header, and never treat an empty 2xx body as a job.

use std::time::Duration;

use protocol::api::{
    AuditAck, AuditAnswer, AuditChallenge, Balance, FailAck, FailReport, HeartbeatAck, Job,
    MinerCapabilities, Proof, ProofAck,
};
use serde::de::DeserializeOwned;

use crate::backoff::parse_retry_after;
use crate::config::ApiKey;
use crate::policy::safe_job_id;
use crate::untrusted;
use crate::Error;

/// Timeout of a POST and the margin added to a long-poll's `wait`.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest `next` answer read: one job (the reference Coordinator accepts submissions of
/// 64 KiB by default).
pub const NEXT_BODY_MAX: usize = 1 << 20;
/// The largest answer read from every other call (acks, the balance, error bodies).
pub const ACK_BODY_MAX: usize = 64 << 10;
/// The largest list of open audits read (each a job id and at most a few hundred row numbers).
pub const AUDITS_BODY_MAX: usize = 1 << 20;

/// How much of a server's error message is kept, in characters.
const MESSAGE_MAX_CHARS: usize = 300;
/// How much of an error code is kept, in characters (the API's are short upper-case words).
const CODE_MAX_CHARS: usize = 64;

/// Why a call did not give an answer. Every string in it is already escaped.
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
    /// A definitive refusal: a 4xx (other than 408 and 429) with the API's error body.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// An answer that is not the API's: a 2xx whose body is not the call's, a redirect, a 4xx
    /// without the API's error body, a body over its bound. Retry with backoff; it settles
    /// nothing.
    Unusable { status: u16, why: String },
    /// `next` only: a job the miner cannot take whose id is still one it may name (it does not
    /// parse as a job). The caller reports it through `/v1/miner/fail`.
    BadJob {
        id: String,
        attempt: Option<u32>,
        why: String,
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
            CallError::Unusable { status, why } => {
                write!(
                    f,
                    "HTTP {status}, not an answer of the Coordinator API: {why}"
                )
            }
            CallError::BadJob { id, why, .. } => write!(f, "job {id} cannot be taken: {why}"),
        }
    }
}

impl CallError {
    /// How long the heartbeat and fetch loops wait after this error (pure): a definitive
    /// refusal the longest pause, anything else the next backoff step (at least `Retry-After`).
    pub fn wait(&self) -> crate::backoff::Wait {
        use crate::backoff::Wait;
        match self {
            CallError::Refused { .. } => Wait::Longest,
            CallError::Retry { retry_after, .. } => Wait::Backoff(*retry_after),
            CallError::Transport(_) | CallError::Unusable { .. } | CallError::BadJob { .. } => {
                Wait::Backoff(None)
            }
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

/// Classifies an answer by status, its `Retry-After` and `Location` headers and its body
/// (pure).
pub fn classify(
    status: u16,
    retry_after: Option<&str>,
    location: Option<&str>,
    body: &[u8],
) -> Classified {
    if (200..300).contains(&status) {
        return if body.iter().all(u8::is_ascii_whitespace) {
            Classified::Empty
        } else {
            Classified::Body
        };
    }
    if (300..400).contains(&status) {
        let to = location.map_or_else(|| "nowhere".to_owned(), |l| untrusted::bounded(l, 200));
        return Classified::Error(CallError::Unusable {
            status,
            why: format!(
                "a redirect to {to}, not followed: the miner talks to COORD_URL's origin only"
            ),
        });
    }
    let api = serde_json::from_slice::<ApiErrorBody>(body).ok().map(|b| {
        (
            untrusted::bounded(&b.error.code, CODE_MAX_CHARS),
            untrusted::bounded(&b.error.message, MESSAGE_MAX_CHARS),
        )
    });
    if status == 408 || status == 429 || (500..600).contains(&status) {
        let (code, message) = api.unwrap_or_else(|| (format!("HTTP_{status}"), excerpt(body)));
        return Classified::Error(CallError::Retry {
            status,
            code,
            message,
            retry_after: retry_after.and_then(parse_retry_after),
        });
    }
    Classified::Error(match (status, api) {
        (400..=499, Some((code, message))) => CallError::Refused {
            status,
            code,
            message,
        },
        _ => CallError::Unusable {
            status,
            why: format!("no API error body: {}", excerpt(body)),
        },
    })
}

/// The API's error body (`protocol::api::ErrorBody`), read with the code as the text it is, so
/// a code this build does not know is still shown as sent.
#[derive(serde::Deserialize)]
struct ApiErrorBody {
    error: ApiErrorFields,
}

#[derive(serde::Deserialize)]
struct ApiErrorFields {
    code: String,
    message: String,
}

/// The start of a body that is not the API's, escaped, for a log line.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(4 * MESSAGE_MAX_CHARS)]);
    let text = untrusted::bounded(text.trim(), MESSAGE_MAX_CHARS);
    if text.is_empty() {
        "an empty body".to_owned()
    } else {
        text
    }
}

/// What a 2xx body of `what` means: the value, or [`CallError::Unusable`] naming `what` and why
/// it is not one (pure).
pub fn decode<T: DeserializeOwned>(status: u16, what: &str, body: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError::Unusable {
        status,
        why: format!(
            "the body is not {what}: {} (it starts {})",
            untrusted::bounded(&e.to_string(), MESSAGE_MAX_CHARS),
            excerpt(body)
        ),
    })
}

/// A `next` answer's job, checked (pure): one whose id is not a safe name is
/// [`CallError::Unusable`]; one that does not parse but names a safe id is
/// [`CallError::BadJob`], so the miner can report it.
pub fn decode_job(status: u16, body: &[u8]) -> Result<Job, CallError> {
    match decode::<Job>(status, "a job", body) {
        Ok(job) if safe_job_id(&job.id) => Ok(job),
        Ok(job) => Err(CallError::Unusable {
            status,
            why: format!(
                "the job id {:?} is not 1..=128 of [A-Za-z0-9._-] (not starting with a dot)",
                untrusted::bounded(&job.id, 200)
            ),
        }),
        Err(unusable) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            match v["id"].as_str() {
                Some(id) if safe_job_id(id) => Err(CallError::BadJob {
                    id: id.to_owned(),
                    attempt: v["attempt"].as_u64().and_then(|a| u32::try_from(a).ok()),
                    why: unusable.to_string(),
                }),
                _ => Err(unusable),
            }
        }
    }
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
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
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

    /// `POST /v1/miner/audit`: the opened rows of an audit; the verdict.
    pub async fn audit(
        &self,
        answer: &AuditAnswer,
        idempotency_key: &str,
    ) -> Result<AuditAck, CallError> {
        self.post("/v1/miner/audit", answer, idempotency_key).await
    }

    /// `GET /v1/miner/audits?miner=`: the open audits of this miner.
    pub async fn audits(&self, miner_id: &str) -> Result<Vec<AuditChallenge>, CallError> {
        let req = self
            .http
            .get(format!("{}/v1/miner/audits", self.base))
            .query(&[("miner", miner_id)])
            .timeout(REQUEST_TIMEOUT)
            .bearer_auth(&self.key);
        send(req, AUDITS_BODY_MAX)
            .await?
            .decode_required("/v1/miner/audits")
    }

    /// `GET /v1/miner/next`: `Ok(None)` on 204 or any empty 2xx body; a job that cannot be
    /// taken is an error (see [`decode_job`]).
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
        let answer = send(req, NEXT_BODY_MAX).await?;
        match answer.classify() {
            Classified::Empty => Ok(None),
            Classified::Body => decode_job(answer.status, &answer.body).map(Some),
            Classified::Error(e) => Err(e),
        }
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
        send(req, ACK_BODY_MAX)
            .await?
            .decode_required("/v1/wallet/balance")
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
        let answer = match send(req, ACK_BODY_MAX).await {
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
    location: Option<String>,
    date: Option<String>,
    server: Option<String>,
}

/// An HTTP answer: status, the headers above, body (at most the call's bound).
struct Answer {
    status: u16,
    headers: AnswerHeaders,
    body: Vec<u8>,
}

impl Answer {
    fn classify(&self) -> Classified {
        classify(
            self.status,
            self.headers.retry_after.as_deref(),
            self.headers.location.as_deref(),
            &self.body,
        )
    }

    /// The body of a call whose success always has one, as `T`; an empty or malformed 2xx is
    /// [`CallError::Unusable`], naming `path`.
    fn decode_required<T: DeserializeOwned>(&self, path: &str) -> Result<T, CallError> {
        match self.classify() {
            Classified::Body => decode(self.status, &format!("the answer of {path}"), &self.body),
            Classified::Empty => Err(CallError::Unusable {
                status: self.status,
                why: format!("{path} answered with an empty body"),
            }),
            Classified::Error(e) => Err(e),
        }
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

/// Sends the request and reads at most `limit` bytes of the answer's body: a larger body
/// (announced by `Content-Length` or found while reading) is [`CallError::Unusable`], and the
/// connection is dropped rather than read to its end.
async fn send(req: reqwest::RequestBuilder, limit: usize) -> Result<Answer, CallError> {
    // reqwest's error Display names the URL (removed here), never the headers.
    let transport = |e: reqwest::Error| CallError::Transport(error_chain(&e.without_url()));
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let header = |name: reqwest::header::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let headers = AnswerHeaders {
        retry_after: header(reqwest::header::RETRY_AFTER),
        location: header(reqwest::header::LOCATION),
        date: header(reqwest::header::DATE),
        server: header(reqwest::header::SERVER),
    };
    let too_large = |size: String| CallError::Unusable {
        status,
        why: format!("a body of {size} bytes, more than the {limit} this call reads"),
    };
    if let Some(len) = resp.content_length().filter(|&n| n > limit as u64) {
        return Err(too_large(len.to_string()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large(format!("over {limit}")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_ERROR: &[u8] =
        br#"{"error":{"code":"STALE_ATTEMPT","message":"attempt 1 is not 2","details":{}}}"#;

    fn class(status: u16, body: &[u8]) -> Classified {
        classify(status, None, None, body)
    }

    #[test]
    fn empty_success_is_never_a_job() {
        assert_eq!(class(204, b""), Classified::Empty);
        assert_eq!(class(200, b""), Classified::Empty);
        assert_eq!(class(200, b" \n"), Classified::Empty);
        assert_eq!(class(200, b"{}"), Classified::Body);
    }

    #[test]
    fn errors_split_into_retry_refused_and_unusable() {
        let body = br#"{"error":{"code":"RATE_LIMITED","message":"slow down","details":{}}}"#;
        assert_eq!(
            classify(429, Some("2"), None, body),
            Classified::Error(CallError::Retry {
                status: 429,
                code: "RATE_LIMITED".into(),
                message: "slow down".into(),
                retry_after: Some(Duration::from_secs(2)),
            })
        );
        assert!(matches!(
            class(503, b"<html>oops</html>"),
            Classified::Error(CallError::Retry { status: 503, ref code, ref message, retry_after: None })
                if code == "HTTP_503" && message == "<html>oops</html>"
        ));
        assert!(matches!(
            class(408, b""),
            Classified::Error(CallError::Retry { .. })
        ));
        // Only a 4xx with the API's error body is a refusal the miner may take as final.
        for status in [400, 401, 403, 404, 409, 413, 422] {
            assert!(
                matches!(class(status, API_ERROR), Classified::Error(CallError::Refused { status: s, ref code, .. }) if s == status && code == "STALE_ATTEMPT"),
                "{status}"
            );
            for not_api in [&b""[..], b"<html>Not Found</html>", br#"{"error":"nope"}"#] {
                assert!(
                    matches!(
                        class(status, not_api),
                        Classified::Error(CallError::Unusable { .. })
                    ),
                    "{status} {not_api:?}"
                );
            }
        }
        // A code this build does not know is kept as sent.
        let odd = br#"{"error":{"code":"NEW_CODE","message":"m"}}"#;
        assert!(
            matches!(class(409, odd), Classified::Error(CallError::Refused { ref code, .. }) if code == "NEW_CODE")
        );
        for status in [100, 600, 999] {
            assert!(
                matches!(
                    class(status, API_ERROR),
                    Classified::Error(CallError::Unusable { .. })
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn each_error_says_how_long_to_wait() {
        use crate::backoff::Wait;
        let secs = Some(Duration::from_secs(2));
        let cases = [
            (CallError::Transport("reset".into()), Wait::Backoff(None)),
            (
                CallError::Retry {
                    status: 429,
                    code: "RATE_LIMITED".into(),
                    message: String::new(),
                    retry_after: secs,
                },
                Wait::Backoff(secs),
            ),
            (
                CallError::Unusable {
                    status: 200,
                    why: "html".into(),
                },
                Wait::Backoff(None),
            ),
            (
                CallError::Refused {
                    status: 401,
                    code: "UNAUTHORIZED".into(),
                    message: String::new(),
                },
                Wait::Longest,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.wait(), want, "{e}");
        }
    }

    #[test]
    fn redirects_are_unusable_and_name_where_they_pointed() {
        for status in [301, 302, 303, 307, 308] {
            let Classified::Error(CallError::Unusable { status: s, why }) =
                classify(status, None, Some("http://elsewhere.invalid/\n"), API_ERROR)
            else {
                panic!("{status} must be unusable");
            };
            assert_eq!(s, status);
            assert!(why.contains("http://elsewhere.invalid/\\n"), "{why}");
            assert!(why.contains("not followed"), "{why}");
        }
    }

    #[test]
    fn strings_from_an_answer_are_escaped_and_cut() {
        let body = serde_json::to_vec(&serde_json::json!({"error": {
            "code": "X\n2026 ERROR forged", "message": format!("m\u{1b}[31m\u{202e}{}", "z".repeat(1000))}}))
        .unwrap();
        let Classified::Error(CallError::Refused { code, message, .. }) = class(403, &body) else {
            panic!("a refusal");
        };
        assert_eq!(code, "X\\n2026 ERROR forged");
        assert!(message.starts_with("m\\u{1b}[31m\\u{202e}zz"), "{message}");
        assert!(
            message.chars().count() <= MESSAGE_MAX_CHARS + 20,
            "{message}"
        );
        let Classified::Error(e) = class(404, b"<html>\n\x1b[2J</html>") else {
            panic!("unusable");
        };
        assert!(
            !e.to_string().chars().any(crate::untrusted::is_unsafe),
            "{e}"
        );
    }

    #[test]
    fn a_success_must_be_the_calls_own_body() {
        let ok = br#"{"miner_id":"m","wallet":"w","accepted":true}"#;
        assert!(decode::<serde_json::Value>(200, "x", ok).is_ok());
        for body in [
            &b"<html>captive portal</html>"[..],
            b"{\"ok\":true}",
            b"[1]",
        ] {
            let e = decode::<ProofAck>(200, "a proof ack", body).unwrap_err();
            assert!(
                matches!(e, CallError::Unusable { status: 200, ref why } if why.contains("a proof ack")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_job_must_parse_and_carry_a_safe_id() {
        let job = |id: &str| {
            serde_json::to_vec(&serde_json::json!({
                "id": id, "workload": "torch_bench", "params": {}, "limits": {}, "reward": 1,
                "attempt": 2, "lease_expires_at": "2026-01-01T00:00:00Z",
                "created_at": "2026-01-01T00:00:00Z"}))
            .unwrap()
        };
        assert_eq!(decode_job(200, &job("job-1")).unwrap().id, "job-1");
        for bad in ["../../etc/passwd", "", ".hidden", &"a".repeat(300)] {
            assert!(
                matches!(decode_job(200, &job(bad)), Err(CallError::Unusable { .. })),
                "{bad}"
            );
        }
        // Does not parse, but names an id the miner may report.
        let shapeless = br#"{"id":"job-bad-1","attempt":3,"workload":7}"#;
        assert!(matches!(decode_job(200, shapeless),
            Err(CallError::BadJob { ref id, attempt: Some(3), .. }) if id == "job-bad-1"));
        let hostile = br#"{"id":"../x","workload":7}"#;
        assert!(matches!(
            decode_job(200, hostile),
            Err(CallError::Unusable { .. })
        ));
        assert!(matches!(
            decode_job(200, b"<html>"),
            Err(CallError::Unusable { .. })
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

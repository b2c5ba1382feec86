//! The HTTP face of the Coordinator: the axum router, one handler per endpoint, and the
//! translation of every rejection (auth, rate limit, body size, JSON, query, path, unknown
//! route, wrong method) into the API's error body.
//!
//! Handlers authenticate, parse with [`crate::validate`], run the store on the blocking pool
//! and answer. They must never hold state of their own, never answer a client error with a
//! 5xx, never panic on input and never put a key into a log line or a response.

use std::sync::Arc;

use aitbc_protocol::api::{
    ArtifactStatus, AuditAck, AuditAnswer, AuditVerdict, ErrorCode, FailReason, FailReport,
    HeartbeatAck, JobResult, JobState, JobView, MinerCapabilities, MinerView, Proof, SubmitJob,
    VerificationStatus, IDEMPOTENCY_HEADER,
};
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_protocol::workload::Workload;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::artifacts::{Artifacts, Held, CHUNK_BYTES};
use crate::auth::{self, KeyInfo, Scope};
use crate::error::{Answer, Error, Refusal};
use crate::store::{AuditClaim, AuditTarget, IdemKey, Matcher, MinerRecord, NewJob, Store};
use crate::{now_ms, stopped, validate, Inner};

type App = Arc<Inner>;

/// Longest job id accepted in a path or body.
const MAX_ID: usize = 128;
/// Longest fail-report message.
const MAX_MESSAGE: usize = 4096;

pub(crate) fn router(inner: App) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/miner/heartbeat", post(heartbeat))
        .route("/v1/miner/next", get(next))
        .route("/v1/miner/proof", post(proof))
        .route("/v1/miner/fail", post(fail))
        .route("/v1/miner/audits", get(audits))
        .route("/v1/miner/audit", post(audit))
        .route("/v1/client/jobs", post(submit))
        .route("/v1/client/jobs/{id}", get(job))
        .route("/v1/client/jobs/{id}/artifact", get(download))
        .route(
            "/v1/miner/jobs/{id}/artifact",
            get(upload_status).put(upload),
        )
        .route("/v1/wallet/balance", get(balance))
        .route("/v1/wallet/ledger", get(ledger))
        .route("/v1/admin/jobs", get(admin_jobs))
        .route("/v1/admin/miners", get(admin_miners))
        .route("/v1/admin/miners/{id}/reinstate", post(reinstate))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(inner)
}

/// An error on its way to becoming a response.
pub struct HttpError(Error);

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        HttpError(e)
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        HttpError(Error::Refused(r))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        match self.0 {
            Error::Refused(r) => respond(r.answer()),
            other => {
                tracing::error!(error = %other, "request failed inside the coordinator");
                respond(
                    Refusal::new(
                        ErrorCode::Internal,
                        "the coordinator failed; the request may be retried".into(),
                    )
                    .answer(),
                )
            }
        }
    }
}

type Result<T> = std::result::Result<T, HttpError>;

/// Turns a stored or fresh answer into a response.
pub fn respond(a: Answer) -> Response {
    let empty = a.body.is_empty();
    let mut resp = Response::new(Body::from(a.body));
    *resp.status_mut() =
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !empty {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(secs) = a.retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn ok_json<T: serde::Serialize>(status: u16, v: &T) -> Result<Response> {
    Ok(respond(Answer::json(status, v)?))
}

async fn blocking<T, F>(inner: &App, f: F) -> std::result::Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> std::result::Result<T, Error> + Send + 'static,
{
    let store = inner.store.clone();
    tokio::task::spawn_blocking(move || f(&*store))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Verifies the bearer key (a repeated Authorization header is 400; then one SHA-256 and the
/// in-memory cache or one indexed lookup), takes a rate-limit token (every verified request
/// counts, refused ones too) and checks its scope against `need` (`None`: any scope).
async fn authenticate(inner: &App, headers: &HeaderMap, need: Option<Scope>) -> Result<KeyInfo> {
    let values: Vec<&[u8]> = headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let key = auth::bearer(&values)?;
    let hash = auth::key_hash(key);
    let cached = inner
        .keys
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&hash)
        .copied();
    let info = match cached {
        Some(info) => info,
        None => {
            let h = hash.clone();
            let found = blocking(inner, move |s| s.find_key(&h)).await?;
            let info = found
                .ok_or_else(|| Refusal::new(ErrorCode::Unauthorized, "unknown API key".into()))?;
            inner
                .keys
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash, info);
            info
        }
    };
    let rate = inner.config.rate_limit_per_sec;
    let burst = rate.saturating_mul(2);
    let now = crate::instant();
    let taken = inner
        .buckets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(info.id)
        .or_insert_with(|| auth::Bucket::full(burst, now))
        .take(rate, burst, now);
    if let Err(wait) = taken {
        let mut r = Refusal::new(
            ErrorCode::RateLimited,
            format!("rate limit of {rate} requests per second exceeded for this key"),
        );
        r.retry_after = Some(auth::retry_after_secs(wait));
        return Err(r.into());
    }
    if let Some(need) = need {
        if !info.scope.allows(need) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "this endpoint needs a {} key; this key has scope {}",
                    need.as_str(),
                    info.scope.as_str()
                ),
            )
            .into());
        }
    }
    Ok(info)
}

/// Reads the body, refusing more than `max_body_bytes` with 413.
async fn read_body(inner: &App, headers: &HeaderMap, body: Body) -> Result<Bytes> {
    read_body_up_to(headers, body, inner.config.max_body_bytes).await
}

/// Reads the body, refusing more than `limit` bytes with 413.
async fn read_body_up_to(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes> {
    let too_large = || {
        Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than the {limit} bytes this coordinator accepts"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large().into());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large().into()),
        Err(e) => Err(Refusal::bad_request(format!("could not read the body: {e}")).into()),
    }
}

/// The idempotency record of a POST, if it carries an Idempotency-Key.
fn idem_of(headers: &HeaderMap, key: KeyInfo, route: &str, body: &[u8]) -> Result<Option<IdemKey>> {
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let idem = validate::idempotency_key(raw.as_bytes())?;
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update(b"\n");
    h.update(body);
    Ok(Some(IdemKey {
        key_id: key.id,
        key: idem,
        request_hash: aitbc_protocol::hex::encode(&h.finalize()),
    }))
}

fn wake(inner: &App) {
    inner.queued.send_modify(|g| *g = g.wrapping_add(1));
}

async fn health() -> Response {
    respond(Answer {
        status: 200,
        body: br#"{"status":"ok"}"#.to_vec(),
        retry_after: None,
    })
}

async fn heartbeat(State(inner): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let bytes = read_body(&inner, &headers, body).await?;
    let idem = idem_of(&headers, key, "POST /v1/miner/heartbeat", &bytes)?;
    let caps: MinerCapabilities = validate::json_body(&bytes)?;
    validate::capabilities(&caps)?;
    let now = now_ms();
    let unchanged = {
        let miners = inner.miners.read().unwrap_or_else(|e| e.into_inner());
        match miners.get(&caps.miner_id) {
            Some(m) if m.key_id != key.id => {
                return Err(Refusal::miner_id_taken(&caps.miner_id).into())
            }
            Some(m) => same_when_stored(&m.caps, &caps),
            None => false,
        }
    };
    let record = MinerRecord {
        miner_id: caps.miner_id.clone(),
        key_id: key.id,
        wallet: caps.wallet.clone(),
        caps,
        last_seen_ms: now,
    };
    if unchanged && idem.is_none() {
        // The hot path: nothing to persist; last_seen and the GPU temperature move in memory.
        if let Some(m) = inner
            .miners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&record.miner_id)
        {
            m.last_seen_ms = now;
            m.caps = record.caps.clone();
        }
        let ack = HeartbeatAck {
            miner_id: record.miner_id,
            wallet: record.wallet,
            server_time: crate::sqlite::from_ms(now)?,
        };
        return ok_json(200, &ack);
    }
    let rec = record.clone();
    let outcome = blocking(&inner, move |s| {
        s.heartbeat(&rec, !unchanged, idem.as_ref())
    })
    .await?;
    if outcome.answer.status == 200 {
        inner
            .miners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.miner_id.clone(), record);
    }
    Ok(respond(outcome.answer))
}

async fn next(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let q = validate::next_query(q.as_deref(), inner.config.max_wait)?;
    let matcher = {
        let miners = inner.miners.read().unwrap_or_else(|e| e.into_inner());
        match miners.get(&q.miner) {
            None => {
                return Err(Refusal::new(
                    ErrorCode::UnknownMiner,
                    format!(
                        "miner {:?} has not sent a heartbeat; send POST /v1/miner/heartbeat first",
                        q.miner
                    ),
                )
                .into())
            }
            Some(m) if m.key_id != key.id => return Err(Refusal::miner_id_taken(&q.miner).into()),
            Some(m) => Matcher::for_miner(m),
        }
    };
    let suspended = inner
        .suspended
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&key.id);
    if suspended {
        return Err(Refusal::new(
            ErrorCode::MinerSuspended,
            "this miner key is suspended after failing audits; an admin can reinstate it \
             (aitbc-coordinator admin reinstate)"
                .to_string(),
        )
        .into());
    }
    let deadline = tokio::time::Instant::now() + q.wait;
    let margin = i64::try_from(inner.config.lease_margin.as_millis()).unwrap_or(i64::MAX);
    let mut queued = inner.queued.subscribe();
    let mut stop = inner.stopping.subscribe();
    loop {
        queued.borrow_and_update();
        if inner.store.any_queued() {
            let m = matcher.clone();
            let job = blocking(&inner, move |s| s.assign(&m, now_ms(), margin)).await?;
            if let Some(job) = job {
                return ok_json(200, &job);
            }
        }
        if *stop.borrow() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::select! {
            changed = queued.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(deadline) => break,
            () = stopped(&mut stop) => break,
        }
    }
    Ok(respond(Answer {
        status: 204,
        body: Vec::new(),
        retry_after: None,
    }))
}

/// Whether two heartbeats store the same: equal but for the GPU temperature, which changes on
/// nearly every heartbeat and is kept in memory only (like `last_seen`), so that a steady miner
/// costs no database write. A change of health, throttle reasons or XID count is stored.
fn same_when_stored(a: &MinerCapabilities, b: &MinerCapabilities) -> bool {
    fn cool(c: &MinerCapabilities) -> Option<aitbc_protocol::api::GpuHealth> {
        c.gpu_health.clone().map(|mut h| {
            h.temperature_c = None;
            h
        })
    }
    let (mut a2, mut b2) = (a.clone(), b.clone());
    a2.gpu_health = cool(a);
    b2.gpu_health = cool(b);
    a2 == b2
}

fn check_id(field: &str, id: &str) -> std::result::Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(Refusal::invalid(field, id, "expected 1 to 128 characters"));
    }
    Ok(())
}

async fn proof(State(inner): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let bytes = read_body(&inner, &headers, body).await?;
    let idem = idem_of(&headers, key, "POST /v1/miner/proof", &bytes)?;
    let p: Proof = validate::json_body(&bytes)?;
    check_id("id", &p.id)?;
    if let Some(m) = &p.miner_id {
        validate::miner_id("miner_id", m)?;
    }
    validate::metrics(&p.metrics)?;
    let now = now_ms();
    let policy = inner.policy.clone();
    let outcome = blocking(&inner, move |s| {
        s.proof(key.id, &p, &policy, idem.as_ref(), now)
    })
    .await?;
    if outcome.requeued {
        wake(&inner);
    }
    Ok(respond(outcome.answer))
}

async fn fail(State(inner): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let bytes = read_body(&inner, &headers, body).await?;
    let idem = idem_of(&headers, key, "POST /v1/miner/fail", &bytes)?;
    let f: FailReport = validate::json_body(&bytes)?;
    check_id("id", &f.id)?;
    if let Some(m) = &f.miner_id {
        validate::miner_id("miner_id", m)?;
    }
    if f.message.len() > MAX_MESSAGE {
        return Err(Refusal::invalid("message", &f.message, "at most 4096 bytes").into());
    }
    if matches!(f.reason, FailReason::AuditFailed | FailReason::AuditTimeout) {
        return Err(Refusal::invalid(
            "reason",
            f.reason.as_str(),
            "set by the Coordinator when a proof fails its audit; a miner never reports it",
        )
        .into());
    }
    let now = now_ms();
    let outcome = blocking(&inner, move |s| s.fail(key.id, &f, idem.as_ref(), now)).await?;
    if outcome.requeued {
        wake(&inner);
    }
    Ok(respond(outcome.answer))
}

async fn submit(State(inner): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Client)).await?;
    let bytes = read_body(&inner, &headers, body).await?;
    let idem = idem_of(&headers, key, "POST /v1/client/jobs", &bytes)?;
    let submit: SubmitJob = validate::json_body(&bytes)?;
    validate::submission(&submit)?;
    if inner.policy.config.enabled
        && Workload::parse(&submit.workload) != Some(Workload::TorchBench)
    {
        return Err(Refusal::invalid(
            "workload",
            &submit.workload,
            "this coordinator pays only for verified work, and this workload has no verifier \
             yet (its operator may start it with --verify off)",
        )
        .into());
    }
    let job = NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        client_key_id: key.id,
        submit,
        max_attempts: inner.config.max_attempts.max(1),
    };
    let now = now_ms();
    let outcome = blocking(&inner, move |s| s.submit(&job, idem.as_ref(), now)).await?;
    if outcome.requeued {
        wake(&inner);
    }
    Ok(respond(outcome.answer))
}

/// `GET /v1/miner/audits?miner=ID`: the open audits of this key's miner.
async fn audits(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let pairs = validate::query_pairs(q.as_deref())?;
    let miner = validate::miner_param(&pairs)?;
    let owner = inner
        .miners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&miner)
        .map(|m| m.key_id);
    if owner.is_some_and(|k| k != key.id) {
        return Err(Refusal::miner_id_taken(&miner).into());
    }
    let open = blocking(&inner, move |s| s.open_audits(key.id, &miner)).await?;
    ok_json(200, &open)
}

/// `POST /v1/miner/audit`: the opened rows of an audit. The rows are checked (recomputed) on
/// the blocking pool with no lock held; the verdict is then applied in one transaction that
/// checks the same audit is still open.
async fn audit(State(inner): State<App>, headers: HeaderMap, body: Body) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Miner)).await?;
    let limit = inner.policy.config.max_answer_bytes;
    let bytes = read_body_up_to(&headers, body, limit).await?;
    let idem = idem_of(&headers, key, "POST /v1/miner/audit", &bytes)?;
    let answer: AuditAnswer = validate::json_body(&bytes)?;
    validate::audit_answer(&answer, inner.policy.config.rows)?;
    let id = answer.id.clone();
    let target = blocking(&inner, move |s| s.audit_target(&id)).await?;
    let open = target.filter(|t| {
        t.status == Some(VerificationStatus::Challenged)
            && t.attempt == answer.attempt
            && t.prover_key_id == Some(key.id)
            && answer
                .miner_id
                .as_deref()
                .is_none_or(|m| t.prover_miner_id.as_deref() == Some(m))
    });
    // Held until the verdict is stored, so no second check of this audit starts meanwhile.
    let _held = match open {
        Some(_) => match Checking::claim(&inner, &answer.id, answer.attempt) {
            Some(held) => Some(held),
            None => {
                let mut r = Refusal::new(
                    ErrorCode::Unavailable,
                    "an answer to this audit is already being checked; send it again".into(),
                );
                r.retry_after = Some(1);
                return Err(r.into());
            }
        },
        None => None,
    };
    let verdict = match open {
        Some(t) => {
            let _permit = inner
                .check_permits
                .acquire()
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            let a = answer.clone();
            Some(
                tokio::task::spawn_blocking(move || check_answer(&t, &a))
                    .await
                    .map_err(|e| Error::Task(e.to_string()))?,
            )
        }
        None => None,
    };
    let policy = inner.policy.clone();
    let now = now_ms();
    let outcome = blocking(&inner, move |s| {
        let claim = AuditClaim {
            key_id: key.id,
            id: &answer.id,
            miner_id: answer.miner_id.as_deref(),
            attempt: answer.attempt,
            verdict,
        };
        s.audit_verdict(&claim, &policy, idem.as_ref(), now)
    })
    .await?;
    if outcome.requeued {
        wake(&inner);
    }
    let failed = serde_json::from_slice::<AuditAck>(&outcome.answer.body)
        .is_ok_and(|a| a.verdict == AuditVerdict::Failed);
    if failed {
        crate::refresh_suspended(&inner).await?;
    }
    Ok(respond(outcome.answer))
}

/// One audit's answer being checked: at most one at a time per (job, attempt), released when
/// dropped (the verdict applied, or the request gone).
struct Checking<'a> {
    inner: &'a App,
    key: (String, u32),
}

impl<'a> Checking<'a> {
    fn claim(inner: &'a App, id: &str, attempt: u32) -> Option<Checking<'a>> {
        let key = (id.to_string(), attempt);
        // The lock is released before a guard exists: a refused claim builds none, so no
        // drop can run (and lock again, or release the other claim) while it is held.
        let fresh = inner
            .checking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        fresh.then(|| Checking { inner, key })
    }
}

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        self.inner
            .checking
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The verdict on an answer to an open audit (the workload's own check).
fn check_answer(t: &AuditTarget, a: &AuditAnswer) -> std::result::Result<(), String> {
    if Workload::parse(&t.workload) != Some(Workload::TorchBench) {
        return Err(format!("workload {:?} has no audit", t.workload));
    }
    let params = TorchBenchParams::parse(&t.params).map_err(|e| e.to_string())?;
    let root = t
        .merkle_root
        .as_deref()
        .and_then(aitbc_protocol::hex::digest)
        .ok_or_else(|| "the proof carries no merkle_root".to_string())?;
    crate::audit::check_torch_bench(&params, &root, &t.rows, a)
}

/// `POST /v1/admin/miners/{id}/reinstate`: lifts the suspension of the key owning the miner.
async fn reinstate(
    State(inner): State<App>,
    headers: HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let key = authenticate(&inner, &headers, Some(Scope::Admin)).await?;
    // Reinstating is idempotent by itself; the header is still checked as on every POST.
    idem_of(&headers, key, "POST /v1/admin/miners/{id}/reinstate", b"")?;
    let Path(id) = id.map_err(|e| Refusal::bad_request(format!("bad miner id in path: {e}")))?;
    validate::miner_id("id", &id)?;
    let lookup = id.clone();
    match blocking(&inner, move |s| s.reinstate(&lookup)).await? {
        Some(standing) => {
            crate::refresh_suspended(&inner).await?;
            tracing::warn!(miner = %id, "miner key reinstated by an admin");
            ok_json(200, &standing)
        }
        None => Err(Refusal::new(ErrorCode::NotFound, format!("no miner {id:?}")).into()),
    }
}

/// The job `id` as its client (or an admin) may see it. Someone else's job answers 404, exactly
/// like a missing one, so ids do not leak.
async fn client_job(
    inner: &App,
    headers: &HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<JobView> {
    let key = authenticate(inner, headers, Some(Scope::Client)).await?;
    let Path(id) = id.map_err(|e| Refusal::bad_request(format!("bad job id in path: {e}")))?;
    check_id("id", &id)?;
    let lookup = id.clone();
    match blocking(inner, move |s| s.job(&lookup)).await? {
        Some((view, owner)) if owner == key.id || key.scope == Scope::Admin => Ok(view),
        _ => Err(Refusal::new(ErrorCode::NotFound, format!("no job {id:?}")).into()),
    }
}

async fn job(
    State(inner): State<App>,
    headers: HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let view = client_job(&inner, &headers, id).await?;
    ok_json(200, &with_results(&inner, vec![view]).await?.pop())
}

/// Fills each view's `result` from its accepted proof and the artifact directory.
async fn with_results(inner: &App, mut views: Vec<JobView>) -> Result<Vec<JobView>> {
    let Some(artifacts) = inner.artifacts.clone() else {
        for v in &mut views {
            v.result = result_of(v, None);
        }
        return Ok(views);
    };
    let owners: Vec<Option<i64>> = views.iter().map(|v| prover_key(inner, v)).collect();
    let filled = on_pool(move || {
        for (v, owner) in views.iter_mut().zip(owners) {
            let held = match (accepted(v), owner) {
                (Some((sha, Some(size))), Some(key_id)) => {
                    Some(artifacts.held(&sha, key_id, size)?)
                }
                _ => None,
            };
            v.result = result_of(v, held);
        }
        Ok(views)
    })
    .await?;
    Ok(filled)
}

/// The output digest and length of a job's accepted proof: one that is being verified or has
/// settled (a rejected proof is cleared from its job).
fn accepted(v: &JobView) -> Option<(String, Option<u64>)> {
    let p = v.proof.as_ref()?;
    matches!(v.state, JobState::Verifying | JobState::Completed)
        .then(|| (p.output_sha.clone(), p.output_len))
}

fn result_of(v: &JobView, held: Option<Held>) -> Option<JobResult> {
    let p = v.proof.as_ref()?;
    accepted(v)?;
    let complete = held.is_some_and(|h| h.complete);
    Some(JobResult {
        output_sha: p.output_sha.clone(),
        merkle_root: p.merkle_root.clone(),
        output_len: p.output_len,
        artifact_received: held.map_or(0, |h| h.received),
        artifact_ready: complete && v.state == JobState::Completed,
    })
}

/// The key that owns the miner recorded on the job (its prover, once a proof is in).
fn prover_key(inner: &App, v: &JobView) -> Option<i64> {
    let miners = inner.miners.read().unwrap_or_else(|e| e.into_inner());
    v.miner_id
        .as_ref()
        .and_then(|m| miners.get(m))
        .map(|m| m.key_id)
}

fn artifact_dir(inner: &App) -> Result<Arc<Artifacts>> {
    inner.artifacts.clone().ok_or_else(|| {
        Refusal::new(
            ErrorCode::Unavailable,
            "this coordinator keeps no artifacts (it was started without an artifact directory)"
                .to_string(),
        )
        .into()
    })
}

/// What an upload of job `id`'s artifact by `key` for `attempt` is checked against: the job's
/// accepted proof of that attempt, by this key, with an output of at most the configured size.
/// Answers the digest and size.
async fn upload_target(inner: &App, key: KeyInfo, id: &str, attempt: u32) -> Result<(String, u64)> {
    let lookup = id.to_string();
    let Some((view, _)) = blocking(inner, move |s| s.job(&lookup)).await? else {
        return Err(Refusal::new(ErrorCode::NotFound, format!("no job {id:?}")).into());
    };
    if view.attempt != attempt {
        return Err(Refusal::new(
            ErrorCode::StaleAttempt,
            format!(
                "attempt = {attempt}: the job is at attempt {}; only its accepted proof's \
                 attempt uploads",
                view.attempt
            ),
        )
        .into());
    }
    let Some((sha, size)) = accepted(&view) else {
        let code = if view.state == JobState::Failed {
            ErrorCode::JobFinished
        } else {
            ErrorCode::NotAssigned
        };
        return Err(Refusal::new(
            code,
            format!(
                "attempt {attempt} has no accepted proof (the job is {})",
                view.state.as_str()
            ),
        )
        .into());
    };
    if prover_key(inner, &view) != Some(key.id) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "the job's proof was sent under another key".to_string(),
        )
        .into());
    }
    let size = size.ok_or_else(|| {
        Refusal::new(
            ErrorCode::ValidationFailed,
            "the proof declared no output_len, so its output has no artifact".to_string(),
        )
    })?;
    let max = inner.config.artifact_max_bytes;
    if size > max {
        return Err(Refusal::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the output of {size} bytes is larger than the {max} bytes this coordinator \
                 keeps per artifact"
            ),
        )
        .into());
    }
    Ok((sha, size))
}

/// An artifact request, checked: the key, the job and attempt, the chunk's offset (0 for a
/// status request), the directory, and the proof's digest and size.
struct ArtifactRequest {
    key: KeyInfo,
    id: String,
    attempt: u32,
    offset: u64,
    artifacts: Arc<Artifacts>,
    sha: String,
    size: u64,
}

impl ArtifactRequest {
    async fn check(
        inner: &App,
        headers: &HeaderMap,
        id: std::result::Result<Path<String>, PathRejection>,
        query: Option<&str>,
        upload: bool,
    ) -> Result<ArtifactRequest> {
        let key = authenticate(inner, headers, Some(Scope::Miner)).await?;
        let Path(id) = id.map_err(|e| Refusal::bad_request(format!("bad job id in path: {e}")))?;
        check_id("id", &id)?;
        let (attempt, offset) = validate::artifact_query(query, upload)?;
        let artifacts = artifact_dir(inner)?;
        let (sha, size) = upload_target(inner, key, &id, attempt).await?;
        Ok(ArtifactRequest {
            key,
            id,
            attempt,
            offset,
            artifacts,
            sha,
            size,
        })
    }

    fn answer(self, h: Held) -> Result<Response> {
        ok_json(
            200,
            &ArtifactStatus {
                id: self.id,
                attempt: self.attempt,
                size: self.size,
                sha256: self.sha,
                received: h.received,
                complete: h.complete,
            },
        )
    }
}

/// Runs file work on the blocking pool.
async fn on_pool<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, Error> + Send + 'static,
) -> std::result::Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// `GET /v1/miner/jobs/{id}/artifact?attempt=N`: where the upload stands (to resume).
async fn upload_status(
    State(inner): State<App>,
    headers: HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let r = ArtifactRequest::check(&inner, &headers, id, q.as_deref(), false).await?;
    let (a, sha, key_id, size) = (r.artifacts.clone(), r.sha.clone(), r.key.id, r.size);
    let held = on_pool(move || a.held(&sha, key_id, size)).await?;
    r.answer(held)
}

/// `PUT /v1/miner/jobs/{id}/artifact?attempt=N&offset=K`: appends the body (at most
/// [`CHUNK_BYTES`]) at byte `offset` of the output; idempotent, so a replay or an overlapping
/// resume is answered from what is held.
async fn upload(
    State(inner): State<App>,
    headers: HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
    body: Body,
) -> Result<Response> {
    let r = ArtifactRequest::check(&inner, &headers, id, q.as_deref(), true).await?;
    let chunk = read_body_up_to(&headers, body, CHUNK_BYTES).await?;
    let (a, sha, key_id, size, offset) = (
        r.artifacts.clone(),
        r.sha.clone(),
        r.key.id,
        r.size,
        r.offset,
    );
    let held = on_pool(move || {
        let Some(turn) = a.turn(&sha, key_id) else {
            let mut r = Refusal::new(
                ErrorCode::Unavailable,
                "another upload of this artifact by this key is being written; retry".to_string(),
            );
            r.retry_after = Some(1);
            return Err(Error::from(r));
        };
        a.write(&turn, &sha, key_id, size, offset, &chunk)
    })
    .await?;
    r.answer(held)
}

/// `GET /v1/client/jobs/{id}/artifact`: the output of a completed job, streamed, to the client
/// that submitted it or an admin. `ETag` and `X-Content-SHA256` carry its SHA-256.
async fn download(
    State(inner): State<App>,
    headers: HeaderMap,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let view = client_job(&inner, &headers, id).await?;
    let not_ready = |why: String| Refusal::new(ErrorCode::ResultNotReady, why);
    if view.state != JobState::Completed {
        return Err(not_ready(format!(
            "the job is {}; its result is served once its proof is verified and settled",
            view.state.as_str()
        ))
        .into());
    }
    let Some((sha, Some(size))) = accepted(&view) else {
        return Err(Refusal::new(
            ErrorCode::NotFound,
            "the job's proof declared no output_len, so it has no artifact; its result is the \
             proof's output_sha and merkle_root"
                .to_string(),
        )
        .into());
    };
    let artifacts = artifact_dir(&inner)?;
    let s2 = sha.clone();
    let file = on_pool(move || artifacts.complete(&s2)).await?;
    let Some(path) = file else {
        return Err(not_ready(format!(
            "the miner has not uploaded the job's {size}-byte output yet"
        ))
        .into());
    };
    let file = tokio::fs::File::open(&path).await.map_err(Error::Io)?;
    let mut resp = Response::new(Body::from_stream(tokio_util::io::ReaderStream::new(file)));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sha) {
        h.insert("x-content-sha256", v);
    }
    Ok(resp)
}

/// The caller's key, if it sent one (public endpoints still refuse a bad key).
async fn optional_key(inner: &App, headers: &HeaderMap) -> Result<Option<KeyInfo>> {
    if headers.contains_key(AUTHORIZATION) {
        Ok(Some(authenticate(inner, headers, None).await?))
    } else {
        Ok(None)
    }
}

async fn balance(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    let key = optional_key(&inner, &headers).await?;
    let pairs = validate::query_pairs(q.as_deref())?;
    let wallet = match (validate::wallet_param(&pairs)?, key) {
        (Some(w), _) => w,
        (None, Some(key)) => {
            let miners = inner.miners.read().unwrap_or_else(|e| e.into_inner());
            let mut wallets: Vec<&str> = miners
                .values()
                .filter(|m| m.key_id == key.id)
                .map(|m| m.wallet.as_str())
                .collect();
            wallets.sort_unstable();
            wallets.dedup();
            match wallets.as_slice() {
                [one] => one.to_string(),
                [] => {
                    return Err(Refusal::invalid(
                        "wallet",
                        "",
                        "this key's miners have named no wallet yet; pass ?wallet=ADDR",
                    )
                    .into())
                }
                many => {
                    return Err(Refusal::invalid(
                        "wallet",
                        "",
                        &format!(
                            "this key's miners name {} wallets; pass ?wallet=ADDR",
                            many.len()
                        ),
                    )
                    .into())
                }
            }
        }
        (None, None) => {
            return Err(Refusal::invalid("wallet", "", "pass ?wallet=ADDR (or a miner key)").into())
        }
    };
    let b = blocking(&inner, move |s| s.balance(&wallet)).await?;
    ok_json(200, &b)
}

async fn ledger(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    optional_key(&inner, &headers).await?;
    let pairs = validate::query_pairs(q.as_deref())?;
    let wallet = validate::wallet_param(&pairs)?
        .ok_or_else(|| Refusal::invalid("wallet", "", "pass ?wallet=ADDR"))?;
    let limit = validate::limit_param(&pairs)?;
    let credits = blocking(&inner, move |s| s.ledger(&wallet, limit)).await?;
    ok_json(200, &credits)
}

async fn admin_jobs(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    authenticate(&inner, &headers, Some(Scope::Admin)).await?;
    let pairs = validate::query_pairs(q.as_deref())?;
    let state = validate::state_param(&pairs)?;
    let limit = validate::limit_param(&pairs)?;
    let jobs = blocking(&inner, move |s| s.jobs(state, limit)).await?;
    ok_json(200, &with_results(&inner, jobs).await?)
}

/// Miners as last heard from, newest heartbeat first; served from memory, so `last_seen` and
/// the GPU temperature are the latest even when they were not written to the database.
async fn admin_miners(
    State(inner): State<App>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response> {
    authenticate(&inner, &headers, Some(Scope::Admin)).await?;
    let pairs = validate::query_pairs(q.as_deref())?;
    let limit = validate::limit_param(&pairs)? as usize;
    let mut records: Vec<MinerRecord> = inner
        .miners
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    records.sort_by(|a, b| {
        b.last_seen_ms
            .cmp(&a.last_seen_ms)
            .then_with(|| a.miner_id.cmp(&b.miner_id))
    });
    records.truncate(limit);
    let views = blocking(&inner, move |s| {
        records
            .into_iter()
            .map(|m| {
                let (strikes, suspended) = s.standing(m.key_id)?;
                Ok(MinerView {
                    last_seen: crate::sqlite::from_ms(m.last_seen_ms)?,
                    miner_id: m.miner_id,
                    wallet: m.wallet,
                    capabilities: m.caps,
                    strikes,
                    suspended,
                })
            })
            .collect::<std::result::Result<Vec<_>, Error>>()
    })
    .await?;
    ok_json(200, &views)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let path: String = uri.path().chars().take(200).collect();
    respond(Refusal::new(ErrorCode::NotFound, format!("no endpoint {method} {path}")).answer())
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    let path: String = uri.path().chars().take(200).collect();
    let mut a = Refusal::new(
        ErrorCode::BadRequest,
        format!("method {method} is not allowed on {path}"),
    )
    .answer();
    a.status = 405;
    respond(a)
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;

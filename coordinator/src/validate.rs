//! Pure checks of everything a request carries: JSON bodies (with the failing field's path),
//! query strings, miner ids, wallets, submissions, the Idempotency-Key header.
//!
//! Each check returns a [`Refusal`] that names the field and the value; none may panic on any
//! input, and none does I/O.

use std::time::Duration;

use aitbc_protocol::api::{
    is_miner_id, is_wallet, AuditAnswer, EnergySource, GpuHealth, GpuInfo, JobLimits, Metrics,
    MinerCapabilities, SubmitJob, MAX_ID_LEN, MAX_REWARD,
};
use aitbc_protocol::workload::{validate_submission, Workload};
use serde::de::DeserializeOwned;

use crate::error::Refusal;

/// Largest serialised `params` a job may carry.
pub const MAX_PARAMS_BYTES: usize = 16 * 1024;
/// Longest Idempotency-Key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Longest lease a job may ask for (`limits.max_runtime_s`): one week.
pub const MAX_RUNTIME_S: u64 = 7 * 24 * 3600;
/// Money and sizes are stored as SQLite integers (i64).
pub const MAX_STORED: u64 = i64::MAX as u64;
/// Most GPUs one heartbeat may list.
pub const MAX_GPUS: usize = 16;
/// Longest GPU name.
pub const MAX_GPU_NAME: usize = 128;
/// Longest driver or CUDA version string.
pub const MAX_VERSION_STRING: usize = 32;
/// Largest `vram_mb` of one GPU: 16 TiB.
pub const MAX_GPU_VRAM_MB: u64 = 1 << 24;
/// Most throttle reasons one health report may list, and the longest one.
pub const MAX_THROTTLE_REASONS: usize = 32;
pub const MAX_THROTTLE_REASON: usize = 64;
/// Longest `gpu_health.reason`.
pub const MAX_HEALTH_REASON: usize = 512;
/// Hottest temperature taken as a reading rather than garbage, degrees Celsius.
pub const MAX_TEMPERATURE_C: u32 = 200;
/// Largest `metrics.tflops` (and `gflops` / 1000) accepted: one exaFLOP/s.
pub const MAX_TFLOPS: f64 = 1e6;

/// Parses a JSON body: unparsable JSON is 400 BAD_REQUEST, a well-formed body of the wrong
/// shape is 422 VALIDATION_FAILED naming the field path (e.g. `limits.ram_mb`).
pub fn json_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Refusal> {
    use serde_json::error::Category;
    let syntax =
        |e: &serde_json::Error| Refusal::bad_request(format!("the body is not valid JSON: {e}"));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(match inner.classify() {
                Category::Syntax | Category::Eof | Category::Io => syntax(&inner),
                Category::Data => {
                    let field = if path == "." {
                        "body".to_string()
                    } else {
                        path
                    };
                    let mut r = Refusal::new(
                        aitbc_protocol::api::ErrorCode::ValidationFailed,
                        format!("{field}: {inner}"),
                    );
                    r.details = serde_json::json!({ "field": field });
                    r
                }
            });
        }
    };
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

/// `[A-Za-z0-9._-]{1,128}` ([`aitbc_protocol::api::is_miner_id`]).
pub fn miner_id(field: &str, s: &str) -> Result<(), Refusal> {
    if is_miner_id(s) {
        Ok(())
    } else {
        Err(Refusal::invalid(
            field,
            s,
            "expected 1 to 128 characters of A-Z a-z 0-9 . _ -",
        ))
    }
}

/// `[A-Za-z0-9._:-]{1,128}` ([`aitbc_protocol::api::is_wallet`]): plain ASCII, so no wallet
/// can pass for another (no look-alike letters, no U+202E or U+200B).
pub fn wallet(field: &str, s: &str) -> Result<(), Refusal> {
    if is_wallet(s) {
        Ok(())
    } else {
        Err(Refusal::invalid(
            field,
            s,
            "expected 1 to 128 characters of A-Z a-z 0-9 . _ : -",
        ))
    }
}

/// A heartbeat's capabilities.
pub fn capabilities(c: &MinerCapabilities) -> Result<(), Refusal> {
    miner_id("miner_id", &c.miner_id)?;
    wallet("wallet", &c.wallet)?;
    if c.workloads.len() > 16 {
        return Err(Refusal::invalid(
            "workloads",
            &format!("{} entries", c.workloads.len()),
            "at most 16 entries",
        ));
    }
    for (i, w) in c.workloads.iter().enumerate() {
        if Workload::parse(w).is_none() {
            return Err(Refusal::invalid(
                &format!("workloads[{i}]"),
                w,
                "unknown workload; known: torch_bench, sd_infer, llm_gen",
            ));
        }
    }
    if let Some(v) = &c.version {
        if v.len() > 128 {
            return Err(Refusal::invalid("version", v, "at most 128 bytes"));
        }
    }
    gpus(&c.gpus)?;
    if let Some(h) = &c.gpu_health {
        gpu_health(h)?;
    }
    Ok(())
}

/// A bounded, non-empty (when `min1`) string without control characters.
fn text(field: &str, s: &str, max: usize, min1: bool) -> Result<(), Refusal> {
    let n = s.chars().count();
    if (min1 && n == 0) || n > max || s.chars().any(char::is_control) {
        let what = if min1 { "1" } else { "0" };
        return Err(Refusal::invalid(
            field,
            s,
            &format!("expected {what} to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// `gpus`: at most [`MAX_GPUS`], distinct indexes, bounded names and versions.
pub fn gpus(list: &[GpuInfo]) -> Result<(), Refusal> {
    if list.len() > MAX_GPUS {
        return Err(Refusal::invalid(
            "gpus",
            &format!("{} entries", list.len()),
            &format!("at most {MAX_GPUS} entries"),
        ));
    }
    for (i, g) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.index == g.index) {
            return Err(Refusal::invalid(
                &format!("gpus[{i}].index"),
                &g.index.to_string(),
                "each GPU index may appear once",
            ));
        }
        text(&format!("gpus[{i}].name"), &g.name, MAX_GPU_NAME, true)?;
        if g.vram_mb > MAX_GPU_VRAM_MB {
            return Err(Refusal::invalid(
                &format!("gpus[{i}].vram_mb"),
                &g.vram_mb.to_string(),
                &format!("at most {MAX_GPU_VRAM_MB} (16 TiB)"),
            ));
        }
        for (name, v) in [
            ("driver_version", &g.driver_version),
            ("cuda_version", &g.cuda_version),
        ] {
            if let Some(v) = v {
                text(&format!("gpus[{i}].{name}"), v, MAX_VERSION_STRING, true)?;
            }
        }
    }
    Ok(())
}

/// `gpu_health`: a plausible temperature, bounded throttle reasons and reason text.
pub fn gpu_health(h: &GpuHealth) -> Result<(), Refusal> {
    if let Some(t) = h.temperature_c {
        if t > MAX_TEMPERATURE_C {
            return Err(Refusal::invalid(
                "gpu_health.temperature_c",
                &t.to_string(),
                &format!("at most {MAX_TEMPERATURE_C} degrees Celsius"),
            ));
        }
    }
    if h.throttle_reasons.len() > MAX_THROTTLE_REASONS {
        return Err(Refusal::invalid(
            "gpu_health.throttle_reasons",
            &format!("{} entries", h.throttle_reasons.len()),
            &format!("at most {MAX_THROTTLE_REASONS} entries"),
        ));
    }
    for (i, r) in h.throttle_reasons.iter().enumerate() {
        text(
            &format!("gpu_health.throttle_reasons[{i}]"),
            r,
            MAX_THROTTLE_REASON,
            true,
        )?;
    }
    if h.xid_errors > MAX_STORED {
        return Err(Refusal::invalid(
            "gpu_health.xid_errors",
            &h.xid_errors.to_string(),
            "must be at most 9223372036854775807",
        ));
    }
    if let Some(r) = &h.reason {
        text("gpu_health.reason", r, MAX_HEALTH_REASON, false)?;
    }
    Ok(())
}

/// A proof's `metrics`: finite, non-negative rates; an energy figure only with the counter it
/// came from (never with `unavailable`); integers that fit the store.
pub fn metrics(m: &Metrics) -> Result<(), Refusal> {
    for (field, v, max) in [
        ("metrics.tflops", m.tflops, MAX_TFLOPS),
        ("metrics.gflops", m.gflops, MAX_TFLOPS * 1000.0),
    ] {
        if let Some(v) = v {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(Refusal::invalid(
                    field,
                    &v.to_string(),
                    &format!("expected a finite number from 0 to {max}"),
                ));
            }
        }
    }
    for (field, v) in [
        ("metrics.wall_ms", m.wall_ms),
        ("metrics.cpu_ms", m.cpu_ms),
        ("metrics.flops", m.flops),
        ("metrics.peak_rss_mb", m.peak_rss_mb),
        ("metrics.energy_mj", m.energy_mj),
    ] {
        if let Some(v) = v.filter(|v| *v > MAX_STORED) {
            return Err(Refusal::invalid(
                field,
                &v.to_string(),
                "must be at most 9223372036854775807",
            ));
        }
    }
    match (m.energy_mj, m.energy_source) {
        (Some(mj), None) => Err(Refusal::invalid(
            "metrics.energy_source",
            "",
            &format!(
                "required with metrics.energy_mj = {mj}: say which counter measured it \
                 (nvml or rapl)"
            ),
        )),
        (Some(mj), Some(EnergySource::Unavailable)) => Err(Refusal::invalid(
            "metrics.energy_mj",
            &mj.to_string(),
            "must be absent when metrics.energy_source is \"unavailable\"",
        )),
        _ => Ok(()),
    }
}

/// A client's submission: known workload, params valid for it and ≤ 16 KiB, a reward of at most
/// [`MAX_REWARD`], limits within their bounds (the lower ones are protocol's
/// [`aitbc_protocol::workload::check_limits`], which the miner applies too).
pub fn submission(s: &SubmitJob) -> Result<(), Refusal> {
    let params_len = serde_json::to_vec(&s.params)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if params_len > MAX_PARAMS_BYTES {
        return Err(Refusal::invalid(
            "params",
            &format!("{params_len} bytes"),
            "serialised params must be at most 16384 bytes",
        ));
    }
    if s.reward > MAX_REWARD {
        return Err(Refusal::invalid(
            "reward",
            &s.reward.to_string(),
            &format!("must be at most {MAX_REWARD} base units"),
        ));
    }
    let JobLimits {
        ram_mb,
        vram_mb,
        cpu_time_s,
        max_runtime_s,
    } = s.limits;
    for (field, v) in [
        ("limits.ram_mb", ram_mb),
        ("limits.vram_mb", vram_mb),
        ("limits.cpu_time_s", cpu_time_s),
    ] {
        if v > 1 << 40 {
            return Err(Refusal::invalid(field, &v.to_string(), "too large"));
        }
    }
    if max_runtime_s > MAX_RUNTIME_S {
        return Err(Refusal::invalid(
            "limits.max_runtime_s",
            &max_runtime_s.to_string(),
            "must be at most 604800 (one week)",
        ));
    }
    validate_submission(&s.workload, &s.params, &s.limits).map_err(|e| {
        let mut r = Refusal::new(
            aitbc_protocol::api::ErrorCode::ValidationFailed,
            e.to_string(),
        );
        let field = match &e {
            aitbc_protocol::workload::PlanError::BadParams { field, .. } => field.clone(),
            aitbc_protocol::workload::PlanError::OverMemory { .. } => "limits.ram_mb".into(),
            _ => "workload".into(),
        };
        r.details = serde_json::json!({ "field": field });
        r
    })?;
    Ok(())
}

/// The `Idempotency-Key` header: 1..=128 visible ASCII characters.
pub fn idempotency_key(raw: &[u8]) -> Result<String, Refusal> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_IDEMPOTENCY_KEY
        && raw.iter().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(String::from_utf8_lossy(raw).into_owned())
    } else {
        Err(Refusal::bad_request(
            "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
        ))
    }
}

/// Query parameters as (name, value) pairs; a repeated name is refused.
pub fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, Refusal> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(Refusal::bad_request(format!(
                "query parameter {k:?} is given more than once"
            )));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn int_param(
    pairs: &[(String, String)],
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, Refusal> {
    match get(pairs, name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(Refusal::invalid(
                name,
                v,
                &format!("expected a whole number from {min} to {max}"),
            )),
        },
    }
}

/// `GET /v1/miner/next?miner=ID&slots=N&wait=S`.
#[derive(Debug, Clone, PartialEq)]
pub struct NextQuery {
    pub miner: String,
    pub slots: u32,
    /// Already capped at the configured maximum.
    pub wait: Duration,
}

pub fn next_query(raw: Option<&str>, max_wait: Duration) -> Result<NextQuery, Refusal> {
    let pairs = query_pairs(raw)?;
    let miner = get(&pairs, "miner")
        .ok_or_else(|| Refusal::invalid("miner", "", "the miner query parameter is required"))?;
    miner_id("miner", miner)?;
    let slots = int_param(&pairs, "slots", 1, 1024)?.unwrap_or(1) as u32;
    let wait = match get(&pairs, "wait") {
        None => Duration::ZERO,
        Some(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => {
                Duration::from_secs_f64(s.min(max_wait.as_secs_f64()))
            }
            _ => {
                return Err(Refusal::invalid(
                    "wait",
                    v,
                    "expected seconds as a non-negative number, e.g. 30 or 0.5",
                ))
            }
        },
    };
    Ok(NextQuery {
        miner: miner.to_string(),
        slots,
        wait: wait.min(max_wait),
    })
}

/// `?attempt=N` (required) and, for an upload, `&offset=K` (required): an artifact request's
/// attempt and the byte offset of its chunk.
pub fn artifact_query(raw: Option<&str>, upload: bool) -> Result<(u32, u64), Refusal> {
    let pairs = query_pairs(raw)?;
    let required = |name: &str| Refusal::invalid(name, "", "this query parameter is required");
    let attempt =
        int_param(&pairs, "attempt", 1, u64::from(u32::MAX))?.ok_or_else(|| required("attempt"))?;
    let offset = match int_param(&pairs, "offset", 0, u64::MAX)? {
        Some(k) if upload => k,
        None if upload => return Err(required("offset")),
        _ => 0,
    };
    Ok((u32::try_from(attempt).unwrap_or(u32::MAX), offset))
}

/// `?miner=ID` (required), for the miner's own listings (`GET /v1/miner/audits`).
pub fn miner_param(pairs: &[(String, String)]) -> Result<String, Refusal> {
    let miner = get(pairs, "miner")
        .ok_or_else(|| Refusal::invalid("miner", "", "the miner query parameter is required"))?;
    miner_id("miner", miner)?;
    Ok(miner.to_string())
}

/// An audit answer's shape: its id and miner id, and no more rows than an audit asks for.
pub fn audit_answer(a: &AuditAnswer, max_rows: u32) -> Result<(), Refusal> {
    if a.id.is_empty() || a.id.len() > MAX_ID_LEN {
        return Err(Refusal::invalid(
            "id",
            &a.id,
            "expected 1 to 128 characters",
        ));
    }
    if let Some(m) = &a.miner_id {
        miner_id("miner_id", m)?;
    }
    if a.rows.len() > max_rows as usize {
        return Err(Refusal::invalid(
            "rows",
            &a.rows.len().to_string(),
            &format!("an audit opens at most {max_rows} rows"),
        ));
    }
    Ok(())
}

/// `?wallet=ADDR` (optional).
pub fn wallet_param(pairs: &[(String, String)]) -> Result<Option<String>, Refusal> {
    match get(pairs, "wallet") {
        None => Ok(None),
        Some(w) => {
            wallet("wallet", w)?;
            Ok(Some(w.to_string()))
        }
    }
}

/// `?limit=N`, 1..=1000, default 100.
pub fn limit_param(pairs: &[(String, String)]) -> Result<u32, Refusal> {
    Ok(int_param(pairs, "limit", 1, 1000)?.unwrap_or(100) as u32)
}

/// `?state=S` (optional).
pub fn state_param(
    pairs: &[(String, String)],
) -> Result<Option<aitbc_protocol::api::JobState>, Refusal> {
    match get(pairs, "state") {
        None => Ok(None),
        Some(s) => aitbc_protocol::api::JobState::parse(s)
            .map(Some)
            .ok_or_else(|| {
                Refusal::invalid("state", s, "expected queued, assigned, completed or failed")
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aitbc_protocol::api::{ErrorCode, Proof};
    use serde_json::json;

    #[test]
    fn json_errors_are_400_or_422_naming_the_field() {
        let e = json_body::<SubmitJob>(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = json_body::<SubmitJob>(br#"{"workload":"torch_bench","reward":1} x"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e =
            json_body::<SubmitJob>(br#"{"workload":"torch_bench","reward":"ten"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(e.message.starts_with("reward:"), "{}", e.message);
        let e = json_body::<SubmitJob>(
            br#"{"workload":"torch_bench","reward":1,"limits":{"ram_mb":-1}}"#,
        )
        .unwrap_err();
        assert!(e.message.starts_with("limits.ram_mb:"), "{}", e.message);
        let e = json_body::<Proof>(br#"{"id":"j","mode":"cpu"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        assert!(e.message.contains("output_sha"), "{}", e.message);
    }

    #[test]
    fn ids_and_wallets() {
        assert!(miner_id("m", "host-gpu0.a_b").is_ok());
        for bad in ["", "a b", "é", &"a".repeat(129), "a/b"] {
            assert!(miner_id("m", bad).is_err(), "{bad}");
        }
        assert!(wallet("w", "wallet_demo").is_ok());
        assert!(wallet("w", "0xAbC:12").is_ok());
        for bad in [
            "",
            "a b",
            "a\nb",
            &"w".repeat(129),
            "0xAbC:\u{fc}",
            "wallet_\u{202e}omed",
            "wallet\u{200b}_demo",
        ] {
            let e = wallet("wallet", bad).unwrap_err();
            assert_eq!(e.details["field"], "wallet");
            assert!(e.message.contains("A-Z a-z 0-9 . _ : -"), "{}", e.message);
            // The refusal shows the value escaped, never the spoofing character itself.
            assert!(
                !e.message.contains(['\u{202e}', '\u{200b}']),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn next_query_parsing() {
        let max = Duration::from_secs(30);
        let q = next_query(Some("miner=m1&slots=4&wait=0.5"), max).unwrap();
        assert_eq!(
            q,
            NextQuery {
                miner: "m1".into(),
                slots: 4,
                wait: Duration::from_millis(500)
            }
        );
        assert_eq!(
            next_query(Some("miner=m1&wait=999"), max).unwrap().wait,
            max
        );
        assert_eq!(next_query(Some("miner=m1"), max).unwrap().slots, 1);
        for bad in [
            "",
            "slots=1",
            "miner=m1&slots=0",
            "miner=m1&slots=1025",
            "miner=m1&wait=-1",
            "miner=m1&wait=nan",
            "miner=m1&wait=inf",
            "miner=a%20b",
            "miner=m1&miner=m2",
        ] {
            assert!(next_query(Some(bad), max).is_err(), "{bad}");
        }
    }

    #[test]
    fn submissions() {
        let ok: SubmitJob =
            serde_json::from_value(json!({"workload":"torch_bench","params":{"n":64},"reward":5}))
                .unwrap();
        assert!(submission(&ok).is_ok());
        let mut big = ok.clone();
        big.params = json!({"blob": "x".repeat(20_000)});
        big.workload = "sd_infer".into();
        assert!(submission(&big).unwrap_err().message.starts_with("params"));
        let mut bad = ok.clone();
        bad.params = json!({"n": 0});
        let e = submission(&bad).unwrap_err();
        assert_eq!(e.details["field"], "params.n");
        let mut r = ok.clone();
        for reward in [u64::MAX, i64::MAX as u64, MAX_REWARD + 1] {
            r.reward = reward;
            let e = submission(&r).unwrap_err();
            assert_eq!(e.details["field"], "reward");
            assert_eq!(
                e.message,
                format!("reward = \"{reward}\": must be at most 1000000000000 base units")
            );
        }
        r.reward = MAX_REWARD;
        assert!(submission(&r).is_ok());
        for (field, set) in [
            (
                "limits.ram_mb",
                (|l: &mut JobLimits| l.ram_mb = 0) as fn(&mut JobLimits),
            ),
            ("limits.cpu_time_s", |l| l.cpu_time_s = 0),
            ("limits.max_runtime_s", |l| l.max_runtime_s = 0),
        ] {
            let mut z = ok.clone();
            set(&mut z.limits);
            let e = submission(&z).unwrap_err();
            assert_eq!(e.details["field"], field);
            assert_eq!(e.message, format!("{field} = 0: must be at least 1"));
        }
        let mut l = ok;
        l.limits.max_runtime_s = MAX_RUNTIME_S + 1;
        assert!(submission(&l).is_err());
    }

    fn caps() -> MinerCapabilities {
        serde_json::from_value(json!({
            "miner_id": "m1", "wallet": "w", "mode": "gpu", "gpu": true,
            "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "vram_mb": 81559,
                      "driver_version": "580.65.06", "cuda_version": "13.0"}],
            "gpu_health": {"healthy": true, "temperature_c": 41, "throttle_reasons": [],
                           "xid_errors": 0}
        }))
        .unwrap()
    }

    fn refused_field(r: Result<(), Refusal>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::ValidationFailed);
        e.details["field"].as_str().unwrap().to_string()
    }

    #[test]
    fn gpus_and_health_are_bounded() {
        assert!(capabilities(&caps()).is_ok());
        let mut c = caps();
        let g = c.gpus[0].clone();
        c.gpus = (0..17)
            .map(|i| GpuInfo {
                index: i,
                ..g.clone()
            })
            .collect();
        assert_eq!(refused_field(capabilities(&c)), "gpus");
        c.gpus.truncate(16);
        assert!(capabilities(&c).is_ok());
        c.gpus[3].index = 0;
        assert_eq!(refused_field(capabilities(&c)), "gpus[3].index");
        let mut c = caps();
        c.gpus[0].name = "x".repeat(129);
        assert_eq!(refused_field(capabilities(&c)), "gpus[0].name");
        c.gpus[0].name = String::new();
        assert_eq!(refused_field(capabilities(&c)), "gpus[0].name");
        c.gpus[0].name = "bad\nname".into();
        assert_eq!(refused_field(capabilities(&c)), "gpus[0].name");
        let mut c = caps();
        c.gpus[0].cuda_version = Some("1".repeat(33));
        assert_eq!(refused_field(capabilities(&c)), "gpus[0].cuda_version");
        let mut c = caps();
        c.gpus[0].vram_mb = MAX_GPU_VRAM_MB + 1;
        assert_eq!(refused_field(capabilities(&c)), "gpus[0].vram_mb");

        let mut c = caps();
        let h = c.gpu_health.as_mut().unwrap();
        h.temperature_c = Some(201);
        assert_eq!(refused_field(capabilities(&c)), "gpu_health.temperature_c");
        let mut c = caps();
        let h = c.gpu_health.as_mut().unwrap();
        h.throttle_reasons = vec!["sw_power_cap".into(); 33];
        assert_eq!(
            refused_field(capabilities(&c)),
            "gpu_health.throttle_reasons"
        );
        let h = c.gpu_health.as_mut().unwrap();
        h.throttle_reasons = vec!["t".repeat(65)];
        assert_eq!(
            refused_field(capabilities(&c)),
            "gpu_health.throttle_reasons[0]"
        );
        let h = c.gpu_health.as_mut().unwrap();
        h.throttle_reasons = vec![];
        h.reason = Some("r".repeat(513));
        assert_eq!(refused_field(capabilities(&c)), "gpu_health.reason");
        let h = c.gpu_health.as_mut().unwrap();
        h.reason = Some(String::new());
        assert!(capabilities(&c).is_ok());
    }

    #[test]
    fn proof_metrics() {
        let ok = |v: serde_json::Value| serde_json::from_value::<Metrics>(v).unwrap();
        assert!(metrics(&Metrics::default()).is_ok());
        assert!(metrics(&ok(
            json!({"energy_mj": 1500, "energy_source": "nvml", "tflops": 51.2})
        ))
        .is_ok());
        assert!(metrics(&ok(json!({"energy_source": "unavailable", "tflops": 0.0}))).is_ok());
        assert!(metrics(&ok(json!({"energy_mj": 1, "energy_source": "rapl"}))).is_ok());
        for (bad, field) in [
            (json!({"tflops": -0.5}), "metrics.tflops"),
            (json!({"tflops": 2e6}), "metrics.tflops"),
            (json!({"gflops": -1.0}), "metrics.gflops"),
            (json!({"energy_mj": 5}), "metrics.energy_source"),
            (
                json!({"energy_mj": 5, "energy_source": "unavailable"}),
                "metrics.energy_mj",
            ),
            (
                json!({"energy_mj": u64::MAX, "energy_source": "nvml"}),
                "metrics.energy_mj",
            ),
        ] {
            assert_eq!(refused_field(metrics(&ok(bad.clone()))), field, "{bad}");
        }
        let mut m = Metrics::default();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            m.tflops = Some(v);
            assert_eq!(refused_field(metrics(&m)), "metrics.tflops");
        }
        // serde itself refuses an unknown source.
        let e = json_body::<Metrics>(br#"{"energy_source": "guess"}"#).unwrap_err();
        assert_eq!(e.details["field"], "energy_source");
    }

    #[test]
    fn idempotency_keys() {
        assert_eq!(idempotency_key(b"abc-123").unwrap(), "abc-123");
        assert!(idempotency_key(b"").is_err());
        assert!(idempotency_key(&[b'a'; 129]).is_err());
        assert!(idempotency_key(b"a b").is_err());
    }
}

//! Keeps `docs/openapi.json` (and the names in `docs/api.md`) in step with the code: the routes
//! the Coordinator serves, every body type of `protocol::api` as serde (de)serializes it, the
//! statuses and bodies a live Coordinator (in-process, on 127.0.0.1) actually answers, with
//! verification on (a real torch_bench proof, its audit and a real answer) and off, and the
//! verification figures `docs/api.md` states (its flags' defaults and its probability tables).
//!
//! Each check compares the document with the code in both directions, so adding a route, a
//! field, an error code or a failure reason without documenting it fails here. This module must
//! never edit the documents or generate them from the code: it only reads and compares.

use std::collections::BTreeSet;

use aitbc_coordinator::audit::{pass_probability, unnoticed_probability};
use aitbc_coordinator::store::EntryKind;
use aitbc_coordinator::{Scope, VerifyConfig};
use aitbc_protocol::api::{is_miner_id, is_wallet, Disposition, IDEMPOTENCY_HEADER, MAX_REWARD};
use aitbc_protocol::api::{
    ApiError, ArtifactStatus, AuditAck, AuditAnswer, AuditChallenge, AuditVerdict, Balance,
    EnergySource, ErrorBody, ErrorCode, FailAck, FailReason, FailReport, Failure, GpuFlag,
    GpuHealth, GpuInfo, HeartbeatAck, Job, JobLimits, JobResult, JobState, JobView, Metrics,
    MinerCapabilities, MinerLimits, MinerView, Mode, OpenedRow, Proof, ProofAck, Standing,
    SubmitJob, Verification, VerificationStatus,
};
use aitbc_protocol::hex;
use aitbc_protocol::merkle::{self, Digest};
use aitbc_protocol::workload::torch_bench::{self, TorchBenchParams};
use aitbc_protocol::workload::Workload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use crate::common::{test_config, unverified_config, TestCoordinator};

const OPENAPI: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"));
const API_MD: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"));
const API_RS: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/src/api.rs"));

fn doc() -> Value {
    serde_json::from_str(OPENAPI).expect("docs/openapi.json must be valid JSON")
}

fn schema_of<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(
        s.is_object(),
        "docs/openapi.json has no components.schemas.{name}"
    );
    s
}

/// A validator for `components.schemas.<name>`, resolving `$ref`s against the document's own
/// components, with `format` (date-time) checked.
fn validator(doc: &Value, name: &str) -> jsonschema::Validator {
    schema_of(doc, name);
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": {"schemas": doc["components"]["schemas"].clone()},
        "$ref": format!("#/components/schemas/{name}"),
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("components.schemas.{name} does not compile: {e}"))
}

fn assert_valid(v: &jsonschema::Validator, name: &str, instance: &Value) {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{instance} does not match components.schemas.{name}: {errors:?}"
    );
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("{v} is not an object"))
        .keys()
        .cloned()
        .collect()
}

fn string_set(v: &Value, what: &str) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string {s}"))
                .to_string()
        })
        .collect()
}

/// Checks one object type against its schema: both samples validate; the schema's properties are
/// exactly the keys the full sample serializes to; and a field is `required` in the schema
/// exactly when serde refuses the full sample without it.
fn check_object<T: Serialize + DeserializeOwned>(
    doc: &Value,
    seen: &mut BTreeSet<String>,
    name: &str,
    full: &T,
    minimal: &T,
) {
    seen.insert(name.to_string());
    let v = validator(doc, name);
    let full = serde_json::to_value(full).expect("protocol types serialize");
    let minimal = serde_json::to_value(minimal).expect("protocol types serialize");
    assert_valid(&v, name, &full);
    assert_valid(&v, name, &minimal);

    let schema = schema_of(doc, name);
    let documented = keys(&schema["properties"]);
    assert_eq!(
        documented,
        keys(&full),
        "components.schemas.{name}.properties (left) differs from the fields {name} serializes to (right)"
    );
    let required = match schema.get("required") {
        Some(r) => string_set(r, &format!("{name}.required")),
        None => BTreeSet::new(),
    };
    for field in keys(&full) {
        let mut without = full.clone();
        without
            .as_object_mut()
            .expect("checked to be an object above")
            .remove(&field);
        let serde_accepts = serde_json::from_value::<T>(without).is_ok();
        assert_eq!(
            !serde_accepts,
            required.contains(&field),
            "{name}.{field}: serde {} it missing, but the schema says required = {}",
            if serde_accepts { "accepts" } else { "refuses" },
            required.contains(&field)
        );
    }
    assert!(
        required.is_subset(&keys(&minimal)),
        "{name}: a required field is skipped when serializing the minimal sample"
    );
}

/// Checks a unit-variant enum: the schema's `enum` is exactly the serialized variants.
fn check_enum<T: Serialize>(doc: &Value, seen: &mut BTreeSet<String>, name: &str, variants: &[T]) {
    seen.insert(name.to_string());
    let documented = string_set(&schema_of(doc, name)["enum"], &format!("{name}.enum"));
    let code: BTreeSet<String> = variants
        .iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(Value::String(s)) => s,
            other => panic!("{name} variant serializes to {other:?}, not a string"),
        })
        .collect();
    assert_eq!(
        documented, code,
        "components.schemas.{name}.enum (left) differs from the code (right)"
    );
}

fn t0() -> OffsetDateTime {
    datetime!(2025-09-26 13:37:00.123 UTC)
}

fn full_limits() -> JobLimits {
    JobLimits {
        ram_mb: 2048,
        vram_mb: 8000,
        cpu_time_s: 60,
        max_runtime_s: 30,
    }
}

fn full_proof() -> Proof {
    Proof {
        id: "job-1".into(),
        miner_id: Some("host-gpu0".into()),
        attempt: Some(2),
        mode: Mode::Gpu,
        output_sha: "ab".repeat(32),
        merkle_root: Some("cd".repeat(32)),
        output_len: Some(4_194_304),
        metrics: Metrics {
            wall_ms: Some(1500),
            cpu_ms: Some(1400),
            flops: Some(214_748_364_800),
            gflops: Some(143.2),
            peak_rss_mb: Some(44),
            energy_mj: Some(412_500),
            energy_source: Some(EnergySource::Nvml),
            tflops: Some(0.1432),
        },
        started_at: Some(t0()),
        finished_at: Some(t0()),
    }
}

fn full_gpu() -> GpuInfo {
    GpuInfo {
        index: 0,
        name: "NVIDIA H100 80GB HBM3".into(),
        vram_mb: 81559,
        driver_version: Some("580.65.06".into()),
        cuda_version: Some("13.0".into()),
    }
}

fn minimal_gpu() -> GpuInfo {
    GpuInfo {
        index: 1,
        name: "NVIDIA GeForce RTX 4090".into(),
        vram_mb: 24564,
        driver_version: None,
        cuda_version: None,
    }
}

fn full_health() -> GpuHealth {
    GpuHealth {
        healthy: false,
        temperature_c: Some(91),
        throttle_reasons: vec!["hw_thermal_slowdown".into(), "sw_power_cap".into()],
        xid_errors: 1,
        reason: Some("GPU 0 at 91 C with hw_thermal_slowdown".into()),
    }
}

fn minimal_proof() -> Proof {
    Proof {
        id: "job-1".into(),
        miner_id: None,
        attempt: None,
        mode: Mode::Cpu,
        output_sha: "0f".repeat(32),
        merkle_root: None,
        output_len: None,
        metrics: Metrics::default(),
        started_at: None,
        finished_at: None,
    }
}

fn full_challenge() -> AuditChallenge {
    AuditChallenge {
        id: "job-1".into(),
        attempt: 2,
        rows: vec![17, 64, 130, 201, 255, 388, 402, 511],
        answer_by: t0(),
    }
}

fn full_verification() -> Verification {
    Verification {
        status: VerificationStatus::Challenged,
        attempt: 2,
        audit_rows: vec![17, 64, 130, 201, 255, 388, 402, 511],
        answer_by: Some(t0()),
        settles_at: Some(t0()),
        message: "the audit was not answered in time".into(),
    }
}

fn full_failure() -> Failure {
    Failure {
        reason: FailReason::TimedOut,
        message: "ran past max_runtime_s = 30".into(),
        attempt: 1,
    }
}

/// Every ErrorCode variant, in declaration order. The exhaustive `match` in `next` makes a new
/// variant a compile error here until it is placed in the chain (and so checked below).
fn every_error_code() -> Vec<ErrorCode> {
    fn next(c: ErrorCode) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match c {
            BadRequest => Unauthorized,
            Unauthorized => Forbidden,
            Forbidden => MinerIdTaken,
            MinerIdTaken => NotFound,
            NotFound => JobFinished,
            JobFinished => NotAssigned,
            NotAssigned => StaleAttempt,
            StaleAttempt => UnknownMiner,
            UnknownMiner => WalletFull,
            WalletFull => PayloadTooLarge,
            PayloadTooLarge => ValidationFailed,
            ValidationFailed => IdempotencyKeyReused,
            IdempotencyKeyReused => RateLimited,
            RateLimited => MinerSuspended,
            MinerSuspended => NoAudit,
            NoAudit => ResultNotReady,
            ResultNotReady => OffsetMismatch,
            OffsetMismatch => Internal,
            Internal => Unavailable,
            Unavailable => Other,
            Other => return None,
        })
    }
    let mut all = vec![ErrorCode::BadRequest];
    while let Some(c) = next(*all.last().expect("starts non-empty")) {
        all.push(c);
    }
    all
}

/// Names of the types `protocol/src/api.rs` derives `Serialize` for, read from its source.
fn serialized_api_types() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut serialize = false;
    for line in API_RS.lines().map(str::trim) {
        if line.starts_with("#[derive(") {
            serialize = line.contains("Serialize");
            continue;
        }
        if line.starts_with("#[") || line.starts_with("///") {
            continue;
        }
        let decl = line
            .strip_prefix("pub struct ")
            .or_else(|| line.strip_prefix("pub enum "));
        if let (Some(rest), true) = (decl, serialize) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
        serialize = false;
    }
    out
}

/// A new serialized type in protocol::api needs a schema and a check here.
#[test]
fn every_serialized_api_type_has_a_checked_schema() {
    let doc = doc();
    let found = serialized_api_types();
    assert!(found.len() >= 20, "read only {found:?} from api.rs");
    let mut checked = check_objects(&doc);
    checked.extend(check_enums(&doc));
    // GpuFlag is checked inside MinerCapabilities and by `schema_and_serde_agree_on_raw_requests`.
    checked.insert("GpuFlag".into());
    let missing: Vec<&String> = found.difference(&checked).collect();
    assert!(
        missing.is_empty(),
        "protocol/src/api.rs serializes {missing:?}, which have no checked schema here"
    );
}

#[test]
fn routes_match_the_coordinator_both_ways() {
    let doc = doc();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for method in keys(item) {
            if matches!(
                method.as_str(),
                "get" | "post" | "put" | "patch" | "delete" | "head" | "options"
            ) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = aitbc_coordinator::ROUTES
        .iter()
        .map(|(m, p)| (m.to_uppercase(), p.to_string()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let not_served: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && not_served.is_empty(),
        "served but not in docs/openapi.json: {undocumented:?}; documented but not served: {not_served:?}"
    );
    for (method, path) in &served {
        assert!(
            API_MD.contains(&format!("{method} {path}")),
            "docs/api.md does not describe `{method} {path}`"
        );
    }
}

#[test]
fn every_post_documents_the_idempotency_header() {
    let doc = doc();
    let param = &doc["components"]["parameters"]["IdempotencyKey"];
    assert_eq!(param["name"], json!(IDEMPOTENCY_HEADER));
    assert_eq!(param["in"], json!("header"));
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        if let Some(post) = item.get("post") {
            let refs: Vec<&Value> = post["parameters"]
                .as_array()
                .map(|a| a.iter().filter_map(|p| p.get("$ref")).collect())
                .unwrap_or_default();
            assert!(
                refs.contains(&&json!("#/components/parameters/IdempotencyKey")),
                "POST {path} does not take the Idempotency-Key header"
            );
        }
    }
}

#[test]
fn every_error_response_carries_the_error_body() {
    let doc = doc();
    let body_ref = json!("#/components/schemas/ErrorBody");
    for (name, resp) in doc["components"]["responses"]
        .as_object()
        .expect("components.responses is an object")
    {
        assert_eq!(
            resp["content"]["application/json"]["schema"]["$ref"], body_ref,
            "components.responses.{name} does not carry the ErrorBody"
        );
    }
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, op) in item.as_object().expect("path item is an object") {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let code: u16 = status.parse().unwrap_or_else(|_| {
                    panic!("{method} {path}: response key {status:?} is not a status")
                });
                if code < 400 {
                    continue;
                }
                let ok = resp.get("$ref").is_some()
                    || resp["content"]["application/json"]["schema"]["$ref"] == body_ref;
                assert!(ok, "{method} {path} {status} lacks the ErrorBody");
            }
        }
    }
    // 204 means "no job" and has no body at all.
    let next = &doc["paths"]["/v1/miner/next"]["get"]["responses"]["204"];
    assert!(next.is_object() && next.get("content").is_none());
}

#[test]
fn object_schemas_match_protocol_types() {
    check_objects(&doc());
}

/// Checks every object type; returns the schema names checked.
fn check_objects(doc: &Value) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    check_object(
        doc,
        &mut seen,
        "MinerLimits",
        &MinerLimits {
            vram_mb: Some(16000),
            ram_mb: Some(32768),
            max_runtime_s: Some(600),
            cpu_time_s: Some(1200),
        },
        &MinerLimits::default(),
    );
    check_object(
        doc,
        &mut seen,
        "MinerCapabilities",
        &MinerCapabilities {
            miner_id: "host-gpu0".into(),
            wallet: "wallet_demo".into(),
            mode: Mode::Gpu,
            gpu: GpuFlag(true),
            concurrency: Some(2),
            workloads: vec!["torch_bench".into(), "sd_infer".into(), "llm_gen".into()],
            limits: MinerLimits {
                vram_mb: Some(16000),
                ..MinerLimits::default()
            },
            cores: Some(16),
            ram_mb: Some(65536),
            version: Some("aitbc-miner/0.1.0".into()),
            gpus: vec![full_gpu()],
            gpu_health: Some(full_health()),
        },
        &MinerCapabilities {
            miner_id: "m".into(),
            wallet: "w".into(),
            mode: Mode::Cpu,
            gpu: GpuFlag(false),
            concurrency: None,
            workloads: vec![],
            limits: MinerLimits::default(),
            cores: None,
            ram_mb: None,
            version: None,
            gpus: vec![],
            gpu_health: None,
        },
    );
    check_object(doc, &mut seen, "GpuInfo", &full_gpu(), &minimal_gpu());
    check_object(
        doc,
        &mut seen,
        "GpuHealth",
        &full_health(),
        &GpuHealth {
            healthy: true,
            ..GpuHealth::default()
        },
    );
    let view = |caps: MinerCapabilities| MinerView {
        miner_id: caps.miner_id.clone(),
        wallet: caps.wallet.clone(),
        last_seen: t0(),
        strikes: u32::from(caps.gpu.0) * 2,
        suspended: caps.gpu.0,
        capabilities: caps,
    };
    check_object(
        doc,
        &mut seen,
        "MinerView",
        &view(MinerCapabilities {
            miner_id: "host-gpu0".into(),
            wallet: "wallet_demo".into(),
            mode: Mode::Gpu,
            gpu: GpuFlag(true),
            gpus: vec![full_gpu(), minimal_gpu()],
            gpu_health: Some(full_health()),
            ..MinerCapabilities::default()
        }),
        &view(MinerCapabilities {
            miner_id: "m".into(),
            wallet: "w".into(),
            ..MinerCapabilities::default()
        }),
    );
    let ack = HeartbeatAck {
        miner_id: "host-gpu0".into(),
        wallet: "wallet_demo".into(),
        server_time: t0(),
    };
    check_object(doc, &mut seen, "HeartbeatAck", &ack, &ack);
    check_object(
        doc,
        &mut seen,
        "JobLimits",
        &full_limits(),
        &JobLimits::default(),
    );
    check_object(
        doc,
        &mut seen,
        "Job",
        &Job {
            id: "job-1".into(),
            workload: "torch_bench".into(),
            params: json!({"n": 64, "iters": 3, "seed": 7}),
            limits: full_limits(),
            reward: 1_000_000,
            attempt: 1,
            lease_expires_at: t0(),
            created_at: t0(),
        },
        &Job {
            id: "j".into(),
            workload: "sd_infer".into(),
            params: Value::Null,
            limits: JobLimits::default(),
            reward: 0,
            attempt: 1,
            lease_expires_at: t0(),
            created_at: t0(),
        },
    );
    check_object(
        doc,
        &mut seen,
        "Metrics",
        &full_proof().metrics,
        &Metrics::default(),
    );
    check_object(doc, &mut seen, "Proof", &full_proof(), &minimal_proof());
    let pack = ProofAck {
        id: "job-1".into(),
        state: JobState::Verifying,
        attempt: 1,
        wallet: "wallet_demo".into(),
        credited: u64::MAX,
        audit: Some(full_challenge()),
        settles_at: Some(t0()),
    };
    let settled = ProofAck {
        state: JobState::Completed,
        audit: None,
        settles_at: None,
        ..pack.clone()
    };
    check_object(doc, &mut seen, "ProofAck", &pack, &settled);
    check_object(
        doc,
        &mut seen,
        "AuditChallenge",
        &full_challenge(),
        &AuditChallenge {
            rows: vec![],
            ..full_challenge()
        },
    );
    let opened = OpenedRow {
        index: 3,
        data: "80ff017f".into(),
        path: vec!["ab".repeat(32), "cd".repeat(32)],
    };
    let lone = OpenedRow {
        index: 0,
        data: "00".into(),
        path: vec![],
    };
    check_object(doc, &mut seen, "OpenedRow", &opened, &lone);
    check_object(
        doc,
        &mut seen,
        "AuditAnswer",
        &AuditAnswer {
            id: "job-1".into(),
            miner_id: Some("host-gpu0".into()),
            attempt: 2,
            rows: vec![lone.clone(), opened],
        },
        &AuditAnswer {
            id: "job-1".into(),
            miner_id: None,
            attempt: 1,
            rows: vec![],
        },
    );
    check_object(
        doc,
        &mut seen,
        "AuditAck",
        &AuditAck {
            id: "job-1".into(),
            attempt: 2,
            verdict: AuditVerdict::Failed,
            state: JobState::Queued,
            message:
                "row 3 is committed but is not the chain's row 3 (first wrong byte at column 0)"
                    .into(),
        },
        &AuditAck {
            id: "job-1".into(),
            attempt: 1,
            verdict: AuditVerdict::Passed,
            state: JobState::Completed,
            message: String::new(),
        },
    );
    check_object(
        doc,
        &mut seen,
        "Verification",
        &full_verification(),
        &Verification {
            status: VerificationStatus::Off,
            attempt: 1,
            audit_rows: vec![],
            answer_by: None,
            settles_at: None,
            message: String::new(),
        },
    );
    let standing = Standing {
        miner_id: "host-gpu0".into(),
        strikes: 0,
        suspended: false,
    };
    check_object(doc, &mut seen, "Standing", &standing, &standing);
    check_object(
        doc,
        &mut seen,
        "FailReport",
        &FailReport {
            id: "job-1".into(),
            miner_id: Some("host-gpu0".into()),
            attempt: Some(1),
            reason: FailReason::OutOfMemory,
            message: "peak RSS 2100 MiB over ram_mb = 2048".into(),
        },
        &FailReport {
            id: "job-1".into(),
            miner_id: None,
            attempt: None,
            reason: FailReason::Internal,
            message: String::new(),
        },
    );
    let fack = FailAck {
        id: "job-1".into(),
        state: JobState::Queued,
        attempt: 1,
    };
    check_object(doc, &mut seen, "FailAck", &fack, &fack);
    check_object(doc, &mut seen, "Failure", &full_failure(), &full_failure());
    check_object(
        doc,
        &mut seen,
        "SubmitJob",
        &SubmitJob {
            workload: "torch_bench".into(),
            params: json!({"n": 256}),
            limits: full_limits(),
            reward: 25,
        },
        &SubmitJob {
            workload: "llm_gen".into(),
            params: json!({}),
            limits: JobLimits::default(),
            reward: 0,
        },
    );
    check_object(
        doc,
        &mut seen,
        "JobView",
        &JobView {
            id: "job-1".into(),
            state: JobState::Completed,
            workload: "torch_bench".into(),
            params: json!({"n": 256}),
            limits: full_limits(),
            reward: 25,
            attempt: 2,
            max_attempts: 3,
            created_at: t0(),
            updated_at: t0(),
            miner_id: Some("host-gpu0".into()),
            lease_expires_at: Some(t0()),
            proof: Some(full_proof()),
            failure: Some(full_failure()),
            verification: Some(full_verification()),
            result: Some(JobResult {
                output_sha: "ab".repeat(32),
                merkle_root: Some("cd".repeat(32)),
                output_len: Some(65536),
                artifact_received: 65536,
                artifact_ready: true,
            }),
        },
        &JobView {
            id: "job-1".into(),
            state: JobState::Queued,
            workload: "sd_infer".into(),
            params: json!({}),
            limits: JobLimits::default(),
            reward: 1,
            attempt: 0,
            max_attempts: 3,
            created_at: t0(),
            updated_at: t0(),
            miner_id: None,
            lease_expires_at: None,
            proof: None,
            failure: None,
            verification: None,
            result: None,
        },
    );
    check_object(
        doc,
        &mut seen,
        "JobResult",
        &JobResult {
            output_sha: "ab".repeat(32),
            merkle_root: Some("cd".repeat(32)),
            output_len: Some(65536),
            artifact_received: 4096,
            artifact_ready: false,
        },
        &JobResult {
            output_sha: "ab".repeat(32),
            merkle_root: None,
            output_len: None,
            artifact_received: 0,
            artifact_ready: false,
        },
    );
    let status = ArtifactStatus {
        id: "job-1".into(),
        attempt: 1,
        size: 65536,
        sha256: "ab".repeat(32),
        received: 4096,
        complete: false,
    };
    check_object(doc, &mut seen, "ArtifactStatus", &status, &status);
    let bal = Balance {
        wallet: "wallet_demo".into(),
        balance: 75,
        credits: 3,
        pending: 25,
        forfeited: 10,
    };
    check_object(doc, &mut seen, "Balance", &bal, &bal);
    let credit = aitbc_coordinator::Credit {
        job_id: "job-1".into(),
        attempt: 1,
        kind: EntryKind::Forfeit,
        amount: 25,
        wallet: "wallet_demo".into(),
        miner_id: "host-gpu0".into(),
        created_at: t0(),
    };
    check_object(doc, &mut seen, "Credit", &credit, &credit);
    let full_err = ApiError {
        code: ErrorCode::ValidationFailed,
        message: "params.n = 0: expected a whole number from 1 to 16384".into(),
        details: json!({"field": "params.n"}),
    };
    let min_err = ApiError {
        code: ErrorCode::NotFound,
        message: "no such route".into(),
        details: Value::Null,
    };
    check_object(doc, &mut seen, "ApiError", &full_err, &min_err);
    check_object(
        doc,
        &mut seen,
        "ErrorBody",
        &ErrorBody { error: full_err },
        &ErrorBody { error: min_err },
    );
    seen
}

#[test]
fn enum_schemas_match_protocol_enums() {
    check_enums(&doc());
}

/// Checks every enum type; returns the schema names checked.
fn check_enums(doc: &Value) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    check_enum(doc, &mut seen, "Mode", &[Mode::Gpu, Mode::Cpu]);
    check_enum(
        doc,
        &mut seen,
        "EnergySource",
        &[
            EnergySource::Nvml,
            EnergySource::Rapl,
            EnergySource::Unavailable,
        ],
    );
    check_enum(
        doc,
        &mut seen,
        "JobState",
        &[
            JobState::Queued,
            JobState::Assigned,
            JobState::Verifying,
            JobState::Completed,
            JobState::Failed,
        ],
    );
    check_enum(
        doc,
        &mut seen,
        "VerificationStatus",
        &VerificationStatus::ALL,
    );
    // Exhaustive matches, so that a new variant is a compile error here until it is listed.
    let verdicts = [AuditVerdict::Passed, AuditVerdict::Failed];
    for (i, v) in verdicts.iter().enumerate() {
        let at = match v {
            AuditVerdict::Passed => 0,
            AuditVerdict::Failed => 1,
        };
        assert_eq!(at, i);
    }
    check_enum(doc, &mut seen, "AuditVerdict", &verdicts);
    let kinds = [EntryKind::Credit, EntryKind::Settle, EntryKind::Forfeit];
    for (i, k) in kinds.iter().enumerate() {
        let at = match k {
            EntryKind::Credit => 0,
            EntryKind::Settle => 1,
            EntryKind::Forfeit => 2,
        };
        assert_eq!(at, i);
    }
    check_enum(doc, &mut seen, "EntryKind", &kinds);
    check_enum(doc, &mut seen, "Workload", &Workload::ALL);
    check_enum(doc, &mut seen, "FailReason", &FailReason::ALL);
    // `Other` is the client's catch-all for codes a newer Coordinator adds; it is never sent.
    let sent: Vec<ErrorCode> = every_error_code()
        .into_iter()
        .filter(|c| *c != ErrorCode::Other)
        .collect();
    assert_eq!(sent.len(), 20);
    check_enum(doc, &mut seen, "ErrorCode", &sent);
    seen
}

#[test]
fn fail_reason_dispositions_and_error_codes_are_documented() {
    let doc = doc();
    let fr = schema_of(&doc, "FailReason");
    for r in FailReason::ALL {
        let want = match r.disposition() {
            Disposition::Requeue => "requeue",
            Disposition::Fail => "fail",
        };
        assert_eq!(
            fr["x-disposition"][r.as_str()],
            json!(want),
            "FailReason {} has disposition {want} in protocol::api",
            r.as_str()
        );
        assert!(
            API_MD.contains(&format!("`{}`", r.as_str())),
            "docs/api.md does not mention `{}`",
            r.as_str()
        );
    }
    let statuses = &schema_of(&doc, "ErrorCode")["x-status"];
    for c in every_error_code()
        .into_iter()
        .filter(|c| *c != ErrorCode::Other)
    {
        let name = serde_json::to_value(c).expect("codes serialize");
        let name = name.as_str().expect("codes serialize to strings");
        assert!(
            statuses[name].is_u64(),
            "ErrorCode {name} has no status in x-status"
        );
        assert!(
            API_MD.contains(&format!("`{name}`")),
            "docs/api.md does not mention `{name}`"
        );
    }
}

/// The bounds the document states are protocol's: the largest reward, the least job limits and
/// the wallet and miner-id alphabets (the schema's patterns agree with `is_wallet` and
/// `is_miner_id` on look-alike and invisible characters).
#[test]
fn documented_bounds_match_protocol() {
    let doc = doc();
    let reward = &schema_of(&doc, "SubmitJob")["properties"]["reward"];
    assert_eq!(reward["maximum"], json!(MAX_REWARD));
    let limits = &schema_of(&doc, "JobLimits")["properties"];
    for (field, min) in [
        ("ram_mb", JobLimits::MIN_RAM_MB),
        ("cpu_time_s", JobLimits::MIN_CPU_TIME_S),
        ("max_runtime_s", JobLimits::MIN_MAX_RUNTIME_S),
    ] {
        assert_eq!(limits[field]["minimum"], json!(min), "JobLimits.{field}");
    }
    assert!(API_MD.contains("`reward` at most 10^12"));
    let caps = validator(&doc, "MinerCapabilities");
    let hb = |miner_id: &str, wallet: &str| json!({"miner_id": miner_id, "wallet": wallet, "mode": "cpu"});
    for s in [
        "wallet_demo",
        "eip155:1:0xAbC",
        "a.b-c_d",
        "",
        "wallet_\u{202e}omed",
        "wal\u{200b}let",
        "0xAbC:\u{fc}",
        "a b",
        &"w".repeat(129),
    ] {
        assert_eq!(
            caps.is_valid(&hb("m", s)),
            is_wallet(s),
            "wallet {s:?}: the schema and is_wallet disagree"
        );
        assert_eq!(
            caps.is_valid(&hb(s, "w")),
            is_miner_id(s),
            "miner_id {s:?}: the schema and is_miner_id disagree"
        );
    }
}

/// The schema and serde agree on hand-written request bodies: what one accepts the other does,
/// including the guide script's own heartbeat and proof.
#[test]
fn schema_and_serde_agree_on_raw_requests() {
    let doc = doc();
    fn agree<T: DeserializeOwned>(doc: &Value, name: &str, body: Value, accepted: bool) {
        let v = validator(doc, name);
        assert_eq!(
            v.is_valid(&body),
            accepted,
            "schema {name} on {body}: expected accepted = {accepted}"
        );
        assert_eq!(
            serde_json::from_value::<T>(body.clone()).is_ok(),
            accepted,
            "serde {name} on {body}: expected accepted = {accepted}"
        );
    }
    let hb = |gpu: Value| json!({"miner_id": "host-gpu0", "wallet": "wallet_demo", "mode": "cpu", "gpu": gpu});
    for gpu in [json!(0), json!(1), json!(true), json!(false)] {
        agree::<MinerCapabilities>(&doc, "MinerCapabilities", hb(gpu), true);
    }
    for gpu in [json!(2), json!(-1), json!("1"), json!(null)] {
        agree::<MinerCapabilities>(&doc, "MinerCapabilities", hb(gpu), false);
    }
    agree::<MinerCapabilities>(
        &doc,
        "MinerCapabilities",
        json!({"miner_id": "m", "wallet": "w", "mode": "tpu"}),
        false,
    );
    agree::<MinerCapabilities>(
        &doc,
        "MinerCapabilities",
        json!({"miner_id": "m", "wallet": "w", "mode": "gpu", "limits": {"vram_mb": 1, "disk_mb": 2}}),
        false,
    );
    let gpu_hb = |gpus: Value, health: Value| json!({"miner_id": "m", "wallet": "w", "mode": "gpu", "gpus": gpus, "gpu_health": health});
    let h100 = json!({"index": 0, "name": "NVIDIA H100", "vram_mb": 81559});
    for (gpus, health, accepted) in [
        (json!([h100]), json!({"healthy": true}), true),
        (json!([]), json!(null), true),
        (
            json!([{"index": 0, "name": "G", "vram_mb": 1, "driver_version": "580.65.06",
                    "cuda_version": null}]),
            json!({"healthy": false, "temperature_c": 90, "throttle_reasons": ["hw_slowdown"],
                   "xid_errors": 2, "reason": "XID 79"}),
            true,
        ),
        (json!({"index": 0}), json!(null), false),
        (json!([{"index": 0, "name": "G"}]), json!(null), false),
        (
            json!([{"index": -1, "name": "G", "vram_mb": 1}]),
            json!(null),
            false,
        ),
        (json!([h100]), json!({"temperature_c": 40}), false),
        (json!([h100]), json!({"healthy": "yes"}), false),
        (
            json!([h100]),
            json!({"healthy": true, "xid_errors": -1}),
            false,
        ),
    ] {
        agree::<MinerCapabilities>(&doc, "MinerCapabilities", gpu_hb(gpus, health), accepted);
    }
    agree::<Proof>(
        &doc,
        "Proof",
        json!({"id": "j1", "mode": "cpu", "output_sha": "ab".repeat(32), "metrics": {}}),
        true,
    );
    for (metrics, accepted) in [
        (
            json!({"energy_mj": 412_500, "energy_source": "nvml", "tflops": 51.3}),
            true,
        ),
        (json!({"energy_source": "unavailable"}), true),
        (json!({"energy_source": "rapl", "energy_mj": null}), true),
        (json!({"energy_source": "guess"}), false),
        (json!({"energy_source": "NVML"}), false),
        (json!({"energy_mj": -1, "energy_source": "rapl"}), false),
        (json!({"energy_mj": 1.5, "energy_source": "rapl"}), false),
        (json!({"tflops": "fast"}), false),
    ] {
        agree::<Proof>(
            &doc,
            "Proof",
            json!({"id": "j1", "mode": "gpu", "output_sha": "ab".repeat(32), "metrics": metrics}),
            accepted,
        );
    }
    agree::<Proof>(
        &doc,
        "Proof",
        json!({"id": "j1", "mode": "cpu", "output_sha": "ab".repeat(32), "started_at": "yesterday"}),
        false,
    );
    agree::<SubmitJob>(
        &doc,
        "SubmitJob",
        json!({"workload": "sd_infer", "reward": 5}),
        true,
    );
    agree::<SubmitJob>(
        &doc,
        "SubmitJob",
        json!({"workload": "sd_infer", "reward": 5, "priority": 1}),
        false,
    );
    agree::<SubmitJob>(
        &doc,
        "SubmitJob",
        json!({"workload": "sd_infer", "reward": 1.5}),
        false,
    );
    agree::<SubmitJob>(
        &doc,
        "SubmitJob",
        json!({"workload": "sd_infer", "reward": -1}),
        false,
    );
    agree::<FailReport>(
        &doc,
        "FailReport",
        json!({"id": "j1", "reason": "TIMED_OUT"}),
        true,
    );
    agree::<FailReport>(
        &doc,
        "FailReport",
        json!({"id": "j1", "reason": "TIRED"}),
        false,
    );
    agree::<FailReport>(
        &doc,
        "FailReport",
        json!({"id": "j1", "reason": "AUDIT_TIMEOUT"}),
        true,
    );
    let row = json!({"index": 1, "data": "00ff", "path": ["ab".repeat(32)]});
    for (answer, accepted) in [
        (json!({"id": "j1", "attempt": 1, "rows": [row]}), true),
        (
            json!({"id": "j1", "miner_id": "m", "attempt": 1, "rows": []}),
            true,
        ),
        (
            json!({"id": "j1", "miner_id": null, "attempt": 1, "rows": [row]}),
            true,
        ),
        (json!({"id": "j1", "rows": [row]}), false),
        (json!({"id": "j1", "attempt": 1}), false),
        (json!({"id": "j1", "attempt": -1, "rows": []}), false),
        (
            json!({"id": "j1", "attempt": 1, "rows": [], "verdict": "passed"}),
            false,
        ),
        (
            json!({"id": "j1", "attempt": 1, "rows": [{"index": 1, "data": "00"}]}),
            false,
        ),
        (
            json!({"id": "j1", "attempt": 1,
                   "rows": [{"index": 1, "data": "00", "path": [], "leaf": "x"}]}),
            false,
        ),
        (
            json!({"id": "j1", "attempt": 1, "rows": [{"index": -1, "data": "00", "path": []}]}),
            false,
        ),
    ] {
        agree::<AuditAnswer>(&doc, "AuditAnswer", answer, accepted);
    }
}

/// The schema's spelling of opened rows and digests is protocol's `hex`: a row's `data` is
/// lower-case hex of whole bytes, each path entry a 64-digit digest. (serde takes any string:
/// an answer spelled otherwise is not a 422 but a failed audit, as `docs/api.md` says.)
#[test]
fn opened_row_patterns_match_protocol_hex() {
    let doc = doc();
    let v = validator(&doc, "OpenedRow");
    let row = |data: &str, path: &str| json!({"index": 0, "data": data, "path": [path]});
    let digest = "ab".repeat(32);
    for data in ["", "00", "0aff", "0A", "0", "zz", " 00", "0g", "é0"] {
        assert_eq!(
            v.is_valid(&row(data, &digest)),
            hex::decode(data).is_some(),
            "data {data:?}: the schema and protocol::hex disagree"
        );
    }
    for path in [
        digest.clone(),
        "AB".repeat(32),
        "ab".repeat(31),
        "ab".repeat(33),
        format!("{}g", "a".repeat(63)),
    ] {
        assert_eq!(
            v.is_valid(&row("00", &path)),
            hex::digest(&path).is_some(),
            "path {path:?}: the schema and protocol::hex disagree"
        );
    }
    assert!(API_MD.contains("it is never a 422"));
}

/// `docs/api.md` states the verification flags with the defaults `aitbc-coordinator serve`
/// has, which are `VerifyConfig::default()`'s.
#[test]
fn documented_verification_flags_match_the_binary_and_the_defaults() {
    let d = VerifyConfig::default();
    assert!(d.enabled, "verification is on by default");
    let secs = |t: std::time::Duration| t.as_secs_f64().to_string();
    let flags = [
        ("--verify", "on".to_string()),
        ("--verify-trust-after", d.trust_after.to_string()),
        ("--verify-floor", d.floor.to_string()),
        ("--verify-rows", d.rows.to_string()),
        ("--verify-hold-secs", secs(d.hold)),
        ("--verify-answer-secs", secs(d.answer_within)),
        ("--verify-strikes", d.strikes.to_string()),
    ];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aitbc-coordinator"))
        .args(["serve", "--help"])
        .output()
        .expect("run aitbc-coordinator serve --help");
    assert!(out.status.success(), "serve --help failed");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = help.lines().collect();
    for (flag, default) in &flags {
        // The flag's entry: from its line to the next flag's.
        let start = lines
            .iter()
            .position(|l| {
                l.trim_start()
                    .strip_prefix(flag)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('='))
            })
            .unwrap_or_else(|| panic!("serve --help does not list {flag}:\n{help}"));
        let entry: String = lines[start..]
            .iter()
            .enumerate()
            .take_while(|(i, l)| *i == 0 || !l.trim_start().starts_with("--"))
            .map(|(_, l)| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "serve --help gives {flag} another default than {default}: {entry}"
        );
        let row = if *flag == "--verify" {
            format!("| `--verify on\\|off` | `{default}` |")
        } else {
            format!("` | {default} |")
        };
        let doc_row = API_MD
            .lines()
            .find(|l| l.starts_with(&format!("| `{flag} ")))
            .unwrap_or_else(|| panic!("docs/api.md has no row for {flag}"));
        assert!(
            doc_row.contains(&row),
            "docs/api.md gives {flag} another default than {default}: {doc_row}"
        );
    }
    assert!(API_MD.contains(&format!("answer: {} MiB", d.max_answer_bytes >> 20)));
}

/// A probability as `docs/api.md` writes it: two significant digits, and `m·10^e` below 10^-3.
fn figure(p: f64) -> String {
    if p == 0.0 {
        return "0".into();
    }
    if p >= 1e-3 {
        let decimals = (1 - p.log10().floor() as i32).max(0) as usize;
        return format!("{p:.decimals$}");
    }
    let e = format!("{p:.1e}");
    let (m, exp) = e.split_once('e').expect("exponent form");
    format!("{m}·10^{exp}")
}

/// The probability tables of `docs/api.md` are the policy's own formulas
/// (`coordinator/src/audit.rs`) at the defaults.
#[test]
fn documented_probabilities_are_the_policys() {
    let d = VerifyConfig::default();
    let k = d.rows;
    let mut row = String::from("| passes an audit, at most |");
    for f in [0.01_f64, 0.1, 0.25, 0.5, 1.0] {
        let bound = (1.0 - f).powi(k as i32);
        // The exact hypergeometric figure never exceeds the bound (n = 1024, ceil(f n) wrong).
        let bad = (f * 1024.0_f64).ceil() as u64;
        assert!(
            pass_probability(1024, bad, u64::from(k)) <= bound + 1e-12,
            "f = {f}"
        );
        row.push_str(&format!(" {} |", figure(bound)));
    }
    assert!(API_MD.contains(&row), "docs/api.md lacks the row {row:?}");
    for g in [0.01, 0.1, 1.0] {
        let mut row = format!("| {g} |");
        for m in [100, 1000, 10_000] {
            row.push_str(&format!(
                " {} |",
                figure(unnoticed_probability(g, 1.0, k, d.floor, m))
            ));
        }
        assert!(API_MD.contains(&row), "docs/api.md lacks the row {row:?}");
    }
}

/// A live Coordinator, to hold its answers against the document.
struct Live {
    doc: Value,
    tc: TestCoordinator,
}

impl Live {
    /// Sends a request and checks its answer: the status is `want`, the document lists that
    /// status for the route, and the body is what the document says (empty for 204, otherwise
    /// valid against the documented schema). Returns the body as JSON (`Null` when empty).
    async fn check(
        &self,
        method: &str,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
        want: u16,
    ) -> Value {
        let body = body.map(|b| b.as_bytes().to_vec());
        self.check_bytes(method, template, path, key, body, want)
            .await
    }

    /// [`Live::check`] with a body of any bytes (an artifact chunk).
    async fn check_bytes(
        &self,
        method: &str,
        template: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
        want: u16,
    ) -> Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a valid method");
        let resp = self.tc.request(m, path, key, body, &[]).await;
        let (status, bytes) = (resp.status, &resp.body);
        let text = resp.text();
        assert_eq!(status, want, "{method} {path}: {text}");

        let op = &self.doc["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not documented");
        let mut documented = &op["responses"][status.to_string()];
        if let Some(r) = documented.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/components/responses/")
                .unwrap_or_else(|| panic!("unexpected response $ref {r}"));
            documented = &self.doc["components"]["responses"][name];
        }
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which the document does not list: {text}"
        );
        let schema = &documented["content"]["application/json"]["schema"];
        if status == 204 {
            assert!(
                bytes.is_empty(),
                "204 must have an empty body, got {text:?}"
            );
            assert!(schema.is_null(), "204 must document no content");
            return Value::Null;
        }
        let value: Value = serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("{method} {path} -> {status}: not JSON ({e}): {text}"));
        let mut root = schema.clone();
        root["components"] = json!({"schemas": self.doc["components"]["schemas"].clone()});
        let v = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema of {method} {template} {status}: {e}"));
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} -> {status}: {value} breaks the documented schema: {errors:?}"
        );
        value
    }
}

/// A torch_bench output as a miner holds it: its rows, their leaves, and the commitment.
struct Held {
    rows: Vec<Vec<i8>>,
    leaves: Vec<Digest>,
    sha: String,
    root: String,
}

impl Held {
    /// The chain's real output for `p` (`wrong`: every byte changed, committed all the same).
    fn of(p: &TorchBenchParams, wrong: bool) -> Held {
        let n = p.n as usize;
        let mut out = torch_bench::reference_output(p);
        if wrong {
            out.iter_mut().for_each(|x| *x ^= 1);
        }
        let c = torch_bench::commit(&out, n).expect("an n x n output");
        let rows: Vec<Vec<i8>> = out.chunks(n).map(<[i8]>::to_vec).collect();
        Held {
            leaves: rows.iter().map(|r| torch_bench::row_leaf(r)).collect(),
            rows,
            sha: hex::encode(&c.output_sha),
            root: hex::encode(&c.merkle_root),
        }
    }

    fn open(&self, rows: &[u64]) -> Vec<OpenedRow> {
        rows.iter()
            .map(|&i| OpenedRow {
                index: i,
                data: hex::encode(&torch_bench::row_bytes(&self.rows[i as usize])),
                path: merkle::inclusion_proof(&self.leaves, i as usize)
                    .expect("a row of the tree")
                    .iter()
                    .map(|d| hex::encode(d))
                    .collect(),
            })
            .collect()
    }

    fn proof(&self, job: &Value, miner_id: &str) -> String {
        json!({"id": job["id"], "miner_id": miner_id, "attempt": job["attempt"], "mode": "cpu",
            "output_sha": self.sha, "merkle_root": self.root,
            "output_len": self.rows.len() * self.rows.len(),
            "metrics": {"wall_ms": 3, "energy_mj": 1200, "energy_source": "rapl", "tflops": 0.02}})
        .to_string()
    }
}

fn kinds(ledger: &Value) -> Vec<String> {
    ledger
        .as_array()
        .expect("a list of ledger entries")
        .iter()
        .map(|c| c["kind"].as_str().expect("Credit.kind").to_string())
        .collect()
}

/// What a running Coordinator answers is what the document promises: every status it sends on
/// the way through a job's life (proof, audit, answer, settlement), a cheater's (a wrong output
/// under a real commitment: caught, forfeited, suspended, reinstated) and common refusals is
/// listed for its route, and every body validates against the listed schema. Verification is
/// on, as by default; the proof and the audit answer are real (a tiny torch_bench job, n = 4,
/// so an audit opens all 4 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_match_the_document() {
    let mut config = test_config();
    config.verify.strikes = 1;
    // Small enough that the 413 below is a small request (the default is 4 MiB).
    config.verify.max_answer_bytes = 16 << 10;
    let live = Live {
        doc: doc(),
        tc: TestCoordinator::start(config).await,
    };
    let (miner, client, admin) = (
        live.tc.miner_key.clone(),
        live.tc.client_key.clone(),
        live.tc.admin_key.clone(),
    );
    let cheat = live.tc.new_key(Scope::Miner);
    let (m, c, a, x) = (
        Some(miner.as_str()),
        Some(client.as_str()),
        Some(admin.as_str()),
        Some(cheat.as_str()),
    );
    let hb = r#"{"miner_id":"live-0","wallet":"wallet_live","mode":"cpu","gpu":0}"#;
    let next = "/v1/miner/next?miner=live-0&slots=1";

    live.check("GET", "/v1/health", "/v1/health", None, None, 200)
        .await;
    live.check(
        "POST",
        "/v1/miner/heartbeat",
        "/v1/miner/heartbeat",
        m,
        Some(hb),
        200,
    )
    .await;
    let gpu_hb = json!({"miner_id": "live-gpu", "wallet": "wallet_live", "mode": "gpu",
        "gpu": true, "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "vram_mb": 81559,
        "driver_version": "580.65.06", "cuda_version": "13.0"}],
        "gpu_health": {"healthy": true, "temperature_c": 38, "throttle_reasons": [],
        "xid_errors": 0}})
    .to_string();
    live.check(
        "POST",
        "/v1/miner/heartbeat",
        "/v1/miner/heartbeat",
        m,
        Some(&gpu_hb),
        200,
    )
    .await;
    let miners = live
        .check("GET", "/v1/admin/miners", "/v1/admin/miners", a, None, 200)
        .await;
    let listed: Vec<MinerView> =
        serde_json::from_value(miners.clone()).expect("MinerView list parses");
    let gpu_miner = listed
        .iter()
        .find(|v| v.miner_id == "live-gpu")
        .unwrap_or_else(|| panic!("live-gpu not in {miners}"));
    assert_eq!(gpu_miner.capabilities.gpus[0].vram_mb, 81559);
    assert_eq!(
        gpu_miner
            .capabilities
            .gpu_health
            .as_ref()
            .map(|h| h.healthy),
        Some(true)
    );
    assert_eq!((gpu_miner.strikes, gpu_miner.suspended), (0, false));
    live.check(
        "GET",
        "/v1/admin/miners",
        "/v1/admin/miners?limit=0",
        a,
        None,
        422,
    )
    .await;
    live.check("GET", "/v1/admin/miners", "/v1/admin/miners", m, None, 403)
        .await;
    live.check("GET", "/v1/miner/next", next, m, None, 204)
        .await;

    // A workload without a verifier cannot be submitted while verification is on.
    let stub = r#"{"workload":"sd_infer","params":{},"reward":5}"#;
    let refused = live
        .check(
            "POST",
            "/v1/client/jobs",
            "/v1/client/jobs",
            c,
            Some(stub),
            422,
        )
        .await;
    assert_eq!(refused["error"]["details"]["field"], json!("workload"));
    let params = TorchBenchParams {
        n: 4,
        iters: 1,
        seed: 0,
    };
    let honest = Held::of(&params, false);
    let submit = r#"{"workload":"torch_bench","params":{"n":4,"iters":1},"reward":25}"#;
    let first = live
        .check(
            "POST",
            "/v1/client/jobs",
            "/v1/client/jobs",
            c,
            Some(submit),
            201,
        )
        .await;
    live.check(
        "POST",
        "/v1/client/jobs",
        "/v1/client/jobs",
        a,
        Some(submit),
        201,
    )
    .await;
    let job = live
        .check("GET", "/v1/miner/next", next, m, None, 200)
        .await;
    assert_eq!(job["id"], first["id"], "the oldest job goes first");
    let id = job["id"].as_str().expect("Job.id is a string").to_string();
    let proof_path = "/v1/miner/proof";
    let bad_metrics = json!({"id": id, "miner_id": "live-0", "attempt": job["attempt"],
        "mode": "cpu", "output_sha": honest.sha, "merkle_root": honest.root,
        "metrics": {"energy_mj": 5, "energy_source": "unavailable"}})
    .to_string();
    let refused = live
        .check("POST", proof_path, proof_path, m, Some(&bad_metrics), 422)
        .await;
    assert_eq!(
        refused["error"]["details"]["field"],
        json!("metrics.energy_mj")
    );
    // Verification on: a torch_bench proof needs its commitment and the job's output length.
    let unrooted = json!({"id": id, "miner_id": "live-0", "attempt": job["attempt"],
        "mode": "cpu", "output_sha": honest.sha})
    .to_string();
    let refused = live
        .check("POST", proof_path, proof_path, m, Some(&unrooted), 422)
        .await;
    assert_eq!(refused["error"]["details"]["field"], json!("merkle_root"));
    let long = json!({"id": id, "miner_id": "live-0", "attempt": job["attempt"],
        "mode": "cpu", "output_sha": honest.sha, "merkle_root": honest.root, "output_len": 17})
    .to_string();
    let refused = live
        .check("POST", proof_path, proof_path, m, Some(&long), 422)
        .await;
    assert_eq!(refused["error"]["details"]["field"], json!("output_len"));

    // The real proof: pending, and audited (a new key is audited on every proof).
    let proof = honest.proof(&job, "live-0");
    let ack = live
        .check("POST", proof_path, proof_path, m, Some(&proof), 200)
        .await;
    let ack: ProofAck = serde_json::from_value(ack).expect("a ProofAck");
    assert_eq!(
        (ack.state, ack.credited, ack.settles_at),
        (JobState::Verifying, 25, None)
    );
    let challenge = ack.audit.expect("a new key's proof is audited");
    assert_eq!(challenge.rows, [0, 1, 2, 3], "n = 4 < 8 rows: all of them");
    assert_eq!(challenge.attempt, 1);
    live.check("POST", proof_path, proof_path, m, Some(&proof), 409)
        .await;
    let verifying = live
        .check(
            "GET",
            "/v1/admin/jobs",
            "/v1/admin/jobs?state=verifying",
            a,
            None,
            200,
        )
        .await;
    assert_eq!(verifying.as_array().map(Vec::len), Some(1), "{verifying}");
    let job_path = format!("/v1/client/jobs/{id}");
    let view = live
        .check("GET", "/v1/client/jobs/{id}", &job_path, c, None, 200)
        .await;
    assert_eq!(view["state"], json!("verifying"));
    assert_eq!(view["verification"]["status"], json!("challenged"));
    assert_eq!(view["verification"]["audit_rows"], json!([0, 1, 2, 3]));
    let bal = live
        .check(
            "GET",
            "/v1/wallet/balance",
            "/v1/wallet/balance?wallet=wallet_live",
            None,
            None,
            200,
        )
        .await;
    assert_eq!((&bal["balance"], &bal["pending"]), (&json!(0), &json!(25)));

    // The output, uploaded by the prover in two chunks; refused to anyone else, out of order
    // or for another attempt; not served until the job completes.
    let put = "/v1/miner/jobs/{id}/artifact";
    let output: Vec<u8> = honest.rows.concat().iter().map(|&b| b as u8).collect();
    let at = |offset: usize| format!("/v1/miner/jobs/{id}/artifact?attempt=1&offset={offset}");
    let status_path = format!("/v1/miner/jobs/{id}/artifact?attempt=1");
    let st = live.check("GET", put, &status_path, m, None, 200).await;
    assert_eq!(
        (&st["received"], &st["size"]),
        (&json!(0), &json!(16)),
        "{st}"
    );
    let first = live
        .check_bytes("PUT", put, &at(0), m, Some(output[..6].to_vec()), 200)
        .await;
    assert_eq!(
        (&first["received"], &first["complete"]),
        (&json!(6), &json!(false))
    );
    let hole = live
        .check_bytes("PUT", put, &at(9), m, Some(output[9..].to_vec()), 409)
        .await;
    assert_eq!(hole["error"]["code"], json!("OFFSET_MISMATCH"));
    assert_eq!(hole["error"]["details"]["received"], json!(6));
    live.check_bytes("PUT", put, &at(6), x, Some(output[6..].to_vec()), 403)
        .await;
    live.check_bytes("PUT", put, &at(6), c, Some(output[6..].to_vec()), 403)
        .await;
    let stale = format!("/v1/miner/jobs/{id}/artifact?attempt=2&offset=6");
    let refused = live
        .check_bytes("PUT", put, &stale, m, Some(output[6..].to_vec()), 409)
        .await;
    assert_eq!(refused["error"]["code"], json!("STALE_ATTEMPT"));
    let no_offset = live
        .check_bytes("PUT", put, &status_path, m, Some(output[6..].to_vec()), 422)
        .await;
    assert_eq!(no_offset["error"]["details"]["field"], json!("offset"));
    let past = live
        .check_bytes("PUT", put, &at(6), m, Some(vec![0; 11]), 422)
        .await;
    assert_eq!(past["error"]["details"]["field"], json!("offset"));
    live.check(
        "GET",
        put,
        "/v1/miner/jobs/no-such-job/artifact?attempt=1",
        m,
        None,
        404,
    )
    .await;
    let download_t = "/v1/client/jobs/{id}/artifact";
    let download = format!("/v1/client/jobs/{id}/artifact");
    let early = live.check("GET", download_t, &download, c, None, 409).await;
    assert_eq!(early["error"]["code"], json!("RESULT_NOT_READY"));
    let whole = live
        .check_bytes("PUT", put, &at(6), m, Some(output[6..].to_vec()), 200)
        .await;
    assert_eq!(
        (&whole["received"], &whole["complete"]),
        (&json!(16), &json!(true))
    );
    let view = live
        .check("GET", "/v1/client/jobs/{id}", &job_path, c, None, 200)
        .await;
    assert_eq!(
        view["result"],
        json!({"output_sha": honest.sha, "merkle_root": honest.root, "output_len": 16,
            "artifact_received": 16, "artifact_ready": false}),
        "complete but not served while the proof is being verified"
    );

    // The open audit, listed and answered.
    let audits = "/v1/miner/audits";
    let listed = live
        .check("GET", audits, "/v1/miner/audits?miner=live-0", m, None, 200)
        .await;
    let listed: Vec<AuditChallenge> = serde_json::from_value(listed).expect("challenges");
    assert_eq!(listed, std::slice::from_ref(&challenge));
    let none = live
        .check(
            "GET",
            audits,
            "/v1/miner/audits?miner=live-gpu",
            m,
            None,
            200,
        )
        .await;
    assert_eq!(none, json!([]));
    live.check("GET", audits, audits, m, None, 422).await;
    live.check("GET", audits, "/v1/miner/audits?miner=live-0", c, None, 403)
        .await;
    let audit = "/v1/miner/audit";
    let answer = serde_json::to_string(&AuditAnswer {
        id: id.clone(),
        miner_id: Some("live-0".into()),
        attempt: 1,
        rows: honest.open(&challenge.rows),
    })
    .expect("an answer serializes");
    live.check("POST", audit, audit, c, Some(&answer), 403)
        .await;
    let unknown_field =
        json!({"id": id, "attempt": 1, "rows": [], "verdict": "passed"}).to_string();
    live.check("POST", audit, audit, m, Some(&unknown_field), 422)
        .await;
    let huge = format!(
        r#"{{"id":"{id}","attempt":1,"rows":[{{"index":0,"data":"{}","path":[]}}]}}"#,
        "00".repeat(10 << 10)
    );
    live.check("POST", audit, audit, m, Some(&huge), 413).await;
    let nothing = json!({"id": "no-such-job", "attempt": 1, "rows": []}).to_string();
    live.check("POST", audit, audit, m, Some(&nothing), 404)
        .await;
    let passed = live
        .check("POST", audit, audit, m, Some(&answer), 200)
        .await;
    let passed: AuditAck = serde_json::from_value(passed).expect("an AuditAck");
    assert_eq!(
        (passed.verdict, passed.state, passed.message.as_str()),
        (AuditVerdict::Passed, JobState::Completed, "")
    );
    let again = live
        .check("POST", audit, audit, m, Some(&answer), 200)
        .await;
    assert_eq!(
        again["verdict"],
        json!("passed"),
        "a decided audit answers its verdict again"
    );
    let view = live
        .check("GET", "/v1/client/jobs/{id}", &job_path, c, None, 200)
        .await;
    assert_eq!(view["state"], json!("completed"));
    assert_eq!(view["verification"]["status"], json!("passed"));
    assert_eq!(view["result"]["artifact_ready"], json!(true));
    let served = live
        .tc
        .request(reqwest::Method::GET, &download, c, None, &[])
        .await;
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served.body, output, "the output, byte for byte");
    let documented = &live.doc["paths"][download_t]["get"]["responses"]["200"];
    assert!(documented["content"]["application/octet-stream"].is_object());
    let header = |name: &str| served.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-content-sha256"), Some(honest.sha.as_str()));
    assert_eq!(header("etag"), Some(format!("\"{}\"", honest.sha).as_str()));
    for name in keys(&documented["headers"]) {
        assert!(
            header(&name).is_some(),
            "the documented header {name} is sent"
        );
    }
    let stranger = live.tc.new_key(Scope::Client);
    live.check("GET", download_t, &download, Some(&stranger), None, 404)
        .await;
    let by_admin = live
        .tc
        .request(reqwest::Method::GET, &download, a, None, &[])
        .await;
    assert_eq!((by_admin.status, &by_admin.body), (200, &output));
    assert_eq!(
        view["proof"]["metrics"],
        json!({"wall_ms": 3, "energy_mj": 1200, "energy_source": "rapl", "tflops": 0.02})
    );
    live.check(
        "GET",
        "/v1/client/jobs/{id}",
        "/v1/client/jobs/no-such-job",
        c,
        None,
        404,
    )
    .await;
    let bal = live
        .check(
            "GET",
            "/v1/wallet/balance",
            "/v1/wallet/balance?wallet=wallet_live",
            None,
            None,
            200,
        )
        .await;
    let bal: Balance = serde_json::from_value(bal).expect("a Balance");
    assert_eq!(
        (bal.balance, bal.credits, bal.pending, bal.forfeited),
        (25, 1, 0, 0)
    );
    let ledger = "/v1/wallet/ledger?wallet=wallet_live&limit=10";
    let entries = live
        .check("GET", "/v1/wallet/ledger", ledger, None, None, 200)
        .await;
    assert_eq!(kinds(&entries), ["settle", "credit"]);

    // The second job: given back, then proved by a cheater (a wrong output under a real tree).
    let job2 = live
        .check("GET", "/v1/miner/next", next, m, None, 200)
        .await;
    let id2 = job2["id"].as_str().expect("Job.id").to_string();
    // An audit answer for a job with no proof in is 409 NO_AUDIT.
    let early = json!({"id": id2, "attempt": 1, "rows": []}).to_string();
    let refused = live.check("POST", audit, audit, m, Some(&early), 409).await;
    assert_eq!(refused["error"]["code"], json!("NO_AUDIT"));
    let fail = json!({"id": id2, "attempt": job2["attempt"], "reason": "TIMED_OUT",
        "message": "too slow"})
    .to_string();
    live.check(
        "POST",
        "/v1/miner/fail",
        "/v1/miner/fail",
        m,
        Some(&fail),
        200,
    )
    .await;
    let cheat_hb = r#"{"miner_id":"live-cheat","wallet":"wallet_cheat","mode":"cpu"}"#;
    live.check(
        "POST",
        "/v1/miner/heartbeat",
        "/v1/miner/heartbeat",
        x,
        Some(cheat_hb),
        200,
    )
    .await;
    let refused = live
        .check("GET", audits, "/v1/miner/audits?miner=live-0", x, None, 403)
        .await;
    assert_eq!(refused["error"]["code"], json!("MINER_ID_TAKEN"));
    let cheat_next = "/v1/miner/next?miner=live-cheat";
    let taken = live
        .check("GET", "/v1/miner/next", cheat_next, x, None, 200)
        .await;
    assert_eq!((&taken["id"], &taken["attempt"]), (&json!(id2), &json!(2)));
    let wrong = Held::of(&params, true);
    let ack = live
        .check(
            "POST",
            proof_path,
            proof_path,
            x,
            Some(&wrong.proof(&taken, "live-cheat")),
            200,
        )
        .await;
    let ack: ProofAck = serde_json::from_value(ack).expect("a ProofAck");
    let challenge = ack.audit.expect("a new key's proof is audited");
    let answer = serde_json::to_string(&AuditAnswer {
        id: id2.clone(),
        miner_id: None,
        attempt: 2,
        rows: wrong.open(&challenge.rows),
    })
    .expect("an answer serializes");
    // Another key cannot answer (or learn about) the cheater's audit.
    live.check("POST", audit, audit, m, Some(&answer), 403)
        .await;
    let caught = live
        .check("POST", audit, audit, x, Some(&answer), 200)
        .await;
    let caught: AuditAck = serde_json::from_value(caught).expect("an AuditAck");
    assert_eq!(
        (caught.verdict, caught.state),
        (AuditVerdict::Failed, JobState::Queued)
    );
    assert!(
        caught.message.contains("is not the chain's row"),
        "{}",
        caught.message
    );
    let view = live
        .check(
            "GET",
            "/v1/client/jobs/{id}",
            &format!("/v1/client/jobs/{id2}"),
            a,
            None,
            200,
        )
        .await;
    let view: JobView = serde_json::from_value(view).expect("a JobView");
    assert_eq!(view.state, JobState::Queued);
    assert_eq!(
        view.failure.map(|f| f.reason),
        Some(FailReason::AuditFailed)
    );
    let v = view.verification.expect("a verification");
    assert_eq!((v.status, v.attempt), (VerificationStatus::Failed, 2));
    assert!(
        view.proof.is_none(),
        "a rejected proof is no result, as documented"
    );
    let bal = live
        .check(
            "GET",
            "/v1/wallet/balance",
            "/v1/wallet/balance?wallet=wallet_cheat",
            None,
            None,
            200,
        )
        .await;
    let bal: Balance = serde_json::from_value(bal).expect("a Balance");
    assert_eq!(
        (bal.balance, bal.credits, bal.pending, bal.forfeited),
        (0, 0, 0, 25)
    );
    let entries = live
        .check(
            "GET",
            "/v1/wallet/ledger",
            "/v1/wallet/ledger?wallet=wallet_cheat",
            None,
            None,
            200,
        )
        .await;
    assert_eq!(kinds(&entries), ["forfeit", "credit"]);
    let queued = "/v1/admin/jobs?state=queued";
    let jobs = live
        .check("GET", "/v1/admin/jobs", queued, a, None, 200)
        .await;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");

    // One strike (this Coordinator's --verify-strikes) suspends the key until reinstated.
    let miners = live
        .check("GET", "/v1/admin/miners", "/v1/admin/miners", a, None, 200)
        .await;
    let listed: Vec<MinerView> = serde_json::from_value(miners).expect("MinerViews");
    let cheater = listed
        .iter()
        .find(|v| v.miner_id == "live-cheat")
        .expect("live-cheat listed");
    assert_eq!((cheater.strikes, cheater.suspended), (1, true));
    let refused = live
        .check("GET", "/v1/miner/next", cheat_next, x, None, 403)
        .await;
    assert_eq!(refused["error"]["code"], json!("MINER_SUSPENDED"));
    let reinstate = "/v1/admin/miners/{id}/reinstate";
    let path = "/v1/admin/miners/live-cheat/reinstate";
    live.check("POST", reinstate, path, x, None, 403).await;
    live.check(
        "POST",
        reinstate,
        "/v1/admin/miners/nobody/reinstate",
        a,
        None,
        404,
    )
    .await;
    live.check(
        "POST",
        reinstate,
        "/v1/admin/miners/no%20body/reinstate",
        a,
        None,
        422,
    )
    .await;
    let standing = live.check("POST", reinstate, path, a, None, 200).await;
    let standing: Standing = serde_json::from_value(standing).expect("a Standing");
    assert_eq!(
        standing,
        Standing {
            miner_id: "live-cheat".into(),
            strikes: 0,
            suspended: false
        }
    );
    // Reinstated, it may take jobs again, but never the one it was caught on.
    live.check("GET", "/v1/miner/next", cheat_next, x, None, 204)
        .await;
    assert_eq!(live.tc.job(&id2).await.state, JobState::Queued);
    let fresh = live
        .tc
        .submit(json!({"workload": "torch_bench", "params": {"n": 4, "iters": 1}, "reward": 1}))
        .await;
    let again = live
        .check("GET", "/v1/miner/next", cheat_next, x, None, 200)
        .await;
    assert_eq!(again["id"], json!(fresh.id));

    // Refusals, each with the error body and a documented status.
    let hb_path = "/v1/miner/heartbeat";
    live.check("POST", hb_path, hb_path, None, Some(hb), 401)
        .await;
    live.check("POST", hb_path, hb_path, c, Some(hb), 403).await;
    live.check("POST", hb_path, hb_path, m, Some("{not json"), 400)
        .await;
    live.check(
        "POST",
        hb_path,
        hb_path,
        m,
        Some(r#"{"miner_id":"x"}"#),
        422,
    )
    .await;
    let too_many = json!({"miner_id": "live-gpu", "wallet": "w", "mode": "gpu",
        "gpu_health": {"healthy": true, "throttle_reasons": vec!["sw_power_cap"; 33]}})
    .to_string();
    let refused = live
        .check("POST", hb_path, hb_path, m, Some(&too_many), 422)
        .await;
    assert_eq!(
        refused["error"]["details"]["field"],
        json!("gpu_health.throttle_reasons")
    );
    let unknown = "/v1/miner/next?miner=never-seen";
    live.check("GET", "/v1/miner/next", unknown, m, None, 409)
        .await;
    live.check("GET", "/v1/admin/jobs", "/v1/admin/jobs", c, None, 403)
        .await;
    let twice = "/v1/wallet/balance?wallet=a&wallet=b";
    live.check("GET", "/v1/wallet/balance", twice, None, None, 400)
        .await;
    let bad_limit = "/v1/wallet/ledger?wallet=wallet_live&limit=0";
    live.check("GET", "/v1/wallet/ledger", bad_limit, None, None, 422)
        .await;

    live.tc.stop().await;
}

/// With `--verify off` the answers are still the document's: any workload is taken, a proof
/// without a commitment completes its job at once with `verification.status = off`, and its
/// credit settles in the same transaction (a credit and its settle entry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_without_verification_match_the_document() {
    let live = Live {
        doc: doc(),
        tc: TestCoordinator::start(unverified_config()).await,
    };
    let (miner, client) = (live.tc.miner_key.clone(), live.tc.client_key.clone());
    let (m, c) = (Some(miner.as_str()), Some(client.as_str()));
    let hb = r#"{"miner_id":"off-0","wallet":"wallet_off","mode":"cpu"}"#;
    live.check(
        "POST",
        "/v1/miner/heartbeat",
        "/v1/miner/heartbeat",
        m,
        Some(hb),
        200,
    )
    .await;
    let stub = r#"{"workload":"sd_infer","params":{},"reward":5}"#;
    live.check(
        "POST",
        "/v1/client/jobs",
        "/v1/client/jobs",
        c,
        Some(stub),
        201,
    )
    .await;
    let job = live
        .check(
            "GET",
            "/v1/miner/next",
            "/v1/miner/next?miner=off-0",
            m,
            None,
            200,
        )
        .await;
    let proof = json!({"id": job["id"], "attempt": job["attempt"], "mode": "cpu",
        "output_sha": "ab".repeat(32), "metrics": {}})
    .to_string();
    let ack = live
        .check(
            "POST",
            "/v1/miner/proof",
            "/v1/miner/proof",
            m,
            Some(&proof),
            200,
        )
        .await;
    let ack: ProofAck = serde_json::from_value(ack).expect("a ProofAck");
    assert_eq!(ack.state, JobState::Completed);
    assert!(ack.audit.is_none() && ack.settles_at.is_none(), "{ack:?}");
    let id = job["id"].as_str().expect("Job.id");
    let view = live
        .check(
            "GET",
            "/v1/client/jobs/{id}",
            &format!("/v1/client/jobs/{id}"),
            c,
            None,
            200,
        )
        .await;
    assert_eq!(view["verification"], json!({"status": "off", "attempt": 1}));
    let answer = json!({"id": id, "attempt": 1, "rows": []}).to_string();
    let refused = live
        .check(
            "POST",
            "/v1/miner/audit",
            "/v1/miner/audit",
            m,
            Some(&answer),
            409,
        )
        .await;
    assert_eq!(refused["error"]["code"], json!("NO_AUDIT"));
    let bal = live
        .check(
            "GET",
            "/v1/wallet/balance",
            "/v1/wallet/balance?wallet=wallet_off",
            None,
            None,
            200,
        )
        .await;
    assert_eq!(
        bal,
        json!({"wallet": "wallet_off", "balance": 5, "credits": 1, "pending": 0, "forfeited": 0})
    );
    let entries = live
        .check(
            "GET",
            "/v1/wallet/ledger",
            "/v1/wallet/ledger?wallet=wallet_off",
            None,
            None,
            200,
        )
        .await;
    assert_eq!(kinds(&entries), ["settle", "credit"]);
    live.tc.stop().await;
}

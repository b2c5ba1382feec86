//! Coordinator API v1: every request and response body, the job states, the failure reasons and
//! the error body. `docs/api.md` and `docs/openapi.json` describe the same types for people and
//! tools; a test keeps the OpenAPI document in step with these definitions.
//!
//! Conventions (guide section 12.1): JSON under `/v1/`, `Authorization: Bearer <key>`,
//! `Idempotency-Key` on POSTs, ISO-8601 UTC timestamps, money as integer base units.
//!
//! This module must never hold behaviour beyond (de)serialisation and small pure helpers: the
//! Coordinator decides, the supervisor acts, these types only carry.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

/// Path prefix of every endpoint.
pub const API_PREFIX: &str = "/v1";
/// Header carrying the client-chosen key that makes a POST safe to repeat.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Timestamps travel as RFC 3339 / ISO-8601 in UTC, e.g. `2025-09-26T13:37:00.123Z`.
pub mod ts {
    pub use time::serde::rfc3339::option;
    pub use time::serde::rfc3339::{deserialize, serialize};

    /// Now, in UTC, truncated to milliseconds (the precision the API promises).
    pub fn now() -> time::OffsetDateTime {
        let now = time::OffsetDateTime::now_utc();
        let ms = now.millisecond();
        now.replace_millisecond(ms).unwrap_or(now)
    }
}

/// Where work is computed: on the CPU or on an NVIDIA GPU. The one CPU/GPU type of the
/// project: a miner's mode in the API (`"cpu"`, `"gpu"`), a worker's kind on the wire
/// (bincode: Cpu 0, Gpu 1; the order of the variants is part of the wire format) and the
/// worker's `--kind`. The default (for `..Default::default()` in literals) is the CPU, the mode
/// every host can run.
#[derive(
    Serialize,
    Deserialize,
    bincode::Encode,
    bincode::Decode,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Debug,
    Hash,
    Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Cpu,
    Gpu,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Gpu => "gpu",
            Mode::Cpu => "cpu",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Cpu, Mode::Gpu].into_iter().find(|m| m.as_str() == s)
    }
}

/// The guide's miner script sends `gpu` as `0` or `1`; the specified type is a boolean.
/// Both are accepted; a boolean is always emitted.
#[derive(Serialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(transparent)]
pub struct GpuFlag(pub bool);

impl<'de> Deserialize<'de> for GpuFlag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Int(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(b) => Ok(GpuFlag(b)),
            Raw::Int(0) => Ok(GpuFlag(false)),
            Raw::Int(1) => Ok(GpuFlag(true)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!(
                "gpu must be true, false, 0 or 1, got {n}"
            ))),
        }
    }
}

/// The most a miner accepts from one job. Absent fields mean "no stated limit".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MinerLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runtime_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_s: Option<u64>,
}

/// One GPU as the miner's supervisor found it (through NVML). Reported in the heartbeat so the
/// Coordinator (and its operator) can see what a miner runs on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuInfo {
    /// The device's NVML index on the miner's host.
    pub index: u32,
    /// The device's name as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in MiB.
    pub vram_mb: u64,
    /// The NVIDIA driver's version, e.g. `580.65.06`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports, e.g. `13.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
}

/// The GPU's health as the miner's supervisor last read it (temperature, throttle reasons and
/// XID errors through NVML). While `healthy` is false the miner takes no GPU jobs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuHealth {
    pub healthy: bool,
    /// Hottest reported device temperature, degrees Celsius.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    /// Active clock throttle reasons as NVML names them (e.g. `hw_thermal_slowdown`).
    #[serde(default)]
    pub throttle_reasons: Vec<String>,
    /// XID errors seen since the supervisor started.
    #[serde(default)]
    pub xid_errors: u64,
    /// Why the device is unhealthy (or why health could not be read), in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/miner/heartbeat` body: who the miner is, where to pay it, and what it can run.
/// Only `miner_id`, `wallet` and `mode` are required, so the guide's script
/// (`{miner_id, wallet, mode, gpu}`) is a valid heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MinerCapabilities {
    pub miner_id: String,
    pub wallet: String,
    pub mode: Mode,
    #[serde(default)]
    pub gpu: GpuFlag,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Workloads this miner runs. Empty means "any" (the guide's script declares none).
    #[serde(default)]
    pub workloads: Vec<String>,
    #[serde(default)]
    pub limits: MinerLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mb: Option<u64>,
    /// Free-form software version, e.g. `aitbc-miner/0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The GPUs the miner found. Absent (empty) on a CPU miner or when NVML is unavailable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
    /// The GPU's health at the time of the heartbeat; absent when the miner has no GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_health: Option<GpuHealth>,
}

/// Answer to a heartbeat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HeartbeatAck {
    pub miner_id: String,
    pub wallet: String,
    #[serde(with = "ts")]
    pub server_time: OffsetDateTime,
}

/// Resource caps attached to a job by its client. Every field has a default so that
/// `"limits": {}` (or no `limits`) is valid.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    #[serde(default = "JobLimits::default_ram_mb")]
    pub ram_mb: u64,
    #[serde(default)]
    pub vram_mb: u64,
    #[serde(default = "JobLimits::default_cpu_time_s")]
    pub cpu_time_s: u64,
    #[serde(default = "JobLimits::default_max_runtime_s")]
    pub max_runtime_s: u64,
}

impl JobLimits {
    pub const DEFAULT_RAM_MB: u64 = 1024;
    pub const DEFAULT_CPU_TIME_S: u64 = 600;
    pub const DEFAULT_MAX_RUNTIME_S: u64 = 300;
    /// The least `ram_mb`, `cpu_time_s` and `max_runtime_s` a job may ask for: with none of
    /// one of them it could only burn its attempts. (`vram_mb` may be 0: a CPU job.)
    /// Checked by [`crate::workload::check_limits`].
    pub const MIN_RAM_MB: u64 = 1;
    pub const MIN_CPU_TIME_S: u64 = 1;
    pub const MIN_MAX_RUNTIME_S: u64 = 1;
    fn default_ram_mb() -> u64 {
        Self::DEFAULT_RAM_MB
    }
    fn default_cpu_time_s() -> u64 {
        Self::DEFAULT_CPU_TIME_S
    }
    fn default_max_runtime_s() -> u64 {
        Self::DEFAULT_MAX_RUNTIME_S
    }
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            ram_mb: Self::DEFAULT_RAM_MB,
            vram_mb: 0,
            cpu_time_s: Self::DEFAULT_CPU_TIME_S,
            max_runtime_s: Self::DEFAULT_MAX_RUNTIME_S,
        }
    }
}

/// Where a job is in its life. The only transitions are
/// queued -> assigned -> (verifying | failed | queued again, with attempt + 1), and
/// verifying -> (completed | queued again | failed): a proof is checked (audited, or held for
/// the Coordinator's holding window) before its credit settles.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Assigned,
    /// A proof is in and its credit pending: the job is being audited or held until it settles.
    Verifying,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Verifying => "verifying",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "assigned" => JobState::Assigned,
            "verifying" => JobState::Verifying,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Completed | JobState::Failed)
    }
}

/// A job as a miner receives it from `GET /v1/miner/next`. `id` and `workload` sit at the top
/// level because the guide's script reads exactly those. `workload` stays a string here so that
/// a miner can report a workload it does not know (`UNKNOWN_WORKLOAD`) instead of failing to parse.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub workload: String,
    #[serde(default)]
    pub params: Value,
    #[serde(default)]
    pub limits: JobLimits,
    pub reward: u64,
    /// The fencing token: which attempt this lease is. A proof or failure report must carry it.
    pub attempt: u32,
    #[serde(with = "ts")]
    pub lease_expires_at: OffsetDateTime,
    #[serde(with = "ts")]
    pub created_at: OffsetDateTime,
}

/// Where a proof's energy figure came from. The miner's own measurement, never an estimate:
/// `Unavailable` says the host could not measure (and then no figure is sent).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum EnergySource {
    /// NVML's total-energy counter of the GPU, read before and after the job.
    Nvml,
    /// The CPU package's RAPL counter (`/sys/class/powercap/intel-rapl:*/energy_uj`).
    Rapl,
    /// The host offers no readable energy counter.
    Unavailable,
}

impl EnergySource {
    pub fn as_str(self) -> &'static str {
        match self {
            EnergySource::Nvml => "nvml",
            EnergySource::Rapl => "rapl",
            EnergySource::Unavailable => "unavailable",
        }
    }
}

/// Accounting figures a miner attaches to a proof. All optional: the guide's script sends `{}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<u64>,
    /// Energy the job used, in millijoules, as the miner measured it (see `energy_source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<u64>,
    /// Where `energy_mj` came from; `unavailable` when the host cannot measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub energy_source: Option<EnergySource>,
    /// Achieved throughput, TFLOP/s: `flops` over the compute time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflops: Option<f64>,
}

/// `POST /v1/miner/proof` body: what the miner computed for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Proof {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner_id: Option<String>,
    /// The attempt (fencing token) the proof is for. When absent, the Coordinator checks the
    /// job's current assignment against the presenting key alone (the guide's script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub mode: Mode,
    /// Lower-case hex SHA-256 of the job's output, 64 characters.
    pub output_sha: String,
    /// Lower-case hex RFC 9162 Merkle root over the output's rows (`crate::merkle`), 64
    /// characters: what an audit checks opened rows against. torch_bench proofs carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_len: Option<u64>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<OffsetDateTime>,
}

/// Longest miner id and wallet address, in characters (all ASCII, so also bytes).
pub const MAX_ID_LEN: usize = 128;

/// Largest `reward` a job may carry, in base units: 10^12. A wallet then needs more than
/// 9.2 million maximal credits before its balance could pass 2^63 - 1 (the store's integer);
/// a credit that would is refused with `WALLET_FULL`, never wrapped.
pub const MAX_REWARD: u64 = 1_000_000_000_000;

/// True when `s` is a valid `miner_id`: 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 . _ -`.
pub fn is_miner_id(s: &str) -> bool {
    is_token(s, b"._-")
}

/// True when `s` is a valid wallet address: 1 to [`MAX_ID_LEN`] characters of
/// `A-Z a-z 0-9 . _ : -`. Plain ASCII only, so that no two different wallets look alike: no
/// letters of other scripts, no format characters (U+202E RIGHT-TO-LEFT OVERRIDE, U+200B
/// ZERO WIDTH SPACE), no spaces. The Coordinator checks heartbeats with it, and the miner its
/// `WALLET_ADDR` at start.
pub fn is_wallet(s: &str) -> bool {
    is_token(s, b"._:-")
}

fn is_token(s: &str, punctuation: &[u8]) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || punctuation.contains(&b))
}

/// True when `s` is 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Answer to an accepted proof: `credited` base units are credited to `wallet`, pending until
/// the job settles. `state` is `verifying` (or `completed` when the Coordinator runs with
/// verification off, and the credit settled at once). `audit`, when present, is the challenge
/// the miner must answer by `audit.answer_by` (`POST /v1/miner/audit`); without it the job was
/// not chosen for audit and settles at `settles_at`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProofAck {
    pub id: String,
    pub state: JobState,
    pub attempt: u32,
    pub wallet: String,
    pub credited: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditChallenge>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub settles_at: Option<OffsetDateTime>,
}

/// An audit: the Coordinator asks the miner whose proof a job holds to open these rows of the
/// committed output (torch_bench: rows of the final matrix, leaves of the proof's
/// `merkle_root`). Chosen by the Coordinator after the proof arrived, from a secret the miner
/// never sees, so a miner cannot steer them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditChallenge {
    pub id: String,
    pub attempt: u32,
    /// Row indexes, ascending and distinct.
    pub rows: Vec<u64>,
    /// An answer after this is too late: the job is requeued and the credit forfeited.
    #[serde(with = "ts")]
    pub answer_by: OffsetDateTime,
}

/// One opened row of an audit answer: the row's bytes and its inclusion proof.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OpenedRow {
    pub index: u64,
    /// The row's bytes (torch_bench: its `n` int8 values as two's-complement bytes), lower-case
    /// hex.
    pub data: String,
    /// The RFC 9162 audit path of the row's leaf, leaf up, each a lower-case hex SHA-256.
    pub path: Vec<String>,
}

/// `POST /v1/miner/audit` body: the opened rows of a challenge, in the challenge's order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditAnswer {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner_id: Option<String>,
    pub attempt: u32,
    pub rows: Vec<OpenedRow>,
}

/// How an audit ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AuditVerdict {
    /// Every opened row was the committed one and equal to the Coordinator's recomputation:
    /// the credit settled.
    Passed,
    /// The answer did not hold (or came too late): the credit is forfeited and the job
    /// requeued for another miner.
    Failed,
}

/// Answer to `POST /v1/miner/audit` (and to its replays): the verdict and the job's state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AuditAck {
    pub id: String,
    pub attempt: u32,
    pub verdict: AuditVerdict,
    pub state: JobState,
    /// Why, for a failed audit (the first row that did not hold).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Where the upload of a job's artifact stands: the answer to `PUT` and `GET
/// /v1/miner/jobs/{id}/artifact`. The artifact is the job's output itself: `size` bytes
/// (the proof's `output_len`) whose SHA-256 is `sha256` (the proof's `output_sha`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ArtifactStatus {
    pub id: String,
    pub attempt: u32,
    pub size: u64,
    pub sha256: String,
    /// Bytes the Coordinator holds durably; the next upload starts at this offset.
    pub received: u64,
    /// All `size` bytes are in and their SHA-256 is `sha256`.
    pub complete: bool,
}

/// A job's result as its client sees it, once a proof is accepted: what the proof commits
/// to, and how much of the output (the artifact) the miner has uploaded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobResult {
    /// Lower-case hex SHA-256 of the output.
    pub output_sha: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merkle_root: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_len: Option<u64>,
    /// Bytes of the output uploaded so far (checked against `output_sha` once complete).
    pub artifact_received: u64,
    /// `GET /v1/client/jobs/{id}/artifact` serves the output now: the job is completed (its
    /// proof verified, or settled) and the whole artifact is in.
    pub artifact_ready: bool,
}

/// Where the check of a job's proof stands, as its client sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum VerificationStatus {
    /// Not chosen for audit: the credit settles when the holding window ends (`settles_at`).
    Holding,
    /// An audit is open: the miner must answer by `answer_by`.
    Challenged,
    /// The audit passed; the credit settled.
    Passed,
    /// Not audited; the holding window ended and the credit settled.
    Unaudited,
    /// The audit failed or timed out; the credit was forfeited and the job requeued.
    Failed,
    /// The Coordinator runs with verification off: the credit settled at once, unchecked.
    Off,
}

impl VerificationStatus {
    pub const ALL: [VerificationStatus; 6] = [
        VerificationStatus::Holding,
        VerificationStatus::Challenged,
        VerificationStatus::Passed,
        VerificationStatus::Unaudited,
        VerificationStatus::Failed,
        VerificationStatus::Off,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerificationStatus::Holding => "holding",
            VerificationStatus::Challenged => "challenged",
            VerificationStatus::Passed => "passed",
            VerificationStatus::Unaudited => "unaudited",
            VerificationStatus::Failed => "failed",
            VerificationStatus::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<VerificationStatus> {
        VerificationStatus::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// The check of the proof a job holds (the latest attempt's).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub status: VerificationStatus,
    /// The attempt whose proof is checked.
    pub attempt: u32,
    /// The rows an audit opened (or asks for), when audited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit_rows: Vec<u64>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub answer_by: Option<OffsetDateTime>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub settles_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Why a job did not produce a proof. A closed vocabulary, used by the miner's fail report, the
/// Coordinator's job record and the client's view alike.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailReason {
    /// The worker process died without answering (signal, panic, exit).
    WorkerCrashed,
    /// The job ran past its `max_runtime_s` (or `cpu_time_s`) and was killed.
    TimedOut,
    /// The worker was killed by its sandbox (seccomp) for a forbidden action.
    SandboxViolation,
    /// The job asked for more than this miner's operator allows.
    CapsRefused,
    /// The miner does not run this workload.
    UnknownWorkload,
    /// The job's parameters are malformed or inconsistent with its limits.
    BadParams,
    /// The job exceeded its memory limit.
    OutOfMemory,
    /// The worker sent a malformed, oversized or out-of-order frame.
    ProtocolError,
    /// The miner is shutting down and gives the job back.
    MinerShutdown,
    /// The Coordinator gave up after the job's attempts ran out (expired leases or requeues).
    AttemptsExhausted,
    /// Anything else on the miner's side.
    Internal,
    /// Set by the Coordinator: the miner's answer to an audit did not hold (a row that is not
    /// the committed one, or not the correct one). The credit is forfeited.
    AuditFailed,
    /// Set by the Coordinator: the miner did not answer an audit in time. The credit is
    /// forfeited.
    AuditTimeout,
}

/// What the Coordinator does with a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Give the job to another miner (while attempts remain).
    Requeue,
    /// The job itself is at fault: fail it at once, whatever attempts remain.
    Fail,
}

impl FailReason {
    pub const ALL: [FailReason; 13] = [
        FailReason::WorkerCrashed,
        FailReason::TimedOut,
        FailReason::SandboxViolation,
        FailReason::CapsRefused,
        FailReason::UnknownWorkload,
        FailReason::BadParams,
        FailReason::OutOfMemory,
        FailReason::ProtocolError,
        FailReason::MinerShutdown,
        FailReason::AttemptsExhausted,
        FailReason::Internal,
        FailReason::AuditFailed,
        FailReason::AuditTimeout,
    ];

    /// Whether another miner could plausibly succeed where this attempt failed.
    pub fn disposition(self) -> Disposition {
        match self {
            FailReason::SandboxViolation
            | FailReason::BadParams
            | FailReason::OutOfMemory
            | FailReason::AttemptsExhausted => Disposition::Fail,
            FailReason::WorkerCrashed
            | FailReason::TimedOut
            | FailReason::CapsRefused
            | FailReason::UnknownWorkload
            | FailReason::ProtocolError
            | FailReason::MinerShutdown
            | FailReason::Internal
            | FailReason::AuditFailed
            | FailReason::AuditTimeout => Disposition::Requeue,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::WorkerCrashed => "WORKER_CRASHED",
            FailReason::TimedOut => "TIMED_OUT",
            FailReason::SandboxViolation => "SANDBOX_VIOLATION",
            FailReason::CapsRefused => "CAPS_REFUSED",
            FailReason::UnknownWorkload => "UNKNOWN_WORKLOAD",
            FailReason::BadParams => "BAD_PARAMS",
            FailReason::OutOfMemory => "OUT_OF_MEMORY",
            FailReason::ProtocolError => "PROTOCOL_ERROR",
            FailReason::MinerShutdown => "MINER_SHUTDOWN",
            FailReason::AttemptsExhausted => "ATTEMPTS_EXHAUSTED",
            FailReason::Internal => "INTERNAL",
            FailReason::AuditFailed => "AUDIT_FAILED",
            FailReason::AuditTimeout => "AUDIT_TIMEOUT",
        }
    }

    pub fn parse(s: &str) -> Option<FailReason> {
        FailReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// `POST /v1/miner/fail` body: the miner could not complete its attempt at a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FailReport {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub reason: FailReason,
    /// Human-readable detail, shown to the job's client.
    #[serde(default)]
    pub message: String,
}

/// Answer to a fail report: the job's new state (`queued` again, or `failed`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FailAck {
    pub id: String,
    pub state: JobState,
    /// Attempts used so far.
    pub attempt: u32,
}

/// The recorded reason a job or one of its attempts failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: FailReason,
    pub message: String,
    pub attempt: u32,
}

/// `POST /v1/client/jobs` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    pub workload: String,
    #[serde(default = "empty_object")]
    pub params: Value,
    #[serde(default)]
    pub limits: JobLimits,
    /// Integer base units paid to the miner whose proof completes the job, at most
    /// [`MAX_REWARD`].
    pub reward: u64,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A job as its client sees it (`POST /v1/client/jobs` answers 201 with this;
/// `GET /v1/client/jobs/{id}` answers 200 with this).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub workload: String,
    pub params: Value,
    pub limits: JobLimits,
    pub reward: u64,
    /// Attempts started so far (0 while never assigned).
    pub attempt: u32,
    pub max_attempts: u32,
    #[serde(with = "ts")]
    pub created_at: OffsetDateTime,
    #[serde(with = "ts")]
    pub updated_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub miner_id: Option<String>,
    #[serde(default, with = "ts::option", skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<OffsetDateTime>,
    /// The accepted proof, once completed: the job's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// The last failure, if any (also set while requeued after a failed attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The check of the latest proof, once one arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The result the accepted proof names, and its artifact's upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<JobResult>,
}

/// A miner as the Coordinator last heard from it: one entry of `GET /v1/admin/miners`.
/// `capabilities` is the miner's latest heartbeat body, GPUs and GPU health included.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MinerView {
    pub miner_id: String,
    pub wallet: String,
    /// When the last heartbeat arrived.
    #[serde(with = "ts")]
    pub last_seen: OffsetDateTime,
    pub capabilities: MinerCapabilities,
    /// The standing of the key that owns this miner id: failed audits so far, and whether it
    /// is suspended from `next` (until an admin reinstates it).
    #[serde(default)]
    pub strikes: u32,
    #[serde(default)]
    pub suspended: bool,
}

/// `POST /v1/admin/miners/{id}/reinstate` answer: the owning key's standing afterwards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Standing {
    pub miner_id: String,
    pub strikes: u32,
    pub suspended: bool,
}

/// `GET /v1/wallet/balance` answer. `balance` is what has settled; `pending` is credited but
/// not yet settled (its jobs are being verified); `forfeited` was credited and taken back
/// because a proof failed its audit. All integer base units.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Balance {
    pub wallet: String,
    /// Settled base units.
    pub balance: u64,
    /// Number of settled credits that make up the balance.
    pub credits: u64,
    #[serde(default)]
    pub pending: u64,
    #[serde(default)]
    pub forfeited: u64,
}

/// Machine-readable error codes carried in [`ErrorBody`]. Clients must treat an unknown code
/// by its HTTP status; [`ErrorCode::Other`] catches codes a newer Coordinator may add.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or a query string or header is malformed.
    BadRequest,
    /// 401: no key, or a key the Coordinator does not know.
    Unauthorized,
    /// 403: the key's scope does not allow this, or the object belongs to someone else.
    Forbidden,
    /// 403: this miner_id was first registered by another key.
    MinerIdTaken,
    /// 404: no such job.
    NotFound,
    /// 409: the job is already completed or failed.
    JobFinished,
    /// 409: the job is not (or no longer) assigned to the presenting miner: lease expired and
    /// requeued, or taken over by another attempt.
    NotAssigned,
    /// 409: the proof or report names an attempt that is not the current one.
    StaleAttempt,
    /// 409: the miner must send a heartbeat (which names its wallet) before taking jobs.
    UnknownMiner,
    /// 409: crediting the job would take the miner's wallet past 2^63 - 1 base units; the proof
    /// is refused and the attempt given back (the job is requeued while attempts remain).
    WalletFull,
    /// 413: the body is larger than the Coordinator accepts.
    PayloadTooLarge,
    /// 422: well-formed JSON that breaks a rule (unknown workload, bad field value, ...).
    ValidationFailed,
    /// 422: an Idempotency-Key was reused with a different request.
    IdempotencyKeyReused,
    /// 429: too many requests; wait for `Retry-After` seconds.
    RateLimited,
    /// 403: the key failed too many audits and is suspended from taking jobs until an admin
    /// reinstates it.
    MinerSuspended,
    /// 409: the job has no open audit for this attempt (none was asked, or it was decided).
    NoAudit,
    /// 409: the job's result cannot be served yet: it is not completed, or its artifact is not
    /// (wholly) uploaded.
    ResultNotReady,
    /// 409: an artifact upload starts past the bytes the Coordinator holds; `details.received`
    /// says where to resume.
    OffsetMismatch,
    /// 500: the Coordinator failed; the request may be retried.
    Internal,
    /// 503: the Coordinator is shutting down or its store is unavailable.
    Unavailable,
    #[serde(other)]
    Other,
}

/// Non-2xx answers carry this body: `{"error": {"code", "message", "details"}}`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub details: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn guide_heartbeat_parses_with_gpu_as_integer() {
        let hb: MinerCapabilities = serde_json::from_value(
            json!({"miner_id": "host-gpu0", "wallet": "wallet_demo", "mode": "cpu", "gpu": 0}),
        )
        .unwrap();
        assert_eq!(hb.gpu, GpuFlag(false));
        assert!(hb.workloads.is_empty());
        let hb: MinerCapabilities = serde_json::from_value(
            json!({"miner_id": "m", "wallet": "w", "mode": "gpu", "gpu": 1}),
        )
        .unwrap();
        assert_eq!(hb.gpu, GpuFlag(true));
        let bad = serde_json::from_value::<MinerCapabilities>(
            json!({"miner_id": "m", "wallet": "w", "mode": "gpu", "gpu": 2}),
        );
        assert!(bad.unwrap_err().to_string().contains("gpu must be"));
    }

    #[test]
    fn guide_proof_parses_with_empty_metrics() {
        let p: Proof = serde_json::from_value(json!({
            "id": "j1", "mode": "cpu", "output_sha": "ab".repeat(32), "metrics": {}
        }))
        .unwrap();
        assert_eq!(p.metrics, Metrics::default());
        assert!(p.attempt.is_none());
    }

    #[test]
    fn fail_reasons_round_trip_through_their_names() {
        for r in FailReason::ALL {
            let s = serde_json::to_value(r).unwrap();
            assert_eq!(s, json!(r.as_str()));
            assert_eq!(FailReason::parse(r.as_str()), Some(r));
        }
    }

    #[test]
    fn unknown_error_codes_do_not_break_clients() {
        let e: ErrorBody = serde_json::from_value(
            json!({"error": {"code": "SOMETHING_NEW", "message": "m", "details": {}}}),
        )
        .unwrap();
        assert_eq!(e.error.code, ErrorCode::Other);
    }

    #[test]
    fn timestamps_are_utc_with_z() {
        let ack = HeartbeatAck {
            miner_id: "m".into(),
            wallet: "w".into(),
            server_time: time::macros::datetime!(2025-09-26 13:37:00 UTC),
        };
        let v = serde_json::to_value(ack).unwrap();
        assert_eq!(v["server_time"], json!("2025-09-26T13:37:00Z"));
    }

    #[test]
    fn gpu_fields_are_optional_and_skipped_when_empty() {
        let hb: MinerCapabilities =
            serde_json::from_value(json!({"miner_id": "m", "wallet": "w", "mode": "cpu"})).unwrap();
        assert!(hb.gpus.is_empty() && hb.gpu_health.is_none());
        let v = serde_json::to_value(&hb).unwrap();
        assert!(v.get("gpus").is_none() && v.get("gpu_health").is_none());
        let hb: MinerCapabilities = serde_json::from_value(json!({
            "miner_id": "m", "wallet": "w", "mode": "gpu",
            "gpus": [{"index": 0, "name": "NVIDIA H100", "vram_mb": 81559}],
            "gpu_health": {"healthy": false, "reason": "XID 79"}
        }))
        .unwrap();
        assert_eq!(hb.gpus[0].driver_version, None);
        let h = hb.gpu_health.unwrap();
        assert!(!h.healthy && h.throttle_reasons.is_empty() && h.xid_errors == 0);
    }

    #[test]
    fn energy_sources_are_lower_case() {
        for (s, name) in [
            (EnergySource::Nvml, "nvml"),
            (EnergySource::Rapl, "rapl"),
            (EnergySource::Unavailable, "unavailable"),
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), json!(name));
            assert_eq!(s.as_str(), name);
        }
        let m: Metrics = serde_json::from_value(json!({"energy_source": "unavailable"})).unwrap();
        assert_eq!(m.energy_source, Some(EnergySource::Unavailable));
        assert!(serde_json::from_value::<Metrics>(json!({"energy_source": "NVML"})).is_err());
    }

    #[test]
    fn miner_ids_and_wallets_are_plain_ascii() {
        for ok in [
            "wallet_demo",
            "w",
            "0xAbC:1",
            "eip155:1:0xab",
            "host-gpu0.a_b",
        ] {
            assert!(is_wallet(ok), "{ok}");
        }
        assert!(is_wallet(&"w".repeat(MAX_ID_LEN)));
        for bad in [
            "",
            "a b",
            "a\nb",
            "0xAbC:\u{fc}",
            "wallet\u{202e}lanoitan",
            "wal\u{200b}let",
            "wallet\u{ff3f}demo",
            "a/b",
            "a@b",
            &"w".repeat(MAX_ID_LEN + 1),
        ] {
            assert!(!is_wallet(bad), "{bad:?}");
            assert!(!is_miner_id(bad), "{bad:?}");
        }
        assert!(is_miner_id("host-gpu0.a_b"));
        assert!(!is_miner_id("a:b"), "a miner id has no colon");
    }

    #[test]
    fn sha_hex_check() {
        assert!(is_sha256_hex(&"0f".repeat(32)));
        assert!(!is_sha256_hex(&"0F".repeat(32)));
        assert!(!is_sha256_hex("abc"));
    }
}

//! The SQLite [`Store`]: WAL, `synchronous=FULL` (the ledger is money), ordered migrations
//! tracked in `user_version`, one connection behind a mutex held for one transaction at a time.
//!
//! Every write runs in a `BEGIN IMMEDIATE` transaction that also checks and stores the
//! request's idempotency record, so an effect and its stored answer commit together or not at
//! all. The ledger's UNIQUE(job_id) makes a second credit for a job impossible even with a bug
//! above it. This module must never decide a job transition itself: it asks
//! [`crate::lifecycle`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use aitbc_protocol::api::{
    is_sha256_hex, AuditAck, AuditChallenge, AuditVerdict, Balance, EnergySource, ErrorCode,
    FailAck, FailReason, FailReport, Failure, HeartbeatAck, Job, JobLimits, JobState, JobView,
    MinerCapabilities, Proof, ProofAck, Standing, Verification, VerificationStatus,
};
use aitbc_protocol::merkle::Digest;
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_protocol::workload::Workload;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use crate::audit::{Decision, Policy};
use crate::auth::{KeyInfo, Scope};
use crate::error::{Answer, Error, Refusal};
use crate::lifecycle::{self, Assignment, Claim, Event, Lease, Snapshot, Transition, Verdict};
use crate::store::{
    AuditClaim, AuditTarget, Credit, EntryKind, IdemKey, Matcher, MinerRecord, NewJob, Outcome,
    Store,
};

/// Ordered schema migrations; `user_version` = how many have been applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL CHECK (scope IN ('miner', 'client', 'admin')),
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE miners (
    miner_id     TEXT PRIMARY KEY,
    key_id       INTEGER NOT NULL REFERENCES api_keys(id),
    wallet       TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    last_seen    INTEGER NOT NULL
);
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    client_key_id    INTEGER NOT NULL REFERENCES api_keys(id),
    workload         TEXT NOT NULL,
    params           TEXT NOT NULL,
    ram_mb           INTEGER NOT NULL,
    vram_mb          INTEGER NOT NULL,
    cpu_time_s       INTEGER NOT NULL,
    max_runtime_s    INTEGER NOT NULL,
    reward           INTEGER NOT NULL CHECK (reward >= 0),
    state            TEXT NOT NULL CHECK (state IN ('queued', 'assigned', 'completed', 'failed')),
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    miner_id         TEXT,
    miner_key_id     INTEGER,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    proof            TEXT,
    failure          TEXT
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_at);
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL UNIQUE REFERENCES jobs(id),
    attempt     INTEGER NOT NULL,
    wallet      TEXT NOT NULL,
    miner_id    TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    created_at  INTEGER NOT NULL,
    UNIQUE (job_id, attempt)
);
CREATE INDEX ledger_by_wallet ON ledger (wallet, id);
CREATE TABLE wallets (
    wallet   TEXT PRIMARY KEY,
    balance  INTEGER NOT NULL CHECK (balance >= 0),
    credits  INTEGER NOT NULL CHECK (credits >= 0)
);
CREATE TABLE idempotency (
    key_id        INTEGER NOT NULL,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        INTEGER NOT NULL,
    body          BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (key_id, idem_key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
"#,
    MIGRATION_2_GPU,
    MIGRATION_3_VERIFIED,
];

/// Version 2 (issue 5, the GPU path): a proof's accounting metrics as columns of its job, for
/// reward weighting in SQL (the proof JSON keeps them too), and each miner's GPU count and
/// health. Only adds nullable or defaulted columns, then fills them from the JSON already
/// stored, so no existing row changes meaning or is lost.
const MIGRATION_2_GPU: &str = r#"
ALTER TABLE jobs ADD COLUMN energy_mj INTEGER CHECK (energy_mj IS NULL OR energy_mj >= 0);
ALTER TABLE jobs ADD COLUMN energy_source TEXT
    CHECK (energy_source IS NULL OR energy_source IN ('nvml', 'rapl', 'unavailable'));
ALTER TABLE jobs ADD COLUMN tflops REAL CHECK (tflops IS NULL OR tflops >= 0);
ALTER TABLE miners ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE miners ADD COLUMN gpu_healthy INTEGER CHECK (gpu_healthy IS NULL OR gpu_healthy IN (0, 1));
UPDATE jobs SET
    energy_mj = CASE WHEN json_type(proof, '$.metrics.energy_mj') = 'integer'
        AND json_extract(proof, '$.metrics.energy_mj') >= 0
        THEN json_extract(proof, '$.metrics.energy_mj') END,
    energy_source = CASE WHEN json_extract(proof, '$.metrics.energy_source')
        IN ('nvml', 'rapl', 'unavailable')
        THEN json_extract(proof, '$.metrics.energy_source') END,
    tflops = CASE WHEN json_type(proof, '$.metrics.tflops') IN ('integer', 'real')
        AND json_extract(proof, '$.metrics.tflops') >= 0
        THEN json_extract(proof, '$.metrics.tflops') END
    WHERE proof IS NOT NULL AND json_valid(proof);
UPDATE miners SET
    gpu_count = CASE WHEN json_type(capabilities, '$.gpus') = 'array'
        THEN json_array_length(capabilities, '$.gpus') ELSE 0 END,
    gpu_healthy = CASE json_type(capabilities, '$.gpu_health.healthy')
        WHEN 'true' THEN 1 WHEN 'false' THEN 0 END
    WHERE json_valid(capabilities);
"#;

/// Version 3 (issue 13, verified work): a proved job is `verifying` until it settles; the
/// ledger becomes append-only entries (a pending `credit`, then one `settle` or `forfeit` of
/// the same attempt) so a forfeit is a record, never a deletion; wallets keep their pending
/// and forfeited sums; the trust streak of each (key, workload), each key's strikes and
/// suspension, and the audit secret.
///
/// SQLite cannot change a CHECK or a UNIQUE constraint in place, so `jobs` and `ledger` are
/// rebuilt by the documented procedure (new table, copy, drop, rename; foreign keys are off
/// around the migration and checked before it commits). Every credit of version 2 was settled
/// at once, so each becomes a credit and its settle entry; completed jobs read `off`.
const MIGRATION_3_VERIFIED: &str = r#"
CREATE TABLE jobs_v3 (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL UNIQUE,
    client_key_id    INTEGER NOT NULL REFERENCES api_keys(id),
    workload         TEXT NOT NULL,
    params           TEXT NOT NULL,
    ram_mb           INTEGER NOT NULL,
    vram_mb          INTEGER NOT NULL,
    cpu_time_s       INTEGER NOT NULL,
    max_runtime_s    INTEGER NOT NULL,
    reward           INTEGER NOT NULL CHECK (reward >= 0),
    state            TEXT NOT NULL
        CHECK (state IN ('queued', 'assigned', 'verifying', 'completed', 'failed')),
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    miner_id         TEXT,
    miner_key_id     INTEGER,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    proof            TEXT,
    failure          TEXT,
    energy_mj        INTEGER CHECK (energy_mj IS NULL OR energy_mj >= 0),
    energy_source    TEXT
        CHECK (energy_source IS NULL OR energy_source IN ('nvml', 'rapl', 'unavailable')),
    tflops           REAL CHECK (tflops IS NULL OR tflops >= 0),
    verification     TEXT CHECK (verification IS NULL OR verification IN
        ('holding', 'challenged', 'passed', 'unaudited', 'failed', 'off')),
    verify_attempt   INTEGER,
    audit_rows       TEXT,
    answer_by        INTEGER,
    settles_at       INTEGER,
    verify_message   TEXT
);
INSERT INTO jobs_v3 (seq, id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s,
    max_runtime_s, reward, state, attempt, max_attempts, miner_id, miner_key_id,
    lease_expires_at, created_at, updated_at, proof, failure, energy_mj, energy_source, tflops,
    verification, verify_attempt)
SELECT seq, id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s, max_runtime_s,
    reward, state, attempt, max_attempts, miner_id, miner_key_id, lease_expires_at, created_at,
    updated_at, proof, failure, energy_mj, energy_source, tflops,
    CASE WHEN state = 'completed' THEN 'off' END,
    CASE WHEN state = 'completed' THEN attempt END
FROM jobs;
CREATE TABLE ledger_v3 (
    id          INTEGER PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs(id),
    attempt     INTEGER NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('credit', 'settle', 'forfeit')),
    wallet      TEXT NOT NULL,
    miner_id    TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount >= 0),
    created_at  INTEGER NOT NULL,
    UNIQUE (job_id, attempt, kind)
);
INSERT INTO ledger_v3 (job_id, attempt, kind, wallet, miner_id, amount, created_at)
    SELECT job_id, attempt, k.kind, wallet, miner_id, amount, created_at
    FROM ledger, (SELECT 'credit' AS kind UNION ALL SELECT 'settle') AS k
    ORDER BY ledger.id, k.kind = 'settle';
DROP TABLE ledger;
DROP TABLE jobs;
ALTER TABLE jobs_v3 RENAME TO jobs;
ALTER TABLE ledger_v3 RENAME TO ledger;
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_at);
CREATE INDEX jobs_by_verification ON jobs (verification, answer_by, settles_at);
CREATE INDEX jobs_by_prover ON jobs (miner_key_id, state);
CREATE INDEX ledger_by_wallet ON ledger (wallet, id);
-- A job pays out at most once, and an attempt's credit ends at most one way.
CREATE UNIQUE INDEX ledger_one_settle ON ledger (job_id) WHERE kind = 'settle';
CREATE UNIQUE INDEX ledger_one_ending ON ledger (job_id, attempt) WHERE kind <> 'credit';
ALTER TABLE wallets ADD COLUMN pending INTEGER NOT NULL DEFAULT 0 CHECK (pending >= 0);
ALTER TABLE wallets ADD COLUMN forfeited INTEGER NOT NULL DEFAULT 0 CHECK (forfeited >= 0);
CREATE TABLE trust (
    key_id    INTEGER NOT NULL REFERENCES api_keys(id),
    workload  TEXT NOT NULL,
    streak    INTEGER NOT NULL CHECK (streak >= 0),
    PRIMARY KEY (key_id, workload)
);
CREATE TABLE standing (
    key_id        INTEGER PRIMARY KEY REFERENCES api_keys(id),
    strikes       INTEGER NOT NULL CHECK (strikes >= 0),
    suspended_at  INTEGER
);
CREATE TABLE settings (
    name   TEXT PRIMARY KEY,
    value  BLOB NOT NULL
);
-- A job whose proof by a key failed verification is never given to that key again.
CREATE TABLE exclusions (
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    key_id  INTEGER NOT NULL REFERENCES api_keys(id),
    PRIMARY KEY (job_id, key_id)
);
"#;

/// How long a POST's answer stays replayable under its Idempotency-Key: 24 hours.
pub const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Columns of `jobs` in the order [`JobRow::from_row`] reads them.
const JOB_COLUMNS: &str = "id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s, \
    max_runtime_s, reward, state, attempt, max_attempts, miner_id, miner_key_id, \
    lease_expires_at, created_at, updated_at, proof, failure, verification, verify_attempt, \
    audit_rows, answer_by, settles_at, verify_message";

pub struct SqliteStore {
    conn: Mutex<Connection>,
    any_queued: AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, Error> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, path)?;
        let any: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued')",
            [],
            |r| r.get(0),
        )?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            any_queued: AtomicBool::new(any),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic inside a transaction rolled it back when the Transaction dropped, so the
        // connection is still consistent.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one immediate transaction with the idempotency record of `idem`.
    fn write<F>(&self, idem: Option<&IdemKey>, now_ms: i64, f: F) -> Result<Outcome, Error>
    where
        F: FnOnce(&Transaction<'_>) -> Result<Outcome, Error>,
    {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if let Some(i) = idem {
            let stored: Option<(String, i64, Vec<u8>)> = tx
                .query_row(
                    "SELECT request_hash, status, body FROM idempotency \
                     WHERE key_id = ?1 AND idem_key = ?2",
                    params![i.key_id, i.key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((hash, status, body)) = stored {
                let answer = if hash == i.request_hash {
                    Answer {
                        status: u16::try_from(status)
                            .map_err(|_| Error::Corrupt(format!("stored status {status}")))?,
                        body,
                        retry_after: None,
                    }
                } else {
                    Refusal::new(
                        ErrorCode::IdempotencyKeyReused,
                        "this Idempotency-Key was already used with a different request".into(),
                    )
                    .answer()
                };
                return Ok(Outcome {
                    answer,
                    requeued: false,
                });
            }
        }
        let outcome = f(&tx)?;
        if let Some(i) = idem {
            tx.execute(
                "INSERT INTO idempotency (key_id, idem_key, request_hash, status, body, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    i.key_id,
                    i.key,
                    i.request_hash,
                    i64::from(outcome.answer.status),
                    outcome.answer.body,
                    now_ms
                ],
            )?;
        }
        let any = queued_exists(&tx)?;
        tx.commit()?;
        self.any_queued.store(any, Ordering::SeqCst);
        Ok(outcome)
    }
}

fn queued_exists(tx: &Connection) -> Result<bool, Error> {
    Ok(tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE state = 'queued')",
        [],
        |r| r.get(0),
    )?)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), Error> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let supported = MIGRATIONS.len() as i64;
    if version > supported {
        return Err(Error::SchemaTooNew {
            path: path.display().to_string(),
            found: version,
            supported,
        });
    }
    // Rebuilding a referenced table (migration 3) needs foreign keys off, which only takes
    // effect outside a transaction; each migration checks them before it commits.
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        let broken: Option<String> = tx
            .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
            .optional()?;
        if let Some(table) = broken {
            return Err(Error::Corrupt(format!(
                "migration {} leaves a broken foreign key in table {table}",
                i + 1
            )));
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

pub(crate) fn from_ms(ms: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| Error::Corrupt(format!("timestamp {ms}: {e}")))
}

/// u64 to a stored integer; values above i64::MAX are refused before they get here.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64, what: &str) -> Result<u64, Error> {
    u64::try_from(v).map_err(|_| Error::Corrupt(format!("{what} = {v} is negative")))
}

fn to_u32(v: i64, what: &str) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| Error::Corrupt(format!("{what} = {v} out of range")))
}

/// One row of `jobs`.
struct JobRow {
    id: String,
    client_key_id: i64,
    workload: String,
    params: String,
    limits: [i64; 4],
    reward: i64,
    state: String,
    attempt: i64,
    max_attempts: i64,
    miner_id: Option<String>,
    miner_key_id: Option<i64>,
    lease_expires_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    proof: Option<String>,
    failure: Option<String>,
    verification: Option<String>,
    verify_attempt: Option<i64>,
    audit_rows: Option<String>,
    answer_by: Option<i64>,
    settles_at: Option<i64>,
    verify_message: Option<String>,
}

impl JobRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<JobRow> {
        Ok(JobRow {
            id: r.get(0)?,
            client_key_id: r.get(1)?,
            workload: r.get(2)?,
            params: r.get(3)?,
            limits: [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
            reward: r.get(8)?,
            state: r.get(9)?,
            attempt: r.get(10)?,
            max_attempts: r.get(11)?,
            miner_id: r.get(12)?,
            miner_key_id: r.get(13)?,
            lease_expires_at: r.get(14)?,
            created_at: r.get(15)?,
            updated_at: r.get(16)?,
            proof: r.get(17)?,
            failure: r.get(18)?,
            verification: r.get(19)?,
            verify_attempt: r.get(20)?,
            audit_rows: r.get(21)?,
            answer_by: r.get(22)?,
            settles_at: r.get(23)?,
            verify_message: r.get(24)?,
        })
    }

    fn status(&self) -> Result<Option<VerificationStatus>, Error> {
        self.verification
            .as_deref()
            .map(|v| {
                VerificationStatus::parse(v)
                    .ok_or_else(|| Error::Corrupt(format!("job {} verification {v:?}", self.id)))
            })
            .transpose()
    }

    fn audit_rows(&self) -> Result<Vec<u64>, Error> {
        Ok(self
            .audit_rows
            .as_deref()
            .map(serde_json::from_str)
            .transpose()?
            .unwrap_or_default())
    }

    fn verification(&self) -> Result<Option<Verification>, Error> {
        let Some(status) = self.status()? else {
            return Ok(None);
        };
        Ok(Some(Verification {
            status,
            attempt: to_u32(
                self.verify_attempt.unwrap_or(self.attempt),
                "verify_attempt",
            )?,
            audit_rows: self.audit_rows()?,
            answer_by: self.answer_by.map(from_ms).transpose()?,
            settles_at: self.settles_at.map(from_ms).transpose()?,
            message: self.verify_message.clone().unwrap_or_default(),
        }))
    }

    /// The open challenge, when the job has one.
    fn challenge(&self) -> Result<Option<AuditChallenge>, Error> {
        if self.status()? != Some(VerificationStatus::Challenged) {
            return Ok(None);
        }
        let by = self
            .answer_by
            .ok_or_else(|| Error::Corrupt(format!("challenged job {} has no deadline", self.id)))?;
        Ok(Some(AuditChallenge {
            id: self.id.clone(),
            attempt: to_u32(
                self.verify_attempt.unwrap_or(self.attempt),
                "verify_attempt",
            )?,
            rows: self.audit_rows()?,
            answer_by: from_ms(by)?,
        }))
    }

    fn state(&self) -> Result<JobState, Error> {
        JobState::parse(&self.state)
            .ok_or_else(|| Error::Corrupt(format!("job {} state {:?}", self.id, self.state)))
    }

    fn snapshot(&self) -> Result<Snapshot, Error> {
        Ok(Snapshot {
            state: self.state()?,
            attempt: to_u32(self.attempt, "attempt")?,
            max_attempts: to_u32(self.max_attempts, "max_attempts")?,
        })
    }

    fn limits(&self) -> Result<JobLimits, Error> {
        let [ram, vram, cpu, rt] = self.limits;
        Ok(JobLimits {
            ram_mb: to_u64(ram, "ram_mb")?,
            vram_mb: to_u64(vram, "vram_mb")?,
            cpu_time_s: to_u64(cpu, "cpu_time_s")?,
            max_runtime_s: to_u64(rt, "max_runtime_s")?,
        })
    }

    fn view(&self) -> Result<JobView, Error> {
        Ok(JobView {
            id: self.id.clone(),
            state: self.state()?,
            workload: self.workload.clone(),
            params: serde_json::from_str(&self.params)?,
            limits: self.limits()?,
            reward: to_u64(self.reward, "reward")?,
            attempt: to_u32(self.attempt, "attempt")?,
            max_attempts: to_u32(self.max_attempts, "max_attempts")?,
            created_at: from_ms(self.created_at)?,
            updated_at: from_ms(self.updated_at)?,
            miner_id: self.miner_id.clone(),
            lease_expires_at: self.lease_expires_at.map(from_ms).transpose()?,
            proof: self
                .proof
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            failure: self
                .failure
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            verification: self.verification()?,
            result: None,
        })
    }

    fn job(&self) -> Result<Job, Error> {
        let lease = self
            .lease_expires_at
            .ok_or_else(|| Error::Corrupt(format!("assigned job {} has no lease", self.id)))?;
        Ok(Job {
            id: self.id.clone(),
            workload: self.workload.clone(),
            params: serde_json::from_str(&self.params)?,
            limits: self.limits()?,
            reward: to_u64(self.reward, "reward")?,
            attempt: to_u32(self.attempt, "attempt")?,
            lease_expires_at: from_ms(lease)?,
            created_at: from_ms(self.created_at)?,
        })
    }
}

fn load_job(tx: &Connection, id: &str) -> Result<Option<JobRow>, Error> {
    Ok(tx
        .query_row(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
            [id],
            JobRow::from_row,
        )
        .optional()?)
}

/// Applies a failed attempt decided by the lifecycle: a miner's report, an expired lease, or a
/// rejected proof (whose pending credit is forfeited, as a ledger entry, in the same
/// transaction).
fn apply_failure(
    tx: &Connection,
    job: &JobRow,
    event: Event,
    message: &str,
    now_ms: i64,
) -> Result<Transition, Error> {
    let t = lifecycle::step(job.snapshot()?, event)?;
    debug_assert_eq!(t.effects.lease, Lease::Clear);
    let reason = t.effects.failure.unwrap_or(FailReason::Internal);
    let original = message;
    let message = match (reason, event) {
        (FailReason::AttemptsExhausted, Event::Fail(r) | Event::Reject(r)) => {
            format!(
                "attempt {} failed ({}): {message}; no attempts left",
                t.attempt,
                r.as_str()
            )
        }
        (FailReason::AttemptsExhausted, _) => {
            format!("attempt {}: {message}; no attempts left", t.attempt)
        }
        _ => message.to_string(),
    };
    if t.effects.forfeit {
        end_credit(tx, &job.id, t.attempt, EntryKind::Forfeit, now_ms)?;
    }
    let failure = Failure {
        reason,
        message,
        attempt: t.attempt,
    };
    let rejected = matches!(event, Event::Reject(_));
    tx.execute(
        "UPDATE jobs SET state = ?2, miner_id = NULL, miner_key_id = NULL, \
         lease_expires_at = NULL, failure = ?3, updated_at = ?4, \
         verification = CASE WHEN ?5 THEN 'failed' ELSE verification END, \
         verify_message = CASE WHEN ?5 THEN ?6 ELSE verify_message END, \
         proof = CASE WHEN ?5 THEN NULL ELSE proof END, \
         answer_by = CASE WHEN ?5 THEN NULL ELSE answer_by END, \
         settles_at = CASE WHEN ?5 THEN NULL ELSE settles_at END WHERE id = ?1",
        params![
            job.id,
            t.state.as_str(),
            serde_json::to_string(&failure)?,
            now_ms,
            rejected,
            original
        ],
    )?;
    Ok(t)
}

/// The pending credit of (job, attempt): wallet, miner id and amount.
fn credit_of(
    tx: &Connection,
    job_id: &str,
    attempt: u32,
) -> Result<Option<(String, String, i64)>, Error> {
    Ok(tx
        .query_row(
            "SELECT wallet, miner_id, amount FROM ledger \
             WHERE job_id = ?1 AND attempt = ?2 AND kind = 'credit'",
            params![job_id, i64::from(attempt)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?)
}

/// How (job, attempt)'s credit ended, if it did.
fn ending_of(tx: &Connection, job_id: &str, attempt: u32) -> Result<Option<EntryKind>, Error> {
    let kind: Option<String> = tx
        .query_row(
            "SELECT kind FROM ledger WHERE job_id = ?1 AND attempt = ?2 AND kind <> 'credit'",
            params![job_id, i64::from(attempt)],
            |r| r.get(0),
        )
        .optional()?;
    kind.map(|k| EntryKind::parse(&k).ok_or_else(|| Error::Corrupt(format!("ledger kind {k:?}"))))
        .transpose()
}

/// Ends the pending credit of (job, attempt) with one `settle` or `forfeit` entry and moves
/// its amount out of the wallet's pending sum (into the balance, or the forfeited sum).
fn end_credit(
    tx: &Connection,
    job_id: &str,
    attempt: u32,
    kind: EntryKind,
    now_ms: i64,
) -> Result<(), Error> {
    let (wallet, miner_id, amount) = credit_of(tx, job_id, attempt)?.ok_or_else(|| {
        Error::Corrupt(format!(
            "job {job_id} attempt {attempt} has no pending credit"
        ))
    })?;
    tx.execute(
        "INSERT INTO ledger (job_id, attempt, kind, wallet, miner_id, amount, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            job_id,
            i64::from(attempt),
            kind.as_str(),
            wallet,
            miner_id,
            amount,
            now_ms
        ],
    )?;
    let (balance, credits, pending, forfeited): (i64, i64, i64, i64) = tx.query_row(
        "SELECT balance, credits, pending, forfeited FROM wallets WHERE wallet = ?1",
        [&wallet],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    let overflow = || Error::Corrupt(format!("wallet {wallet:?} sums overflow"));
    let pending = pending.checked_sub(amount).ok_or_else(overflow)?;
    let (balance, credits, forfeited) = match kind {
        EntryKind::Settle => (
            balance.checked_add(amount).ok_or_else(overflow)?,
            credits.checked_add(1).ok_or_else(overflow)?,
            forfeited,
        ),
        EntryKind::Forfeit => (balance, credits, forfeited.saturating_add(amount)),
        EntryKind::Credit => return Err(Error::Corrupt("a credit cannot end a credit".into())),
    };
    tx.execute(
        "UPDATE wallets SET balance = ?2, credits = ?3, pending = ?4, forfeited = ?5 \
         WHERE wallet = ?1",
        params![wallet, balance, credits, pending, forfeited],
    )?;
    Ok(())
}

/// Settles a verifying job: its credit joins the balance and the job is completed.
fn settle(
    tx: &Connection,
    job: &JobRow,
    status: VerificationStatus,
    now_ms: i64,
) -> Result<Transition, Error> {
    let t = lifecycle::step(job.snapshot()?, Event::Settle)?;
    end_credit(tx, &job.id, t.attempt, EntryKind::Settle, now_ms)?;
    tx.execute(
        "UPDATE jobs SET state = ?2, verification = ?3, answer_by = NULL, settles_at = NULL, \
         updated_at = ?4 WHERE id = ?1",
        params![job.id, t.state.as_str(), status.as_str(), now_ms],
    )?;
    Ok(t)
}

/// A proof that did not hold (`reason`: AUDIT_FAILED or AUDIT_TIMEOUT): the job is requeued and
/// its credit forfeited; every other credit its key still has pending in its window is forfeited
/// and its job requeued too (they are no better attested; a held credit whose window already
/// ended settles instead); the key's streak on the workload restarts, it
/// takes a strike, and at `policy.config.strikes` strikes it is suspended from `next`. Returns
/// how many jobs went back to the queue.
fn catch(
    tx: &Connection,
    job: &JobRow,
    reason: FailReason,
    why: &str,
    policy: &Policy,
    now_ms: i64,
) -> Result<usize, Error> {
    let key_id = job
        .miner_key_id
        .ok_or_else(|| Error::Corrupt(format!("verifying job {} has no prover", job.id)))?;
    let mut requeued = usize::from(
        apply_failure(tx, job, Event::Reject(reason), why, now_ms)?
            .effects
            .wake,
    );
    let mut stmt = tx.prepare(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE miner_key_id = ?1 AND state = 'verifying'"
    ))?;
    let others = stmt
        .query_map([key_id], JobRow::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    drop(stmt);
    let exclude = |id: &str| {
        tx.execute(
            "INSERT OR IGNORE INTO exclusions (job_id, key_id) VALUES (?1, ?2)",
            params![id, key_id],
        )
    };
    exclude(&job.id)?;
    let mut forfeited = 0;
    for other in &others {
        // A held credit whose window has ended was earned under the policy: it settles (the
        // sweeper would have, had it run first), and is not part of the stake.
        let window_over = other.settles_at.is_some_and(|at| at < now_ms);
        if other.status()? == Some(VerificationStatus::Holding) && window_over {
            settle(tx, other, VerificationStatus::Unaudited, now_ms)?;
            continue;
        }
        exclude(&other.id)?;
        let msg = format!(
            "credit forfeited: the same miner key's proof of job {} failed its audit",
            job.id
        );
        let t = apply_failure(
            tx,
            other,
            Event::Reject(FailReason::AuditFailed),
            &msg,
            now_ms,
        )?;
        requeued += usize::from(t.effects.wake);
        forfeited += 1;
    }
    tx.execute(
        "INSERT INTO trust (key_id, workload, streak) VALUES (?1, ?2, 0) \
         ON CONFLICT (key_id, workload) DO UPDATE SET streak = 0",
        params![key_id, job.workload],
    )?;
    tx.execute(
        "INSERT INTO standing (key_id, strikes) VALUES (?1, 1) \
         ON CONFLICT (key_id) DO UPDATE SET strikes = strikes + 1",
        [key_id],
    )?;
    tx.execute(
        "UPDATE standing SET suspended_at = ?3 \
         WHERE key_id = ?1 AND strikes >= ?2 AND suspended_at IS NULL",
        params![key_id, i64::from(policy.config.strikes.max(1)), now_ms],
    )?;
    tracing::warn!(
        job = %job.id,
        key_id,
        reason = reason.as_str(),
        forfeited_others = forfeited,
        "a proof failed verification: credits forfeited, jobs requeued"
    );
    Ok(requeued)
}

/// Milliseconds of a duration, saturating.
fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A proof whose credit would take `wallet` past i64::MAX (2^63 - 1 base units; rewards are
/// bounded by `MAX_REWARD`, so only a wallet of millions of credits gets here): nothing is
/// credited, the attempt is given back as an `INTERNAL` failure (requeued while attempts
/// remain, so the job is never left assigned) and the proof is refused with 409 WALLET_FULL.
fn wallet_full(
    tx: &Connection,
    job: &JobRow,
    wallet: &str,
    balance: i64,
    now_ms: i64,
) -> Result<Outcome, Error> {
    let why = format!(
        "crediting {} to wallet {wallet:?} would take its balance of {balance} past \
         9223372036854775807",
        job.reward
    );
    let t = apply_failure(
        tx,
        job,
        Event::Fail(FailReason::Internal),
        &format!("the proof was refused: {why}"),
        now_ms,
    )?;
    let mut r = Refusal::new(
        ErrorCode::WalletFull,
        format!(
            "{why}; the proof is refused and the attempt given back (the job is now {})",
            t.state.as_str()
        ),
    );
    r.details = serde_json::json!({ "field": "wallet" });
    Ok(Outcome {
        answer: r.answer(),
        requeued: t.effects.wake,
    })
}

/// What an audit of `p` opens: its root and its number of rows; or why the proof cannot be
/// paid while verification is on (a workload with no verifier, a torch_bench proof without
/// its commitment or of the wrong length).
fn auditable(job: &JobRow, p: &Proof, root: Option<Digest>) -> Result<(Digest, u64), Refusal> {
    if Workload::parse(&job.workload) != Some(Workload::TorchBench) {
        return Err(Refusal::new(
            ErrorCode::ValidationFailed,
            format!(
                "workload {:?} has no verifier, and this coordinator pays only for verified \
                 work (its operator may start it with --verify off)",
                job.workload
            ),
        ));
    }
    let params: serde_json::Value = serde_json::from_str(&job.params)
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("stored params: {e}")))?;
    let tb = TorchBenchParams::parse(&params)
        .map_err(|e| Refusal::new(ErrorCode::Internal, format!("stored params: {e}")))?;
    let Some(root) = root else {
        let mut r = Refusal::new(
            ErrorCode::ValidationFailed,
            "merkle_root is missing: a torch_bench proof must carry the Merkle root over its \
             output rows, which audits open rows against"
                .to_string(),
        );
        r.details = serde_json::json!({ "field": "merkle_root" });
        return Err(r);
    };
    if let Some(len) = p.output_len.filter(|&l| l != tb.output_len()) {
        return Err(Refusal::invalid(
            "output_len",
            &len.to_string(),
            &format!("this job's output is {} bytes", tb.output_len()),
        ));
    }
    Ok((root, u64::from(tb.n)))
}

/// The shared start of proof and fail: load, check the claim, requeue an expired lease.
enum Checked {
    Go(Box<JobRow>),
    Refused(Outcome),
}

fn check_claim(tx: &Connection, id: &str, claim: Claim<'_>, now_ms: i64) -> Result<Checked, Error> {
    let Some(job) = load_job(tx, id)? else {
        return Ok(Checked::Refused(Outcome {
            answer: Refusal::new(ErrorCode::NotFound, format!("no job {id:?}")).answer(),
            requeued: false,
        }));
    };
    let assignment = Assignment {
        state: job.state()?,
        attempt: to_u32(job.attempt, "attempt")?,
        key_id: job.miner_key_id,
        miner_id: job.miner_id.as_deref(),
        lease_expires_ms: job.lease_expires_at,
    };
    match lifecycle::check_report(assignment, claim, now_ms) {
        Err(r) => Ok(Checked::Refused(Outcome::refused(r))),
        Ok(Verdict::Accept) => Ok(Checked::Go(Box::new(job))),
        Ok(Verdict::Expired) => {
            let deadline = job.lease_expires_at.map(from_ms).transpose()?;
            let when = deadline
                .and_then(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            let t = apply_failure(
                tx,
                &job,
                Event::LeaseExpired,
                &format!("lease expired at {when} without a proof"),
                now_ms,
            )?;
            Ok(Checked::Refused(Outcome {
                answer: Refusal::new(
                    ErrorCode::NotAssigned,
                    format!("the lease expired at {when}; the job was taken back"),
                )
                .answer(),
                requeued: t.effects.wake,
            }))
        }
    }
}

impl Store for SqliteStore {
    fn add_key(&self, hash: &str, scope: Scope, name: &str, now_ms: i64) -> Result<i64, Error> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO api_keys (hash, scope, name, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, scope.as_str(), name, now_ms],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn find_key(&self, hash: &str) -> Result<Option<KeyInfo>, Error> {
        let conn = self.lock();
        let row: Option<(i64, String)> = conn
            .query_row(
                "SELECT id, scope FROM api_keys WHERE hash = ?1",
                [hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(id, scope)| {
            let scope = scope
                .parse::<Scope>()
                .map_err(|_| Error::Corrupt(format!("key {id} has scope {scope:?}")))?;
            Ok(KeyInfo { id, scope })
        })
        .transpose()
    }

    fn load_miners(&self) -> Result<Vec<MinerRecord>, Error> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT miner_id, key_id, wallet, capabilities, last_seen FROM miners")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (miner_id, key_id, wallet, caps, last_seen_ms) = row?;
            let caps: MinerCapabilities = serde_json::from_str(&caps)?;
            out.push(MinerRecord {
                miner_id,
                key_id,
                wallet,
                caps,
                last_seen_ms,
            });
        }
        Ok(out)
    }

    fn heartbeat(
        &self,
        m: &MinerRecord,
        write: bool,
        idem: Option<&IdemKey>,
    ) -> Result<Outcome, Error> {
        self.write(idem, m.last_seen_ms, |tx| {
            if write {
                let owner: Option<i64> = tx
                    .query_row(
                        "SELECT key_id FROM miners WHERE miner_id = ?1",
                        [&m.miner_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                if owner.is_some_and(|k| k != m.key_id) {
                    return Ok(Outcome {
                        answer: Refusal::miner_id_taken(&m.miner_id).answer(),
                        requeued: false,
                    });
                }
                tx.execute(
                    "INSERT INTO miners (miner_id, key_id, wallet, capabilities, last_seen, \
                     gpu_count, gpu_healthy) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (miner_id) DO UPDATE SET \
                     wallet = excluded.wallet, capabilities = excluded.capabilities, \
                     last_seen = excluded.last_seen, gpu_count = excluded.gpu_count, \
                     gpu_healthy = excluded.gpu_healthy",
                    params![
                        m.miner_id,
                        m.key_id,
                        m.wallet,
                        serde_json::to_string(&m.caps)?,
                        m.last_seen_ms,
                        m.caps.gpus.len() as i64,
                        m.caps.gpu_health.as_ref().map(|h| h.healthy)
                    ],
                )?;
            }
            let ack = HeartbeatAck {
                miner_id: m.miner_id.clone(),
                wallet: m.wallet.clone(),
                server_time: from_ms(m.last_seen_ms)?,
            };
            Ok(Outcome {
                answer: Answer::json(200, &ack)?,
                requeued: false,
            })
        })
    }

    fn submit(&self, job: &NewJob, idem: Option<&IdemKey>, now_ms: i64) -> Result<Outcome, Error> {
        self.write(idem, now_ms, |tx| {
            let s = &job.submit;
            tx.execute(
                "INSERT INTO jobs (id, client_key_id, workload, params, ram_mb, vram_mb, \
                 cpu_time_s, max_runtime_s, reward, state, attempt, max_attempts, created_at, \
                 updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', 0, ?10, ?11, ?11)",
                params![
                    job.id,
                    job.client_key_id,
                    s.workload,
                    serde_json::to_string(&s.params)?,
                    to_i64(s.limits.ram_mb),
                    to_i64(s.limits.vram_mb),
                    to_i64(s.limits.cpu_time_s),
                    to_i64(s.limits.max_runtime_s),
                    to_i64(s.reward),
                    i64::from(job.max_attempts),
                    now_ms
                ],
            )?;
            let row = load_job(tx, &job.id)?
                .ok_or_else(|| Error::Corrupt(format!("job {} vanished", job.id)))?;
            Ok(Outcome {
                answer: Answer::json(201, &row.view()?)?,
                requeued: true,
            })
        })
    }

    fn assign(&self, m: &Matcher, now_ms: i64, lease_margin_ms: i64) -> Result<Option<Job>, Error> {
        let mut assigned = None;
        self.write(None, now_ms, |tx| {
            let workloads = serde_json::to_string(&m.workloads)?;
            let row = tx
                .query_row(
                    &format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'queued' \
                         AND ram_mb <= ?1 AND vram_mb <= ?2 AND max_runtime_s <= ?3 \
                         AND cpu_time_s <= ?4 \
                         AND (?5 OR workload IN (SELECT value FROM json_each(?6))) \
                         AND NOT EXISTS (SELECT 1 FROM exclusions x \
                             WHERE x.job_id = jobs.id AND x.key_id = ?7) \
                         ORDER BY seq LIMIT 1"
                    ),
                    params![
                        to_i64(m.max_ram_mb),
                        to_i64(m.max_vram_mb),
                        to_i64(m.max_runtime_s),
                        to_i64(m.max_cpu_time_s),
                        m.workloads.is_empty(),
                        workloads,
                        m.key_id
                    ],
                    JobRow::from_row,
                )
                .optional()?;
            let Some(mut job) = row else {
                return Ok(Outcome {
                    answer: Answer {
                        status: 204,
                        body: Vec::new(),
                        retry_after: None,
                    },
                    requeued: false,
                });
            };
            let t = lifecycle::step(job.snapshot()?, Event::Assign)?;
            let runtime_ms = job.limits[3].checked_mul(1000);
            let deadline = runtime_ms
                .and_then(|r| now_ms.checked_add(r))
                .and_then(|d| d.checked_add(lease_margin_ms))
                .ok_or_else(|| Error::Corrupt(format!("job {} lease overflows", job.id)))?;
            tx.execute(
                "UPDATE jobs SET state = ?2, attempt = ?3, miner_id = ?4, miner_key_id = ?5, \
                 lease_expires_at = ?6, updated_at = ?7 WHERE id = ?1",
                params![
                    job.id,
                    t.state.as_str(),
                    i64::from(t.attempt),
                    m.miner_id,
                    m.key_id,
                    deadline,
                    now_ms
                ],
            )?;
            job.state = t.state.as_str().to_string();
            job.attempt = i64::from(t.attempt);
            job.lease_expires_at = Some(deadline);
            assigned = Some(job.job()?);
            Ok(Outcome {
                answer: Answer {
                    status: 200,
                    body: Vec::new(),
                    retry_after: None,
                },
                requeued: false,
            })
        })?;
        Ok(assigned)
    }

    fn proof(
        &self,
        key_id: i64,
        p: &Proof,
        policy: &Policy,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error> {
        self.write(idem, now_ms, |tx| {
            let refuse = |r: Refusal| Ok(Outcome::refused(r));
            if !is_sha256_hex(&p.output_sha) {
                return refuse(Refusal::invalid(
                    "output_sha",
                    &p.output_sha,
                    "expected 64 lower-case hex digits (SHA-256)",
                ));
            }
            let root = match p.merkle_root.as_deref() {
                Some(r) => match aitbc_protocol::hex::digest(r).filter(|_| is_sha256_hex(r)) {
                    Some(d) => Some(d),
                    None => {
                        return refuse(Refusal::invalid(
                            "merkle_root",
                            r,
                            "expected 64 lower-case hex digits (a SHA-256 Merkle root)",
                        ))
                    }
                },
                None => None,
            };
            let claim = Claim {
                key_id,
                miner_id: p.miner_id.as_deref(),
                attempt: p.attempt,
            };
            let job = match check_claim(tx, &p.id, claim, now_ms)? {
                Checked::Go(job) => job,
                Checked::Refused(o) => return Ok(o),
            };
            // What an audit of this proof would open: only an auditable workload's proof,
            // with its commitment, can be paid while verification is on.
            let audit = if policy.config.enabled {
                match auditable(&job, p, root) {
                    Ok(a) => Some(a),
                    Err(r) => return refuse(r),
                }
            } else {
                None
            };
            let t = lifecycle::step(job.snapshot()?, Event::Proof)?;
            debug_assert!(t.effects.credit);
            let miner_id = job
                .miner_id
                .clone()
                .ok_or_else(|| Error::Corrupt(format!("assigned job {} has no miner", job.id)))?;
            let wallet: String = tx.query_row(
                "SELECT wallet FROM miners WHERE miner_id = ?1",
                [&miner_id],
                |r| r.get(0),
            )?;
            let (balance, pending): (i64, i64) = tx
                .query_row(
                    "SELECT balance, pending FROM wallets WHERE wallet = ?1",
                    [&wallet],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((0, 0));
            // The credit must fit when it settles, whatever else settles first.
            if balance
                .checked_add(pending)
                .and_then(|x| x.checked_add(job.reward))
                .is_none()
            {
                return wallet_full(tx, &job, &wallet, balance, now_ms);
            }
            let streak: i64 = tx
                .query_row(
                    "SELECT streak FROM trust WHERE key_id = ?1 AND workload = ?2",
                    params![key_id, job.workload],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let decision = match audit {
                Some((root, rows)) => policy.decide(
                    &job.id,
                    t.attempt,
                    &root,
                    rows,
                    u32::try_from(streak).unwrap_or(u32::MAX),
                ),
                None => Decision::SettleNow,
            };
            let (status, rows, answer_by, settles_at) = match &decision {
                Decision::SettleNow => (VerificationStatus::Off, None, None, None),
                Decision::Hold => (
                    VerificationStatus::Holding,
                    None,
                    None,
                    Some(now_ms.saturating_add(ms(policy.config.hold))),
                ),
                Decision::Audit(rows) => (
                    VerificationStatus::Challenged,
                    Some(serde_json::to_string(rows)?),
                    Some(now_ms.saturating_add(ms(policy.config.answer_within))),
                    None,
                ),
            };
            let mut stored = p.clone();
            stored.attempt = Some(t.attempt);
            stored.miner_id = Some(miner_id.clone());
            let m = &stored.metrics;
            tx.execute(
                "UPDATE jobs SET state = ?2, lease_expires_at = NULL, proof = ?3, updated_at = ?4, \
                 energy_mj = ?5, energy_source = ?6, tflops = ?7, verification = ?8, \
                 verify_attempt = ?9, audit_rows = ?10, answer_by = ?11, settles_at = ?12, \
                 verify_message = NULL WHERE id = ?1",
                params![
                    job.id,
                    t.state.as_str(),
                    serde_json::to_string(&stored)?,
                    now_ms,
                    m.energy_mj.map(to_i64),
                    m.energy_source.map(EnergySource::as_str),
                    m.tflops,
                    status.as_str(),
                    i64::from(t.attempt),
                    rows,
                    answer_by,
                    settles_at
                ],
            )?;
            tx.execute(
                "INSERT INTO ledger (job_id, attempt, kind, wallet, miner_id, amount, created_at) \
                 VALUES (?1, ?2, 'credit', ?3, ?4, ?5, ?6)",
                params![
                    job.id,
                    i64::from(t.attempt),
                    wallet,
                    miner_id,
                    job.reward,
                    now_ms
                ],
            )?;
            tx.execute(
                "INSERT INTO wallets (wallet, balance, credits, pending) VALUES (?1, 0, 0, ?2) \
                 ON CONFLICT (wallet) DO UPDATE SET pending = pending + excluded.pending",
                params![wallet, job.reward],
            )?;
            let mut state = t.state;
            if decision == Decision::SettleNow {
                let row = load_job(tx, &job.id)?
                    .ok_or_else(|| Error::Corrupt(format!("job {} vanished", job.id)))?;
                state = settle(tx, &row, VerificationStatus::Off, now_ms)?.state;
            }
            let row = load_job(tx, &job.id)?
                .ok_or_else(|| Error::Corrupt(format!("job {} vanished", job.id)))?;
            let ack = ProofAck {
                id: job.id.clone(),
                state,
                attempt: t.attempt,
                wallet,
                credited: to_u64(job.reward, "reward")?,
                audit: row.challenge()?,
                settles_at: settles_at.map(from_ms).transpose()?,
            };
            Ok(Outcome {
                answer: Answer::json(200, &ack)?,
                requeued: false,
            })
        })
    }

    fn fail(
        &self,
        key_id: i64,
        f: &FailReport,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error> {
        self.write(idem, now_ms, |tx| {
            let claim = Claim {
                key_id,
                miner_id: f.miner_id.as_deref(),
                attempt: f.attempt,
            };
            let job = match check_claim(tx, &f.id, claim, now_ms)? {
                Checked::Go(job) => job,
                Checked::Refused(o) => return Ok(o),
            };
            let t = apply_failure(tx, &job, Event::Fail(f.reason), &f.message, now_ms)?;
            let ack = FailAck {
                id: job.id.clone(),
                state: t.state,
                attempt: t.attempt,
            };
            Ok(Outcome {
                answer: Answer::json(200, &ack)?,
                requeued: t.effects.wake,
            })
        })
    }

    fn sweep(&self, now_ms: i64, policy: &Policy) -> Result<usize, Error> {
        let mut requeued = 0;
        self.write(None, now_ms, |tx| {
            let due = |sql: &str| -> Result<Vec<JobRow>, Error> {
                let mut stmt =
                    tx.prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {sql}"))?;
                let rows = stmt
                    .query_map([now_ms], JobRow::from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            };
            for job in &due("state = 'assigned' AND lease_expires_at < ?1")? {
                let t = apply_failure(
                    tx,
                    job,
                    Event::LeaseExpired,
                    "lease expired without a proof",
                    now_ms,
                )?;
                requeued += usize::from(t.effects.wake);
            }
            for job in
                &due("state = 'verifying' AND verification = 'challenged' AND answer_by < ?1")?
            {
                // An earlier catch in this sweep may have requeued it already.
                let Some(fresh) = load_job(tx, &job.id)? else {
                    continue;
                };
                if fresh.status()? != Some(VerificationStatus::Challenged) {
                    continue;
                }
                let why = "the audit was not answered in time";
                requeued += catch(tx, &fresh, FailReason::AuditTimeout, why, policy, now_ms)?;
            }
            for job in &due("state = 'verifying' AND verification = 'holding' AND settles_at < ?1")?
            {
                let Some(fresh) = load_job(tx, &job.id)? else {
                    continue;
                };
                if fresh.status()? == Some(VerificationStatus::Holding) {
                    settle(tx, &fresh, VerificationStatus::Unaudited, now_ms)?;
                }
            }
            // Idempotency records older than the retention window are no longer replayable.
            tx.execute(
                "DELETE FROM idempotency WHERE created_at < ?1",
                [now_ms.saturating_sub(IDEMPOTENCY_RETENTION_MS)],
            )?;
            Ok(Outcome {
                answer: Answer {
                    status: 200,
                    body: Vec::new(),
                    retry_after: None,
                },
                requeued: requeued > 0,
            })
        })?;
        Ok(requeued)
    }

    fn upload_live(&self, sha: &str, key_id: i64) -> Result<bool, Error> {
        let conn = self.lock();
        Ok(conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE miner_key_id = ?1 \
             AND state IN ('verifying', 'completed') \
             AND json_extract(proof, '$.output_sha') = ?2)",
            params![key_id, sha],
            |r| r.get(0),
        )?)
    }

    fn open_audits(&self, key_id: i64, miner_id: &str) -> Result<Vec<AuditChallenge>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE miner_key_id = ?1 AND miner_id = ?2 \
             AND state = 'verifying' AND verification = 'challenged' ORDER BY answer_by, seq"
        ))?;
        let rows = stmt
            .query_map(params![key_id, miner_id], JobRow::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter()
            .filter_map(|r| r.challenge().transpose())
            .collect()
    }

    fn audit_target(&self, id: &str) -> Result<Option<AuditTarget>, Error> {
        let conn = self.lock();
        let Some(job) = load_job(&conn, id)? else {
            return Ok(None);
        };
        let proof: Option<Proof> = job.proof.as_deref().map(serde_json::from_str).transpose()?;
        Ok(Some(AuditTarget {
            state: job.state()?,
            status: job.status()?,
            attempt: to_u32(job.verify_attempt.unwrap_or(job.attempt), "verify_attempt")?,
            prover_key_id: job.miner_key_id,
            prover_miner_id: job.miner_id.clone(),
            workload: job.workload.clone(),
            params: serde_json::from_str(&job.params)?,
            merkle_root: proof.and_then(|p| p.merkle_root),
            rows: job.audit_rows()?,
        }))
    }

    fn audit_verdict(
        &self,
        claim: &AuditClaim<'_>,
        policy: &Policy,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error> {
        self.write(idem, now_ms, |tx| {
            let refuse = |r: Refusal| Ok(Outcome::refused(r));
            let Some(job) = load_job(tx, claim.id)? else {
                return refuse(Refusal::new(
                    ErrorCode::NotFound,
                    format!("no job {:?}", claim.id),
                ));
            };
            let no_audit = || {
                Refusal::new(
                    ErrorCode::NoAudit,
                    format!(
                        "job {:?} has no audit for attempt {}",
                        claim.id, claim.attempt
                    ),
                )
            };
            // Ownership from the ledger: the credit of (job, attempt) names its miner, and the
            // miner its key, whatever the job's state is now.
            let Some((_, prover, _)) = credit_of(tx, &job.id, claim.attempt)? else {
                return refuse(no_audit());
            };
            let owner: Option<i64> = tx
                .query_row(
                    "SELECT key_id FROM miners WHERE miner_id = ?1",
                    [&prover],
                    |r| r.get(0),
                )
                .optional()?;
            if owner != Some(claim.key_id) || claim.miner_id.is_some_and(|m| m != prover) {
                return refuse(Refusal::new(
                    ErrorCode::Forbidden,
                    "the job's proof is another miner's".to_string(),
                ));
            }
            let ack = |verdict, state, message: String| -> Result<Outcome, Error> {
                Ok(Outcome {
                    answer: Answer::json(
                        200,
                        &AuditAck {
                            id: job.id.clone(),
                            attempt: claim.attempt,
                            verdict,
                            state,
                            message,
                        },
                    )?,
                    requeued: false,
                })
            };
            let current = job.verify_attempt == Some(i64::from(claim.attempt));
            match (current, job.status()?) {
                (true, Some(VerificationStatus::Challenged)) => {}
                (true, Some(VerificationStatus::Passed)) => {
                    return ack(AuditVerdict::Passed, job.state()?, String::new())
                }
                (true, Some(VerificationStatus::Failed)) => {
                    let msg = job.verify_message.clone().unwrap_or_default();
                    return ack(AuditVerdict::Failed, job.state()?, msg);
                }
                (false, _)
                    if ending_of(tx, &job.id, claim.attempt)? == Some(EntryKind::Forfeit) =>
                {
                    let msg = "this attempt's credit was forfeited".to_string();
                    return ack(AuditVerdict::Failed, job.state()?, msg);
                }
                _ => return refuse(no_audit()),
            }
            let late = job.answer_by.is_some_and(|by| now_ms > by);
            let verdict = match (&claim.verdict, late) {
                (_, true) => Err("the audit was answered after its deadline".to_string()),
                (Some(v), false) => v.clone(),
                (None, false) => {
                    return refuse(Refusal::new(
                        ErrorCode::Unavailable,
                        "the audit opened while the answer was read; send it again".to_string(),
                    ))
                }
            };
            match verdict {
                Ok(()) => {
                    let t = settle(tx, &job, VerificationStatus::Passed, now_ms)?;
                    tx.execute(
                        "INSERT INTO trust (key_id, workload, streak) VALUES (?1, ?2, 1) \
                         ON CONFLICT (key_id, workload) DO UPDATE SET streak = streak + 1",
                        params![claim.key_id, job.workload],
                    )?;
                    ack(AuditVerdict::Passed, t.state, String::new())
                }
                Err(why) => {
                    let reason = if late {
                        FailReason::AuditTimeout
                    } else {
                        FailReason::AuditFailed
                    };
                    let requeued = catch(tx, &job, reason, &why, policy, now_ms)?;
                    let state = load_job(tx, &job.id)?
                        .ok_or_else(|| Error::Corrupt(format!("job {} vanished", job.id)))?
                        .state()?;
                    let mut o = ack(AuditVerdict::Failed, state, why)?;
                    o.requeued = requeued > 0;
                    Ok(o)
                }
            }
        })
    }

    fn standing(&self, key_id: i64) -> Result<(u32, bool), Error> {
        let conn = self.lock();
        let row: Option<(i64, Option<i64>)> = conn
            .query_row(
                "SELECT strikes, suspended_at FROM standing WHERE key_id = ?1",
                [key_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((strikes, at)) => (to_u32(strikes, "strikes")?, at.is_some()),
            None => (0, false),
        })
    }

    fn suspended_keys(&self) -> Result<Vec<i64>, Error> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT key_id FROM standing WHERE suspended_at IS NOT NULL")?;
        let keys = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        Ok(keys)
    }

    fn reinstate(&self, miner_id: &str) -> Result<Option<Standing>, Error> {
        let conn = self.lock();
        let key: Option<i64> = conn
            .query_row(
                "SELECT key_id FROM miners WHERE miner_id = ?1",
                [miner_id],
                |r| r.get(0),
            )
            .optional()?;
        let Some(key) = key else {
            return Ok(None);
        };
        conn.execute(
            "UPDATE standing SET strikes = 0, suspended_at = NULL WHERE key_id = ?1",
            [key],
        )?;
        Ok(Some(Standing {
            miner_id: miner_id.to_string(),
            strikes: 0,
            suspended: false,
        }))
    }

    fn audit_secret(&self) -> Result<[u8; 32], Error> {
        let conn = self.lock();
        let stored: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM settings WHERE name = 'audit_secret'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = stored {
            return v.try_into().map_err(|v: Vec<u8>| {
                Error::Corrupt(format!("audit secret of {} bytes", v.len()))
            });
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret)
            .map_err(|e| Error::Corrupt(format!("the OS random generator failed: {e}")))?;
        conn.execute(
            "INSERT INTO settings (name, value) VALUES ('audit_secret', ?1)",
            [secret.to_vec()],
        )?;
        Ok(secret)
    }

    fn any_queued(&self) -> bool {
        self.any_queued.load(Ordering::SeqCst)
    }

    fn job(&self, id: &str) -> Result<Option<(JobView, i64)>, Error> {
        let conn = self.lock();
        load_job(&conn, id)?
            .map(|row| Ok((row.view()?, row.client_key_id)))
            .transpose()
    }

    fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobView>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
             ORDER BY seq DESC LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(
                params![state.map(JobState::as_str), i64::from(limit)],
                JobRow::from_row,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(JobRow::view).collect()
    }

    fn balance(&self, wallet: &str) -> Result<Balance, Error> {
        let conn = self.lock();
        let (balance, credits, pending, forfeited): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT balance, credits, pending, forfeited FROM wallets WHERE wallet = ?1",
                [wallet],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?
            .unwrap_or((0, 0, 0, 0));
        Ok(Balance {
            wallet: wallet.to_string(),
            balance: to_u64(balance, "balance")?,
            credits: to_u64(credits, "credits")?,
            pending: to_u64(pending, "pending")?,
            forfeited: to_u64(forfeited, "forfeited")?,
        })
    }

    fn ledger(&self, wallet: &str, limit: u32) -> Result<Vec<Credit>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT job_id, attempt, amount, wallet, miner_id, created_at, kind FROM ledger \
             WHERE wallet = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![wallet, i64::from(limit)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(job_id, attempt, amount, wallet, miner_id, at, kind)| {
                Ok(Credit {
                    job_id,
                    attempt: to_u32(attempt, "attempt")?,
                    kind: EntryKind::parse(&kind)
                        .ok_or_else(|| Error::Corrupt(format!("ledger kind {kind:?}")))?,
                    amount: to_u64(amount, "amount")?,
                    wallet,
                    miner_id,
                    created_at: from_ms(at)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aitbc_protocol::api::{Mode, SubmitJob};

    /// Verification off: the API mechanics these tests check, with proofs settled at once.
    fn off() -> Policy {
        Policy {
            config: crate::VerifyConfig {
                enabled: false,
                ..crate::VerifyConfig::default()
            },
            secret: [0; 32],
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        (dir, s)
    }

    fn submit(s: &SqliteStore, key: i64, id: &str, max_runtime_s: u64) {
        let job = NewJob {
            id: id.into(),
            client_key_id: key,
            submit: SubmitJob {
                workload: "torch_bench".into(),
                params: serde_json::json!({"n": 8}),
                limits: JobLimits {
                    max_runtime_s,
                    ..JobLimits::default()
                },
                reward: 10,
            },
            max_attempts: 2,
        };
        assert_eq!(s.submit(&job, None, 1_000).unwrap().answer.status, 201);
    }

    fn miner(s: &SqliteStore, key: i64, id: &str) -> Matcher {
        let caps: MinerCapabilities = serde_json::from_value(
            serde_json::json!({"miner_id": id, "wallet": "w1", "mode": "cpu"}),
        )
        .unwrap();
        let rec = MinerRecord {
            miner_id: id.into(),
            key_id: key,
            wallet: "w1".into(),
            caps,
            last_seen_ms: 1_000,
        };
        assert_eq!(s.heartbeat(&rec, true, None).unwrap().answer.status, 200);
        Matcher::for_miner(&rec)
    }

    fn proof(id: &str) -> Proof {
        Proof {
            id: id.into(),
            miner_id: None,
            attempt: None,
            mode: Mode::Cpu,
            output_sha: "ab".repeat(32),
            merkle_root: None,
            output_len: None,
            metrics: Default::default(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn reopening_keeps_the_schema_and_refuses_newer_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        drop(SqliteStore::open(&path).unwrap());
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(matches!(
            SqliteStore::open(&path),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
    }

    #[test]
    fn assign_proof_credit_and_sweep() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        submit(&s, client, "j1", 1);
        submit(&s, client, "j2", 1);
        assert!(s.any_queued());
        let m = miner(&s, mk, "m1");
        let j1 = s.assign(&m, 2_000, 0).unwrap().unwrap();
        assert_eq!((j1.id.as_str(), j1.attempt), ("j1", 1));
        let j2 = s.assign(&m, 2_000, 0).unwrap().unwrap();
        assert_eq!(j2.id, "j2");
        assert!(!s.any_queued());
        assert!(s.assign(&m, 2_000, 0).unwrap().is_none());
        // j1 proved in time, credited once.
        assert_eq!(
            s.proof(mk, &proof("j1"), &off(), None, 2_500)
                .unwrap()
                .answer
                .status,
            200
        );
        let again = s.proof(mk, &proof("j1"), &off(), None, 2_600).unwrap();
        assert_eq!(again.answer.status, 409);
        assert_eq!(s.balance("w1").unwrap().balance, 10);
        // j2's lease (2000 + 1000 ms) expires; the sweeper requeues it.
        assert_eq!(s.sweep(3_000, &off()).unwrap(), 0);
        assert_eq!(s.sweep(3_001, &off()).unwrap(), 1);
        assert!(s.any_queued());
        let (v, _) = s.job("j2").unwrap().unwrap();
        assert_eq!((v.state, v.attempt), (JobState::Queued, 1));
        assert_eq!(v.failure.unwrap().reason, FailReason::TimedOut);
        // Second expiry exhausts max_attempts = 2.
        s.assign(&m, 4_000, 0).unwrap().unwrap();
        assert_eq!(s.sweep(10_000, &off()).unwrap(), 0);
        let (v, _) = s.job("j2").unwrap().unwrap();
        assert_eq!(v.state, JobState::Failed);
        assert_eq!(v.failure.unwrap().reason, FailReason::AttemptsExhausted);
        // With verification off a credit settles at once: a credit entry, then its settle.
        let kinds: Vec<EntryKind> = s.ledger("w1", 10).unwrap().iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [EntryKind::Settle, EntryKind::Credit]);
        let b = s.balance("w1").unwrap();
        assert_eq!((b.credits, b.pending, b.forfeited), (1, 0, 0));
    }

    /// `jobs.id, energy_mj, energy_source, tflops`.
    type EnergyRow = (String, Option<i64>, Option<String>, Option<f64>);

    /// A database written by the previous release (schema version 1, before the GPU columns)
    /// opens, migrates to the current version and keeps every row and its meaning.
    #[test]
    fn a_version_1_database_migrates_without_losing_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute_batch(
                r#"
                INSERT INTO api_keys VALUES (1, 'hash-c', 'client', 'c', 0);
                INSERT INTO api_keys VALUES (2, 'hash-m', 'miner', 'm', 0);
                INSERT INTO miners VALUES ('old-cpu', 2, 'w1',
                    '{"miner_id":"old-cpu","wallet":"w1","mode":"cpu","gpu":false,"workloads":[],"limits":{}}', 500);
                INSERT INTO miners VALUES ('old-gpu', 2, 'w1',
                    '{"miner_id":"old-gpu","wallet":"w1","mode":"gpu","gpu":true,"workloads":[],"limits":{},"gpus":[{"index":0,"name":"G","vram_mb":8}],"gpu_health":{"healthy":false,"throttle_reasons":[],"xid_errors":3}}', 600);
                INSERT INTO jobs (id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s,
                    max_runtime_s, reward, state, attempt, max_attempts, miner_id, created_at,
                    updated_at, proof)
                    VALUES ('done', 1, 'torch_bench', '{"n":8}', 1024, 0, 600, 300, 7, 'completed',
                    1, 3, 'old-cpu', 100, 200,
                    '{"id":"done","miner_id":"old-cpu","attempt":1,"mode":"cpu","output_sha":"abababababababababababababababababababababababababababababababab","metrics":{"wall_ms":12,"energy_mj":900,"energy_source":"rapl","tflops":0.5}}');
                INSERT INTO jobs (id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s,
                    max_runtime_s, reward, state, attempt, max_attempts, created_at, updated_at)
                    VALUES ('waiting', 1, 'torch_bench', '{"n":8}', 1024, 0, 600, 300, 5, 'queued',
                    0, 3, 300, 300);
                INSERT INTO ledger (job_id, attempt, wallet, miner_id, amount, created_at)
                    VALUES ('done', 1, 'w1', 'old-cpu', 7, 200);
                INSERT INTO wallets VALUES ('w1', 7, 1);
                INSERT INTO idempotency VALUES (2, 'k', 'h', 200, x'7b7d', 150);
                "#,
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        {
            let conn = s.lock();
            let v: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(v, MIGRATIONS.len() as i64);
            let counts: (i64, i64, i64, i64, i64, i64) = conn
                .query_row(
                    "SELECT (SELECT COUNT(*) FROM api_keys), (SELECT COUNT(*) FROM miners), \
                     (SELECT COUNT(*) FROM jobs), (SELECT COUNT(*) FROM ledger), \
                     (SELECT COUNT(*) FROM wallets), (SELECT COUNT(*) FROM idempotency)",
                    [],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )
                .unwrap();
            // Version 3 turned the one settled credit into a credit and its settle entry.
            assert_eq!(counts, (2, 2, 2, 2, 1, 1));
            // The new columns are filled from the JSON already stored.
            let gpu: Vec<(String, i64, Option<bool>)> = conn
                .prepare("SELECT miner_id, gpu_count, gpu_healthy FROM miners ORDER BY miner_id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                gpu,
                vec![
                    ("old-cpu".to_string(), 0, None),
                    ("old-gpu".to_string(), 1, Some(false))
                ]
            );
            let energy: Vec<EnergyRow> = conn
                .prepare("SELECT id, energy_mj, energy_source, tflops FROM jobs ORDER BY seq")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(
                energy,
                vec![
                    ("done".into(), Some(900), Some("rapl".into()), Some(0.5)),
                    ("waiting".into(), None, None, None)
                ]
            );
        }
        assert!(s.any_queued());
        let miners = s.load_miners().unwrap();
        let cpu = miners.iter().find(|m| m.miner_id == "old-cpu").unwrap();
        assert!(cpu.caps.gpus.is_empty() && cpu.caps.gpu_health.is_none());
        assert_eq!(cpu.last_seen_ms, 500);
        let (done, client) = s.job("done").unwrap().unwrap();
        assert_eq!(
            (done.state, client, done.reward),
            (JobState::Completed, 1, 7)
        );
        let m = &done.proof.unwrap().metrics;
        assert_eq!(m.energy_mj, Some(900));
        assert_eq!(m.energy_source, Some(EnergySource::Rapl));
        assert_eq!(done.verification.unwrap().status, VerificationStatus::Off);
        let b = s.balance("w1").unwrap();
        assert_eq!((b.balance, b.credits, b.pending, b.forfeited), (7, 1, 0, 0));
        let kinds: Vec<EntryKind> = s.ledger("w1", 10).unwrap().iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [EntryKind::Settle, EntryKind::Credit]);
        // And a second open finds nothing left to do.
        drop(s);
        drop(SqliteStore::open(&path).unwrap());
    }

    #[test]
    fn gpu_heartbeats_and_energy_metrics_are_stored() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        let caps: MinerCapabilities = serde_json::from_value(serde_json::json!({
            "miner_id": "g1", "wallet": "w1", "mode": "gpu", "gpu": true,
            "gpus": [{"index": 0, "name": "NVIDIA H100", "vram_mb": 81559},
                     {"index": 1, "name": "NVIDIA H100", "vram_mb": 81559}],
            "gpu_health": {"healthy": true, "temperature_c": 40, "throttle_reasons": [],
                           "xid_errors": 0}
        }))
        .unwrap();
        let rec = MinerRecord {
            miner_id: "g1".into(),
            key_id: mk,
            wallet: "w1".into(),
            caps: caps.clone(),
            last_seen_ms: 1_000,
        };
        s.heartbeat(&rec, true, None).unwrap();
        assert_eq!(s.load_miners().unwrap()[0].caps, caps);
        let row = |s: &SqliteStore| -> (i64, Option<bool>) {
            s.lock()
                .query_row(
                    "SELECT gpu_count, gpu_healthy FROM miners WHERE miner_id = 'g1'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
        };
        assert_eq!(row(&s), (2, Some(true)));

        submit(&s, client, "j1", 10);
        let job = s
            .assign(&Matcher::for_miner(&rec), 2_000, 0)
            .unwrap()
            .unwrap();
        let mut p = proof(&job.id);
        p.metrics = serde_json::from_value(serde_json::json!({
            "wall_ms": 20, "flops": 1_000_000_000u64, "energy_mj": 4_200,
            "energy_source": "nvml", "tflops": 61.5
        }))
        .unwrap();
        assert_eq!(
            s.proof(mk, &p, &off(), None, 2_100).unwrap().answer.status,
            200
        );
        let (v, _) = s.job("j1").unwrap().unwrap();
        assert_eq!(v.proof.unwrap().metrics, p.metrics);
        let cols: (Option<i64>, Option<String>, Option<f64>) = s
            .lock()
            .query_row(
                "SELECT energy_mj, energy_source, tflops FROM jobs WHERE id = 'j1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(cols, (Some(4_200), Some("nvml".into()), Some(61.5)));

        // An unhealthy GPU is stored as such, and its miner gets no job that needs VRAM.
        let mut sick = rec.clone();
        sick.caps.gpu_health = Some(aitbc_protocol::api::GpuHealth {
            healthy: false,
            reason: Some("XID 79: GPU has fallen off the bus".into()),
            xid_errors: 1,
            ..Default::default()
        });
        s.heartbeat(&sick, true, None).unwrap();
        assert_eq!(row(&s), (2, Some(false)));
        let gpu_job = NewJob {
            id: "vram".into(),
            client_key_id: client,
            submit: serde_json::from_value(serde_json::json!({
                "workload": "torch_bench", "params": {"n": 8}, "reward": 1,
                "limits": {"vram_mb": 64}
            }))
            .unwrap(),
            max_attempts: 2,
        };
        s.submit(&gpu_job, None, 3_000).unwrap();
        assert!(s
            .assign(&Matcher::for_miner(&sick), 3_100, 0)
            .unwrap()
            .is_none());
        let got = s
            .assign(&Matcher::for_miner(&rec), 3_200, 0)
            .unwrap()
            .unwrap();
        assert_eq!(got.id, "vram");
    }

    /// A credit that would take a wallet past i64::MAX is a clean 409 WALLET_FULL, never a 500:
    /// nothing is credited, the job is not left assigned (requeued, then failed once its
    /// attempts are used up) and the wallet keeps its balance. Before the fix every retry of
    /// this proof answered 500 INTERNAL and the job stayed assigned.
    #[test]
    fn a_credit_past_the_largest_balance_is_refused_and_the_job_given_back() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        submit(&s, client, "j1", 60);
        let m = miner(&s, mk, "m1");
        let near_full = i64::MAX - 5;
        s.lock()
            .execute(
                "INSERT INTO wallets (wallet, balance, credits) VALUES ('w1', ?1, 7)",
                [near_full],
            )
            .unwrap();
        for (attempt, state_after) in [(1, JobState::Queued), (2, JobState::Failed)] {
            let job = s.assign(&m, 2_000, 0).unwrap().expect("the job");
            assert_eq!(job.attempt, attempt);
            let out = s.proof(mk, &proof("j1"), &off(), None, 2_100).unwrap();
            assert_eq!(out.answer.status, 409);
            let body: aitbc_protocol::api::ErrorBody =
                serde_json::from_slice(&out.answer.body).unwrap();
            assert_eq!(body.error.code, ErrorCode::WalletFull);
            assert!(
                body.error.message.starts_with(&format!(
                    "crediting 10 to wallet \"w1\" would take its balance of {near_full} past \
                     9223372036854775807"
                )),
                "{}",
                body.error.message
            );
            assert_eq!(out.requeued, state_after == JobState::Queued);
            let (v, _) = s.job("j1").unwrap().unwrap();
            assert_eq!((v.state, v.attempt), (state_after, attempt));
            assert!(v.proof.is_none());
            let b = s.balance("w1").unwrap();
            assert_eq!((b.balance, b.credits), (near_full as u64, 7));
            assert!(s.ledger("w1", 10).unwrap().is_empty());
        }
        let (v, _) = s.job("j1").unwrap().unwrap();
        assert_eq!(v.failure.unwrap().reason, FailReason::AttemptsExhausted);
        // A wallet with room is still credited.
        submit(&s, client, "j2", 60);
        let other = miner(&s, mk, "m2");
        s.lock()
            .execute("UPDATE miners SET wallet = 'w2' WHERE miner_id = 'm2'", [])
            .unwrap();
        s.assign(&other, 3_000, 0).unwrap().unwrap();
        assert_eq!(
            s.proof(mk, &proof("j2"), &off(), None, 3_100)
                .unwrap()
                .answer
                .status,
            200
        );
        assert_eq!(s.balance("w2").unwrap().balance, 10);
    }

    fn verifying(trust_after: u32, floor: f64) -> Policy {
        Policy {
            config: crate::VerifyConfig {
                trust_after,
                floor,
                hold: std::time::Duration::from_millis(100),
                answer_within: std::time::Duration::from_millis(50),
                strikes: 2,
                ..crate::VerifyConfig::default()
            },
            secret: [1; 32],
        }
    }

    fn rooted(id: &str) -> Proof {
        Proof {
            merkle_root: Some("cd".repeat(32)),
            ..proof(id)
        }
    }

    fn verdict<'a>(key: i64, id: &'a str, attempt: u32, v: Result<(), String>) -> AuditClaim<'a> {
        AuditClaim {
            key_id: key,
            id,
            miner_id: None,
            attempt,
            verdict: Some(v),
        }
    }

    /// The whole settlement cycle at the store: a challenged proof that passes settles and
    /// extends the pair's streak; a held one settles when its window ends (or is forfeited
    /// when the key is caught first); a failed audit forfeits every pending credit of the key,
    /// requeues their jobs and strikes the key; an unanswered audit does the same from the
    /// sweeper; at `strikes` strikes the key is suspended until reinstated. Every change to a
    /// wallet is a ledger entry.
    #[test]
    fn verification_settles_forfeits_strikes_and_suspends() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        let m = miner(&s, mk, "m1");
        for id in ["j1", "j2", "j3"] {
            submit(&s, client, id, 60);
        }
        let audit = verifying(10, 0.05);
        let ack = |o: Outcome| -> ProofAck { serde_json::from_slice(&o.answer.body).unwrap() };
        let wallet = |s: &SqliteStore| {
            let b = s.balance("w1").unwrap();
            (b.balance, b.pending, b.forfeited)
        };

        // j1: untrusted, so audited; all 8 rows of an 8-row output; passes and settles.
        assert_eq!(s.assign(&m, 2_000, 0).unwrap().unwrap().id, "j1");
        let a = ack(s.proof(mk, &rooted("j1"), &audit, None, 2_100).unwrap());
        assert_eq!(a.state, JobState::Verifying);
        let c = a.audit.expect("audited");
        assert_eq!(c.rows, (0..8).collect::<Vec<u64>>());
        assert_eq!(s.open_audits(mk, "m1").unwrap(), std::slice::from_ref(&c));
        assert!(s.open_audits(mk, "m2").unwrap().is_empty());
        assert_eq!(wallet(&s), (0, 10, 0));
        let passed = s
            .audit_verdict(&verdict(mk, "j1", 1, Ok(())), &audit, None, 2_120)
            .unwrap();
        let again = s
            .audit_verdict(&verdict(mk, "j1", 1, Ok(())), &audit, None, 2_130)
            .unwrap();
        assert_eq!(
            passed.answer, again.answer,
            "a decided audit replays its verdict"
        );
        assert_eq!(wallet(&s), (10, 0, 0));
        assert!(s.open_audits(mk, "m1").unwrap().is_empty());
        // Another key cannot answer, and a proof without its root is refused while verifying.
        let other = s.add_key("o", Scope::Miner, "o", 0).unwrap();
        let r = s
            .audit_verdict(&verdict(other, "j1", 1, Ok(())), &audit, None, 2_140)
            .unwrap();
        assert_eq!(r.answer.status, 403);

        // j2: a trusted pair at the floor is held, not audited.
        s.lock()
            .execute("UPDATE trust SET streak = 1000000", [])
            .unwrap();
        let audit_rare = verifying(10, 0.0001);
        assert_eq!(s.assign(&m, 3_000, 0).unwrap().unwrap().id, "j2");
        let r = s.proof(mk, &proof("j2"), &audit_rare, None, 3_050).unwrap();
        assert_eq!(
            r.answer.status, 422,
            "a torch_bench proof needs its merkle_root"
        );
        let a = ack(s
            .proof(mk, &rooted("j2"), &audit_rare, None, 3_100)
            .unwrap());
        assert!(a.audit.is_none());
        assert_eq!(
            a.settles_at.map(|t| t.unix_timestamp_nanos() / 1_000_000),
            Some(3_200)
        );
        assert_eq!(wallet(&s), (10, 10, 0));

        // j3: audited (streak back to 0), fails: j3 and the held j2 are forfeited and requeued.
        s.lock().execute("UPDATE trust SET streak = 0", []).unwrap();
        assert_eq!(s.assign(&m, 3_110, 0).unwrap().unwrap().id, "j3");
        assert!(
            ack(s.proof(mk, &rooted("j3"), &audit, None, 3_120).unwrap())
                .audit
                .is_some()
        );
        let bad = verdict(mk, "j3", 1, Err("row 3 is wrong".into()));
        let out = s.audit_verdict(&bad, &audit, None, 3_130).unwrap();
        assert!(out.requeued);
        let a: AuditAck = serde_json::from_slice(&out.answer.body).unwrap();
        assert_eq!(
            (a.verdict, a.state),
            (AuditVerdict::Failed, JobState::Queued)
        );
        assert_eq!(a.message, "row 3 is wrong");
        assert_eq!(wallet(&s), (10, 0, 20));
        for id in ["j2", "j3"] {
            let (v, _) = s.job(id).unwrap().unwrap();
            assert_eq!(v.state, JobState::Queued, "{id}");
            assert_eq!(v.failure.unwrap().reason, FailReason::AuditFailed);
            assert_eq!(v.verification.unwrap().status, VerificationStatus::Failed);
        }
        assert_eq!(s.standing(mk).unwrap(), (1, false));
        // The sweeper after j2's old window settles nothing: its credit is gone.
        s.sweep(3_300, &audit).unwrap();
        assert_eq!(wallet(&s), (10, 0, 20));

        // A caught key never gets those jobs back; its next job (j4) is audited and never
        // answered: the sweeper times it out, requeues it, and the second strike suspends.
        assert!(
            s.assign(&m, 3_900, 0).unwrap().is_none(),
            "j2 and j3 are excluded for mk"
        );
        submit(&s, client, "j4", 60);
        assert_eq!(s.assign(&m, 4_000, 0).unwrap().unwrap().id, "j4");
        assert!(
            ack(s.proof(mk, &rooted("j4"), &audit, None, 4_010).unwrap())
                .audit
                .is_some()
        );
        s.sweep(4_060, &audit).unwrap();
        assert_eq!(
            s.job("j4").unwrap().unwrap().0.state,
            JobState::Verifying,
            "not yet due"
        );
        assert_eq!(s.sweep(4_061, &audit).unwrap(), 1);
        let (v, _) = s.job("j4").unwrap().unwrap();
        assert_eq!(v.state, JobState::Queued);
        assert_eq!(v.failure.unwrap().reason, FailReason::AuditTimeout);
        assert!(v.proof.is_none(), "a rejected proof is no result");
        assert_eq!(wallet(&s), (10, 0, 30));
        assert_eq!(s.standing(mk).unwrap(), (2, true));
        // Another key takes the oldest requeued job, as its second attempt.
        let m2 = miner(&s, other, "m2");
        let j = s.assign(&m2, 4_100, 0).unwrap().unwrap();
        assert_eq!((j.id.as_str(), j.attempt), ("j2", 2));
        assert_eq!(s.suspended_keys().unwrap(), [mk]);
        assert_eq!(s.reinstate("m1").unwrap().map(|x| x.suspended), Some(false));
        assert_eq!(s.standing(mk).unwrap(), (0, false));
        assert!(s.suspended_keys().unwrap().is_empty());
        assert!(s.reinstate("nobody").unwrap().is_none());

        // The ledger: every credit, and every settle and forfeit, one entry each, never deleted.
        let mut e: Vec<(String, u32, EntryKind)> = s
            .ledger("w1", 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.job_id, c.attempt, c.kind))
            .collect();
        e.sort_by(|a, b| (&a.0, a.1, a.2.as_str()).cmp(&(&b.0, b.1, b.2.as_str())));
        use EntryKind::{Credit as C, Forfeit as F, Settle as S};
        let want = [
            ("j1", 1, C),
            ("j1", 1, S),
            ("j2", 1, C),
            ("j2", 1, F),
            ("j3", 1, C),
            ("j3", 1, F),
            ("j4", 1, C),
            ("j4", 1, F),
        ];
        let want: Vec<(String, u32, EntryKind)> = want
            .iter()
            .map(|(j, a, k)| (j.to_string(), *a, *k))
            .collect();
        assert_eq!(e, want);
        // The secret is made once and kept.
        assert_eq!(s.audit_secret().unwrap(), s.audit_secret().unwrap());
    }

    /// When a key is caught, a credit of it that was held and whose window already ended
    /// (the sweeper has not run yet) settles: it was earned under the policy. One still in its
    /// window is forfeited.
    #[test]
    fn a_catch_forfeits_only_credits_still_in_their_window() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        let m = miner(&s, mk, "m1");
        for id in ["old", "new", "bad"] {
            submit(&s, client, id, 60);
        }
        let rare = verifying(10, 0.0001);
        s.lock()
            .execute(
                "INSERT INTO trust (key_id, workload, streak) VALUES (?1, 'torch_bench', 1000000)",
                [mk],
            )
            .unwrap();
        s.assign(&m, 1_000, 0).unwrap().unwrap();
        s.proof(mk, &rooted("old"), &rare, None, 1_000).unwrap(); // settles_at 1_100
        s.assign(&m, 1_150, 0).unwrap().unwrap();
        s.proof(mk, &rooted("new"), &rare, None, 1_150).unwrap(); // settles_at 1_250
        s.lock().execute("UPDATE trust SET streak = 0", []).unwrap();
        s.assign(&m, 1_200, 0).unwrap().unwrap();
        s.proof(mk, &rooted("bad"), &rare, None, 1_200).unwrap();
        let bad = verdict(mk, "bad", 1, Err("wrong".into()));
        s.audit_verdict(&bad, &rare, None, 1_210).unwrap();
        let state = |id: &str| s.job(id).unwrap().unwrap().0;
        assert_eq!(state("old").state, JobState::Completed);
        assert_eq!(
            state("old").verification.unwrap().status,
            VerificationStatus::Unaudited
        );
        assert_eq!(state("new").state, JobState::Queued);
        let b = s.balance("w1").unwrap();
        assert_eq!((b.balance, b.pending, b.forfeited), (10, 0, 20));
    }

    /// A held credit settles when its window ends, as `unaudited`.
    #[test]
    fn a_held_credit_settles_when_its_window_ends() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let mk = s.add_key("m", Scope::Miner, "m", 0).unwrap();
        let m = miner(&s, mk, "m1");
        submit(&s, client, "j1", 60);
        s.lock()
            .execute(
                "INSERT INTO trust (key_id, workload, streak) VALUES (?1, 'torch_bench', 1000000)",
                [mk],
            )
            .unwrap();
        s.assign(&m, 2_000, 0).unwrap().unwrap();
        s.proof(mk, &rooted("j1"), &verifying(10, 0.0001), None, 2_000)
            .unwrap();
        s.sweep(2_100, &verifying(10, 0.0001)).unwrap();
        assert_eq!(s.balance("w1").unwrap().pending, 10);
        s.sweep(2_101, &verifying(10, 0.0001)).unwrap();
        let (v, _) = s.job("j1").unwrap().unwrap();
        assert_eq!(v.state, JobState::Completed);
        assert_eq!(
            v.verification.unwrap().status,
            VerificationStatus::Unaudited
        );
        let b = s.balance("w1").unwrap();
        assert_eq!((b.balance, b.credits, b.pending), (10, 1, 0));
    }

    #[test]
    fn the_ledger_refuses_a_second_credit_even_bypassing_the_lifecycle() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        submit(&s, client, "j1", 1);
        let conn = s.lock();
        let insert = "INSERT INTO ledger (job_id, attempt, kind, wallet, miner_id, amount, \
                      created_at) VALUES ('j1', ?1, ?2, 'w', 'm', 1, 0)";
        conn.execute(insert, params![1, "credit"]).unwrap();
        assert!(conn.execute(insert, params![1, "credit"]).is_err());
        conn.execute(insert, params![1, "settle"]).unwrap();
        // An attempt's credit ends one way only, and a job pays out once, whatever attempt.
        assert!(conn.execute(insert, params![1, "forfeit"]).is_err());
        conn.execute(insert, params![2, "credit"]).unwrap();
        assert!(conn.execute(insert, params![2, "settle"]).is_err());
        conn.execute(insert, params![2, "forfeit"]).unwrap();
        assert!(conn.execute(insert, params![3, "payout"]).is_err());
    }

    #[test]
    fn idempotent_replay_and_reuse() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        let job = |id: &str| NewJob {
            id: id.into(),
            client_key_id: client,
            submit: serde_json::from_value(
                serde_json::json!({"workload": "torch_bench", "reward": 1}),
            )
            .unwrap(),
            max_attempts: 3,
        };
        let idem = IdemKey {
            key_id: client,
            key: "k1".into(),
            request_hash: "h1".into(),
        };
        let a = s.submit(&job("a"), Some(&idem), 1).unwrap().answer;
        let b = s.submit(&job("b"), Some(&idem), 2).unwrap().answer;
        assert_eq!(a, b);
        assert!(s.job("b").unwrap().is_none());
        let other = IdemKey {
            request_hash: "h2".into(),
            ..idem
        };
        let c = s.submit(&job("c"), Some(&other), 3).unwrap().answer;
        assert_eq!(c.status, 422);
        // After the retention window the key is free again.
        s.sweep(1 + IDEMPOTENCY_RETENTION_MS + 1, &off()).unwrap();
        let d = s.submit(&job("d"), Some(&other), 4).unwrap().answer;
        assert_eq!(d.status, 201);
    }
}

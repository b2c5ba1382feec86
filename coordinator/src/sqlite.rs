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
    is_sha256_hex, Balance, EnergySource, ErrorCode, FailAck, FailReason, FailReport, Failure,
    HeartbeatAck, Job, JobLimits, JobState, JobView, MinerCapabilities, Proof, ProofAck,
};
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

use crate::auth::{KeyInfo, Scope};
use crate::error::{Answer, Error, Refusal};
use crate::lifecycle::{self, Assignment, Claim, Event, Lease, Snapshot, Transition, Verdict};
use crate::store::{Credit, IdemKey, Matcher, MinerRecord, NewJob, Outcome, Store};

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

/// How long a POST's answer stays replayable under its Idempotency-Key: 24 hours.
pub const IDEMPOTENCY_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Columns of `jobs` in the order [`JobRow::from_row`] reads them.
const JOB_COLUMNS: &str = "id, client_key_id, workload, params, ram_mb, vram_mb, cpu_time_s, \
    max_runtime_s, reward, state, attempt, max_attempts, miner_id, miner_key_id, \
    lease_expires_at, created_at, updated_at, proof, failure";

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
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
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
        })
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

/// Applies a failed attempt (miner report or expired lease) decided by the lifecycle.
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
    let message = match (reason, event) {
        (FailReason::AttemptsExhausted, Event::Fail(r)) => {
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
    let failure = Failure {
        reason,
        message,
        attempt: t.attempt,
    };
    tx.execute(
        "UPDATE jobs SET state = ?2, miner_id = NULL, miner_key_id = NULL, \
         lease_expires_at = NULL, failure = ?3, updated_at = ?4 WHERE id = ?1",
        params![
            job.id,
            t.state.as_str(),
            serde_json::to_string(&failure)?,
            now_ms
        ],
    )?;
    Ok(t)
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
        Err(r) => Ok(Checked::Refused(Outcome {
            answer: r.answer(),
            requeued: false,
        })),
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
                         ORDER BY seq LIMIT 1"
                    ),
                    params![
                        to_i64(m.max_ram_mb),
                        to_i64(m.max_vram_mb),
                        to_i64(m.max_runtime_s),
                        to_i64(m.max_cpu_time_s),
                        m.workloads.is_empty(),
                        workloads
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
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error> {
        self.write(idem, now_ms, |tx| {
            if !is_sha256_hex(&p.output_sha) {
                return Ok(Outcome {
                    answer: Refusal::invalid(
                        "output_sha",
                        &p.output_sha,
                        "expected 64 lower-case hex digits (SHA-256)",
                    )
                    .answer(),
                    requeued: false,
                });
            }
            if let Some(root) = p.merkle_root.as_deref().filter(|r| !is_sha256_hex(r)) {
                return Ok(Outcome {
                    answer: Refusal::invalid(
                        "merkle_root",
                        root,
                        "expected 64 lower-case hex digits (a SHA-256 Merkle root)",
                    )
                    .answer(),
                    requeued: false,
                });
            }
            let claim = Claim {
                key_id,
                miner_id: p.miner_id.as_deref(),
                attempt: p.attempt,
            };
            let job = match check_claim(tx, &p.id, claim, now_ms)? {
                Checked::Go(job) => job,
                Checked::Refused(o) => return Ok(o),
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
            let (balance, credits): (i64, i64) = tx
                .query_row(
                    "SELECT balance, credits FROM wallets WHERE wallet = ?1",
                    [&wallet],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?
                .unwrap_or((0, 0));
            let Some((balance, credits)) =
                balance.checked_add(job.reward).zip(credits.checked_add(1))
            else {
                return wallet_full(tx, &job, &wallet, balance, now_ms);
            };
            let mut stored = p.clone();
            stored.attempt = Some(t.attempt);
            stored.miner_id = Some(miner_id.clone());
            let m = &stored.metrics;
            tx.execute(
                "UPDATE jobs SET state = ?2, lease_expires_at = NULL, proof = ?3, updated_at = ?4, \
                 energy_mj = ?5, energy_source = ?6, tflops = ?7 WHERE id = ?1",
                params![
                    job.id,
                    t.state.as_str(),
                    serde_json::to_string(&stored)?,
                    now_ms,
                    m.energy_mj.map(to_i64),
                    m.energy_source.map(EnergySource::as_str),
                    m.tflops
                ],
            )?;
            tx.execute(
                "INSERT INTO ledger (job_id, attempt, wallet, miner_id, amount, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
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
                "INSERT INTO wallets (wallet, balance, credits) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (wallet) DO UPDATE SET balance = excluded.balance, \
                 credits = excluded.credits",
                params![wallet, balance, credits],
            )?;
            let ack = ProofAck {
                id: job.id.clone(),
                state: t.state,
                attempt: t.attempt,
                wallet,
                credited: to_u64(job.reward, "reward")?,
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

    fn sweep(&self, now_ms: i64) -> Result<usize, Error> {
        let mut requeued = 0;
        self.write(None, now_ms, |tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE state = 'assigned' AND lease_expires_at < ?1"
            ))?;
            let expired = stmt
                .query_map([now_ms], JobRow::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            for job in &expired {
                let t = apply_failure(
                    tx,
                    job,
                    Event::LeaseExpired,
                    "lease expired without a proof",
                    now_ms,
                )?;
                if t.effects.wake {
                    requeued += 1;
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
        let (balance, credits): (i64, i64) = conn
            .query_row(
                "SELECT balance, credits FROM wallets WHERE wallet = ?1",
                [wallet],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?
            .unwrap_or((0, 0));
        Ok(Balance {
            wallet: wallet.to_string(),
            balance: to_u64(balance, "balance")?,
            credits: to_u64(credits, "credits")?,
        })
    }

    fn ledger(&self, wallet: &str, limit: u32) -> Result<Vec<Credit>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT job_id, attempt, amount, wallet, miner_id, created_at FROM ledger \
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
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(job_id, attempt, amount, wallet, miner_id, at)| {
                Ok(Credit {
                    job_id,
                    attempt: to_u32(attempt, "attempt")?,
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
            s.proof(mk, &proof("j1"), None, 2_500)
                .unwrap()
                .answer
                .status,
            200
        );
        let again = s.proof(mk, &proof("j1"), None, 2_600).unwrap();
        assert_eq!(again.answer.status, 409);
        assert_eq!(s.balance("w1").unwrap().balance, 10);
        // j2's lease (2000 + 1000 ms) expires; the sweeper requeues it.
        assert_eq!(s.sweep(3_000).unwrap(), 0);
        assert_eq!(s.sweep(3_001).unwrap(), 1);
        assert!(s.any_queued());
        let (v, _) = s.job("j2").unwrap().unwrap();
        assert_eq!((v.state, v.attempt), (JobState::Queued, 1));
        assert_eq!(v.failure.unwrap().reason, FailReason::TimedOut);
        // Second expiry exhausts max_attempts = 2.
        s.assign(&m, 4_000, 0).unwrap().unwrap();
        assert_eq!(s.sweep(10_000).unwrap(), 0);
        let (v, _) = s.job("j2").unwrap().unwrap();
        assert_eq!(v.state, JobState::Failed);
        assert_eq!(v.failure.unwrap().reason, FailReason::AttemptsExhausted);
        let ledger = s.ledger("w1", 10).unwrap();
        assert_eq!(ledger.len(), 1);
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
            assert_eq!(counts, (2, 2, 2, 1, 1, 1));
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
        assert_eq!(s.balance("w1").unwrap().balance, 7);
        assert_eq!(s.ledger("w1", 10).unwrap().len(), 1);
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
        assert_eq!(s.proof(mk, &p, None, 2_100).unwrap().answer.status, 200);
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
            let out = s.proof(mk, &proof("j1"), None, 2_100).unwrap();
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
            s.proof(mk, &proof("j2"), None, 3_100)
                .unwrap()
                .answer
                .status,
            200
        );
        assert_eq!(s.balance("w2").unwrap().balance, 10);
    }

    #[test]
    fn the_ledger_refuses_a_second_credit_even_bypassing_the_lifecycle() {
        let (_d, s) = store();
        let client = s.add_key("c", Scope::Client, "c", 0).unwrap();
        submit(&s, client, "j1", 1);
        let conn = s.lock();
        let insert = "INSERT INTO ledger (job_id, attempt, wallet, miner_id, amount, created_at) \
                      VALUES ('j1', ?1, 'w', 'm', 1, 0)";
        conn.execute(insert, [1]).unwrap();
        assert!(conn.execute(insert, [1]).is_err());
        assert!(conn.execute(insert, [2]).is_err());
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
        s.sweep(1 + IDEMPOTENCY_RETENTION_MS + 1).unwrap();
        let d = s.submit(&job("d"), Some(&other), 4).unwrap().answer;
        assert_eq!(d.status, 201);
    }
}

//! The narrow storage interface the HTTP layer needs, and the records that cross it.
//!
//! Every method is one atomic unit: an implementation applies [`crate::lifecycle`]'s decisions
//! and the idempotency record of a POST in the same transaction as its effect. The SQLite
//! implementation is [`crate::sqlite::SqliteStore`]; a PostgreSQL one would implement the same
//! trait. Methods block: async callers run them on the blocking pool.
//!
//! The trait must never expose a backend type (connection, transaction, SQL) to its callers.

use aitbc_protocol::api::{
    AuditChallenge, Balance, FailReport, Job, JobState, JobView, MinerCapabilities, Proof,
    Standing, SubmitJob, VerificationStatus,
};
use serde::{Deserialize, Serialize};

use crate::audit::Policy;
use crate::auth::{KeyInfo, Scope};
use crate::error::{Answer, Error};

/// Identifies one idempotent POST: the key that sent it, its Idempotency-Key, and a hash of
/// the request (method, path and body) so that reuse with a different request is caught.
#[derive(Clone, Debug)]
pub struct IdemKey {
    pub key_id: i64,
    pub key: String,
    pub request_hash: String,
}

/// A miner as its heartbeats describe it.
#[derive(Clone, Debug, PartialEq)]
pub struct MinerRecord {
    pub miner_id: String,
    pub key_id: i64,
    pub wallet: String,
    pub caps: MinerCapabilities,
    pub last_seen_ms: i64,
}

/// Which queued jobs a miner may take.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub miner_id: String,
    pub key_id: i64,
    /// Workload names; empty means any.
    pub workloads: Vec<String>,
    pub max_ram_mb: u64,
    pub max_vram_mb: u64,
    pub max_runtime_s: u64,
    pub max_cpu_time_s: u64,
}

impl Matcher {
    /// What the miner's last heartbeat allows. While it reports its GPU unhealthy
    /// (`gpu_health.healthy = false`) it is offered no job that asks for VRAM.
    pub fn for_miner(m: &MinerRecord) -> Matcher {
        let l = &m.caps.limits;
        let gpu_down = m.caps.gpu_health.as_ref().is_some_and(|h| !h.healthy);
        Matcher {
            miner_id: m.miner_id.clone(),
            key_id: m.key_id,
            workloads: m.caps.workloads.clone(),
            max_ram_mb: l.ram_mb.unwrap_or(u64::MAX),
            max_vram_mb: if gpu_down {
                0
            } else {
                l.vram_mb.unwrap_or(u64::MAX)
            },
            max_runtime_s: l.max_runtime_s.unwrap_or(u64::MAX),
            max_cpu_time_s: l.cpu_time_s.unwrap_or(u64::MAX),
        }
    }
}

/// A new job as the store records it.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: String,
    pub client_key_id: i64,
    pub submit: SubmitJob,
    pub max_attempts: u32,
}

/// What a ledger entry does to its wallet. Entries are only ever appended: a credit is pending
/// until one `settle` or one `forfeit` entry of the same (job, attempt) follows it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A proof was accepted: `amount` is pending.
    Credit,
    /// The proof held: the pending amount joins the balance.
    Settle,
    /// The proof did not hold (or its miner was caught on another job): the pending amount is
    /// taken back.
    Forfeit,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Credit => "credit",
            EntryKind::Settle => "settle",
            EntryKind::Forfeit => "forfeit",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        [EntryKind::Credit, EntryKind::Settle, EntryKind::Forfeit]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One ledger entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Credit {
    pub job_id: String,
    pub attempt: u32,
    pub kind: EntryKind,
    pub amount: u64,
    pub wallet: String,
    pub miner_id: String,
    #[serde(with = "aitbc_protocol::api::ts")]
    pub created_at: time::OffsetDateTime,
}

/// What the HTTP layer needs to check an audit answer outside a transaction: the challenge and
/// the proof it is against. Read without a lock held over the recomputation; the verdict is
/// applied by [`Store::audit_verdict`], which checks again that the same challenge is open.
#[derive(Clone, Debug)]
pub struct AuditTarget {
    pub state: JobState,
    pub status: Option<VerificationStatus>,
    pub attempt: u32,
    pub prover_key_id: Option<i64>,
    pub prover_miner_id: Option<String>,
    pub workload: String,
    pub params: serde_json::Value,
    pub merkle_root: Option<String>,
    pub rows: Vec<u64>,
}

/// An audit answer's claim and the verdict on it (`Err`: why it does not hold).
#[derive(Clone, Debug)]
pub struct AuditClaim<'a> {
    pub key_id: i64,
    pub id: &'a str,
    pub miner_id: Option<&'a str>,
    pub attempt: u32,
    /// `None` when the HTTP layer did not check (the challenge was not open when it looked).
    pub verdict: Option<Result<(), String>>,
}

/// The answer to a POST, and whether it put a job back in the queue (to wake long-polls).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub answer: Answer,
    pub requeued: bool,
}

impl Outcome {
    /// A refusal, which changes nothing.
    pub fn refused(r: crate::error::Refusal) -> Outcome {
        Outcome {
            answer: r.answer(),
            requeued: false,
        }
    }
}

/// The Coordinator's storage. Each method is atomic; see the module doc.
pub trait Store: Send + Sync {
    /// Stores a key's hash; returns its id.
    fn add_key(&self, hash: &str, scope: Scope, name: &str, now_ms: i64) -> Result<i64, Error>;
    fn find_key(&self, hash: &str) -> Result<Option<KeyInfo>, Error>;

    fn load_miners(&self) -> Result<Vec<MinerRecord>, Error>;
    /// Records a heartbeat (writing the miner when `write`), answering 200 HeartbeatAck or
    /// 403 MINER_ID_TAKEN when the id belongs to another key.
    fn heartbeat(
        &self,
        miner: &MinerRecord,
        write: bool,
        idem: Option<&IdemKey>,
    ) -> Result<Outcome, Error>;

    /// Queues a job; answers 201 JobView.
    fn submit(&self, job: &NewJob, idem: Option<&IdemKey>, now_ms: i64) -> Result<Outcome, Error>;
    /// Assigns the oldest matching queued job to the miner, if any.
    fn assign(&self, m: &Matcher, now_ms: i64, lease_margin_ms: i64) -> Result<Option<Job>, Error>;
    /// Accepts a proof: a pending credit, and the policy's decision (audit, hold, or settle at
    /// once) recorded with it; or refuses.
    fn proof(
        &self,
        key_id: i64,
        p: &Proof,
        policy: &Policy,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error>;
    /// The open audits of a key's miner.
    fn open_audits(&self, key_id: i64, miner_id: &str) -> Result<Vec<AuditChallenge>, Error>;
    /// What an answer to job `id`'s audit is checked against.
    fn audit_target(&self, id: &str) -> Result<Option<AuditTarget>, Error>;
    /// Applies an audit's verdict (settle, or forfeit with a strike), answering 200 AuditAck;
    /// replays of a decided audit answer its verdict again.
    fn audit_verdict(
        &self,
        claim: &AuditClaim<'_>,
        policy: &Policy,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error>;
    /// A key's failed audits and whether it is suspended.
    fn standing(&self, key_id: i64) -> Result<(u32, bool), Error>;
    /// Every suspended key.
    fn suspended_keys(&self) -> Result<Vec<i64>, Error>;
    /// Lifts the suspension of the key that owns `miner_id` and clears its strikes.
    fn reinstate(&self, miner_id: &str) -> Result<Option<Standing>, Error>;
    /// The audit secret kept in the database (made from the OS generator on first use).
    fn audit_secret(&self) -> Result<[u8; 32], Error>;
    /// Records a failed attempt (requeue or fail), or refuses.
    fn fail(
        &self,
        key_id: i64,
        f: &FailReport,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error>;
    /// Requeues (or fails) every job whose lease ended before `now_ms`, fails every audit whose
    /// answer is overdue, settles every held credit whose window ended, and forgets idempotency
    /// records past their retention; returns how many jobs were requeued.
    fn sweep(&self, now_ms: i64, policy: &Policy) -> Result<usize, Error>;
    /// Whether any job is queued. Exact: updated in the same critical section as every write.
    fn any_queued(&self) -> bool;

    /// Whether key `key_id` has an accepted proof (its job verifying or completed) whose output
    /// is `sha`: the only case in which its partial upload of `sha` may go on.
    fn upload_live(&self, sha: &str, key_id: i64) -> Result<bool, Error>;

    /// A job and the id of the key that submitted it.
    fn job(&self, id: &str) -> Result<Option<(JobView, i64)>, Error>;
    fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobView>, Error>;
    fn balance(&self, wallet: &str) -> Result<Balance, Error>;
    fn ledger(&self, wallet: &str, limit: u32) -> Result<Vec<Credit>, Error>;
}

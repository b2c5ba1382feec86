//! The narrow storage interface the HTTP layer needs, and the records that cross it.
//!
//! Every method is one atomic unit: an implementation applies [`crate::lifecycle`]'s decisions
//! and the idempotency record of a POST in the same transaction as its effect. The SQLite
//! implementation is [`crate::sqlite::SqliteStore`]; a PostgreSQL one would implement the same
//! trait. Methods block: async callers run them on the blocking pool.
//!
//! The trait must never expose a backend type (connection, transaction, SQL) to its callers.

use aitbc_protocol::api::{
    Balance, FailReport, Job, JobState, JobView, MinerCapabilities, Proof, SubmitJob,
};
use serde::{Deserialize, Serialize};

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

/// One ledger credit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Credit {
    pub job_id: String,
    pub attempt: u32,
    pub amount: u64,
    pub wallet: String,
    pub miner_id: String,
    #[serde(with = "aitbc_protocol::api::ts")]
    pub created_at: time::OffsetDateTime,
}

/// The answer to a POST, and whether it put a job back in the queue (to wake long-polls).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub answer: Answer,
    pub requeued: bool,
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
    /// Completes a job and credits its miner's wallet, or refuses.
    fn proof(
        &self,
        key_id: i64,
        p: &Proof,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error>;
    /// Records a failed attempt (requeue or fail), or refuses.
    fn fail(
        &self,
        key_id: i64,
        f: &FailReport,
        idem: Option<&IdemKey>,
        now_ms: i64,
    ) -> Result<Outcome, Error>;
    /// Requeues (or fails) every job whose lease ended before `now_ms`, and forgets idempotency
    /// records past their retention; returns how many jobs were requeued.
    fn sweep(&self, now_ms: i64) -> Result<usize, Error>;
    /// Whether any job is queued. Exact: updated in the same critical section as every write.
    fn any_queued(&self) -> bool;

    /// A job and the id of the key that submitted it.
    fn job(&self, id: &str) -> Result<Option<(JobView, i64)>, Error>;
    fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobView>, Error>;
    fn balance(&self, wallet: &str) -> Result<Balance, Error>;
    fn ledger(&self, wallet: &str, limit: u32) -> Result<Vec<Credit>, Error>;
}

//! The reference AITBC Coordinator: API v1 over HTTP (axum), a SQLite store, the job
//! lifecycle and the ledger.
//!
//! * [`lifecycle`]: the job state machine, pure.
//! * [`artifacts`]: the job outputs miners upload for their clients, as files named by
//!   their SHA-256.
//! * [`audit`]: the verification policy (which proofs are audited, which rows) and the
//!   check of an audit's answer, pure.
//! * [`validate`] and [`auth`]: pure checks of requests, keys and rate limits.
//! * [`store`]: the narrow storage trait; [`sqlite`]: its SQLite implementation.
//! * [`http`]: the router and handlers; they authenticate, validate, call the store on the
//!   blocking pool and turn the outcome into a response.
//! * [`listen`]: the accept loop (it says so when file descriptors run out, and keeps
//!   serving) and the start-up raise of RLIMIT_NOFILE.
//!
//! [`Coordinator::serve`] takes a bound listener and a shutdown future, so tests start it on a
//! port-0 loopback listener. Architecture invariant: this crate depends on `aitbc-protocol`
//! only, never on the miner's crates; it never logs an API key and never panics on input.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod listen;
pub mod sqlite;
pub mod store;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use auth::{KeyInfo, Scope};
pub use error::{Answer, Error, Refusal};
pub use store::{Credit, Store};

use store::MinerRecord;

/// Every endpoint served, as (METHOD, path template). `docs/openapi.json` must list the same.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/health"),
    ("POST", "/v1/miner/heartbeat"),
    ("GET", "/v1/miner/next"),
    ("POST", "/v1/miner/proof"),
    ("POST", "/v1/miner/fail"),
    ("POST", "/v1/client/jobs"),
    ("GET", "/v1/client/jobs/{id}"),
    ("GET", "/v1/wallet/balance"),
    ("GET", "/v1/wallet/ledger"),
    ("GET", "/v1/admin/jobs"),
    ("GET", "/v1/admin/miners"),
    ("GET", "/v1/miner/audits"),
    ("POST", "/v1/miner/audit"),
    ("POST", "/v1/admin/miners/{id}/reinstate"),
    ("GET", "/v1/client/jobs/{id}/artifact"),
    ("GET", "/v1/miner/jobs/{id}/artifact"),
    ("PUT", "/v1/miner/jobs/{id}/artifact"),
];

/// Tunables. Durations are plain values so tests run them in milliseconds.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Lease deadline = assignment time + job.limits.max_runtime_s + lease_margin.
    pub lease_margin: Duration,
    /// Attempts a job gets (expired leases and requeuing failures count).
    pub max_attempts: u32,
    /// How often expired leases are requeued.
    pub sweep_interval: Duration,
    /// Cap on the `wait=` of a long-poll.
    pub max_wait: Duration,
    /// Token-bucket refill per key per second; the burst is twice this.
    pub rate_limit_per_sec: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How proofs are checked before their credit settles.
    pub verify: VerifyConfig,
    /// Where uploaded job outputs are kept; `None` with [`Coordinator::open`] means
    /// `<db>.artifacts` beside the database, and with [`Coordinator::with_store`] none are kept.
    pub artifact_dir: Option<std::path::PathBuf>,
    /// Largest output a miner may upload for one job.
    pub artifact_max_bytes: u64,
}

/// The verification policy's knobs (`aitbc-coordinator serve --verify-*` flags). The policy
/// itself, and the cheating probabilities these give, are [`audit`]'s.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// Off: every proof is credited and settled at once, unchecked (for local experiments
    /// only; the Coordinator says so loudly at start and in every job's `verification`).
    pub enabled: bool,
    /// A (miner key, workload) pair is audited on every proof until it has passed this many
    /// audits in a row.
    pub trust_after: u32,
    /// After that, the audit probability falls as `trust_after / streak`, never below this
    /// floor (0 < floor <= 1).
    pub floor: f64,
    /// Rows an audit opens (torch_bench).
    pub rows: u32,
    /// How long a credit that was not chosen for audit stays pending before it settles.
    pub hold: Duration,
    /// How long a miner has to answer an audit.
    pub answer_within: Duration,
    /// Failed audits after which a key is suspended from `next`.
    pub strikes: u32,
    /// Largest accepted audit answer body (opened rows are `2 n` hex characters each).
    pub max_answer_bytes: usize,
    /// The secret audit decisions and rows are drawn from (SHA-256 of it with the job, the
    /// attempt and the proof's root). `None`: a random one kept in the database, so decisions
    /// survive restarts. Tests set it to make sampling deterministic.
    pub secret: Option<[u8; 32]>,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            enabled: true,
            trust_after: 10,
            floor: 0.05,
            rows: 8,
            hold: Duration::from_secs(600),
            answer_within: Duration::from_secs(120),
            strikes: 3,
            max_answer_bytes: 4 << 20,
            secret: None,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            lease_margin: Duration::from_secs(30),
            max_attempts: 3,
            sweep_interval: Duration::from_secs(1),
            max_wait: Duration::from_secs(30),
            rate_limit_per_sec: 1000,
            max_body_bytes: 64 * 1024,
            verify: VerifyConfig::default(),
            artifact_dir: None,
            artifact_max_bytes: 64 << 20,
        }
    }
}

/// A running Coordinator's shared state. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: CoordinatorConfig,
    /// The verification policy and its secret (from the config, else the database).
    pub(crate) policy: audit::Policy,
    pub(crate) store: Arc<dyn Store>,
    /// The uploaded job outputs, when an artifact directory is configured.
    pub(crate) artifacts: Option<Arc<artifacts::Artifacts>>,
    /// Verified keys by hash. Only positive answers are cached; keys are never deleted.
    pub(crate) keys: RwLock<HashMap<String, KeyInfo>>,
    pub(crate) buckets: Mutex<HashMap<i64, auth::Bucket>>,
    /// Keys suspended from `next`: a copy of the store's standing, reloaded at every sweep,
    /// after a failed audit and on reinstatement, so that `next` on an empty queue still never
    /// reaches the database.
    pub(crate) suspended: RwLock<HashSet<i64>>,
    /// The audits whose answer is being recomputed right now, and the permits for doing so:
    /// a check costs `k * iters * n^2` multiply-adds, so a miner may not have two of its own
    /// answers checked at once, and no more checks run at once than there are cores.
    pub(crate) checking: Mutex<HashSet<(String, u32)>>,
    pub(crate) check_permits: tokio::sync::Semaphore,
    /// Miners by id, as last heartbeated (last_seen kept here only).
    pub(crate) miners: RwLock<HashMap<String, MinerRecord>>,
    /// Bumped whenever a job becomes queued; long-polls wait on it.
    pub(crate) queued: watch::Sender<u64>,
    /// Set once `serve`'s shutdown future resolves.
    pub(crate) stopping: watch::Sender<bool>,
}

impl Coordinator {
    /// Opens (creating and migrating) the SQLite database at `db`.
    /// Uploaded outputs go to `config.artifact_dir`, else to `<db>.artifacts` beside it.
    pub fn open(db: &Path, mut config: CoordinatorConfig) -> Result<Coordinator, Error> {
        let store: Arc<dyn Store> = Arc::new(sqlite::SqliteStore::open(db)?);
        if config.artifact_dir.is_none() {
            let mut name = db.file_name().unwrap_or_default().to_os_string();
            name.push(".artifacts");
            config.artifact_dir = Some(db.with_file_name(name));
        }
        Coordinator::with_store(store, config)
    }

    /// A Coordinator over any [`Store`].
    pub fn with_store(
        store: Arc<dyn Store>,
        config: CoordinatorConfig,
    ) -> Result<Coordinator, Error> {
        let secret = match config.verify.secret {
            Some(s) => s,
            None => store.audit_secret()?,
        };
        let policy = audit::Policy {
            config: config.verify.clone(),
            secret,
        };
        let suspended = store.suspended_keys()?.into_iter().collect();
        let artifacts = match &config.artifact_dir {
            Some(dir) => Some(Arc::new(artifacts::Artifacts::open(dir)?)),
            None => None,
        };
        let miners = store
            .load_miners()?
            .into_iter()
            .map(|m| (m.miner_id.clone(), m))
            .collect();
        Ok(Coordinator {
            inner: Arc::new(Inner {
                config,
                policy,
                store,
                artifacts,
                keys: RwLock::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
                suspended: RwLock::new(suspended),
                checking: Mutex::new(HashSet::new()),
                check_permits: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                ),
                miners: RwLock::new(miners),
                queued: watch::channel(0).0,
                stopping: watch::channel(false).0,
            }),
        })
    }

    /// Creates a key of `scope`; returns the plaintext key (stored only as its SHA-256).
    pub fn add_key(&self, scope: Scope, name: &str) -> Result<String, Error> {
        if name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Refusal::invalid("name", name, "at most 128 printable characters").into());
        }
        let key = auth::new_key()?;
        self.inner
            .store
            .add_key(&auth::key_hash(&key), scope, name, now_ms())?;
        Ok(key)
    }

    /// The store, for read helpers (CLI, tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The HTTP application, without the background sweeper (tests drive it with `oneshot`).
    pub fn router(&self) -> axum::Router {
        http::router(self.inner.clone())
    }

    /// How many `next` long-polls are waiting right now (for metrics and for tests that must
    /// know a poll is parked before they submit).
    pub fn long_polls_waiting(&self) -> usize {
        self.inner.queued.receiver_count()
    }

    /// Requeues expired leases once, waking long-polls; returns how many were requeued.
    pub async fn sweep_once(&self) -> Result<usize, Error> {
        sweep(&self.inner).await
    }

    /// Serves API v1 on `listener` until `shutdown` resolves; waiting long-polls then end
    /// with 204 and in-flight requests finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let inner = self.inner.clone();
        if !inner.policy.config.enabled {
            tracing::warn!(
                "VERIFICATION IS OFF: every proof is credited and settled at once, unchecked; \
                 use this only for local experiments"
            );
        }
        let mut stop_rx = inner.stopping.subscribe();
        let stopper = inner.clone();
        tokio::spawn(async move {
            shutdown.await;
            stopper.stopping.send_replace(true);
        });
        let sweeper = {
            let inner = inner.clone();
            let mut stop = inner.stopping.subscribe();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(inner.config.sweep_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = sweep(&inner).await {
                                tracing::error!(error = %e, "lease sweep failed");
                            }
                        }
                        () = stopped(&mut stop) => break,
                    }
                }
            })
        };
        let app = http::router(inner.clone());
        let result = axum::serve(listen::Acceptor::new(listener), app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await;
        inner.stopping.send_replace(true);
        let _ = sweeper.await;
        result.map_err(Error::Io)
    }
}

async fn sweep(inner: &Arc<Inner>) -> Result<usize, Error> {
    let store = inner.store.clone();
    let now = now_ms();
    let policy = inner.policy.clone();
    let n = tokio::task::spawn_blocking(move || store.sweep(now, &policy))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    if n > 0 {
        tracing::info!(requeued = n, "expired leases and failed audits requeued");
        inner.queued.send_modify(|g| *g = g.wrapping_add(1));
    }
    // A rejected proof's upload can never complete: its partial file goes.
    if let Some(artifacts) = inner.artifacts.clone() {
        let store = inner.store.clone();
        let removed = tokio::task::spawn_blocking(move || {
            artifacts.prune(|sha, key| store.upload_live(sha, key))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        if removed > 0 {
            tracing::info!(removed, "partial uploads of rejected proofs removed");
        }
    }
    // A timed-out audit may have suspended a key without requeuing anything (a last attempt),
    // and another process sharing the store may have suspended or reinstated one: reload the
    // (small) set every sweep.
    refresh_suspended(inner).await?;
    Ok(n)
}

/// Reloads the suspended keys from the store.
pub(crate) async fn refresh_suspended(inner: &Arc<Inner>) -> Result<(), Error> {
    let store = inner.store.clone();
    let keys = tokio::task::spawn_blocking(move || store.suspended_keys())
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    *inner.suspended.write().unwrap_or_else(|e| e.into_inner()) = keys.into_iter().collect();
    Ok(())
}

/// Resolves once the Coordinator is stopping (without holding the watch's guard).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Now as unix milliseconds (the store's clock).
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Monotonic "now" for rate limiting.
pub(crate) fn instant() -> Instant {
    Instant::now()
}

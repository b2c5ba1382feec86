//! The reference AITBC Coordinator: API v1 over HTTP (axum), a SQLite store, the job
//! lifecycle and the ledger.
//!
//! * [`lifecycle`]: the job state machine, pure.
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

pub mod auth;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod listen;
pub mod sqlite;
pub mod store;
pub mod validate;

use std::collections::HashMap;
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
    pub(crate) store: Arc<dyn Store>,
    /// Verified keys by hash. Only positive answers are cached; keys are never deleted.
    pub(crate) keys: RwLock<HashMap<String, KeyInfo>>,
    pub(crate) buckets: Mutex<HashMap<i64, auth::Bucket>>,
    /// Miners by id, as last heartbeated (last_seen kept here only).
    pub(crate) miners: RwLock<HashMap<String, MinerRecord>>,
    /// Bumped whenever a job becomes queued; long-polls wait on it.
    pub(crate) queued: watch::Sender<u64>,
    /// Set once `serve`'s shutdown future resolves.
    pub(crate) stopping: watch::Sender<bool>,
}

impl Coordinator {
    /// Opens (creating and migrating) the SQLite database at `db`.
    pub fn open(db: &Path, config: CoordinatorConfig) -> Result<Coordinator, Error> {
        let store: Arc<dyn Store> = Arc::new(sqlite::SqliteStore::open(db)?);
        Coordinator::with_store(store, config)
    }

    /// A Coordinator over any [`Store`].
    pub fn with_store(
        store: Arc<dyn Store>,
        config: CoordinatorConfig,
    ) -> Result<Coordinator, Error> {
        let miners = store
            .load_miners()?
            .into_iter()
            .map(|m| (m.miner_id.clone(), m))
            .collect();
        Ok(Coordinator {
            inner: Arc::new(Inner {
                config,
                store,
                keys: RwLock::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
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
    let n = tokio::task::spawn_blocking(move || store.sweep(now))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    if n > 0 {
        tracing::info!(requeued = n, "expired leases requeued");
        inner.queued.send_modify(|g| *g = g.wrapping_add(1));
    }
    Ok(n)
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

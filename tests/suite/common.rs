//! Helpers the suites share: an in-process Coordinator on a port-0 loopback listener over a
//! real SQLite file in a temporary directory, keys of every scope, small HTTP helpers (reqwest)
//! and a bounded wait for conditions that cannot be awaited as events.
//!
//! Nothing here may fake a part of the system: the Coordinator, the database and the HTTP
//! traffic are the real ones.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aitbc_coordinator::{Coordinator, CoordinatorConfig, Scope, VerifyConfig};
use aitbc_protocol::api::{ErrorBody, ErrorCode, Job, JobView};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

/// A Coordinator config whose durations suit tests: a fast sweeper, short long-polls, a
/// generous rate limit, and verification on as by default, with a holding window of 200 ms so
/// that unaudited credits settle within a test, and a fixed audit secret so that the audits a
/// test sees are the same on every run.
pub fn test_config() -> CoordinatorConfig {
    CoordinatorConfig {
        lease_margin: Duration::from_secs(30),
        max_attempts: 3,
        sweep_interval: Duration::from_millis(20),
        max_wait: Duration::from_secs(10),
        rate_limit_per_sec: 100_000,
        max_body_bytes: 64 * 1024,
        verify: VerifyConfig {
            hold: Duration::from_millis(200),
            answer_within: Duration::from_secs(10),
            secret: Some([0x5e; 32]),
            ..VerifyConfig::default()
        },
        ..CoordinatorConfig::default()
    }
}

/// [`test_config`] with verification off: for the API's mechanics (leases, attempts,
/// idempotency, refusals), which these tests drive with hand-made proofs of no computation.
pub fn unverified_config() -> CoordinatorConfig {
    CoordinatorConfig {
        verify: VerifyConfig {
            enabled: false,
            ..test_config().verify
        },
        ..test_config()
    }
}

/// A Coordinator serving on 127.0.0.1 inside the test process.
pub struct TestCoordinator {
    pub url: String,
    pub miner_key: String,
    pub client_key: String,
    pub admin_key: String,
    pub db: PathBuf,
    pub coordinator: Coordinator,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), aitbc_coordinator::Error>>>,
    _dir: tempfile::TempDir,
}

impl TestCoordinator {
    /// Opens a fresh database, creates one key per scope and serves on a port-0 listener.
    pub async fn start(config: CoordinatorConfig) -> TestCoordinator {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = dir.path().join("coordinator.db");
        let coordinator = Coordinator::open(&db, config).expect("open the coordinator database");
        let miner_key = coordinator
            .add_key(Scope::Miner, "miner")
            .expect("miner key");
        let client_key = coordinator
            .add_key(Scope::Client, "client")
            .expect("client key");
        let admin_key = coordinator
            .add_key(Scope::Admin, "admin")
            .expect("admin key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(coordinator.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        TestCoordinator {
            url,
            miner_key,
            client_key,
            admin_key,
            db,
            coordinator,
            http: reqwest::Client::new(),
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    /// Another key of `scope`.
    pub fn new_key(&self, scope: Scope) -> String {
        self.coordinator.add_key(scope, "extra").expect("add a key")
    }

    /// Graceful shutdown; returns how long `serve` took to return.
    pub async fn stop(mut self) -> Duration {
        let t0 = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task does not panic")
                .expect("serve returns Ok");
        }
        t0.elapsed()
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.expect("the coordinator answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.expect("read the body").to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, key, None, &[])
            .await
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).expect("serialise a JSON value");
        self.request(reqwest::Method::POST, path, key, Some(bytes), &[])
            .await
    }

    /// Submits a job with the client key; panics unless it answers 201.
    pub async fn submit(&self, body: Value) -> JobView {
        let r = self
            .post("/v1/client/jobs", Some(&self.client_key), &body)
            .await;
        assert_eq!(r.status, 201, "submit: {}", r.text());
        r.parse()
    }

    /// A small, valid torch_bench job paying `reward`.
    pub async fn submit_small(&self, reward: u64) -> JobView {
        self.submit(
            json!({"workload": "torch_bench", "params": {"n": 8, "iters": 1}, "reward": reward}),
        )
        .await
    }

    /// Heartbeats `miner_id` (paying to `wallet`) with `key`; panics unless 200.
    pub async fn heartbeat(&self, key: &str, miner_id: &str, wallet: &str) {
        let r = self
            .post(
                "/v1/miner/heartbeat",
                Some(key),
                &json!({"miner_id": miner_id, "wallet": wallet, "mode": "cpu", "gpu": 0}),
            )
            .await;
        assert_eq!(r.status, 200, "heartbeat: {}", r.text());
    }

    /// `GET /v1/miner/next` for `miner_id`: `Some(job)` on 200, `None` on 204.
    pub async fn next(&self, key: &str, miner_id: &str, wait_s: f64) -> Option<Job> {
        let r = self
            .get(
                &format!("/v1/miner/next?miner={miner_id}&wait={wait_s}"),
                Some(key),
            )
            .await;
        match r.status {
            200 => Some(r.parse()),
            204 => {
                assert!(r.body.is_empty(), "204 with a body: {}", r.text());
                None
            }
            s => panic!("next answered {s}: {}", r.text()),
        }
    }

    /// A proof for `job` with a fixed output hash.
    pub async fn prove(&self, key: &str, job: &Job) -> Resp {
        self.post(
            "/v1/miner/proof",
            Some(key),
            &json!({"id": job.id, "attempt": job.attempt, "mode": "cpu",
                    "output_sha": sha_of(&job.id), "metrics": {}}),
        )
        .await
    }

    /// The job as the admin sees it.
    pub async fn job(&self, id: &str) -> JobView {
        let r = self
            .get(&format!("/v1/client/jobs/{id}"), Some(&self.admin_key))
            .await;
        assert_eq!(r.status, 200, "job {id}: {}", r.text());
        r.parse()
    }

    /// (balance, credits) of `wallet`.
    pub async fn balance(&self, wallet: &str) -> (u64, u64) {
        let r = self
            .get(&format!("/v1/wallet/balance?wallet={wallet}"), None)
            .await;
        assert_eq!(r.status, 200, "balance: {}", r.text());
        let b: aitbc_protocol::api::Balance = r.parse();
        (b.balance, b.credits)
    }

    /// Ledger entries of `wallet`.
    pub async fn ledger(&self, wallet: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/wallet/ledger?wallet={wallet}"), None)
            .await;
        assert_eq!(r.status, 200, "ledger: {}", r.text());
        r.parse()
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("unexpected body ({e}): {}", self.text()))
    }

    /// The error body's code; panics if the body is not the API's error body.
    pub fn code(&self) -> ErrorCode {
        let e: ErrorBody = self.parse();
        e.error.code
    }

    pub fn message(&self) -> String {
        let e: ErrorBody = self.parse();
        e.error.message
    }
}

/// A valid lower-case SHA-256 hex string derived from `seed`.
pub fn sha_of(seed: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(seed.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The user a miner started as root by these tests drops to (`RUN_AS_USER`), and the user a
/// root supervisor's workers run as.
pub const RUN_AS: &str = "nobody";

/// A temporary directory the run-as user can pass through (mode 0711, no listing): a miner
/// started as root drops to [`RUN_AS`] and must still reach its STATE_DIR and WORK_DIR inside
/// it (the supervisor hands those two to the user itself).
pub fn reachable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod 0711 the temporary directory");
    dir
}

/// Polls `check` until it returns `Some`, at most `within`; for conditions with no event to
/// await (another process's state). Panics with `what` on timeout.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True while `pid` exists and is not a zombie.
pub fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A directory the daemon's user can write (the test is root, the daemon `RUN_AS`).
pub fn daemon_dir(path: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path).expect("create the daemon's directory");
    if nix::unistd::geteuid().is_root() {
        let user = nix::unistd::User::from_name(RUN_AS)
            .expect("passwd readable")
            .expect("the run-as user exists");
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).expect("chown");
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    path.to_owned()
}

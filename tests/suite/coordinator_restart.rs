//! The real `aitbc-coordinator` binary survives SIGKILL: jobs, leases (state, attempt,
//! deadline) and balances are all on disk, and a miner holding a lease from before the crash
//! can still prove it afterwards.
//!
//! Only the binary's public surface is used: `keys add`, `serve`, HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aitbc_protocol::api::{Job, JobState, JobView};
use serde_json::{json, Value};

use crate::common::sha_of;

const BIN: &str = env!("CARGO_BIN_EXE_aitbc-coordinator");

fn add_key(db: &Path, scope: &str) -> String {
    let out = Command::new(BIN)
        .args(["keys", "add", "--db"])
        .arg(db)
        .args(["--scope", scope, "--name", "restart-test"])
        .output()
        .expect("run keys add");
    assert!(
        out.status.success(),
        "keys add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).expect("utf-8 key");
    let key = key.trim().to_string();
    assert!(key.starts_with("aitbc_") && key.len() == 70, "{key:?}");
    key
}

/// A running `serve`; killed with SIGKILL on drop.
struct Server {
    child: Child,
    url: String,
    /// Everything the server wrote to stderr so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start(db: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--lease-margin-secs",
                "600",
                "--db",
            ])
            .arg(db)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aitbc-coordinator serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        // Keep draining stderr for the server's whole life so its logging never blocks.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints `listening on ADDR`");
        Server {
            child,
            url: format!("http://{addr}"),
            log,
        }
    }

    /// SIGKILLs the server; returns its stderr.
    fn kill(mut self) -> String {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
        let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(balance, credits)` of `wallet`, read over HTTP.
async fn balance(http: &reqwest::Client, s: &Server, key: &str, wallet: &str) -> (u64, u64) {
    let path = format!("/v1/wallet/balance?wallet={wallet}");
    let (st, b) = call(http, s, reqwest::Method::GET, &path, key, None).await;
    assert_eq!(st, 200, "{b}");
    let n = |k: &str| b[k].as_u64().unwrap_or_else(|| panic!("{k} in {b}"));
    (n("balance"), n("credits"))
}

async fn call(
    http: &reqwest::Client,
    s: &Server,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http
        .request(method, format!("{}{path}", s.url))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the coordinator answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("coordinator.db");
    let client = add_key(&db, "client");
    let miner = add_key(&db, "miner");
    let admin = add_key(&db, "admin");
    let http = reqwest::Client::new();
    use reqwest::Method;

    let s = Server::start(&db);
    let mut ids = Vec::new();
    for reward in [11, 22, 33] {
        let (st, v) = call(
            &http,
            &s,
            Method::POST,
            "/v1/client/jobs",
            &client,
            Some(json!({"workload": "torch_bench", "params": {"n": 8}, "reward": reward})),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        ids.push(v["id"].as_str().expect("an id").to_string());
    }
    let (st, _) = call(
        &http,
        &s,
        Method::POST,
        "/v1/miner/heartbeat",
        &miner,
        Some(json!({"miner_id": "m1", "wallet": "w_restart", "mode": "cpu"})),
    )
    .await;
    assert_eq!(st, 200);
    let mut jobs = Vec::new();
    for _ in 0..2 {
        let (st, v) = call(
            &http,
            &s,
            Method::GET,
            "/v1/miner/next?miner=m1",
            &miner,
            None,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        jobs.push(serde_json::from_value::<Job>(v).expect("a Job"));
    }
    let proof = |job: &Job| {
        json!({"id": job.id, "attempt": job.attempt, "mode": "cpu",
        "output_sha": sha_of(&job.id)})
    };
    let (st, v) = call(
        &http,
        &s,
        Method::POST,
        "/v1/miner/proof",
        &miner,
        Some(proof(&jobs[0])),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let bogus = format!("aitbc_{}", "cd".repeat(32));
    let (st, v) = call(&http, &s, Method::GET, "/v1/admin/jobs", &bogus, None).await;
    assert_eq!(st, 401);
    assert!(!v.to_string().contains(&bogus[6..]));
    let mut logs = s.kill();

    let s = Server::start(&db);
    let view = |id: String| {
        let (http, s, admin) = (&http, &s, &admin);
        async move {
            let (st, v) = call(
                http,
                s,
                Method::GET,
                &format!("/v1/client/jobs/{id}"),
                admin,
                None,
            )
            .await;
            assert_eq!(st, 200, "{v}");
            serde_json::from_value::<JobView>(v).expect("a JobView")
        }
    };
    let done = view(ids[0].clone()).await;
    assert_eq!(done.state, JobState::Completed);
    assert!(done.proof.is_some());
    let leased = view(ids[1].clone()).await;
    assert_eq!((leased.state, leased.attempt), (JobState::Assigned, 1));
    assert_eq!(leased.lease_expires_at, Some(jobs[1].lease_expires_at));
    assert_eq!(leased.miner_id.as_deref(), Some("m1"));
    assert_eq!(view(ids[2].clone()).await.state, JobState::Queued);
    assert_eq!(balance(&http, &s, &client, "w_restart").await, (11, 1));

    // The lease from before the crash is honoured, without a new heartbeat.
    let (st, v) = call(
        &http,
        &s,
        Method::POST,
        "/v1/miner/proof",
        &miner,
        Some(proof(&jobs[1])),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(balance(&http, &s, &client, "w_restart").await, (33, 2));
    // The queue order survived too: the third job is next.
    let (st, v) = call(
        &http,
        &s,
        Method::GET,
        "/v1/miner/next?miner=m1",
        &miner,
        None,
    )
    .await;
    assert_eq!((st, v["id"].clone()), (200, json!(ids[2])));
    logs.push_str(&s.kill());
    assert!(logs.contains("listening on"), "{logs}");
    for key in [&client, &miner, &admin, &bogus] {
        assert!(!logs.contains(&key[6..]), "a key reached the log:\n{logs}");
    }
}

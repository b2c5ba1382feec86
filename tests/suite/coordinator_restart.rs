//! The real `aitbc-coordinator` binary survives SIGKILL: jobs, leases (state, attempt,
//! deadline) and balances are all on disk, and a miner holding a lease from before the crash
//! can still prove it afterwards; an audit open at the crash is still owed, answered and
//! settled once afterwards, and a proof replayed across the crash gets its first answer; an
//! artifact upload cut by the crash resumes where the Coordinator's answer said, and its
//! client downloads the verified output with `jobs result`.
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
    /// `serve` with `extra` flags.
    fn start(db: &Path, extra: &[&str]) -> Server {
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
            .args(extra)
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

/// The mechanics of leases and balances, with hand-made proofs: verification off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("coordinator.db");
    let client = add_key(&db, "client");
    let miner = add_key(&db, "miner");
    let admin = add_key(&db, "admin");
    let http = reqwest::Client::new();
    use reqwest::Method;

    let s = Server::start(&db, &["--verify", "off"]);
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

    let s = Server::start(&db, &["--verify", "off"]);
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

/// With verification on (the default): a proof is in and its audit open when the Coordinator is
/// SIGKILLed. After the restart the replayed proof (same Idempotency-Key) gets the same
/// challenge, the miner's open audits still list it, the answer settles the credit exactly
/// once, and its replay across a second SIGKILL changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_audit_survives_sigkill_and_settles_once() {
    use aitbc_protocol::api::{AuditAnswer, AuditChallenge, OpenedRow, ProofAck};
    use aitbc_protocol::workload::torch_bench::{
        commit, reference_output, row_leaf, TorchBenchParams,
    };
    use aitbc_protocol::{hex, merkle};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("coordinator.db");
    let client = add_key(&db, "client");
    let miner = add_key(&db, "miner");
    let http = reqwest::Client::new();
    use reqwest::Method;
    let post = |s: &Server, path: &str, key: &str, idem: &str, body: &Value| {
        http.post(format!("{}{path}", s.url))
            .bearer_auth(key)
            .header("Idempotency-Key", idem)
            .json(body)
            .send()
    };
    let s = Server::start(&db, &[]);
    let (st, v) = call(
        &http,
        &s,
        Method::POST,
        "/v1/client/jobs",
        &client,
        Some(
            json!({"workload": "torch_bench", "params": {"n": 16, "iters": 3, "seed": 4},
                    "reward": 70}),
        ),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = call(
        &http,
        &s,
        Method::POST,
        "/v1/miner/heartbeat",
        &miner,
        Some(json!({"miner_id": "m1", "wallet": "w_audit", "mode": "cpu"})),
    )
    .await;
    assert_eq!(st, 200);
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
    let job: Job = serde_json::from_value(v).expect("a Job");
    let p = TorchBenchParams {
        n: 16,
        iters: 3,
        seed: 4,
    };
    let out = reference_output(&p);
    let c = commit(&out, 16).expect("a commitment");
    let leaves: Vec<merkle::Digest> = out.chunks(16).map(row_leaf).collect();
    let proof = json!({"id": job.id, "attempt": job.attempt, "mode": "cpu",
        "output_sha": hex::encode(&c.output_sha), "merkle_root": hex::encode(&c.merkle_root),
        "output_len": out.len()});
    let bytes: Vec<u8> = out.iter().map(|&b| b as u8).collect();
    let upload = |s: &Server, offset: usize, chunk: &[u8]| {
        http.put(format!(
            "{}/v1/miner/jobs/{}/artifact?attempt={}&offset={offset}",
            s.url, job.id, job.attempt
        ))
        .bearer_auth(&miner)
        .body(chunk.to_vec())
        .send()
    };
    let first: ProofAck = post(&s, "/v1/miner/proof", &miner, "p-1", &proof)
        .await
        .expect("proof")
        .json()
        .await
        .expect("an ack");
    let challenge = first
        .audit
        .clone()
        .expect("an untrusted miner's proof is audited");
    assert_eq!(balance(&http, &s, &client, "w_audit").await, (0, 0));
    let part: Value = upload(&s, 0, &bytes[..100])
        .await
        .expect("upload")
        .json()
        .await
        .expect("an ArtifactStatus");
    assert_eq!(
        (&part["received"], &part["complete"]),
        (&json!(100), &json!(false))
    );
    let mut logs = s.kill();

    let s = Server::start(&db, &[]);
    let again: ProofAck = post(&s, "/v1/miner/proof", &miner, "p-1", &proof)
        .await
        .expect("proof")
        .json()
        .await
        .expect("an ack");
    assert_eq!(again, first, "the replayed proof gets its first answer");
    let (st, v) = call(
        &http,
        &s,
        Method::GET,
        "/v1/miner/audits?miner=m1",
        &miner,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let open: Vec<AuditChallenge> = serde_json::from_value(v).expect("challenges");
    assert_eq!(open, std::slice::from_ref(&challenge));
    // The upload resumes from what the restarted Coordinator holds, overlapping a little.
    let artifact = format!("/v1/miner/jobs/{}/artifact?attempt={}", job.id, job.attempt);
    let (st, v) = call(&http, &s, Method::GET, &artifact, &miner, None).await;
    assert_eq!((st, &v["received"]), (200, &json!(100)), "{v}");
    let download = format!("/v1/client/jobs/{}/artifact", job.id);
    let (st, v) = call(&http, &s, Method::GET, &download, &client, None).await;
    assert_eq!(
        (st, &v["error"]["code"]),
        (409, &json!("RESULT_NOT_READY")),
        "not served before the proof is verified: {v}"
    );
    let done: Value = upload(&s, 60, &bytes[60..])
        .await
        .expect("upload")
        .json()
        .await
        .expect("an ArtifactStatus");
    assert_eq!(
        (&done["received"], &done["complete"]),
        (&json!(256), &json!(true)),
        "{done}"
    );
    let answer = AuditAnswer {
        id: job.id.clone(),
        miner_id: Some("m1".into()),
        attempt: challenge.attempt,
        rows: challenge
            .rows
            .iter()
            .map(|&i| OpenedRow {
                index: i,
                data: hex::encode(&aitbc_protocol::workload::torch_bench::row_bytes(
                    &out[i as usize * 16..(i as usize + 1) * 16],
                )),
                path: merkle::inclusion_proof(&leaves, i as usize)
                    .expect("a leaf")
                    .iter()
                    .map(|d| hex::encode(d))
                    .collect(),
            })
            .collect(),
    };
    let body = serde_json::to_value(&answer).expect("json");
    let ack: Value = post(&s, "/v1/miner/audit", &miner, "a-1", &body)
        .await
        .expect("audit")
        .json()
        .await
        .expect("an ack");
    assert_eq!(ack["verdict"], "passed", "{ack}");
    logs.push_str(&s.kill());

    let s = Server::start(&db, &[]);
    let replay: Value = post(&s, "/v1/miner/audit", &miner, "a-1", &body)
        .await
        .expect("audit")
        .json()
        .await
        .expect("an ack");
    assert_eq!(replay, ack);
    let fresh: Value = post(&s, "/v1/miner/audit", &miner, "a-2", &body)
        .await
        .expect("audit")
        .json()
        .await
        .expect("an ack");
    assert_eq!(
        fresh, ack,
        "a decided audit answers its verdict, whatever the key"
    );
    assert_eq!(balance(&http, &s, &client, "w_audit").await, (70, 1));
    let (st, v) = call(
        &http,
        &s,
        Method::GET,
        "/v1/wallet/ledger?wallet=w_audit",
        &client,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let kinds: Vec<&str> = v
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["settle", "credit"], "{v}");
    let (st, v) = call(
        &http,
        &s,
        Method::GET,
        &format!("/v1/client/jobs/{}", job.id),
        &client,
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        (
            &v["result"]["artifact_received"],
            &v["result"]["artifact_ready"]
        ),
        (&json!(256), &json!(true)),
        "{v}"
    );
    let file = dir.path().join("output.bin");
    let got = Command::new(BIN)
        .args(["jobs", "result", "--url", &s.url, "--key", &client, "--out"])
        .arg(&file)
        .arg(&job.id)
        .output()
        .expect("run jobs result");
    let said = String::from_utf8_lossy(&got.stderr);
    assert!(got.status.success(), "jobs result: {said}");
    assert!(said.contains(&hex::encode(&c.output_sha)), "{said}");
    assert_eq!(std::fs::read(&file).expect("the output file"), bytes);
    logs.push_str(&s.kill());
    assert!(!logs.contains(&miner[6..]), "a key reached the log");
}

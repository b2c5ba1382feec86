//! What verified work costs, as ratios measured in one run.
//!
//! 1. **An audit against its job.** The job runs through the real worker path (`run_local`,
//!    2 threads); then the miner's answer (recomputing the 8 audited rows and their paths from
//!    its leaves) and the Coordinator's check of it (recomputing the rows again, verifying the
//!    paths) are timed on one core each. Both are reported as a fraction of the job's CPU time
//!    and of its wall time. Cases: n = 1024 / iters = 100 and n = 4096 / iters = 10 (the
//!    issue's), or `-- small` for n = 512 / iters = 20 only.
//! 2. **Proofs per second** through a real Coordinator (HTTP on 127.0.0.1, durable SQLite): a
//!    miner's `next` + proof of a tiny job, with verification off (today's path: credited at
//!    once) and on with every proof audited (an untrusted pair: `next` + proof + audit answer).
//! 3. **The disk a pending audit needs** on the miner: its spool entry, `32 n` bytes of leaves
//!    plus the entry's head (reported from the spool's own size formula).
//!
//! Run: `cargo bench --bench verification` (`-- small` for a quick run). It asserts nothing
//! about timings and must never be used as a test.

use std::time::{Duration, Instant};

use aitbc_coordinator::audit::{check_torch_bench, Policy};
use aitbc_coordinator::{Coordinator, CoordinatorConfig, Scope, VerifyConfig};
use aitbc_protocol::api::{AuditAnswer, JobLimits, OpenedRow, ProofAck};
use aitbc_protocol::hex;
use aitbc_protocol::merkle;
use aitbc_protocol::workload::torch_bench::{output_rows, row_bytes, TorchBenchParams};
use aitbc_supervisor::{run_local, WorkerCommand};
use serde_json::json;

fn main() {
    let small = std::env::args().any(|a| a == "small");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the benchmark");
    let cases: &[(u32, u32)] = if small {
        &[(512, 20)]
    } else {
        &[(1024, 100), (4096, 10)]
    };
    println!("verification: one audit (8 rows) against its job; times in ms");
    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "job", "job wall", "job cpu", "answer", "check", "check/job cpu", "answer/job cpu"
    );
    let worker = WorkerCommand::new(env!("CARGO_BIN_EXE_aitbc-miner"), ["worker"]);
    for &(n, iters) in cases {
        let p = TorchBenchParams { n, iters, seed: 11 };
        let params = json!({"n": n, "iters": iters, "seed": 11});
        let limits = JobLimits {
            ram_mb: p.memory_mb() + 256,
            ..JobLimits::default()
        };
        let run = rt
            .block_on(run_local(&worker, "torch_bench", &params, limits, 2))
            .expect("the job runs");
        let job_wall = run.handoff_to_answer;
        let job_cpu = Duration::from_millis(run.metrics.cpu_ms.unwrap_or(0));
        let root = hex::digest(&run.merkle_root).expect("a root");
        let policy = Policy {
            config: VerifyConfig::default(),
            secret: [3; 32],
        };
        let asked = policy.rows("bench", 1, &root, u64::from(n));
        // The miner's side: recompute the rows, build their paths from the leaves it kept.
        let t0 = Instant::now();
        let idx: Vec<usize> = asked.iter().map(|&i| i as usize).collect();
        let rows = output_rows(&p, &idx);
        let opened: Vec<OpenedRow> = asked
            .iter()
            .zip(&rows)
            .map(|(&i, r)| OpenedRow {
                index: i,
                data: hex::encode(&row_bytes(r)),
                path: merkle::inclusion_proof(&run.leaves, i as usize)
                    .expect("a leaf")
                    .iter()
                    .map(|d| hex::encode(d))
                    .collect(),
            })
            .collect();
        let answer_time = t0.elapsed();
        let answer = AuditAnswer {
            id: "bench".into(),
            miner_id: None,
            attempt: 1,
            rows: opened,
        };
        // The Coordinator's side: the whole check, as the audit endpoint runs it.
        let t0 = Instant::now();
        check_torch_bench(&p, &root, &asked, &answer).expect("an honest answer passes");
        let check_time = t0.elapsed();
        let ratio = |d: Duration| {
            if job_cpu.is_zero() {
                f64::NAN
            } else {
                100.0 * d.as_secs_f64() / job_cpu.as_secs_f64()
            }
        };
        println!(
            "{:<18} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>13.2}% {:>13.2}%",
            format!("n={n} iters={iters}"),
            ms(job_wall),
            ms(job_cpu),
            ms(answer_time),
            ms(check_time),
            ratio(check_time),
            ratio(answer_time)
        );
    }

    let jobs = if small { 100 } else { 400 };
    println!("\nproofs per second through the coordinator ({jobs} jobs each, n=16 iters=1):");
    for verify in [false, true] {
        let rate = rt.block_on(proofs_per_second(jobs, verify));
        println!(
            "  verification {:<3}: {:>8.0} jobs/s (next + proof{})",
            if verify { "on" } else { "off" },
            rate,
            if verify { " + audit answer" } else { "" }
        );
    }
    println!(
        "\nminer disk per pending audit: {} bytes at n=1024, {} at n=4096 (32 n of leaves \
         plus the entry's head, aitbc_supervisor::audit::entry_bytes)",
        aitbc_supervisor::audit::entry_bytes(1024),
        aitbc_supervisor::audit::entry_bytes(4096)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Jobs a miner gets through per second: `next`, the proof, and (verification on, every proof
/// audited) the audit's answer, against a Coordinator in this process over HTTP.
async fn proofs_per_second(jobs: u32, verify: bool) -> f64 {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = CoordinatorConfig {
        rate_limit_per_sec: 10_000_000,
        verify: VerifyConfig {
            enabled: verify,
            trust_after: u32::MAX,
            secret: Some([9; 32]),
            ..VerifyConfig::default()
        },
        ..CoordinatorConfig::default()
    };
    let c = Coordinator::open(&dir.path().join("c.db"), config).expect("open");
    let miner = c.add_key(Scope::Miner, "m").expect("key");
    let client = c.add_key(Scope::Client, "c").expect("key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(c.serve(listener, async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let post = |path: &str, key: &str, body: serde_json::Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    post(
        "/v1/miner/heartbeat",
        &miner,
        json!({"miner_id": "b", "wallet": "b", "mode": "cpu"}),
    )
    .await
    .expect("heartbeat");
    let p = TorchBenchParams {
        n: 16,
        iters: 1,
        seed: 0,
    };
    for seed in 0..u64::from(jobs) {
        post(
            "/v1/client/jobs",
            &client,
            json!({"workload": "torch_bench", "params": {"n": 16, "iters": 1, "seed": seed},
                   "reward": 1}),
        )
        .await
        .expect("submit");
    }
    let t0 = Instant::now();
    for _ in 0..jobs {
        let job: aitbc_protocol::api::Job = http
            .get(format!("{url}/v1/miner/next?miner=b"))
            .bearer_auth(&miner)
            .send()
            .await
            .expect("next")
            .json()
            .await
            .expect("a job");
        let jp = TorchBenchParams::parse(&job.params).expect("params");
        let rows: Vec<Vec<u8>> = output_rows(&jp, &(0..16).collect::<Vec<_>>())
            .iter()
            .map(|r| row_bytes(r))
            .collect();
        let leaves: Vec<merkle::Digest> = rows.iter().map(|r| merkle::leaf_hash(r)).collect();
        let root = merkle::root(&leaves).expect("root");
        let ack: ProofAck = post(
            "/v1/miner/proof",
            &miner,
            json!({"id": job.id, "attempt": job.attempt, "mode": "cpu",
                   "output_sha": hex::encode(&[0u8; 32]), "merkle_root": hex::encode(&root),
                   "output_len": p.output_len(), "metrics": {}}),
        )
        .await
        .expect("proof")
        .json()
        .await
        .expect("an ack");
        if let Some(c) = ack.audit {
            let opened: Vec<OpenedRow> = c
                .rows
                .iter()
                .map(|&i| OpenedRow {
                    index: i,
                    data: hex::encode(&rows[i as usize]),
                    path: merkle::inclusion_proof(&leaves, i as usize)
                        .expect("leaf")
                        .iter()
                        .map(|d| hex::encode(d))
                        .collect(),
                })
                .collect();
            let body = AuditAnswer {
                id: job.id.clone(),
                miner_id: None,
                attempt: c.attempt,
                rows: opened,
            };
            post(
                "/v1/miner/audit",
                &miner,
                serde_json::to_value(&body).expect("json"),
            )
            .await
            .expect("audit");
        }
    }
    let rate = f64::from(jobs) / t0.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = server.await;
    rate
}

//! The Coordinator's API v1 as a client and a miner see it, over real HTTP on 127.0.0.1 with a
//! real SQLite file: the job lifecycle and its money, long-polls, fencing of proofs and fail
//! reports, idempotency, auth and hostile input.
//!
//! Every assertion is on what a user sees (statuses, bodies, states, balances); none reads the
//! database behind the Coordinator's back.

use std::time::{Duration, Instant};

use aitbc_coordinator::Scope;
use aitbc_protocol::api::{
    EnergySource, ErrorCode, FailAck, FailReason, JobState, Metrics, MinerCapabilities, MinerView,
    ProofAck,
};
use serde_json::json;

use crate::common::{sha_of, unverified_config, wait_for, TestCoordinator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_from_submit_to_a_credited_wallet() {
    let c = TestCoordinator::start(unverified_config()).await;
    let submitted = c.submit_small(25).await;
    assert_eq!((submitted.state, submitted.attempt), (JobState::Queued, 0));
    c.heartbeat(&c.miner_key, "m1", "wallet_a").await;
    let job = c.next(&c.miner_key, "m1", 0.0).await.expect("a job");
    assert_eq!((job.id.as_str(), job.attempt), (submitted.id.as_str(), 1));
    assert_eq!(job.workload, "torch_bench");
    assert_eq!(c.job(&job.id).await.state, JobState::Assigned);

    let r = c.prove(&c.miner_key, &job).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ack: ProofAck = r.parse();
    assert_eq!(
        (ack.state, ack.wallet.as_str(), ack.credited),
        (JobState::Completed, "wallet_a", 25)
    );

    let view = c.job(&job.id).await;
    assert_eq!(view.state, JobState::Completed);
    assert_eq!(view.proof.expect("the proof").output_sha, sha_of(&job.id));
    assert_eq!(c.balance("wallet_a").await, (25, 1));
    // Verification is off here: the credit and its settle entry, newest first.
    let ledger = c.ledger("wallet_a").await;
    assert_eq!(ledger.len(), 2, "{ledger:?}");
    for (entry, kind) in ledger.iter().zip(["settle", "credit"]) {
        assert_eq!(entry["kind"], json!(kind));
        assert_eq!(entry["job_id"], json!(job.id));
        assert_eq!(entry["amount"], json!(25));
        assert_eq!(entry["miner_id"], json!("m1"));
    }
    // The miner key alone finds its wallet.
    let r = c.get("/v1/wallet/balance", Some(&c.miner_key)).await;
    assert_eq!(r.json()["balance"], json!(25));
    assert_eq!(c.balance("nobody").await, (0, 0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_queue_answers_204_with_no_body() {
    let c = TestCoordinator::start(unverified_config()).await;
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let r = c
        .get("/v1/miner/next?miner=m1&slots=2", Some(&c.miner_key))
        .await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty(), "{:?}", r.text());
    // A short long-poll also ends with a bare 204.
    let t0 = Instant::now();
    let r = c
        .get("/v1/miner/next?miner=m1&wait=0.2", Some(&c.miner_key))
        .await;
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert!(t0.elapsed() >= Duration::from_millis(200));
    // Unknown miner, other key's miner.
    let r = c
        .get("/v1/miner/next?miner=ghost", Some(&c.miner_key))
        .await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::UnknownMiner));
    let other = c.new_key(Scope::Miner);
    let r = c.get("/v1/miner/next?miner=m1", Some(&other)).await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::MinerIdTaken));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_gets_a_new_job_within_50_ms() {
    let c = std::sync::Arc::new(TestCoordinator::start(unverified_config()).await);
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let poller = {
        let c = c.clone();
        tokio::spawn(async move {
            let job = c.next(&c.miner_key, "m1", 5.0).await;
            (job, Instant::now())
        })
    };
    // Submit only once the poll is parked (an observable event, not a guess).
    wait_for("the long-poll to park", Duration::from_secs(5), || async {
        (c.coordinator.long_polls_waiting() >= 1).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let submitted = c.submit_small(1).await;
    let (job, received) = poller.await.expect("the poller does not panic");
    let latency = received.saturating_duration_since(t0);
    eprintln!("submit -> long-poll receipt: {latency:?}");
    assert_eq!(job.expect("the job").id, submitted.id);
    assert!(latency < Duration::from_millis(50), "{latency:?}");
    let c = std::sync::Arc::into_inner(c).expect("sole owner");
    // Shutdown ends a waiting long-poll promptly with 204.
    let waiting = {
        let (url, key, http) = (c.url.clone(), c.miner_key.clone(), c.http.clone());
        tokio::spawn(async move {
            let r = http
                .get(format!("{url}/v1/miner/next?miner=m1&wait=10"))
                .bearer_auth(key)
                .send()
                .await
                .expect("answer");
            r.status().as_u16()
        })
    };
    wait_for(
        "the second poll to park",
        Duration::from_secs(5),
        || async { (c.coordinator.long_polls_waiting() >= 1).then_some(()) },
    )
    .await;
    let took = c.stop().await;
    assert_eq!(waiting.await.expect("no panic"), 204);
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_are_fenced_and_credited_exactly_once() {
    let mut config = unverified_config();
    config.lease_margin = Duration::from_millis(150);
    // The sweeper stays out of the way: the late proof itself must take the lease back.
    config.sweep_interval = Duration::from_secs(3600);
    let c = TestCoordinator::start(config).await;
    let other_key = c.new_key(Scope::Miner);
    c.heartbeat(&c.miner_key, "m1", "wallet_1").await;
    c.heartbeat(&other_key, "m2", "wallet_2").await;

    // Double proof: 409 JOB_FINISHED, one credit.
    c.submit(json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 10, "limits": {"max_runtime_s": 600}})).await;
    let job = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    assert_eq!(c.prove(&c.miner_key, &job).await.status, 200);
    let again = c.prove(&c.miner_key, &job).await;
    assert_eq!((again.status, again.code()), (409, ErrorCode::JobFinished));
    assert_eq!(c.balance("wallet_1").await, (10, 1));

    // Idempotent replay: same status and bytes, no second credit; reuse with another body: 422.
    c.submit(json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 7, "limits": {"max_runtime_s": 600}})).await;
    let job = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    let body = serde_json::to_vec(&json!({"id": job.id, "attempt": job.attempt, "mode": "cpu",
        "output_sha": sha_of("x")}))
    .expect("json");
    let send = |body: Vec<u8>| {
        c.request(
            reqwest::Method::POST,
            "/v1/miner/proof",
            Some(&c.miner_key),
            Some(body),
            &[("Idempotency-Key", "proof-1")],
        )
    };
    let first = send(body.clone()).await;
    let replay = send(body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!((replay.status, &replay.body), (first.status, &first.body));
    let mut other_body = body.clone();
    other_body.insert(1, b' ');
    let reused = send(other_body).await;
    assert_eq!(
        (reused.status, reused.code()),
        (422, ErrorCode::IdempotencyKeyReused)
    );
    assert_eq!(c.balance("wallet_1").await, (17, 2));

    // Another miner's job: 403, also when it names the right attempt.
    c.submit(json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 5, "limits": {"max_runtime_s": 600}})).await;
    let job = c.next(&other_key, "m2", 0.0).await.expect("job");
    let r = c.prove(&c.miner_key, &job).await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::Forbidden));
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&other_key),
            &json!({"id": job.id, "miner_id": "m1",
            "mode": "cpu", "output_sha": sha_of("y")}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::Forbidden));
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&other_key),
            &json!({"id": job.id, "mode": "cpu",
            "output_sha": "ABC"}),
        )
        .await;
    assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
    for root in ["ABC", "AB".repeat(32).as_str(), "ab".repeat(33).as_str()] {
        let r = c
            .post(
                "/v1/miner/proof",
                Some(&other_key),
                &json!({"id": job.id, "mode": "cpu", "output_sha": sha_of("y"),
                "merkle_root": root}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (422, ErrorCode::ValidationFailed),
            "{root}"
        );
        assert!(r.message().contains("merkle_root"), "{}", r.message());
    }
    assert_eq!(c.prove(&other_key, &job).await.status, 200);
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&c.miner_key),
            &json!({"id": "no-such-job", "mode": "cpu",
            "output_sha": sha_of("z")}),
        )
        .await;
    assert_eq!((r.status, r.code()), (404, ErrorCode::NotFound));

    // A proof after the lease deadline: refused, requeued, never credited; m2 then completes it.
    let late = c
        .submit(
            json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 100,
        "limits": {"max_runtime_s": 1}}),
        )
        .await;
    let job = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    assert_eq!(job.id, late.id);
    let until_expired = (job.lease_expires_at - time::OffsetDateTime::now_utc()).unsigned_abs();
    tokio::time::sleep(until_expired + Duration::from_millis(20)).await;
    let r = c.prove(&c.miner_key, &job).await;
    assert_eq!(
        (r.status, r.code()),
        (409, ErrorCode::NotAssigned),
        "{}",
        r.text()
    );
    assert!(r.message().contains("lease expired"), "{}", r.message());
    assert_eq!(c.job(&late.id).await.state, JobState::Queued);
    assert_eq!(c.balance("wallet_1").await, (17, 2));
    let second = c
        .next(&other_key, "m2", 0.0)
        .await
        .expect("the requeued job");
    assert_eq!((second.id.as_str(), second.attempt), (late.id.as_str(), 2));
    // The first miner's attempt stays refused: the job is now another key's (403), and that
    // refusal does not tell it the current attempt.
    let r = c.prove(&c.miner_key, &job).await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::Forbidden));
    assert!(!r.message().contains("attempt"), "{}", r.message());
    assert_eq!(c.prove(&other_key, &second).await.status, 200);
    assert_eq!(c.balance("wallet_1").await, (17, 2));
    assert_eq!(c.balance("wallet_2").await, (105, 2));
    let credits_for_late: usize = c
        .ledger("wallet_1")
        .await
        .into_iter()
        .chain(c.ledger("wallet_2").await)
        .filter(|e| e["job_id"] == json!(late.id) && e["kind"] == json!("credit"))
        .count();
    assert_eq!(credits_for_late, 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_swept_and_waiting_miners_woken() {
    let mut config = unverified_config();
    config.lease_margin = Duration::from_millis(100);
    config.max_attempts = 2;
    let c = std::sync::Arc::new(TestCoordinator::start(config).await);
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let job = c
        .submit(
            json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 1,
        "limits": {"max_runtime_s": 1}}),
        )
        .await;
    let first = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    // m1 parks a long-poll; the sweeper's requeue must wake it with attempt 2.
    let second = c
        .next(&c.miner_key, "m1", 5.0)
        .await
        .expect("the swept job");
    assert_eq!((second.id.as_str(), second.attempt), (first.id.as_str(), 2));
    let view = wait_for(
        "the second lease to run out",
        Duration::from_secs(5),
        || async {
            let v = c.job(&job.id).await;
            (v.state == JobState::Failed).then_some(v)
        },
    )
    .await;
    let failure = view.failure.expect("a failure");
    assert_eq!(failure.reason, FailReason::AttemptsExhausted);
    assert_eq!(view.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_reports_requeue_or_fail_by_reason() {
    let mut config = unverified_config();
    config.max_attempts = 2;
    let c = TestCoordinator::start(config).await;
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let fail = |id: String, attempt: u32, reason: &'static str| {
        let c = &c;
        async move {
            c.post(
                "/v1/miner/fail",
                Some(&c.miner_key),
                &json!({"id": id, "attempt": attempt,
                "miner_id": "m1", "reason": reason, "message": "details here"}),
            )
            .await
        }
    };

    // A requeue reason while attempts remain: queued again, failure visible to the client.
    let job = c.submit_small(3).await;
    let a1 = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    let r = fail(a1.id.clone(), 1, "WORKER_CRASHED").await;
    let ack: FailAck = r.parse();
    assert_eq!((ack.state, ack.attempt), (JobState::Queued, 1));
    let view = c.job(&job.id).await;
    assert_eq!(view.state, JobState::Queued);
    let f = view.failure.expect("failure");
    assert_eq!(
        (f.reason, f.message.as_str(), f.attempt),
        (FailReason::WorkerCrashed, "details here", 1)
    );
    // The same report again is stale; the last attempt's requeue exhausts the job.
    let r = fail(a1.id.clone(), 1, "WORKER_CRASHED").await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::NotAssigned));
    let a2 = c.next(&c.miner_key, "m1", 0.0).await.expect("job again");
    assert_eq!(a2.attempt, 2);
    let r = fail(a1.id.clone(), 1, "TIMED_OUT").await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::StaleAttempt));
    let ack: FailAck = fail(a2.id.clone(), 2, "TIMED_OUT").await.parse();
    assert_eq!(ack.state, JobState::Failed);
    let view = c.job(&job.id).await;
    assert_eq!(
        view.failure.expect("failure").reason,
        FailReason::AttemptsExhausted
    );
    let r = fail(a2.id.clone(), 2, "TIMED_OUT").await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::JobFinished));

    // A reason that blames the job fails it at once, whatever attempts remain.
    let job = c.submit_small(3).await;
    let a = c.next(&c.miner_key, "m1", 0.0).await.expect("job");
    let ack: FailAck = fail(a.id.clone(), 1, "BAD_PARAMS").await.parse();
    assert_eq!((ack.state, ack.attempt), (JobState::Failed, 1));
    assert_eq!(
        c.job(&job.id).await.failure.expect("failure").reason,
        FailReason::BadParams
    );
    assert!(c.next(&c.miner_key, "m1", 0.0).await.is_none());
    // An unknown reason is a 422 naming the field.
    let r = fail(a.id.clone(), 1, "TIRED").await;
    assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
    assert!(r.message().starts_with("reason"), "{}", r.message());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scopes_and_ownership() {
    let c = TestCoordinator::start(unverified_config()).await;
    let job = c.submit_small(1).await;
    let hb = json!({"miner_id": "m1", "wallet": "w", "mode": "cpu"});

    let r = c.post("/v1/miner/heartbeat", None, &hb).await;
    assert_eq!((r.status, r.code()), (401, ErrorCode::Unauthorized));
    let bogus = format!("aitbc_{}", "ab".repeat(32));
    let r = c.post("/v1/miner/heartbeat", Some(&bogus), &hb).await;
    assert_eq!((r.status, r.code()), (401, ErrorCode::Unauthorized));
    assert!(!r.text().contains(&bogus), "the key leaked: {}", r.text());
    assert!(!r.text().contains(&bogus[6..]));
    // Wrong scope: a miner key cannot submit, a client key cannot heartbeat or list all jobs.
    let r = c
        .post(
            "/v1/client/jobs",
            Some(&c.miner_key),
            &json!({"workload": "torch_bench", "reward": 1}),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::Forbidden));
    assert!(!r.text().contains(&c.miner_key));
    let r = c
        .post("/v1/miner/heartbeat", Some(&c.client_key), &hb)
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        c.get("/v1/admin/jobs", Some(&c.client_key)).await.status,
        403
    );
    let r = c
        .get("/v1/admin/jobs?state=queued", Some(&c.admin_key))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));

    // Client B cannot see client A's job (404, as if it did not exist); A and admin can.
    let client_b = c.new_key(Scope::Client);
    let path = format!("/v1/client/jobs/{}", job.id);
    let r = c.get(&path, Some(&client_b)).await;
    assert_eq!((r.status, r.code()), (404, ErrorCode::NotFound));
    assert_eq!(c.get(&path, Some(&c.client_key)).await.status, 200);
    assert_eq!(c.get(&path, Some(&c.admin_key)).await.status, 200);

    // A miner_id is owned by the key that first used it; one key may own several.
    c.heartbeat(&c.miner_key, "m1", "w").await;
    c.heartbeat(&c.miner_key, "m1b", "w").await;
    let thief = c.new_key(Scope::Miner);
    let r = c.post("/v1/miner/heartbeat", Some(&thief), &hb).await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::MinerIdTaken));
    // A changed wallet is persisted and answered.
    let r = c
        .post(
            "/v1/miner/heartbeat",
            Some(&c.miner_key),
            &json!({"miner_id": "m1", "wallet": "w2", "mode": "cpu"}),
        )
        .await;
    assert_eq!(r.json()["wallet"], json!("w2"));
    let r = c.get("/v1/wallet/balance", Some(&c.miner_key)).await;
    assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_4xx_with_the_error_body() {
    let mut config = unverified_config();
    config.rate_limit_per_sec = 5;
    config.max_body_bytes = 4096;
    let c = TestCoordinator::start(config).await;
    let post_raw = |path: &'static str, key: String, body: Vec<u8>| {
        let c = &c;
        async move {
            c.request(reqwest::Method::POST, path, Some(&key), Some(body), &[])
                .await
        }
    };
    let client = c.client_key.clone();
    let r = post_raw(
        "/v1/client/jobs",
        client.clone(),
        b"{\"workload\": ".to_vec(),
    )
    .await;
    assert_eq!((r.status, r.code()), (400, ErrorCode::BadRequest));
    let r = post_raw(
        "/v1/client/jobs",
        client.clone(),
        br#"{"workload": "torch_bench", "reward": "lots"}"#.to_vec(),
    )
    .await;
    assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
    assert!(r.message().starts_with("reward"), "{}", r.message());
    let r = post_raw(
        "/v1/client/jobs",
        client.clone(),
        br#"{"workload": "torch_bench", "reward": 1, "params": {"n": 0}}"#.to_vec(),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.message().contains("params.n"), "{}", r.message());
    let r = post_raw("/v1/client/jobs", client.clone(), vec![b' '; 5000]).await;
    assert_eq!((r.status, r.code()), (413, ErrorCode::PayloadTooLarge));

    // Burst is 2 x 5 = 10 per key; four have been spent.
    let mut limited = None;
    for _ in 0..20 {
        let r = c.get("/v1/admin/jobs", Some(&c.client_key)).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("the rate limit answers 429 within 20 requests");
    assert_eq!(r.code(), ErrorCode::RateLimited);
    let retry: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a numeric Retry-After");
    assert!(retry >= 1);
    // Another key is not affected.
    assert_eq!(
        c.get("/v1/admin/jobs", Some(&c.admin_key)).await.status,
        200
    );

    let r = c.get("/v1/no/such/route", None).await;
    assert_eq!((r.status, r.code()), (404, ErrorCode::NotFound));
    let r = c
        .request(reqwest::Method::DELETE, "/v1/client/jobs", None, None, &[])
        .await;
    assert_eq!(r.status, 405);
    r.code();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_miners_never_share_a_job() {
    let c = std::sync::Arc::new(TestCoordinator::start(unverified_config()).await);
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(c.submit_small(i).await.id);
    }
    let mut takers = Vec::new();
    for m in 0..4 {
        let c = c.clone();
        takers.push(tokio::spawn(async move {
            let key = c.new_key(Scope::Miner);
            let miner = format!("racer{m}");
            c.heartbeat(&key, &miner, "w").await;
            let mut got = Vec::new();
            while let Some(job) = c.next(&key, &miner, 0.0).await {
                got.push(job.id);
            }
            got
        }));
    }
    let mut taken = Vec::new();
    for t in takers {
        taken.extend(t.await.expect("no panic"));
    }
    taken.sort();
    ids.sort();
    assert_eq!(taken, ids, "every job handed out exactly once");
}

/// A GPU heartbeat as the supervisor sends it, with `health` as its `gpu_health`.
fn gpu_heartbeat(miner_id: &str, health: serde_json::Value) -> serde_json::Value {
    json!({"miner_id": miner_id, "wallet": "wallet_gpu", "mode": "gpu", "gpu": true,
           "workloads": ["torch_bench"],
           "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "vram_mb": 81559,
                     "driver_version": "580.65.06", "cuda_version": "13.0"},
                    {"index": 1, "name": "NVIDIA H100 80GB HBM3", "vram_mb": 81559}],
           "gpu_health": health})
}

/// The admin's view of one miner.
async fn admin_miner(c: &TestCoordinator, miner_id: &str) -> MinerView {
    let r = c.get("/v1/admin/miners", Some(&c.admin_key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all: Vec<MinerView> = r.parse();
    all.into_iter()
        .find(|m| m.miner_id == miner_id)
        .unwrap_or_else(|| panic!("{miner_id} is not in {}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_heartbeats_round_trip_and_an_unhealthy_gpu_gets_no_vram_job() {
    let c = TestCoordinator::start(unverified_config()).await;
    let healthy = json!({"healthy": true, "temperature_c": 41, "throttle_reasons": [],
                         "xid_errors": 0});
    let sent = gpu_heartbeat("g1", healthy.clone());
    let r = c
        .post("/v1/miner/heartbeat", Some(&c.miner_key), &sent)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = admin_miner(&c, "g1").await;
    let want: MinerCapabilities = serde_json::from_value(sent).unwrap();
    assert_eq!(seen.capabilities, want);
    assert_eq!(seen.wallet, "wallet_gpu");
    assert_eq!(seen.capabilities.gpus.len(), 2);
    assert_eq!(
        seen.capabilities.gpus[0].driver_version.as_deref(),
        Some("580.65.06")
    );

    // A new temperature alone is shown at once (kept in memory, not written).
    let mut warmer = healthy.clone();
    warmer["temperature_c"] = json!(77);
    let r = c
        .post(
            "/v1/miner/heartbeat",
            Some(&c.miner_key),
            &gpu_heartbeat("g1", warmer),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = admin_miner(&c, "g1").await;
    assert_eq!(
        seen.capabilities.gpu_health.as_ref().unwrap().temperature_c,
        Some(77)
    );

    // Unhealthy: the health is shown, and a job that needs VRAM is not offered, one that
    // needs none still is.
    let sick = json!({"healthy": false, "temperature_c": 92,
                      "throttle_reasons": ["hw_thermal_slowdown"], "xid_errors": 2,
                      "reason": "XID 79 on GPU 1"});
    let r = c
        .post(
            "/v1/miner/heartbeat",
            Some(&c.miner_key),
            &gpu_heartbeat("g1", sick),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let h = admin_miner(&c, "g1").await.capabilities.gpu_health.unwrap();
    assert!(!h.healthy);
    assert_eq!(h.throttle_reasons, vec!["hw_thermal_slowdown".to_string()]);
    assert_eq!(
        (h.xid_errors, h.reason.as_deref()),
        (2, Some("XID 79 on GPU 1"))
    );
    let gpu_job = c
        .submit(
            json!({"workload": "torch_bench", "params": {"n": 8, "iters": 1},
                       "limits": {"vram_mb": 64}, "reward": 3}),
        )
        .await;
    assert!(c.next(&c.miner_key, "g1", 0.0).await.is_none());
    let cpu_job = c.submit_small(1).await;
    let got = c.next(&c.miner_key, "g1", 0.0).await.expect("the CPU job");
    assert_eq!(got.id, cpu_job.id);
    // Healthy again: the GPU job is offered.
    let r = c
        .post(
            "/v1/miner/heartbeat",
            Some(&c.miner_key),
            &gpu_heartbeat("g1", healthy),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = c.next(&c.miner_key, "g1", 0.0).await.expect("the GPU job");
    assert_eq!(got.id, gpu_job.id);
    // A CPU miner's heartbeat carries no GPU fields, and none are shown.
    c.heartbeat(&c.miner_key, "cpu1", "w").await;
    let cpu = admin_miner(&c, "cpu1").await;
    assert!(cpu.capabilities.gpus.is_empty() && cpu.capabilities.gpu_health.is_none());
    // Only an admin sees the list.
    let r = c.get("/v1/admin/miners", Some(&c.client_key)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_gpu_values_are_422_naming_the_field() {
    let c = TestCoordinator::start(unverified_config()).await;
    let ok_health = json!({"healthy": true});
    let gpu = |name: serde_json::Value| json!({"index": 0, "name": name, "vram_mb": 8});
    let many_gpus: Vec<serde_json::Value> = (0..17)
        .map(|i| json!({"index": i, "name": "G", "vram_mb": 8}))
        .collect();
    let cases = [
        case(json!(many_gpus), ok_health.clone(), "gpus"),
        case(
            json!([gpu(json!("x".repeat(129)))]),
            ok_health.clone(),
            "gpus[0].name",
        ),
        case(json!([gpu(json!(""))]), ok_health.clone(), "gpus[0].name"),
        case(
            json!([{"index": 0, "name": "G", "vram_mb": 8, "driver_version": "9".repeat(33)}]),
            ok_health.clone(),
            "gpus[0].driver_version",
        ),
        case(
            json!([gpu(json!("G")), gpu(json!("H"))]),
            ok_health.clone(),
            "gpus[1].index",
        ),
        case(
            json!([gpu(json!("G"))]),
            json!({"healthy": true, "temperature_c": 500}),
            "gpu_health.temperature_c",
        ),
        case(
            json!([gpu(json!("G"))]),
            json!({"healthy": false, "throttle_reasons": vec!["x"; 33]}),
            "gpu_health.throttle_reasons",
        ),
        case(
            json!([gpu(json!("G"))]),
            json!({"healthy": false, "reason": "r".repeat(513)}),
            "gpu_health.reason",
        ),
        // Wrong types are refused by the parser, with the field's path.
        case(json!([gpu(json!(7))]), ok_health.clone(), "gpus[0].name"),
        case(
            json!([gpu(json!("G"))]),
            json!({"healthy": "yes"}),
            "gpu_health.healthy",
        ),
    ];
    for (body, field) in cases {
        let r = c
            .post("/v1/miner/heartbeat", Some(&c.miner_key), &body)
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.code(), ErrorCode::ValidationFailed);
        assert_eq!(
            r.json()["error"]["details"]["field"],
            json!(field),
            "{}",
            r.text()
        );
        assert!(r.message().contains(field), "{}", r.message());
    }
    // Nothing refused was recorded.
    let r = c.get("/v1/admin/miners", Some(&c.admin_key)).await;
    assert_eq!(r.json(), json!([]));
    c.stop().await;
}

/// A heartbeat with `gpus` and `gpu_health` as given, to be refused naming `field`.
fn case(
    gpus: serde_json::Value,
    health: serde_json::Value,
    field: &'static str,
) -> (serde_json::Value, &'static str) {
    let mut hb = gpu_heartbeat("bad", health);
    hb["gpus"] = gpus;
    (hb, field)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_with_energy_metrics_is_stored_and_shown() {
    let c = TestCoordinator::start(unverified_config()).await;
    let submitted = c.submit_small(9).await;
    c.heartbeat(&c.miner_key, "m1", "wallet_e").await;
    let job = c.next(&c.miner_key, "m1", 0.0).await.expect("a job");
    let proof = |metrics: serde_json::Value| {
        json!({"id": job.id, "attempt": job.attempt, "mode": "gpu",
               "output_sha": sha_of(&job.id), "metrics": metrics})
    };
    for (metrics, field) in [
        (json!({"tflops": -1.0}), "metrics.tflops"),
        (json!({"tflops": 1e7}), "metrics.tflops"),
        (json!({"energy_mj": 10}), "metrics.energy_source"),
        (
            json!({"energy_mj": 10, "energy_source": "unavailable"}),
            "metrics.energy_mj",
        ),
        (
            json!({"energy_source": "estimated"}),
            "metrics.energy_source",
        ),
    ] {
        let r = c
            .post(
                "/v1/miner/proof",
                Some(&c.miner_key),
                &proof(metrics.clone()),
            )
            .await;
        assert_eq!(r.status, 422, "{metrics}: {}", r.text());
        assert_eq!(
            r.json()["error"]["details"]["field"],
            json!(field),
            "{}",
            r.text()
        );
    }
    // The refusals left the job assigned and unpaid.
    assert_eq!(c.job(&job.id).await.state, JobState::Assigned);
    assert_eq!(c.balance("wallet_e").await, (0, 0));

    let metrics = json!({"wall_ms": 1500, "flops": 214_748_364_800u64, "gflops": 143.2,
                         "energy_mj": 412_500, "energy_source": "nvml", "tflops": 0.1432});
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&c.miner_key),
            &proof(metrics.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let want: Metrics = serde_json::from_value(metrics.clone()).unwrap();
    let view = c.job(&submitted.id).await;
    let shown = view.proof.expect("the proof").metrics;
    assert_eq!(shown, want);
    assert_eq!(shown.energy_source, Some(EnergySource::Nvml));
    // The client that submitted it sees the same, and so does the admin's job list.
    let r = c
        .get(&format!("/v1/client/jobs/{}", job.id), Some(&c.client_key))
        .await;
    assert_eq!(r.json()["proof"]["metrics"], metrics);
    let r = c
        .get("/v1/admin/jobs?state=completed", Some(&c.admin_key))
        .await;
    assert_eq!(r.json()[0]["proof"]["metrics"]["energy_mj"], json!(412_500));

    // A host that cannot measure says so, and that is stored as such.
    let second = c.submit_small(1).await;
    let job2 = c.next(&c.miner_key, "m1", 0.0).await.expect("a job");
    assert_eq!(job2.id, second.id);
    let r = c
        .post(
            "/v1/miner/proof",
            Some(&c.miner_key),
            &json!({"id": job2.id, "attempt": job2.attempt, "mode": "cpu",
                    "output_sha": sha_of(&job2.id),
                    "metrics": {"energy_source": "unavailable", "tflops": 0.002}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = c.job(&job2.id).await.proof.unwrap().metrics;
    assert_eq!(
        (m.energy_mj, m.energy_source),
        (None, Some(EnergySource::Unavailable))
    );
    c.stop().await;
}

/// Rewards are bounded at submission (so no two jobs can overflow a wallet, as two of
/// 2^63 - 1 did: every retry of the second proof answered 500), and the job limits have lower
/// bounds (a job with no time or memory only burned its attempts). Each refusal is 422
/// naming the field, the value and the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewards_and_limits_are_bounded_at_submission() {
    let c = TestCoordinator::start(unverified_config()).await;
    let old_max = i64::MAX as u64;
    for _ in 0..2 {
        let r = c
            .post(
                "/v1/client/jobs",
                Some(&c.client_key),
                &json!({"workload": "torch_bench", "params": {"n": 8}, "reward": old_max}),
            )
            .await;
        assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
        assert_eq!(r.json()["error"]["details"]["field"], json!("reward"));
        assert_eq!(
            r.message(),
            format!("reward = \"{old_max}\": must be at most 1000000000000 base units")
        );
    }
    let most = aitbc_protocol::api::MAX_REWARD;
    let job = c
        .submit(json!({"workload": "torch_bench", "params": {"n": 8}, "reward": most}))
        .await;
    assert_eq!(job.reward, most);
    for field in ["ram_mb", "cpu_time_s", "max_runtime_s"] {
        for workload in ["torch_bench", "sd_infer"] {
            let r = c
                .post(
                    "/v1/client/jobs",
                    Some(&c.client_key),
                    &json!({"workload": workload, "reward": 1, "limits": {field: 0}}),
                )
                .await;
            assert_eq!(r.status, 422, "{field}: {}", r.text());
            let named = format!("limits.{field}");
            assert_eq!(r.json()["error"]["details"]["field"], json!(named));
            assert_eq!(r.message(), format!("{named} = 0: must be at least 1"));
        }
    }
    // Only the one valid job was queued.
    let r = c.get("/v1/admin/jobs", Some(&c.admin_key)).await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.text());
    c.stop().await;
}

/// Ownership is checked before the attempt: a key that does not hold a job gets 403
/// FORBIDDEN whatever attempt it names, so it cannot learn the attempt count from
/// STALE_ATTEMPT; the holder naming a wrong attempt still gets STALE_ATTEMPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_naming_a_wrong_attempt_is_forbidden_not_stale() {
    let c = TestCoordinator::start(unverified_config()).await;
    let holder = c.new_key(Scope::Miner);
    c.heartbeat(&holder, "holder", "wallet_h").await;
    c.heartbeat(&c.miner_key, "snoop", "wallet_s").await;
    c.submit_small(4).await;
    let job = c.next(&holder, "holder", 0.0).await.expect("a job");
    assert_eq!(job.attempt, 1);
    for attempt in [0, 2, 7] {
        let proof = json!({"id": job.id, "attempt": attempt, "mode": "cpu",
                           "output_sha": sha_of("x")});
        let r = c.post("/v1/miner/proof", Some(&c.miner_key), &proof).await;
        assert_eq!(
            (r.status, r.code()),
            (403, ErrorCode::Forbidden),
            "{}",
            r.text()
        );
        assert!(!r.message().contains("attempt"), "{}", r.message());
        let report = json!({"id": job.id, "attempt": attempt, "miner_id": "snoop",
                            "reason": "WORKER_CRASHED"});
        let r = c.post("/v1/miner/fail", Some(&c.miner_key), &report).await;
        assert_eq!(
            (r.status, r.code()),
            (403, ErrorCode::Forbidden),
            "{}",
            r.text()
        );
        // The holder with a wrong attempt is told it is stale.
        let r = c.post("/v1/miner/proof", Some(&holder), &proof).await;
        assert_eq!(
            (r.status, r.code()),
            (409, ErrorCode::StaleAttempt),
            "{}",
            r.text()
        );
    }
    assert_eq!(c.job(&job.id).await.state, JobState::Assigned);
    assert_eq!(c.prove(&holder, &job).await.status, 200);
    c.stop().await;
}

/// A request with two Authorization headers is refused with 400 and the error body, on keyed
/// and public endpoints, even when both carry the same valid key: which one counts would be a
/// guess (before, the first one won).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_authorization_header_is_400() {
    let c = TestCoordinator::start(unverified_config()).await;
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let twice = |second: String| {
        let c = &c;
        async move {
            let extra = [("Authorization", second.as_str())];
            let next = c
                .request(
                    reqwest::Method::GET,
                    "/v1/miner/next?miner=m1",
                    Some(&c.miner_key),
                    None,
                    &extra,
                )
                .await;
            let public = c
                .request(
                    reqwest::Method::GET,
                    "/v1/wallet/balance?wallet=w",
                    Some(&c.miner_key),
                    None,
                    &extra,
                )
                .await;
            [next, public]
        }
    };
    for second in [
        format!("Bearer {}", c.miner_key),
        format!("Bearer {}", c.admin_key),
        "Bearer aitbc_nonsense".to_string(),
    ] {
        for r in twice(second).await {
            assert_eq!(
                (r.status, r.code()),
                (400, ErrorCode::BadRequest),
                "{}",
                r.text()
            );
            assert_eq!(
                r.message(),
                "the Authorization header is given 2 times; send exactly one"
            );
            assert!(!r.text().contains(&c.miner_key[6..]), "a key leaked");
        }
    }
    // One header still works.
    let r = c.get("/v1/miner/next?miner=m1", Some(&c.miner_key)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    c.stop().await;
}

/// Wallets and miner ids are plain ASCII: a heartbeat whose wallet carries a format character
/// (U+202E RIGHT-TO-LEFT OVERRIDE, U+200B ZERO WIDTH SPACE) or a non-ASCII letter is 422
/// naming `wallet`, and nothing is recorded; the balance query refuses them the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofable_wallets_and_miner_ids_are_refused() {
    let c = TestCoordinator::start(unverified_config()).await;
    for wallet in [
        "wallet_\u{202e}omed",
        "wallet\u{200b}_demo",
        "0xAbC:\u{fc}",
        "w w",
    ] {
        let r = c
            .post(
                "/v1/miner/heartbeat",
                Some(&c.miner_key),
                &json!({"miner_id": "m1", "wallet": wallet, "mode": "cpu"}),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (422, ErrorCode::ValidationFailed),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["error"]["details"]["field"], json!("wallet"));
        assert!(
            r.message().contains("A-Z a-z 0-9 . _ : -"),
            "{}",
            r.message()
        );
        assert!(
            !r.message().contains(['\u{202e}', '\u{200b}']),
            "{}",
            r.message()
        );
    }
    let r = c
        .post(
            "/v1/miner/heartbeat",
            Some(&c.miner_key),
            &json!({"miner_id": "m\u{200b}1", "wallet": "w", "mode": "cpu"}),
        )
        .await;
    assert_eq!(r.json()["error"]["details"]["field"], json!("miner_id"));
    let r = c
        .get("/v1/wallet/balance?wallet=wallet_%E2%80%AEomed", None)
        .await;
    assert_eq!((r.status, r.code()), (422, ErrorCode::ValidationFailed));
    let r = c.get("/v1/admin/miners", Some(&c.admin_key)).await;
    assert_eq!(r.json(), json!([]));
    c.heartbeat(&c.miner_key, "m1", "eip155:1:0xAbC").await;
    c.stop().await;
}

/// Sends `request` as raw bytes on a fresh connection and reads until the server closes it.
fn raw_exchange(addr: &str, request: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    s.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .expect("read until the server closes");
    answer
}

/// Splits a raw HTTP/1.1 answer into its status line, its lower-cased header lines and body.
fn split_answer(answer: &[u8]) -> (String, Vec<String>, Vec<u8>) {
    let text = String::from_utf8_lossy(answer);
    let (head, _) = text.split_once("\r\n\r\n").expect("a complete head");
    let body = answer[head.len() + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    (status, lines.map(str::to_ascii_lowercase).collect(), body)
}

/// The documented exception to "every non-2xx answer carries the error body": hyper's HTTP/1
/// parser answers a request it cannot parse before there is a request to route, with no body
/// (hyper 1.x has no hook to add one), and closes the connection; an HTTP/2 preface is closed
/// without an answer. Anything that parses reaches the Coordinator and gets the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_refusals_before_routing_have_no_body() {
    let c = TestCoordinator::start(unverified_config()).await;
    let addr = c.url.trim_start_matches("http://").to_string();
    let long_uri = format!(
        "GET /v1/health?pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let mut many_headers = String::from("GET /v1/health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..101 {
        many_headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    many_headers.push_str("\r\n");
    let cases: [(&[u8], &str); 4] = [
        (b"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"),
        (
            b"GET /v1/health HTTP/1.1\r\nBad Header\r\n\r\n",
            "HTTP/1.1 400 Bad Request",
        ),
        (long_uri.as_bytes(), "HTTP/1.1 414 URI Too Long"),
        (
            many_headers.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
        ),
    ];
    for (request, want) in cases {
        let a = addr.clone();
        let request = request.to_vec();
        let answer = tokio::task::spawn_blocking(move || raw_exchange(&a, &request))
            .await
            .expect("no panic");
        let (status, headers, body) = split_answer(&answer);
        assert_eq!(status, want);
        assert!(
            headers.contains(&"content-length: 0".to_string()),
            "{headers:?}"
        );
        assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));
    }
    let a = addr.clone();
    let answer =
        tokio::task::spawn_blocking(move || raw_exchange(&a, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
            .await
            .expect("no panic");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    // A request that parses, however wrong, gets the error body.
    let a = addr.clone();
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            &a,
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .expect("no panic");
    let (status, _, body) = split_answer(&answer);
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let e: aitbc_protocol::api::ErrorBody = serde_json::from_slice(&body).expect("error body");
    assert_eq!(e.error.code, ErrorCode::NotFound);
    c.stop().await;
}

/// Out of file descriptors, the real `aitbc-coordinator serve` says so once (naming EMFILE
/// and RLIMIT_NOFILE) instead of stalling silently, keeps serving, and answers normally once
/// connections close. It also logs the RLIMIT_NOFILE it runs with at start.
#[test]
fn running_out_of_file_descriptors_is_logged_once_and_survived() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;

    const LIMIT: u64 = 64;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new("bash")
        .arg("-c")
        // Both the soft and the hard limit, so the start-up raise cannot lift it.
        .arg(format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_aitbc-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(dir.path().join("c.db"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aitbc-coordinator serve under bash");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for_line = |what: &str, pred: &dyn Fn(&str) -> bool| -> String {
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("waiting for {what} ({e}); stderr so far: {seen:#?}"));
            seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    };
    let limit_line = wait_for_line("the RLIMIT_NOFILE line", &|l| {
        l.contains("RLIMIT_NOFILE is")
    });
    assert!(
        limit_line.contains(&format!("RLIMIT_NOFILE is {LIMIT} ")),
        "{limit_line}"
    );
    assert!(limit_line.contains("INFO"), "{limit_line}");
    let addr = wait_for_line("the listening line", &|l| l.starts_with("listening on "))
        .trim_start_matches("listening on ")
        .trim()
        .to_string();

    // Twice the limit: the kernel completes every handshake (the listen queue holds them), the
    // server accepts until its descriptors are gone.
    let held: Vec<std::net::TcpStream> = (0..2 * LIMIT)
        .map(|_| std::net::TcpStream::connect(&addr).expect("connect"))
        .collect();
    let starved = wait_for_line("the accept failure", &|l| {
        l.contains("cannot accept connections")
    });
    assert!(starved.contains("ERROR"), "{starved}");
    assert!(starved.contains("EMFILE"), "{starved}");
    assert!(
        starved.contains(&format!("RLIMIT_NOFILE of {LIMIT} ")),
        "{starved}"
    );
    drop(held);

    let mut s = std::net::TcpStream::connect(&addr).expect("connect after closing");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("the health answer");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with(r#"{"status":"ok"}"#), "{answer}");

    child.kill().expect("stop the server");
    child.wait().expect("reap the server");
    reader.join().expect("the reader ends at EOF");
    seen.extend(lines.try_iter());
    let failures = seen
        .iter()
        .filter(|l| l.contains("cannot accept connections"))
        .count();
    assert_eq!(failures, 1, "{seen:#?}");
}

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

use crate::common::{sha_of, test_config, wait_for, TestCoordinator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_goes_from_submit_to_a_credited_wallet() {
    let c = TestCoordinator::start(test_config()).await;
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
    let ledger = c.ledger("wallet_a").await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["job_id"], json!(job.id));
    assert_eq!(ledger[0]["amount"], json!(25));
    assert_eq!(ledger[0]["miner_id"], json!("m1"));
    // The miner key alone finds its wallet.
    let r = c.get("/v1/wallet/balance", Some(&c.miner_key)).await;
    assert_eq!(r.json()["balance"], json!(25));
    assert_eq!(c.balance("nobody").await, (0, 0));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_queue_answers_204_with_no_body() {
    let c = TestCoordinator::start(test_config()).await;
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
    let c = std::sync::Arc::new(TestCoordinator::start(test_config()).await);
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
    let mut config = test_config();
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
        "limits": {"max_runtime_s": 0}}),
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
    // The first miner's stale attempt stays refused.
    let r = c.prove(&c.miner_key, &job).await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::StaleAttempt));
    assert_eq!(c.prove(&other_key, &second).await.status, 200);
    assert_eq!(c.balance("wallet_1").await, (17, 2));
    assert_eq!(c.balance("wallet_2").await, (105, 2));
    let credits_for_late: usize = c
        .ledger("wallet_1")
        .await
        .into_iter()
        .chain(c.ledger("wallet_2").await)
        .filter(|e| e["job_id"] == json!(late.id))
        .count();
    assert_eq!(credits_for_late, 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_are_swept_and_waiting_miners_woken() {
    let mut config = test_config();
    config.lease_margin = Duration::from_millis(100);
    config.max_attempts = 2;
    let c = std::sync::Arc::new(TestCoordinator::start(config).await);
    c.heartbeat(&c.miner_key, "m1", "w").await;
    let job = c
        .submit(
            json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 1,
        "limits": {"max_runtime_s": 0}}),
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
    let mut config = test_config();
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
    let c = TestCoordinator::start(test_config()).await;
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
    let mut config = test_config();
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
    let c = std::sync::Arc::new(TestCoordinator::start(test_config()).await);
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
    let c = TestCoordinator::start(test_config()).await;
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
    let c = TestCoordinator::start(test_config()).await;
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
    let c = TestCoordinator::start(test_config()).await;
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

//! The Coordinator's API v1 as a client and a miner see it, over real HTTP on 127.0.0.1 with a
//! real SQLite file: the job lifecycle and its money, long-polls, fencing of proofs and fail
//! reports, idempotency, auth and hostile input.
//!
//! Every assertion is on what a user sees (statuses, bodies, states, balances); none reads the
//! database behind the Coordinator's back.

use std::time::{Duration, Instant};

use aitbc_coordinator::Scope;
use aitbc_protocol::api::{ErrorCode, FailAck, FailReason, JobState, ProofAck};
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

//! Router tests without sockets: every route answers, and no input — random bytes, random JSON,
//! huge strings, hostile query strings — gets a 5xx or a body that is not the API's error body.

use aitbc_protocol::api::{ErrorBody, ErrorCode};
use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use serde_json::Value;
use tower::ServiceExt;

use crate::{Coordinator, CoordinatorConfig, Scope, ROUTES};

struct Fixture {
    _dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    app: axum::Router,
    admin: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = CoordinatorConfig {
        rate_limit_per_sec: 1_000_000,
        ..CoordinatorConfig::default()
    };
    let c = Coordinator::open(&dir.path().join("c.db"), config).unwrap();
    let admin = c.add_key(Scope::Admin, "admin").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Fixture {
        _dir: dir,
        rt,
        app: c.router(),
        admin,
    }
}

impl Fixture {
    fn call(&self, method: &str, uri: &str, key: Option<&str>, body: Vec<u8>) -> (u16, Vec<u8>) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Body::from(body)).unwrap();
        self.rt.block_on(async {
            let resp = self.app.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, body.to_vec())
        })
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", "some-job")
}

fn assert_error_body(status: u16, body: &[u8], what: &str) -> ErrorBody {
    assert!((400..500).contains(&status), "{what}: status {status}");
    serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: not an error body ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    })
}

#[test]
fn every_route_is_served_and_the_rest_is_404_or_405() {
    let f = fixture();
    for (method, path) in ROUTES {
        let (status, body) = f.call(method, &concrete(path), None, Vec::new());
        if status >= 400 {
            let e = assert_error_body(status, &body, path);
            assert_ne!(
                e.error.code,
                ErrorCode::NotFound,
                "{method} {path} is not routed"
            );
        }
        // No route takes DELETE.
        let other = "DELETE";
        let (status, body) = f.call(other, &concrete(path), Some(&f.admin), Vec::new());
        assert_eq!(status, 405, "{other} {path}");
        assert_error_body(status, &body, path);
    }
    let (status, body) = f.call("GET", "/v1/nothing/here", None, Vec::new());
    assert_eq!(status, 404);
    assert_eq!(
        assert_error_body(status, &body, "unknown").error.code,
        ErrorCode::NotFound
    );
}

#[test]
fn protected_routes_need_a_key() {
    let f = fixture();
    for (method, path) in ROUTES {
        if path.starts_with("/v1/wallet") || *path == "/v1/health" {
            continue;
        }
        let (status, body) = f.call(method, &concrete(path), None, b"{}".to_vec());
        assert_eq!(status, 401, "{method} {path}");
        assert_error_body(status, &body, path);
        let bogus = format!("aitbc_{}", "0".repeat(64));
        let (status, body) = f.call(method, &concrete(path), Some(&bogus), b"{}".to_vec());
        assert_eq!(status, 401);
        assert!(!String::from_utf8_lossy(&body).contains(&bogus));
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("torch_bench"),
            Just("cpu"),
            Just("gpu"),
            Just("m1"),
            Just("WORKER_CRASHED"),
            Just("queued"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    let keys = prop_oneof![
        Just("miner_id".to_string()),
        Just("wallet".to_string()),
        Just("mode".to_string()),
        Just("gpu".to_string()),
        Just("workload".to_string()),
        Just("params".to_string()),
        Just("limits".to_string()),
        Just("reward".to_string()),
        Just("id".to_string()),
        Just("output_sha".to_string()),
        Just("reason".to_string()),
        Just("attempt".to_string()),
        Just("workloads".to_string()),
        Just("ram_mb".to_string()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(4, 32, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn posts() -> Vec<&'static str> {
    ROUTES
        .iter()
        .filter(|(m, _)| *m == "POST")
        .map(|(_, p)| *p)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_make_a_5xx(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let f = fixture();
        for path in posts() {
            let (status, resp) = f.call("POST", path, Some(&f.admin), body.clone());
            assert_error_body(status, &resp, path);
        }
    }

    #[test]
    fn random_json_never_makes_a_5xx(v in json_value()) {
        let f = fixture();
        let body = serde_json::to_vec(&v).unwrap();
        for path in posts() {
            let (status, resp) = f.call("POST", path, Some(&f.admin), body.clone());
            prop_assert!(status < 500, "{} {} -> {}", path, v, status);
            if status >= 400 {
                assert_error_body(status, &resp, path);
            }
        }
    }

    #[test]
    fn random_queries_never_make_a_5xx(q in "[a-z=&%0-9.+_-]{0,60}") {
        let f = fixture();
        for (method, path) in ROUTES.iter().filter(|(m, _)| *m == "GET") {
            let uri = format!("{}?{q}", concrete(path));
            let (status, resp) = f.call(method, &uri, Some(&f.admin), Vec::new());
            prop_assert!(status < 500, "{} -> {}", uri, status);
            if status >= 400 {
                assert_error_body(status, &resp, &uri);
            }
        }
    }
}

#[test]
fn huge_strings_in_every_field_are_refused_cleanly() {
    let f = fixture();
    let huge = "x".repeat(40_000);
    for field in [
        "miner_id",
        "wallet",
        "id",
        "output_sha",
        "workload",
        "message",
        "reason",
    ] {
        let body = serde_json::to_vec(&serde_json::json!({
            field: huge, "mode": "cpu", "miner_id": "m", "wallet": "w", "id": "j",
            "output_sha": "0".repeat(64), "workload": "torch_bench", "reward": 1,
            "reason": "INTERNAL"
        }))
        .unwrap();
        for path in posts() {
            let (status, resp) = f.call("POST", path, Some(&f.admin), body.clone());
            assert!(status < 500, "{field} {path} {status}");
            if status >= 400 {
                assert_error_body(status, &resp, path);
            }
        }
    }
    let (status, resp) = f.call(
        "POST",
        "/v1/client/jobs",
        Some(&f.admin),
        vec![b' '; 70_000],
    );
    assert_eq!(status, 413);
    assert_error_body(status, &resp, "413");
}

/// The real SQLite store, counting the calls the hot paths must avoid.
struct Counting {
    real: crate::sqlite::SqliteStore,
    heartbeats: std::sync::atomic::AtomicUsize,
    assigns: std::sync::atomic::AtomicUsize,
}

mod counting {
    use std::sync::atomic::Ordering::SeqCst;

    use aitbc_protocol::api::{
        AuditChallenge, Balance, FailReport, Job, JobState, JobView, Proof, Standing,
    };

    use super::Counting;
    use crate::audit::Policy;
    use crate::auth::{KeyInfo, Scope};
    use crate::error::Error;
    use crate::store::{
        AuditClaim, AuditTarget, Credit, IdemKey, Matcher, MinerRecord, NewJob, Outcome, Store,
    };

    impl Store for Counting {
        fn add_key(&self, h: &str, s: Scope, n: &str, now: i64) -> Result<i64, Error> {
            self.real.add_key(h, s, n, now)
        }
        fn find_key(&self, h: &str) -> Result<Option<KeyInfo>, Error> {
            self.real.find_key(h)
        }
        fn load_miners(&self) -> Result<Vec<MinerRecord>, Error> {
            self.real.load_miners()
        }
        fn heartbeat(
            &self,
            m: &MinerRecord,
            w: bool,
            i: Option<&IdemKey>,
        ) -> Result<Outcome, Error> {
            self.heartbeats.fetch_add(1, SeqCst);
            self.real.heartbeat(m, w, i)
        }
        fn submit(&self, j: &NewJob, i: Option<&IdemKey>, now: i64) -> Result<Outcome, Error> {
            self.real.submit(j, i, now)
        }
        fn assign(&self, m: &Matcher, now: i64, margin: i64) -> Result<Option<Job>, Error> {
            self.assigns.fetch_add(1, SeqCst);
            self.real.assign(m, now, margin)
        }
        fn proof(
            &self,
            k: i64,
            p: &Proof,
            policy: &Policy,
            i: Option<&IdemKey>,
            now: i64,
        ) -> Result<Outcome, Error> {
            self.real.proof(k, p, policy, i, now)
        }
        fn open_audits(&self, k: i64, m: &str) -> Result<Vec<AuditChallenge>, Error> {
            self.real.open_audits(k, m)
        }
        fn audit_target(&self, id: &str) -> Result<Option<AuditTarget>, Error> {
            self.real.audit_target(id)
        }
        fn audit_verdict(
            &self,
            c: &AuditClaim<'_>,
            policy: &Policy,
            i: Option<&IdemKey>,
            now: i64,
        ) -> Result<Outcome, Error> {
            self.real.audit_verdict(c, policy, i, now)
        }
        fn standing(&self, k: i64) -> Result<(u32, bool), Error> {
            self.real.standing(k)
        }
        fn suspended_keys(&self) -> Result<Vec<i64>, Error> {
            self.real.suspended_keys()
        }
        fn reinstate(&self, m: &str) -> Result<Option<Standing>, Error> {
            self.real.reinstate(m)
        }
        fn audit_secret(&self) -> Result<[u8; 32], Error> {
            self.real.audit_secret()
        }
        fn fail(
            &self,
            k: i64,
            f: &FailReport,
            i: Option<&IdemKey>,
            now: i64,
        ) -> Result<Outcome, Error> {
            self.real.fail(k, f, i, now)
        }
        fn sweep(&self, now: i64, policy: &Policy) -> Result<usize, Error> {
            self.real.sweep(now, policy)
        }
        fn any_queued(&self) -> bool {
            self.real.any_queued()
        }
        fn upload_live(&self, sha: &str, key_id: i64) -> Result<bool, Error> {
            self.real.upload_live(sha, key_id)
        }
        fn job(&self, id: &str) -> Result<Option<(JobView, i64)>, Error> {
            self.real.job(id)
        }
        fn jobs(&self, s: Option<JobState>, l: u32) -> Result<Vec<JobView>, Error> {
            self.real.jobs(s, l)
        }
        fn balance(&self, w: &str) -> Result<Balance, Error> {
            self.real.balance(w)
        }
        fn ledger(&self, w: &str, l: u32) -> Result<Vec<Credit>, Error> {
            self.real.ledger(w, l)
        }
    }
}

/// Heartbeats that change nothing and `next` on an empty queue never reach the database.
#[test]
fn hot_paths_stay_off_the_database() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Counting {
        real: crate::sqlite::SqliteStore::open(&dir.path().join("c.db")).unwrap(),
        heartbeats: Default::default(),
        assigns: Default::default(),
    });
    let c = Coordinator::with_store(store.clone(), CoordinatorConfig::default()).unwrap();
    let miner = c.add_key(Scope::Miner, "m").unwrap();
    let client = c.add_key(Scope::Client, "c").unwrap();
    let f = Fixture {
        _dir: dir,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        app: c.router(),
        admin: String::new(),
    };
    let hb = |wallet: &str| {
        let body = serde_json::json!({"miner_id": "m1", "wallet": wallet, "mode": "cpu"});
        let (status, _) = f.call(
            "POST",
            "/v1/miner/heartbeat",
            Some(&miner),
            body.to_string().into_bytes(),
        );
        assert_eq!(status, 200);
    };
    for _ in 0..50 {
        hb("w1");
    }
    assert_eq!(
        store.heartbeats.load(SeqCst),
        1,
        "only the first heartbeat is written"
    );
    hb("w2");
    assert_eq!(
        store.heartbeats.load(SeqCst),
        2,
        "a changed wallet is written"
    );
    for _ in 0..50 {
        let (status, body) = f.call("GET", "/v1/miner/next?miner=m1", Some(&miner), Vec::new());
        assert_eq!((status, body.len()), (204, 0));
    }
    assert_eq!(
        store.assigns.load(SeqCst),
        0,
        "an empty queue needs no query"
    );
    let job = serde_json::json!({"workload": "torch_bench", "params": {"n": 8}, "reward": 1});
    let (status, _) = f.call(
        "POST",
        "/v1/client/jobs",
        Some(&client),
        job.to_string().into_bytes(),
    );
    assert_eq!(status, 201);
    let (status, _) = f.call("GET", "/v1/miner/next?miner=m1", Some(&miner), Vec::new());
    assert_eq!(status, 200);
    assert_eq!(store.assigns.load(SeqCst), 1);
    let (status, _) = f.call("GET", "/v1/miner/next?miner=m1", Some(&miner), Vec::new());
    assert_eq!(status, 204);
    assert_eq!(
        store.assigns.load(SeqCst),
        1,
        "the queue is known to be empty again"
    );
}

#[test]
fn a_temperature_change_alone_is_not_stored() {
    let caps = |temp: u32, healthy: bool| -> aitbc_protocol::api::MinerCapabilities {
        serde_json::from_value(serde_json::json!({
            "miner_id": "g", "wallet": "w", "mode": "gpu",
            "gpus": [{"index": 0, "name": "G", "vram_mb": 8}],
            "gpu_health": {"healthy": healthy, "temperature_c": temp}
        }))
        .unwrap()
    };
    use super::same_when_stored as same;
    assert!(same(&caps(40, true), &caps(71, true)));
    assert!(!same(&caps(40, true), &caps(40, false)));
    let mut more_xid = caps(40, true);
    more_xid.gpu_health.as_mut().unwrap().xid_errors = 1;
    assert!(!same(&caps(40, true), &more_xid));
    let mut no_health = caps(40, true);
    no_health.gpu_health = None;
    assert!(!same(&caps(40, true), &no_health));
    let mut other_gpu = caps(40, true);
    other_gpu.gpus[0].vram_mb = 16;
    assert!(!same(&caps(40, true), &other_gpu));
}

/// The reasons only the Coordinator sets are refused in a miner's fail report, naming the
/// field; a malformed Idempotency-Key is 400 on reinstate as on every POST.
#[test]
fn coordinator_only_reasons_and_reinstate_headers_are_checked() {
    let f = fixture();
    for reason in ["AUDIT_FAILED", "AUDIT_TIMEOUT"] {
        let body = serde_json::to_vec(&serde_json::json!({"id": "j", "reason": reason})).unwrap();
        let c = f.rt.block_on(async {
            let req = Request::builder()
                .method("POST")
                .uri("/v1/miner/fail")
                .header("authorization", format!("Bearer {}", f.admin))
                .body(Body::from(body))
                .unwrap();
            let resp = f.app.clone().oneshot(req).await.unwrap();
            let status = resp.status().as_u16();
            let b = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, b.to_vec())
        });
        let e = assert_error_body(c.0, &c.1, reason);
        assert_eq!((c.0, e.error.code), (422, ErrorCode::ValidationFailed));
        assert!(
            e.error.message.starts_with("reason = "),
            "{}",
            e.error.message
        );
    }
    let c = f.rt.block_on(async {
        let req = Request::builder()
            .method("POST")
            .uri("/v1/admin/miners/m1/reinstate")
            .header("authorization", format!("Bearer {}", f.admin))
            .header("idempotency-key", "bad key with spaces")
            .body(Body::empty())
            .unwrap();
        let resp = f.app.clone().oneshot(req).await.unwrap();
        resp.status().as_u16()
    });
    assert_eq!(c, 400);
}

/// An audit's answer is checked once at a time: a second claim of the same (job, attempt)
/// is refused while the first is held, other audits are not held up, and dropping releases.
#[test]
fn one_check_at_a_time_per_audit() {
    let dir = tempfile::tempdir().unwrap();
    let c = Coordinator::open(&dir.path().join("c.db"), CoordinatorConfig::default()).unwrap();
    let first = super::Checking::claim(&c.inner, "j", 1).expect("free");
    assert!(super::Checking::claim(&c.inner, "j", 1).is_none());
    let other = super::Checking::claim(&c.inner, "j", 2).expect("another attempt is free");
    drop(first);
    assert!(super::Checking::claim(&c.inner, "j", 1).is_some());
    drop(other);
    assert!(c.inner.checking.lock().unwrap().is_empty());
}

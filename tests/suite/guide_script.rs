//! The guide's own miner script (section 5, vendored verbatim as `tests/fixtures/guide-miner.sh`)
//! against a real Coordinator on 127.0.0.1. With the Coordinator's defaults (verification on)
//! it earns nothing: it proves no computation (its torch_bench proof is a hash of whatever its
//! command printed, with no Merkle commitment), so every proof is refused, and the workloads it
//! stubs cannot even be submitted. With verification off (`--verify off`, for experiments) it
//! must earn exactly the rewards of the jobs it completed, once each, and nothing for the empty
//! "job" it makes out of a 204.
//!
//! The script truncates `/var/log/aitbc-miner.log`; it runs inside
//! `unshare --user --map-root-user --mount` with a temporary directory bind-mounted over
//! `/var/log`, so it runs unchanged and this test never touches the host's `/var/log`.
//! This module must never edit the script, nor wait with fixed sleeps: it polls the
//! Coordinator with a deadline.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aitbc_protocol::api::{JobState, JobView};
use serde_json::json;

use sha2::{Digest, Sha256};

use crate::common::{test_config, unverified_config, TestCoordinator};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/guide-miner.sh");
const WALLET: &str = "wallet_guide_script";
const MINER_ID: &str = "guide-host-cpu0";
const DEADLINE: Duration = Duration::from_secs(60);

/// The script's process group; killed (SIGKILL) when dropped, so a failing assertion never
/// leaves a polling script behind.
struct ScriptGroup {
    child: Child,
}

impl ScriptGroup {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    /// `Some(status)` once the script has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn kill(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.pid());
        // The group may already be gone; that is the state we want.
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ScriptGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn need_tools() {
    for tool in ["bash", "curl", "jq", "unshare", "sha256sum", "awk"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "the guide's script needs `{tool}` (apt-get install -y bash curl jq util-linux)"
        );
    }
}

/// Starts the script in its own process group and mount namespace, logging to `log_dir`.
fn start_script(url: &str, api_key: &str, log_dir: &Path, work: &Path, home: &Path) -> ScriptGroup {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log_dir.join("script.stdout")).expect("create stdout file");
    let err = std::fs::File::create(log_dir.join("script.stderr")).expect("create stderr file");
    let var_log = log_dir.join("var-log");
    std::fs::create_dir(&var_log).expect("create the private /var/log");
    let child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "bash", "-c"])
        .arg(r#"mount --bind "$1" /var/log && exec bash "$2""#)
        .arg("guide-miner")
        .arg(&var_log)
        .arg(SCRIPT)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("COORD_URL", url)
        .env("API_KEY", api_key)
        .env("WALLET_ADDR", WALLET)
        .env("MINER_ID", MINER_ID)
        .env("WORK_DIR", work)
        .env("JOB_POLL_SECS", "0.1")
        .env("MAX_CONCURRENCY", "1")
        .env("ACCEL_MODE", "cpu")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .expect("spawn unshare (util-linux)");
    ScriptGroup { child }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// With the defaults, the script's jobs end failed (its proofs are refused, its leases run out)
/// and its wallet shows nothing settled, pending or forfeited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_script_earns_nothing_from_a_verifying_coordinator() {
    need_tools();
    let mut config = test_config();
    config.lease_margin = Duration::from_millis(300);
    let tc = TestCoordinator::start(config).await;
    for workload in ["sd_infer", "llm_gen"] {
        let r = tc
            .post(
                "/v1/client/jobs",
                Some(&tc.client_key),
                &json!({"workload": workload, "params": {}, "reward": 5}),
            )
            .await;
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.message().starts_with("workload = "), "{}", r.message());
    }
    let mut ids = Vec::new();
    for reward in [19u64, 23] {
        let view = tc
            .submit(
                json!({"workload": "torch_bench", "params": {"n": 64, "iters": 1},
                           "limits": {"max_runtime_s": 1}, "reward": reward}),
            )
            .await;
        ids.push(view.id);
    }
    let logs = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let mut script = start_script(
        &tc.url,
        &tc.miner_key,
        logs.path(),
        work.path(),
        home.path(),
    );
    let stderr_file = logs.path().join("script.stderr");
    let start = Instant::now();
    let views = loop {
        if let Some(status) = script.exited() {
            panic!(
                "the guide's script exited early ({status}): {}",
                read(&stderr_file)
            );
        }
        let mut views = Vec::new();
        for id in &ids {
            views.push(tc.job(id).await);
        }
        if views.iter().all(|v| v.state.is_final()) {
            break views;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "jobs not final within {DEADLINE:?}: {:?}",
            views
                .iter()
                .map(|v| (v.state, v.attempt))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    script.kill();
    for v in &views {
        assert_eq!(v.state, JobState::Failed, "{v:?}");
        let failure = v.failure.as_ref().expect("a failed job says why");
        assert_eq!(
            failure.reason,
            aitbc_protocol::api::FailReason::AttemptsExhausted
        );
        assert!(v.proof.is_none(), "{v:?}");
    }
    let stderr = read(&stderr_file);
    assert!(
        stderr.contains("curl: (22) The requested URL returned error: 422"),
        "its proofs without a commitment must be refused with 422; stderr:\n{stderr}"
    );
    let r = tc
        .get(&format!("/v1/wallet/balance?wallet={WALLET}"), None)
        .await;
    let b: aitbc_protocol::api::Balance = r.parse();
    assert_eq!(
        (b.balance, b.pending, b.forfeited, b.credits),
        (0, 0, 0, 0),
        "{b:?}"
    );
    assert!(tc.ledger(WALLET).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_script_earns_exactly_the_jobs_it_completed_with_verification_off() {
    need_tools();
    let tc = TestCoordinator::start(unverified_config()).await;
    // The stub workloads write a fixed line; torch_bench has no PyTorch here, so its output is
    // empty, and the script proves that empty output all the same (set -e is off in run_job).
    let stub = |line: &str| Some(sha256_hex(format!("{line}\n").as_bytes()));
    let torch_ok = Path::new("/opt/aitbc-miner/.venv/bin/python").exists();
    let cases = [
        (
            "sd_infer",
            json!({"prompt": "a lighthouse"}),
            7u64,
            stub("stub: run stable diffusion pipeline here"),
        ),
        (
            "llm_gen",
            json!({"prompt": "hello"}),
            11,
            stub("stub: run text generation here"),
        ),
        (
            "sd_infer",
            json!({}),
            13,
            stub("stub: run stable diffusion pipeline here"),
        ),
        (
            "llm_gen",
            json!({"max_tokens": 8}),
            17,
            stub("stub: run text generation here"),
        ),
        (
            "torch_bench",
            json!({"n": 64, "iters": 1}),
            19,
            (!torch_ok).then(|| sha256_hex(b"")),
        ),
    ];
    let mut expected_sha: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (workload, params, reward, sha) in cases {
        let view = tc
            .submit(json!({"workload": workload, "params": params, "reward": reward}))
            .await;
        assert_eq!(view.state, JobState::Queued);
        expected_sha.insert(view.id, sha);
    }

    let logs = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let home = tempfile::tempdir().expect("tempdir");
    let mut script = start_script(
        &tc.url,
        &tc.miner_key,
        logs.path(),
        work.path(),
        home.path(),
    );
    let miner_log = logs.path().join("var-log").join("aitbc-miner.log");
    let stderr_file = logs.path().join("script.stderr");

    // Wait (polling the Coordinator, bounded) until every job is final and the script has also
    // tried the empty "job" a 204 turns into.
    let start = Instant::now();
    let mut views: BTreeMap<String, JobView> = BTreeMap::new();
    loop {
        if let Some(status) = script.exited() {
            panic!(
                "the guide's script exited early ({status}); stderr:\n{}\nlog:\n{}",
                read(&stderr_file),
                read(&miner_log)
            );
        }
        views.clear();
        for id in expected_sha.keys() {
            views.insert(id.clone(), tc.job(id).await);
        }
        let all_final = views.values().all(|v| v.state.is_final());
        // The script logs "done ... proof_submitted" even for a refused proof, and only after
        // curl has written the refusal to stderr.
        let tried_empty = read(&miner_log).contains("[JOB] done id= proof_submitted");
        if all_final && tried_empty {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "jobs not done within {DEADLINE:?}: {:?}; stderr:\n{}\nlog:\n{}",
            views.values().map(|v| (&v.id, v.state)).collect::<Vec<_>>(),
            read(&stderr_file),
            read(&miner_log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    script.kill();

    // What the script did, as a user sees it.
    let log = read(&miner_log);
    assert!(
        log.contains(&format!("[BOOT] AITBC miner starting (id={MINER_ID})")),
        "{log}"
    );
    let stderr = read(&stderr_file);
    assert!(
        stderr.contains("curl: (22) The requested URL returned error: 422"),
        "the empty job's proof (id \"\") must be refused with 422; stderr:\n{stderr}"
    );

    // Every job completed, each with the proof of what the script really wrote.
    let mut completed_rewards = 0u64;
    for (id, view) in &views {
        assert_eq!(view.state, JobState::Completed, "{id}: {view:?}");
        let proof = view
            .proof
            .as_ref()
            .expect("a completed job carries its proof");
        if let Some(sha) = &expected_sha[id] {
            assert_eq!(&proof.output_sha, sha, "{id} ({})", view.workload);
        }
        assert_eq!(view.attempt, 1, "{id} was assigned once");
        assert!(log.contains(&format!("[JOB] done id={id} proof_submitted")));
        completed_rewards += view.reward;
    }
    assert_eq!(completed_rewards, 7 + 11 + 13 + 17 + 19);

    // Balance = exactly the completed rewards; one settled ledger credit per job and nothing
    // else (with verification off each credit settles at once: a credit and its settle entry).
    let (balance, credits) = tc.balance(WALLET).await;
    assert_eq!(balance, completed_rewards);
    assert_eq!(credits, views.len() as u64);
    let ledger = tc.ledger(WALLET).await;
    assert_eq!(ledger.len(), 2 * views.len(), "{ledger:?}");
    let mut credited: BTreeMap<String, u64> = BTreeMap::new();
    for c in ledger.iter().filter(|c| c["kind"] == "settle") {
        let job = c["job_id"].as_str().expect("credit.job_id is a string");
        let amount = c["amount"].as_u64().expect("credit.amount is an integer");
        assert!(
            credited.insert(job.to_string(), amount).is_none(),
            "job {job:?} credited twice: {ledger:?}"
        );
    }
    let want: BTreeMap<String, u64> = views.iter().map(|(id, v)| (id.clone(), v.reward)).collect();
    assert_eq!(
        credited, want,
        "ledger must hold one credit per completed job and nothing else (no id \"\")"
    );

    let shutdown = tc.stop().await;
    assert!(
        shutdown < Duration::from_secs(10),
        "serve took {shutdown:?} to stop"
    );
}

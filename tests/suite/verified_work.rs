//! Verified work: cheating miners, each a real process speaking HTTP to a real Coordinator,
//! must be caught, must earn nothing for what they did not compute, and must lose their stake
//! of pending credits as the policy says; an honest process at the same time must be paid for
//! every job. The sampling is seeded (the Coordinator's audit secret is fixed), so every run
//! sees the same audits and the asserted rates are exact facts about one deterministic run,
//! checked against the policy's formulas.
//!
//! A cheater is this test binary run again (`cheater_process`, ignored unless the
//! `AITBC_CHEAT` environment names a mode): a separate process with its own HTTP client and no
//! access to the Coordinator's memory. This module must never give a cheater anything a real
//! miner would not have: its key, the Coordinator's URL and the public protocol.

use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aitbc_coordinator::audit::pass_probability;
use aitbc_coordinator::Scope;
use aitbc_protocol::api::{
    AuditAck, AuditAnswer, AuditChallenge, AuditVerdict, Balance, ErrorBody, ErrorCode, FailReason,
    Job, JobState, JobView, OpenedRow, ProofAck, Standing, VerificationStatus,
};
use aitbc_protocol::hex;
use aitbc_protocol::merkle::{self, Digest};
use aitbc_protocol::workload::torch_bench::{self, TorchBenchParams};
use serde_json::json;

use crate::common::{test_config, wait_for, TestCoordinator};

/// Small jobs, so that a cheater computes (or fakes) one in microseconds and the Coordinator
/// recomputes 8 rows in microseconds too: 64 rows of 64, 2 products.
const N: u32 = 64;
const ITERS: u32 = 2;

// ---------------------------------------------------------------------------------------------
// The cheater process.

/// How a cheater computes and answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Computes the chain and answers every audit: the control.
    Honest,
    /// Random `output_sha` and `merkle_root`; answers audits with random rows and paths.
    Random,
    /// A correct-looking commitment: a real Merkle tree, over rows that are not the chain's.
    WrongRows,
    /// Computes only the first `permille / 1000` of the rows, garbage for the rest, and commits
    /// to that honestly (the best a partial computer can do).
    Fraction(u32),
    /// The right chain for another seed.
    WrongSeed,
    /// Computes its first job; proves every later one with that first job's proof and rows.
    Replay,
    /// Computes each job, but answers its audit with the rows of another job.
    OtherRows,
    /// Proves garbage and never answers an audit.
    Vanish,
    /// Honest for its first `k` jobs, then random.
    Turncoat(u32),
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        let (name, arg) = s.split_once(':').unwrap_or((s, ""));
        Some(match name {
            "honest" => Mode::Honest,
            "random" => Mode::Random,
            "wrong_rows" => Mode::WrongRows,
            "fraction" => Mode::Fraction(arg.parse().ok()?),
            "wrong_seed" => Mode::WrongSeed,
            "replay" => Mode::Replay,
            "other_rows" => Mode::OtherRows,
            "vanish" => Mode::Vanish,
            "turncoat" => Mode::Turncoat(arg.parse().ok()?),
            _ => return None,
        })
    }
}

/// One output and its tree, as a (possibly cheating) miner holds it.
#[derive(Clone)]
struct Held {
    rows: Vec<Vec<u8>>,
    leaves: Vec<Digest>,
    sha: String,
    root: String,
}

impl Held {
    fn of(rows: Vec<Vec<u8>>) -> Held {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for r in &rows {
            h.update(r);
        }
        let leaves: Vec<Digest> = rows.iter().map(|r| merkle::leaf_hash(r)).collect();
        let root = merkle::root(&leaves).expect("at least one row");
        Held {
            sha: hex::encode(&h.finalize()),
            root: hex::encode(&root),
            rows,
            leaves,
        }
    }

    fn open(&self, rows: &[u64]) -> Vec<OpenedRow> {
        rows.iter()
            .map(|&i| OpenedRow {
                index: i,
                data: hex::encode(&self.rows[i as usize]),
                path: merkle::inclusion_proof(&self.leaves, i as usize)
                    .expect("a row of the tree")
                    .iter()
                    .map(|d| hex::encode(d))
                    .collect(),
            })
            .collect()
    }
}

fn chain(p: &TorchBenchParams) -> Vec<Vec<u8>> {
    torch_bench::reference_output(p)
        .chunks(p.n as usize)
        .map(torch_bench::row_bytes)
        .collect()
}

fn garbage(rng: &mut fastrand::Rng, n: u32) -> Vec<u8> {
    (0..n).map(|_| rng.u8(..)).collect()
}

/// What the cheater proves for `p`, and what it opens when audited.
struct Plan {
    proof: Held,
    answer_from: Held,
}

fn plan(
    mode: Mode,
    p: &TorchBenchParams,
    done: u32,
    first: &mut Option<Held>,
    rng: &mut fastrand::Rng,
) -> Plan {
    let honest = || Held::of(chain(p));
    let same = |h: Held| Plan {
        proof: h.clone(),
        answer_from: h,
    };
    match mode {
        Mode::Honest => same(honest()),
        Mode::Turncoat(k) if done < k => same(honest()),
        Mode::Random | Mode::Vanish | Mode::Turncoat(_) => {
            let rows = (0..p.n).map(|_| garbage(rng, p.n)).collect();
            let mut h = Held::of(rows);
            h.sha = hex::encode(&garbage(rng, 32));
            h.root = hex::encode(&garbage(rng, 32));
            // Its "openings" are random bytes under random paths.
            let random = Held::of((0..p.n).map(|_| garbage(rng, p.n)).collect());
            Plan {
                proof: h,
                answer_from: random,
            }
        }
        Mode::WrongRows => same(Held::of((0..p.n).map(|_| garbage(rng, p.n)).collect())),
        Mode::Fraction(permille) => {
            let computed = (p.n as usize * permille as usize).div_ceil(1000);
            let idx: Vec<usize> = (0..computed).collect();
            let mut rows: Vec<Vec<u8>> = torch_bench::output_rows(p, &idx)
                .iter()
                .map(|r| torch_bench::row_bytes(r))
                .collect();
            rows.extend((computed..p.n as usize).map(|_| garbage(rng, p.n)));
            same(Held::of(rows))
        }
        Mode::WrongSeed => same(Held::of(chain(&TorchBenchParams {
            seed: p.seed ^ 1,
            ..*p
        }))),
        Mode::Replay => match first {
            Some(h) => same(h.clone()),
            None => {
                let h = honest();
                *first = Some(h.clone());
                same(h)
            }
        },
        Mode::OtherRows => Plan {
            proof: honest(),
            answer_from: Held::of(chain(&TorchBenchParams {
                seed: p.seed.wrapping_add(1_000_003),
                ..*p
            })),
        },
    }
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
    miner: String,
}

impl Client {
    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> (u16, Vec<u8>) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(body)
            .send()
            .await
            .expect("the coordinator answers");
        let status = r.status().as_u16();
        (status, r.bytes().await.expect("a body").to_vec())
    }

    async fn next(&self) -> Result<Option<Job>, ErrorCode> {
        let r = self
            .http
            .get(format!(
                "{}/v1/miner/next?miner={}&wait=2",
                self.url, self.miner
            ))
            .bearer_auth(&self.key)
            .send()
            .await
            .expect("the coordinator answers");
        match r.status().as_u16() {
            200 => Ok(Some(r.json().await.expect("a job"))),
            204 => Ok(None),
            _ => {
                let e: ErrorBody = r.json().await.expect("an error body");
                Err(e.error.code)
            }
        }
    }
}

/// A cheating (or honest) miner: the process `AITBC_CHEAT` asks for. Takes jobs until it has
/// proved `AITBC_CHEAT_JOBS` of them or the queue stays empty, answering audits as its mode
/// says; writes one line per job (`job ID attempt N audit=...`) to `AITBC_CHEAT_OUT` and exits.
#[test]
#[ignore = "run as a cheating miner process by the verified_work tests"]
fn cheater_process() {
    let Some(mode) = std::env::var("AITBC_CHEAT").ok() else {
        eprintln!("cheater_process: AITBC_CHEAT is unset; nothing to do");
        return;
    };
    let mode = Mode::parse(&mode).unwrap_or_else(|| panic!("unknown cheat {mode:?}"));
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is unset"));
    let client = Client {
        http: reqwest::Client::new(),
        url: env("AITBC_CHEAT_URL"),
        key: env("AITBC_CHEAT_KEY"),
        miner: env("AITBC_CHEAT_MINER"),
    };
    let jobs: u32 = env("AITBC_CHEAT_JOBS").parse().expect("a job count");
    let mut out = std::fs::File::create(env("AITBC_CHEAT_OUT")).expect("the cheater's report");
    let mut rng = fastrand::Rng::with_seed(env("AITBC_CHEAT_SEED").parse().expect("a seed"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let (s, b) = client
            .post(
                "/v1/miner/heartbeat",
                &json!({"miner_id": client.miner, "wallet": client.miner, "mode": "cpu",
                        "workloads": ["torch_bench"]}),
            )
            .await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        let (mut done, mut idle, mut first) = (0u32, 0u32, None);
        while done < jobs && idle < 2 {
            let job = match client.next().await {
                Ok(Some(job)) => job,
                Ok(None) => {
                    idle += 1;
                    continue;
                }
                Err(code) => {
                    writeln!(out, "next refused {code:?}").expect("write the report");
                    break;
                }
            };
            idle = 0;
            let p = TorchBenchParams::parse(&job.params).expect("torch_bench params");
            let plan = plan(mode, &p, done, &mut first, &mut rng);
            let proof = json!({"id": job.id, "miner_id": client.miner, "attempt": job.attempt,
                "mode": "cpu", "output_sha": plan.proof.sha, "merkle_root": plan.proof.root,
                "output_len": p.output_len(), "metrics": {}});
            let (s, b) = client.post("/v1/miner/proof", &proof).await;
            assert_eq!(s, 200, "proof: {}", String::from_utf8_lossy(&b));
            let ack: ProofAck = serde_json::from_slice(&b).expect("a proof ack");
            done += 1;
            let verdict = match (&ack.audit, mode) {
                (None, _) => "none".to_string(),
                (Some(_), Mode::Vanish) => "unanswered".to_string(),
                (Some(c), _) => {
                    let answer = AuditAnswer {
                        id: job.id.clone(),
                        miner_id: Some(client.miner.clone()),
                        attempt: c.attempt,
                        rows: plan.answer_from.open(&c.rows),
                    };
                    let (s, b) = client.post("/v1/miner/audit", &answer).await;
                    assert_eq!(s, 200, "audit: {}", String::from_utf8_lossy(&b));
                    let a: AuditAck = serde_json::from_slice(&b).expect("an audit ack");
                    format!("{:?}", a.verdict)
                }
            };
            writeln!(
                out,
                "job {} attempt {} audit={verdict}",
                job.id, job.attempt
            )
            .expect("write the report");
        }
    });
}

/// A cheater process and the file it reports to.
struct Cheater {
    child: Child,
    report: tempfile::NamedTempFile,
}

/// Starts a cheater process of `mode` under `key` as miner `miner`, taking at most `jobs`.
fn cheater(tc: &TestCoordinator, key: &str, miner: &str, mode: &str, jobs: u32) -> Cheater {
    let report = tempfile::NamedTempFile::new().expect("a report file");
    let child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "verified_work::cheater_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AITBC_CHEAT", mode)
        .env("AITBC_CHEAT_URL", &tc.url)
        .env("AITBC_CHEAT_KEY", key)
        .env("AITBC_CHEAT_MINER", miner)
        .env("AITBC_CHEAT_JOBS", jobs.to_string())
        .env("AITBC_CHEAT_SEED", "2026")
        .env("AITBC_CHEAT_OUT", report.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a cheater process");
    Cheater { child, report }
}

/// Waits for a cheater to exit on its own; returns its report (one line per job).
async fn finish(c: Cheater) -> String {
    let Cheater { child, report } = c;
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("wait for the cheater");
    assert!(
        out.status.success(),
        "the cheater failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(report.path()).expect("the cheater's report")
}

// ---------------------------------------------------------------------------------------------
// Helpers for the tests.

async fn submit(tc: &TestCoordinator, seed: u64, reward: u64) -> String {
    tc.submit(
        json!({"workload": "torch_bench", "params": {"n": N, "iters": ITERS, "seed": seed},
                     "reward": reward}),
    )
    .await
    .id
}

async fn balance(tc: &TestCoordinator, wallet: &str) -> Balance {
    let r = tc
        .get(&format!("/v1/wallet/balance?wallet={wallet}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.parse()
}

async fn views(tc: &TestCoordinator, ids: &[String]) -> Vec<JobView> {
    let mut out = Vec::new();
    for id in ids {
        out.push(tc.job(id).await);
    }
    out
}

/// Every credit entry of `wallet` has ended: settled or forfeited, nothing left pending.
async fn entries(tc: &TestCoordinator, wallet: &str) -> Vec<(String, u64, String, u64)> {
    tc.ledger(wallet)
        .await
        .iter()
        .map(|c| {
            (
                c["job_id"].as_str().unwrap_or_default().to_string(),
                c["attempt"].as_u64().unwrap_or_default(),
                c["kind"].as_str().unwrap_or_default().to_string(),
                c["amount"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Each cheater of the list, alone against its own job: caught on its first proof (an
/// untrusted pair is audited on every proof), its credit forfeited, the job requeued for another
/// miner and then done by an honest one, and the cheater's wallet shows nothing settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_cheater_is_caught_and_earns_nothing() {
    for mode in [
        "random",
        "wrong_rows",
        "fraction:500",
        "wrong_seed",
        "other_rows",
    ] {
        let tc = TestCoordinator::start(test_config()).await;
        let key = tc.new_key(Scope::Miner);
        let id = submit(&tc, 7, 40).await;
        let out = finish(cheater(&tc, &key, "cheat-0", mode, 1)).await;
        assert!(out.contains("audit=Failed"), "{mode}: {out}");
        let v = tc.job(&id).await;
        assert_eq!(v.state, JobState::Queued, "{mode}: {v:?}");
        assert_eq!(
            v.failure.as_ref().map(|f| f.reason),
            Some(FailReason::AuditFailed)
        );
        let ver = v.verification.expect("a verification record");
        assert_eq!(ver.status, VerificationStatus::Failed, "{mode}");
        assert_eq!(ver.audit_rows.len(), 8);
        let b = balance(&tc, "cheat-0").await;
        assert_eq!(
            (b.balance, b.pending, b.forfeited),
            (0, 0, 40),
            "{mode}: {b:?}"
        );
        let kinds: Vec<String> = entries(&tc, "cheat-0")
            .await
            .into_iter()
            .map(|e| e.2)
            .collect();
        assert_eq!(
            kinds,
            ["forfeit", "credit"],
            "{mode}: a forfeit is a record, not a deletion"
        );
        // The requeued job goes to an honest miner, who is paid for it.
        let honest = tc.new_key(Scope::Miner);
        let out = finish(cheater(&tc, &honest, "honest-0", "honest", 1)).await;
        assert!(out.contains("attempt 2 audit=Passed"), "{mode}: {out}");
        let v = tc.job(&id).await;
        assert_eq!(v.state, JobState::Completed, "{mode}");
        assert_eq!(
            v.verification.map(|v| v.status),
            Some(VerificationStatus::Passed)
        );
        let b = balance(&tc, "honest-0").await;
        assert_eq!((b.balance, b.pending, b.forfeited), (40, 0, 0), "{mode}");
    }
}

/// A miner that replays its first (honest) job's proof for later jobs, and one that disappears
/// before answering: the replays are caught and forfeited; the vanished one's audit times out,
/// its job goes back to the queue and it earns nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_vanishing_miners_are_caught() {
    let mut config = test_config();
    config.verify.answer_within = Duration::from_millis(300);
    config.verify.strikes = 100;
    let tc = TestCoordinator::start(config).await;
    let replayer = tc.new_key(Scope::Miner);
    let first = submit(&tc, 1, 10).await;
    let later = [submit(&tc, 2, 20).await, submit(&tc, 3, 30).await];
    let out = finish(cheater(&tc, &replayer, "replay-0", "replay", 3)).await;
    assert_eq!(out.matches("audit=Passed").count(), 1, "{out}");
    assert_eq!(out.matches("audit=Failed").count(), 2, "{out}");
    assert_eq!(tc.job(&first).await.state, JobState::Completed);
    for v in views(&tc, &later).await {
        assert_eq!(v.state, JobState::Queued, "{v:?}");
    }
    // Its replays were caught each time (a caught job goes back to the queue, where the
    // replayer took the oldest again): paid only for its real work, every replay forfeited.
    let b = balance(&tc, "replay-0").await;
    let e = entries(&tc, "replay-0").await;
    let forfeits: Vec<u64> = e.iter().filter(|x| x.2 == "forfeit").map(|x| x.3).collect();
    assert_eq!(forfeits.len(), 2, "{e:?}");
    assert_eq!((b.balance, b.pending), (10, 0), "paid only for real work");
    assert_eq!(b.forfeited, forfeits.iter().sum::<u64>());

    let vanisher = tc.new_key(Scope::Miner);
    let out = finish(cheater(&tc, &vanisher, "vanish-0", "vanish", 1)).await;
    assert!(out.contains("audit=unanswered"), "{out}");
    let line: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("job "))
        .expect("a job line")
        .split_whitespace()
        .collect();
    let (gone, attempt) = (line[1].to_string(), line[3].to_string());
    let v = wait_for(
        "the unanswered audit to time out",
        Duration::from_secs(10),
        || async {
            let v = tc.job(&gone).await;
            (v.state == JobState::Queued).then_some(v)
        },
    )
    .await;
    assert_eq!(v.failure.map(|f| f.reason), Some(FailReason::AuditTimeout));
    let b = balance(&tc, "vanish-0").await;
    let reward = v.reward;
    assert_eq!((b.balance, b.pending, b.forfeited), (0, 0, reward), "{b:?}");
    // An answer after the deadline is refused as the failed audit it already is.
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&vanisher),
            &json!({"id": gone, "attempt": attempt.parse::<u32>().expect("an attempt"), "rows": []}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ack: AuditAck = r.parse();
    assert_eq!(ack.verdict, AuditVerdict::Failed);
}

/// A turncoat builds trust with honest work, collecting credits that are held (not audited,
/// pending for the holding window), then cheats: when it is caught, every credit it still has
/// pending is forfeited with the cheat's, their jobs go back to the queue, and after `strikes`
/// catches its key is suspended from `next` until an admin reinstates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_turncoat_forfeits_its_pending_stake_and_is_suspended() {
    let mut config = test_config();
    config.verify.trust_after = 1;
    config.verify.floor = 0.05;
    config.verify.hold = Duration::from_secs(600);
    config.verify.strikes = 2;
    let tc = TestCoordinator::start(config).await;
    let key = tc.new_key(Scope::Miner);
    let mut ids = Vec::new();
    for seed in 0..40 {
        ids.push(submit(&tc, seed, 1).await);
    }
    let out = finish(cheater(&tc, &key, "turncoat-0", "turncoat:12", 40)).await;
    let honest_lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("job "))
        .take(12)
        .collect();
    let passed = honest_lines
        .iter()
        .filter(|l| l.ends_with("audit=Passed"))
        .count() as u64;
    let held = honest_lines
        .iter()
        .filter(|l| l.ends_with("audit=none"))
        .count() as u64;
    assert_eq!(passed + held, 12, "{out}");
    assert!(
        held > 0,
        "with trust_after 1 some honest credits are held: {out}"
    );
    assert!(out.contains("audit=Failed"), "{out}");
    assert!(out.contains("next refused MinerSuspended"), "{out}");
    // Settled: exactly the audited honest jobs. Everything else it was credited is forfeited.
    let b = balance(&tc, "turncoat-0").await;
    assert_eq!(b.balance, passed, "{b:?}\n{out}");
    assert_eq!(b.pending, 0, "{b:?}");
    let e = entries(&tc, "turncoat-0").await;
    let credited: u64 = e.iter().filter(|x| x.2 == "credit").map(|x| x.3).sum();
    assert_eq!(b.forfeited, credited - passed, "{e:?}");
    // Every job that is not settled is back in the queue for someone else.
    for v in views(&tc, &ids).await {
        match v.state {
            JobState::Completed => {
                assert_eq!(
                    v.verification.map(|x| x.status),
                    Some(VerificationStatus::Passed)
                )
            }
            JobState::Queued => {}
            s => panic!("job left {s:?}: {v:?}"),
        }
    }
    // Suspended: a distinct code, shown to the admin; reinstated by the admin, it may work.
    let next = "/v1/miner/next?miner=turncoat-0";
    let r = tc.get(next, Some(&key)).await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::MinerSuspended));
    let miners: Vec<serde_json::Value> = tc
        .get("/v1/admin/miners", Some(&tc.admin_key))
        .await
        .parse();
    let me = miners
        .iter()
        .find(|m| m["miner_id"] == "turncoat-0")
        .expect("listed");
    assert_eq!(
        (me["strikes"].as_u64(), me["suspended"].as_bool()),
        (Some(2), Some(true))
    );
    let r = tc
        .post(
            "/v1/admin/miners/turncoat-0/reinstate",
            Some(&tc.client_key),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 403, "only an admin reinstates");
    let r = tc
        .post(
            "/v1/admin/miners/turncoat-0/reinstate",
            Some(&tc.admin_key),
            &json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s: Standing = r.parse();
    assert_eq!((s.strikes, s.suspended), (0, false));
    assert_eq!(tc.get(next, Some(&key)).await.status, 200);
}

/// A miner that computes only part of each output passes an audit exactly when the audited
/// rows all fall in the part it computed. Over many jobs (seeded, so one fixed run) the rate at
/// which it goes unnoticed matches the policy's `pass_probability`, and it never goes unnoticed
/// for long. An honest process running alongside is paid for every job it proves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_computers_pass_at_the_rate_the_policy_states_and_honest_miners_are_always_paid() {
    let mut config = test_config();
    config.verify.strikes = 1_000_000;
    config.verify.hold = Duration::from_millis(50);
    config.max_attempts = 1_000;
    let tc = TestCoordinator::start(config).await;
    // Rows computed: 7/8 of 64 = 56; 8 rows audited: passes with C(56, 8) / C(64, 8).
    let expect = pass_probability(u64::from(N), 8, 8);
    let jobs = 300u32;
    let mut ids = Vec::new();
    for seed in 0..jobs {
        ids.push(submit(&tc, u64::from(seed), 3).await);
    }
    let partial = tc.new_key(Scope::Miner);
    let honest = tc.new_key(Scope::Miner);
    let cheat = cheater(&tc, &partial, "partial-0", "fraction:875", 150);
    let good = cheater(&tc, &honest, "honest-1", "honest", 1_000);
    let cheat_out = finish(cheat).await;
    let good_out = finish(good).await;
    let audited: Vec<&str> = cheat_out
        .lines()
        .filter(|l| l.ends_with("audit=Passed") || l.ends_with("audit=Failed"))
        .collect();
    // Caught pairs are never trusted, so every one of its proofs was audited.
    assert_eq!(
        audited.len(),
        cheat_out.lines().filter(|l| l.starts_with("job ")).count()
    );
    let passed = audited
        .iter()
        .filter(|l| l.ends_with("audit=Passed"))
        .count();
    let rate = passed as f64 / audited.len() as f64;
    // Binomial: with p ~ 0.33 and 150 trials the standard deviation is ~0.04; allow 3 of them.
    assert!(
        audited.len() >= 100 && (rate - expect).abs() < 0.12,
        "unnoticed in {passed} of {} audits ({rate:.3}); the policy says {expect:.3}",
        audited.len()
    );
    // The honest process proved the rest (and every requeued job), all paid.
    let done = wait_for("every job to settle", Duration::from_secs(30), || async {
        let v = views(&tc, &ids).await;
        v.iter().all(|v| v.state.is_final()).then_some(v)
    })
    .await;
    let good_jobs = good_out.lines().filter(|l| l.starts_with("job ")).count() as u64;
    assert!(
        good_out.lines().all(|l| !l.ends_with("audit=Failed")),
        "{good_out}"
    );
    let b = balance(&tc, "honest-1").await;
    assert_eq!(
        (b.balance, b.pending, b.forfeited),
        (3 * good_jobs, 0, 0),
        "{b:?}"
    );
    let by_honest = done
        .iter()
        .filter(|v| v.state == JobState::Completed && v.miner_id.as_deref() == Some("honest-1"))
        .count() as u64;
    assert_eq!(
        by_honest, good_jobs,
        "every job the honest miner proved was paid"
    );
    // The partial computer was paid only for the audits it slipped through.
    let pb = balance(&tc, "partial-0").await;
    assert_eq!(pb.balance, 3 * passed as u64, "{pb:?}");
}

/// An audit's rows come from the Coordinator's secret: the same proof replayed (same
/// Idempotency-Key) gets the same challenge, the open audits are listed for the miner that
/// owes them and for no other key, and a second answer to a decided audit replays its verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audits_are_listed_idempotent_and_only_for_their_miner() {
    let tc = TestCoordinator::start(test_config()).await;
    let key = tc.miner_key.clone();
    tc.heartbeat(&key, "lister-0", "lister-0").await;
    let id = submit(&tc, 5, 9).await;
    let job = tc.next(&key, "lister-0", 1.0).await.expect("the job");
    let p = TorchBenchParams::parse(&job.params).expect("params");
    let held = Held::of(chain(&p));
    let proof = json!({"id": job.id, "miner_id": "lister-0", "attempt": job.attempt,
        "mode": "cpu", "output_sha": held.sha, "merkle_root": held.root, "metrics": {}});
    let body = serde_json::to_vec(&proof).expect("json");
    let post = || {
        tc.request(
            reqwest::Method::POST,
            "/v1/miner/proof",
            Some(key.as_str()),
            Some(body.clone()),
            &[("Idempotency-Key", "proof-1")],
        )
    };
    let first = post().await;
    let again = post().await;
    assert_eq!(
        first.body, again.body,
        "a replayed proof gets the same answer"
    );
    let ack: ProofAck = first.parse();
    let challenge = ack.audit.expect("an untrusted pair is always audited");
    assert_eq!(ack.state, JobState::Verifying);
    let listed: Vec<AuditChallenge> = tc
        .get("/v1/miner/audits?miner=lister-0", Some(&key))
        .await
        .parse();
    assert_eq!(listed, std::slice::from_ref(&challenge));
    let other = tc.new_key(Scope::Miner);
    let r = tc
        .get("/v1/miner/audits?miner=lister-0", Some(&other))
        .await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::MinerIdTaken));
    let answer = AuditAnswer {
        id: id.clone(),
        miner_id: Some("lister-0".into()),
        attempt: challenge.attempt,
        rows: held.open(&challenge.rows),
    };
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&other),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    assert_eq!((r.status, r.code()), (403, ErrorCode::Forbidden));
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&key),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    let ack: AuditAck = r.parse();
    assert_eq!(
        (ack.verdict, ack.state),
        (AuditVerdict::Passed, JobState::Completed)
    );
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&key),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    assert_eq!(
        r.parse::<AuditAck>(),
        ack,
        "a decided audit answers its verdict again"
    );
    let listed: Vec<AuditChallenge> = tc
        .get("/v1/miner/audits?miner=lister-0", Some(&key))
        .await
        .parse();
    assert!(listed.is_empty());
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&key),
            &json!({"id": id, "attempt": 7, "rows": []}),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::NoAudit));
    let b = balance(&tc, "lister-0").await;
    assert_eq!((b.balance, b.credits, b.pending), (9, 1, 0));
}

/// A cheater's output never reaches the client: it uploads the bytes its proof names (its
/// own garbage, under a correct-looking root), is caught, and its attempt can upload no more;
/// the honest miner's output, uploaded after the requeue, is what the client downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_cheaters_output_is_never_served() {
    let tc = TestCoordinator::start(test_config()).await;
    let cheat = tc.new_key(Scope::Miner);
    let honest = tc.miner_key.clone();
    tc.heartbeat(&cheat, "forger-0", "forger-0").await;
    tc.heartbeat(&honest, "honest-0", "honest-0").await;
    let id = submit(&tc, 11, 40).await;
    let put = |key: String, attempt: u32, body: Vec<u8>| {
        let path = format!("/v1/miner/jobs/{id}/artifact?attempt={attempt}&offset=0");
        let tc = &tc;
        async move {
            tc.request(reqwest::Method::PUT, &path, Some(&key), Some(body), &[])
                .await
        }
    };
    let prove = |key: String, miner: &'static str, job: Job, held: &Held| {
        let proof = json!({"id": job.id, "miner_id": miner, "attempt": job.attempt,
            "mode": "cpu", "output_sha": held.sha, "merkle_root": held.root,
            "output_len": N * N, "metrics": {}});
        let tc = &tc;
        async move {
            tc.post("/v1/miner/proof", Some(&key), &proof)
                .await
                .parse::<ProofAck>()
        }
    };

    let job = tc.next(&cheat, "forger-0", 1.0).await.expect("the job");
    let mut rng = fastrand::Rng::with_seed(3);
    let forged = Held::of((0..N).map(|_| garbage(&mut rng, N)).collect());
    let ack = prove(cheat.clone(), "forger-0", job.clone(), &forged).await;
    let challenge = ack.audit.expect("a new key is audited");
    let r = put(cheat.clone(), job.attempt, forged.rows.concat()).await;
    assert_eq!(
        (r.status, r.json()["complete"].clone()),
        (200, json!(true)),
        "{}",
        r.text()
    );
    let answer = AuditAnswer {
        id: id.clone(),
        miner_id: Some("forger-0".into()),
        attempt: challenge.attempt,
        rows: forged.open(&challenge.rows),
    };
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&cheat),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    assert_eq!(r.parse::<AuditAck>().verdict, AuditVerdict::Failed);
    let view = tc.job(&id).await;
    assert_eq!(
        (view.state, view.result),
        (JobState::Queued, None),
        "the forged result is gone"
    );
    let r = tc
        .get(
            &format!("/v1/client/jobs/{id}/artifact"),
            Some(&tc.client_key),
        )
        .await;
    assert_eq!((r.status, r.code()), (409, ErrorCode::ResultNotReady));
    let r = put(cheat.clone(), job.attempt, forged.rows.concat()).await;
    assert_eq!(
        (r.status, r.code()),
        (409, ErrorCode::NotAssigned),
        "{}",
        r.text()
    );

    let job = tc
        .next(&honest, "honest-0", 1.0)
        .await
        .expect("the requeued job");
    let p = TorchBenchParams::parse(&job.params).expect("params");
    let real = Held::of(chain(&p));
    let ack = prove(honest.clone(), "honest-0", job.clone(), &real).await;
    let r = put(cheat.clone(), job.attempt, real.rows.concat()).await;
    assert_eq!(
        (r.status, r.code()),
        (403, ErrorCode::Forbidden),
        "not the prover"
    );
    let r = put(honest.clone(), job.attempt, real.rows.concat()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let challenge = ack.audit.expect("a new key is audited");
    let answer = AuditAnswer {
        id: id.clone(),
        miner_id: Some("honest-0".into()),
        attempt: challenge.attempt,
        rows: real.open(&challenge.rows),
    };
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&honest),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    assert_eq!(r.parse::<AuditAck>().verdict, AuditVerdict::Passed);
    let r = tc
        .get(
            &format!("/v1/client/jobs/{id}/artifact"),
            Some(&tc.client_key),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.body,
        real.rows.concat(),
        "the chain's output, not the forgery"
    );
    let result = tc.job(&id).await.result.expect("a result");
    assert_eq!((result.output_sha, result.artifact_ready), (real.sha, true));
}

/// A caught cheater's half-sent upload can never complete: the sweep removes its partial file,
/// while an honest miner's upload in progress stays where it is.
#[tokio::test]
async fn a_caught_cheaters_partial_upload_is_removed() {
    let tc = TestCoordinator::start(test_config()).await;
    let cheat = tc.new_key(Scope::Miner);
    let honest = tc.miner_key.clone();
    tc.heartbeat(&cheat, "forger-0", "forger-0").await;
    tc.heartbeat(&honest, "honest-0", "honest-0").await;
    let mut dir = tc.db.clone().into_os_string();
    dir.push(".artifacts");
    let partials = std::path::Path::new(&dir).join("partial");
    let count = || std::fs::read_dir(&partials).expect("partial dir").count();
    let mut rng = fastrand::Rng::with_seed(5);
    let mut half_upload = |key: String, miner: &'static str, seed: u64| {
        let held = Held::of((0..N).map(|_| garbage(&mut rng, N)).collect());
        let tc = &tc;
        async move {
            let id = submit(tc, seed, 40).await;
            let job = tc.next(&key, miner, 1.0).await.expect("the job");
            let proof = json!({"id": id, "miner_id": miner, "attempt": job.attempt,
                "mode": "cpu", "output_sha": held.sha, "merkle_root": held.root,
                "output_len": N * N, "metrics": {}});
            let ack = tc
                .post("/v1/miner/proof", Some(&key), &proof)
                .await
                .parse::<ProofAck>();
            let path = format!(
                "/v1/miner/jobs/{id}/artifact?attempt={}&offset=0",
                job.attempt
            );
            let half = held.rows.concat()[..(N * N / 2) as usize].to_vec();
            let r = tc
                .request(reqwest::Method::PUT, &path, Some(&key), Some(half), &[])
                .await;
            assert_eq!(
                (r.status, r.json()["complete"].clone()),
                (200, json!(false))
            );
            (id, ack.audit.expect("a new key is audited"), held)
        }
    };
    let (id, challenge, forged) = half_upload(cheat.clone(), "forger-0", 21).await;
    // The honest side's upload is only in progress; its audit stays open.
    half_upload(honest.clone(), "honest-0", 22).await;
    assert_eq!(count(), 2);
    tc.coordinator.sweep_once().await.expect("sweep");
    assert_eq!(count(), 2, "both proofs are still being verified");

    let answer = AuditAnswer {
        id: id.clone(),
        miner_id: Some("forger-0".into()),
        attempt: challenge.attempt,
        rows: forged.open(&challenge.rows),
    };
    let r = tc
        .post(
            "/v1/miner/audit",
            Some(&cheat),
            &serde_json::to_value(&answer).expect("json"),
        )
        .await;
    assert_eq!(r.parse::<AuditAck>().verdict, AuditVerdict::Failed);
    tc.coordinator.sweep_once().await.expect("sweep");
    assert_eq!(
        count(),
        1,
        "the forger's partial is gone, the honest one stays"
    );
}

//! Honest miners are never falsely rejected: several real miners at once (the in-process
//! supervisor, every job in a real confined `aitbc-miner worker`), one per (CPU kernel, thread
//! count) pair, each with its own key and wallet, prove 500 small torch_bench jobs against the
//! real Coordinator with verification on. The policy is set so that both kinds of settlement
//! happen on every miner: `trust_after = 3` (a miner's first three proofs are audited), then
//! audits with probability `max(3 / streak, 0.3)`; the rest settle when the 200 ms hold ends.
//!
//! What must hold: every job completed on its first attempt, verified `passed` or
//! `unaudited`, with the output the protocol's reference gives; no audit failed, none timed
//! out, no failure was ever recorded; every wallet's settled balance is exactly the rewards of
//! the jobs its miner proved, with nothing pending or forfeited and no forfeit in its ledger;
//! no key has a strike; and each kernel path answered audits.
//!
//! Why this test can fail (it is not checked by running a broken miner): a kernel that gives
//! wrong bytes makes its worker commit to wrong rows. (1) Every audited proof is a check of 8
//! rows drawn after the proof is in, recomputed by the Coordinator from the specification: a
//! wrong opened row, or a right row that is not under the proof's root, fails the audit, which
//! shows here as a `Failed` verdict, a `FAILED` verification, an `AUDIT_FAILED` failure, a
//! second attempt, a forfeit and a strike, each of them asserted against. Every miner's first
//! three proofs are audited, so a kernel that is wrong at any size is caught on it unless all
//! its wrong rows escape 24 draws. (2) Independently of sampling, every completed job's
//! `output_sha` and `merkle_root` are compared with protocol's plain reference chain, so a wrong
//! byte in a job that was only held (never audited) fails the test too.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aitbc_coordinator::Scope;
use aitbc_protocol::api::{AuditVerdict, Balance, JobState, JobView, VerificationStatus};
use aitbc_protocol::args::CpuKernel;
use aitbc_protocol::hex;
use aitbc_protocol::workload::torch_bench::{commit, reference_output, TorchBenchParams};
use aitbc_supervisor::Event;
use aitbc_worker::workload::torch_bench::Kernel;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{reachable_tempdir, test_config, TestCoordinator};
use crate::miner_e2e::{miner_config, real_worker, Miner};

const JOBS: usize = 500;
const TRUST_AFTER: u32 = 3;
const FLOOR: f64 = 0.3;

/// Job `i`'s params: n in {16, 32, 48, 64}, iters 1 to 3, a seed of its own.
fn params(i: usize) -> TorchBenchParams {
    TorchBenchParams {
        n: 16 * (1 + (i % 4) as u32),
        iters: 1 + ((i / 4) % 3) as u32,
        seed: 90_000 + i as u64,
    }
}

/// Job `i`'s reward: 1 to 7 base units, so a balance that is off by a job shows.
fn reward(i: usize) -> u64 {
    1 + (i % 7) as u64
}

/// What one miner did, from its events.
#[derive(Default, Debug)]
struct Tally {
    /// Job ids whose proofs were accepted, with whether an audit was asked.
    proved: BTreeMap<String, bool>,
    /// Audits answered, by verdict (`None`: the answer was refused).
    verdicts: Vec<(String, Option<AuditVerdict>)>,
    failed: Vec<String>,
    rejected: Vec<String>,
}

impl Tally {
    fn audited(&self) -> usize {
        self.proved.values().filter(|a| **a).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_miners_on_every_kernel_and_thread_count_are_paid_for_every_job() {
    let t0 = Instant::now();
    let mut config = test_config();
    config.verify.trust_after = TRUST_AFTER;
    config.verify.floor = FLOOR;
    let c = TestCoordinator::start(config).await;

    // One miner per (kernel, threads): the portable loops and every SIMD kernel this CPU has.
    let kernels: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
    let lacks: Vec<&str> = Kernel::ALL
        .iter()
        .filter(|k| !k.available())
        .map(|k| k.name())
        .collect();
    if !lacks.is_empty() {
        eprintln!("SKIP int8 kernels this CPU lacks: {lacks:?}");
    }
    assert!(kernels.contains(&Kernel::Portable));
    let mut lanes: Vec<(Kernel, u32)> = Vec::new();
    for &k in &kernels {
        for threads in [1, 2] {
            lanes.push((k, threads));
        }
    }
    assert!(lanes.len() >= 4, "{lanes:?}");

    // Every job is in the queue before the first miner asks, so the miners share it.
    let mut jobs: HashMap<String, usize> = HashMap::new();
    for i in 0..JOBS {
        let p = params(i);
        let v = c
            .submit(json!({"workload": "torch_bench", "reward": reward(i),
                "params": {"n": p.n, "iters": p.iters, "seed": p.seed}}))
            .await;
        jobs.insert(v.id, i);
    }
    let submitted = t0.elapsed();

    // The miners, their events merged into one channel tagged with the miner's index.
    let (tx, mut events) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut miners = Vec::new();
    let mut dirs = Vec::new();
    for (m, &(kernel, threads)) in lanes.iter().enumerate() {
        let dir = reachable_tempdir();
        let key = c.new_key(Scope::Miner);
        let mut cfg = miner_config(
            &c.url,
            &key,
            &format!("honest-{m}"),
            &format!("w_honest_{m}"),
            dir.path(),
            1,
        );
        cfg.cpu_kernel = kernel.choice();
        cfg.threads_per_job = threads;
        assert_ne!(cfg.cpu_kernel, CpuKernel::Auto);
        let mut miner = Miner::start(cfg, real_worker());
        let mut rx = std::mem::replace(&mut miner.events, mpsc::unbounded_channel().1);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if tx.send((m, e)).is_err() {
                    break;
                }
            }
        });
        miners.push(miner);
        dirs.push(dir);
    }
    drop(tx);

    // Wait (on events) until every job's proof is accepted and every audit asked is answered.
    let mut tally: Vec<Tally> = lanes.iter().map(|_| Tally::default()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let proved: usize = tally.iter().map(|t| t.proved.len()).sum();
        let asked: usize = tally.iter().map(Tally::audited).sum();
        let answered: usize = tally.iter().map(|t| t.verdicts.len()).sum();
        if proved >= JOBS && answered >= asked {
            break;
        }
        let (m, e) = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("timed out: {proved} of {JOBS} proofs accepted, {answered} of {asked} audits answered; {tally:#?}")
            })
            .expect("the miners run");
        let t = &mut tally[m];
        match e {
            Event::ProofAccepted { id, audited, .. } => {
                assert!(
                    t.proved.insert(id.clone(), audited).is_none(),
                    "{id} accepted twice"
                );
            }
            Event::AuditAnswered { id, verdict, .. } => t.verdicts.push((id, verdict)),
            Event::JobFailed {
                id,
                reason,
                message,
            } => t
                .failed
                .push(format!("{id}: {} {message}", reason.as_str())),
            Event::ProofRejected { id, status, code } => {
                t.rejected.push(format!("{id}: {status} {code}"))
            }
            Event::Heartbeat { .. } | Event::JobStarted { .. } | Event::JobDone { .. } => {}
        }
    }
    let proved_in = t0.elapsed();

    // The held credits settle once their 200 ms window ends: poll the Coordinator (bounded).
    let completed = loop {
        let r = c
            .get(
                "/v1/admin/jobs?state=completed&limit=1000",
                Some(&c.admin_key),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let views: Vec<JobView> = r.parse();
        if views.len() >= JOBS {
            break views;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {} of {JOBS} jobs completed",
            views.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let settled_in = t0.elapsed();

    // The miners' own view: nothing failed, nothing rejected, every audit passed.
    for (m, t) in tally.iter().enumerate() {
        assert!(t.failed.is_empty(), "miner {m}: {:?}", t.failed);
        assert!(t.rejected.is_empty(), "miner {m}: {:?}", t.rejected);
        for (id, verdict) in &t.verdicts {
            assert_eq!(
                *verdict,
                Some(AuditVerdict::Passed),
                "miner {m}'s audit of {id}"
            );
            assert_eq!(t.proved.get(id), Some(&true), "{id}: answered, never asked");
        }
        assert_eq!(t.verdicts.len(), t.audited(), "miner {m}");
    }
    let owner: HashMap<&str, usize> = tally
        .iter()
        .enumerate()
        .flat_map(|(m, t)| t.proved.keys().map(move |id| (id.as_str(), m)))
        .collect();
    assert_eq!(owner.len(), JOBS, "every job proved by exactly one miner");

    // The Coordinator's view of every job: completed on attempt 1, passed or unaudited as the
    // miner was told, never a failure, and the bytes protocol's reference gives.
    assert_eq!(completed.len(), JOBS);
    let mut earned = vec![0u64; lanes.len()];
    for v in &completed {
        let i = *jobs
            .get(&v.id)
            .unwrap_or_else(|| panic!("unknown job {}", v.id));
        let m = owner[v.id.as_str()];
        assert_eq!(v.state, JobState::Completed, "{v:?}");
        assert_eq!(v.attempt, 1, "{v:?}");
        assert!(v.failure.is_none(), "{v:?}");
        assert_eq!(v.miner_id.as_deref(), Some(format!("honest-{m}").as_str()));
        let verification = v.verification.as_ref().expect("a verification");
        assert_eq!(verification.attempt, 1, "{v:?}");
        let want = if tally[m].proved[&v.id] {
            VerificationStatus::Passed
        } else {
            VerificationStatus::Unaudited
        };
        assert_eq!(verification.status, want, "{v:?}");
        let p = params(i);
        let reference = commit(&reference_output(&p), p.n as usize).expect("n x n");
        let proof = v.proof.as_ref().expect("the proof");
        assert_eq!(
            proof.output_sha,
            hex::encode(&reference.output_sha),
            "{v:?}"
        );
        assert_eq!(
            proof.merkle_root.as_deref(),
            Some(hex::encode(&reference.merkle_root).as_str()),
            "{v:?}"
        );
        assert_eq!(v.reward, reward(i));
        earned[m] += v.reward;
    }

    // Every wallet: exactly the rewards of its miner's jobs, settled; nothing pending or
    // forfeited; its ledger one credit and one settle per job, no forfeit.
    for (m, t) in tally.iter().enumerate() {
        let wallet = format!("w_honest_{m}");
        let r = c
            .get(&format!("/v1/wallet/balance?wallet={wallet}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let b: Balance = r.parse();
        assert_eq!(
            (b.balance, b.credits, b.pending, b.forfeited),
            (earned[m], t.proved.len() as u64, 0, 0),
            "{wallet}"
        );
        let r = c
            .get(
                &format!("/v1/wallet/ledger?wallet={wallet}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let ledger: Vec<Value> = r.parse();
        let count = |kind: &str| ledger.iter().filter(|e| e["kind"] == kind).count();
        assert_eq!(count("forfeit"), 0, "{wallet}: {ledger:?}");
        assert_eq!(count("credit"), t.proved.len(), "{wallet}");
        assert_eq!(count("settle"), t.proved.len(), "{wallet}");
        assert!(
            ledger.iter().all(|e| e["attempt"] == 1),
            "{wallet}: {ledger:?}"
        );
    }

    // No key has a strike or a suspension.
    let r = c.get("/v1/admin/miners", Some(&c.admin_key)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let views: Vec<Value> = r.parse();
    for m in 0..lanes.len() {
        let id = format!("honest-{m}");
        let v = views
            .iter()
            .find(|v| v["miner_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not among {views:?}"));
        assert_eq!(
            (v["strikes"].as_u64(), v["suspended"].as_bool()),
            (Some(0), Some(false)),
            "{v}"
        );
    }

    // Both kinds of settlement on every miner, and audits on every kernel path.
    println!(
        "honest_audits: {JOBS} jobs, {} miners; submitted in {submitted:?}, proved and \
         audited in {proved_in:?}, all settled in {settled_in:?}",
        lanes.len()
    );
    for (m, (&(kernel, threads), t)) in lanes.iter().zip(&tally).enumerate() {
        println!(
            "honest_audits: miner {m} kernel {:<11} threads {threads}: {:>3} jobs, {:>3} audited \
             (passed), {:>3} held (unaudited), earned {}",
            kernel.name(),
            t.proved.len(),
            t.audited(),
            t.proved.len() - t.audited(),
            earned[m]
        );
        assert!(
            t.audited() >= TRUST_AFTER as usize,
            "miner {m}: an untrusted key's first {TRUST_AFTER} proofs are audited: {t:?}"
        );
        assert!(
            t.proved.len() > t.audited(),
            "miner {m} ({}, {threads} threads) had no held job: {t:?}",
            kernel.name()
        );
    }
    for &k in &kernels {
        let audited: usize = lanes
            .iter()
            .zip(&tally)
            .filter(|((kernel, _), _)| *kernel == k)
            .map(|(_, t)| t.audited())
            .sum();
        assert!(audited > 0, "no audit on the {} kernel", k.name());
    }

    for m in miners {
        let s = m.stop().await;
        assert_eq!(s.jobs_failed, 0);
    }
    drop(dirs);
    println!("honest_audits: took {:?} in all", t0.elapsed());
}

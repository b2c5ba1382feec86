//! The verification policy, pure: which proofs are audited, which rows an audit opens, and
//! what an audit's answer is worth. Anchored on BOINC's adaptive replication: a (miner key,
//! workload) pair earns trust only by a run of consecutive passed audits, and a trusted pair is
//! still audited with a probability that falls as its run grows, down to a floor.
//!
//! # Draws
//!
//! Every random choice is a draw `SHA-256(secret || label || job id || attempt || root || i)`
//! from a 32-byte secret only the Coordinator holds ([`Policy::secret`]), made after the proof
//! (and so its Merkle root) is stored. A miner cannot predict the rows before it commits, and
//! cannot grind its commitment until the rows fall on rows it computed, as it could if the
//! rows were derived from the proof alone (Fiat-Shamir): each try would need the secret. The
//! same (secret, job, attempt, root) always gives the same decision and rows, so a replayed
//! proof, a restart or a test with a fixed secret sees the same audit.
//!
//! # What the policy guarantees
//!
//! With `k` rows opened out of `n`, a proof whose output has a fraction `f` of wrong rows
//! passes an audit with probability `C((1-f) n, k) / C(n, k) <= (1 - f)^k`
//! ([`pass_probability`]). A pair is audited with probability [`audit_probability`]: 1 until
//! its streak reaches `trust_after`, then `trust_after / streak`, never below `floor`. So a
//! miner that fakes a fraction `g` of its jobs, each with a fraction `f` of wrong rows, goes
//! unnoticed over `m` jobs with probability at most `(1 - g * floor * (1 - (1 - f)^k))^m`
//! ([`unnoticed_probability`]); `docs/api.md` tabulates it for the defaults. A failed audit
//! resets the streak, so a caught miner is audited on every proof again.
//!
//! This module must never do I/O, read a clock or hold state.

use aitbc_protocol::api::AuditAnswer;
use aitbc_protocol::hex;
use aitbc_protocol::merkle::Digest;
use aitbc_protocol::workload::torch_bench::{self, TorchBenchParams};
use sha2::{Digest as _, Sha256};

use crate::VerifyConfig;

/// The policy in force: the configuration and the secret draws come from.
#[derive(Clone, Debug)]
pub struct Policy {
    pub config: VerifyConfig,
    pub secret: [u8; 32],
}

/// What happens to a new proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Verification is off: settle at once.
    SettleNow,
    /// Not chosen: hold the credit for the holding window, then settle.
    Hold,
    /// Open these rows (ascending, distinct).
    Audit(Vec<u64>),
}

impl Policy {
    /// The decision for attempt `attempt` of job `job` whose proof commits to `root` over
    /// `rows` rows, from a pair whose current streak of passed audits is `streak`.
    pub fn decide(
        &self,
        job: &str,
        attempt: u32,
        root: &Digest,
        rows: u64,
        streak: u32,
    ) -> Decision {
        let c = &self.config;
        if !c.enabled {
            return Decision::SettleNow;
        }
        let p = audit_probability(c.trust_after, c.floor, streak);
        let draw = self.draw(b"audit?", job, attempt, root, 0);
        if unit(draw) < p {
            Decision::Audit(self.rows(job, attempt, root, rows))
        } else {
            Decision::Hold
        }
    }

    /// `min(k, n)` distinct rows out of `n`, ascending: a partial Fisher-Yates over draws.
    pub fn rows(&self, job: &str, attempt: u32, root: &Digest, n: u64) -> Vec<u64> {
        let k = u64::from(self.config.rows).min(n);
        // Floyd's sampling: k draws, each below a growing bound, no rejection loop.
        let mut picked: Vec<u64> = Vec::with_capacity(k as usize);
        for (i, j) in (n - k..n).enumerate() {
            let t = below(self.draw(b"rows", job, attempt, root, i as u64), j + 1);
            if picked.contains(&t) {
                picked.push(j);
            } else {
                picked.push(t);
            }
        }
        picked.sort_unstable();
        picked
    }

    fn draw(&self, label: &[u8], job: &str, attempt: u32, root: &Digest, i: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update((label.len() as u64).to_le_bytes());
        h.update(label);
        h.update((job.len() as u64).to_le_bytes());
        h.update(job.as_bytes());
        h.update(attempt.to_le_bytes());
        h.update(root);
        h.update(i.to_le_bytes());
        let d: [u8; 32] = h.finalize().into();
        u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }
}

/// Checks an answer to a torch_bench audit: it opens exactly the asked rows, in order, each
/// row is the committed leaf under `root` and equals the chain's row, recomputed here from the
/// job's params (`rows.len() * iters * n^2` multiply-adds). `Err` says, for the miner and the
/// client, the first thing that does not hold.
pub fn check_torch_bench(
    params: &TorchBenchParams,
    root: &Digest,
    asked: &[u64],
    answer: &AuditAnswer,
) -> Result<(), String> {
    let opened: Vec<u64> = answer.rows.iter().map(|r| r.index).collect();
    if opened != asked {
        return Err(format!(
            "the answer opens rows {opened:?}; the audit asked for {asked:?}"
        ));
    }
    let mut rows = Vec::with_capacity(asked.len());
    for r in &answer.rows {
        let data = hex::decode(&r.data)
            .ok_or_else(|| format!("rows[{}].data is not lower-case hex", r.index))?;
        let path = r
            .path
            .iter()
            .map(|d| hex::digest(d))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| format!("rows[{}].path holds a value that is not a digest", r.index))?;
        rows.push((r.index, data, path));
    }
    let n = params.n as usize;
    let idx: Vec<usize> = asked
        .iter()
        .map(|&i| usize::try_from(i).ok().filter(|&i| i < n))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("the audit's rows {asked:?} do not fit {n} rows"))?;
    let expected = torch_bench::output_rows(params, &idx);
    for ((index, data, path), want) in rows.iter().zip(&expected) {
        torch_bench::check_opening(params, root, *index, data, path, want)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A draw as a number in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// A draw as a number in [0, bound), by the multiply-shift map (bias below 2^-64 * bound).
fn below(x: u64, bound: u64) -> u64 {
    ((u128::from(x) * u128::from(bound)) >> 64) as u64
}

/// The chance a proof of a pair with `streak` consecutive passed audits is audited.
pub fn audit_probability(trust_after: u32, floor: f64, streak: u32) -> f64 {
    if streak < trust_after || streak == 0 {
        return 1.0;
    }
    (f64::from(trust_after) / f64::from(streak)).clamp(floor.clamp(0.0, 1.0), 1.0)
}

/// The chance that an audit opening `k` of `n` rows misses all `bad` wrong rows:
/// `C(n - bad, k) / C(n, k)`.
pub fn pass_probability(n: u64, bad: u64, k: u64) -> f64 {
    let k = k.min(n);
    let good = n.saturating_sub(bad);
    if k > good {
        return 0.0;
    }
    (0..k).fold(1.0, |p, i| p * (good - i) as f64 / (n - i) as f64)
}

/// An upper bound on the chance that a miner faking a fraction `g` of its jobs, each with a
/// fraction `f` of wrong rows, goes unnoticed over `m` jobs when every job is audited with
/// probability at least `floor` and an audit opens `k` rows.
pub fn unnoticed_probability(g: f64, f: f64, k: u32, floor: f64, m: u32) -> f64 {
    let caught_per_fake = floor * (1.0 - (1.0 - f).powi(k as i32));
    (1.0 - g * caught_per_fake).powi(m as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trust_after: u32, floor: f64, rows: u32) -> Policy {
        Policy {
            config: VerifyConfig {
                trust_after,
                floor,
                rows,
                ..VerifyConfig::default()
            },
            secret: [7; 32],
        }
    }

    #[test]
    fn probability_is_one_until_trusted_then_falls_to_the_floor() {
        for s in 0..10 {
            assert_eq!(audit_probability(10, 0.05, s), 1.0);
        }
        assert_eq!(audit_probability(10, 0.05, 20), 0.5);
        assert_eq!(audit_probability(10, 0.05, 200), 0.05);
        assert_eq!(audit_probability(10, 0.05, u32::MAX), 0.05);
        assert_eq!(audit_probability(0, 0.05, 0), 1.0);
    }

    #[test]
    fn rows_are_distinct_sorted_in_range_and_repeatable() {
        let p = policy(10, 0.05, 8);
        for n in [1u64, 2, 7, 8, 9, 1024, 16384] {
            for job in ["a", "b", "c"] {
                let r = p.rows(job, 1, &[1; 32], n);
                assert_eq!(r.len() as u64, n.min(8));
                assert!(r.windows(2).all(|w| w[0] < w[1]), "{r:?}");
                assert!(r.iter().all(|&x| x < n));
                assert_eq!(r, p.rows(job, 1, &[1; 32], n));
            }
        }
        // Another secret, attempt or root gives other rows.
        let base = p.rows("j", 1, &[1; 32], 1024);
        assert_ne!(base, p.rows("j", 2, &[1; 32], 1024));
        assert_ne!(base, p.rows("j", 1, &[2; 32], 1024));
        let other = Policy {
            secret: [8; 32],
            ..p.clone()
        };
        assert_ne!(base, other.rows("j", 1, &[1; 32], 1024));
    }

    /// Every row is about equally likely (seeded, so deterministic): over 4000 audits of 8 of
    /// 64 rows each row is opened 500 times on average; the bound is ±25%.
    #[test]
    fn rows_are_uniform() {
        let p = policy(10, 0.05, 8);
        let mut seen = [0u32; 64];
        for i in 0..4000 {
            for r in p.rows(&format!("job-{i}"), 1, &[0; 32], 64) {
                seen[r as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&c| (375..625).contains(&c)), "{seen:?}");
    }

    /// The decision's audit rate matches `audit_probability` for each streak (10 000 seeded
    /// draws, within 2 percentage points), and verification off always settles.
    #[test]
    fn audit_rate_matches_the_probability() {
        let p = policy(10, 0.05, 8);
        for (streak, want) in [(0u32, 1.0), (9, 1.0), (20, 0.5), (40, 0.25), (1000, 0.05)] {
            let audited = (0..10_000)
                .filter(|i| {
                    matches!(
                        p.decide(&format!("j{i}"), 1, &[3; 32], 1024, streak),
                        Decision::Audit(_)
                    )
                })
                .count();
            let rate = audited as f64 / 10_000.0;
            assert!(
                (rate - want).abs() < 0.02,
                "streak {streak}: {rate} vs {want}"
            );
        }
        let off = Policy {
            config: VerifyConfig {
                enabled: false,
                ..VerifyConfig::default()
            },
            secret: [0; 32],
        };
        assert_eq!(off.decide("j", 1, &[0; 32], 8, 0), Decision::SettleNow);
    }

    /// The pass probability of a fraction of wrong rows, against its closed form and against
    /// the seeded sampler itself.
    #[test]
    fn pass_probability_matches_the_sampler() {
        assert_eq!(pass_probability(1024, 0, 8), 1.0);
        assert_eq!(pass_probability(1024, 1024, 8), 0.0);
        assert_eq!(pass_probability(4, 1, 8), 0.0);
        let p = pass_probability(64, 16, 8);
        assert!(p <= 0.75f64.powi(8));
        // Rows 0..16 are wrong; count audits that miss them all.
        let pol = policy(10, 0.05, 8);
        let trials = 20_000;
        let missed = (0..trials)
            .filter(|i| {
                pol.rows(&format!("{i}"), 1, &[9; 32], 64)
                    .iter()
                    .all(|&r| r >= 16)
            })
            .count();
        let rate = missed as f64 / f64::from(trials);
        assert!((rate - p).abs() < 0.01, "{rate} vs {p}");
    }

    #[test]
    fn unnoticed_probability_falls_with_jobs() {
        // Faking every row of every job: caught at the floor rate.
        let all = unnoticed_probability(1.0, 1.0, 8, 0.05, 100);
        assert!((all - 0.95f64.powi(100)).abs() < 1e-12);
        assert!(unnoticed_probability(0.1, 0.5, 8, 0.05, 1000) < 0.01);
        assert_eq!(unnoticed_probability(0.0, 1.0, 8, 0.05, 1000), 1.0);
    }
}

//! The closed set of workloads, the one dispatch from a job to its typed params, and the pure
//! check that turns a job's `(workload, params, limits)` into a [`WorkloadSpec`] or a precise
//! refusal.
//!
//! Each workload is one file here (`torch_bench.rs`): its params and their checks, its resource
//! formulas (the [`Needs`] it declares), its output and commitment format, and the reference
//! math a verifier recomputes, reachable without the worker or the supervisor. This file only
//! names the workloads ([`Workload`], the one registry of names) and dispatches to them
//! ([`WorkloadSpec::needs`] and `typed`, one `match` each).
//!
//! Two questions are kept apart: "are these params valid?" ([`validate_submission`],
//! protocol's rules only, asked by the Coordinator when a client submits: 422 on refusal) and
//! "does this build run it?" (the miner's own capability list, `aitbc_supervisor::policy::RUNS`,
//! never consulted here). The supervisor runs [`plan`] before any worker process is touched (a
//! refusal becomes a fail report), and the worker gets the typed result. It must stay free of
//! I/O and of anything host-specific.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{FailReason, JobLimits};

pub mod torch_bench;

/// Every workload name the API accepts (guide section 5).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    TorchBench,
    SdInfer,
    LlmGen,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::TorchBench, Workload::SdInfer, Workload::LlmGen];

    pub fn as_str(self) -> &'static str {
        match self {
            Workload::TorchBench => "torch_bench",
            Workload::SdInfer => "sd_infer",
            Workload::LlmGen => "llm_gen",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.as_str() == s)
    }
}

/// What a workload's typed params declare about the job they describe: the one place its
/// resource formulas live. The Coordinator, the supervisor's plan and the worker's re-check all
/// read a job's needs from here, so they cannot disagree.
pub trait Needs {
    /// Host memory the job needs on the CPU path, in MiB (checked against `limits.ram_mb`).
    fn memory_mb(&self) -> u64;
    /// Device memory the job allocates on the GPU path, in MiB (the least `limits.vram_mb` a
    /// GPU job may have).
    fn vram_mb(&self) -> u64;
    /// Operations the job performs, for its metrics (`flops`, GFLOP/s).
    fn flops(&self) -> u64;
    /// Length of the committed output in bytes.
    fn output_len(&self) -> u64;
    /// The job in one short line for messages: `torch_bench n=1024 iters=100 seed=0`.
    fn describe(&self) -> String;
}

/// A workload with its parameters checked and typed: what a worker is asked to run. Adding a
/// workload adds a variant here, its arm in [`WorkloadSpec::needs`] and in `typed`.
#[derive(Serialize, Deserialize, Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadSpec {
    TorchBench(torch_bench::TorchBenchParams),
}

impl WorkloadSpec {
    pub fn workload(&self) -> Workload {
        match self {
            WorkloadSpec::TorchBench(_) => Workload::TorchBench,
        }
    }

    /// The workload's own declaration of what the job needs.
    pub fn needs(&self) -> &dyn Needs {
        match self {
            WorkloadSpec::TorchBench(p) => p,
        }
    }

    pub fn flops(&self) -> u64 {
        self.needs().flops()
    }
    pub fn memory_mb(&self) -> u64 {
        self.needs().memory_mb()
    }
    /// The least `vram_mb` a GPU worker accepts for this workload.
    pub fn vram_mb(&self) -> u64 {
        self.needs().vram_mb()
    }
    pub fn describe(&self) -> String {
        self.needs().describe()
    }

    /// The number of rows the job's output is committed to: the leaves of its Merkle root
    /// (torch_bench: `n`), each of which an audit may open. A worker sends exactly this many
    /// leaf hashes with its answer (`wire::FromWorker::Leaves`).
    pub fn rows(&self) -> u64 {
        match self {
            WorkloadSpec::TorchBench(p) => u64::from(p.n),
        }
    }
}

/// The dispatch from a name to its typed params: the workload's own parser, or `None` for a
/// workload protocol has no typed spec for yet.
fn typed(w: Workload, params: &Value) -> Option<Result<WorkloadSpec, PlanError>> {
    match w {
        Workload::TorchBench => {
            Some(torch_bench::TorchBenchParams::parse(params).map(WorkloadSpec::TorchBench))
        }
        Workload::SdInfer | Workload::LlmGen => None,
    }
}

/// Why a job cannot be turned into a [`WorkloadSpec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("unknown workload {0:?}; known workloads: torch_bench, sd_infer, llm_gen")]
    UnknownWorkload(String),
    /// A valid job of a workload that protocol has no typed spec for yet, so no worker can be
    /// asked to run it. A fact about this protocol version, not about any one miner.
    #[error("workload {:?} has no typed spec in this protocol version", .0.as_str())]
    NoSpec(Workload),
    #[error("{field} = {value}: {reason}")]
    BadParams {
        field: String,
        value: String,
        reason: String,
    },
    #[error("the job needs {needed_mb} MiB of memory but limits.ram_mb is {limit_mb}")]
    OverMemory { needed_mb: u64, limit_mb: u64 },
}

impl PlanError {
    /// The fail reason a miner reports for this refusal.
    pub fn fail_reason(&self) -> FailReason {
        match self {
            PlanError::UnknownWorkload(_) | PlanError::NoSpec(_) => FailReason::UnknownWorkload,
            PlanError::BadParams { .. } | PlanError::OverMemory { .. } => FailReason::BadParams,
        }
    }
}

/// Checks a job's limits against their lower bounds ([`JobLimits::MIN_RAM_MB`] and the
/// others): a job with no memory, CPU time or wall-clock time is refused as
/// [`PlanError::BadParams`] naming the field, e.g. `limits.max_runtime_s = 0`.
pub fn check_limits(limits: &JobLimits) -> Result<(), PlanError> {
    for (field, value, min) in [
        ("limits.ram_mb", limits.ram_mb, JobLimits::MIN_RAM_MB),
        (
            "limits.cpu_time_s",
            limits.cpu_time_s,
            JobLimits::MIN_CPU_TIME_S,
        ),
        (
            "limits.max_runtime_s",
            limits.max_runtime_s,
            JobLimits::MIN_MAX_RUNTIME_S,
        ),
    ] {
        if value < min {
            return Err(PlanError::BadParams {
                field: field.into(),
                value: value.to_string(),
                reason: format!("must be at least {min}"),
            });
        }
    }
    Ok(())
}

/// "Are these params valid?": protocol's rules for every known workload, and nothing else.
/// The Coordinator asks it of every submission; it never depends on which workloads any miner
/// runs, so implementing a workload in a miner cannot make it stricter. A typed workload's rules
/// are its params and its memory against `limits.ram_mb`; a workload without a typed spec yet
/// needs a JSON object.
pub fn validate_submission(
    workload: &str,
    params: &Value,
    limits: &JobLimits,
) -> Result<Workload, PlanError> {
    spec_of(workload, params, limits).map(|(w, _)| w)
}

/// A valid job ([`validate_submission`]) as the typed [`WorkloadSpec`] a worker runs, or
/// [`PlanError::NoSpec`] for a workload protocol has no spec for. Whether this miner runs the
/// workload is the miner's question, asked before this one.
pub fn plan(workload: &str, params: &Value, limits: &JobLimits) -> Result<WorkloadSpec, PlanError> {
    match spec_of(workload, params, limits)? {
        (_, Some(spec)) => Ok(spec),
        (w, None) => Err(PlanError::NoSpec(w)),
    }
}

fn spec_of(
    workload: &str,
    params: &Value,
    limits: &JobLimits,
) -> Result<(Workload, Option<WorkloadSpec>), PlanError> {
    let w = Workload::parse(workload).ok_or_else(|| PlanError::UnknownWorkload(workload.into()))?;
    check_limits(limits)?;
    match typed(w, params) {
        None if params.is_object() => Ok((w, None)),
        None => Err(bad("params", params, "must be a JSON object")),
        Some(spec) => {
            let spec = spec?;
            let needed_mb = spec.memory_mb();
            if needed_mb > limits.ram_mb {
                return Err(PlanError::OverMemory {
                    needed_mb,
                    limit_mb: limits.ram_mb,
                });
            }
            Ok((w, Some(spec)))
        }
    }
}

/// A refusal naming `field` and its value (cut to 64 characters).
pub(crate) fn bad(field: &str, value: &Value, reason: &str) -> PlanError {
    let mut value = value.to_string();
    if value.len() > 64 {
        value.truncate(61);
        value.push_str("...");
    }
    PlanError::BadParams {
        field: field.into(),
        value,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits(ram_mb: u64) -> JobLimits {
        JobLimits {
            ram_mb,
            ..JobLimits::default()
        }
    }

    #[test]
    fn limits_have_lower_bounds_for_every_workload() {
        for (field, set) in [
            (
                "limits.ram_mb",
                (|l: &mut JobLimits| l.ram_mb = 0) as fn(&mut JobLimits),
            ),
            ("limits.cpu_time_s", |l| l.cpu_time_s = 0),
            ("limits.max_runtime_s", |l| l.max_runtime_s = 0),
        ] {
            let mut l = limits(1024);
            set(&mut l);
            for workload in ["torch_bench", "sd_infer", "llm_gen"] {
                let e = validate_submission(workload, &json!({}), &l).unwrap_err();
                assert_eq!(e.to_string(), format!("{field} = 0: must be at least 1"));
                assert_eq!(e.fail_reason(), FailReason::BadParams);
                // The miner's own check (plan) refuses it the same way.
                assert_eq!(plan(workload, &json!({}), &l).unwrap_err(), e);
            }
        }
        let ones = JobLimits {
            ram_mb: 64,
            vram_mb: 0,
            cpu_time_s: 1,
            max_runtime_s: 1,
        };
        assert!(plan("torch_bench", &json!({"n": 8}), &ones).is_ok());
    }

    #[test]
    fn memory_is_checked_against_ram_mb() {
        let err = plan("torch_bench", &json!({"n": 8192}), &limits(256)).unwrap_err();
        assert_eq!(
            err,
            PlanError::OverMemory {
                needed_mb: 448 + 32,
                limit_mb: 256
            }
        );
    }

    #[test]
    fn unknown_and_unsupported_workloads() {
        let e = plan("bitcoin", &json!({}), &limits(1024)).unwrap_err();
        assert_eq!(e.fail_reason(), FailReason::UnknownWorkload);
        let e = plan("sd_infer", &json!({}), &limits(1024)).unwrap_err();
        assert_eq!(e, PlanError::NoSpec(Workload::SdInfer));
        assert_eq!(e.fail_reason(), FailReason::UnknownWorkload);
        assert_eq!(
            validate_submission("sd_infer", &json!({"prompt": "a cat"}), &limits(1024)),
            Ok(Workload::SdInfer)
        );
        assert!(validate_submission("sd_infer", &json!(3), &limits(1024)).is_err());
        assert!(validate_submission("bitcoin", &json!({}), &limits(1024)).is_err());
        // Every name in the registry is a valid submission with empty params.
        for w in Workload::ALL {
            assert_eq!(
                validate_submission(w.as_str(), &json!({}), &limits(1024)),
                Ok(w)
            );
        }
    }
}

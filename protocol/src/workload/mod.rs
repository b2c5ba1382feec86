//! The closed set of workloads and the one pure check that turns a job's `(workload, params,
//! limits)` into a typed [`WorkloadSpec`] or a precise refusal.
//!
//! [`Workload`] is the one registry of names. Two questions are kept apart: "are these params
//! valid?" ([`validate_submission`], protocol's rules only, asked by the Coordinator when a
//! client submits: 422 on refusal) and "does this build run it?" (the miner's own capability
//! list, `aitbc_supervisor::policy::RUNS`, never consulted here). The supervisor runs [`plan`]
//! before any worker process is touched (a refusal becomes a fail report), and the worker gets
//! the typed result. It must stay free of I/O and of anything host-specific.

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

/// `torch_bench`: a chain of `iters` exact n x n int8 matrix products with int32 accumulation
/// and an integer requantization between them, from inputs drawn from `seed`
/// ([`torch_bench`] specifies it). The output is the final n x n int8 matrix, the same bytes on
/// every machine.
#[derive(Serialize, Deserialize, Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TorchBenchParams {
    #[serde(default = "TorchBenchParams::default_n")]
    pub n: u32,
    #[serde(default = "TorchBenchParams::default_iters")]
    pub iters: u32,
    #[serde(default)]
    pub seed: u64,
}

impl TorchBenchParams {
    /// The guide's chain: 1024 x 1024, 100 products.
    pub const DEFAULT_N: u32 = 1024;
    pub const DEFAULT_ITERS: u32 = 100;
    pub const MAX_N: u32 = 16384;
    pub const MAX_ITERS: u32 = 100_000;
    /// Resident memory a worker needs besides the matrices (code, stacks, allocator slack).
    pub const OVERHEAD_MB: u64 = 32;
    /// The workspace the GPU chain hands cuBLAS (`cublasSetWorkspace`, NVIDIA's recommendation
    /// for Hopper), so that cuBLAS allocates nothing of its own during a job.
    pub const GPU_CUBLAS_WORKSPACE_BYTES: u64 = 32 << 20;
    /// The GPU chain's device state besides its matrices (reserved for flags and counters).
    pub const GPU_STATE_BYTES: u64 = 16;

    fn default_n() -> u32 {
        Self::DEFAULT_N
    }
    fn default_iters() -> u32 {
        Self::DEFAULT_ITERS
    }

    /// Bytes of one n x n int8 matrix.
    pub fn matrix_bytes(&self) -> u64 {
        u64::from(self.n) * u64::from(self.n)
    }

    /// Memory the job needs on the host (CPU path), in MiB rounded up: `A`, the next `A` and
    /// `B` as int8, room for one n x n int32 buffer (a packed copy of `B` or the products), plus
    /// overhead. The CPU kernels must stay within it.
    pub fn memory_mb(&self) -> u64 {
        (7 * self.matrix_bytes()).div_ceil(1 << 20) + Self::OVERHEAD_MB
    }

    /// Device memory the GPU chain allocates (`aitbc-cuda`'s `Gpu::run_chain`), in bytes: the
    /// one formula the Coordinator, the supervisor, the worker and the CUDA crate share. See
    /// [`TorchBenchParams::vram_bytes_for`].
    pub fn vram_bytes(&self) -> u64 {
        Self::vram_bytes_for(self.n, true)
    }

    /// [`TorchBenchParams::vram_bytes`] in MiB, rounded up: the least `vram_mb` a GPU job of
    /// these params may be given.
    pub fn vram_mb(&self) -> u64 {
        self.vram_bytes().div_ceil(1 << 20)
    }

    /// What the GPU chain of size `n` allocates on the device, exactly: `A` and `B` as int8 and
    /// the int32 product buffer (`6n²` bytes), the chain's [`TorchBenchParams::GPU_STATE_BYTES`] and, when
    /// cuBLAS computes the products, its [`TorchBenchParams::GPU_CUBLAS_WORKSPACE_BYTES`] (the
    /// own-kernel path allocates that much less). Saturating: no `n` wraps. Not counted: the
    /// CUDA context itself (a driver-dependent few hundred MiB per process), which NVML's
    /// per-process figure includes.
    pub fn vram_bytes_for(n: u32, cublas: bool) -> u64 {
        let matrix = u64::from(n).saturating_mul(u64::from(n));
        let workspace = if cublas {
            Self::GPU_CUBLAS_WORKSPACE_BYTES
        } else {
            0
        };
        matrix
            .saturating_mul(6)
            .saturating_add(Self::GPU_STATE_BYTES)
            .saturating_add(workspace)
    }

    /// Operations of the chain (int8 multiplies and adds): `2 n^3` per product.
    pub fn flops(&self) -> u64 {
        2 * u64::from(self.n).pow(3) * u64::from(self.iters)
    }

    /// Length of the hashed output in bytes: the final n x n int8 matrix.
    pub fn output_len(&self) -> u64 {
        self.matrix_bytes()
    }
}

/// A workload with its parameters checked and typed: what a worker is asked to run.
#[derive(Serialize, Deserialize, Encode, Decode, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadSpec {
    TorchBench(TorchBenchParams),
}

impl WorkloadSpec {
    pub fn workload(&self) -> Workload {
        match self {
            WorkloadSpec::TorchBench(_) => Workload::TorchBench,
        }
    }
    pub fn flops(&self) -> u64 {
        match self {
            WorkloadSpec::TorchBench(p) => p.flops(),
        }
    }
    pub fn memory_mb(&self) -> u64 {
        match self {
            WorkloadSpec::TorchBench(p) => p.memory_mb(),
        }
    }
    /// The least `vram_mb` a GPU worker accepts for this workload.
    pub fn vram_mb(&self) -> u64 {
        match self {
            WorkloadSpec::TorchBench(p) => p.vram_mb(),
        }
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
/// runs, so implementing a workload in a miner cannot make it stricter. `torch_bench`'s rules
/// are its typed params and memory; a workload without a typed spec yet needs a JSON object.
pub fn validate_submission(
    workload: &str,
    params: &Value,
    limits: &JobLimits,
) -> Result<Workload, PlanError> {
    let w = Workload::parse(workload).ok_or_else(|| PlanError::UnknownWorkload(workload.into()))?;
    check_limits(limits)?;
    match w {
        Workload::TorchBench => torch_bench_spec(params, limits).map(|_| w),
        Workload::SdInfer | Workload::LlmGen if params.is_object() => Ok(w),
        Workload::SdInfer | Workload::LlmGen => Err(bad("params", params, "must be a JSON object")),
    }
}

/// A valid job ([`validate_submission`]) as the typed [`WorkloadSpec`] a worker runs, or
/// [`PlanError::NoSpec`] for a workload protocol has no spec for. Whether this miner runs the
/// workload is the miner's question, asked before this one.
pub fn plan(workload: &str, params: &Value, limits: &JobLimits) -> Result<WorkloadSpec, PlanError> {
    match validate_submission(workload, params, limits)? {
        Workload::TorchBench => torch_bench_spec(params, limits),
        other => Err(PlanError::NoSpec(other)),
    }
}

fn torch_bench_spec(params: &Value, limits: &JobLimits) -> Result<WorkloadSpec, PlanError> {
    let p = torch_bench_params(params)?;
    let needed_mb = p.memory_mb();
    if needed_mb > limits.ram_mb {
        return Err(PlanError::OverMemory {
            needed_mb,
            limit_mb: limits.ram_mb,
        });
    }
    Ok(WorkloadSpec::TorchBench(p))
}

fn bad(field: &str, value: &Value, reason: &str) -> PlanError {
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

fn torch_bench_params(params: &Value) -> Result<TorchBenchParams, PlanError> {
    let obj = match params {
        Value::Null => return Ok(TorchBenchParams::default()),
        Value::Object(o) => o,
        other => return Err(bad("params", other, "must be a JSON object")),
    };
    for key in obj.keys() {
        if !matches!(key.as_str(), "n" | "iters" | "seed") {
            return Err(bad(
                &format!("params.{key}"),
                &obj[key],
                "unknown parameter (torch_bench takes n, iters, seed)",
            ));
        }
    }
    let int = |field: &str, default: u64, min: u64, max: u64| -> Result<u64, PlanError> {
        match obj.get(field) {
            None => Ok(default),
            Some(v) => match v.as_u64() {
                Some(x) if (min..=max).contains(&x) => Ok(x),
                _ => Err(bad(
                    &format!("params.{field}"),
                    v,
                    &format!("expected a whole number from {min} to {max}"),
                )),
            },
        }
    };
    Ok(TorchBenchParams {
        n: int(
            "n",
            TorchBenchParams::DEFAULT_N.into(),
            1,
            TorchBenchParams::MAX_N.into(),
        )? as u32,
        iters: int(
            "iters",
            TorchBenchParams::DEFAULT_ITERS.into(),
            1,
            TorchBenchParams::MAX_ITERS.into(),
        )? as u32,
        seed: int("seed", 0, 0, u64::MAX)?,
    })
}

impl Default for TorchBenchParams {
    fn default() -> Self {
        TorchBenchParams {
            n: Self::DEFAULT_N,
            iters: Self::DEFAULT_ITERS,
            seed: 0,
        }
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
    fn guide_defaults_fit_the_default_limits() {
        let spec = plan("torch_bench", &json!({}), &JobLimits::default()).unwrap();
        let WorkloadSpec::TorchBench(p) = spec;
        assert_eq!((p.n, p.iters, p.seed), (1024, 100, 0));
        assert_eq!(p.flops(), 2 * 1024u64.pow(3) * 100);
        // A, the next A and B (1 MiB each) and one int32 buffer (4 MiB), plus overhead.
        assert_eq!(p.memory_mb(), 7 + 32);
    }

    #[test]
    fn vram_is_two_int8_matrices_an_int32_product_state_and_the_cublas_workspace() {
        let p = |n| TorchBenchParams {
            n,
            iters: 1,
            seed: 0,
        };
        let ws = TorchBenchParams::GPU_CUBLAS_WORKSPACE_BYTES;
        assert_eq!(p(1).vram_bytes(), 6 + 16 + ws);
        assert_eq!(p(1024).vram_bytes(), (6 << 20) + 16 + (32 << 20));
        assert_eq!(p(8192).vram_bytes(), (384 << 20) + 16 + (32 << 20));
        assert_eq!(
            TorchBenchParams::vram_bytes_for(1024, false),
            (6 << 20) + 16
        );
        // The state words push every size just past a whole MiB: rounded up.
        assert_eq!(p(1024).vram_mb(), 6 + 32 + 1);
        assert_eq!(p(8192).vram_mb(), 384 + 32 + 1);
        assert_eq!(p(1).vram_mb(), 33);
        assert_eq!(WorkloadSpec::TorchBench(p(1024)).vram_mb(), 39);
        assert_eq!(
            p(TorchBenchParams::MAX_N).vram_bytes(),
            (3 << 29) + 16 + (32 << 20)
        );
        assert_eq!(TorchBenchParams::vram_bytes_for(u32::MAX, true), u64::MAX);
        // vram_mb always covers vram_bytes, by less than one MiB.
        for n in (1..=TorchBenchParams::MAX_N).step_by(997) {
            let (b, mb) = (p(n).vram_bytes(), p(n).vram_mb());
            assert!(mb << 20 >= b && (mb << 20) - b < 1 << 20, "n={n}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_value() {
        let cases = [
            (json!({"n": 0}), "params.n = 0"),
            (json!({"n": "big"}), "params.n = \"big\""),
            (json!({"iters": -1}), "params.iters = -1"),
            (json!({"n": 20000}), "params.n = 20000"),
            (json!({"size": 3}), "params.size = 3"),
            (json!([1, 2]), "params = [1,2]"),
        ];
        for (params, want) in cases {
            let err = plan("torch_bench", &params, &limits(1 << 20)).unwrap_err();
            assert!(err.to_string().starts_with(want), "{err} !~ {want}");
            assert_eq!(err.fail_reason(), FailReason::BadParams);
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

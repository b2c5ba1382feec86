//! The GPU chain: [`run_gpu`] runs a checked job on the GPU the worker opened during its
//! confinement (`aitbc-cuda`'s `Gpu::run_chain`, the exact int8 chain of
//! `aitbc_protocol::workload::torch_bench`) and reports the commitment `run_chain` computed
//! with the protocol's `Committer` over the rows the device streamed back in chunks of whole
//! rows (the copy of the next chunk overlaps the hashing of this one), with the `n` row leaves
//! the root is over (what the supervisor keeps to answer an audit). The arithmetic is exact,
//! so the commitment is the CPU's, bit for bit.
//!
//! This module must never open a device (that is confinement step 6, before seccomp), never
//! allocate device memory past the job's cap (every allocation goes through `aitbc-cuda`'s
//! `VramBudget`), and never report a result whose length, FLOP count or commitment differ from
//! what the params say.

use std::time::{Duration, Instant};

use aitbc_cuda::{GemmPath, Gpu};
use aitbc_protocol::api::Mode;
use aitbc_protocol::workload::torch_bench::TorchBenchParams;

use super::check_params;
use crate::workload::Output;
use crate::WorkerError;

/// torch_bench's GPU module on device `ordinal` (confinement step 6, after the driver probe):
/// `Gpu::open` (context, streams, the embedded PTX, cuBLAS when it loads, staging buffers) and
/// `Gpu::warm_up` (a tiny chain on every GEMM path, so nothing lazy is left for after seccomp).
/// Returns it and the Hello line's summary; an error names the device and the failing part.
pub fn open_gpu(ordinal: usize) -> Result<(Gpu, String), String> {
    let gpu = Gpu::open(ordinal).map_err(|e| format!("opening GPU {ordinal}: {e}"))?;
    gpu.warm_up()
        .map_err(|e| format!("warming up GPU {ordinal} ({}): {e}", gpu.name()))?;
    let summary = describe(
        gpu.ordinal(),
        gpu.name(),
        gpu.default_gemm(),
        gpu.cublas_unavailable().is_some(),
    );
    Ok((gpu, summary))
}

/// `cuda gpu0 "NVIDIA H100 80GB HBM3" igemm cublas` (or `igemm own kernel (no cuBLAS)`).
/// The name comes from the driver: control characters are dropped and it is cut at 64
/// characters, so the Hello line stays one short line.
pub fn describe(ordinal: usize, name: &str, gemm: GemmPath, cublas_missing: bool) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    let gemm = match (gemm, cublas_missing) {
        (GemmPath::Cublas, _) => "igemm cublas",
        (GemmPath::OwnKernel, true) => "igemm own kernel (no cuBLAS)",
        (GemmPath::OwnKernel, false) => "igemm own kernel",
    };
    format!("cuda gpu{ordinal} {name:?} {gemm}")
}

/// Runs the chain for `p` on `gpu`, allocating at most `vram_cap_bytes` of device memory
/// (a job whose chain needs more is refused before anything is allocated).
pub fn run_gpu(
    gpu: &Gpu,
    p: &TorchBenchParams,
    vram_cap_bytes: u64,
) -> Result<Output, WorkerError> {
    check_params(p)?;
    let start = Instant::now();
    // aitbc-cuda feeds each chunk to the protocol's `Committer` before handing it here; the
    // worker checks the chunking and the length (hashing the bytes a second time would double
    // the host's share of the job for nothing).
    let n = p.n as usize;
    let mut whole_rows = true;
    let mut streamed = 0u64;
    let stats = gpu.run_chain(p.n, p.iters, p.seed, vram_cap_bytes, &mut |chunk| {
        whole_rows &= !chunk.is_empty() && chunk.len().is_multiple_of(n);
        streamed += chunk.len() as u64;
    })?;
    let want = (p.output_len(), p.flops());
    if stats.leaves.len() != n {
        return Err(WorkerError::Internal(format!(
            "the GPU chain committed to {} rows, not n = {n}",
            stats.leaves.len()
        )));
    }
    if !whole_rows || (streamed, stats.flops) != want || stats.output_len != want.0 {
        return Err(WorkerError::Internal(format!(
            "the GPU chain streamed {streamed} bytes (stated {}, in whole rows: {whole_rows}) \
             and {} operations; params n = {}, iters = {} make {} bytes and {} operations",
            stats.output_len, stats.flops, p.n, p.iters, want.0, want.1
        )));
    }
    Ok(Output {
        output_sha: stats.commitment.output_sha,
        merkle_root: stats.commitment.merkle_root,
        leaves: stats.leaves,
        output_len: streamed,
        flops: stats.flops,
        elapsed: start.elapsed(),
        device_time: device_time(stats.products_ms),
        kind: Mode::Gpu,
    })
}

/// The products' device time from CUDA's event timer (milliseconds as `f32`); `None` when the
/// driver gave something that is not a time (NaN, negative, infinite), so the job's compute
/// time falls back to the wall time rather than to an invented figure.
fn device_time(products_ms: f32) -> Option<Duration> {
    Duration::try_from_secs_f64(f64::from(products_ms) / 1e3).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aitbc_protocol::workload::torch_bench::{commit, reference_output, KNOWN_ANSWERS};

    /// A SKIP line on the real stderr (not captured by the test harness, so it shows).
    fn skip(line: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    /// The GPU, or `None` after a visible SKIP line on a host without one.
    fn gpu(test: &str) -> Option<Gpu> {
        if !aitbc_cuda::driver_present() {
            skip(&format!("SKIP: no NVIDIA GPU: no CUDA driver ({test})"));
            return None;
        }
        match Gpu::open(0) {
            Ok(g) => Some(g),
            Err(e) => {
                skip(&format!(
                    "SKIP: no NVIDIA GPU: libcuda loads but GPU 0 does not open: {e} ({test})"
                ));
                None
            }
        }
    }

    /// The GPU gives the protocol's commitment: its known answers, and the plain reference at
    /// sizes on both GEMM paths (n % 4 == 0 takes cuBLAS where it loaded). Unverified here (no
    /// GPU).
    #[test]
    fn gpu_commitment_is_the_protocols() {
        let Some(g) = gpu("gpu_commitment_is_the_protocols") else {
            return;
        };
        let mut cases: Vec<TorchBenchParams> = KNOWN_ANSWERS
            .iter()
            .map(|&(n, iters, seed, ..)| TorchBenchParams { n, iters, seed })
            .collect();
        cases.push(TorchBenchParams {
            n: 130,
            iters: 7,
            seed: 5,
        });
        cases.push(TorchBenchParams {
            n: 256,
            iters: 3,
            seed: 5,
        });
        for p in cases {
            let want = commit(&reference_output(&p), p.n as usize).unwrap();
            let run = run_gpu(&g, &p, p.vram_mb() << 20).unwrap();
            assert_eq!(
                (run.output_sha, run.merkle_root),
                (want.output_sha, want.merkle_root),
                "n={} iters={} seed={}",
                p.n,
                p.iters,
                p.seed
            );
            assert_eq!((run.output_len, run.flops), (p.output_len(), p.flops()));
            assert_eq!(run.kind, Mode::Gpu);
            assert!(run.device_time.is_some());
            // The leaves are the rows' own, and their root is the proof's.
            let out = reference_output(&p);
            let n = p.n as usize;
            let want_leaves: Vec<[u8; 32]> = out
                .chunks(n)
                .map(aitbc_protocol::workload::torch_bench::row_leaf)
                .collect();
            assert_eq!(run.leaves, want_leaves);
        }
    }

    /// One byte under what the chain needs is refused before anything is allocated, as an
    /// out-of-memory failure naming the cap. Unverified here (no GPU).
    #[test]
    fn a_gpu_job_over_its_cap_is_refused_as_out_of_memory() {
        let Some(g) = gpu("a_gpu_job_over_its_cap_is_refused_as_out_of_memory") else {
            return;
        };
        let p = TorchBenchParams {
            n: 256,
            iters: 1,
            seed: 0,
        };
        let e = run_gpu(&g, &p, TorchBenchParams::vram_bytes_for(256, false) - 1).unwrap_err();
        assert_eq!(
            e.fail_reason(),
            aitbc_protocol::wire::WorkerFailReason::OutOfMemory
        );
        assert!(e.to_string().contains("GPU memory cap exceeded"), "{e}");
    }

    #[test]
    fn device_time_is_the_event_time_or_nothing() {
        assert_eq!(device_time(1.5), Some(Duration::from_micros(1500)));
        assert_eq!(device_time(0.0), Some(Duration::ZERO));
        assert_eq!(device_time(-1.0), None);
        assert_eq!(device_time(f32::NAN), None);
        assert_eq!(device_time(f32::INFINITY), None);
    }

    #[test]
    fn the_summary_names_the_device_and_the_igemm() {
        assert_eq!(
            describe(0, "NVIDIA H100 80GB HBM3", GemmPath::Cublas, false),
            "cuda gpu0 \"NVIDIA H100 80GB HBM3\" igemm cublas"
        );
        assert_eq!(
            describe(1, "X\n;y", GemmPath::OwnKernel, true),
            "cuda gpu1 \"X;y\" igemm own kernel (no cuBLAS)"
        );
        let long = describe(0, &"A".repeat(300), GemmPath::OwnKernel, false);
        assert_eq!(long.len(), "cuda gpu0 \"\" igemm own kernel".len() + 64);
    }
}

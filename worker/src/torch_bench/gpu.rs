//! The GPU chain: [`run_gpu`] runs a checked job on the GPU the worker opened during its
//! confinement (`aitbc-cuda`'s `Gpu::run_chain`) and hashes `X_iters` with SHA-256 chunk by
//! chunk as the device streams it back (the copy of the next chunk overlaps the hashing of
//! this one), so the hash is over exactly the bytes [`super::hash_matrix`] hashes on the CPU.
//!
//! This module must never open a device (that is confinement step 6, before seccomp), never
//! allocate device memory past the job's cap (every allocation goes through `aitbc-cuda`'s
//! `VramBudget`), and never report a result whose length or FLOP count differ from the
//! params'.

use std::time::{Duration, Instant};

use aitbc_cuda::Gpu;
use aitbc_protocol::wire::WorkerKind;
use aitbc_protocol::workload::TorchBenchParams;
use sha2::{Digest, Sha256};

use super::{check_params, ChainRun};
use crate::WorkerError;

/// Runs the chain for `p` on `gpu`, allocating at most `vram_cap_bytes` of device memory
/// (a job whose chain needs more is refused before anything is allocated).
pub fn run_gpu(
    gpu: &Gpu,
    p: &TorchBenchParams,
    vram_cap_bytes: u64,
) -> Result<ChainRun, WorkerError> {
    check_params(p)?;
    let start = Instant::now();
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    let stats = gpu.run_chain(p.n, p.iters, p.seed, vram_cap_bytes, &mut |chunk| {
        hasher.update(chunk);
        hashed += chunk.len() as u64;
    })?;
    let want = (p.output_len(), p.flops());
    if (hashed, stats.flops) != want || stats.output_len != want.0 {
        return Err(WorkerError::Internal(format!(
            "the GPU chain returned {hashed} bytes (stated {}) and {} FLOPs; params n = {}, \
             iters = {} make {} bytes and {} FLOPs",
            stats.output_len, stats.flops, p.n, p.iters, want.0, want.1
        )));
    }
    Ok(ChainRun {
        output_sha: hasher.finalize().into(),
        output_len: hashed,
        flops: stats.flops,
        elapsed: start.elapsed(),
        device_time: device_time(stats.products_ms),
        kind: WorkerKind::Gpu,
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

    /// A SKIP line on the real stderr (not captured by the test harness, so it shows).
    fn skip(line: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
    use crate::torch_bench::{chain_cpu, hash_matrix};

    /// The GPU, or `None` after a visible SKIP line on a host without one.
    fn gpu(test: &str) -> Option<Gpu> {
        if !aitbc_cuda::driver_present() {
            skip(&format!("SKIP: no CUDA driver ({test})"));
            return None;
        }
        match Gpu::open(0) {
            Ok(g) => Some(g),
            Err(e) => {
                skip(&format!(
                    "SKIP: libcuda loads but GPU 0 does not open: {e} ({test})"
                ));
                None
            }
        }
    }

    /// Relative Frobenius error of `got` against `want`.
    fn rel_err(got: &[f32], want: &[f32]) -> f64 {
        let (mut num, mut den) = (0f64, 0f64);
        for (g, w) in got.iter().zip(want) {
            num += (f64::from(*g) - f64::from(*w)).powi(2);
            den += f64::from(*w).powi(2);
        }
        (num / den.max(f64::MIN_POSITIVE)).sqrt()
    }

    /// The same params give a result of the same shape and meaning on the CPU and the GPU:
    /// the same length and FLOPs, and `X_iters` within the CPU chain's own tolerance
    /// (`1e-5 · iters` relative Frobenius error) of the CPU's; the GPU's hash is that of the
    /// bytes it streamed. Unverified here (no GPU).
    #[test]
    fn gpu_and_cpu_agree_within_tolerance() {
        let Some(g) = gpu("gpu_and_cpu_agree_within_tolerance") else {
            return;
        };
        for (n, iters) in [(1, 3), (130, 7), (512, 20)] {
            let p = TorchBenchParams { n, iters, seed: 5 };
            let cpu = chain_cpu(&p, 2).unwrap();
            let mut bytes = Vec::new();
            g.run_chain(n, iters, 5, p.vram_bytes(), &mut |c| {
                bytes.extend_from_slice(c)
            })
            .unwrap();
            let x: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(x.len(), cpu.len(), "n={n}");
            let err = rel_err(&x, &cpu);
            assert!(err <= 1e-5 * f64::from(iters), "n={n} iters={iters}: {err}");
            let run = run_gpu(&g, &p, p.vram_mb() << 20).unwrap();
            assert_eq!(run.output_sha, hash_matrix(&x), "n={n}: deterministic");
            assert_eq!((run.output_len, run.flops), (p.output_len(), p.flops()));
            assert_eq!(run.kind, WorkerKind::Gpu);
            assert!(run.device_time.is_some());
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
}

//! The chain on a real GPU, against the naive `f64` reference (`reference.rs`), on every SGEMM
//! path this host has. Without a CUDA driver each test writes `SKIP: no CUDA driver (...)` to
//! stderr (uncaptured, so it shows in `cargo test` output) and passes.
//!
//! Tolerance: the Frobenius-norm relative error of `X_iters` against the reference stays below
//! `1e-5 * iters`, the bound the worker's CPU chain is held to (f32 products, ~6e-8 rounding per
//! operation amplified by the chain's conditioning; the reference rounds once per element).
//! The inputs are compared bit for bit, and each path must be deterministic: the same params
//! give the same bytes twice.

use std::io::Write;

use aitbc_cuda::gpu::STAGING_ELEMS;
use aitbc_cuda::vram::vram_planned;
use aitbc_cuda::{driver_present, ChainStats, CudaError, GemmPath, Gpu};
use cudarc::driver::sys::CUresult;

use crate::reference::{self, rel_err, w_scale, LONG};

fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The GPU, or `None` after a visible SKIP line when this host has none.
fn gpu(test: &str) -> Option<Gpu> {
    if !driver_present() {
        note(&format!("SKIP: no CUDA driver ({test})"));
        return None;
    }
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(CudaError::Driver { source, .. }) if source.0 == CUresult::CUDA_ERROR_NO_DEVICE => {
            note(&format!(
                "SKIP: libcuda loads but there is no CUDA device ({test})"
            ));
            None
        }
        Err(e) => panic!("{test}: a CUDA driver is present but device 0 would not open: {e}"),
    }
}

/// Every path this GPU handle can run.
fn paths(g: &Gpu) -> Vec<GemmPath> {
    match g.default_gemm() {
        GemmPath::Cublas => vec![GemmPath::Cublas, GemmPath::OwnKernel],
        GemmPath::OwnKernel => {
            note(&format!(
                "note: cuBLAS not tested on {}: {}",
                g.name(),
                g.cublas_unavailable().unwrap_or("?")
            ));
            vec![GemmPath::OwnKernel]
        }
    }
}

/// Runs the chain, collecting the sink's bytes (checking the chunking on the way).
fn run(g: &Gpu, path: GemmPath, n: u32, iters: u32, seed: u64) -> (Vec<f32>, ChainStats) {
    let mut bytes = Vec::new();
    let mut chunks = 0;
    let stats = g
        .run_chain_with(path, n, iters, seed, u64::MAX, &mut |b: &[u8]| {
            assert!(!b.is_empty() && b.len() <= STAGING_ELEMS * 4 && b.len().is_multiple_of(4));
            chunks += 1;
            bytes.extend_from_slice(b);
        })
        .unwrap_or_else(|e| panic!("{path:?} n={n} iters={iters}: {e}"));
    let len = (n as usize).pow(2);
    assert_eq!(bytes.len(), len * 4);
    assert_eq!(chunks, len.div_ceil(STAGING_ELEMS), "n={n}");
    assert_eq!(stats.output_len, len as u64 * 4);
    assert_eq!(stats.flops, 2 * u64::from(n).pow(3) * u64::from(iters));
    assert_eq!(stats.gemm, path);
    assert_eq!(
        stats.vram_allocated,
        vram_planned(n, path == GemmPath::Cublas),
        "every device allocation goes through the budget"
    );
    let x = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (x, stats)
}

#[test]
fn gpu_chain_matches_the_f64_reference_within_tolerance() {
    let Some(g) = gpu("gpu_chain_matches_the_f64_reference_within_tolerance") else {
        return;
    };
    // 520 * 520 elements take two staging chunks; 129 and 257 leave partial tiles; 130 is not
    // a multiple of 4 (the scalar load path).
    for (n, iters) in [
        (1, 5),
        (7, 10),
        (64, 8),
        (129, 3),
        (130, 3),
        (257, 2),
        (520, 2),
    ] {
        let (want, _) = reference::chain(n, iters, 11);
        for path in paths(&g) {
            let (got, _) = run(&g, path, n, iters, 11);
            let err = rel_err(&got, &want);
            let tol = 1e-5 * f64::from(iters);
            assert!(
                err < tol,
                "{path:?} n={n} iters={iters}: {err:e} >= {tol:e}"
            );
        }
    }
}

#[test]
fn gpu_long_chain_rescales_like_the_reference() {
    let Some(g) = gpu("gpu_long_chain_rescales_like_the_reference") else {
        return;
    };
    let (n, iters, seed) = LONG;
    let (want, want_rescales) = reference::chain(n, iters, seed);
    for path in paths(&g) {
        let (got, stats) = run(&g, path, n, iters, seed);
        assert_eq!(stats.rescales, want_rescales, "{path:?}");
        assert!(got.iter().all(|v| v.is_finite()));
        let err = rel_err(&got, &want);
        assert!(err < 1e-5 * f64::from(iters), "{path:?}: {err:e}");
    }
}

#[test]
fn gpu_inputs_are_bit_identical_to_the_cpu_recipe() {
    let Some(g) = gpu("gpu_inputs_are_bit_identical_to_the_cpu_recipe") else {
        return;
    };
    for (seed, matrix, scale) in [
        (0u64, 0u32, 1.0f32),
        (42, 1, w_scale(1024)),
        (u64::MAX, 0, 1.0),
        (7, 1, w_scale(3)),
    ] {
        let got = g.generate(100_003, seed, matrix, scale).unwrap();
        for (i, v) in got.iter().enumerate() {
            let want = reference::input(seed, matrix, i as u64) * scale;
            assert_eq!(v.to_bits(), want.to_bits(), "seed={seed} m={matrix} i={i}");
        }
    }
    let big = g.generate(1_048_576, 42, 1, 1.0).unwrap();
    assert_eq!(
        big[1_048_575].to_bits(),
        0xbef0_46bc,
        "golden (42, 1, 1048575)"
    );
}

#[test]
fn gpu_chain_is_deterministic_and_the_paths_agree() {
    let Some(g) = gpu("gpu_chain_is_deterministic_and_the_paths_agree") else {
        return;
    };
    let mut outputs = Vec::new();
    for path in paths(&g) {
        let (a, _) = run(&g, path, 300, 4, 5);
        let (b, _) = run(&g, path, 300, 4, 5);
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{path:?}: two runs differ"
        );
        outputs.push(a);
    }
    if let [cublas, own] = &outputs[..] {
        let err = rel_err(own, cublas);
        assert!(err < 2.0 * 1e-5 * 4.0, "cuBLAS vs own kernel: {err:e}");
    }
}

#[test]
fn gpu_vram_cap_is_enforced_before_allocating() {
    let Some(g) = gpu("gpu_vram_cap_is_enforced_before_allocating") else {
        return;
    };
    g.warm_up().unwrap();
    for path in paths(&g) {
        let need = vram_planned(256, path == GemmPath::Cublas);
        let e = g
            .run_chain_with(path, 256, 1, 0, need - 1, &mut |_| {
                panic!("no output expected")
            })
            .unwrap_err();
        assert!(
            matches!(e, CudaError::VramCap { used: 0, bytes, cap, .. } if bytes == need && cap == need - 1),
            "{e}"
        );
        let mut seen = 0;
        let stats = g
            .run_chain_with(path, 256, 1, 0, need, &mut |b| seen += b.len())
            .unwrap();
        assert_eq!((seen, stats.vram_allocated), (256 * 256 * 4, need));
    }
    let e = g.run_chain(0, 1, 0, u64::MAX, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            e,
            CudaError::BadParams {
                field: "params.n",
                ..
            }
        ),
        "{e}"
    );
    if g.default_gemm() == GemmPath::OwnKernel {
        let e = g
            .run_chain_with(GemmPath::Cublas, 8, 1, 0, u64::MAX, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, CudaError::CublasUnavailable { .. }), "{e}");
    }
}

/// The benchmark sizes, for a person with a GPU: `cargo test -p aitbc-cuda --release
/// -- --ignored --nocapture gpu_throughput`. Prints TFLOP/s per path; asserts nothing about speed.
#[test]
#[ignore = "a benchmark: run by hand on a GPU"]
fn gpu_throughput() {
    let Some(g) = gpu("gpu_throughput") else {
        return;
    };
    for (n, iters) in [(1024u32, 100u32), (8192, 10)] {
        for path in paths(&g) {
            let stats = g
                .run_chain_with(path, n, iters, 1, u64::MAX, &mut |_| {})
                .unwrap();
            note(&format!(
                "{} n={n} iters={iters} {path:?}: {:.2} TFLOP/s on the products ({:.3} ms), \
                 {:.3} s wall, {} rescales",
                g.name(),
                stats.tflops(),
                stats.products_ms,
                stats.elapsed.as_secs_f64(),
                stats.rescales
            ));
        }
    }
}

//! The chain on a real GPU, against the protocol's plain reference (`reference.rs`), on every
//! GEMM path this host has. Without a CUDA driver each test writes
//! `SKIP: no NVIDIA GPU: no CUDA driver (...)` to stderr (uncaptured, so it shows in
//! `cargo test` output) and passes.
//!
//! No tolerance: the chain is exact integer arithmetic, so every path must give the protocol's
//! bytes (and its `KNOWN_ANSWERS`), the same twice, and the same as the other path.

use std::io::Write;

use aitbc_cuda::gpu::{rows_per_chunk, STAGING_BYTES};
use aitbc_cuda::vram::vram_planned;
use aitbc_cuda::{cublas_fits, driver_present, ChainStats, CudaError, GemmPath, Gpu};
use cudarc::driver::sys::CUresult;

use crate::reference::{
    commit, hex, input, input_bytes, params, reference_bytes, KNOWN_ANSWERS, MATRIX_A0, MATRIX_B,
};

fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The GPU, or `None` after a visible SKIP line when this host has none.
fn gpu(test: &str) -> Option<Gpu> {
    if !driver_present() {
        note(&format!("SKIP: no NVIDIA GPU: no CUDA driver ({test})"));
        return None;
    }
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(CudaError::Driver { source, .. }) if source.0 == CUresult::CUDA_ERROR_NO_DEVICE => {
            note(&format!(
                "SKIP: no NVIDIA GPU: libcuda loads but there is no CUDA device ({test})"
            ));
            None
        }
        Err(e) => panic!("{test}: a CUDA driver is present but device 0 would not open: {e}"),
    }
}

/// Every path this GPU handle can run for size `n`.
fn paths(g: &Gpu, n: u32) -> Vec<GemmPath> {
    match g.default_gemm() {
        GemmPath::Cublas if cublas_fits(n) => vec![GemmPath::Cublas, GemmPath::OwnKernel],
        GemmPath::Cublas => vec![GemmPath::OwnKernel],
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

/// Runs the chain, collecting the sink's bytes (checking the chunking and the commitment on
/// the way).
fn run(g: &Gpu, path: GemmPath, n: u32, iters: u32, seed: u64) -> (Vec<u8>, ChainStats) {
    let mut bytes = Vec::new();
    let mut chunks = 0;
    let stats = g
        .run_chain_with(path, n, iters, seed, u64::MAX, &mut |b: &[u8]| {
            assert!(!b.is_empty() && b.len() <= STAGING_BYTES);
            assert!(b.len().is_multiple_of(n as usize), "whole rows");
            chunks += 1;
            bytes.extend_from_slice(b);
        })
        .unwrap_or_else(|e| panic!("{path:?} n={n} iters={iters}: {e}"));
    let len = (n as usize).pow(2);
    assert_eq!(bytes.len(), len);
    assert_eq!(chunks, (n as usize).div_ceil(rows_per_chunk(n)), "n={n}");
    assert_eq!(stats.output_len, len as u64);
    assert_eq!(stats.flops, 2 * u64::from(n).pow(3) * u64::from(iters));
    assert_eq!(stats.gemm, path);
    assert_eq!(
        stats.vram_allocated,
        vram_planned(n, path == GemmPath::Cublas),
        "every device allocation goes through the budget"
    );
    let as_i8: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
    assert_eq!(
        Some(stats.commitment),
        commit(&as_i8, n as usize),
        "the commitment is over the streamed bytes"
    );
    let leaves: Vec<[u8; 32]> = as_i8
        .chunks(n as usize)
        .map(aitbc_protocol::workload::torch_bench::row_leaf)
        .collect();
    assert_eq!(stats.leaves, leaves, "the leaves are the streamed rows'");
    (bytes, stats)
}

#[test]
fn gpu_chain_gives_the_known_answers_and_the_reference_bytes() {
    let Some(g) = gpu("gpu_chain_gives_the_known_answers_and_the_reference_bytes") else {
        return;
    };
    for &(n, iters, seed, sha, root) in KNOWN_ANSWERS {
        for path in paths(&g, n) {
            let (_, stats) = run(&g, path, n, iters, seed);
            assert_eq!(hex(&stats.commitment.output_sha), sha, "{path:?} n={n}");
            assert_eq!(hex(&stats.commitment.merkle_root), root, "{path:?} n={n}");
        }
    }
    // Partial tiles (129, 257), n % 4 != 0 (130), n % 16 != 0 (68), whole tiles (256).
    for (n, iters) in [(2, 9), (68, 3), (129, 2), (130, 2), (256, 3), (257, 2)] {
        let want = reference_bytes(n, iters, 11);
        for path in paths(&g, n) {
            let (got, _) = run(&g, path, n, iters, 11);
            assert!(
                got == want,
                "{path:?} n={n} iters={iters}: not the reference bytes"
            );
        }
    }
}

#[test]
fn gpu_chain_streams_several_chunks_of_whole_rows() {
    let Some(g) = gpu("gpu_chain_streams_several_chunks_of_whole_rows") else {
        return;
    };
    // 1100 rows of 1100 bytes: 953 rows a chunk, two chunks. Rows are independent, so a few
    // rows (around the chunk boundary and the ends) are checked with the protocol's
    // `output_row` instead of the whole reference.
    let (n, iters, seed) = (1100u32, 2u32, 3u64);
    let p = params(n, iters, seed);
    let b = input(seed, MATRIX_B, n as usize);
    let mut outputs = Vec::new();
    for path in paths(&g, n) {
        let (got, _) = run(&g, path, n, iters, seed);
        for row in [0usize, 1, 951, 952, 953, 954, 1098, 1099] {
            let want: Vec<u8> = aitbc_protocol::workload::torch_bench::output_row(&p, &b, row)
                .iter()
                .map(|&x| x as u8)
                .collect();
            let n = n as usize;
            assert!(
                got[row * n..(row + 1) * n] == want[..],
                "{path:?} row {row}"
            );
        }
        outputs.push(got);
    }
    if let [cublas, own] = &outputs[..] {
        assert!(
            cublas == own,
            "cuBLAS and the own kernel differ at n = 1100"
        );
    }
}

#[test]
fn gpu_inputs_are_the_protocols_generator() {
    let Some(g) = gpu("gpu_inputs_are_the_protocols_generator") else {
        return;
    };
    for (n, seed, matrix) in [
        (1u32, 0u64, MATRIX_A0),
        (317, 42, MATRIX_B),
        (1024, u64::MAX, MATRIX_A0),
        (1000, 7, MATRIX_B),
    ] {
        for transposed in [false, true] {
            let got = g.generate(n, seed, matrix, transposed).unwrap();
            let want = input_bytes(seed, matrix, n as usize, transposed);
            assert!(got == want, "n={n} seed={seed} m={matrix} t={transposed}");
        }
    }
}

#[test]
fn gpu_chain_is_deterministic_and_the_paths_agree() {
    let Some(g) = gpu("gpu_chain_is_deterministic_and_the_paths_agree") else {
        return;
    };
    let mut outputs = Vec::new();
    for path in paths(&g, 300) {
        let (a, _) = run(&g, path, 300, 4, 5);
        let (b, _) = run(&g, path, 300, 4, 5);
        assert!(a == b, "{path:?}: two runs differ");
        outputs.push(a);
    }
    if let [cublas, own] = &outputs[..] {
        assert!(cublas == own, "cuBLAS and the own kernel differ");
    }
}

#[test]
fn gpu_vram_cap_is_enforced_before_allocating() {
    let Some(g) = gpu("gpu_vram_cap_is_enforced_before_allocating") else {
        return;
    };
    g.warm_up().unwrap();
    for path in paths(&g, 256) {
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
        assert_eq!((seen, stats.vram_allocated), (256 * 256, need));
    }
    // run_chain picks the own kernel where cuBLAS does not fit, within the smaller budget.
    let stats = g
        .run_chain(7, 1, 0, vram_planned(7, false), &mut |_| {})
        .unwrap();
    assert_eq!(stats.gemm, GemmPath::OwnKernel);
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
    let e = g
        .run_chain_with(GemmPath::Cublas, 7, 1, 0, u64::MAX, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, CudaError::CublasUnavailable { .. }), "{e}");
}

/// The benchmark sizes, for a person with a GPU: `cargo test -p aitbc-cuda --release
/// -- --ignored --nocapture gpu_throughput`. Prints int8 TOP/s per path; asserts nothing about
/// speed.
#[test]
#[ignore = "a benchmark: run by hand on a GPU"]
fn gpu_throughput() {
    let Some(g) = gpu("gpu_throughput") else {
        return;
    };
    for (n, iters) in [(1024u32, 100u32), (4096, 20), (8192, 10)] {
        for path in paths(&g, n) {
            let stats = g
                .run_chain_with(path, n, iters, 1, u64::MAX, &mut |_| {})
                .unwrap();
            note(&format!(
                "{} n={n} iters={iters} {path:?}: {:.2} int8 TOP/s on the products ({:.3} ms), \
                 {:.3} s wall",
                g.name(),
                stats.tops(),
                stats.products_ms,
                stats.elapsed.as_secs_f64(),
            ));
        }
    }
}

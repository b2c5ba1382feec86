//! The kernels themselves, checked without a GPU: `tests/emulate/cuda_on_host.cpp` compiles
//! `kernels/torch_bench.cu`'s kernels with the host C++ compiler and runs each block as host
//! threads (a barrier for `__syncthreads`, `__dp4a` as four int8 products). This proves the
//! generator, the tiling, the bounds, the double buffering, the dp4a packing and the
//! requantization compute the protocol's chain byte for byte; it proves nothing about the GPU's
//! speed or about NVRTC's code generation, which only `gpu.rs` on a real device can.
//!
//! The arithmetic is exact, so there is no tolerance anywhere: the emulated chain must give the
//! protocol's `reference_output` and its `KNOWN_ANSWERS`, on the own kernel (mode 0) and with a
//! plain host product in its place (mode 1, the stand-in for cuBLAS, which checks the
//! transposed `B` and the requantization kernel on their own).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::ask;
use crate::reference::{
    commit, hex, input, input_bytes, params, product, reference_bytes, reference_output,
    KNOWN_ANSWERS, MATRIX_A0, MATRIX_B,
};

fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The emulator, built once per test run, or `None` (after a SKIP line) without a C++ compiler.
fn emulator() -> Option<&'static Path> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aitbc-cuda-emulator");
        let kernel = manifest.join("kernels/torch_bench.cu");
        let out = Command::new(&cxx)
            .args(["-std=c++20", "-O2", "-pthread"])
            .args(["-Wall", "-Wextra", "-Wno-unknown-pragmas", "-Werror"])
            .arg(format!("-DKERNEL_SOURCE=\"{}\"", kernel.display()))
            .arg("-o")
            .arg(&exe)
            .arg(manifest.join("tests/emulate/cuda_on_host.cpp"))
            .output();
        match out {
            Ok(out) if out.status.success() => Some(exe),
            Ok(out) => panic!(
                "{cxx} failed on the kernel emulator:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => {
                note(&format!(
                    "SKIP: no host C++ compiler ({cxx}: {e}); kernels not emulated"
                ));
                None
            }
        }
    })
    .as_deref()
}

/// Rows of hex bytes back to bytes, checking the shape.
fn rows(lines: &[String], n: u32) -> Vec<u8> {
    assert_eq!(lines.len(), n as usize, "rows");
    let mut out = Vec::with_capacity((n as usize).pow(2));
    for l in lines {
        assert_eq!(l.len(), 2 * n as usize, "row width");
        for i in (0..l.len()).step_by(2) {
            out.push(u8::from_str_radix(&l[i..i + 2], 16).unwrap());
        }
    }
    out
}

/// `(state words, A_iters)` of the emulated chain; mode 0 is the own kernel, mode 1 a host
/// product in its place.
fn chain(exe: &Path, n: u32, iters: u32, seed: u64, mode: u32) -> (Vec<u32>, Vec<u8>) {
    let lines = ask(exe, &format!("chain {n} {iters} {seed} {mode}\n"));
    let state = lines[0].split(' ').map(|w| w.parse().unwrap()).collect();
    (state, rows(&lines[1..], n))
}

#[test]
fn emulated_chain_gives_the_protocols_known_answers_on_both_paths() {
    let Some(exe) = emulator() else { return };
    for &(n, iters, seed, sha, root) in KNOWN_ANSWERS {
        for mode in [0, 1] {
            let (state, out) = chain(exe, n, iters, seed, mode);
            assert_eq!(state, vec![iters, 0, 0, 0], "n={n} mode={mode}: step count");
            let bytes: Vec<i8> = out.iter().map(|&b| b as i8).collect();
            let c = commit(&bytes, n as usize).unwrap();
            assert_eq!(hex(&c.output_sha), sha, "n={n} iters={iters} mode={mode}");
            assert_eq!(hex(&c.merkle_root), root, "n={n} iters={iters} mode={mode}");
        }
    }
}

#[test]
fn emulated_own_kernel_equals_the_plain_reference_on_every_tile_shape() {
    let Some(exe) = emulator() else { return };
    // One element (1), n % 4 != 0 (7, 33, 130: byte-wise loads, scalar stores), n % 4 == 0 but
    // not % 16 (68: byte-wise loads, int4 stores), whole int4 loads (64, 128: one tile, 144: a
    // partial k step), partial tiles (129, 257).
    for (n, iters) in [
        (1, 3),
        (7, 3),
        (33, 2),
        (64, 3),
        (68, 2),
        (128, 1),
        (129, 1),
        (130, 1),
        (144, 1),
        (257, 1),
    ] {
        let want = reference_bytes(n, iters, 11);
        let (state, own) = chain(exe, n, iters, 11, 0);
        assert_eq!(state[0], iters, "n={n}");
        assert!(
            own == want,
            "n={n} iters={iters}: the own kernel differs from the reference"
        );
    }
    let (_, host) = chain(exe, 130, 1, 11, 1);
    assert!(host == reference_bytes(130, 1, 11), "n=130 host product");
    // The plain reference agrees with itself through `reference_output` (sanity).
    assert_eq!(reference_output(&params(1, 1, 11)).len(), 1);
}

#[test]
fn emulated_gemm_is_exact_at_the_largest_magnitudes_and_on_generated_inputs() {
    let Some(exe) = emulator() else { return };
    for n in [5u32, 64, 129] {
        // Every element -128: every sum is n * 16384, the chain's largest |C| for this n.
        let lines = ask(exe, &format!("gemm {n} 0 1\n"));
        assert_eq!(lines.len(), n as usize);
        let want = (i64::from(n) * 16384).to_string();
        for l in &lines {
            assert!(l.split(' ').all(|v| v == want), "n={n}: {l}");
        }
        // Generated A_0 and B against a plain i64 product.
        let lines = ask(exe, &format!("gemm {n} 99 0\n"));
        let got: Vec<i64> = lines
            .iter()
            .flat_map(|l| l.split(' ').map(|v| v.parse::<i64>().unwrap()))
            .collect();
        let nn = n as usize;
        let want = product(&input(99, MATRIX_A0, nn), &input(99, MATRIX_B, nn), nn);
        assert!(
            got == want,
            "n={n}: the own GEMM differs from the plain product"
        );
    }
}

#[test]
fn emulated_fill_is_the_protocols_generator_plain_and_transposed() {
    let Some(exe) = emulator() else { return };
    for (n, seed, matrix) in [
        (1u32, 0u64, 0u32),
        (9, 42, 1),
        (70, u64::MAX, 0),
        (33, 7, 1),
    ] {
        for transposed in [false, true] {
            let t = i32::from(transposed);
            let got = rows(&ask(exe, &format!("fill {n} {seed} {matrix} {t}\n")), n);
            let want = input_bytes(seed, matrix, n as usize, transposed);
            assert!(
                got == want,
                "fill n={n} seed={seed} m={matrix} t={transposed}"
            );
        }
    }
}

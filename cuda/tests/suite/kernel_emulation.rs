//! The kernels' indexing and synchronisation, checked without a GPU: `tests/emulate/
//! cuda_on_host.cpp` compiles `kernels/torch_bench.cu`'s kernels with the host C++ compiler and
//! runs each block as host threads (barriers for `__syncthreads` and warp shuffles). This proves
//! the tiling, the bounds, the double buffering, the max-reduction and the rescale compute the
//! chain; it proves nothing about the GPU's speed or about NVRTC's code generation, which only
//! `gpu.rs` on a real device can.
//!
//! The strongest check: the own SGEMM accumulates each element as one `fmaf` chain over
//! `k = 0..n` in order (its documented contract), so it must equal, bit for bit, a plain host
//! loop doing exactly that.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::ask;
use crate::reference::{self, pow2, rel_err, rescale_exponent};

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
            .args(["-std=c++20", "-O2", "-ffp-contract=off", "-pthread"])
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

fn floats(lines: &[String]) -> Vec<f32> {
    lines
        .iter()
        .map(|l| f32::from_bits(u32::from_str_radix(l, 16).unwrap()))
        .collect()
}

/// `(rescales, X_iters)` of the emulated chain; mode 0 is the own SGEMM, mode 1 a host `fmaf`
/// product followed by `aitbc_max_abs_bits`.
fn chain(exe: &Path, n: u32, iters: u32, seed: u64, mode: u32) -> (u32, Vec<f32>) {
    let lines = ask(exe, &format!("chain {n} {iters} {seed} {mode}\n"));
    let x = floats(&lines[1..]);
    assert_eq!(x.len(), (n as usize).pow(2));
    (lines[0].parse().unwrap(), x)
}

#[test]
fn emulated_own_sgemm_is_the_in_order_fmaf_chain_bit_for_bit() {
    let Some(exe) = emulator() else { return };
    // Partial tiles (129, 257), n % 4 != 0 (7, 130: scalar loads and stores), one element (1),
    // whole tiles (128), and float4 loads with a partial tile (68).
    for (n, iters) in [
        (1, 2),
        (7, 3),
        (68, 2),
        (128, 1),
        (129, 2),
        (130, 2),
        (257, 1),
    ] {
        let (r0, own) = chain(exe, n, iters, 11, 0);
        let (r1, host) = chain(exe, n, iters, 11, 1);
        assert_eq!(r0, r1, "n={n}: rescale counts");
        let same = own
            .iter()
            .zip(&host)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        assert_eq!(
            same,
            own.len(),
            "n={n} iters={iters}: own SGEMM differs from the fmaf loop"
        );
        let (want, _) = reference::chain(n, iters, 11);
        let err = rel_err(&own, &want);
        assert!(
            err < 1e-5 * f64::from(iters),
            "n={n}: {err:e} against the f64 reference"
        );
    }
}

#[test]
fn emulated_rescale_applies_the_rule_exactly_and_flags_non_finite_values() {
    let Some(exe) = emulator() else { return };
    let big: Vec<f32> = (0..5000).map(|i| (i as f32 - 2500.0) * pow2(40)).collect();
    let cases: Vec<Vec<f32>> = vec![
        vec![3.0 * pow2(40), -pow2(35), 0.0, 1.0],
        vec![1.0, -2.0],
        vec![0.0; 3],
        vec![1.5 * pow2(-33), f32::from_bits(1)],
        vec![pow2(100), 3.0 * pow2(-40), -pow2(-149)],
        vec![f32::MAX, 1.0],
        vec![1.0, f32::INFINITY],
        vec![f32::NAN, 1.0],
        big,
    ];
    for x in cases {
        let bits: String = x.iter().map(|v| format!(" {:x}", v.to_bits())).collect();
        let lines = ask(exe, &format!("rescale {}{bits}\n", x.len()));
        let state: Vec<u32> = lines[0]
            .split(' ')
            .map(|w| u32::from_str_radix(w, 16).unwrap())
            .collect();
        let got = floats(&lines[1..]);
        let m = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
        assert_eq!(state[0], m, "{x:?}: max bits");
        assert_eq!(
            state[1], 0,
            "{x:?}: the other slot is zeroed for the next product"
        );
        if m >= 0x7F80_0000 {
            assert_eq!((state[2], state[3]), (0, m), "{x:?}: non-finite is flagged");
            assert_eq!(got.len(), x.len());
            continue;
        }
        assert_eq!(state[3], 0, "{x:?}");
        let k = rescale_exponent(m);
        assert_eq!(state[2], u32::from(k.is_some()), "{x:?}: rescale count");
        let want: Vec<f32> = match k {
            Some(k) => x.iter().map(|v| v * pow2(k)).collect(),
            None => x.clone(),
        };
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.to_bits(), w.to_bits(), "{x:?}: {g:e} vs {w:e}");
        }
    }
}

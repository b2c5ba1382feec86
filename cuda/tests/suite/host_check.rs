//! The CUDA C generator and rescale rule, checked without a GPU: `kernels/torch_bench.cu`'s
//! `AITBC_FN` helpers are plain C outside NVRTC, so the host C compiler builds them into a small
//! program that answers queries on stdin, and its answers are compared bit for bit with the
//! golden values and with the test reference. The kernels themselves are not compiled here; the
//! device arithmetic (`__fmul_rn`, `__fsub_rn`) is checked on a GPU by `gpu.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ask;
use crate::reference::{input, pow2, rescale_exponent, w_scale, GOLDEN};

const DRIVER: &str = r#"
#include <stdio.h>
#include KERNEL_SOURCE

int main(void)
{
    char op;
    while (scanf(" %c", &op) == 1) {
        if (op == 'i') {
            unsigned long long seed, index;
            unsigned int matrix;
            float scale;
            unsigned int scale_bits;
            union { unsigned int u; float f; } in, out;
            if (scanf("%llu %u %llu %x", &seed, &matrix, &index, &scale_bits) != 4) return 2;
            in.u = scale_bits;
            scale = in.f;
            out.f = AITBC_MUL(aitbc_input_keyed(aitbc_stream_key(seed, matrix), index), scale);
            printf("%08x\n", out.u);
        } else if (op == 'r') {
            unsigned int bits;
            int k = 0;
            if (scanf("%x", &bits) != 1) return 2;
            if (aitbc_rescale_exponent(bits, &k)) printf("%d\n", k); else printf("none\n");
        } else if (op == 'p') {
            int k;
            union { unsigned int u; float f; } v;
            if (scanf("%d", &k) != 1) return 2;
            v.f = aitbc_pow2(k);
            printf("%08x\n", v.u);
        } else {
            return 2;
        }
    }
    return 0;
}
"#;

fn kernel_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/torch_bench.cu")
}

/// Builds the driver with the host C compiler, or `None` (with a SKIP line) when there is none.
fn build_driver() -> Option<PathBuf> {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = dir.join("aitbc-cuda-host-check.c");
    std::fs::write(&src, DRIVER).unwrap();
    let exe = dir.join("aitbc-cuda-host-check");
    let define = format!("-DKERNEL_SOURCE=\"{}\"", kernel_source().display());
    let out = match Command::new(&cc)
        .args([
            "-std=c99",
            "-O2",
            "-ffp-contract=off",
            "-Wall",
            "-Wextra",
            "-Werror",
        ])
        .arg(define)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            println!("SKIP: no host C compiler ({cc}: {e}); the CUDA C helpers were not checked");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{cc} failed on kernels/torch_bench.cu's host part:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

#[test]
fn cuda_c_generator_and_rescale_rule_match_the_recipe() {
    let Some(exe) = build_driver() else { return };

    // The generator: golden values, then a sweep of seeds, matrices, indices and W scales.
    let mut cases: Vec<(u64, u32, u64, f32)> =
        GOLDEN.iter().map(|&(s, m, i, _)| (s, m, i, 1.0)).collect();
    let mut z = 1u64;
    for _ in 0..5000 {
        z = crate::reference::mix(z.wrapping_add(crate::reference::GAMMA));
        let n = (z % 16384) as u32 + 1;
        let scale = if z & 1 == 0 { 1.0 } else { w_scale(n) };
        cases.push((z.rotate_left(17), (z >> 7) as u32 & 1, z >> 20, scale));
    }
    let queries: String = cases
        .iter()
        .map(|(s, m, i, f)| format!("i {s} {m} {i} {:x}\n", f.to_bits()))
        .collect();
    let answers = ask(&exe, &queries);
    assert_eq!(answers.len(), cases.len());
    for ((s, m, i, f), got) in cases.iter().zip(&answers) {
        let want = input(*s, *m, *i) * f;
        assert_eq!(
            got,
            &format!("{:08x}", want.to_bits()),
            "input({s}, {m}, {i}) * {f}"
        );
    }
    for ((s, m, i, want), got) in GOLDEN.iter().zip(&answers) {
        assert_eq!(got, &format!("{want:08x}"), "golden input({s}, {m}, {i})");
    }

    // The rescale rule: every exponent, with a few mantissas, including subnormals and zero.
    let mut bits = vec![0u32, 1, 0x7F_FFFF];
    for e in 1..255u32 {
        for mantissa in [0u32, 1, 0x40_0000, 0x7F_FFFF] {
            bits.push((e << 23) | mantissa);
        }
    }
    let queries: String = bits.iter().map(|b| format!("r {b:x}\n")).collect();
    for (b, got) in bits.iter().zip(ask(&exe, &queries)) {
        let want = rescale_exponent(*b).map_or("none".to_string(), |k| k.to_string());
        assert_eq!(got, want, "rescale_exponent(0x{b:08x})");
    }

    let ks: Vec<i32> = (-126..=127).collect();
    let queries: String = ks.iter().map(|k| format!("p {k}\n")).collect();
    for (k, got) in ks.iter().zip(ask(&exe, &queries)) {
        assert_eq!(got, format!("{:08x}", pow2(*k).to_bits()), "pow2({k})");
    }
}

//! The CUDA C generator and requantization, checked without a GPU: `kernels/torch_bench.cu`'s
//! `AITBC_FN` helpers are plain C outside NVRTC, so the host C compiler builds them into a small
//! program that answers queries on stdin, and its answers are compared byte for byte with the
//! protocol's `element` and `requant`. The kernels themselves are run on the CPU by
//! `kernel_emulation.rs`, and on a GPU by `gpu.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ask;
use crate::reference::{element, requant};

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
            if (scanf("%llu %u %llu", &seed, &matrix, &index) != 3) return 2;
            printf("%02x\n", aitbc_element(aitbc_stream_key(seed, matrix), index));
        } else if (op == 'q') {
            int c;
            if (scanf("%d", &c) != 1) return 2;
            printf("%02x\n", aitbc_requant(c));
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
        .args(["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror"])
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
fn cuda_c_generator_and_requantization_match_the_protocol() {
    let Some(exe) = build_driver() else { return };

    // The generator: edge seeds and indices, then a sweep.
    let mut cases: Vec<(u64, u32, u64)> = vec![
        (0, 0, 0),
        (0, 1, 1),
        (42, 0, 0),
        (42, 1, 1_048_575),
        (u64::MAX, 0, 123_456_789),
        (7, 1, u64::MAX),
        (u64::MAX, 1, u64::MAX - 1),
    ];
    let mut z = 1u64;
    for _ in 0..5000 {
        z = aitbc_protocol::workload::torch_bench::mix(z.wrapping_add(0x9E37_79B9_7F4A_7C15));
        cases.push((z.rotate_left(17), (z >> 7) as u32 & 1, z >> 20));
    }
    let queries: String = cases
        .iter()
        .map(|(s, m, i)| format!("i {s} {m} {i}\n"))
        .collect();
    let answers = ask(&exe, &queries);
    assert_eq!(answers.len(), cases.len());
    for ((s, m, i), got) in cases.iter().zip(&answers) {
        let want = element(*s, *m, *i) as u8;
        assert_eq!(got, &format!("{want:02x}"), "element({s}, {m}, {i})");
    }

    // The requantization: the ends of i32, zero, every value a product can take near zero and
    // a sweep of large ones.
    let mut cs: Vec<i32> = vec![
        i32::MIN,
        i32::MIN + 1,
        -1,
        0,
        1,
        i32::MAX,
        1 << 28,
        -(1 << 28),
    ];
    cs.extend(-5000..5000);
    let mut z = 7u64;
    for _ in 0..5000 {
        z = aitbc_protocol::workload::torch_bench::mix(z.wrapping_add(1));
        cs.push(z as i32);
    }
    let queries: String = cs.iter().map(|c| format!("q {c}\n")).collect();
    let answers = ask(&exe, &queries);
    assert_eq!(answers.len(), cs.len());
    for (c, got) in cs.iter().zip(answers) {
        assert_eq!(got, format!("{:02x}", requant(*c) as u8), "requant({c})");
    }
}

//! The reference the kernel tests compare against: the protocol's own specification of the
//! int8 chain (`aitbc_protocol::workload::torch_bench`: `element`, `requant`, the plain-loops
//! `reference_output`, `commit` and the published `KNOWN_ANSWERS`). aitbc-cuda depends on the
//! protocol already (for the VRAM formula), so nothing is restated here: this module only adds
//! the small conversions the tests need, and must never grow a second copy of the recipe.

pub use aitbc_protocol::workload::torch_bench::TorchBenchParams;
pub use aitbc_protocol::workload::torch_bench::{
    commit, element, input, reference_output, requant, KNOWN_ANSWERS, MATRIX_A0, MATRIX_B,
};

pub fn params(n: u32, iters: u32, seed: u64) -> TorchBenchParams {
    TorchBenchParams { n, iters, seed }
}

/// The protocol's reference output of `(n, iters, seed)` as bytes.
pub fn reference_bytes(n: u32, iters: u32, seed: u64) -> Vec<u8> {
    reference_output(&params(n, iters, seed))
        .iter()
        .map(|&x| x as u8)
        .collect()
}

/// Input matrix `matrix` of size `n` as bytes, transposed when asked (the device keeps `B`
/// transposed).
pub fn input_bytes(seed: u64, matrix: u32, n: usize, transposed: bool) -> Vec<u8> {
    let m = input(seed, matrix, n);
    (0..n * n)
        .map(|p| {
            let index = if transposed { (p % n) * n + p / n } else { p };
            m[index] as u8
        })
        .collect()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// `C = A · B` of two row-major int8 matrices, in plain `i64` loops (no overflow possible).
pub fn product(a: &[i8], b: &[i8], n: usize) -> Vec<i64> {
    let mut c = vec![0i64; n * n];
    for i in 0..n {
        for t in 0..n {
            let x = i64::from(a[i * n + t]);
            for j in 0..n {
                c[i * n + j] += x * i64::from(b[t * n + j]);
            }
        }
    }
    c
}

#[test]
fn the_known_answers_are_the_reference_outputs() {
    for &(n, iters, seed, sha, root) in KNOWN_ANSWERS {
        let out = reference_output(&params(n, iters, seed));
        let c = commit(&out, n as usize).unwrap();
        assert_eq!(
            (hex(&c.output_sha), hex(&c.merkle_root)),
            (sha.into(), root.into())
        );
    }
    let t = input_bytes(3, MATRIX_B, 5, true);
    let m = input_bytes(3, MATRIX_B, 5, false);
    assert_eq!(t[2 * 5 + 3], m[3 * 5 + 2]);
    assert_eq!(
        product(&[1, 2, 3, 4], &[5, 6, 7, 8], 2),
        vec![19, 22, 43, 50]
    );
}

//! The naive reference chain: a triple loop accumulating in `f64`, for tests to compare the
//! fast paths against. It must stay obviously correct rather than fast, and must never be
//! used to answer a job.

use aitbc_protocol::workload::TorchBenchParams;

use super::input::{fill, w_scale, MATRIX_W, MATRIX_X0};
use super::{max_abs_bits, pow2, rescale_exponent};

/// `X_iters` for `p`, each product accumulated in `f64` in index order and rounded to `f32`
/// once per element, followed by the same rescale rule as the fast paths. Slow: `O(n^3 iters)`
/// on one thread. Panics on a non-finite value (it is test code; the rule prevents them).
pub fn chain_reference(p: &TorchBenchParams) -> Vec<f32> {
    let n = p.n as usize;
    let mut x = vec![0f32; n * n];
    let mut w = vec![0f32; n * n];
    fill(&mut x, p.seed, MATRIX_X0, 0, 1.0);
    fill(&mut w, p.seed, MATRIX_W, 0, w_scale(p.n));
    let mut next = vec![0f32; n * n];
    let mut acc = vec![0f64; n];
    for _ in 0..p.iters {
        for row in 0..n {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for k in 0..n {
                let xk = f64::from(x[row * n + k]);
                for (a, wkj) in acc.iter_mut().zip(&w[k * n..(k + 1) * n]) {
                    *a += xk * f64::from(*wkj);
                }
            }
            for (dst, a) in next[row * n..(row + 1) * n].iter_mut().zip(&acc) {
                *dst = *a as f32;
            }
        }
        let m = max_abs_bits(&next);
        assert!(m < 0x7F80_0000, "reference chain went non-finite");
        if let Some(k) = rescale_exponent(m) {
            let s = pow2(k);
            next.iter_mut().for_each(|v| *v *= s);
        }
        std::mem::swap(&mut x, &mut next);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torch_bench::hash_matrix;

    /// The reference is exact given its fixed order (f64 sums of products of f32s, rounded
    /// once), so its hash is the same on every IEEE 754 machine: pinned here so that another
    /// implementation of the chain can be checked against it bit for bit at the reference's
    /// accuracy, and so that a change of the recipe is caught.
    #[test]
    fn reference_hash_is_pinned() {
        let p = TorchBenchParams {
            n: 7,
            iters: 3,
            seed: 42,
        };
        let sha = hash_matrix(&chain_reference(&p));
        let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "696e9213e3a701b58bf08746781ccc039874f900363329e8ffa79d5dacbd040c"
        );
    }
}

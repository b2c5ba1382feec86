//! A test-only copy of the torch_bench recipe: the input generator, the rescale rule and a naive
//! chain accumulating in `f64`, for the GPU tests to compare against. aitbc-cuda must not depend
//! on aitbc-worker (the worker will depend on it), so the recipe is restated here and tied to
//! the worker's by the golden values and the reference hash that the worker's own tests pin.
//! It must stay obviously correct rather than fast.

use sha2::{Digest, Sha256};

pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `index` of input matrix `matrix` (0: `X_0`, 1: `W` unscaled) for `seed`.
pub fn input(seed: u64, matrix: u32, index: u64) -> f32 {
    let key = mix(seed ^ u64::from(matrix).wrapping_mul(GAMMA));
    let bits = mix(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)));
    ((bits >> 40) as u32 as f32) * (1.0 / 8_388_608.0) - 1.0
}

pub fn w_scale(n: u32) -> f32 {
    (3.0f64 / f64::from(n)).sqrt() as f32
}

/// The rescale rule of `worker/src/torch_bench/mod.rs` (`rescale_exponent`).
pub fn rescale_exponent(max_abs_bits: u32) -> Option<i32> {
    if max_abs_bits == 0 {
        return None;
    }
    let e = (max_abs_bits >> 23) as i32 - 127;
    if (-32..=32).contains(&e) {
        None
    } else {
        Some((-e).clamp(-126, 126))
    }
}

pub fn pow2(k: i32) -> f32 {
    f32::from_bits(((127 + k) as u32) << 23)
}

/// `X_iters` for `(n, iters, seed)`: each product accumulated in `f64` in index order and
/// rounded once, then the rescale rule; also how many products were rescaled.
pub fn chain(n: u32, iters: u32, seed: u64) -> (Vec<f32>, u32) {
    let n = n as usize;
    let s = w_scale(n as u32);
    let mut x: Vec<f32> = (0..n * n).map(|i| input(seed, 0, i as u64)).collect();
    let w: Vec<f32> = (0..n * n).map(|i| input(seed, 1, i as u64) * s).collect();
    let mut next = vec![0f32; n * n];
    let mut acc = vec![0f64; n];
    let mut rescales = 0;
    for _ in 0..iters {
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
        let m = next
            .iter()
            .fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
        assert!(m < 0x7F80_0000, "reference chain went non-finite");
        if let Some(k) = rescale_exponent(m) {
            let p = pow2(k);
            next.iter_mut().for_each(|v| *v *= p);
            rescales += 1;
        }
        std::mem::swap(&mut x, &mut next);
    }
    (x, rescales)
}

pub fn le_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// `||a - b||_F / ||b||_F`, in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut d, mut r) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        d += (f64::from(*x) - f64::from(*y)).powi(2);
        r += f64::from(*y).powi(2);
    }
    (d / r).sqrt()
}

/// `(seed, matrix, index, bits)`: pinned in worker/src/torch_bench/input.rs (`GOLDEN`), computed
/// there independently by scripts/numpy_chain.py.
pub const GOLDEN: [(u64, u32, u64, u32); 8] = [
    (0, 0, 0, 0x3f44_4150),
    (0, 0, 1, 0xbe0c_3b10),
    (0, 1, 0, 0x3e9c_1b74),
    (0, 1, 1, 0x3ece_0a8c),
    (42, 0, 0, 0x3e44_d9f8),
    (42, 1, 1_048_575, 0xbef0_46bc),
    (u64::MAX, 0, 123_456_789, 0x3eae_d824),
    (7, 1, u64::MAX, 0xbf01_1fba),
];

#[test]
fn this_copy_of_the_recipe_reproduces_the_workers_golden_values() {
    for (seed, m, i, want) in GOLDEN {
        assert_eq!(input(seed, m, i).to_bits(), want, "input({seed}, {m}, {i})");
    }
    assert_eq!(mix(GAMMA), 0xE220_A839_7B1D_CDAF);
    assert_eq!(w_scale(1024).to_bits(), 0x3d5d_b3d7);
}

/// worker/src/torch_bench/reference.rs pins this hash for its reference chain (7, 3, 42): the
/// same value here means this reference is the worker's, bit for bit.
#[test]
fn this_reference_chain_hashes_like_the_workers() {
    let (x, _) = chain(7, 3, 42);
    let hex: String = Sha256::digest(le_bytes(&x))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex,
        "696e9213e3a701b58bf08746781ccc039874f900363329e8ffa79d5dacbd040c"
    );
}

#[test]
fn the_long_reference_chain_used_on_the_gpu_does_rescale() {
    let (x, rescales) = chain(LONG.0, LONG.1, LONG.2);
    assert!(
        rescales > 0,
        "the long chain never rescaled: it tests nothing"
    );
    assert!(x.iter().all(|v| v.is_finite()) && x.iter().any(|v| *v != 0.0));
}

/// A chain long enough to rescale (checked above), small enough for the naive reference.
pub const LONG: (u32, u32, u64) = (7, 3000, 4);

//! The torch_bench input generator: a counter-based, bit-exact recipe for every element of
//! `X_0` and `W`, so that any implementation (this CPU path, a GPU kernel, the numpy reference
//! in `scripts/numpy_chain.py`) can produce identical inputs in any order and in parallel.
//!
//! This module is pure arithmetic on integers and exactly rounded `f32`/`f64` operations. It
//! must never depend on the host (no floating-point library calls besides `sqrt`, which IEEE 754
//! rounds exactly), and changing any constant here changes every job's output: the golden values
//! in the tests pin the recipe.
//!
//! # The recipe
//!
//! All arithmetic on `u64` wraps modulo 2^64. With `γ = 0x9E37_79B9_7F4A_7C15` and SplitMix64's
//! finaliser
//!
//! ```text
//! mix(z): z = (z ^ (z >> 30)) * 0xBF58_476D_1CE4_E5B9
//!         z = (z ^ (z >> 27)) * 0x94D0_49BB_1331_11EB
//!         return z ^ (z >> 31)
//! ```
//!
//! element `index` (row-major: `row * n + col`) of matrix `m` (0 for `X_0`, 1 for `W`) is
//!
//! 1. `key  = mix(seed ^ (m * γ))` — one independent SplitMix64 stream per matrix;
//! 2. `bits = mix(key + (index + 1) * γ)` — the `index`-th output of SplitMix64 started at `key`;
//! 3. `u    = bits >> 40` — the top 24 bits, an integer in `[0, 2^24)`;
//! 4. `x    = (u as f32) * 2^-23 - 1.0` in `f32` — exact, uniform on the grid of `2^24` values
//!    `[-1, 1 - 2^-23]` (every step is exact, so fused or unfused evaluation agrees).
//!
//! `X_0[index] = x(seed, 0, index)`. `W[index] = x(seed, 1, index) * s` rounded once to `f32`,
//! where `s = (sqrt(3.0 / n) computed in f64) as f32` ([`w_scale`]). A uniform value on
//! `[-1, 1)` has variance 1/3, so `s` makes each column of `W` preserve the expected squared norm
//! of a row of `X`.

/// SplitMix64's increment, the golden ratio in 64-bit fixed point.
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Matrix number of `X_0` in [`input`].
pub const MATRIX_X0: u32 = 0;
/// Matrix number of `W` in [`input`].
pub const MATRIX_W: u32 = 1;

/// SplitMix64's output function (Steele, Lea & Flood 2014; the constants of Vigna's `splitmix64.c`).
#[inline]
pub const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 state that generates matrix `matrix` of a job with seed `seed`.
#[inline]
pub const fn stream_key(seed: u64, matrix: u32) -> u64 {
    mix(seed ^ (matrix as u64).wrapping_mul(GAMMA))
}

/// Turns 64 random bits into a uniform `f32` on `[-1, 1)` from their top 24 bits (exact).
#[inline]
pub fn unit_f32(bits: u64) -> f32 {
    const INV_2_23: f32 = 1.0 / 8_388_608.0;
    ((bits >> 40) as u32 as f32) * INV_2_23 - 1.0
}

/// Element `index` of input matrix `matrix` for `seed`, before any scaling: see the module docs.
#[inline]
pub fn input(seed: u64, matrix: u32, index: u64) -> f32 {
    input_keyed(stream_key(seed, matrix), index)
}

/// [`input`] with the stream key already computed (the hot loop of [`fill`]).
#[inline]
fn input_keyed(key: u64, index: u64) -> f32 {
    unit_f32(mix(
        key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA))
    ))
}

/// The factor `W`'s raw inputs are multiplied by: `sqrt(3 / n)` computed in `f64`, rounded to `f32`.
pub fn w_scale(n: u32) -> f32 {
    (3.0f64 / f64::from(n)).sqrt() as f32
}

/// Writes elements `first..first + out.len()` of matrix `matrix`, each multiplied by `scale`
/// (pass 1.0 for `X_0`; multiplying by 1.0 is exact).
pub fn fill(out: &mut [f32], seed: u64, matrix: u32, first: u64, scale: f32) {
    let key = stream_key(seed, matrix);
    for (i, v) in out.iter_mut().enumerate() {
        *v = input_keyed(key, first + i as u64) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recipe, pinned. A GPU kernel or another implementation must reproduce these bits.
    #[test]
    fn golden_values() {
        let cases: [(u64, u32, u64, u32); 8] = [
            (0, 0, 0, GOLDEN[0]),
            (0, 0, 1, GOLDEN[1]),
            (0, 1, 0, GOLDEN[2]),
            (0, 1, 1, GOLDEN[3]),
            (42, 0, 0, GOLDEN[4]),
            (42, 1, 1_048_575, GOLDEN[5]),
            (u64::MAX, 0, 123_456_789, GOLDEN[6]),
            (7, 1, u64::MAX, GOLDEN[7]),
        ];
        for (seed, m, i, want) in cases {
            let got = input(seed, m, i);
            assert_eq!(
                got.to_bits(),
                want,
                "input({seed}, {m}, {i}) = {got:e} (0x{:08x}), pinned 0x{want:08x} ({:e})",
                got.to_bits(),
                f32::from_bits(want)
            );
        }
        assert_eq!(mix(0), 0);
        assert_eq!(
            mix(GAMMA),
            0xE220_A839_7B1D_CDAF,
            "SplitMix64(0)'s first output"
        );
        assert_eq!(w_scale(3), 1.0);
        assert_eq!(w_scale(1024).to_bits(), GOLDEN_W_SCALE_1024);
    }

    /// Computed independently by `scripts/numpy_chain.py --input SEED MATRIX INDEX` (pure
    /// Python integers, no numpy), then pinned.
    const GOLDEN: [u32; 8] = [
        0x3f44_4150, // 0.7666216
        0xbe0c_3b10, // -0.13694406
        0x3e9c_1b74, // 0.30489695
        0x3ece_0a8c, // 0.40242422
        0x3e44_d9f8, // 0.19223773
        0xbef0_46bc, // -0.46928966
        0x3eae_d824, // 0.34149277
        0xbf01_1fba, // -0.50439036
    ];
    /// `struct.pack("<f", math.sqrt(3 / 1024))` in Python.
    const GOLDEN_W_SCALE_1024: u32 = 0x3d5d_b3d7;

    #[test]
    fn values_are_uniform_on_the_half_open_unit_interval() {
        let n = 200_000u64;
        let (mut sum, mut sq) = (0f64, 0f64);
        for i in 0..n {
            let x = input(9, MATRIX_X0, i);
            assert!((-1.0..1.0).contains(&x), "input(9, 0, {i}) = {x}");
            sum += f64::from(x);
            sq += f64::from(x) * f64::from(x);
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0 / 3.0).abs() < 0.01, "variance {var}");
        assert_eq!(unit_f32(0), -1.0);
        assert_eq!(unit_f32(u64::MAX), 1.0 - 1.0 / 8_388_608.0);
    }

    #[test]
    fn fill_matches_input_and_streams_differ() {
        let mut buf = vec![0f32; 100];
        fill(&mut buf, 5, MATRIX_W, 1000, 0.5);
        for (i, v) in buf.iter().enumerate() {
            assert_eq!(
                v.to_bits(),
                (input(5, MATRIX_W, 1000 + i as u64) * 0.5).to_bits()
            );
        }
        let differing = (0..100)
            .filter(|&i| input(5, MATRIX_X0, i) != input(5, MATRIX_W, i))
            .count();
        assert!(
            differing > 95,
            "X_0 and W streams agree at {} of 100",
            100 - differing
        );
        let differing = (0..100)
            .filter(|&i| input(5, 0, i) != input(6, 0, i))
            .count();
        assert!(
            differing > 95,
            "seeds 5 and 6 agree at {} of 100",
            100 - differing
        );
    }
}

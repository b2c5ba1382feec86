//! The CPU chain: torch_bench's exact int8 chain (`protocol::workload::torch_bench`) with a
//! fast int8 x int8 -> int32 GEMM, on a rayon pool of exactly the job's thread count.
//!
//! # How it computes
//!
//! * **Kernels, chosen at run time** ([`Kernel::detect`], once per process, unless the operator
//!   names one with `CPU_KERNEL`: [`Kernel::choose`]): AVX-512-VNNI
//!   (512-bit `vpdpbusd`), AVX-VNNI (256-bit `vpdpbusd`), AVX2 (`vpmovsxbw` + `vpmaddwd`) and a
//!   portable scalar loop. Every one computes the same exact `i32` sums, so the bytes never
//!   depend on the kernel, the blocking or the thread count ([`run_cpu_with`] forces one).
//! * **Operands:** `A` is kept *biased*, each element as the byte `a + 128` (`a ^ 0x80`), the
//!   unsigned operand `vpdpbusd` multiplies; `B` stays signed. A kernel sums
//!   `(a + 128) * b` and the exact correction `128 * colsum(B)` is subtracted before the
//!   requantization, which writes the next `A` straight back in the biased form.
//! * **Packing:** `B` is generated once per job directly into panels of `NR` columns, each a
//!   run of `K`-groups of `KG` rows interleaved (`B[t..t+KG][j]` adjacent, the layout
//!   `vpdpbusd` reads 4 bytes of), zero-padded to whole groups and panels.
//! * **Blocking:** rows are independent (row `i` of `A_{k+1}` needs only row `i` of `A_k` and
//!   `B`), so each task takes a block of rows, sized to stay in L2, through *all* `iters`
//!   steps, ping-ponging between its rows of two buffers; inside a step, one `B` panel is
//!   reused from L1 by every `MR`-row tile of the block. No barrier between steps.
//! * **Memory:** `A`, the next `A` (rows padded to a multiple of `MR`, columns to a multiple
//!   of 4), the packed `B` and one `i32` per column: about `3 n^2` bytes, inside
//!   `TorchBenchParams::memory_mb` (`7 n^2` plus overhead).
//!
//! It must never spawn threads beyond its pool, never allocate inside the step loop, never let
//! an allocation failure abort the process where `try_reserve_exact` can report it, and never
//! run a kernel the CPU lacks (every SIMD entry point is behind [`Kernel::available`]).

use std::sync::OnceLock;
use std::time::Instant;

use aitbc_protocol::api::Mode;
use aitbc_protocol::args::CpuKernel;
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_protocol::workload::torch_bench::{
    element_of, stream_key, Commitment, Committer, MATRIX_A0, MATRIX_B,
};
use rayon::prelude::*;

use super::check_params;
use crate::workload::Output;
use crate::WorkerError;

/// An int8 GEMM kernel of the CPU chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// 512-bit `vpdpbusd` (AVX-512F, AVX-512BW, AVX-512-VNNI): 12 x 32 tiles.
    Avx512Vnni,
    /// 256-bit `vpdpbusd` in its VEX form (AVX-VNNI, AVX2): 6 x 16 tiles.
    AvxVnni,
    /// `vpmovsxbw` + `vpmaddwd` (AVX2), exact in `i32` (unlike `vpmaddubsw`, which saturates).
    Avx2,
    /// Plain loops the compiler may vectorize: any CPU.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Avx512Vnni,
        Kernel::AvxVnni,
        Kernel::Avx2,
        Kernel::Portable,
    ];

    /// The fastest kernel this CPU runs, detected once per process.
    pub fn detect() -> Kernel {
        static DETECTED: OnceLock<Kernel> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            Kernel::ALL
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// The kernel an operator's `choice` (`--cpu-kernel`, the config's `CPU_KERNEL`) names on
    /// this CPU: [`Kernel::detect`] for `auto`, otherwise exactly the one named, or `Err`
    /// saying which this CPU runs. Never a kernel the CPU lacks.
    pub fn choose(choice: CpuKernel) -> Result<Kernel, String> {
        match choice {
            CpuKernel::Auto => Ok(Kernel::detect()),
            named => Kernel::choose_from(named, Kernel::available),
        }
    }

    /// [`Kernel::choose`] on a CPU that runs the kernels `available` accepts (pure: for tests
    /// of CPUs this one is not). `auto` is the first available of [`Kernel::ALL`].
    pub fn choose_from(
        choice: CpuKernel,
        available: impl Fn(Kernel) -> bool,
    ) -> Result<Kernel, String> {
        let named = match choice {
            CpuKernel::Auto => {
                return Ok(Kernel::ALL
                    .into_iter()
                    .find(|&k| available(k))
                    .unwrap_or(Kernel::Portable))
            }
            CpuKernel::Avx512Vnni => Kernel::Avx512Vnni,
            CpuKernel::AvxVnni => Kernel::AvxVnni,
            CpuKernel::Avx2 => Kernel::Avx2,
            CpuKernel::Portable => Kernel::Portable,
        };
        if available(named) {
            return Ok(named);
        }
        let runs: Vec<&str> = Kernel::ALL
            .into_iter()
            .filter(|&k| available(k) || k == Kernel::Portable)
            .map(Kernel::name)
            .collect();
        Err(format!(
            "this CPU lacks the {} int8 kernel (it runs {}); set CPU_KERNEL=auto or one of those",
            named.name(),
            runs.join(", ")
        ))
    }

    /// Whether this CPU (and this build's target) can run the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::AvxVnni => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// A short name for logs and benchmarks: the spelling of `CPU_KERNEL` and `--cpu-kernel`.
    pub fn name(self) -> &'static str {
        self.choice().as_str()
    }

    /// The operator's choice that names exactly this kernel.
    pub fn choice(self) -> CpuKernel {
        match self {
            Kernel::Avx512Vnni => CpuKernel::Avx512Vnni,
            Kernel::AvxVnni => CpuKernel::AvxVnni,
            Kernel::Avx2 => CpuKernel::Avx2,
            Kernel::Portable => CpuKernel::Portable,
        }
    }

    /// Rows, columns and `K`-group of this kernel's tile.
    fn geometry(self) -> Geometry {
        match self {
            Kernel::Avx512Vnni => Geometry::of::<x86::Avx512Vnni>(),
            Kernel::AvxVnni => Geometry::of::<x86::AvxVnni>(),
            Kernel::Avx2 => Geometry::of::<x86::Avx2>(),
            Kernel::Portable => Geometry::of::<Portable>(),
        }
    }
}

/// A kernel's tile shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    mr: usize,
    nr: usize,
    kg: usize,
}

impl Geometry {
    fn of<T: Tile>() -> Geometry {
        Geometry {
            mr: T::MR,
            nr: T::NR,
            kg: T::KG,
        }
    }
}

/// `A`'s row stride: `n` rounded up to whole 4-byte `K`-groups (every kernel's `KG` divides 4).
const K_ALIGN: usize = 4;
/// Bytes of a task's rows of both `A` buffers meant to stay in L2 (1 MiB per core on the
/// machines this is tuned for; the rest is for the `B` panel in use and the hardware).
const BLOCK_BYTES: usize = 320 << 10;
/// Tasks per thread to aim for, so that the last, shorter block costs little.
const TASKS_PER_THREAD: usize = 4;

/// One `MR x NR` tile of `C = A . B` over the whole `K`, requantized into the next `A`.
trait Tile {
    /// Rows of the tile.
    const MR: usize;
    /// Columns of the tile (one packed panel).
    const NR: usize;
    /// `K` rows interleaved per packed group.
    const KG: usize;

    /// Whether the CPU has the instructions [`Tile::tile`] uses.
    fn available() -> bool;

    /// For `r < MR`, `c < cols`: `out[r * kp + j0 + c] = 0x80 ^ requant(sum_t a'[r][t] *
    /// b[t][c] - bias[c])`, where `a'[r][t] = a[r * kp + t]` (the biased `A`), `b` is the
    /// panel (`kp * NR` bytes in this kernel's packed layout) and `bias[c] = 128 *
    /// colsum(B)[c]`. Panics unless `a.len() >= MR * kp`, `panel.len() >= kp * NR`,
    /// `bias.len() >= NR`, `cols <= NR`, `kp % 4 == 0` and `out` reaches `(MR - 1) * kp + j0 +
    /// cols`.
    ///
    /// # Safety
    ///
    /// The CPU must support the kernel: [`Tile::available`] returned true.
    unsafe fn tile(
        a: &[u8],
        kp: usize,
        panel: &[i8],
        bias: &[i32],
        out: &mut [u8],
        j0: usize,
        cols: usize,
    );
}

/// Panics unless a tile's arguments are in bounds (see [`Tile::tile`]); once per tile.
#[inline]
fn check_tile<T: Tile>(
    a: &[u8],
    kp: usize,
    panel: &[i8],
    bias: &[i32],
    out: &[u8],
    j0: usize,
    cols: usize,
) {
    assert!(
        kp.is_multiple_of(K_ALIGN)
            && a.len() >= T::MR * kp
            && panel.len() >= kp * T::NR
            && bias.len() >= T::NR
            && cols <= T::NR
            && out.len() >= (T::MR - 1) * kp + j0 + cols,
        "int8 tile arguments out of bounds"
    );
}

/// The requantization of an exact product, in the biased form the next step reads:
/// `requant(c) as u8 ^ 0x80`.
#[inline]
fn requant_biased(c: i32) -> u8 {
    (aitbc_protocol::workload::torch_bench::requant(c) as u8) ^ 0x80
}

/// The multiplier and offset of `requant`, for the SIMD kernels.
const REQUANT_ADD: i32 = 0x7F4A_7C15;
const REQUANT_MUL: i32 = 0x9E37_79B1_u32 as i32;

/// The portable kernel: plain loops, `KG = 1` (the panel is `B[t][j0..j0 + 16]` row by row).
struct Portable;

impl Tile for Portable {
    const MR: usize = 4;
    const NR: usize = 16;
    const KG: usize = 1;

    fn available() -> bool {
        true
    }

    unsafe fn tile(
        a: &[u8],
        kp: usize,
        panel: &[i8],
        bias: &[i32],
        out: &mut [u8],
        j0: usize,
        cols: usize,
    ) {
        check_tile::<Self>(a, kp, panel, bias, out, j0, cols);
        for r in 0..Self::MR {
            let mut acc = [0i32; Self::NR];
            let row = &a[r * kp..(r + 1) * kp];
            for (&x, b) in row.iter().zip(panel.chunks_exact(Self::NR)) {
                let x = i32::from(x);
                for (s, &y) in acc.iter_mut().zip(b) {
                    *s += x * i32::from(y);
                }
            }
            let dst = &mut out[r * kp + j0..r * kp + j0 + cols];
            for ((o, s), b) in dst.iter_mut().zip(acc).zip(bias) {
                *o = requant_biased(s - b);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The x86-64 SIMD tiles. Each is an `unsafe fn` with `#[target_feature]`, reached only
    //! through `Tile::tile` after `Tile::available`; each checks its slice bounds once
    //! (`check_tile`) so that every pointer it forms stays inside them.

    use std::arch::x86_64::*;

    use super::{check_tile, Tile, REQUANT_ADD, REQUANT_MUL};

    /// A SIMD tile on raw pointers into bounds already checked (the `tile_*` functions).
    type RawTile = unsafe fn(*const u8, usize, *const i8, *const i32, *mut u8, usize);

    /// `Tile::tile` of a SIMD kernel: checks the slices once, then runs `kernel` on pointers
    /// into them.
    ///
    /// # Safety
    ///
    /// The CPU must have `kernel`'s instructions (`T::available()` returned true).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn checked<T: Tile>(
        kernel: RawTile,
        a: &[u8],
        kp: usize,
        panel: &[i8],
        bias: &[i32],
        out: &mut [u8],
        j0: usize,
        cols: usize,
    ) {
        check_tile::<T>(a, kp, panel, bias, out, j0, cols);
        // SAFETY: the caller guarantees the instructions; `check_tile` proved every pointer the
        // kernel forms stays inside these slices.
        unsafe {
            kernel(
                a.as_ptr(),
                kp,
                panel.as_ptr(),
                bias.as_ptr(),
                out.as_mut_ptr().add(j0),
                cols,
            )
        }
    }

    /// 512-bit `vpdpbusd`: 12 rows x 32 columns (24 accumulators), `KG = 4`.
    pub(super) struct Avx512Vnni;
    /// 256-bit VEX `vpdpbusd`: 6 rows x 16 columns (12 accumulators), `KG = 4`.
    pub(super) struct AvxVnni;
    /// `vpmovsxbw` + `vpmaddwd`: 6 rows x 16 columns (12 accumulators), `KG = 2`.
    pub(super) struct Avx2;

    impl Tile for Avx512Vnni {
        const MR: usize = 12;
        const NR: usize = 32;
        const KG: usize = 4;

        fn available() -> bool {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        }

        unsafe fn tile(
            a: &[u8],
            kp: usize,
            panel: &[i8],
            bias: &[i32],
            out: &mut [u8],
            j0: usize,
            cols: usize,
        ) {
            // SAFETY: the caller guarantees the features (`available`).
            unsafe { checked::<Self>(tile_avx512, a, kp, panel, bias, out, j0, cols) }
        }
    }

    /// See [`Avx512Vnni`]. `a` holds 12 rows of `kp` bytes, `panel` `kp * 32` bytes, `bias`
    /// 32 values, `out` 12 rows (stride `kp`) of `cols <= 32` writable bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn tile_avx512(
        a: *const u8,
        kp: usize,
        panel: *const i8,
        bias: *const i32,
        out: *mut u8,
        cols: usize,
    ) {
        const MR: usize = 12;
        let mut acc = [[_mm512_setzero_si512(); 2]; MR];
        let mut b = panel;
        let mut t = 0;
        while t < kp {
            // SAFETY: group `t / 4` of the panel is bytes `t * 32 .. t * 32 + 128`, inside
            // `kp * 32`; row `r`'s bytes `t .. t + 4` are inside its `kp` (`kp % 4 == 0`).
            unsafe {
                let b0 = _mm512_loadu_si512(b.cast());
                let b1 = _mm512_loadu_si512(b.add(64).cast());
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_epi32(a.add(r * kp + t).cast::<i32>().read_unaligned());
                    acc[0] = _mm512_dpbusd_epi32(acc[0], x, b0);
                    acc[1] = _mm512_dpbusd_epi32(acc[1], x, b1);
                }
                b = b.add(128);
            }
            t += 4;
        }
        // SAFETY: `bias` holds 32 values.
        let (bias0, bias1) = unsafe {
            (
                _mm512_loadu_si512(bias.cast()),
                _mm512_loadu_si512(bias.add(16).cast()),
            )
        };
        let add = _mm512_set1_epi32(REQUANT_ADD);
        let mul = _mm512_set1_epi32(REQUANT_MUL);
        let flip = _mm512_set1_epi32(0x80);
        let q = |c: __m512i, bias: __m512i| {
            let x = _mm512_mullo_epi32(_mm512_add_epi32(_mm512_sub_epi32(c, bias), add), mul);
            _mm512_xor_si512(_mm512_srli_epi32::<24>(x), flip)
        };
        let m0 = if cols >= 16 {
            0xFFFF
        } else {
            (1u16 << cols) - 1
        };
        let m1 = if cols >= 32 {
            0xFFFF
        } else if cols > 16 {
            (1u16 << (cols - 16)) - 1
        } else {
            0
        };
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `r` of `out` has `cols` writable bytes; the masks cover only those.
            unsafe {
                let o = out.add(r * kp);
                _mm512_mask_cvtepi32_storeu_epi8(o.cast(), m0, q(acc[0], bias0));
                _mm512_mask_cvtepi32_storeu_epi8(o.add(16).cast(), m1, q(acc[1], bias1));
            }
        }
    }

    impl Tile for AvxVnni {
        const MR: usize = 6;
        const NR: usize = 16;
        const KG: usize = 4;

        fn available() -> bool {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("avxvnni")
        }

        unsafe fn tile(
            a: &[u8],
            kp: usize,
            panel: &[i8],
            bias: &[i32],
            out: &mut [u8],
            j0: usize,
            cols: usize,
        ) {
            // SAFETY: the caller guarantees the features (`available`).
            unsafe { checked::<Self>(tile_avxvnni, a, kp, panel, bias, out, j0, cols) }
        }
    }

    /// See [`AvxVnni`]. `a` holds 6 rows of `kp` bytes, `panel` `kp * 16` bytes, `bias` 16
    /// values, `out` 6 rows (stride `kp`) of `cols <= 16` writable bytes.
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn tile_avxvnni(
        a: *const u8,
        kp: usize,
        panel: *const i8,
        bias: *const i32,
        out: *mut u8,
        cols: usize,
    ) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let mut b = panel;
        let mut t = 0;
        while t < kp {
            // SAFETY: group `t / 4` of the panel is bytes `t * 16 .. t * 16 + 64`, inside
            // `kp * 16`; row `r`'s bytes `t .. t + 4` are inside its `kp` (`kp % 4 == 0`).
            unsafe {
                let b0 = _mm256_loadu_si256(b.cast());
                let b1 = _mm256_loadu_si256(b.add(32).cast());
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_epi32(a.add(r * kp + t).cast::<i32>().read_unaligned());
                    acc[0] = _mm256_dpbusd_avx_epi32(acc[0], x, b0);
                    acc[1] = _mm256_dpbusd_avx_epi32(acc[1], x, b1);
                }
                b = b.add(64);
            }
            t += 4;
        }
        // SAFETY: `bias` holds 16 values; `out`'s rows have `cols` writable bytes each.
        unsafe { store_256(&acc, bias, out, kp, cols) }
    }

    impl Tile for Avx2 {
        const MR: usize = 6;
        const NR: usize = 16;
        const KG: usize = 2;

        fn available() -> bool {
            is_x86_feature_detected!("avx2")
        }

        unsafe fn tile(
            a: &[u8],
            kp: usize,
            panel: &[i8],
            bias: &[i32],
            out: &mut [u8],
            j0: usize,
            cols: usize,
        ) {
            // SAFETY: the caller guarantees the features (`available`).
            unsafe { checked::<Self>(tile_avx2, a, kp, panel, bias, out, j0, cols) }
        }
    }

    /// See [`Avx2`]. `a` holds 6 rows of `kp` bytes, `panel` `kp * 16` bytes (pairs of `K`
    /// rows interleaved), `bias` 16 values, `out` 6 rows (stride `kp`) of `cols <= 16` bytes.
    /// `vpmaddwd` multiplies `i16`s: `(a + 128) <= 255` times `|b| <= 128`, two per lane, is
    /// far inside `i32`, so every sum is exact.
    #[target_feature(enable = "avx2")]
    unsafe fn tile_avx2(
        a: *const u8,
        kp: usize,
        panel: *const i8,
        bias: *const i32,
        out: *mut u8,
        cols: usize,
    ) {
        const MR: usize = 6;
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        let mut b = panel;
        let mut t = 0;
        while t < kp {
            // SAFETY: group `t / 2` of the panel is bytes `t * 16 .. t * 16 + 32`, inside
            // `kp * 16`; row `r`'s bytes `t, t + 1` are inside its `kp` (`kp` is even).
            unsafe {
                let b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.cast()));
                let b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let v = u32::from(a.add(r * kp + t).cast::<u16>().read_unaligned());
                    let x = _mm256_set1_epi32(((v & 0xFF) | ((v & 0xFF00) << 8)) as i32);
                    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, b0));
                    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, b1));
                }
                b = b.add(32);
            }
            t += 2;
        }
        // SAFETY: `bias` holds 16 values; `out`'s rows have `cols` writable bytes each.
        unsafe { store_256(&acc, bias, out, kp, cols) }
    }

    /// Requantizes 6 x 16 sums (`bias` removed) into `out`'s 6 rows (stride `kp`), `cols` bytes
    /// each, biased.
    ///
    /// # Safety
    ///
    /// AVX2; `bias` holds 16 values; each row of `out` has `cols <= 16` writable bytes.
    #[target_feature(enable = "avx2")]
    unsafe fn store_256(
        acc: &[[__m256i; 2]; 6],
        bias: *const i32,
        out: *mut u8,
        kp: usize,
        cols: usize,
    ) {
        // SAFETY: `bias` holds 16 values.
        let (bias0, bias1) = unsafe {
            (
                _mm256_loadu_si256(bias.cast()),
                _mm256_loadu_si256(bias.add(8).cast()),
            )
        };
        let add = _mm256_set1_epi32(REQUANT_ADD);
        let mul = _mm256_set1_epi32(REQUANT_MUL);
        let flip = _mm256_set1_epi32(0x80);
        let q = |c: __m256i, bias: __m256i| {
            let x = _mm256_mullo_epi32(_mm256_add_epi32(_mm256_sub_epi32(c, bias), add), mul);
            _mm256_xor_si256(_mm256_srli_epi32::<24>(x), flip)
        };
        for (r, acc) in acc.iter().enumerate() {
            let mut words = [0u32; 16];
            // SAFETY: `words` holds 16 `u32`s, two 32-byte stores.
            unsafe {
                _mm256_storeu_si256(words.as_mut_ptr().cast(), q(acc[0], bias0));
                _mm256_storeu_si256(words.as_mut_ptr().add(8).cast(), q(acc[1], bias1));
            }
            for (c, w) in words.iter().take(cols).enumerate() {
                // SAFETY: row `r` of `out` has `cols` writable bytes and `c < cols`.
                unsafe { out.add(r * kp + c).write(*w as u8) };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    //! No x86 SIMD on this target: the x86 kernels report themselves unavailable and fall
    //! back to the portable tile if called anyway.
    pub(super) type Avx512Vnni = super::Portable;
    pub(super) type AvxVnni = super::Portable;
    pub(super) type Avx2 = super::Portable;
}

/// `B` packed for one kernel, with its column corrections.
struct PackedB {
    /// Panel `p` (columns `p * nr ..`) is `kp * nr` bytes: `K`-group `g` is `nr * kg` bytes,
    /// column `c` of it the `kg` bytes `B[g * kg + u][p * nr + c]`; zero outside `n x n`.
    data: Vec<i8>,
    /// `128 * sum_t B[t][j]` for each padded column `j` (zero for padding).
    bias: Vec<i32>,
}

/// A zeroed buffer of `len` elements, or `OutOfMemory` naming `what`.
fn alloc<T: Copy + Default>(len: usize, what: &'static str) -> Result<Vec<T>, WorkerError> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| WorkerError::OutOfMemory {
            what,
            bytes: (len as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        })?;
    v.resize(len, T::default());
    Ok(v)
}

/// A chain set up on the CPU: the inputs generated, `B` packed, the buffers allocated, the pool
/// started. [`CpuChain::run`] does the products, so a benchmark can time them alone.
pub struct CpuChain {
    n: usize,
    kernel: Kernel,
    /// `A`'s row stride: `n` rounded up to a multiple of 4.
    kp: usize,
    /// Rows per task (a multiple of the tile's rows).
    block_rows: usize,
    /// `A_k`, biased (`a ^ 0x80`), `rows x kp`.
    cur: Vec<u8>,
    /// Where the next step is written before the buffers swap.
    next: Vec<u8>,
    b: PackedB,
    pool: rayon::ThreadPool,
}

impl CpuChain {
    /// Allocates the buffers, starts `threads` compute threads, generates `A_0` and packs `B`
    /// for `p`, with the fastest kernel this CPU runs.
    pub fn new(p: &TorchBenchParams, threads: usize) -> Result<CpuChain, WorkerError> {
        CpuChain::with_kernel(Kernel::detect(), p, threads)
    }

    /// [`CpuChain::new`] with a chosen kernel; `Internal` if the CPU lacks it.
    pub fn with_kernel(
        kernel: Kernel,
        p: &TorchBenchParams,
        threads: usize,
    ) -> Result<CpuChain, WorkerError> {
        check_params(p)?;
        if threads == 0 {
            return Err(WorkerError::BadParams {
                field: "threads",
                value: "0".into(),
                reason: "at least one compute thread is needed".into(),
            });
        }
        if !kernel.available() {
            return Err(WorkerError::Internal(format!(
                "the {} int8 kernel does not run on this CPU",
                kernel.name()
            )));
        }
        let geom = kernel.geometry();
        // n <= MAX_N = 2^14: every size below fits a usize we build for.
        let n = p.n as usize;
        let kp = n.next_multiple_of(K_ALIGN);
        let np = n.next_multiple_of(geom.nr);
        // Rows padded to whole tiles: the extra rows are computed and never read back.
        let rows = n.next_multiple_of(geom.mr);
        let block_rows = block_rows(rows, kp, geom.mr, threads);
        let mut cur = alloc::<u8>(rows * kp, "A")?;
        let next = alloc::<u8>(rows * kp, "the next A")?;
        let mut data = alloc::<i8>(kp * np, "the packed B")?;
        let mut bias = alloc::<i32>(np, "B's column sums")?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("aitbc-compute-{i}"))
            .build()
            .map_err(|e| WorkerError::ThreadPool {
                threads,
                reason: e.to_string(),
            })?;
        let seed = p.seed;
        pool.install(|| {
            let key = stream_key(seed, MATRIX_A0);
            cur.par_chunks_mut(kp)
                .take(n)
                .enumerate()
                .for_each(|(i, row)| {
                    let first = (i * n) as u64;
                    for (j, x) in row[..n].iter_mut().enumerate() {
                        *x = (element_of(key, first + j as u64) as u8) ^ 0x80;
                    }
                });
            let key = stream_key(seed, MATRIX_B);
            data.par_chunks_mut(kp * geom.nr)
                .zip(bias.par_chunks_mut(geom.nr))
                .enumerate()
                .for_each(|(panel, (dst, sums))| pack_panel(key, n, kp, geom, panel, dst, sums));
        });
        Ok(CpuChain {
            n,
            kernel,
            kp,
            block_rows,
            cur,
            next,
            b: PackedB { data, bias },
            pool,
        })
    }

    /// The kernel this chain runs.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of the buffers it holds (what counts against `TorchBenchParams::memory_mb`).
    pub fn heap_bytes(&self) -> u64 {
        (self.cur.capacity()
            + self.next.capacity()
            + self.b.data.capacity()
            + 4 * self.b.bias.capacity()) as u64
    }

    /// Advances the chain by `iters` steps.
    pub fn run(&mut self, iters: u32) -> Result<(), WorkerError> {
        if iters == 0 {
            return Ok(());
        }
        let chunk = self.block_rows * self.kp;
        let (n, kp, b) = (self.n, self.kp, &self.b);
        let kernel = self.kernel;
        let (cur, next) = (&mut self.cur, &mut self.next);
        self.pool.install(|| {
            cur.par_chunks_mut(chunk)
                .zip(next.par_chunks_mut(chunk))
                .try_for_each(|(a, out)| match kernel {
                    Kernel::Avx512Vnni => run_block::<x86::Avx512Vnni>(a, out, n, kp, b, iters),
                    Kernel::AvxVnni => run_block::<x86::AvxVnni>(a, out, n, kp, b, iters),
                    Kernel::Avx2 => run_block::<x86::Avx2>(a, out, n, kp, b, iters),
                    Kernel::Portable => run_block::<Portable>(a, out, n, kp, b, iters),
                })
        })?;
        // Every block took the same number of steps: after an odd number, `A` is in `next`.
        if iters % 2 == 1 {
            std::mem::swap(&mut self.cur, &mut self.next);
        }
        Ok(())
    }

    /// Output row `i` of the current `A` (`n` bytes, biased), for `i < n`.
    fn row(&self, i: usize) -> &[u8] {
        &self.cur[i * self.kp..i * self.kp + self.n]
    }

    /// The current matrix `A_k`, `n x n` row-major.
    pub fn output(&self) -> Vec<i8> {
        (0..self.n)
            .flat_map(|i| self.row(i).iter().map(|&x| (x ^ 0x80) as i8))
            .collect()
    }

    /// The commitment to the current matrix: its SHA-256 and the Merkle root over its rows,
    /// and the rows' leaves.
    pub fn commit(&self) -> Result<(Commitment, Vec<[u8; 32]>), WorkerError> {
        let mut c = Committer::new(self.n);
        let mut row = vec![0i8; self.n];
        for i in 0..self.n {
            for (dst, &x) in row.iter_mut().zip(self.row(i)) {
                *dst = (x ^ 0x80) as i8;
            }
            c.push_rows(&row)
                .ok_or_else(|| WorkerError::Internal(format!("the commitment refused row {i}")))?;
        }
        c.finish_with_leaves()
            .ok_or_else(|| WorkerError::Internal("the commitment is incomplete".into()))
    }

    /// Rows of the buffers and rows per task (for tests of the blocking).
    #[cfg(test)]
    fn shape(&self) -> (usize, usize, Geometry) {
        (
            self.cur.len() / self.kp,
            self.block_rows,
            self.kernel.geometry(),
        )
    }
}

/// Rows per task: a multiple of `mr`; small enough that a task's rows of both buffers stay in
/// [`BLOCK_BYTES`], and about [`TASKS_PER_THREAD`] tasks per thread so the threads finish
/// together.
fn block_rows(rows: usize, kp: usize, mr: usize, threads: usize) -> usize {
    let fit = (BLOCK_BYTES / (2 * kp)) / mr * mr;
    let fit = fit.max(mr);
    let tasks = rows.div_ceil(fit).max(threads * TASKS_PER_THREAD);
    let tasks = tasks.next_multiple_of(threads);
    rows.div_ceil(tasks).next_multiple_of(mr).min(fit).min(rows)
}

/// Packs panel `panel` of `B` (see [`PackedB`]) and its column corrections.
fn pack_panel(
    key: u64,
    n: usize,
    kp: usize,
    g: Geometry,
    panel: usize,
    dst: &mut [i8],
    sums: &mut [i32],
) {
    let j0 = panel * g.nr;
    for (c, sum) in sums.iter_mut().enumerate() {
        let j = j0 + c;
        if j >= n {
            continue; // the zero padding is already there
        }
        let mut s = 0i32;
        for t in 0..n {
            let v = element_of(key, (t * n + j) as u64);
            s += i32::from(v);
            dst[(t / g.kg) * g.nr * g.kg + c * g.kg + t % g.kg] = v;
        }
        debug_assert!(kp * g.nr <= dst.len());
        *sum = 128 * s;
    }
}

/// Runs `iters` steps of a block of rows (`a`, `out`: the block's rows of both buffers, whole
/// tiles), ping-ponging between them; after an odd number the result is in `out`.
fn run_block<T: Tile>(
    a: &mut [u8],
    out: &mut [u8],
    n: usize,
    kp: usize,
    b: &PackedB,
    iters: u32,
) -> Result<(), WorkerError> {
    if !T::available() {
        return Err(WorkerError::Internal(
            "an int8 kernel the CPU lacks was called".into(),
        ));
    }
    let tile = T::MR * kp;
    if a.len() != out.len() || !a.len().is_multiple_of(tile) {
        return Err(WorkerError::Internal(format!(
            "an int8 block of {} and {} bytes is not whole {}-row tiles",
            a.len(),
            out.len(),
            T::MR
        )));
    }
    let (mut src, mut dst) = (a, out);
    let panels = n.div_ceil(T::NR);
    for _ in 0..iters {
        for p in 0..panels {
            let j0 = p * T::NR;
            let cols = T::NR.min(n - j0);
            let panel = &b.data[p * kp * T::NR..(p + 1) * kp * T::NR];
            let bias = &b.bias[j0..j0 + T::NR];
            for (x, y) in src.chunks_exact(tile).zip(dst.chunks_exact_mut(tile)) {
                // SAFETY: `T::available()` was checked at the top of this function.
                unsafe { T::tile(x, kp, panel, bias, y, j0, cols) };
            }
        }
        std::mem::swap(&mut src, &mut dst);
    }
    Ok(())
}

/// Makes sure, before the sandbox is sealed, that nothing the chain needs later must still be
/// looked up: the kernel choice (`cpuid` only) is made and cached here. Starts no thread.
pub fn warm_up() {
    let _ = Kernel::detect();
}

/// The final matrix `A_iters` of the chain for `p`, computed with `kernel` on `threads`
/// compute threads.
pub fn chain_cpu_with(
    kernel: Kernel,
    p: &TorchBenchParams,
    threads: usize,
) -> Result<Vec<i8>, WorkerError> {
    let mut chain = CpuChain::with_kernel(kernel, p, threads)?;
    chain.run(p.iters)?;
    Ok(chain.output())
}

/// Runs the chain for `p` with the fastest kernel and commits to its output; `elapsed` covers
/// everything but the checks.
pub fn run_cpu(p: &TorchBenchParams, threads: usize) -> Result<Output, WorkerError> {
    run_cpu_with(Kernel::detect(), p, threads)
}

/// [`run_cpu`] with a chosen kernel (`Internal` if the CPU lacks it).
pub fn run_cpu_with(
    kernel: Kernel,
    p: &TorchBenchParams,
    threads: usize,
) -> Result<Output, WorkerError> {
    check_params(p)?;
    let start = Instant::now();
    let mut chain = CpuChain::with_kernel(kernel, p, threads)?;
    chain.run(p.iters)?;
    let (c, leaves) = chain.commit()?;
    let elapsed = start.elapsed();
    Ok(Output {
        output_sha: c.output_sha,
        merkle_root: c.merkle_root,
        leaves,
        output_len: p.output_len(),
        flops: p.flops(),
        elapsed,
        device_time: None,
        kind: Mode::Cpu,
    })
}

#[cfg(test)]
mod tests {
    use aitbc_protocol::workload::torch_bench::{commit, reference_output, KNOWN_ANSWERS};

    use super::*;

    fn params(n: u32, iters: u32, seed: u64) -> TorchBenchParams {
        TorchBenchParams { n, iters, seed }
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn kernels() -> Vec<Kernel> {
        let ks: Vec<Kernel> = Kernel::ALL.into_iter().filter(|k| k.available()).collect();
        let skipped: Vec<&str> = Kernel::ALL
            .iter()
            .filter(|k| !k.available())
            .map(|k| k.name())
            .collect();
        if !skipped.is_empty() {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP int8 kernels this CPU lacks: {skipped:?}"
            );
        }
        ks
    }

    #[test]
    fn every_kernel_gives_the_reference_bytes_at_any_thread_count() {
        let sizes = [
            (1, 5),
            (2, 3),
            (7, 4),
            (31, 2),
            (33, 3),
            (64, 2),
            (65, 2),
            (100, 1),
        ];
        for (n, iters) in sizes {
            let p = params(n, iters, u64::from(n) * 31 + 5);
            let want = reference_output(&p);
            let want_c = commit(&want, n as usize).unwrap();
            for k in kernels() {
                for threads in [1, 2] {
                    let got = chain_cpu_with(k, &p, threads).unwrap();
                    assert!(
                        got == want,
                        "{} n={n} iters={iters} threads={threads}",
                        k.name()
                    );
                    let run = run_cpu_with(k, &p, threads).unwrap();
                    assert_eq!(
                        (run.output_sha, run.merkle_root),
                        (want_c.output_sha, want_c.merkle_root)
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_agrees_where_blocks_and_tiles_have_ragged_edges() {
        // Sizes past one block and one panel, with remainders against every tile shape, and
        // 3 threads (blocks that do not split evenly); compared to the portable kernel.
        for (n, iters) in [(197, 3), (260, 2)] {
            let p = params(n, iters, 77);
            let want = chain_cpu_with(Kernel::Portable, &p, 1).unwrap();
            let b = aitbc_protocol::workload::torch_bench::input(77, MATRIX_B, n as usize);
            for row in [0, 1, n as usize / 2, n as usize - 1] {
                let r = aitbc_protocol::workload::torch_bench::output_row(&p, &b, row);
                assert_eq!(
                    r,
                    want[row * n as usize..(row + 1) * n as usize],
                    "n={n} row {row}"
                );
            }
            for k in kernels() {
                for threads in [1, 2, 3] {
                    assert!(
                        chain_cpu_with(k, &p, threads).unwrap() == want,
                        "{} n={n} threads={threads}",
                        k.name()
                    );
                }
            }
        }
    }

    #[test]
    fn known_answers_hold_through_run_cpu() {
        for &(n, iters, seed, sha, root) in KNOWN_ANSWERS {
            for threads in [1, 2] {
                let run = run_cpu(&params(n, iters, seed), threads).unwrap();
                assert_eq!(hex(&run.output_sha), sha, "n={n} threads={threads}");
                assert_eq!(hex(&run.merkle_root), root, "n={n} threads={threads}");
                assert_eq!(run.output_len, u64::from(n) * u64::from(n));
                assert_eq!(run.flops, 2 * u64::from(n).pow(3) * u64::from(iters));
                assert_eq!(run.kind, Mode::Cpu);
            }
        }
    }

    #[test]
    fn the_chain_can_be_advanced_in_steps() {
        let p = params(40, 5, 8);
        for k in kernels() {
            let mut c = CpuChain::with_kernel(k, &p, 2).unwrap();
            c.run(2).unwrap();
            c.run(0).unwrap();
            c.run(3).unwrap();
            assert!(c.output() == reference_output(&p), "{}", k.name());
        }
    }

    #[test]
    fn buffers_stay_inside_the_memory_formula() {
        for n in [1u32, 7, 33, 100, 1000, 1024, 2047] {
            let p = params(n, 1, 0);
            for k in kernels() {
                let c = CpuChain::with_kernel(k, &p, 2).unwrap();
                // The formula's 7 n^2 covers the matrices; its overhead the code and stacks.
                let budget = 7 * u64::from(n) * u64::from(n) + (1 << 20);
                assert!(
                    c.heap_bytes() <= budget,
                    "{} n={n}: {} > {budget}",
                    k.name(),
                    c.heap_bytes()
                );
                assert!(c.heap_bytes() <= p.memory_mb() << 20);
            }
        }
    }

    #[test]
    fn blocks_are_whole_tiles_and_spread_over_the_threads() {
        for n in [1usize, 7, 64, 1000, 1024, 2048, 16384] {
            for threads in [1, 2, 3, 16] {
                for k in Kernel::ALL {
                    let g = k.geometry();
                    let rows = n.next_multiple_of(g.mr);
                    let kp = n.next_multiple_of(K_ALIGN);
                    let b = block_rows(rows, kp, g.mr, threads);
                    assert!(
                        b >= g.mr && b.is_multiple_of(g.mr) && b <= rows,
                        "n={n} {b}"
                    );
                    assert!(
                        b == g.mr || 2 * b * kp <= BLOCK_BYTES,
                        "n={n}: {b} rows overflow L2"
                    );
                    if rows >= threads * g.mr * 8 {
                        assert!(
                            rows.div_ceil(b) >= threads,
                            "n={n} threads={threads}: idle threads"
                        );
                    }
                }
            }
        }
        let c = CpuChain::with_kernel(Kernel::Portable, &params(10, 1, 0), 1).unwrap();
        assert_eq!(c.shape().0, 12);
    }

    #[test]
    fn an_operators_choice_is_exactly_that_kernel_or_a_refusal() {
        // Every kernel's name is the spelling of the choice that names it.
        for k in Kernel::ALL {
            assert_eq!(CpuKernel::parse(k.name()), Some(k.choice()));
            assert_eq!(Kernel::choose_from(k.choice(), |_| true), Ok(k));
        }
        // A CPU with AVX2 only (this test's host may have more or less).
        let avx2_only = |k: Kernel| matches!(k, Kernel::Avx2 | Kernel::Portable);
        assert_eq!(
            Kernel::choose_from(CpuKernel::Auto, avx2_only),
            Ok(Kernel::Avx2)
        );
        assert_eq!(
            Kernel::choose_from(CpuKernel::Portable, avx2_only),
            Ok(Kernel::Portable)
        );
        assert_eq!(
            Kernel::choose_from(CpuKernel::Avx2, avx2_only),
            Ok(Kernel::Avx2)
        );
        for missing in [CpuKernel::Avx512Vnni, CpuKernel::AvxVnni] {
            let e = Kernel::choose_from(missing, avx2_only).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "this CPU lacks the {missing} int8 kernel (it runs avx2, portable); set \
                     CPU_KERNEL=auto or one of those"
                )
            );
        }
        // A CPU with nothing but the portable loops.
        assert_eq!(
            Kernel::choose_from(CpuKernel::Auto, |_| false),
            Ok(Kernel::Portable)
        );
        assert!(Kernel::choose_from(CpuKernel::Avx2, |_| false)
            .unwrap_err()
            .contains("(it runs portable)"));
        // This CPU: auto is detection; a named kernel is itself exactly when it is available.
        assert_eq!(Kernel::choose(CpuKernel::Auto), Ok(Kernel::detect()));
        for k in Kernel::ALL {
            assert_eq!(
                Kernel::choose(k.choice()).is_ok(),
                k.available(),
                "{}",
                k.name()
            );
        }
    }

    #[test]
    fn detection_picks_an_available_kernel_and_refuses_a_missing_one() {
        assert!(Kernel::detect().available());
        assert_eq!(Kernel::detect(), Kernel::detect());
        for k in Kernel::ALL {
            if !k.available() {
                let e = run_cpu_with(k, &params(4, 1, 0), 1).unwrap_err();
                assert!(matches!(e, WorkerError::Internal(_)), "{e}");
            }
        }
    }

    #[test]
    fn zero_threads_and_bad_params_are_refused() {
        let e = CpuChain::new(&params(4, 1, 0), 0).err().unwrap();
        assert!(
            matches!(
                e,
                WorkerError::BadParams {
                    field: "threads",
                    ..
                }
            ),
            "{e}"
        );
        let e = run_cpu(&params(0, 1, 0), 1).unwrap_err();
        assert!(
            matches!(
                e,
                WorkerError::BadParams {
                    field: "params.n",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn an_impossible_allocation_is_out_of_memory_not_an_abort() {
        let e = alloc::<u8>(usize::MAX / 2, "A").unwrap_err();
        assert!(
            matches!(e, WorkerError::OutOfMemory { what: "A", .. }),
            "{e}"
        );
        assert_eq!(alloc::<i32>(3, "B").unwrap(), vec![0; 3]);
    }
}

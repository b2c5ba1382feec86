//! GPU memory for one job: what it will allocate, decided before anything is allocated, and the
//! one allocator that refuses to exceed the job's cap.
//!
//! [`vram_needed`] is a pure function of `n`: the protocol's
//! `TorchBenchParams::vram_bytes_for`, the one formula the Coordinator, the supervisor, the
//! worker and this crate share (this module only names it), so anyone can compare it with a
//! job's `vram_mb` up front. [`VramBudget`] is the only way
//! [`crate::Gpu::run_chain`] allocates device memory, and it refuses any allocation that would
//! take the job's total past the cap, before calling the driver. Buffers are never freed back
//! into a budget: a job's budget lives as long as the job.
//!
//! What the cap does not cover: the CUDA context itself (a driver-dependent few hundred MiB
//! reserved when [`crate::Gpu::open`] runs) and cuBLAS's handle state. Those appear in NVML's
//! per-process figure, which the supervisor's watch must allow for; this module must never
//! pretend to account for them.

use std::sync::Arc;

use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};

use crate::CudaError;

/// The workspace handed to cuBLAS with `cublasSetWorkspace` (NVIDIA's recommendation for
/// Hopper; older GPUs need 4 MiB), so that cuBLAS allocates nothing of its own during a job.
pub const CUBLAS_WORKSPACE_BYTES: u64 = TorchBenchParams::GPU_CUBLAS_WORKSPACE_BYTES;

/// The chain's device state: four `u32` (the count of requantizations the kernels ran, three
/// reserved words).
pub const STATE_WORDS: usize = 4;
const _: () = assert!((STATE_WORDS * 4) as u64 == TorchBenchParams::GPU_STATE_BYTES);

/// Bytes of one `n x n` int8 matrix (`A`, `B`); the int32 product `C` takes four times as many.
pub fn matrix_bytes(n: u32) -> u64 {
    u64::from(n).pow(2)
}

/// What a torch_bench job of size `n` allocates on the device, whichever product path it takes
/// (the cuBLAS path needs the most): `A` and `B` as int8 and the int32 product `C` (`6n²`
/// bytes), the chain's state words and the cuBLAS workspace: `TorchBenchParams::vram_bytes`. The
/// own-kernel path allocates [`CUBLAS_WORKSPACE_BYTES`] less. A job whose cap is below this is
/// refused before it starts.
pub fn vram_needed(n: u32) -> u64 {
    vram_planned(n, true)
}

/// What a job of size `n` allocates on the device, exactly, with or without cuBLAS
/// (`TorchBenchParams::vram_bytes_for`).
pub fn vram_planned(n: u32, cublas: bool) -> u64 {
    TorchBenchParams::vram_bytes_for(n, cublas)
}

/// A job's device-memory allowance: counts what it has allocated and refuses to go past `cap`.
#[derive(Debug)]
pub struct VramBudget {
    cap: u64,
    used: u64,
}

impl VramBudget {
    /// A budget of `cap` bytes, nothing used.
    pub fn new(cap: u64) -> VramBudget {
        VramBudget { cap, used: 0 }
    }

    /// The cap.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes allocated so far.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Counts `bytes` for `what` against the cap, or refuses with [`CudaError::VramCap`] and
    /// counts nothing. Pure: the allocating methods call it before the driver.
    pub fn reserve(&mut self, what: &'static str, bytes: u64) -> Result<(), CudaError> {
        match self.used.checked_add(bytes) {
            Some(total) if total <= self.cap => {
                self.used = total;
                Ok(())
            }
            _ => Err(CudaError::VramCap {
                what,
                bytes,
                used: self.used,
                cap: self.cap,
            }),
        }
    }

    /// `len` elements of `T` on `stream`, uninitialised, counted against the cap first.
    ///
    /// # Safety
    /// The memory is uninitialised: the caller must write every element before reading it.
    pub unsafe fn alloc<T: DeviceRepr>(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        what: &'static str,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.reserve(what, bytes_of::<T>(len))?;
        // SAFETY: the only requirement, writing every element before reading it, is this
        // function's own `# Safety` contract, which the caller upholds.
        unsafe { stream.alloc::<T>(len) }.map_err(CudaError::driver(what))
    }

    /// `len` zeroed elements of `T` on `stream`, counted against the cap first.
    pub fn alloc_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        what: &'static str,
    ) -> Result<CudaSlice<T>, CudaError> {
        self.reserve(what, bytes_of::<T>(len))?;
        stream
            .alloc_zeros::<T>(len)
            .map_err(CudaError::driver(what))
    }
}

fn bytes_of<T>(len: usize) -> u64 {
    (len as u64).saturating_mul(std::mem::size_of::<T>() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vram_needed_is_two_int8_matrices_an_int32_product_state_and_workspace() {
        assert_eq!(matrix_bytes(1024), 1 << 20);
        assert_eq!(vram_needed(1), 6 + 16 + CUBLAS_WORKSPACE_BYTES);
        assert_eq!(vram_needed(1024), (6 << 20) + 16 + (32 << 20));
        assert_eq!(vram_needed(8192), (384 << 20) + 16 + (32 << 20));
        assert_eq!(vram_planned(1024, false), (6 << 20) + 16);
        assert_eq!(
            vram_planned(16384, true) - vram_planned(16384, false),
            CUBLAS_WORKSPACE_BYTES
        );
        // The protocol's largest n (16384) fits in u64 with room to spare; nothing wraps.
        assert_eq!(vram_needed(16384), 3 * (1 << 29) + 16 + (32 << 20));
        assert_eq!(vram_needed(u32::MAX), u64::MAX);
        // The protocol's figure for a job's params is this one.
        let p = TorchBenchParams {
            n: 1024,
            iters: 100,
            seed: 9,
        };
        assert_eq!(p.vram_bytes(), vram_needed(1024));
        // Monotone in n: a bigger job never needs less.
        let mut last = 0;
        for n in (1..=20_000).step_by(997) {
            let v = vram_needed(n);
            assert!(v > last, "n={n}");
            last = v;
        }
    }

    #[test]
    fn budget_refuses_past_the_cap_and_counts_nothing_for_a_refusal() {
        let mut b = VramBudget::new(100);
        b.reserve("X", 60).unwrap();
        let e = b.reserve("W", 41).unwrap_err();
        assert!(
            matches!(
                e,
                CudaError::VramCap {
                    what: "W",
                    bytes: 41,
                    used: 60,
                    cap: 100
                }
            ),
            "{e}"
        );
        assert_eq!(b.used(), 60);
        b.reserve("W", 40).unwrap();
        assert_eq!(b.used(), 100);
        b.reserve("nothing", 0).unwrap();
        assert!(b.reserve("one more byte", 1).is_err());
        let mut huge = VramBudget::new(u64::MAX);
        huge.reserve("a", u64::MAX - 1).unwrap();
        assert!(
            huge.reserve("b", 2).is_err(),
            "overflow must refuse, not wrap"
        );
        assert_eq!(huge.cap(), u64::MAX);
    }

    #[test]
    fn exactly_vram_needed_fits_and_one_byte_less_does_not() {
        for cublas in [false, true] {
            let n = 300;
            let plan = [
                ("A", matrix_bytes(n)),
                ("B", matrix_bytes(n)),
                ("C", 4 * matrix_bytes(n)),
                ("state", (STATE_WORDS * 4) as u64),
                ("workspace", if cublas { CUBLAS_WORKSPACE_BYTES } else { 0 }),
            ];
            let mut ok = VramBudget::new(vram_planned(n, cublas));
            for (what, bytes) in plan {
                ok.reserve(what, bytes).unwrap();
            }
            let mut short = VramBudget::new(vram_planned(n, cublas) - 1);
            let refused = plan.iter().any(|(w, b)| short.reserve(w, *b).is_err());
            assert!(refused, "cublas={cublas}");
        }
    }
}

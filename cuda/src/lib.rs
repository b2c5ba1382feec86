//! `aitbc-cuda`: the torch_bench chain on an NVIDIA GPU.
//!
//! The chain is the exact int8 one that `aitbc_protocol::workload::torch_bench` specifies
//! (counter-based int8 inputs, `C = A · B` exact in int32, `A' = requant(C)`, output `A_iters`
//! committed to by SHA-256 and a Merkle root over its rows). Here it runs on the device: the
//! inputs are generated there with the same recipe, the products are cuBLAS `cublasGemmEx`
//! (int8 in, int32 out, `CUBLAS_COMPUTE_32I`) when `libcublas` loads and `n % 4 == 0`, and the
//! crate's own dp4a kernel otherwise, the requantization is a kernel of its own, and the result
//! streams back in chunks of whole rows into the protocol's `Committer` (the copy of one chunk
//! overlapping the hashing of the previous one). Every step is exact, so the bytes are the
//! CPU's, bit for bit.
//!
//! The GPU worker (`aitbc-miner worker --kind gpu`) uses it: at its confinement step 6 it
//! checks [`driver_present`], opens [`Gpu`] and warms it up, and its `Backend::Gpu` runs
//! [`Gpu::run_chain`] with the job's `vram_mb` as the cap and reports its commitment.
//!
//! # Modules
//!
//! - [`ptx`]: the PTX compiled from `kernels/torch_bench.cu` (NVRTC 12.0, PTX ISA 8.0), embedded
//!   in the binary so a host needs the NVIDIA driver only, and the names of its kernels.
//! - [`vram`]: what a job will allocate ([`vram_needed`]) and the one allocator that refuses to
//!   go past a job's cap.
//! - [`gpu`]: [`Gpu`], the context, streams and module opened once during worker start-up, and
//!   [`Gpu::run_chain`].
//! - [`error`]: [`CudaError`], the crate's one error type.
//!
//! # Invariants
//!
//! - Nothing here initialises CUDA, or touches any cudarc function that would load `libcuda`,
//!   unless [`driver_present`] said the library loads: cudarc panics when it is missing.
//! - No public function panics on a missing or broken driver: failures are [`CudaError`] values
//!   (a panic inside cudarc is caught and returned as [`CudaError::Panicked`]).
//! - Of this workspace's crates it depends on `aitbc-protocol` only: for the one VRAM formula
//!   (`TorchBenchParams::vram_bytes`), the commitment (`Committer`) and the plain reference the
//!   warm-up checks every GEMM path against.

pub mod error;
pub mod gpu;
pub mod ptx;
pub mod vram;

pub use error::CudaError;
pub use gpu::{cublas_fits, ChainStats, GemmPath, Gpu, MAX_N};
pub use vram::{vram_needed, VramBudget, CUBLAS_WORKSPACE_BYTES};

use std::sync::OnceLock;

/// Whether the CUDA driver library (`libcuda.so`) can be loaded on this host. Cheap after the
/// first call (the answer is kept), never panics, and initialises nothing: it only asks the
/// dynamic loader. `false` means every other entry point of this crate will return
/// [`CudaError::NoDriver`] without calling into cudarc.
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries `dlopen` on the candidate names and closes what
        // it opened; it calls no CUDA function.
        std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() })
            .unwrap_or(false)
    })
}

/// Whether cuBLAS (`libcublas.so.12` or an older name cudarc accepts) can be loaded. Like
/// [`driver_present`]: cached, never panics, initialises nothing. With `false` the chain uses
/// the crate's own int8 kernel.
pub fn cublas_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries `dlopen` on the candidate names and closes what
        // it opened; it calls no cuBLAS function.
        std::panic::catch_unwind(|| unsafe { cudarc::cublas::sys::is_culib_present() })
            .unwrap_or(false)
    })
}

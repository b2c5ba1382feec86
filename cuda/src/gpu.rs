//! [`Gpu`]: one CUDA device opened for torch_bench, and [`Gpu::run_chain`], the exact int8
//! chain of `aitbc_protocol::workload::torch_bench` on it.
//!
//! [`Gpu::open`] does everything that needs more than device memory and launches: it creates
//! the context and two streams (compute, copy), loads the embedded PTX (the driver JITs it for
//! this GPU here), finds the kernels, loads cuBLAS when the library is there, and allocates the
//! two pinned staging buffers. The worker calls it, then [`Gpu::warm_up`], during start-up,
//! before its sandbox locks down; after that a job needs only [`Gpu::run_chain`] (device
//! allocations, launches, copies). Which system calls those make under the sandbox has not been
//! measured: that needs a GPU host.
//!
//! [`Gpu::run_chain`] allocates through a [`VramBudget`] (refusing a job whose
//! [`crate::vram::vram_planned`] is over its cap before allocating anything): `A` and `B` as
//! int8 (`B` stored transposed, see `kernels/torch_bench.cu`), the int32 product `C`, four state
//! words and, on the cuBLAS path, cuBLAS's workspace. It generates `A_0` and `B` on the device,
//! runs `iters` times `C = A · B` (cuBLAS `cublasGemmEx`, int8 in, int32 out, `CUBLAS_COMPUTE_32I`,
//! when cuBLAS loads and `n % 4 == 0`; the own dp4a kernel otherwise) followed by the
//! requantization `C → A`, and then streams `A_iters` back in chunks of whole rows: chunk `k + 1`
//! is copied device-to-host on the copy stream into one pinned buffer while chunk `k` is fed to
//! the protocol's `Committer` (SHA-256 and the rows' Merkle leaves) and to the caller's sink.
//! Every step is exact integer arithmetic, so the bytes are the protocol's `reference_output`.
//!
//! This module must never: call into cudarc before [`crate::driver_present`] says the driver
//! loads; let a cudarc panic escape (each entry point catches it into [`CudaError::Panicked`]);
//! allocate device memory other than through the job's [`VramBudget`]; leave cuBLAS holding a
//! pointer to a workspace that has been freed; or report a commitment over other bytes than
//! the ones it streamed.

use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aitbc_protocol::merkle::Digest;
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_protocol::workload::torch_bench::{
    commit, reference_output, Commitment, Committer, MATRIX_A0, MATRIX_B,
};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasMath_t, cublasOperation_t, cublasPointerMode_t,
    cudaDataType,
};
use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr,
    DevicePtrMut, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::ptx::{self, FILL_INPUT, IGEMM_TN, REQUANT};
use crate::vram::{vram_planned, VramBudget, CUBLAS_WORKSPACE_BYTES, STATE_WORDS};
use crate::{cublas_present, driver_present, CudaError};

/// Largest `n` this crate accepts. The protocol's own limit is lower (16384); this bound keeps
/// every size and index this crate computes far from overflow (the kernels index with `int`
/// rows and columns), and a staging buffer always holds at least one row.
pub const MAX_N: u32 = 1 << 16;

/// Bytes per staging buffer (1 MiB): the most one device-to-host copy, and one slice handed to
/// the sink, holds. A chunk is [`rows_per_chunk`] whole rows.
pub const STAGING_BYTES: usize = 1 << 20;

/// Threads per block of the element-wise kernels (fill, requantization).
const BLOCK_1D: u32 = 256;
/// Blocks per SM the element-wise kernels are launched with at most (grid-stride loops).
const BLOCKS_PER_SM: u32 = 32;
/// The tile edge and block size of `aitbc_igemm_tn` (see `kernels/torch_bench.cu`).
const IGEMM_TILE: u32 = 128;
const IGEMM_THREADS: u32 = 256;

/// Which int8 GEMM computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// cuBLAS `cublasGemmEx` (`CUDA_R_8I` inputs, `CUDA_R_32I` output, `CUBLAS_COMPUTE_32I`).
    Cublas,
    /// The crate's own dp4a kernel, `aitbc_igemm_tn`.
    OwnKernel,
}

/// Whether cuBLAS's int8 GEMM may take a product of size `n`: its int8 kernels need the
/// leading dimensions (here all `n`) to be multiples of 4. Other sizes use the own kernel,
/// which takes any `n` and gives the same bytes.
pub fn cublas_fits(n: u32) -> bool {
    n.is_multiple_of(4)
}

/// Rows in one staging chunk for matrices of size `n` (at least one: `n <= MAX_N`).
pub fn rows_per_chunk(n: u32) -> usize {
    (STAGING_BYTES / (n.max(1) as usize)).max(1)
}

/// What a finished chain reports besides the bytes handed to the sink.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainStats {
    /// Which GEMM ran the products.
    pub gemm: GemmPath,
    /// The protocol's commitment (`output_sha`, `merkle_root`) over the streamed rows.
    pub commitment: Commitment,
    /// The `n` row leaves `commitment.merkle_root` is over (what a miner keeps to answer an
    /// audit).
    pub leaves: Vec<Digest>,
    /// `n * n`: the bytes handed to the sink (one per int8).
    pub output_len: u64,
    /// `2 n^3 iters` (int8 multiplies and adds).
    pub flops: u64,
    /// Device time of the products and requantizations, from two CUDA events with timing on.
    pub products_ms: f32,
    /// Wall time of the whole call: allocation, inputs, products, copy-back and hashing.
    pub elapsed: Duration,
    /// Device memory the job allocated through its [`VramBudget`], in bytes.
    pub vram_allocated: u64,
}

impl ChainStats {
    /// The products' throughput in tera-operations (int8) per second, from
    /// [`ChainStats::products_ms`].
    pub fn tops(&self) -> f64 {
        if self.products_ms <= 0.0 {
            return 0.0;
        }
        self.flops as f64 / (f64::from(self.products_ms) * 1e-3) / 1e12
    }
}

/// The kernels of the embedded PTX module.
struct Kernels {
    fill: CudaFunction,
    igemm: CudaFunction,
    requant: CudaFunction,
    /// Keeps the module loaded as long as the functions (they hold it too; explicit here).
    _module: Arc<CudaModule>,
}

/// Two pinned host buffers and the events that say when a copy into each has landed.
struct Staging {
    bufs: [PinnedHostSlice<u8>; 2],
    landed: [CudaEvent; 2],
}

/// An opened CUDA device, ready to run chains. See the module docs.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    kernels: Kernels,
    /// cuBLAS on the compute stream, or why it is not used.
    blas: Result<CudaBlas, String>,
    staging: Mutex<Staging>,
    sms: u32,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("sms", &self.sms)
            .field("cublas", &self.blas.as_ref().map(|_| ()))
            .finish_non_exhaustive()
    }
}

/// Runs `f`, turning a panic inside it into [`CudaError::Panicked`].
fn catching<T>(
    during: &'static str,
    f: impl FnOnce() -> Result<T, CudaError>,
) -> Result<T, CudaError> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|payload| Err(CudaError::panicked(during, payload)))
}

/// The sizes the warm-up checks against the protocol's reference: `n = 8` (every path; cuBLAS
/// needs `n % 4 == 0`) and `n = 7` (the own kernel's byte-wise loads and stores).
const WARM_UP: [(u32, u32, u64); 2] = [(8, 2, 1), (7, 2, 1)];

impl Gpu {
    /// Opens device `ordinal`: context, streams, module, kernels, cuBLAS (when present, and
    /// only if its int8 GEMM gives the protocol's bytes on a tiny chain) and the staging
    /// buffers. Returns [`CudaError::NoDriver`] without touching cudarc when the driver library
    /// is absent, and an error value (never a panic) for every other failure.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        catching("opening the GPU", || Gpu::open_inner(ordinal))
    }

    fn open_inner(ordinal: usize) -> Result<Gpu, CudaError> {
        let ctx = CudaContext::new(ordinal).map_err(CudaError::driver("creating the context"))?;
        let compute = ctx
            .new_stream()
            .map_err(CudaError::driver("creating the compute stream"))?;
        let copy = ctx
            .new_stream()
            .map_err(CudaError::driver("creating the copy stream"))?;
        let module = ctx
            .load_module(Ptx::from_src(ptx::TORCH_BENCH_PTX))
            .map_err(CudaError::driver(
                "loading the PTX module (PTX ISA 8.0 needs driver 525 or newer)",
            ))?;
        let function = |name| {
            module
                .load_function(name)
                .map_err(CudaError::driver("finding a kernel in the PTX module"))
        };
        let kernels = Kernels {
            fill: function(FILL_INPUT)?,
            igemm: function(IGEMM_TN)?,
            requant: function(REQUANT)?,
            _module: module.clone(),
        };
        let sms = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(CudaError::driver("reading the SM count"))?;
        let name = ctx
            .name()
            .map_err(CudaError::driver("reading the device name"))?;
        let staging = Staging {
            bufs: [pinned(&ctx)?, pinned(&ctx)?],
            landed: [staging_event(&ctx)?, staging_event(&ctx)?],
        };
        let blas = open_cublas(&compute);
        let mut gpu = Gpu {
            ctx,
            compute,
            copy,
            kernels,
            blas,
            staging: Mutex::new(staging),
            sms: sms.max(1) as u32,
            name,
        };
        // cuBLAS is used only once its int8 GEMM has given the protocol's bytes here: a
        // library or GPU whose int8 path is unsupported or wrong leaves the own kernel to run
        // the products (the reason is kept for `cublas_unavailable`).
        if gpu.blas.is_ok() {
            let (n, iters, seed) = WARM_UP[0];
            if let Err(e) = gpu.checked_chain(GemmPath::Cublas, n, iters, seed) {
                gpu.blas = Err(format!(
                    "cuBLAS's int8 GEMM (cublasGemmEx, CUDA_R_8I -> CUDA_R_32I) failed its check \
                     at n = {n}: {e}; the own kernel runs the products"
                ));
            }
        }
        Ok(gpu)
    }

    /// Runs tiny chains on every GEMM path this handle has and checks their commitments
    /// against the protocol's plain reference, so that whatever cuBLAS and the driver do
    /// lazily on first use happens now and a wrong path is caught before any job. The worker
    /// calls it after [`Gpu::open`] and before its sandbox locks down, as the CPU path calls
    /// its own `warm_up`. Allocates at most [`crate::vram_needed`]`(8)` bytes per chain,
    /// through a budget, and frees them.
    pub fn warm_up(&self) -> Result<(), CudaError> {
        for (n, iters, seed) in WARM_UP {
            self.checked_chain(GemmPath::OwnKernel, n, iters, seed)?;
            if self.blas.is_ok() && cublas_fits(n) {
                self.checked_chain(GemmPath::Cublas, n, iters, seed)?;
            }
        }
        Ok(())
    }

    /// One tiny chain on `path`, compared with the protocol's reference.
    fn checked_chain(
        &self,
        path: GemmPath,
        n: u32,
        iters: u32,
        seed: u64,
    ) -> Result<(), CudaError> {
        let stats =
            self.run_chain_with(path, n, iters, seed, crate::vram_needed(n), &mut |_| {})?;
        let params = TorchBenchParams { n, iters, seed };
        let want = commit(&reference_output(&params), n as usize);
        if want != Some(stats.commitment) {
            return Err(CudaError::Inconsistent {
                what: "a warm-up chain's output_sha against the protocol's reference",
                got: hex(&stats.commitment.output_sha),
                expected: want.map_or_else(|| "(none)".into(), |c| hex(&c.output_sha)),
            });
        }
        Ok(())
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device ordinal this handle was opened on.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The GEMM this handle uses where cuBLAS's int8 GEMM fits (`n % 4 == 0`): cuBLAS when it
    /// loaded and passed its check at [`Gpu::open`], the own kernel otherwise.
    pub fn default_gemm(&self) -> GemmPath {
        if self.blas.is_ok() {
            GemmPath::Cublas
        } else {
            GemmPath::OwnKernel
        }
    }

    /// The GEMM [`Gpu::run_chain`] uses for size `n`: [`Gpu::default_gemm`] when
    /// [`cublas_fits`]`(n)`, the own kernel otherwise.
    pub fn gemm_for(&self, n: u32) -> GemmPath {
        if cublas_fits(n) {
            self.default_gemm()
        } else {
            GemmPath::OwnKernel
        }
    }

    /// Why cuBLAS is not used, when it is not (for the worker to say on stderr).
    pub fn cublas_unavailable(&self) -> Option<&str> {
        self.blas.as_ref().err().map(String::as_str)
    }

    /// Runs the torch_bench chain `(n, iters, seed)` with [`Gpu::gemm_for`]`(n)`, hands
    /// `A_iters` (each int8 as its byte) to `sink` in order, in chunks of whole rows of at most
    /// [`STAGING_BYTES`], and returns the protocol's commitment over them. Device memory is
    /// capped at `vram_cap_bytes`: a job that would need more is refused before anything is
    /// allocated.
    pub fn run_chain(
        &self,
        n: u32,
        iters: u32,
        seed: u64,
        vram_cap_bytes: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<ChainStats, CudaError> {
        self.run_chain_with(self.gemm_for(n), n, iters, seed, vram_cap_bytes, sink)
    }

    /// [`Gpu::run_chain`] with an explicit GEMM (tests and benchmarks compare the two). Asking
    /// for [`GemmPath::Cublas`] when it is not loaded, or for an `n` it does not fit, is
    /// [`CudaError::CublasUnavailable`].
    pub fn run_chain_with(
        &self,
        gemm: GemmPath,
        n: u32,
        iters: u32,
        seed: u64,
        vram_cap_bytes: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<ChainStats, CudaError> {
        check_params(n, iters)?;
        let blas = match gemm {
            GemmPath::Cublas => {
                let b = self
                    .blas
                    .as_ref()
                    .map_err(|reason| CudaError::CublasUnavailable {
                        reason: reason.clone(),
                    })?;
                if !cublas_fits(n) {
                    return Err(CudaError::CublasUnavailable {
                        reason: format!(
                            "n = {n} is not a multiple of 4, which cuBLAS's int8 GEMM needs"
                        ),
                    });
                }
                Some(b)
            }
            GemmPath::OwnKernel => None,
        };
        let planned = vram_planned(n, blas.is_some());
        if planned > vram_cap_bytes {
            return Err(CudaError::VramCap {
                what: "the torch_bench job",
                bytes: planned,
                used: 0,
                cap: vram_cap_bytes,
            });
        }
        catching("running the chain", || {
            self.chain(blas, n, iters, seed, vram_cap_bytes, sink)
        })
    }

    /// Generates input matrix `matrix` (0: `A_0`, 1: `B`) of size `n` for `seed` on the device
    /// (transposed when `transposed`, as the chain keeps `B`) and copies it back, each int8 as
    /// its byte. For tests that check the device generator against the protocol's; allocates
    /// through a budget of `n * n` bytes.
    pub fn generate(
        &self,
        n: u32,
        seed: u64,
        matrix: u32,
        transposed: bool,
    ) -> Result<Vec<u8>, CudaError> {
        check_params(n, 1)?;
        catching("generating inputs", || {
            let len = (n as usize) * (n as usize);
            let mut budget = VramBudget::new(len as u64);
            // SAFETY: aitbc_fill_input writes every one of the `len` bytes before the copy.
            let mut out = unsafe { budget.alloc::<u8>(&self.compute, len, "the input buffer") }?;
            self.fill(&mut out, n, seed, matrix, transposed)?;
            self.compute
                .clone_dtoh(&out)
                .map_err(CudaError::driver("copying the inputs back"))
        })
    }

    fn chain(
        &self,
        blas: Option<&CudaBlas>,
        n: u32,
        iters: u32,
        seed: u64,
        cap: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<ChainStats, CudaError> {
        let start = Instant::now();
        // cuBLAS's raw calls below use the calling thread's current context.
        self.ctx
            .bind_to_thread()
            .map_err(CudaError::driver("making the context current"))?;
        let s = &self.compute;
        let len = (n as usize) * (n as usize);
        let len64 = len as u64;
        let mut budget = VramBudget::new(cap);
        // SAFETY: A is written in full by aitbc_fill_input before anything reads it.
        let mut a = unsafe { budget.alloc::<u8>(s, len, "A") }?;
        // SAFETY: B is written in full by aitbc_fill_input before anything reads it.
        let mut bt = unsafe { budget.alloc::<u8>(s, len, "B") }?;
        // SAFETY: every product writes every element of C before the requantization reads it.
        let mut c = unsafe { budget.alloc::<i32>(s, len, "the int32 product C") }?;
        let mut state = budget.alloc_zeros::<u32>(s, STATE_WORDS, "the chain state")?;
        let mut workspace = match blas {
            // SAFETY: cuBLAS's scratch space; nothing reads it before cuBLAS writes it.
            Some(_) => Some(unsafe {
                budget.alloc::<u8>(s, CUBLAS_WORKSPACE_BYTES as usize, "the cuBLAS workspace")
            }?),
            None => None,
        };
        // Declared after `workspace`, so dropped (workspace detached) before it is freed.
        let _workspace_guard = match (blas, workspace.as_mut()) {
            (Some(b), Some(ws)) => Some(WorkspaceGuard::attach(b, s, ws)?),
            _ => None,
        };

        self.fill(&mut a, n, seed, MATRIX_A0, false)?;
        self.fill(&mut bt, n, seed, MATRIX_B, true)?;

        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let products_start = s
            .record_event(timing)
            .map_err(CudaError::driver("recording the start event"))?;
        let grid = grid_1d(len64, self.sms);
        let n_i32 = n as i32; // n <= MAX_N = 2^16
        for _ in 0..iters {
            match blas {
                Some(b) => cublas_igemm(b, s, &a, &bt, &mut c, n_i32)?,
                None => {
                    // SAFETY: aitbc_igemm_tn(const u8*, const u8*, int*, int) reads n*n bytes
                    // of `a` and `bt` and writes n*n int32 of `c` (all three hold exactly that),
                    // launched with the geometry it documents.
                    unsafe {
                        s.launch_builder(&self.kernels.igemm)
                            .arg(&a)
                            .arg(&bt)
                            .arg(&mut c)
                            .arg(&n_i32)
                            .launch(igemm_config(n))
                    }
                    .map_err(CudaError::driver("launching aitbc_igemm_tn"))?;
                }
            }
            // SAFETY: aitbc_requant(const int*, u8*, u64, u32*): reads `len` int32 of `c`,
            // writes `len` bytes of `a` and state[0] (of STATE_WORDS).
            unsafe {
                s.launch_builder(&self.kernels.requant)
                    .arg(&c)
                    .arg(&mut a)
                    .arg(&len64)
                    .arg(&mut state)
                    .launch(elementwise(grid))
            }
            .map_err(CudaError::driver("launching aitbc_requant"))?;
        }
        let products_end = s
            .record_event(timing)
            .map_err(CudaError::driver("recording the end event"))?;

        let words = s
            .clone_dtoh(&state)
            .map_err(CudaError::driver("reading the chain state"))?;
        let steps = words.first().copied().unwrap_or(0);
        if steps != iters || words.iter().skip(1).any(|&w| w != 0) {
            return Err(CudaError::Inconsistent {
                what: "the device's count of requantizations (and reserved words)",
                got: format!("{words:?}"),
                expected: format!("[{iters}, 0, 0, 0]"),
            });
        }
        let products_ms = products_start
            .elapsed_ms(&products_end)
            .map_err(CudaError::driver("timing the products"))?;

        self.copy
            .wait(&products_end)
            .map_err(CudaError::driver("ordering the copy after the products"))?;
        let (commitment, leaves) = self.stream_out(&a, n, sink)?;

        let n64 = u64::from(n);
        Ok(ChainStats {
            gemm: if blas.is_some() {
                GemmPath::Cublas
            } else {
                GemmPath::OwnKernel
            },
            commitment,
            leaves,
            output_len: len64,
            flops: 2 * n64 * n64 * n64 * u64::from(iters),
            products_ms,
            elapsed: start.elapsed(),
            vram_allocated: budget.used(),
        })
    }

    /// Launches aitbc_fill_input over all of `out` (`n * n` bytes).
    fn fill(
        &self,
        out: &mut CudaSlice<u8>,
        n: u32,
        seed: u64,
        matrix: u32,
        transposed: bool,
    ) -> Result<(), CudaError> {
        let len = u64::from(n) * u64::from(n);
        if out.len() as u64 != len {
            return Err(CudaError::Inconsistent {
                what: "an input buffer's length",
                got: out.len().to_string(),
                expected: len.to_string(),
            });
        }
        let transposed = i32::from(transposed);
        // SAFETY: aitbc_fill_input(u8*, u32, u64, u32, int) writes out[0 .. n*n], and `out`
        // holds exactly n*n bytes (checked above).
        unsafe {
            self.compute
                .launch_builder(&self.kernels.fill)
                .arg(out)
                .arg(&n)
                .arg(&seed)
                .arg(&matrix)
                .arg(&transposed)
                .launch(elementwise(grid_1d(len, self.sms)))
        }
        .map_err(CudaError::driver("launching aitbc_fill_input"))?;
        Ok(())
    }

    /// Copies `a` (`n` rows of `n` bytes) to the host through the two staging buffers, feeds
    /// each chunk of whole rows to the protocol's `Committer` and to `sink`, and returns the
    /// commitment with its row leaves: chunk `c + 1` (and `c + 2` once buffer `c % 2` is free) is in flight on the
    /// copy stream while chunk `c` is hashed.
    fn stream_out(
        &self,
        a: &CudaSlice<u8>,
        n: u32,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(Commitment, Vec<Digest>), CudaError> {
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let row = n as usize;
        let len = row * row;
        let chunk = rows_per_chunk(n) * row;
        let chunks = len.div_ceil(chunk);
        let range = |c: usize| c * chunk..((c + 1) * chunk).min(len);
        let issue = |staging: &mut Staging, c: usize| -> Result<(), CudaError> {
            let b = c % 2;
            self.copy
                .memcpy_dtoh(&a.slice(range(c)), &mut staging.bufs[b])
                .map_err(CudaError::driver("copying the output to the host"))?;
            staging.landed[b]
                .record(&self.copy)
                .map_err(CudaError::driver("recording a copy event"))
        };
        let mut committer = Committer::new(row);
        for c in 0..chunks.min(2) {
            issue(&mut staging, c)?;
        }
        for c in 0..chunks {
            let b = c % 2;
            staging.landed[b]
                .synchronize()
                .map_err(CudaError::driver("waiting for a copy"))?;
            let data = staging.bufs[b]
                .as_slice()
                .map_err(CudaError::driver("reading a staging buffer"))?;
            let rows = &data[..range(c).len()];
            committer
                .push_row_bytes(rows)
                .ok_or_else(|| CudaError::Inconsistent {
                    what: "the bytes of a streamed chunk (whole rows of n)",
                    got: rows.len().to_string(),
                    expected: format!("a multiple of {row}"),
                })?;
            sink(rows);
            if c + 2 < chunks {
                issue(&mut staging, c + 2)?;
            }
        }
        committer
            .finish_with_leaves()
            .ok_or(CudaError::Inconsistent {
                what: "the rows streamed",
                got: String::from("fewer"),
                expected: n.to_string(),
            })
    }
}

/// `C = A · B` by cuBLAS, exact: `cublasGemmEx` with `CUDA_R_8I` inputs, a `CUDA_R_32I` output
/// and `CUBLAS_COMPUTE_32I`, `alpha = 1`, `beta = 0` (host pointers).
///
/// cuBLAS is column-major. Our row-major `C` is, to cuBLAS, the column-major matrix `Cᵀ`, and
/// `Cᵀ = Bᵀ · Aᵀ`. The buffer `bt` (row-major `Bᵀ`, i.e. row `j` holds column `j` of `B`) is,
/// column-major, `B` itself, so cuBLAS's first operand is `bt` with `CUBLAS_OP_T` (giving `Bᵀ`),
/// and the buffer `a` (row-major `A`) is, column-major, `Aᵀ`: the second operand with
/// `CUBLAS_OP_N`. This "TN" form is the one cuBLAS's int8 tensor-core kernels take natively.
/// All dimensions and leading dimensions are `n`, a multiple of 4 ([`cublas_fits`]).
fn cublas_igemm(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
    a: &CudaSlice<u8>,
    bt: &CudaSlice<u8>,
    c: &mut CudaSlice<i32>,
    n: i32,
) -> Result<(), CudaError> {
    let alpha: i32 = 1;
    let beta: i32 = 0;
    let (bt_ptr, _bt_record) = bt.device_ptr(stream);
    let (a_ptr, _a_record) = a.device_ptr(stream);
    let (c_ptr, _c_record) = c.device_ptr_mut(stream);
    // SAFETY: `bt` and `a` hold n*n int8 and `c` n*n int32, all live device allocations of
    // this context; with m = n = k = lda = ldb = ldc = n every access stays inside them; `c`
    // is distinct from both inputs; alpha and beta are int32 on the host (the handle's pointer
    // mode is HOST, set in `open_cublas`) and outlive the call, which is asynchronous on the
    // handle's stream, `stream`, the one the buffers' records are for.
    unsafe {
        cudarc::cublas::sys::cublasGemmEx(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            n,
            n,
            n,
            (&alpha as *const i32).cast::<c_void>(),
            bt_ptr as *const c_void,
            cudaDataType::CUDA_R_8I,
            n,
            a_ptr as *const c_void,
            cudaDataType::CUDA_R_8I,
            n,
            (&beta as *const i32).cast::<c_void>(),
            c_ptr as *mut c_void,
            cudaDataType::CUDA_R_32I,
            n,
            cublasComputeType_t::CUBLAS_COMPUTE_32I,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .result()
    .map_err(CudaError::cublas(
        "running cublasGemmEx (int8, CUBLAS_COMPUTE_32I)",
    ))
}

/// Hands cuBLAS a workspace from the job's budget for as long as it lives, then takes it back
/// (so cuBLAS never holds a pointer to freed memory).
struct WorkspaceGuard<'a> {
    blas: &'a CudaBlas,
    stream: &'a CudaStream,
}

impl<'a> WorkspaceGuard<'a> {
    fn attach(
        blas: &'a CudaBlas,
        stream: &'a Arc<CudaStream>,
        workspace: &mut CudaSlice<u8>,
    ) -> Result<WorkspaceGuard<'a>, CudaError> {
        let bytes = workspace.len();
        let (ptr, _record) = workspace.device_ptr_mut(stream);
        // SAFETY: `ptr` is a live device allocation of `bytes` bytes on the handle's stream; the
        // guard detaches it before the allocation is dropped (declaration order in `chain`).
        unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*blas.handle(), ptr as *mut c_void, bytes)
        }
        .result()
        .map_err(CudaError::cublas("setting the cuBLAS workspace"))?;
        Ok(WorkspaceGuard { blas, stream })
    }
}

impl Drop for WorkspaceGuard<'_> {
    fn drop(&mut self) {
        // Let queued cuBLAS work finish with the workspace, then detach it. Errors here can only
        // be reported by the next call, which will meet the same broken context.
        let _ = self.stream.synchronize();
        // SAFETY: a null workspace of 0 bytes is cuBLAS's documented "no workspace".
        let _ = unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(*self.blas.handle(), std::ptr::null_mut(), 0)
        };
    }
}

/// cuBLAS on `stream` in default math mode with host scalars, or why not. (Integer products
/// are exact in every math mode; tensor cores are welcome.)
fn open_cublas(stream: &Arc<CudaStream>) -> Result<CudaBlas, String> {
    if !cublas_present() {
        return Err(
            "libcublas.so.12 (or an older name cudarc accepts) could not be loaded; \
                    the own int8 kernel runs the products"
                .into(),
        );
    }
    let opened = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<CudaBlas, String> {
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| format!("cublasCreate failed: {e}"))?;
        // SAFETY: a live handle and a valid enum value.
        unsafe {
            cudarc::cublas::sys::cublasSetMathMode(
                *blas.handle(),
                cublasMath_t::CUBLAS_DEFAULT_MATH,
            )
        }
        .result()
        .map_err(|e| format!("cublasSetMathMode failed: {e}"))?;
        // SAFETY: a live handle and a valid enum value; `cublas_igemm` passes host scalars.
        unsafe {
            cudarc::cublas::sys::cublasSetPointerMode_v2(
                *blas.handle(),
                cublasPointerMode_t::CUBLAS_POINTER_MODE_HOST,
            )
        }
        .result()
        .map_err(|e| format!("cublasSetPointerMode failed: {e}"))?;
        Ok(blas)
    }));
    opened.unwrap_or_else(|payload| Err(CudaError::panicked("loading cuBLAS", payload).to_string()))
}

/// A pinned, host-cached staging buffer (not write-combined: the host reads it).
fn pinned(ctx: &Arc<CudaContext>) -> Result<PinnedHostSlice<u8>, CudaError> {
    // SAFETY: the buffer is only read after a copy into it has landed (see `stream_out`).
    unsafe { ctx.alloc_pinned_with_flags::<u8>(STAGING_BYTES, 0) }
        .map_err(CudaError::driver("allocating a pinned staging buffer"))
}

fn staging_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent, CudaError> {
    ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
        .map_err(CudaError::driver("creating a copy event"))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain parameters this crate can run (the worker checks the protocol's tighter limits).
pub fn check_params(n: u32, iters: u32) -> Result<(), CudaError> {
    if !(1..=MAX_N).contains(&n) {
        return Err(CudaError::BadParams {
            field: "params.n",
            value: n.to_string(),
            reason: format!("expected a whole number from 1 to {MAX_N}"),
        });
    }
    if iters == 0 {
        return Err(CudaError::BadParams {
            field: "params.iters",
            value: "0".into(),
            reason: "at least one product is needed".into(),
        });
    }
    Ok(())
}

/// Blocks for an element-wise kernel over `len` elements: enough to cover them, at most
/// `BLOCKS_PER_SM` per SM (the kernels loop), at least one.
pub fn grid_1d(len: u64, sms: u32) -> u32 {
    let cover = len.div_ceil(u64::from(BLOCK_1D));
    let most = u64::from(sms.max(1)) * u64::from(BLOCKS_PER_SM);
    cover.clamp(1, most) as u32
}

fn elementwise(grid: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (BLOCK_1D, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch geometry `aitbc_igemm_tn` documents: one 256-thread block per 128 x 128 tile.
pub fn igemm_config(n: u32) -> LaunchConfig {
    let tiles = n.div_ceil(IGEMM_TILE);
    LaunchConfig {
        grid_dim: (tiles, tiles, 1),
        block_dim: (IGEMM_THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_handle_can_move_to_and_be_shared_with_another_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Gpu>();
    }

    #[test]
    fn params_are_checked_before_anything_else() {
        assert!(check_params(1, 1).is_ok());
        assert!(check_params(MAX_N, 100_000).is_ok());
        let e = check_params(0, 1).unwrap_err().to_string();
        assert!(e.starts_with("params.n = 0: "), "{e}");
        assert!(check_params(MAX_N + 1, 1).is_err());
        let e = check_params(8, 0).unwrap_err().to_string();
        assert!(e.starts_with("params.iters = 0: "), "{e}");
    }

    #[test]
    fn cublas_takes_multiples_of_4_and_chunks_are_whole_rows() {
        assert!(cublas_fits(4) && cublas_fits(1024) && cublas_fits(16384));
        assert!(!cublas_fits(1) && !cublas_fits(7) && !cublas_fits(1026));
        assert_eq!(rows_per_chunk(1), STAGING_BYTES);
        assert_eq!(rows_per_chunk(1024), 1024);
        assert_eq!(rows_per_chunk(1000), 1048);
        assert_eq!(rows_per_chunk(MAX_N), 16);
        for n in [1u32, 7, 33, 1000, 1024, 16384, MAX_N] {
            let chunk = rows_per_chunk(n) * n as usize;
            assert!(chunk <= STAGING_BYTES && chunk >= n as usize, "n={n}");
        }
        assert_eq!(rows_per_chunk(0), STAGING_BYTES, "no division by zero");
    }

    #[test]
    fn launch_geometry_covers_every_element_and_tile() {
        assert_eq!(grid_1d(0, 132), 1);
        assert_eq!(grid_1d(1, 132), 1);
        assert_eq!(grid_1d(256, 132), 1);
        assert_eq!(grid_1d(257, 132), 2);
        assert_eq!(grid_1d(1 << 30, 132), 132 * 32);
        assert_eq!(grid_1d(1 << 20, 0), 32);
        let c = igemm_config(1);
        assert_eq!((c.grid_dim, c.block_dim), ((1, 1, 1), (256, 1, 1)));
        assert_eq!(igemm_config(128).grid_dim, (1, 1, 1));
        assert_eq!(igemm_config(129).grid_dim, (2, 2, 1));
        assert_eq!(igemm_config(8192).grid_dim, (64, 64, 1));
        assert_eq!(igemm_config(MAX_N).grid_dim, (512, 512, 1));
    }

    #[test]
    fn the_warm_up_covers_both_load_paths_within_a_tiny_budget() {
        assert!(WARM_UP.iter().any(|&(n, ..)| cublas_fits(n)));
        assert!(WARM_UP.iter().any(|&(n, ..)| !cublas_fits(n)));
        assert!(WARM_UP
            .iter()
            .all(|&(n, ..)| crate::vram_needed(n) < 33 << 20));
    }

    #[test]
    fn stats_report_tops_from_device_time() {
        let s = ChainStats {
            gemm: GemmPath::OwnKernel,
            commitment: Commitment {
                output_sha: [0; 32],
                merkle_root: [0; 32],
            },
            leaves: Vec::new(),
            output_len: 1,
            flops: 2_000_000_000_000,
            products_ms: 100.0,
            elapsed: Duration::from_millis(120),
            vram_allocated: 0,
        };
        assert!((s.tops() - 20.0).abs() < 1e-9);
        assert_eq!(
            ChainStats {
                products_ms: 0.0,
                ..s
            }
            .tops(),
            0.0
        );
        assert_eq!(hex(&[0, 0xab, 7]), "00ab07");
    }
}

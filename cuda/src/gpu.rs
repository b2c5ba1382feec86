//! [`Gpu`]: one CUDA device opened for torch_bench, and [`Gpu::run_chain`], the chain on it.
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
//! [`crate::vram::vram_planned`] is over its cap before allocating anything), generates `X_0`
//! and `W` on the device, runs `iters` products each followed by the rescale rule, and then
//! streams `X_iters` to the caller's sink: chunk `k + 1` is copied device-to-host on the copy
//! stream into one pinned buffer while the caller hashes chunk `k` from the other.
//!
//! This module must never: call into cudarc before [`crate::driver_present`] says the driver
//! loads; let a cudarc panic escape (each entry point catches it into [`CudaError::Panicked`]);
//! allocate device memory other than through the job's [`VramBudget`]; or leave cuBLAS holding
//! a pointer to a workspace that has been freed.

use std::borrow::Cow;
use std::ffi::c_void;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtrMut,
    LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::ptx::{self, FILL_INPUT, MAX_ABS_BITS, RESCALE, SGEMM_NN};
use crate::vram::{vram_planned, VramBudget, CUBLAS_WORKSPACE_BYTES, STATE_WORDS};
use crate::{cublas_present, driver_present, CudaError};

/// Largest `n` this crate accepts. The protocol's own limit is lower (16384); this bound only
/// keeps every size and index this crate computes far from overflow.
pub const MAX_N: u32 = 1 << 16;

/// `f32` elements per staging buffer (1 MiB): the unit of the device-to-host copy and of the
/// slices handed to the sink.
pub const STAGING_ELEMS: usize = 1 << 18;

/// Threads per block of the element-wise kernels (fill, max-reduction, rescale).
const BLOCK_1D: u32 = 256;
/// Blocks per SM the element-wise kernels are launched with at most (grid-stride loops).
const BLOCKS_PER_SM: u32 = 32;
/// The tile edge and block size of `aitbc_sgemm_nn` (see `kernels/torch_bench.cu`).
const SGEMM_TILE: u32 = 128;
const SGEMM_THREADS: u32 = 256;

/// Which SGEMM computes the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// cuBLAS `cublasSgemm` (default math mode: plain FP32, no TF32).
    Cublas,
    /// The crate's own tiled kernel, `aitbc_sgemm_nn`.
    OwnKernel,
}

/// What a finished chain reports besides its output bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainStats {
    /// Which SGEMM ran the products.
    pub gemm: GemmPath,
    /// `n * n * 4`: the bytes handed to the sink.
    pub output_len: u64,
    /// `2 n^3 iters`.
    pub flops: u64,
    /// How many products were followed by a rescale.
    pub rescales: u32,
    /// Device time of the products and rescales, from two CUDA events with timing on.
    pub products_ms: f32,
    /// Wall time of the whole call: allocation, inputs, products, copy-back and the sink.
    pub elapsed: Duration,
    /// Device memory the job allocated through its [`VramBudget`], in bytes.
    pub vram_allocated: u64,
}

impl ChainStats {
    /// The products' throughput in TFLOP/s, from [`ChainStats::products_ms`].
    pub fn tflops(&self) -> f64 {
        if self.products_ms <= 0.0 {
            return 0.0;
        }
        self.flops as f64 / (f64::from(self.products_ms) * 1e-3) / 1e12
    }
}

/// The kernels of the embedded PTX module.
struct Kernels {
    fill: CudaFunction,
    sgemm: CudaFunction,
    max_abs: CudaFunction,
    rescale: CudaFunction,
    /// Keeps the module loaded as long as the functions (they hold it too; explicit here).
    _module: Arc<CudaModule>,
}

/// Two pinned host buffers and the events that say when a copy into each has landed.
struct Staging {
    bufs: [PinnedHostSlice<f32>; 2],
    landed: [CudaEvent; 2],
}

/// An opened CUDA device, ready to run chains. See the module docs.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    compute: Arc<CudaStream>,
    copy: Arc<CudaStream>,
    kernels: Kernels,
    /// cuBLAS on the compute stream, or why it is not loaded.
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

impl Gpu {
    /// Opens device `ordinal`: context, streams, module, kernels, cuBLAS (when present) and the
    /// staging buffers. Returns [`CudaError::NoDriver`] without touching cudarc when the driver
    /// library is absent, and an error value (never a panic) for every other failure.
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
            sgemm: function(SGEMM_NN)?,
            max_abs: function(MAX_ABS_BITS)?,
            rescale: function(RESCALE)?,
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
        Ok(Gpu {
            ctx,
            compute,
            copy,
            kernels,
            blas,
            staging: Mutex::new(staging),
            sms: sms.max(1) as u32,
            name,
        })
    }

    /// Runs a tiny chain (n = 8, one product) on every SGEMM path this handle has, so that
    /// whatever cuBLAS and the driver do lazily on first use (loading cuBLAS's kernels, the
    /// first launch of each of ours) happens now. The worker calls it after [`Gpu::open`] and
    /// before its sandbox locks down, as the CPU path calls its own `warm_up`. Allocates at
    /// most [`crate::vram_needed`]`(8)` bytes, through a budget, and frees them.
    pub fn warm_up(&self) -> Result<(), CudaError> {
        let mut paths = vec![GemmPath::OwnKernel];
        if self.blas.is_ok() {
            paths.push(GemmPath::Cublas);
        }
        for path in paths {
            self.run_chain_with(path, 8, 1, 0, crate::vram_needed(8), &mut |_| {})?;
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

    /// The SGEMM [`Gpu::run_chain`] uses: cuBLAS when it loaded, the own kernel otherwise.
    pub fn default_gemm(&self) -> GemmPath {
        if self.blas.is_ok() {
            GemmPath::Cublas
        } else {
            GemmPath::OwnKernel
        }
    }

    /// Why cuBLAS is not used, when it is not (for the worker to say on stderr).
    pub fn cublas_unavailable(&self) -> Option<&str> {
        self.blas.as_ref().err().map(String::as_str)
    }

    /// Runs the torch_bench chain `(n, iters, seed)` with [`Gpu::default_gemm`] and hands
    /// `X_iters`, as little-endian `f32` bytes, to `sink` in order and in chunks of at most
    /// [`STAGING_ELEMS`]` * 4` bytes. Device memory is capped at `vram_cap_bytes`: a job that
    /// would need more is refused before anything is allocated.
    pub fn run_chain(
        &self,
        n: u32,
        iters: u32,
        seed: u64,
        vram_cap_bytes: u64,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<ChainStats, CudaError> {
        self.run_chain_with(self.default_gemm(), n, iters, seed, vram_cap_bytes, sink)
    }

    /// [`Gpu::run_chain`] with an explicit SGEMM (tests and benchmarks compare the two).
    /// Asking for [`GemmPath::Cublas`] when it is not loaded is [`CudaError::CublasUnavailable`].
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
                Some(
                    self.blas
                        .as_ref()
                        .map_err(|reason| CudaError::CublasUnavailable {
                            reason: reason.clone(),
                        })?,
                )
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

    /// Generates `len` elements of input matrix `matrix` (0: `X_0`, 1: `W` before scaling) for
    /// `seed` on the device, each multiplied by `scale`, and copies them back. For tests that
    /// check the device generator bit for bit against the CPU's; allocates through a budget of
    /// `len * 4` bytes.
    pub fn generate(
        &self,
        len: usize,
        seed: u64,
        matrix: u32,
        scale: f32,
    ) -> Result<Vec<f32>, CudaError> {
        catching("generating inputs", || {
            let mut budget = VramBudget::new(len as u64 * 4);
            // SAFETY: aitbc_fill_input writes every one of the `len` elements before the copy.
            let mut out = unsafe { budget.alloc::<f32>(&self.compute, len, "the input buffer") }?;
            self.fill(&mut out, seed, matrix, scale)?;
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
        // SAFETY: X is written in full by aitbc_fill_input before anything reads it.
        let mut x = unsafe { budget.alloc::<f32>(s, len, "X") }?;
        // SAFETY: the first product writes every element of the product buffer before anything
        // reads it.
        let mut next = unsafe { budget.alloc::<f32>(s, len, "the product buffer") }?;
        // SAFETY: W is written in full by aitbc_fill_input before anything reads it.
        let mut w = unsafe { budget.alloc::<f32>(s, len, "W") }?;
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

        self.fill(&mut x, seed, 0, 1.0)?;
        self.fill(&mut w, seed, 1, w_scale(n))?;

        let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let products_start = s
            .record_event(timing)
            .map_err(CudaError::driver("recording the start event"))?;
        let grid = grid_1d(len64, self.sms);
        let n_i32 = n as i32; // n <= MAX_N = 2^16
        for k in 0..iters {
            let slot = (k % 2) as i32;
            match blas {
                Some(b) => {
                    // Row-major next = X · W is column-major nextᵀ = Wᵀ · Xᵀ: cuBLAS's A is
                    // our W and its B our X, both untransposed.
                    let cfg = GemmConfig {
                        transa: cublasOperation_t::CUBLAS_OP_N,
                        transb: cublasOperation_t::CUBLAS_OP_N,
                        m: n_i32,
                        n: n_i32,
                        k: n_i32,
                        alpha: 1.0f32,
                        lda: n_i32,
                        ldb: n_i32,
                        beta: 0.0f32,
                        ldc: n_i32,
                    };
                    // SAFETY: all three buffers hold n*n elements, the leading dimensions are
                    // n, and `next` is distinct from `w` and `x`.
                    unsafe { b.gemm(cfg, &w, &x, &mut next) }
                        .map_err(CudaError::cublas("running cublasSgemm"))?;
                    // SAFETY: aitbc_max_abs_bits(const float*, u64, u32*, int): reads `len`
                    // elements of `next`, writes state[slot].
                    unsafe {
                        s.launch_builder(&self.kernels.max_abs)
                            .arg(&next)
                            .arg(&len64)
                            .arg(&mut state)
                            .arg(&slot)
                            .launch(elementwise(grid))
                    }
                    .map_err(CudaError::driver("launching aitbc_max_abs_bits"))?;
                }
                None => {
                    // SAFETY: aitbc_sgemm_nn(const float*, const float*, float*, int, u32*,
                    // int) on n x n buffers, launched with the geometry it documents.
                    unsafe {
                        s.launch_builder(&self.kernels.sgemm)
                            .arg(&x)
                            .arg(&w)
                            .arg(&mut next)
                            .arg(&n_i32)
                            .arg(&mut state)
                            .arg(&slot)
                            .launch(sgemm_config(n))
                    }
                    .map_err(CudaError::driver("launching aitbc_sgemm_nn"))?;
                }
            }
            // SAFETY: aitbc_rescale(float*, u64, u32*, int): `len` elements of `next`, the
            // state words.
            unsafe {
                s.launch_builder(&self.kernels.rescale)
                    .arg(&mut next)
                    .arg(&len64)
                    .arg(&mut state)
                    .arg(&slot)
                    .launch(elementwise(grid))
            }
            .map_err(CudaError::driver("launching aitbc_rescale"))?;
            std::mem::swap(&mut x, &mut next);
        }
        let products_end = s
            .record_event(timing)
            .map_err(CudaError::driver("recording the end event"))?;

        let words = s
            .clone_dtoh(&state)
            .map_err(CudaError::driver("reading the chain state"))?;
        if words[3] != 0 {
            return Err(CudaError::NonFinite { bits: words[3] });
        }
        let products_ms = products_start
            .elapsed_ms(&products_end)
            .map_err(CudaError::driver("timing the products"))?;

        self.copy
            .wait(&products_end)
            .map_err(CudaError::driver("ordering the copy after the products"))?;
        self.stream_out(&x, len, sink)?;

        let n64 = u64::from(n);
        Ok(ChainStats {
            gemm: if blas.is_some() {
                GemmPath::Cublas
            } else {
                GemmPath::OwnKernel
            },
            output_len: len64 * 4,
            flops: 2 * n64 * n64 * n64 * u64::from(iters),
            rescales: words[2],
            products_ms,
            elapsed: start.elapsed(),
            vram_allocated: budget.used(),
        })
    }

    /// Launches aitbc_fill_input over all of `out`.
    fn fill(
        &self,
        out: &mut CudaSlice<f32>,
        seed: u64,
        matrix: u32,
        scale: f32,
    ) -> Result<(), CudaError> {
        let len = out.len() as u64;
        if len == 0 {
            return Ok(());
        }
        // SAFETY: aitbc_fill_input(float*, u64, u64, u32, float) writes out[0..len].
        unsafe {
            self.compute
                .launch_builder(&self.kernels.fill)
                .arg(out)
                .arg(&len)
                .arg(&seed)
                .arg(&matrix)
                .arg(&scale)
                .launch(elementwise(grid_1d(len, self.sms)))
        }
        .map_err(CudaError::driver("launching aitbc_fill_input"))?;
        Ok(())
    }

    /// Copies `x[..len]` to the host through the two staging buffers and hands it to `sink`:
    /// chunk `c + 1` (and `c + 2` once buffer `c % 2` is free) is in flight on the copy stream
    /// while the sink works on chunk `c`.
    fn stream_out(
        &self,
        x: &CudaSlice<f32>,
        len: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> Result<(), CudaError> {
        let mut staging = self.staging.lock().unwrap_or_else(|p| p.into_inner());
        let chunks = len.div_ceil(STAGING_ELEMS);
        let range = |c: usize| c * STAGING_ELEMS..((c + 1) * STAGING_ELEMS).min(len);
        let issue = |staging: &mut Staging, c: usize| -> Result<(), CudaError> {
            let b = c % 2;
            self.copy
                .memcpy_dtoh(&x.slice(range(c)), &mut staging.bufs[b])
                .map_err(CudaError::driver("copying the output to the host"))?;
            staging.landed[b]
                .record(&self.copy)
                .map_err(CudaError::driver("recording a copy event"))
        };
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
            sink(&le_bytes(&data[..range(c).len()]));
            if c + 2 < chunks {
                issue(&mut staging, c + 2)?;
            }
        }
        Ok(())
    }
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

/// cuBLAS on `stream` in default (FP32, no TF32) math mode, or why not.
fn open_cublas(stream: &Arc<CudaStream>) -> Result<CudaBlas, String> {
    if !cublas_present() {
        return Err(
            "libcublas.so.12 (or an older name cudarc accepts) could not be loaded; \
                    the own SGEMM kernel runs the products"
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
        Ok(blas)
    }));
    opened.unwrap_or_else(|payload| Err(CudaError::panicked("loading cuBLAS", payload).to_string()))
}

/// A pinned, host-cached staging buffer (not write-combined: the host reads it).
fn pinned(ctx: &Arc<CudaContext>) -> Result<PinnedHostSlice<f32>, CudaError> {
    // SAFETY: the buffer is only read after a copy into it has landed (see `stream_out`).
    unsafe { ctx.alloc_pinned_with_flags::<f32>(STAGING_ELEMS, 0) }
        .map_err(CudaError::driver("allocating a pinned staging buffer"))
}

fn staging_event(ctx: &Arc<CudaContext>) -> Result<CudaEvent, CudaError> {
    ctx.new_event(Some(CUevent_flags::CU_EVENT_DISABLE_TIMING))
        .map_err(CudaError::driver("creating a copy event"))
}

/// `x` as little-endian bytes: borrowed on little-endian hosts (every CUDA host), copied elsewhere.
fn le_bytes(x: &[f32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: f32 has no padding and no invalid bit patterns as bytes; u8 has alignment 1;
        // the length covers exactly the same memory.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), x.len() * 4) })
    } else {
        Cow::Owned(x.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
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

/// `W`'s scale: `sqrt(3 / n)` computed in `f64`, rounded to `f32` (as the CPU's `w_scale`).
pub fn w_scale(n: u32) -> f32 {
    (3.0f64 / f64::from(n)).sqrt() as f32
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

/// The launch geometry `aitbc_sgemm_nn` documents: one 256-thread block per 128 x 128 tile.
pub fn sgemm_config(n: u32) -> LaunchConfig {
    let tiles = n.div_ceil(SGEMM_TILE);
    LaunchConfig {
        grid_dim: (tiles, tiles, 1),
        block_dim: (SGEMM_THREADS, 1, 1),
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
    fn w_scale_matches_the_cpu_recipe() {
        assert_eq!(w_scale(3), 1.0);
        // worker/src/torch_bench/input.rs pins sqrt(3/1024) as 0x3d5db3d7.
        assert_eq!(w_scale(1024).to_bits(), 0x3d5d_b3d7);
    }

    #[test]
    fn launch_geometry_covers_every_element_and_tile() {
        assert_eq!(grid_1d(0, 132), 1);
        assert_eq!(grid_1d(1, 132), 1);
        assert_eq!(grid_1d(256, 132), 1);
        assert_eq!(grid_1d(257, 132), 2);
        assert_eq!(grid_1d(1 << 30, 132), 132 * 32);
        assert_eq!(grid_1d(1 << 20, 0), 32);
        let c = sgemm_config(1);
        assert_eq!((c.grid_dim, c.block_dim), ((1, 1, 1), (256, 1, 1)));
        assert_eq!(sgemm_config(128).grid_dim, (1, 1, 1));
        assert_eq!(sgemm_config(129).grid_dim, (2, 2, 1));
        assert_eq!(sgemm_config(8192).grid_dim, (64, 64, 1));
        assert_eq!(sgemm_config(MAX_N).grid_dim, (512, 512, 1));
    }

    #[test]
    fn le_bytes_are_the_little_endian_encoding() {
        let x = [1.0f32, -2.5, f32::MIN_POSITIVE];
        let want: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(&*le_bytes(&x), &want[..]);
    }

    #[test]
    fn stats_report_tflops_from_device_time() {
        let s = ChainStats {
            gemm: GemmPath::OwnKernel,
            output_len: 4,
            flops: 2_000_000_000_000,
            rescales: 0,
            products_ms: 100.0,
            elapsed: Duration::from_millis(120),
            vram_allocated: 0,
        };
        assert!((s.tflops() - 20.0).abs() < 1e-9);
        assert_eq!(
            ChainStats {
                products_ms: 0.0,
                ..s
            }
            .tflops(),
            0.0
        );
    }
}

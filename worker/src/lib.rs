//! The per-job worker: one fresh process per job that confines itself, computes a workload,
//! hashes its output and answers the supervisor over an inherited Unix socket (see
//! `protocol::wire`).
//!
//! * [`worker_main`]: the whole process: parse the command line ([`args`]), confine
//!   ([`confine`], in its one documented order), then serve fd 3.
//! * [`serve_fd`] / [`serve`]: the conversation (hello, one order, one answer).
//! * [`workload`]: the one dispatch to the workloads, one folder each (`workload/torch_bench/`:
//!   the exact int8 chain on the CPU's kernels or an NVIDIA GPU through `aitbc-cuda`), with
//!   their warm-ups, GPU modules, checks and runs.
//!
//! Architecture invariant: the worker depends on no async runtime (a test checks `cargo tree`),
//! never opens a network socket, never talks to the Coordinator, never reads configuration,
//! and never panics on a frame from the supervisor. It trusts nothing it is sent: the job is
//! re-checked before any memory is allocated for it. It reads no job before it is confined.

pub mod args;
pub mod confine;
mod entry;
mod error;
#[cfg(feature = "hostile")]
pub mod hostile;
mod serve;
pub mod workload;

pub use entry::{worker_main, EXIT_SETUP, EXIT_USAGE, WORKER_FD};
pub use error::WorkerError;
pub use serve::{answer, serve, serve_fd, EXIT_BAD_FD, EXIT_CONVERSATION};

/// Whether `libcuda.so.1` loads on this host (`aitbc_cuda::driver_present`: a cached `dlopen`
/// probe that initialises nothing): what a GPU worker's device step checks first. For tests
/// that must know whether a `--kind gpu` worker can start here.
pub use aitbc_cuda::driver_present as cuda_driver_present;

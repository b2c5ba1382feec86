//! The per-job worker: one fresh process per job that computes a workload, hashes its output
//! and answers the supervisor over an inherited Unix socket (see `protocol::wire`).
//!
//! * [`serve_fd`] / [`serve`]: the conversation (hello, one order, one answer).
//! * [`torch_bench`]: the matrix-product chain, its input generator, the CPU backend and the
//!   seam where a GPU backend plugs in.
//!
//! Architecture invariant: the worker depends on no async runtime (a test checks `cargo tree`),
//! never opens a network socket, never talks to the Coordinator, never reads configuration,
//! and never panics on a frame from the supervisor. It trusts nothing it is sent: the job is
//! re-checked before any memory is allocated for it.

mod error;
mod serve;
pub mod torch_bench;

pub use error::WorkerError;
pub use serve::{answer, check_job, serve, serve_fd, EXIT_BAD_FD, EXIT_CONVERSATION};

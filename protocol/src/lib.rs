//! The vocabulary both ends of the miner's two conversations share.
//!
//! * [`api`]: the Coordinator API v1 (JSON over HTTP), spoken by the supervisor, the reference
//!   Coordinator and any client.
//! * [`wire`]: the supervisor <-> worker frames (length-prefixed bincode over a Unix socket).
//! * [`workload`]: the closed set of workloads, their typed parameters, and the pure check of a
//!   job's parameters against its limits, used by all three parties so that a bad job is refused
//!   before any process starts.
//!
//! Architecture invariant: this crate depends on no other crate of the workspace and does no I/O
//! of its own beyond the `Read`/`Write` values handed to [`wire`]. It never logs and never panics
//! on input.

pub mod api;
pub mod wire;
pub mod workload;

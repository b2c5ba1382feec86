//! The vocabulary both ends of the miner's two conversations share.
//!
//! * [`api`]: the Coordinator API v1 (JSON over HTTP), spoken by the supervisor, the reference
//!   Coordinator and any client.
//! * [`wire`]: the supervisor <-> worker frames (length-prefixed bincode over a Unix socket).
//! * [`args`]: the worker's command line, one typed struct the supervisor writes and the worker
//!   parses.
//! * [`workload`]: the closed set of workloads, their typed parameters, and the pure check of a
//!   job's parameters against its limits, used by all three parties so that a bad job is refused
//!   before any process starts; `workload::torch_bench` specifies its exact integer chain.
//! * [`merkle`]: the RFC 9162 Merkle tree that commits to a job's output rows, for audits.
//! * [`hex`]: the lower-case hex the API writes digests and opened rows in.
//!
//! Architecture invariant: this crate depends on no other crate of the workspace and does no I/O
//! of its own beyond the `Read`/`Write` values handed to [`wire`]. It never logs and never panics
//! on input.

pub mod api;
pub mod args;
pub mod hex;
pub mod merkle;
pub mod wire;
pub mod workload;

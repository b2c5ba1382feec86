//! The hostile suite: attacks on the worker's sandbox, each run through the real system — an
//! in-process Coordinator on loopback and a real `aitbc-miner run` process (as root, as CI
//! runs it, the miner drops to `RUN_AS_USER=nobody`) whose workers are this build's
//! `aitbc-miner worker` with the `hostile` feature (see `worker/src/hostile.rs`: a job's seed
//! selects the act).
//!
//! For every act the suite checks what a user of the miner would: the job fails with the
//! precise reason, the attacked thing is intact, the supervisor keeps running and completes a
//! normal job afterwards, nothing secret reaches a fail message, and no process of the worker
//! is left behind. A test that needs root or cgroups says so on stderr (`hostile: SKIPPED ...`)
//! instead of passing silently. Nothing here fakes a part of the system.

#[path = "../suite/common.rs"]
mod common;

mod acts;
mod heartbeat;
mod rig;

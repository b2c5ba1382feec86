//! `worker_main`: what an `aitbc-miner worker` process does from its first instruction to its
//! exit: parse the command line, check the inherited socket, confine itself (see
//! [`crate::confine`]), then hold the conversation on fd 3.
//!
//! Every failure before Hello is printed on stderr as one line starting `aitbc-miner worker:`
//! (the supervisor keeps the tail for its "worker could not start" message) and ends the process
//! with a distinct exit code. This module must never read the environment or a file to decide
//! anything, and never send Hello from a process that is not fully confined.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::args::parse_args;
use crate::confine::{confine, landlock_kernel_abi, Plan};
use crate::serve::{serve_exit, socket_from_fd};

/// The file descriptor on which a worker finds its socket (set up by the supervisor).
pub const WORKER_FD: i32 = 3;
/// Exit code for a wrong command line (the supervisor started the worker wrongly); the same
/// as [`crate::EXIT_BAD_FD`], which is the other way of being started wrongly.
pub const EXIT_USAGE: u8 = 2;
/// Exit code when a confinement step failed (before Hello).
pub const EXIT_SETUP: u8 = 3;

/// Runs a worker process. `args` is the whole argv: the program name, `worker`, then
/// `--job-dir DIR [--fs auto|landlock|mount] [--file-size-mb N] [--kind cpu|gpu]
/// [--cpu-kernel auto|avx512-vnni|avx-vnni|avx2|portable]`.
pub fn worker_main(args: impl Iterator<Item = OsString>) -> ExitCode {
    let parsed = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aitbc-miner worker: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let sock = match socket_from_fd(WORKER_FD) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aitbc-miner worker: {e}");
            return ExitCode::from(crate::EXIT_BAD_FD);
        }
    };
    let confined = match Plan::new(&parsed, landlock_kernel_abi()).and_then(|plan| confine(&plan)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("aitbc-miner worker: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    serve_exit(sock, &confined.report.line(), &confined.device)
}

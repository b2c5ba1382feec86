//! The integration tests of aitbc-cuda, one binary: what can be checked without a GPU (the PTX,
//! the absent driver, the CUDA C generator and requantization compiled for the host, the
//! kernels run on the CPU against the protocol's reference) and the GPU tests, which print
//! `SKIP: no NVIDIA GPU: no CUDA driver` and pass when there is no driver to run them on.

mod gpu;
mod host_check;
mod kernel_emulation;
mod no_driver;
mod ptx;
mod reference;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs one of the host-compiled CUDA C drivers (`host_check`, `kernel_emulation`): writes
/// `input` to its stdin and returns its stdout's lines; a failed driver fails the test.
fn ask(exe: &Path, input: &str) -> Vec<String> {
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} failed on {input:?}",
        exe.display()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

//! Invariants of the code base that a machine checks: which crate may depend on which,
//! that the worker has no async runtime, and that every source file says what it is for.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace's own crates each library crate may use. Dependencies point one way:
/// protocol at the bottom, binaries (the root package) at the top.
const ALLOWED: &[(&str, &[&str])] = &[
    ("protocol", &[]),
    ("seccomp", &["aitbc-protocol"]),
    ("cuda", &["aitbc-protocol"]),
    ("worker", &["aitbc-protocol", "aitbc-seccomp", "aitbc-cuda"]),
    ("supervisor", &["aitbc-protocol"]),
    ("coordinator", &["aitbc-protocol"]),
];

fn deps_of(dir: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("Cargo.toml");
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[dependencies]" {
            if let Some(name) = line.split(['.', '=', ' ']).next() {
                if name.starts_with("aitbc") {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

#[test]
fn library_crates_depend_only_downwards() {
    for (dir, allowed) in ALLOWED {
        for dep in deps_of(dir) {
            assert!(
                allowed.contains(&dep.as_str()),
                "{dir}/ depends on {dep}, which is not below it (allowed: {allowed:?})"
            );
        }
    }
}

#[test]
fn worker_has_no_async_runtime() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "--offline",
            "-p",
            "aitbc-worker",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("aitbc-worker"),
        "unexpected cargo tree output: {tree}"
    );
    for forbidden in ["tokio ", "async-std ", "smol ", "reqwest ", "hyper "] {
        assert!(
            !tree.contains(forbidden),
            "the worker depends on {forbidden}:\n{tree}"
        );
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_source_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&root(), &mut files);
    assert!(files.len() > 10, "found only {} files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! module doc: {missing:?}"
    );
}

/// One pre-started worker serves every workload of the build (worker/src/workload/mod.rs), so
/// what the worker serves and what the supervisor declares and admits are the same list.
#[test]
fn the_worker_serves_exactly_what_the_supervisor_declares() {
    assert_eq!(
        aitbc_worker::workload::SERVED,
        aitbc_supervisor::policy::RUNS,
        "aitbc_worker::workload::SERVED and aitbc_supervisor::policy::RUNS must list the same \
         workloads"
    );
}

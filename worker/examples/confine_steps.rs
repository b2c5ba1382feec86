//! Per-step cost of the worker's confinement, measured in fresh processes (one confinement per
//! process: it cannot be undone). Prints the median and p99 of each step in microseconds.
//!
//! ```text
//! cargo run --release -p aitbc-worker --example confine_steps -- [RUNS] [--fs auto|landlock|mount]
//! ```
//!
//! The parent re-runs this executable `RUNS` times as `child --job-dir DIR --fs MODE`; each child
//! confines itself exactly as a worker does (`aitbc_worker::confine::confine`) and prints one
//! line `step=us ...` on stdout. This is a measurement tool: it asserts nothing and must never
//! be used by the miner itself.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::{Command, ExitCode};

use aitbc_worker::args::parse_args;
use aitbc_worker::confine::{confine, landlock_kernel_abi, Plan};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "child") {
        return child(args);
    }
    let runs: usize = args
        .get(1)
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let fs = args
        .iter()
        .position(|a| a == "--fs")
        .and_then(|i| args.get(i + 1))
        .and_then(|a| a.to_str())
        .unwrap_or("auto")
        .to_string();
    let exe = std::env::current_exe().expect("current_exe");
    let dir = std::env::temp_dir().join(format!("aitbc-confine-steps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the job dir");
    let mut samples: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for _ in 0..runs {
        let out = Command::new(&exe)
            .args(["child", "--job-dir"])
            .arg(&dir)
            .args(["--fs", &fs])
            .output()
            .expect("run a child");
        if !out.status.success() {
            eprintln!("child failed: {}", String::from_utf8_lossy(&out.stderr));
            return ExitCode::FAILURE;
        }
        for kv in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                if !order.iter().any(|o| o == k) {
                    order.push(k.to_string());
                }
                samples
                    .entry(k.to_string())
                    .or_default()
                    .push(v.parse().unwrap_or(0));
            }
        }
    }
    let _ = std::fs::remove_dir(&dir);
    println!("--fs {fs}, {runs} runs (µs):");
    println!("{:<16} {:>8} {:>8}", "step", "p50", "p99");
    for k in &order {
        let v = samples.get_mut(k).expect("sampled");
        v.sort_unstable();
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        println!("{k:<16} {:>8} {:>8}", pick(0.5), pick(0.99));
    }
    ExitCode::SUCCESS
}

/// Confines this process as a worker would and prints each step's time.
fn child(mut args: Vec<OsString>) -> ExitCode {
    args[1] = "worker".into();
    let parsed = match parse_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match Plan::new(&parsed, landlock_kernel_abi()).and_then(|p| confine(&p)) {
        Ok(c) => c.report,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut line = String::new();
    let mut total = 0;
    for (step, took) in report.timings() {
        let us = took.as_micros();
        total += us;
        line.push_str(&format!("{}={us} ", step.name()));
    }
    println!("{line}total={total}");
    ExitCode::SUCCESS
}

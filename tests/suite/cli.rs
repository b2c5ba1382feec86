//! The `aitbc-miner` commands a person types first: `dev` (README's main command) and
//! `bench`, run as real processes, checked on what they print.

use std::process::Command;

use serde_json::{json, Value};

fn miner() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aitbc-miner"))
}

fn json_line(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a line on stdout");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"))
}

#[test]
fn dev_runs_the_whole_flow_and_reports_json() {
    let out = miner()
        .args([
            "dev",
            "--jobs",
            "5",
            "--json",
            "--params",
            r#"{"n":96,"iters":4}"#,
        ])
        .env_remove("ACCEL_MODE")
        .output()
        .expect("running aitbc-miner dev");
    let summary = json_line(&out);
    let keys: Vec<_> = summary
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        [
            "audits_failed",
            "audits_passed",
            "balance",
            "forfeited",
            "gflops",
            "held",
            "job_p50_ms",
            "jobs_done",
            "jobs_failed",
            "pending",
            "pickup_p50_ms"
        ]
    );
    assert_eq!(summary["jobs_done"], 5);
    assert_eq!(summary["jobs_failed"], 0);
    // Verification is on: a new miner's first proofs are all audited, and pass.
    assert_eq!(summary["audits_passed"], 5, "{summary}");
    assert_eq!(
        (&summary["audits_failed"], &summary["held"]),
        (&json!(0), &json!(0))
    );
    // Every job pays 100 base units to the dev wallet, exactly once, settled before the end.
    assert_eq!(summary["balance"], 500);
    assert_eq!(
        (&summary["pending"], &summary["forfeited"]),
        (&json!(0), &json!(0))
    );
    assert!(
        summary["gflops"].as_f64().is_some_and(|g| g > 0.0),
        "{summary}"
    );
    // Progress lines go to stderr, one per finished job.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("credited 100").count(), 5, "{stderr}");
}

#[test]
fn dev_refuses_bad_params_before_starting_anything() {
    let out = miner()
        .args(["dev", "--params", r#"{"n":0}"#])
        .output()
        .expect("running aitbc-miner dev");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("params.n = 0"), "{stderr}");
}

#[test]
fn bench_runs_one_job_through_the_worker_and_reports_json() {
    let out = miner()
        .args([
            "bench",
            "--workload",
            "torch_bench",
            "--params",
            r#"{"n":7,"iters":3,"seed":42}"#,
        ])
        .args(["--threads", "1", "--json"])
        .output()
        .expect("running aitbc-miner bench");
    let m = json_line(&out);
    assert!(m["gflops"].as_f64().is_some_and(|g| g > 0.0), "{m}");
    assert!(m["wall_ms"].as_u64().is_some(), "{m}");
    assert_eq!(m["output_len"], 7 * 7);
    // The chain is exact: the same hash as protocol's plain reference computes.
    let p = aitbc_protocol::workload::torch_bench::TorchBenchParams {
        n: 7,
        iters: 3,
        seed: 42,
    };
    let reference = aitbc_protocol::workload::torch_bench::reference_output(&p);
    let c = aitbc_protocol::workload::torch_bench::commit(&reference, 7).expect("7 x 7");
    let hex: String = c.output_sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(m["output_sha"], Value::String(hex));
}

#[test]
fn bench_runs_the_named_kernel_and_refuses_one_the_cpu_lacks() {
    use aitbc_worker::workload::torch_bench::Kernel;
    let bench = |kernel: &str| {
        miner()
            .args(["bench", "--params", r#"{"n":9,"iters":2,"seed":3}"#])
            .args(["--threads", "1", "--json", "--kernel", kernel])
            .output()
            .expect("running aitbc-miner bench")
    };
    let auto = json_line(&bench("auto"));
    assert_eq!(auto["kernel"], Kernel::detect().name(), "{auto}");
    for k in Kernel::ALL {
        let out = bench(k.name());
        if k.available() {
            let m = json_line(&out);
            assert_eq!(m["kernel"], k.name(), "{m}");
            assert_eq!(m["output_sha"], auto["output_sha"], "{m}");
        } else {
            assert_ne!(out.status.code(), Some(0));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(&format!("this CPU lacks the {} int8 kernel", k.name())),
                "{stderr}"
            );
        }
    }
    let out = bench("avx512");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expected auto, avx512-vnni"), "{stderr}");
}

#[test]
fn bench_names_an_unknown_workload() {
    let out = miner()
        .args(["bench", "--workload", "bitcoin", "--json"])
        .output()
        .expect("running aitbc-miner bench");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown workload \"bitcoin\""), "{stderr}");
}

#[test]
fn example_config_is_a_valid_config() {
    let out = miner()
        .arg("example-config")
        .output()
        .expect("running example-config");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("COORD_URL=") && text.contains("MAX_CONCURRENCY="),
        "{text}"
    );
}

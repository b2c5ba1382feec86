//! Per-job overhead of the real worker path, next to the cost of starting a process at all.
//!
//! Each round starts a worker (`aitbc-miner worker`, fd 3 socket pair, clean environment, own
//! process group) and waits for its Hello, then hands the READY worker an "empty" torch_bench
//! job (n=1, iters=1): Run frame, compute + hash, answer, reap. `run_local` times the two parts
//! separately; the hand-off-to-answer part is what a pre-started slot worker costs per job. In
//! the same run, fork+exec+wait of `/bin/true` gives the floor of any process-per-job design.
//!
//! Run: `cargo bench --bench job_overhead` (optional: `-- 1000` rounds). Target: hand-off p50
//! under 2 ms. It must never be used as a test: it asserts nothing about timings.

use std::time::{Duration, Instant};

use aitbc_protocol::api::JobLimits;
use aitbc_supervisor::{run_local, WorkerCommand};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    // The same confinement a miner gives its workers: the worker confines itself, and a root
    // run also puts each worker in its own cgroup.
    let mut worker = WorkerCommand::new(env!("CARGO_BIN_EXE_aitbc-miner"), ["worker"]);
    worker.subtree = aitbc_supervisor::cgroup::workers_subtree("bench-overhead");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the benchmark");
    let params = serde_json::json!({"n": 1, "iters": 1, "seed": 1});
    let (mut ready, mut handoff, mut total, mut truth) = (vec![], vec![], vec![], vec![]);
    // Warm-up: page cache, dynamic loader.
    for _ in 0..10 {
        rt.block_on(run_local(
            &worker,
            "torch_bench",
            &params,
            JobLimits::default(),
            1,
        ))
        .expect("warm-up job");
    }
    for _ in 0..rounds {
        let t0 = Instant::now();
        let r = rt
            .block_on(run_local(
                &worker,
                "torch_bench",
                &params,
                JobLimits::default(),
                1,
            ))
            .expect("empty job");
        total.push(t0.elapsed());
        ready.push(r.spawn_to_ready);
        handoff.push(r.handoff_to_answer);

        let t0 = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .status()
            .expect("/bin/true runs");
        assert!(status.success());
        truth.push(t0.elapsed());
    }
    for v in [&mut ready, &mut handoff, &mut total, &mut truth] {
        v.sort();
    }
    println!("job_overhead: {rounds} empty torch_bench jobs (n=1, iters=1), times in ms");
    println!("{:<44} {:>9} {:>9}", "part", "p50", "p99");
    for (name, v) in [
        ("spawn worker -> Hello (pre-start, off path)", &ready),
        ("hand-off to READY worker -> answer", &handoff),
        ("whole run_local (spawn .. reap)", &total),
        ("fork+exec+wait /bin/true", &truth),
    ] {
        println!("{name:<44} {:>9} {:>9}", ms(pct(v, 0.5)), ms(pct(v, 0.99)));
    }
    let ratio = pct(&handoff, 0.5).as_secs_f64() / pct(&truth, 0.5).as_secs_f64();
    println!("hand-off p50 / /bin/true p50 = {ratio:.2}x (target: hand-off p50 < 2 ms)");
}

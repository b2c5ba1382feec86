//! The GPU path as this host can check it. Without an NVIDIA GPU (this machine, CI): a miner
//! asked for the GPU (`ACCEL_MODE=gpu`) starts cleanly, completes its jobs on the CPU and says
//! why on stderr; its heartbeat carries no GPUs; its proofs carry TFLOP/s and an honest energy
//! source. With a usable GPU the same tests check the GPU side instead, and the GPU-only test
//! runs; without one it prints `SKIP: no NVIDIA GPU` and passes.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use aitbc_protocol::api::{EnergySource, JobState, Mode};
use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_supervisor::config::AccelMode;
use aitbc_supervisor::Event;
use serde_json::{json, Value};

use crate::common::{reachable_tempdir, test_config, TestCoordinator};
use crate::miner_e2e::{miner_config, real_worker, settled, Miner};

/// This host's usable GPU, as the supervisor sees it, or why there is none.
fn usable_gpu() -> Result<aitbc_protocol::api::GpuInfo, String> {
    aitbc_supervisor::gpu::detect().usable().cloned()
}

#[test]
fn accel_mode_gpu_dev_completes_its_jobs_and_says_why_it_used_the_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"))
        .args([
            "dev",
            "--jobs",
            "2",
            "--json",
            "--params",
            r#"{"n":64,"iters":3}"#,
            "--timeout-secs",
            "120",
        ])
        .env("ACCEL_MODE", "gpu")
        .output()
        .expect("running aitbc-miner dev");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(summary["jobs_done"], 2, "{summary}");
    assert_eq!(summary["jobs_failed"], 0, "{summary}");
    match usable_gpu() {
        Ok(g) => {
            eprintln!(
                "GPU here ({}): the jobs ran on it; no fall-back expected",
                g.name
            );
            assert!(!stderr.contains("no usable GPU"), "{stderr}");
        }
        Err(why) => {
            let warning = stderr
                .lines()
                .find(|l| l.contains("ACCEL_MODE=gpu but this host has no usable GPU"))
                .unwrap_or_else(|| panic!("no fall-back warning on stderr:\n{stderr}"));
            assert!(
                warning.contains("libnvidia-ml.so.1") || warning.contains("libcuda.so.1"),
                "the warning names what is missing: {warning}"
            );
            assert!(warning.contains("running jobs on the CPU"), "{warning}");
            eprintln!("no GPU here ({why}); stderr said: {warning}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_asked_for_the_gpu_on_a_host_without_one_heartbeats_and_proves_on_the_cpu() {
    if let Ok(g) = usable_gpu() {
        // Straight to stderr: libtest captures eprintln!, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP: this host has a GPU ({}); the CPU fall-back is not visible",
            g.name
        );
        return;
    }
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let mut config = miner_config(&c.url, &c.miner_key, "gpu-less", "w_gpu", dir.path(), 1);
    config.accel_mode = AccelMode::Gpu;
    config.job_limits_max.vram_mb = 16_000;
    let mut miner = Miner::start(config, real_worker());
    miner
        .wait_event("the first heartbeat", Duration::from_secs(10), |e| {
            matches!(e, Event::Heartbeat { ok: true })
        })
        .await;

    // What the Coordinator stored from the heartbeat: CPU mode, no GPUs, no GPU health, and
    // no device memory offered.
    let miners = c.get("/v1/admin/miners", Some(&c.admin_key)).await.json();
    let me = miners
        .as_array()
        .and_then(|a| a.iter().find(|m| m["miner_id"] == "gpu-less"))
        .unwrap_or_else(|| panic!("the miner is listed: {miners}"))
        .clone();
    let caps = &me["capabilities"];
    assert_eq!(caps["mode"], "cpu", "{caps}");
    assert!(caps.get("gpus").is_none(), "{caps}");
    assert!(
        caps.get("gpu_health").is_none() || caps["gpu_health"]["healthy"] == false,
        "{caps}"
    );
    assert_eq!(caps["limits"]["vram_mb"], 0, "{caps}");

    // A job that asks for device memory is not offered to it (its heartbeat offers none);
    // a CPU job is, and runs on the CPU with honest metrics.
    let p = TorchBenchParams {
        n: 64,
        iters: 3,
        seed: 7,
    };
    let params = json!({"n": p.n, "iters": p.iters, "seed": p.seed});
    let gpu_job = c
        .submit(
            json!({"workload": "torch_bench", "reward": 5, "params": params,
            "limits": {"vram_mb": p.vram_mb()}}),
        )
        .await;
    let v = c
        .submit(json!({"workload": "torch_bench", "reward": 5, "params": params}))
        .await;
    let done = settled(&c, &v.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    let proof = done.proof.expect("a completed job has its proof");
    assert_eq!(proof.mode, Mode::Cpu);
    let m = &proof.metrics;
    let tflops = m.tflops.expect("TFLOP/s in every proof");
    let gflops = m.gflops.expect("GFLOP/s in every proof");
    assert!(
        (tflops * 1e3 - gflops).abs() <= 1e-9 * gflops.max(1.0),
        "{m:?}"
    );
    match m.energy_source {
        Some(EnergySource::Rapl) => assert!(m.energy_mj.is_some(), "{m:?}"),
        Some(EnergySource::Unavailable) => assert_eq!(m.energy_mj, None, "{m:?}"),
        other => panic!("a CPU job's energy comes from RAPL or nowhere: {other:?}"),
    }
    assert_eq!(c.job(&gpu_job.id).await.state, JobState::Queued);
    miner.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_job_runs_on_the_gpu_with_nvml_energy_and_its_vram_checked() {
    let gpu = match usable_gpu() {
        Ok(g) => g,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "SKIP: no NVIDIA GPU ({why})");
            return;
        }
    };
    let c = TestCoordinator::start(test_config()).await;
    let dir = reachable_tempdir();
    let mut config = miner_config(&c.url, &c.miner_key, "gpu-miner", "w_gpu", dir.path(), 1);
    config.accel_mode = AccelMode::Gpu;
    config.job_limits_max.vram_mb = gpu.vram_mb;
    let mut miner = Miner::start(config, real_worker());
    miner
        .wait_event("the first heartbeat", Duration::from_secs(30), |e| {
            matches!(e, Event::Heartbeat { ok: true })
        })
        .await;
    let miners = c.get("/v1/admin/miners", Some(&c.admin_key)).await.json();
    let caps = miners
        .as_array()
        .and_then(|a| a.iter().find(|m| m["miner_id"] == "gpu-miner"))
        .map(|m| m["capabilities"].clone())
        .unwrap_or_else(|| panic!("the miner is listed: {miners}"));
    assert_eq!(caps["mode"], "gpu", "{caps}");
    assert_eq!(caps["gpus"][0]["name"], gpu.name.as_str(), "{caps}");
    assert!(caps["gpu_health"]["healthy"].is_boolean(), "{caps}");

    let p = TorchBenchParams {
        n: 1024,
        iters: 20,
        seed: 3,
    };
    let params = json!({"n": p.n, "iters": p.iters, "seed": p.seed});
    // One MiB short of what the chain allocates: refused before any process is touched.
    let short = c
        .submit(
            json!({"workload": "torch_bench", "reward": 5, "params": params,
            "limits": {"vram_mb": p.vram_mb() - 1}}),
        )
        .await;
    let (_, reason, message) = miner
        .wait_failure(
            "the short VRAM cap refused",
            Duration::from_secs(60),
            Some(&short.id),
        )
        .await;
    assert_eq!(
        reason,
        aitbc_protocol::api::FailReason::BadParams,
        "{message}"
    );
    assert!(message.contains("limits.vram_mb"), "{message}");

    let v = c
        .submit(
            json!({"workload": "torch_bench", "reward": 5, "params": params,
            "limits": {"vram_mb": p.vram_mb()}}),
        )
        .await;
    let done = settled(&c, &v.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    let proof = done.proof.expect("a completed job has its proof");
    assert_eq!(proof.mode, Mode::Gpu);
    assert_eq!(
        proof.metrics.energy_source,
        Some(EnergySource::Nvml),
        "{proof:?}"
    );
    assert!(proof.metrics.energy_mj.is_some(), "{proof:?}");
    assert!(proof.metrics.tflops.is_some_and(|t| t > 0.0), "{proof:?}");
    eprintln!(
        "{} (driver {:?}): n=1024 iters=20 {:.2} TFLOP/s, {:?} mJ",
        gpu.name,
        gpu.driver_version,
        proof.metrics.tflops.unwrap_or(0.0),
        proof.metrics.energy_mj
    );
    miner.stop().await;
    c.stop().await;
}

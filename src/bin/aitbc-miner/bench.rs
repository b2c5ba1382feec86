//! `aitbc-miner bench`: one workload through the real worker path (a pre-started worker
//! process, the wire protocol, the hash), without a Coordinator, and its metrics. With `--gpu`
//! the worker is a GPU worker (`--kind gpu`) and the job's VRAM cap is what its params need;
//! `--kernel` names the CPU worker's int8 kernel, as `CPU_KERNEL` does.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use aitbc_protocol::api::JobLimits;
use aitbc_protocol::args::CpuKernel;

#[derive(Args)]
pub struct BenchArgs {
    /// Workload name, e.g. torch_bench.
    #[arg(long, default_value = "torch_bench")]
    workload: String,
    /// The workload's params as JSON, e.g. '{"n":1024,"iters":100}'.
    #[arg(long, default_value = "{}")]
    params: String,
    /// Compute threads (default: every core).
    #[arg(long)]
    threads: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Run on the GPU (a `--kind gpu` worker); fails with the worker's reason without one.
    #[arg(long)]
    gpu: bool,
    /// The CPU worker's int8 kernel, as `CPU_KERNEL`: auto, avx512-vnni, avx-vnni, avx2 or
    /// portable; the worker refuses one this CPU lacks.
    #[arg(long, default_value = "auto", value_parser = parse_kernel)]
    kernel: CpuKernel,
}

fn parse_kernel(s: &str) -> Result<CpuKernel, String> {
    CpuKernel::parse(s).ok_or_else(|| CpuKernel::EXPECTED.to_string())
}

pub fn main(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let params: serde_json::Value = serde_json::from_str(&args.params)
        .with_context(|| format!("--params {:?} is not JSON", args.params))?;
    let threads = match args.threads {
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
    };
    let vram_mb = if args.gpu {
        match aitbc_protocol::workload::plan(&args.workload, &params, &JobLimits::default()) {
            Ok(spec) => spec.vram_mb(),
            Err(e) => anyhow::bail!("--params {}: {e}", args.params),
        }
    } else {
        0
    };
    let limits = JobLimits {
        ram_mb: u64::MAX / 2,
        max_runtime_s: 24 * 3600,
        cpu_time_s: u64::MAX / 2,
        vram_mb,
    };
    let kind = if args.gpu {
        aitbc_protocol::api::Mode::Gpu
    } else {
        aitbc_protocol::api::Mode::Cpu
    };
    let mut worker = aitbc_supervisor::WorkerCommand::current_exe()?.with_kind(kind);
    worker.cpu_kernel = args.kernel;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let run = rt.block_on(aitbc_supervisor::run_local(
        &worker,
        &args.workload,
        &params,
        limits,
        threads,
    ))?;
    let m = &run.metrics;
    // The kernel the worker says it ran (its Hello line), e.g. what `auto` chose.
    let kernel = run
        .sandbox
        .split("; ")
        .find_map(|part| part.strip_prefix("int8 kernel "))
        .unwrap_or("none");
    if args.json {
        let out = serde_json::json!({
            "workload": args.workload,
            "params": params,
            "threads": threads,
            "kind": if args.gpu { "gpu" } else { "cpu" },
            "kernel": kernel,
            "gflops": m.gflops,
            "tflops": m.tflops,
            "energy_mj": m.energy_mj,
            "energy_source": m.energy_source.map(|s| s.as_str()),
            "wall_ms": m.wall_ms,
            "cpu_ms": m.cpu_ms,
            "flops": m.flops,
            "peak_rss_mb": m.peak_rss_mb,
            "output_sha": run.output_sha,
            "output_len": run.output_len,
            "spawn_to_ready_ms": run.spawn_to_ready.as_secs_f64() * 1e3,
            "handoff_to_answer_ms": run.handoff_to_answer.as_secs_f64() * 1e3,
        });
        println!("{out}");
    } else {
        println!("workload      {} {}", args.workload, params);
        println!("threads       {threads}");
        println!("device        {}", if args.gpu { "gpu" } else { "cpu" });
        if !args.gpu {
            println!("int8 kernel   {kernel} (--kernel {})", args.kernel);
        }
        println!("Gop/s (int8)  {:.2}", m.gflops.unwrap_or(0.0));
        match (m.energy_mj, m.energy_source) {
            (Some(mj), Some(src)) => println!("energy        {mj} mJ ({})", src.as_str()),
            _ => println!("energy        unavailable"),
        }
        println!("wall          {} ms", m.wall_ms.unwrap_or(0));
        println!("cpu           {} ms", m.cpu_ms.unwrap_or(0));
        println!("peak RSS      {} MiB", m.peak_rss_mb.unwrap_or(0));
        println!(
            "output        {} bytes, sha256 {}",
            run.output_len, run.output_sha
        );
        println!(
            "worker        ready in {:.2} ms; hand-off to answer {:.2} ms",
            run.spawn_to_ready.as_secs_f64() * 1e3,
            run.handoff_to_answer.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}

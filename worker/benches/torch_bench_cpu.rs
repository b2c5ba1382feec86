//! Benchmark: the worker's exact int8 chain on the CPU against onnxruntime's `MatMulInteger`
//! (u8 x s8, `scripts/int8_baseline.py`), in the same run, on the same cores, alternating,
//! plus the machine's measured `vpdpbusd` peak. Not a test: it prints figures.
//!
//! ```text
//! cargo bench -p aitbc-worker --bench torch_bench_cpu -- [--n 1024,2048] [--iters auto]
//!     [--threads 2] [--reps 3] [--seed 0] [--kernel detect|all|avx512-vnni|avx-vnni|avx2|portable]
//!     [--no-baseline]
//! ```
//!
//! For each `n` and kernel it reports the best of `--reps` of: the whole job through
//! `run_cpu_with` (allocation, inputs, packing, the `iters` products with their
//! requantization, the SHA-256 and the Merkle root: what a job's Gop/s is figured from), and
//! the products alone (`CpuChain::run`). `--iters auto` picks about 2 * 10^11 operations per
//! run. onnxruntime runs with `$AITBC_BENCH_PYTHON`, else `target/venv-int8/bin/python` when it
//! exists, else `python3`; one product per run, best of 20. The peak is `threads` threads
//! each running independent 512-bit `vpdpbusd`s, best of 5 (AVX-512-VNNI hosts only).
//! This program must never be used to decide a job's result.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use aitbc_protocol::workload::torch_bench::TorchBenchParams;
use aitbc_worker::workload::torch_bench::{run_cpu_with, CpuChain, Kernel};

struct Args {
    sizes: Vec<u32>,
    iters: Option<u32>,
    seed: u64,
    threads: usize,
    reps: u32,
    kernels: Vec<Kernel>,
    baseline: bool,
}

fn parse_kernels(s: &str) -> Result<Vec<Kernel>, String> {
    match s {
        "detect" => Ok(vec![Kernel::detect()]),
        "all" => Ok(Kernel::ALL.into_iter().filter(|k| k.available()).collect()),
        name => Kernel::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .map(|k| vec![k])
            .ok_or(format!("unknown kernel {name:?}")),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![1024, 2048],
        iters: None,
        seed: 0,
        threads: 2,
        reps: 3,
        kernels: vec![Kernel::detect()],
        baseline: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--bench" => continue, // cargo bench passes this to every bench target
            "--no-baseline" => {
                a.baseline = false;
                continue;
            }
            _ => {}
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v:?}: expected a whole number"))
        };
        let small = |v: u64| u32::try_from(v).map_err(|_| format!("{flag} {v}: too large"));
        match flag.as_str() {
            "--n" => {
                a.sizes = value
                    .split(',')
                    .map(|v| num(v).and_then(small))
                    .collect::<Result<_, _>>()?
            }
            "--iters" if value == "auto" => a.iters = None,
            "--iters" => a.iters = Some(small(num(&value)?)?),
            "--seed" => a.seed = num(&value)?,
            "--threads" => a.threads = num(&value)?.max(1) as usize,
            "--reps" => a.reps = small(num(&value)?)?.max(1),
            "--kernel" => a.kernels = parse_kernels(&value)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AITBC_BENCH_PYTHON") {
        return p.into();
    }
    let venv = repo_root().join("target/venv-int8/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// onnxruntime's best Gop/s for one n x n product, or why there is none.
fn baseline(n: u32, threads: usize) -> Result<(f64, String), String> {
    let script = repo_root().join("scripts/int8_baseline.py");
    let out = Command::new(python())
        .arg(&script)
        .args(["--n", &n.to_string(), "--threads", &threads.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .ok_or("int8_baseline.py printed nothing")?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
    let gops = v["gops"].as_f64().ok_or(format!("no gops in {line}"))?;
    let ver = v["onnxruntime"].as_str().unwrap_or("?").to_string();
    Ok((gops, ver))
}

/// Measured int8 peak: `threads` threads of independent 512-bit `vpdpbusd`s, in Gop/s (two
/// operations per multiply-add), or `None` without AVX-512-VNNI.
fn vnni_peak(threads: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !Kernel::Avx512Vnni.available() {
            return None;
        }
        const ROUNDS: u64 = 10_000_000;
        // Best of 5 short runs: a busy neighbour only ever lowers a run's figure.
        let best = (0..5)
            .map(|_| {
                let t0 = Instant::now();
                let sink: i64 = std::thread::scope(|s| {
                    let hs: Vec<_> = (0..threads)
                        .map(|_| {
                            // SAFETY: AVX-512-VNNI is available (checked above).
                            s.spawn(|| unsafe { peak::dpbusd_loop(ROUNDS) })
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
                });
                std::hint::black_box(sink);
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        // Each round: 16 vpdpbusd x 64 multiply-adds x 2 operations.
        Some((threads as u64 * ROUNDS * 16 * 64 * 2) as f64 / best / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = threads;
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// `rounds` x 16 independent `vpdpbusd zmm`; returns a value that depends on all of them.
    ///
    /// # Safety
    ///
    /// The CPU must have AVX-512F and AVX-512-VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpbusd_loop(rounds: u64) -> i64 {
        let a = std::hint::black_box(_mm512_set1_epi32(0x0101_0101));
        let b = std::hint::black_box(_mm512_set1_epi32(0x0102_0304));
        let mut acc = [_mm512_setzero_si512(); 16];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_dpbusd_epi32(*x, a, b);
            }
        }
        acc.iter()
            .map(|x| i64::from(_mm512_reduce_add_epi32(*x)))
            .sum()
    }
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("torch_bench_cpu: {e}");
            return ExitCode::from(2);
        }
    };
    let peak = vnni_peak(a.threads);
    match peak {
        Some(p) => println!(
            "measured vpdpbusd zmm peak, {} threads: {p:.0} Gop/s",
            a.threads
        ),
        None => println!("no AVX-512-VNNI: no measured peak"),
    }
    for &n in &a.sizes {
        let iters = a
            .iters
            .unwrap_or_else(|| (2e11 / (2.0 * f64::from(n).powi(3))).ceil().max(1.0) as u32);
        let p = TorchBenchParams {
            n,
            iters,
            seed: a.seed,
        };
        let ops = p.flops() as f64;
        for &k in &a.kernels {
            let (mut best_job, mut best_prod, mut best_ort) = (0f64, 0f64, 0f64);
            let mut ort_ver = String::new();
            for rep in 1..=a.reps {
                let run = match run_cpu_with(k, &p, a.threads) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("torch_bench_cpu: n={n} {}: {e}", k.name());
                        return ExitCode::FAILURE;
                    }
                };
                let job = ops / run.elapsed.as_secs_f64() / 1e9;
                let prod = match CpuChain::with_kernel(k, &p, a.threads) {
                    Ok(mut c) => {
                        let t0 = Instant::now();
                        if let Err(e) = c.run(iters) {
                            eprintln!("torch_bench_cpu: {e}");
                            return ExitCode::FAILURE;
                        }
                        ops / t0.elapsed().as_secs_f64() / 1e9
                    }
                    Err(e) => {
                        eprintln!("torch_bench_cpu: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                best_job = best_job.max(job);
                best_prod = best_prod.max(prod);
                let ort = if a.baseline {
                    match baseline(n, a.threads) {
                        Ok((g, v)) => {
                            ort_ver = v;
                            best_ort = best_ort.max(g);
                            format!("{g:7.0}")
                        }
                        Err(e) => {
                            eprintln!("torch_bench_cpu: no onnxruntime baseline: {e}");
                            "      -".into()
                        }
                    }
                } else {
                    "      -".into()
                };
                println!(
                    "n={n} iters={iters} {:<11} threads={} rep {rep}: job {job:7.0} Gop/s, \
                     products {prod:7.0} Gop/s; onnxruntime {ort} Gop/s",
                    k.name(),
                    a.threads
                );
            }
            let ratio = |x: f64| {
                if best_ort > 0.0 {
                    format!("{:.3}", x / best_ort)
                } else {
                    "-".into()
                }
            };
            let of_peak = |x: f64| match peak {
                Some(p) if x > 0.0 => format!("{:.0}%", 100.0 * x / p),
                _ => "-".into(),
            };
            println!(
                "best n={n} {}: job {best_job:.0} Gop/s ({} of onnxruntime{}, {} of peak), \
                 products {best_prod:.0} Gop/s ({}, {} of peak), onnxruntime {best_ort:.0} Gop/s ({} of peak)",
                k.name(),
                ratio(best_job),
                if ort_ver.is_empty() { String::new() } else { format!(" {ort_ver}") },
                of_peak(best_job),
                ratio(best_prod),
                of_peak(best_prod),
                of_peak(best_ort),
            );
        }
    }
    ExitCode::SUCCESS
}

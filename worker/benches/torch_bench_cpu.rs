//! Benchmark: the worker's CPU torch_bench chain against numpy doing the same chain, in the
//! same run, on the same cores. Not a test: it prints figures and checks only that both sides
//! computed the same chain (identical inputs, output norms within tolerance).
//!
//! ```text
//! cargo bench -p aitbc-worker --bench torch_bench_cpu -- [--n 1024] [--iters 100] [--seed 0]
//!                                                        [--threads all] [--reps 3]
//! ```
//!
//! numpy runs `scripts/numpy_chain.py` with `$AITBC_BENCH_PYTHON`, else `.venv-bench/bin/python`
//! in the repository root when it exists, else `python3`; OPENBLAS_CORETYPE and
//! OPENBLAS_L2_SIZE are removed from its environment so OpenBLAS picks its own kernels, and
//! OPENBLAS_NUM_THREADS / OMP_NUM_THREADS are set to `--threads` (default: every core). Each
//! repetition runs Rust then numpy; the best wall time of each side is reported. Only the
//! products (with the rescale rule) are timed on either side, not input generation.
//! This program must never be used to decide a job's result.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use aitbc_protocol::workload::TorchBenchParams;
use aitbc_worker::torch_bench::{hash_matrix, CpuChain};
use sha2::{Digest, Sha256};

struct Args {
    n: u32,
    iters: u32,
    seed: u64,
    threads: usize,
    reps: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        n: 1024,
        iters: 100,
        seed: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--bench" {
            continue; // cargo bench passes this to every bench target
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |what: &str| -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what} {value:?}: expected a whole number"))
        };
        match flag.as_str() {
            "--n" => a.n = num("--n")?.try_into().map_err(|_| "--n too large")?,
            "--iters" => {
                a.iters = num("--iters")?
                    .try_into()
                    .map_err(|_| "--iters too large")?
            }
            "--seed" => a.seed = num("--seed")?,
            "--threads" => a.threads = num("--threads")? as usize,
            "--reps" => a.reps = num("--reps")?.max(1) as u32,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// What numpy_chain.py printed, the fields the comparison needs.
struct NumpyRun {
    wall_ms: f64,
    inputs_sha: String,
    output_sha: String,
    fro: f64,
    numpy: String,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the worker crate lives inside the repository")
        .to_path_buf()
}

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AITBC_BENCH_PYTHON") {
        return p.into();
    }
    let venv = repo_root().join(".venv-bench/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn numpy_run(a: &Args) -> Result<NumpyRun, String> {
    let py = python();
    let script = repo_root().join("scripts/numpy_chain.py");
    let out = Command::new(&py)
        .arg(&script)
        .args(["--n", &a.n.to_string(), "--iters", &a.iters.to_string()])
        .args(["--seed", &a.seed.to_string()])
        .env("OPENBLAS_NUM_THREADS", a.threads.to_string())
        .env("OMP_NUM_THREADS", a.threads.to_string())
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .output()
        .map_err(|e| format!("running {}: {e}", py.display()))?;
    if out.status.code() == Some(3) {
        return Err(format!(
            "{} has no numpy. The comparison needs it:\n    python3 -m venv .venv-bench && \
             .venv-bench/bin/pip install numpy\n(in the repository root), or point \
             AITBC_BENCH_PYTHON at a python with numpy.",
            py.display()
        ));
    }
    if !out.status.success() {
        return Err(format!(
            "{} {} failed ({}): {}",
            py.display(),
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("numpy_chain.py printed something that is not JSON: {e}"))?;
    let s = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or(format!("no {k:?} in {v}"))
    };
    let f = |k: &str| v[k].as_f64().ok_or(format!("no {k:?} in {v}"));
    Ok(NumpyRun {
        wall_ms: f("wall_ms")?,
        inputs_sha: s("inputs_sha")?,
        output_sha: s("output_sha")?,
        fro: f("fro")?,
        numpy: s("numpy")?,
    })
}

struct RustRun {
    wall_ms: f64,
    inputs_sha: String,
    output_sha: String,
    fro: f64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn rust_run(a: &Args) -> Result<RustRun, String> {
    let p = TorchBenchParams {
        n: a.n,
        iters: a.iters,
        seed: a.seed,
    };
    let mut chain = CpuChain::new(&p, a.threads).map_err(|e| e.to_string())?;
    let mut h = Sha256::new();
    for m in [chain.output(), chain.w()] {
        for v in m {
            h.update(v.to_le_bytes());
        }
    }
    let inputs_sha = hex(&h.finalize());
    // Warm-up product on a throw-away chain: thread start and gemm's packing buffers, not timed
    // (numpy_chain.py does the same).
    CpuChain::new(&TorchBenchParams { iters: 1, ..p }, a.threads)
        .and_then(|mut c| c.run(1))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    chain.run(a.iters).map_err(|e| e.to_string())?;
    let wall_ms = start.elapsed().as_secs_f64() * 1e3;
    let x = chain.output();
    let fro = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
    Ok(RustRun {
        wall_ms,
        inputs_sha,
        output_sha: hex(&hash_matrix(x)),
        fro,
    })
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("torch_bench_cpu: {e}");
            return ExitCode::from(2);
        }
    };
    let gflops = |ms: f64| 2.0 * f64::from(a.n).powi(3) * f64::from(a.iters) / ms / 1e6;
    println!(
        "torch_bench n={} iters={} seed={}: Rust on {} threads vs numpy, best of {}",
        a.n, a.iters, a.seed, a.threads, a.reps
    );
    let (mut best_rust, mut best_np): (Option<RustRun>, Option<NumpyRun>) = (None, None);
    for rep in 1..=a.reps {
        let r = match rust_run(&a) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("torch_bench_cpu: the Rust chain failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        print!(
            "  rep {rep}: rust {:8.1} ms {:7.1} GFLOP/s",
            r.wall_ms,
            gflops(r.wall_ms)
        );
        if best_rust.as_ref().is_none_or(|b| r.wall_ms < b.wall_ms) {
            best_rust = Some(r);
        }
        let np = match numpy_run(&a) {
            Ok(np) => np,
            Err(e) => {
                println!();
                eprintln!("torch_bench_cpu: {e}");
                return ExitCode::from(2);
            }
        };
        println!(
            "   numpy {:8.1} ms {:7.1} GFLOP/s",
            np.wall_ms,
            gflops(np.wall_ms)
        );
        if best_np.as_ref().is_none_or(|b| np.wall_ms < b.wall_ms) {
            best_np = Some(np);
        }
    }
    let (Some(r), Some(np)) = (best_rust, best_np) else {
        unreachable!("reps >= 1 fills both");
    };
    let (gr, gn) = (gflops(r.wall_ms), gflops(np.wall_ms));
    println!("rust   (gemm)  {gr:8.1} GFLOP/s  {:9.1} ms", r.wall_ms);
    println!(
        "numpy {:<8} {gn:8.1} GFLOP/s  {:9.1} ms",
        np.numpy, np.wall_ms
    );
    println!("ratio rust/numpy  {:.3}  (target >= 0.9)", gr / gn);
    let same_inputs = r.inputs_sha == np.inputs_sha;
    let fro_rel = (r.fro - np.fro).abs() / np.fro;
    println!(
        "same inputs: {same_inputs}; ||X_iters||_F rust {:.6e} numpy {:.6e} (rel diff {fro_rel:.1e}); \
         output sha {} ({}...)",
        r.fro,
        np.fro,
        if r.output_sha == np.output_sha { "identical" } else { "differs (BLAS summation order)" },
        &r.output_sha[..16]
    );
    if !same_inputs || fro_rel > 1e-3 {
        eprintln!("torch_bench_cpu: Rust and numpy did not compute the same chain");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

//! `aitbc-miner`: the miner's command line, and nothing more.
//!
//! It parses arguments and hands over to the libraries: `run` is the daemon
//! (`aitbc_supervisor::run`), `dev` a whole local network in one process (see `dev.rs`),
//! `bench` one workload through the real worker path, `doctor` the pre-flight report
//! (`aitbc_supervisor::doctor`), `status` what a running daemon is doing, asked on its status
//! socket (see `status.rs`), and the hidden `worker` subcommand is the per-job worker process
//! the supervisor starts.
//!
//! `run` starts in a fixed order: config (as root it may be a 0600 root file) → logging (the
//! log file is opened while still root) → `privilege::set_up` (as root: run-as user, its
//! directories, the cgroup subtree handed to it, the drop; then `protect_self`) → only then
//! threads (the async runtime) and the supervisor.
//!
//! Invariants: the `worker` path is taken before anything else happens, so a worker process
//! never starts an async runtime, never reads a config file and never opens a socket; `run`
//! never starts a thread before privileges are dropped (credentials are per thread).

mod bench;
mod dev;
mod status;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aitbc-miner",
    version,
    about = "A hardened compute miner for the AITBC network"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the miner daemon: heartbeat, fetch jobs, run them in workers, submit proofs.
    Run {
        /// Configuration file (default /etc/aitbc/miner.conf).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also append logs to this file (overrides LOG_FILE).
        #[arg(long)]
        log_file: Option<PathBuf>,
    },
    /// Run a Coordinator, a miner with 2 slots and a client in one process, on 127.0.0.1,
    /// with SQLite in a temporary directory; print a summary when the jobs are done.
    Dev(dev::DevArgs),
    /// Run one workload on this machine through the real worker path (no Coordinator).
    Bench(bench::BenchArgs),
    /// Print a fully commented configuration file with every key and its default.
    ExampleConfig,
    /// Check everything the miner needs before its first job, one line per check with its
    /// fix: config, user, directories, Coordinator and key (one real heartbeat), clock,
    /// confinement, GPU, and a known-answer job through a real confined worker; exit 1 when a
    /// check fails.
    Doctor {
        /// Check this configuration file (readable, valid, mode, owner) and use its settings
        /// (default: /etc/aitbc/miner.conf, or the environment alone when it is absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Skip the live self-test (real confined workers running a known-answer job).
        #[arg(long)]
        no_self_test: bool,
        /// Do not contact the Coordinator (no heartbeat, no clock comparison).
        #[arg(long)]
        offline: bool,
    },
    /// Show what the running daemon is doing (slots, jobs, heartbeat, spool, balance), asked on
    /// its local status socket; exit 1 when no daemon answers.
    Status(status::StatusArgs),
    /// The per-job worker process (started by the supervisor; not for people).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("worker")) {
        return aitbc_worker::worker_main(std::env::args_os());
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config, log_file } => run(config, log_file),
        Cmd::Dev(args) => dev::main(args),
        Cmd::Bench(args) => bench::main(args),
        Cmd::Status(args) => status::main(args),
        Cmd::Doctor {
            config,
            no_self_test,
            offline,
        } => Ok(doctor(config, !no_self_test, !offline)),
        Cmd::ExampleConfig => {
            print!("{}", aitbc_supervisor::config::example());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Worker => return aitbc_worker::worker_main(std::env::args_os()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aitbc-miner: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

fn run(config: Option<PathBuf>, log_file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use aitbc_supervisor::{config, logging};
    let (mut cfg, warnings) = config::load(config.as_deref())?;
    if log_file.is_some() {
        cfg.log_file = log_file;
    }
    let _guard = logging::init(&cfg.log_level, cfg.log_file.as_deref())?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Still one thread: root-only set-up, then the drop (see the module doc for the order).
    let setup = aitbc_supervisor::privilege::set_up(&cfg)?;
    let mut worker = aitbc_supervisor::WorkerCommand::for_config(&cfg)?;
    worker.subtree = setup.subtree.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(async {
        // Install the handlers before the supervisor logs or does anything else: a SIGTERM
        // that arrived before them would take the default action and skip the drain.
        let shutdown = shutdown_signal()?;
        anyhow::Ok(aitbc_supervisor::run(cfg, worker, None, shutdown).await?)
    })?;
    tracing::info!(
        jobs_done = summary.jobs_done,
        jobs_failed = summary.jobs_failed,
        "miner stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// How long doctor's heartbeat may take, connecting included: a Coordinator that needs longer
/// to answer one heartbeat is itself worth a FAIL line.
const DOCTOR_COORDINATOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long doctor's known-answer job may take once handed over (it takes milliseconds).
const DOCTOR_JOB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// `aitbc-miner doctor`: prints the report; exit 1 when any line is a FAIL.
fn doctor(config: Option<PathBuf>, self_test: bool, coordinator: bool) -> ExitCode {
    use aitbc_supervisor::doctor;
    // Like `run`: the named file, else the default file, else the environment alone.
    let facts = doctor::gather(&doctor::Options {
        config,
        self_test,
        self_test_timeout: aitbc_supervisor::runtime::WORKER_START_TIMEOUT,
        self_test_job_timeout: DOCTOR_JOB_TIMEOUT,
        coordinator,
        coordinator_timeout: DOCTOR_COORDINATOR_TIMEOUT,
    });
    let lines = doctor::checks(&facts);
    for line in &lines {
        println!("{line}");
    }
    if doctor::any_failed(&lines) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Installs SIGTERM (systemd stop) and SIGINT (Ctrl-C) handlers now, and returns a future
/// that resolves when either arrives.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    })
}

/// An error and its causes on one line, each cause once: the library errors already name
/// their source in their own message (`cannot read config file X: Permission denied`), so a
/// cause whose text ends the line so far is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

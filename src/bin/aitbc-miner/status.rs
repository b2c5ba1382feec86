//! `aitbc-miner status`: asks the running daemon what it is doing, over its local status socket
//! (`STATUS_SOCKET`), and prints the human summary, the raw JSON snapshot (`--json`) or the
//! Prometheus metrics (`--metrics`).
//!
//! The socket is `--socket`, else `STATUS_SOCKET` as the daemon would read it (environment,
//! then `--config` or `/etc/aitbc/miner.conf` when readable), else the default. Exit 0 with the
//! answer, 1 when no daemon answers there (the message names the socket), 2 for a config file
//! named with `--config` that cannot be read.
//!
//! This command must never start, stop or change the daemon, and never need more of the config
//! than `STATUS_SOCKET` (an operator without the API key's file can still ask with `--socket`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use aitbc_supervisor::config::{self, HostFacts};
use aitbc_supervisor::status::{self, Request, Snapshot};
use anyhow::Context;
use clap::Args;

/// How long the daemon has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct StatusArgs {
    /// The daemon's status socket (default: STATUS_SOCKET from the config, else
    /// /run/aitbc-miner/status.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Read STATUS_SOCKET from this configuration file (default /etc/aitbc/miner.conf when
    /// readable).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the daemon's JSON snapshot instead of the summary.
    #[arg(long, conflicts_with = "metrics")]
    json: bool,
    /// Print the Prometheus metrics (text format) instead of the summary.
    #[arg(long)]
    metrics: bool,
}

pub fn main(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let socket = match &args.socket {
        Some(path) => path.clone(),
        None => match socket_from_config(args.config.as_deref())? {
            Some(path) => path,
            None => {
                eprintln!(
                    "aitbc-miner status: STATUS_SOCKET is empty in the config, so the daemon \
                     serves no status socket; set it (e.g. {}) and restart the miner, or pass \
                     --socket PATH",
                    config::DEFAULT_STATUS_SOCKET
                );
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    let request = if args.metrics {
        Request::Metrics
    } else {
        Request::Status
    };
    let answer = match status::query(&socket, request, TIMEOUT) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aitbc-miner status: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json || args.metrics {
        print!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let snapshot: Snapshot = serde_json::from_str(&answer).with_context(|| {
        format!(
            "the miner at {} answered something that is not a status snapshot",
            socket.display()
        )
    })?;
    print!("{}", status::render_summary(&snapshot));
    Ok(ExitCode::SUCCESS)
}

/// `STATUS_SOCKET` as the daemon reads it: the environment, then the named file (which must be
/// readable) or the default file (skipped when it cannot be read, e.g. as a user without
/// access to the 0600 file), then the default. `None`: the socket is disabled.
fn socket_from_config(path: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let default = Path::new(config::DEFAULT_PATH);
    let raw = match config::read_file(path, default) {
        Ok((raw, _warnings)) => raw,
        Err(e) if path.is_some() => return Err(e.into()),
        Err(_) => config::RawConfig::without_file(),
    };
    let env = |key: &str| std::env::var(key).ok();
    Ok(config::status_socket(&raw, &env, &HostFacts::detect())?)
}

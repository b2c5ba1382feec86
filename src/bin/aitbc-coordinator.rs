//! `aitbc-coordinator`: the reference Coordinator's command line, and nothing more.
//!
//! `serve` runs API v1 over a SQLite file (`aitbc_coordinator::Coordinator::serve`), `keys add`
//! creates an API key in that file, and `jobs`, `wallet` and `admin` are small HTTP clients
//! for people. All behaviour lives in the `aitbc-coordinator` library; this file must never
//! print a key except the one `keys add` was asked to create, and never hold business logic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aitbc_coordinator::{Coordinator, CoordinatorConfig, Scope, VerifyConfig};
use aitbc_protocol::api::{JobLimits, SubmitJob};
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aitbc-coordinator",
    version,
    about = "The reference AITBC Coordinator (API v1)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve API v1 over HTTP until SIGTERM or SIGINT.
    Serve(Serve),
    /// Manage API keys in the database.
    #[command(subcommand)]
    Keys(Keys),
    /// Submit and inspect jobs (client key).
    #[command(subcommand)]
    Jobs(Jobs),
    /// Read wallet balances and ledgers.
    #[command(subcommand)]
    Wallet(Wallet),
    /// Operator views (admin key).
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Args)]
struct Serve {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// SQLite database file (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Extra time a lease gets beyond the job's max_runtime_s, in seconds (decimals allowed).
    #[arg(long, default_value_t = 30.0)]
    lease_margin_secs: f64,
    /// Attempts a job gets before it fails with ATTEMPTS_EXHAUSTED.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// How often expired leases are requeued, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    sweep_ms: u64,
    /// Longest long-poll a miner may ask for, in seconds.
    #[arg(long, default_value_t = 30.0)]
    max_wait_secs: f64,
    /// Requests per second per key (burst twice this).
    #[arg(long, default_value_t = 1000)]
    rate_limit_per_sec: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Verify proofs before their credit settles (on), or credit every proof at once,
    /// unchecked (off: local experiments only; the Coordinator warns at start).
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    verify: String,
    /// Passed audits in a row before a (miner key, workload) pair is trusted; until then every
    /// proof is audited.
    #[arg(long, default_value_t = 10)]
    verify_trust_after: u32,
    /// The lowest audit probability a trusted pair falls to (0 < p <= 1).
    #[arg(long, default_value_t = 0.05)]
    verify_floor: f64,
    /// Rows an audit opens.
    #[arg(long, default_value_t = 8)]
    verify_rows: u32,
    /// How long a credit not chosen for audit stays pending, in seconds (decimals allowed).
    #[arg(long, default_value_t = 600.0)]
    verify_hold_secs: f64,
    /// How long a miner has to answer an audit, in seconds (decimals allowed).
    #[arg(long, default_value_t = 120.0)]
    verify_answer_secs: f64,
    /// Failed audits after which a miner key is suspended from `next`.
    #[arg(long, default_value_t = 3)]
    verify_strikes: u32,
    /// Where job outputs uploaded by miners are kept (default: `<db>.artifacts`).
    #[arg(long)]
    artifact_dir: Option<PathBuf>,
    /// Largest job output a miner may upload, in MiB.
    #[arg(long, default_value_t = 64)]
    artifact_max_mb: u64,
}

#[derive(Subcommand)]
enum Keys {
    /// Create a key; prints only the key on stdout (it is stored as a hash and shown once).
    Add {
        #[arg(long)]
        db: PathBuf,
        /// miner, client or admin.
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Args, Clone)]
struct Remote {
    /// Coordinator base URL.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key (or set AITBC_KEY).
    #[arg(long, global = true, env = "AITBC_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Subcommand)]
enum Jobs {
    /// Submit a job; prints its JobView.
    Submit {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        workload: String,
        /// Job parameters as a JSON object.
        #[arg(long, default_value = "{}")]
        params: String,
        #[arg(long)]
        reward: u64,
        #[arg(long)]
        ram_mb: Option<u64>,
        #[arg(long)]
        vram_mb: Option<u64>,
        #[arg(long)]
        cpu_time_s: Option<u64>,
        #[arg(long)]
        max_runtime_s: Option<u64>,
    },
    /// Show one job.
    Show {
        #[command(flatten)]
        remote: Remote,
        id: String,
    },
    /// Download a completed job's output to a file, checked against its proof's output_sha.
    Result {
        #[command(flatten)]
        remote: Remote,
        id: String,
        /// Where to write it (written beside as `FILE.part`, renamed once its SHA-256 holds).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum Wallet {
    /// A wallet's balance (public; with a miner key and no --wallet, that key's wallet).
    Balance {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        wallet: Option<String>,
    },
    /// A wallet's credits, newest first.
    Ledger {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        wallet: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum Admin {
    /// List jobs, newest first.
    Jobs {
        #[command(flatten)]
        remote: Remote,
        /// queued, assigned, completed or failed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List miners, most recently seen first, with their GPUs, GPU health and standing.
    Miners {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Lift the suspension of the key that owns MINER_ID and clear its strikes.
    Reinstate {
        #[command(flatten)]
        remote: Remote,
        miner_id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aitbc-coordinator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(s) => serve(s),
        Command::Keys(Keys::Add { db, scope, name }) => {
            let scope: Scope = scope.parse().context("--scope")?;
            let c = Coordinator::open(&db, CoordinatorConfig::default())
                .with_context(|| format!("opening {}", db.display()))?;
            println!("{}", c.add_key(scope, &name)?);
            Ok(())
        }
        Command::Jobs(Jobs::Submit {
            remote,
            workload,
            params,
            reward,
            ram_mb,
            vram_mb,
            cpu_time_s,
            max_runtime_s,
        }) => {
            let params: serde_json::Value = serde_json::from_str(&params)
                .with_context(|| format!("--params {params:?} is not JSON"))?;
            let d = JobLimits::default();
            let body = SubmitJob {
                workload,
                params,
                limits: JobLimits {
                    ram_mb: ram_mb.unwrap_or(d.ram_mb),
                    vram_mb: vram_mb.unwrap_or(d.vram_mb),
                    cpu_time_s: cpu_time_s.unwrap_or(d.cpu_time_s),
                    max_runtime_s: max_runtime_s.unwrap_or(d.max_runtime_s),
                },
                reward,
            };
            http(
                &remote,
                reqwest::Method::POST,
                "/v1/client/jobs",
                &[],
                Some(&body),
            )
        }
        Command::Jobs(Jobs::Show { remote, id }) => {
            let path = format!("/v1/client/jobs/{}", encode(&id));
            http::<()>(&remote, reqwest::Method::GET, &path, &[], None)
        }
        Command::Jobs(Jobs::Result { remote, id, out }) => download(&remote, &id, &out),
        Command::Wallet(Wallet::Balance { remote, wallet }) => {
            let query: Vec<(&str, String)> = wallet.into_iter().map(|w| ("wallet", w)).collect();
            http::<()>(
                &remote,
                reqwest::Method::GET,
                "/v1/wallet/balance",
                &query,
                None,
            )
        }
        Command::Wallet(Wallet::Ledger {
            remote,
            wallet,
            limit,
        }) => {
            let query = [("wallet", wallet), ("limit", limit.to_string())];
            http::<()>(
                &remote,
                reqwest::Method::GET,
                "/v1/wallet/ledger",
                &query,
                None,
            )
        }
        Command::Admin(Admin::Jobs {
            remote,
            state,
            limit,
        }) => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(state.map(|s| ("state", s)));
            http::<()>(
                &remote,
                reqwest::Method::GET,
                "/v1/admin/jobs",
                &query,
                None,
            )
        }
        Command::Admin(Admin::Miners { remote, limit }) => http::<()>(
            &remote,
            reqwest::Method::GET,
            "/v1/admin/miners",
            &[("limit", limit.to_string())],
            None,
        ),
        Command::Admin(Admin::Reinstate { remote, miner_id }) => {
            let path = format!("/v1/admin/miners/{}/reinstate", encode(&miner_id));
            http(
                &remote,
                reqwest::Method::POST,
                &path,
                &[],
                Some(&serde_json::json!({})),
            )
        }
    }
}

fn secs(flag: &str, v: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("{flag} {v}: expected a non-negative number of seconds"))
}

fn serve(s: Serve) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    // Every connection holds a file descriptor: use all the hard limit allows.
    match aitbc_coordinator::listen::raise_nofile_limit() {
        Ok(limit) => tracing::info!(
            "file descriptors: RLIMIT_NOFILE is {limit} (the soft limit raised to the hard one)"
        ),
        Err(e) => tracing::warn!("file descriptors: cannot raise RLIMIT_NOFILE: {e}"),
    }
    if s.max_attempts == 0 {
        bail!("--max-attempts 0: a job needs at least one attempt");
    }
    if s.sweep_ms == 0 {
        bail!("--sweep-ms 0: expected at least 1 millisecond");
    }
    if !(s.verify_floor > 0.0 && s.verify_floor <= 1.0) {
        bail!(
            "--verify-floor {}: expected a probability above 0 and at most 1",
            s.verify_floor
        );
    }
    if s.verify_rows == 0 || s.verify_strikes == 0 {
        bail!("--verify-rows and --verify-strikes: expected at least 1");
    }
    let verify = VerifyConfig {
        enabled: s.verify == "on",
        trust_after: s.verify_trust_after,
        floor: s.verify_floor,
        rows: s.verify_rows,
        hold: secs("--verify-hold-secs", s.verify_hold_secs)?,
        answer_within: secs("--verify-answer-secs", s.verify_answer_secs)?,
        strikes: s.verify_strikes,
        ..VerifyConfig::default()
    };
    if !verify.enabled {
        eprintln!(
            "WARNING: --verify off: every proof is credited and settled at once, unchecked. \
             Anyone with a miner key earns without computing. Use this for local experiments only."
        );
    }
    let config = CoordinatorConfig {
        lease_margin: secs("--lease-margin-secs", s.lease_margin_secs)?,
        max_attempts: s.max_attempts,
        sweep_interval: Duration::from_millis(s.sweep_ms),
        max_wait: secs("--max-wait-secs", s.max_wait_secs)?,
        rate_limit_per_sec: s.rate_limit_per_sec.max(1),
        max_body_bytes: s.max_body_bytes,
        verify,
        artifact_dir: s.artifact_dir.clone(),
        artifact_max_bytes: s.artifact_max_mb.saturating_mul(1 << 20),
    };
    let coordinator = Coordinator::open(&s.db, config)
        .with_context(|| format!("opening database {}", s.db.display()))?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(s.listen)
            .await
            .with_context(|| format!("binding {}", s.listen))?;
        let addr = listener.local_addr()?;
        eprintln!("listening on {addr}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("shutting down");
        };
        coordinator.serve(listener, shutdown).await?;
        Ok(())
    })
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One request; prints the JSON answer on stdout, or the error body on stderr and fails.
/// `jobs result`: the job's `result.output_sha` from its view, then the artifact streamed into
/// `OUT.part` and hashed on the way; renamed to `OUT` only when the digests agree.
fn download(remote: &Remote, id: &str, out: &std::path::Path) -> anyhow::Result<()> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let base = format!(
        "{}/v1/client/jobs/{}",
        remote.url.trim_end_matches('/'),
        encode(id)
    );
    rt.block_on(async {
        let client = reqwest::Client::new();
        let get = |url: String| {
            let req = client.get(url);
            match &remote.key {
                Some(key) => req.bearer_auth(key),
                None => req,
            }
        };
        let answer = |resp: reqwest::Response| async move {
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let text = resp.text().await.unwrap_or_default();
            bail!("{status}: {}", text.trim())
        };
        let view = answer(
            get(base.clone())
                .send()
                .await
                .context("requesting the job")?,
        )
        .await?;
        let view: aitbc_protocol::api::JobView = view.json().await.context("reading the job")?;
        let want = view.result.map(|r| r.output_sha).with_context(|| {
            format!(
                "job {id} has no accepted result (it is {})",
                view.state.as_str()
            )
        })?;
        let url = format!("{base}/artifact");
        let mut resp = answer(
            get(url.clone())
                .send()
                .await
                .context("requesting the artifact")?,
        )
        .await?;
        let mut part = out.as_os_str().to_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        let mut file =
            std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .with_context(|| format!("reading {url}"))?
        {
            hasher.update(&chunk);
            len += chunk.len() as u64;
            file.write_all(&chunk)
                .with_context(|| format!("writing {}", part.display()))?;
        }
        file.sync_all()?;
        let got = aitbc_protocol::hex::encode(&hasher.finalize());
        if got != want {
            let _ = std::fs::remove_file(&part);
            bail!("the {len} bytes served hash to {got}, not to the proof's output_sha {want}");
        }
        std::fs::rename(&part, out).with_context(|| format!("renaming to {}", out.display()))?;
        eprintln!(
            "{len} bytes, sha256 {got} (the proof's output_sha), written to {}",
            out.display()
        );
        Ok(())
    })
}

fn http<T: serde::Serialize>(
    remote: &Remote,
    method: reqwest::Method,
    path: &str,
    query: &[(&str, String)],
    body: Option<&T>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let url = format!("{}{path}", remote.url.trim_end_matches('/'));
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(method, &url).query(query);
        if let Some(key) = &remote.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        let pretty = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or(text);
        if status.is_success() {
            println!("{pretty}");
            Ok(())
        } else {
            eprintln!("{pretty}");
            bail!("{url} answered {status}")
        }
    })
}

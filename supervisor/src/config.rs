//! The miner's configuration: the environment-style file `/etc/aitbc/miner.conf` (guide
//! section 3), environment overrides, defaults, and validation into one typed [`Config`].
//!
//! Every key is declared once, in the table [`DEFS`] (`config/keys.rs`): its name, what an
//! unset key means and its documentation. [`KEYS`], the defaults and [`example`]
//! (`aitbc-miner example-config`) come from it, and a test checks README's key table against it.
//!
//! Three steps, only the last touches the system:
//! - [`parse`] turns the file's text into a [`RawConfig`] (key → value and line) plus
//!   [`Warning`]s; it knows the shell-like syntax (quotes, comments, `export `) and nothing
//!   about what a key means;
//! - [`resolve`] applies environment overrides (a variable named like a key wins over the file),
//!   fills defaults from [`DEFS`] and [`HostFacts`] and checks every value;
//! - [`load`] reads the file, the process environment and the host, and calls the two.
//!
//! This module must never run a shell or any other command (`$(hostname)` is answered from
//! `gethostname(2)`, every other command substitution is refused), and must never log or print
//! the API key's value, nor put it into an error, a warning or `Debug` output.

use crate::Error;
use protocol::args::{CpuKernel, FsMode};
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod keys;
pub use keys::{example, KeyDef, Unset, DEFS};

/// Where the miner looks for its config file when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/aitbc/miner.conf";

/// Every key the miner understands, in [`DEFS`]' order: the names [`parse`] knows and
/// [`load`] reads from the environment.
pub const KEYS: &[&str] = &keys::NAMES;

/// The one secret key; its value is never shown.
const SECRET_KEY: &str = "API_KEY";

/// The longest duration any `*_SECS` key accepts (one year), so arithmetic on it cannot overflow.
const MAX_SECS: u64 = 365 * 24 * 3600;

/// The largest `MAX_JOB_DISK_MB` (1 PiB in MiB), so the byte count for RLIMIT_FSIZE cannot
/// overflow.
const MAX_DISK_MB: u64 = 1 << 30;

/// The miner's settings after parsing, environment overrides, defaults and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file the settings came from, if any.
    pub source: Option<PathBuf>,
    /// `COORD_URL`: `http://` or `https://` base URL, trailing `/` removed.
    pub coord_url: String,
    /// `WALLET_ADDR`: where the Coordinator credits this miner's work.
    pub wallet_addr: String,
    /// `API_KEY`: the bearer token; prints as `<redacted>`.
    pub api_key: ApiKey,
    /// `MINER_ID` after `$(hostname)` expansion: `[A-Za-z0-9._-]`, 1 to 128 characters.
    pub miner_id: String,
    /// `WORK_DIR` (default `/tmp/aitbc-work`): per-job scratch directories.
    pub work_dir: PathBuf,
    /// `STATE_DIR` (default `/var/lib/aitbc-miner`): the proof spool lives in `state_dir/spool`.
    pub state_dir: PathBuf,
    /// `AUDIT_SPOOL_MB` (default 256, 1 to 2^20): the most the audit spool may hold; at or past
    /// it no new job is fetched.
    pub audit_spool_mb: u64,
    /// `HEARTBEAT_SECS` (default 20, > 0, decimals allowed).
    pub heartbeat: Duration,
    /// `JOB_POLL_SECS` (default 3, > 0): the least pause between two empty polls when the
    /// Coordinator answers 204 at once.
    pub job_poll: Duration,
    /// `POLL_WAIT_SECS` (default 25): the long-poll `wait=` sent with `GET /v1/miner/next`;
    /// zero disables long-polling.
    pub poll_wait: Duration,
    /// `MAX_CONCURRENCY` (default 1, 1 to 64): job slots.
    pub max_concurrency: u32,
    /// `ACCEL_MODE` (default `auto`).
    pub accel_mode: AccelMode,
    /// `LOG_FILE` (default none: stderr only); appended to, never truncated.
    pub log_file: Option<PathBuf>,
    /// `LOG_LEVEL` (default `info`): a tracing `EnvFilter` directive.
    pub log_level: String,
    /// `BACKOFF_MIN_SECS` (default 0.5, > 0): first retry pause after a Coordinator error.
    pub backoff_min: Duration,
    /// `BACKOFF_MAX_SECS` (default 60, ≥ `BACKOFF_MIN_SECS`): the longest retry pause.
    pub backoff_max: Duration,
    /// `DRAIN_GRACE_SECS` (default 30): how long running jobs may finish after SIGTERM.
    pub drain_grace: Duration,
    /// The operator's maxima for one job (`MAX_JOB_*`).
    pub job_limits_max: MaxLimits,
    /// `THREADS_PER_JOB` (default: available cores / `MAX_CONCURRENCY`, at least 1).
    pub threads_per_job: u32,
    /// `WORKER_EXE` (default none: the supervisor re-executes its own binary as
    /// `aitbc-miner worker`).
    pub worker_exe: Option<PathBuf>,
    /// `RUN_AS_USER` (default `aitbc-miner`): the unprivileged user a miner started as root
    /// drops to once its root-only set-up is done; workers a root supervisor starts switch to
    /// it too. Ignored when the miner does not start as root.
    pub run_as_user: String,
    /// `SANDBOX_FS` (default `auto`): how a worker confines its view of the filesystem.
    pub sandbox_fs: FsMode,
    /// `CPU_KERNEL` (default `auto`): the int8 kernel a CPU worker runs torch_bench's chain
    /// on: the fastest the CPU has, or exactly the one named (a worker whose CPU lacks it
    /// refuses to start).
    pub cpu_kernel: CpuKernel,
    /// `GPU_POLL_MS` (default 500, 10 to 60000): how often the VRAM watch asks NVML for a GPU
    /// job's used device memory.
    pub gpu_poll: Duration,
    /// `GPU_MAX_TEMP_C` (default 90, 1 to 200): at or above this temperature the GPU counts as
    /// unhealthy and the miner takes no GPU jobs.
    pub gpu_max_temp_c: u32,
    /// `STATUS_SOCKET` (default [`DEFAULT_STATUS_SOCKET`]; empty: none): the Unix socket the
    /// daemon answers `aitbc-miner status` on. A directory that does not exist means a warning
    /// and no socket, never a failed start.
    pub status_socket: Option<PathBuf>,
    /// `METRICS_FILE` (default none): a Prometheus text file (node_exporter's textfile
    /// collector), rewritten atomically every `METRICS_INTERVAL_SECS`.
    pub metrics_file: Option<PathBuf>,
    /// `METRICS_INTERVAL_SECS` (default 15, > 0, decimals allowed).
    pub metrics_interval: Duration,
}

/// Where the daemon serves its status (`aitbc-miner status`) when `STATUS_SOCKET` is not set:
/// inside systemd's `RuntimeDirectory=aitbc-miner`.
pub const DEFAULT_STATUS_SOCKET: &str = "/run/aitbc-miner/status.sock";

/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The user [`Config::run_as_user`] defaults to.
pub const DEFAULT_RUN_AS_USER: &str = "aitbc-miner";

/// The most one job may use on this miner, whatever the job asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxLimits {
    /// `MAX_JOB_RAM_MB` (default: 80% of RAM / `MAX_CONCURRENCY`).
    pub ram_mb: u64,
    /// `MAX_JOB_RUNTIME_SECS` (default 3600).
    pub runtime_s: u64,
    /// `MAX_JOB_CPU_SECS` (default 3600 × cores).
    pub cpu_time_s: u64,
    /// `MAX_JOB_VRAM_MB` (default 0: no GPU jobs).
    pub vram_mb: u64,
    /// `MAX_JOB_DISK_MB` (default 1024, > 0): the largest file a job may write (the worker's
    /// RLIMIT_FSIZE, `--file-size-mb`).
    pub disk_mb: u64,
}

/// `ACCEL_MODE`: which accelerator the miner offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelMode {
    /// Use a GPU when one is usable, the CPU otherwise.
    Auto,
    /// Offer GPU work only.
    Gpu,
    /// Never touch a GPU.
    Cpu,
}

impl AccelMode {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            AccelMode::Auto => "auto",
            AccelMode::Gpu => "gpu",
            AccelMode::Cpu => "cpu",
        }
    }
}

impl fmt::Display for AccelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The Coordinator API key. `Debug` and `Display` print `<redacted>`; only [`ApiKey::expose`]
/// gives the value, for the `Authorization` header.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself. Call this only to build the `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What [`resolve`] needs to know about the machine: for `$(hostname)` and for the defaults
/// that scale with the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The host name as `gethostname(2)` reports it; empty when unknown.
    pub hostname: String,
    /// Usable CPU cores (affinity and cgroup quota respected), at least 1.
    pub cores: u32,
    /// Total RAM in MiB; 0 when unknown (then `MAX_JOB_RAM_MB` must be set).
    pub ram_mb: u64,
}

impl HostFacts {
    /// Reads the host name, the usable cores and the RAM of this machine. Never fails: an
    /// unknown fact becomes a value that [`resolve`] reports if it needs it.
    pub fn detect() -> HostFacts {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let ram_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| meminfo_total_mb(&text))
            .unwrap_or(0);
        HostFacts {
            hostname,
            cores,
            ram_mb,
        }
    }
}

/// `MemTotal` from `/proc/meminfo` text, in MiB.
pub fn meminfo_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(kib / 1024),
        Some(_) => None,
    }
}

/// Something the operator should fix, but that does not stop the miner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// `file:line`, or the file.
    pub location: String,
    /// What was noticed.
    pub kind: WarningKind,
}

/// The kinds of [`Warning`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// A key the miner does not know; it is ignored.
    UnknownKey {
        /// The key as written.
        key: String,
        /// A known key it is close to.
        suggestion: Option<&'static str>,
    },
    /// A key set twice; the later value wins.
    DuplicateKey {
        /// The key.
        key: String,
        /// Where it was set first.
        first_line: usize,
    },
    /// A `$` that a shell would expand is kept as a literal `$`.
    LiteralDollar {
        /// The key whose value holds it.
        key: String,
    },
    /// The file holding `API_KEY` can be read or written by group or others.
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.location)?;
        match &self.kind {
            WarningKind::UnknownKey { key, suggestion } => {
                write!(f, "unknown key {key} is ignored")?;
                if let Some(known) = suggestion {
                    write!(f, " (did you mean {known}?)")?;
                }
                Ok(())
            }
            WarningKind::DuplicateKey { key, first_line } => write!(
                f,
                "{key} is set again (first set on line {first_line}); the last value wins"
            ),
            WarningKind::LiteralDollar { key } => write!(
                f,
                "{key}: '$' is kept literally; aitbc-miner expands only $(hostname) and \
                 $(hostname -s), not variables (single-quote the value to silence this)"
            ),
            WarningKind::InsecurePermissions { path, mode } => write!(
                f,
                "mode {mode:04o} lets group or others access this file, which holds API_KEY; \
                 fix: chmod 600 {}",
                path.display()
            ),
        }
    }
}

/// One piece of a parsed value: literal text, or a `$(hostname)` to expand.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Hostname { short: bool },
}

/// A value as written: literal text with `$(hostname)` substitutions still to expand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawValue(Vec<Piece>);

impl RawValue {
    /// A value that is only literal text.
    pub fn literal(text: impl Into<String>) -> RawValue {
        let mut value = RawValue::default();
        value.push_str(&text.into());
        value
    }

    fn push_char(&mut self, c: char) {
        match self.0.last_mut() {
            Some(Piece::Text(text)) => text.push(c),
            _ => self.0.push(Piece::Text(c.to_string())),
        }
    }

    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            self.push_char(c);
        }
    }

    /// The value with `$(hostname)` and `$(hostname -s)` replaced; `None` when it needs the
    /// host name and that is unknown.
    pub fn expand(&self, hostname: &str) -> Option<String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Hostname { short } => {
                    if hostname.is_empty() {
                        return None;
                    }
                    let name = if *short {
                        hostname.split('.').next().unwrap_or(hostname)
                    } else {
                        hostname
                    };
                    out.push_str(name);
                }
            }
        }
        Some(out)
    }
}

/// One `KEY=value` line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// The value as written (quotes removed, substitutions pending).
    pub value: RawValue,
    /// The 1-based line it is on.
    pub line: usize,
}

/// The file's keys before any meaning is given to them. Its `Debug` output redacts the values
/// of `API_KEY` and of any key that looks secret.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawConfig {
    /// The name errors use for the file (its path as given).
    pub source_name: String,
    /// The file, when there was one.
    pub path: Option<PathBuf>,
    /// Every key of the file (known or not), the last assignment of each.
    pub entries: BTreeMap<String, RawEntry>,
}

impl fmt::Debug for RawConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawConfig")
            .field("source_name", &self.source_name)
            .field("path", &self.path)
            .field("entries", &RedactedEntries(&self.entries))
            .finish()
    }
}

/// `Debug` for a file's entries, with secret values replaced by `<redacted>`.
struct RedactedEntries<'a>(&'a BTreeMap<String, RawEntry>);

impl fmt::Debug for RedactedEntries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (key, entry) in self.0 {
            if looks_secret(key) {
                map.entry(key, &format_args!("<redacted> (line {})", entry.line));
            } else {
                map.entry(key, entry);
            }
        }
        map.finish()
    }
}

impl RawConfig {
    /// No file at all: defaults and the environment only.
    pub fn without_file() -> RawConfig {
        RawConfig {
            source_name: format!("no config file ({DEFAULT_PATH} is absent)"),
            path: None,
            entries: BTreeMap::new(),
        }
    }
}

/// Why a value's text could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ValueError {
    UnterminatedSingle,
    UnterminatedDouble,
    UnterminatedSubstitution,
    Backtick,
    Substitution(String),
    TrailingBackslash,
    TrailingText,
}

impl ValueError {
    /// The message; `secret` leaves out any text taken from the value.
    fn describe(&self, secret: bool) -> String {
        match self {
            ValueError::UnterminatedSingle => "unterminated single quote (')".into(),
            ValueError::UnterminatedDouble => "unterminated double quote (\")".into(),
            ValueError::UnterminatedSubstitution => "unterminated $( ... )".into(),
            ValueError::Backtick => {
                "backtick command substitution is not supported; aitbc-miner never runs a shell \
                 (single-quote the value for a literal `)"
                    .into()
            }
            ValueError::Substitution(inner) => {
                let shown = if secret { "..." } else { inner.as_str() };
                format!(
                    "command substitution $({shown}) is not supported; only $(hostname) and \
                     $(hostname -s) are expanded, aitbc-miner never runs a shell"
                )
            }
            ValueError::TrailingBackslash => {
                "a backslash at the end of the line (line continuation) is not supported".into()
            }
            ValueError::TrailingText => {
                "unexpected text after the value; quote a value that contains spaces, e.g. \
                 KEY=\"two words\""
                    .into()
            }
        }
    }
}

/// A value's text read with shell-like rules, and whether it kept a `$` literally.
struct ParsedValue {
    value: RawValue,
    literal_dollar: bool,
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Reads what follows a `$`: `(hostname)`, `(hostname -s)`, or nothing special (a literal `$`).
fn read_dollar(
    chars: &mut Chars<'_>,
    value: &mut RawValue,
    literal_dollar: &mut bool,
) -> Result<(), ValueError> {
    if chars.peek() != Some(&'(') {
        *literal_dollar = true;
        value.push_char('$');
        return Ok(());
    }
    chars.next();
    let mut inner = String::new();
    loop {
        match chars.next() {
            None => return Err(ValueError::UnterminatedSubstitution),
            Some(')') => break,
            Some(c) => inner.push(c),
        }
    }
    let words: Vec<&str> = inner.split_whitespace().collect();
    match words.as_slice() {
        ["hostname"] => value.0.push(Piece::Hostname { short: false }),
        ["hostname", "-s"] | ["hostname", "--short"] => {
            value.0.push(Piece::Hostname { short: true })
        }
        _ => return Err(ValueError::Substitution(inner)),
    }
    Ok(())
}

/// Reads the text after `KEY=` like a shell reads one word: `'...'` is literal, `"..."` allows
/// `\"`, `\\`, `\$`, `` \` `` and `$(hostname)`, unquoted `\x` is `x`. After the word only
/// blanks and a `# comment` may follow.
fn parse_value(text: &str) -> Result<ParsedValue, ValueError> {
    let mut value = RawValue::default();
    let mut literal_dollar = false;
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            break;
        }
        chars.next();
        match c {
            '\'' => loop {
                match chars.next() {
                    None => return Err(ValueError::UnterminatedSingle),
                    Some('\'') => break,
                    Some(inner) => value.push_char(inner),
                }
            },
            '"' => loop {
                match chars.next() {
                    None => return Err(ValueError::UnterminatedDouble),
                    Some('"') => break,
                    Some('\\') => match chars.peek() {
                        Some(&escaped @ ('$' | '`' | '"' | '\\')) => {
                            chars.next();
                            value.push_char(escaped);
                        }
                        _ => value.push_char('\\'),
                    },
                    Some('$') => read_dollar(&mut chars, &mut value, &mut literal_dollar)?,
                    Some('`') => return Err(ValueError::Backtick),
                    Some(inner) => value.push_char(inner),
                }
            },
            '\\' => match chars.next() {
                None => return Err(ValueError::TrailingBackslash),
                Some(escaped) => value.push_char(escaped),
            },
            '$' => read_dollar(&mut chars, &mut value, &mut literal_dollar)?,
            '`' => return Err(ValueError::Backtick),
            other => value.push_char(other),
        }
    }
    let rest: String = chars.collect();
    let rest = rest.trim_start();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(ValueError::TrailingText);
    }
    Ok(ParsedValue {
        value,
        literal_dollar,
    })
}

/// Reads an environment variable's value: no quotes or comments (the environment has none),
/// but `$(hostname)` is expanded as in the file, so a systemd `EnvironmentFile=` holding the
/// guide's `MINER_ID=$(hostname)-gpu0` works too.
fn parse_env_value(text: &str) -> Result<RawValue, ValueError> {
    let mut value = RawValue::default();
    let mut literal_dollar = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => read_dollar(&mut chars, &mut value, &mut literal_dollar)?,
            '`' => return Err(ValueError::Backtick),
            other => value.push_char(other),
        }
    }
    Ok(value)
}

/// Whether a key's value may be a secret, so that syntax errors must not echo it.
fn looks_secret(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    ["KEY", "TOKEN", "SECRET", "PASS"]
        .iter()
        .any(|word| upper.contains(word))
}

/// `KEY="value"`, or `KEY=<redacted>` for the API key.
fn show(key: &str, value: &str) -> String {
    if key == SECRET_KEY {
        format!("{key}=<redacted>")
    } else {
        format!("{key}={value:?}")
    }
}

/// Levenshtein distance between two short ASCII-ish strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known key an unknown one was probably meant to be.
fn suggest(key: &str) -> Option<&'static str> {
    let upper = key.to_ascii_uppercase();
    KEYS.iter()
        .map(|known| (edit_distance(&upper, known), *known))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn valid_key_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses the file's text. `source` names the file in errors and warnings (`source:line`).
///
/// Accepted per line: blank, `# comment`, or `[export ]KEY=value [# comment]`, with blanks
/// around; CRLF endings are fine. Values follow `parse_value`'s shell-like rules.
/// Unknown keys and repeated keys are warnings; anything else unreadable is an error.
pub fn parse(text: &str, source: &str) -> Result<(RawConfig, Vec<Warning>), Error> {
    let mut raw = RawConfig {
        source_name: source.to_string(),
        path: Some(PathBuf::from(source)),
        entries: BTreeMap::new(),
    };
    let mut warnings = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let number = index + 1;
        let location = format!("{source}:{number}");
        let line = line.strip_suffix('\r').unwrap_or(line).trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = match line.strip_prefix("export") {
            Some(rest) if rest.starts_with(char::is_whitespace) => rest.trim_start(),
            _ => line,
        };
        let Some((key, value_text)) = line.split_once('=') else {
            let shown = if looks_secret(line) {
                "<redacted>".to_string()
            } else {
                format!("{line:?}")
            };
            return Err(Error::ConfigSyntax {
                location,
                message: format!("expected KEY=value or a # comment, found {shown}"),
            });
        };
        let key = key.trim();
        let secret = looks_secret(key);
        if !valid_key_name(key) {
            let shown = if secret {
                "<redacted>".to_string()
            } else {
                format!("{key:?}")
            };
            return Err(Error::ConfigSyntax {
                location,
                message: format!(
                    "{shown} is not a key name; keys are letters, digits and _, e.g. HEARTBEAT_SECS"
                ),
            });
        }
        // `KEY= # note` is an empty value and a comment; `KEY=#x` is "#x", as in sh.
        let value_text = if value_text.starts_with(char::is_whitespace)
            && value_text.trim_start().starts_with('#')
        {
            ""
        } else {
            value_text.trim()
        };
        let parsed = parse_value(value_text).map_err(|error| {
            let shown = if secret {
                format!("{key}=<redacted>")
            } else {
                format!("{key}={value_text}")
            };
            Error::ConfigSyntax {
                location: location.clone(),
                message: format!("{shown}: {}", error.describe(secret)),
            }
        })?;
        if !KEYS.contains(&key) {
            warnings.push(Warning {
                location: location.clone(),
                kind: WarningKind::UnknownKey {
                    key: key.to_string(),
                    suggestion: suggest(key),
                },
            });
        }
        if parsed.literal_dollar {
            warnings.push(Warning {
                location: location.clone(),
                kind: WarningKind::LiteralDollar {
                    key: key.to_string(),
                },
            });
        }
        let entry = RawEntry {
            value: parsed.value,
            line: number,
        };
        if let Some(previous) = raw.entries.insert(key.to_string(), entry) {
            warnings.push(Warning {
                location,
                kind: WarningKind::DuplicateKey {
                    key: key.to_string(),
                    first_line: previous.line,
                },
            });
        }
    }
    Ok((raw, warnings))
}

/// A value found for a key, and where it came from.
struct Found {
    value: String,
    location: String,
}

/// Looks up keys: the environment first, then the file.
struct Lookup<'a> {
    raw: &'a RawConfig,
    env: &'a dyn Fn(&str) -> Option<String>,
    host: &'a HostFacts,
}

impl Lookup<'_> {
    /// The value set for `key`, a key of [`DEFS`] (else this panics).
    fn find(&self, key: &'static str) -> Result<Option<Found>, Error> {
        keys::def(key);
        let secret = key == SECRET_KEY;
        let (value, location) = if let Some(text) = (self.env)(key) {
            let location = "environment".to_string();
            let value = parse_env_value(&text).map_err(|error| Error::ConfigInvalid {
                location: location.clone(),
                shown: show(key, &text),
                expected: error.describe(secret),
            })?;
            (value, location)
        } else if let Some(entry) = self.raw.entries.get(key) {
            let location = format!("{}:{}", self.raw.source_name, entry.line);
            (entry.value.clone(), location)
        } else {
            return Ok(None);
        };
        match value.expand(&self.host.hostname) {
            Some(value) => Ok(Some(Found { value, location })),
            None => Err(Error::ConfigInvalid {
                location,
                shown: format!("{key}=<uses $(hostname)>"),
                expected: "the host name is unknown (gethostname failed); write the name out"
                    .into(),
            }),
        }
    }

    /// Applies `check` to the key's value, or to its [`DEFS`] default when it is not set.
    fn get<T>(
        &self,
        key: &'static str,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, Error> {
        match self.find(key)? {
            None => self.unset(key, &check),
            Some(found) => checked(key, &found, &check),
        }
    }

    /// What `key` is when it is not set, from [`DEFS`]: a missing required key is an error; a
    /// default computed from the host is left to the caller (this panics).
    fn unset<T>(
        &self,
        key: &'static str,
        check: &dyn Fn(&str) -> Result<T, String>,
    ) -> Result<T, Error> {
        let text = match keys::def(key).unset {
            Unset::Value(text) => text,
            Unset::Empty(_) => "",
            Unset::Required(_) => {
                return Err(Error::ConfigMissing {
                    location: self.raw.source_name.clone(),
                    key,
                })
            }
            Unset::Host { .. } => {
                panic!("{key}'s default depends on the host; resolve computes it")
            }
        };
        Ok(check(text).unwrap_or_else(|e| panic!("DEFS' default {key}={text:?} fails: {e}")))
    }

    /// Applies `check` to the key's value, or returns `computed`, the default from the host,
    /// when it is not set.
    fn get_or<T>(
        &self,
        key: &'static str,
        computed: T,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, Error> {
        debug_assert!(matches!(keys::def(key).unset, Unset::Host { .. }), "{key}");
        match self.find(key)? {
            None => Ok(computed),
            Some(found) => checked(key, &found, &check),
        }
    }
}

fn checked<T>(
    key: &'static str,
    found: &Found,
    check: &dyn Fn(&str) -> Result<T, String>,
) -> Result<T, Error> {
    check(&found.value).map_err(|expected| Error::ConfigInvalid {
        location: found.location.clone(),
        shown: show(key, &found.value),
        expected,
    })
}

/// Seconds as written by people: `3`, `0.5`, `.25`, at most nanosecond precision; no sign, no
/// exponent. Parsed exactly, without floating point.
fn parse_secs(text: &str, allow_zero: bool) -> Result<Duration, String> {
    let expected = if allow_zero {
        "expected seconds (0 or more), e.g. 3 or 0.5"
    } else {
        "expected seconds greater than 0, e.g. 3 or 0.5"
    };
    let too_long = || format!("{expected}; at most {MAX_SECS} (one year)");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(expected.into());
    }
    if fraction.len() > 9 {
        return Err(format!("{expected}; at most 9 decimal places"));
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_long())?
    };
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}")
            .parse()
            .map_err(|_| expected.to_string())?
    };
    if secs > MAX_SECS || (secs == MAX_SECS && nanos > 0) {
        return Err(too_long());
    }
    let duration = Duration::new(secs, nanos);
    if duration.is_zero() && !allow_zero {
        return Err(expected.into());
    }
    Ok(duration)
}

fn parse_int(text: &str, min: u64, max: u64, example: &str) -> Result<u64, String> {
    let expected = || format!("expected a whole number from {min} to {max}, e.g. {example}");
    if text.is_empty() || !text.chars().all(|c| c.is_ascii_digit()) {
        return Err(expected());
    }
    match text.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(expected()),
    }
}

fn parse_u32(text: &str, min: u32, max: u32, example: &str) -> Result<u32, String> {
    let n = parse_int(text, u64::from(min), u64::from(max), example)?;
    Ok(u32::try_from(n).expect("parse_int keeps the value within u32 bounds"))
}

fn parse_coord_url(text: &str) -> Result<String, String> {
    const EXPECTED: &str =
        "expected an http:// or https:// base URL, e.g. https://coordinator.example.net";
    let trimmed = text.trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).map_err(|e| format!("{EXPECTED} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(EXPECTED.into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{EXPECTED} (no host)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{EXPECTED} (no ?query or #fragment)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{EXPECTED} (no user:password@; the API key is the credential)"
        ));
    }
    Ok(trimmed.to_string())
}

fn parse_token(text: &str, what: &str, max_len: usize) -> Result<String, String> {
    if text.is_empty() || text.len() > max_len || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "expected {what}: 1 to {max_len} printable ASCII characters without spaces"
        ));
    }
    Ok(text.to_string())
}

/// The Coordinator's own rule (`protocol::api::is_wallet`), so that a wallet it would refuse
/// stops the miner at start instead of failing every heartbeat.
fn parse_wallet(text: &str) -> Result<String, String> {
    if protocol::api::is_wallet(text) {
        Ok(text.to_string())
    } else {
        Err("expected a wallet address: 1 to 128 characters from A-Z a-z 0-9 . _ : -".into())
    }
}

fn parse_miner_id(text: &str) -> Result<String, String> {
    let ok = (1..=128).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err("expected 1 to 128 characters from A-Z a-z 0-9 . _ -, e.g. \"$(hostname)-gpu0\"".into())
    }
}

fn parse_abs_path(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("expected an absolute path, e.g. /var/lib/aitbc-miner".into())
    }
}

fn parse_optional_path(text: &str) -> Result<Option<PathBuf>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_abs_path(text)
        .map(Some)
        .map_err(|e| format!("{e} (or empty for none)"))
}

/// `STATUS_SOCKET`: empty disables it; otherwise an absolute path short enough for a Unix socket
/// address.
fn parse_status_socket(text: &str) -> Result<Option<PathBuf>, String> {
    const EXPECTED: &str = "expected an absolute path of at most 107 bytes (a Unix socket \
                            address), e.g. /run/aitbc-miner/status.sock, or empty for none";
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() || text.len() > MAX_SOCKET_PATH || text.ends_with('/') {
        return Err(EXPECTED.into());
    }
    Ok(Some(path))
}

/// `METRICS_FILE`: empty disables it; otherwise an absolute path naming a file (the temporary
/// file is written beside it).
fn parse_metrics_file(text: &str) -> Result<Option<PathBuf>, String> {
    const EXPECTED: &str = "expected an absolute file path, e.g. \
                            /var/lib/prometheus/node-exporter/aitbc_miner.prom, or empty for none";
    if text.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(text);
    if !path.is_absolute() || text.ends_with('/') || path.file_name().is_none() {
        return Err(EXPECTED.into());
    }
    Ok(Some(path))
}

fn parse_accel_mode(text: &str) -> Result<AccelMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "auto" => Ok(AccelMode::Auto),
        "gpu" => Ok(AccelMode::Gpu),
        "cpu" => Ok(AccelMode::Cpu),
        _ => Err("expected auto, gpu or cpu".into()),
    }
}

fn parse_sandbox_fs(text: &str) -> Result<FsMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "auto" => Ok(FsMode::Auto),
        "landlock" => Ok(FsMode::Landlock),
        "mount" => Ok(FsMode::Mount),
        _ => Err("expected auto, landlock or mount".into()),
    }
}

fn parse_cpu_kernel(text: &str) -> Result<CpuKernel, String> {
    CpuKernel::parse(&text.to_ascii_lowercase()).ok_or_else(|| CpuKernel::EXPECTED.into())
}

/// A user name as `useradd` accepts it (and as `getpwnam` can find it): 1 to 32 characters,
/// starting with a lower-case letter or `_`, then lower-case letters, digits, `_`, `-`, and an
/// optional final `$`. Checked here so a typo is a config error with a line number rather than
/// a failed look-up at start.
fn parse_user_name(text: &str) -> Result<String, String> {
    const EXPECTED: &str = "expected a user name: 1 to 32 characters from a-z 0-9 _ -, starting \
                            with a letter or _, e.g. aitbc-miner or nobody";
    let body = text.strip_suffix('$').unwrap_or(text);
    let mut chars = body.chars();
    let ok = (1..=32).contains(&text.len())
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(EXPECTED.into())
    }
}

fn parse_log_level(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map(|_| text.to_string())
        .map_err(|e| {
            format!(
                "expected a log filter such as info, debug or aitbc_supervisor=debug,warn ({e})"
            )
        })
}

/// Turns parsed keys into a [`Config`]: an environment variable named like a key overrides
/// the file (`env` answers for those names only), unset keys take their defaults (some scaled
/// by `host`), and every value is checked. Errors name where the value came from
/// (`file:line` or `environment`), the key and value, and what was expected.
pub fn resolve(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    host: &HostFacts,
) -> Result<Config, Error> {
    let look = Lookup { raw, env, host };

    let coord_url = look.get("COORD_URL", parse_coord_url)?;
    let wallet_addr = look.get("WALLET_ADDR", parse_wallet)?;
    let api_key = ApiKey::new(look.get(SECRET_KEY, |t| {
        parse_token(t, "the wallet-issued API key", 4096)
    })?);
    let miner_id = look.get("MINER_ID", parse_miner_id)?;

    let work_dir = look.get("WORK_DIR", parse_abs_path)?;
    let state_dir = look.get("STATE_DIR", parse_abs_path)?;
    let audit_spool_mb = look.get("AUDIT_SPOOL_MB", |t| parse_int(t, 1, 1 << 20, "256"))?;
    let heartbeat = look.get("HEARTBEAT_SECS", |t| parse_secs(t, false))?;
    let job_poll = look.get("JOB_POLL_SECS", |t| parse_secs(t, false))?;
    let poll_wait = look.get("POLL_WAIT_SECS", |t| parse_secs(t, true))?;
    let max_concurrency = look.get("MAX_CONCURRENCY", |t| parse_u32(t, 1, 64, "1"))?;
    let accel_mode = look.get("ACCEL_MODE", parse_accel_mode)?;
    let log_file = look.get("LOG_FILE", parse_optional_path)?;
    let log_level = look.get("LOG_LEVEL", parse_log_level)?;
    let backoff_min = look.get("BACKOFF_MIN_SECS", |t| parse_secs(t, false))?;
    let backoff_max = match look.find("BACKOFF_MAX_SECS")? {
        None => look
            .unset("BACKOFF_MAX_SECS", &|t| parse_secs(t, false))?
            .max(backoff_min),
        Some(found) => checked("BACKOFF_MAX_SECS", &found, &|t| {
            let max = parse_secs(t, false)?;
            if max < backoff_min {
                return Err(format!(
                    "expected at least BACKOFF_MIN_SECS ({})",
                    backoff_min.as_secs_f64()
                ));
            }
            Ok(max)
        })?,
    };
    let drain_grace = look.get("DRAIN_GRACE_SECS", |t| parse_secs(t, true))?;

    let default_ram = host.ram_mb * 80 / 100 / u64::from(max_concurrency);
    let ram_mb = match look.find("MAX_JOB_RAM_MB")? {
        Some(found) => checked("MAX_JOB_RAM_MB", &found, &|t| {
            parse_int(t, 1, u64::MAX, "4096")
        })?,
        None if default_ram > 0 => default_ram,
        None => {
            return Err(Error::ConfigInvalid {
                location: raw.source_name.clone(),
                shown: "MAX_JOB_RAM_MB (not set)".into(),
                expected: "the host's RAM is unknown, so there is no default; set MAX_JOB_RAM_MB, \
                           e.g. 4096"
                    .into(),
            })
        }
    };
    let cores = host.cores.max(1);
    let job_limits_max = MaxLimits {
        ram_mb,
        runtime_s: look.get("MAX_JOB_RUNTIME_SECS", |t| {
            parse_int(t, 1, MAX_SECS, "3600")
        })?,
        cpu_time_s: look.get_or("MAX_JOB_CPU_SECS", 3600 * u64::from(cores), |t| {
            parse_int(t, 1, u64::MAX, "3600")
        })?,
        vram_mb: look.get("MAX_JOB_VRAM_MB", |t| parse_int(t, 0, u64::MAX, "8192"))?,
        disk_mb: look.get("MAX_JOB_DISK_MB", |t| parse_int(t, 1, MAX_DISK_MB, "1024"))?,
    };
    let threads_per_job =
        look.get_or("THREADS_PER_JOB", (cores / max_concurrency).max(1), |t| {
            parse_u32(t, 1, 1024, "4")
        })?;
    let worker_exe = look.get("WORKER_EXE", parse_optional_path)?;
    let run_as_user = look.get("RUN_AS_USER", parse_user_name)?;
    let sandbox_fs = look.get("SANDBOX_FS", parse_sandbox_fs)?;
    let cpu_kernel = look.get("CPU_KERNEL", parse_cpu_kernel)?;
    let gpu_poll = look.get("GPU_POLL_MS", |t| {
        parse_int(t, 10, 60_000, "500").map(Duration::from_millis)
    })?;
    let gpu_max_temp_c = look.get("GPU_MAX_TEMP_C", |t| parse_u32(t, 1, 200, "90"))?;
    let status_socket = look.get("STATUS_SOCKET", parse_status_socket)?;
    let metrics_file = look.get("METRICS_FILE", parse_metrics_file)?;
    let metrics_interval = look.get("METRICS_INTERVAL_SECS", |t| parse_secs(t, false))?;

    Ok(Config {
        source: raw.path.clone(),
        coord_url,
        wallet_addr,
        api_key,
        miner_id,
        work_dir,
        state_dir,
        audit_spool_mb,
        heartbeat,
        job_poll,
        poll_wait,
        max_concurrency,
        accel_mode,
        log_file,
        log_level,
        backoff_min,
        backoff_max,
        drain_grace,
        job_limits_max,
        threads_per_job,
        worker_exe,
        run_as_user,
        sandbox_fs,
        cpu_kernel,
        gpu_poll,
        gpu_max_temp_c,
        status_socket,
        metrics_file,
        metrics_interval,
    })
}

/// `STATUS_SOCKET` alone, as [`resolve`] would read it (environment first, then the file,
/// then the default), for `aitbc-miner status`, which needs no other key: `None` when the
/// socket is disabled.
pub fn status_socket(
    raw: &RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    host: &HostFacts,
) -> Result<Option<PathBuf>, Error> {
    Lookup { raw, env, host }.get("STATUS_SOCKET", parse_status_socket)
}

/// The warning for a config file whose permission bits let group or others in, when it holds
/// the API key.
pub fn permission_warning(path: &Path, mode: u32, holds_api_key: bool) -> Option<Warning> {
    let mode = mode & 0o7777;
    (holds_api_key && mode & 0o077 != 0).then(|| Warning {
        location: path.display().to_string(),
        kind: WarningKind::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        },
    })
}

/// Reads the process environment for the known keys; a value that is not UTF-8 is an error.
fn process_env() -> Result<BTreeMap<&'static str, String>, Error> {
    let mut vars = BTreeMap::new();
    for key in KEYS {
        if let Some(value) = std::env::var_os(key) {
            let value = value.into_string().map_err(|bad| Error::ConfigInvalid {
                location: "environment".into(),
                shown: show(key, &bad.to_string_lossy()),
                expected: "expected UTF-8 text".into(),
            })?;
            vars.insert(*key, value);
        }
    }
    Ok(vars)
}

/// Reads and parses the config file: `path` when given (missing is an error), otherwise
/// `default` (missing means "no file": defaults and environment only). Adds the
/// [`WarningKind::InsecurePermissions`] warning when the file holds `API_KEY` and group or
/// others may access it.
pub fn read_file(path: Option<&Path>, default: &Path) -> Result<(RawConfig, Vec<Warning>), Error> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    let file = path.unwrap_or(default);
    let read_error = |source| Error::ConfigRead {
        path: file.to_path_buf(),
        source,
    };
    let mut handle = match std::fs::File::open(file) {
        Ok(handle) => handle,
        Err(error) if error.kind() == io::ErrorKind::NotFound && path.is_none() => {
            let mut raw = RawConfig::without_file();
            raw.source_name = format!("no config file ({} is absent)", default.display());
            return Ok((raw, Vec::new()));
        }
        Err(error) => return Err(read_error(error)),
    };
    // The mode comes from the opened file itself, so it is the file that was read.
    let mode = handle.metadata().map_err(read_error)?.permissions().mode();
    let mut text = String::new();
    handle.read_to_string(&mut text).map_err(read_error)?;
    let (raw, mut warnings) = parse(&text, &file.display().to_string())?;
    let holds_key = raw.entries.contains_key(SECRET_KEY);
    warnings.extend(permission_warning(file, mode, holds_key));
    Ok((raw, warnings))
}

/// Loads the configuration: the file at `path` (or [`DEFAULT_PATH`] when `None`), overridden by
/// the process environment, defaults from this host. A missing default file means defaults and
/// environment only; a missing file that was named explicitly is an error.
pub fn load(path: Option<&Path>) -> Result<(Config, Vec<Warning>), Error> {
    let (raw, warnings) = read_file(path, Path::new(DEFAULT_PATH))?;
    let env = process_env()?;
    let config = resolve(&raw, &|key| env.get(key).cloned(), &HostFacts::detect())?;
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const MINIMAL: &str =
        "COORD_URL=http://127.0.0.1:8080\nWALLET_ADDR=w1\nAPI_KEY=s3cr3t-key\nMINER_ID=m1\n";

    fn host() -> HostFacts {
        HostFacts {
            hostname: "node7.example.org".into(),
            cores: 8,
            ram_mb: 10_000,
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn config_of(text: &str) -> Result<Config, Error> {
        let (raw, _) = parse(text, "miner.conf")?;
        resolve(&raw, &no_env, &host())
    }

    fn config_with(extra: &str) -> Result<Config, Error> {
        config_of(&format!("{MINIMAL}{extra}\n"))
    }

    /// The value the file gives `key` (parse only, no meaning).
    fn value_of(line: &str) -> String {
        let (raw, _) = parse(line, "f").expect("line parses");
        let (_, entry) = raw.entries.iter().next().expect("one entry");
        entry.value.expand("h").expect("no unknown host name")
    }

    fn error_of(extra: &str) -> String {
        config_with(extra)
            .expect_err("the config must be refused")
            .to_string()
    }

    #[test]
    fn defaults_fill_every_optional_key() {
        let c = config_of(MINIMAL).unwrap();
        assert_eq!(c.source, Some(PathBuf::from("miner.conf")));
        assert_eq!(c.coord_url, "http://127.0.0.1:8080");
        assert_eq!(c.wallet_addr, "w1");
        assert_eq!(c.api_key.expose(), "s3cr3t-key");
        assert_eq!(c.miner_id, "m1");
        assert_eq!(c.work_dir, PathBuf::from("/tmp/aitbc-work"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/aitbc-miner"));
        assert_eq!(c.heartbeat, Duration::from_secs(20));
        assert_eq!(c.job_poll, Duration::from_secs(3));
        assert_eq!(c.poll_wait, Duration::from_secs(25));
        assert_eq!(c.max_concurrency, 1);
        assert_eq!(c.accel_mode, AccelMode::Auto);
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.backoff_min, Duration::from_millis(500));
        assert_eq!(c.backoff_max, Duration::from_secs(60));
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert_eq!(
            c.job_limits_max,
            MaxLimits {
                ram_mb: 8000,
                runtime_s: 3600,
                cpu_time_s: 3600 * 8,
                vram_mb: 0,
                disk_mb: 1024,
            }
        );
        assert_eq!(c.threads_per_job, 8);
        assert_eq!(c.worker_exe, None);
        assert_eq!(c.run_as_user, "aitbc-miner");
        assert_eq!(c.sandbox_fs, FsMode::Auto);
        assert_eq!(
            c.status_socket,
            Some(PathBuf::from("/run/aitbc-miner/status.sock"))
        );
        assert_eq!(c.metrics_file, None);
        assert_eq!(c.metrics_interval, Duration::from_secs(15));
    }

    #[test]
    fn status_and_metrics_keys() {
        let c = config_with(
            "STATUS_SOCKET=/tmp/m/status.sock\nMETRICS_FILE=/var/lib/node-exporter/m.prom\n\
             METRICS_INTERVAL_SECS=0.25",
        )
        .unwrap();
        assert_eq!(c.status_socket, Some(PathBuf::from("/tmp/m/status.sock")));
        assert_eq!(
            c.metrics_file,
            Some(PathBuf::from("/var/lib/node-exporter/m.prom"))
        );
        assert_eq!(c.metrics_interval, Duration::from_millis(250));
        let c = config_with("STATUS_SOCKET=\"\"\nMETRICS_FILE=").unwrap();
        assert_eq!((c.status_socket, c.metrics_file), (None, None));
        let longest = format!("/{}", "s".repeat(106));
        let c = config_with(&format!("STATUS_SOCKET={longest}")).unwrap();
        assert_eq!(c.status_socket, Some(PathBuf::from(&longest)));

        let cases: &[(&str, &str)] = &[
            ("STATUS_SOCKET=status.sock", "miner.conf:5: STATUS_SOCKET=\"status.sock\": expected an absolute path of at most 107 bytes (a Unix socket address), e.g. /run/aitbc-miner/status.sock, or empty for none"),
            ("STATUS_SOCKET=/run/aitbc-miner/", "miner.conf:5: STATUS_SOCKET=\"/run/aitbc-miner/\": expected an absolute path"),
            ("METRICS_FILE=m.prom", "miner.conf:5: METRICS_FILE=\"m.prom\": expected an absolute file path, e.g. /var/lib/prometheus/node-exporter/aitbc_miner.prom, or empty for none"),
            ("METRICS_FILE=/var/lib/x/", "miner.conf:5: METRICS_FILE=\"/var/lib/x/\": expected an absolute file path"),
            ("METRICS_FILE=/", "miner.conf:5: METRICS_FILE=\"/\": expected an absolute file path"),
            ("METRICS_INTERVAL_SECS=0", "miner.conf:5: METRICS_INTERVAL_SECS=\"0\": expected seconds greater than 0, e.g. 3 or 0.5"),
            ("METRICS_INTERVAL_SECS=often", "miner.conf:5: METRICS_INTERVAL_SECS=\"often\": expected seconds greater than 0"),
        ];
        for (line, want) in cases {
            let got = error_of(line);
            assert!(got.contains(want), "for {line}: got {got:?}, want {want:?}");
        }
        let too_long = format!("STATUS_SOCKET=/{}", "s".repeat(107));
        assert!(error_of(&too_long).contains("at most 107 bytes"));

        // `aitbc-miner status` reads the one key the same way: environment, file, default.
        let (raw, _) = parse("STATUS_SOCKET=/f/s.sock\n", "f").unwrap();
        assert_eq!(
            status_socket(&raw, &no_env, &host()).unwrap(),
            Some(PathBuf::from("/f/s.sock"))
        );
        let env = |k: &str| (k == "STATUS_SOCKET").then(|| "/e/s.sock".to_string());
        assert_eq!(
            status_socket(&raw, &env, &host()).unwrap(),
            Some(PathBuf::from("/e/s.sock"))
        );
        let (empty, _) = parse("", "f").unwrap();
        assert_eq!(
            status_socket(&empty, &no_env, &host()).unwrap(),
            Some(PathBuf::from(DEFAULT_STATUS_SOCKET))
        );
        let (off, _) = parse("STATUS_SOCKET=''\n", "f").unwrap();
        assert_eq!(status_socket(&off, &no_env, &host()).unwrap(), None);
        let (bad, _) = parse("STATUS_SOCKET=rel\n", "f").unwrap();
        let err = status_socket(&bad, &no_env, &host())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("f:1: STATUS_SOCKET=\"rel\": expected"),
            "{err}"
        );
    }

    #[test]
    fn defaults_scale_with_concurrency() {
        let c = config_with("MAX_CONCURRENCY=3").unwrap();
        assert_eq!(c.max_concurrency, 3);
        assert_eq!(c.job_limits_max.ram_mb, 8000 / 3);
        assert_eq!(c.threads_per_job, 2);
        let c = config_with("MAX_CONCURRENCY=64").unwrap();
        assert_eq!(c.threads_per_job, 1, "at least one thread per job");
    }

    #[test]
    fn every_key_accepts_valid_values() {
        let c = config_with(
            "COORD_URL=https://coord.example.net:8443/base///\n\
             WORK_DIR=/w\nSTATE_DIR=/s\nHEARTBEAT_SECS=0.05\nJOB_POLL_SECS=.25\n\
             POLL_WAIT_SECS=0\nMAX_CONCURRENCY=64\nACCEL_MODE=GPU\nLOG_FILE=/var/log/m.log\n\
             LOG_LEVEL=warn,aitbc_supervisor=debug\nBACKOFF_MIN_SECS=0.01\nBACKOFF_MAX_SECS=0.01\n\
             DRAIN_GRACE_SECS=0\nMAX_JOB_RAM_MB=512\nMAX_JOB_RUNTIME_SECS=10\n\
             MAX_JOB_CPU_SECS=20\nMAX_JOB_VRAM_MB=16000\nTHREADS_PER_JOB=3\nWORKER_EXE=/usr/bin/w\n\
             MAX_JOB_DISK_MB=1\nRUN_AS_USER=nobody\nSANDBOX_FS=Landlock",
        )
        .unwrap();
        assert_eq!(c.coord_url, "https://coord.example.net:8443/base");
        assert_eq!(c.work_dir, PathBuf::from("/w"));
        assert_eq!(c.state_dir, PathBuf::from("/s"));
        assert_eq!(c.heartbeat, Duration::from_millis(50));
        assert_eq!(c.job_poll, Duration::from_millis(250));
        assert_eq!(c.poll_wait, Duration::ZERO);
        assert_eq!(c.max_concurrency, 64);
        assert_eq!(c.accel_mode, AccelMode::Gpu);
        assert_eq!(c.log_file, Some(PathBuf::from("/var/log/m.log")));
        assert_eq!(c.log_level, "warn,aitbc_supervisor=debug");
        assert_eq!(c.backoff_min, Duration::from_millis(10));
        assert_eq!(c.backoff_max, Duration::from_millis(10));
        assert_eq!(c.drain_grace, Duration::ZERO);
        assert_eq!(
            c.job_limits_max,
            MaxLimits {
                ram_mb: 512,
                runtime_s: 10,
                cpu_time_s: 20,
                vram_mb: 16000,
                disk_mb: 1,
            }
        );
        assert_eq!(c.threads_per_job, 3);
        assert_eq!(c.worker_exe, Some(PathBuf::from("/usr/bin/w")));
        assert_eq!(c.run_as_user, "nobody");
        assert_eq!(c.sandbox_fs, FsMode::Landlock);
        for (text, want) in [
            ("auto", FsMode::Auto),
            ("landlock", FsMode::Landlock),
            ("MOUNT", FsMode::Mount),
        ] {
            let c = config_with(&format!("SANDBOX_FS={text}")).unwrap();
            assert_eq!(c.sandbox_fs, want);
            assert_eq!(want.as_str(), text.to_ascii_lowercase());
        }
        assert_eq!(c.cpu_kernel, CpuKernel::Auto);
        for (text, want) in [
            ("auto", CpuKernel::Auto),
            ("avx512-vnni", CpuKernel::Avx512Vnni),
            ("avx-vnni", CpuKernel::AvxVnni),
            ("AVX2", CpuKernel::Avx2),
            ("portable", CpuKernel::Portable),
        ] {
            let c = config_with(&format!("CPU_KERNEL={text}")).unwrap();
            assert_eq!(c.cpu_kernel, want);
            assert_eq!(want.as_str(), text.to_ascii_lowercase());
        }
        for name in ["_svc", "a", "svc-miner_2", "machine$", &"u".repeat(32)] {
            let c = config_with(&format!("RUN_AS_USER={name}")).unwrap();
            assert_eq!(c.run_as_user, name);
        }
        assert_eq!(
            config_with("MAX_JOB_DISK_MB=1073741824")
                .unwrap()
                .job_limits_max
                .disk_mb,
            1 << 30
        );
        assert_eq!(
            config_with("ACCEL_MODE=cpu").unwrap().accel_mode,
            AccelMode::Cpu
        );
    }

    #[test]
    fn invalid_values_name_file_line_key_value_and_expectation() {
        // (line appended after the 4 lines of MINIMAL, so it is line 5)
        let cases: &[(&str, &str)] = &[
            ("JOB_POLL_SECS=abc", "miner.conf:5: JOB_POLL_SECS=\"abc\": expected seconds greater than 0, e.g. 3 or 0.5"),
            ("HEARTBEAT_SECS=0", "miner.conf:5: HEARTBEAT_SECS=\"0\": expected seconds greater than 0"),
            ("HEARTBEAT_SECS=-1", "HEARTBEAT_SECS=\"-1\": expected seconds"),
            ("HEARTBEAT_SECS=1e3", "HEARTBEAT_SECS=\"1e3\": expected seconds"),
            ("HEARTBEAT_SECS=.", "HEARTBEAT_SECS=\".\": expected seconds"),
            ("HEARTBEAT_SECS=inf", "HEARTBEAT_SECS=\"inf\": expected seconds"),
            ("HEARTBEAT_SECS=99999999999", "at most"),
            ("HEARTBEAT_SECS=99999999999999999999999", "at most 31536000 (one year)"),
            ("HEARTBEAT_SECS=0.0000000001", "at most 9 decimal places"),
            ("POLL_WAIT_SECS=x", "miner.conf:5: POLL_WAIT_SECS=\"x\": expected seconds (0 or more)"),
            ("DRAIN_GRACE_SECS=", "miner.conf:5: DRAIN_GRACE_SECS=\"\": expected seconds (0 or more)"),
            ("BACKOFF_MIN_SECS=0", "miner.conf:5: BACKOFF_MIN_SECS=\"0\": expected seconds greater than 0"),
            ("BACKOFF_MAX_SECS=0.1", "miner.conf:5: BACKOFF_MAX_SECS=\"0.1\": expected at least BACKOFF_MIN_SECS (0.5)"),
            ("MAX_CONCURRENCY=0", "miner.conf:5: MAX_CONCURRENCY=\"0\": expected a whole number from 1 to 64, e.g. 1"),
            ("MAX_CONCURRENCY=65", "MAX_CONCURRENCY=\"65\": expected a whole number from 1 to 64"),
            ("MAX_CONCURRENCY=+2", "MAX_CONCURRENCY=\"+2\": expected a whole number"),
            ("MAX_CONCURRENCY=1.5", "MAX_CONCURRENCY=\"1.5\": expected a whole number"),
            ("ACCEL_MODE=tpu", "miner.conf:5: ACCEL_MODE=\"tpu\": expected auto, gpu or cpu"),
            ("WORK_DIR=relative/dir", "miner.conf:5: WORK_DIR=\"relative/dir\": expected an absolute path"),
            ("STATE_DIR=", "miner.conf:5: STATE_DIR=\"\": expected an absolute path"),
            ("LOG_FILE=log.txt", "miner.conf:5: LOG_FILE=\"log.txt\": expected an absolute path, e.g. /var/lib/aitbc-miner (or empty for none)"),
            ("LOG_LEVEL=\"info,foo=loud\"", "miner.conf:5: LOG_LEVEL=\"info,foo=loud\": expected a log filter"),
            ("MAX_JOB_RAM_MB=0", "miner.conf:5: MAX_JOB_RAM_MB=\"0\": expected a whole number from 1 to"),
            ("MAX_JOB_RAM_MB=lots", "MAX_JOB_RAM_MB=\"lots\": expected a whole number"),
            ("MAX_JOB_RUNTIME_SECS=0", "miner.conf:5: MAX_JOB_RUNTIME_SECS=\"0\": expected a whole number from 1"),
            ("MAX_JOB_CPU_SECS=-5", "miner.conf:5: MAX_JOB_CPU_SECS=\"-5\": expected a whole number from 1"),
            ("MAX_JOB_VRAM_MB=1GB", "miner.conf:5: MAX_JOB_VRAM_MB=\"1GB\": expected a whole number from 0"),
            ("THREADS_PER_JOB=0", "miner.conf:5: THREADS_PER_JOB=\"0\": expected a whole number from 1 to 1024"),
            ("WORKER_EXE=worker", "miner.conf:5: WORKER_EXE=\"worker\": expected an absolute path"),
            ("MAX_JOB_DISK_MB=0", "miner.conf:5: MAX_JOB_DISK_MB=\"0\": expected a whole number from 1 to 1073741824, e.g. 1024"),
            ("MAX_JOB_DISK_MB=1073741825", "MAX_JOB_DISK_MB=\"1073741825\": expected a whole number from 1"),
            ("MAX_JOB_DISK_MB=1G", "MAX_JOB_DISK_MB=\"1G\": expected a whole number"),
            ("SANDBOX_FS=chroot", "miner.conf:5: SANDBOX_FS=\"chroot\": expected auto, landlock or mount"),
            ("SANDBOX_FS=", "miner.conf:5: SANDBOX_FS=\"\": expected auto, landlock or mount"),
            ("CPU_KERNEL=avx512", "miner.conf:5: CPU_KERNEL=\"avx512\": expected auto, avx512-vnni, avx-vnni, avx2 or portable"),
            ("CPU_KERNEL=", "miner.conf:5: CPU_KERNEL=\"\": expected auto, avx512-vnni"),
            ("RUN_AS_USER=", "miner.conf:5: RUN_AS_USER=\"\": expected a user name: 1 to 32 characters"),
            ("RUN_AS_USER=Root", "miner.conf:5: RUN_AS_USER=\"Root\": expected a user name"),
            ("RUN_AS_USER=1000", "RUN_AS_USER=\"1000\": expected a user name"),
            ("RUN_AS_USER=-x", "RUN_AS_USER=\"-x\": expected a user name"),
            ("RUN_AS_USER=\"a b\"", "RUN_AS_USER=\"a b\": expected a user name"),
            ("RUN_AS_USER=a/b", "RUN_AS_USER=\"a/b\": expected a user name"),
            ("RUN_AS_USER=a$b", "RUN_AS_USER=\"a$b\": expected a user name"),
            ("COORD_URL=ftp://x", "miner.conf:5: COORD_URL=\"ftp://x\": expected an http:// or https:// base URL"),
            ("COORD_URL=coordinator.example.net", "COORD_URL=\"coordinator.example.net\": expected an http:// or https:// base URL"),
            ("COORD_URL=http://", "COORD_URL=\"http://\": expected an http"),
            ("COORD_URL=http://h/?a=1", "(no ?query or #fragment)"),
            ("COORD_URL=http://u:p@h", "(no user:password@"),
            ("WALLET_ADDR=\"a b\"", "miner.conf:5: WALLET_ADDR=\"a b\": expected a wallet address: 1 to 128 characters from A-Z a-z 0-9 . _ : -"),
            ("WALLET_ADDR=", "miner.conf:5: WALLET_ADDR=\"\": expected a wallet address"),
            // Look-alikes and invisible characters: U+202E RIGHT-TO-LEFT OVERRIDE, U+200B
            // ZERO WIDTH SPACE, a non-ASCII letter; and more than 128 characters.
            ("WALLET_ADDR=wallet_\u{202e}omed", "miner.conf:5: WALLET_ADDR=\"wallet_\\u{202e}omed\": expected a wallet address"),
            ("WALLET_ADDR=\"wal\u{200b}let\"", "miner.conf:5: WALLET_ADDR=\"wal\\u{200b}let\": expected a wallet address"),
            ("WALLET_ADDR=0xAbC:\u{fc}", "WALLET_ADDR=\"0xAbC:\u{fc}\": expected a wallet address"),
            ("MINER_ID=\"bad/id\"", "miner.conf:5: MINER_ID=\"bad/id\": expected 1 to 128 characters from A-Z a-z 0-9 . _ -"),
            ("MINER_ID=", "MINER_ID=\"\": expected 1 to 128"),
        ];
        for (line, want) in cases {
            let got = error_of(line);
            assert!(got.contains(want), "for {line}: got {got:?}, want {want:?}");
        }
        let long_wallet = format!("WALLET_ADDR={}", "w".repeat(129));
        assert!(error_of(&long_wallet).contains("expected a wallet address"));
        let wallet = format!("WALLET_ADDR=eip155:1:0x{}", "aB".repeat(20));
        assert!(config_with(&wallet).is_ok(), "{wallet}");
        let long_id = format!("MINER_ID={}", "a".repeat(129));
        assert!(error_of(&long_id).contains("expected 1 to 128"));
        assert_eq!(
            config_with(&format!("MINER_ID={}", "a".repeat(128)))
                .unwrap()
                .miner_id
                .len(),
            128
        );
    }

    #[test]
    fn quotes_and_comments() {
        assert_eq!(value_of("K=plain"), "plain");
        assert_eq!(value_of("K=\"double quoted\""), "double quoted");
        assert_eq!(value_of("K='single quoted'"), "single quoted");
        assert_eq!(value_of("K=\"a # not a comment\""), "a # not a comment");
        assert_eq!(value_of("K='a # not a comment'"), "a # not a comment");
        assert_eq!(value_of("K=20 # Health ping interval"), "20");
        assert_eq!(value_of("K=\"x\" # trailing"), "x");
        assert_eq!(
            value_of("K=a#b"),
            "a#b",
            "# inside a word is literal, as in sh"
        );
        assert_eq!(
            value_of("K=#b"),
            "#b",
            "# right after = is literal, as in sh"
        );
        assert_eq!(value_of("K="), "");
        assert_eq!(value_of("K=\"\""), "");
        assert_eq!(value_of("K= # only a comment"), "");
        assert_eq!(
            value_of("K=\"say \\\"hi\\\" \\\\ \\$ \\n\""),
            "say \"hi\" \\ $ \\n"
        );
        assert_eq!(value_of("K='no \\escapes'"), "no \\escapes");
        assert_eq!(value_of("K=a\\ b"), "a b");
        assert_eq!(value_of("K=\"con\"'cat'enated"), "concatenated");
        assert_eq!(value_of("  export   K = \"spaced\"  "), "spaced");
        assert_eq!(value_of("exportK=v"), "v");
        assert_eq!(value_of("K=\"é ünïcode\""), "é ünïcode");
    }

    #[test]
    fn full_line_comments_blank_lines_and_crlf() {
        let text = "# header\r\n\r\n   # indented comment\r\nCOORD_URL=\"http://h:1/\" # c\r\nWALLET_ADDR=w\r\nAPI_KEY='k'\r\nMINER_ID=m\r\n";
        let (raw, warnings) = parse(text, "f").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(raw.entries.len(), 4);
        assert_eq!(raw.entries["COORD_URL"].line, 4);
        let c = resolve(&raw, &no_env, &host()).unwrap();
        assert_eq!(c.coord_url, "http://h:1");
        assert_eq!(c.api_key.expose(), "k");
    }

    #[test]
    fn the_guides_section_3_file_works() {
        let guide = r#"
# AITBC Miner config
COORD_URL="https://coordinator.example.net" # Coordinator base URL
WALLET_ADDR="wallet1qxy2kgdygjrsqtzq2n0yrf..." # Your payout address
API_KEY="REPLACE_WITH_WALLET_API_KEY" # Wallet‑issued key for auth
MINER_ID="$(hostname)-gpu0" # Any stable node label
WORK_DIR="/tmp/aitbc-work" # Scratch space
HEARTBEAT_SECS=20 # Health ping interval
JOB_POLL_SECS=3 # Fetch cadence
MAX_CONCURRENCY=1 # Inference job slots

# GPU modes: auto|gpu|cpu
ACCEL_MODE="auto"
"#;
        let (raw, warnings) = parse(guide, "/etc/aitbc/miner.conf").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let c = resolve(&raw, &no_env, &host()).unwrap();
        assert_eq!(c.coord_url, "https://coordinator.example.net");
        assert_eq!(c.wallet_addr, "wallet1qxy2kgdygjrsqtzq2n0yrf...");
        assert_eq!(c.miner_id, "node7.example.org-gpu0");
        assert_eq!(c.accel_mode, AccelMode::Auto);
    }

    #[test]
    fn hostname_expands_to_the_real_host_name() {
        let real = nix::unistd::gethostname().unwrap().into_string().unwrap();
        let detected = HostFacts::detect();
        assert_eq!(detected.hostname, real);
        assert!(detected.cores >= 1);
        assert!(detected.ram_mb > 0, "this Linux host has /proc/meminfo");
        let (raw, _) = parse(
            "COORD_URL=http://h\nWALLET_ADDR=w\nAPI_KEY=k\nMINER_ID=\"$(hostname)-gpu0\"\n",
            "f",
        )
        .unwrap();
        let c = resolve(&raw, &no_env, &detected).unwrap();
        assert_eq!(c.miner_id, format!("{real}-gpu0"));
    }

    #[test]
    fn hostname_forms() {
        let h = |value: &str| {
            let (raw, _) = parse(&format!("K={value}"), "f").unwrap();
            raw.entries["K"].value.expand("node7.example.org").unwrap()
        };
        assert_eq!(h("$(hostname)"), "node7.example.org");
        assert_eq!(h("\"$( hostname  -s )-x\""), "node7-x");
        assert_eq!(h("$(hostname --short)"), "node7");
        assert_eq!(
            h("'$(hostname)'"),
            "$(hostname)",
            "single quotes are literal"
        );
        assert_eq!(
            h("\"\\$(hostname)\""),
            "$(hostname)",
            "escaped $ is literal"
        );
        let (raw, _) = parse("K=$(hostname)", "f").unwrap();
        assert_eq!(raw.entries["K"].value.expand(""), None);
        let (raw, _) = parse(
            "COORD_URL=http://h\nWALLET_ADDR=w\nAPI_KEY=k\nMINER_ID=$(hostname)\n",
            "f",
        )
        .unwrap();
        let unknown = HostFacts {
            hostname: String::new(),
            ..host()
        };
        let err = resolve(&raw, &no_env, &unknown).unwrap_err().to_string();
        assert!(
            err.starts_with("f:4: MINER_ID=<uses $(hostname)>: the host name is unknown"),
            "{err}"
        );
    }

    #[test]
    fn other_command_substitutions_are_refused() {
        for (line, want) in [
            (
                "MINER_ID=\"$(whoami)-gpu0\"",
                "f:1: MINER_ID=\"$(whoami)-gpu0\": command substitution $(whoami) is not supported",
            ),
            (
                "MINER_ID=$(rm -rf /)",
                "command substitution $(rm -rf /) is not supported",
            ),
            (
                "MINER_ID=$(hostname -f)",
                "command substitution $(hostname -f) is not supported",
            ),
            (
                "MINER_ID=`hostname`",
                "f:1: MINER_ID=`hostname`: backtick command substitution is not supported",
            ),
            (
                "MINER_ID=\"a`b`\"",
                "backtick command substitution is not supported",
            ),
            ("MINER_ID=$(hostname", "unterminated $( ... )"),
        ] {
            let err = parse(line, "f").unwrap_err().to_string();
            assert!(err.contains(want), "for {line}: got {err:?}");
            assert!(
                err.contains("never runs a shell") || err.contains("unterminated"),
                "{err}"
            );
        }
        // single quotes make them literal text, as in sh
        assert_eq!(value_of("K='`x` $(y)'"), "`x` $(y)");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, want) in [
            ("A=1\nB=\"open", "f:2: B=\"open: unterminated double quote"),
            ("B='open", "f:1: B='open: unterminated single quote"),
            (
                "B=two words",
                "f:1: B=two words: unexpected text after the value; quote a value",
            ),
            ("B=x\\", "f:1: B=x\\: a backslash at the end of the line"),
            (
                "just some words",
                "f:1: expected KEY=value or a # comment, found \"just some words\"",
            ),
            ("1FOO=v", "f:1: \"1FOO\" is not a key name"),
            ("1KEY=v", "f:1: <redacted> is not a key name"),
            ("MY-VAR=v", "f:1: \"MY-VAR\" is not a key name"),
            ("=v", "f:1: \"\" is not a key name"),
        ] {
            let err = parse(text, "f").unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "for {text:?}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn unknown_and_duplicate_keys_warn() {
        let (raw, warnings) = parse(
            "HEARTBEAT_SEC=5\nFOO=bar\nheartbeat_secs=1\nMAX_CONCURRENCY=1\nMAX_CONCURRENCY=2\n",
            "f",
        )
        .unwrap();
        let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "f:1: unknown key HEARTBEAT_SEC is ignored (did you mean HEARTBEAT_SECS?)",
                "f:2: unknown key FOO is ignored",
                "f:3: unknown key heartbeat_secs is ignored (did you mean HEARTBEAT_SECS?)",
                "f:5: MAX_CONCURRENCY is set again (first set on line 4); the last value wins",
            ]
        );
        assert_eq!(raw.entries["MAX_CONCURRENCY"].line, 5);
        let c = config_with("MAX_CONCURRENCY=1\nMAX_CONCURRENCY=2").unwrap();
        assert_eq!(c.max_concurrency, 2, "last wins");
    }

    #[test]
    fn literal_dollar_warns_and_stays() {
        let (raw, warnings) = parse("WORK_DIR=\"$HOME/work\"\nLOG_FILE='$x'\n", "f").unwrap();
        assert_eq!(
            warnings,
            [Warning {
                location: "f:1".into(),
                kind: WarningKind::LiteralDollar {
                    key: "WORK_DIR".into()
                }
            }]
        );
        assert_eq!(
            raw.entries["WORK_DIR"].value.expand("h").unwrap(),
            "$HOME/work"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let (raw, _) = parse(&format!("{MINIMAL}HEARTBEAT_SECS=20\n"), "f").unwrap();
        let env: HashMap<&str, &str> = [
            ("HEARTBEAT_SECS", "0.2"),
            ("JOB_POLL_SECS", "0.01"),
            ("MINER_ID", "$(hostname -s)-env"),
            ("API_KEY", "from-env"),
        ]
        .into();
        let lookup = |key: &str| env.get(key).map(|v| v.to_string());
        let c = resolve(&raw, &lookup, &host()).unwrap();
        assert_eq!(
            c.heartbeat,
            Duration::from_millis(200),
            "env beats the file"
        );
        assert_eq!(
            c.job_poll,
            Duration::from_millis(10),
            "env beats the default"
        );
        assert_eq!(c.miner_id, "node7-env", "env values expand $(hostname) too");
        assert_eq!(c.api_key.expose(), "from-env");
        assert_eq!(
            c.wallet_addr, "w1",
            "the file still counts where env is silent"
        );

        // required keys may come from the environment alone
        let env: HashMap<&str, &str> = [
            ("COORD_URL", "http://e"),
            ("WALLET_ADDR", "w"),
            ("API_KEY", "k"),
            ("MINER_ID", "m"),
        ]
        .into();
        let lookup = |key: &str| env.get(key).map(|v| v.to_string());
        let c = resolve(&RawConfig::without_file(), &lookup, &host()).unwrap();
        assert_eq!(c.source, None);
        assert_eq!(c.coord_url, "http://e");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let (raw, _) = parse(MINIMAL, "f").unwrap();
        for (key, value, want) in [
            (
                "HEARTBEAT_SECS",
                "x",
                "environment: HEARTBEAT_SECS=\"x\": expected seconds greater than 0",
            ),
            (
                "MINER_ID",
                "$(id)",
                "environment: MINER_ID=\"$(id)\": command substitution $(id) is not supported",
            ),
            (
                "API_KEY",
                "$(cat /secret)",
                "environment: API_KEY=<redacted>: command substitution $(...) is not supported",
            ),
            (
                "API_KEY",
                "has space",
                "environment: API_KEY=<redacted>: expected the wallet-issued API key",
            ),
        ] {
            let lookup = |k: &str| (k == key).then(|| value.to_string());
            let err = resolve(&raw, &lookup, &host()).unwrap_err().to_string();
            assert!(err.starts_with(want), "got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn missing_required_keys_are_named() {
        let required = DEFS
            .iter()
            .filter(|def| matches!(def.unset, Unset::Required(_)))
            .map(|def| def.name);
        for key in required {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}=")))
                .map(|l| format!("{l}\n"))
                .collect();
            let err = config_of(&text).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("miner.conf: required key {key} is not set; add {key}=... to the config file or set it in the environment")
            );
        }
        let err = resolve(&RawConfig::without_file(), &no_env, &host())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "no config file (/etc/aitbc/miner.conf is absent): required key COORD_URL"
            ),
            "{err}"
        );
    }

    #[test]
    fn api_key_never_shows() {
        let secret = "hunter2-SECRET";
        let text = MINIMAL.replace("s3cr3t-key", secret);
        let (raw, _) = parse(&format!("{text}MY_TOKEN={secret}\n"), "f").unwrap();
        let raw_debug = format!("{raw:?}");
        assert!(!raw_debug.contains(secret), "{raw_debug}");
        assert!(
            raw_debug.contains("\"API_KEY\": <redacted> (line 3)"),
            "{raw_debug}"
        );
        assert!(raw_debug.contains("\"MINER_ID\": RawEntry"), "{raw_debug}");
        let c = config_of(&text).unwrap();
        assert_eq!(c.api_key.expose(), secret);
        for shown in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!("{}", c.api_key),
        ] {
            assert!(!shown.contains(secret), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
        // errors about the key itself, in the file...
        for line in [
            format!("API_KEY=\"{secret} x\""),
            format!("API_KEY=\"{secret}"),
            format!("API_KEY={secret} trailing"),
            format!("API_KEY=$({secret})"),
            format!("API_KEY=`{secret}`"),
            format!("API_KEY {secret}"),
            format!("APIKEY=\"{secret}"),
        ] {
            let err = match parse(&line, "f") {
                Err(e) => e.to_string(),
                Ok((raw, _)) => resolve(&raw, &no_env, &host()).unwrap_err().to_string(),
            };
            assert!(!err.contains(secret), "leaked: {err}");
        }
        let err = config_of(&MINIMAL.replace("s3cr3t-key", "\"with space\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "miner.conf:3: API_KEY=<redacted>: expected the wallet-issued API key: 1 to 4096 printable ASCII characters without spaces"
        );
        // ...and warnings about the file never carry values
        let (_, warnings) = parse(
            &format!("API_KEY=\"${secret}\"\nAPI_KEY=x\nAPI_KY={secret}"),
            "f",
        )
        .unwrap();
        assert_eq!(warnings.len(), 3);
        for w in warnings {
            assert!(!w.to_string().contains(secret), "{w}");
        }
    }

    #[test]
    fn permission_warning_only_when_group_or_other_may_access_the_key() {
        let p = Path::new("/etc/aitbc/miner.conf");
        let w = permission_warning(p, 0o100644, true).unwrap();
        assert_eq!(
            w.to_string(),
            "/etc/aitbc/miner.conf: mode 0644 lets group or others access this file, which holds API_KEY; fix: chmod 600 /etc/aitbc/miner.conf"
        );
        assert!(permission_warning(p, 0o100600, true).is_none());
        assert!(permission_warning(p, 0o100400, true).is_none());
        assert!(
            permission_warning(p, 0o100620, true).is_some(),
            "group write"
        );
        assert!(
            permission_warning(p, 0o100604, true).is_some(),
            "other read"
        );
        assert!(
            permission_warning(p, 0o100644, false).is_none(),
            "no key, no secret"
        );
    }

    #[test]
    fn load_reads_a_real_file_and_checks_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("miner.conf");
        std::fs::write(&path, MINIMAL).unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (config, warnings) = load(Some(&path)).unwrap();
        assert_eq!(config.source.as_deref(), Some(path.as_path()));
        assert_eq!(config.miner_id, "m1");
        assert_eq!(
            warnings,
            [Warning {
                location: path.display().to_string(),
                kind: WarningKind::InsecurePermissions {
                    path: path.clone(),
                    mode: 0o644
                }
            }]
        );
        assert!(warnings[0]
            .to_string()
            .ends_with(&format!("fix: chmod 600 {}", path.display())));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_, warnings) = load(Some(&path)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn load_errors_on_a_missing_explicit_file_and_bad_text() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.conf");
        let err = load(Some(&missing)).unwrap_err();
        assert!(matches!(err, Error::ConfigRead { .. }));
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read config file {}: ", missing.display())));

        let bad = dir.path().join("bad.conf");
        std::fs::write(&bad, format!("{MINIMAL}\nJOB_POLL_SECS=abc\n")).unwrap();
        let err = load(Some(&bad)).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}:6: JOB_POLL_SECS=\"abc\": expected seconds greater than 0, e.g. 3 or 0.5",
                bad.display()
            )
        );

        let binary = dir.path().join("bin.conf");
        std::fs::write(&binary, b"K=\xff\xfe\n").unwrap();
        assert!(matches!(load(Some(&binary)), Err(Error::ConfigRead { .. })));
    }

    #[test]
    fn a_missing_default_file_means_environment_and_defaults_only() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("miner.conf");
        let (raw, warnings) = read_file(None, &default).unwrap();
        assert!(warnings.is_empty());
        assert!(raw.entries.is_empty());
        assert_eq!(raw.path, None);
        let err = resolve(&raw, &no_env, &host()).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "no config file ({} is absent): required key COORD_URL is not set; add \
                 COORD_URL=... to the config file or set it in the environment",
                default.display()
            )
        );
        let env = |key: &str| match key {
            "COORD_URL" => Some("https://c.example".to_string()),
            "WALLET_ADDR" | "API_KEY" | "MINER_ID" => Some("x".to_string()),
            _ => None,
        };
        let c = resolve(&raw, &env, &host()).unwrap();
        assert_eq!(
            (c.source, c.coord_url.as_str()),
            (None, "https://c.example")
        );

        // the default file, when present, is read like an explicit one
        std::fs::write(&default, MINIMAL).unwrap();
        let (raw, _) = read_file(None, &default).unwrap();
        assert_eq!(raw.path.as_deref(), Some(default.as_path()));
        assert_eq!(raw.entries.len(), 4);
        // an explicit path never falls back
        let err = read_file(Some(&dir.path().join("other.conf")), &default).unwrap_err();
        assert!(matches!(err, Error::ConfigRead { .. }), "{err}");
    }

    #[test]
    fn example_lists_every_key_and_states_the_true_defaults() {
        let example = example();
        let (raw, warnings) = parse(&example, "example").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        for key in KEYS {
            assert!(
                example.contains(&format!("\n{key}=")) || example.contains(&format!("\n#{key}=")),
                "example() does not list {key}"
            );
        }
        let from_example = resolve(&raw, &no_env, &host()).unwrap();
        let required_only: String = example
            .lines()
            .filter(|l| {
                DEFS.iter().any(|def| {
                    matches!(def.unset, Unset::Required(_))
                        && l.starts_with(&format!("{}=", def.name))
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let (raw, _) = parse(&required_only, "example").unwrap();
        let from_defaults = resolve(&raw, &no_env, &host()).unwrap();
        assert_eq!(
            from_example, from_defaults,
            "example() must state the real defaults"
        );
        assert_eq!(from_example.miner_id, "node7.example.org-cpu0");
    }

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            meminfo_total_mb("MemTotal:       16302436 kB\nMemFree: 1 kB\n"),
            Some(15920)
        );
        assert_eq!(meminfo_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(meminfo_total_mb("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(suggest("COORD_ULR"), Some("COORD_URL"));
        assert_eq!(suggest("WALLET"), None);
        assert_eq!(suggest("api_key"), Some("API_KEY"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = parse(&text, "p");
        }

        #[test]
        fn parse_never_panics_on_config_like_text(
            lines in proptest::collection::vec(
                "(export )?[A-Z_]{1,12}[ ]?=[ ]?[\"'$()`#\\\\a-z0-9 .\r-]{0,20}", 0..8)
        ) {
            let text = lines.join("\n");
            if let Ok((raw, _)) = parse(&text, "p") {
                let _ = resolve(&raw, &no_env, &host());
            }
        }

        #[test]
        fn seconds_round_trip(millis in 1u64..100_000_000) {
            let text = format!("{}.{:03}", millis / 1000, millis % 1000);
            proptest::prop_assert_eq!(parse_secs(&text, false).unwrap(), Duration::from_millis(millis));
        }
    }
}

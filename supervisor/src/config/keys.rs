//! The one table of config keys, [`DEFS`]: each key's name, what an unset key means, and its
//! line of documentation. Everything else is written from it: [`super::KEYS`] (the names
//! [`super::parse`] knows and [`super::load`] reads from the environment), the defaults
//! [`super::resolve`] fills in, [`example`] (`aitbc-miner example-config`), and, checked by a
//! test, README.md's key table under "## Configuration". What a value must look like stays
//! with its typed check in [`super::resolve`], the only code that reads the key.
//!
//! To add a key: a row here (README's table row is what the test prints), a field of
//! [`super::Config`] and its line in [`super::resolve`].
//!
//! This table holds no secret and [`example`] never writes one: `API_KEY`'s example value is a
//! placeholder.

use super::{DEFAULT_RUN_AS_USER, DEFAULT_STATUS_SOCKET, SECRET_KEY};

/// One config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    /// The name, in the file and in the environment.
    pub name: &'static str,
    /// What it means when neither the file nor the environment sets it.
    pub unset: Unset,
    /// One line of Markdown: README's "meaning" column, and the comment above the key in
    /// [`example`].
    pub doc: &'static str,
}

/// What an unset key means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unset {
    /// The miner does not start. The text is the value [`example`] writes (for a local test
    /// Coordinator); README shows `(required)`.
    Required(&'static str),
    /// This text, checked like a value written in the file; README shows it in backticks.
    Value(&'static str),
    /// The empty value, which means none of it; README shows the text in parentheses.
    Empty(&'static str),
    /// Computed from the host by [`super::resolve`]. README shows `shown`; [`example`] writes
    /// the key commented out, with `example` as its value.
    Host {
        /// How the default is computed (README's "default" column).
        shown: &'static str,
        /// A typical value.
        example: &'static str,
    },
}

const fn key(name: &'static str, unset: Unset, doc: &'static str) -> KeyDef {
    KeyDef { name, unset, doc }
}

use Unset::{Empty, Host, Required, Value};

/// Every key the miner understands, in README's (and [`example`]'s) order.
#[rustfmt::skip]
pub const DEFS: &[KeyDef] = &[
    key("COORD_URL", Required("http://127.0.0.1:8080"),
        "Coordinator base URL, `http://` or `https://`"),
    key("WALLET_ADDR", Required("wallet_demo"),
        "payout address, 1–128 of `A-Z a-z 0-9 . _ : -`; sent in every heartbeat, credited for \
         each proof"),
    key(SECRET_KEY, Required("CHANGE_ME"),
        "miner-scoped key, sent as `Authorization: Bearer`; never logged"),
    key("MINER_ID", Required("$(hostname)-cpu0"),
        "stable node label, 1–128 of `A-Z a-z 0-9 . _ -`"),
    key("WORK_DIR", Value("/tmp/aitbc-work"), "per-job scratch directories"),
    key("STATE_DIR", Value("/var/lib/aitbc-miner"),
        "durable state; unsent proofs wait in `STATE_DIR/spool`, what answers audits in \
         `STATE_DIR/audit`"),
    key("AUDIT_SPOOL_MB", Value("256"),
        "the most disk `STATE_DIR/audit` may hold (32 bytes per output row of each proved job \
         until it settles); when full, the miner takes no new job until entries go"),
    key("HEARTBEAT_SECS", Value("20"),
        "heartbeat interval (decimals allowed, as in every `_SECS` key)"),
    key("JOB_POLL_SECS", Value("3"), "least pause between two polls that found no job"),
    key("POLL_WAIT_SECS", Value("25"),
        "long-poll: how long the Coordinator may hold `next` open (0: off)"),
    key("MAX_CONCURRENCY", Value("1"), "job slots (1–64); never more jobs than this at once"),
    key("ACCEL_MODE", Value("auto"),
        "`auto`: the GPU when NVML sees one and `libcuda.so.1` loads, else the CPU; `gpu`: the \
         same, but running on the CPU is a warning saying why; `cpu`: never touch the GPU (see \
         README.md, \"The GPU\")"),
    key("BACKOFF_MIN_SECS", Value("0.5"),
        "first retry pause after network errors, 5xx, 429 and answers that are not the API's; \
         pauses grow to `BACKOFF_MAX_SECS` (full jitter)"),
    key("BACKOFF_MAX_SECS", Value("60"),
        "the longest retry pause, at least `BACKOFF_MIN_SECS` (the default rises to it); \
         `Retry-After` honoured up to it"),
    key("DRAIN_GRACE_SECS", Value("30"), "on SIGTERM, how long running jobs may finish"),
    key("MAX_JOB_RAM_MB", Host { shown: "80% of RAM / slots", example: "4096" },
        "the most memory one job may ask for"),
    key("MAX_JOB_RUNTIME_SECS", Value("3600"), "the most wall time one job may ask for"),
    key("MAX_JOB_CPU_SECS", Host { shown: "`3600` x cores", example: "14400" },
        "the most CPU time one job may ask for"),
    key("MAX_JOB_VRAM_MB", Value("0"),
        "the most GPU memory one job may ask for (its `limits.vram_mb`; 0: no GPU jobs); \
         declared in the heartbeat only in GPU mode"),
    key("MAX_JOB_DISK_MB", Value("1024"),
        "one job's scratch space: the size of the private tmpfs on its job directory (ENOSPC \
         past it; its pages count against the job's memory limit too) and the largest file it \
         may write (`RLIMIT_FSIZE`), > 0"),
    key("THREADS_PER_JOB", Host { shown: "cores / slots", example: "4" },
        "compute threads a job's worker uses"),
    key("WORKER_EXE", Empty("own binary"), "worker program, started as `WORKER_EXE worker`"),
    key("RUN_AS_USER", Value(DEFAULT_RUN_AS_USER),
        "started as root, the miner drops to this user after its set-up, and its workers run \
         as it; ignored when not started as root"),
    key("SANDBOX_FS", Value("auto"),
        "worker filesystem confinement: `auto` (Landlock if the kernel has it, else a \
         read-only mount-namespace view), `landlock` (required) or `mount`"),
    key("CPU_KERNEL", Value("auto"),
        "the int8 kernel CPU workers run: `auto` (the fastest this CPU has), or exactly \
         `avx512-vnni`, `avx-vnni`, `avx2` or `portable` (every one gives the same bytes): an \
         operator's workaround for a CPU whose fast path misbehaves, or to compare paths. A \
         worker whose CPU lacks the named kernel refuses to start"),
    key("LOG_FILE", Empty("none"),
        "also append logs here (with timestamps); never truncated. The unit allows \
         `/var/log/aitbc-miner.log`, the guide's file"),
    key("LOG_LEVEL", Value("info"), "a tracing filter, e.g. `info,aitbc_supervisor=debug`"),
    key("GPU_POLL_MS", Value("500"),
        "how often (10–60000 ms) the VRAM watch asks NVML for a running GPU job's device \
         memory"),
    key("GPU_MAX_TEMP_C", Value("90"),
        "at or above this GPU temperature (1–200 °C) the GPU is unhealthy and the miner takes \
         no jobs"),
    key("STATUS_SOCKET", Value(DEFAULT_STATUS_SOCKET),
        "the daemon's local status socket (mode 0600; empty: none). A missing directory is one \
         warning, never a failed start"),
    key("METRICS_FILE", Empty("none"),
        "write Prometheus text metrics here every `METRICS_INTERVAL_SECS` (atomically, mode \
         0644), e.g. `/var/lib/prometheus/node-exporter/aitbc_miner.prom`"),
    key("METRICS_INTERVAL_SECS", Value("15"), "how often `METRICS_FILE` is rewritten"),
];

/// The names of [`DEFS`], in order.
pub(super) const NAMES: [&str; DEFS.len()] = {
    let mut names = [""; DEFS.len()];
    let mut i = 0;
    while i < DEFS.len() {
        names[i] = DEFS[i].name;
        i += 1;
    }
    names
};

/// The row of [`DEFS`] for `name`.
///
/// # Panics
/// When `name` is not in [`DEFS`]: a key [`super::resolve`] reads must be in the table (every
/// test that resolves a config finds such a slip).
pub(super) fn def(name: &str) -> &'static KeyDef {
    DEFS.iter()
        .find(|def| def.name == name)
        .unwrap_or_else(|| panic!("config key {name} is missing from config::keys::DEFS"))
}

impl KeyDef {
    /// README's "default" column.
    pub fn default_shown(&self) -> String {
        match self.unset {
            Required(_) => "(required)".into(),
            Value(text) => format!("`{text}`"),
            Empty(what) => format!("({what})"),
            Host { shown, .. } => shown.into(),
        }
    }
}

const HEADER: &str = r#"# /etc/aitbc/miner.conf — AITBC miner configuration.
#
# Format: KEY=value lines, environment-style. Values may be unquoted, "double-quoted" or
# 'single-quoted'; '#' starts a comment outside quotes; an optional `export ` prefix is
# allowed. "$(hostname)" and "$(hostname -s)" expand to this host's name; nothing else is
# expanded and no shell is ever run ('$' elsewhere is kept literally).
# An environment variable with the same name as a key overrides the value here.
# This file holds the API key: keep it private with `chmod 600 /etc/aitbc/miner.conf`.
"#;

/// The widest comment line [`example`] writes.
const WIDTH: usize = 92;

/// A complete, commented config file listing every key of [`DEFS`] with its default; the
/// required keys hold values for a local test Coordinator. It parses and resolves without
/// warnings.
pub fn example() -> String {
    let mut out = HEADER.to_string();
    let mut section = "";
    for def in DEFS {
        let title = match def.unset {
            Required(_) => "# --- Required ",
            _ => "# --- Optional: each line holds the default ",
        };
        if title != section {
            section = title;
            out.push('\n');
            out.push_str(title);
            out.push_str(&"-".repeat(WIDTH.saturating_sub(title.len())));
            out.push('\n');
        }
        out.push('\n');
        comment(&mut out, def.doc);
        match def.unset {
            Required(text) | Value(text) => out.push_str(&assignment(def.name, text)),
            Empty(_) => {
                comment(&mut out, &format!("Empty: {}.", def.default_shown()));
                out.push_str(&assignment(def.name, ""));
            }
            Host { example, .. } => {
                comment(&mut out, &format!("Default: {}.", def.default_shown()));
                out.push('#');
                out.push_str(&assignment(def.name, example));
            }
        }
    }
    out
}

/// `text` as `# ` comment lines at most [`WIDTH`] wide (a longer word gets a line of its own).
fn comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split(' ') {
        if line.len() > 1 && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line.truncate(1);
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// `NAME=value`, double-quoted unless the value is a plain word.
fn assignment(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if plain {
        format!("{name}={value}\n")
    } else {
        format!("{name}=\"{value}\"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, resolve, HostFacts, KEYS};
    use super::*;

    /// README's key table: the rows under "## Configuration" that start with `|`, header and
    /// separator included.
    fn readme_table(readme: &str) -> Vec<&str> {
        let section = readme
            .split_once("\n## Configuration\n")
            .expect("README.md has a \"## Configuration\" section")
            .1;
        let section = section.split("\n## ").next().unwrap_or(section);
        section
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .collect()
    }

    /// The table README must hold, written from [`DEFS`].
    fn expected_table() -> Vec<String> {
        let mut rows = vec![
            "| key | default | meaning |".to_string(),
            "|---|---|---|".into(),
        ];
        rows.extend(
            DEFS.iter()
                .map(|def| format!("| `{}` | {} | {} |", def.name, def.default_shown(), def.doc)),
        );
        rows
    }

    /// Every column must match, row by row: the key and the order (an operator reads README
    /// to learn what the miner takes), the default (it is what an unset key means), and the
    /// meaning (it is also the comment `example-config` writes, so the two cannot drift).
    #[test]
    fn readme_key_table_is_the_key_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("read README.md");
        let found = readme_table(&readme);
        let expected = expected_table();
        let replacement = expected.join("\n");
        for (i, want) in expected.iter().enumerate() {
            let got = found.get(i).copied().unwrap_or("(no row)");
            assert_eq!(
                got, want,
                "README.md's key table, row {i}, differs from config::keys::DEFS; the table \
                 DEFS gives is:\n{replacement}"
            );
        }
        assert_eq!(
            found.len(),
            expected.len(),
            "README.md's key table has rows DEFS lacks; the table DEFS gives is:\n{replacement}"
        );
    }

    #[test]
    fn names_are_unique_and_docs_fit_a_table_cell() {
        for (i, def) in DEFS.iter().enumerate() {
            assert!(
                !DEFS[..i].iter().any(|other| other.name == def.name),
                "{} is in DEFS twice",
                def.name
            );
            assert!(
                !def.doc.contains('|') && !def.doc.contains('\n'),
                "{}",
                def.name
            );
        }
    }

    #[test]
    fn resolve_reads_every_key_of_the_table() {
        let (raw, _) = parse(
            "COORD_URL=http://127.0.0.1:8080\nWALLET_ADDR=w\nAPI_KEY=k\nMINER_ID=m\n",
            "f",
        )
        .unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let env = |key: &str| {
            asked.borrow_mut().push(key.to_string());
            None
        };
        let host = HostFacts {
            hostname: "h".into(),
            cores: 2,
            ram_mb: 1000,
        };
        resolve(&raw, &env, &host).unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        let mut names: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
        names.sort();
        assert_eq!(asked, names, "resolve must read each key of DEFS once");
    }

    #[test]
    fn example_follows_the_table() {
        let text = example();
        assert!(
            text.contains("\nCOORD_URL=\"http://127.0.0.1:8080\"\n"),
            "{text}"
        );
        assert!(text.contains("\nMINER_ID=\"$(hostname)-cpu0\"\n"), "{text}");
        assert!(text.contains("\nHEARTBEAT_SECS=20\n"), "{text}");
        assert!(text.contains("\n# Default: 80% of RAM / slots.\n#MAX_JOB_RAM_MB=4096\n"));
        assert!(
            text.contains("\n# Empty: (none).\nLOG_FILE=\"\"\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }
}

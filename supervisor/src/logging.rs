//! The miner's log output: `tracing` events as one line each on stderr and, when
//! `LOG_FILE`/`--log-file` is set, the same lines (with timestamps) appended to that file.
//!
//! How stderr is written depends on what it is ([`Console::detect`]): a terminal gets ANSI
//! colours; journald (systemd sets `JOURNAL_STREAM` to stderr's `device:inode`) gets lines
//! without a timestamp (the journal keeps its own) that start with a `<N>` syslog priority, so
//! `journalctl -p warning -u aitbc-miner` filters by level; anything else gets plain lines.
//!
//! Every field and message is written through [`crate::untrusted::escape`], so text that came
//! from the network or a worker (a job's workload, a refusal's message) can neither break a
//! line nor carry an ESC byte or a Unicode format character into the file, the journal or a
//! terminal (tests/suite/hostile_coordinator.rs tries).
//!
//! This module must never truncate an existing log file (it opens with `O_APPEND`, creating it
//! with mode 0600), and must never format the API key: `config::ApiKey` prints `<redacted>`,
//! and the tests here check that a logged `Config` does not carry the key.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Registry};

use crate::Error;

/// Keeps the log file open while the miner runs; drop it last. Dropping it syncs the file so
/// that the final lines reach the disk.
#[derive(Debug)]
pub struct LogGuard {
    file: Option<(PathBuf, Arc<File>)>,
}

impl LogGuard {
    /// The file that events are appended to, if any.
    pub fn log_file(&self) -> Option<&Path> {
        self.file.as_ref().map(|(path, _)| path.as_path())
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some((_, file)) = &self.file {
            // Best effort at exit; there is nowhere left to report a failure.
            let _ = file.sync_data();
        }
    }
}

/// Opens `path` for appending, creating it with mode 0600; an existing file keeps its content
/// and its mode.
pub fn open_append(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| Error::LogOpen {
            path: path.to_path_buf(),
            source,
        })
}

/// Parses a `LOG_LEVEL` directive into a filter.
pub fn filter(level: &str) -> Result<EnvFilter, Error> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|e| Error::LogLevel {
            level: level.to_string(),
            reason: e.to_string(),
        })
}

/// How the console (stderr) lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// A terminal: timestamps and ANSI colours.
    Terminal,
    /// A pipe or file: timestamps, no colours.
    Plain,
    /// journald: no timestamp, no colours, a `<N>` syslog priority first.
    Journal,
}

impl Console {
    /// What stderr is now: journald when `JOURNAL_STREAM` names stderr's device and inode
    /// (systemd's own test: a child that redirected stderr elsewhere must not claim it).
    pub fn detect() -> Console {
        use std::os::fd::AsFd;
        let journal = std::env::var("JOURNAL_STREAM").ok();
        let stat = nix::sys::stat::fstat(io::stderr().as_fd()).ok();
        match (journal, stat) {
            (Some(stream), Some(st)) if journal_stream_is(&stream, st.st_dev, st.st_ino) => {
                Console::Journal
            }
            _ if io::stderr().is_terminal() => Console::Terminal,
            _ => Console::Plain,
        }
    }
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`, decimal) names the file with this device
/// and inode number.
pub fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

/// The syslog priority journald reads from a line's `<N>` prefix (`sd-daemon(3)`).
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The journald line format: `<N>` and then tracing's usual line without its timestamp.
struct JournalFormat(format::Format<format::Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// How every layer writes an event's fields: `name=value`, space-separated, the message bare,
/// each value [`crate::untrusted::escape`]d.
fn escaped_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = crate::untrusted::escape(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{field}={text}")
        }
    })
    .delimited(" ")
}

/// Builds the subscriber without installing it: events at or above `level` go to `console`
/// in the given style and, when `log_file` is given, are appended to that file with
/// timestamps and without colours. [`init`] calls this with stderr; tests use it with
/// `tracing::subscriber::with_default`.
pub fn subscriber<W>(
    level: &str,
    log_file: Option<&Path>,
    console: W,
    style: Console,
) -> Result<(impl tracing::Subscriber + Send + Sync, LogGuard), Error>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(level)?;
    let file = match log_file {
        Some(path) => Some((path.to_path_buf(), Arc::new(open_append(path)?))),
        None => None,
    };
    let console_layer = match style {
        Console::Journal => fmt::layer()
            .fmt_fields(escaped_fields())
            .with_writer(console)
            .with_ansi(false)
            .event_format(JournalFormat(fmt::format().without_time().with_ansi(false)))
            .boxed(),
        _ => fmt::layer()
            .fmt_fields(escaped_fields())
            .with_writer(console)
            .with_ansi(style == Console::Terminal)
            .boxed(),
    };
    let file_layer = file.as_ref().map(|(_, file)| {
        fmt::layer()
            .fmt_fields(escaped_fields())
            .with_writer(Arc::clone(file))
            .with_ansi(false)
    });
    let subscriber = Registry::default()
        .with(filter)
        .with(console_layer)
        .with(file_layer);
    Ok((subscriber, LogGuard { file }))
}

/// Installs the process-wide logger: stderr in the style [`Console::detect`] finds plus, when
/// `log_file` is given, the file opened for appending. Keep the returned guard alive until exit.
pub fn init(level: &str, log_file: Option<&Path>) -> Result<LogGuard, Error> {
    let (subscriber, guard) = subscriber(level, log_file, io::stderr, Console::detect())?;
    subscriber
        .try_init()
        .map_err(|e| Error::LogAlreadyInitialised(e.to_string()))?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, resolve, HostFacts};
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "sk-live-0123456789abcdef";

    fn quiet_subscriber(
        level: &str,
        file: &Path,
    ) -> (impl tracing::Subscriber + Send + Sync, LogGuard) {
        subscriber(level, Some(file), io::sink, Console::Plain).expect("subscriber builds")
    }

    #[test]
    fn a_logged_config_never_carries_the_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("miner.log");
        let text = format!(
            "COORD_URL=http://127.0.0.1:1\nWALLET_ADDR=w\nAPI_KEY={SECRET}\nMINER_ID=logged-miner\n"
        );
        let (raw, _) = parse(&text, "t").unwrap();
        let host = HostFacts {
            hostname: "h".into(),
            cores: 2,
            ram_mb: 1024,
        };
        let config = resolve(&raw, &|_| None, &host).unwrap();
        assert_eq!(config.api_key.expose(), SECRET);

        let (sub, guard) = quiet_subscriber("debug", &log);
        tracing::subscriber::with_default(sub, || {
            tracing::debug!(?config, "loaded");
            tracing::info!(api_key = %config.api_key, "key in a field");
            tracing::debug!("{config:#?}");
        });
        assert_eq!(guard.log_file(), Some(log.as_path()));
        drop(guard);

        let written = std::fs::read_to_string(&log).unwrap();
        assert!(written.contains("logged-miner"), "{written}");
        assert!(written.contains("<redacted>"), "{written}");
        assert!(!written.contains(SECRET), "the key leaked: {written}");
        assert!(!written.contains('\u{1b}'), "no ANSI escapes in the file");
    }

    #[test]
    fn the_file_is_appended_to_and_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("new.log");
        {
            let (sub, _guard) = quiet_subscriber("info", &log);
            tracing::subscriber::with_default(sub, || tracing::info!("first run"));
        }
        let mode = std::fs::metadata(&log).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "created with mode 0600");
        {
            let (sub, _guard) = quiet_subscriber("info", &log);
            tracing::subscriber::with_default(sub, || tracing::info!("second run"));
        }
        let written = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2, "{written}");
        assert!(lines[0].ends_with("first run"), "{written}");
        assert!(lines[1].ends_with("second run"), "{written}");

        // an existing file keeps its content and mode
        let old = dir.path().join("old.log");
        std::fs::write(&old, "from the guide's script\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o640)).unwrap();
        {
            let (sub, _guard) = quiet_subscriber("info", &old);
            tracing::subscriber::with_default(sub, || tracing::warn!("appended"));
        }
        let written = std::fs::read_to_string(&old).unwrap();
        assert!(
            written.starts_with("from the guide's script\n"),
            "{written}"
        );
        assert!(written.trim_end().ends_with("appended"), "{written}");
        let mode = std::fs::metadata(&old).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn text_from_outside_cannot_forge_a_line_or_reach_the_terminal() {
        let forged =
            "x\n2026-01-01T00:00:00.000000Z ERROR forged: API_KEY=stolen\u{1b}[31m\u{202e}";
        for style in [Console::Plain, Console::Journal, Console::Terminal] {
            let dir = tempfile::tempdir().unwrap();
            let (out, file) = (dir.path().join("console"), dir.path().join("miner.log"));
            let console = Arc::new(File::create(&out).unwrap());
            let (sub, guard) = subscriber("info", Some(&file), console, style).unwrap();
            tracing::subscriber::with_default(sub, || {
                tracing::warn!(workload = %forged, code = forged, "refused: {forged}");
                tracing::info!("next");
            });
            drop(guard);
            for path in [&out, &file] {
                let written = std::fs::read_to_string(path).unwrap();
                let lines: Vec<&str> = written.lines().collect();
                assert_eq!(lines.len(), 2, "{style:?} {}: {written}", path.display());
                assert!(
                    !written.contains("\n2026-01-01") && !written.contains('\u{202e}'),
                    "{written}"
                );
                if style != Console::Terminal || path == &file {
                    assert!(!written.contains('\u{1b}'), "{style:?}: {written}");
                }
                assert_eq!(
                    lines[0]
                        .matches("forged: API_KEY=stolen\\u{1b}[31m\\u{202e}")
                        .count(),
                    3,
                    "{written}"
                );
            }
        }
    }

    #[test]
    fn journald_lines_carry_a_priority_and_no_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("console");
        let console = Arc::new(File::create(&out).unwrap());
        let (sub, _guard) = subscriber("debug", None, console, Console::Journal).unwrap();
        tracing::subscriber::with_default(sub, || {
            tracing::error!("e1");
            tracing::warn!("w1");
            tracing::info!(job = "j-1", "i1");
            tracing::debug!("d1");
        });
        let written = std::fs::read_to_string(&out).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 4, "{written}");
        for (line, (prio, text)) in lines
            .iter()
            .zip([(3, "e1"), (4, "w1"), (6, "i1"), (7, "d1")])
        {
            assert!(line.starts_with(&format!("<{prio}>")), "{line}");
            assert!(line.contains(text), "{line}");
            // tracing's timestamp starts with the year; journald adds its own
            assert!(!line[3..].trim_start().starts_with("20"), "{line}");
            assert!(!line.contains('\u{1b}'), "{line}");
        }
        assert!(lines[2].contains("job=\"j-1\""), "{written}");
    }

    #[test]
    fn journal_stream_must_name_this_stderr() {
        assert!(journal_stream_is("8:12345", 8, 12345));
        assert!(journal_stream_is("8:12345\n", 8, 12345));
        assert!(!journal_stream_is("8:12346", 8, 12345));
        assert!(!journal_stream_is("9:12345", 8, 12345));
        assert!(!journal_stream_is("", 8, 12345));
        assert!(!journal_stream_is("8", 8, 12345));
        assert!(!journal_stream_is("x:y", 8, 12345));
    }

    #[test]
    fn the_level_filters_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("l.log");
        let (sub, _guard) = quiet_subscriber("warn,aitbc_supervisor=debug", &log);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "other_crate", "hidden info");
            tracing::warn!(target: "other_crate", "shown warn");
            tracing::debug!(target: "aitbc_supervisor::slots", "shown debug");
            tracing::trace!(target: "aitbc_supervisor::slots", "hidden trace");
        });
        let written = std::fs::read_to_string(&log).unwrap();
        assert!(written.contains("shown warn"), "{written}");
        assert!(written.contains("shown debug"), "{written}");
        assert!(!written.contains("hidden"), "{written}");
    }

    #[test]
    fn errors_name_the_level_or_the_file() {
        let err = filter("info,foo=loud").unwrap_err().to_string();
        assert!(
            err.starts_with("LOG_LEVEL=\"info,foo=loud\": expected a log filter"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("m.log");
        let err = subscriber("info", Some(&path), io::sink, Console::Plain)
            .err()
            .expect("a missing directory is an error")
            .to_string();
        assert!(
            err.starts_with(&format!(
                "cannot open log file {} for appending: ",
                path.display()
            )),
            "{err}"
        );
    }
}

//! The miner's log output: `tracing` events as one line each on stderr (ANSI colours only when
//! stderr is a terminal, so journald gets plain lines) and, when `LOG_FILE`/`--log-file` is
//! set, the same lines appended to that file.
//!
//! This module must never truncate an existing log file (it opens with `O_APPEND`, creating it
//! with mode 0600), and must never format the API key: `config::ApiKey` prints `<redacted>`,
//! and the tests here check that a logged `Config` does not carry the key.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
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

/// Builds the subscriber without installing it: events at or above `level` go to `console`
/// (with ANSI colours when `ansi`) and, when `log_file` is given, are appended to that file
/// without colours. [`init`] calls this with stderr; tests use it with
/// `tracing::subscriber::with_default`.
pub fn subscriber<W>(
    level: &str,
    log_file: Option<&Path>,
    console: W,
    ansi: bool,
) -> Result<(impl tracing::Subscriber + Send + Sync, LogGuard), Error>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(level)?;
    let file = match log_file {
        Some(path) => Some((path.to_path_buf(), Arc::new(open_append(path)?))),
        None => None,
    };
    let console_layer = fmt::layer().with_writer(console).with_ansi(ansi);
    let file_layer = file
        .as_ref()
        .map(|(_, file)| fmt::layer().with_writer(Arc::clone(file)).with_ansi(false));
    let subscriber = Registry::default()
        .with(filter)
        .with(console_layer)
        .with(file_layer);
    Ok((subscriber, LogGuard { file }))
}

/// Installs the process-wide logger: stderr (ANSI only on a terminal) plus, when `log_file` is
/// given, the file opened for appending. Keep the returned guard alive until exit.
pub fn init(level: &str, log_file: Option<&Path>) -> Result<LogGuard, Error> {
    let ansi = io::stderr().is_terminal();
    let (subscriber, guard) = subscriber(level, log_file, io::stderr, ansi)?;
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
        subscriber(level, Some(file), io::sink, false).expect("subscriber builds")
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
        let err = subscriber("info", Some(&path), io::sink, false)
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

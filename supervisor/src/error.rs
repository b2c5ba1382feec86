//! The supervisor crate's one error enum: everything the config parser, logging set-up, `run`,
//! `run_local` and their helpers can fail with, each variant naming the thing that failed and
//! the value involved.
//!
//! It must never carry the API key or a request header: errors end up in logs and on terminals.

use std::io;
use std::path::PathBuf;

use protocol::api::FailReason;

/// Why the supervisor (or one of its parts) could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `std::env::current_exe` failed, so the miner cannot re-run itself as a worker.
    #[error("cannot locate the miner's own executable to start workers (set WORKER_EXE): {0}")]
    CurrentExe(io::Error),
    /// A worker process could not be started.
    #[error("starting worker {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A worker started but did not say Hello properly.
    #[error("worker {program} did not start: {message}")]
    WorkerStart {
        program: PathBuf,
        message: String,
        /// The worker's exit code when it exited on its own before Hello (3: its set-up
        /// failed, e.g. a GPU worker without a CUDA driver).
        exit_code: Option<i32>,
    },
    /// A job attempt ended without output (used by `run_local`, where there is no Coordinator
    /// to report the failure to).
    #[error("job failed: {}: {message}", reason.as_str())]
    Job { reason: FailReason, message: String },
    /// The proof spool could not be read or written.
    #[error("proof spool {path}: {source}")]
    Spool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The audit spool (`STATE_DIR/audit`) could not be read or written.
    #[error("audit spool {path}: {source}")]
    AuditSpool {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// WORK_DIR could not be created.
    #[error("WORK_DIR {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The HTTP client could not be built (TLS backend, bad URL).
    #[error("HTTP client for {url}: {message}")]
    Client { url: String, message: String },
    /// A task of the supervisor panicked or was cancelled.
    #[error("supervisor task {task} ended abnormally: {message}")]
    Task { task: &'static str, message: String },

    // --- configuration (config.rs) ---
    /// The file could not be read (missing when named explicitly, unreadable, not UTF-8).
    #[error("cannot read config file {}: {source}", path.display())]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line of the file is not `KEY=value`, a comment or blank.
    #[error("{location}: {message}")]
    ConfigSyntax {
        /// `file:line`.
        location: String,
        /// What is wrong, with the offending text unless it may be secret.
        message: String,
    },
    /// A value is not what its key expects.
    #[error("{location}: {shown}: {expected}")]
    ConfigInvalid {
        /// `file:line` or `environment`.
        location: String,
        /// `KEY="value"`, or `API_KEY=<redacted>`.
        shown: String,
        /// What the key expects, with an example.
        expected: String,
    },
    /// A required key is set neither in the file nor in the environment.
    #[error("{location}: required key {key} is not set; add {key}=... to the config file or set it in the environment")]
    ConfigMissing {
        /// The file, or a note that there was none.
        location: String,
        /// The key.
        key: &'static str,
    },

    // --- privileges (privilege.rs) ---
    /// `RUN_AS_USER` names no user of this system (or the user database could not be read).
    #[error("RUN_AS_USER={user:?}: {message}")]
    RunAsUser {
        /// The user name as configured.
        user: String,
        /// What went wrong and how to fix it.
        message: String,
    },
    /// A step of giving up root (or capabilities) failed; the miner must not go on.
    #[error("dropping privileges: {step}: {source}")]
    Privilege {
        /// The step, e.g. "setresuid(65534)".
        step: String,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// After dropping privileges, the process still holds something it must not.
    #[error("privileges were not dropped: {0}")]
    PrivilegeCheck(String),
    /// A directory the run-as user needs (WORK_DIR, STATE_DIR, the spool) could not be
    /// prepared for it.
    #[error("{key} {}: {message}", path.display())]
    Directory {
        /// `WORK_DIR`, `STATE_DIR` or `STATE_DIR/spool`.
        key: &'static str,
        /// The directory.
        path: PathBuf,
        /// What is wrong, with the fix.
        message: String,
    },

    // --- cgroups (cgroup/) ---
    /// A cgroup file or directory could not be created, written or removed.
    #[error("cgroup {}: {action}: {source}", path.display())]
    Cgroup {
        /// The cgroup directory or control file.
        path: PathBuf,
        /// What was being done, e.g. "create", "write 134217728 to memory.max".
        action: String,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// Processes were still in a worker's cgroup after the whole-cgroup kill and its wait.
    #[error("cgroup {}: {left} process(es) still there {waited:?} after the kill", path.display())]
    CgroupKill {
        /// The worker's cgroup.
        path: PathBuf,
        /// How many were left.
        left: usize,
        /// How long the kill waited.
        waited: std::time::Duration,
    },

    // --- status socket and metrics file (status/) ---
    /// The status socket could not be set up; the daemon runs without it.
    #[error("status socket {}: {message}", path.display())]
    StatusSocket {
        /// `STATUS_SOCKET`.
        path: PathBuf,
        /// What is wrong, with the fix.
        message: String,
    },
    /// `aitbc-miner status` found no daemon answering on the socket.
    #[error("cannot reach the miner at {} ({source}); is it running? check `systemctl status aitbc-miner`", path.display())]
    StatusUnreachable {
        /// The socket tried.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// The daemon answered on the status socket, but with an error or something unreadable.
    #[error("the miner at {} answered: {message}", path.display())]
    StatusReply {
        /// The socket asked.
        path: PathBuf,
        /// The answer, or why it could not be read.
        message: String,
    },
    /// `METRICS_FILE` could not be written.
    #[error("METRICS_FILE {}: {source}", path.display())]
    MetricsFile {
        /// The metrics file.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },

    // --- logging (logging.rs) ---
    /// The filter directive (`LOG_LEVEL`) does not parse.
    #[error("LOG_LEVEL={level:?}: expected a log filter such as info, debug or aitbc_supervisor=debug,warn ({reason})")]
    LogLevel {
        /// The directive as given.
        level: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The log file cannot be opened for appending.
    #[error("cannot open log file {} for appending: {source}", path.display())]
    LogOpen {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A global subscriber is already installed in this process.
    #[error("logging is already initialised in this process: {0}")]
    LogAlreadyInitialised(String),
}

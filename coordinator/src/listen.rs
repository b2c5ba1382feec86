//! Accepting connections when file descriptors run out: the listener `serve` hands to axum,
//! and the start-up raise of RLIMIT_NOFILE.
//!
//! axum's own `TcpListener` listener retries a failed `accept` after a second without saying
//! anything (its log needs a feature this crate does not enable), so a Coordinator out of
//! descriptors stalled new connections silently. `Acceptor` says why, once a minute at most
//! while it lasts, and keeps serving: connections already open go on, and new ones wait in the
//! listen queue until descriptors are free again. Nothing here may panic or end the server.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use tokio::net::{TcpListener, TcpStream};

/// How long to wait before accepting again after a failed `accept`.
const RETRY: Duration = Duration::from_millis(100);
/// Least time between two log lines about the same trouble.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (every connection holds a
/// descriptor) and returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

/// The soft RLIMIT_NOFILE, for log lines (0 when it cannot be read).
fn nofile_limit() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}

/// Why `accept` failed, in an operator's words; `None` for a connection that was reset before
/// it could be accepted (nothing is wrong with the server: accept the next one at once).
pub fn accept_failure(e: &io::Error) -> Option<String> {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return None;
    }
    let fix = "new connections wait in the listen queue until open ones close; raise the \
               limit (LimitNOFILE= in the systemd unit, or ulimit -n)";
    Some(match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE) => format!(
            "cannot accept connections: EMFILE, this process has used up its RLIMIT_NOFILE of \
             {} file descriptors; {fix}",
            nofile_limit()
        ),
        Some(Errno::ENFILE) => format!(
            "cannot accept connections: ENFILE, the system-wide file table is full \
             (fs.file-max; this process's RLIMIT_NOFILE is {}); {fix}",
            nofile_limit()
        ),
        _ => format!("cannot accept connections: {e}; retrying"),
    })
}

/// The listener `Coordinator::serve` gives axum.
pub(crate) struct Acceptor {
    listener: TcpListener,
    /// When the last failure was logged.
    logged: Option<Instant>,
    /// Accepts that failed since the last successful one.
    failed: u64,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener) -> Acceptor {
        Acceptor {
            listener,
            logged: None,
            failed: 0,
        }
    }
}

impl axum::serve::Listener for Acceptor {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let e = match self.listener.accept().await {
                Ok(conn) => {
                    if self.failed > 0 {
                        tracing::info!(failed = self.failed, "accepting connections again");
                        self.failed = 0;
                    }
                    return conn;
                }
                Err(e) => e,
            };
            let Some(why) = accept_failure(&e) else {
                continue;
            };
            self.failed += 1;
            if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                self.logged = Some(Instant::now());
                tracing::error!("{why}");
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_name_the_errno_and_the_limit() {
        let of = |errno: Errno| accept_failure(&io::Error::from_raw_os_error(errno as i32));
        let emfile = of(Errno::EMFILE).unwrap();
        assert!(
            emfile.starts_with("cannot accept connections: EMFILE,"),
            "{emfile}"
        );
        assert!(emfile.contains("RLIMIT_NOFILE of "), "{emfile}");
        assert!(emfile.contains("LimitNOFILE="), "{emfile}");
        let enfile = of(Errno::ENFILE).unwrap();
        assert!(
            enfile.starts_with("cannot accept connections: ENFILE,"),
            "{enfile}"
        );
        assert!(enfile.contains("RLIMIT_NOFILE"), "{enfile}");
        let other = of(Errno::ENOBUFS).unwrap();
        assert!(other.starts_with("cannot accept connections: "), "{other}");
        assert_eq!(of(Errno::ECONNABORTED), None);
    }

    #[test]
    fn the_soft_nofile_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(raise_nofile_limit().unwrap(), hard);
    }
}

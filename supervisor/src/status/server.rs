//! The status module's I/O: the local Unix socket `STATUS_SOCKET` ([`bind`], [`StatusListener`],
//! [`StatusServer`] and its accept loop), its client for the command line ([`query`]), and the
//! task that rewrites `METRICS_FILE` ([`metrics_task`]). The request line's framing and parsing
//! and the [`answer`] to it, and the once-per-change [`Complaint`], are pure and sit here with
//! the I/O that uses them.
//!
//! This file must never open a TCP port, never talk to the Coordinator, never block the
//! runtime on a client (every read and write is bounded in size and time, and at most
//! [`MAX_CLIENTS`] are served at once), never delete a file it did not create (a stale socket
//! is removed only when nothing answers on it; at shutdown only the socket it bound), and never
//! let a bad request or a failed write stop the daemon.

use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use super::{render_metrics, Status};
use crate::config::MAX_SOCKET_PATH;
use crate::Error;

/// The longest request line the socket reads (`metrics` is 7 bytes).
pub const MAX_REQUEST: usize = 64;
/// How long a client has to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at the same time; more are told the daemon is busy.
pub const MAX_CLIENTS: usize = 8;
/// The largest answer [`query`] reads.
const MAX_ANSWER: u64 = 4 << 20;

// ---------------------------------------------------------------------------------------------
// The request line (pure).

/// What a client may ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The JSON [`Snapshot`](crate::status::Snapshot).
    Status,
    /// [`render_metrics`].
    Metrics,
}

impl Request {
    pub fn as_str(self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Metrics => "metrics",
        }
    }
}

/// Whether a whole request is buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed<'a> {
    /// No newline yet and the client may send more.
    Incomplete,
    /// The line, without its newline (or all that came before the client closed).
    Line(&'a [u8]),
    /// More than [`MAX_REQUEST`] bytes without a newline.
    TooLong,
}

/// Looks for the request line in what was read so far; `eof` when the client closed.
pub fn frame(buf: &[u8], eof: bool) -> Framed<'_> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) if i <= MAX_REQUEST => Framed::Line(&buf[..i]),
        Some(_) => Framed::TooLong,
        None if buf.len() > MAX_REQUEST => Framed::TooLong,
        None if eof => Framed::Line(buf),
        None => Framed::Incomplete,
    }
}

/// Parses a request line (surrounding blanks and a trailing `\r` are ignored).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = String::from_utf8_lossy(line);
    match text.trim() {
        "status" => Ok(Request::Status),
        "metrics" => Ok(Request::Metrics),
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(format!(
                "unknown request {shown:?}; send one line: status or metrics"
            ))
        }
    }
}

/// The answer to a request.
pub fn answer(status: &Status, request: Result<Request, String>) -> String {
    match request {
        Ok(Request::Status) => match serde_json::to_string(&status.snapshot()) {
            Ok(json) => json + "\n",
            Err(e) => format!("error: the snapshot does not serialise: {e}\n"),
        },
        Ok(Request::Metrics) => render_metrics(&status.snapshot()),
        Err(message) => format!("error: {message}\n"),
    }
}

/// Tells each new failure once, and the recovery once: for a periodic task whose failures
/// must be seen but must not fill the log.
#[derive(Debug, Default)]
pub struct Complaint {
    last: Option<String>,
}

/// What [`Complaint::note`] says to log.
#[derive(Debug, PartialEq, Eq)]
pub enum Note {
    /// A failure different from the last one.
    Failed(String),
    /// Success after a failure.
    Recovered,
}

impl Complaint {
    pub fn note(&mut self, result: Result<(), String>) -> Option<Note> {
        match result {
            Ok(()) => self.last.take().map(|_| Note::Recovered),
            Err(e) if self.last.as_deref() == Some(e.as_str()) => None,
            Err(e) => {
                self.last = Some(e.clone());
                Some(Note::Failed(e))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The socket (I/O).

/// Identifies the socket file this daemon bound, so it removes only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Connects to the Unix socket `path` without waiting: a listener whose backlog is full (one
/// that accepts nothing) is `WouldBlock` at once instead of a hang. The stream is blocking.
fn connect(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    nix::sys::socket::connect(fd.as_raw_fd(), &addr)?;
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Binds the status socket at `path`, mode 0600: the socket is bound under a temporary name
/// in the same directory, restricted, then renamed into place, so it is never reachable with
/// looser permissions. An existing socket file is replaced only when nothing answers on it
/// (a stale one from a crash); anything else in the way (another daemon answering, a file
/// that is not a socket, a missing directory) is an error that names the fix — the caller
/// warns and runs without the socket.
pub fn bind(path: &Path) -> Result<StatusListener, Error> {
    let fail = |message: String| Error::StatusSocket {
        path: path.to_owned(),
        message,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => return Err(fail("no directory in the path".into())),
    };
    if !dir.is_dir() {
        return Err(fail(format!(
            "directory {} does not exist (systemd creates /run/aitbc-miner through \
             RuntimeDirectory=aitbc-miner); running without a status socket",
            dir.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(format!("cannot inspect it: {e}"))),
        Ok(m) if !m.file_type().is_socket() => {
            return Err(fail(
                "something that is not a socket is in the way; it is left alone (remove it \
                 or set STATUS_SOCKET elsewhere)"
                    .into(),
            ))
        }
        Ok(_) => match connect(path) {
            Ok(_) => {
                return Err(fail(
                    "another process answers on it (a second miner?); running without a \
                     status socket (give each miner its own STATUS_SOCKET)"
                        .into(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(fail(
                    "another process listens on it but accepts nothing (a wedged miner?); \
                     running without a status socket"
                        .into(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                // Stale: a socket file nobody listens on.
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove the stale socket: {e}")))?;
            }
            Err(e) => {
                return Err(fail(format!(
                    "cannot tell whether the socket there is in use ({e}); it is left alone"
                )))
            }
        },
    }
    // The temporary name must fit a socket address too; when it does not (a directory path
    // near the limit), the socket is bound in place and restricted at once, guarded meanwhile
    // by its directory alone.
    let tmp = dir.join(format!(".{}.tmp", std::process::id()));
    let at = if tmp.as_os_str().len() <= MAX_SOCKET_PATH {
        tmp.as_path()
    } else {
        path
    };
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(at)
        .map_err(|e| fail(format!("cannot bind {}: {e}", at.display())))?;
    let mut placed = std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600));
    if at != path {
        placed = placed.and_then(|()| std::fs::rename(at, path));
    }
    if let Err(e) = placed {
        let _ = std::fs::remove_file(at);
        return Err(fail(format!("cannot put the socket in place: {e}")));
    }
    let id = file_id(path).ok_or_else(|| fail("the socket vanished after binding".into()))?;
    Ok(StatusListener {
        listener,
        path: path.to_owned(),
        id,
    })
}

/// A bound status socket, not yet served.
#[derive(Debug)]
pub struct StatusListener {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    id: FileId,
}

impl StatusListener {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves `status` until [`StatusServer::shutdown`].
    pub fn serve(self, status: Arc<Status>) -> StatusServer {
        let (stop, stopped) = watch::channel(false);
        let StatusListener { listener, path, id } = self;
        let task = tokio::spawn(accept_loop(listener, status, stopped));
        StatusServer {
            path,
            id,
            stop,
            task,
        }
    }
}

/// The running status socket.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
    id: FileId,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    /// Stops accepting and removes the socket file, if it is still the one this daemon bound.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if file_id(&self.path) == Some(self.id) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                warn!("removing the status socket {}: {e}", self.path.display());
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    status: Arc<Status>,
    mut stopped: watch::Receiver<bool>,
) {
    let clients = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut complaint = Complaint::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopped.wait_for(|s| *s) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = complaint.note(Ok(()));
                let permit = clients.clone().try_acquire_owned().ok();
                let status = status.clone();
                tokio::spawn(async move {
                    match permit {
                        Some(_permit) => serve_one(stream, &status).await,
                        None => {
                            reply(stream, "error: busy, try again\n").await;
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: say so once, pause a little, keep serving.
                if let Some(Note::Failed(m)) = complaint.note(Err(e.to_string())) {
                    warn!("status socket: accept failed: {m}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_one(mut stream: tokio::net::UnixStream, status: &Status) {
    let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err(format!(
            "no request line within {READ_TIMEOUT:?}; send one line: status or metrics"
        )),
    };
    let text = answer(status, request);
    reply(stream, &text).await;
}

/// Writes the answer and closes. What the client sent beyond its request is read and dropped
/// first (at most 64 KiB, within the time bound): closing a Unix socket with unread input
/// resets it, and the client would lose the answer.
async fn reply(mut stream: tokio::net::UnixStream, text: &str) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        let _ = stream.write_all(text.as_bytes()).await;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn read_request(stream: &mut tokio::net::UnixStream) -> io::Result<Result<Request, String>> {
    let mut buf = Vec::with_capacity(MAX_REQUEST + 1);
    let mut chunk = [0u8; MAX_REQUEST + 1];
    let mut eof = false;
    loop {
        match frame(&buf, eof) {
            Framed::Line(line) => return Ok(parse_request(line)),
            Framed::TooLong => {
                return Ok(Err(format!(
                    "request longer than {MAX_REQUEST} bytes; send one line: status or metrics"
                )))
            }
            Framed::Incomplete => {}
        }
        let n = stream.read(&mut chunk).await?;
        eof = n == 0;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Asks the daemon at `path` (blocking; for the command line): the JSON snapshot or the
/// metrics text.
pub fn query(path: &Path, request: Request, timeout: Duration) -> Result<String, Error> {
    let unreachable = |source| Error::StatusUnreachable {
        path: path.to_owned(),
        source,
    };
    let bad = |message: String| Error::StatusReply {
        path: path.to_owned(),
        message,
    };
    let mut stream = connect(path).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(unreachable)?;
    stream
        .write_all(format!("{}\n", request.as_str()).as_bytes())
        .map_err(|e| bad(format!("sending the request: {e}")))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|e| bad(format!("reading the answer: {e}")))?;
    let text = String::from_utf8(answer).map_err(|_| bad("the answer is not UTF-8".into()))?;
    if let Some(e) = text.strip_prefix("error: ") {
        return Err(bad(e.trim_end().to_owned()));
    }
    if text.is_empty() {
        return Err(bad("an empty answer".into()));
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// The metrics file (I/O).

/// Writes `text` to `path` atomically: a temporary file beside it (dot-prefixed and not ending
/// in `.prom`, so the textfile collector skips it), mode 0644 (node_exporter runs as another
/// user), fsync, rename. A reader sees the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), Error> {
    let fail = |source| Error::MetricsFile {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| fail(io::Error::other("no file name")))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask (UMask=0077 under systemd) would leave it 0600.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Rewrites `path` from `status` every `every`, and once more when `stop` is raised (so the
/// last file shows the final state). A failure is logged once per change, never fatal.
pub async fn metrics_task(
    path: PathBuf,
    every: Duration,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut complaint = Complaint::default();
    loop {
        let stopping = *stop.borrow();
        let text = render_metrics(&status.snapshot());
        let p = path.clone();
        let result = match tokio::task::spawn_blocking(move || write_atomically(&p, &text)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the metrics writer failed: {e}")),
        };
        match complaint.note(result) {
            Some(Note::Failed(m)) => warn!("{m}; the metrics file is retried every {every:?}"),
            Some(Note::Recovered) => info!("METRICS_FILE {} written again", path.display()),
            None => {}
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::live;
    use crate::status::Snapshot;

    /// [`query`] from a blocking thread, as the command line does; the answer must come.
    async fn ask(path: &Path, request: Request) -> String {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || query(&path, request, Duration::from_secs(5)))
            .await
            .unwrap()
            .unwrap()
    }

    #[test]
    fn requests_are_framed_and_bounded() {
        assert_eq!(frame(b"", false), Framed::Incomplete);
        assert_eq!(frame(b"stat", false), Framed::Incomplete);
        assert_eq!(frame(b"status\n", false), Framed::Line(b"status"));
        assert_eq!(frame(b"status\nmore", false), Framed::Line(b"status"));
        assert_eq!(frame(b"metrics", true), Framed::Line(b"metrics"));
        assert_eq!(frame(&[b'x'; MAX_REQUEST + 1], false), Framed::TooLong);
        let mut long = vec![b'x'; MAX_REQUEST + 1];
        long.push(b'\n');
        assert_eq!(frame(&long, false), Framed::TooLong);
        let mut edge = vec![b'x'; MAX_REQUEST];
        edge.push(b'\n');
        assert_eq!(frame(&edge, false), Framed::Line(&edge[..MAX_REQUEST]));

        assert_eq!(parse_request(b"status"), Ok(Request::Status));
        assert_eq!(parse_request(b" metrics\r"), Ok(Request::Metrics));
        let e = parse_request(b"STATUS").unwrap_err();
        assert_eq!(
            e,
            "unknown request \"STATUS\"; send one line: status or metrics"
        );
        let e = parse_request(&[0xff, b'\n']).unwrap_err();
        assert!(e.starts_with("unknown request"), "{e}");
    }

    #[test]
    fn a_complaint_is_logged_once_per_change() {
        let mut c = Complaint::default();
        assert_eq!(c.note(Ok(())), None);
        assert_eq!(
            c.note(Err("EACCES".into())),
            Some(Note::Failed("EACCES".into()))
        );
        assert_eq!(c.note(Err("EACCES".into())), None);
        assert_eq!(
            c.note(Err("ENOSPC".into())),
            Some(Note::Failed("ENOSPC".into()))
        );
        assert_eq!(c.note(Ok(())), Some(Note::Recovered));
        assert_eq!(c.note(Ok(())), None);
    }

    #[tokio::test]
    async fn the_socket_answers_refuses_bad_requests_and_cleans_up() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        // A stale socket file (bound, then its listener dropped) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let status = live(1);
        let server = bind(&path).unwrap().serve(status.clone());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A second daemon must not take it over while this one answers.
        let err = bind(&path).unwrap_err().to_string();
        assert!(err.contains("another process answers on it"), "{err}");

        let json = ask(&path, Request::Status).await;
        let snap: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(snap.miner_id, "m");
        let metrics = ask(&path, Request::Metrics).await;
        assert!(metrics.starts_with("# HELP aitbc_miner_info "), "{metrics}");

        // A bad request gets one error line; an endless one is cut off; the server goes on.
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"gimme\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(
            out,
            "error: unknown request \"gimme\"; send one line: status or metrics\n"
        );
        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        let _ = s.write_all(&[b'a'; 10_000]).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        assert!(
            out.starts_with("error: request longer than 64 bytes"),
            "{out}"
        );
        let p = path.clone();
        let err = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"bogus\n").unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .await
        .unwrap();
        assert!(err.starts_with("error: "), "{err}");
        assert!(status.snapshot().miner_id == "m");

        server.shutdown().await;
        assert!(!path.exists(), "the socket file is removed at shutdown");
        let err = query(&path, Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::StatusUnreachable { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("systemctl status aitbc-miner"), "{text}");
    }

    #[tokio::test]
    async fn bind_leaves_what_is_not_its_own_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let err = bind(&dir.path().join("missing/status.sock"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("running without a status socket"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_path_at_the_length_limit_still_binds_0600() {
        let dir = tempfile::tempdir().unwrap();
        let room = 107 - dir.path().as_os_str().len() - "/s".len() - 1;
        let deep = dir.path().join("d".repeat(room));
        std::fs::create_dir(&deep).unwrap();
        let path = deep.join("s");
        assert_eq!(
            path.as_os_str().len(),
            107,
            "the longest path STATUS_SOCKET accepts"
        );
        let server = bind(&path).unwrap().serve(live(1));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let answer = ask(&path, Request::Metrics).await;
        assert!(answer.contains("aitbc_miner_info"));
        server.shutdown().await;
        assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 0);
    }

    #[test]
    fn the_metrics_file_is_replaced_whole_and_readable_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aitbc_miner.prom");
        write_atomically(&path, "a 1\n").unwrap();
        write_atomically(&path, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["aitbc_miner.prom"], "no temporary file is left");
        let err = write_atomically(&dir.path().join("missing/m.prom"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("METRICS_FILE "), "{err}");
        assert!(err.contains("missing/m.prom"), "{err}");
    }
}

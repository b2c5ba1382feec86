//! The real miner binary (`aitbc-miner run`, root dropping to `RUN_AS_USER` as in production)
//! against a fake, scripted, HOSTILE Coordinator on 127.0.0.1 (issue 11: "Harden the miner
//! against a broken or hostile Coordinator"): answers that are not the API's (a captive portal,
//! JSON of the wrong shape, redirects, a proxy's 404 page), 50 MB bodies, log injection through
//! job fields and error bodies, job ids that are paths, `Retry-After: 3600`, and the same
//! (job, attempt) handed out twice.
//!
//! For each case, as it applies: the miner stays up through the hostile phase; nothing is lost
//! (a spooled result stays in `STATE_DIR/spool` until a real ack, then it is removed and the fake
//! holds one well-formed proof for that job and attempt); its memory stays bounded (VmHWM under
//! [`MAX_HWM_KIB`]); its logs cannot be forged (no line starts with an injected prefix, no ESC,
//! no U+202E); and it backs off (requests per endpoint over a window stay under
//! [`backoff_bound`], and it does retry).
//!
//! The fake ([`Fake`]) is plain tokio with hand-written HTTP/1.1, so that it can answer exactly
//! what a hostile server would. It answers every endpoint the miner uses with a valid answer by
//! default (`next`: a long-poll over a queue of scripted replies, 204 when idle); a test swaps
//! any endpoint's handler mid-test with [`Fake::on`] and back with [`Fake::reset`]; every
//! request is recorded with its time, its answer's status and whether it was a real proof ack.
//!
//! Waits are for conditions with deadlines ([`until`]); the only fixed waits are the
//! observation windows of the rate assertions (at most 3 s each).

#![allow(dead_code)] // the fake's API is meant to be extended by further cases

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aitbc_protocol::api::{
    ts, Balance, FailAck, FailReason, FailReport, HeartbeatAck, Job, JobLimits, JobState,
    MinerCapabilities, Mode, Proof, ProofAck,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::common::{daemon_dir, reachable_tempdir, running, RUN_AS};

/// The miner's VmHWM (peak resident set) must stay under this: 64 MiB.
const MAX_HWM_KIB: u64 = 64 * 1024;
/// A hostile body: 50 MB.
const HUGE: usize = 50 * 1000 * 1000;
/// The start of a forged log line (tracing's timestamp, a level, a message).
const FORGED_TS: &str = "2026-01-01T00:00:00";
const FORGED_LINE: &str = "2026-01-01T00:00:00.000000Z ERROR forged: API_KEY=stolen";
/// A rate-assertion window.
const WINDOW: Duration = Duration::from_secs(3);
const START: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The fake Coordinator
// ---------------------------------------------------------------------------------------------

/// The endpoints the miner calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ep {
    Heartbeat,
    Next,
    Proof,
    Fail,
    Balance,
    Audits,
    Audit,
    Other,
}

impl Ep {
    fn of(path: &str) -> Ep {
        match path {
            "/v1/miner/heartbeat" => Ep::Heartbeat,
            "/v1/miner/next" => Ep::Next,
            "/v1/miner/proof" => Ep::Proof,
            "/v1/miner/fail" => Ep::Fail,
            "/v1/wallet/balance" => Ep::Balance,
            "/v1/miner/audits" => Ep::Audits,
            "/v1/miner/audit" => Ep::Audit,
            _ => Ep::Other,
        }
    }
}

/// One request as the fake received it, and what it answered.
#[derive(Clone, Debug)]
pub struct Seen {
    pub ep: Ep,
    /// When the request (head and body) had arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The answer's status, once chosen (a long-poll chooses it late).
    pub status: Option<u16>,
    pub answered_at: Option<Instant>,
    /// Answered with a real `ProofAck` ([`Reply::proof_ack`]).
    pub acked: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A query parameter (no percent-decoding: the values in these tests need none).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
    }

    /// The `id` of a JSON body (a proof's or fail report's job).
    pub fn job_id(&self) -> Option<String> {
        self.json::<Value>()?["id"].as_str().map(str::to_owned)
    }
}

enum Body {
    Bytes(Vec<u8>),
    /// `head`, then `len` bytes of `fill`, streamed (never held in memory).
    Huge {
        head: Vec<u8>,
        fill: u8,
        len: usize,
    },
}

/// An answer the fake sends.
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
    ack: bool,
    idle: bool,
}

impl Reply {
    pub fn raw(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body.into()),
            ack: false,
            idle: false,
        }
    }

    pub fn json(status: u16, v: &impl serde::Serialize) -> Reply {
        Reply::raw(
            status,
            "application/json",
            serde_json::to_vec(v).expect("serialise"),
        )
    }

    /// The API's error body `{"error": {"code", "message", "details": {}}}`.
    pub fn api_error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &json!({"error": {"code": code, "message": message, "details": {}}}),
        )
    }

    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            headers: Vec::new(),
            body: Body::Bytes(Vec::new()),
            ack: false,
            idle: false,
        }
    }

    /// For `next`: nothing now; the fake holds the long-poll (up to its `wait`, at most 2 s)
    /// and asks again when woken by [`Fake::on`] or [`Fake::push_next`], else answers 204.
    pub fn idle() -> Reply {
        Reply {
            idle: true,
            ..Reply::no_content()
        }
    }

    pub fn redirect(status: u16, location: &str) -> Reply {
        Reply::raw(status, "text/html", "").header("Location", location)
    }

    /// `status` with `head` followed by `len` bytes of `fill`, streamed.
    pub fn huge(status: u16, head: &str, fill: u8, len: usize) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("Connection".into(), "close".into()),
            ],
            body: Body::Huge {
                head: head.as_bytes().to_vec(),
                fill,
                len,
            },
            ack: false,
            idle: false,
        }
    }

    pub fn job(job: &Job) -> Reply {
        Reply::json(200, job)
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The real answer to a proof: a `ProofAck` for its id and attempt (400 if the body is not
    /// a proof).
    pub fn proof_ack(seen: &Seen) -> Reply {
        match seen.json::<Proof>() {
            Some(p) => Reply {
                ack: true,
                ..Reply::json(
                    200,
                    &ProofAck {
                        id: p.id,
                        // Verification on, not chosen for audit: held, then settled.
                        state: JobState::Verifying,
                        attempt: p.attempt.unwrap_or(1),
                        wallet: "w_fake".into(),
                        credited: 1,
                        audit: None,
                        settles_at: Some(ts::now() + time::Duration::seconds(600)),
                    },
                )
            },
            None => Reply::api_error(400, "BAD_REQUEST", "not a proof"),
        }
    }

    pub fn heartbeat_ack(seen: &Seen) -> Reply {
        match seen.json::<MinerCapabilities>() {
            Some(c) => Reply::json(
                200,
                &HeartbeatAck {
                    miner_id: c.miner_id,
                    wallet: c.wallet,
                    server_time: ts::now(),
                },
            ),
            None => Reply::api_error(400, "BAD_REQUEST", "not a heartbeat"),
        }
    }

    pub fn fail_ack(seen: &Seen) -> Reply {
        match seen.json::<FailReport>() {
            Some(f) => Reply::json(
                200,
                &FailAck {
                    id: f.id,
                    state: JobState::Queued,
                    attempt: f.attempt.unwrap_or(1),
                },
            ),
            None => Reply::api_error(400, "BAD_REQUEST", "not a fail report"),
        }
    }

    pub fn balance(seen: &Seen) -> Reply {
        Reply::json(
            200,
            &Balance {
                wallet: seen.param("wallet").unwrap_or_default(),
                balance: 0,
                credits: 0,
                pending: 0,
                forfeited: 0,
            },
        )
    }
}

/// A scripted answer for one endpoint. It runs with the fake's lock held: it must not call the
/// [`Fake`]'s methods (use captured state instead).
pub type Handler = Box<dyn FnMut(&Seen) -> Reply + Send>;

struct State {
    seen: Vec<Seen>,
    handlers: HashMap<Ep, Handler>,
    /// `next`'s scripted replies, used while no `next` handler is set.
    queue: VecDeque<Reply>,
}

struct Inner {
    state: Mutex<State>,
    wake: Notify,
}

/// The fake Coordinator: `url` is `http://127.0.0.1:PORT`.
pub struct Fake {
    pub url: String,
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                seen: Vec::new(),
                handlers: HashMap::new(),
                queue: VecDeque::new(),
            }),
            wake: Notify::new(),
        });
        let i2 = inner.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(connection(i2.clone(), stream));
            }
        });
        Fake {
            url: format!("http://{addr}"),
            addr,
            inner,
            task,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers `ep` with `handler` from now on (wakes a held long-poll to ask it).
    pub fn on(&self, ep: Ep, handler: impl FnMut(&Seen) -> Reply + Send + 'static) {
        self.lock().handlers.insert(ep, Box::new(handler));
        self.inner.wake.notify_waiters();
    }

    /// Back to the valid default answer for `ep`.
    pub fn reset(&self, ep: Ep) {
        self.lock().handlers.remove(&ep);
        self.inner.wake.notify_waiters();
    }

    /// Queues one answer for `next` (used while no `next` handler is set).
    pub fn push_next(&self, reply: Reply) {
        self.lock().queue.push_back(reply);
        self.inner.wake.notify_waiters();
    }

    pub fn all(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    pub fn seen(&self, ep: Ep) -> Vec<Seen> {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.ep == ep)
            .cloned()
            .collect()
    }

    pub fn count(&self, ep: Ep) -> usize {
        self.lock().seen.iter().filter(|s| s.ep == ep).count()
    }

    /// Requests to `ep` that arrived in `[from, to)`.
    pub fn count_between(&self, ep: Ep, from: Instant, to: Instant) -> usize {
        self.lock()
            .seen
            .iter()
            .filter(|s| s.ep == ep && s.at >= from && s.at < to)
            .count()
    }

    /// Proof POSTs for job `id`.
    pub fn proofs_for(&self, id: &str) -> Vec<Seen> {
        self.seen(Ep::Proof)
            .into_iter()
            .filter(|s| s.job_id().as_deref() == Some(id))
            .collect()
    }

    /// The proofs the fake answered with a real ack.
    pub fn acked_proofs(&self) -> Vec<Proof> {
        self.seen(Ep::Proof)
            .into_iter()
            .filter(|s| s.acked)
            .filter_map(|s| s.json())
            .collect()
    }

    /// Well-formed fail reports received.
    pub fn fails(&self) -> Vec<FailReport> {
        self.seen(Ep::Fail)
            .into_iter()
            .filter_map(|s| s.json())
            .collect()
    }
}

fn reply_for(st: &mut State, seen: &Seen) -> Reply {
    if let Some(h) = st.handlers.get_mut(&seen.ep) {
        return h(seen);
    }
    match seen.ep {
        Ep::Next => st.queue.pop_front().unwrap_or_else(Reply::idle),
        Ep::Heartbeat => Reply::heartbeat_ack(seen),
        Ep::Proof => Reply::proof_ack(seen),
        Ep::Fail => Reply::fail_ack(seen),
        Ep::Balance => Reply::balance(seen),
        Ep::Audits => Reply::json(200, &Vec::<aitbc_protocol::api::AuditChallenge>::new()),
        Ep::Audit => Reply::api_error(409, "NO_AUDIT", "no open audit"),
        Ep::Other => Reply::api_error(404, "NOT_FOUND", "no such route"),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive connection: parse a request, record it, answer it, repeat.
async fn connection(inner: Arc<Inner>, mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_owned();
        let target = first.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        if len > 1 << 20 {
            return;
        }
        buf.drain(..head_end + 4);
        while buf.len() < len {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), q.to_owned()),
            None => (target.clone(), String::new()),
        };
        let seen = Seen {
            ep: Ep::of(&path),
            at: Instant::now(),
            method,
            path,
            query,
            headers,
            body,
            status: None,
            answered_at: None,
            acked: false,
        };
        let index = {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            st.seen.push(seen.clone());
            st.seen.len() - 1
        };
        // A long-poll holds an idle `next` up to its `wait` (at most 2 s).
        let wait = seen
            .param("wait")
            .and_then(|w| w.parse::<f64>().ok())
            .filter(|w| w.is_finite() && *w >= 0.0)
            .map_or(Duration::ZERO, |w| Duration::from_secs_f64(w.min(2.0)));
        let deadline = tokio::time::Instant::now() + wait;
        let reply = loop {
            let notified = inner.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let reply = {
                let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                reply_for(&mut st, &seen)
            };
            if !reply.idle {
                break reply;
            }
            if seen.ep != Ep::Next || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break Reply::no_content();
            }
        };
        {
            let mut st = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut st.seen[index];
            s.status = Some(reply.status);
            s.answered_at = Some(Instant::now());
            s.acked = reply.ack;
        }
        let closing = close
            || reply
                .headers
                .iter()
                .any(|(n, v)| n.eq_ignore_ascii_case("connection") && v == "close");
        if write_reply(&mut stream, reply).await.is_err() || closing {
            return;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        302 => "Found",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

async fn write_reply(stream: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let len = match &reply.body {
        Body::Bytes(b) => b.len(),
        Body::Huge { head, len, .. } => head.len() + len,
    };
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if reply.status != 204 {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (n, v) in &reply.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    match reply.body {
        Body::Bytes(b) => {
            if reply.status != 204 {
                stream.write_all(&b).await?;
            }
        }
        Body::Huge { head, fill, len } => {
            stream.write_all(&head).await?;
            let chunk = vec![fill; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                stream.write_all(&chunk[..n]).await?;
                left -= n;
            }
        }
    }
    stream.flush().await
}

// ---------------------------------------------------------------------------------------------
// Jobs
// ---------------------------------------------------------------------------------------------

/// A real, runnable torch_bench job (attempt 1, a live lease).
pub fn job(id: &str, params: Value) -> Job {
    let now = ts::now();
    Job {
        id: id.into(),
        workload: "torch_bench".into(),
        params,
        limits: JobLimits {
            ram_mb: 512,
            vram_mb: 0,
            cpu_time_s: 60,
            max_runtime_s: 60,
        },
        reward: 1,
        attempt: 1,
        lease_expires_at: now + time::Duration::seconds(300),
        created_at: now,
    }
}

/// A job of a few microseconds: n = 8, 2 iterations.
pub fn small_job(id: &str) -> Job {
    job(id, json!({"n": 8, "iters": 2}))
}

/// The output SHA-256 of [`small_job`], computed here with the worker's own code.
fn small_sha() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| {
        let p = aitbc_protocol::workload::torch_bench::TorchBenchParams {
            n: 8,
            iters: 2,
            seed: 0,
        };
        let run = aitbc_worker::workload::torch_bench::run_cpu(&p, 1).expect("torch_bench runs");
        run.output_sha.iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// `p` is a well-formed proof of `job` (its id and attempt, a real SHA-256; `sha` when known).
fn assert_real_proof(p: &Proof, job: &Job, sha: Option<&str>) {
    assert_eq!(p.id, job.id, "{p:?}");
    assert_eq!(p.attempt, Some(job.attempt), "{p:?}");
    assert_eq!(p.mode, Mode::Cpu, "{p:?}");
    assert!(aitbc_protocol::api::is_sha256_hex(&p.output_sha), "{p:?}");
    if let Some(sha) = sha {
        assert_eq!(
            p.output_sha, sha,
            "the proof carries the job's real output hash"
        );
    }
    assert!(p.output_len.is_some_and(|n| n > 0), "{p:?}");
}

// ---------------------------------------------------------------------------------------------
// The miner
// ---------------------------------------------------------------------------------------------

/// A running `aitbc-miner run` with its own temporary directory.
pub struct Miner {
    child: Child,
    pub pid: i32,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub work: PathBuf,
    pub log: PathBuf,
    pub stderr: PathBuf,
    pub socket: Option<PathBuf>,
    /// BACKOFF_MIN_SECS, BACKOFF_MAX_SECS.
    pub backoff: (f64, f64),
}

impl Drop for Miner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Miner {
    /// Writes the config (mode 0600; `overrides` replace the defaults) and starts the miner.
    pub fn start(url: &str, name: &str, overrides: &[(&str, &str)], status_socket: bool) -> Miner {
        use std::os::unix::fs::PermissionsExt;
        let dir = reachable_tempdir();
        let state = dir.path().join("state");
        let work = dir.path().join("work");
        let log = dir.path().join("miner.log");
        let stderr = dir.path().join("stderr.log");
        let socket = status_socket.then(|| daemon_dir(&dir.path().join("run")).join("status.sock"));
        let mut keys: Vec<(String, String)> = [
            ("COORD_URL", url.to_owned()),
            ("WALLET_ADDR", format!("w_{name}")),
            ("API_KEY", format!("aitbc_{}", "0".repeat(64))),
            ("MINER_ID", name.to_owned()),
            ("WORK_DIR", work.display().to_string()),
            ("STATE_DIR", state.display().to_string()),
            ("HEARTBEAT_SECS", "0.1".into()),
            ("JOB_POLL_SECS", "0.02".into()),
            ("POLL_WAIT_SECS", "1".into()),
            ("MAX_CONCURRENCY", "1".into()),
            ("ACCEL_MODE", "cpu".into()),
            ("BACKOFF_MIN_SECS", "0.02".into()),
            ("BACKOFF_MAX_SECS", "0.3".into()),
            ("DRAIN_GRACE_SECS", "2".into()),
            ("THREADS_PER_JOB", "1".into()),
            ("LOG_LEVEL", "debug".into()),
            ("LOG_FILE", log.display().to_string()),
            ("RUN_AS_USER", RUN_AS.into()),
            (
                "STATUS_SOCKET",
                socket
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in overrides {
            match keys.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = (*v).to_owned(),
                None => keys.push(((*k).to_owned(), (*v).to_owned())),
            }
        }
        let get = |k: &str| -> f64 {
            keys.iter()
                .find(|(key, _)| key == k)
                .and_then(|(_, v)| v.parse().ok())
                .expect("a number")
        };
        let backoff = (get("BACKOFF_MIN_SECS"), get("BACKOFF_MAX_SECS"));
        let text: String = keys.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let config = dir.path().join("miner.conf");
        std::fs::write(&config, text).expect("write the config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"));
        command
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("create the stderr file"));
        for key in aitbc_supervisor::config::KEYS {
            command.env_remove(key);
        }
        let child = command.spawn().expect("start aitbc-miner run");
        let pid = i32::try_from(child.id()).expect("a pid");
        Miner {
            child,
            pid,
            dir,
            state,
            work,
            log,
            stderr,
            socket,
            backoff,
        }
    }

    pub fn up(&self) -> bool {
        running(self.pid)
    }

    /// The last lines of the miner's stderr, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(" hyper_util::") && !l.contains(" reqwest::connect"))
            .collect();
        let from = lines.len().saturating_sub(25);
        format!(
            "--- miner stderr (last lines) ---\n{}",
            lines[from..].join("\n")
        )
    }

    pub fn assert_up(&self, during: &str) {
        assert!(self.up(), "the miner exited {during}\n{}", self.tail());
    }

    /// VmHWM (peak resident set) of the miner process, KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn assert_memory_bounded(&self, during: &str) {
        let hwm = self.vm_hwm_kib();
        eprintln!("VmHWM {} KiB {during}", hwm);
        assert!(
            hwm > 0 && hwm < MAX_HWM_KIB,
            "the miner's VmHWM is {} MiB {during} (limit {} MiB)\n{}",
            hwm / 1024,
            MAX_HWM_KIB / 1024,
            self.tail()
        );
    }

    /// The spool's entries (not the hidden temporary files): path and content.
    pub fn spool(&self) -> Vec<(PathBuf, String)> {
        let Ok(dir) = std::fs::read_dir(self.state.join("spool")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                (e.path(), text)
            })
            .collect()
    }

    /// Whether an undelivered result for `job_id` is in the spool.
    pub fn spooled(&self, job_id: &str) -> bool {
        let quoted = format!("\"{job_id}\"");
        self.spool().iter().any(|(_, text)| text.contains(&quoted))
    }

    /// `aitbc-miner status --socket` (summary): exit code and stdout + stderr.
    pub fn status_summary(&self) -> (i32, String) {
        let socket = self.socket.as_ref().expect("a status socket");
        let mut command = Command::new(env!("CARGO_BIN_EXE_aitbc-miner"));
        command.arg("status").arg("--socket").arg(socket);
        for key in aitbc_supervisor::config::KEYS {
            command.env_remove(key);
        }
        let out = command.output().expect("run aitbc-miner status");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// What in the log file and stderr was forged by the Coordinator (see [`forgeries`]).
    pub fn log_forgeries(&self) -> Vec<String> {
        let file =
            String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned();
        let err =
            String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap_or_default()).into_owned();
        assert!(
            file.contains("miner starting"),
            "LOG_FILE has the miner's lines: {file}"
        );
        let mut found = forgeries("LOG_FILE", &file);
        found.extend(forgeries("stderr", &err));
        found
    }
}

/// In `text`: lines that start with the forged prefix, and lines with a raw ESC or U+202E.
fn forgeries(name: &str, text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.split(['\n', '\r']) {
        if line.trim_start().starts_with(FORGED_TS) {
            found.push(format!(
                "{name}: a line forged by the Coordinator: {line:?}"
            ));
        }
    }
    for line in text.lines() {
        if line.contains('\u{1b}') {
            found.push(format!("{name}: a raw ESC (0x1b): {line:?}"));
        }
        if line.contains('\u{202e}') {
            found.push(format!(
                "{name}: a raw U+202E (right-to-left override): {line:?}"
            ));
        }
    }
    found
}

/// The log file, stderr and the status summary carry nothing the Coordinator forged.
fn assert_unforged(m: &Miner, status: &str) {
    let mut found = m.log_forgeries();
    found.extend(forgeries("aitbc-miner status", status));
    assert!(
        found.is_empty(),
        "{} forgeries:\n{}",
        found.len(),
        found.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Waiting and measuring
// ---------------------------------------------------------------------------------------------

/// Polls `check` until it gives `Some`, at most `within`, failing at once if the miner exits
/// (like `common::wait_for`, with the miner's liveness and log tail).
async fn until<T>(
    m: &Miner,
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        m.assert_up(&format!("while waiting for {what}"));
        assert!(
            Instant::now() < deadline,
            "timed out ({within:?}) waiting for {what}\n{}",
            m.tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Watches the miner for `window`: it must stay up, and `invariant` must hold throughout
/// (`Err` says how it broke).
async fn observe(
    m: &Miner,
    window: Duration,
    what: &str,
    mut invariant: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + window;
    loop {
        m.assert_up(&format!("during {what}"));
        if let Err(why) = invariant() {
            panic!("during {what}: {why}\n{}", m.tail());
        }
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing to check but that the miner stays up.
fn ok() -> Result<(), String> {
    Ok(())
}

/// The miner's VmHWM is under [`MAX_HWM_KIB`].
fn hwm_ok(m: &Miner) -> Result<(), String> {
    let hwm = m.vm_hwm_kib();
    if hwm < MAX_HWM_KIB {
        Ok(())
    } else {
        Err(format!(
            "the miner's VmHWM reached {} MiB (limit {} MiB)",
            hwm / 1024,
            MAX_HWM_KIB / 1024
        ))
    }
}

/// The result for `id` is still in the spool.
fn kept(m: &Miner, fake: &Fake, id: &str) -> Result<(), String> {
    if m.spooled(id) {
        return Ok(());
    }
    let answers: Vec<Option<u16>> = fake.proofs_for(id).iter().map(|s| s.status).collect();
    Err(format!(
        "the spool entry for {id} is gone although no proof was acked (proof answers: \
         {answers:?}): the miner dropped a result the Coordinator never accepted"
    ))
}

/// The most requests a miner that backs off (full-jitter exponential, BACKOFF_MIN_SECS to
/// BACKOFF_MAX_SECS) makes in `window`: the ramp to the cap plus 1.75 times the count expected
/// at the cap (mean pause (min + max) / 2). With 0.02 s and 0.3 s, 3 s gives 37; an unpaced
/// loop makes thousands.
fn backoff_bound(min: f64, max: f64, window: Duration) -> usize {
    let ramp = (max / min).log2().ceil().max(0.0) as usize + 1;
    ramp + (1.75 * window.as_secs_f64() / ((min + max) / 2.0)) as usize
}

/// `n` requests to `ep` in `window` show a miner that retries and backs off.
fn assert_backs_off(m: &Miner, ep: Ep, n: usize, window: Duration) {
    let bound = backoff_bound(m.backoff.0, m.backoff.1, window);
    eprintln!("{ep:?}: {n} requests in {window:?} (bound {bound})");
    assert!(
        n >= 2,
        "{ep:?}: only {n} request(s) in {window:?}: the miner does not retry\n{}",
        m.tail()
    );
    assert!(
        n <= bound,
        "{ep:?}: {n} requests in {window:?} (backing off from {} s to {} s allows at most \
         {bound}): the miner does not back off\n{}",
        m.backoff.0,
        m.backoff.1,
        m.tail()
    );
}

/// A fake Coordinator and a miner registered with it (its first heartbeat acked).
async fn setup(name: &str, overrides: &[(&str, &str)], status_socket: bool) -> (Fake, Miner) {
    let fake = Fake::start().await;
    let m = Miner::start(&fake.url, name, overrides, status_socket);
    until(&m, "the first heartbeat", START, || {
        fake.seen(Ep::Heartbeat)
            .iter()
            .any(|s| s.status == Some(200))
            .then_some(())
    })
    .await;
    (fake, m)
}

/// The proof of a small job is answered by `hostile`: the proof stays spooled, is retried with
/// backoff under the same Idempotency-Key, and once the fake answers with a real ack it leaves
/// the spool and the fake holds exactly one acked, well-formed proof.
async fn hostile_proof_answer_keeps_the_proof(
    name: &str,
    hostile: impl FnMut(&Seen) -> Reply + Send + 'static,
    mut extra: impl FnMut() -> Result<(), String>,
) -> (Fake, Miner) {
    let (fake, m) = setup(name, &[], false).await;
    fake.on(Ep::Proof, hostile);
    let j = small_job(&format!("{name}-job"));
    fake.push_next(Reply::job(&j));
    let t0 = until(&m, "the first proof", START, || {
        fake.proofs_for(&j.id).first().map(|s| s.at)
    })
    .await;
    observe(
        &m,
        WINDOW,
        "the proof answered with something that is not an ack stays spooled",
        || {
            extra()?;
            kept(&m, &fake, &j.id)
        },
    )
    .await;
    let n = fake.count_between(Ep::Proof, t0, t0 + WINDOW);
    assert_backs_off(&m, Ep::Proof, n, WINDOW);
    let keys: Vec<Option<String>> = fake
        .proofs_for(&j.id)
        .iter()
        .map(|s| s.header("Idempotency-Key").map(str::to_owned))
        .collect();
    assert!(
        keys[0].is_some() && keys.iter().all(|k| *k == keys[0]),
        "every resend carries the same Idempotency-Key: {keys:?}"
    );
    assert!(fake.acked_proofs().is_empty());

    // The Coordinator comes to its senses: one real ack settles it.
    fake.reset(Ep::Proof);
    until(
        &m,
        "the acked proof to leave the spool",
        Duration::from_secs(5),
        || (!fake.acked_proofs().is_empty() && !m.spooled(&j.id)).then_some(()),
    )
    .await;
    let proofs_then = fake.proofs_for(&j.id).len();
    observe(&m, Duration::from_millis(300), "the time after the ack", ok).await;
    extra().unwrap_or_else(|why| panic!("{why}"));
    let acked = fake.acked_proofs();
    assert_eq!(acked.len(), 1, "exactly one acked proof: {acked:?}");
    assert_real_proof(&acked[0], &j, Some(small_sha()));
    assert_eq!(
        fake.proofs_for(&j.id).len(),
        proofs_then,
        "no resend after the ack"
    );
    assert!(m.spool().is_empty(), "spool: {:?}", m.spool());
    m.assert_memory_bounded("after the hostile proof answers");
    (fake, m)
}

// ---------------------------------------------------------------------------------------------
// 1-4: answers to a proof that are not the API's
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captive_portal_page_answering_a_proof_does_not_settle_it() {
    hostile_proof_answer_keeps_the_proof(
        "hc-portal",
        |_| Reply::raw(200, "text/html", "<html>captive portal</html>"),
        ok,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_json_answer_that_is_not_a_proof_ack_does_not_settle_the_proof() {
    hostile_proof_answer_keeps_the_proof(
        "hc-notack",
        |_| Reply::json(200, &json!({"ok": true})),
        ok,
    )
    .await;
}

/// A proof answered with a redirect to a second listener: nothing reaches it.
async fn redirect_case(name: &str, status: u16) {
    let elsewhere = Fake::start().await;
    let location = format!("{}/v1/miner/proof", elsewhere.url);
    let untouched = || {
        let there = elsewhere.all();
        if there.is_empty() {
            return Ok(());
        }
        Err(format!(
            "the {status} redirect was followed to {}: {:?}",
            elsewhere.url,
            there
                .iter()
                .map(|s| (s.method.as_str(), s.path.as_str(), s.header("referer")))
                .collect::<Vec<_>>()
        ))
    };
    hostile_proof_answer_keeps_the_proof(
        name,
        move |_| Reply::redirect(status, &location),
        untouched,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_302_redirect_of_a_proof_is_not_followed_and_the_proof_stays_spooled() {
    redirect_case("hc-302", 302).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_307_redirect_of_a_proof_is_not_followed_and_the_proof_stays_spooled() {
    redirect_case("hc-307", 307).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_404_html_page_does_not_settle_a_proof() {
    hostile_proof_answer_keeps_the_proof(
        "hc-404",
        |_| {
            Reply::raw(
                404,
                "text/html",
                "<html><body><h1>404 Not Found</h1>nginx</body></html>",
            )
        },
        ok,
    )
    .await;
}

/// The contrast to the cases above: a refusal the API documents settles the proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_documented_409_stale_attempt_refusal_settles_the_proof() {
    let (fake, m) = setup("hc-409", &[], false).await;
    fake.on(Ep::Proof, |_| {
        Reply::api_error(409, "STALE_ATTEMPT", "attempt 1 is not the current one (2)")
    });
    let j = small_job("hc-409-job");
    fake.push_next(Reply::job(&j));
    until(&m, "the refused proof to leave the spool", START, || {
        (!fake.proofs_for(&j.id).is_empty() && !m.spooled(&j.id)).then_some(())
    })
    .await;
    observe(
        &m,
        Duration::from_millis(500),
        "the time after the refusal",
        ok,
    )
    .await;
    assert_eq!(
        fake.proofs_for(&j.id).len(),
        1,
        "a definitive refusal is not retried"
    );
    assert!(m.spool().is_empty(), "spool: {:?}", m.spool());
}

// ---------------------------------------------------------------------------------------------
// 5: 50 MB bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_next_answer_keeps_memory_bounded_and_backed_off_then_a_real_job_runs() {
    let (fake, m) = setup("hc-bignext", &[], false).await;
    m.assert_memory_bounded("at start");
    fake.on(Ep::Next, |_| Reply::huge(200, "{\"id\":\"", b'a', HUGE));
    let t0 = until(&m, "the first huge next answer", START, || {
        fake.seen(Ep::Next)
            .iter()
            .find(|s| s.status == Some(200))
            .map(|s| s.at)
    })
    .await;
    observe(&m, WINDOW, "50 MB next answers", || hwm_ok(&m)).await;
    m.assert_memory_bounded("after 50 MB next answers");
    let n = fake.count_between(Ep::Next, t0, t0 + WINDOW);
    assert_backs_off(&m, Ep::Next, n, WINDOW);

    // Then a normal job: it is run and proved.
    fake.reset(Ep::Next);
    let j = small_job("hc-bignext-job");
    fake.push_next(Reply::job(&j));
    until(&m, "the real job's proof to be acked", START, || {
        (!fake.acked_proofs().is_empty() && m.spool().is_empty()).then_some(())
    })
    .await;
    let acked = fake.acked_proofs();
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_real_proof(&acked[0], &j, Some(small_sha()));
    m.assert_memory_bounded("at the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_heartbeat_and_proof_answers_keep_memory_bounded_and_the_proof_spooled() {
    let (fake, m) = setup("hc-bigpost", &[], false).await;
    m.assert_memory_bounded("at start");
    let switched = Instant::now();
    fake.on(Ep::Heartbeat, |_| {
        Reply::huge(200, "{\"miner_id\":\"", b'a', HUGE)
    });
    fake.on(Ep::Proof, |_| Reply::huge(200, "{\"id\":\"", b'a', HUGE));
    let j = small_job("hc-bigpost-job");
    fake.push_next(Reply::job(&j));
    let t0 = until(&m, "the first proof", START, || {
        fake.proofs_for(&j.id).first().map(|s| s.at)
    })
    .await;
    observe(&m, WINDOW, "50 MB proof and heartbeat answers", || {
        hwm_ok(&m)?;
        kept(&m, &fake, &j.id)
    })
    .await;
    m.assert_memory_bounded("after 50 MB answers");
    let proofs = fake.count_between(Ep::Proof, t0, t0 + WINDOW);
    assert_backs_off(&m, Ep::Proof, proofs, WINDOW);
    let beats = fake.count_between(Ep::Heartbeat, switched, Instant::now());
    assert!(beats >= 2, "the heartbeat goes on: {beats}");
    assert!(fake.acked_proofs().is_empty());

    fake.reset(Ep::Heartbeat);
    fake.reset(Ep::Proof);
    until(
        &m,
        "the proof to be acked and leave the spool",
        Duration::from_secs(5),
        || (!fake.acked_proofs().is_empty() && m.spool().is_empty()).then_some(()),
    )
    .await;
    let acked = fake.acked_proofs();
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_real_proof(&acked[0], &j, Some(small_sha()));
    m.assert_memory_bounded("at the end");
}

// ---------------------------------------------------------------------------------------------
// 6: log injection
// ---------------------------------------------------------------------------------------------

/// A forged log line, an ANSI colour and a right-to-left override, to append to a field.
fn injection() -> String {
    format!("\n{FORGED_LINE}\u{1b}[31m\u{202e}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_forged_workload_name_cannot_forge_log_or_status_lines() {
    let (fake, m) = setup("hc-logwl", &[], true).await;
    let mut j = small_job("hc-logwl-job");
    j.workload = format!("torch_bench{}", injection());
    fake.push_next(Reply::job(&j));
    // The miner does not know that workload: it refuses the job and says so.
    let report = until(&m, "the refusal of the forged workload", START, || {
        fake.fails().into_iter().find(|f| f.id == j.id)
    })
    .await;
    eprintln!("fail report: {report:?}");
    observe(
        &m,
        Duration::from_millis(300),
        "the time after the forged workload",
        ok,
    )
    .await;
    let (code, out) = m.status_summary();
    eprintln!("aitbc-miner status:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert_unforged(&m, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_error_codes_and_messages_cannot_forge_log_or_status_lines() {
    let (fake, m) = setup("hc-logerr", &[], true).await;
    let inj = injection();
    let code = format!("FORBIDDEN{inj}");
    let message = format!("key revoked{inj}");
    let switched = Instant::now();
    let (c2, m2) = (code.clone(), message.clone());
    fake.on(Ep::Heartbeat, move |_| Reply::api_error(403, &c2, &m2));
    let (c3, m3) = (format!("BAD_REQUEST{inj}"), format!("bad query{inj}"));
    fake.on(Ep::Next, move |_| Reply::api_error(400, &c3, &m3));
    until(
        &m,
        "refused heartbeats and polls",
        Duration::from_secs(5),
        || {
            let refused = |ep| {
                fake.seen(ep)
                    .iter()
                    .filter(|s| s.at >= switched && matches!(s.status, Some(400 | 403)))
                    .count()
            };
            (refused(Ep::Heartbeat) >= 2 && refused(Ep::Next) >= 2).then_some(())
        },
    )
    .await;
    m.assert_up("after forged refusals");
    let (code, out) = m.status_summary();
    eprintln!("aitbc-miner status:\n{out}");
    assert_eq!(code, 0, "{out}");
    assert_unforged(&m, &out);
}

// ---------------------------------------------------------------------------------------------
// 7: job ids that are paths, and bodies that are not jobs
// ---------------------------------------------------------------------------------------------

/// Every path under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&p, out);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_that_are_paths_or_too_long_make_no_hot_loop_and_no_file_outside_the_dirs() {
    let passwd_before = std::fs::read("/etc/passwd").ok();
    let (fake, m) = setup("hc-badid", &[], false).await;
    let ids = ["../../etc/passwd".to_owned(), "a".repeat(300)];
    let jobs: Vec<Job> = ids.iter().map(|id| small_job(id)).collect();
    let mut turn = 0usize;
    fake.on(Ep::Next, move |_| {
        turn += 1;
        Reply::job(&jobs[turn % 2])
    });
    let t0 = until(&m, "the first bad id handed out", START, || {
        fake.seen(Ep::Next)
            .iter()
            .find(|s| s.status == Some(200))
            .map(|s| s.at)
    })
    .await;
    observe(&m, WINDOW, "jobs with unsafe ids", ok).await;
    let n = fake.count_between(Ep::Next, t0, t0 + WINDOW);
    assert_backs_off(&m, Ep::Next, n, WINDOW);
    for f in fake.fails() {
        eprintln!("fail report: {} {:?}", f.id, f.reason);
    }

    // Nothing was written outside STATE_DIR and WORK_DIR.
    let root = m.dir.path().to_owned();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    for p in &paths {
        let rel = p.strip_prefix(&root).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        assert!(
            ["state", "work", "miner.conf", "miner.log", "stderr.log"].contains(&top.as_ref()),
            "a file outside STATE_DIR and WORK_DIR: {}",
            p.display()
        );
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(
            !name.contains("passwd") && !name.contains("aaaaaaaaaaaaaaaa"),
            "a file named after a hostile job id: {}",
            p.display()
        );
    }
    for escaped in [
        root.parent().unwrap().join("etc"),
        PathBuf::from("/etc/passwd-1.json"),
        PathBuf::from("/etc/passwd-0.json"),
    ] {
        assert!(!escaped.exists(), "{} was created", escaped.display());
    }
    assert_eq!(
        std::fs::read("/etc/passwd").ok(),
        passwd_before,
        "/etc/passwd changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_answer_that_is_not_a_job_but_names_an_id_is_reported_failed_and_backed_off() {
    let (fake, m) = setup("hc-notjob", &[], false).await;
    let mut bad1 = serde_json::to_value(small_job("job-bad-1")).unwrap();
    bad1.as_object_mut().unwrap().remove("workload");
    let mut bad2 = serde_json::to_value(small_job("job-bad-2")).unwrap();
    bad2["limits"]["ram_mb"] = json!("lots");
    for (id, body) in [("job-bad-1", bad1), ("job-bad-2", bad2)] {
        let text = serde_json::to_vec(&body).unwrap();
        fake.on(Ep::Next, move |_| {
            Reply::raw(200, "application/json", text.clone())
        });
        let report = until(
            &m,
            &format!("a fail report naming {id}"),
            Duration::from_secs(5),
            || fake.fails().into_iter().find(|f| f.id == id),
        )
        .await;
        eprintln!("fail report: {report:?}");
        if id == "job-bad-1" {
            let t1 = Instant::now();
            observe(&m, WINDOW, "next bodies that are not jobs", ok).await;
            let n = fake.count_between(Ep::Next, t1, t1 + WINDOW);
            assert_backs_off(&m, Ep::Next, n, WINDOW);
        }
    }
}

/// Well-formed jobs the miner refuses before touching a process (here: params it cannot run,
/// each a fresh id) are each reported BAD_PARAMS, and the polls between them back off: a
/// Coordinator that offers nothing else cannot drive the miner into a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_it_refuses_are_reported_and_make_no_hot_loop() {
    let (fake, m) = setup("hc-refused", &[], false).await;
    let mut turn = 0usize;
    fake.on(Ep::Next, move |_| {
        turn += 1;
        Reply::job(&job(
            &format!("hc-refused-{turn}"),
            json!({"n": 0, "iters": 1}),
        ))
    });
    let t0 = until(&m, "the first refused job reported", START, || {
        fake.fails().first().map(|_| Instant::now())
    })
    .await;
    observe(&m, WINDOW, "jobs it refuses", ok).await;
    let n = fake.count_between(Ep::Next, t0, t0 + WINDOW);
    assert_backs_off(&m, Ep::Next, n, WINDOW);
    let fails = fake.fails();
    assert!(
        fails.iter().all(|f| f.reason == FailReason::BadParams),
        "{fails:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8: Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_refused_with_retry_after_does_not_hold_back_the_next_result() {
    let (fake, m) = setup("hc-hol", &[("BACKOFF_MAX_SECS", "30")], false).await;
    fake.on(Ep::Proof, |s| {
        if s.job_id().as_deref() == Some("hc-hol-a") {
            Reply::api_error(503, "UNAVAILABLE", "come back in an hour")
                .header("Retry-After", "3600")
        } else {
            Reply::proof_ack(s)
        }
    });
    let a = small_job("hc-hol-a");
    let b = small_job("hc-hol-b");
    fake.push_next(Reply::job(&a));
    until(&m, "A's first proof", START, || {
        (!fake.proofs_for(&a.id).is_empty()).then_some(())
    })
    .await;
    fake.push_next(Reply::job(&b));
    until(
        &m,
        "B's proof to be acked and leave the spool while A waits",
        Duration::from_secs(5),
        || (!fake.acked_proofs().is_empty() && !m.spooled(&b.id)).then_some(()),
    )
    .await;
    let acked = fake.acked_proofs();
    assert_eq!(acked.len(), 1, "{acked:?}");
    assert_real_proof(&acked[0], &b, Some(small_sha()));
    assert!(m.spooled(&a.id), "A stays spooled: {:?}", m.spool());
    let a_sends = fake.proofs_for(&a.id).len();
    assert!(
        a_sends <= 2,
        "A was resent {a_sends} times despite Retry-After: 3600"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_next_is_bounded_by_backoff_max() {
    let (fake, m) = setup("hc-ra", &[], false).await;
    fake.on(Ep::Next, |_| {
        Reply::api_error(429, "RATE_LIMITED", "slow down").header("Retry-After", "3600")
    });
    let window = Duration::from_secs(5);
    observe(&m, window, "429 answers with Retry-After: 3600", ok).await;
    let limited: Vec<Seen> = fake
        .seen(Ep::Next)
        .into_iter()
        .filter(|s| s.status == Some(429))
        .collect();
    // The pause between a 429 and the next poll.
    let gaps: Vec<f64> = limited
        .windows(2)
        .map(|w| {
            w[1].at
                .saturating_duration_since(w[0].answered_at.unwrap())
                .as_secs_f64()
        })
        .collect();
    eprintln!("pauses after 429: {gaps:?}");
    assert!(
        limited.len() >= 3,
        "only {} poll(s) answered 429 in {window:?} (pauses {gaps:?}): Retry-After must be \
         bounded by BACKOFF_MAX_SECS = {} s\n{}",
        limited.len(),
        m.backoff.1,
        m.tail()
    );
    assert!(
        gaps.iter().all(|g| *g < 2.0),
        "pauses after 429 {gaps:?}: Retry-After: 3600 must be bounded by BACKOFF_MAX_SECS = {} s",
        m.backoff.1
    );
    assert_backs_off(&m, Ep::Next, limited.len(), window);
}

// ---------------------------------------------------------------------------------------------
// 9: the same (job, attempt) twice
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_attempt_handed_out_twice_runs_once() {
    let (fake, m) = setup("hc-dup", &[("MAX_CONCURRENCY", "2")], false).await;
    // 134 Gop on one thread (about 0.5 s in a test build with the VNNI kernel): still running
    // when the second copy is handed out.
    let x = job("hc-dup-x", json!({"n": 512, "iters": 500}));
    let script = x.clone();
    let mut handed = 0;
    fake.on(Ep::Next, move |_| {
        handed += 1;
        if handed <= 2 {
            Reply::job(&script)
        } else {
            Reply::idle()
        }
    });
    let first = until(&m, "X's first proof", Duration::from_secs(30), || {
        fake.proofs_for(&x.id).first().cloned()
    })
    .await;
    let handouts: Vec<Seen> = fake
        .seen(Ep::Next)
        .into_iter()
        .filter(|s| s.status == Some(200))
        .collect();
    assert_eq!(handouts.len(), 2, "X was handed out twice");
    let (t_first, t_second) = (
        handouts[0].answered_at.unwrap(),
        handouts[1].answered_at.unwrap(),
    );
    assert!(
        t_second < first.at,
        "the second copy was handed out while the first ran"
    );
    // A second run would answer about one job-length after the first.
    let ran = first.at.saturating_duration_since(t_first);
    eprintln!(
        "X took {ran:?} (second copy handed out after {:?})",
        t_second - t_first
    );
    let window = (ran * 2).clamp(Duration::from_millis(1500), WINDOW);
    observe(&m, window, "the time after X's first proof", ok).await;
    let proofs = fake.proofs_for(&x.id);
    assert_eq!(
        proofs.len(),
        1,
        "(X, 1) was run and proved {} times",
        proofs.len()
    );
    assert_real_proof(&proofs[0].json::<Proof>().unwrap(), &x, None);
    let fails: Vec<FailReport> = fake.fails().into_iter().filter(|f| f.id == x.id).collect();
    assert!(
        fails.is_empty(),
        "a fail report for X would end the first copy's lease: {fails:?}"
    );
    assert!(m.spool().is_empty(), "spool: {:?}", m.spool());
}

// ---------------------------------------------------------------------------------------------
// 10: a suspended key
// ---------------------------------------------------------------------------------------------

/// `next` answers `403 MINER_SUSPENDED` (the key failed too many audits): the miner says so
/// once (not per poll), shows it in `status`, asks again only at BACKOFF_MAX_SECS, and once
/// reinstated takes jobs again and clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_key_is_logged_once_shown_in_status_and_polled_slowly() {
    let (fake, m) = setup("hc-susp", &[], true).await;
    fake.on(Ep::Next, |_| {
        Reply::api_error(
            403,
            "MINER_SUSPENDED",
            "this miner key is suspended after failing audits",
        )
    });
    let window = Duration::from_secs(2);
    let from = Instant::now();
    observe(&m, window, "403 MINER_SUSPENDED answers", ok).await;
    let polls = fake.count_between(Ep::Next, from, Instant::now());
    // Every pause is BACKOFF_MAX_SECS (0.3 s): at most 2 s / 0.3 s polls, plus the one under way.
    let most = (window.as_secs_f64() / m.backoff.1) as usize + 2;
    assert!(
        (2..=most).contains(&polls),
        "{polls} polls in {window:?} while suspended (at most {most})\n{}",
        m.tail()
    );
    let stderr = std::fs::read_to_string(&m.stderr).unwrap_or_default();
    assert_eq!(
        stderr.matches("SUSPENDED from taking jobs").count(),
        1,
        "one log line for the suspension, not one per poll\n{}",
        m.tail()
    );
    let (code, summary) = m.status_summary();
    assert_eq!(code, 0, "{summary}");
    assert!(
        summary.contains(
            "  SUSPENDED    the Coordinator gives this key no jobs: this miner key is suspended after failing audits\n"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("  errors       0 coordinator call(s)"),
        "{summary}"
    );

    fake.reset(Ep::Next);
    until(
        &m,
        "the suspension to clear",
        Duration::from_secs(10),
        || {
            let (_, summary) = m.status_summary();
            (!summary.contains("SUSPENDED")).then_some(())
        },
    )
    .await;
    let stderr = std::fs::read_to_string(&m.stderr).unwrap_or_default();
    assert!(stderr.contains("no longer suspended"), "{}", m.tail());
}

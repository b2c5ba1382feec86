//! The supervisor protects itself from its own workers: while a worker spins every thread it
//! can, the supervisor's heartbeats (every 100 ms) keep arriving on time and the job's fail
//! report reaches the Coordinator before the lease expires.
//!
//! Heartbeat arrival times are taken on the wire: the miner talks to the Coordinator through a
//! small TCP relay in this test that timestamps each `POST /v1/miner/heartbeat` request line as
//! it passes. The relay forwards bytes unchanged and must never delay or alter them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aitbc_coordinator::CoordinatorConfig;
use aitbc_protocol::api::FailReason;
use aitbc_worker::hostile::Act;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{test_config, TestCoordinator};
use crate::rig::{is_root, note, skipped, Rig, Setup, EXCLUSIVE};

/// The request line the relay counts.
const HEARTBEAT: &[u8] = b"POST /v1/miner/heartbeat ";

/// A TCP relay in front of the Coordinator that records when each heartbeat request passes.
struct Recorder {
    url: String,
    hits: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start(upstream_url: &str) -> Recorder {
        let upstream = upstream_url.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let url = format!("http://{}", listener.local_addr().expect("relay address"));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream.clone(), h.clone()));
            }
        });
        Recorder { url, hits, task }
    }

    fn hits(&self) -> Vec<Instant> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection both ways, timestamping heartbeat request lines client-side.
async fn relay(client: TcpStream, upstream: String, hits: Arc<Mutex<Vec<Instant>>>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let down = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    // The last bytes of the previous read, so a request line split across reads still counts.
    let mut window: Vec<u8> = Vec::new();
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = Instant::now();
        window.extend_from_slice(&buf[..n]);
        let count = window
            .windows(HEARTBEAT.len())
            .filter(|w| *w == HEARTBEAT)
            .count();
        if count > 0 {
            if let Ok(mut h) = hits.lock() {
                h.extend(std::iter::repeat_n(now, count));
            }
        }
        let keep = window.len().min(HEARTBEAT.len() - 1);
        window.drain(..window.len() - keep);
        if to_server.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to_server.shutdown().await;
    let _ = down.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_stay_on_time_while_a_worker_spins_every_thread() {
    const NAME: &str = "heartbeat";
    let _alone = EXCLUSIVE.write().await;
    let interval = Duration::from_millis(100);
    // A 3 s job and a 1 s lease margin: the lease lapses 4 s after the assignment, so the
    // report must come from the supervisor's own deadline, promptly.
    let c = TestCoordinator::start(CoordinatorConfig {
        max_attempts: 1,
        lease_margin: Duration::from_secs(1),
        ..test_config()
    })
    .await;
    let recorder = Recorder::start(&c.url).await;
    let relay_url = recorder.url.clone();
    let setup = Setup {
        heartbeat_ms: interval.as_millis() as u64,
        threads: 2,
        ..Setup::default()
    };
    let mut rig = Rig::start_with(c, &relay_url, NAME, setup).await;
    if !is_root() && rig.idle_worker().await.cgroups.is_empty() {
        skipped(
            NAME,
            "needs root or a delegated cgroup: the supervisor's protection from its workers \
             is its own cgroup",
        );
        return;
    }
    let from = Instant::now();
    // 64 spinning threads (the act's default) on a 2-core machine.
    let o = rig
        .attack(
            Act::Spin,
            0,
            json!({"max_runtime_s": 3, "cpu_time_s": 600}),
            Duration::from_secs(30),
        )
        .await;
    let to = Instant::now();
    assert_eq!(
        o.reason,
        FailReason::TimedOut,
        "the report did not come from the supervisor before the lease expired: {:?} {}",
        o.job.failure,
        o.message
    );
    assert!(o.message.contains("max_runtime_s"), "{}", o.message);

    let hits = recorder.hits();
    let gaps: Vec<Duration> = hits
        .windows(2)
        .filter(|w| w[1] > from && w[0] < to)
        .map(|w| w[1] - w[0])
        .collect();
    let mut sorted = gaps.clone();
    sorted.sort();
    let max = sorted.last().copied().unwrap_or_default();
    let p50 = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    note(
        NAME,
        &format!(
            "{} heartbeats in {:?} under a 64-thread spin: gap p50 {p50:?}, max {max:?} \
             (interval {interval:?})",
            gaps.len(),
            to - from
        ),
    );
    let expected = ((to - from).as_millis() / interval.as_millis()) as usize;
    assert!(
        gaps.len() * 10 >= expected * 7,
        "only {} heartbeats in {:?} (about {expected} expected)",
        gaps.len(),
        to - from
    );
    assert!(
        max <= interval * 3,
        "a heartbeat gap of {max:?} with a {interval:?} interval; gaps: {gaps:?}"
    );
    rig.assert_contained(&o).await;
}

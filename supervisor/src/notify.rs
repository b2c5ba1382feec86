//! systemd notifications (`Type=notify`): `READY=1` once the supervisor is up, `STATUS=` with
//! a one-line summary when it changes, `WATCHDOG=1` while the supervisor's loops are alive,
//! `STOPPING=1` when it drains. Everything is a no-op when `NOTIFY_SOCKET` is unset.
//!
//! The messages go through the `sd-notify` crate (no dependencies beyond libc; it speaks the
//! `NOTIFY_SOCKET` datagram protocol and implements `sd_watchdog_enabled`'s rules). Its 0.5
//! release connects to `NOTIFY_SOCKET` as a path only, so an abstract address (`@name`, which
//! systemd uses for some managers and containers) is sent here with std's abstract-namespace
//! address instead.
//!
//! What a wedged supervisor looks like, and why the watchdog notices: the pings come from a
//! task of their own, but that alone proves only that the async runtime has a free thread. A
//! supervisor is wedged when (a) every runtime thread is blocked (a blocking call on an async
//! thread, a deadlocked lock): then the ping task itself cannot run; (b) the heartbeat loop is
//! stuck in one step — an NVML reading that never returns (the GPU driver hangs in exactly
//! this way), a call that outlives its timeout — or has died by a panic, so the Coordinator
//! stops hearing from the miner; (c) a task the miner cannot work without (dispatcher, a slot,
//! the outbox) has ended before shutdown, by panic or by a closed channel. [`Liveness`] turns
//! (b) and (c) into data: before each step the heartbeat loop *promises* when it will be back
//! ([`Beat::promise`]: the step's own bound plus a margin), and every essential task holds a
//! [`Beat`] whose drop marks it ended. [`watchdog_task`] pings only while every promise is
//! kept and no essential task has ended; otherwise it stops, says why once, and systemd kills
//! and restarts the miner after `WatchdogSec`. During the drain an ended task is expected, so
//! the pings go on until the process exits.
//!
//! This module must never block the runtime (a datagram to a local socket does not), never
//! fail the miner because systemd cannot be told something, and never send a ping it cannot
//! vouch for.

use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{debug, error, info, warn};

use crate::status::{status_line, Status};

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// A notification failed once already (then only `debug!`).
static COMPLAINED: AtomicBool = AtomicBool::new(false);

/// Whether a service manager listens (`NOTIFY_SOCKET` is set).
pub fn enabled() -> bool {
    std::env::var_os(NOTIFY_SOCKET).is_some()
}

/// The datagram for `states`, as `sd_notify(3)` writes it: one `KEY=value` line each.
pub fn message(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// Sends `message` to the abstract socket `name` (the address without its leading `@`).
pub fn send_abstract(name: &[u8], message: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(message.as_bytes(), &addr)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete datagram",
        ))
    }
}

/// Tells the service manager `states`; no-op without `NOTIFY_SOCKET`. A failure is logged
/// (the first as a warning), never returned: the miner works without systemd hearing it.
pub fn send(states: &[NotifyState<'_>]) {
    let Some(addr) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = match abstract_name(&addr) {
        Some(name) => send_abstract(name, &message(states)),
        None => sd_notify::notify(states),
    };
    if let Err(e) = result {
        let what = message(states).replace('\n', " ");
        if COMPLAINED.swap(true, Ordering::Relaxed) {
            debug!("sd_notify {what}to {addr:?}: {e}");
        } else {
            warn!("cannot notify systemd ({what}to NOTIFY_SOCKET={addr:?}): {e}");
        }
    }
}

/// `@name` → `name`: the Linux abstract namespace.
fn abstract_name(addr: &OsStr) -> Option<&[u8]> {
    use std::os::unix::ffi::OsStrExt;
    addr.as_bytes().strip_prefix(b"@")
}

/// `READY=1` with the first status line.
pub fn ready(line: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(line)]);
}

/// `STOPPING=1` with a status line saying so.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining: no new jobs, running ones may finish"),
    ]);
}

/// How often to ping: half of `WATCHDOG_USEC` when the watchdog is enabled for this process
/// (`sd_watchdog_enabled`: `WATCHDOG_USEC` set and `WATCHDOG_PID` unset or this pid), and a
/// service manager listens.
pub fn watchdog_interval() -> Option<Duration> {
    if !enabled() {
        return None;
    }
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

/// One essential loop's standing, as [`Liveness`] keeps it.
#[derive(Clone, Debug)]
struct Entry {
    name: &'static str,
    /// When the loop promised to be back; `None`: waiting on others (no promise).
    due: Option<Instant>,
    ended: bool,
}

/// The essential loops of the supervisor and what they promised (see the module doc).
#[derive(Debug, Default)]
pub struct Liveness {
    entries: Mutex<Vec<Entry>>,
    stopping: AtomicBool,
}

/// An essential loop's handle: [`Beat::promise`] before each bounded step; dropping it
/// (the task returned or panicked) marks the loop ended.
#[derive(Debug)]
pub struct Beat {
    liveness: Arc<Liveness>,
    index: usize,
}

/// Whether the supervisor can be vouched for.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// A loop broke its promise by this much.
    Overdue {
        name: &'static str,
        by: Duration,
    },
    /// An essential task ended before the shutdown.
    Ended {
        name: &'static str,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Alive => f.write_str("alive"),
            Verdict::Overdue { name, by } => {
                write!(f, "the {name} loop is overdue by {by:?}")
            }
            Verdict::Ended { name } => write!(f, "the {name} task ended before shutdown"),
        }
    }
}

/// Pure: the verdict over the loops' standing at `now`.
fn verdict(entries: &[Entry], now: Instant, stopping: bool) -> Verdict {
    if stopping {
        return Verdict::Alive;
    }
    if let Some(e) = entries.iter().find(|e| e.ended) {
        return Verdict::Ended { name: e.name };
    }
    entries
        .iter()
        .filter_map(|e| {
            let due = e.due?;
            (now > due).then(|| Verdict::Overdue {
                name: e.name,
                by: now - due,
            })
        })
        .next()
        .unwrap_or(Verdict::Alive)
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness::default())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an essential loop; `within`: its first promise (`None`: it waits on others).
    pub fn register(self: &Arc<Self>, name: &'static str, within: Option<Duration>) -> Beat {
        let mut entries = self.entries();
        entries.push(Entry {
            name,
            due: within.map(|d| Instant::now() + d),
            ended: false,
        });
        Beat {
            liveness: self.clone(),
            index: entries.len() - 1,
        }
    }

    /// The drain began: tasks end on purpose from now on.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn verdict(&self) -> Verdict {
        verdict(
            &self.entries(),
            Instant::now(),
            self.stopping.load(Ordering::Relaxed),
        )
    }
}

impl Beat {
    /// The loop will be back within `d`.
    pub fn promise(&self, d: Duration) {
        if let Some(e) = self.liveness.entries().get_mut(self.index) {
            e.due = Some(Instant::now() + d);
        }
    }
}

impl Drop for Beat {
    fn drop(&mut self) {
        if let Some(e) = self.liveness.entries().get_mut(self.index) {
            e.ended = true;
        }
    }
}

/// Pings `WATCHDOG=1` every `every` while [`Liveness::verdict`] is alive; stops (one error line)
/// when it is not, and says so again if the supervisor recovers before systemd acts.
pub async fn watchdog_task(every: Duration, liveness: Arc<Liveness>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        ticks.tick().await;
        match liveness.verdict() {
            Verdict::Alive => {
                if withheld {
                    info!("the supervisor is responsive again; watchdog pings resume");
                    withheld = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            wedged => {
                if !withheld {
                    error!(
                        "{wedged}: no more watchdog pings, systemd will restart the miner \
                         after WatchdogSec"
                    );
                    withheld = true;
                }
            }
        }
    }
}

/// Sends `STATUS=<line>` whenever the status line changes (it carries no clock, so only events
/// change it).
pub async fn status_task(status: Arc<Status>) {
    let mut changes = status.subscribe();
    let mut last = status_line(&status.snapshot());
    while changes.changed().await.is_ok() {
        let line = status_line(&status.snapshot());
        if line != last {
            send(&[NotifyState::Status(&line)]);
            last = line;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(
            message(&[NotifyState::Ready, NotifyState::Status("2 slots")]),
            "READY=1\nSTATUS=2 slots\n"
        );
        assert_eq!(message(&[NotifyState::Watchdog]), "WATCHDOG=1\n");
        assert_eq!(message(&[NotifyState::Stopping]), "STOPPING=1\n");
    }

    #[test]
    fn abstract_addresses_are_recognised_and_reached() {
        assert_eq!(abstract_name(OsStr::new("@x/y")), Some(&b"x/y"[..]));
        assert_eq!(abstract_name(OsStr::new("/run/systemd/notify")), None);

        use std::os::linux::net::SocketAddrExt;
        let name = format!("aitbc-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send_abstract(name.as_bytes(), &message(&[NotifyState::Ready])).unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\n");
        let err = send_abstract(b"aitbc-nobody-listens-here", "READY=1\n").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    }

    fn entry(name: &'static str, due: Option<Instant>, ended: bool) -> Entry {
        Entry { name, due, ended }
    }

    #[test]
    fn the_verdict_needs_every_promise_kept_and_no_task_gone() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let loops = [
            entry("heartbeat", Some(t0 + 10 * s), false),
            entry("dispatcher", None, false),
        ];
        assert_eq!(verdict(&loops, t0 + 10 * s, false), Verdict::Alive);
        assert_eq!(
            verdict(&loops, t0 + 13 * s, false),
            Verdict::Overdue {
                name: "heartbeat",
                by: 3 * s
            }
        );
        let gone = [
            entry("heartbeat", Some(t0 + 10 * s), false),
            entry("dispatcher", None, true),
        ];
        assert_eq!(
            verdict(&gone, t0, false),
            Verdict::Ended { name: "dispatcher" }
        );
        assert_eq!(
            verdict(&gone, t0 + 99 * s, true),
            Verdict::Alive,
            "draining"
        );
        assert_eq!(verdict(&[], t0, false), Verdict::Alive);
        assert_eq!(
            Verdict::Overdue {
                name: "heartbeat",
                by: 3 * s
            }
            .to_string(),
            "the heartbeat loop is overdue by 3s"
        );
    }

    #[test]
    fn beats_promise_and_end() {
        let l = Liveness::new();
        let hb = l.register("heartbeat", Some(Duration::from_secs(60)));
        let slot = l.register("slot", None);
        assert_eq!(l.verdict(), Verdict::Alive);
        hb.promise(Duration::from_secs(30));
        assert_eq!(l.verdict(), Verdict::Alive);
        drop(slot);
        assert_eq!(l.verdict(), Verdict::Ended { name: "slot" });
        l.stopping();
        assert_eq!(l.verdict(), Verdict::Alive);
    }
}

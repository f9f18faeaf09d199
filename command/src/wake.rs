//! The relay's wake-up, sent after a write's commit instead of inside it.
//!
//! Why not `pg_notify` in the write: PostgreSQL serialises the commits of notifying
//! transactions on one lock that is held through the commit's WAL flush, so writes that
//! notify lose group commit and the command DB's write ceiling fell by 57–91 % (README,
//! "Writes at the ceiling"). Now a write commits without notifying and then calls
//! [`Waker::wake`], which only sets a flag; one thread per instance ([`Notifier`]) turns the
//! flags of many writes into at most one `NOTIFY` per [`WAKE_EVERY`], on its own session with
//! `synchronous_commit = off` (a lost wake-up costs latency, never an event, so it need not
//! wait for the disk).
//!
//! **Guarantee:** every write whose `wake()` ran is followed by a `NOTIFY` that commits after
//! the write committed: the flag is cleared *before* the `NOTIFY` is sent, so a write that
//! sets it later is covered by the next one. A relay that receives it starts its next batch
//! after the write's commit, so the batch sees the write.
//!
//! **Not guaranteed:** that a wake-up is sent at all. The instance may die between the commit
//! and the `NOTIFY`, the session may be down, the relay may not be listening at that moment.
//! The leader's poll (`RELAY_POLL_MS`, 500 ms by default) publishes such an event; the
//! event log, not the wake-up, is what makes delivery certain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use crate::metrics::Metrics;
use crate::store::NOTIFY_CHANNEL;

/// Shortest gap between two `NOTIFY`s of one instance. One wake-up covers every write
/// committed before it, so under load this is what bounds the `NOTIFY` rate (≤ 500/s per
/// instance, each a tiny asynchronous commit) while adding at most 2 ms to propagation, far
/// inside its 100 ms budget (issue 13 point 6).
pub const WAKE_EVERY: Duration = Duration::from_millis(2);

/// How often an idle notifier looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Longest wait between reconnect attempts while the command DB is down; the relay's poll
/// covers the writes meanwhile (there are none while the DB is down anyway).
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Statement timeout of the notifier's session: a hung DB makes it reconnect, never hang.
const STATEMENT_TIMEOUT: &str = "2s";

/// The flag the writes set and the notifier clears.
#[derive(Debug, Default)]
struct Pending {
    set: Mutex<bool>,
    changed: Condvar,
}

/// A write's handle on the wake-up: cheap to clone, [`Waker::wake`] never blocks on the DB.
#[derive(Debug, Clone, Default)]
pub struct Waker {
    pending: Arc<Pending>,
}

impl Waker {
    /// Asks for a wake-up of the relay; call it after the write's commit returned. Only sets a
    /// flag under a lock held for a few instructions (safe from a coroutine).
    pub fn wake(&self) {
        let mut set = self
            .pending
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*set {
            *set = true;
            self.pending.changed.notify_one();
        }
    }

    /// Waits until a wake-up is asked for (true) or `stop` is set (false: a stopping instance
    /// leaves what is pending to the relay's poll, so a DB that is down cannot hold it up).
    fn wait(&self, stop: &AtomicBool) -> bool {
        let mut set = self
            .pending
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            if *set {
                return true;
            }
            set = self
                .pending
                .changed
                .wait_timeout(set, STOP_CHECK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Clears the flag: every write that set it before this is covered by the `NOTIFY` sent
    /// next.
    fn take(&self) {
        *self
            .pending
            .set
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }
}

/// The thread that sends the wake-ups; [`Notifier::stop`] joins it.
pub struct Notifier {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Notifier {
    /// Starts the thread; `instance` names its session (`application_name` `wake-<instance>`)
    /// so operators and drills can find it in `pg_stat_activity`; every `NOTIFY` sent is
    /// counted in `command_relay_wakeups_total`.
    pub fn start(
        database_url: String,
        instance: &str,
        waker: Waker,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Notifier> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = format!("wake-{instance}");
        let handle = std::thread::Builder::new()
            .name("wake".into())
            .spawn(move || run(&database_url, &name, &waker, &metrics, &flag))?;
        Ok(Notifier {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(url: &str, name: &str, waker: &Waker, metrics: &Metrics, stop: &AtomicBool) {
    let mut session: Option<Client> = None;
    let mut last_sent: Option<Instant> = None;
    let mut backoff = Duration::from_millis(50);
    let mut failing = false;
    while waker.wait(stop) {
        if let Some(gap) = last_sent.and_then(|t| WAKE_EVERY.checked_sub(t.elapsed())) {
            // Writes that commit meanwhile are covered by the NOTIFY below.
            std::thread::sleep(gap);
        }
        waker.take();
        match send(&mut session, url, name) {
            Ok(()) => {
                last_sent = Some(Instant::now());
                metrics.relay_wakeups.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(50);
                if failing {
                    failing = false;
                    shared::info!("wake: sending wake-ups again");
                }
            }
            Err(e) => {
                session = None;
                if !failing {
                    failing = true;
                    shared::warn!(
                        "wake: cannot notify the relay ({e}); it finds the writes by its poll"
                    );
                }
                // Ask again, so the writes that wanted this one are woken for once it works.
                waker.wake();
                pause(backoff, stop);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sends one `NOTIFY`, connecting first if needed.
fn send(session: &mut Option<Client>, url: &str, name: &str) -> Result<(), postgres::Error> {
    let client = match session {
        Some(c) => c,
        None => session.insert(connect(url, name)?),
    };
    client.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}"))
}

/// The notifier's own session: asynchronous commit (a wake-up lost in a crash is covered by
/// the relay's poll, so it need not wait for the WAL flush) and a statement timeout.
fn connect(url: &str, name: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(2));
    config.application_name(name);
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!(
        "SET synchronous_commit = off; SET statement_timeout = '{STATEMENT_TIMEOUT}'"
    ))?;
    Ok(client)
}

/// Sleeps `d`, noticing a stop within [`STOP_CHECK`].
fn pause(d: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep((deadline - now).min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many wakes before the notifier looks collapse into one pending wake-up, and a wake
    /// after `take` is pending again.
    #[test]
    fn wakes_coalesce_until_taken() {
        let w = Waker::default();
        let stop = AtomicBool::new(false);
        for _ in 0..100 {
            w.wake();
        }
        assert!(w.wait(&stop));
        w.take();
        assert!(
            !*w.pending.set.lock().unwrap(),
            "nothing pending after take"
        );
        w.wake();
        assert!(w.wait(&stop), "a wake after take is pending");
        stop.store(true, Ordering::SeqCst);
        assert!(
            !w.wait(&stop),
            "a stop ends the wait even with a wake pending"
        );
    }
}

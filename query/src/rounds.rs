//! Sync rounds (SPEC §7.3, issue 13): how a request waits, without blocking a may worker,
//! for a database read that STARTED after it arrived, and how concurrent requests share one.
//!
//! A request asks for a round ([`Rounds::sync`]: the next round number, and optionally a
//! report id to read) and parks its coroutine; one plain thread per DB (the point reader,
//! `points.rs`) takes every round asked so far ([`Rounds::next`]),
//! runs ONE statement for all of them on a connection of its own and wakes them
//! ([`Rounds::finish`]). Guarantees:
//! - a round a request waits for was taken after the request asked, so its statement's
//!   snapshot holds every change committed before the request arrived;
//! - a waiter never waits much longer than [`SYNC_WAIT`] (its owner's watchdog thread calls
//!   [`Rounds::give_up_stale`] every [`WATCH_EVERY`]); it then reads the DB itself;
//! - a round that failed gives its waiters nothing ([`Rounds::point`] is `None`), never an
//!   empty answer: they read the DB themselves.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use uuid::Uuid;

/// How long a request waits for a sync round before reading the DB instead (a reader
/// connection that hangs must not hold hot reads longer than a read would take).
pub const SYNC_WAIT: Duration = Duration::from_millis(500);

/// How often the owner of rounds calls [`Rounds::give_up_stale`]: a waiter leaves at most
/// this long after [`SYNC_WAIT`].
pub const WATCH_EVERY: Duration = Duration::from_millis(50);

/// Rounds whose point reads are kept for their waiters. A waiter normally reads its round's
/// answer before the next round ends (that takes a DB round trip); one that slept through
/// this many rounds reads the DB itself, which is slower but just as correct.
pub const RECENT_ROUNDS: usize = 8;

/// Sync rounds asked for and done, and the point reads they carry; see the module doc.
#[derive(Default)]
pub struct Rounds {
    state: may::sync::Mutex<RoundState>,
    /// The reader thread waits here for a round to be asked.
    asked: may::sync::Condvar,
    /// Requests wait here for their round.
    done: may::sync::Condvar,
}

#[derive(Default)]
struct RoundState {
    /// Rounds asked for: a request's round is the value after its increment.
    asked: u64,
    /// Every round up to this one is done.
    done: u64,
    /// Rounds up to this one were given up by [`Rounds::give_up_stale`]: their waiters left.
    given_up: u64,
    /// When the oldest ask not yet answered was made.
    oldest_wait: Option<std::time::Instant>,
    /// Report ids asked for by requests waiting for the next round.
    ids: Vec<Uuid>,
    /// The point reads of the last few rounds, newest last: `(first, last)` round numbers
    /// covered and what the round read for every id asked in them.
    recent: VecDeque<(u64, u64, Arc<Points>)>,
}

/// What one round read, for every id asked in it.
pub type Points = HashMap<Uuid, Point>;

/// What one round read for one report id (the answer `store::report` would give).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Point {
    Missing,
    Deleted { version: i64 },
    Live { version: i64, doc: Arc<str> },
}

impl std::fmt::Debug for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rounds")
    }
}

impl Rounds {
    /// Waits (bounded) for a round that starts after this call, asking it to read `id` too;
    /// `None` if none finished in time, else that round's number.
    pub fn sync(&self, id: Option<Uuid>) -> Option<u64> {
        let mut st = self.state.lock().ok()?;
        st.asked += 1;
        let target = st.asked;
        if let Some(id) = id {
            st.ids.push(id);
        }
        st.oldest_wait.get_or_insert_with(std::time::Instant::now);
        self.asked.notify_one();
        let deadline = std::time::Instant::now() + SYNC_WAIT;
        while st.done < target {
            // may 0.3.51's `wait_timeout` does not come back on its timeout in a coroutine
            // (measured: a waiter held 3.5 s by a table lock, and forever in a unit test), so
            // the owner's watchdog gives stale rounds up; the timeout still serves threads.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || st.given_up >= target {
                return None;
            }
            st = self.done.wait_timeout(st, left).ok()?.0;
        }
        Some(target)
    }

    /// The watchdog (every [`WATCH_EVERY`]): when the oldest unanswered ask has waited
    /// [`SYNC_WAIT`], every waiter so far leaves with `None` and reads the DB itself.
    pub fn give_up_stale(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.oldest_wait.is_some_and(|t| t.elapsed() >= SYNC_WAIT) {
            st.given_up = st.asked;
            st.oldest_wait = None;
            drop(st);
            self.done.notify_all();
        }
    }

    /// What round `round` read for `id`; `None` when that round failed or is no longer kept.
    pub fn point(&self, round: u64, id: &Uuid) -> Option<Point> {
        let st = self.state.lock().ok()?;
        let (_, _, found) = st
            .recent
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&round))?;
        found.get(id).cloned()
    }

    /// The reader thread: waits until a round is asked (or `idle` passed); returns its number and
    /// the ids it must read.
    pub fn next(&self, idle: Duration) -> (u64, Vec<Uuid>) {
        let Ok(mut st) = self.state.lock() else {
            return (0, Vec::new());
        };
        if st.asked == st.done {
            st = match self.asked.wait_timeout(st, idle) {
                Ok((st, _)) => st,
                Err(_) => return (0, Vec::new()),
            };
        }
        (st.asked, std::mem::take(&mut st.ids))
    }

    /// The reader thread: every round up to `target` is done (also when it failed, `found` =
    /// `None`: the waiters then find the position unknown and read the DB).
    pub fn finish(&self, target: u64, found: Option<HashMap<Uuid, Point>>) {
        if let Ok(mut st) = self.state.lock() {
            let first = st.done + 1;
            st.done = st.done.max(target);
            // Asks still open came in while this round ran.
            st.oldest_wait = (st.asked > st.done).then(std::time::Instant::now);
            if let Some(found) = found.filter(|f| !f.is_empty()) {
                if st.recent.len() >= RECENT_ROUNDS {
                    st.recent.pop_front();
                }
                st.recent.push_back((first, target, Arc::new(found)));
            }
        }
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no thread running rounds, a waiter gives up after [`SYNC_WAIT`] (and reads the DB
    /// itself), on a coroutine as on a thread.
    #[test]
    fn a_waiter_without_rounds_gives_up() {
        let rounds = Arc::new(Rounds::default());
        let started = std::time::Instant::now();
        assert_eq!(rounds.sync(Some(Uuid::nil())), None);
        assert!(started.elapsed() >= SYNC_WAIT);
        let r = Arc::clone(&rounds);
        let h = may::go!(move || r.sync(Some(Uuid::nil())));
        let watch = Arc::clone(&rounds);
        let watchdog = std::thread::spawn(move || {
            while !h.is_done() {
                watch.give_up_stale();
                std::thread::sleep(WATCH_EVERY);
            }
            h.join().ok().flatten()
        });
        assert_eq!(watchdog.join().ok().flatten(), None);
    }
}

/// The plain threads that own rounds (one per DB, plus the watchdog that calls
/// [`Rounds::give_up_stale`] every [`WATCH_EVERY`]), sharing one stop flag. Dropping it stops
/// them and waits for them, so a stopped service leaves no thread reading a DB.
#[derive(Debug, Default)]
pub struct Threads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Threads {
    /// Starts `body` on a named thread; it must return soon after the flag it is given is set.
    pub fn spawn(
        &mut self,
        name: String,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = Arc::clone(&self.stop);
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(&stop))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Starts the watchdog: `give_up` (the owner's [`Rounds::give_up_stale`] over its DBs)
    /// every [`WATCH_EVERY`] until stopped.
    pub fn watch(
        &mut self,
        name: &str,
        give_up: impl Fn() + Send + 'static,
    ) -> std::io::Result<()> {
        self.spawn(name.to_owned(), move |stop| {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(WATCH_EVERY);
                give_up();
            }
        })
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

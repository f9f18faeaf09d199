//! The response cache (SPEC §7.3): list and statistics answers served from memory, never
//! staler than the query DB they replace; and the sync rounds behind it, which also carry
//! the point reads.
//!
//! Every query DB moves its `read_model_position` row in the same transaction as any change
//! to `read_reports`, `statistics` or `checkpoint` (triggers in `sql/query.sql`). One thread
//! per DB (all of them unless `QUERY_CACHE=off`) keeps a connection of its own and reads that row
//! in *sync rounds*; the DB's position is the token `<db>.<n>`.
//!
//! Guarantees:
//! - an entry is served only while its DB's position is the one it was read at: the position
//!   is taken BEFORE the read, so an entry can only be newer than its position, never older;
//!   a new position drops that DB's entries;
//! - while a DB's position is unknown (listener not connected yet, connection lost, DB down)
//!   nothing of that DB is served from memory and no `ETag` is given for it: every read goes
//!   to the DB, as without a cache;
//! - entries are per DB, and a request is answered from memory only for the DB
//!   [`Dbs::first_choice`](crate::failover::Dbs::first_choice) names, so a failover never
//!   serves the first DB's entries;
//! - memory is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`] per DB, [`MAX_BODY`] per entry).
//!
//! - before answering from memory (a body or a 304) a request waits for a sync round that
//!   STARTED after it arrived: the round's snapshot sees every change committed before the
//!   request, so no answer from memory predates a change the client could have seen.
//!   Concurrent requests share one round (one pk read of one row on a connection of its
//!   own), so a round trip serves any number of hot reads and the read model is not touched.
//!
//! Point reads (`GET /reports/{id}`, issue 13 point 2) ride the same rounds: a request adds
//! its id to the next round and waits for it like a cache check; the round reads the
//! position and every asked report in one statement (`id = ANY($1)`, one snapshot). So a
//! point read is exactly as fresh as a read of its own (its round started after it arrived),
//! N concurrent point reads cost one round trip and one statement instead of N, and no may
//! worker thread sits blocked in the postgres client meanwhile: waiting is a coroutine park,
//! and the blocking call runs on the listener's own thread. A point read whose round failed
//! (or is unknown) reads on a pooled connection as before, with failover.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::types::Type;
use shared::config::NamedDb;
use uuid::Uuid;

use crate::config::CONNECT_TIMEOUT;

/// Entries kept per DB. Lists have few hot shapes (first pages, common filters); when the
/// cache is full it starts over, so a scan of distinct URLs costs misses, never memory.
pub const MAX_ENTRIES: usize = 512;

/// Body bytes kept per DB: 4 MiB holds ~70 full 100-item pages and keeps the service well
/// under its 32 MiB resident target even with three DBs cached.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// A larger answer is not kept: it would crowd out many hot small ones.
pub const MAX_BODY: usize = 256 * 1024;

/// The longest the position thread idles between rounds (checking its connection and the
/// stop flag), and its pause before reconnecting.
const LISTEN_POLL: Duration = Duration::from_millis(250);

/// How long a request waits for a sync round before reading the DB instead (a listener
/// connection that hangs must not hold hot reads longer than a read would take).
const SYNC_WAIT: Duration = Duration::from_millis(500);

/// Rounds whose point reads are kept for their waiters. A waiter normally reads its round's
/// answer before the next round ends (that takes a DB round trip); one that slept through
/// this many rounds reads the DB itself, which is slower but just as correct.
const RECENT_ROUNDS: usize = 8;

/// Sync rounds asked for and done, and the point reads they carry; see the module doc.
#[derive(Default)]
struct Rounds {
    state: may::sync::Mutex<RoundState>,
    /// The listener waits here for a round to be asked.
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
    /// Report ids asked for by requests waiting for the next round.
    ids: Vec<Uuid>,
    /// The point reads of the last few rounds, newest last: `(first, last)` round numbers
    /// covered and what the round read for every id asked in them.
    recent: VecDeque<(u64, u64, Arc<Points>)>,
}

/// What one round read, for every id asked in it.
type Points = HashMap<Uuid, Point>;

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
    fn sync(&self, id: Option<Uuid>) -> Option<u64> {
        let mut st = self.state.lock().ok()?;
        st.asked += 1;
        let target = st.asked;
        if let Some(id) = id {
            st.ids.push(id);
        }
        self.asked.notify_one();
        let deadline = std::time::Instant::now() + SYNC_WAIT;
        while st.done < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            st = self.done.wait_timeout(st, left).ok()?.0;
        }
        Some(target)
    }

    /// What round `round` read for `id`; `None` when that round failed or is no longer kept.
    fn point(&self, round: u64, id: &Uuid) -> Option<Point> {
        let st = self.state.lock().ok()?;
        let (_, _, found) = st
            .recent
            .iter()
            .find(|(first, last, _)| (*first..=*last).contains(&round))?;
        found.get(id).cloned()
    }

    /// The listener: waits until a round is asked (or `idle` passed); returns its number and
    /// the ids it must read.
    fn next(&self, idle: Duration) -> (u64, Vec<Uuid>) {
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

    /// The listener: every round up to `target` is done (also when it failed, `found` =
    /// `None`: the waiters then find the position unknown and read the DB).
    fn finish(&self, target: u64, found: Option<HashMap<Uuid, Point>>) {
        if let Ok(mut st) = self.state.lock() {
            let first = st.done + 1;
            st.done = st.done.max(target);
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

/// One cached answer.
#[derive(Debug)]
struct Entry {
    position: Arc<str>,
    body: Vec<u8>,
}

#[derive(Debug, Default)]
struct State {
    /// `None`: unknown, serve nothing from memory.
    position: Option<Arc<str>>,
    entries: HashMap<String, Entry>,
    bytes: usize,
}

/// What the cache knows of one DB.
#[derive(Debug)]
struct DbCache {
    name: String,
    /// The URL the position is read on; `None`: this DB is never cached.
    listen_url: Option<String>,
    state: Mutex<State>,
    rounds: Rounds,
}

impl DbCache {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst an entry too many: still bounded.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_position(&self, position: Option<Arc<str>>) {
        let mut state = self.state();
        state.position = position;
        state.entries.clear();
        state.bytes = 0;
    }
}

/// The cache of every DB of this instance, in `QUERY_DATABASE_URLS` order.
#[derive(Debug)]
pub struct Cache {
    dbs: Vec<DbCache>,
}

/// An answer found in memory.
#[derive(Debug, PartialEq, Eq)]
pub enum Hit {
    /// The client's `If-None-Match` names the current position.
    NotModified,
    /// The body kept for this request.
    Body(Vec<u8>),
}

impl Cache {
    /// `dbs` in `QUERY_DATABASE_URLS` order; `listen` the direct URLs by name.
    pub fn new(dbs: &[NamedDb], listen: &[NamedDb]) -> Cache {
        Cache {
            dbs: dbs
                .iter()
                .map(|d| DbCache {
                    name: d.name.clone(),
                    listen_url: listen
                        .iter()
                        .find(|l| l.name == d.name)
                        .map(|l| l.url.clone()),
                    state: Mutex::new(State::default()),
                    rounds: Rounds::default(),
                })
                .collect(),
        }
    }

    /// The current position of DB `i`, `None` when unknown. Take it BEFORE reading the DB.
    pub fn position(&self, i: usize) -> Option<Arc<str>> {
        self.dbs.get(i)?.state().position.clone()
    }

    /// The answer to `key` from DB `i` if it is still current, or 304 when `if_none_match`
    /// names the current position.
    pub fn lookup(
        &self,
        i: usize,
        key: &str,
        if_none_match: Option<&str>,
    ) -> Option<(Hit, Arc<str>)> {
        let db = self.dbs.get(i)?;
        // Unknown (not listening): read the DB at once rather than wait for a round.
        if db.state().position.is_none() || db.rounds.sync(None).is_none() {
            return None;
        }
        let state = db.state();
        let position = state.position.clone()?;
        if if_none_match.is_some_and(|h| etag_matches(h, &position)) {
            return Some((Hit::NotModified, position));
        }
        let entry = state.entries.get(key)?;
        (entry.position == position).then(|| (Hit::Body(entry.body.clone()), position))
    }

    /// Report `id` as DB `i` holds it, read by a sync round that started after this call
    /// (so as fresh as a read of its own, SPEC §7.3), together with every other point read
    /// and cache check waiting at that moment: one statement and one round trip for all of
    /// them, and no may worker thread blocked on the DB meanwhile. `None` when DB `i` has no
    /// listener that is connected, or the round failed: the caller reads the DB itself.
    pub fn point(&self, i: usize, id: &Uuid) -> Option<(Point, Arc<str>)> {
        let db = self.dbs.get(i)?;
        db.state().position.as_ref()?;
        let round = db.rounds.sync(Some(*id))?;
        let point = db.rounds.point(round, id)?;
        // The position the round read with the point: a failed round left it unknown.
        let position = db.state().position.clone()?;
        Some((point, position))
    }

    /// Keeps `body`, read from DB `i` after `position` was current, if that is still the
    /// position (else a change landed meanwhile and the entry would be dropped anyway).
    pub fn store(&self, i: usize, key: &str, position: &Arc<str>, body: &[u8]) {
        if body.len() > MAX_BODY {
            return;
        }
        let Some(db) = self.dbs.get(i) else { return };
        let mut state = db.state();
        if state.position.as_ref() != Some(position) {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES || state.bytes + body.len() > MAX_BYTES {
            state.entries.clear();
            state.bytes = 0;
        }
        let old = state.entries.insert(
            key.to_owned(),
            Entry {
                position: Arc::clone(position),
                body: body.to_vec(),
            },
        );
        state.bytes = state.bytes + body.len() - old.map_or(0, |e| e.body.len());
    }

    /// Starts one listener thread per DB that has a listen URL; dropping the result stops them.
    pub fn listen(self: &Arc<Cache>) -> std::io::Result<Listeners> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..self.dbs.len() {
            if self.dbs[i].listen_url.is_none() {
                continue;
            }
            let cache = Arc::clone(self);
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("listen-{}", self.dbs[i].name))
                    .spawn(move || listen_loop(&cache.dbs[i], &stop))?,
            );
        }
        Ok(Listeners { stop, threads })
    }
}

/// The listener threads; dropping it stops them (and waits for them).
#[derive(Debug)]
pub struct Listeners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `ETag: "<position>"` for an answer read at `position`.
pub fn etag_header(position: &str) -> String {
    format!("ETag: \"{position}\"")
}

/// Whether an `If-None-Match` value (a list of entity tags, weak or strong, or `*`) names
/// `position`. Weak comparison, as RFC 9110 prescribes for `If-None-Match`.
fn etag_matches(header: &str, position: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| {
        tag == "*"
            || tag
                .strip_prefix("W/")
                .unwrap_or(tag)
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                == Some(position)
    })
}

fn listen_loop(db: &DbCache, stop: &AtomicBool) {
    let Some(url) = db.listen_url.as_deref() else {
        return;
    };
    let mut logged_down = false;
    while !stop.load(Ordering::Acquire) {
        match listen_once(db, url, stop) {
            Ok(()) => return,
            Err(e) => {
                // Unknown from here on: nothing of this DB is served from memory.
                db.set_position(None);
                if !logged_down {
                    shared::warn!("cache {}: not listening ({e}); reading the DB", db.name);
                    logged_down = true;
                }
            }
        }
        std::thread::sleep(LISTEN_POLL);
    }
    db.set_position(None);
}

/// Connects and runs sync rounds until the connection fails (`Err`) or `stop` is set (`Ok`).
fn listen_once(db: &DbCache, url: &str, stop: &AtomicBool) -> Result<(), String> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.application_name("query-cache-position");
    let mut client = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
    shared::info!("cache {}: following the read-model position", db.name);
    while !stop.load(Ordering::Acquire) {
        // Idle, a round every LISTEN_POLL still checks the connection.
        let (target, ids) = db.rounds.next(LISTEN_POLL);
        match read_round(&mut client, &ids) {
            Ok((p, found)) => {
                let token: Arc<str> = format!("{}.{p}", db.name).into();
                if db.state().position.as_ref() != Some(&token) {
                    db.set_position(Some(token));
                }
                db.rounds.finish(target, Some(found));
            }
            Err(e) => {
                // Unknown before the waiters look: they read the DB.
                db.set_position(None);
                db.rounds.finish(target, None);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The statement of a round with point reads: the position and the asked reports in one
/// snapshot (one row with NULLs when none of them exists). The pk index answers the `ANY`.
const ROUND_WITH_POINTS: &str = "SELECT p.position, r.id, r.version, \
     r.deleted_at IS NOT NULL, r.doc \
     FROM read_model_position p LEFT JOIN read_reports r ON r.id = ANY($1)";

/// One round: the position, and the reports `ids` (every one of them in the map, a missing
/// one as [`Point::Missing`]). Without ids the position row alone, by the simple protocol;
/// with ids one unnamed statement. Either is one round trip and PgBouncer-safe.
fn read_round(
    client: &mut postgres::Client,
    ids: &[Uuid],
) -> Result<(String, HashMap<Uuid, Point>), String> {
    if ids.is_empty() {
        return Ok((read_position(client)?, HashMap::new()));
    }
    let rows = client
        .query_typed(ROUND_WITH_POINTS, &[(&ids, Type::UUID_ARRAY)])
        .map_err(|e| e.to_string())?;
    let mut found: HashMap<Uuid, Point> = ids.iter().map(|id| (*id, Point::Missing)).collect();
    let mut position = None;
    for row in &rows {
        position = Some(row.try_get::<_, i64>(0).map_err(|e| e.to_string())?);
        let Some(id) = row
            .try_get::<_, Option<Uuid>>(1)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let version: i64 = row.try_get(2).map_err(|e| e.to_string())?;
        let point = if row.try_get::<_, bool>(3).map_err(|e| e.to_string())? {
            Point::Deleted { version }
        } else {
            Point::Live {
                version,
                doc: row.try_get::<_, &str>(4).map_err(|e| e.to_string())?.into(),
            }
        };
        found.insert(id, point);
    }
    let position = position
        .ok_or_else(|| "read_model_position has no row (schema not applied?)".to_owned())?;
    Ok((position.to_string(), found))
}

/// One round: the position row, by the simple protocol (one round trip, PgBouncer-safe).
fn read_position(client: &mut postgres::Client) -> Result<String, String> {
    let rows = client
        .simple_query("SELECT position FROM read_model_position")
        .map_err(|e| e.to_string())?;
    rows.iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| "read_model_position has no row (schema not applied?)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists() {
        let check = |header: &str, expect: bool| {
            assert_eq!(etag_matches(header, "main.7"), expect, "{header:?}");
        };
        check("\"main.7\"", true);
        check("W/\"main.7\"", true);
        check("\"x\", \"main.7\"", true);
        check("*", true);
        check("\"main.71\"", false);
        check("main.7", false);
        check("", false);
    }

    #[test]
    fn entries_only_at_their_position_and_bounded() {
        let db = NamedDb {
            name: "d".into(),
            url: "postgres://x/y".into(),
        };
        let cache = Cache::new(std::slice::from_ref(&db), &[]);
        let p1: Arc<str> = "d.1".into();
        // Position unknown: nothing is kept.
        cache.store(0, "k", &p1, b"a");
        assert!(cache.dbs[0].state().entries.is_empty());
        cache.dbs[0].set_position(Some(Arc::clone(&p1)));
        cache.store(0, "k", &p1, b"a");
        cache.store(0, "big", &p1, &vec![0; MAX_BODY + 1]);
        assert_eq!(cache.dbs[0].state().entries.len(), 1);
        // Read before a change landed: not kept.
        cache.store(0, "k2", &"d.0".into(), b"b");
        assert_eq!(cache.dbs[0].state().entries.len(), 1);
        for n in 0..MAX_ENTRIES + 10 {
            cache.store(0, &n.to_string(), &p1, b"xyz");
        }
        assert!(cache.dbs[0].state().entries.len() <= MAX_ENTRIES);
        cache.dbs[0].set_position(Some("d.2".into()));
        assert!(cache.dbs[0].state().entries.is_empty());
    }
}

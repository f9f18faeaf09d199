//! The response cache (SPEC §7.3): list and statistics answers served from memory, never
//! staler than the query DB they replace.
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
//! The rounds themselves (waiting, sharing) are [`crate::rounds`]; point reads run their own
//! rounds on their own connection ([`crate::points`]), so a lock on `read_reports` that holds
//! a point read never holds a cache check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shared::config::NamedDb;

use crate::config::CONNECT_TIMEOUT;
use crate::rounds::{Rounds, Threads};

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
    pub fn listen(self: &Arc<Cache>) -> std::io::Result<Threads> {
        let mut threads = Threads::default();
        for i in 0..self.dbs.len() {
            if self.dbs[i].listen_url.is_none() {
                continue;
            }
            let cache = Arc::clone(self);
            threads.spawn(format!("listen-{}", self.dbs[i].name), move |stop| {
                listen_loop(&cache.dbs[i], stop)
            })?;
        }
        let cache = Arc::clone(self);
        threads.watch("cache-watch", move || {
            cache.dbs.iter().for_each(|d| d.rounds.give_up_stale())
        })?;
        Ok(threads)
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
        let (target, _) = db.rounds.next(LISTEN_POLL);
        match read_position(&mut client) {
            Ok(p) => {
                let token: Arc<str> = format!("{}.{p}", db.name).into();
                if db.state().position.as_ref() != Some(&token) {
                    db.set_position(Some(token));
                }
                db.rounds.finish(target, None);
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

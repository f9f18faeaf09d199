//! The response cache (SPEC §7.3): list and statistics answers served from memory, never
//! staler than the query DB they replace.
//!
//! Every query DB notifies `read_model_changed` in the same transaction as any change to
//! `read_reports`, `statistics` or `checkpoint` (triggers in `sql/query.sql`; the payload is
//! the changing transaction's id). One listener thread per DB holds a DIRECT connection
//! (`QUERY_LISTEN_URLS`: PgBouncer's transaction pooling cannot carry LISTEN) and turns the
//! notices into that DB's *position*, a token `<db>.<xid>` that changes with every committed
//! change.
//!
//! Guarantees:
//! - an entry is served only while its DB's position is the one it was read at: the position
//!   is taken BEFORE the read, so an entry can only be newer than its position, never older;
//!   every notice replaces the position and drops that DB's entries;
//! - while a DB's position is unknown (listener not connected yet, connection lost, DB down)
//!   nothing of that DB is served from memory and no `ETag` is given for it: every read goes
//!   to the DB, as without a cache;
//! - entries are per DB, and a request is answered from memory only for the DB
//!   [`Dbs::first_choice`](crate::failover::Dbs::first_choice) names, so a failover never
//!   serves the first DB's entries;
//! - memory is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`] per DB, [`MAX_BODY`] per entry).
//!
//! What remains is the delivery of one notice: between a change's commit and its notice
//! reaching the listener (one local socket hop, well under a millisecond) the previous
//! answer can still be served.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use shared::config::NamedDb;

use crate::config::CONNECT_TIMEOUT;

/// The notification channel the query schema's triggers notify.
pub const CHANNEL: &str = "read_model_changed";

/// Entries kept per DB. Lists have few hot shapes (first pages, common filters); when the
/// cache is full it starts over, so a scan of distinct URLs costs misses, never memory.
pub const MAX_ENTRIES: usize = 512;

/// Body bytes kept per DB: 4 MiB holds ~70 full 100-item pages and keeps the service well
/// under its 32 MiB resident target even with three DBs cached.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

/// A larger answer is not kept: it would crowd out many hot small ones.
pub const MAX_BODY: usize = 256 * 1024;

/// How long the listener waits for a notice before checking its connection and the stop
/// flag; also the pause before reconnecting. Bounds how long after a lost connection the
/// position stays known (the socket error ends the wait at once in the usual case).
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
    /// The direct URL to LISTEN on; `None`: this DB is never cached.
    listen_url: Option<String>,
    state: Mutex<State>,
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

/// Connects, LISTENs, takes a fresh position and follows the notices until the connection
/// fails (`Err`) or `stop` is set (`Ok`).
fn listen_once(db: &DbCache, url: &str, stop: &AtomicBool) -> Result<(), String> {
    let pg = |e: postgres::Error| e.to_string();
    let mut config: postgres::Config = url.parse().map_err(pg)?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.application_name("query-cache-listener");
    let mut client = config.connect(postgres::NoTls).map_err(pg)?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(pg)?;
    // LISTEN is active before this transaction: a change committed after it is notified, so
    // this fresh token (an xid no change ever carries) is replaced by the next change.
    let row = client
        .query_one("SELECT pg_current_xact_id()::text", &[])
        .map_err(pg)?;
    let xid: String = row.try_get(0).map_err(pg)?;
    db.set_position(Some(format!("{}.{xid}", db.name).into()));
    shared::info!("cache {}: listening for read-model changes", db.name);
    while !stop.load(Ordering::Acquire) {
        {
            let mut notices = client.notifications();
            let mut iter = notices.timeout_iter(LISTEN_POLL);
            while let Some(n) = iter.next().map_err(pg)? {
                db.set_position(Some(format!("{}.{}", db.name, n.payload()).into()));
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
            }
        }
        if client.is_closed() {
            return Err("connection closed".to_owned());
        }
    }
    Ok(())
}

//! The response cache (SPEC §7.3): list, statistics and by-id answers served from memory,
//! never staler than the query DB they replace, with no DB round trip per hit.
//!
//! Every query DB moves its `read_model_position` row in the same transaction as any change
//! to `read_reports`, `statistics` or `checkpoint`, and no such transaction commits while an
//! instance may still answer the old position from memory: the *cache fence* of
//! `sql/query.sql`. One thread per DB (all of them unless `QUERY_CACHE=off`) keeps a
//! connection of its own and, while reads go to that DB ([`Cache::listen`]), holds the fence
//! lock SHARED on it and idles in `read_model_fence_wait`. A writer's COMMIT cancels that
//! wait until the lock is free; the thread marks the position unknown FIRST, then lets go of
//! the lock, waits for the commit, takes the lock again and reads the new position and the
//! reports changed since its last one (`read_model_changes`). The DB's position is the token
//! `<db>.<n>`.
//!
//! Guarantees:
//! - a list or statistics entry is served only while its DB's position is the one it was read
//!   at: the position is taken BEFORE the read, so an entry can only be newer than its
//!   position, never older; a new position drops those entries;
//! - an answer by id is served only while the position is known and its report has not
//!   changed since it was read (a new position drops the changed ids; a change record that
//!   does not reach back, a new connection or a TRUNCATE drops them all);
//! - a read that starts after a change committed never gets the answer from before it: the
//!   commit waited until this instance had marked the old position unknown;
//! - a position is served only within its *lease*: [`LEASE`] (read from the DB,
//!   `read_model_fence_lease()`) after the listener last sent a statement that proved, on its
//!   own backend, that it holds the lock. A writer cuts off a listener that does not let go
//!   within a second (this instance stopped or hung) and then waits out that lease before it
//!   commits, so a process that wakes from SIGSTOP finds its lease over, not an old answer;
//!   a transaction pooler between the listener and the DB fails that proof (no cache);
//! - while a DB's position is unknown (listener not connected yet, connection lost, DB down,
//!   a standby, whose replay no fence holds back) nothing of that DB is served from memory and
//!   no `ETag` is given for it: every read goes to the DB, as without a cache;
//! - entries are per DB, and a request is answered from memory only for the DB
//!   [`Dbs::first_choice`](crate::failover::Dbs::first_choice) names, so a failover never
//!   serves the first DB's entries;
//! - memory is bounded ([`MAX_ENTRIES`], [`MAX_BYTES`] per DB, [`MAX_BODY`] per entry;
//!   [`MAX_POINTS`], [`MAX_POINT_BYTES`] by id).
//!
//! Why a fence and not a round trip per hit (how this module worked before): waiting for a
//! fresh read of the position cost every hit a DB round trip shared with its neighbours, and
//! held statistics via nginx at ~0.45 of `GET /health`; without it the same answers run at
//! the speed of `/health`. The price moves to the writer: each commit waits for the listeners
//! of that DB (one per instance reading it first) to answer a cancel. Answers by id that
//! memory does not hold run sync rounds ([`crate::points`]) and are kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use shared::config::NamedDb;
use uuid::Uuid;

use crate::config::CONNECT_TIMEOUT;
use crate::rounds::{Point, Threads};

/// Entries kept per DB. Lists have few hot shapes (first pages, common filters); when the
/// cache is full it starts over, so a scan of distinct URLs costs misses, never memory.
pub const MAX_ENTRIES: usize = 512;

/// Body bytes kept per DB: 2 MiB holds ~200 first pages of 20 reports (~35 full 100-item
/// pages). Only the DB reads go to keeps entries (a listener that lets go of its fence because
/// reads moved elsewhere drops them), so with [`MAX_POINT_BYTES`] the cache holds at most
/// 4 MiB and the service stays under its 32 MiB resident target.
pub const MAX_BYTES: usize = 2 * 1024 * 1024;

/// A larger answer is not kept: it would crowd out many hot small ones.
pub const MAX_BODY: usize = 256 * 1024;

/// Answers by id kept per DB, and their bytes: ~2 000 reports of ~1 KiB. When full the
/// point entries start over (a scan of all ids costs misses, never memory).
pub const MAX_POINTS: usize = 4096;
pub const MAX_POINT_BYTES: usize = 2 * 1024 * 1024;

/// The pause before reconnecting a listener.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// How often a listener whose DB reads do not go to looks whether they do now.
const UNCHOSEN_POLL: Duration = Duration::from_millis(20);

/// How long the listener idles in `read_model_fence_wait` per statement: how often it renews
/// its lease and checks the stop flag, and the longest a writer whose cancel arrived between
/// two statements waits for it.
const TICK_MS: i32 = 100;

/// The longest lease this side accepts, whatever the DB says: a writer out-waits the DB's
/// value, so this side may only be shorter.
pub const LEASE: Duration = Duration::from_secs(1);

/// Takes the fence lock (`sql/query.sql`) SHARED, once no writer is committing, and reads,
/// under it, the position, this backend and the reports changed since position `since`
/// (`read_model_changes`). Letting go of everything first makes the statement safe to repeat
/// after a cancel at any point.
fn take_fence_sql(since: i64) -> String {
    format!(
        "SELECT pg_advisory_unlock_all(); \
         SELECT pg_advisory_lock_shared(29042, 1667326825); \
         SELECT pg_advisory_unlock_shared(29042, 1667326825); \
         SELECT pg_advisory_lock_shared(29042, 1667326824); \
         SELECT p.position, pg_backend_pid(), p.changes_from <= {since} AND p.position >= {since} \
                AND NOT EXISTS (SELECT 1 FROM read_model_changes c \
                                WHERE c.position > {since} AND c.ids IS NULL), \
                (SELECT array_agg(u) FROM read_model_changes c, unnest(c.ids) u \
                 WHERE c.position > {since}) \
         FROM read_model_position p"
    )
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
    /// The position is served only before this instant (its lease, see the module doc).
    lease_until: Option<Instant>,
    /// The position the entries were read at: a position that comes back after an unknown
    /// spell (a writer waited, then committed nothing new) keeps them.
    entries_at: Option<Arc<str>>,
    entries: HashMap<String, Entry>,
    bytes: usize,
    /// Answers by id: unlike lists they survive a new position that did not change their
    /// report (`read_model_changes`).
    points: PointEntries,
}

/// Answers by id and the position they are known good at.
#[derive(Debug, Default)]
struct PointEntries {
    /// Every entry is what its report was at this position (the number of the token).
    at: Option<i64>,
    by_id: HashMap<Uuid, Point>,
    bytes: usize,
}

impl PointEntries {
    fn clear(&mut self) {
        self.by_id.clear();
        self.bytes = 0;
    }

    /// The DB moved from `at` to `to`, changing `changed`.
    fn advance(&mut self, to: i64, changed: &Changed) {
        match changed {
            Changed::Since(since, ids) if self.at == Some(*since) && *since <= to => {
                for id in ids {
                    if let Some(old) = self.by_id.remove(id) {
                        self.bytes -= point_size(&old);
                    }
                }
            }
            _ => self.clear(),
        }
        self.at = Some(to);
    }
}

/// What a point entry counts against [`MAX_POINT_BYTES`].
fn point_size(p: &Point) -> usize {
    64 + match p {
        Point::Live { doc, .. } => doc.len(),
        Point::Missing | Point::Deleted { .. } => 0,
    }
}

/// The reports changed between a listener's last fence and this one.
#[derive(Debug, PartialEq, Eq)]
enum Changed {
    /// Not known (first fence of a connection, record pruned, a TRUNCATE, a big statement).
    All,
    /// Since that position, these (and no other) reports changed.
    Since(i64, Vec<Uuid>),
}

impl State {
    /// The position to serve now: known and within its lease.
    fn current(&self) -> Option<&Arc<str>> {
        let leased = self.lease_until.is_some_and(|t| Instant::now() < t);
        self.position.as_ref().filter(|_| leased)
    }
}

/// What the cache knows of one DB.
#[derive(Debug)]
struct DbCache {
    name: String,
    /// The URL the position is read on; `None`: this DB is never cached.
    listen_url: Option<String>,
    state: Mutex<State>,
}

impl DbCache {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves at worst an entry too many: still bounded.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unknown from now on: nothing of this DB is served from memory.
    fn forget(&self) {
        let mut state = self.state();
        state.position = None;
        state.lease_until = None;
    }

    /// `position` (number `n`) is current, served until `lease_until`; `changed` the reports
    /// changed since the point entries' position.
    fn set_position(&self, position: Arc<str>, n: i64, changed: &Changed, lease_until: Instant) {
        let mut state = self.state();
        state.points.advance(n, changed);
        if state.entries_at.as_ref() != Some(&position) {
            state.entries.clear();
            state.bytes = 0;
            state.entries_at = Some(Arc::clone(&position));
        }
        state.position = Some(position);
        state.lease_until = Some(lease_until);
    }

    /// Reads went to another DB: nothing of this one is served, so nothing is kept either.
    fn drop_entries(&self) {
        let mut state = self.state();
        state.entries.clear();
        state.bytes = 0;
        state.entries_at = None;
        state.points.clear();
    }

    /// The position still holds (the fence was held all along): serve it until `lease_until`.
    fn renew(&self, lease_until: Instant) {
        let mut state = self.state();
        if state.position.is_some() {
            state.lease_until = Some(lease_until);
        }
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
        self.dbs.get(i)?.state().current().cloned()
    }

    /// The answer to `key` from DB `i` if it is still current, or 304 when `if_none_match`
    /// names the current position.
    pub fn lookup(
        &self,
        i: usize,
        key: &str,
        if_none_match: Option<&str>,
    ) -> Option<(Hit, Arc<str>)> {
        let state = self.dbs.get(i)?.state();
        let position = state.current()?;
        if if_none_match.is_some_and(|h| etag_matches(h, position)) {
            return Some((Hit::NotModified, Arc::clone(position)));
        }
        let entry = state.entries.get(key)?;
        (&entry.position == position).then(|| (Hit::Body(entry.body.clone()), Arc::clone(position)))
    }

    /// Report `id` as DB `i` holds it now, from memory: `None` unless the position is current
    /// and the report was read since and not changed after.
    pub fn point(&self, i: usize, id: &Uuid) -> Option<Point> {
        let state = self.dbs.get(i)?.state();
        state.current()?;
        state.points.by_id.get(id).cloned()
    }

    /// Keeps `point`, read from DB `i` after `position` was current, if that is still the
    /// position (else a change landed meanwhile and the read may predate it).
    pub fn store_point(&self, i: usize, id: Uuid, position: &Arc<str>, point: &Point) {
        let Some(db) = self.dbs.get(i) else { return };
        let mut state = db.state();
        if state.current() != Some(position) {
            return;
        }
        let points = &mut state.points;
        let size = point_size(point);
        if points.by_id.len() >= MAX_POINTS || points.bytes + size > MAX_POINT_BYTES {
            points.clear();
        }
        if let Some(old) = points.by_id.insert(id, point.clone()) {
            points.bytes -= point_size(&old);
        }
        points.bytes += size;
    }

    /// Keeps `body`, read from DB `i` after `position` was current, if that is still the
    /// position (else a change landed meanwhile and the entry would be dropped anyway).
    pub fn store(&self, i: usize, key: &str, position: &Arc<str>, body: &[u8]) {
        if body.len() > MAX_BODY {
            return;
        }
        let Some(db) = self.dbs.get(i) else { return };
        let mut state = db.state();
        if state.current() != Some(position) {
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
    /// `first_choice` names the DB reads go to now ([`Dbs::first_choice`]): only its listener
    /// holds the fence, since memory answers only for it, so each commit waits for one
    /// listener per query instance reading that DB first, not for every instance's.
    ///
    /// [`Dbs::first_choice`]: crate::failover::Dbs::first_choice
    pub fn listen(
        self: &Arc<Cache>,
        first_choice: Arc<dyn Fn() -> Option<usize> + Send + Sync>,
    ) -> std::io::Result<Threads> {
        let mut threads = Threads::default();
        for i in 0..self.dbs.len() {
            if self.dbs[i].listen_url.is_none() {
                continue;
            }
            let cache = Arc::clone(self);
            let first_choice = Arc::clone(&first_choice);
            let chosen = move || first_choice() == Some(i);
            threads.spawn(format!("listen-{}", self.dbs[i].name), move |stop| {
                listen_loop(&cache.dbs[i], &chosen, stop)
            })?;
        }
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

fn listen_loop(db: &DbCache, chosen: &dyn Fn() -> bool, stop: &AtomicBool) {
    let Some(url) = db.listen_url.as_deref() else {
        return;
    };
    let mut logged_down = false;
    while !stop.load(Ordering::Acquire) {
        match listen_once(db, url, chosen, stop) {
            Ok(()) => break,
            Err(e) => {
                db.forget();
                if !logged_down {
                    shared::warn!("cache {}: not fenced ({e}); reading the DB", db.name);
                    logged_down = true;
                }
            }
        }
        std::thread::sleep(RECONNECT_PAUSE);
    }
    db.forget();
}

/// Why a fenced connection's statement did not succeed.
enum Failed {
    /// A writer cancelled it (or a statement timeout did): let go and take the fence again.
    Cancelled,
    /// The connection or the DB failed: reconnect.
    Down(String),
}

impl From<postgres::Error> for Failed {
    fn from(e: postgres::Error) -> Failed {
        if e.code() == Some(&SqlState::QUERY_CANCELED) {
            Failed::Cancelled
        } else {
            Failed::Down(describe(&e))
        }
    }
}

/// Connects, then serves positions under the fence while this DB is `chosen`, until the
/// connection fails (`Err`) or `stop` is set (`Ok`).
fn listen_once(
    db: &DbCache,
    url: &str,
    chosen: &dyn Fn() -> bool,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.application_name(APPLICATION_NAME);
    let mut client = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
    let lease = fence_lease(&mut client)?;
    // The listener's tick, prepared once per connection.
    let wait = client
        .prepare("SELECT read_model_fence_wait($1, $2)")
        .map_err(|e| describe(&e))?;
    shared::info!(
        "cache {}: connected; it holds the fence while reads go to this DB",
        db.name
    );
    // A new connection may be to a DB recreated under the same name: no answer by id from
    // before it is trusted.
    let mut since = None;
    while !stop.load(Ordering::Acquire) {
        if !chosen() {
            // Reads go elsewhere: hold no writer of this DB up, and look again shortly.
            std::thread::sleep(UNCHOSEN_POLL);
            continue;
        }
        let sent = Instant::now();
        let holder = match take_fence(&mut client, since) {
            Ok(f) => {
                let token = format!("{}.{}", db.name, f.position).into();
                db.set_position(token, f.position, &f.changed, sent + lease);
                since = Some(f.position);
                f.holder
            }
            Err(Failed::Cancelled) => continue,
            Err(Failed::Down(e)) => return Err(e),
        };
        // Serve that position until a writer waits for the fence, or reads go elsewhere.
        while !stop.load(Ordering::Acquire) && chosen() {
            let sent = Instant::now();
            match client.query_one(&wait, &[&TICK_MS, &holder]) {
                Ok(row) if !row.get::<_, bool>(0) => db.renew(sent + lease),
                Ok(_) => break,
                Err(e) => match Failed::from(e) {
                    Failed::Cancelled => break,
                    Failed::Down(e) => return Err(e),
                },
            }
        }
        // Unknown BEFORE letting go: the writer commits only after that.
        db.forget();
        if !chosen() {
            db.drop_entries();
            client
                .simple_query("SELECT pg_advisory_unlock_all()")
                .map_err(|e| describe(&e))?;
        }
    }
    Ok(())
}

/// The lease this DB's writers out-wait before committing past a listener they cut off
/// ([`LEASE`] at most); refuses a standby, whose replay no fence holds back.
fn fence_lease(client: &mut postgres::Client) -> Result<Duration, String> {
    let row = client
        .query_one("SELECT pg_is_in_recovery(), read_model_fence_lease()", &[])
        .map_err(|e| describe(&e))?;
    if row.get::<_, bool>(0) {
        return Err("a standby: replay moves its position, no fence holds it back".to_owned());
    }
    let secs: f64 = row.get(1);
    Ok(Duration::try_from_secs_f64(secs)
        .unwrap_or(Duration::ZERO)
        .min(LEASE))
}

/// What taking the fence found.
struct Fenced {
    position: i64,
    /// The backend that holds the fence (ticks prove they run on it).
    holder: i32,
    /// The reports changed since the position asked about.
    changed: Changed,
}

/// Takes the fence lock shared and reads the position under it, in one round trip.
fn take_fence(client: &mut postgres::Client, since: Option<i64>) -> Result<Fenced, Failed> {
    let messages = client.simple_query(&take_fence_sql(since.unwrap_or(i64::MAX)))?;
    let row = messages
        .iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .last()
        .filter(|r| r.len() == 4);
    let bad = || Failed::Down("read_model_position has no row (schema not applied?)".to_owned());
    let row = row.ok_or_else(bad)?;
    let position = row.get(0).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let holder = row.get(1).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let changed = match (since, row.get(2)) {
        (Some(since), Some("t")) => {
            Changed::Since(since, parse_uuid_array(row.get(3).unwrap_or("{}")))
        }
        _ => Changed::All,
    };
    Ok(Fenced {
        position,
        holder,
        changed,
    })
}

/// `{a,b,…}`, PostgreSQL's text form of a `uuid[]`; an element that is no UUID cannot come
/// from a `uuid[]`, and is skipped.
fn parse_uuid_array(text: &str) -> Vec<Uuid> {
    text.trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .filter_map(|u| Uuid::try_parse(u.trim()).ok())
        .collect()
}

/// A DB error with its SQLSTATE and message (`postgres::Error` alone says "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// What the fenced connection's application name is (tests and operators find the listeners
/// in `pg_stat_activity` by it).
pub const APPLICATION_NAME: &str = "query-cache-fence";

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
        let lease = Instant::now() + Duration::from_secs(60);
        cache.dbs[0].set_position(Arc::clone(&p1), 1, &Changed::All, lease);
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
        cache.dbs[0].set_position("d.2".into(), 2, &Changed::All, lease);
        assert!(cache.dbs[0].state().entries.is_empty());
    }

    /// Unknown, or known past its lease: nothing from memory, no `ETag`. A position that
    /// comes back unchanged after an unknown spell keeps its entries.
    #[test]
    fn only_a_known_position_within_its_lease_is_served() {
        let db = NamedDb {
            name: "d".into(),
            url: "postgres://x/y".into(),
        };
        let cache = Cache::new(std::slice::from_ref(&db), &[]);
        let p1: Arc<str> = "d.1".into();
        let later = Instant::now() + Duration::from_secs(60);
        cache.dbs[0].set_position(Arc::clone(&p1), 1, &Changed::All, later);
        cache.store(0, "k", &p1, b"a");
        assert_eq!(
            cache.lookup(0, "k", None),
            Some((Hit::Body(b"a".to_vec()), Arc::clone(&p1)))
        );
        assert_eq!(
            cache.lookup(0, "other", Some("\"d.1\"")).map(|h| h.0),
            Some(Hit::NotModified)
        );

        cache.dbs[0].forget();
        assert_eq!(cache.lookup(0, "k", None), None);
        assert_eq!(cache.lookup(0, "k", Some("\"d.1\"")), None);
        assert_eq!(cache.position(0), None);
        cache.dbs[0].renew(later);
        assert_eq!(
            cache.position(0),
            None,
            "a renewal does not make a position known"
        );

        cache.dbs[0].set_position(Arc::clone(&p1), 1, &Changed::All, later);
        assert!(
            cache.lookup(0, "k", None).is_some(),
            "same position: entries kept"
        );

        // The lease ran out (the listener stopped renewing it): as good as unknown.
        cache.dbs[0].set_position(Arc::clone(&p1), 1, &Changed::All, Instant::now());
        assert_eq!(cache.lookup(0, "k", None), None);
        assert_eq!(cache.position(0), None);
        cache.store(0, "k2", &p1, b"b");
        cache.dbs[0].renew(later);
        assert_eq!(
            cache.lookup(0, "k2", None),
            None,
            "stored outside the lease"
        );
        assert!(cache.lookup(0, "k", None).is_some());
    }

    /// Answers by id outlive a new position unless it changed their report, or the change
    /// record does not reach back to them; they are served only under a current position.
    #[test]
    fn point_entries_survive_the_positions_that_did_not_change_them() {
        let db = NamedDb {
            name: "d".into(),
            url: "postgres://x/y".into(),
        };
        let cache = Cache::new(std::slice::from_ref(&db), &[]);
        let later = Instant::now() + Duration::from_secs(60);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let live = |v: i64| Point::Live {
            version: v,
            doc: "{}".into(),
        };
        let p1: Arc<str> = "d.1".into();
        cache.store_point(0, a, &p1, &live(1));
        assert_eq!(
            cache.point(0, &a),
            None,
            "kept while the position was unknown"
        );
        cache.dbs[0].set_position(Arc::clone(&p1), 1, &Changed::All, later);
        cache.store_point(0, a, &p1, &live(1));
        cache.store_point(0, b, &p1, &Point::Missing);
        cache.store_point(0, c, &"d.0".into(), &live(1));
        assert_eq!(cache.point(0, &a), Some(live(1)));
        assert_eq!(cache.point(0, &b), Some(Point::Missing));
        assert_eq!(
            cache.point(0, &c),
            None,
            "read before the position: not kept"
        );

        // Position 2 changed b only: a stays, b goes (a create of a missing report).
        cache.dbs[0].forget();
        assert_eq!(cache.point(0, &a), None, "unknown: nothing by id either");
        cache.dbs[0].set_position("d.2".into(), 2, &Changed::Since(1, vec![b]), later);
        assert_eq!(cache.point(0, &a), Some(live(1)));
        assert_eq!(cache.point(0, &b), None);
        // A record relative to another position than the entries': all of them go.
        cache.dbs[0].set_position("d.5".into(), 5, &Changed::Since(3, vec![]), later);
        assert_eq!(cache.point(0, &a), None);
        cache.store_point(0, a, &"d.5".into(), &live(2));
        cache.dbs[0].set_position("d.6".into(), 6, &Changed::All, later);
        assert_eq!(
            cache.point(0, &a),
            None,
            "a record that does not reach back"
        );

        let mut bytes = 0;
        for n in 0..MAX_POINTS + 10 {
            cache.store_point(0, Uuid::new_v4(), &"d.6".into(), &live(n as i64));
            bytes = bytes.max(cache.dbs[0].state().points.bytes);
        }
        let state = cache.dbs[0].state();
        assert!(state.points.by_id.len() <= MAX_POINTS && bytes <= MAX_POINT_BYTES);
    }

    #[test]
    fn uuid_arrays_in_text_form() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(parse_uuid_array(&format!("{{{a},{b}}}")), vec![a, b]);
        assert_eq!(parse_uuid_array("{}"), Vec::<Uuid>::new());
    }
}

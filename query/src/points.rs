//! Point reads by sync round (issue 13 point 2): `GET /reports/{id}` without a may worker
//! blocked in the postgres client, and N concurrent reads as one statement.
//!
//! One named thread per query DB (unless `QUERY_CACHE=off`) keeps a connection of its own. A
//! request adds its id to the next round and parks its coroutine ([`crate::rounds`]); the
//! thread reads every asked report with one `id = ANY($1)` statement and wakes them. Why: the
//! sync client blocks a whole worker thread in its own epoll for each round trip, and a
//! profile of one instance at ~10 000 req/s by id had ~30 % of its samples in the kernel's
//! task switch. Coalesced, N reads cost one round trip, one statement and one wake-up.
//!
//! Guarantees:
//! - a point read is as fresh as a read of its own: its round started after it arrived;
//! - each answer is what `store::report` would give for that id (tombstones included);
//! - while the thread is not connected, or its round failed or took longer than
//!   [`rounds::SYNC_WAIT`](crate::rounds::SYNC_WAIT), [`PointReaders::read`] is `None` and the
//!   caller reads on a pooled connection with failover, as without this module;
//! - the caller names the DB (the one a read would use now), so a DB passed over is never read
//!   through its thread.
//!
//! Memory (`cache.rs`) answers first; these rounds read what it does not hold, and the caller
//! keeps the answer there under the position it took before the round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::types::Type;
use shared::config::NamedDb;
use uuid::Uuid;

use crate::config::CONNECT_TIMEOUT;
use crate::rounds::{Point, Points, Rounds, Threads};

/// The longest the thread idles between rounds (checking the stop flag), and its pause
/// before reconnecting.
const IDLE: Duration = Duration::from_millis(250);

/// Every asked report in one statement; the primary key index answers the `ANY`.
pub const REPORTS_BY_IDS: &str = "SELECT id, version, deleted_at IS NOT NULL, doc \
     FROM read_reports WHERE id = ANY($1)";

/// What the application name of the thread's connection is (so operators and tests can tell
/// it from pooled connections in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "query-point-reads";

#[derive(Debug)]
struct Reader {
    name: String,
    /// `None`: this DB has no point reader.
    url: Option<String>,
    /// Connected: rounds can be asked for.
    up: AtomicBool,
    rounds: Rounds,
}

/// The point readers of every DB of this instance, in `QUERY_DATABASE_URLS` order.
#[derive(Debug)]
pub struct PointReaders {
    dbs: Vec<Reader>,
}

impl PointReaders {
    /// `dbs` in `QUERY_DATABASE_URLS` order; `urls` the URLs to read by name (none: off).
    pub fn new(dbs: &[NamedDb], urls: &[NamedDb]) -> PointReaders {
        PointReaders {
            dbs: dbs
                .iter()
                .map(|d| Reader {
                    name: d.name.clone(),
                    url: urls
                        .iter()
                        .find(|u| u.name == d.name)
                        .map(|u| u.url.clone()),
                    up: AtomicBool::new(false),
                    rounds: Rounds::default(),
                })
                .collect(),
        }
    }

    /// Report `id` as DB `i` holds it, read by a round that started after this call, or
    /// `None` when the caller must read it itself (see the module doc).
    pub fn read(&self, i: usize, id: &Uuid) -> Option<Point> {
        let db = self.dbs.get(i)?;
        if !db.up.load(Ordering::Acquire) {
            return None;
        }
        let round = db.rounds.sync(Some(*id))?;
        db.rounds.point(round, id)
    }

    /// Starts one thread per DB with a URL; dropping the result stops them.
    pub fn start(self: &Arc<PointReaders>) -> std::io::Result<Threads> {
        let mut threads = Threads::default();
        for i in 0..self.dbs.len() {
            if self.dbs[i].url.is_none() {
                continue;
            }
            let readers = Arc::clone(self);
            threads.spawn(format!("points-{}", self.dbs[i].name), move |stop| {
                reader_loop(&readers.dbs[i], stop)
            })?;
        }
        let readers = Arc::clone(self);
        threads.watch("points-watch", move || {
            readers.dbs.iter().for_each(|d| d.rounds.give_up_stale())
        })?;
        Ok(threads)
    }
}

fn reader_loop(db: &Reader, stop: &AtomicBool) {
    let Some(url) = db.url.as_deref() else {
        return;
    };
    let mut logged_down = false;
    while !stop.load(Ordering::Acquire) {
        match read_rounds(db, url, stop) {
            Ok(()) => break,
            Err(e) => {
                db.up.store(false, Ordering::Release);
                if !logged_down {
                    shared::warn!(
                        "point reads {}: not connected ({e}); reading the pool",
                        db.name
                    );
                    logged_down = true;
                }
            }
        }
        std::thread::sleep(IDLE);
    }
    db.up.store(false, Ordering::Release);
}

/// Connects and runs rounds until the connection fails (`Err`) or `stop` is set (`Ok`).
fn read_rounds(db: &Reader, url: &str, stop: &AtomicBool) -> Result<(), String> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.keepalives(true);
    config.application_name(APPLICATION_NAME);
    let mut client = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
    db.up.store(true, Ordering::Release);
    shared::info!("point reads {}: connected", db.name);
    while !stop.load(Ordering::Acquire) {
        let (target, ids) = db.rounds.next(IDLE);
        if ids.is_empty() {
            // Idle (or only rounds without ids, which no caller asks for): nothing to read.
            db.rounds.finish(target, None);
            continue;
        }
        match read_reports(&mut client, &ids) {
            Ok(found) => db.rounds.finish(target, Some(found)),
            Err(e) => {
                // Not connected before the waiters look: they read the pool.
                db.up.store(false, Ordering::Release);
                db.rounds.finish(target, None);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The reports `ids`, every one of them in the map (a missing one as [`Point::Missing`]).
fn read_reports(client: &mut postgres::Client, ids: &[Uuid]) -> Result<Points, String> {
    let rows = client
        .query_typed(REPORTS_BY_IDS, &[(&ids, Type::UUID_ARRAY)])
        .map_err(|e| e.to_string())?;
    let mut found: Points = ids
        .iter()
        .map(|id| (*id, Point::Missing))
        .collect::<HashMap<_, _>>();
    for row in &rows {
        let id: Uuid = row.try_get(0).map_err(|e| e.to_string())?;
        let version: i64 = row.try_get(1).map_err(|e| e.to_string())?;
        let point = if row.try_get::<_, bool>(2).map_err(|e| e.to_string())? {
            Point::Deleted { version }
        } else {
            Point::Live {
                version,
                doc: row.try_get::<_, &str>(3).map_err(|e| e.to_string())?.into(),
            }
        };
        found.insert(id, point);
    }
    Ok(found)
}

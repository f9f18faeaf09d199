//! Which query database serves a request (SPEC §4.5: reads survive a DB loss).
//!
//! One r2d2 pool per query DB, in preference order (`QUERY_DATABASE_URLS`, first preferred).
//! A request runs on the first DB that is up; when that DB fails with an "unavailable" error
//! (classified by SQLSTATE, or a pool checkout timeout) it is marked down and the same request
//! is retried on the next one, so the client still gets its answer. A cancelled statement
//! (SQLSTATE 57014, its statement timeout) is not an outage: that request alone gets a 503,
//! and the DB stays up with its pool.
//!
//! One named probe thread per DB runs `SELECT 1` every [`PROBE_INTERVAL`] on its own
//! connection (never a pool slot). A DB counts as up only while its last successful probe is
//! recent ([`STALE_AFTER`]), so a hung DB whose probe never returns stops being chosen too.
//! When a DB that was down answers again its pool is rebuilt (connections to the old server
//! process are all dead) and traffic returns to it if it is preferred.
//!
//! A DB that is up but **stale** (SPEC §7.4) is not chosen either: the probe also reads the
//! DB's checkpoint row, and a DB counts as stale while the projection's `stale` mark is set in
//! it, or while its checkpoint position is more than [`STALE_BEHIND_POSITIONS`] behind the
//! best position among the reachable DBs. The second rule does not trust anything stored in
//! the DB alone, so a restored backup (which carries its old "not stale" state) is refused
//! even before the projection has looked at it and marked it; the mark covers the rest (a
//! backup less far behind, a DB behind a stream Redis lost). A stale read model is never
//! served: with every reachable DB stale, a request gets 503. A DB that comes back is passed
//! over for [`REJOIN_GRACE`] while another can serve, so the projection has judged it first.
//!
//! Invariant: nothing in this module yields a may coroutine while a pooled connection is
//! held, so a worker holds at most one connection and a pool of one connection per worker
//! never makes a worker wait on the pool.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use shared::config::NamedDb;
use shared::db::{self, Conn, DbErrorKind, Pool, PoolSettings};

use crate::config::{Config, CHECKOUT_TIMEOUT, CONNECT_TIMEOUT};
use crate::store::StoreError;

/// How often each DB is probed. 500 ms: traffic returns to the preferred DB within about a
/// second of it coming back, for two cheap queries a second per DB.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A DB whose last good probe is older than this is not chosen: three missed probes.
pub const STALE_AFTER: Duration = Duration::from_millis(1500);

/// A DB whose checkpoint position is further behind the best reachable DB's is stale. Event-log
/// positions count events (plus the odd gap), so this is the projection's default retention
/// bound in entries (`STREAM_MAX_ENTRIES`): a DB further behind than the stream keeps cannot
/// be caught up from it and is being rebuilt.
pub const STALE_BEHIND_POSITIONS: i64 = 200_000;

/// A DB that comes back (or appears) is not read for this long while another DB can serve: the
/// time the projection needs to reconnect to it (its backoff tops out at 2 s) and judge it, so
/// a restored backup less far behind than [`STALE_BEHIND_POSITIONS`] is marked stale before
/// any read reaches it. Reads return to a preferred DB that merely restarted this much later.
pub const REJOIN_GRACE: Duration = Duration::from_secs(5);

/// The checkpoint table's stream name (`shared::event::STREAM`), inlined into the probe query.
const CHECKPOINT_QUERY: &str =
    "SELECT stale::int, position FROM checkpoint WHERE stream = 'report-events'";

/// How long start-up waits for the first probe of every DB before serving, so `/ready` and
/// the first requests already know which DBs are up.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(2);

/// `serving` when no DB has answered yet.
const NONE: usize = usize::MAX;

/// One query database.
#[derive(Debug)]
pub struct Db {
    pub name: String,
    /// `X-Query-DB: <name>`, built once (headers must be `&'static str`).
    pub header: &'static str,
    url: String,
    settings: PoolSettings,
    pool: RwLock<Pool>,
    up: AtomicBool,
    /// Milliseconds since [`Dbs::epoch`] of the last good probe; 0 = never.
    last_ok_ms: AtomicU64,
    /// Probes done, for the start-up wait.
    probes: AtomicU64,
    /// The projection's stale mark, as the last probe read it.
    marked_stale: AtomicBool,
    /// The checkpoint position the last probe read (0: none yet).
    position: AtomicI64,
    /// Marked, or too far behind the best reachable DB: not chosen.
    stale: AtomicBool,
    /// Milliseconds since [`Dbs::epoch`] when the probe last saw it come up.
    up_since_ms: AtomicU64,
}

impl Db {
    fn pool(&self) -> Pool {
        match self.pool.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the pool, dropping connections to a server process that is gone.
    fn rebuild_pool(&self) {
        match db::pool(&self.url, &self.settings) {
            Ok(fresh) => match self.pool.write() {
                Ok(mut p) => *p = fresh,
                Err(poisoned) => *poisoned.into_inner() = fresh,
            },
            Err(e) => shared::error!("query db {}: cannot rebuild pool: {e}", self.name),
        }
    }
}

/// The query databases of this instance and which one serves.
#[derive(Debug)]
pub struct Dbs {
    pub dbs: Vec<Db>,
    epoch: Instant,
    /// Index of the DB that served last (or that the probes say is preferred and up).
    serving: AtomicUsize,
    failovers: AtomicU64,
    failbacks: AtomicU64,
}

/// A snapshot for `/ready` and `/metrics`.
#[derive(Debug, Clone)]
pub struct DbState {
    pub name: String,
    pub up: bool,
    /// Reachable but not served: its read model may miss events (SPEC §7.4).
    pub stale: bool,
    pub serving: bool,
}

impl Dbs {
    /// Builds one pool per DB (without connecting).
    pub fn new(config: &Config) -> Result<Dbs, StoreError> {
        let settings = PoolSettings {
            size: config.pool_size,
            checkout_timeout: CHECKOUT_TIMEOUT,
            // Sent as a startup option: enforced by the server on direct connections; PgBouncer
            // drops it (`ignore_startup_parameters = options`) and enforces its own
            // `query_timeout` instead (rendered pgbouncer.ini). A per-transaction `SET LOCAL`
            // would triple the round trips of every read.
            statement_timeout: Duration::from_secs(5),
            connect_timeout: CONNECT_TIMEOUT,
            startup_options: true,
        };
        let dbs = config
            .dbs
            .iter()
            .map(|NamedDb { name, url }| {
                let pool = db::pool(url, &settings).map_err(|e| StoreError::Failed {
                    db: name.clone(),
                    detail: format!("bad database url: {e}"),
                })?;
                Ok(Db {
                    name: name.clone(),
                    header: Box::leak(format!("X-Query-DB: {name}").into_boxed_str()),
                    url: url.clone(),
                    settings: settings.clone(),
                    pool: RwLock::new(pool),
                    up: AtomicBool::new(false),
                    last_ok_ms: AtomicU64::new(0),
                    probes: AtomicU64::new(0),
                    marked_stale: AtomicBool::new(false),
                    position: AtomicI64::new(0),
                    stale: AtomicBool::new(false),
                    up_since_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Dbs {
            dbs,
            epoch: Instant::now(),
            serving: AtomicUsize::new(NONE),
            failovers: AtomicU64::new(0),
            failbacks: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        // Never 0, which means "never probed".
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1
    }

    fn is_up(&self, i: usize, now_ms: u64) -> bool {
        let db = &self.dbs[i];
        db.up.load(Ordering::Acquire)
            && now_ms.saturating_sub(db.last_ok_ms.load(Ordering::Acquire))
                <= STALE_AFTER.as_millis() as u64
    }

    /// Up and not stale (and, with `settled`, up for [`REJOIN_GRACE`]): may serve reads.
    fn serves(&self, i: usize, now_ms: u64, settled: bool) -> bool {
        let db = &self.dbs[i];
        self.is_up(i, now_ms)
            && !db.stale.load(Ordering::Acquire)
            && (!settled
                || now_ms.saturating_sub(db.up_since_ms.load(Ordering::Acquire))
                    >= REJOIN_GRACE.as_millis() as u64)
    }

    /// Whether some DB has served its grace: then DBs still in theirs are passed over.
    fn any_settled(&self, now_ms: u64) -> bool {
        (0..self.dbs.len()).any(|i| self.serves(i, now_ms, true))
    }

    /// The DB [`Dbs::run`] would try first right now: the first that may serve (up, not
    /// stale, settled when another is), or none. The response cache (`cache.rs`) answers only
    /// for this DB, so an answer from memory is never one a failed-over read would not have
    /// given, and never one of a stale DB.
    pub fn first_choice(&self) -> Option<usize> {
        let now = self.now_ms();
        let settled = self.any_settled(now);
        (0..self.dbs.len()).find(|&i| self.serves(i, now, settled))
    }

    /// Runs `f` with a connection of the first DB that is up, failing over to the next on an
    /// "unavailable" error. When none is up, only the preferred DB is tried (it may be back
    /// before its probe noticed), so an outage costs one checkout timeout, not one per DB.
    /// `f` may run more than once (once per DB tried) and must start from scratch each time.
    pub fn run<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<(T, &Db), StoreError> {
        let now = self.now_ms();
        let settled = self.any_settled(now);
        let any_up = (0..self.dbs.len()).any(|i| self.serves(i, now, settled));
        let mut failures = Vec::new();
        for (i, db) in self.dbs.iter().enumerate() {
            if any_up && !self.serves(i, now, settled) {
                continue;
            }
            if !any_up && (i > 0 || db.stale.load(Ordering::Acquire)) {
                break;
            }
            let result = match db.pool().get() {
                Ok(mut conn) => f(&mut conn),
                Err(e) => {
                    let detail = format!("no connection within {CHECKOUT_TIMEOUT:?}: {e}");
                    self.mark_down(i, &detail);
                    failures.push(format!("{}: {detail}", db.name));
                    continue;
                }
            };
            match result {
                Ok(v) => {
                    self.note_serving(i);
                    return Ok((v, db));
                }
                // One statement cancelled (57014, e.g. its statement_timeout): the DB answered,
                // so it stays up with its pool, and this request alone gets a 503. Trying the
                // next DB would spread one slow query over every DB.
                Err(e) if db::classify(&e) == DbErrorKind::Timeout => {
                    return Err(StoreError::Unavailable(format!(
                        "query db {}: statement cancelled: {}",
                        db.name,
                        e.as_db_error()
                            .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                    )));
                }
                Err(e) if db::classify(&e) == DbErrorKind::Unavailable => {
                    let detail = e.to_string();
                    self.mark_down(i, &detail);
                    failures.push(format!("{}: {detail}", db.name));
                }
                Err(e) => {
                    return Err(StoreError::Failed {
                        db: db.name.clone(),
                        detail: e.to_string(),
                    })
                }
            }
        }
        Err(StoreError::Unavailable(if failures.is_empty() {
            "no query database is reachable".to_owned()
        } else {
            format!("no query database is reachable: {}", failures.join("; "))
        }))
    }

    /// A request saw DB `i` fail: stop choosing it until a probe says it is back.
    fn mark_down(&self, i: usize, detail: &str) {
        if self.dbs[i].up.swap(false, Ordering::AcqRel) {
            shared::warn!(
                "query db {} failed: {detail}; failing over",
                self.dbs[i].name
            );
        }
        self.recompute_serving();
    }

    fn note_serving(&self, i: usize) {
        let old = self.serving.swap(i, Ordering::AcqRel);
        if old != i {
            self.count_switch(old, i);
        }
    }

    /// Sets `serving` to the first DB that is up (unchanged when none is).
    fn recompute_serving(&self) {
        let now = self.now_ms();
        let settled = self.any_settled(now);
        if let Some(i) = (0..self.dbs.len()).find(|&i| self.serves(i, now, settled)) {
            self.note_serving(i);
        }
    }

    fn count_switch(&self, old: usize, new: usize) {
        let name = &self.dbs[new].name;
        if old == NONE {
            shared::info!("serving from query db {name}");
        } else if new == 0 {
            self.failbacks.fetch_add(1, Ordering::Relaxed);
            shared::info!("preferred query db {name} is back; serving from it again");
        } else {
            self.failovers.fetch_add(1, Ordering::Relaxed);
            shared::warn!(
                "failed over from query db {} to {name}",
                self.dbs.get(old).map_or("?", |d| d.name.as_str())
            );
        }
    }

    fn report_probe(&self, i: usize, result: Result<Progress, postgres::Error>) {
        let db = &self.dbs[i];
        match result {
            Ok(progress) => {
                db.marked_stale
                    .store(progress.marked_stale, Ordering::Release);
                db.position.store(progress.position, Ordering::Release);
                db.last_ok_ms.store(self.now_ms(), Ordering::Release);
                if !db.up.load(Ordering::Acquire) {
                    db.up_since_ms.store(self.now_ms(), Ordering::Release);
                    if db.probes.load(Ordering::Acquire) > 0 {
                        db.rebuild_pool();
                        shared::info!("query db {} is reachable again", db.name);
                    } else {
                        shared::info!("query db {} is reachable", db.name);
                    }
                    db.up.store(true, Ordering::Release);
                }
            }
            Err(e) => {
                if db.up.swap(false, Ordering::AcqRel) || db.probes.load(Ordering::Acquire) == 0 {
                    shared::warn!("query db {} is unreachable: {e}", db.name);
                }
            }
        }
        db.probes.fetch_add(1, Ordering::AcqRel);
        self.judge_stale();
        self.recompute_serving();
    }

    /// Re-judges every DB: marked by the projection, or too far behind the best reachable one.
    fn judge_stale(&self) {
        let now = self.now_ms();
        let best = (0..self.dbs.len())
            // Marked DBs count too: any position a DB holds is one the events reached.
            .filter(|&i| self.is_up(i, now))
            .map(|i| self.dbs[i].position.load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        for db in &self.dbs {
            let stale = db.marked_stale.load(Ordering::Acquire)
                || best - db.position.load(Ordering::Acquire) > STALE_BEHIND_POSITIONS;
            if db.stale.swap(stale, Ordering::AcqRel) != stale {
                if stale {
                    shared::warn!("query db {} is stale; not reading from it", db.name);
                } else {
                    shared::info!("query db {} is current again", db.name);
                }
            }
        }
    }

    /// Every DB with its state, in preference order.
    pub fn states(&self) -> Vec<DbState> {
        let now = self.now_ms();
        let serving = self.serving.load(Ordering::Acquire);
        (0..self.dbs.len())
            .map(|i| DbState {
                name: self.dbs[i].name.clone(),
                up: self.is_up(i, now),
                stale: self.dbs[i].stale.load(Ordering::Acquire),
                serving: i == serving,
            })
            .collect()
    }

    /// Switches from the preferred DB to another one.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Switches back to the preferred DB.
    pub fn failbacks(&self) -> u64 {
        self.failbacks.load(Ordering::Relaxed)
    }
}

/// The probe threads; dropping it stops them (and waits for them).
#[derive(Debug)]
pub struct Prober {
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Prober {
    /// Starts one probe thread per DB and waits (bounded) for the first round.
    pub fn start(dbs: &Arc<Dbs>) -> std::io::Result<Prober> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::with_capacity(dbs.dbs.len());
        for i in 0..dbs.dbs.len() {
            let dbs = Arc::clone(dbs);
            let stopped = stopped.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("probe-{}", dbs.dbs[i].name))
                    .spawn(move || probe_loop(&dbs, i, &stopped))?,
            );
        }
        let deadline = Instant::now() + FIRST_PROBE_WAIT;
        while Instant::now() < deadline
            && dbs
                .dbs
                .iter()
                .any(|d| d.probes.load(Ordering::Acquire) == 0)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Prober {
            stop: Some(stop),
            threads,
        })
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        drop(self.stop.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn probe_loop(dbs: &Dbs, i: usize, stopped: &Receiver<()>) {
    let mut client: Option<postgres::Client> = None;
    loop {
        let result = probe(&dbs.dbs[i].url, &mut client);
        if result.is_err() {
            client = None;
        }
        dbs.report_probe(i, result);
        match stopped.recv_timeout(PROBE_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// What a probe read from a DB's checkpoint row.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    marked_stale: bool,
    position: i64,
}

/// `SELECT 1` and the checkpoint row on a kept connection, reconnecting when needed. The
/// simple-query protocol keeps it valid through PgBouncer in transaction mode. A DB without
/// the checkpoint table or row yet (not migrated, nothing applied) reads as position 0.
fn probe(url: &str, client: &mut Option<postgres::Client>) -> Result<Progress, postgres::Error> {
    let live = match client.take() {
        Some(c) if !c.is_closed() => c,
        _ => {
            let mut config: postgres::Config = url.parse()?;
            config.connect_timeout(CONNECT_TIMEOUT);
            config.keepalives(true);
            config.application_name("query-probe");
            config.connect(postgres::NoTls)?
        }
    };
    let c = client.insert(live);
    c.simple_query("SELECT 1")?;
    let rows = match c.simple_query(CHECKPOINT_QUERY) {
        Ok(rows) => rows,
        // Answered, but no such table or column yet: nothing applied here.
        Err(e) if e.code().is_some() => return Ok(Progress::default()),
        Err(e) => return Err(e),
    };
    for m in rows {
        if let postgres::SimpleQueryMessage::Row(row) = m {
            return Ok(Progress {
                marked_stale: row.get(0) == Some("1"),
                position: row.get(1).and_then(|p| p.parse().ok()).unwrap_or(0),
            });
        }
    }
    Ok(Progress::default())
}

//! The command database: every write is ONE transaction holding both the report row and its
//! event-log row (the outbox). It does not NOTIFY: the relay's wake-up is sent after the
//! commit (`wake.rs`), because a notifying commit serialises with every other one.
//!
//! **Invariant:** a 2xx is only answered after `COMMIT` returned; a change is in the report
//! table exactly when its event is in the event log. Writes to one report serialise on its row
//! lock, so its versions — and its event-log positions — strictly increase.
//!
//! Round trips per write (each one parks the request's worker until the DB answers):
//! - create: ONE — a single statement whose data-modifying CTE inserts the row and the event,
//!   run as its own (implicit) transaction: the answer to it arrives after the
//!   commit, so the invariant holds without `BEGIN`/`COMMIT` (see [`create`] for why a retry
//!   on a dead connection stays safe without the `BEGIN` probe);
//! - update / delete: four — `BEGIN`, the `SELECT … FOR UPDATE` whose row the new version is
//!   computed from (in Rust: the merge, "nothing changed", `If-Match`), one statement writing
//!   the row and the event, `COMMIT`.

use postgres::types::{ToSql, Type};
use postgres::Transaction;
use shared::db::{classify, Conn, DbErrorKind, Pool};
use shared::event::EventType;
use shared::http::ApiError;
use shared::model::{now_micros, Category, Location, Report, Status, Tombstone};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::validate::{CreateReport, UpdateReport};

/// The channel the relay LISTENs on and the notifier (`wake.rs`) NOTIFYs.
pub const NOTIFY_CHANNEL: &str = "report_events";

/// What can go wrong in the store; [`StoreError::into_api`] is the one mapping to HTTP.
#[derive(Debug)]
pub enum StoreError {
    /// 404: no such report, or it was deleted.
    NotFound(Uuid),
    /// 409: `If-Match` named another version.
    Conflict { id: Uuid, current: i64 },
    /// 503: the database is unreachable, too slow, or the pool is exhausted.
    Unavailable(String),
    /// 500: anything else (a bug, a schema problem).
    Internal(String),
}

impl StoreError {
    pub fn into_api(self) -> ApiError {
        match self {
            StoreError::NotFound(id) => ApiError::NotFound(format!("report {id} not found")),
            StoreError::Conflict { current, .. } => ApiError::Conflict { current },
            StoreError::Unavailable(why) => {
                ApiError::Unavailable(format!("command database unavailable: {why}"))
            }
            StoreError::Internal(why) => ApiError::Internal(why),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match classify(&e) {
            DbErrorKind::Unavailable | DbErrorKind::Timeout => StoreError::Unavailable(short(&e)),
            _ => StoreError::Internal(format!("{e:?}")),
        }
    }
}

fn short(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

fn checkout(pool: &Pool) -> Result<Conn, StoreError> {
    pool.get()
        .map_err(|e| StoreError::Unavailable(format!("no connection: {e}")))
}

/// How many connections one request tries before it answers 503: every connection the pool
/// can hold may have died with the server process of a restarted database, plus a fresh one.
fn connection_attempts(pool: &Pool) -> u32 {
    pool.max_size() + 1
}

/// A connection the pool handed out died before anything ran on it: the database restarted
/// (or dropped it) since it was last used. The pool cannot know until the connection is used;
/// the failed use marks it closed, so dropping it removes it from the pool.
fn dead_connection(e: &postgres::Error) -> bool {
    classify(e) == DbErrorKind::Unavailable
}

/// Runs `work` in one transaction and commits it.
///
/// **Invariant:** a statement is retried on another connection only when `BEGIN` itself
/// failed on a dead connection: nothing of this write has reached the server then. Once
/// `BEGIN` succeeded nothing is retried: a failure later (even at `COMMIT`) may follow a
/// commit the server made, and a retry could write twice.
fn in_transaction<T>(
    pool: &Pool,
    work: impl FnOnce(&mut Transaction<'_>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut attempts = connection_attempts(pool);
    let mut slot: Option<Conn> = None;
    let mut tx = loop {
        attempts -= 1;
        // The dead connection goes back (and out of the pool) before the next checkout, so a
        // pool of one connection can still hand out a fresh one.
        drop(slot.take());
        let conn = slot.insert(checkout(pool)?);
        match conn.transaction() {
            Ok(tx) => break tx,
            Err(e) if attempts > 0 && dead_connection(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let value = work(&mut tx)?;
    tx.commit()?;
    Ok(value)
}

/// The whole create in one statement (see [`create`]). `ON CONFLICT DO NOTHING` and the
/// event insert reading the report CTE make a repeat of the statement with the same id a
/// no-op that returns no row.
pub const CREATE_SQL: &str = "WITH r AS (INSERT INTO reports (id, title, description, category, \
     status, version, created_at, updated_at, lat, lng, address, media_url) \
     VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING \
     RETURNING id), \
     e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
     SELECT $11, $12, id, 1, $13, $6 FROM r RETURNING position) \
     SELECT position FROM e";

/// Creates a report at version 1, in one round trip.
///
/// **Invariant:** one statement outside `BEGIN` is its own transaction, and its answer (read
/// up to `ReadyForQuery`) comes after that transaction committed — or carries the error of
/// the commit. A failure on a dead connection may follow a commit the server made, so the
/// statement is retried on another connection only as an idempotent repeat: the report id is
/// chosen once, before the first try; the repeat inserts nothing when the first try committed
/// (the id is a fresh v4 UUID, so an existing row with it can only be that first try's, event
/// and all), and inserts both rows when it did not. Either way exactly one row and one event
/// exist when the 2xx goes out.
pub fn create(pool: &Pool, cmd: CreateReport) -> Result<Report, StoreError> {
    let now = now_micros();
    let report = Report {
        id: Uuid::new_v4(),
        title: cmd.title,
        description: cmd.description,
        category: cmd.category,
        status: Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: cmd.location,
        address: cmd.address,
        media_url: cmd.media_url,
    };
    let payload = json(&report)?;
    let event_id = Uuid::new_v4();
    let (lat, lng) = coordinates(report.location);
    let params: [(&(dyn ToSql + Sync), Type); 13] = [
        (&report.id, Type::UUID),
        (&report.title, Type::TEXT),
        (&report.description, Type::TEXT),
        (&report.category.as_str(), Type::TEXT),
        (&report.status.as_str(), Type::TEXT),
        (&now, Type::TIMESTAMPTZ),
        (&lat, Type::FLOAT8),
        (&lng, Type::FLOAT8),
        (&report.address, Type::TEXT),
        (&report.media_url, Type::TEXT),
        (&event_id, Type::UUID),
        (&EventType::ReportCreated.as_str(), Type::TEXT),
        (&payload, Type::TEXT),
    ];
    let mut attempts = connection_attempts(pool);
    let mut repeat = false;
    loop {
        attempts -= 1;
        let mut conn = checkout(pool)?;
        match conn.query_typed(CREATE_SQL, &params) {
            Ok(rows) if rows.len() == 1 => return Ok(report),
            // Nothing inserted: the row exists, and on a repeat it is the earlier try's commit.
            Ok(rows) if rows.is_empty() && repeat => return Ok(report),
            Ok(rows) => {
                return Err(StoreError::Internal(format!(
                    "create {}: {} event rows written",
                    report.id,
                    rows.len()
                )))
            }
            // `conn` is dropped (and, marked closed, leaves the pool) before the next checkout.
            Err(e) if attempts > 0 && dead_connection(&e) => repeat = true,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Applies a partial update. A change that alters nothing creates no new version.
pub fn update(
    pool: &Pool,
    id: Uuid,
    cmd: UpdateReport,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
    in_transaction(pool, |tx| change(tx, id, cmd, if_match))
}

fn change(
    tx: &mut Transaction<'_>,
    id: Uuid,
    cmd: UpdateReport,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
    let current = lock_live(tx, id, if_match)?;
    let mut next = current.clone();
    if let Some(t) = cmd.title {
        next.title = t;
    }
    if let Some(d) = cmd.description {
        next.description = d;
    }
    if let Some(c) = cmd.category {
        next.category = c;
    }
    if let Some(s) = cmd.status {
        next.status = s;
    }
    if let Some(l) = cmd.location {
        next.location = l;
    }
    if let Some(a) = cmd.address {
        next.address = a;
    }
    if next == current {
        return Ok(current);
    }
    let now = now_micros();
    next.version = current.version + 1;
    next.updated_at = now;
    let (lat, lng) = coordinates(next.location);
    let payload = json(&next)?;
    let event_id = Uuid::new_v4();
    let rows = tx.query_typed(
        "WITH u AS (UPDATE reports SET title = $2, description = $3, category = $4, status = $5, \
         version = $6, updated_at = $7, lat = $8, lng = $9, address = $10 WHERE id = $1 \
         RETURNING id), \
         e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
         SELECT $11, $12, id, $6, $13, $7 FROM u RETURNING position) \
         SELECT position FROM e",
        &[
            (&id, Type::UUID),
            (&next.title, Type::TEXT),
            (&next.description, Type::TEXT),
            (&next.category.as_str(), Type::TEXT),
            (&next.status.as_str(), Type::TEXT),
            (&next.version, Type::INT8),
            (&now, Type::TIMESTAMPTZ),
            (&lat, Type::FLOAT8),
            (&lng, Type::FLOAT8),
            (&next.address, Type::TEXT),
            (&event_id, Type::UUID),
            (&EventType::ReportUpdated.as_str(), Type::TEXT),
            (&payload, Type::TEXT),
        ],
    )?;
    one_event(id, rows.len())?;
    Ok(next)
}

/// Deletes a report: the row stays as a tombstone at a new version, so the deletion is ordered
/// after every earlier change and the id can never come back.
pub fn delete(pool: &Pool, id: Uuid, if_match: Option<i64>) -> Result<Tombstone, StoreError> {
    in_transaction(pool, |tx| tombstone(tx, id, if_match))
}

fn tombstone(
    tx: &mut Transaction<'_>,
    id: Uuid,
    if_match: Option<i64>,
) -> Result<Tombstone, StoreError> {
    let current = lock_live(tx, id, if_match)?;
    let now = now_micros();
    let tomb = Tombstone {
        id,
        version: current.version + 1,
        deleted_at: now,
    };
    let payload = json(&tomb)?;
    let event_id = Uuid::new_v4();
    let rows = tx.query_typed(
        "WITH u AS (UPDATE reports SET version = $2, updated_at = $3, deleted_at = $3 \
         WHERE id = $1 RETURNING id), \
         e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
         SELECT $4, $5, id, $2, $6, $3 FROM u RETURNING position) \
         SELECT position FROM e",
        &[
            (&id, Type::UUID),
            (&tomb.version, Type::INT8),
            (&now, Type::TIMESTAMPTZ),
            (&event_id, Type::UUID),
            (&EventType::ReportDeleted.as_str(), Type::TEXT),
            (&payload, Type::TEXT),
        ],
    )?;
    one_event(id, rows.len())?;
    Ok(tomb)
}

/// Locks the live row and checks `If-Match` under the lock, so two instances racing on one
/// report are serialised and the loser sees the winner's version.
fn lock_live(
    tx: &mut Transaction<'_>,
    id: Uuid,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
    let rows = tx.query_typed(
        "SELECT title, description, category, status, version, created_at, updated_at, deleted_at, \
         lat, lng, address, media_url FROM reports WHERE id = $1 FOR UPDATE",
        &[(&id, Type::UUID)],
    )?;
    let Some(row) = rows.first() else {
        return Err(StoreError::NotFound(id));
    };
    let deleted_at: Option<OffsetDateTime> = row.try_get(7)?;
    if deleted_at.is_some() {
        return Err(StoreError::NotFound(id));
    }
    let version: i64 = row.try_get(4)?;
    if let Some(expected) = if_match {
        if expected != version {
            return Err(StoreError::Conflict {
                id,
                current: version,
            });
        }
    }
    let category: &str = row.try_get(2)?;
    let status: &str = row.try_get(3)?;
    Ok(Report {
        id,
        title: row.try_get(0)?,
        description: row.try_get(1)?,
        category: category
            .parse::<Category>()
            .map_err(|e| StoreError::Internal(format!("report {id}: {e}")))?,
        status: status
            .parse::<Status>()
            .map_err(|e| StoreError::Internal(format!("report {id}: {e}")))?,
        version,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        location: match (row.try_get(8)?, row.try_get(9)?) {
            (Some(lat), Some(lng)) => Some(Location { lat, lng }),
            _ => None,
        },
        address: row.try_get(10)?,
        media_url: row.try_get(11)?,
    })
}

/// The `lat`, `lng` columns of a location (both NULL without one).
fn coordinates(location: Option<Location>) -> (Option<f64>, Option<f64>) {
    (location.map(|l| l.lat), location.map(|l| l.lng))
}

/// The write statements of update and delete change the row locked by `lock_live` and append
/// its event: anything but one event row is a bug (the transaction is rolled back).
fn one_event(id: Uuid, events: usize) -> Result<(), StoreError> {
    if events == 1 {
        Ok(())
    } else {
        Err(StoreError::Internal(format!(
            "report {id}: {events} event rows written"
        )))
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(format!("serialize payload: {e}")))
}

/// Readiness: can we run a trivial query right now? A dead pooled connection is not an
/// answer about the database: like a write, the probe moves on to another connection.
pub fn ping(pool: &Pool) -> Result<(), StoreError> {
    let mut attempts = connection_attempts(pool);
    loop {
        attempts -= 1;
        let mut conn = checkout(pool)?;
        match conn.query_typed("SELECT 1", &[]) {
            Ok(_) => return Ok(()),
            Err(e) if attempts > 0 && dead_connection(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

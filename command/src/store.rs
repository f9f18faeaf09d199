//! The command database: every write is ONE transaction holding both the report row and its
//! event-log row (the outbox), plus a `NOTIFY` that wakes the relay at commit.
//!
//! **Invariant:** a 2xx is only answered after `COMMIT` returned; a change is in the report
//! table exactly when its event is in the event log. Writes to one report serialise on its row
//! lock, so its versions — and its event-log positions — strictly increase.

use postgres::types::Type;
use postgres::Transaction;
use shared::db::{classify, Conn, DbErrorKind, Pool};
use shared::event::EventType;
use shared::http::ApiError;
use shared::model::{now_micros, Category, Location, Report, Status, Tombstone};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::validate::{CreateReport, UpdateReport};

/// The channel the relay LISTENs on.
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

/// Creates a report at version 1.
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
    in_transaction(pool, |tx| insert(tx, report, now))
}

fn insert(
    tx: &mut Transaction<'_>,
    report: Report,
    now: OffsetDateTime,
) -> Result<Report, StoreError> {
    let (lat, lng) = coordinates(report.location);
    tx.query_typed(
        "INSERT INTO reports (id, title, description, category, status, version, created_at, updated_at, \
         lat, lng, address, media_url) VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10)",
        &[
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
        ],
    )?;
    append_event(
        tx,
        EventType::ReportCreated,
        report.id,
        1,
        &json(&report)?,
        now,
    )?;
    Ok(report)
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
    tx.query_typed(
        "UPDATE reports SET title = $2, description = $3, category = $4, status = $5, \
         version = $6, updated_at = $7, lat = $8, lng = $9, address = $10 WHERE id = $1",
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
        ],
    )?;
    append_event(
        tx,
        EventType::ReportUpdated,
        id,
        next.version,
        &json(&next)?,
        now,
    )?;
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
    tx.query_typed(
        "UPDATE reports SET version = $2, updated_at = $3, deleted_at = $3 WHERE id = $1",
        &[
            (&id, Type::UUID),
            (&tomb.version, Type::INT8),
            (&now, Type::TIMESTAMPTZ),
        ],
    )?;
    append_event(
        tx,
        EventType::ReportDeleted,
        id,
        tomb.version,
        &json(&tomb)?,
        now,
    )?;
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

fn append_event(
    tx: &mut Transaction<'_>,
    kind: EventType,
    report_id: Uuid,
    version: i64,
    payload: &str,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let event_id = Uuid::new_v4();
    // pg_notify inside the transaction is delivered at COMMIT, never for a rolled-back write.
    tx.query_typed(
        "WITH e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING position) \
         SELECT position, pg_notify('report_events', '')::text FROM e",
        &[
            (&event_id, Type::UUID),
            (&kind.as_str(), Type::TEXT),
            (&report_id, Type::UUID),
            (&version, Type::INT8),
            (&payload, Type::TEXT),
            (&at, Type::TIMESTAMPTZ),
        ],
    )?;
    Ok(())
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

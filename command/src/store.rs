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
//! - update / delete: two — read the live row, compute the new version in Rust (the merge,
//!   "nothing changed", `If-Match`), one statement writing row + event only if the row is still
//!   at the version read (see [`update`]). Not one: the event's payload is the whole new
//!   snapshot serialised by `shared::model`, which needs the current row first. A write that
//!   keeps losing races falls back to the four of the locking transaction (`BEGIN`,
//!   `SELECT … FOR UPDATE`, the write, `COMMIT`).

use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Transaction};
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

/// How many times an update or delete writes optimistically (read, then a write conditional on
/// the version read) before it queues on the row lock instead. Losing means another write to
/// the same report committed between our read and our write; each loss is someone else's
/// progress, but a hot report could starve one request forever, so after this many it takes
/// the locking transaction, which waits its turn and cannot lose.
const OPTIMISTIC_TRIES: u32 = 3;

/// The live row an update or delete starts from, read without a lock (the write checks that
/// it is still the version read).
const SELECT_REPORT: &str = "SELECT title, description, category, status, version, created_at, \
     updated_at, deleted_at, lat, lng, address, media_url FROM reports WHERE id = $1";

/// The same row, locked until the transaction ends (the locking path).
const SELECT_REPORT_FOR_UPDATE: &str = "SELECT title, description, category, status, version, \
     created_at, updated_at, deleted_at, lat, lng, address, media_url FROM reports WHERE id = $1 \
     FOR UPDATE";

/// Writes the new version and its event, only if the row is still live at the version the
/// change was computed from (`$14`): no row returned = another write got there first, and
/// nothing was written. The `UPDATE` takes the row lock before the event's position is drawn,
/// so one report's positions increase with its versions.
const UPDATE_SQL: &str = "WITH u AS (UPDATE reports SET title = $2, description = $3, \
     category = $4, status = $5, version = $6, updated_at = $7, lat = $8, lng = $9, \
     address = $10 WHERE id = $1 AND version = $14 AND deleted_at IS NULL RETURNING id), \
     e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
     SELECT $11, $12, id, $6, $13, $7 FROM u RETURNING position) \
     SELECT position FROM e";

/// The tombstone and its event, under the same condition as [`UPDATE_SQL`] (`$7`: the version
/// the tombstone was computed from).
const DELETE_SQL: &str = "WITH u AS (UPDATE reports SET version = $2, updated_at = $3, \
     deleted_at = $3 WHERE id = $1 AND version = $7 AND deleted_at IS NULL RETURNING id), \
     e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
     SELECT $4, $5, id, $2, $6, $3 FROM u RETURNING position) \
     SELECT position FROM e";

/// Applies a partial update. A change that alters nothing creates no new version.
///
/// Two round trips, no `BEGIN`/`COMMIT`: read the live row, compute the new version in Rust
/// (the merge, "nothing changed", `If-Match`), then one statement writing row + event only if
/// the row is still at the version read — each its own transaction, so the write's answer
/// comes after its commit. **Same guarantees as under a lock:** a write lands only on the
/// version it was computed from, so no update is lost and versions (and their event-log
/// positions) strictly increase; `If-Match` is judged against the version the write replaces.
/// A lost race starts over from a fresh read (and then answers 409 if `If-Match` named the
/// version that is gone); see [`OPTIMISTIC_TRIES`] for the fallback. The write statement is
/// never repeated after it was sent: its failure may follow a commit (503, as before).
pub fn update(
    pool: &Pool,
    id: Uuid,
    cmd: UpdateReport,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
    for _ in 0..OPTIMISTIC_TRIES {
        let (mut conn, current) = read_live(pool, id, if_match)?;
        let Some(next) = merged(&current, &cmd) else {
            return Ok(current);
        };
        if write_update(&mut *conn, &current, &next)? == 1 {
            return Ok(next);
        }
    }
    in_transaction(pool, |tx| {
        let current = live_report(tx, SELECT_REPORT_FOR_UPDATE, id, if_match)?;
        let Some(next) = merged(&current, &cmd) else {
            return Ok(current);
        };
        one_event(id, write_update(tx, &current, &next)?)?;
        Ok(next)
    })
}

/// `current` with `cmd` applied at the next version, or `None` when nothing would change.
fn merged(current: &Report, cmd: &UpdateReport) -> Option<Report> {
    let mut next = current.clone();
    if let Some(t) = &cmd.title {
        next.title.clone_from(t);
    }
    if let Some(d) = &cmd.description {
        next.description.clone_from(d);
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
    if let Some(a) = &cmd.address {
        next.address.clone_from(a);
    }
    if next == *current {
        return None;
    }
    next.version = current.version + 1;
    next.updated_at = now_micros();
    Some(next)
}

/// Runs [`UPDATE_SQL`] for `next`, computed from `current`; returns the event rows written
/// (0: `current` was no longer the live version).
fn write_update(
    client: &mut impl GenericClient,
    current: &Report,
    next: &Report,
) -> Result<usize, StoreError> {
    let (event_id, payload) = (Uuid::new_v4(), json(next)?);
    let (lat, lng) = coordinates(next.location);
    let rows = client.query_typed(
        UPDATE_SQL,
        &[
            (&next.id, Type::UUID),
            (&next.title, Type::TEXT),
            (&next.description, Type::TEXT),
            (&next.category.as_str(), Type::TEXT),
            (&next.status.as_str(), Type::TEXT),
            (&next.version, Type::INT8),
            (&next.updated_at, Type::TIMESTAMPTZ),
            (&lat, Type::FLOAT8),
            (&lng, Type::FLOAT8),
            (&next.address, Type::TEXT),
            (&event_id, Type::UUID),
            (&EventType::ReportUpdated.as_str(), Type::TEXT),
            (&payload, Type::TEXT),
            (&current.version, Type::INT8),
        ],
    )?;
    Ok(rows.len())
}

/// Deletes a report: the row stays as a tombstone at a new version, so the deletion is ordered
/// after every earlier change and the id can never come back. Two round trips like
/// [`update`], with the same guarantees and the same fallback.
pub fn delete(pool: &Pool, id: Uuid, if_match: Option<i64>) -> Result<Tombstone, StoreError> {
    for _ in 0..OPTIMISTIC_TRIES {
        let (mut conn, current) = read_live(pool, id, if_match)?;
        let tomb = tombstone_of(&current);
        if write_tombstone(&mut *conn, &current, &tomb)? == 1 {
            return Ok(tomb);
        }
    }
    in_transaction(pool, |tx| {
        let current = live_report(tx, SELECT_REPORT_FOR_UPDATE, id, if_match)?;
        let tomb = tombstone_of(&current);
        one_event(id, write_tombstone(tx, &current, &tomb)?)?;
        Ok(tomb)
    })
}

fn tombstone_of(current: &Report) -> Tombstone {
    Tombstone {
        id: current.id,
        version: current.version + 1,
        deleted_at: now_micros(),
    }
}

/// Runs [`DELETE_SQL`]; returns the event rows written (0: `current` was no longer live).
fn write_tombstone(
    client: &mut impl GenericClient,
    current: &Report,
    tomb: &Tombstone,
) -> Result<usize, StoreError> {
    let (event_id, payload) = (Uuid::new_v4(), json(tomb)?);
    let rows = client.query_typed(
        DELETE_SQL,
        &[
            (&tomb.id, Type::UUID),
            (&tomb.version, Type::INT8),
            (&tomb.deleted_at, Type::TIMESTAMPTZ),
            (&event_id, Type::UUID),
            (&EventType::ReportDeleted.as_str(), Type::TEXT),
            (&payload, Type::TEXT),
            (&current.version, Type::INT8),
        ],
    )?;
    Ok(rows.len())
}

/// Reads the live row on a pooled connection and checks `If-Match` against it; returns the
/// connection for the write. A read changes nothing, so one that fails on a dead connection
/// simply moves on to another (like [`ping`]).
fn read_live(pool: &Pool, id: Uuid, if_match: Option<i64>) -> Result<(Conn, Report), StoreError> {
    let mut attempts = connection_attempts(pool);
    loop {
        attempts -= 1;
        let mut conn = checkout(pool)?;
        match conn.query_typed(SELECT_REPORT, &[(&id, Type::UUID)]) {
            Ok(rows) => {
                let current = decode_live(&rows, id, if_match)?;
                return Ok((conn, current));
            }
            Err(e) if attempts > 0 && dead_connection(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs `sql` (one of the `SELECT_REPORT*`) and decodes the live row, checking `If-Match`.
/// Under `FOR UPDATE`, two instances racing on one report are serialised and the loser sees
/// the winner's version.
fn live_report(
    tx: &mut Transaction<'_>,
    sql: &str,
    id: Uuid,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
    let rows = tx.query_typed(sql, &[(&id, Type::UUID)])?;
    decode_live(&rows, id, if_match)
}

/// The report of a `SELECT_REPORT*` answer: 404 for no row or a tombstone, 409 when `If-Match`
/// names another version.
fn decode_live(
    rows: &[postgres::Row],
    id: Uuid,
    if_match: Option<i64>,
) -> Result<Report, StoreError> {
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

/// Under the row lock, the write statements of update and delete change the locked row and
/// append its event: anything but one event row is a bug (the transaction is rolled back).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let t = OffsetDateTime::from_unix_timestamp(1_764_000_000).expect("a valid time");
        Report {
            id: Uuid::nil(),
            title: "Jalan berlubang".into(),
            description: "Di depan sekolah".into(),
            category: Category::Infrastruktur,
            status: Status::Pending,
            version: 4,
            created_at: t,
            updated_at: t,
            location: Some(Location {
                lat: -6.2,
                lng: 106.8,
            }),
            address: Some("Jl. Merdeka 1".into()),
            media_url: None,
        }
    }

    /// `expect`: `None` = no new version; otherwise the report the update must produce
    /// (its `updated_at` is the clock's, so it is not compared).
    fn check(cmd: UpdateReport, expect: Option<Report>) {
        let current = report();
        let got = merged(&current, &cmd);
        match (got, expect) {
            (None, None) => {}
            (Some(mut got), Some(want)) => {
                assert!(got.updated_at >= current.updated_at, "{cmd:?}");
                got.updated_at = want.updated_at;
                assert_eq!(got, want, "{cmd:?}");
            }
            (got, want) => panic!("{cmd:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn merge_makes_the_next_version_or_nothing() {
        check(UpdateReport::default(), None);
        check(
            UpdateReport {
                title: Some("Jalan berlubang".into()),
                status: Some(Status::Pending),
                ..UpdateReport::default()
            },
            None,
        );
        check(
            UpdateReport {
                status: Some(Status::InProgress),
                ..UpdateReport::default()
            },
            Some(Report {
                status: Status::InProgress,
                version: 5,
                ..report()
            }),
        );
        check(
            UpdateReport {
                location: Some(None),
                address: Some(None),
                ..UpdateReport::default()
            },
            Some(Report {
                location: None,
                address: None,
                version: 5,
                ..report()
            }),
        );
    }
}

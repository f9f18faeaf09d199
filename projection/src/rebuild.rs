//! Rebuilds one query DB's read model (`read_reports`, `statistics`) from the command DB while
//! the rest of the system keeps serving (SPEC §4.6). A library function of the projection, so
//! the `projection rebuild --db NAME` subcommand, `cargo xtask rebuild` (which runs that
//! subcommand) and the projection process itself all rebuild the same way; it takes plain URLs
//! and names, never a deployment's state file.
//!
//! How, in ONE transaction on the target DB:
//! 1. take the writers' lock `pg_advisory_xact_lock(writer::WRITE_LOCK)`: the projection's
//!    writer for this DB waits (the writers of the other DBs carry on);
//! 2. open a `REPEATABLE READ READ ONLY` snapshot of the command DB — after the lock is held;
//! 3. `DELETE` every row of `read_reports` and `statistics` and copy every report of the
//!    snapshot's `reports` table, the latest state per report, through the same rules the
//!    writer applies (`apply.rs`): a live report with `doc` = the `shared::model::Report` JSON
//!    (exactly what the projection stores), a deleted one as a tombstone (`deleted_at` set, its
//!    last live fields and last live snapshot kept, as the projection keeps them);
//! 4. write `statistics` as the sum of the deltas `apply::apply` gives each row — the writer's
//!    own counting rule, so the result equals `GROUP BY category, status` over the live rows;
//! 5. re-derive `list_counts` (the bucket counts of deep pages) from the new rows;
//! 6. leave the `checkpoint` row as it is, and commit.
//!
//! Why the `reports` table and not a replay of `event_log`: each `reports` row is written in
//! the same transaction as its event, so it IS the fold of the log up to the snapshot (newest
//! version wins, a delete leaves a tombstone) — copying it gives the state a replay would,
//! without applying every event of a long history. The log still supplies a tombstone's last
//! live snapshot. The result matches what `check-sync` compares (ids, versions, deletions,
//! category and status, statistics) and, for live reports, `doc` byte for byte; a tombstone's
//! never-served fields can differ from a DB where the projection saw a create and its delete
//! in one batch (it then writes empty fields).
//!
//! Why keeping the checkpoint is correct (no lost event, no regression):
//! - every event this DB applied up to its checkpoint committed in the command DB before the
//!   projection applied it, and that was before step 1 granted the lock; the snapshot of step 2
//!   is newer, so it contains all of them;
//! - so an event missing from the snapshot was never applied here: it lies after the
//!   checkpoint in the stream (or is not published yet), and the projection delivers it to
//!   this DB later. Versions of one report increase in commit order (the command service locks
//!   the row), so it is newer than the rebuilt row and applies;
//! - an event after the checkpoint that IS in the snapshot carries a version no newer than the
//!   rebuilt row, so the projection's upsert-if-newer skips it; tombstones stay final;
//! - statistics stay exact: the projection moves counters by old row → new row as it reads
//!   them under the same lock, and a skipped event moves nothing;
//! - the stream is trimmed only below the lowest checkpoint, which the rebuild never moves.
//!
//! Why `DELETE` and not `TRUNCATE`: `TRUNCATE` takes an ACCESS EXCLUSIVE lock that would block
//! every query instance reading this DB until the rebuild commits. With `DELETE` readers keep
//! their MVCC snapshot of the old read model and see the new one at once when it commits; the
//! dead rows are vacuumed right after. A rebuild longer than the projection's statement
//! timeout makes its writer for this DB give up waiting; it detaches, retries with backoff and
//! catches up from its checkpoint, as after a DB outage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres::{Client, IsolationLevel, NoTls};
use shared::config::NamedDb;
use shared::event::Payload;
use shared::model::{Location, Report, Tombstone};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apply::{self, Change, Outcome, RowState};
use crate::checkpoint::{self, Checkpoint};
use crate::config::CONNECT_TIMEOUT;
use crate::stream::EntryId;
use crate::writer::WRITE_LOCK;
use crate::Error;

/// Reports copied per round trip: large enough that a million reports take ~1000 statements,
/// small enough that a batch of 10 KB descriptions stays a few MB in memory.
const BATCH: i32 = 1000;

/// Every report of the command DB with what its read-model row needs. For a tombstone, the
/// payload of the event before the delete (its last live snapshot); the `(report_id, version)`
/// index makes that a point lookup.
/// Every event of a known type, for the history read model (the same filter the projection
/// applies: an unknown type goes to the dead-letter stream, not into history).
const SELECT_HISTORY: &str = "\
    SELECT report_id, version, event_type, created_at, payload FROM event_log \
    WHERE event_type IN ('ReportCreated', 'ReportUpdated', 'ReportDeleted') \
    ORDER BY position";

const INSERT_HISTORY: &str = "\
    INSERT INTO report_history (report_id, version, event_type, at, payload) \
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::timestamptz[], $5::text[]) \
    ON CONFLICT (report_id, version) DO NOTHING";

const SELECT_REPORTS: &str = "\
    SELECT r.id, r.title, r.description, r.category, r.status, r.version, r.created_at, \
           r.updated_at, r.deleted_at, e.payload, r.lat, r.lng, r.address, \
           r.media_url \
    FROM reports r \
    LEFT JOIN event_log e ON r.deleted_at IS NOT NULL AND e.report_id = r.id \
         AND e.version = r.version - 1 AND e.event_type <> 'ReportDeleted' \
    ORDER BY r.id";

// `search` is computed as the writer computes it (sql/query.sql, `report_search`).
const INSERT_ROWS: &str = "\
    INSERT INTO read_reports (id, title, description, category, status, version, created_at, \
                              updated_at, deleted_at, doc, lat, lng, address, search) \
    SELECT *, report_search(title, description, address) \
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                $6::int8[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], \
                $10::text[], $11::float8[], $12::float8[], $13::text[]) \
         AS b(id, title, description, category, status, version, created_at, updated_at, \
              deleted_at, doc, lat, lng, address)";

const INSERT_STATISTICS: &str = "\
    INSERT INTO statistics (category, status, count, last_updated) \
    SELECT *, now() FROM unnest($1::text[], $2::text[], $3::int8[])";

/// What to rebuild from what: plain URLs, so any deployment (and the projection itself) can
/// call it.
#[derive(Debug, Clone)]
pub struct RebuildConfig {
    /// The command DB, read in one snapshot.
    pub command_url: String,
    /// The query DB to rebuild; its name appears in every message.
    pub target: NamedDb,
}

/// What one rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub db: String,
    pub live: u64,
    pub tombstones: u64,
    /// `(category, status)` rows written to `statistics`.
    pub statistics: u64,
    /// Events copied into the history read model (`report_history`).
    pub history: u64,
    /// Rows of the old `read_reports` replaced.
    pub replaced: u64,
    /// Newest event-log position in the command DB snapshot (0: empty log).
    pub snapshot_position: i64,
    /// The checkpoint kept (zero when the DB had none yet).
    pub checkpoint: Checkpoint,
    /// How long the projection's writer held us off before we got the lock.
    pub lock_wait: Duration,
    pub elapsed: Duration,
}

impl RebuildReport {
    /// The operator's summary, two lines.
    pub fn render(&self) -> String {
        let cp = if self.checkpoint.entry_id == EntryId::ZERO {
            "no checkpoint yet (the projection replays the stream)".to_owned()
        } else {
            format!(
                "checkpoint kept at {} (position {})",
                self.checkpoint.entry_id, self.checkpoint.position
            )
        };
        format!(
            "{} rebuilt in {:.2} s ({:.2} s waiting for the projection's lock): {} live \
             reports, {} tombstones, {} statistics rows, {} history events (replaced {} rows)\n\
             command-db snapshot up to event-log position {}; {cp}: later events apply as \
             no-ops or newer versions",
            self.db,
            self.elapsed.as_secs_f64(),
            self.lock_wait.as_secs_f64(),
            self.live,
            self.tombstones,
            self.statistics,
            self.history,
            self.replaced,
            self.snapshot_position,
        )
    }
}

/// Rebuilds the read model of `config.target` from the command DB; see the module doc for why
/// this is safe while the projection runs. On error the transaction rolls back and the read
/// model is as it was.
pub fn rebuild(config: &RebuildConfig) -> Result<RebuildReport, Error> {
    let started = Instant::now();
    let db = config.target.name.as_str();
    let db_err = |source| Error::Db {
        db: db.to_owned(),
        source,
    };
    let mut target = connect(&config.target.url).map_err(db_err)?;
    // A DB recreated empty has no schema yet; the writer would create it the same way.
    shared::migrate::query_db(&mut target).map_err(db_err)?;
    let mut source = connect(&config.command_url).map_err(Error::CommandDb)?;

    let mut tx = target.transaction().map_err(db_err)?;
    let waited = Instant::now();
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .map_err(db_err)?;
    let lock_wait = waited.elapsed();
    let checkpoint = checkpoint::read(&mut tx).map_err(db_err)?;

    // The snapshot must start after the lock is held (module doc, first point).
    let mut snap = source
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(Error::CommandDb)?;
    let snapshot_position: i64 = snap
        .query_one("SELECT COALESCE(max(position), 0) FROM event_log", &[])
        .and_then(|r| r.try_get(0))
        .map_err(Error::CommandDb)?;

    let replaced = tx
        .execute("DELETE FROM read_reports", &[])
        .map_err(db_err)?;
    tx.execute("DELETE FROM statistics", &[]).map_err(db_err)?;
    tx.execute("DELETE FROM report_history", &[])
        .map_err(db_err)?;

    let insert = tx.prepare(INSERT_ROWS).map_err(db_err)?;
    let portal = snap.bind(SELECT_REPORTS, &[]).map_err(Error::CommandDb)?;
    let mut totals = Totals::default();
    loop {
        let rows = snap
            .query_portal(&portal, BATCH)
            .map_err(Error::CommandDb)?;
        if rows.is_empty() {
            break;
        }
        let mut batch = Batch::default();
        for r in &rows {
            let row = SourceRow::from_row(r).map_err(Error::CommandDb)?;
            let state = totals.add(&row.payload()?);
            batch.push(row, state)?;
        }
        tx.execute(
            &insert,
            &[
                &batch.id,
                &batch.title,
                &batch.description,
                &batch.category,
                &batch.status,
                &batch.version,
                &batch.created_at,
                &batch.updated_at,
                &batch.deleted_at,
                &batch.doc,
                &batch.lat,
                &batch.lng,
                &batch.address,
            ],
        )
        .map_err(db_err)?;
    }
    let history = copy_history(&mut snap, &mut tx).map_err(|e| match e {
        HistoryError::Source(e) => Error::CommandDb(e),
        HistoryError::Target(e) => db_err(e),
    })?;
    // The deep-page counts (sql/query.sql `list_counts`) followed every statement above
    // through their triggers; re-deriving them from the rows in one walk makes them exact
    // even if they had drifted, as the rest of the read model is.
    tx.execute("SELECT list_counts_rebucket_all()", &[])
        .map_err(db_err)?;
    let (categories, statuses, counts) = totals.statistics();
    let statistics = tx
        .execute(INSERT_STATISTICS, &[&categories, &statuses, &counts])
        .map_err(db_err)?;
    tx.commit().map_err(db_err)?;
    snap.commit().map_err(Error::CommandDb)?;

    // Best-effort: the deleted rows are dead tuples now; readers were never blocked by them.
    if let Err(e) = target.batch_execute("VACUUM (ANALYZE) read_reports, statistics, list_counts") {
        shared::warn!("VACUUM of {db} after the rebuild failed: {e}");
    }
    Ok(RebuildReport {
        db: db.to_owned(),
        live: totals.live,
        tombstones: totals.tombstones,
        statistics,
        history,
        replaced,
        snapshot_position,
        checkpoint,
        lock_wait,
        elapsed: started.elapsed(),
    })
}

/// Which side of a rebuild failed while copying the history.
enum HistoryError {
    Source(postgres::Error),
    Target(postgres::Error),
}

/// The history read model (`report_history`, see `history.rs`) is the event log itself, one
/// row per event of a known type; copied from the same snapshot as the rows, in batches.
/// Returns the number of history rows written.
fn copy_history(
    snap: &mut postgres::Transaction<'_>,
    tx: &mut postgres::Transaction<'_>,
) -> Result<u64, HistoryError> {
    let portal = snap
        .bind(SELECT_HISTORY, &[])
        .map_err(HistoryError::Source)?;
    let mut written = 0;
    loop {
        let rows = snap
            .query_portal(&portal, BATCH)
            .map_err(HistoryError::Source)?;
        if rows.is_empty() {
            return Ok(written);
        }
        let mut ids: Vec<Uuid> = Vec::with_capacity(rows.len());
        let mut versions: Vec<i64> = Vec::with_capacity(rows.len());
        let mut types: Vec<String> = Vec::with_capacity(rows.len());
        let mut ats: Vec<OffsetDateTime> = Vec::with_capacity(rows.len());
        let mut payloads: Vec<String> = Vec::with_capacity(rows.len());
        for r in &rows {
            ids.push(r.try_get(0).map_err(HistoryError::Source)?);
            versions.push(r.try_get(1).map_err(HistoryError::Source)?);
            types.push(r.try_get(2).map_err(HistoryError::Source)?);
            ats.push(r.try_get(3).map_err(HistoryError::Source)?);
            payloads.push(r.try_get(4).map_err(HistoryError::Source)?);
        }
        written += tx
            .execute(INSERT_HISTORY, &[&ids, &versions, &types, &ats, &payloads])
            .map_err(HistoryError::Target)?;
    }
}

/// A connection that gives up on an unreachable DB within [`CONNECT_TIMEOUT`], as the
/// writer's does.
fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(NoTls)
}

/// Counts and statistics of the rows written so far, moved by the writer's own rules.
#[derive(Default)]
struct Totals {
    live: u64,
    tombstones: u64,
    stats: BTreeMap<(String, String), i64>,
}

impl Totals {
    /// Applies one report's latest state to an empty row, as the writer would on first
    /// sight, and returns what the row becomes.
    fn add(&mut self, payload: &Payload) -> RowState {
        let Outcome::Write { row, stats } = apply::apply(None, &Change::from_payload(payload))
        else {
            // `apply` writes every event onto an absent row; nothing to count otherwise.
            return RowState::Tombstone;
        };
        match row.state {
            RowState::Live { .. } => self.live += 1,
            RowState::Tombstone => self.tombstones += 1,
        }
        for (key, delta) in stats {
            *self.stats.entry(key).or_default() += delta;
        }
        row.state
    }

    /// The non-zero counters as columns for `unnest`.
    fn statistics(&self) -> (Vec<&str>, Vec<&str>, Vec<i64>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        for ((category, status), count) in self.stats.iter().filter(|(_, c)| **c != 0) {
            out.0.push(category.as_str());
            out.1.push(status.as_str());
            out.2.push(*count);
        }
        out
    }
}

/// One `reports` row of the command DB.
struct SourceRow {
    id: Uuid,
    title: String,
    description: String,
    category: String,
    status: String,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    deleted_at: Option<OffsetDateTime>,
    /// For a tombstone: the payload of its last live version, if the log still has it.
    last_live: Option<String>,
    location: Option<Location>,
    address: Option<String>,
    media_url: Option<String>,
}

impl SourceRow {
    fn from_row(r: &postgres::Row) -> Result<SourceRow, postgres::Error> {
        Ok(SourceRow {
            id: r.try_get(0)?,
            title: r.try_get(1)?,
            description: r.try_get(2)?,
            category: r.try_get(3)?,
            status: r.try_get(4)?,
            version: r.try_get(5)?,
            created_at: r.try_get(6)?,
            updated_at: r.try_get(7)?,
            deleted_at: r.try_get(8)?,
            last_live: r.try_get(9)?,
            location: match (r.try_get(10)?, r.try_get(11)?) {
                (Some(lat), Some(lng)) => Some(Location { lat, lng }),
                _ => None,
            },
            address: r.try_get(12)?,
            media_url: r.try_get(13)?,
        })
    }

    /// The report's latest state as the event payload that produced it.
    fn payload(&self) -> Result<Payload, Error> {
        let id = self.id;
        if let Some(deleted_at) = self.deleted_at {
            return Ok(Payload::Deleted(Tombstone {
                id,
                version: self.version,
                deleted_at,
            }));
        }
        let bad = |e: String| Error::Inconsistent(format!("command-db report {id}: {e}"));
        Ok(Payload::Snapshot(Report {
            id,
            title: self.title.clone(),
            description: self.description.clone(),
            category: self.category.parse().map_err(bad)?,
            status: self.status.parse().map_err(bad)?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            location: self.location,
            address: self.address.clone(),
            media_url: self.media_url.clone(),
        }))
    }

    /// Where the row's `doc` puts the report: the `lat`, `lng` and `address` columns say what
    /// `doc` says (sql/query.sql), and a tombstone's `doc` is its last live snapshot.
    fn place(&self) -> Result<(Option<Location>, Option<String>), Error> {
        if self.deleted_at.is_none() {
            return Ok((self.location, self.address.clone()));
        }
        let Some(payload) = &self.last_live else {
            // The doc is the tombstone itself: no place.
            return Ok((None, None));
        };
        let doc: serde_json::Value = serde_json::from_str(payload).map_err(|e| {
            Error::Inconsistent(format!("report {}: last live payload: {e}", self.id))
        })?;
        let at = |path| doc.pointer(path).and_then(serde_json::Value::as_f64);
        let location = match (at("/location/lat"), at("/location/lng")) {
            (Some(lat), Some(lng)) => Some(Location { lat, lng }),
            _ => None,
        };
        let address = doc
            .get("address")
            .and_then(|a| a.as_str())
            .map(str::to_owned);
        Ok((location, address))
    }

    /// The row's `doc`: the report JSON for a live report; for a tombstone its last live
    /// snapshot (what the projection keeps), or the tombstone itself when the log lacks it.
    fn doc(&self) -> Result<String, Error> {
        if self.deleted_at.is_some() {
            if let Some(payload) = &self.last_live {
                return Ok(payload.clone());
            }
        }
        let json = match self.payload()? {
            Payload::Snapshot(r) => serde_json::to_string(&r),
            Payload::Deleted(t) => serde_json::to_string(&t),
        };
        json.map_err(|e| Error::Inconsistent(format!("report {}: {e}", self.id)))
    }
}

/// One batch of rows, column by column, for `unnest`.
#[derive(Default)]
struct Batch {
    id: Vec<Uuid>,
    title: Vec<String>,
    description: Vec<String>,
    category: Vec<String>,
    status: Vec<String>,
    version: Vec<i64>,
    created_at: Vec<OffsetDateTime>,
    updated_at: Vec<OffsetDateTime>,
    deleted_at: Vec<Option<OffsetDateTime>>,
    doc: Vec<String>,
    lat: Vec<Option<f64>>,
    lng: Vec<Option<f64>>,
    address: Vec<Option<String>>,
}

impl Batch {
    /// Adds `row`; `state` is what `apply` made of it. A tombstone keeps its last live
    /// category and status (the writer keeps them too); they count nowhere.
    fn push(&mut self, row: SourceRow, state: RowState) -> Result<(), Error> {
        let (category, status) = match state {
            RowState::Live { category, status } => (category, status),
            RowState::Tombstone => (row.category.clone(), row.status.clone()),
        };
        self.doc.push(row.doc()?);
        let (location, address) = row.place()?;
        self.lat.push(location.map(|l| l.lat));
        self.lng.push(location.map(|l| l.lng));
        self.address.push(address);
        self.id.push(row.id);
        self.title.push(row.title);
        self.description.push(row.description);
        self.category.push(category);
        self.status.push(status);
        self.version.push(row.version);
        self.created_at.push(row.created_at);
        self.updated_at.push(row.updated_at);
        self.deleted_at.push(row.deleted_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(category: &str, status: &str) -> Payload {
        Payload::Snapshot(Report {
            id: Uuid::new_v4(),
            title: "t".into(),
            description: "d".into(),
            category: category.parse().expect("category"),
            status: status.parse().expect("status"),
            version: 2,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
            location: None,
            address: None,
            media_url: None,
        })
    }

    fn del() -> Payload {
        Payload::Deleted(Tombstone {
            id: Uuid::new_v4(),
            version: 3,
            deleted_at: OffsetDateTime::UNIX_EPOCH,
        })
    }

    /// Given the latest states of some reports, the rebuild's counts and statistics rows are
    /// `expect` (live, tombstones, `(category, status, count)` rows).
    fn check(states: &[Payload], expect: (u64, u64, &[(&str, &str, i64)])) {
        let mut t = Totals::default();
        for p in states {
            t.add(p);
        }
        let (c, s, n) = t.statistics();
        let got: Vec<(&str, &str, i64)> = (0..c.len()).map(|i| (c[i], s[i], n[i])).collect();
        assert_eq!(
            (t.live, t.tombstones, got.as_slice()),
            expect,
            "states {states:?}"
        );
    }

    /// The `list_counts` triggers (sql/query.sql) serialise writers with this very lock.
    #[test]
    fn the_schema_takes_the_writers_lock() {
        let sql = shared::migrate::QUERY_SQL;
        assert!(sql.contains(&format!("pg_advisory_xact_lock({WRITE_LOCK})")));
    }

    #[test]
    fn statistics_are_the_writers_counts() {
        check(&[], (0, 0, &[]));
        check(&[del(), del()], (0, 2, &[]));
        check(
            &[
                up("kebersihan", "pending"),
                up("kebersihan", "pending"),
                del(),
                up("keamanan", "resolved"),
            ],
            (
                3,
                1,
                &[("keamanan", "resolved", 1), ("kebersihan", "pending", 2)],
            ),
        );
    }
}

//! `cargo xtask rebuild --db NAME`: rebuilds one query DB's read model (`read_reports`,
//! `statistics`) from the command DB while the rest of the system keeps serving (SPEC §4.6).
//!
//! How, in ONE transaction on the target DB:
//! 1. take the projection writers' lock `pg_advisory_xact_lock(WRITE_LOCK)`: the projection's
//!    writer for this DB waits (the writers of the other DBs carry on);
//! 2. open a `REPEATABLE READ READ ONLY` snapshot of the command DB — after the lock is held;
//! 3. `DELETE` every row of `read_reports` and `statistics` and copy every report of the
//!    snapshot's `reports` table, the latest state per report: a live report with `doc` = the
//!    `shared::model::Report` JSON (exactly what the projection stores), a deleted one as a
//!    tombstone (`deleted_at` set, its last live fields and last live snapshot kept, as the
//!    projection keeps them);
//! 4. recompute `statistics` as `GROUP BY category, status` over the live rows just written;
//! 5. leave the `checkpoint` row as it is, and commit.
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

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lexopt::prelude::*;
use postgres::{Client, IsolationLevel, NoTls};
use shared::model::{Report, Tombstone};
use time::OffsetDateTime;
use uuid::Uuid;
use xshell::Shell;

use crate::cluster::Layout;
use crate::topology::Target;

/// The projection writers' lock key (`projection::writer::WRITE_LOCK`; a test keeps the two
/// equal). Holding it is what keeps the projection from writing this DB mid-rebuild.
pub const WRITE_LOCK: i64 = 0x7072_6f6a_6563;

/// Reports copied per round trip: large enough that a million reports take ~1000 statements,
/// small enough that a batch of 10 KB descriptions stays a few MB in memory.
const BATCH: i32 = 1000;

/// Every report of the command DB with what its read-model row needs. For a tombstone, the
/// payload of the event before the delete (its last live snapshot); the `(report_id, version)`
/// index makes that a point lookup.
const SELECT_REPORTS: &str = "\
    SELECT r.id, r.title, r.description, r.category, r.status, r.version, r.created_at, \
           r.updated_at, r.deleted_at, e.payload, r.lat, r.lng, r.address \
    FROM reports r \
    LEFT JOIN event_log e ON r.deleted_at IS NOT NULL AND e.report_id = r.id \
         AND e.version = r.version - 1 AND e.event_type <> 'ReportDeleted' \
    ORDER BY r.id";

const INSERT_ROWS: &str = "\
    INSERT INTO read_reports (id, title, description, category, status, version, created_at, \
                              updated_at, deleted_at, doc) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::int8[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], \
                         $10::text[])";

const INSERT_STATISTICS: &str = "\
    INSERT INTO statistics (category, status, count, last_updated) \
    SELECT category, status, count(*), now() FROM read_reports \
    WHERE deleted_at IS NULL GROUP BY category, status";

/// `cargo xtask rebuild --db NAME` on the running local cluster.
pub struct Rebuild {
    pub db: String,
}

impl Rebuild {
    pub fn parse(p: &mut lexopt::Parser) -> Result<Rebuild> {
        let mut db = None;
        while let Some(arg) = p.next()? {
            match arg {
                Long("db") => db = Some(p.value()?.string()?),
                Value(v) if db.is_none() => db = Some(v.string()?),
                _ => bail!("{}", arg.unexpected()),
            }
        }
        let db = db.context("`rebuild` needs --db NAME (query-db-primary, query-db-replicaK)")?;
        Ok(Rebuild { db })
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        let state = Layout::new(sh).running_state()?;
        let topo = &state.topology;
        let names = topo.query_db_names();
        if !names.contains(&self.db) {
            bail!(
                "no query DB `{}`; the query DBs are: {}",
                self.db,
                names.join(" ")
            );
        }
        println!(
            "rebuilding {} from command-db (its projection writer waits meanwhile; reads go on)",
            self.db
        );
        let s = rebuild(
            &topo.command_db_url(Target::Local),
            &topo.query_db_url(&self.db, Target::Local),
            &self.db,
        )?;
        println!("{}", s.render(&self.db));
        Ok(())
    }
}

/// What one rebuild did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub live: u64,
    pub tombstones: u64,
    /// `(category, status)` rows written to `statistics`.
    pub statistics: u64,
    /// Rows of the old `read_reports` replaced.
    pub replaced: u64,
    /// Newest event-log position in the command DB snapshot (0: empty log).
    pub snapshot_position: i64,
    /// The checkpoint kept: (entry id, position), `None` when the DB had none yet.
    pub checkpoint: Option<(String, i64)>,
    /// How long the projection's writer held us off before we got the lock.
    pub lock_wait: Duration,
    pub elapsed: Duration,
}

impl Summary {
    pub fn render(&self, db: &str) -> String {
        let cp = match &self.checkpoint {
            Some((id, pos)) => format!("checkpoint kept at {id} (position {pos})"),
            None => "no checkpoint yet (the projection replays the stream)".into(),
        };
        format!(
            "{db} rebuilt in {:.2} s ({:.2} s waiting for the projection's lock): {} live \
             reports, {} tombstones, {} statistics rows (replaced {} rows)\n\
             command-db snapshot up to event-log position {}; {cp}: later events apply as \
             no-ops or newer versions",
            self.elapsed.as_secs_f64(),
            self.lock_wait.as_secs_f64(),
            self.live,
            self.tombstones,
            self.statistics,
            self.replaced,
            self.snapshot_position,
        )
    }
}

/// Rebuilds the read model at `query_url` (named `db` in messages) from the command DB at
/// `command_url`; see the module doc for why this is safe while the projection runs.
pub fn rebuild(command_url: &str, query_url: &str, db: &str) -> Result<Summary> {
    let started = Instant::now();
    let mut target =
        Client::connect(query_url, NoTls).with_context(|| format!("connect to {db}"))?;
    // A DB recreated empty has no schema yet; the projection would create it the same way.
    shared::migrate::query_db(&mut target).with_context(|| format!("schema of {db}"))?;
    let mut source = Client::connect(command_url, NoTls).context("connect to the command DB")?;

    let mut tx = target
        .transaction()
        .with_context(|| format!("begin on {db}"))?;
    let waited = Instant::now();
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .with_context(|| format!("take the projection's write lock on {db}"))?;
    let lock_wait = waited.elapsed();
    let checkpoint = tx
        .query_opt(
            "SELECT entry_id, position FROM checkpoint WHERE stream = $1",
            &[&shared::event::STREAM],
        )
        .with_context(|| format!("read the checkpoint of {db}"))?
        .map(|r| -> Result<(String, i64)> { Ok((r.try_get(0)?, r.try_get(1)?)) })
        .transpose()
        .with_context(|| format!("checkpoint row of {db}"))?;

    // The snapshot must start after the lock is held (module doc, first point).
    let mut snap = source
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .context("snapshot of the command DB")?;
    let snapshot_position: i64 = snap
        .query_one("SELECT COALESCE(max(position), 0) FROM event_log", &[])
        .and_then(|r| r.try_get(0))
        .context("newest event-log position")?;

    let replaced = tx
        .execute("DELETE FROM read_reports", &[])
        .with_context(|| format!("clear read_reports of {db}"))?;
    tx.execute("DELETE FROM statistics", &[])
        .with_context(|| format!("clear statistics of {db}"))?;

    let insert = tx.prepare(INSERT_ROWS)?;
    let portal = snap
        .bind(SELECT_REPORTS, &[])
        .context("read reports of the command DB")?;
    let (mut live, mut tombstones) = (0u64, 0u64);
    loop {
        let rows = snap
            .query_portal(&portal, BATCH)
            .context("read reports of the command DB")?;
        if rows.is_empty() {
            break;
        }
        let mut batch = Batch::default();
        for r in &rows {
            let row = SourceRow::from_row(r)?;
            if row.deleted_at.is_some() {
                tombstones += 1;
            } else {
                live += 1;
            }
            batch.push(row)?;
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
            ],
        )
        .with_context(|| format!("write reports to {db}"))?;
    }
    let statistics = tx
        .execute(INSERT_STATISTICS, &[])
        .with_context(|| format!("recompute statistics of {db}"))?;
    tx.commit()
        .with_context(|| format!("commit the rebuild of {db}"))?;
    snap.commit().context("end the command DB snapshot")?;

    // Best-effort: the deleted rows are dead tuples now; readers were never blocked by them.
    if let Err(e) = target.batch_execute("VACUUM (ANALYZE) read_reports, statistics") {
        eprintln!("note: VACUUM of {db} after the rebuild failed: {e}");
    }
    Ok(Summary {
        live,
        tombstones,
        statistics,
        replaced,
        snapshot_position,
        checkpoint,
        lock_wait,
        elapsed: started.elapsed(),
    })
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
    location: Option<shared::model::Location>,
    address: Option<String>,
}

impl SourceRow {
    fn from_row(r: &postgres::Row) -> Result<SourceRow> {
        let id: Uuid = r.try_get(0).context("reports.id")?;
        let field = |e: postgres::Error| anyhow::Error::new(e).context(format!("report {id}"));
        Ok(SourceRow {
            id,
            title: r.try_get(1).map_err(field)?,
            description: r.try_get(2).map_err(field)?,
            category: r.try_get(3).map_err(field)?,
            status: r.try_get(4).map_err(field)?,
            version: r.try_get(5).map_err(field)?,
            created_at: r.try_get(6).map_err(field)?,
            updated_at: r.try_get(7).map_err(field)?,
            deleted_at: r.try_get(8).map_err(field)?,
            last_live: r.try_get(9).map_err(field)?,
            location: match (r.try_get(10).map_err(field)?, r.try_get(11).map_err(field)?) {
                (Some(lat), Some(lng)) => Some(shared::model::Location { lat, lng }),
                _ => None,
            },
            address: r.try_get(12).map_err(field)?,
        })
    }

    /// The row's `doc`: the report JSON for a live report; for a tombstone its last live
    /// snapshot (what the projection keeps), or the tombstone itself when the log lacks it.
    fn doc(&self) -> Result<String> {
        let id = self.id;
        if let Some(deleted_at) = self.deleted_at {
            return match &self.last_live {
                Some(payload) => Ok(payload.clone()),
                None => Ok(serde_json::to_string(&Tombstone {
                    id,
                    version: self.version,
                    deleted_at,
                })?),
            };
        }
        let report = Report {
            id,
            title: self.title.clone(),
            description: self.description.clone(),
            category: self
                .category
                .parse()
                .map_err(|e: String| anyhow::anyhow!("report {id}: {e}"))?,
            status: self
                .status
                .parse()
                .map_err(|e: String| anyhow::anyhow!("report {id}: {e}"))?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            location: self.location,
            address: self.address.clone(),
        };
        Ok(serde_json::to_string(&report)?)
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
}

impl Batch {
    fn push(&mut self, row: SourceRow) -> Result<()> {
        self.doc.push(row.doc()?);
        self.id.push(row.id);
        self.title.push(row.title);
        self.description.push(row.description);
        self.category.push(row.category);
        self.status.push(row.status);
        self.version.push(row.version);
        self.created_at.push(row.created_at);
        self.updated_at.push(row.updated_at);
        self.deleted_at.push(row.deleted_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use shared::model::{now_micros, Category, Report, Status, Tombstone};
    use shared::testkit::PgCluster;

    use super::*;

    /// The command service's writes, done the same way: row and event in one transaction.
    struct CommandDb(Client);

    impl CommandDb {
        fn event(&mut self, kind: &str, id: Uuid, version: i64, payload: String) {
            self.0
                .execute(
                    "INSERT INTO event_log (event_id, event_type, report_id, version, payload, \
                     created_at) VALUES ($1, $2, $3, $4, $5, now())",
                    &[&Uuid::new_v4(), &kind, &id, &version, &payload],
                )
                .expect("insert event");
        }

        fn create(&mut self, n: usize, category: Category) -> Report {
            let now = now_micros();
            let r = Report {
                id: Uuid::new_v4(),
                title: format!("laporan {n} — jalan rusak \"besar\"\n\\ tab\t"),
                description: format!("deskripsi {n}"),
                category,
                status: Status::Pending,
                version: 1,
                created_at: now,
                updated_at: now,
                location: None,
                address: None,
            };
            self.0
                .execute(
                    "INSERT INTO reports (id, title, description, category, status, version, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 1, $6, $6)",
                    &[
                        &r.id,
                        &r.title,
                        &r.description,
                        &r.category.as_str(),
                        &r.status.as_str(),
                        &now,
                    ],
                )
                .expect("insert report");
            self.event("ReportCreated", r.id, 1, json(&r));
            r
        }

        fn update(&mut self, r: &mut Report, category: Category, status: Status) {
            r.category = category;
            r.status = status;
            r.version += 1;
            r.updated_at = now_micros();
            self.0
                .execute(
                    "UPDATE reports SET category = $2, status = $3, version = $4, \
                     updated_at = $5 WHERE id = $1",
                    &[
                        &r.id,
                        &r.category.as_str(),
                        &r.status.as_str(),
                        &r.version,
                        &r.updated_at,
                    ],
                )
                .expect("update report");
            self.event("ReportUpdated", r.id, r.version, json(&*r));
        }

        fn delete(&mut self, r: &Report) {
            let t = Tombstone {
                id: r.id,
                version: r.version + 1,
                deleted_at: now_micros(),
            };
            self.0
                .execute(
                    "UPDATE reports SET version = $2, updated_at = $3, deleted_at = $3 \
                     WHERE id = $1",
                    &[&t.id, &t.version, &t.deleted_at],
                )
                .expect("delete report");
            self.event("ReportDeleted", t.id, t.version, json(&t));
        }
    }

    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).expect("serialize")
    }

    /// (version, deleted, category, status, doc) per report of the read model.
    type ReadRows = BTreeMap<Uuid, (i64, bool, String, String, String)>;

    fn read_rows(c: &mut Client) -> ReadRows {
        c.query(
            "SELECT id, version, deleted_at IS NOT NULL, category, status, doc FROM read_reports",
            &[],
        )
        .expect("read_reports")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
        .collect()
    }

    fn statistics(c: &mut Client) -> BTreeMap<(String, String), i64> {
        c.query(
            "SELECT category, status, count FROM statistics WHERE count <> 0",
            &[],
        )
        .expect("statistics")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
    }

    #[test]
    fn lock_key_is_the_projections() {
        assert_eq!(WRITE_LOCK, projection::writer::WRITE_LOCK);
    }

    #[test]
    fn rebuild_restores_a_corrupted_read_model() {
        let pg = PgCluster::start();
        let command_url = pg.create_db("rebuild_command");
        let query_url = pg.create_db("rebuild_query");
        let mut command = CommandDb(Client::connect(&command_url, NoTls).expect("connect"));
        shared::migrate::command_db(&mut command.0).expect("migrate command");
        let mut query = Client::connect(&query_url, NoTls).expect("connect");
        shared::migrate::query_db(&mut query).expect("migrate query");

        // Given: reports created, moved between categories and statuses, some deleted, ...
        let mut reports: Vec<Report> = (0..2500)
            .map(|n| command.create(n, Category::ALL[n % Category::ALL.len()]))
            .collect();
        for (n, r) in reports.iter_mut().enumerate().filter(|(n, _)| n % 3 == 0) {
            let status = Status::ALL[n % Status::ALL.len()];
            command.update(r, Category::Infrastruktur, status);
        }
        for r in reports.iter().filter(|r| r.version == 1).step_by(7) {
            command.delete(r);
        }
        // ... a checkpoint the projection wrote, and a read model gone wrong in every way.
        query
            .batch_execute(
                "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at) \
                 VALUES ('report-events', '1700000000000-3', 4242, 99, now());
                 INSERT INTO read_reports VALUES (gen_random_uuid(), 'ghost', '', 'lainnya', \
                   'pending', 9, now(), now(), NULL, '{}');
                 INSERT INTO statistics VALUES ('lainnya', 'pending', 77, now()), \
                   ('keamanan', 'resolved', 5, now());",
            )
            .expect("corrupt");
        let live: Vec<&Report> = reports.iter().filter(|r| r.version > 1).collect();
        query
            .execute(
                "INSERT INTO read_reports VALUES ($1, 'stale', '', 'lainnya', 'pending', 1, \
                 now(), now(), now(), '{}')",
                &[&live[0].id],
            )
            .expect("corrupt");

        // When: the rebuild runs while another session holds the projection's lock a moment.
        let mut holder = Client::connect(&query_url, NoTls).expect("connect");
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let release = std::thread::spawn(move || {
            let mut held = holder.transaction().expect("begin");
            held.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .expect("lock");
            locked_tx.send(()).expect("signal");
            std::thread::sleep(Duration::from_millis(400));
            held.commit().expect("release");
        });
        locked.recv().expect("lock taken");
        let summary = rebuild(&command_url, &query_url, "rebuild_query").expect("rebuild");
        release.join().expect("holder thread");

        // Then: every report as the command DB has it, docs as the projection stores them, ...
        let mut want: ReadRows = BTreeMap::new();
        for r in command
            .0
            .query(
                "SELECT r.id, r.version, r.deleted_at IS NOT NULL, r.category, r.status, \
                   e.payload FROM reports r JOIN event_log e ON e.report_id = r.id \
                   AND e.version = CASE WHEN r.deleted_at IS NULL THEN r.version \
                                        ELSE r.version - 1 END",
                &[],
            )
            .expect("command rows")
        {
            want.insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)));
        }
        let got = read_rows(&mut query);
        assert_eq!(got.len(), want.len(), "row count");
        for (id, w) in &want {
            assert_eq!(got.get(id), Some(w), "report {id}");
        }
        // ... statistics equal GROUP BY over the command DB's live reports, ...
        let want_stats: BTreeMap<(String, String), i64> = command
            .0
            .query(
                "SELECT category, status, count(*) FROM reports WHERE deleted_at IS NULL \
                 GROUP BY 1, 2",
                &[],
            )
            .expect("group by")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
        assert_eq!(statistics(&mut query), want_stats);
        // ... the checkpoint untouched, and the summary telling the same story.
        let cp = query
            .query_one("SELECT entry_id, position, applied FROM checkpoint", &[])
            .expect("checkpoint");
        let cp: (String, i64, i64) = (cp.get(0), cp.get(1), cp.get(2));
        assert_eq!(cp, ("1700000000000-3".to_string(), 4242, 99));
        let deleted = want.values().filter(|w| w.1).count() as u64;
        assert!(deleted > 100, "the test deletes reports");
        assert_eq!(summary.tombstones, deleted);
        assert_eq!(summary.live, want.len() as u64 - deleted);
        assert_eq!(summary.statistics, want_stats.len() as u64);
        assert_eq!(summary.replaced, 2);
        assert_eq!(
            summary.checkpoint,
            Some(("1700000000000-3".to_string(), 4242))
        );
        assert!(
            summary.lock_wait >= Duration::from_millis(300),
            "the rebuild must wait for the projection's lock, waited {:?}",
            summary.lock_wait
        );

        // A second rebuild of a correct model changes nothing.
        let again = rebuild(&command_url, &query_url, "rebuild_query").expect("rebuild");
        assert_eq!(read_rows(&mut query), got);
        assert_eq!(again.replaced, want.len() as u64);
    }
}

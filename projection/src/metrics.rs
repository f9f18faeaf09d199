//! Counters and gauges the pipeline updates and `/metrics` renders in Prometheus text format
//! through the one renderer ([`shared::prometheus`]).
//!
//! Per query DB: checkpoint position, lag in entries and seconds, whether the DB is up and
//! whether its writer is attached to the live fan-out, entries applied. Global: writer batch
//! sizes and DLQ count. Per query DB and stage, the writer's wall time
//! (`projection_writer_seconds_total{db,stage}`: stream reads, decoding, each statement of a
//! batch, the commit), so where a catch-up spends its time is read off `/metrics` instead of
//! guessed. Everything is an atomic written by one thread and read by the HTTP
//! thread, so scraping never blocks the pipeline.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use shared::prometheus::{Exposition, Kind};

/// One query DB as the pipeline sees it.
#[derive(Debug)]
pub struct DbStatus {
    pub name: String,
    /// Set by the writer: its last DB operation succeeded.
    pub up: AtomicBool,
    /// The fan-out's attachment flag: true while the reader sends this writer live batches.
    /// The reader clears it (channel full) and sets it (rejoin); the writer clears it (DB error).
    pub attached: AtomicBool,
    /// True from process start until this writer is first attached or first fails: while any
    /// writer is starting, the reader holds back new reads for a short grace so that a backlog
    /// reaches every DB through the fan-out. A writer that failed is never waited for again,
    /// so a DB that goes down cannot hold up the others' reads (SPEC §4.2).
    pub starting: AtomicBool,
    /// `position` of the last entry this DB's checkpoint records.
    pub position: AtomicI64,
    /// Entries applied (no-ops included) since start.
    pub applied_total: AtomicU64,
    /// Entries this DB's writer read from the stream itself (XRANGE catch-up) instead of
    /// receiving them from the reader's fan-out.
    pub caught_up_total: AtomicU64,
    /// Entries read from the stream and not yet applied by this DB (set by the reader).
    pub lag_entries: AtomicU64,
    /// Stream time (ms) of the oldest entry this DB has not applied, counting entries still in
    /// the stream that the reader has not read; 0 when none (set by the reader every turn).
    pub oldest_unapplied_ms: AtomicU64,
    /// The read model may miss events the stream no longer holds (`retention.rs`): set by the
    /// reader (beyond the bound) or the writer (at connect), cleared by the writer once it has
    /// rebuilt the DB and caught up.
    pub stale: AtomicBool,
    /// Automatic rebuilds completed since start, and how long the last one took (ms).
    pub rebuilds_total: AtomicU64,
    pub last_rebuild_ms: AtomicU64,
    /// Writer wall time per [`Stage`], in nanoseconds.
    pub stage_ns: [AtomicU64; Stage::ALL.len()],
}

/// One step of a writer's work, timed into [`DbStatus::stage_ns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// XRANGE round trips while catching up (the reply parsed into raw entries).
    StreamRead,
    /// Entries decoded from their stream fields (catch-up; live batches come decoded).
    Decode,
    /// `BEGIN`, the write lock and the `SELECT … FOR UPDATE` of the batch's rows.
    Lock,
    /// The row upserts (live rows and tombstones).
    Rows,
    /// The statistics delta.
    Statistics,
    /// The history insert.
    History,
    /// The checkpoint write.
    Checkpoint,
    /// `COMMIT`, which waits for the WAL flush.
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::StreamRead,
        Stage::Decode,
        Stage::Lock,
        Stage::Rows,
        Stage::Statistics,
        Stage::History,
        Stage::Checkpoint,
        Stage::Commit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::StreamRead => "stream_read",
            Stage::Decode => "decode",
            Stage::Lock => "lock",
            Stage::Rows => "rows",
            Stage::Statistics => "statistics",
            Stage::History => "history",
            Stage::Checkpoint => "checkpoint",
            Stage::Commit => "commit",
        }
    }
}

impl DbStatus {
    pub fn new(name: &str) -> DbStatus {
        DbStatus {
            name: name.to_owned(),
            up: AtomicBool::new(false),
            attached: AtomicBool::new(false),
            starting: AtomicBool::new(true),
            position: AtomicI64::new(0),
            applied_total: AtomicU64::new(0),
            caught_up_total: AtomicU64::new(0),
            lag_entries: AtomicU64::new(0),
            oldest_unapplied_ms: AtomicU64::new(0),
            stale: AtomicBool::new(false),
            rebuilds_total: AtomicU64::new(0),
            last_rebuild_ms: AtomicU64::new(0),
            stage_ns: Default::default(),
        }
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_stale(&self, on: bool) {
        self.stale.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_attached(&self) -> bool {
        self.attached.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_attached(&self, on: bool) {
        self.attached.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_starting(&self) -> bool {
        self.starting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Ends the start-up phase: attached once, or failed once.
    pub fn started(&self) {
        self.starting
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Adds the time since `since` to `stage` and returns now, the start of the next stage.
    pub fn timed(&self, stage: Stage, since: std::time::Instant) -> std::time::Instant {
        let now = std::time::Instant::now();
        let ns = u64::try_from(now.duration_since(since).as_nanos()).unwrap_or(u64::MAX);
        self.stage_ns[stage as usize].fetch_add(ns, Relaxed);
        now
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub dbs: Vec<Arc<DbStatus>>,
    pub batch_size_sum: AtomicU64,
    pub batch_size_count: AtomicU64,
    pub dlq_total: AtomicU64,
}

impl Metrics {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Metrics {
        Metrics {
            dbs: names
                .into_iter()
                .map(|n| Arc::new(DbStatus::new(n)))
                .collect(),
            batch_size_sum: AtomicU64::new(0),
            batch_size_count: AtomicU64::new(0),
            dlq_total: AtomicU64::new(0),
        }
    }

    /// One committed writer transaction of `entries` entries.
    pub fn record_batch(&self, entries: usize) {
        self.batch_size_sum.fetch_add(entries as u64, Relaxed);
        self.batch_size_count.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition, lag seconds computed against `now_ms`.
    pub fn render(&self, now_ms: u64) -> String {
        let mut e = Exposition::new();
        let mut per_db = |name: &str, kind: Kind, help: &str, f: &dyn Fn(&DbStatus) -> String| {
            e.family(name, kind, help);
            for db in &self.dbs {
                e.sample(name, &[("db", &db.name)], f(db));
            }
        };
        per_db(
            "projection_checkpoint_position",
            Kind::Gauge,
            "Event-log position of the last entry in this query DB's checkpoint.",
            &|d| d.position.load(Relaxed).to_string(),
        );
        per_db(
            "projection_lag_entries",
            Kind::Gauge,
            "Stream entries read but not yet applied by this query DB.",
            &|d| d.lag_entries.load(Relaxed).to_string(),
        );
        per_db(
            "projection_lag_seconds",
            Kind::Gauge,
            "Age of the oldest stream entry this query DB has not applied.",
            &|d| {
                let oldest = d.oldest_unapplied_ms.load(Relaxed);
                let lag = if oldest == 0 {
                    0
                } else {
                    now_ms.saturating_sub(oldest)
                };
                format!("{:.3}", lag as f64 / 1000.0)
            },
        );
        per_db(
            "projection_db_up",
            Kind::Gauge,
            "1 while this query DB answers its writer.",
            &|d| u8::from(d.up.load(Relaxed)).to_string(),
        );
        per_db(
            "projection_db_attached",
            Kind::Gauge,
            "1 while this DB's writer gets live batches; 0 while it catches up from its checkpoint.",
            &|d| u8::from(d.attached.load(Relaxed)).to_string(),
        );
        per_db(
            "projection_db_stale",
            Kind::Gauge,
            "1 while this query DB is stale: beyond the retention bound or behind the trimmed stream; not served, rebuilt from the command DB.",
            &|d| u8::from(d.stale.load(Relaxed)).to_string(),
        );
        per_db(
            "projection_rebuilds_total",
            Kind::Counter,
            "Automatic rebuilds of this query DB from the command DB since start.",
            &|d| d.rebuilds_total.load(Relaxed).to_string(),
        );
        per_db(
            "projection_last_rebuild_seconds",
            Kind::Gauge,
            "Duration of the last automatic rebuild of this query DB (0: none yet).",
            &|d| format!("{:.3}", d.last_rebuild_ms.load(Relaxed) as f64 / 1000.0),
        );
        per_db(
            "projection_applied_total",
            Kind::Counter,
            "Stream entries applied to this query DB since start (no-ops included).",
            &|d| d.applied_total.load(Relaxed).to_string(),
        );
        let stage = "projection_writer_seconds_total";
        e.family(
            stage,
            Kind::Counter,
            "Writer wall time per query DB and stage (stream_read, decode, lock, rows, statistics, history, checkpoint, commit).",
        );
        for db in &self.dbs {
            for st in Stage::ALL {
                let ns = db.stage_ns[st as usize].load(Relaxed);
                e.sample(
                    stage,
                    &[("db", &db.name), ("stage", st.label())],
                    format!("{:.6}", ns as f64 / 1e9),
                );
            }
        }
        e.family(
            "projection_caught_up_total",
            Kind::Counter,
            "Stream entries a writer read itself (XRANGE from its checkpoint) instead of from the live fan-out.",
        );
        for db in &self.dbs {
            e.sample(
                "projection_caught_up_total",
                &[("db", &db.name)],
                db.caught_up_total.load(Relaxed),
            );
        }
        e.family(
            "projection_batch_size",
            Kind::Summary,
            "Entries per committed writer transaction.",
        )
        .sample(
            "projection_batch_size_sum",
            &[],
            self.batch_size_sum.load(Relaxed),
        )
        .sample(
            "projection_batch_size_count",
            &[],
            self.batch_size_count.load(Relaxed),
        );
        e.family(
            "projection_dlq_total",
            Kind::Counter,
            "Entries sent to the dead-letter stream.",
        )
        .sample("projection_dlq_total", &[], self.dlq_total.load(Relaxed));
        e.finish()
    }
}

/// Milliseconds since the Unix epoch, the clock of stream entry ids.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_db_lines() {
        let m = Metrics::new(["query-db-primary", "r1"]);
        m.dbs[1].position.store(42, Relaxed);
        m.dbs[1].oldest_unapplied_ms.store(1_000, Relaxed);
        m.record_batch(7);
        m.dbs[1].set_stale(true);
        m.dbs[1].stage_ns[Stage::Commit as usize].store(1_500_000_000, Relaxed);
        let text = m.render(3_500);
        for line in [
            "projection_checkpoint_position{db=\"query-db-primary\"} 0",
            "projection_checkpoint_position{db=\"r1\"} 42",
            "projection_lag_seconds{db=\"r1\"} 2.500",
            "projection_lag_seconds{db=\"query-db-primary\"} 0.000",
            "projection_db_up{db=\"r1\"} 0",
            "projection_lag_entries{db=\"r1\"} 0",
            "projection_applied_total{db=\"r1\"} 0",
            "projection_caught_up_total{db=\"r1\"} 0",
            "projection_batch_size_sum 7",
            "projection_batch_size_count 1",
            "projection_dlq_total 0",
            "# TYPE projection_batch_size summary",
            "# HELP projection_db_up 1 while this query DB answers its writer.",
            "projection_db_stale{db=\"r1\"} 1",
            "projection_db_stale{db=\"query-db-primary\"} 0",
            "projection_writer_seconds_total{db=\"r1\",stage=\"commit\"} 1.500000",
            "projection_writer_seconds_total{db=\"r1\",stage=\"rows\"} 0.000000",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

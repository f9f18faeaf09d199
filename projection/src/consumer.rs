//! The reader thread: consumes `report-events` as consumer group `projection-service`, parks
//! poison entries in the DLQ, fans every batch out to the writers, and acknowledges and trims
//! only what every query DB has committed.
//!
//! Guarantees (SPEC §4.2, §4.7):
//! - nothing is acked before every writer reports it applied (ack up to the minimum of the
//!   writers' committed watermarks); an unacked entry stays in the group's pending list and
//!   is re-read after a restart (XREADGROUP from `0` first, then `>`);
//! - the stream is trimmed only below the lowest checkpoint of the DBs that are not stale
//!   (XTRIM MINID), after raising the trim mark (`retention.rs`);
//! - a detached DB whose backlog outgrows the retention bound is declared stale and stops
//!   holding back acks and trims, so the stream, the pending list and the unacked set stay
//!   bounded while a DB is away for long (when every DB is stale, they are kept to the bound);
//! - a poison entry is copied to the DLQ with its reason and then acked; the rest goes on;
//! - the reader never waits for a writer (see `fanout.rs`), so one slow or dead query DB
//!   never delays the others; it only reads no further ahead than the *fastest* attached
//!   writer has room for, so a backlog is read and decoded once for every DB;
//! - orphaned pending entries of other consumers (a projection that died under another name)
//!   are reclaimed with XAUTOCLAIM.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use redis::Value;
use shared::event::{GROUP, STREAM};

use crate::config::{
    CLAIM_EVERY, CLAIM_MIN_IDLE, MAX_BACKOFF, PACE_QUEUED_BATCHES, READ_BLOCK, READ_COUNT,
    SHUTDOWN_GRACE, TRIM_EVERY,
};
use crate::dlq;
use crate::fanout::{decode, Batch, Fanout, FromWriter};
use crate::metrics::{now_ms, Metrics};
use crate::retention::{self, Recent, Stale};
use crate::stream::{self, EntryId, RawEntry};
use crate::Error;

/// Most ids per XACK command.
const ACK_CHUNK: usize = 500;
/// How often the per-DB lag in entries is recomputed for `/metrics` (it walks the unacked
/// ids) and the stream is asked for its oldest entry the reader has not read (one XRANGE).
/// The age of the oldest unapplied entry is refreshed on every turn of the loop instead: it
/// costs a tree lookup per DB, and a value kept for a whole period kept growing after the
/// entry was applied (healthy DBs read ~0.2 s behind while they were ~10 ms behind).
const LAG_EVERY: Duration = Duration::from_millis(200);
/// How long the reader waits before looking again when the writers have enough queued: a
/// fraction of one writer transaction, so the queues never run dry.
const PACE_WAIT: Duration = Duration::from_millis(5);
/// After start, how long the reader waits for the writers to attach before it reads new
/// entries anyway: long enough for writers to connect and ask to rejoin (whatever is read
/// before they are attached they must fetch themselves, once per DB), short enough that a
/// projection whose DBs hang at connect still reads, judges the retention bound and parks
/// poison. Only writers still on their first attempt are waited for
/// ([`Fanout::awaiting_first_attach`]): one whose DB is down or went down fails, is not waited
/// for, and catches up on its own. Waiting for every writer to be attached instead held every
/// read back for the rest of the grace when a DB stopped in the first two seconds: ~0.8–1 s
/// between an entry and its commit in the healthy DBs (the outage test, every run).
const FIRST_ATTACH_GRACE: Duration = Duration::from_secs(2);

/// Everything the reader thread needs.
#[derive(Debug)]
pub struct Reader {
    pub redis_url: String,
    /// Consumer name in the group: the instance id, stable across restarts so that the
    /// pending entries of the previous run are ours to re-read.
    pub consumer: String,
    pub fanout: Fanout,
    pub reports: Receiver<FromWriter>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
    pub bound: retention::Bound,
}

struct State {
    r: Reader,
    conn: Option<redis::Connection>,
    /// Per writer: every entry up to this id is committed in its DB (None: not known yet).
    watermarks: Vec<Option<EntryId>>,
    /// Per writer: the stream position a rebuild in progress will catch up from
    /// ([`FromWriter::Pin`]); nothing after it is acked or trimmed meanwhile.
    pins: Vec<Option<EntryId>>,
    /// Entries read and dispatched, not yet acked.
    unacked: BTreeSet<EntryId>,
    /// While re-reading our own pending entries after a (re)connect: where to go on from.
    pending_cursor: Option<EntryId>,
    last_dispatched: EntryId,
    /// The newest entry the group has delivered to us (seeded at connect from XINFO GROUPS):
    /// everything after it is still in the stream, unread.
    delivered: EntryId,
    /// The oldest entry after `delivered` when last looked ([`LAG_EVERY`]); dropped as soon as
    /// a read passes it. It counts as unapplied in every DB: entries the reader has not read
    /// yet (it paces itself, or it is held up) are lag too, and without them a reader that
    /// stopped reading showed no lag at all.
    unread: Option<EntryId>,
    claim_cursor: EntryId,
    last_claim: Instant,
    last_trim: Instant,
    trimmed_below: EntryId,
    last_lag: Instant,
    backoff: Duration,
    outage_logged: bool,
    /// The ids read most recently, to measure backlogs against the bound.
    recent: Recent,
    /// When the reader started.
    started: Instant,
}

impl Reader {
    pub fn spawn(self) -> Result<JoinHandle<()>, Error> {
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                let n = self.fanout.len();
                let recent = Recent::new(self.bound.max_entries);
                State {
                    recent,
                    r: self,
                    conn: None,
                    watermarks: vec![None; n],
                    pins: vec![None; n],
                    unacked: BTreeSet::new(),
                    pending_cursor: None,
                    last_dispatched: EntryId::ZERO,
                    delivered: EntryId::ZERO,
                    unread: None,
                    claim_cursor: EntryId::ZERO,
                    last_claim: Instant::now(),
                    last_trim: Instant::now(),
                    trimmed_below: EntryId::ZERO,
                    last_lag: Instant::now(),
                    backoff: Duration::from_millis(100),
                    outage_logged: false,
                    started: Instant::now(),
                }
                .run()
            })
            .map_err(|source| Error::Spawn {
                thread: "reader".into(),
                source,
            })
    }
}

impl State {
    fn stopping(&self) -> bool {
        self.r.stop.load(SeqCst)
    }

    fn run(mut self) {
        while !self.stopping() {
            self.handle_reports();
            let result = self.step();
            if let Err(e) = result {
                self.conn = None;
                if !self.outage_logged {
                    shared::warn!("reader: {e}; retrying with backoff");
                    self.outage_logged = true;
                }
                self.sleep_backoff();
                continue;
            }
            self.handle_reports();
            if let Err(e) = self.ack() {
                self.conn = None;
                shared::warn!("reader: {e}");
                continue;
            }
            if self.last_trim.elapsed() >= TRIM_EVERY {
                self.last_trim = Instant::now();
                if let Err(e) = self.trim() {
                    self.conn = None;
                    shared::warn!("reader: {e}");
                    continue;
                }
            }
            if self.last_lag.elapsed() >= LAG_EVERY {
                self.last_lag = Instant::now();
                if let Err(e) = self.look_for_unread() {
                    self.conn = None;
                    shared::warn!("reader: {e}");
                    continue;
                }
                self.judge_bound();
                self.publish_lag_entries();
            }
            self.publish_lag_age();
        }
        shared::info!("reader: stopping; writers finish their batch in flight");
        let State { r, .. } = &mut self;
        let fanout = std::mem::replace(&mut r.fanout, Fanout::new(Vec::new()));
        fanout.shutdown(SHUTDOWN_GRACE);
        self.handle_reports();
        if let Err(e) = self.ack() {
            shared::warn!("reader: final ack: {e}; the entries stay pending and are re-read");
        }
        shared::info!("reader: stopped");
    }

    /// One read (pending entries first after a connect, then new ones) and, now and then, one
    /// reclaim of orphaned entries.
    fn step(&mut self) -> Result<(), Error> {
        if self.conn.is_none() {
            let mut conn = stream::connect(&self.r.redis_url, READ_BLOCK + Duration::from_secs(5))?;
            create_group(&mut conn)?;
            self.delivered = self
                .delivered
                .max(stream::group_last_delivered(&mut conn, STREAM, GROUP)?);
            // The mark only ever rises, also across restarts of the projection.
            self.trimmed_below = self
                .trimmed_below
                .max(retention::read(&mut conn)?.trimmed_below);
            self.conn = Some(conn);
            self.pending_cursor = Some(EntryId::ZERO);
            if self.outage_logged {
                shared::info!("reader: redis is back");
            }
            self.outage_logged = false;
            self.backoff = Duration::from_millis(100);
            shared::info!(
                "reader: consuming {STREAM} as {}/{}",
                GROUP,
                self.r.consumer
            );
        }
        let waiting_for_writers =
            self.started.elapsed() < FIRST_ATTACH_GRACE && self.r.fanout.awaiting_first_attach();
        if self.pending_cursor.is_none()
            && (waiting_for_writers || self.r.fanout.saturated(PACE_QUEUED_BATCHES))
        {
            // Entries stay in the stream meanwhile; nothing is lost by reading them later.
            std::thread::sleep(PACE_WAIT);
            return Ok(());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or(Error::Reply("no connection".into()))?;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.r.consumer)
            .arg("COUNT")
            .arg(READ_COUNT);
        match self.pending_cursor {
            Some(cursor) => {
                cmd.arg("STREAMS").arg(STREAM).arg(cursor.to_string());
            }
            None => {
                cmd.arg("BLOCK")
                    .arg(READ_BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(STREAM)
                    .arg(">");
            }
        }
        let reply: Value = cmd.query(conn).map_err(|e| Error::redis("xreadgroup", e))?;
        let entries = stream::parse_read_reply(&reply)?;
        if self.pending_cursor.is_some() {
            self.pending_cursor = entries.last().map(|e| e.id);
            if let Some(c) = self.pending_cursor {
                shared::info!(
                    "reader: re-reading {} pending entries up to {c}",
                    entries.len()
                );
            }
        }
        self.process(entries)?;
        if self.last_claim.elapsed() >= CLAIM_EVERY {
            self.last_claim = Instant::now();
            self.claim()?;
        }
        Ok(())
    }

    /// DLQs poison, acks what needs no applying, dispatches the rest.
    fn process(&mut self, entries: Vec<RawEntry>) -> Result<(), Error> {
        if entries.is_empty() {
            return Ok(());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or(Error::Reply("no connection".into()))?;
        let mut good = Vec::with_capacity(entries.len());
        let mut ack_now = Vec::new();
        for raw in entries {
            self.recent.push(raw.id);
            // Re-read and reclaimed entries are below the group's last delivered id already.
            self.delivered = self.delivered.max(raw.id);
            if self.unacked.contains(&raw.id) {
                continue; // ours and in flight already (returned again by XAUTOCLAIM)
            }
            if raw.fields.is_none() {
                // Trimmed while pending: we trim only below every checkpoint, so every DB has it.
                ack_now.push(raw.id);
                continue;
            }
            match decode(&raw) {
                Ok(d) => good.push(d),
                Err(reason) => {
                    dlq::park(conn, &raw, &reason)?;
                    self.r.metrics.dlq_total.fetch_add(1, Relaxed);
                    ack_now.push(raw.id);
                }
            }
        }
        if self.unread.is_some_and(|u| u <= self.delivered) {
            self.unread = None;
        }
        xack(conn, &ack_now)?;
        if !good.is_empty() {
            for d in &good {
                self.unacked.insert(d.id);
                self.last_dispatched = self.last_dispatched.max(d.id);
            }
            self.r.fanout.dispatch(&Arc::new(Batch { entries: good }));
        }
        Ok(())
    }

    /// Takes over pending entries of other consumers idle longer than [`CLAIM_MIN_IDLE`].
    fn claim(&mut self) -> Result<(), Error> {
        let conn = self
            .conn
            .as_mut()
            .ok_or(Error::Reply("no connection".into()))?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(STREAM)
            .arg(GROUP)
            .arg(&self.r.consumer)
            .arg(CLAIM_MIN_IDLE.as_millis() as u64)
            .arg(self.claim_cursor.to_string())
            .arg("COUNT")
            .arg(READ_COUNT)
            .query(conn)
            .map_err(|e| Error::redis("xautoclaim", e))?;
        let (next, entries) = stream::parse_autoclaim_reply(&reply)?;
        self.claim_cursor = next;
        let foreign = entries
            .iter()
            .filter(|e| !self.unacked.contains(&e.id))
            .count();
        if foreign > 0 {
            shared::info!("reader: reclaimed {foreign} orphaned pending entries");
        }
        self.process(entries)
    }

    fn handle_reports(&mut self) {
        while let Ok(report) = self.r.reports.try_recv() {
            match report {
                FromWriter::Applied { db, upto } => {
                    if let Some(w) = self.watermarks.get_mut(db) {
                        *w = Some(upto);
                    }
                }
                FromWriter::Pin { db, at } => {
                    if let Some(p) = self.pins.get_mut(db) {
                        *p = at;
                    }
                }
                FromWriter::Rejoin { db, at } => {
                    self.r.fanout.rejoin(db, at, self.last_dispatched);
                }
            }
        }
    }

    /// Declares stale every detached DB whose backlog outgrew the bound. An attached writer is
    /// never judged: it is at most its channel behind the reader, and lags only in bursts.
    fn judge_bound(&mut self) {
        let now = now_ms();
        for (i, status) in self.r.metrics.dbs.iter().enumerate() {
            if status.is_stale() || status.is_attached() {
                continue;
            }
            let applied = self.watermarks.get(i).copied().flatten();
            if self
                .recent
                .beyond(applied.unwrap_or(EntryId::ZERO), self.r.bound, now)
            {
                status.set_stale(true);
                shared::warn!(
                    "reader: query db {} is stale: {} ({} entries / {:?}; applied up to {}); \
                     acks and trims go on without it, it is rebuilt when reachable",
                    status.name,
                    Stale::BeyondBound,
                    self.r.bound.max_entries,
                    self.r.bound.max_age,
                    applied.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                );
            }
        }
    }

    /// What every DB that counts has committed: the lowest watermark over the DBs that are not
    /// stale, once each of them has reported one. When every DB is stale, the oldest entry
    /// within the bound (nobody is served from the stream then; they are all rebuilt).
    fn lowest_watermark(&self) -> Option<EntryId> {
        let mut counted = self
            .watermarks
            .iter()
            .zip(&self.r.metrics.dbs)
            .filter(|(_, status)| !status.is_stale())
            .map(|(w, _)| *w)
            .peekable();
        let low = if counted.peek().is_none() {
            self.recent.floor(self.r.bound, now_ms())
        } else {
            counted.collect::<Option<Vec<_>>>()?.into_iter().min()
        };
        // A rebuild in progress catches up from its pin: trimming past it would lose the
        // entries between the pin and the trim for that DB, silently.
        match self.pins.iter().flatten().min() {
            Some(&pin) => Some(low.map_or(pin, |low| low.min(pin))),
            None => low,
        }
    }

    /// XACKs every unacked entry that every DB has committed.
    fn ack(&mut self) -> Result<(), Error> {
        let Some(low) = self.lowest_watermark() else {
            return Ok(());
        };
        let done: Vec<EntryId> = self.unacked.range(..=low).copied().collect();
        if done.is_empty() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        for chunk in done.chunks(ACK_CHUNK) {
            xack(conn, chunk)?;
            for id in chunk {
                self.unacked.remove(id);
            }
        }
        Ok(())
    }

    /// XTRIM MINID at the lowest checkpoint: every entry below it is in every DB that is not
    /// stale.
    fn trim(&mut self) -> Result<(), Error> {
        let Some(low) = self.lowest_watermark() else {
            return Ok(());
        };
        if low <= self.trimmed_below {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        // Mark first: a crash between the two leaves the mark above the trim, never below,
        // so a DB the trim passes is always recognised as stale.
        retention::raise_trim_mark(conn, low)?;
        let _: Value = redis::cmd("XTRIM")
            .arg(STREAM)
            .arg("MINID")
            .arg(low.to_string())
            .query(conn)
            .map_err(|e| Error::redis("xtrim", e))?;
        self.trimmed_below = low;
        Ok(())
    }

    /// Looks up the oldest entry after the last one delivered to us (XRANGE … COUNT 1).
    fn look_for_unread(&mut self) -> Result<(), Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let next = stream::xrange(conn, STREAM, self.delivered, None, 1)?;
        self.unread = next.first().map(|e| e.id);
        Ok(())
    }

    /// The oldest entry each DB has not applied: the first unacked one after its watermark, or
    /// the oldest unread one (every DB lacks it), whichever is older.
    fn publish_lag_age(&self) {
        for (i, status) in self.r.metrics.dbs.iter().enumerate() {
            let w = self.watermark(i);
            let read = self
                .unacked
                .range((Bound::Excluded(w), Bound::Unbounded))
                .next()
                .copied();
            let unread = self.unread.filter(|u| *u > w);
            let oldest = match (read, unread) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            status
                .oldest_unapplied_ms
                .store(oldest.map_or(0, |id| id.ms.max(1)), Relaxed);
        }
    }

    /// How many entries read from the stream each DB has not applied (walks the unacked ids).
    fn publish_lag_entries(&self) {
        for (i, status) in self.r.metrics.dbs.iter().enumerate() {
            let w = self.watermark(i);
            let count = self
                .unacked
                .range((Bound::Excluded(w), Bound::Unbounded))
                .count() as u64;
            status.lag_entries.store(count, Relaxed);
        }
    }

    fn watermark(&self, db: usize) -> EntryId {
        self.watermarks
            .get(db)
            .copied()
            .flatten()
            .unwrap_or(EntryId::ZERO)
    }

    fn sleep_backoff(&mut self) {
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !self.stopping() {
            self.handle_reports();
            std::thread::sleep(Duration::from_millis(25));
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// XGROUP CREATE … 0 MKSTREAM; an existing group is fine.
fn create_group(conn: &mut redis::Connection) -> Result<(), Error> {
    let result: redis::RedisResult<Value> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(conn);
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(Error::redis("xgroup create", e)),
    }
}

fn xack(conn: &mut redis::Connection, ids: &[EntryId]) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("XACK");
    cmd.arg(STREAM).arg(GROUP);
    for id in ids {
        cmd.arg(id.to_string());
    }
    let _: Value = cmd.query(conn).map_err(|e| Error::redis("xack", e))?;
    Ok(())
}

//! One writer thread per query DB: applies entries to its read model, one transaction per
//! batch, and catches up from its own checkpoint whenever it is detached from the live
//! fan-out (at start, after a DB outage, or after falling behind).
//!
//! Guarantees (SPEC §4.2–4.4):
//! - rows, statistics and the checkpoint of a batch commit in ONE transaction, so the
//!   checkpoint never runs ahead of the data and statistics equal `GROUP BY` over the live
//!   rows at every committed state;
//! - rows change only through the pure rules of `apply.rs` (newer version wins, tombstones are
//!   final) and the upsert repeats the version guard, so duplicates and replays are no-ops;
//! - the writer reports to the reader only what is committed, so the reader acks no entry
//!   before every DB holds it;
//! - a DB that is down at start or fails later never stops the others: this writer retries
//!   with backoff on its own and catches up with XRANGE from its checkpoint when it returns;
//! - an entry the DB refuses (`poison.rs`) is isolated by splitting the batch, retried a
//!   bounded number of times, parked in the dead-letter stream and skipped; the rest of the
//!   batch commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::types::Type;
use postgres::{Client, NoTls};
use shared::event::{Payload, STREAM};
use uuid::Uuid;

use crate::apply::{self, Change, Row, RowState};
use crate::checkpoint::{self, Checkpoint};
use crate::config::{
    CATCHUP_PAGE, COMMIT_NOW_ENTRIES, CONNECT_TIMEOUT, MAX_BACKOFF, MAX_TX_ENTRIES,
    STATEMENT_TIMEOUT,
};
use crate::fanout::{decode, Batch, Decoded, FromWriter, ToWriter};
use crate::metrics::{DbStatus, Metrics, Stage};
use crate::rebuild::{self, RebuildConfig};
use crate::stream::{self, EntryId, RawEntry};
use crate::Error;
use crate::{dlq, poison, retention};
use shared::config::NamedDb;

/// Serialises writers of one query DB (a second projection, a rebuild) so that the old rows a
/// transaction read are still the rows it overwrites. Arbitrary but fixed.
pub const WRITE_LOCK: i64 = 0x7072_6f6a_6563;

/// How long a catching-up writer waits for the reader to answer its rejoin before it catches
/// up again and asks anew.
const REJOIN_WAIT: Duration = Duration::from_secs(5);

/// How often an idle attached writer checks that its DB still answers.
const IDLE_PING: Duration = Duration::from_secs(1);

/// Everything a writer thread needs.
#[derive(Debug)]
pub struct Writer {
    pub db: usize,
    pub name: String,
    pub url: String,
    pub redis_url: String,
    /// The command DB, to rebuild this DB from when it is stale (`None`: wait for an operator).
    pub command_url: Option<String>,
    /// Least time between the starts of two live transactions under a steady flow
    /// (`config::COMMIT_INTERVAL_MS`).
    pub commit_interval: Duration,
    pub rx: Receiver<ToWriter>,
    pub reports: Sender<FromWriter>,
    pub status: Arc<DbStatus>,
    pub metrics: Arc<Metrics>,
    pub stop: Arc<AtomicBool>,
}

/// What to do after a catch-up round.
enum Flow {
    Continue,
    Stop,
}

struct State {
    w: Writer,
    pg: Option<Client>,
    /// The batch statements, prepared on `pg` (set and cleared with it).
    statements: Option<Statements>,
    redis: Option<redis::Connection>,
    /// The committed checkpoint; every entry up to it is applied.
    cp: Checkpoint,
    backoff: Duration,
    /// An outage is logged once, not on every retry.
    outage_logged: bool,
    last_ping: Instant,
    /// The DB carries the stale mark (we set it, or found it): cleared after rebuild + catch-up.
    marked_stale: bool,
    /// The stream epoch this DB's checkpoint follows (set at connect).
    epoch: Option<String>,
    /// "Cannot rebuild" is logged once per stale episode.
    rebuild_logged: bool,
    /// This writer has neither been attached nor failed since the process started (see
    /// [`State::catch_up`]).
    first_attach: bool,
    /// When the last live transaction began (see [`State::collect`]).
    last_tx: Instant,
}

impl Writer {
    pub fn spawn(self) -> Result<JoinHandle<()>, Error> {
        let name = format!("writer-{}", self.name);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                State {
                    w: self,
                    pg: None,
                    statements: None,
                    redis: None,
                    cp: Checkpoint::default(),
                    backoff: Duration::from_millis(100),
                    outage_logged: false,
                    last_ping: Instant::now(),
                    marked_stale: false,
                    epoch: None,
                    rebuild_logged: false,
                    first_attach: true,
                    last_tx: Instant::now(),
                }
                .run()
            })
            .map_err(|source| Error::Spawn {
                thread: name,
                source,
            })
    }
}

impl State {
    fn stopping(&self) -> bool {
        self.w.stop.load(SeqCst)
    }

    fn run(mut self) {
        loop {
            if self.stopping() {
                break;
            }
            if self.w.status.is_stale() {
                if let Err(e) = self.recover() {
                    self.failed(&e);
                }
                self.sleep_backoff();
                continue;
            }
            if !self.w.status.is_attached() {
                match self.catch_up() {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => break,
                    Err(e) => {
                        self.w.status.set_attached(false);
                        self.failed(&e);
                        self.sleep_backoff();
                    }
                }
                continue;
            }
            match self.w.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(ToWriter::Batch(first)) => {
                    let (batches, gap) = self.collect(first);
                    let entries: Vec<&Decoded> =
                        batches.iter().flat_map(|b| b.entries.iter()).collect();
                    self.last_tx = Instant::now();
                    let result = self.apply(&entries, 0).and_then(|()| match gap {
                        Some(upto) => self.fill_gap(upto),
                        None => Ok(()),
                    });
                    if let Err(e) = result {
                        self.w.status.set_attached(false);
                        self.failed(&e);
                    }
                }
                // A late answer to an earlier rejoin: cover up to it ourselves.
                Ok(ToWriter::Rejoined { upto }) => {
                    if let Err(e) = self.fill_gap(upto) {
                        self.w.status.set_attached(false);
                        self.failed(&e);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.ping_when_idle(),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        shared::info!("writer {}: stopped at {}", self.w.name, self.cp.entry_id);
    }

    /// The live batches of the next transaction: `first`, everything queued behind it (up to
    /// [`MAX_TX_ENTRIES`]) and, while entries keep coming, whatever arrives until
    /// `commit_interval` after the previous transaction began. Returns them with the end of
    /// a gap to cover (`Rejoined`), which ends the collection.
    ///
    /// Why wait at all: a transaction's fixed cost on the DB (round trips, statement
    /// triggers, plans; `config::COMMIT_INTERVAL_MS`) is paid per commit, so under a steady
    /// flow fewer, fuller commits cost the DB less for the same entries, and each commit
    /// empties the query instances' caches of this DB. Safe: nothing is acknowledged before
    /// it commits, and a stop signal or a full batch ends the wait. Latency stays bounded: no
    /// wait after a quiet spell (the previous transaction began long ago) nor once the batch
    /// holds [`COMMIT_NOW_ENTRIES`].
    fn collect(&self, first: Arc<Batch>) -> (Vec<Arc<Batch>>, Option<EntryId>) {
        let mut n = first.entries.len();
        let mut batches = vec![first];
        let until = self.last_tx + self.w.commit_interval;
        while n < MAX_TX_ENTRIES {
            let next = match self.w.rx.try_recv() {
                Ok(m) => m,
                Err(_) => {
                    let now = Instant::now();
                    if n >= COMMIT_NOW_ENTRIES || now >= until || self.stopping() {
                        break;
                    }
                    match self.w.rx.recv_timeout(until - now) {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                }
            };
            match next {
                ToWriter::Batch(b) => {
                    n += b.entries.len();
                    batches.push(b);
                }
                ToWriter::Rejoined { upto } => return (batches, Some(upto)),
            }
        }
        (batches, None)
    }

    /// Detached: reconnect, apply everything after the checkpoint with XRANGE, then ask the
    /// reader to attach us and cover the gap up to the last entry it dispatched meanwhile.
    ///
    /// At process start the XRANGE before the rejoin is skipped: every writer starts at once
    /// and the reader has dispatched nothing yet, so attaching at the checkpoint right away
    /// lets the backlog arrive through the fan-out, read and decoded once for all DBs (the
    /// reader paces itself to the fastest writer), instead of once per DB here. The gap up to
    /// what the reader dispatched before the rejoin is still covered exactly (`fill_gap`).
    fn catch_up(&mut self) -> Result<Flow, Error> {
        // Live batches still queued are covered by the XRANGE below.
        while self.w.rx.try_recv().is_ok() {}
        self.ensure_pg()?;
        if self.w.status.is_stale() {
            return Ok(Flow::Continue); // judged at connect: the stream cannot catch it up
        }
        let at = if std::mem::take(&mut self.first_attach) {
            self.cp.entry_id
        } else {
            self.range_apply(None)?
        };
        if self.stopping() {
            return Ok(Flow::Stop);
        }
        if self
            .w
            .reports
            .send(FromWriter::Rejoin { db: self.w.db, at })
            .is_err()
        {
            return Ok(Flow::Stop);
        }
        let deadline = Instant::now() + REJOIN_WAIT;
        loop {
            if self.stopping() {
                return Ok(Flow::Stop);
            }
            match self.w.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(ToWriter::Rejoined { upto }) => {
                    self.fill_gap(upto)?;
                    self.backoff = Duration::from_millis(100);
                    if self.marked_stale {
                        self.clear_stale_mark()?;
                    }
                    return Ok(Flow::Continue);
                }
                // Dispatched before we were detached: already covered by the XRANGE.
                Ok(ToWriter::Batch(_)) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    return Ok(Flow::Continue)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(Flow::Stop),
            }
        }
    }

    /// Applies the stream from the checkpoint up to `upto` (inclusive), or to its end.
    fn range_apply(&mut self, upto: Option<EntryId>) -> Result<EntryId, Error> {
        loop {
            if self.stopping() {
                return Ok(self.cp.entry_id);
            }
            let after = self.cp.entry_id;
            let t = Instant::now();
            let redis = self.redis()?;
            let page = match stream::xrange(redis, STREAM, after, upto, CATCHUP_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    self.redis = None;
                    return Err(e);
                }
            };
            let Some(last) = page.last().map(|e| e.id) else {
                return Ok(self.cp.entry_id);
            };
            // Poison entries are the reader's to park in the DLQ; here they only move the
            // checkpoint past them.
            let t = self.w.status.timed(Stage::StreamRead, t);
            self.w
                .status
                .caught_up_total
                .fetch_add(page.len() as u64, Relaxed);
            let decoded: Vec<Decoded> = page.iter().filter_map(|r| decode(r).ok()).collect();
            self.w.status.timed(Stage::Decode, t);
            let refs: Vec<&Decoded> = decoded.iter().collect();
            let skipped = (page.len() - decoded.len()) as i64;
            self.apply_up_to(&refs, skipped, last)?;
            if page.len() < CATCHUP_PAGE || upto.is_some_and(|u| last >= u) {
                return Ok(self.cp.entry_id);
            }
        }
    }

    fn fill_gap(&mut self, upto: EntryId) -> Result<(), Error> {
        if upto > self.cp.entry_id {
            self.range_apply(Some(upto))?;
        }
        Ok(())
    }

    fn apply(&mut self, entries: &[&Decoded], skipped: i64) -> Result<(), Error> {
        let last = entries
            .iter()
            .map(|e| e.id)
            .max()
            .unwrap_or(self.cp.entry_id);
        self.apply_up_to(entries, skipped, last)
    }

    /// Applies `entries` and moves the checkpoint to `last`; when the DB rejects the data
    /// (`poison.rs`), isolates the entry at fault by splitting the batch, so every other entry
    /// commits and only that one goes to the dead-letter stream.
    fn apply_up_to(
        &mut self,
        entries: &[&Decoded],
        skipped: i64,
        last: EntryId,
    ) -> Result<(), Error> {
        match self.commit(entries, skipped, last) {
            Err(e) if poison::rejection(&e).is_some() => self.isolate(entries, skipped, last, &e),
            other => other,
        }
    }

    /// Bisects a rejected batch (in id order, so each half's checkpoint covers exactly what
    /// committed); a single rejected entry is retried up to [`poison::ATTEMPTS`] times, then
    /// parked in the DLQ and skipped.
    fn isolate(
        &mut self,
        entries: &[&Decoded],
        skipped: i64,
        last: EntryId,
        err: &Error,
    ) -> Result<(), Error> {
        if entries.len() > 1 {
            let mut sorted = entries.to_vec();
            sorted.sort_by_key(|e| e.id);
            let (a, b) = sorted.split_at(sorted.len() / 2);
            let a_last = a.last().map_or(self.cp.entry_id, |e| e.id);
            self.apply_up_to(a, 0, a_last)?;
            return self.apply_up_to(b, skipped, last);
        }
        let (Some(entry), Some(mut reason)) = (entries.first(), poison::rejection(err)) else {
            // Nothing to blame but the checkpoint itself: not an entry's fault.
            return Err(Error::Inconsistent(format!(
                "{}: checkpoint write rejected",
                self.w.name
            )));
        };
        for _ in 1..poison::ATTEMPTS {
            std::thread::sleep(poison::RETRY_PAUSE);
            match self.commit(entries, skipped, last) {
                Ok(()) => return Ok(()),
                Err(e) => match poison::rejection(&e) {
                    Some(r) => reason = r,
                    None => return Err(e),
                },
            }
        }
        let raw = RawEntry {
            id: entry.id,
            fields: Some(
                entry
                    .event
                    .to_fields()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.into_bytes()))
                    .collect(),
            ),
        };
        let redis = self.redis()?;
        match dlq::park_once(redis, &raw, &reason) {
            Ok(true) => {
                self.w.metrics.dlq_total.fetch_add(1, Relaxed);
            }
            Ok(false) => {
                shared::info!(
                    "writer {}: entry {} rejected here too; already in the DLQ",
                    self.w.name,
                    entry.id
                );
            }
            Err(e) => {
                self.redis = None;
                return Err(e);
            }
        }
        // Parked: the checkpoint moves past it like past an entry that does not decode.
        self.commit(&[], skipped + 1, last)
    }

    /// One transaction: rows, statistics, checkpoint (moved to `last` when that is newer).
    fn commit(&mut self, entries: &[&Decoded], skipped: i64, last: EntryId) -> Result<(), Error> {
        let mut new_cp = self.cp;
        if last > self.cp.entry_id {
            new_cp.entry_id = last;
            if let Some(e) = entries.iter().find(|e| e.id == last) {
                new_cp.position = e.event.position;
            }
        }
        self.ensure_pg()?;
        let (Some(client), Some(statements)) = (self.pg.as_mut(), self.statements.as_ref()) else {
            return Err(Error::Inconsistent(format!(
                "{}: no connection",
                self.w.name
            )));
        };
        let applied = entries.len() as i64 + skipped;
        if let Err(e) = transact(
            &self.w.name,
            &self.w.status,
            client,
            statements,
            entries,
            new_cp,
            applied,
        ) {
            // Rolled back. A rejection leaves the connection usable; anything else may not
            // have: reconnect and retry from the checkpoint.
            if poison::rejection(&e).is_none() {
                self.pg = None;
            }
            return Err(e);
        }
        self.cp = new_cp;
        let st = &self.w.status;
        st.up.store(true, Relaxed);
        st.position.store(new_cp.position, Relaxed);
        st.applied_total
            .fetch_add(entries.len() as u64 + skipped as u64, Relaxed);
        if !entries.is_empty() {
            self.w.metrics.record_batch(entries.len());
        }
        let _ = self.w.reports.send(FromWriter::Applied {
            db: self.w.db,
            upto: self.cp.entry_id,
        });
        Ok(())
    }

    /// Connects, migrates and reads the checkpoint when there is no connection.
    fn ensure_pg(&mut self) -> Result<(), Error> {
        if self.statements.is_some() && self.pg.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.pg = None;
        let name = self.w.name.clone();
        let db_err = |source| Error::Db {
            db: name.clone(),
            source,
        };
        let mut config: postgres::Config = self.w.url.parse().map_err(db_err)?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_user_timeout(STATEMENT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .options(&format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        let mut client = config.connect(NoTls).map_err(db_err)?;
        shared::migrate::query_db(&mut client).map_err(db_err)?;
        let recorded = checkpoint::read_recorded(&mut client).map_err(db_err)?;
        self.cp = recorded.cp;
        self.marked_stale = recorded.stale;
        let marks = match retention::read(self.redis()?) {
            Ok(m) => m,
            Err(e) => {
                self.redis = None;
                return Err(e);
            }
        };
        match retention::judge(&recorded, &marks) {
            Some(why) => {
                if !recorded.stale {
                    checkpoint::mark_stale(&mut client, true).map_err(db_err)?;
                    self.marked_stale = true;
                }
                if !self.w.status.is_stale() {
                    shared::warn!(
                        "writer {}: read model is stale: {why}; not served until it is rebuilt \
                         from the command DB",
                        self.w.name
                    );
                }
                self.w.status.set_stale(true);
                self.w.status.set_attached(false);
            }
            None if recorded.epoch.is_none() => {
                checkpoint::set_epoch(&mut client, &marks.epoch).map_err(db_err)?;
            }
            None => {}
        }
        self.epoch = Some(marks.epoch);
        self.statements = Some(Statements::prepare(&mut client).map_err(db_err)?);
        self.pg = Some(client);
        self.w.status.up.store(true, Relaxed);
        self.w.status.position.store(self.cp.position, Relaxed);
        if self.outage_logged {
            shared::info!("writer {}: database is back", self.w.name);
        }
        self.outage_logged = false;
        shared::info!(
            "writer {}: connected, schema applied, checkpoint at {} (position {})",
            self.w.name,
            self.cp.entry_id,
            self.cp.position
        );
        let _ = self.w.reports.send(FromWriter::Applied {
            db: self.w.db,
            upto: self.cp.entry_id,
        });
        Ok(())
    }

    /// The Redis connection for XRANGE and the retention marks, opened when needed.
    fn redis(&mut self) -> Result<&mut redis::Connection, Error> {
        match self.redis {
            Some(ref mut c) => Ok(c),
            None => Ok(self
                .redis
                .insert(stream::connect(&self.w.redis_url, Duration::from_secs(10))?)),
        }
    }

    /// Stale (`retention.rs`): take no live batches, make sure the DB carries the mark (so no
    /// query instance reads it), and rebuild it from the command DB when one is configured.
    fn recover(&mut self) -> Result<(), Error> {
        self.w.status.set_attached(false);
        // Live batches are useless to a stale DB; catch-up after the rebuild covers them.
        while self.w.rx.try_recv().is_ok() {}
        self.ensure_pg()?;
        if !self.marked_stale {
            let name = self.w.name.clone();
            let client = self
                .pg
                .as_mut()
                .ok_or_else(|| Error::DbLost { db: name.clone() })?;
            checkpoint::mark_stale(client, true)
                .map_err(|source| Error::Db { db: name, source })?;
            self.marked_stale = true;
        }
        let Some(command_url) = self.w.command_url.clone() else {
            if !self.rebuild_logged {
                self.rebuild_logged = true;
                shared::warn!(
                    "writer {}: stale; marked in the DB (not served); no COMMAND_DATABASE_URL \
                     to rebuild it from: waiting for `cargo xtask rebuild --db {}`",
                    self.w.name,
                    self.w.name
                );
            }
            return Ok(());
        };
        self.rebuild(command_url)
    }

    /// Rebuilds the stale DB from the command DB while events keep flowing, then hands it to
    /// the catch-up path. Correct because of the order:
    /// 1. read the stream's last generated id `L` (and its epoch) FIRST;
    /// 2. rebuild from a command-DB snapshot taken after that (`rebuild.rs`): every event
    ///    committed before the snapshot is in the rebuilt rows, and every event committed after
    ///    it is published after it, so with an id above `L`;
    /// 3. set the checkpoint to `L` (the stale mark stays): catch-up applies everything after
    ///    `L` from the stream — events already in the snapshot are no-ops (version rules);
    /// 4. the mark is cleared only when the writer has caught up and rejoined the fan-out.
    ///
    /// The reader keeps the stream from `L` on while this runs (`FromWriter::Pin`): the DB
    /// counts as stale, so without the pin a trim for the healthy DBs could remove entries
    /// after `L` before the catch-up reads them (seen in the restored-copy drill: a rejoined
    /// replica missing the writes of one trim interval).
    fn rebuild(&mut self, command_url: String) -> Result<(), Error> {
        let redis = self.redis()?;
        let (marks, upto) = match retention::read(redis)
            .and_then(|m| Ok((m, stream::last_generated_id(redis, STREAM)?)))
        {
            Ok(v) => v,
            Err(e) => {
                self.redis = None;
                return Err(e);
            }
        };
        shared::info!(
            "writer {}: rebuilding from the command DB (stream at {upto}); reads stay on the \
             other DBs",
            self.w.name
        );
        let db = self.w.db;
        let _ = self.w.reports.send(FromWriter::Pin { db, at: Some(upto) });
        let result = self.rebuild_from(command_url, upto, marks.epoch);
        // On success the DB's own watermark (`upto`) holds the stream from here on; on failure
        // the DB stays stale and the next attempt pins again.
        let _ = self.w.reports.send(FromWriter::Pin { db, at: None });
        result
    }

    /// Steps 2–4 of [`State::rebuild`], with the stream pinned at `upto`.
    fn rebuild_from(
        &mut self,
        command_url: String,
        upto: EntryId,
        epoch: String,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let report = rebuild::rebuild(&RebuildConfig {
            command_url,
            target: NamedDb {
                name: self.w.name.clone(),
                url: self.w.url.clone(),
            },
        })?;
        let cp = Checkpoint {
            entry_id: upto,
            position: report.snapshot_position,
        };
        self.ensure_pg()?;
        let name = self.w.name.clone();
        let client = self
            .pg
            .as_mut()
            .ok_or_else(|| Error::DbLost { db: name.clone() })?;
        checkpoint::restart_at(client, cp, &epoch).map_err(|source| Error::Db {
            db: name.clone(),
            source,
        })?;
        self.cp = cp;
        self.marked_stale = true;
        self.epoch = Some(epoch);
        let took = started.elapsed();
        let st = &self.w.status;
        st.position.store(cp.position, Relaxed);
        st.rebuilds_total.fetch_add(1, Relaxed);
        st.last_rebuild_ms
            .store(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Relaxed);
        shared::info!(
            "writer {name}: rebuilt in {:.2} s ({} live reports, {} tombstones, snapshot at \
             position {}); catching up from {upto}",
            took.as_secs_f64(),
            report.live,
            report.tombstones,
            report.snapshot_position
        );
        let _ = self.w.reports.send(FromWriter::Applied {
            db: self.w.db,
            upto,
        });
        // Detached and no longer stale: the run loop catches up and rejoins; the mark in the
        // DB goes when that is done.
        self.backoff = Duration::from_millis(100);
        st.set_stale(false);
        Ok(())
    }

    /// Caught up after a rebuild: the read model is current again and may be served.
    fn clear_stale_mark(&mut self) -> Result<(), Error> {
        let name = self.w.name.clone();
        let client = self
            .pg
            .as_mut()
            .ok_or_else(|| Error::DbLost { db: name.clone() })?;
        checkpoint::mark_stale(client, false).map_err(|source| Error::Db { db: name, source })?;
        self.marked_stale = false;
        self.rebuild_logged = false;
        shared::info!(
            "writer {}: rebuilt and caught up; the read model is served again",
            self.w.name
        );
        Ok(())
    }

    /// An idle writer checks its DB now and then, so `projection_db_up` tells the truth and an
    /// outage detaches the writer before the next batch finds it.
    fn ping_when_idle(&mut self) {
        if self.last_ping.elapsed() < IDLE_PING {
            return;
        }
        self.last_ping = Instant::now();
        let alive = self
            .pg
            .as_mut()
            .is_some_and(|c| c.is_valid(CONNECT_TIMEOUT).is_ok());
        if !alive {
            self.pg = None;
            self.w.status.set_attached(false);
            let e = Error::DbLost {
                db: self.w.name.clone(),
            };
            self.failed(&e);
        }
    }

    fn failed(&mut self, e: &Error) {
        // After a failure the reader may be far ahead: catch up from the stream before the
        // rejoin, so the gap is not covered while live batches pile up behind it.
        self.first_attach = false;
        // And the reader no longer holds its reads back for this writer (`consumer.rs`).
        self.w.status.started();
        if matches!(
            e,
            Error::Db { .. } | Error::DbLost { .. } | Error::Inconsistent(_)
        ) {
            self.w.status.up.store(false, Relaxed);
        }
        if !self.outage_logged {
            shared::warn!(
                "writer {}: {e}; detached, retrying with backoff and catching up from the checkpoint",
                self.w.name
            );
            self.outage_logged = true;
        }
    }

    /// Sleeps the current backoff in small steps (a stop signal cuts it short), then doubles it.
    fn sleep_backoff(&mut self) {
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !self.stopping() {
            std::thread::sleep(Duration::from_millis(25));
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// Locks a batch's rows and reads what the fold needs of them (`transact`).
pub const LOCK_ROWS: &str = "SELECT id, version, category, status, deleted_at IS NOT NULL \
             FROM read_reports WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// The live rows of a batch, one multi-row upsert (`Snapshots::write`); a stored row changes
/// only for a newer version and never once it is a tombstone.
pub const UPSERT_SNAPSHOTS: &str = "INSERT INTO read_reports (id, title, description, category, status, version, \
               created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
             SELECT id, title, description, category, status, version, created_at, updated_at, \
               NULL, doc, lat, lng, address, report_search(title, description, address) \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
               $7::timestamptz[], $8::timestamptz[], $9::text[], $10::float8[], $11::float8[], \
               $12::text[]) \
               AS b(id, title, description, category, status, version, created_at, updated_at, doc, \
                 lat, lng, address) \
             ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, \
               description = EXCLUDED.description, category = EXCLUDED.category, \
               status = EXCLUDED.status, version = EXCLUDED.version, \
               created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
               deleted_at = NULL, doc = EXCLUDED.doc, lat = EXCLUDED.lat, lng = EXCLUDED.lng, \
               address = EXCLUDED.address, search = EXCLUDED.search \
             WHERE read_reports.version < EXCLUDED.version \
               AND read_reports.deleted_at IS NULL";

/// The tombstones of a batch, one multi-row upsert (`Tombstones::write`).
pub const UPSERT_TOMBSTONES: &str =
    "INSERT INTO read_reports (id, title, description, category, status, version, \
               created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
             SELECT id, '', '', '', '', version, at, at, at, doc, NULL, NULL, NULL, \
               report_search('', '', NULL) \
             FROM unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::text[]) \
               AS b(id, version, at, doc) \
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version, \
               updated_at = EXCLUDED.deleted_at, deleted_at = EXCLUDED.deleted_at \
             WHERE read_reports.version < EXCLUDED.version";

/// The batch's statistics delta, one statement (`move_statistics`): counts that exist move,
/// missing ones are inserted when positive; answers how many negative deltas found no row.
pub const MOVE_STATISTICS: &str =
    "WITH d AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int8[]) \
               AS d(category, status, delta)), \
         u AS (UPDATE statistics s SET count = s.count + d.delta, last_updated = now() \
               FROM d WHERE s.category = d.category AND s.status = d.status \
               RETURNING s.category, s.status), \
         missing AS (SELECT d.* FROM d WHERE NOT EXISTS \
               (SELECT 1 FROM u WHERE u.category = d.category AND u.status = d.status)), \
         i AS (INSERT INTO statistics (category, status, count, last_updated) \
               SELECT category, status, delta, now() FROM missing WHERE delta > 0) \
         SELECT count(*) FROM missing WHERE delta < 0";

/// Applies `entries` in order and records `cp`, all in one transaction.
fn transact(
    db: &str,
    status: &DbStatus,
    client: &mut Client,
    st: &Statements,
    entries: &[&Decoded],
    cp: Checkpoint,
    applied: i64,
) -> Result<(), Error> {
    let db_err = |source| Error::Db {
        db: db.to_owned(),
        source,
    };
    let lost = |why: String| Error::Inconsistent(format!("{db}: {why}"));
    let t = Instant::now();
    let mut tx = client.transaction().map_err(db_err)?;
    // Prepared once per connection: one round trip each, no parse or plan per batch.
    tx.execute(&st.lock, &[&WRITE_LOCK]).map_err(db_err)?;
    let mut ids: Vec<Uuid> = entries.iter().map(|e| e.payload.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut rows: HashMap<Uuid, Row> = HashMap::with_capacity(ids.len());
    if !ids.is_empty() {
        for r in tx.query(&st.lock_rows, &[&ids]).map_err(db_err)? {
            let id: Uuid = r.try_get(0).map_err(db_err)?;
            let deleted: bool = r.try_get(4).map_err(db_err)?;
            let state = if deleted {
                RowState::Tombstone
            } else {
                RowState::Live {
                    category: r.try_get(2).map_err(db_err)?,
                    status: r.try_get(3).map_err(db_err)?,
                }
            };
            rows.insert(
                id,
                Row {
                    version: r.try_get(1).map_err(db_err)?,
                    state,
                },
            );
        }
    }
    // Fold the batch through the pure rules: each report written once, one statistics delta.
    let changes: Vec<(Uuid, Change)> = entries
        .iter()
        .map(|e| (e.payload.id(), Change::from_payload(&e.payload)))
        .collect();
    let plan = apply::fold(&mut rows, &changes);
    let t = status.timed(Stage::Lock, t);
    let mut snapshots = Snapshots::default();
    let mut tombstones = Tombstones::default();
    for &i in plan.writes.values() {
        let e = entries[i];
        match &e.payload {
            Payload::Snapshot(r) => snapshots.push(r, &e.event.payload),
            Payload::Deleted(t) => tombstones.push(t, &e.event.payload),
        }
    }
    let written = snapshots.write(&mut tx, st).map_err(db_err)?
        + tombstones.write(&mut tx, st).map_err(db_err)?;
    if written != plan.writes.len() as u64 {
        return Err(lost(format!(
            "{} of {} reports changed concurrently",
            plan.writes.len() as u64 - written.min(plan.writes.len() as u64),
            plan.writes.len()
        )));
    }
    let t = status.timed(Stage::Rows, t);
    let missing = move_statistics(&mut tx, st, &plan.stats).map_err(db_err)?;
    if missing > 0 {
        return Err(lost(format!(
            "{missing} statistics row(s) missing for a decrement"
        )));
    }
    let t = status.timed(Stage::Statistics, t);
    crate::history::record(&mut tx, &st.history, entries).map_err(db_err)?;
    let t = status.timed(Stage::History, t);
    checkpoint::write(&mut tx, &st.checkpoint, cp, applied).map_err(db_err)?;
    let t = status.timed(Stage::Checkpoint, t);
    tx.commit().map_err(db_err)?;
    status.timed(Stage::Commit, t);
    Ok(())
}

/// The live rows a batch writes, as columns: one multi-row upsert (`unnest`) for all of them.
#[derive(Default)]
struct Snapshots<'a> {
    ids: Vec<Uuid>,
    titles: Vec<&'a str>,
    descriptions: Vec<&'a str>,
    categories: Vec<&'a str>,
    statuses: Vec<&'a str>,
    versions: Vec<i64>,
    created: Vec<time::OffsetDateTime>,
    updated: Vec<time::OffsetDateTime>,
    docs: Vec<&'a str>,
    // What `doc` says about the place, already decoded: the DB no longer parses `doc` for it.
    lats: Vec<Option<f64>>,
    lngs: Vec<Option<f64>>,
    addresses: Vec<Option<&'a str>>,
}

impl<'a> Snapshots<'a> {
    fn push(&mut self, r: &'a shared::model::Report, doc: &'a str) {
        self.ids.push(r.id);
        self.titles.push(&r.title);
        self.descriptions.push(&r.description);
        self.categories.push(r.category.as_str());
        self.statuses.push(r.status.as_str());
        self.versions.push(r.version);
        self.created.push(r.created_at);
        self.updated.push(r.updated_at);
        self.docs.push(doc);
        self.lats.push(r.location.map(|l| l.lat));
        self.lngs.push(r.location.map(|l| l.lng));
        self.addresses.push(r.address.as_deref());
    }

    /// Upserts every row, repeating the version guard of `apply.rs` in SQL (newer version
    /// only, never over a tombstone); returns the rows written.
    fn write(
        &self,
        tx: &mut postgres::Transaction<'_>,
        st: &Statements,
    ) -> Result<u64, postgres::Error> {
        if self.ids.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &st.snapshots,
            &[
                &self.ids,
                &self.titles,
                &self.descriptions,
                &self.categories,
                &self.statuses,
                &self.versions,
                &self.created,
                &self.updated,
                &self.docs,
                &self.lats,
                &self.lngs,
                &self.addresses,
            ],
        )
    }
}

/// The tombstones a batch writes: one multi-row upsert. A tombstone keeps the row (its last
/// live fields) so that no older event can bring the report back; one for a report never seen
/// gets empty fields.
#[derive(Default)]
struct Tombstones<'a> {
    ids: Vec<Uuid>,
    versions: Vec<i64>,
    at: Vec<time::OffsetDateTime>,
    docs: Vec<&'a str>,
}

impl<'a> Tombstones<'a> {
    fn push(&mut self, t: &shared::model::Tombstone, doc: &'a str) {
        self.ids.push(t.id);
        self.versions.push(t.version);
        self.at.push(t.deleted_at);
        self.docs.push(doc);
    }

    fn write(
        &self,
        tx: &mut postgres::Transaction<'_>,
        st: &Statements,
    ) -> Result<u64, postgres::Error> {
        if self.ids.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &st.tombstones,
            &[&self.ids, &self.versions, &self.at, &self.docs],
        )
    }
}

/// Moves `statistics` by the batch's net deltas in one statement: existing counters are
/// updated, missing ones inserted for an increment. Returns how many decrements found no
/// counter — a read model that disagrees with its own rows, which the caller refuses (the
/// transaction rolls back). A counter driven below zero fails the table's CHECK.
fn move_statistics(
    tx: &mut postgres::Transaction<'_>,
    st: &Statements,
    stats: &BTreeMap<(String, String), i64>,
) -> Result<i64, postgres::Error> {
    if stats.is_empty() {
        return Ok(0);
    }
    let categories: Vec<&str> = stats.keys().map(|(c, _)| c.as_str()).collect();
    let statuses: Vec<&str> = stats.keys().map(|(_, s)| s.as_str()).collect();
    let deltas: Vec<i64> = stats.values().copied().collect();
    // Every part of one statement sees the same snapshot, so the INSERT takes exactly the keys
    // the UPDATE found no row for; the writer's advisory lock keeps other writers out between.
    let row = tx.query_one(&st.statistics, &[&categories, &statuses, &deltas])?;
    row.try_get(0)
}

/// The statements of a batch transaction, prepared once per connection (the writer's
/// connections are direct, never through a transaction pooler). Parse and plan were ~20 % of a
/// writer backend's CPU when every batch sent them as unnamed statements (issue 13 point 5),
/// and the checkpoint upsert cost a prepare round trip of its own per batch.
struct Statements {
    lock: postgres::Statement,
    lock_rows: postgres::Statement,
    snapshots: postgres::Statement,
    tombstones: postgres::Statement,
    statistics: postgres::Statement,
    history: postgres::Statement,
    checkpoint: postgres::Statement,
}

impl Statements {
    fn prepare(c: &mut Client) -> Result<Statements, postgres::Error> {
        use Type as T;
        Ok(Statements {
            lock: c.prepare_typed("SELECT pg_advisory_xact_lock($1)", &[T::INT8])?,
            lock_rows: c.prepare_typed(LOCK_ROWS, &[T::UUID_ARRAY])?,
            snapshots: c.prepare_typed(
                UPSERT_SNAPSHOTS,
                &[
                    T::UUID_ARRAY,
                    T::TEXT_ARRAY,
                    T::TEXT_ARRAY,
                    T::TEXT_ARRAY,
                    T::TEXT_ARRAY,
                    T::INT8_ARRAY,
                    T::TIMESTAMPTZ_ARRAY,
                    T::TIMESTAMPTZ_ARRAY,
                    T::TEXT_ARRAY,
                    T::FLOAT8_ARRAY,
                    T::FLOAT8_ARRAY,
                    T::TEXT_ARRAY,
                ],
            )?,
            tombstones: c.prepare_typed(
                UPSERT_TOMBSTONES,
                &[
                    T::UUID_ARRAY,
                    T::INT8_ARRAY,
                    T::TIMESTAMPTZ_ARRAY,
                    T::TEXT_ARRAY,
                ],
            )?,
            statistics: c.prepare_typed(
                MOVE_STATISTICS,
                &[T::TEXT_ARRAY, T::TEXT_ARRAY, T::INT8_ARRAY],
            )?,
            history: c.prepare_typed(
                crate::history::RECORD,
                &[
                    T::UUID_ARRAY,
                    T::INT8_ARRAY,
                    T::TEXT_ARRAY,
                    T::TIMESTAMPTZ_ARRAY,
                    T::TEXT_ARRAY,
                ],
            )?,
            checkpoint: c
                .prepare_typed(checkpoint::WRITE, &[T::TEXT, T::TEXT, T::INT8, T::INT8])?,
        })
    }
}

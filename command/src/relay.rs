//! The relay: publishes the command DB's event log to the Redis stream `report-events` in
//! position order and marks the rows published.
//!
//! Every command instance runs one; the one holding the leadership lease (`lease.rs`, a row in
//! the command DB judged by the DB's clock) publishes, the others poll every
//! [`FOLLOWER_POLL`] and take the lease when it has expired — but only while their own Redis
//! answers, so leadership never moves to a relay that could not publish either. One publisher
//! keeps the stream in position order and keeps the command DB free of N relays racing for
//! every write.
//!
//! **Leadership must be earned.** A leader renews every [`RENEW_EVERY`] only if Redis answered
//! it without a single error since the previous renewal point (its XADDs, and a PING at the
//! renewal itself). A leader that cannot publish — Redis unreachable from it, its connection
//! cut, the process frozen — therefore stops renewing, and its lease ends at most
//! [`LEASE_TTL`] after its last good Redis call. A follower takes over at its next poll:
//! **another relay publishes within `LEASE_TTL` + `FOLLOWER_POLL` ≈ 3.5 s** (plus one
//! connect and one claim) of the leader going bad. A clean shutdown releases the lease at
//! once. A frozen leader that wakes is stopped by the fencing token (`fence.rs`): every
//! publish is a Redis script that refuses an epoch older than the latest claim, and a new term
//! skips the ids of the stream's last entries, which a previous leader may have appended
//! without marking them — so no report's events reach the stream out of version order, even
//! across takeovers. A leader whose Redis failed it looks at the stream's tail the same way
//! before its next append: the failed call may have appended its batch all the same, and
//! appending it again would put a report's older version after its newer one.
//!
//! A batch is: read up to `batch` unpublished rows, append them with one fenced script call,
//! mark them, commit. A crash between the append and COMMIT leaves rows unmarked that are
//! already in the stream; the next term's claim finds them in the stream's tail and marks them
//! without appending them again. Delivery stays at-least-once (the projection absorbs repeats
//! because events are versioned snapshots).
//!
//! **Unknown event types** (an event-log row written by a newer command version during a
//! rolling upgrade) are published as they are, counted in `command_relay_unknown_types_total`
//! and logged. Skipping them would lose the event for good (the relay marks what it passed);
//! stopping on them would block every later event behind one row. The stream's consumers
//! already handle the case: a projection that knows the type applies it, an older one puts the
//! entry in the dead-letter stream with the reason (SPEC §4.7), where it can be replayed.
//!
//! **Wake-ups.** A write does not notify in its own commit (that serialised the commits and
//! cost most of the write ceiling): after the commit each instance's notifier (`wake.rs`)
//! sends one `NOTIFY` for all the writes since its previous one. The leader waits for one up
//! to its poll interval (`RELAY_POLL_MS`) and looks at the event log anyway when none comes:
//! a lost wake-up (an instance killed between commit and `NOTIFY`) delays an event by at
//! most that interval, it never loses one.
//!
//! **LISTEN/NOTIFY stays bounded.** The notifiers NOTIFY after writes; PostgreSQL keeps each
//! notification until every LISTENing session has read it, and the queue is shared and
//! finite; what a session has been sent but not read sits in its socket. So a relay LISTENs
//! only while it leads *and* its Redis answers: it UNLISTENs when it steps down, on any Redis
//! error (a leader that cannot publish has no use for wake-ups; it LISTENs again before its
//! next batch), and whenever a turn ends in an error while it is not leading. While it
//! listens it drains its session whenever it runs — while publishing, while idle, and in
//! every pause — and a drain really reads the socket (see [`DRAIN_WAIT`]). With Redis down
//! nobody listens, and the queue and the sockets stay empty however many writes commit.
//!
//! **Invariant:** the request path never waits on Redis. When Redis is down, writes keep
//! committing and the backlog waits in the event log until Redis returns.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, NoTls};
use shared::event::{Event, EventType};
use uuid::Uuid;

use crate::fence::{self, FenceError, Fields};
use crate::lease::{self, Term, LEASE_TTL, RENEW_EVERY};
use crate::metrics::Metrics;
use crate::store::NOTIFY_CHANNEL;

/// Redis connect/read/write timeout: a hung Redis makes the relay back off, never hang.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a follower looks at the lease: part of the takeover bound (see the module doc).
const FOLLOWER_POLL: Duration = Duration::from_millis(500);

/// Longest wait between attempts while the command DB is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Longest wait between attempts while Redis fails the leader. Shorter than [`RENEW_EVERY`], so
/// a leader whose Redis keeps failing sees a failure in every renewal interval and lets the
/// lease go, instead of renewing on a lucky call between two long pauses.
const MAX_REDIS_BACKOFF: Duration = Duration::from_millis(500);

/// Statement timeout of the relay's session: a hung command DB turns into an error (and a
/// reconnect) instead of a relay stuck forever inside one call.
const STATEMENT_TIMEOUT: &str = "5s";

/// How often an idle relay looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// How long a drain lets the postgres client's event loop wait on the socket. The crate's
/// non-blocking `notifications().iter()` only returns what the event loop already knows has
/// arrived, and the loop learns that the socket is readable only while it waits; after a
/// query it has seen the socket empty, so later notifications stay in the kernel until the
/// next query or wait. A leader whose Redis is down runs no query, so without this wait its
/// drains read nothing and the socket fills (measured: all 50 000 notifications of a burst).
/// 1 ms is the timer's resolution: the shortest wait that makes the loop poll the socket.
const DRAIN_WAIT: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub database_url: String,
    pub redis_url: String,
    pub batch: i64,
    /// How long the leader waits for a wake-up before looking at the event log anyway
    /// (`RELAY_POLL_MS`): what publishes a write whose wake-up was lost (see `wake.rs`).
    pub poll: Duration,
    /// This instance's id: part of the lease holder's name and the Redis client name
    /// (`relay-<instance>`), so operators and drills can tell which instance leads.
    pub instance: String,
}

/// The running relay thread; [`Relay::stop`] finishes the batch in flight, releases the lease
/// and joins.
pub struct Relay {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(
        config: RelayConfig,
        metrics: Arc<Metrics>,
        schema_ready: Arc<AtomicBool>,
    ) -> std::io::Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || run(&config, &metrics, &schema_ready, &flag))?;
        Ok(Relay {
            stop,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[derive(Debug)]
enum RelayError {
    Db(postgres::Error),
    Redis(redis::RedisError),
    /// A relay with a newer epoch claimed the stream: we were replaced (e.g. while frozen).
    Fenced {
        newer: i64,
    },
    /// Our lease ran out or was taken (we could not renew in time).
    LeaseLost,
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Db(e) => write!(f, "command db: {e}"),
            RelayError::Redis(e) => write!(f, "redis: {e}"),
            RelayError::Fenced { newer } => {
                write!(f, "replaced: a relay with epoch {newer} has taken over")
            }
            RelayError::LeaseLost => write!(f, "the leadership lease ran out"),
        }
    }
}

impl From<FenceError> for RelayError {
    fn from(e: FenceError) -> Self {
        match e {
            FenceError::Fenced { newer } => RelayError::Fenced { newer },
            FenceError::Redis(e) => RelayError::Redis(e),
        }
    }
}

/// What one turn of the loop did.
enum Turn {
    /// Not leading (the lease is someone else's, or our Redis does not answer).
    Following,
    /// Just took the lease: publish at once.
    Took,
    /// Published this many events.
    Published(usize),
}

/// A term as leader, as this relay sees it.
struct Leading {
    term: Term,
    /// When the last successful renewal was *sent*: the lease surely lasts until
    /// `renewed + LEASE_TTL` (the DB's `now()` was later than this).
    renewed: Instant,
    /// Start of the current renewal interval.
    interval_start: Instant,
    /// Whether Redis failed us since `interval_start`: then this interval earns no renewal.
    redis_failed: bool,
    /// Event ids a previous term may have appended without marking them (see `fence.rs`).
    skip: HashSet<String>,
    /// Redis failed us while leading: before the next append, `skip` is read again from the
    /// stream, since the failed call may have appended all the same.
    reclaim: bool,
}

/// The relay thread's state: its own PostgreSQL session (LISTENing only while leading with a
/// working Redis), its Redis connection, and its term when leading.
struct State<'a> {
    config: &'a RelayConfig,
    metrics: &'a Metrics,
    holder: String,
    pg: Option<Client>,
    /// Whether `pg` has an active LISTEN: false whenever `pg` is `None`.
    listening: bool,
    redis: Option<redis::Connection>,
    lead: Option<Leading>,
}

fn run(config: &RelayConfig, metrics: &Metrics, schema_ready: &AtomicBool, stop: &AtomicBool) {
    let mut state = State {
        config,
        metrics,
        // A fresh suffix per process: a restarted instance with the same id is a new holder.
        holder: format!("{}/{}", config.instance, Uuid::new_v4()),
        pg: None,
        listening: false,
        redis: None,
        lead: None,
    };
    let mut backoff = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        if !schema_ready.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match state.turn() {
            Ok(Turn::Following) => {
                last_error = None;
                state.pause(FOLLOWER_POLL, stop);
            }
            Ok(Turn::Took) => {}
            Ok(Turn::Published(published)) => {
                if last_error.take().is_some() {
                    shared::info!("relay: recovered, publishing again");
                }
                backoff = Duration::from_millis(100);
                if published > 0 {
                    metrics
                        .relay_published
                        .fetch_add(published as u64, Ordering::Relaxed);
                    metrics.relay_batches.fetch_add(1, Ordering::Relaxed);
                }
                if published < config.batch as usize {
                    state.wait_for_notification(stop);
                }
            }
            Err(e) => {
                metrics.relay_errors.fetch_add(1, Ordering::Relaxed);
                let cap = match &e {
                    RelayError::Db(_) => {
                        // The session is gone, and with it our LISTEN; the lease (if we held
                        // one) simply runs out.
                        state.drop_session();
                        state.step_down(false);
                        MAX_BACKOFF
                    }
                    RelayError::Redis(_) => {
                        metrics.redis_up.store(false, Ordering::Relaxed);
                        state.redis = None;
                        if let Some(lead) = state.lead.as_mut() {
                            lead.redis_failed = true;
                            lead.reclaim = true;
                        }
                        // We cannot publish, so wake-ups are of no use until Redis answers
                        // again; while we listened they would pile up in our socket and in
                        // PostgreSQL's queue for as long as the lease lasts.
                        state.unlisten();
                        MAX_REDIS_BACKOFF
                    }
                    RelayError::Fenced { .. } | RelayError::LeaseLost => {
                        state.step_down(false);
                        MAX_REDIS_BACKOFF
                    }
                };
                if state.lead.is_none() {
                    // A turn that failed half-way through taking the lease (after its LISTEN)
                    // must not leave a follower listening.
                    state.unlisten();
                }
                let text = e.to_string();
                // One line per outage, not one per retry.
                if last_error.as_deref() != Some(text.as_str()) {
                    shared::warn!("relay: {text}; writes continue, retrying with backoff");
                    last_error = Some(text);
                }
                backoff = backoff.min(cap);
                state.pause(backoff, stop);
                backoff = (backoff * 2).min(cap);
            }
        }
    }
    state.step_down(true);
    shared::info!("relay: stopped");
}

impl State<'_> {
    /// One step: keep the session, then follow (try to take the lease) or lead (renew, publish).
    fn turn(&mut self) -> Result<Turn, RelayError> {
        if self.pg.is_none() {
            self.pg = Some(connect_pg(&self.config.database_url).map_err(RelayError::Db)?);
        }
        self.drain()?;
        if self.lead.is_none() {
            return self.follow();
        }
        self.keep_lease()?;
        let (Some(pg), Some(lead)) = (self.pg.as_mut(), self.lead.as_mut()) else {
            return Ok(Turn::Following);
        };
        let redis = connect_redis(&mut self.redis, self.config)?;
        if !self.listening {
            // Again after a Redis error: before the batch's SELECT, so a write committed
            // after it wakes us.
            pg.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
                .map_err(RelayError::Db)?;
            self.listening = true;
        }
        if lead.reclaim {
            // Our last append may have reached the stream though Redis failed us (a reply
            // lost, a timeout after the script ran): look again at what the stream holds, or
            // the retry would append that batch a second time, after the newer versions it
            // carried (two versions of one report in a batch: v1 v2 v1 v2).
            lead.skip = fence::claim(redis, lead.term.epoch, look_back(self.config.batch))?
                .into_iter()
                .collect();
            lead.reclaim = false;
        }
        let published = publish_batch(pg, redis, lead, self.config.batch, self.metrics)?;
        self.metrics.redis_up.store(true, Ordering::Relaxed);
        Ok(Turn::Published(published))
    }

    /// A follower takes the lease only when its own Redis answers and the lease is free.
    fn follow(&mut self) -> Result<Turn, RelayError> {
        let up = self.ping().is_ok();
        self.metrics.redis_up.store(up, Ordering::Relaxed);
        if !up {
            self.redis = None;
            return Ok(Turn::Following);
        }
        let Some(pg) = self.pg.as_mut() else {
            return Ok(Turn::Following);
        };
        let sent = Instant::now();
        let Some(mut term) = lease::acquire(pg, &self.holder).map_err(RelayError::Db)? else {
            return Ok(Turn::Following);
        };
        // LISTEN before the first batch, so a write committed after it wakes us.
        pg.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .map_err(RelayError::Db)?;
        self.listening = true;
        let redis = connect_redis(&mut self.redis, self.config)?;
        let skip = match fence::claim(redis, term.epoch, look_back(self.config.batch)) {
            Ok(ids) => ids,
            Err(FenceError::Fenced { newer }) => {
                // Redis has seen a newer epoch than the DB's lease row (a restored command DB):
                // we hold the lease, so that epoch's holder is gone; move past it.
                match lease::raise_epoch(pg, &self.holder, &term, newer + 1)
                    .map_err(RelayError::Db)?
                {
                    Some(raised) => term = raised,
                    None => {
                        // Not leading yet (`lead` is unset), so step_down would do nothing.
                        self.unlisten();
                        return Ok(Turn::Following);
                    }
                }
                fence::claim(redis, term.epoch, look_back(self.config.batch))?
            }
            Err(FenceError::Redis(e)) => {
                self.lead = Some(Leading::new(term, sent, HashSet::new()));
                self.step_down(true);
                return Err(RelayError::Redis(e));
            }
        };
        shared::info!(
            "relay: leading (epoch {}): this instance publishes the event log",
            term.epoch
        );
        self.metrics.relay_leader.store(true, Ordering::Relaxed);
        self.metrics
            .relay_epoch
            .store(term.epoch, Ordering::Relaxed);
        self.lead = Some(Leading::new(term, sent, skip.into_iter().collect()));
        Ok(Turn::Took)
    }

    /// Renews the lease at each renewal point if this interval earned it; steps down when the
    /// lease is gone.
    fn keep_lease(&mut self) -> Result<(), RelayError> {
        let Some(lead) = self.lead.as_ref() else {
            return Ok(());
        };
        if lead.interval_start.elapsed() >= RENEW_EVERY {
            let earned = !lead.redis_failed && self.ping().is_ok();
            let (Some(pg), Some(lead)) = (self.pg.as_mut(), self.lead.as_mut()) else {
                return Ok(());
            };
            lead.interval_start = Instant::now();
            lead.redis_failed = false;
            if earned {
                let sent = Instant::now();
                if !lease::renew(pg, &self.holder, &lead.term).map_err(RelayError::Db)? {
                    return Err(RelayError::LeaseLost);
                }
                lead.renewed = sent;
            } else {
                self.redis = None;
            }
        }
        match self.lead.as_ref() {
            // Judged by our own clock from when the last renewal was sent: the DB's expiry is
            // never earlier than this, so we stop before anyone else may start.
            Some(lead) if lead.renewed.elapsed() >= LEASE_TTL => Err(RelayError::LeaseLost),
            _ => Ok(()),
        }
    }

    fn ping(&mut self) -> Result<(), RelayError> {
        let redis = connect_redis(&mut self.redis, self.config)?;
        redis::cmd("PING")
            .query::<String>(redis)
            .map_err(RelayError::Redis)?;
        Ok(())
    }

    /// Leaves the leader role: stop listening (so notifications stop queueing for us), and on
    /// a clean stop hand the lease back at once.
    fn step_down(&mut self, release: bool) {
        let Some(lead) = self.lead.take() else {
            return;
        };
        self.metrics.relay_leader.store(false, Ordering::Relaxed);
        shared::warn!(
            "relay: no longer leading (epoch {}); another instance may publish",
            lead.term.epoch
        );
        self.unlisten();
        if release {
            if let Some(pg) = self.pg.as_mut() {
                if lease::release(pg, &self.holder, &lead.term).is_err() {
                    self.drop_session();
                }
            }
        }
    }

    /// Stops listening (if we do), so notifications stop queueing for us, and drops what was
    /// already sent to us. UNLISTEN's answer comes after every notification the backend sent
    /// before it, and the client reads (and buffers) those while waiting for it; the drain
    /// then empties the buffer.
    fn unlisten(&mut self) {
        if !self.listening {
            return;
        }
        if let Some(pg) = self.pg.as_mut() {
            if pg.batch_execute("UNLISTEN *").is_err() {
                // A broken session: drop it, which also ends the LISTEN.
                self.drop_session();
            }
        }
        self.listening = false;
        if self.drain().is_err() {
            self.drop_session();
        }
    }

    /// Forgets the session (closing it), and with it any LISTEN.
    fn drop_session(&mut self) {
        self.pg = None;
        self.listening = false;
    }

    /// Reads every notification that has reached our socket, so our LISTEN never holds back
    /// PostgreSQL's notification queue nor fills the socket. Waits at most [`DRAIN_WAIT`], and
    /// only while listening: that wait is what makes the client read the socket at all.
    fn drain(&mut self) -> Result<(), RelayError> {
        let listening = self.listening;
        if let Some(pg) = self.pg.as_mut() {
            let mut notifications = pg.notifications();
            if listening {
                // One wait pulls everything the socket holds into the client's buffer.
                notifications
                    .timeout_iter(DRAIN_WAIT)
                    .next()
                    .map_err(RelayError::Db)?;
            }
            let mut pending = notifications.iter();
            while pending.next().map_err(RelayError::Db)?.is_some() {}
        }
        Ok(())
    }

    /// Sleeps `d` (noticing a stop within [`STOP_CHECK`]), draining notifications meanwhile.
    fn pause(&mut self, d: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + d;
        while !stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.drain().is_err() {
                self.drop_session();
                self.step_down(false);
            }
            std::thread::sleep((deadline - now).min(STOP_CHECK));
        }
    }

    /// Waits up to the poll interval for a NOTIFY, then drains any others that queued meanwhile (one
    /// batch serves them all). Each wait is a fresh `timeout_iter` for the time left: a
    /// `TimeoutIter` that has timed out once answers `None` at once from then on, so reusing
    /// one would spin.
    fn wait_for_notification(&mut self, stop: &AtomicBool) {
        let Some(pg) = self.pg.as_mut() else {
            return;
        };
        let deadline = Instant::now() + self.config.poll;
        loop {
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::SeqCst) {
                break;
            }
            // Short slices so a SIGTERM is noticed within STOP_CHECK.
            let slice = (deadline - now).min(STOP_CHECK);
            match pg.notifications().timeout_iter(slice).next() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(_) => return, // the next turn finds the broken connection and reconnects
            }
        }
        let _ = self.drain();
    }
}

impl Leading {
    fn new(term: Term, sent: Instant, skip: HashSet<String>) -> Leading {
        Leading {
            term,
            renewed: sent,
            interval_start: Instant::now(),
            redis_failed: false,
            skip,
            reclaim: false,
        }
    }
}

/// Stream entries a claim looks back through for rows appended but never marked: the
/// previous term's last batch, and every batch of a leader whose Redis failed after its append
/// and before its commit (a new term or a re-claim follows each such failure, so they are few;
/// four batches' worth leaves room for three failures in a row).
fn look_back(batch: i64) -> i64 {
    batch.saturating_mul(4)
}

/// The relay's own session: keepalives so a dead DB host is noticed, and a statement timeout
/// so a hung one is too.
fn connect_pg(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(Duration::from_secs(2));
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
    Ok(client)
}

/// Connects if needed, names the connection `relay-<instance>` (so `CLIENT LIST` shows which
/// connection is the relay's, and a drill can cut exactly that one) and returns it.
fn connect_redis<'a>(
    slot: &'a mut Option<redis::Connection>,
    config: &RelayConfig,
) -> Result<&'a mut redis::Connection, RelayError> {
    if slot.is_none() {
        let client = redis::Client::open(config.redis_url.as_str()).map_err(RelayError::Redis)?;
        let mut conn = client
            .get_connection_with_timeout(REDIS_TIMEOUT)
            .map_err(RelayError::Redis)?;
        conn.set_read_timeout(Some(REDIS_TIMEOUT))
            .map_err(RelayError::Redis)?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))
            .map_err(RelayError::Redis)?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(client_name(&config.instance))
            .query::<()>(&mut conn)
            .map_err(RelayError::Redis)?;
        *slot = Some(conn);
    }
    slot.as_mut().ok_or_else(|| {
        RelayError::Redis(redis::RedisError::from((
            redis::ErrorKind::ClientError,
            "no redis connection",
        )))
    })
}

/// The Redis client name of an instance's relay connection: `relay-<instance>`, with anything
/// Redis does not allow in a name (spaces, newlines) replaced by `_`.
pub fn client_name(instance: &str) -> String {
    let safe: String = instance
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("relay-{safe}")
}

/// Publishes one batch; returns how many event-log rows it passed on (0 when nothing is
/// pending). Rows the previous term already appended (`lead.skip`) are marked, not appended.
fn publish_batch(
    pg: &mut Client,
    redis: &mut redis::Connection,
    lead: &mut Leading,
    batch: i64,
    metrics: &Metrics,
) -> Result<usize, RelayError> {
    let mut tx = pg.transaction().map_err(RelayError::Db)?;
    let rows = tx
        .query_typed(
            "SELECT position, event_id, event_type, report_id, version, payload, created_at \
             FROM event_log WHERE published_at IS NULL ORDER BY position LIMIT $1",
            &[(&batch, Type::INT8)],
        )
        .map_err(RelayError::Db)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut positions = Vec::with_capacity(rows.len());
    let mut entries: Vec<Fields> = Vec::with_capacity(rows.len());
    for row in &rows {
        let raw_type: &str = row.try_get(2).map_err(RelayError::Db)?;
        let event_type = raw_type.parse::<EventType>();
        let event = Event {
            position: row.try_get(0).map_err(RelayError::Db)?,
            event_id: row.try_get(1).map_err(RelayError::Db)?,
            // Placeholder for a type this version does not know; replaced below.
            event_type: event_type.clone().unwrap_or(EventType::ReportUpdated),
            report_id: row.try_get(3).map_err(RelayError::Db)?,
            version: row.try_get(4).map_err(RelayError::Db)?,
            payload: row.try_get(5).map_err(RelayError::Db)?,
            timestamp: row.try_get(6).map_err(RelayError::Db)?,
        };
        positions.push(event.position);
        if lead.skip.remove(&event.event_id.to_string()) {
            continue; // appended by the previous term, which died before marking it
        }
        let mut fields = event.to_fields();
        if event_type.is_err() {
            // Publish it as written (see the module doc): the codec's other fields stay
            // shared's; only the type is passed through untouched.
            for (name, value) in fields.iter_mut() {
                if *name == "event_type" {
                    raw_type.clone_into(value);
                }
            }
            metrics.relay_unknown_types.fetch_add(1, Ordering::Relaxed);
            shared::warn!(
                "relay: event-log position {} has event_type {raw_type:?}, unknown to this \
                 version; published as is (consumers that do not know it dead-letter it)",
                event.position
            );
        }
        entries.push(fields);
    }
    if !entries.is_empty() {
        fence::publish(redis, lead.term.epoch, &entries)?;
    }
    tx.query_typed(
        "UPDATE event_log SET published_at = now() WHERE position = ANY($1)",
        &[(&positions, Type::INT8_ARRAY)],
    )
    .map_err(RelayError::Db)?;
    tx.commit().map_err(RelayError::Db)?;
    Ok(positions.len())
}

//! The relay: publishes the command DB's event log to the Redis stream `report-events` in
//! position order and marks the rows published.
//!
//! Every command instance runs one, and they elect a leader: the relay whose connection holds
//! the session-level advisory lock publishes; the others only try to take the lock every
//! [`FOLLOWER_POLL`]. When the leader dies, its connection closes, the lock is released and a
//! follower takes over within that interval. One publisher keeps the stream in position order
//! and keeps the command DB free of N relays racing for every write.
//! A batch is: read up to `batch` unpublished rows, XADD them in one pipeline, mark them, commit.
//! A crash between XADD and COMMIT republishes the batch — at-least-once, which the projection
//! absorbs because events are versioned snapshots.
//!
//! **Invariant:** the request path never waits on Redis. When Redis is down, writes keep
//! committing and the backlog waits in the event log until Redis returns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::{Client, NoTls};
use shared::event::{Event, EventType, STREAM};

use crate::metrics::Metrics;
use crate::store::NOTIFY_CHANNEL;

/// Fixed key of the session-level advisory lock held by the leading (publishing) relay.
const RELAY_LOCK: i64 = 0x0072_656c_6179; // "relay"

/// How long the relay sleeps when there is no notification: a safety net for a missed NOTIFY
/// (a reconnect, another instance's writes while it held the lock), short enough that such an
/// event is still published within half a second.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Redis connect/read/write timeout: a hung Redis makes the relay back off, never hang.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a follower tries to become the leader: the longest a dead leader's backlog waits.
const FOLLOWER_POLL: Duration = Duration::from_millis(500);

/// Longest wait between attempts while Redis or the DB is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub database_url: String,
    pub redis_url: String,
    pub batch: i64,
}

/// The running relay thread; [`Relay::stop`] finishes the batch in flight and joins.
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
    /// An event-log row we did not write (an unknown type): needs a human, logged loudly.
    Corrupt(String),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Db(e) => write!(f, "command db: {e}"),
            RelayError::Redis(e) => write!(f, "redis: {e}"),
            RelayError::Corrupt(why) => write!(f, "corrupt event log row: {why}"),
        }
    }
}

fn run(config: &RelayConfig, metrics: &Metrics, schema_ready: &AtomicBool, stop: &AtomicBool) {
    // The leader's session: dropping it releases the lock (and a follower takes over).
    let mut pg: Option<Client> = None;
    let mut redis: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_error: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        if !schema_ready.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let leading = pg.is_some();
        let result = if leading {
            connect_redis(&mut redis, &config.redis_url).and_then(|()| {
                match (pg.as_mut(), redis.as_mut()) {
                    (Some(pg), Some(redis)) => publish_batch(pg, redis, config.batch).map(Some),
                    _ => Ok(Some(0)),
                }
            })
        } else {
            try_lead(&config.database_url).map(|won| {
                if let Some(client) = won {
                    shared::info!("relay: leading: this instance publishes the event log");
                    metrics.relay_leader.store(true, Ordering::Relaxed);
                    pg = Some(client);
                }
                None
            })
        };
        match result {
            // A follower: keep /ready's view of Redis true, try to lead again later.
            Ok(None) if pg.is_none() => {
                last_error = None;
                let up = connect_redis(&mut redis, &config.redis_url).is_ok()
                    && redis
                        .as_mut()
                        .is_some_and(|r| redis::cmd("PING").query::<String>(r).is_ok());
                if !up {
                    redis = None;
                }
                metrics.redis_up.store(up, Ordering::Relaxed);
                sleep_unless_stopped(FOLLOWER_POLL, stop);
            }
            Ok(None) => {} // just became the leader: publish at once
            Ok(Some(published)) => {
                metrics.redis_up.store(true, Ordering::Relaxed);
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
                    if let Some(pg) = pg.as_mut() {
                        wait_for_notification(pg, stop);
                    }
                }
            }
            Err(e) => {
                metrics.relay_errors.fetch_add(1, Ordering::Relaxed);
                match &e {
                    RelayError::Db(_) | RelayError::Corrupt(_) => {
                        if pg.take().is_some() {
                            metrics.relay_leader.store(false, Ordering::Relaxed);
                            shared::warn!(
                                "relay: lost the command-db session; leadership released"
                            );
                        }
                    }
                    RelayError::Redis(_) => {
                        metrics.redis_up.store(false, Ordering::Relaxed);
                        redis = None;
                    }
                }
                let text = e.to_string();
                // One line per outage, not one per retry.
                if last_error.as_deref() != Some(text.as_str()) {
                    shared::warn!("relay: {text}; writes continue, retrying with backoff");
                    last_error = Some(text);
                }
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    metrics.relay_leader.store(false, Ordering::Relaxed);
    shared::info!("relay: stopped");
}

/// Connects and tries to take the leader lock; on success the session LISTENs and is returned
/// (it must stay open: the lock lives as long as the session). A follower's connection is
/// closed again at once, so N instances cost one extra connection, not N.
fn try_lead(url: &str) -> Result<Option<Client>, RelayError> {
    let mut config: postgres::Config = url.parse().map_err(RelayError::Db)?;
    config.connect_timeout(Duration::from_secs(2));
    config.keepalives(true);
    let mut client = config.connect(NoTls).map_err(RelayError::Db)?;
    let won: bool = client
        .query_typed(
            "SELECT pg_try_advisory_lock($1)",
            &[(&RELAY_LOCK, Type::INT8)],
        )
        .map_err(RelayError::Db)?
        .first()
        .map(|r| r.get(0))
        .unwrap_or(false);
    if !won {
        return Ok(None);
    }
    client
        .batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
        .map_err(RelayError::Db)?;
    Ok(Some(client))
}

fn connect_redis(slot: &mut Option<redis::Connection>, url: &str) -> Result<(), RelayError> {
    if slot.is_none() {
        let client = redis::Client::open(url).map_err(RelayError::Redis)?;
        let conn = client
            .get_connection_with_timeout(REDIS_TIMEOUT)
            .map_err(RelayError::Redis)?;
        conn.set_read_timeout(Some(REDIS_TIMEOUT))
            .map_err(RelayError::Redis)?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))
            .map_err(RelayError::Redis)?;
        *slot = Some(conn);
    }
    Ok(())
}

/// Publishes one batch; returns how many events it published (0 when nothing is pending).
fn publish_batch(
    pg: &mut Client,
    redis: &mut redis::Connection,
    batch: i64,
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
    let mut pipe = redis::pipe();
    let mut positions = Vec::with_capacity(rows.len());
    for row in &rows {
        let event = Event {
            position: row.try_get(0).map_err(RelayError::Db)?,
            event_id: row.try_get(1).map_err(RelayError::Db)?,
            event_type: row
                .try_get::<_, &str>(2)
                .map_err(RelayError::Db)?
                .parse::<EventType>()
                .map_err(|e| RelayError::Corrupt(e.to_string()))?,
            report_id: row.try_get(3).map_err(RelayError::Db)?,
            version: row.try_get(4).map_err(RelayError::Db)?,
            payload: row.try_get(5).map_err(RelayError::Db)?,
            timestamp: row.try_get(6).map_err(RelayError::Db)?,
        };
        positions.push(event.position);
        pipe.xadd(STREAM, "*", &event.to_fields()).ignore();
    }
    pipe.query::<()>(redis).map_err(RelayError::Redis)?;
    tx.query_typed(
        "UPDATE event_log SET published_at = now() WHERE position = ANY($1)",
        &[(&positions, Type::INT8_ARRAY)],
    )
    .map_err(RelayError::Db)?;
    tx.commit().map_err(RelayError::Db)?;
    Ok(positions.len())
}

/// Waits up to [`IDLE_POLL`] for a NOTIFY, then drains any others that queued meanwhile (one
/// batch serves them all). Each wait is a fresh `timeout_iter` for the time left: a
/// `TimeoutIter` that has timed out once answers `None` at once from then on, so reusing one
/// would spin.
fn wait_for_notification(pg: &mut Client, stop: &AtomicBool) {
    let deadline = Instant::now() + IDLE_POLL;
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
            Err(_) => return, // the next batch finds the broken connection and reconnects
        }
    }
    let mut notifications = pg.notifications();
    let mut rest = notifications.iter();
    while let Ok(Some(_)) = rest.next() {}
}

/// How often an idle relay looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

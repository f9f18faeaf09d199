//! `bench --burst S`: what comes before the open-loop runs of `--runs N` — a closed-loop POST
//! burst of `S` seconds (every connection sends its next create as soon as the last one is
//! answered), then a wait until the pipeline has drained it: every event-log row published
//! and every query DB's checkpoint at the last position the burst wrote. The runs that follow
//! then start on a system that has just been pushed to its write ceiling, which is where a
//! checkpoint, an autovacuum or the projection's catch-up used to show in the next run's tail.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};

use super::config::{CONNECTION_STACK, GENERATOR_THREADS, REQUEST_TIMEOUT};
use crate::http::{Conn, Target};
use crate::ops::seed::report_body;
use crate::rng::Rng;

/// Connections of the burst: as many as `bench --throughput` gives wrk for POST, enough to
/// keep every command instance's pool busy.
pub const BURST_CONNECTIONS: usize = 32;
/// The pipeline must have drained the burst within this long, or the sequence fails: a
/// few seconds of POSTs are a few thousand events, which the projection applies in seconds.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two looks at the event log and the checkpoints while draining.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// What the burst did and how long the pipeline took to drain it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BurstReport {
    pub duration_s: f64,
    pub connections: u64,
    /// 2xx answers.
    pub created: u64,
    pub errors: u64,
    pub created_per_s: f64,
    /// From the burst's end until every query DB held its last event.
    pub drained_after_s: f64,
    /// The event-log position the query DBs had to reach.
    pub last_position: i64,
}

/// POSTs `/reports` on `connections` keep-alive connections for `duration`, closed loop.
pub fn post_burst(
    write_url: &str,
    token: Option<&str>,
    duration: Duration,
    connections: usize,
) -> Result<BurstReport> {
    let target = Target::parse(write_url).context("write URL")?;
    let timeout = REQUEST_TIMEOUT;
    let created = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    shared::startup::configure_may(GENERATOR_THREADS, CONNECTION_STACK);
    let started = Instant::now();
    let until = started + duration;
    // Everything the coroutines borrow lives outside the scope; the scope polls until the
    // last of them has finished.
    may::cqueue::scope(|cq| {
        for n in 0..connections {
            let (target, created, errors) = (&target, &created, &errors);
            cq.add(n, move |_events| {
                let mut conn =
                    Conn::<may::net::TcpStream>::over(target.clone(), timeout).with_token(token);
                let mut rng = Rng::from_time(n as u64);
                while Instant::now() < until {
                    let (body, _) = report_body(&mut rng);
                    match conn.request("POST", "/reports", Some(&body)) {
                        Ok(r) if r.ok() => created.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while cq.poll(None).is_ok() {}
    });
    let secs = started.elapsed().as_secs_f64();
    let created = created.load(Ordering::SeqCst);
    Ok(BurstReport {
        duration_s: secs,
        connections: connections as u64,
        created,
        errors: errors.load(Ordering::SeqCst),
        created_per_s: (created as f64 / secs.max(f64::EPSILON)).round(),
        drained_after_s: 0.0,
        last_position: 0,
    })
}

/// The position of the stream's last entry once every event-log row is published.
///
/// A checkpoint's position is that of the last stream entry its DB applied, and the stream is
/// in publication order, not position order: positions are taken when a write starts and rows
/// commit in another order, so the last row published can have a lower position than the
/// highest (seen: a DB waiting at 121 615 for 121 687 that it had applied long before). Once
/// every row is published, the stream ends with the highest position of the relay's last batch
/// (`published_at` is that transaction's time, its rows appended in position order).
pub(super) fn stream_tail(command: &mut Client) -> Result<Option<i64>> {
    Ok(command
        .query_opt(
            "SELECT position FROM event_log WHERE published_at IS NOT NULL \
             ORDER BY published_at DESC, position DESC LIMIT 1",
            &[],
        )?
        .map(|r| r.get(0)))
}

/// Whether a DB whose checkpoint is at `at` has applied every event up to position `last`,
/// the stream ending at `tail` ([`stream_tail`]).
pub(super) fn applied_all(at: i64, last: i64, tail: Option<i64>) -> bool {
    at >= last || Some(at) == tail
}

/// Waits until the relay has published every event-log row and every query DB's checkpoint
/// has reached the last position; returns that position.
pub fn drain(command_db: &str, query_dbs: &[(String, String)]) -> Result<i64> {
    let connect =
        |url: &str| Client::connect(url, NoTls).with_context(|| format!("connect to {url}"));
    let mut command = connect(command_db)?;
    let mut dbs = query_dbs
        .iter()
        .map(|(name, url)| Ok((name.clone(), connect(url)?)))
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let last: i64 = command
        .query_one("SELECT coalesce(max(position), 0) FROM event_log", &[])?
        .get(0);
    loop {
        let unpublished: i64 = command
            .query_one(
                "SELECT count(*) FROM event_log WHERE published_at IS NULL",
                &[],
            )?
            .get(0);
        let tail = if unpublished == 0 {
            stream_tail(&mut command)?
        } else {
            None
        };
        let mut behind = Vec::new();
        for (name, c) in &mut dbs {
            let at: i64 = c
                .query_opt(
                    "SELECT position FROM checkpoint WHERE stream = $1",
                    &[&shared::event::STREAM],
                )?
                .map_or(0, |r| r.get(0));
            if !applied_all(at, last, tail) {
                behind.push(format!("{name} at {at}"));
            }
        }
        if unpublished == 0 && behind.is_empty() {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            bail!(
                "the burst did not drain within {} s: {unpublished} event-log rows unpublished, query DBs behind position {last}: {}",
                DRAIN_TIMEOUT.as_secs(),
                behind.join(", ")
            );
        }
        std::thread::sleep(DRAIN_POLL);
    }
}

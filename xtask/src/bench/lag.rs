//! Propagation lag of `bench`: for a sample of writes, how long after the command service's
//! 2xx answer each query DB holds that version. One thread per query DB polls its DB directly
//! over SQL (`SELECT id, version FROM read_reports WHERE id = ANY($1)`, one round trip for all
//! pending samples), so the figure is the pipeline's (relay → stream → projection → DB), not
//! the query service's.

use std::collections::HashMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use uuid::Uuid;

use super::report::{new_histogram, record, LagReport, Propagation};

/// Pause between polls of one DB. 2 ms keeps the measurement error well under the lags we
/// care about (tens of ms) while costing the DB a few hundred cheap index lookups per second.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// A sampled write not visible after this long counts as not visible (and stops being polled).
pub const VISIBLE_WITHIN: Duration = Duration::from_secs(15);

/// One sampled write.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub seq: u64,
    pub id: Uuid,
    pub version: i64,
    /// When the 2xx answer arrived.
    pub written: Instant,
}

/// The pollers, one per query DB; feed them through the [`LagFeed`] returned with them, drop
/// every feed, then [`Sampler::finish`].
pub struct Sampler {
    threads: Vec<(String, JoinHandle<DbResult>)>,
}

/// The sending side: hands each sample to every DB's poller.
#[derive(Clone)]
pub struct LagFeed {
    senders: Vec<Sender<Sample>>,
}

impl LagFeed {
    pub fn send(&self, sample: Sample) {
        for tx in &self.senders {
            let _ = tx.send(sample);
        }
    }
}

struct DbResult {
    seen: HashMap<u64, Duration>,
    hist: Histogram<u64>,
    not_visible: u64,
    error: Option<String>,
}

impl Sampler {
    /// Connects to each DB (`name`, `postgres://…`) in its own thread.
    pub fn start(dbs: &[(String, String)]) -> Result<(LagFeed, Sampler)> {
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for (name, url) in dbs {
            let (tx, rx) = crossbeam_channel::unbounded();
            let url = url.clone();
            let thread_name = name.clone();
            let handle = std::thread::Builder::new()
                .name(format!("lag-{name}"))
                .spawn(move || poll_db(&thread_name, &url, &rx))
                .context("spawn lag sampler thread")?;
            senders.push(tx);
            threads.push((name.clone(), handle));
        }
        Ok((LagFeed { senders }, Sampler { threads }))
    }

    /// Waits until every pending sample is seen or times out (every [`LagFeed`] must be
    /// dropped first), and sums up.
    pub fn finish(self, sampled: u64) -> Propagation {
        let mut per_db = Vec::new();
        let mut results = Vec::new();
        for (name, handle) in self.threads {
            let r = handle.join().unwrap_or_else(|_| DbResult {
                seen: HashMap::new(),
                hist: new_histogram(),
                not_visible: 0,
                error: Some("lag sampler thread panicked".into()),
            });
            per_db.push(LagReport::of(
                &name,
                &r.hist,
                r.not_visible,
                r.error.clone(),
            ));
            results.push(r);
        }
        // Visible everywhere = the slowest DB's time, for samples every DB saw.
        let mut all = new_histogram();
        let mut not_everywhere = 0;
        for seq in 0..sampled {
            let times: Option<Vec<Duration>> =
                results.iter().map(|r| r.seen.get(&seq).copied()).collect();
            match times.and_then(|t| t.into_iter().max()) {
                Some(max) => record(&mut all, max),
                None => not_everywhere += 1,
            }
        }
        Propagation {
            sampled,
            all: LagReport::of("every query DB", &all, not_everywhere, None),
            per_db,
        }
    }
}

fn poll_db(name: &str, url: &str, rx: &Receiver<Sample>) -> DbResult {
    let mut result = DbResult {
        seen: HashMap::new(),
        hist: new_histogram(),
        not_visible: 0,
        error: None,
    };
    let mut client = match postgres::Client::connect(url, postgres::NoTls) {
        Ok(c) => Some(c),
        Err(e) => {
            result.error = Some(format!("connect to {name}: {e}"));
            None
        }
    };
    let mut pending: Vec<Sample> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(s) => pending.push(s),
                Err(_) => break,
            }
        }
        while let Ok(s) = rx.try_recv() {
            pending.push(s);
        }
        let Some(c) = client.as_mut() else {
            // No connection: every sample counts as not measured on this DB.
            result.not_visible += pending.len() as u64;
            pending.clear();
            continue;
        };
        let ids: Vec<Uuid> = pending.iter().map(|s| s.id).collect();
        match c.query(
            "SELECT id, version FROM read_reports WHERE id = ANY($1)",
            &[&ids],
        ) {
            Ok(rows) => {
                let now = Instant::now();
                let versions: HashMap<Uuid, i64> = rows
                    .iter()
                    .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
                    .collect();
                pending.retain(|s| match versions.get(&s.id) {
                    Some(v) if *v >= s.version => {
                        let lag = now.saturating_duration_since(s.written);
                        record(&mut result.hist, lag);
                        result.seen.insert(s.seq, lag);
                        false
                    }
                    _ => true,
                });
            }
            Err(e) => {
                if result.error.is_none() {
                    result.error = Some(format!("poll {name}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(100));
                if c.is_closed() {
                    client = postgres::Client::connect(url, postgres::NoTls).ok();
                }
            }
        }
        let before = pending.len();
        pending.retain(|s| s.written.elapsed() < VISIBLE_WITHIN);
        result.not_visible += (before - pending.len()) as u64;
        std::thread::sleep(POLL_INTERVAL);
    }
    result
}

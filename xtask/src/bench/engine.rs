//! The open-loop engine of `bench`: the calling thread paces the schedule, handing each request
//! at its intended send time to a **fixed** set of keep-alive connections per side (writes →
//! write URL, reads → read URL), each a may coroutine; a collector thread owns the histograms
//! and prints the progress line; lag pollers watch the query DBs.
//!
//! Open loop means the schedule never waits for answers, and latency always counts from the
//! intended time, so a stall shows in full in the tail (no coordinated omission). The
//! connection count never grows: when a stalled server holds every connection of a side, the
//! requests due meanwhile wait in the generator's queue — that wait is the server's doing and
//! counts in their latency, and the report says how many waited (`queued_for_connection`).
//!
//! The generator's **own** lateness is measured apart: the pacer waking after a request's
//! intended time, plus the hand-over to a connection that was idle when the request was
//! queued. Only that can make the generator, not the server, the limit of a run, and only that
//! raises the report's warning. (An earlier engine started a thread per outstanding request:
//! on two cores a slow server made it start hundreds, which slowed everything further and
//! blurred the generator's stall with the server's.)
//!
//! Coroutines are started through `may::cqueue::scope`, may's one safe way to start them
//! (this workspace forbids `unsafe`); every coroutine has finished before the scope returns,
//! and none holds a thread-local across a wait (coroutines move between may's threads).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, Receiver, Sender};
use hdrhistogram::Histogram;
use uuid::Uuid;

use super::config::{BenchConfig, CONNECTION_STACK, GENERATOR_THREADS};
use super::lag::{LagFeed, Sample, Sampler};
use super::report::{new_histogram, record, BenchReport, EndpointReport, Generator, Latency};
use super::schedule::{Endpoint, Schedule, Side, Wrr, WRITE_MIX};
use crate::http::{Conn, HttpError, Response, Target};
use crate::ops::seed::{report_body, CATEGORIES, CITIES, SEARCH_TERMS};
use crate::rng::Rng;

/// A request the generator itself sent later than this after its intended time counts as
/// late. 5 ms is far above scheduling noise (tens of µs) and below the latencies the bench
/// exists to see.
const LATE_SEND: Duration = Duration::from_millis(5);
/// More than this share of late sends means the generator limited the run...
const LATE_SHARE_LIMIT: f64 = 0.01;
/// ...provided there are at least this many: one descheduled thread on a busy machine is
/// noise, not a limit.
const LATE_MIN: u64 = 5;
/// A report this run created becomes readable by id after this long, so a by-id read of it
/// measures the read path, not the projection's lag (which is measured separately).
const READABLE_AFTER: Duration = Duration::from_secs(2);
/// Lead time before the first intended send, once every connection is open and waiting.
const START_LEAD: Duration = Duration::from_millis(50);
/// Nice value the generator runs at (its pacer, and the collector and may threads it starts,
/// which inherit it). On a machine shared with other work a sleeping thread at the default
/// priority wakes tens of milliseconds late (load 50 on two cores: the pacer 100–250 ms
/// behind, up to half the requests sent late), and a pacer that sleeps between requests pays
/// that on every one; at -10 the kernel gives it the CPU first. The generator itself needs
/// ~20 % of one core at stress (2.0 s of CPU for a 10 s run at 1 000 req/s, the lag pollers
/// included), so this takes little from the servers it measures.
/// Lowering the nice value needs root (or CAP_SYS_NICE); without it the run goes on as is.
const GENERATOR_NICE: i32 = -10;
/// The pacer waits at most this long for the connections to open before it starts the
/// schedule anyway (a connection that could not open retries with its first request, and its
/// connect error is counted there).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// One request to make.
struct Job {
    endpoint: Endpoint,
    intended: Instant,
    /// When the pacer put it in its side's queue.
    queued: Instant,
    /// A connection of its side was idle when it was queued: any wait after that is the
    /// generator's own.
    idle_at_queue: bool,
}

/// What happened to one request.
struct Outcome {
    /// What was actually executed (an update without a report to update becomes a create).
    endpoint: Endpoint,
    job_intended: Instant,
    job_queued: Instant,
    idle_at_queue: bool,
    picked: Instant,
    done: Instant,
    result: Result<(u16, Option<String>), &'static str>,
}

impl Outcome {
    /// The generator's own delay: the pacer late, plus a hand-over to an idle connection.
    fn own_delay(&self) -> Duration {
        own_delay(
            self.job_intended,
            self.job_queued,
            self.picked,
            self.idle_at_queue,
        )
    }

    /// Time spent waiting for a connection of its side to come free (the server's doing).
    fn connection_wait(&self) -> Duration {
        if self.idle_at_queue {
            Duration::ZERO
        } else {
            self.picked.saturating_duration_since(self.job_queued)
        }
    }
}

/// The generator's own share of a request's delay before it was sent: how late the pacer
/// queued it, and, when a connection was idle at that moment, how long the hand-over took.
/// When every connection was busy, the wait in the queue is the server's (it held them).
fn own_delay(intended: Instant, queued: Instant, picked: Instant, idle_at_queue: bool) -> Duration {
    let pacer = queued.saturating_duration_since(intended);
    if idle_at_queue {
        pacer + picked.saturating_duration_since(queued)
    } else {
        pacer
    }
}

/// A report this run created and may change.
struct Known {
    id: String,
    version: i64,
    /// Deletes only take these, so the by-id read set is never deleted under the readers.
    deletable: bool,
    step: u32,
}

#[derive(Default)]
struct Pools {
    writable: Vec<Known>,
    /// Ids to read by id, with when each becomes readable.
    readable: Vec<(String, Instant)>,
}

/// What the connections share.
struct Shared {
    write: Target,
    read: Target,
    token: Option<String>,
    timeout: Duration,
    pools: Mutex<Pools>,
    outcomes: Sender<Outcome>,
    lag: Option<LagFeed>,
    lag_every: u64,
    lag_seq: AtomicU64,
    writes_done: AtomicU64,
    /// Per side (write, read): idle connections minus queued requests; ≤ 0 means the next
    /// request waits for a connection.
    idle: [AtomicI64; 2],
    /// Per side: connections opened (a reconnect after the server closed one counts again).
    opened: [AtomicU64; 2],
    /// Connections that have tried to open and wait for their first request.
    ready: AtomicU64,
}

fn slot(side: Side) -> usize {
    match side {
        Side::Write => 0,
        Side::Read => 1,
    }
}

/// What the pacer saw of its own timing.
struct Paced {
    behind_max: Duration,
}

/// Runs one fixed-rate bench.
pub fn run_fixed(cfg: &BenchConfig) -> Result<BenchReport> {
    // Before any thread is started: they inherit it.
    prioritise();
    let write = Target::parse(&cfg.write_url).context("--write-url")?;
    let read = Target::parse(&cfg.read_url).context("--read-url")?;
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    preflight(cfg, &write, &read)?;
    let readable = prefetch_ids(&read, cfg.timeout);
    let connections = cfg.connections.max(1);

    let (lag_feed, sampler) = if cfg.query_dbs.is_empty() {
        (None, None)
    } else {
        let (feed, sampler) = Sampler::start(&cfg.query_dbs)?;
        (Some(feed), Some(sampler))
    };
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let now = Instant::now();
    let shared = Shared {
        write,
        read,
        token: cfg.token.clone(),
        timeout: cfg.timeout,
        pools: Mutex::new(Pools {
            writable: Vec::new(),
            readable: readable.into_iter().map(|id| (id, now)).collect(),
        }),
        outcomes: out_tx,
        lag: lag_feed,
        lag_every: cfg.lag_every.max(1),
        lag_seq: AtomicU64::new(0),
        writes_done: AtomicU64::new(0),
        idle: [AtomicI64::new(0), AtomicI64::new(0)],
        opened: [AtomicU64::new(0), AtomicU64::new(0)],
        ready: AtomicU64::new(0),
    };
    let collector = {
        let progress = cfg.progress.then_some(cfg.duration);
        std::thread::Builder::new()
            .name("bench-collector".into())
            .spawn(move || collect(&out_rx, progress))
            .context("spawn collector thread")?
    };

    shared::startup::configure_may(GENERATOR_THREADS, CONNECTION_STACK);
    let (write_tx, write_rx) = may::sync::mpmc::channel::<Job>();
    let (read_tx, read_rx) = may::sync::mpmc::channel::<Job>();
    // Everything the coroutines borrow lives outside the scope, and the scope polls until the
    // last of them has finished: none outlives what it borrows.
    let paced = may::cqueue::scope(|cq| {
        let sides = [
            (Side::Write, cfg.write_rps, &write_rx),
            (Side::Read, cfg.read_rps, &read_rx),
        ];
        let mut token = 0;
        for (side, rps, rx) in sides {
            if rps <= 0.0 {
                continue;
            }
            for _ in 0..connections {
                let rx = rx.clone();
                let shared = &shared;
                let n = token as u64;
                cq.add(token, move |_events| connection(shared, side, &rx, n));
                token += 1;
            }
        }
        // Connects are not part of any request's latency: every connection opens first.
        let deadline = Instant::now() + OPEN_TIMEOUT;
        while shared.ready.load(Ordering::SeqCst) < token as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let paced = pace(cfg, &shared, write_tx, read_tx);
        // The senders are gone: each coroutine ends once its queue is empty.
        while cq.poll(None).is_ok() {}
        paced
    });
    drop((write_rx, read_rx));
    let opened = [
        shared.opened[0].load(Ordering::SeqCst),
        shared.opened[1].load(Ordering::SeqCst),
    ];
    let Shared {
        lag,
        lag_seq,
        outcomes,
        ..
    } = shared;
    // The collector ends when the last outcome sender is gone; the pollers when every feed is.
    drop(outcomes);
    drop(lag);
    let sampled = lag_seq.load(Ordering::SeqCst);
    let collected = collector
        .join()
        .map_err(|_| anyhow::anyhow!("bench collector thread panicked"))?;
    let propagation = sampler.map(|s| s.finish(sampled));

    let secs = cfg.duration.as_secs_f64();
    let mut endpoints = Vec::new();
    let mut writes = Acc::default();
    let mut reads = Acc::default();
    for e in Endpoint::ALL {
        let Some(acc) = collected.per_endpoint.get(&e) else {
            continue;
        };
        match e.side() {
            Side::Write => writes.merge(acc),
            Side::Read => reads.merge(acc),
        }
        endpoints.push(acc.report(e.name(), secs));
    }
    let sent = writes.sent + reads.sent;
    let behind_max = paced.behind_max;
    let (bottleneck, warning) = judge(collected.late, sent, behind_max);
    let own = Latency::of(&collected.own);
    let wait = Latency::of(&collected.wait);
    let instances = collected
        .instances
        .into_iter()
        .map(|(side, m)| {
            let key = match side {
                Side::Write => "write",
                Side::Read => "read",
            };
            (key.to_string(), m)
        })
        .collect();
    Ok(BenchReport {
        level: cfg.level.clone(),
        started_at,
        duration_s: secs,
        write_rps: cfg.write_rps,
        read_rps: cfg.read_rps,
        write_url: cfg.write_url.clone(),
        read_url: cfg.read_url.clone(),
        mix: cfg.mix.to_map(),
        endpoints,
        writes: writes.report("all writes", secs),
        reads: reads.report("all reads", secs),
        instances,
        propagation,
        generator: Generator {
            connections_per_side: connections as u64,
            connections_opened: opened[0] + opened[1],
            late_sends: collected.late,
            late_threshold_ms: LATE_SEND.as_secs_f64() * 1000.0,
            own_delay_p99_ms: own.p99_ms,
            own_delay_max_ms: own.max_ms,
            scheduler_behind_max_ms: behind_max.as_secs_f64() * 1000.0,
            queued_for_connection: collected.queued,
            connection_wait_p99_ms: wait.p99_ms,
            connection_wait_max_ms: wait.max_ms,
            bottleneck,
            warning,
        },
        steps: Vec::new(),
        max_sustained_rps: None,
        rss: Vec::new(),
        burst: None,
    })
}

/// Runs the calling thread (the pacer), and every thread it starts from now on, at
/// [`GENERATOR_NICE`]. Linux sets a nice value per thread, so it is the thread's id
/// (`/proc/thread-self/stat`) that `renice` gets; we forbid `unsafe`, so no `setpriority`.
fn prioritise() {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return;
    };
    let Some(tid) = stat.split_whitespace().next() else {
        return;
    };
    // Best effort: without the privilege the run keeps the default priority.
    let _ = std::process::Command::new("renice")
        .args(["-n", &GENERATOR_NICE.to_string(), "-p", tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Whether the generator's own lateness limited a run of `sent` requests, and the warning
/// that says so. Waiting for a busy connection never counts: that is the server's time.
fn judge(late: u64, sent: u64, behind_max: Duration) -> (bool, Option<String>) {
    let late_share = late as f64 / sent.max(1) as f64;
    let bottleneck = late_share > LATE_SHARE_LIMIT && late >= LATE_MIN;
    let warning = bottleneck.then(|| {
        let mut w = format!(
            "the generator limited this run: it sent {late} of {sent} requests ({:.1} %) more than {} ms after their intended time by its own delay (not waiting for the server)",
            late_share * 100.0,
            LATE_SEND.as_millis()
        );
        if behind_max > LATE_SEND {
            w.push_str(&format!(
                "; the pacer itself woke up to {:.1} ms behind the schedule (CPU starved?)",
                behind_max.as_secs_f64() * 1000.0
            ));
        }
        w.push_str(". Latencies still count from the intended time, but part of the tail is the generator's.");
        w
    });
    (bottleneck, warning)
}

/// The schedule on the calling thread: sleeps until each intended time and queues the request
/// for its side's connections. Dropping the senders at the end lets the connections finish.
fn pace(
    cfg: &BenchConfig,
    shared: &Shared,
    write_tx: may::sync::mpmc::Sender<Job>,
    read_tx: may::sync::mpmc::Sender<Job>,
) -> Paced {
    let mut write_wrr = Wrr::new(&WRITE_MIX);
    let mut read_wrr = Wrr::new(&cfg.mix.weights());
    let mut behind_max = Duration::ZERO;
    let start = Instant::now() + START_LEAD;
    for (side, at) in Schedule::new(start, cfg.duration, cfg.write_rps, cfg.read_rps) {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let queued = Instant::now();
        behind_max = behind_max.max(queued.saturating_duration_since(at));
        let (endpoint, tx) = match side {
            Side::Write => (write_wrr.next(), &write_tx),
            Side::Read => (read_wrr.next(), &read_tx),
        };
        let Some(endpoint) = endpoint else { continue };
        let idle_at_queue = shared.idle[slot(side)].fetch_sub(1, Ordering::SeqCst) > 0;
        // Every connection of this side would have to have ended; they only end once the
        // senders are dropped, so this cannot fail while we hold them.
        let _ = tx.send(Job {
            endpoint,
            intended: at,
            queued,
            idle_at_queue,
        });
    }
    Paced { behind_max }
}

/// One keep-alive connection of `side`, for the whole run: takes the next queued request,
/// makes it, reports it.
fn connection(shared: &Shared, side: Side, jobs: &may::sync::mpmc::Receiver<Job>, n: u64) {
    let (target, token) = match side {
        Side::Write => (&shared.write, shared.token.as_deref()),
        Side::Read => (&shared.read, None),
    };
    let mut conn =
        Conn::<may::net::TcpStream>::over(target.clone(), shared.timeout).with_token(token);
    let mut rng = Rng::from_time(n);
    // A failed open is retried by the first request, which then reports the error.
    let _ = conn.open();
    shared.opened[slot(side)].fetch_add(conn.connects(), Ordering::SeqCst);
    let idle = &shared.idle[slot(side)];
    idle.fetch_add(1, Ordering::SeqCst);
    shared.ready.fetch_add(1, Ordering::SeqCst);
    while let Ok(job) = jobs.recv() {
        let picked = Instant::now();
        let before = conn.connects();
        let (endpoint, result) = execute(shared, &mut conn, &mut rng, job.endpoint);
        let done = Instant::now();
        shared.opened[slot(side)].fetch_add(conn.connects() - before, Ordering::SeqCst);
        idle.fetch_add(1, Ordering::SeqCst);
        let _ = shared.outcomes.send(Outcome {
            endpoint,
            job_intended: job.intended,
            job_queued: job.queued,
            idle_at_queue: job.idle_at_queue,
            picked,
            done,
            result: result.map(|r| (r.status, r.instance)).map_err(|e| e.kind()),
        });
    }
}

/// Fails fast, with a hint, when an endpoint is not there at all (rather than after a whole
/// run of connect errors).
fn preflight(cfg: &BenchConfig, write: &Target, read: &Target) -> Result<()> {
    let check = |what: &str, url: &str, t: &Target| -> Result<()> {
        let mut conn = Conn::new(t.clone(), cfg.timeout);
        match conn.request("GET", "/health", None) {
            Ok(_) => Ok(()),
            Err(e) => bail!(
                "{what} endpoint {url} is not answering ({e}); is the cluster up (`cargo xtask up --commands 2 --queries 2 --detach`)?"
            ),
        }
    };
    if cfg.write_rps > 0.0 {
        check("write", &cfg.write_url, write)?;
    }
    if cfg.read_rps > 0.0 {
        check("read", &cfg.read_url, read)?;
    }
    Ok(())
}

/// Ids of existing reports, so by-id reads have something to read from the first second.
fn prefetch_ids(read: &Target, timeout: Duration) -> Vec<String> {
    let mut conn = Conn::new(read.clone(), timeout);
    let Ok(resp) = conn.request("GET", "/reports?per_page=100", None) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return Vec::new();
    };
    json.get("data")
        .and_then(|d| d.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|r| r.get("id")?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The bench's connections park their coroutine, not their thread, while they wait.
type BenchConn = Conn<may::net::TcpStream>;

/// Does one request of `endpoint` (or a substitute when its precondition is missing) and
/// updates the pools of known reports from the answer.
/// `conn` is a connection of the endpoint's side, and a substitute is always of that side.
fn execute(
    shared: &Shared,
    conn: &mut BenchConn,
    rng: &mut Rng,
    endpoint: Endpoint,
) -> (Endpoint, Result<Response, HttpError>) {
    match endpoint {
        Endpoint::Create => (Endpoint::Create, create(shared, conn, rng)),
        Endpoint::Update => {
            let Some(mut known) = take_writable(shared, rng, false) else {
                return (Endpoint::Create, create(shared, conn, rng));
            };
            let body = update_body(&known, rng);
            let result = conn.request("PUT", &format!("/reports/{}", known.id), Some(&body));
            if let Ok(resp) = &result {
                if resp.ok() {
                    if let Some(v) = resp.version() {
                        known.version = v;
                        sample_lag(shared, &known.id, v);
                    }
                }
            }
            known.step += 1;
            if let Ok(mut pools) = shared.pools.lock() {
                pools.writable.push(known);
            }
            (Endpoint::Update, result)
        }
        Endpoint::Delete => {
            let Some(known) = take_writable(shared, rng, true) else {
                return (Endpoint::Create, create(shared, conn, rng));
            };
            let result = conn.request("DELETE", &format!("/reports/{}", known.id), None);
            let gone = matches!(&result, Ok(r) if r.ok() || r.status == 404);
            if !gone {
                if let Ok(mut pools) = shared.pools.lock() {
                    pools.writable.push(known);
                }
            }
            (Endpoint::Delete, result)
        }
        Endpoint::List => {
            let page = 1 + rng.below(5);
            (
                Endpoint::List,
                conn.request("GET", &format!("/reports?page={page}"), None),
            )
        }
        Endpoint::ById => match readable_id(shared, rng) {
            Some(id) => (
                Endpoint::ById,
                conn.request("GET", &format!("/reports/{id}"), None),
            ),
            // Nothing readable yet (an empty database): read the first page instead.
            None => (Endpoint::List, conn.request("GET", "/reports?page=1", None)),
        },
        Endpoint::History => match readable_id(shared, rng) {
            Some(id) => (
                Endpoint::History,
                conn.request("GET", &format!("/reports/{id}/history"), None),
            ),
            None => (Endpoint::List, conn.request("GET", "/reports?page=1", None)),
        },
        Endpoint::Near => (Endpoint::Near, conn.request("GET", &near_path(rng), None)),
        Endpoint::Search => (
            Endpoint::Search,
            conn.request("GET", &search_path(rng), None),
        ),
        Endpoint::ByCategory => {
            let category = rng.pick(&CATEGORIES).copied().unwrap_or("lainnya");
            let page = 1 + rng.below(2);
            (
                Endpoint::ByCategory,
                conn.request(
                    "GET",
                    &format!("/reports?category={category}&page={page}"),
                    None,
                ),
            )
        }
        Endpoint::Stats => (Endpoint::Stats, conn.request("GET", "/statistics", None)),
        Endpoint::Health => (Endpoint::Health, conn.request("GET", "/health", None)),
    }
}

/// A report id that is readable by now (see [`READABLE_AFTER`]), if any.
fn readable_id(shared: &Shared, rng: &mut Rng) -> Option<String> {
    let now = Instant::now();
    let pools = shared.pools.lock().ok()?;
    let ready: Vec<&String> = pools
        .readable
        .iter()
        .filter(|(_, at)| *at <= now)
        .map(|(id, _)| id)
        .collect();
    rng.pick(&ready).map(|s| (*s).clone())
}

/// `near=` around one of the seeded kelurahan with the default radius, where `seed` and the
/// bench's own creates put reports.
fn near_path(rng: &mut Rng) -> String {
    let city = rng.pick(&CITIES).unwrap_or(&CITIES[0]);
    let (lat, lng) = rng
        .pick(city.districts)
        .map_or((city.lat, city.lng), |d| (d.lat, d.lng));
    format!("/reports?near={lat:.4},{lng:.4}&radius_m=1000")
}

/// `q=` with one of the words seeded reports contain, spaces percent-encoded.
fn search_path(rng: &mut Rng) -> String {
    let term = rng.pick(SEARCH_TERMS).copied().unwrap_or("sampah");
    format!("/reports?q={}", term.replace(' ', "%20"))
}

fn create(shared: &Shared, conn: &mut BenchConn, rng: &mut Rng) -> Result<Response, HttpError> {
    let (body, _) = report_body(rng);
    let result = conn.request("POST", "/reports", Some(&body));
    if let Ok(resp) = &result {
        if resp.ok() {
            let id = serde_json::from_slice::<serde_json::Value>(&resp.body)
                .ok()
                .and_then(|j| j.pointer("/data/id")?.as_str().map(str::to_string));
            if let (Some(id), Some(version)) = (id, resp.version()) {
                sample_lag(shared, &id, version);
                // One in five stays for the readers and is never deleted.
                let deletable = rng.below(5) != 0;
                if let Ok(mut pools) = shared.pools.lock() {
                    if !deletable {
                        pools
                            .readable
                            .push((id.clone(), Instant::now() + READABLE_AFTER));
                    }
                    pools.writable.push(Known {
                        id,
                        version,
                        deletable,
                        step: 0,
                    });
                }
            }
        }
    }
    result
}

/// Takes a report out of the pool while a request on it is in flight, so two workers never
/// race on one report (which would make 404s and version jumps that are our doing).
fn take_writable(shared: &Shared, rng: &mut Rng, deletable_only: bool) -> Option<Known> {
    let mut pools = shared.pools.lock().ok()?;
    let candidates: Vec<usize> = pools
        .writable
        .iter()
        .enumerate()
        .filter(|(_, k)| !deletable_only || k.deletable)
        .map(|(i, _)| i)
        .collect();
    let i = *rng.pick(&candidates)?;
    Some(pools.writable.swap_remove(i))
}

/// Walks a report through the workflow, with a category change between the steps.
fn update_body(known: &Known, rng: &mut Rng) -> Vec<u8> {
    let json = match known.step {
        0 => serde_json::json!({ "status": "in_progress" }),
        2 => {
            serde_json::json!({ "status": if rng.below(4) == 0 { "rejected" } else { "resolved" } })
        }
        _ => serde_json::json!({ "category": rng.pick(&CATEGORIES).copied().unwrap_or("lainnya") }),
    };
    json.to_string().into_bytes()
}

/// Every `lag_every`-th successful create or update is followed to the query DBs.
fn sample_lag(shared: &Shared, id: &str, version: i64) {
    let Some(feed) = &shared.lag else { return };
    let n = shared.writes_done.fetch_add(1, Ordering::SeqCst);
    if !n.is_multiple_of(shared.lag_every) {
        return;
    }
    let Ok(uuid) = Uuid::parse_str(id) else {
        return;
    };
    let seq = shared.lag_seq.fetch_add(1, Ordering::SeqCst);
    feed.send(Sample {
        seq,
        id: uuid,
        version,
        written: Instant::now(),
    });
}

/// Figures of one endpoint (or a side) as they accumulate.
struct Acc {
    sent: u64,
    ok: u64,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

impl Default for Acc {
    fn default() -> Acc {
        Acc {
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            hist: new_histogram(),
        }
    }
}

impl Acc {
    fn merge(&mut self, other: &Acc) {
        self.sent += other.sent;
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        let _ = self.hist.add(&other.hist);
    }

    fn report(&self, name: &str, secs: f64) -> EndpointReport {
        EndpointReport {
            name: name.to_string(),
            sent: self.sent,
            ok: self.ok,
            errors: self.errors.clone(),
            achieved_rps: if secs > 0.0 {
                (self.ok as f64 / secs * 10.0).round() / 10.0
            } else {
                0.0
            },
            latency: Latency::of(&self.hist),
        }
    }
}

struct Collected {
    per_endpoint: BTreeMap<Endpoint, Acc>,
    instances: BTreeMap<Side, BTreeMap<String, u64>>,
    /// The generator's own delay of every request ([`Outcome::own_delay`]).
    own: Histogram<u64>,
    /// Requests whose own delay exceeded [`LATE_SEND`].
    late: u64,
    /// The wait for a busy connection, of the requests that had one.
    wait: Histogram<u64>,
    /// Requests that found every connection of their side busy.
    queued: u64,
}

/// The collector's loop: outcomes in, and once a second a progress line on stderr when
/// `progress` (the run's duration) is set.
fn collect(rx: &Receiver<Outcome>, progress: Option<Duration>) -> Collected {
    let mut c = Collected {
        per_endpoint: BTreeMap::new(),
        instances: BTreeMap::new(),
        own: new_histogram(),
        late: 0,
        wait: new_histogram(),
        queued: 0,
    };
    let started = Instant::now();
    let tick = match progress {
        Some(_) => crossbeam_channel::tick(Duration::from_secs(1)),
        None => crossbeam_channel::never(),
    };
    let mut window = new_histogram();
    let mut window_errors = 0u64;
    let mut sent = [0u64; 2];
    let mut errors = 0u64;
    let mut window_late = 0u64;
    let mut window_queued = 0u64;
    loop {
        select! {
            recv(rx) -> msg => {
                let Ok(o) = msg else { break };
                let latency = o.done.saturating_duration_since(o.job_intended);
                let own = o.own_delay();
                record(&mut c.own, own);
                if own > LATE_SEND {
                    c.late += 1;
                    window_late += 1;
                }
                if !o.idle_at_queue {
                    record(&mut c.wait, o.connection_wait());
                    c.queued += 1;
                    window_queued += 1;
                }
                let acc = c.per_endpoint.entry(o.endpoint).or_default();
                acc.sent += 1;
                record(&mut acc.hist, latency);
                record(&mut window, latency);
                sent[usize::from(o.endpoint.side() == Side::Read)] += 1;
                match o.result {
                    Ok((status, instance)) => {
                        if (200..300).contains(&status) {
                            acc.ok += 1;
                        } else {
                            *acc.errors.entry(format!("status {status}")).or_default() += 1;
                            errors += 1;
                            window_errors += 1;
                        }
                        if let Some(i) = instance {
                            *c.instances.entry(o.endpoint.side()).or_default().entry(i).or_default() += 1;
                        }
                    }
                    Err(kind) => {
                        *acc.errors.entry(kind.to_string()).or_default() += 1;
                        errors += 1;
                        window_errors += 1;
                    }
                }
            }
            recv(tick) -> _ => {
                let total = progress.unwrap_or_default().as_secs_f64();
                let p99 = if window.is_empty() { 0.0 } else { window.value_at_quantile(0.99) as f64 / 1000.0 };
                eprintln!(
                    "[{:>5.1}s/{total:.0}s] writes {:>7} reads {:>7} errors {:>5} | last 1 s: p99 {:>8.2} ms, errors {:>4}, waited for a connection {:>5}, generator late {:>4}",
                    started.elapsed().as_secs_f64(),
                    sent[0],
                    sent[1],
                    errors,
                    p99,
                    window_errors,
                    window_queued,
                    window_late,
                );
                window.reset();
                window_errors = 0;
                window_queued = 0;
                window_late = 0;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (intended → queued, queued → picked, a connection idle at queue) → the generator's own
    /// delay in ms.
    fn check(pacer_ms: u64, handover_ms: u64, idle: bool, expect_ms: u64) {
        let t0 = Instant::now();
        let queued = t0 + Duration::from_millis(pacer_ms);
        let picked = queued + Duration::from_millis(handover_ms);
        assert_eq!(
            own_delay(t0, queued, picked, idle),
            Duration::from_millis(expect_ms),
            "pacer {pacer_ms} ms, hand-over {handover_ms} ms, idle {idle}"
        );
    }

    #[test]
    fn own_delay_counts_the_pacer_and_a_slow_handover_but_not_a_busy_server() {
        check(0, 0, true, 0);
        check(3, 0, true, 3);
        // An idle connection took 7 ms to pick the request up: the generator's delay.
        check(0, 7, true, 7);
        check(2, 7, true, 9);
        // Every connection was busy: the 300 ms wait is the server's, only the pacer counts.
        check(0, 300, false, 0);
        check(4, 300, false, 4);
    }

    #[test]
    fn only_the_generators_own_lateness_raises_the_warning() {
        assert_eq!(judge(0, 1000, Duration::ZERO), (false, None));
        // 1 % or fewer, or fewer than LATE_MIN, is noise.
        assert!(!judge(10, 1000, Duration::ZERO).0);
        assert!(!judge(4, 100, Duration::ZERO).0);
        let (bottleneck, warning) = judge(61, 100, Duration::from_millis(40));
        let w = warning.unwrap_or_default();
        assert!(bottleneck, "{w}");
        assert!(w.contains("61 of 100"), "{w}");
        assert!(w.contains("pacer itself woke up to 40.0 ms behind"), "{w}");
    }
}

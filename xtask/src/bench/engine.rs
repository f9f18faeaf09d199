//! The open-loop engine of `bench`: a scheduler (the calling thread) hands each request to a
//! worker at its intended send time; workers hold keep-alive connections and execute it; a
//! collector thread owns the histograms and prints the progress line; lag pollers watch the
//! query DBs.
//!
//! Open loop means the schedule never waits for answers. When every worker is busy (a stalled
//! server holds them), the scheduler starts another worker instead of delaying the request, up
//! to `max_workers`. Each worker notes how late it picked its request up; if that happens
//! often the generator, not the server, was the limit, and the report says so. Latency always
//! counts from the intended time, so a stall shows in full in the tail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, Receiver, Sender};
use hdrhistogram::Histogram;
use uuid::Uuid;

use super::config::BenchConfig;
use super::lag::{LagFeed, Sample, Sampler};
use super::report::{new_histogram, record, BenchReport, EndpointReport, Generator, Latency};
use super::schedule::{Endpoint, Schedule, Side, Wrr, WRITE_MIX};
use crate::http::{Conn, HttpError, Response, Target};
use crate::ops::seed::{report_body, CATEGORIES, CITIES, SEARCH_TERMS};
use crate::rng::Rng;

/// A worker that picks its request up later than this after the intended time counts as a
/// late dispatch. 5 ms is far above scheduling noise (tens of µs) and below the latencies
/// the bench exists to see.
const LATE_DISPATCH: Duration = Duration::from_millis(5);
/// More than this share of late dispatches means the generator limited the run...
const LATE_SHARE_LIMIT: f64 = 0.01;
/// ...provided there are at least this many: one descheduled thread on a busy machine is
/// noise, not a limit.
const LATE_MIN: u64 = 5;
/// Stack of a worker thread: it only parses HTTP heads and small JSON bodies.
const WORKER_STACK: usize = 512 * 1024;
/// A report this run created becomes readable by id after this long, so a by-id read of it
/// measures the read path, not the projection's lag (which is measured separately).
const READABLE_AFTER: Duration = Duration::from_secs(2);
/// Lead time before the first intended send, so the first workers are spawned and waiting.
const START_LEAD: Duration = Duration::from_millis(50);

/// One request to make.
struct Job {
    endpoint: Endpoint,
    intended: Instant,
}

/// What happened to one request.
struct Outcome {
    /// What was actually executed (an update without a report to update becomes a create).
    endpoint: Endpoint,
    intended: Instant,
    picked: Instant,
    done: Instant,
    result: Result<(u16, Option<String>), &'static str>,
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

/// What the workers share.
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
}

/// Counters the scheduler, workers and collector all see.
#[derive(Default)]
struct Counters {
    /// Workers waiting for a job minus jobs queued: ≤ 0 means nobody would take the next job
    /// at once.
    idle: AtomicI64,
    workers: AtomicU64,
}

/// Runs one fixed-rate bench.
pub fn run_fixed(cfg: &BenchConfig) -> Result<BenchReport> {
    let write = Target::parse(&cfg.write_url).context("--write-url")?;
    let read = Target::parse(&cfg.read_url).context("--read-url")?;
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    preflight(cfg, &write, &read)?;
    let readable = prefetch_ids(&read, cfg.timeout);

    let (lag_feed, sampler) = if cfg.query_dbs.is_empty() {
        (None, None)
    } else {
        let (feed, sampler) = Sampler::start(&cfg.query_dbs)?;
        (Some(feed), Some(sampler))
    };
    let (out_tx, out_rx) = crossbeam_channel::unbounded();
    let now = Instant::now();
    let shared = Arc::new(Shared {
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
    });
    let counters = Arc::new(Counters::default());
    let collector = {
        let counters = Arc::clone(&counters);
        let progress = cfg.progress.then_some(cfg.duration);
        std::thread::Builder::new()
            .name("bench-collector".into())
            .spawn(move || collect(&out_rx, &counters, progress))
            .context("spawn collector thread")?
    };

    let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
    let total_rps = cfg.write_rps + cfg.read_rps;
    // Enough workers for ~50 ms of traffic up front; more are started on demand.
    let initial = ((total_rps * 0.05).ceil() as usize + 4).min(cfg.max_workers.max(1));
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut max_workers = cfg.max_workers.max(1);
    for _ in 0..initial {
        match spawn_worker(&shared, &job_rx, &counters, workers.len() as u64) {
            Ok(h) => workers.push(h),
            Err(e) => bail!("start bench workers: {e:#}"),
        }
        counters.idle.fetch_add(1, Ordering::SeqCst);
    }

    let mut write_wrr = Wrr::new(&WRITE_MIX);
    let mut read_wrr = Wrr::new(&cfg.mix.weights());
    let mut behind_max = Duration::ZERO;
    let start = Instant::now() + START_LEAD;
    let mut spawn_failed = None;
    for (side, at) in Schedule::new(start, cfg.duration, cfg.write_rps, cfg.read_rps) {
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        behind_max = behind_max.max(Instant::now().saturating_duration_since(at));
        let endpoint = match side {
            Side::Write => write_wrr.next(),
            Side::Read => read_wrr.next(),
        };
        let Some(endpoint) = endpoint else { continue };
        if counters.idle.fetch_sub(1, Ordering::SeqCst) <= 0 && workers.len() < max_workers {
            match spawn_worker(&shared, &job_rx, &counters, workers.len() as u64) {
                Ok(h) => {
                    workers.push(h);
                    counters.idle.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    // The OS refused another thread: keep going with what we have and say so.
                    max_workers = workers.len();
                    spawn_failed = Some(format!("{e:#}"));
                }
            }
        }
        if job_tx
            .send(Job {
                endpoint,
                intended: at,
            })
            .is_err()
        {
            bail!("every bench worker has stopped");
        }
    }
    drop(job_tx);
    for w in workers.drain(..) {
        let _ = w.join();
    }
    let workers_started = counters.workers.load(Ordering::SeqCst);
    let Ok(shared) = Arc::try_unwrap(shared) else {
        bail!("bench workers still hold the shared state after joining");
    };
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
    let late_share = collected.late as f64 / sent.max(1) as f64;
    let bottleneck =
        (late_share > LATE_SHARE_LIMIT && collected.late >= LATE_MIN) || spawn_failed.is_some();
    let warning = bottleneck.then(|| {
        let mut w = format!(
            "the generator limited this run: {} of {sent} requests ({:.1} %) were picked up more than {} ms after their intended send time",
            collected.late,
            late_share * 100.0,
            LATE_DISPATCH.as_millis()
        );
        if workers_started as usize >= max_workers {
            w.push_str(&format!(
                " (all {max_workers} workers were busy; raise --max-workers)"
            ));
        }
        if behind_max > LATE_DISPATCH {
            w.push_str(&format!(
                "; the scheduler itself fell behind by up to {:.1} ms (CPU starved?)",
                behind_max.as_secs_f64() * 1000.0
            ));
        }
        if let Some(e) = &spawn_failed {
            w.push_str(&format!("; starting another worker failed: {e}"));
        }
        w.push_str(". Latencies still count from the intended time, but the server saw less concurrency than the schedule asked for.");
        w
    });
    let dispatch = Latency::of(&collected.dispatch);
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
            workers_started,
            max_workers: max_workers as u64,
            late_dispatches: collected.late,
            late_threshold_ms: LATE_DISPATCH.as_secs_f64() * 1000.0,
            dispatch_p99_ms: dispatch.p99_ms,
            dispatch_max_ms: dispatch.max_ms,
            scheduler_behind_max_ms: behind_max.as_secs_f64() * 1000.0,
            bottleneck,
            warning,
        },
        steps: Vec::new(),
        max_sustained_rps: None,
        rss: Vec::new(),
    })
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

fn spawn_worker(
    shared: &Arc<Shared>,
    jobs: &Receiver<Job>,
    counters: &Arc<Counters>,
    n: u64,
) -> Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    let jobs = jobs.clone();
    let counters = Arc::clone(counters);
    counters.workers.fetch_add(1, Ordering::SeqCst);
    std::thread::Builder::new()
        .name(format!("bench-worker-{n}"))
        .stack_size(WORKER_STACK)
        .spawn(move || worker(&shared, &jobs, &counters, n))
        .context("spawn bench worker thread")
}

fn worker(shared: &Shared, jobs: &Receiver<Job>, counters: &Counters, n: u64) {
    let mut write =
        Conn::new(shared.write.clone(), shared.timeout).with_token(shared.token.as_deref());
    let mut read = Conn::new(shared.read.clone(), shared.timeout);
    let mut rng = Rng::from_time(n);
    while let Ok(job) = jobs.recv() {
        let picked = Instant::now();
        let (endpoint, result) = execute(shared, &mut write, &mut read, &mut rng, job.endpoint);
        let done = Instant::now();
        let _ = shared.outcomes.send(Outcome {
            endpoint,
            intended: job.intended,
            picked,
            done,
            result: result.map(|r| (r.status, r.instance)).map_err(|e| e.kind()),
        });
        counters.idle.fetch_add(1, Ordering::SeqCst);
    }
}

/// Does one request of `endpoint` (or a substitute when its precondition is missing) and
/// updates the pools of known reports from the answer.
fn execute(
    shared: &Shared,
    write: &mut Conn,
    read: &mut Conn,
    rng: &mut Rng,
    endpoint: Endpoint,
) -> (Endpoint, Result<Response, HttpError>) {
    match endpoint {
        Endpoint::Create => (Endpoint::Create, create(shared, write, rng)),
        Endpoint::Update => {
            let Some(mut known) = take_writable(shared, rng, false) else {
                return (Endpoint::Create, create(shared, write, rng));
            };
            let body = update_body(&known, rng);
            let result = write.request("PUT", &format!("/reports/{}", known.id), Some(&body));
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
                return (Endpoint::Create, create(shared, write, rng));
            };
            let result = write.request("DELETE", &format!("/reports/{}", known.id), None);
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
                read.request("GET", &format!("/reports?page={page}"), None),
            )
        }
        Endpoint::ById => match readable_id(shared, rng) {
            Some(id) => (
                Endpoint::ById,
                read.request("GET", &format!("/reports/{id}"), None),
            ),
            // Nothing readable yet (an empty database): read the first page instead.
            None => (Endpoint::List, read.request("GET", "/reports?page=1", None)),
        },
        Endpoint::History => match readable_id(shared, rng) {
            Some(id) => (
                Endpoint::History,
                read.request("GET", &format!("/reports/{id}/history"), None),
            ),
            None => (Endpoint::List, read.request("GET", "/reports?page=1", None)),
        },
        Endpoint::Near => (Endpoint::Near, read.request("GET", &near_path(rng), None)),
        Endpoint::Search => (
            Endpoint::Search,
            read.request("GET", &search_path(rng), None),
        ),
        Endpoint::ByCategory => {
            let category = rng.pick(&CATEGORIES).copied().unwrap_or("lainnya");
            let page = 1 + rng.below(2);
            (
                Endpoint::ByCategory,
                read.request(
                    "GET",
                    &format!("/reports?category={category}&page={page}"),
                    None,
                ),
            )
        }
        Endpoint::Stats => (Endpoint::Stats, read.request("GET", "/statistics", None)),
        Endpoint::Health => (Endpoint::Health, read.request("GET", "/health", None)),
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

fn create(shared: &Shared, write: &mut Conn, rng: &mut Rng) -> Result<Response, HttpError> {
    let (body, _) = report_body(rng);
    let result = write.request("POST", "/reports", Some(&body));
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
    dispatch: Histogram<u64>,
    late: u64,
}

/// The collector's loop: outcomes in, and once a second a progress line on stderr when
/// `progress` (the run's duration) is set.
fn collect(rx: &Receiver<Outcome>, counters: &Counters, progress: Option<Duration>) -> Collected {
    let mut c = Collected {
        per_endpoint: BTreeMap::new(),
        instances: BTreeMap::new(),
        dispatch: new_histogram(),
        late: 0,
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
    loop {
        select! {
            recv(rx) -> msg => {
                let Ok(o) = msg else { break };
                let latency = o.done.saturating_duration_since(o.intended);
                let dispatch = o.picked.saturating_duration_since(o.intended);
                record(&mut c.dispatch, dispatch);
                if dispatch > LATE_DISPATCH {
                    c.late += 1;
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
                    "[{:>5.1}s/{total:.0}s] writes {:>7} reads {:>7} errors {:>5} | last 1 s: p99 {:>8.2} ms, errors {:>4} | workers {}",
                    started.elapsed().as_secs_f64(),
                    sent[0],
                    sent[1],
                    errors,
                    p99,
                    window_errors,
                    counters.workers.load(Ordering::SeqCst),
                );
                window.reset();
                window_errors = 0;
            }
        }
    }
    c
}

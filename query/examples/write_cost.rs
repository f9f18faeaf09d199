//! `cargo run --release -p query --example write_cost -- POSTGRES_URL`: what the `list_counts`
//! triggers (sql/query.sql, deep numbered pages) add to the projection's writes (issue 13
//! points 5 and 6).
//!
//! Next to the given database it makes scratch databases migrated with
//! `shared::migrate::query_db`, seeds each with the same reports, and then applies batches
//! of 1, 5 and 50 changes the way the projection's writer does (`projection/src/writer.rs`,
//! `transact`): one transaction per batch taking the writers' lock, locking the batch's rows,
//! one multi-row upsert for the live rows and one for the tombstones, and the statistics
//! delta — the writer's own statements (`projection::writer::{LOCK_ROWS, UPSERT_SNAPSHOTS,
//! UPSERT_TOMBSTONES, MOVE_STATISTICS}`), so the harness measures what the writer sends. A batch carries what the write mix of
//! `bench` sends: 60 % new reports, 30 % updates (a status change, a third of them a category
//! change too), 10 % deletes.
//!
//! Modes, one scratch DB each: `on` (the schema as it is), `off` (the same with the
//! `list_counts` triggers disabled), and `baseline` when `WRITE_COST_BASELINE_SQL` names
//! another schema file (e.g. `git show main:sql/query.sql > /tmp/main.sql`), applied instead
//! of the current one: before and after measured in the same run. Every mode runs every batch
//! size once per run, one transaction of each mode in turn (the order rotated every
//! transaction), [`RUNS`] runs: medians and spreads of
//! three, every ratio taken within its own run. Afterwards `list_counts_drift()` must be
//! empty in every mode with triggers. `WRITE_COST_TXNS` overrides [`TXNS`]; `WRITE_COST_SEED`
//! overrides [`SEED_REPORTS`]; `WRITE_COST_KEEP_DB` keeps the scratch databases;
//! `WRITE_COST_EXPLAIN` logs every plan, nested ones included (`auto_explain`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::types::Type;
use postgres::{Client, NoTls};
use projection::writer::{LOCK_ROWS, MOVE_STATISTICS, UPSERT_SNAPSHOTS, UPSERT_TOMBSTONES};
use shared::model::{Category, Location, Report, Status, Tombstone};
use shared::testkit::fuzz::Rng;
use time::OffsetDateTime;
use uuid::Uuid;

/// Transactions per batch size per mode per run: enough that one descheduling on the shared
/// 2-core machine moves the sum by little.
const TXNS: usize = 200;
/// Alternating runs; the figures are the median and spread of these.
const RUNS: usize = 3;
/// Reports in each scratch DB before measuring: the size of the cluster `bench` seeds
/// (`seed 2000`), so every shape already has its buckets.
const SEED_REPORTS: usize = 2000;
const BATCH_SIZES: [usize; 3] = [1, 5, 50];
const BASELINE_ENV: &str = "WRITE_COST_BASELINE_SQL";
const TXNS_ENV: &str = "WRITE_COST_TXNS";
const SEED_ENV: &str = "WRITE_COST_SEED";
const KEEP_ENV: &str = "WRITE_COST_KEEP_DB";
/// Set (to anything) to log every statement's plan, the triggers' nested ones included, with
/// `auto_explain` (`log_analyze`) into the server's log: where the time goes, not a figure.
const EXPLAIN_ENV: &str = "WRITE_COST_EXPLAIN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    On,
    Off,
    Baseline,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::On => "on",
            Mode::Off => "off",
            Mode::Baseline => "baseline",
        }
    }
}

/// Time on CPU of process `pid` so far (`/proc/PID/schedstat`, nanoseconds): what the query
/// DB's backend spends, without the round trips and the client that wall time includes.
fn backend_cpu(pid: i32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Per batch size, per mode: (upserts ms, transaction ms, backend CPU ms) of each run.
type Results = BTreeMap<usize, BTreeMap<&'static str, Vec<(f64, f64, f64)>>>;

/// One scratch DB and the reports it holds live, as the stream would know them.
struct Db {
    mode: Mode,
    name: String,
    client: Client,
    /// The backend serving `client` (same machine), for its CPU time.
    pid: i32,
    live: Vec<Report>,
    /// Where each live report is in `live`.
    at: HashMap<Uuid, usize>,
    rng: Rng,
    clock: OffsetDateTime,
    serial: u64,
}

/// One batch: what the projection's `Snapshots` and `Tombstones` would hold.
enum Change {
    Snapshot(Report),
    Deleted(Tombstone, String, String),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [url] => run(url),
        _ => Err(anyhow::anyhow!("usage: write_cost POSTGRES_URL")),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name} expects a number, got `{v}`")),
        Err(_) => Ok(default),
    }
}

/// `url` with its database (the part after the last `/`) replaced by `db`.
fn db_url(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if i > url.find("://").map_or(0, |s| s + 2) => format!("{}/{db}", &url[..i]),
        _ => format!("{url}/{db}"),
    }
}

fn run(url: &str) -> Result<()> {
    let txns = env_usize(TXNS_ENV, TXNS)?;
    let seed = env_usize(SEED_ENV, SEED_REPORTS)?;
    let baseline = match std::env::var(BASELINE_ENV) {
        Ok(path) => {
            Some(std::fs::read_to_string(&path).with_context(|| format!("{BASELINE_ENV}={path}"))?)
        }
        Err(_) => None,
    };
    let mut admin = Client::connect(url, NoTls).context("connect")?;
    let mut modes = vec![Mode::On, Mode::Off];
    if baseline.is_some() {
        modes.push(Mode::Baseline);
    }
    let mut dbs = Vec::new();
    for &mode in &modes {
        let name = format!("write_cost_{}", mode.name());
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
        admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
        let mut client = Client::connect(&db_url(url, &name), NoTls)
            .with_context(|| format!("connect {name}"))?;
        match (&baseline, mode) {
            (Some(sql), Mode::Baseline) => client.batch_execute(sql).context("baseline schema")?,
            _ => {
                shared::migrate::query_db(&mut client).context("migrate")?;
            }
        }
        if mode == Mode::Off {
            client.batch_execute(
                "ALTER TABLE read_reports DISABLE TRIGGER list_counts_insert, \
                 DISABLE TRIGGER list_counts_update, DISABLE TRIGGER list_counts_delete",
            )?;
        }
        let mut db = Db {
            mode,
            name,
            client,
            pid: 0,
            live: Vec::new(),
            at: HashMap::new(),
            // The same seed everywhere: every mode gets the same stream.
            rng: Rng::new(0x5eed),
            clock: OffsetDateTime::from_unix_timestamp(1_750_000_000)?,
            serial: 0,
        };
        let t = Instant::now();
        for _ in 0..seed.div_ceil(500) {
            let batch: Vec<Change> = (0..500)
                .map(|_| Change::Snapshot(db.new_report()))
                .collect();
            db.apply(&batch)?;
        }
        db.client.batch_execute("VACUUM ANALYZE")?;
        eprintln!("{}: seeded {seed} reports in {:.1?}", db.name, t.elapsed());
        // Measured on a new session, as a projection writer in its steady state is: the plan
        // cache decides per session, from a statement's first executions, whether to re-plan
        // it for every call, and the 500-row seeding statements would decide it otherwise.
        db.client = Client::connect(&db_url(url, &db.name), NoTls)
            .with_context(|| format!("reconnect {}", db.name))?;
        if std::env::var(EXPLAIN_ENV).is_ok() {
            db.client.batch_execute(
                "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; \
                 SET auto_explain.log_nested_statements = on; SET auto_explain.log_analyze = on",
            )?;
        }
        db.pid = db.client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
        dbs.push(db);
    }

    // results[size][mode] = (batch statements ms, transaction ms, backend CPU ms) per run
    let mut results: Results = BTreeMap::new();
    for run in 0..RUNS {
        for &size in &BATCH_SIZES {
            // Interleaved one transaction at a time, in an order rotated per transaction, so
            // a burst of another process's work on the shared machine lands on every mode
            // alike instead of on whichever ran its 200 transactions then.
            let n = dbs.len();
            let mut sums = vec![(Duration::ZERO, Duration::ZERO, Duration::ZERO); n];
            for i in 0..txns {
                for k in 0..n {
                    let j = (k + i + run) % n;
                    // Every mode gets the same batches: the stream depends only on its seed.
                    let (stmts, total, cpu) = dbs[j].measure(size, 1)?;
                    sums[j].0 += stmts;
                    sums[j].1 += total;
                    sums[j].2 += cpu;
                }
            }
            for (db, (stmts, total, cpu)) in dbs.iter().zip(sums) {
                results
                    .entry(size)
                    .or_default()
                    .entry(db.mode.name())
                    .or_default()
                    .push((ms(stmts), ms(total), ms(cpu)));
            }
        }
        eprintln!("run {} of {RUNS} done", run + 1);
    }

    for db in &mut dbs {
        if db.mode == Mode::Off {
            continue;
        }
        let drift = db.client.query("SELECT * FROM list_counts_drift()", &[])?;
        if !drift.is_empty() {
            bail!("{}: list_counts_drift() has {} rows", db.name, drift.len());
        }
    }
    print(&results, txns, seed);
    if std::env::var(KEEP_ENV).is_err() {
        drop(dbs);
        for &mode in &modes {
            admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS write_cost_{} WITH (FORCE)",
                mode.name()
            ))?;
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Median and range of three (or any number of) runs.
fn spread(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.2} [{:.2}–{:.2}]", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn print(results: &Results, txns: usize, seed: usize) {
    println!(
        "{txns} transactions per batch size and mode, {RUNS} alternating runs, {seed} reports seeded; \
         median [min–max] of the runs, ms for all {txns}"
    );
    println!(
        "upserts = the two read_reports statements (wall); txn = the whole batch transaction \
         (wall); cpu = the DB backend's CPU time for the transactions"
    );
    for (size, modes) in results {
        println!("\nbatch of {size}:");
        for (mode, runs) in modes {
            println!(
                "  {mode:<9} upserts {:>24}   txn {:>24}   cpu {:>24}",
                spread(runs.iter().map(|r| r.0).collect()),
                spread(runs.iter().map(|r| r.1).collect()),
                spread(runs.iter().map(|r| r.2).collect())
            );
        }
        let off = &modes["off"];
        for (mode, runs) in modes.iter().filter(|(m, _)| **m != "off") {
            let ratio: Vec<f64> = runs.iter().zip(off).map(|(r, o)| r.0 / o.0).collect();
            let added: Vec<f64> = runs
                .iter()
                .zip(off)
                .map(|(r, o)| (r.0 - o.0) / txns as f64)
                .collect();
            let txn_ratio: Vec<f64> = runs.iter().zip(off).map(|(r, o)| r.1 / o.1).collect();
            let cpu_ratio: Vec<f64> = runs.iter().zip(off).map(|(r, o)| r.2 / o.2).collect();
            let cpu_added: Vec<f64> = runs
                .iter()
                .zip(off)
                .map(|(r, o)| (r.2 - o.2) / txns as f64)
                .collect();
            println!(
                "  {mode}/off upserts {}×, added {} ms per transaction; txn {}×; \
                 cpu {}×, added {} ms per transaction",
                spread(ratio),
                spread(added),
                spread(txn_ratio),
                spread(cpu_ratio),
                spread(cpu_added)
            );
        }
    }
}

impl Db {
    fn new_report(&mut self) -> Report {
        self.serial += 1;
        // Now-ish and increasing, as the command services stamp them; every 20th a little
        // out of order (three command instances, batches arriving interleaved).
        self.clock += Duration::from_millis(1 + self.rng.below(5) as u64);
        let created_at = if self.serial.is_multiple_of(20) {
            self.clock - Duration::from_millis(self.rng.below(400) as u64)
        } else {
            self.clock
        };
        let n = self.serial;
        Report {
            id: Uuid::from_u64_pair(0x7772_6974_6563_6f73, n),
            title: format!("Jalan berlubang {n}"),
            description: format!("Lubang besar di lajur kiri, laporan nomor {n}"),
            category: *self.rng.pick(Category::ALL),
            status: Status::Pending,
            version: 1,
            created_at,
            updated_at: created_at,
            location: Some(Location {
                lat: -6.2 + self.rng.below(10_000) as f64 / 100_000.0,
                lng: 106.8 + self.rng.below(10_000) as f64 / 100_000.0,
            }),
            address: None,
            media_url: None,
        }
    }

    /// The next batch of `size` changes: creates, updates and deletes, each report at most
    /// once (the projection folds a batch to one write per report).
    fn batch(&mut self, size: usize) -> Vec<Change> {
        let mut out = Vec::with_capacity(size);
        let mut touched = HashSet::new();
        while out.len() < size {
            let roll = self.rng.below(10);
            if roll < 6 || self.live.len() < 100 {
                out.push(Change::Snapshot(self.new_report()));
                continue;
            }
            let i = self.rng.below(self.live.len());
            if !touched.insert(self.live[i].id) {
                continue;
            }
            self.clock += Duration::from_millis(1);
            if roll < 9 {
                let mut r = self.live[i].clone();
                r.version += 1;
                r.updated_at = self.clock;
                r.status = *self.rng.pick(&Status::ALL[1..]);
                if roll == 8 {
                    r.category = *self.rng.pick(Category::ALL);
                }
                out.push(Change::Snapshot(r));
            } else {
                let r = &self.live[i];
                out.push(Change::Deleted(
                    Tombstone {
                        id: r.id,
                        version: r.version + 1,
                        deleted_at: self.clock,
                    },
                    r.category.as_str().to_owned(),
                    r.status.as_str().to_owned(),
                ));
            }
        }
        out
    }

    /// Runs `txns` batches of `size`: (time in the two upserts, time of the transactions).
    /// Runs `txns` batches of `size`: time in the two upserts, time of the transactions, and
    /// the CPU time the DB's backend spent on them (0 when its `/proc` is not ours to read).
    fn measure(&mut self, size: usize, txns: usize) -> Result<(Duration, Duration, Duration)> {
        let mut stmts = Duration::ZERO;
        let mut total = Duration::ZERO;
        let cpu = backend_cpu(self.pid);
        for _ in 0..txns {
            let batch = self.batch(size);
            let t = Instant::now();
            stmts += self.apply(&batch)?;
            total += t.elapsed();
        }
        let cpu = backend_cpu(self.pid).saturating_sub(cpu);
        Ok((stmts, total, cpu))
    }

    /// One batch as the projection writes it; returns the time of the two upserts.
    fn apply(&mut self, batch: &[Change]) -> Result<Duration> {
        let mut tx = self.client.transaction()?;
        tx.execute_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&projection::writer::WRITE_LOCK, Type::INT8)],
        )?;
        let mut ids: Vec<Uuid> = batch
            .iter()
            .map(|c| match c {
                Change::Snapshot(r) => r.id,
                Change::Deleted(t, _, _) => t.id,
            })
            .collect();
        ids.sort_unstable();
        let old: BTreeMap<Uuid, (String, String)> = tx
            .query_typed(LOCK_ROWS, &[(&ids, Type::UUID_ARRAY)])?
            .iter()
            .map(|r| (r.get(0), (r.get(2), r.get(3))))
            .collect();
        let mut stats: BTreeMap<(String, String), i64> = BTreeMap::new();
        let (mut s_id, mut s_title, mut s_desc, mut s_cat, mut s_status) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut s_ver, mut s_created, mut s_updated, mut s_doc) = (vec![], vec![], vec![], vec![]);
        let (mut s_lat, mut s_lng): (Vec<Option<f64>>, Vec<Option<f64>>) = (vec![], vec![]);
        let mut s_addr: Vec<Option<&str>> = vec![];
        let (mut t_id, mut t_ver, mut t_at, mut t_doc) = (vec![], vec![], vec![], vec![]);
        for c in batch {
            match c {
                Change::Snapshot(r) => {
                    if let Some(o) = old.get(&r.id) {
                        *stats.entry(o.clone()).or_default() -= 1;
                    }
                    *stats
                        .entry((r.category.as_str().into(), r.status.as_str().into()))
                        .or_default() += 1;
                    s_id.push(r.id);
                    s_title.push(r.title.as_str());
                    s_desc.push(r.description.as_str());
                    s_cat.push(r.category.as_str());
                    s_status.push(r.status.as_str());
                    s_ver.push(r.version);
                    s_created.push(r.created_at);
                    s_updated.push(r.updated_at);
                    s_doc.push(serde_json::to_string(r)?);
                    s_lat.push(r.location.map(|l| l.lat));
                    s_lng.push(r.location.map(|l| l.lng));
                    s_addr.push(r.address.as_deref());
                }
                Change::Deleted(t, category, status) => {
                    *stats.entry((category.clone(), status.clone())).or_default() -= 1;
                    t_id.push(t.id);
                    t_ver.push(t.version);
                    t_at.push(t.deleted_at);
                    t_doc.push(serde_json::to_string(t)?);
                }
            }
        }
        let t = Instant::now();
        let mut written = 0;
        if !s_id.is_empty() {
            written += tx.execute_typed(
                UPSERT_SNAPSHOTS,
                &[
                    (&s_id, Type::UUID_ARRAY),
                    (&s_title, Type::TEXT_ARRAY),
                    (&s_desc, Type::TEXT_ARRAY),
                    (&s_cat, Type::TEXT_ARRAY),
                    (&s_status, Type::TEXT_ARRAY),
                    (&s_ver, Type::INT8_ARRAY),
                    (&s_created, Type::TIMESTAMPTZ_ARRAY),
                    (&s_updated, Type::TIMESTAMPTZ_ARRAY),
                    (&s_doc, Type::TEXT_ARRAY),
                    (&s_lat, Type::FLOAT8_ARRAY),
                    (&s_lng, Type::FLOAT8_ARRAY),
                    (&s_addr, Type::TEXT_ARRAY),
                ],
            )?;
        }
        if !t_id.is_empty() {
            written += tx.execute_typed(
                UPSERT_TOMBSTONES,
                &[
                    (&t_id, Type::UUID_ARRAY),
                    (&t_ver, Type::INT8_ARRAY),
                    (&t_at, Type::TIMESTAMPTZ_ARRAY),
                    (&t_doc, Type::TEXT_ARRAY),
                ],
            )?;
        }
        let upserts = t.elapsed();
        if written != batch.len() as u64 {
            bail!("{}: {written} of {} rows written", self.name, batch.len());
        }
        stats.retain(|_, d| *d != 0);
        let categories: Vec<&str> = stats.keys().map(|(c, _)| c.as_str()).collect();
        let statuses: Vec<&str> = stats.keys().map(|(_, s)| s.as_str()).collect();
        let deltas: Vec<i64> = stats.values().copied().collect();
        if !stats.is_empty() {
            let missing: i64 = tx
                .query_typed_one(
                    MOVE_STATISTICS,
                    &[
                        (&categories, Type::TEXT_ARRAY),
                        (&statuses, Type::TEXT_ARRAY),
                        (&deltas, Type::INT8_ARRAY),
                    ],
                )?
                .get(0);
            if missing != 0 {
                bail!("{}: {missing} statistics rows missing", self.name);
            }
        }
        tx.commit()?;
        // What the stream now knows live.
        for c in batch {
            match c {
                Change::Snapshot(r) => match self.at.get(&r.id) {
                    Some(&i) => self.live[i] = r.clone(),
                    None => {
                        self.at.insert(r.id, self.live.len());
                        self.live.push(r.clone());
                    }
                },
                Change::Deleted(t, _, _) => {
                    if let Some(i) = self.at.remove(&t.id) {
                        self.live.swap_remove(i);
                        if let Some(moved) = self.live.get(i) {
                            self.at.insert(moved.id, i);
                        }
                    }
                }
            }
        }
        Ok(upserts)
    }
}

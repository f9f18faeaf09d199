//! `cargo xtask bench --throughput [--duration S]`: closed-loop ceilings of the running local
//! cluster, each next to the database's own ceiling measured in the same run, so a figure
//! reads as "this share of what PostgreSQL alone does on this machine".
//!
//! In order, each for S seconds (default 5):
//! 1. the ceiling: `pgbench -S -M prepared -c 16 -j 2` on a scratch database
//!    `pgbench_ceiling` on query-db-primary (`pgbench -i -s 1`, dropped afterwards);
//! 2. `wrk -t1 -c64` (keep-alive) on `GET /reports/{id}` and `GET /reports?category=…`
//!    straight to query-1, on `GET /reports/{id}` through nginx's read port (every query
//!    instance), and on `POST /reports` straight to command-1 (a Lua script sets the method,
//!    the JSON body and the bearer token of `up --auth`);
//! 3. the projection: stop it, create a backlog of about [`BACKLOG_EVENTS`] events with wrk,
//!    wait until the relay has published all of them, start it and time until every query
//!    DB's checkpoint has reached the last event-log position (polled over SQL);
//! 4. the memory of every service ([`super::rss`]).
//!
//! Reports are seeded through the write port first when query-1 has none. Errors (non-2xx,
//! socket errors) are counted and shown; figures are 2xx answers per second.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use super::rss::{self, ServiceRss};
use crate::cluster::ops::{ServiceAction, ServiceOp};
use crate::cluster::packages::pg_tool;
use crate::cluster::topology::{Target as Where, Topology, PG_USER, QUERY_PRIMARY};
use crate::cluster::Layout;
use crate::http::{Conn, Target};
use crate::rng::Rng;

/// Default length of each measurement.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(5);
/// wrk's threads and connections (the setting of `../shared/STYLE.md`'s table).
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 64;
/// pgbench's clients and threads for the ceiling.
const PGBENCH_CLIENTS: u32 = 16;
const PGBENCH_THREADS: u32 = 2;
/// Scratch database of the ceiling, on query-db-primary.
const CEILING_DB: &str = "pgbench_ceiling";
/// Size of the projection's backlog (events), reached with wrk rounds of `--duration`.
pub const BACKLOG_EVENTS: i64 = 20_000;
/// At most this many wrk rounds to build the backlog.
const BACKLOG_ROUNDS: u32 = 8;
/// Reports seeded when query-1 has none.
const SEED_REPORTS: u64 = 200;
/// Upper bound for the relay to publish a backlog or the projection to apply one.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// Between polls of the checkpoints while the projection catches up.
const POLL: Duration = Duration::from_millis(5);
/// The stream the projection consumes (its checkpoint row's key).
const STREAM: &str = shared::event::STREAM;

/// What `--throughput` was asked to do.
#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    pub duration: Duration,
    /// Overrides the token of `<state dir>/auth-token`.
    pub token: Option<String>,
}

/// One measured figure.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    /// The URL or command measured.
    pub target: String,
    /// `req/s`, `tps` or `events/s`.
    pub unit: String,
    /// Successful operations per second (2xx answers for HTTP).
    pub per_s: f64,
    /// Operations completed (all answers for HTTP).
    pub total: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    /// Closed-loop latency (wrk's distribution; pgbench's average for the ceiling).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// `per_s` / the ceiling's tps of the same run.
    pub ratio_to_ceiling: f64,
    /// `per_s` / `GET /health` via nginx in the same run (the read figures, `reads.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio_to_health: Option<f64>,
}

/// How the projection worked off its backlog.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProjectionRun {
    /// Events in the backlog (event-log rows written while the projection was stopped).
    pub events: i64,
    pub query_dbs: Vec<String>,
    /// From the start request until the first checkpoint moved (process start, connect).
    pub start_to_first_apply_ms: f64,
    /// From the first checkpoint move until every query DB had applied the whole backlog.
    pub apply_ms: f64,
    /// `events` / `apply_ms`: events applied to every query DB per second.
    pub events_per_s: f64,
    /// `events` / (start request → all caught up), start-up included.
    pub events_per_s_with_start: f64,
    /// Per DB: ms from the start request until it had the whole backlog.
    pub per_db_caught_up_ms: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ThroughputReport {
    pub level: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_s: f64,
    pub cpus: usize,
    pub wrk: String,
    pub topology: String,
    pub ceiling_tps: f64,
    pub figures: Vec<Figure>,
    pub projection: Option<ProjectionRun>,
    pub rss: Vec<ServiceRss>,
    /// The command DB's write ceiling and `POST` via nginx against it.
    #[serde(default)]
    pub writes: Option<WriteCeilingRun>,
}

/// Runs the whole suite against the running local cluster.
pub fn run(sh: &Shell, cfg: &ThroughputConfig) -> Result<ThroughputReport> {
    let layout = Layout::new(sh);
    let state = layout.running_state()?;
    let topo = state.topology.clone();
    let token = match &cfg.token {
        Some(t) => Some(t.clone()),
        None if state.auth => Some(
            std::fs::read_to_string(layout.auth_token_file())
                .with_context(|| {
                    format!(
                        "the cluster has auth but {} is not readable",
                        layout.auth_token_file().display()
                    )
                })?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let wrk = find_in_path("wrk").context(
        "`wrk` is not installed (Debian package `wrk`: `apt-get install wrk`, or `cargo xtask up` installs it)",
    )?;
    let secs = cfg.duration.as_secs().max(1);
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();

    let write_url = format!("http://127.0.0.1:{}", topo.ports.write);
    let read_url = format!("http://127.0.0.1:{}", topo.ports.read);
    let command_1 = service_url(&topo, "command-1")?;
    let query_1 = service_url(&topo, "query-1")?;

    let id = existing_id(&query_1, &write_url, token.as_deref())?;
    eprintln!("throughput: reading report {id}; {secs} s per figure");

    eprintln!("throughput: ceiling (pgbench -S on {QUERY_PRIMARY}/{CEILING_DB})");
    let mut ceiling = pgbench_ceiling(sh, &topo, secs)?;
    let tps = ceiling.per_s;
    ceiling.ratio_to_ceiling = 1.0;
    let mut figures = vec![ceiling];

    let wrk_run = |name: &str, url: &str, script: Option<&Path>| -> Result<Figure> {
        eprintln!("throughput: {name} ({url})");
        let mut f = wrk_figure(sh, &wrk, name, url, secs, script)?;
        f.ratio_to_ceiling = ratio(f.per_s, tps);
        Ok(f)
    };
    figures.extend(super::reads::figures(
        sh,
        &super::reads::ReadTargets {
            wrk: &wrk,
            read_url: &read_url,
            query_1: &query_1,
            write_url: &write_url,
            token: token.as_deref(),
            secs,
            ceiling_tps: tps,
        },
    )?);

    let scratch = std::env::temp_dir().join(format!("xtask-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let script = scratch.join("post.lua");
    std::fs::write(&script, post_script(token.as_deref()))
        .with_context(|| format!("write {}", script.display()))?;
    let result = (|| -> Result<(Figure, Option<ProjectionRun>)> {
        let post = wrk_run(
            "POST /reports → command-1",
            &format!("{command_1}/reports"),
            Some(&script),
        )?;
        let command_db = topo.command_db_url(Where::Local);
        let query_dbs: Vec<(String, String)> = topo
            .query_db_names()
            .into_iter()
            .map(|n| {
                let url = topo.query_db_url(&n, Where::Local);
                (n, url)
            })
            .collect();
        eprintln!("throughput: waiting until every query DB has the POSTs applied");
        wait_published(&command_db)?;
        let last = max_position(&command_db)?;
        let tail = super::burst::stream_tail(&mut connect(&command_db)?)?;
        wait_checkpoints(&query_dbs, last, tail, CATCH_UP_TIMEOUT)?;
        let projection = projection_run(
            sh,
            &wrk,
            &command_1,
            &script,
            secs,
            post.per_s,
            &command_db,
            &query_dbs,
        )?;
        Ok((post, Some(projection)))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (post, projection) = result?;
    figures.push(post);
    if let Some(p) = &projection {
        figures.push(Figure {
            name: format!(
                "projection: events applied to all {} query DBs",
                p.query_dbs.len()
            ),
            target: "projection (backlog of POSTs)".into(),
            unit: "events/s".into(),
            per_s: p.events_per_s,
            total: u64::try_from(p.events).unwrap_or(0),
            ratio_to_ceiling: ratio(p.events_per_s, tps),
            ..Figure::default()
        });
    }

    let (write_figures, writes) = write_ceiling(sh, &topo, &wrk, token.as_deref(), secs, tps)?;
    figures.extend(write_figures);

    Ok(ThroughputReport {
        level: "throughput".into(),
        started_at,
        duration_s: secs as f64,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        wrk: format!("wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{secs}s --latency (keep-alive)"),
        topology: format!(
            "{} command, {} query, {} replica(s)",
            topo.commands, topo.queries, topo.replicas
        ),
        ceiling_tps: tps,
        figures,
        projection,
        rss: rss::sample(sh),
        writes: Some(writes),
    })
}

pub(super) fn ratio(x: f64, ceiling: f64) -> f64 {
    if ceiling > 0.0 {
        (x / ceiling * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn service_url(topo: &Topology, name: &str) -> Result<String> {
    let svc = topo
        .service(name)
        .with_context(|| format!("the cluster has no {name}"))?;
    Ok(format!("http://{}", topo.addr(&svc, Where::Local)))
}

/// Full path of an executable on `$PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// The id of a report query-1 can serve; seeds [`SEED_REPORTS`] through the write port first
/// when there is none.
fn existing_id(query_1: &str, write_url: &str, token: Option<&str>) -> Result<String> {
    let first = || -> Option<String> {
        let mut conn = Conn::new(Target::parse(query_1).ok()?, Duration::from_secs(5));
        let resp = conn.request("GET", "/reports?per_page=1", None).ok()?;
        let json: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
        json.pointer("/data/0/id")?.as_str().map(str::to_string)
    };
    if let Some(id) = first() {
        return Ok(id);
    }
    eprintln!("throughput: query-1 has no reports; seeding {SEED_REPORTS} through {write_url}");
    crate::ops::seed::seed(write_url, SEED_REPORTS, token)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(id) = first() {
            return Ok(id);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("seeded {SEED_REPORTS} reports but query-1 still lists none after 60 s")
}

/// Runs a command, failing with its stderr when it exits non-zero; returns stdout.
fn run_tool(what: &str, c: xshell::Cmd<'_>) -> Result<String> {
    let out = c
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `work` in a fresh scratch database `db` on the server at `port` (dropped first if a
/// crashed run left it, and dropped again afterwards, whatever `work` returned).
fn with_scratch_db<T>(
    sh: &Shell,
    port: &str,
    db: &str,
    work: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let psql = pg_tool("psql");
    let drop = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
    let create = format!("CREATE DATABASE {db}");
    for sql in [&drop, &create] {
        run_tool(
            "psql",
            cmd!(
                sh,
                "{psql} -h 127.0.0.1 -p {port} -U {PG_USER} -d postgres -v ON_ERROR_STOP=1 -c {sql}"
            ),
        )?;
    }
    let result = work();
    let _ = run_tool(
        "psql",
        cmd!(
            sh,
            "{psql} -h 127.0.0.1 -p {port} -U {PG_USER} -d postgres -c {drop}"
        ),
    );
    result
}

/// pgbench's `latency average = X ms`, when it printed one.
fn pgbench_latency_avg(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix("latency average =")?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    })
}

/// `pgbench -S -M prepared` on a fresh scale-1 scratch database of query-db-primary.
fn pgbench_ceiling(sh: &Shell, topo: &Topology, secs: u64) -> Result<Figure> {
    let svc = topo
        .service(QUERY_PRIMARY)
        .with_context(|| format!("the cluster has no {QUERY_PRIMARY}"))?;
    let port = svc.port().to_string();
    let pgbench = pg_tool("pgbench");
    with_scratch_db(sh, &port, CEILING_DB, || {
        run_tool(
            "pgbench -i",
            cmd!(
                sh,
                "{pgbench} -i -s 1 -q -h 127.0.0.1 -p {port} -U {PG_USER} {CEILING_DB}"
            ),
        )?;
        let (c, j, t) = (
            PGBENCH_CLIENTS.to_string(),
            PGBENCH_THREADS.to_string(),
            secs.to_string(),
        );
        let out = run_tool(
            "pgbench -S",
            cmd!(
                sh,
                "{pgbench} -S -M prepared -c {c} -j {j} -T {t} -h 127.0.0.1 -p {port} -U {PG_USER} {CEILING_DB}"
            ),
        )?;
        let tps = parse_pgbench_tps(&out)
            .with_context(|| format!("no `tps = ` in pgbench's output:\n{out}"))?;
        let total = out
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("number of transactions actually processed:")?
                    .split('/')
                    .next()?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let failed = out
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("number of failed transactions:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0);
        let avg = pgbench_latency_avg(&out);
        Ok(Figure {
            name: format!(
                "ceiling: pgbench -S -M prepared -c {PGBENCH_CLIENTS} -j {PGBENCH_THREADS}"
            ),
            target: format!("{QUERY_PRIMARY} (127.0.0.1:{port}/{CEILING_DB}, scale 1)"),
            unit: "tps".into(),
            per_s: tps,
            total,
            errors: failed,
            p50_ms: avg,
            ..Figure::default()
        })
    })
}

/// `tps = 27512.345678 (without initial connection time)`.
pub fn parse_pgbench_tps(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix("tps = ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// What wrk printed, picked apart.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkOutput {
    pub requests: u64,
    pub seconds: f64,
    pub requests_per_s: f64,
    /// `Non-2xx or 3xx responses`.
    pub non_2xx: u64,
    /// connect + read + write + timeout.
    pub socket_errors: u64,
    pub socket_detail: Option<String>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

/// `1.23ms`, `456.78us`, `1.02s`, `2.00m` → ms.
fn wrk_time_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, factor) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * factor)
}

pub fn parse_wrk(out: &str) -> Option<WrkOutput> {
    let mut w = WrkOutput::default();
    let mut saw_rate = false;
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Requests/sec:") {
            w.requests_per_s = rest.trim().parse().ok()?;
            saw_rate = true;
        } else if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            w.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = l.strip_prefix("Socket errors:") {
            w.socket_errors = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
            w.socket_detail = Some(rest.trim().to_string());
        } else if l.contains(" requests in ") {
            // `134000 requests in 5.00s, 50.00MB read`
            let mut parts = l.split_whitespace();
            w.requests = parts.next()?.parse().ok()?;
            let secs = l.split(" requests in ").nth(1)?.split(',').next()?;
            w.seconds = wrk_time_ms(secs)? / 1000.0;
        } else if let Some(rest) = l.strip_prefix("50%") {
            w.p50_ms = wrk_time_ms(rest);
        } else if let Some(rest) = l.strip_prefix("99%") {
            w.p99_ms = wrk_time_ms(rest);
        } else if let Some(rest) = l.strip_prefix("Latency") {
            // Thread stats: `Latency   2.31ms  500.00us  10.00ms   80.00%`
            let cols: Vec<&str> = rest.split_whitespace().collect();
            if cols.len() >= 3 {
                w.max_ms = wrk_time_ms(cols[2]);
            }
        }
    }
    saw_rate.then_some(w)
}

pub(super) fn wrk_figure(
    sh: &Shell,
    wrk: &Path,
    name: &str,
    url: &str,
    secs: u64,
    script: Option<&Path>,
) -> Result<Figure> {
    let (t, c, d) = (
        WRK_THREADS.to_string(),
        WRK_CONNECTIONS.to_string(),
        format!("{secs}s"),
    );
    let script_args: Vec<String> = match script {
        Some(s) => vec!["-s".into(), s.display().to_string()],
        None => Vec::new(),
    };
    let out = run_tool(
        "wrk",
        cmd!(
            sh,
            "{wrk} -t{t} -c{c} -d{d} --latency --timeout 10s {script_args...} {url}"
        ),
    )?;
    let w = parse_wrk(&out).with_context(|| format!("cannot read wrk's output:\n{out}"))?;
    let errors = w.non_2xx + w.socket_errors;
    let ok = w.requests.saturating_sub(errors);
    let seconds = if w.seconds > 0.0 {
        w.seconds
    } else {
        secs as f64
    };
    let mut detail = Vec::new();
    if w.non_2xx > 0 {
        detail.push(format!("{} non-2xx", w.non_2xx));
    }
    if w.socket_errors > 0 {
        detail.push(format!(
            "socket errors: {}",
            w.socket_detail.clone().unwrap_or_default()
        ));
    }
    Ok(Figure {
        name: name.to_string(),
        target: url.to_string(),
        unit: "req/s".into(),
        per_s: (ok as f64 / seconds * 10.0).round() / 10.0,
        total: w.requests,
        errors,
        error_detail: (!detail.is_empty()).then(|| detail.join(", ")),
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        max_ms: w.max_ms,
        ..Figure::default()
    })
}

/// wrk's Lua script for `POST /reports` with one valid report (and the bearer token).
fn post_script(token: Option<&str>) -> String {
    let (body, _) = crate::ops::seed::report_body(&mut Rng::new(7));
    let body = String::from_utf8_lossy(&body).into_owned();
    let mut s = String::from("wrk.method = \"POST\"\n");
    // A long bracket needs no escaping; the body never contains `]==]`.
    let _ = writeln!(s, "wrk.body = [==[{body}]==]");
    s.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    if let Some(t) = token {
        let _ = writeln!(s, "wrk.headers[\"Authorization\"] = \"Bearer {t}\"");
    }
    s
}

fn connect(url: &str) -> Result<Client> {
    Client::connect(url, NoTls).with_context(|| format!("connect to {url}"))
}

fn max_position(command_db: &str) -> Result<i64> {
    let mut c = connect(command_db)?;
    let row = c.query_one("SELECT coalesce(max(position), 0) FROM event_log", &[])?;
    Ok(row.get(0))
}

/// Until the relay has published every event-log row to the stream.
fn wait_published(command_db: &str) -> Result<()> {
    let mut c = connect(command_db)?;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        let row = c.query_one(
            "SELECT count(*) FROM event_log WHERE published_at IS NULL",
            &[],
        )?;
        let left: i64 = row.get(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{left} event-log rows still unpublished after {} s (is Redis up?)",
                CATCH_UP_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn checkpoint(c: &mut Client) -> Result<i64> {
    let row = c.query_opt(
        "SELECT position FROM checkpoint WHERE stream = $1",
        &[&STREAM],
    )?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// Until every query DB has applied every event up to `position`, the stream ending at `tail`
/// (`burst::applied_all`).
fn wait_checkpoints(
    dbs: &[(String, String)],
    position: i64,
    tail: Option<i64>,
    timeout: Duration,
) -> Result<()> {
    let mut clients = dbs
        .iter()
        .map(|(n, u)| Ok((n.clone(), connect(u)?)))
        .collect::<Result<Vec<_>>>()?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut behind = Vec::new();
        for (name, c) in &mut clients {
            let at = checkpoint(c)?;
            if !super::burst::applied_all(at, position, tail) {
                behind.push(format!("{name} at {at}"));
            }
        }
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "query DBs not at event-log position {position} after {} s: {}",
                timeout.as_secs(),
                behind.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop the projection, build a backlog, start it and time the catch-up. The projection is
/// started again whatever happens in between.
#[allow(clippy::too_many_arguments)]
fn projection_run(
    sh: &Shell,
    wrk: &Path,
    command_1: &str,
    script: &Path,
    secs: u64,
    post_rate: f64,
    command_db: &str,
    query_dbs: &[(String, String)],
) -> Result<ProjectionRun> {
    let op = |action| ServiceOp {
        action,
        service: "projection".into(),
    };
    eprintln!("throughput: projection: stopping it to build a backlog of ~{BACKLOG_EVENTS} events");
    op(ServiceAction::Stop).run(sh)?;
    let mut started = false;
    let result = (|| -> Result<ProjectionRun> {
        let before = max_position(command_db)?;
        // Rounds of `secs` (at least enough for the backlog at the rate just measured).
        let round = if post_rate > 0.0 {
            ((BACKLOG_EVENTS as f64 / post_rate).ceil() as u64 + 1).clamp(secs, 60)
        } else {
            secs
        };
        let mut rounds = 0;
        let mut last = before;
        while last - before < BACKLOG_EVENTS && rounds < BACKLOG_ROUNDS {
            let f = wrk_figure(
                sh,
                wrk,
                "backlog",
                &format!("{command_1}/reports"),
                round,
                Some(script),
            )?;
            if f.errors > 0 {
                eprintln!(
                    "throughput: backlog round: {} errors ({})",
                    f.errors,
                    f.error_detail.unwrap_or_default()
                );
            }
            rounds += 1;
            last = max_position(command_db)?;
        }
        wait_published(command_db)?;
        let last = max_position(command_db)?;
        let tail = super::burst::stream_tail(&mut connect(command_db)?)?;
        let events: i64 = connect(command_db)?
            .query_one(
                "SELECT count(*) FROM event_log WHERE position > $1 AND position <= $2",
                &[&before, &last],
            )?
            .get(0);
        eprintln!(
            "throughput: projection: {events} events in the backlog; starting it and timing until every query DB is at position {last}"
        );
        let mut clients = query_dbs
            .iter()
            .map(|(n, u)| Ok((n.clone(), connect(u)?)))
            .collect::<Result<Vec<_>>>()?;
        let initial = clients
            .iter_mut()
            .map(|(_, c)| checkpoint(c))
            .collect::<Result<Vec<_>>>()?;
        let poller = std::thread::Builder::new()
            .name("throughput-poll".into())
            .spawn(move || -> Result<(Duration, Vec<(String, Duration)>)> {
                let t0 = Instant::now();
                let mut first: Option<Duration> = None;
                let mut done: Vec<Option<Duration>> = vec![None; clients.len()];
                while done.iter().any(Option::is_none) {
                    if t0.elapsed() > CATCH_UP_TIMEOUT {
                        bail!(
                            "the projection did not apply {events} events to every query DB within {} s",
                            CATCH_UP_TIMEOUT.as_secs()
                        );
                    }
                    for (i, (_, c)) in clients.iter_mut().enumerate() {
                        if done[i].is_some() {
                            continue;
                        }
                        let at = checkpoint(c)?;
                        let now = t0.elapsed();
                        if first.is_none() && at > initial[i] {
                            first = Some(now);
                        }
                        if super::burst::applied_all(at, last, tail) {
                            done[i] = Some(now);
                        }
                    }
                    std::thread::sleep(POLL);
                }
                let per_db = clients
                    .iter()
                    .zip(done)
                    .map(|((n, _), d)| (n.clone(), d.unwrap_or_default()))
                    .collect();
                Ok((first.unwrap_or_default(), per_db))
            })
            .context("spawn the checkpoint poller")?;
        let start = op(ServiceAction::Start).run(sh);
        started = start.is_ok();
        let polled = poller
            .join()
            .map_err(|_| anyhow::anyhow!("checkpoint poller panicked"))?;
        start?;
        let (first, per_db) = polled?;
        let all = per_db.iter().map(|d| d.1).max().unwrap_or_default();
        let apply = all.saturating_sub(first);
        let per_s = |d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                (events as f64 / d.as_secs_f64()).round()
            }
        };
        Ok(ProjectionRun {
            events,
            query_dbs: per_db.iter().map(|d| d.0.clone()).collect(),
            start_to_first_apply_ms: first.as_secs_f64() * 1000.0,
            apply_ms: apply.as_secs_f64() * 1000.0,
            events_per_s: per_s(apply),
            events_per_s_with_start: per_s(all),
            per_db_caught_up_ms: per_db
                .into_iter()
                .map(|(n, d)| (n, d.as_secs_f64() * 1000.0))
                .collect(),
        })
    })();
    if !started {
        eprintln!("throughput: starting the projection again");
        op(ServiceAction::Start).run(sh)?;
    }
    result
}

/// Scratch database of the write ceiling, on command-db.
const WRITE_CEILING_DB: &str = "pgbench_write_ceiling";

/// The command DB's write ceiling next to `POST /reports` through nginx, all in this run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteCeilingRun {
    /// tps of [`post_sql`] as one POST runs it now (no NOTIFY in the commit: the relay's
    /// wake-up is sent after it, `command/src/wake.rs`).
    pub ceiling_tps: f64,
    /// tps of the same statement with the in-commit `pg_notify` of the old design.
    #[serde(default)]
    pub with_notify_tps: f64,
    /// `POST /reports` via nginx, 2xx per second.
    pub post_nginx_per_s: f64,
    /// `post_nginx_per_s` / `ceiling_tps`.
    pub post_ratio: f64,
    /// 1 − `with_notify_tps` / `ceiling_tps`: the share of the ceiling an in-commit NOTIFY
    /// costs.
    pub notify_cost: f64,
}

/// The create statement of `command/src/store.rs` (`CREATE_SQL`), word for word: a unit test
/// holds the two equal, so the ceiling measures what one POST runs.
const POST_STATEMENT: &str = "WITH r AS (INSERT INTO reports (id, title, description, category, \
     status, version, created_at, updated_at, lat, lng, address, media_url) \
     VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING \
     RETURNING id), \
     e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
     SELECT $11, $12, id, 1, $13, $6 FROM r RETURNING position) \
     SELECT position FROM e";

/// What the old design's statement selected instead: the wake-up inside the commit.
const NOTIFY_SELECT: &str = "SELECT position, pg_notify('report_events', '')::text FROM e";

/// The SQL of one `POST /reports` ([`POST_STATEMENT`]) as a pgbench script line, its
/// parameters replaced by values like the ones wrk posts (a fresh id per transaction, the
/// payload serialised as the service does). `notify` puts back the old design's in-commit
/// `pg_notify`, so the run can say what it costs.
fn post_sql(notify: bool) -> Result<String> {
    let (body, _) = crate::ops::seed::report_body(&mut Rng::new(7));
    let b: serde_json::Value = serde_json::from_slice(&body)?;
    let field = |k: &str| {
        b.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let now = time::OffsetDateTime::now_utc();
    let report = shared::model::Report {
        id: uuid::Uuid::new_v4(),
        title: field("title"),
        description: field("description"),
        category: field("category")
            .parse()
            .map_err(|e| anyhow::anyhow!("report_body's category: {e}"))?,
        status: shared::model::Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: None,
        address: None,
        media_url: None,
    };
    let payload = serde_json::to_string(&report)?;
    let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let values = [
        "gen_random_uuid()".to_string(),
        q(&report.title),
        q(&report.description),
        q(report.category.as_str()),
        q(report.status.as_str()),
        "now()".to_string(),
        "NULL::float8".to_string(),
        "NULL::float8".to_string(),
        "NULL::text".to_string(),
        "NULL::text".to_string(),
        "gen_random_uuid()".to_string(),
        q(shared::event::EventType::ReportCreated.as_str()),
        q(&payload),
    ];
    let mut sql = POST_STATEMENT.to_string();
    // From $13 down, so `$1` never eats the start of `$11`.
    for (i, v) in values.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", i + 1), v);
    }
    if notify {
        sql = sql.replace("SELECT position FROM e", NOTIFY_SELECT);
    }
    Ok(format!("{sql};\n"))
}

/// pgbench with `script` on a fresh scratch database of command-db holding the command schema
/// (`sql/command.sql`, as the service applies it), dropped afterwards.
fn pgbench_write(
    sh: &Shell,
    topo: &Topology,
    secs: u64,
    name: &str,
    script: &Path,
) -> Result<Figure> {
    let svc = topo
        .service("command-db")
        .context("the cluster has no command-db")?;
    let port = svc.port().to_string();
    let pgbench = pg_tool("pgbench");
    with_scratch_db(sh, &port, WRITE_CEILING_DB, || {
        let url = format!("postgres://{PG_USER}@127.0.0.1:{port}/{WRITE_CEILING_DB}");
        shared::migrate::command_db(&mut connect(&url)?).context("command schema")?;
        let (c, j, t) = (
            PGBENCH_CLIENTS.to_string(),
            PGBENCH_THREADS.to_string(),
            secs.to_string(),
        );
        let out = run_tool(
            "pgbench -f",
            cmd!(
                sh,
                "{pgbench} -n -f {script} -M prepared -c {c} -j {j} -T {t} -h 127.0.0.1 -p {port} -U {PG_USER} {WRITE_CEILING_DB}"
            ),
        )?;
        let tps = parse_pgbench_tps(&out)
            .with_context(|| format!("no `tps = ` in pgbench's output:\n{out}"))?;
        let avg = pgbench_latency_avg(&out);
        Ok(Figure {
            name: name.to_string(),
            target: format!("command-db (127.0.0.1:{port}/{WRITE_CEILING_DB})"),
            unit: "tps".into(),
            per_s: tps,
            total: (tps * secs as f64).round() as u64,
            p50_ms: avg,
            ..Figure::default()
        })
    })
}

/// The write ceiling (one POST's SQL) and the old design's with NOTIFY, then `POST /reports`
/// via nginx: three figures
/// (ratios to the `-S` ceiling `tps` like every other) and the write summary.
fn write_ceiling(
    sh: &Shell,
    topo: &Topology,
    wrk: &Path,
    token: Option<&str>,
    secs: u64,
    tps: f64,
) -> Result<(Vec<Figure>, WriteCeilingRun)> {
    let scratch = std::env::temp_dir().join(format!("xtask-write-ceiling-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let result = (|| -> Result<Vec<Figure>> {
        let post = scratch.join("post.sql");
        let with_notify = scratch.join("post-with-notify.sql");
        std::fs::write(&post, post_sql(false)?)?;
        std::fs::write(&with_notify, post_sql(true)?)?;
        let lua = scratch.join("post.lua");
        std::fs::write(&lua, post_script(token))?;
        let mut figures = Vec::new();
        eprintln!("throughput: write ceiling (pgbench: one POST's SQL on command-db)");
        figures.push(pgbench_write(
            sh,
            topo,
            secs,
            &format!("write ceiling: POST's SQL, pgbench -c {PGBENCH_CLIENTS}"),
            &post,
        )?);
        figures.push(pgbench_write(
            sh,
            topo,
            secs,
            &format!("old design: + NOTIFY in commit, pgbench -c {PGBENCH_CLIENTS}"),
            &with_notify,
        )?);
        let url = format!("http://127.0.0.1:{}/reports", topo.ports.write);
        eprintln!("throughput: POST /reports via nginx ({url})");
        figures.push(wrk_figure(
            sh,
            wrk,
            "POST /reports → nginx (all command instances)",
            &url,
            secs,
            Some(&lua),
        )?);
        Ok(figures)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let mut figures = result?;
    for f in &mut figures {
        f.ratio_to_ceiling = ratio(f.per_s, tps);
    }
    let run = WriteCeilingRun {
        ceiling_tps: figures[0].per_s,
        with_notify_tps: figures[1].per_s,
        post_nginx_per_s: figures[2].per_s,
        post_ratio: ratio(figures[2].per_s, figures[0].per_s),
        notify_cost: if figures[0].per_s > 0.0 {
            ((1.0 - figures[1].per_s / figures[0].per_s) * 1000.0).round() / 1000.0
        } else {
            0.0
        },
    };
    Ok((figures, run))
}

impl ThroughputReport {
    /// The on-screen table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "bench throughput: closed loop, {} s per figure, {}; {}; {} CPUs, everything on this machine\n",
            self.duration_s, self.wrk, self.topology, self.cpus
        );
        let _ = writeln!(
            t,
            "{:<50} {:>10} {:<9} {:>7} {:>7} {:>8} {:>8} {:>9}  errors",
            "FIGURE", "per s", "unit", "ratio", "/health", "p50 ms", "p99 ms", "max ms"
        );
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        for f in &self.figures {
            let _ = writeln!(
                t,
                "{:<50} {:>10.0} {:<9} {:>7.3} {:>7} {:>8} {:>8} {:>9}  {}",
                f.name,
                f.per_s,
                f.unit,
                f.ratio_to_ceiling,
                f.ratio_to_health
                    .map_or_else(|| "-".to_string(), |r| format!("{r:.3}")),
                opt(f.p50_ms),
                opt(f.p99_ms),
                opt(f.max_ms),
                if f.errors == 0 {
                    "-".to_string()
                } else {
                    format!(
                        "{} ({})",
                        f.errors,
                        f.error_detail.clone().unwrap_or_default()
                    )
                }
            );
        }
        let _ = writeln!(
            t,
            "(ratio = per s / the ceiling's tps in this run, /health = per s / GET /health via nginx in this run; the ceiling's p50 column is pgbench's average latency)"
        );
        if let Some(p) = &self.projection {
            let _ = writeln!(
                t,
                "\nprojection: {} events applied to {} query DBs ({}) in {:.0} ms after the first \
                 one ({:.0} ms from the start request to the first apply): {:.0} events/s \
                 ({:.0} events/s counting start-up)",
                p.events,
                p.query_dbs.len(),
                p.query_dbs.join(", "),
                p.apply_ms,
                p.start_to_first_apply_ms,
                p.events_per_s,
                p.events_per_s_with_start
            );
            for (db, ms) in &p.per_db_caught_up_ms {
                let _ = writeln!(
                    t,
                    "  {db:<22} caught up {ms:>9.0} ms after the start request"
                );
            }
        }
        if let Some(w) = &self.writes {
            let _ = writeln!(
                t,
                "\nwrites: POST via nginx {:.0} req/s = {:.3} of the write ceiling ({:.0} tps, \
                 one POST's SQL in pgbench); an in-commit NOTIFY (the old design) would cost \
                 {:.1} % of it ({:.0} tps with it)",
                w.post_nginx_per_s,
                w.post_ratio,
                w.ceiling_tps,
                w.notify_cost * 100.0,
                w.with_notify_tps
            );
        }
        t.push('\n');
        t.push_str(&rss::table(&self.rss));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUT: &str = "Running 5s test @ http://127.0.0.1:8201/reports/x
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  500.00us  10.50ms   80.00%
    Req/Sec    27.00k     1.00k   29.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    2.50ms
     90%    2.90ms
     99%    1.20s
  134000 requests in 5.00s, 50.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:  26800.00
Transfer/sec:     10.00MB
";

    #[test]
    fn reads_wrk_output() {
        let w = parse_wrk(WRK_OUT).unwrap();
        assert_eq!(w.requests, 134_000);
        assert!((w.seconds - 5.0).abs() < 1e-9);
        assert!((w.requests_per_s - 26_800.0).abs() < 1e-9);
        assert_eq!(w.non_2xx, 12);
        assert_eq!(w.socket_errors, 5);
        assert_eq!(w.p50_ms, Some(0.812));
        assert_eq!(w.p99_ms, Some(1200.0));
        assert_eq!(w.max_ms, Some(10.5));
        assert!(parse_wrk("garbage").is_none());
    }

    #[test]
    fn reads_pgbench_tps() {
        let out = "number of transactions actually processed: 137000\n\
                   latency average = 0.580 ms\n\
                   tps = 27512.345678 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out), Some(27512.345678));
        assert_eq!(parse_pgbench_tps("nothing"), None);
    }

    #[test]
    fn throughput_flag_takes_only_its_own_options() {
        let parse = |args: &[&str]| {
            let argv = std::iter::once("bench").chain(args.iter().copied());
            crate::flags::parse(argv.map(std::ffi::OsString::from))
        };
        assert!(parse(&["--throughput", "--duration", "3", "--out", "x.json"]).is_ok());
        for extra in [
            ["--level", "light"],
            ["--write-rps", "10"],
            ["--read-url", "http://x:1"],
        ] {
            let mut args = vec!["--throughput"];
            args.extend(extra);
            assert!(parse(&args).is_err(), "{args:?}");
        }
    }

    /// The ceiling runs the service's own create statement.
    #[test]
    fn post_statement_is_the_services_create() {
        assert_eq!(POST_STATEMENT, command::store::CREATE_SQL);
    }

    #[test]
    fn post_sql_is_one_line_with_or_without_notify() {
        let with = post_sql(true).unwrap();
        let without = post_sql(false).unwrap();
        assert!(with.contains("pg_notify('report_events'"), "{with}");
        assert!(!without.contains("pg_notify"), "{without}");
        assert!(
            !without.contains('$'),
            "every parameter replaced: {without}"
        );
        for s in [&with, &without] {
            // pgbench reads one SQL command per line; the literals are quoted and balanced.
            assert_eq!(s.lines().count(), 1, "{s}");
            assert!(s.ends_with(";\n"), "{s}");
            assert_eq!(s.matches('\'').count() % 2, 0, "{s}");
            assert!(
                s.contains("'ReportCreated'") && s.contains("\"version\":1"),
                "{s}"
            );
        }
    }

    #[test]
    fn post_script_is_valid_lua_shape() {
        let s = post_script(Some("abc"));
        assert!(s.starts_with("wrk.method = \"POST\"\n"), "{s}");
        assert!(s.contains("wrk.body = [==[{\""), "{s}");
        assert!(s.contains("Bearer abc"), "{s}");
        assert!(!post_script(None).contains("Authorization"));
    }
}

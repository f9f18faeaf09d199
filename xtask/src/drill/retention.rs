//! Drills of SPEC §7.4: bounded retention and poison that decodes. Each runs as one fault of
//! `cargo xtask drill`, under the same load and verification as the others (every
//! acknowledged write in every query DB afterwards, check-sync included), and returns the
//! figures of its row:
//! - **long replica outage**: `query-db-replica1` stopped while far more events than the bound
//!   flow (100 000 with a 20 000-entry bound; `--short`: 2 000 with 300) — Redis memory and
//!   stream length sampled throughout (they must stay bounded), the replica declared stale,
//!   then started again: the projection rebuilds it from the command DB and it rejoins, with
//!   no manual step (time to rebuild and to rejoin measured);
//! - **restored old replica**: a copy of the replica's data directory taken, the stream moved
//!   on past the bound and trimmed, the copy put back and started: it must be detected, never
//!   served by a query instance (every read of `query-1`, whose preferred DB it is, sampled
//!   until it has rejoined), and rebuilt;
//! - **poison entry**: an entry that decodes but whose title holds U+0000 XADDed into the
//!   stream: it must reach the dead-letter stream with PostgreSQL's reason, and the writes
//!   after it apply everywhere.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::health;
use crate::cluster::State;

/// The projection's retention bound in the drill cluster (`STREAM_MAX_ENTRIES`).
pub fn bound(short: bool) -> usize {
    if short {
        300
    } else {
        20_000
    }
}

/// Events written while the replica is away: five times the bound (the 100 000 with
/// the 20 000-entry bound), a few thousand in `--short`.
fn flood_events(short: bool) -> u64 {
    if short {
        2_000
    } else {
        100_000
    }
}

const REPLICA: &str = "query-db-replica1";

/// One seeded report makes ~1.8 events (a create, then 60 % of them move status once or twice).
const EVENTS_PER_SEEDED_REPORT: f64 = 1.8;

/// Writers in parallel while flooding: enough to outrun the projection of one DB.
const FLOOD_THREADS: u64 = 4;

/// Longest wait for the projection to rebuild the replica and let it rejoin.
const REJOIN_DEADLINE: Duration = Duration::from_secs(300);

/// What the drill needs of the cluster.
pub struct Ctx<'a> {
    pub state: &'a State,
    pub state_dir: &'a Path,
    pub write_url: &'a str,
    pub short: bool,
    /// Runs `cargo xtask <args>` against the drill cluster.
    pub xtask: &'a dyn Fn(&[&str]) -> Result<()>,
}

/// The read-only probes, small and `Copy` so sampler threads can own one.
#[derive(Clone, Copy)]
struct Probe {
    projection: u16,
    redis: u16,
}

impl Ctx<'_> {
    fn probe(&self) -> Probe {
        Probe {
            projection: self.state.topology.ports.projection,
            redis: self.state.topology.ports.redis,
        }
    }

    fn projection_metric(&self, name: &str, db: &str) -> Option<f64> {
        self.probe().projection_metric(name, db)
    }

    fn redis(&self, args: &[&str]) -> Result<String> {
        self.probe().redis(args)
    }

    fn used_memory(&self) -> Option<u64> {
        self.probe().used_memory()
    }

    fn xlen(&self) -> Option<u64> {
        self.probe().xlen()
    }
}

impl Probe {
    fn projection_metric(&self, name: &str, db: &str) -> Option<f64> {
        let (code, body) = health::http_get(self.projection, "/metrics").ok()?;
        if code != 200 {
            return None;
        }
        let key = format!("{name}{{db=\"{db}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
    }

    fn redis(&self, args: &[&str]) -> Result<String> {
        let port = self.redis.to_string();
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .context("run redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn used_memory(&self) -> Option<u64> {
        let info = self.redis(&["INFO", "memory"]).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
    }

    fn xlen(&self) -> Option<u64> {
        self.redis(&["XLEN", shared::event::STREAM])
            .ok()?
            .parse()
            .ok()
    }
}

impl Ctx<'_> {
    fn wait(
        &self,
        what: &str,
        deadline: Duration,
        mut ok: impl FnMut() -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        while !ok() {
            if start.elapsed() > deadline {
                bail!("{what}: not within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(start.elapsed())
    }

    /// Writes ~`events` events through the command service from several connections while a
    /// sampler records Redis memory and stream length; returns (peak memory, peak length).
    fn flood(&self, events: u64) -> Result<(u64, u64)> {
        let reports = ((events as f64 / EVENTS_PER_SEEDED_REPORT) as u64).max(FLOOD_THREADS);
        let done = Arc::new(AtomicBool::new(false));
        let peak_mem = Arc::new(AtomicU64::new(0));
        let peak_len = Arc::new(AtomicU64::new(0));
        let probe = self.probe();
        let url = self.write_url.to_owned();
        std::thread::scope(|s| -> Result<()> {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    if let Some(m) = probe.used_memory() {
                        peak_mem.fetch_max(m, Ordering::Relaxed);
                    }
                    if let Some(l) = probe.xlen() {
                        peak_len.fetch_max(l, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            let writers: Vec<_> = (0..FLOOD_THREADS)
                .map(|_| s.spawn(|| crate::ops::seed::seed(&url, reports / FLOOD_THREADS, None)))
                .collect();
            let mut result = Ok(());
            for w in writers {
                match w.join() {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => result = Err(e),
                    Err(_) => result = Err(anyhow::anyhow!("a flood writer panicked")),
                }
            }
            // Trimming runs every 5 s: sample through a couple of trims after the flood.
            std::thread::sleep(Duration::from_secs(12));
            done.store(true, Ordering::Relaxed);
            result
        })?;
        Ok((
            peak_mem.load(Ordering::Relaxed),
            peak_len.load(Ordering::Relaxed),
        ))
    }

    /// Starts the replica and waits until the projection has rebuilt it and it has rejoined
    /// (not stale, mark cleared); returns (rebuild seconds, time from start to rejoined).
    fn start_and_wait_rejoined(&self, rebuilds_before: f64) -> Result<(f64, Duration)> {
        let started = Instant::now();
        (self.xtask)(&["start", REPLICA])?;
        self.wait("the replica rebuilt and rejoined", REJOIN_DEADLINE, || {
            self.projection_metric("projection_rebuilds_total", REPLICA) > Some(rebuilds_before)
                && self.projection_metric("projection_db_stale", REPLICA) == Some(0.0)
                && self.projection_metric("projection_db_attached", REPLICA) == Some(1.0)
        })?;
        let rebuild = self
            .projection_metric("projection_last_rebuild_seconds", REPLICA)
            .unwrap_or(0.0);
        Ok((rebuild, started.elapsed()))
    }
}

/// (a) The replica away while far more than the bound flows.
pub fn long_outage(ctx: &Ctx<'_>) -> Result<String> {
    let bound = bound(ctx.short);
    let events = flood_events(ctx.short);
    let before = ctx
        .projection_metric("projection_rebuilds_total", REPLICA)
        .unwrap_or(0.0);
    let mem_before = ctx.used_memory().unwrap_or(0);
    (ctx.xtask)(&["stop", REPLICA])?;
    let (peak_mem, peak_len) = ctx.flood(events)?;
    // Bounded: the stale replica is dropped once its backlog passes the bound, and the stream
    // is trimmed every 5 s, so it peaks at about the bound plus 5 s of writes.
    ctx.wait(
        "the replica declared stale",
        Duration::from_secs(60),
        || ctx.projection_metric("projection_db_stale", REPLICA) == Some(1.0),
    )?;
    let len_after = ctx.xlen().unwrap_or(0);
    let (rebuild, rejoin) = ctx.start_and_wait_rejoined(before)?;
    Ok(format!(
        "{events} events with a {bound}-entry bound (trimmed every 5 s): Redis used_memory \
         {:.1} MB before, peak {:.1} MB; stream peak {peak_len} entries, {len_after} after \
         trimming; replica rebuilt in {rebuild:.2} s, rejoined {:.1} s after it started",
        mem_before as f64 / 1e6,
        peak_mem as f64 / 1e6,
        rejoin.as_secs_f64()
    ))
}

/// (b) The replica restored from an old copy of its data directory.
pub fn restored_old(ctx: &Ctx<'_>) -> Result<String> {
    let bound = bound(ctx.short);
    let data = ctx.state_dir.join("data").join(REPLICA);
    let copy = ctx
        .state_dir
        .join("data")
        .join(format!("{REPLICA}.old-copy"));
    let before = ctx
        .projection_metric("projection_rebuilds_total", REPLICA)
        .unwrap_or(0.0);
    // An old copy: taken cleanly while stopped, then the system moves on past the bound.
    (ctx.xtask)(&["stop", REPLICA])?;
    copy_dir(&data, &copy)?;
    (ctx.xtask)(&["start", REPLICA])?;
    ctx.flood(bound as u64 * 4)?;
    // The copy goes back in place of the current data directory.
    (ctx.xtask)(&["stop", REPLICA])?;
    std::fs::remove_dir_all(&data).with_context(|| format!("remove {}", data.display()))?;
    std::fs::rename(&copy, &data).with_context(|| format!("restore {}", data.display()))?;
    let served_stale = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // query-1 prefers the replica: sample which DB answers its reads until the replica rejoined.
    let query1 = ctx.state.topology.ports.query_base + 1;
    let probe = ctx.probe();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok((200, db)) = read_db(query1) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if db == REPLICA && !done.load(Ordering::Relaxed) {
                        // Only counts while the projection still calls it stale.
                        if probe.projection_metric("projection_db_stale", REPLICA) != Some(0.0)
                            || probe.projection_metric("projection_rebuilds_total", REPLICA)
                                <= Some(before)
                        {
                            served_stale.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let r = ctx.start_and_wait_rejoined(before);
        done.store(true, Ordering::Relaxed);
        r
    });
    let (rebuild, rejoin) = result?;
    let stale_reads = served_stale.load(Ordering::Relaxed);
    if reads.load(Ordering::Relaxed) == 0 {
        bail!("no read of query-1 answered while the restored replica came back");
    }
    if stale_reads > 0 {
        bail!("{stale_reads} reads were served by the restored (stale) replica");
    }
    Ok(format!(
        "old copy restored behind a {bound}-entry bound: detected, 0 of {} sampled reads of \
         query-1 served from it; rebuilt in {rebuild:.2} s, rejoined {:.1} s after it started",
        reads.load(Ordering::Relaxed),
        rejoin.as_secs_f64()
    ))
}

/// (c) An entry that decodes but that PostgreSQL refuses (U+0000 in the title: 22021).
pub fn poison(ctx: &Ctx<'_>) -> Result<String> {
    let dlq_before: u64 = ctx
        .redis(&["XLEN", shared::event::DLQ_STREAM])?
        .parse()
        .unwrap_or(0);
    let id = uuid::Uuid::new_v4();
    let now = shared::model::now_micros();
    let report = shared::model::Report {
        id,
        title: "jalan\u{0}rusak".into(),
        description: "drill: poison that decodes".into(),
        category: shared::model::Category::Lainnya,
        status: shared::model::Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: None,
        address: None,
        media_url: None,
    };
    let event = shared::event::Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: shared::event::EventType::ReportCreated,
        report_id: id,
        version: 1,
        position: 0,
        payload: serde_json::to_string(&report)?,
        timestamp: now,
    };
    let mut args = vec![
        "XADD".to_owned(),
        shared::event::STREAM.to_owned(),
        "*".to_owned(),
    ];
    for (k, v) in event.to_fields() {
        args.push(k.to_owned());
        args.push(v);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    ctx.redis(&refs)?;
    let took = ctx.wait(
        "the poison entry in the DLQ",
        Duration::from_secs(60),
        || {
            ctx.redis(&["XLEN", shared::event::DLQ_STREAM])
                .ok()
                .and_then(|n| n.parse::<u64>().ok())
                > Some(dlq_before)
        },
    )?;
    let last = ctx.redis(&[
        "XREVRANGE",
        shared::event::DLQ_STREAM,
        "+",
        "-",
        "COUNT",
        "1",
    ])?;
    if !last.contains("22021") || !last.contains(&id.to_string()) {
        bail!("the DLQ's newest entry is not the poison with its reason: {last}");
    }
    let _ = started;
    Ok(format!(
        "U+0000 title: in the DLQ with SQLSTATE 22021 after {:.2} s; writes after it applied",
        took.as_secs_f64()
    ))
}

/// GET /reports on a query instance: (status, the X-Query-DB that answered). Reads the head
/// only: the service may keep the connection open, so reading to the end would wait.
fn read_db(port: u16) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /reports?per_page=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let db = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-query-db")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default();
    Ok((status, db))
}

/// `cp -a`: the copy keeps owners and modes (PostgreSQL refuses a data dir it does not own).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("run cp -a")?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

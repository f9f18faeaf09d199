//! `cargo xtask bench`: open-loop load against the write (nginx :8080) and read (nginx :8090)
//! endpoints at fixed rates, latency measured from each request's intended send time, with
//! per-endpoint tables, instance distribution, propagation lag to every query DB, a JSON file
//! and a comparison with an earlier JSON.
//!
//! Layout: [`config`] (what one run needs, the levels), [`schedule`] (intended times, mixes), (requests go through `crate::http`), [`engine`]
//! (pacer, a fixed set of connections on coroutines, collector), [`lag`] (query-DB pollers), [`report`] (figures, table,
//! JSON, compare), [`rss`] (each service's memory at the end of a run), [`throughput`] (the
//! closed-loop suite of `--throughput`: wrk and pgbench ceilings, projection catch-up; its read
//! figures in [`reads`]). [`run`] is the library entry point: tests and other tasks call it with a
//! [`BenchConfig`] and get a [`BenchReport`] back.

pub mod burst;
pub mod config;
mod engine;
pub(crate) mod lag;
pub mod reads;
pub mod report;
pub mod rss;
pub mod schedule;
#[cfg(test)]
mod tests;
pub mod throughput;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

pub use config::BenchConfig;
use config::DEFAULT_DURATION;
pub use report::BenchReport;
use report::Step;
pub use schedule::Mix;

use burst::BurstReport;

use crate::cluster::local::LocalCluster;
use crate::cluster::topology::Topology;
use crate::cluster::Layout;

/// `--level max`: length of a step, unless `--duration` says otherwise.
const MAX_STEP: Duration = Duration::from_secs(5);

/// How `--level max` searches; [`MaxSearch::DEFAULT`] is what the command uses.
#[derive(Clone, Debug)]
pub struct MaxSearch {
    /// First total rate (stress: 200 + 800).
    pub start_rps: f64,
    /// Each step multiplies the total rate by this.
    pub factor: f64,
    /// A step holds while p99 of writes and of reads stays at or under this.
    pub p99_bound_ms: f64,
    /// Stop after this many steps even if everything held (1000 × 1.5⁹ ≈ 38 000 req/s).
    pub max_steps: usize,
}

impl MaxSearch {
    pub const DEFAULT: MaxSearch = MaxSearch {
        start_rps: 1000.0,
        factor: 1.5,
        p99_bound_ms: 50.0,
        max_steps: 10,
    };
}

/// Runs the bench `cfg` describes: one fixed-rate run, or the step search of `max`.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    if cfg.level == "max" {
        run_max(cfg, &MaxSearch::DEFAULT)
    } else {
        engine::run_fixed(cfg)
    }
}

/// Steps the total rate up from `search.start_rps` by `search.factor` (reads:writes 4:1)
/// until p99 exceeds the bound, errors appear, or the generator cannot keep up. The report is
/// the last step that held (or the first step, if none did), with every step listed.
pub fn run_max(cfg: &BenchConfig, search: &MaxSearch) -> Result<BenchReport> {
    let mut steps = Vec::new();
    let mut best: Option<BenchReport> = None;
    let mut first: Option<BenchReport> = None;
    let mut total = search.start_rps;
    for _ in 0..search.max_steps {
        let mut step_cfg = cfg.clone();
        step_cfg.write_rps = total / 5.0;
        step_cfg.read_rps = total * 4.0 / 5.0;
        eprintln!(
            "max: step at {total:.0} req/s ({:.0} writes + {:.0} reads) for {} s",
            step_cfg.write_rps,
            step_cfg.read_rps,
            step_cfg.duration.as_secs_f64()
        );
        let report = engine::run_fixed(&step_cfg)?;
        let p99 = report
            .writes
            .latency
            .p99_ms
            .max(report.reads.latency.p99_ms);
        let errors = report.total_errors();
        let why_not = if report.generator.bottleneck {
            Some("the generator could not keep the schedule (see warning)".to_string())
        } else if errors > 0 {
            Some(format!("{errors} errors"))
        } else if p99 > search.p99_bound_ms {
            Some(format!("p99 {p99:.1} ms > {} ms", search.p99_bound_ms))
        } else {
            None
        };
        let held = why_not.is_none();
        eprintln!(
            "max: {total:.0} req/s → p99 {p99:.2} ms, {errors} errors: {}",
            why_not.as_deref().unwrap_or("held")
        );
        steps.push(Step {
            total_rps: total,
            write_rps: step_cfg.write_rps,
            read_rps: step_cfg.read_rps,
            p99_ms: p99,
            errors,
            achieved_rps: report.writes.achieved_rps + report.reads.achieved_rps,
            held,
            why_not,
        });
        if first.is_none() {
            first = Some(report.clone());
        }
        if !held {
            break;
        }
        best = Some(report);
        total *= search.factor;
    }
    let max_sustained = steps.iter().rev().find(|s| s.held).map(|s| s.total_rps);
    let mut report = best.or(first).context("--level max ran no step")?;
    report.level = "max".into();
    report.steps = steps;
    report.max_sustained_rps = max_sustained;
    Ok(report)
}

/// `cargo xtask bench …` as parsed from the command line.
#[derive(Debug, Default)]
pub struct Bench {
    pub level: Option<String>,
    pub write_rps: Option<f64>,
    pub read_rps: Option<f64>,
    pub duration: Option<f64>,
    pub mix: Option<Mix>,
    pub write_url: Option<String>,
    pub read_url: Option<String>,
    pub out: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub token: Option<String>,
    pub query_dbs: Vec<(String, String)>,
    pub no_lag: bool,
    /// `--connections N`: keep-alive connections per side.
    pub connections: Option<usize>,
    /// `--burst S`: a closed-loop POST burst of S seconds, drained, before the runs.
    pub burst: Option<f64>,
    /// `--runs N`: N runs back to back.
    pub runs: Option<usize>,
    /// `--throughput`: the closed-loop suite instead of open-loop levels.
    pub throughput: bool,
    /// `--scale N`: the read path's statements at N reports (EXPLAIN + latency).
    pub scale: Option<u64>,
}

impl Bench {
    /// What the flags' kinds cannot say alone: a valid level name, levels and explicit rates
    /// excluding each other, `--throughput` taking only its own flags. Called by the CLI
    /// right after parsing, before anything looks for a cluster.
    pub fn check(&self) -> Result<()> {
        if let Some(level) = &self.level {
            // Validates the name now, before anything looks for a cluster.
            BenchConfig::new("", "", 0.0, 0.0).level(level)?;
        }
        if self.level.is_some() && (self.write_rps.is_some() || self.read_rps.is_some()) {
            bail!("give either --level or --write-rps/--read-rps, not both");
        }
        if self.burst.is_some() && (self.write_url.is_some() || self.read_url.is_some()) {
            bail!("--burst waits for the local cluster's projection to drain; it cannot bench other URLs");
        }
        if (self.burst.is_some() || self.runs.is_some_and(|n| n > 1))
            && self.level.as_deref() == Some("max")
        {
            bail!("--burst and --runs repeat a fixed-rate level; --level max steps on its own");
        }
        if self.throughput {
            let open_loop_only = self.level.is_some()
                || self.write_rps.is_some()
                || self.read_rps.is_some()
                || self.mix.is_some()
                || self.write_url.is_some()
                || self.read_url.is_some()
                || self.compare.is_some()
                || !self.query_dbs.is_empty()
                || self.no_lag
                || self.connections.is_some()
                || self.burst.is_some()
                || self.runs.is_some();
            if open_loop_only {
                bail!(
                    "--throughput measures the local cluster closed-loop; it takes only --duration, --out and --token"
                );
            }
        }
        Ok(())
    }

    /// The run's configuration, with the local cluster filling what the flags leave open.
    fn config(&self, local: Option<&LocalCluster>) -> Result<BenchConfig> {
        let default_local;
        let local = match local {
            Some(l) => l,
            None => {
                default_local = LocalCluster::of(&Topology::default());
                &default_local
            }
        };
        let write_url = self.write_url.clone().unwrap_or(local.write_url.clone());
        let read_url = self.read_url.clone().unwrap_or(local.read_url.clone());
        let mut cfg = BenchConfig::new(&write_url, &read_url, 0.0, 0.0);
        cfg = match (&self.level, self.write_rps, self.read_rps) {
            (Some(level), _, _) => cfg.level(level)?,
            (None, None, None) => cfg.level("light")?,
            (None, w, r) => {
                cfg.write_rps = w.unwrap_or(0.0);
                cfg.read_rps = r.unwrap_or(0.0);
                if cfg.write_rps + cfg.read_rps <= 0.0 {
                    bail!("--write-rps and --read-rps are both 0: nothing to send");
                }
                cfg
            }
        };
        cfg.duration = match self.duration {
            Some(s) => Duration::from_secs_f64(s),
            None if cfg.level == "max" => MAX_STEP,
            None => DEFAULT_DURATION,
        };
        if let Some(m) = &self.mix {
            cfg.mix = m.clone();
        }
        cfg.token = self
            .token
            .clone()
            .or_else(|| std::env::var("XTASK_TOKEN").ok());
        // The local cluster's query DBs only make sense when we bench the local cluster.
        cfg.query_dbs = if self.no_lag {
            Vec::new()
        } else if !self.query_dbs.is_empty() {
            self.query_dbs.clone()
        } else if self.write_url.is_none() && self.read_url.is_none() {
            local.query_dbs.clone()
        } else {
            Vec::new()
        };
        if let Some(n) = self.connections {
            cfg.connections = n;
        }
        cfg.progress = true;
        Ok(cfg)
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        if self.throughput {
            return self.run_throughput(sh);
        }
        if let Some(rows) = self.scale {
            let local = LocalCluster::discover(sh);
            let primary = local
                .query_dbs
                .first()
                .map(|(_, url)| url.clone())
                .context("the local cluster has no query DB")?;
            // It runs query::store's own statements, so it lives with the query crate; xtask
            // does not link the services.
            let rows = rows.to_string();
            cmd!(
                sh,
                "cargo run --release --quiet -p query --example scale -- {rows} {primary}"
            )
            .run()
            .context("bench --scale failed")?;
            return Ok(());
        }
        let local = (self.write_url.is_none() || self.read_url.is_none())
            .then(|| LocalCluster::discover(sh));
        let cfg = self.config(local.as_ref())?;
        let old = match &self.compare {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                Some(v)
            }
            None => None,
        };
        eprintln!(
            "bench {}: {} writes/s → {}, {} reads/s → {}, {} s{}",
            cfg.level,
            cfg.write_rps,
            cfg.write_url,
            cfg.read_rps,
            cfg.read_url,
            cfg.duration.as_secs_f64(),
            if cfg.query_dbs.is_empty() {
                ", no propagation lag (no query DBs)".to_string()
            } else {
                format!(
                    ", lag on {}",
                    cfg.query_dbs
                        .iter()
                        .map(|d| d.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let burst = match self.burst {
            Some(secs) => Some(self.burst_and_drain(sh, &cfg, secs)?),
            None => None,
        };
        let runs = self.runs.unwrap_or(1).max(1);
        let mut rows = Vec::new();
        for i in 1..=runs {
            if runs > 1 {
                eprintln!("run {i} of {runs}");
            }
            let mut report = run(&cfg)?;
            if self.write_url.is_none() && self.read_url.is_none() {
                // The local cluster was benched: its services' memory now, at the end of the run.
                report.rss = rss::sample(sh);
            }
            if i == 1 {
                report.burst = burst.clone();
            }
            print!("{}", report.table());
            let (kind, out) = if runs > 1 {
                let kind = format!("{}-run{i}of{runs}", report.level);
                let out = self.out.as_deref().map(|p| numbered(p, i));
                (kind, out)
            } else {
                (report.level.clone(), self.out.clone())
            };
            let out = write_results(sh, out.as_deref(), &kind, &report)?;
            if let Some(old) = &old {
                let new = serde_json::to_value(&report)?;
                println!(
                    "\ncompared with {}:",
                    self.compare.as_deref().unwrap_or(out.as_path()).display()
                );
                print!("{}", report::compare(old, &new));
            }
            rows.push(report);
        }
        if runs > 1 || burst.is_some() {
            print!("{}", report::runs_table(burst.as_ref(), &rows));
        }
        Ok(())
    }

    /// `--burst`: the closed-loop POST burst, then the wait until the pipeline drained it.
    fn burst_and_drain(&self, sh: &Shell, cfg: &BenchConfig, secs: f64) -> Result<BurstReport> {
        eprintln!(
            "burst: {secs} s of closed-loop POST /reports on {} connections → {}",
            burst::BURST_CONNECTIONS,
            cfg.write_url
        );
        let mut b = burst::post_burst(
            &cfg.write_url,
            cfg.token.as_deref(),
            Duration::from_secs_f64(secs),
            burst::BURST_CONNECTIONS,
        )?;
        let ended = std::time::Instant::now();
        let topo = Layout::new(sh).topology_or_default();
        let command_db = topo.command_db_url(crate::cluster::topology::Target::Local);
        let query_dbs = LocalCluster::of(&topo).query_dbs;
        b.last_position = burst::drain(&command_db, &query_dbs)?;
        b.drained_after_s = (ended.elapsed().as_secs_f64() * 100.0).round() / 100.0;
        eprintln!(
            "burst: {} created ({} req/s), {} errors; every query DB at position {} {:.2} s after the burst",
            b.created, b.created_per_s, b.errors, b.last_position, b.drained_after_s
        );
        Ok(b)
    }
}

/// `dir/name.json` → `dir/name-runI.json`, for the reports of `--runs` with `--out`.
fn numbered(path: &std::path::Path, i: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(|| "bench".into(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(|| "json".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-run{i}.{ext}"))
}

impl Bench {
    /// `--throughput`: the closed-loop suite of [`throughput`], its table and its JSON.
    fn run_throughput(self, sh: &Shell) -> Result<()> {
        let cfg = throughput::ThroughputConfig {
            duration: self
                .duration
                .map_or(throughput::DEFAULT_DURATION, Duration::from_secs_f64),
            token: self
                .token
                .clone()
                .or_else(|| std::env::var("XTASK_TOKEN").ok()),
        };
        let report = throughput::run(sh, &cfg)?;
        print!("{}", report.table());
        write_results(sh, self.out.as_deref(), "throughput", &report)?;
        Ok(())
    }
}

/// Writes a run's JSON to `out`, or to `target/bench/<time>-<kind>.json`; returns the path.
fn write_results(
    sh: &Shell,
    out: Option<&std::path::Path>,
    kind: &str,
    report: &impl serde::Serialize,
) -> Result<PathBuf> {
    let out = match out {
        Some(p) => p.to_path_buf(),
        None => {
            let stamp = time::OffsetDateTime::now_utc()
                .format(time::macros::format_description!(
                    "[year][month][day]-[hour][minute][second]"
                ))
                .unwrap_or_else(|_| "run".into());
            sh.current_dir()
                .join("target")
                .join("bench")
                .join(format!("{stamp}-{kind}.json"))
        }
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(&out, json + "\n").with_context(|| format!("write {}", out.display()))?;
    println!("\nresults: {}", out.display());
    Ok(out)
}

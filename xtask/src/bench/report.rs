//! The result of a bench run: per-endpoint figures from HDR histograms, instance distribution,
//! propagation lag and the generator's own health; printed as a table, saved as JSON, and
//! compared against an earlier JSON figure by figure (`--compare`).
//!
//! Every latency here is measured from the request's intended send time, in milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram tracks, in microseconds (10 minutes); larger values saturate.
const HIST_MAX_US: u64 = 600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("constant histogram bounds are valid")
}

pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Percentiles of a histogram in ms (0 when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: (h.mean()).round() / 1000.0,
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointReport {
    pub name: String,
    /// Requests whose intended send time fell inside the run.
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Failures by kind: `status 404`, `connect`, `timeout`, `io`, `protocol`.
    pub errors: BTreeMap<String, u64>,
    /// 2xx answers per second of the run.
    pub achieved_rps: f64,
    /// Latency from the intended send time, all answers (ok or not).
    #[serde(flatten)]
    pub latency: Latency,
}

impl EndpointReport {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Lag from a write's 2xx answer until one query DB (or every one) holds that version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LagReport {
    pub name: String,
    /// Sampled writes seen on this DB.
    pub samples: u64,
    /// Sampled writes not seen within the wait bound.
    pub not_visible: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Why this DB could not be polled, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl LagReport {
    pub fn of(name: &str, h: &Histogram<u64>, not_visible: u64, error: Option<String>) -> Self {
        let l = Latency::of(h);
        LagReport {
            name: name.to_string(),
            samples: h.len(),
            not_visible,
            p50_ms: l.p50_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
            error,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Propagation {
    /// Sampled writes (every Nth create and update).
    pub sampled: u64,
    /// Until visible on every query DB.
    pub all: LagReport,
    pub per_db: Vec<LagReport>,
}

/// Whether the load generator kept its schedule, so the figures are about the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Generator {
    /// Keep-alive connections per side, fixed for the run.
    pub connections_per_side: u64,
    /// TCP connections opened over the run (a connection the server closed is reopened).
    pub connections_opened: u64,
    /// Requests the generator itself sent more than `late_threshold_ms` after their intended
    /// time (its pacer late, or a hand-over to an idle connection slow).
    pub late_sends: u64,
    pub late_threshold_ms: f64,
    /// The generator's own delay of a request before it was sent.
    pub own_delay_p99_ms: f64,
    pub own_delay_max_ms: f64,
    /// How far the pacer itself woke up behind the schedule, at worst.
    pub scheduler_behind_max_ms: f64,
    /// Requests that found every connection of their side busy and waited for one (the
    /// server held them; the wait counts in their latency).
    pub queued_for_connection: u64,
    pub connection_wait_p99_ms: f64,
    pub connection_wait_max_ms: f64,
    pub bottleneck: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// One step of `--level max`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub total_rps: f64,
    pub write_rps: f64,
    pub read_rps: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub achieved_rps: f64,
    pub held: bool,
    pub why_not: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// The level name (`light`, …, `max`) or `custom`.
    pub level: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_s: f64,
    pub write_rps: f64,
    pub read_rps: f64,
    pub write_url: String,
    pub read_url: String,
    pub mix: BTreeMap<String, u32>,
    pub endpoints: Vec<EndpointReport>,
    /// All write endpoints together, and all read endpoints together.
    pub writes: EndpointReport,
    pub reads: EndpointReport,
    /// `X-Instance-ID` counts: `write` and `read`.
    pub instances: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<Propagation>,
    pub generator: Generator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// `--level max`: the highest total rate that held the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sustained_rps: Option<f64>,
    /// Each service's memory at the end of the run (local cluster only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rss: Vec<super::rss::ServiceRss>,
    /// `--burst`: the POST burst (and its drain) right before this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<super::burst::BurstReport>,
}

impl BenchReport {
    pub fn total_errors(&self) -> u64 {
        self.writes.error_count() + self.reads.error_count()
    }

    /// The on-screen table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "bench {}: {} s, target {} writes/s → {}, {} reads/s → {}",
            self.level,
            self.duration_s,
            self.write_rps,
            self.write_url,
            self.read_rps,
            self.read_url
        );
        let _ = writeln!(
            t,
            "latency in ms from the intended send time (open loop, no coordinated omission)\n"
        );
        let _ = writeln!(
            t,
            "{:<24} {:>7} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}  errors",
            "ENDPOINT", "SENT", "OK", "OK/s", "p50", "p95", "p99", "max"
        );
        let row = |t: &mut String, e: &EndpointReport| {
            let errors = if e.errors.is_empty() {
                "-".to_string()
            } else {
                e.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                t,
                "{:<24} {:>7} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {errors}",
                e.name,
                e.sent,
                e.ok,
                e.achieved_rps,
                e.latency.p50_ms,
                e.latency.p95_ms,
                e.latency.p99_ms,
                e.latency.max_ms
            );
        };
        for e in &self.endpoints {
            row(&mut t, e);
        }
        let _ = writeln!(t, "{}", "-".repeat(96));
        row(&mut t, &self.writes);
        row(&mut t, &self.reads);
        t.push('\n');
        for (side, counts) in &self.instances {
            let total: u64 = counts.values().sum();
            let parts: Vec<String> = counts
                .iter()
                .map(|(k, v)| format!("{k} {v} ({:.0} %)", *v as f64 * 100.0 / total.max(1) as f64))
                .collect();
            let _ = writeln!(
                t,
                "instances ({side}): {}",
                if parts.is_empty() {
                    "no X-Instance-ID seen".to_string()
                } else {
                    parts.join(", ")
                }
            );
        }
        if let Some(p) = &self.propagation {
            let _ = writeln!(
                t,
                "\npropagation lag (2xx write → version visible in the query DB), {} sampled writes:",
                p.sampled
            );
            let lag_row = |t: &mut String, l: &LagReport| {
                let _ = write!(
                    t,
                    "  {:<22} seen {:>5}  p50 {:>8.2}  p99 {:>8.2}  max {:>8.2} ms",
                    l.name, l.samples, l.p50_ms, l.p99_ms, l.max_ms
                );
                if l.not_visible > 0 {
                    let _ = write!(t, "  NOT VISIBLE: {}", l.not_visible);
                }
                if let Some(e) = &l.error {
                    let _ = write!(t, "  ({e})");
                }
                t.push('\n');
            };
            for l in &p.per_db {
                lag_row(&mut t, l);
            }
            lag_row(&mut t, &p.all);
        }
        let g = &self.generator;
        let _ = writeln!(
            t,
            "\ngenerator: {} connections per side ({} opened); its own delay p99 {:.2} ms max {:.2} ms, {} sent late > {} ms, pacer behind ≤ {:.2} ms",
            g.connections_per_side,
            g.connections_opened,
            g.own_delay_p99_ms,
            g.own_delay_max_ms,
            g.late_sends,
            g.late_threshold_ms,
            g.scheduler_behind_max_ms
        );
        let _ = writeln!(
            t,
            "waited for a busy connection (server time): {} requests, p99 {:.2} ms max {:.2} ms",
            g.queued_for_connection, g.connection_wait_p99_ms, g.connection_wait_max_ms
        );
        if let Some(w) = &g.warning {
            let _ = writeln!(t, "WARNING: {w}");
        }
        if !self.steps.is_empty() {
            let _ = writeln!(t, "\nmax search (reads:writes 4:1):");
            for s in &self.steps {
                let _ = writeln!(
                    t,
                    "  {:>9.0} req/s target: achieved {:>9.1}, p99 {:>8.2} ms, errors {:>5}  {}",
                    s.total_rps,
                    s.achieved_rps,
                    s.p99_ms,
                    s.errors,
                    if s.held {
                        "held".to_string()
                    } else {
                        format!("FAILED: {}", s.why_not.clone().unwrap_or_default())
                    }
                );
            }
            match self.max_sustained_rps {
                Some(r) => {
                    let _ = writeln!(t, "highest rate that held: {r:.0} req/s");
                }
                None => {
                    let _ = writeln!(t, "no step held (even the first rate failed)");
                }
            }
        }
        if !self.rss.is_empty() {
            t.push('\n');
            t.push_str(&super::rss::table(&self.rss));
        }
        t
    }
}

/// The runs of `--runs` (after `--burst`, if given) side by side: the figures the stress
/// targets are about, and whether the generator's own warning stayed silent.
pub fn runs_table(burst: Option<&super::burst::BurstReport>, runs: &[BenchReport]) -> String {
    let mut t = String::new();
    if let Some(b) = burst {
        let _ = writeln!(
            t,
            "\nafter a {:.1} s closed-loop POST burst ({} created, {} req/s, {} errors), drained in {:.2} s:",
            b.duration_s, b.created, b.created_per_s, b.errors, b.drained_after_s
        );
    } else {
        t.push('\n');
    }
    let _ = writeln!(
        t,
        "{:<5} {:>11} {:>12} {:>13} {:>8} {:>11} {:>12} {:>12}  generator",
        "RUN",
        "read p99",
        "write p99",
        "propag. p99",
        "errors",
        "late sends",
        "waited conn",
        "our max RSS"
    );
    for (i, r) in runs.iter().enumerate() {
        let propagation = r
            .propagation
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| format!("{:.2}", p.all.p99_ms));
        // Command, query and projection only: the memory target is about our services.
        let rss = super::rss::max_of_ours(&r.rss).map_or_else(
            || "-".to_string(),
            |k| format!("{:.1} MiB", k as f64 / 1024.0),
        );
        let _ = writeln!(
            t,
            "{:<5} {:>11.2} {:>12.2} {:>13} {:>8} {:>11} {:>12} {:>12}  {}",
            i + 1,
            r.reads.latency.p99_ms,
            r.writes.latency.p99_ms,
            propagation,
            r.total_errors(),
            r.generator.late_sends,
            r.generator.queued_for_connection,
            rss,
            if r.generator.bottleneck {
                "WARNING"
            } else {
                "on schedule"
            }
        );
    }
    t
}

/// Every number of a report JSON, by a readable path (`endpoints[GET /health].p99_ms`).
pub fn flatten(v: &serde_json::Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_string(), f);
                }
            }
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let key = item
                        .get("name")
                        .and_then(|n| n.as_str())
                        .map(str::to_string)
                        .or_else(|| {
                            item.get("total_rps")
                                .and_then(|n| n.as_f64())
                                .map(|r| format!("{r}"))
                        })
                        .unwrap_or_else(|| i.to_string());
                    walk(&format!("{prefix}[{key}]"), item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// `new / old` for every figure in both reports, as printable lines.
pub fn compare(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let old = flatten(old);
    let new = flatten(new);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<52} {:>12} {:>12} {:>8}",
        "FIGURE", "OLD", "NEW", "NEW/OLD"
    );
    for (k, n) in &new {
        let Some(o) = old.get(k) else { continue };
        let ratio = if *o == 0.0 {
            if *n == 0.0 {
                "=".to_string()
            } else {
                "new".to_string()
            }
        } else {
            format!("{:.2}", n / o)
        };
        let _ = writeln!(t, "{k:<52} {o:>12.3} {n:>12.3} {ratio:>8}");
    }
    let only_old: Vec<_> = old.keys().filter(|k| !new.contains_key(*k)).collect();
    if !only_old.is_empty() {
        let _ = writeln!(t, "(only in the old report: {} figures)", only_old.len());
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_names_rows_by_endpoint() {
        let v = serde_json::json!({
            "endpoints": [{"name": "GET /health", "p99_ms": 2.0}],
            "writes": {"sent": 10},
            "level": "light"
        });
        let f = flatten(&v);
        assert_eq!(f.get("endpoints[GET /health].p99_ms"), Some(&2.0));
        assert_eq!(f.get("writes.sent"), Some(&10.0));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn compare_prints_ratios() {
        let old = serde_json::json!({"reads": {"p99_ms": 10.0, "sent": 0}});
        let new = serde_json::json!({"reads": {"p99_ms": 15.0, "sent": 0}});
        let out = compare(&old, &new);
        assert!(out.contains("reads.p99_ms"), "{out}");
        assert!(out.contains("1.50"), "{out}");
        assert!(out.contains(" ="), "{out}");
    }

    #[test]
    fn latency_of_histogram() {
        let mut h = new_histogram();
        for ms in 1..=100u64 {
            record(&mut h, std::time::Duration::from_millis(ms));
        }
        let l = Latency::of(&h);
        assert!((l.p50_ms - 50.0).abs() < 0.1, "{l:?}");
        assert!((l.p99_ms - 99.0).abs() < 0.1, "{l:?}");
        assert!((l.max_ms - 100.0).abs() < 0.1, "{l:?}");
        assert_eq!(Latency::of(&new_histogram()), Latency::default());
    }
}

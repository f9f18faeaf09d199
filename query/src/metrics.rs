//! `GET /metrics` in the Prometheus text format, through the one renderer
//! ([`shared::prometheus`]): requests by route and status with their
//! total duration, which query DB serves, failovers, and the checkpoint of the DB this
//! instance reads (its projection lag).
//!
//! Counting is lock-free: one atomic per (route, status) pair, so recording costs the request
//! path two relaxed atomic additions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shared::prometheus::{Exposition, Kind};

use crate::failover::DbState;
use crate::route::Route;

/// Statuses counted under their own label; anything else is counted as `other`.
const STATUSES: [u16; 9] = [200, 400, 404, 405, 411, 413, 500, 503, 0];
const OTHER: usize = STATUSES.len() - 1;

/// Request counters.
#[derive(Debug)]
pub struct Metrics {
    requests: Vec<[AtomicU64; STATUSES.len()]>,
    micros: Vec<AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Route::ALL
                .iter()
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            micros: Route::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// What `/metrics` shows about the query DBs, gathered by the caller.
#[derive(Debug, Clone)]
pub struct DbReport {
    pub states: Vec<DbState>,
    pub failovers: u64,
    pub failbacks: u64,
    /// The serving DB's name and its checkpoint `(position, age seconds)`, when it answered.
    pub checkpoint: Option<(String, Option<(i64, f64)>)>,
}

impl Metrics {
    pub fn record(&self, route: Route, status: u16, elapsed: Duration) {
        let r = route as usize;
        let s = STATUSES[..OTHER]
            .iter()
            .position(|&x| x == status)
            .unwrap_or(OTHER);
        if let (Some(row), Some(m)) = (self.requests.get(r), self.micros.get(r)) {
            row[s].fetch_add(1, Ordering::Relaxed);
            m.fetch_add(
                u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
    }

    /// The whole exposition text.
    pub fn render(&self, instance: &str, dbs: &DbReport) -> String {
        let inst = [("instance", instance)];
        let mut e = Exposition::new();
        e.family(
            "query_requests_total",
            Kind::Counter,
            "HTTP requests answered, by route and status.",
        );
        for route in Route::ALL {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[route as usize][s].load(Ordering::Relaxed);
                if n == 0 {
                    continue;
                }
                let status = if s == OTHER {
                    "other".to_owned()
                } else {
                    status.to_string()
                };
                e.sample(
                    "query_requests_total",
                    &[
                        ("instance", instance),
                        ("route", route.label()),
                        ("status", &status),
                    ],
                    n,
                );
            }
        }
        e.family(
            "query_request_duration_seconds_sum",
            Kind::Counter,
            "Time spent answering, by route.",
        );
        for route in Route::ALL {
            let us = self.micros[route as usize].load(Ordering::Relaxed);
            if us > 0 {
                e.sample(
                    "query_request_duration_seconds_sum",
                    &[("instance", instance), ("route", route.label())],
                    format_args!("{:.6}", us as f64 / 1e6),
                );
            }
        }
        e.family(
            "query_db_up",
            Kind::Gauge,
            "Whether the query DB answers its health probe.",
        );
        for s in &dbs.states {
            e.sample(
                "query_db_up",
                &[("instance", instance), ("db", &s.name)],
                u8::from(s.up),
            );
        }
        e.family(
            "query_db_stale",
            Kind::Gauge,
            "1 while the query DB is reachable but stale (marked by the projection, or too far \
             behind the others): never read from.",
        );
        for s in &dbs.states {
            e.sample(
                "query_db_stale",
                &[("instance", instance), ("db", &s.name)],
                u8::from(s.stale),
            );
        }
        e.family(
            "query_db_serving",
            Kind::Gauge,
            "1 for the query DB that serves reads now.",
        );
        for s in &dbs.states {
            e.sample(
                "query_db_serving",
                &[("instance", instance), ("db", &s.name)],
                u8::from(s.serving),
            );
        }
        e.family(
            "query_failovers_total",
            Kind::Counter,
            "Switches from a query DB to a less preferred one.",
        )
        .sample("query_failovers_total", &inst, dbs.failovers);
        e.family(
            "query_failbacks_total",
            Kind::Counter,
            "Returns to the preferred query DB.",
        )
        .sample("query_failbacks_total", &inst, dbs.failbacks);
        if let Some((db, Some((position, age)))) = &dbs.checkpoint {
            let labels = [("instance", instance), ("db", db.as_str())];
            e.family(
                "query_checkpoint_position",
                Kind::Gauge,
                "Event-log position the serving DB has applied.",
            )
            .sample("query_checkpoint_position", &labels, position);
            e.family(
                "query_checkpoint_age_seconds",
                Kind::Gauge,
                "Seconds since the serving DB last applied an event (grows while idle too).",
            )
            .sample(
                "query_checkpoint_age_seconds",
                &labels,
                format_args!("{age:.3}"),
            );
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::DbState;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.record(Route::Reports, 200, Duration::from_millis(2));
        m.record(Route::Reports, 200, Duration::from_millis(1));
        m.record(Route::Unmatched, 404, Duration::from_millis(1));
        m.record(Route::Report, 418, Duration::from_millis(1));
        let text = m.render(
            "query-1",
            &DbReport {
                states: vec![
                    DbState {
                        name: "primary".into(),
                        up: false,
                        stale: false,
                        serving: false,
                    },
                    DbState {
                        name: "replica1".into(),
                        up: true,
                        stale: true,
                        serving: true,
                    },
                ],
                failovers: 1,
                failbacks: 0,
                checkpoint: Some(("replica1".into(), Some((42, 1.5)))),
            },
        );
        for expect in [
            "query_requests_total{instance=\"query-1\",route=\"/reports\",status=\"200\"} 2\n",
            "route=\"unmatched\",status=\"404\"} 1\n",
            "route=\"/reports/{id}\",status=\"other\"} 1\n",
            "query_request_duration_seconds_sum{instance=\"query-1\",route=\"/reports\"} 0.003000\n",
            "query_db_serving{instance=\"query-1\",db=\"replica1\"} 1\n",
            "query_db_up{instance=\"query-1\",db=\"primary\"} 0\n",
            "query_db_stale{instance=\"query-1\",db=\"replica1\"} 1\n",
            "query_db_stale{instance=\"query-1\",db=\"primary\"} 0\n",
            "query_failovers_total{instance=\"query-1\"} 1\n",
            "query_checkpoint_position{instance=\"query-1\",db=\"replica1\"} 42\n",
            "query_checkpoint_age_seconds{instance=\"query-1\",db=\"replica1\"} 1.500\n",
            "# HELP query_db_up Whether the query DB answers its health probe.\n# TYPE query_db_up gauge\n",
        ] {
            assert!(text.contains(expect), "missing {expect:?} in\n{text}");
        }
    }
}

//! Counters for GET /metrics (Prometheus text format). Plain atomics: recording a request
//! costs a few relaxed increments, never a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// The routes we count, in the order they are reported.
pub const ROUTES: [&str; 7] = [
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "POST /reports",
    "PUT /reports/{id}",
    "DELETE /reports/{id}",
    "other",
];

/// Status classes we count per route.
const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; 4]; 7],
    pub relay_published: AtomicU64,
    pub relay_batches: AtomicU64,
    pub relay_errors: AtomicU64,
    /// Whether the relay's last Redis call succeeded.
    pub redis_up: AtomicBool,
    /// Whether this instance's relay is the elected publisher.
    pub relay_leader: AtomicBool,
    /// The epoch of this relay's latest term as leader (0: never led).
    pub relay_epoch: AtomicI64,
    /// Event-log rows with an event_type this version does not know, published as they are.
    pub relay_unknown_types: AtomicU64,
}

impl Metrics {
    pub fn record(&self, route: usize, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        if let Some(row) = self.requests.get(route) {
            row[class].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The exposition text; `backlog` is the unpublished event count when the DB answered.
    pub fn render(&self, instance: &str, backlog: Option<i64>) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# TYPE command_requests_total counter\n");
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[r][c].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "command_requests_total{{instance=\"{instance}\",route=\"{route}\",status=\"{class}\"}} {n}"
                    );
                }
            }
        }
        let counters = [
            ("command_relay_published_total", &self.relay_published),
            ("command_relay_batches_total", &self.relay_batches),
            ("command_relay_errors_total", &self.relay_errors),
            (
                "command_relay_unknown_types_total",
                &self.relay_unknown_types,
            ),
        ];
        for (name, value) in counters {
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name}{{instance=\"{instance}\"}} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# TYPE command_redis_up gauge\ncommand_redis_up{{instance=\"{instance}\"}} {}",
            u8::from(self.redis_up.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "# TYPE command_relay_leader gauge\ncommand_relay_leader{{instance=\"{instance}\"}} {}",
            u8::from(self.relay_leader.load(Ordering::Relaxed))
        );
        let _ = writeln!(
            out,
            "# TYPE command_relay_epoch gauge\ncommand_relay_epoch{{instance=\"{instance}\"}} {}",
            self.relay_epoch.load(Ordering::Relaxed)
        );
        match backlog {
            Some(n) => {
                let _ = writeln!(out, "# TYPE command_relay_backlog gauge\ncommand_relay_backlog{{instance=\"{instance}\"}} {n}\ncommand_db_up{{instance=\"{instance}\"}} 1");
            }
            None => {
                let _ = writeln!(out, "command_db_up{{instance=\"{instance}\"}} 0");
            }
        }
        out
    }
}

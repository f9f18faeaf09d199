//! Counters for GET /metrics, rendered through the one Prometheus renderer
//! ([`shared::prometheus`]). Plain atomics: recording a request costs a few relaxed
//! increments, never a lock.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use shared::prometheus::{Exposition, Kind};

use crate::route::Route;

/// Status classes we count per route.
const CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

#[derive(Debug, Default)]
pub struct Metrics {
    requests: [[AtomicU64; CLASSES.len()]; Route::ALL.len()],
    pub relay_published: AtomicU64,
    pub relay_batches: AtomicU64,
    pub relay_errors: AtomicU64,
    /// `NOTIFY`s the instance's notifier sent to wake the relay (`wake.rs`): one covers many
    /// writes.
    pub relay_wakeups: AtomicU64,
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
    pub fn record(&self, route: Route, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        self.requests[route as usize][class].fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `backlog` is the unpublished event count when the DB answered.
    pub fn render(&self, instance: &str, backlog: Option<i64>) -> String {
        let inst = [("instance", instance)];
        let mut e = Exposition::new();
        e.family(
            "command_requests_total",
            Kind::Counter,
            "HTTP requests answered, by route and status class.",
        );
        for route in Route::ALL {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[route as usize][c].load(Ordering::Relaxed);
                if n > 0 {
                    e.sample(
                        "command_requests_total",
                        &[
                            ("instance", instance),
                            ("route", route.label()),
                            ("status", class),
                        ],
                        n,
                    );
                }
            }
        }
        let counters = [
            (
                "command_relay_published_total",
                "Events the relay published to the stream.",
                &self.relay_published,
            ),
            (
                "command_relay_batches_total",
                "Relay batches published (one transaction each).",
                &self.relay_batches,
            ),
            (
                "command_relay_wakeups_total",
                "NOTIFYs sent after writes to wake the relay (one covers every write before it).",
                &self.relay_wakeups,
            ),
            (
                "command_relay_errors_total",
                "Relay rounds that failed (database or Redis) and were retried.",
                &self.relay_errors,
            ),
            (
                "command_relay_unknown_types_total",
                "Event-log rows of an event type this version does not know, published as they are.",
                &self.relay_unknown_types,
            ),
        ];
        for (name, help, value) in counters {
            e.family(name, Kind::Counter, help)
                .sample(name, &inst, value.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "command_redis_up",
                "1 while the relay's last Redis call succeeded.",
                &self.redis_up,
            ),
            (
                "command_relay_leader",
                "1 while this instance's relay is the elected publisher.",
                &self.relay_leader,
            ),
        ];
        for (name, help, value) in gauges {
            e.family(name, Kind::Gauge, help).sample(
                name,
                &inst,
                u8::from(value.load(Ordering::Relaxed)),
            );
        }
        e.family(
            "command_relay_epoch",
            Kind::Gauge,
            "The relay lease term this instance last held (fencing token in Redis).",
        )
        .sample(
            "command_relay_epoch",
            &inst,
            self.relay_epoch.load(Ordering::Relaxed),
        );
        if let Some(n) = backlog {
            e.family(
                "command_relay_backlog",
                Kind::Gauge,
                "Events in the event log not yet published.",
            )
            .sample("command_relay_backlog", &inst, n);
        }
        e.family(
            "command_db_up",
            Kind::Gauge,
            "1 when the command database answered this scrape.",
        )
        .sample("command_db_up", &inst, u8::from(backlog.is_some()));
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.record(Route::CreateReport, 201);
        m.record(Route::CreateReport, 201);
        m.record(Route::Other, 404);
        m.record(Route::DeleteReport, 101);
        m.relay_published.store(5, Ordering::Relaxed);
        m.relay_leader.store(true, Ordering::Relaxed);
        let text = m.render("command-1", Some(3));
        for line in [
            "command_requests_total{instance=\"command-1\",route=\"POST /reports\",status=\"2xx\"} 2",
            "command_requests_total{instance=\"command-1\",route=\"other\",status=\"4xx\"} 1",
            "command_requests_total{instance=\"command-1\",route=\"DELETE /reports/{id}\",status=\"other\"} 1",
            "command_relay_published_total{instance=\"command-1\"} 5",
            "command_relay_errors_total{instance=\"command-1\"} 0",
            "command_redis_up{instance=\"command-1\"} 0",
            "command_relay_leader{instance=\"command-1\"} 1",
            "command_relay_backlog{instance=\"command-1\"} 3",
            "command_db_up{instance=\"command-1\"} 1",
            "# TYPE command_db_up gauge",
            "# HELP command_requests_total HTTP requests answered, by route and status class.",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("GET /health"), "{text}");

        let down = m.render("command-1", None);
        assert!(
            down.lines()
                .any(|l| l == "command_db_up{instance=\"command-1\"} 0"),
            "{down}"
        );
        assert!(!down.contains("command_relay_backlog{"), "{down}");
    }
}

//! What one bench run needs ([`BenchConfig`]) and the named load levels of SPEC §6, apart
//! from the code that parses flags into it and the engine that runs it.

use std::time::Duration;

use anyhow::{bail, Result};

use super::schedule::Mix;

/// Default run length of a level (SPEC §6: 10 s).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// A request without a complete answer after this long is a timeout error.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections per side (writes, reads), fixed for the run. 64 carry 1 000 req/s
/// of one side at up to 64 ms per answer without queueing; beyond that the requests due wait
/// for a connection, counted in their latency, as they would in any client's pool. More would
/// only hand a stalled server more concurrency than a real client pool offers.
pub const CONNECTIONS: usize = 64;
/// may threads running the bench's connection coroutines. Two, as the machines we measure on
/// have two cores: one parks while the other runs; the pacer and the collector are threads of
/// their own.
pub const GENERATOR_THREADS: usize = 2;
/// Stack of a connection coroutine, in bytes. It parses HTTP heads and JSON bodies of up to a
/// page of reports; 256 KiB leaves room for serde_json's recursion in a debug build (an
/// overflow is a segfault). Untouched stack pages cost no memory.
pub const CONNECTION_STACK: usize = 256 * 1024;
/// Every Nth successful create/update is followed to the query DBs (SPEC: "sampling").
pub const LAG_EVERY: u64 = 10;

/// Seed load levels (SPEC §6): (name, write req/s, read req/s).
pub const LEVELS: [(&str, f64, f64); 5] = [
    ("light", 10.0, 40.0),
    ("medium", 20.0, 80.0),
    ("heavy", 50.0, 200.0),
    ("extreme", 100.0, 400.0),
    ("stress", 200.0, 800.0),
];

/// Everything one bench run needs; [`BenchConfig::new`] fills the defaults.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// A level name, `max`, or `custom`.
    pub level: String,
    pub write_url: String,
    pub read_url: String,
    pub write_rps: f64,
    pub read_rps: f64,
    /// Run length; for `max`, the length of each step.
    pub duration: Duration,
    pub mix: Mix,
    /// Sent as `Authorization: Bearer` with writes.
    pub token: Option<String>,
    /// Query DBs (`name`, `postgres://…`) to measure propagation lag on; empty = no lag.
    pub query_dbs: Vec<(String, String)>,
    pub timeout: Duration,
    /// Keep-alive connections per side, fixed for the run.
    pub connections: usize,
    pub lag_every: u64,
    /// A progress line on stderr once per second.
    pub progress: bool,
}

impl BenchConfig {
    pub fn new(write_url: &str, read_url: &str, write_rps: f64, read_rps: f64) -> BenchConfig {
        BenchConfig {
            level: "custom".into(),
            write_url: write_url.into(),
            read_url: read_url.into(),
            write_rps,
            read_rps,
            duration: DEFAULT_DURATION,
            mix: Mix::default(),
            token: None,
            query_dbs: Vec::new(),
            timeout: REQUEST_TIMEOUT,
            connections: CONNECTIONS,
            lag_every: LAG_EVERY,
            progress: false,
        }
    }

    /// The same endpoints at a named level's rates.
    pub fn level(mut self, name: &str) -> Result<BenchConfig> {
        if name == "max" {
            self.level = "max".into();
            return Ok(self);
        }
        let Some((n, w, r)) = LEVELS.iter().find(|l| l.0 == name) else {
            bail!(
                "unknown level `{name}`; valid levels: light, medium, heavy, extreme, stress, max"
            );
        };
        self.level = (*n).to_string();
        self.write_rps = *w;
        self.read_rps = *r;
        Ok(self)
    }
}

//! The query service (SPEC §2 "Query service"): the read side of the CQRS pipeline. It
//! answers `GET /reports`, `/reports/{id}`, `/statistics`, `/health`, `/ready` and `/metrics`
//! from a query database's read model, which the projection fills.
//!
//! Layout, in request order:
//! - [`config`]: `Config::from_env`, with the worker/stack/pool reasoning;
//! - [`server`]: the `may_minihttp` service: read the request safely, route, count, write;
//! - [`route`]: the closed set of routes (path → route, label, `Allow`);
//! - [`routes`]: one `match (method, route)` and the handlers;
//! - [`paging`]: pure parameter rules (page, per_page, filters, min_version);
//! - [`search`]: the list with text, place and cursor parameters ([`cursor`]: its tokens,
//!   [`cells`]: the place grid its full-text index carries);
//! - [`cache`]: list and statistics answers from memory while their DB is unchanged;
//! - [`points`]: `GET /reports/{id}` coalesced into one statement per round;
//! - [`rounds`]: the sync rounds both of them wait for without blocking a worker;
//! - [`failover`]: a pool per query DB, probes, failing over and back;
//! - [`store`]: every SQL statement (unnamed, parameterized: PgBouncer-safe);
//! - [`render`]: envelopes around the stored JSON documents, spliced as bytes;
//! - [`metrics`]: Prometheus text.
//!
//! **Invariant:** the read path never writes, never serves a tombstone, and never waits on a
//! database it has marked down while another one is up.

pub mod cache;
pub mod cells;
pub mod config;
pub mod cursor;
pub mod failover;
pub mod history;
pub mod metrics;
pub mod open311;
pub mod paging;
pub mod points;
pub mod render;
pub mod rounds;
pub mod route;
pub mod routes;
pub mod search;
pub mod server;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;

use failover::{Dbs, Prober};

/// What every request handler shares; built once by [`server::start`].
#[derive(Debug)]
pub struct Ctx {
    pub instance: String,
    /// `X-Instance-ID: <instance>`.
    pub instance_header: &'static str,
    pub frame: render::Frame,
    pub health_body: Vec<u8>,
    pub dbs: Arc<Dbs>,
    pub metrics: metrics::Metrics,
    pub min_version_wait: Duration,
    pub cache: Arc<cache::Cache>,
    pub points: Arc<points::PointReaders>,
}

/// A running service: the HTTP server coroutine and the probe threads.
#[derive(Debug)]
pub struct Running {
    pub server: may::coroutine::JoinHandle<()>,
    pub ctx: Arc<Ctx>,
    _prober: Prober,
    _listeners: rounds::Threads,
    _points: rounds::Threads,
}

//! Everything the three services share, once: the report model, the event envelope and its
//! Redis-stream field codec, the HTTP JSON envelope and the single error → response function,
//! configuration from the environment, the one-line logger, the one start-up path of the
//! service binaries, the Prometheus text renderer, start-up retry, database pools and
//! migrations. With the `testkit` feature it also carries the test harness that starts real
//! PostgreSQL and Redis instances.

pub mod config;
pub mod db;
pub mod event;
pub mod geo;
pub mod http;
pub mod log;
pub mod migrate;
pub mod model;
pub mod open311;
pub mod prometheus;
pub mod retry;
pub mod startup;

#[cfg(feature = "testkit")]
pub mod testkit;

//! The command service: validates writes, commits each as one command-DB transaction holding
//! the report row and its event (the outbox), and relays the event log to the Redis stream.
//!
//! Data flow: request → [`routes`] → [`validate`] → [`store`] (transaction + event log) →
//! [`wake`] (one coalesced NOTIFY after the commits) → [`relay`] (leadership: [`lease`],
//! fencing: [`fence`]) → Redis stream `report-events`.

pub mod auth;
pub mod config;
pub mod fence;
pub mod lease;
pub mod metrics;
pub mod open311;
pub mod place;
pub mod relay;
pub mod route;
pub mod routes;
pub mod server;
pub mod store;
pub mod validate;
pub mod wake;

pub use config::Config;
pub use server::{run, start, Running};

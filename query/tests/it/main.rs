//! The query service's integration tests: one binary, one module per area. Every test runs
//! the real `query` binary against real PostgreSQL (and PgBouncer) started by the `shared`
//! testkit; the read model is seeded with SQL the way the projection writes it.

mod bad_input;
mod cache;
mod deep_pages;
mod explain;
mod failover;
mod fuzz;
mod history;
mod hostile;
mod listing;
mod min_version;
mod open311;
mod pgbouncer;
mod point_reads;
mod read_your_writes;
mod search;
mod stale;
mod startup;
mod statistics;
mod support;

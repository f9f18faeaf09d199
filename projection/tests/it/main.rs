//! The projection's one integration test binary: real PostgreSQL clusters, a real
//! `redis-server` per test, the real `projection` binary. Tests feed the stream by XADDing
//! `Event::to_fields()` the way the command side's relay does, then read every query DB.
//! A module per area; every test reads given / when / then.

mod support;

mod backlog;
mod check_sync;
mod converge;
mod crash;
mod dlq;
mod e2e;
mod history;
mod outage;
mod rebuild;
mod retention;
mod schema;
mod shutdown;

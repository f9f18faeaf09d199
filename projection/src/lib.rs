//! The projection: keeps every query DB's read model in step with the `report-events` stream.
//!
//! Layout, in the order data flows:
//! - `config.rs`: environment, defaults, and the pipeline's limits with their reasons;
//! - `stream.rs`: entry ids and raw Redis stream replies;
//! - `consumer.rs`: the reader thread (consumer group, DLQ, acks, trim, reclaim);
//! - `dlq.rs`: poison entries to `report-events-dlq`;
//! - `poison.rs`: which DB errors reject an entry's data (it is isolated and parked);
//! - `retention.rs`: the retention bound and when a query DB is stale (then rebuilt);
//! - `fanout.rs`: the thread messages and the never-blocking fan-out with detach/rejoin;
//! - `writer.rs`: one thread per query DB, one transaction per batch, catch-up from its
//!   checkpoint with XRANGE;
//! - `apply.rs`: the pure version/tombstone/statistics rules;
//! - `checkpoint.rs`: each DB's checkpoint row, written with the data;
//! - `metrics.rs`, `http.rs`: `/metrics` and `/health`;
//! - `rebuild.rs`, `check_sync.rs`: the read model's operations (rebuild a query DB from the
//!   command DB under the writers' lock; compare every query DB with the command DB), as
//!   library functions and, through `cli.rs`, as subcommands of the binary.
//!
//! **Invariant:** an entry is acked only when every query DB has committed it, and a slow or
//! dead query DB never delays the others.

pub mod apply;
pub mod check_sync;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod fanout;
pub mod history;
pub mod http;
pub mod metrics;
pub mod poison;
pub mod rebuild;
pub mod retention;
pub mod stream;
pub mod writer;

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::{Config, WRITER_QUEUE_BATCHES};
use crate::consumer::Reader;
use crate::fanout::{Fanout, WriterLink};
use crate::metrics::Metrics;
use crate::writer::Writer;

/// Everything that can go wrong in the projection. Only start-up errors (`Config`, `Bind`,
/// `Spawn`) end the process; the rest are retried by the thread that hit them.
#[derive(Debug)]
pub enum Error {
    /// A bad environment variable: exit non-zero naming it.
    Config(shared::config::ConfigError),
    /// The HTTP port cannot be bound: exit non-zero.
    Bind { port: u16, source: std::io::Error },
    /// A thread could not be started: exit non-zero.
    Spawn {
        thread: String,
        source: std::io::Error,
    },
    /// Redis failed or is unreachable: the reader/writer reconnects with backoff.
    Redis {
        context: &'static str,
        source: redis::RedisError,
    },
    /// Redis answered in a shape we do not understand: treated like a Redis failure.
    Reply(String),
    /// A query DB failed or is unreachable: its writer detaches and retries with backoff.
    Db { db: String, source: postgres::Error },
    /// The connection to a query DB broke while idle: its writer detaches and reconnects.
    DbLost { db: String },
    /// The command DB failed or is unreachable during a rebuild or a sync check: that
    /// operation stops (a rebuild rolls back, the read model stays as it was).
    CommandDb(postgres::Error),
    /// A query DB did not hold what its writer expected (rows changed under the write lock):
    /// the transaction rolls back and the batch is retried.
    Inconsistent(String),
}

impl Error {
    pub(crate) fn redis(context: &'static str, source: redis::RedisError) -> Error {
        Error::Redis { context, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "{e}"),
            Error::Bind { port, source } => write!(f, "cannot bind port {port}: {source}"),
            Error::Spawn { thread, source } => write!(f, "cannot start thread {thread}: {source}"),
            Error::Redis { context, source } => write!(f, "redis {context}: {source}"),
            Error::Reply(what) => write!(f, "unexpected redis reply: {what}"),
            Error::Db { db, source } => match source.as_db_error() {
                Some(d) => write!(f, "query db {db}: {} ({})", d.message(), d.code().code()),
                None => write!(f, "query db {db}: {source}"),
            },
            Error::CommandDb(source) => match source.as_db_error() {
                Some(d) => write!(f, "command db: {} ({})", d.message(), d.code().code()),
                None => write!(f, "command db: {source}"),
            },
            Error::DbLost { db } => write!(f, "query db {db}: connection lost"),
            Error::Inconsistent(why) => write!(f, "inconsistent read model: {why}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<shared::config::ConfigError> for Error {
    fn from(e: shared::config::ConfigError) -> Error {
        Error::Config(e)
    }
}

/// Runs the projection until `stop` is set (SIGTERM/SIGINT in the binary, through
/// `shared::startup::main`): starts the HTTP port, one writer per query DB and the reader, and
/// returns once the writers have committed their batch in flight.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new(
        config.query_dbs.iter().map(|d| d.name.as_str()),
    ));
    // Detached by design: it serves until the process exits and holds no state to flush.
    let _http = http::serve(config.port, &config.instance_id, Arc::clone(&metrics))?;
    // Writer reports are small and bounded by commits; unbounded so a writer never waits on
    // the reader.
    let (report_tx, report_rx) = crossbeam_channel::unbounded();
    let mut links = Vec::with_capacity(config.query_dbs.len());
    for (i, db) in config.query_dbs.iter().enumerate() {
        let (tx, rx) = crossbeam_channel::bounded(WRITER_QUEUE_BATCHES);
        let status = Arc::clone(&metrics.dbs[i]);
        let thread = Writer {
            db: i,
            name: db.name.clone(),
            url: db.url.clone(),
            redis_url: config.redis_url.clone(),
            command_url: config.command_url.clone(),
            commit_interval: config.commit_interval,
            rx,
            reports: report_tx.clone(),
            status: Arc::clone(&status),
            metrics: Arc::clone(&metrics),
            stop: Arc::clone(&stop),
        }
        .spawn()?;
        links.push(WriterLink { tx, status, thread });
    }
    drop(report_tx);
    let reader = Reader {
        redis_url: config.redis_url.clone(),
        consumer: config.instance_id.clone(),
        fanout: Fanout::new(links),
        reports: report_rx,
        metrics,
        stop,
        bound: config.bound,
    }
    .spawn()?;
    if reader.join().is_err() {
        shared::error!("reader thread panicked");
    }
    shared::info!("projection stopped");
    Ok(())
}

//! PostgreSQL connection pools and database-error classification.
//!
//! Pools are built without connecting (`build_unchecked`): a service starts while its
//! database is down, answers 503 meanwhile, and recovers by itself when the database returns.
//! Every connection carries a statement timeout so a slow database yields a quick 503, never a
//! pile-up of blocked workers.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

pub type Manager = PostgresConnectionManager<NoTls>;
pub type Pool = r2d2::Pool<Manager>;
pub type Conn = r2d2::PooledConnection<Manager>;

/// Settings for one pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub size: u32,
    /// How long a request may wait for a free connection before it is answered 503.
    pub checkout_timeout: Duration,
    /// Server-side limit for one statement.
    pub statement_timeout: Duration,
    /// TCP connect timeout for new connections.
    pub connect_timeout: Duration,
    /// Send `statement_timeout` as a startup option. PgBouncer must list `options` in
    /// `ignore_startup_parameters` for this; the query service sets it per transaction instead.
    pub startup_options: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            size: 8,
            checkout_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            startup_options: true,
        }
    }
}

/// Builds a pool without connecting yet.
pub fn pool(url: &str, settings: &PoolSettings) -> Result<Pool, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(settings.connect_timeout);
    config.keepalives(true);
    if settings.startup_options {
        config.options(&format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
    }
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(settings.size)
        .min_idle(Some(0))
        .connection_timeout(settings.checkout_timeout)
        // No test query per checkout (a round trip on every request): a connection that died
        // with its server shows at first use, where the callers handle it (the command store
        // retries a dead connection at BEGIN; the query failover rebuilds a returning DB's pool).
        .test_on_check_out(false)
        .error_handler(Box::new(QuietErrors))
        .build_unchecked(manager))
}

/// r2d2 logs every failed connection attempt at error level through `log`; we report outages
/// once per request instead, through our own logger, so the pool stays quiet.
#[derive(Debug)]
struct QuietErrors;

impl<E> r2d2::HandleError<E> for QuietErrors {
    fn handle_error(&self, _error: E) {}
}

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database is unreachable or shutting down, or the connection is dead: retry later
    /// (503), on another connection or database.
    Unavailable,
    /// This one statement was cancelled (`statement_timeout`, or a cancel request): 503 for
    /// this request only. The database answered, so it is not down and its connections are
    /// fine; marking it down would turn one slow query into a failover.
    Timeout,
    /// A unique or exclusion constraint: the row exists already.
    UniqueViolation,
    /// A serialization failure or deadlock: safe to retry the transaction.
    Retry,
    /// Anything else: a bug or a schema problem.
    Other,
}

/// Classifies by SQLSTATE, never by message text.
pub fn classify(e: &postgres::Error) -> DbErrorKind {
    match e.code() {
        None => DbErrorKind::Unavailable, // I/O, closed connection, timeout: no server answer
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => DbErrorKind::UniqueViolation,
        Some(code)
            if *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            DbErrorKind::Retry
        }
        Some(code) if *code == SqlState::QUERY_CANCELED => DbErrorKind::Timeout,
        Some(code)
            if *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || code.code().starts_with("08") // connection exceptions
                || code.code().starts_with("57P") =>
        {
            DbErrorKind::Unavailable
        }
        Some(_) => DbErrorKind::Other,
    }
}

/// Where the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`, `pgbench`) live:
/// version 15 — what the project is built and tested against — when it is installed, else the
/// newest installed major version (Ubuntu ships 14 or 16). `None` when no server is installed.
pub fn server_bin_dir() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new("/usr/lib/postgresql");
    let preferred = root.join("15/bin");
    if preferred.join("initdb").exists() {
        return Some(preferred);
    }
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(root)
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

//! The command service's configuration (SPEC §5): every variable a named const with its
//! default beside it; a bad value is an error naming the variable.

use std::time::Duration;

use shared::config::{self, ConfigError};

use crate::auth::Tokens;

pub const INSTANCE_ID: &str = "INSTANCE_ID";
pub const INSTANCE_ID_DEFAULT: &str = "command-1";
pub const PORT: &str = "PORT";
pub const PORT_DEFAULT: u16 = 8081;
pub const COMMAND_DATABASE_URL: &str = "COMMAND_DATABASE_URL";
pub const COMMAND_DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/reports";
pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379/";

/// may worker threads. Every postgres call blocks its worker thread for a round trip (the sync
/// client runs `block_on` per call), so the worker count (with the pool, one connection per
/// worker) is the number of writes committing at once — and since writes no longer NOTIFY in
/// their commit, PostgreSQL flushes concurrent commits together (group commit): more commits
/// in flight, more writes per WAL flush. POST straight to one instance, wrk -c64, on 2 cores:
/// ~860 / 1 250 / 1 670 / 2 000 req/s at 8 / 16 / 32 / 64 workers (README). 16 per instance
/// keeps three instances at 48 command-DB connections, inside a stock PostgreSQL's 100.
pub const MAY_WORKERS: &str = "MAY_WORKERS";
pub const MAY_WORKERS_DEFAULT: usize = 16;

/// Coroutine stack, in bytes (`shared::startup::configure_may` converts to may's words). An
/// overflow is a segfault, not an error, so this is sized from a measurement, not a guess:
/// the deepest request is a body nested to serde_json's recursion limit (128), which used
/// ~206 KiB in the debug build the tests run (may's odd-word-count report, MAY_STACK_SIZE=
/// 1048584) against ~15 KiB for a plain POST; 512 KiB leaves 2.5× that. Until the unit was
/// converted, 128 Ki was passed as words, i.e. 1 MiB, which is why 128 KiB looked enough.
/// Untouched stack pages cost no memory.
pub const MAY_STACK_SIZE: &str = "MAY_STACK_SIZE";
pub const MAY_STACK_SIZE_DEFAULT: usize = 512 * 1024;

/// Database pool size. A worker blocked on the database holds at most one connection, so one
/// per worker means checkout never waits for another worker.
pub const DB_POOL_SIZE: &str = "DB_POOL_SIZE";

/// Relay batch: events published per transaction. Large enough to drain a Redis-outage backlog
/// quickly (one pipelined XADD round trip per batch), small enough that one batch's
/// transaction stays short.
pub const RELAY_BATCH: &str = "RELAY_BATCH";
pub const RELAY_BATCH_DEFAULT: i64 = 500;

/// How long the relay leader waits for a wake-up before it looks at the event log anyway: the
/// longest an event whose wake-up was lost (its instance killed between commit and NOTIFY)
/// waits. Short enough that such an event is still published within half a second; tests set
/// it long to show that the wake-up alone publishes promptly.
pub const RELAY_POLL_MS: &str = "RELAY_POLL_MS";
pub const RELAY_POLL_MS_DEFAULT: u64 = 500;

/// Statement timeout for command-DB calls: a hung database answers 503 after this, it never
/// piles up requests.
pub const STATEMENT_TIMEOUT_MS: &str = "STATEMENT_TIMEOUT_MS";
pub const STATEMENT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Comma-separated bearer tokens for writes; unset = writes open (local development only).
pub const COMMAND_API_TOKENS: &str = "COMMAND_API_TOKENS";

#[derive(Debug, Clone)]
pub struct Config {
    pub tokens: Tokens,
    pub instance: String,
    pub port: u16,
    pub database_url: String,
    pub redis_url: String,
    pub workers: usize,
    pub stack_size: usize,
    pub pool_size: u32,
    pub relay_batch: i64,
    pub relay_poll: Duration,
    pub statement_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let workers = config::parse(MAY_WORKERS, MAY_WORKERS_DEFAULT)?.max(1);
        Ok(Config {
            tokens: Tokens::from_setting(&config::string(COMMAND_API_TOKENS, "")).map_err(
                |reason| ConfigError {
                    name: COMMAND_API_TOKENS,
                    // Other tokens of the list may be real: never echo them.
                    value: "(redacted)".to_owned(),
                    reason: reason.to_owned(),
                },
            )?,
            instance: config::string(INSTANCE_ID, INSTANCE_ID_DEFAULT),
            port: config::parse(PORT, PORT_DEFAULT)?,
            database_url: config::string(COMMAND_DATABASE_URL, COMMAND_DATABASE_URL_DEFAULT),
            redis_url: config::string(REDIS_URL, REDIS_URL_DEFAULT),
            workers,
            stack_size: config::parse(MAY_STACK_SIZE, MAY_STACK_SIZE_DEFAULT)?.max(32 * 1024),
            pool_size: config::parse(DB_POOL_SIZE, workers as u32)?.max(1),
            relay_batch: config::parse(RELAY_BATCH, RELAY_BATCH_DEFAULT)?.clamp(1, 10_000),
            relay_poll: Duration::from_millis(
                config::parse(RELAY_POLL_MS, RELAY_POLL_MS_DEFAULT)?.max(1),
            ),
            statement_timeout: Duration::from_millis(config::parse(
                STATEMENT_TIMEOUT_MS,
                STATEMENT_TIMEOUT_MS_DEFAULT,
            )?),
        })
    }
}

impl shared::startup::ServiceConfig for Config {
    const INSTANCE_ID: &'static str = INSTANCE_ID;
    const INSTANCE_ID_DEFAULT: &'static str = INSTANCE_ID_DEFAULT;

    fn from_env() -> Result<Config, ConfigError> {
        Config::from_env()
    }

    fn summary(&self) -> String {
        format!(
            "port={} auth={} command_db={} redis={} workers={} stack={}KiB pool={} relay_batch={} relay_poll={:?} statement_timeout={:?}",
            self.port,
            if self.tokens.enabled() {
                format!("on ({} tokens)", self.tokens.len())
            } else {
                "OFF (writes open: set COMMAND_API_TOKENS)".to_owned()
            },
            config::redact_url(&self.database_url),
            config::redact_url(&self.redis_url),
            self.workers,
            self.stack_size / 1024,
            self.pool_size,
            self.relay_batch,
            self.relay_poll,
            self.statement_timeout
        )
    }
}

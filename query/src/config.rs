//! The query service's configuration, read once from the environment (SPEC §5).
//!
//! Each variable is a named const with its default next to it. A bad value is an error naming
//! the variable, never a panic. The effective configuration is logged once at start-up with
//! passwords redacted (its `ServiceConfig::summary`).
//!
//! Workers, stack and pool are chosen together: the sync `postgres` client blocks the may
//! worker thread for the whole round trip, so a worker runs at most one query at a time, and
//! the number of workers is the number of queries in flight.

use std::time::Duration;

use shared::config::{self, ConfigError, NamedDb};

/// `INSTANCE_ID`: the name in `X-Instance-ID`, the envelope, logs and metrics.
pub const INSTANCE_ID: &str = "INSTANCE_ID";
pub const INSTANCE_ID_DEFAULT: &str = "query-1";

/// `PORT`: the local `up` topology gives query-k port 8200+k; inside a container it is 8091.
pub const PORT: &str = "PORT";
pub const PORT_DEFAULT: u16 = 8091;

/// `QUERY_DATABASE_URLS`: comma-separated `name=url`, the first preferred. The default is the
/// local `cargo xtask up` primary through PgBouncer.
pub const QUERY_DATABASE_URLS: &str = "QUERY_DATABASE_URLS";
pub const QUERY_DATABASE_URLS_DEFAULT: &str =
    "query-db-primary=postgres://postgres@127.0.0.1:6440/reports_read";

/// `QUERY_CACHE`: `on` (the default) answers lists and statistics from memory while the read
/// model they came from is unchanged (SPEC §7.3, `cache.rs`), and coalesces point reads
/// (`points.rs`): two extra connections per query DB, at its [`QUERY_DIRECT_URLS`] URL, one
/// holding the cache fence, one reading the asked reports. `off` reads every request on the
/// pool.
pub const QUERY_CACHE: &str = "QUERY_CACHE";
pub const QUERY_CACHE_DEFAULT: &str = "on";

/// `QUERY_DIRECT_URLS`: optional `name=url` entries, for a DB of `QUERY_DATABASE_URLS` whose
/// URL there is a transaction pooler (PgBouncer): the same DB without it. The cache fence is
/// a lock held on one session and its point reads prepare statements, neither of which a
/// transaction pooler keeps; a DB not named here is reached at its `QUERY_DATABASE_URLS` URL
/// (and a fence found not held on its own session turns that DB's cache off, never wrong).
pub const QUERY_DIRECT_URLS: &str = "QUERY_DIRECT_URLS";

/// `MAY_WORKERS`: may scheduler threads. A sync DB call on a pooled connection blocks its
/// worker for a whole round trip, so for those reads (cache misses, search, history, Open311)
/// the workers are the service's DB concurrency. The hot reads do not block a worker: cache
/// hits and 304s need no DB call (`cache.rs`), and point reads memory does not hold park
/// their coroutine until a sync round has run on the point reader's own thread
/// (`points.rs`). For those, each extra worker only adds idle
/// parking in epoll and eventfd wake-ups. Measured on the 2-core box, release, wrk -c64
/// straight to one instance, random ids, CPU of the service and its DB per request, with the
/// machine shared (load 24-30): by id 19 500 / 16 400 / ~11 500 req/s at 44 / 51 / 98 µs per
/// request with 2 / 4 / 8 workers; `/statistics` from memory 44 / - / 100 µs; history of a
/// random id (blocking, uncached) ~4 300 / ~6 000 / ~9 300 req/s. 4 keeps most of the gain
/// of 2 on the hot paths and two thirds of the blocking paths' throughput.
pub const MAY_WORKERS: &str = "MAY_WORKERS";
pub const MAY_WORKERS_DEFAULT: usize = 4;

/// `MAY_STACK_SIZE`, in bytes: each connection's coroutine stack, 256 KiB (may's default is
/// 32 KiB). The postgres client runs a tokio `block_on` and row decoding on this stack, and an
/// overflow is a segfault, not an error. Measured peak use over every route (an odd number of
/// 8-byte words, e.g. 65544, makes may print each coroutine's use on exit): ~10 KiB in a
/// release build but ~32 KiB in the debug build the tests run. 64 KiB (twice that) was the
/// default until benchmarks under heavy load overflowed it twice in a release build, right
/// after pool timeouts and failovers (error paths deeper than any measured route); 256 KiB is
/// four times the stack that overflowed. Stacks are mapped lazily, so a connection costs the
/// pages it touched, not 256 KiB of resident memory.
pub const MAY_STACK_SIZE: &str = "MAY_STACK_SIZE";
pub const MAY_STACK_SIZE_DEFAULT: usize = 256 * 1024;

/// Smallest stack accepted: may's own default, which the debug build's read path already fills.
pub const MIN_STACK_SIZE: usize = 32 * 1024;

/// `DB_POOL_SIZE`: connections per query DB. Default (0 = derive) is one per may worker: a
/// worker holds at most one connection at a time (nothing yields while a connection is held),
/// so more would sit idle and fewer would make a worker block on the pool's condvar, which
/// stalls every coroutine on that thread.
pub const DB_POOL_SIZE: &str = "DB_POOL_SIZE";
pub const DB_POOL_SIZE_DEFAULT: u32 = 0;

/// `MIN_VERSION_WAIT_MS`: how long `GET /reports/{id}?min_version=N` waits for version N
/// before answering 503 (SPEC §2: default 2 s).
pub const MIN_VERSION_WAIT_MS: &str = "MIN_VERSION_WAIT_MS";
pub const MIN_VERSION_WAIT_MS_DEFAULT: u64 = 2000;

/// Upper bound for `MIN_VERSION_WAIT_MS`: a waiting request holds a client connection (not a
/// DB connection); beyond 30 s a client is better told 503 and to retry.
pub const MAX_MIN_VERSION_WAIT_MS: u64 = 30_000;

/// How long a request waits for a pooled connection. With one connection per worker a wait
/// only happens while a new connection is being opened, so 1 s means "the DB is unreachable":
/// the request fails over instead of hanging.
pub const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(1);

/// TCP connect timeout for pool connections and health probes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub instance_id: String,
    pub port: u16,
    /// Query databases, the first preferred.
    pub dbs: Vec<NamedDb>,
    pub workers: usize,
    /// Coroutine stack size in bytes.
    pub stack_size: usize,
    pub pool_size: u32,
    pub min_version_wait: Duration,
    /// The DBs the response cache fences and the point readers read (all of `dbs`, or none),
    /// at their direct URLs; see [`QUERY_CACHE`] and [`QUERY_DIRECT_URLS`].
    pub listen: Vec<NamedDb>,
}

impl Config {
    /// Reads every variable; the first bad one is the error.
    pub fn from_env() -> Result<Config, ConfigError> {
        let dbs_text = config::string(QUERY_DATABASE_URLS, QUERY_DATABASE_URLS_DEFAULT);
        let dbs = config::named_dbs(QUERY_DATABASE_URLS, &dbs_text)?;
        let workers = config::parse(MAY_WORKERS, MAY_WORKERS_DEFAULT)?;
        if !(1..=256).contains(&workers) {
            return Err(bad(MAY_WORKERS, workers, "expected 1..=256"));
        }
        let stack_size = config::parse(MAY_STACK_SIZE, MAY_STACK_SIZE_DEFAULT)?;
        if !(MIN_STACK_SIZE..=16 * 1024 * 1024).contains(&stack_size) {
            return Err(bad(
                MAY_STACK_SIZE,
                stack_size,
                "expected 32768..=16777216 bytes",
            ));
        }
        let pool_size = match config::parse(DB_POOL_SIZE, DB_POOL_SIZE_DEFAULT)? {
            0 => u32::try_from(workers).unwrap_or(8),
            n if n > 1000 => return Err(bad(DB_POOL_SIZE, n, "expected 0..=1000")),
            n => n,
        };
        let wait_ms = config::parse(MIN_VERSION_WAIT_MS, MIN_VERSION_WAIT_MS_DEFAULT)?;
        if wait_ms > MAX_MIN_VERSION_WAIT_MS {
            return Err(bad(
                MIN_VERSION_WAIT_MS,
                wait_ms,
                "expected at most 30000 ms",
            ));
        }
        let direct = match std::env::var(QUERY_DIRECT_URLS) {
            Ok(v) if !v.trim().is_empty() => config::named_dbs(QUERY_DIRECT_URLS, &v)?,
            _ => Vec::new(),
        };
        if let Some(stray) = direct
            .iter()
            .find(|d| !dbs.iter().any(|db| db.name == d.name))
        {
            return Err(bad(
                QUERY_DIRECT_URLS,
                &stray.name,
                "names no database of QUERY_DATABASE_URLS",
            ));
        }
        let listen = match config::string(QUERY_CACHE, QUERY_CACHE_DEFAULT).as_str() {
            "on" => dbs
                .iter()
                .map(|db| NamedDb {
                    name: db.name.clone(),
                    url: direct
                        .iter()
                        .find(|d| d.name == db.name)
                        .map_or_else(|| db.url.clone(), |d| d.url.clone()),
                })
                .collect(),
            "off" => Vec::new(),
            other => return Err(bad(QUERY_CACHE, other, "expected on or off")),
        };
        Ok(Config {
            instance_id: config::string(INSTANCE_ID, INSTANCE_ID_DEFAULT),
            port: config::parse(PORT, PORT_DEFAULT)?,
            dbs,
            workers,
            stack_size,
            pool_size,
            min_version_wait: Duration::from_millis(wait_ms),
            listen,
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
        let dbs: Vec<String> = self
            .dbs
            .iter()
            .map(|d| format!("{}={}", d.name, config::redact_url(&d.url)))
            .collect();
        format!(
            "port={} dbs=[{}] may_workers={} may_stack_size={}B db_pool_size={} \
             min_version_wait={}ms cached_dbs=[{}]",
            self.port,
            dbs.join(", "),
            self.workers,
            self.stack_size,
            self.pool_size,
            self.min_version_wait.as_millis(),
            self.listen
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn bad(name: &'static str, value: impl ToString, reason: &str) -> ConfigError {
    ConfigError {
        name,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

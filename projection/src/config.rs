//! The projection's configuration (SPEC §5): environment variables with their defaults, and
//! the hard limits of the pipeline as named constants with the reason for each value.
//!
//! Guarantees: a bad value is an error naming the variable, never a panic; the effective
//! configuration is logged once with every URL's password redacted.

use std::time::Duration;

use shared::config::{self, ConfigError, NamedDb};

use crate::retention::Bound;

pub const INSTANCE_ID: &str = "INSTANCE_ID";
pub const INSTANCE_ID_DEFAULT: &str = "projection";
/// The small HTTP port: /health and /metrics only.
pub const PORT: &str = "PORT";
pub const PORT_DEFAULT: u16 = 8070;
pub const REDIS_URL: &str = "REDIS_URL";
pub const REDIS_URL_DEFAULT: &str = "redis://127.0.0.1:6379/";
/// Comma-separated `name=postgres://…` entries, one per query DB (each gets one writer).
pub const QUERY_DATABASE_URLS: &str = "QUERY_DATABASE_URLS";
pub const QUERY_DATABASE_URLS_DEFAULT: &str =
    "query-db-primary=postgres://postgres@127.0.0.1:5441/reports_read";

/// The command DB, source of the automatic rebuild of a stale query DB (SPEC §7.4). Unset: a
/// stale DB stays marked (never served) until `cargo xtask rebuild` or a restart with it set.
pub const COMMAND_DATABASE_URL: &str = "COMMAND_DATABASE_URL";
/// Most stream entries kept for a lagging query DB; one further behind is stale and rebuilt.
pub const STREAM_MAX_ENTRIES: &str = "STREAM_MAX_ENTRIES";
/// 200 000 entries of ~0.5–1 KB are ~100–200 MB of Redis memory, which a small Redis holds
/// next to everything else; at the ~2 000 writes/s this deployment sustains that is more than
/// a minute and a half of a DB outage at full load, and hours at ordinary load.
pub const STREAM_MAX_ENTRIES_DEFAULT: usize = 200_000;
/// Oldest unapplied entry (seconds) kept for a lagging query DB; one older is stale and rebuilt.
pub const STREAM_MAX_AGE_SECS: &str = "STREAM_MAX_AGE_SECS";
/// Six hours: a DB down for a maintenance window catches up from the stream; one down longer
/// is cheaper to rebuild from the command DB than to replay, and the stream does not keep a
/// day of history for it.
pub const STREAM_MAX_AGE_SECS_DEFAULT: u64 = 6 * 3600;

/// Entries per XREADGROUP. Large enough that one round trip carries a burst of writes, small
/// enough that one batch is a short transaction on every DB.
pub const READ_COUNT: usize = 256;
/// How long one XREADGROUP blocks waiting for new entries. It bounds how late the reader
/// notices writer reports (acks, rejoins) and a shutdown signal, so it stays well under a
/// second; an idle reader then costs ten round trips a second.
pub const READ_BLOCK: Duration = Duration::from_millis(100);
/// Batches a writer's channel holds before the reader detaches it. A healthy writer empties
/// its channel within a transaction or two; 64 × [`READ_COUNT`] entries (~16k) rides out a
/// slow commit, and beyond that a writer catches up from its checkpoint instead of the reader
/// buffering without bound or waiting for it.
pub const WRITER_QUEUE_BATCHES: usize = 64;
/// The reader reads no new entries while every attached writer has at least this many batches
/// queued: reading further would only overrun the fastest writer's channel and detach it, after
/// which each writer reads and decodes the same backlog again on its own (XRANGE). Two full
/// transactions' worth ([`MAX_TX_ENTRIES`]), so a busy writer always finds its next one
/// queued, while one slower than the fastest still fills up and is detached as before. Every
/// queued entry is held in memory (~3.5 KiB raw and decoded): at half the channel (32 batches,
/// ~8 000 entries) the projection held ~30 MiB after a burst, over the 32 MiB target of the
/// whole process (issue 13 point 8); 8 batches hold ~7 MiB.
pub const PACE_QUEUED_BATCHES: usize = 2 * MAX_TX_ENTRIES / READ_COUNT;
/// Most entries one writer transaction applies when it merges queued batches: big enough to
/// amortise the commit, small enough to keep row locks and a rollback short.
pub const MAX_TX_ENTRIES: usize = 1024;
/// Least time between the starts of two transactions of one writer, under a steady flow
/// (`COMMIT_INTERVAL_MS`). A writer transaction has a fixed cost on its DB whatever it
/// carries: nine round trips, the statement triggers of `read_reports`, `statistics` and
/// `checkpoint` (each moving `read_model_position`; the `list_counts` transition-table
/// triggers, ~1 ms per statement), the plan of every statement. At stress (200 events/s) a
/// writer that committed whatever had arrived committed ~55 times a second with ~3.6 entries
/// each, and those fixed costs were most of its query DB's CPU; every commit also moved the
/// position and emptied the query instances' caches of that DB. A writer that finds a small
/// batch less than this long after its previous transaction began collects for the rest of
/// the interval first. Latency: an entry waits at most this long more, and only while entries
/// keep coming; the first entry after a quiet spell, and a batch already large
/// ([`COMMIT_NOW_ENTRIES`]), commit at once.
pub const COMMIT_INTERVAL_MS: &str = "COMMIT_INTERVAL_MS";
pub const COMMIT_INTERVAL_MS_DEFAULT: u64 = 20;
/// A batch this large commits without waiting for [`COMMIT_INTERVAL_MS`]: its fixed cost is
/// already shared (a backlog, a burst).
pub const COMMIT_NOW_ENTRIES: usize = 256;
/// Entries per XRANGE page while a writer catches up from its checkpoint (one transaction each).
pub const CATCHUP_PAGE: usize = 1000;
/// A pending entry of another consumer idle this long is presumed orphaned (its consumer
/// died) and reclaimed. Far above any transaction time, so a live consumer is never robbed.
pub const CLAIM_MIN_IDLE: Duration = Duration::from_secs(60);
/// How often the reader looks for orphaned entries with XAUTOCLAIM.
pub const CLAIM_EVERY: Duration = Duration::from_secs(10);
/// How often the stream is trimmed below the lowest checkpoint: trimming is housekeeping,
/// not on the latency path.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Longest wait between reconnect attempts to a query DB or Redis: a returning dependency is
/// used again within this time, and a dead one is not hammered.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Server-side limit per statement of a writer transaction; a hung DB turns into an error
/// (and a detached writer) instead of a writer stuck forever.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connect timeout for query DBs and Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long shutdown waits for writers to commit their batch in flight before exiting anyway
/// (an unfinished transaction rolls back; its entries stay pending and are re-read).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub instance_id: String,
    pub port: u16,
    pub redis_url: String,
    pub query_dbs: Vec<NamedDb>,
    pub command_url: Option<String>,
    pub bound: Bound,
    /// [`COMMIT_INTERVAL_MS`]; zero: commit whatever has arrived at once.
    pub commit_interval: Duration,
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let instance_id = config::string(INSTANCE_ID, INSTANCE_ID_DEFAULT);
        let port = config::parse(PORT, PORT_DEFAULT)?;
        let redis_url = config::string(REDIS_URL, REDIS_URL_DEFAULT);
        let urls = config::string(QUERY_DATABASE_URLS, QUERY_DATABASE_URLS_DEFAULT);
        let query_dbs = config::named_dbs(QUERY_DATABASE_URLS, &urls)?;
        let command_url =
            Some(config::string(COMMAND_DATABASE_URL, "")).filter(|u| !u.trim().is_empty());
        let max_entries: usize = config::parse(STREAM_MAX_ENTRIES, STREAM_MAX_ENTRIES_DEFAULT)?;
        let max_age: u64 = config::parse(STREAM_MAX_AGE_SECS, STREAM_MAX_AGE_SECS_DEFAULT)?;
        let commit_interval: u64 = config::parse(COMMIT_INTERVAL_MS, COMMIT_INTERVAL_MS_DEFAULT)?;
        Ok(Config {
            instance_id,
            port,
            redis_url,
            query_dbs,
            command_url,
            bound: Bound {
                max_entries: max_entries.max(1),
                max_age: Duration::from_secs(max_age.max(1)),
            },
            // More than a second would be a misconfiguration, not a cadence.
            commit_interval: Duration::from_millis(commit_interval.min(1000)),
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
            .query_dbs
            .iter()
            .map(|d| format!("{}={}", d.name, config::redact_url(&d.url)))
            .collect();
        format!(
            "port={} redis={} query_dbs=[{}] command_db={} stream_max_entries={} \
             stream_max_age={:?} read_count={READ_COUNT} \
             read_block={READ_BLOCK:?} writer_queue_batches={WRITER_QUEUE_BATCHES} \
             max_tx_entries={MAX_TX_ENTRIES} catchup_page={CATCHUP_PAGE} \
             commit_interval={:?} commit_now_entries={COMMIT_NOW_ENTRIES}",
            self.port,
            config::redact_url(&self.redis_url),
            dbs.join(", "),
            self.command_url.as_deref().map_or(
                "(unset: stale DBs are not rebuilt automatically)".into(),
                config::redact_url
            ),
            self.bound.max_entries,
            self.bound.max_age,
            self.commit_interval
        )
    }
}

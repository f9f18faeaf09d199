//! The sync check: compares the command DB (`reports`, `deleted_at` set = tombstone) with
//! every query DB (`read_reports` and `statistics`) and names every difference. A library
//! function of the projection, next to the read model it checks; `projection check-sync`
//! runs it with the service's environment and `cargo xtask check-sync` and the drills run
//! that subcommand.
//!
//! Per query DB it checks: live row counts, tombstone counts, each report's presence, version,
//! deletion, category and status, and that `statistics` equals `GROUP BY category, status`
//! over that DB's own live rows (SPEC §4.4), and that `list_counts` (the bucket counts deep
//! pages skip by, `sql/query.sql`) equals the same grouping per bucket
//! (`list_counts_drift()`, counted from the rows in SQL, one pass). The grouping is counted here from the rows, not
//! through `apply.rs`, on purpose: a checker that shared the writer's counting rule could not
//! catch a bug in it.
//!
//! It also checks the history read model (`report_history`, SPEC §7.1) against the event log:
//! every event of a known type present exactly once, with the same version, type and payload,
//! and nothing else. To stay cheap at a million reports, neither side ships its payloads: each
//! DB folds a report's events into one row `(report_id, event count, md5 over "version type
//! md5(payload)" in version order)` in SQL (a `GROUP BY` along the `(report_id, version)`
//! index), so the check transfers ~60 bytes per report, and only for the reports whose digest
//! differs (at most [`LIST_CAP`] of them) does it read the events themselves to name the first
//! differing version. [`check`] returns the differences; while writes are still flowing the
//! read models trail the command DB, so [`check_until`] re-checks until they agree or its
//! wait runs out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use shared::config::NamedDb;
use uuid::Uuid;

use shared::event::EventType;

use crate::config::CONNECT_TIMEOUT;
use crate::Error;

/// Differences listed per DB before "… and N more".
const LIST_CAP: usize = 20;
/// How long `check-sync` waits for the read models to catch up by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Pause between two checks while waiting: the projection commits several batches meanwhile,
/// and a check reads every row, so checking more often only loads the DBs.
const RECHECK_EVERY: Duration = Duration::from_millis(250);

/// One report as either side sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    version: i64,
    deleted: bool,
    category: String,
    status: String,
}

/// Everything that differs between the command DB and one query DB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbDiff {
    pub db: String,
    /// Human-readable differences, most important first.
    pub problems: Vec<String>,
    /// Report ids involved, for callers that want them.
    pub report_ids: Vec<Uuid>,
}

impl DbDiff {
    pub fn in_sync(&self) -> bool {
        self.problems.is_empty()
    }

    /// The readable form: the DB's name, then at most [`LIST_CAP`] problems.
    pub fn render(&self) -> String {
        if self.in_sync() {
            return format!("{}: in sync", self.db);
        }
        let mut t = format!("{}: {} difference(s)", self.db, self.problems.len());
        for p in self.problems.iter().take(LIST_CAP) {
            let _ = write!(t, "\n  {p}");
        }
        if self.problems.len() > LIST_CAP {
            let _ = write!(t, "\n  … and {} more", self.problems.len() - LIST_CAP);
        }
        t
    }
}

/// Which side a read failed on, so the error names the right DB.
#[derive(Clone, Copy)]
enum Side<'a> {
    Command,
    Query(&'a str),
}

impl Side<'_> {
    fn err(self, source: postgres::Error) -> Error {
        match self {
            Side::Command => Error::CommandDb(source),
            Side::Query(db) => Error::Db {
                db: db.to_owned(),
                source,
            },
        }
    }
}

fn load_rows(
    client: &mut Client,
    table: &str,
    side: Side<'_>,
) -> Result<HashMap<Uuid, Row>, Error> {
    let sql = format!("SELECT id, version, deleted_at IS NOT NULL, category, status FROM {table}");
    let rows = client.query(sql.as_str(), &[]).map_err(|e| side.err(e))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let row = (|| {
            Ok::<_, postgres::Error>((
                r.try_get(0)?,
                Row {
                    version: r.try_get(1)?,
                    deleted: r.try_get(2)?,
                    category: r.try_get(3)?,
                    status: r.try_get(4)?,
                },
            ))
        })()
        .map_err(|e| side.err(e))?;
        out.insert(row.0, row.1);
    }
    Ok(out)
}

/// Compares one query DB with the command DB's rows (already loaded).
fn check_one(
    command: &HashMap<Uuid, Row>,
    name: &str,
    query: &mut Client,
) -> Result<DbDiff, Error> {
    let side = Side::Query(name);
    let read = load_rows(query, "read_reports", side)?;
    let mut diff = DbDiff {
        db: name.to_string(),
        ..DbDiff::default()
    };
    let live = |m: &HashMap<Uuid, Row>| m.values().filter(|r| !r.deleted).count();
    let dead = |m: &HashMap<Uuid, Row>| m.values().filter(|r| r.deleted).count();
    if live(command) != live(&read) {
        diff.problems.push(format!(
            "live reports: {} in command-db, {} here",
            live(command),
            live(&read)
        ));
    }
    if dead(command) != dead(&read) {
        diff.problems.push(format!(
            "tombstones (deleted reports): {} in command-db, {} here",
            dead(command),
            dead(&read)
        ));
    }
    // Per report, in id order so the output is stable.
    let mut ids: Vec<&Uuid> = command.keys().chain(read.keys()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let problem = match (command.get(id), read.get(id)) {
            (Some(c), None) if c.deleted => Some(format!(
                "report {id}: deleted in command-db (version {}) but has no tombstone here",
                c.version
            )),
            (Some(c), None) => Some(format!(
                "report {id}: missing here (command-db has version {})",
                c.version
            )),
            (None, Some(q)) => Some(format!(
                "report {id}: here (version {}) but not in command-db",
                q.version
            )),
            (Some(c), Some(q)) if c.deleted != q.deleted => Some(if c.deleted {
                format!(
                    "report {id}: deleted in command-db (version {}) but live here (version {})",
                    c.version, q.version
                )
            } else {
                format!(
                    "report {id}: live in command-db (version {}) but deleted here (version {})",
                    c.version, q.version
                )
            }),
            (Some(c), Some(q)) if c.version != q.version => Some(format!(
                "report {id}: version {} in command-db, {} here",
                c.version, q.version
            )),
            (Some(c), Some(q))
                if !c.deleted && (c.category != q.category || c.status != q.status) =>
            {
                Some(format!(
                    "report {id}: {}/{} in command-db, {}/{} here (same version {})",
                    c.category, c.status, q.category, q.status, c.version
                ))
            }
            _ => None,
        };
        if let Some(p) = problem {
            diff.problems.push(p);
            diff.report_ids.push(*id);
        }
    }
    // statistics vs GROUP BY over this DB's own live rows.
    let stats_rows = query
        .query("SELECT category, status, count FROM statistics", &[])
        .map_err(|e| side.err(e))?;
    let mut stats: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in stats_rows {
        let (category, status, count) =
            (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))()
                .map_err(|e| side.err(e))?;
        stats.insert((category, status), count);
    }
    let mut grouped: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in read.values().filter(|r| !r.deleted) {
        *grouped
            .entry((r.category.clone(), r.status.clone()))
            .or_default() += 1;
    }
    let mut keys: Vec<&(String, String)> = stats.keys().chain(grouped.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let s = stats.get(key).copied().unwrap_or(0);
        let g = grouped.get(key).copied().unwrap_or(0);
        if s != g {
            diff.problems.push(format!(
                "statistics {}/{}: count {s}, but {g} live rows in read_reports",
                key.0, key.1
            ));
        }
    }
    // list_counts (deep pages) vs GROUP BY over the live rows, per bucket, in SQL.
    let drift = query
        .query(
            "SELECT category, status, bucket::text, counted, stored FROM list_counts_drift() \
             ORDER BY bucket, category, status",
            &[],
        )
        .map_err(|e| side.err(e))?;
    for r in drift {
        let (category, status, bucket, counted, stored): (String, String, String, i64, i64) =
            (|| {
                Ok::<_, postgres::Error>((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })()
            .map_err(|e| side.err(e))?;
        let shape = |v: &str| {
            if v.is_empty() {
                "*".to_owned()
            } else {
                v.to_owned()
            }
        };
        diff.problems.push(format!(
            "list_counts {}/{} from {bucket}: count {stored}, but {counted} live rows in \
             read_reports",
            shape(&category),
            shape(&status)
        ));
    }
    Ok(diff)
}

/// The event types the projection records; an event of any other type goes to the dead-letter
/// stream and never into history, so the check skips it in the log too (as the rebuild does).
const KNOWN_TYPES: [EventType; 3] = [
    EventType::ReportCreated,
    EventType::ReportUpdated,
    EventType::ReportDeleted,
];

/// One report's events folded into a count and a digest, in SQL. `{table}` and `{filter}` are
/// this file's constants, never input. The digest covers version, type and the payload's own
/// md5, in version order, so a changed, missing, extra or retyped event changes it.
fn digest_sql(table: &str, filter: &str) -> String {
    format!(
        "SELECT report_id, count(*), md5(string_agg(version::text || ' ' || event_type || ' ' \
         || md5(payload), ',' ORDER BY version)) FROM {table} {filter} \
         GROUP BY report_id ORDER BY report_id"
    )
}

/// One report's events as `(version, type, md5(payload))`, for naming the first difference.
fn events_sql(table: &str, filter: &str) -> String {
    let and = if filter.is_empty() { "WHERE" } else { "AND" };
    format!(
        "SELECT version, event_type, md5(payload) FROM {table} {filter} {and} report_id = $2 \
         ORDER BY version"
    )
}

/// Where a side's events live: the command DB's log (known types only) or a history table.
#[derive(Clone, Copy)]
struct HistorySource<'a> {
    side: Side<'a>,
    table: &'static str,
    filter: &'static str,
}

const EVENT_LOG: HistorySource<'static> = HistorySource {
    side: Side::Command,
    table: "event_log",
    filter: "WHERE event_type = ANY($1)",
};

fn history_of(db: &str) -> HistorySource<'_> {
    HistorySource {
        side: Side::Query(db),
        table: "report_history",
        // Every row of history counts: a row of an unknown type there is a difference too.
        // `$1` is still bound (and ignored) so both sides run with the same parameters.
        filter: "WHERE $1::text[] IS NOT NULL",
    }
}

fn known_types() -> Vec<&'static str> {
    KNOWN_TYPES.iter().map(|t| t.as_str()).collect()
}

/// `(report_id, event count, digest)` per report, sorted by id.
type Digests = Vec<(Uuid, i64, String)>;

fn load_digests(client: &mut Client, src: HistorySource<'_>) -> Result<Digests, Error> {
    let sql = digest_sql(src.table, src.filter);
    let rows = client
        .query(sql.as_str(), &[&known_types()])
        .map_err(|e| src.side.err(e))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(
            (|| Ok::<_, postgres::Error>((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))()
                .map_err(|e| src.side.err(e))?,
        );
    }
    // PostgreSQL orders uuids by their bytes, as `Uuid` does; sorting again costs nothing on
    // sorted input and keeps the merge below correct even if that ever differed.
    out.sort_unstable_by_key(|d| d.0);
    Ok(out)
}

/// `(version, event type, md5 of the payload)` of one report's events, oldest first.
type Events = Vec<(i64, String, String)>;

fn load_events(client: &mut Client, src: HistorySource<'_>, id: Uuid) -> Result<Events, Error> {
    let sql = events_sql(src.table, src.filter);
    let rows = client
        .query(sql.as_str(), &[&known_types(), &id])
        .map_err(|e| src.side.err(e))?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Result<_, postgres::Error>>()
        .map_err(|e| src.side.err(e))
}

/// The first difference between a report's events in the log and in history, in words.
fn first_event_difference(id: Uuid, log: &Events, here: &Events) -> String {
    let mut l = log.iter().peekable();
    let mut h = here.iter().peekable();
    loop {
        match (l.peek(), h.peek()) {
            (Some(a), Some(b)) if a.0 < b.0 => {
                return format!(
                    "report {id}: history lacks version {} ({}) of the event log",
                    a.0, a.1
                )
            }
            (Some(a), Some(b)) if a.0 > b.0 => {
                return format!(
                    "report {id}: history has version {} ({}) that the event log lacks",
                    b.0, b.1
                )
            }
            (Some(a), Some(b)) if a.1 != b.1 => {
                return format!(
                    "report {id}: history version {} is {} here, {} in the event log",
                    a.0, b.1, a.1
                )
            }
            (Some(a), Some(b)) if a.2 != b.2 => {
                return format!(
                    "report {id}: history version {} ({}) has another payload than the event log",
                    a.0, a.1
                )
            }
            (Some(a), None) => {
                return format!(
                    "report {id}: history lacks version {} ({}) of the event log",
                    a.0, a.1
                )
            }
            (None, Some(b)) => {
                return format!(
                    "report {id}: history has version {} ({}) that the event log lacks",
                    b.0, b.1
                )
            }
            (None, None) => {
                // The digests differed but the events now agree: the projection moved on
                // between the two reads (check_until looks again).
                return format!("report {id}: history changed while it was being checked");
            }
            _ => {
                l.next();
                h.next();
            }
        }
    }
}

/// Compares one query DB's `report_history` with the command DB's event log (digests already
/// loaded), appending to `diff`.
fn check_history(
    command: &mut Client,
    log: &Digests,
    name: &str,
    query: &mut Client,
    diff: &mut DbDiff,
) -> Result<(), Error> {
    let src = history_of(name);
    let here = load_digests(query, src)?;
    let total = |d: &Digests| d.iter().map(|r| r.1).sum::<i64>();
    if total(log) != total(&here) {
        diff.problems.push(format!(
            "history: {} events in command-db's event log, {} here",
            total(log),
            total(&here)
        ));
    }
    // Merge the two id-sorted lists; a report on one side only, or with another digest, differs.
    let (mut i, mut j) = (0, 0);
    let mut named = 0;
    while i < log.len() || j < here.len() {
        let (id, differs) = match (log.get(i), here.get(j)) {
            (Some(a), Some(b)) if a.0 == b.0 => {
                i += 1;
                j += 1;
                (a.0, a.1 != b.1 || a.2 != b.2)
            }
            (Some(a), Some(b)) if a.0 < b.0 => {
                i += 1;
                (a.0, true)
            }
            (Some(a), None) => {
                i += 1;
                (a.0, true)
            }
            (_, Some(b)) => {
                j += 1;
                (b.0, true)
            }
            (None, None) => break,
        };
        if !differs {
            continue;
        }
        // Only the first few are worth a round trip each; the rest are counted by name.
        let problem = if named < LIST_CAP {
            named += 1;
            let a = load_events(command, EVENT_LOG, id)?;
            let b = load_events(query, src, id)?;
            first_event_difference(id, &a, &b)
        } else {
            format!("report {id}: history differs from the event log")
        };
        diff.problems.push(problem);
        diff.report_ids.push(id);
    }
    Ok(())
}

/// Compares the command DB with each query DB; one [`DbDiff`] per query DB, in order.
pub fn check(command: &mut Client, queries: &mut [(String, Client)]) -> Result<Vec<DbDiff>, Error> {
    let rows = load_rows(command, "reports", Side::Command)?;
    let log = load_digests(command, EVENT_LOG)?;
    queries
        .iter_mut()
        .map(|(name, client)| {
            let mut diff = check_one(&rows, name, client)?;
            check_history(command, &log, name, client, &mut diff)?;
            Ok(diff)
        })
        .collect()
}

/// [`check`] by URLs.
pub fn check_urls(command_url: &str, queries: &[NamedDb]) -> Result<Vec<DbDiff>, Error> {
    let mut command = connect(command_url).map_err(Error::CommandDb)?;
    let mut clients = Vec::new();
    for q in queries {
        let c = connect(&q.url).map_err(|e| Side::Query(&q.name).err(e))?;
        clients.push((q.name.clone(), c));
    }
    check(&mut command, &mut clients)
}

/// A connection that gives up on an unreachable DB within [`CONNECT_TIMEOUT`].
fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    config.connect_timeout(CONNECT_TIMEOUT);
    config.connect(NoTls)
}

/// [`check_urls`] again every [`RECHECK_EVERY`] until every DB is in sync or `wait` has
/// passed; the last differences either way.
pub fn check_until(
    command_url: &str,
    queries: &[NamedDb],
    wait: Duration,
) -> Result<Vec<DbDiff>, Error> {
    let deadline = Instant::now() + wait;
    loop {
        let diffs = check_urls(command_url, queries)?;
        if diffs.iter().all(DbDiff::in_sync) || Instant::now() >= deadline {
            return Ok(diffs);
        }
        std::thread::sleep(RECHECK_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(version, type, payload digest)` lists, compact: "1C a" = version 1, ReportCreated, "a".
    fn events(spec: &str) -> Events {
        spec.split_whitespace()
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|c| {
                let (v, t) = c[0].split_at(1);
                let t = match t {
                    "C" => "ReportCreated",
                    "U" => "ReportUpdated",
                    _ => "ReportDeleted",
                };
                (v.parse().expect("version"), t.to_owned(), c[1].to_owned())
            })
            .collect()
    }

    fn check(log: &str, here: &str, expect: &str) {
        let got = first_event_difference(Uuid::nil(), &events(log), &events(here));
        let got = got.trim_start_matches(&format!("report {}: ", Uuid::nil()));
        assert_eq!(got, expect, "log {log:?} vs history {here:?}");
    }

    #[test]
    fn first_event_difference_names_the_version() {
        check(
            "1C a 2U b 3D c",
            "1C a 3D c",
            "history lacks version 2 (ReportUpdated) of the event log",
        );
        check(
            "1C a 2U b",
            "1C a 2U b 3D c",
            "history has version 3 (ReportDeleted) that the event log lacks",
        );
        check(
            "1C a 2U b",
            "1C a",
            "history lacks version 2 (ReportUpdated) of the event log",
        );
        check(
            "2U b",
            "1C a 2U b",
            "history has version 1 (ReportCreated) that the event log lacks",
        );
        check(
            "1C a 2U b",
            "1C a 2D b",
            "history version 2 is ReportDeleted here, ReportUpdated in the event log",
        );
        check(
            "1C a 2U b",
            "1C x 2U b",
            "history version 1 (ReportCreated) has another payload than the event log",
        );
        check("1C a", "1C a", "history changed while it was being checked");
    }

    #[test]
    fn long_lists_are_capped() {
        let d = DbDiff {
            db: "query-db-primary".into(),
            problems: (0..30).map(|i| format!("problem {i}")).collect(),
            report_ids: Vec::new(),
        };
        let text = d.render();
        assert!(text.starts_with("query-db-primary: 30 difference(s)"));
        assert!(text.contains("problem 19"));
        assert!(!text.contains("problem 20"));
        assert!(text.contains("… and 10 more"));
    }
}

//! The sync check: compares the command DB (`reports`, `deleted_at` set = tombstone) with
//! every query DB (`read_reports` and `statistics`) and names every difference. A library
//! function of the projection, next to the read model it checks; `projection check-sync`
//! runs it with the service's environment and `cargo xtask check-sync` and the drills run
//! that subcommand.
//!
//! Per query DB it checks: live row counts, tombstone counts, each report's presence, version,
//! deletion, category and status, and that `statistics` equals `GROUP BY category, status`
//! over that DB's own live rows (SPEC §4.4). The grouping is counted here from the rows, not
//! through `apply.rs`, on purpose: a checker that shared the writer's counting rule could not
//! catch a bug in it. [`check`] returns the differences; while writes are still flowing the
//! read models trail the command DB, so [`check_until`] re-checks until they agree or its
//! wait runs out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use shared::config::NamedDb;
use uuid::Uuid;

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
    Ok(diff)
}

/// Compares the command DB with each query DB; one [`DbDiff`] per query DB, in order.
pub fn check(command: &mut Client, queries: &mut [(String, Client)]) -> Result<Vec<DbDiff>, Error> {
    let rows = load_rows(command, "reports", Side::Command)?;
    queries
        .iter_mut()
        .map(|(name, client)| check_one(&rows, name, client))
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

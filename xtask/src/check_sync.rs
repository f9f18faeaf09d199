//! `cargo xtask check-sync [--command-db URL] [--query-db name=URL …] [--wait S]`: compares
//! the command DB (`reports`, `deleted_at` set = tombstone) with every query DB
//! (`read_reports` and `statistics`) and names every difference.
//!
//! Per query DB it checks: live row counts, tombstone counts, each report's presence, version,
//! deletion, category and status, and that `statistics` equals `GROUP BY category, status`
//! over that DB's own live rows (SPEC §4.4). [`check`] returns the differences, so tests call
//! it without spawning anything; the command prints them and fails when there are any. While
//! writes are still flowing the read models trail the command DB, so the command re-checks
//! until they agree or `--wait` runs out.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lexopt::prelude::*;
use postgres::{Client, NoTls};
use uuid::Uuid;
use xshell::Shell;

/// Differences listed per DB before "… and N more".
const LIST_CAP: usize = 20;
/// How long `check-sync` waits for the read models to catch up by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

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

fn load_rows(client: &mut Client, table: &str, db: &str) -> Result<HashMap<Uuid, Row>> {
    let sql = format!("SELECT id, version, deleted_at IS NOT NULL, category, status FROM {table}");
    let rows = client
        .query(sql.as_str(), &[])
        .with_context(|| format!("read {table} of {db}"))?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let id: Uuid = r.try_get(0).with_context(|| format!("{db}: id"))?;
        out.insert(
            id,
            Row {
                version: r
                    .try_get(1)
                    .with_context(|| format!("{db}: version of {id}"))?,
                deleted: r
                    .try_get(2)
                    .with_context(|| format!("{db}: deleted_at of {id}"))?,
                category: r
                    .try_get(3)
                    .with_context(|| format!("{db}: category of {id}"))?,
                status: r
                    .try_get(4)
                    .with_context(|| format!("{db}: status of {id}"))?,
            },
        );
    }
    Ok(out)
}

/// Compares one query DB with the command DB's rows (already loaded).
fn check_one(command: &HashMap<Uuid, Row>, name: &str, query: &mut Client) -> Result<DbDiff> {
    let read = load_rows(query, "read_reports", name)?;
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
        .with_context(|| format!("read statistics of {name}"))?;
    let mut stats: BTreeMap<(String, String), i64> = BTreeMap::new();
    for r in stats_rows {
        let key = (
            r.try_get::<_, String>(0)
                .with_context(|| format!("{name}: statistics.category"))?,
            r.try_get::<_, String>(1)
                .with_context(|| format!("{name}: statistics.status"))?,
        );
        stats.insert(
            key,
            r.try_get(2)
                .with_context(|| format!("{name}: statistics.count"))?,
        );
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
pub fn check(command: &mut Client, queries: &mut [(String, Client)]) -> Result<Vec<DbDiff>> {
    let rows = load_rows(command, "reports", "command-db")?;
    queries
        .iter_mut()
        .map(|(name, client)| check_one(&rows, name, client))
        .collect()
}

/// [`check`] by URLs.
pub fn check_urls(command_url: &str, queries: &[(String, String)]) -> Result<Vec<DbDiff>> {
    let mut command = Client::connect(command_url, NoTls)
        .with_context(|| format!("connect to command-db at {command_url}"))?;
    let mut clients = Vec::new();
    for (name, url) in queries {
        let c =
            Client::connect(url, NoTls).with_context(|| format!("connect to {name} at {url}"))?;
        clients.push((name.clone(), c));
    }
    check(&mut command, &mut clients)
}

pub struct CheckSync {
    pub command_db: Option<String>,
    pub query_dbs: Vec<(String, String)>,
    pub wait: Duration,
}

impl CheckSync {
    /// Flags after `check-sync`.
    pub fn parse(p: &mut lexopt::Parser) -> Result<CheckSync> {
        let mut c = CheckSync {
            command_db: None,
            query_dbs: Vec::new(),
            wait: DEFAULT_WAIT,
        };
        while let Some(arg) = p.next()? {
            match arg {
                Long("command-db") => c.command_db = Some(p.value()?.string()?),
                Long("query-db") => {
                    let raw = p.value()?.string()?;
                    c.query_dbs
                        .push(crate::bench::parse_named_url("--query-db", &raw)?);
                }
                Long("wait") => {
                    let raw = p.value()?.string()?;
                    let secs: f64 = raw
                        .parse()
                        .ok()
                        .filter(|s: &f64| (0.0..=3600.0).contains(s))
                        .with_context(|| {
                            format!("--wait expects seconds (0..3600), got `{raw}`")
                        })?;
                    c.wait = Duration::from_secs_f64(secs);
                }
                _ => bail!("{}", arg.unexpected()),
            }
        }
        Ok(c)
    }

    pub fn run(self, sh: &Shell) -> Result<()> {
        let (command_db, query_dbs) = match (self.command_db, self.query_dbs.is_empty()) {
            (Some(c), false) => (c, self.query_dbs),
            (c, _) => {
                let local = crate::bench::LocalCluster::discover(sh);
                let q = if self.query_dbs.is_empty() {
                    local.query_dbs
                } else {
                    self.query_dbs
                };
                (c.unwrap_or(local.command_db), q)
            }
        };
        let deadline = Instant::now() + self.wait;
        let diffs = loop {
            let diffs = check_urls(&command_db, &query_dbs)?;
            if diffs.iter().all(DbDiff::in_sync) || Instant::now() >= deadline {
                break diffs;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        for d in &diffs {
            println!("{}", d.render());
        }
        let bad: Vec<&str> = diffs
            .iter()
            .filter(|d| !d.in_sync())
            .map(|d| d.db.as_str())
            .collect();
        if !bad.is_empty() {
            bail!(
                "out of sync with command-db: {} (after waiting {:.1} s)",
                bad.join(", "),
                self.wait.as_secs_f64()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::testkit::PgCluster;

    /// Inserts the same report into command-db and a query DB (with consistent statistics).
    struct World {
        command: Client,
        queries: Vec<(String, Client)>,
    }

    const INSERT_COMMAND: &str = "INSERT INTO reports (id, title, description, category, status, version, created_at, updated_at, deleted_at) \
         VALUES ($1, 't', 'd', $2, $3, $4, now(), now(), CASE WHEN $5 THEN now() END)";
    const INSERT_QUERY: &str = "INSERT INTO read_reports (id, title, description, category, status, version, created_at, updated_at, deleted_at, doc) \
         VALUES ($1, 't', 'd', $2, $3, $4, now(), now(), CASE WHEN $5 THEN now() END, '{}')";

    impl World {
        fn new(pg: &PgCluster, prefix: &str) -> World {
            pg.create_db(&format!("{prefix}_command"));
            let mut command = pg.client(&format!("{prefix}_command"));
            shared::migrate::command_db(&mut command).unwrap();
            let mut queries = Vec::new();
            for name in ["primary", "replica1"] {
                let db = format!("{prefix}_{name}");
                pg.create_db(&db);
                let mut c = pg.client(&db);
                shared::migrate::query_db(&mut c).unwrap();
                queries.push((format!("query-db-{name}"), c));
            }
            World { command, queries }
        }

        fn report(&mut self, id: Uuid, category: &str, status: &str, version: i64, deleted: bool) {
            self.command
                .execute(
                    INSERT_COMMAND,
                    &[&id, &category, &status, &version, &deleted],
                )
                .unwrap();
            for (_, q) in &mut self.queries {
                q.execute(INSERT_QUERY, &[&id, &category, &status, &version, &deleted])
                    .unwrap();
                if !deleted {
                    q.execute(
                        "INSERT INTO statistics (category, status, count, last_updated) VALUES ($1, $2, 1, now()) \
                         ON CONFLICT (category, status) DO UPDATE SET count = statistics.count + 1",
                        &[&category, &status],
                    )
                    .unwrap();
                }
            }
        }

        fn check(&mut self) -> Vec<DbDiff> {
            check(&mut self.command, &mut self.queries).unwrap()
        }

        fn query(&mut self, name: &str) -> &mut Client {
            &mut self.queries.iter_mut().find(|(n, _)| n == name).unwrap().1
        }
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(0x1000 + n)
    }

    fn seeded(pg: &PgCluster, prefix: &str) -> World {
        let mut w = World::new(pg, prefix);
        w.report(id(1), "kebersihan", "pending", 1, false);
        w.report(id(2), "kebersihan", "resolved", 3, false);
        w.report(id(3), "keamanan", "in_progress", 2, false);
        w.report(id(4), "lainnya", "pending", 2, true);
        w
    }

    /// Expects exactly one query DB to differ, with every `needle` somewhere in its report.
    fn expect_diff(diffs: &[DbDiff], db: &str, needles: &[&str]) {
        for d in diffs {
            if d.db == db {
                let text = d.render();
                assert!(!d.in_sync(), "{db} should differ");
                for n in needles {
                    assert!(text.contains(n), "expected {n:?} in:\n{text}");
                }
            } else {
                assert!(d.in_sync(), "{} should be in sync: {}", d.db, d.render());
            }
        }
    }

    #[test]
    fn check_sync_finds_every_kind_of_drift() {
        let pg = PgCluster::start();

        // Given consistent data, every DB is in sync.
        let mut w = seeded(&pg, "sync_ok");
        let diffs = w.check();
        assert_eq!(diffs.len(), 2);
        for d in &diffs {
            assert!(d.in_sync(), "{}", d.render());
            assert_eq!(d.render(), format!("{}: in sync", d.db));
        }

        // A version that lags behind on one replica.
        w.query("query-db-replica1")
            .execute(
                "UPDATE read_reports SET version = 2 WHERE id = $1",
                &[&id(2)],
            )
            .unwrap();
        expect_diff(
            &w.check(),
            "query-db-replica1",
            &[
                "query-db-replica1",
                &id(2).to_string(),
                "version 3 in command-db, 2 here",
            ],
        );

        // A missing row on the primary (statistics now disagree with the rows as well).
        let mut w = seeded(&pg, "sync_missing");
        w.query("query-db-primary")
            .execute("DELETE FROM read_reports WHERE id = $1", &[&id(3)])
            .unwrap();
        expect_diff(
            &w.check(),
            "query-db-primary",
            &[
                &id(3).to_string(),
                "missing here",
                "live reports: 3 in command-db, 2 here",
                "statistics keamanan/in_progress: count 1, but 0 live rows",
            ],
        );

        // A bumped statistics count.
        let mut w = seeded(&pg, "sync_stats");
        w.query("query-db-replica1")
            .execute(
                "UPDATE statistics SET count = count + 1 WHERE category = 'kebersihan' AND status = 'pending'",
                &[],
            )
            .unwrap();
        expect_diff(
            &w.check(),
            "query-db-replica1",
            &["statistics kebersihan/pending: count 2, but 1 live rows"],
        );

        // A resurrected report: deleted in command-db, live on the primary.
        let mut w = seeded(&pg, "sync_tomb");
        w.query("query-db-primary")
            .execute(
                "UPDATE read_reports SET deleted_at = NULL WHERE id = $1",
                &[&id(4)],
            )
            .unwrap();
        expect_diff(
            &w.check(),
            "query-db-primary",
            &[&id(4).to_string(), "deleted in command-db", "tombstones"],
        );
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

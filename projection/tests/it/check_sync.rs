//! The sync check against real databases: given a command DB and two query DBs that agree,
//! when one query DB drifts in some way, then `check` names that DB and the difference, and
//! the `projection check-sync` subcommand fails naming it.

use postgres::Client;
use projection::check_sync::{check, DbDiff};
use shared::testkit::PgCluster;
use uuid::Uuid;

use crate::support::pg;

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
        shared::migrate::command_db(&mut command).expect("test database");
        let mut queries = Vec::new();
        for name in ["primary", "replica1"] {
            let db = format!("{prefix}_{name}");
            pg.create_db(&db);
            let mut c = pg.client(&db);
            shared::migrate::query_db(&mut c).expect("test database");
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
            .expect("test database");
        for (_, q) in &mut self.queries {
            q.execute(INSERT_QUERY, &[&id, &category, &status, &version, &deleted])
                .expect("test database");
            if !deleted {
                q.execute(
                    "INSERT INTO statistics (category, status, count, last_updated) VALUES ($1, $2, 1, now()) \
                     ON CONFLICT (category, status) DO UPDATE SET count = statistics.count + 1",
                    &[&category, &status],
                )
                .expect("test database");
            }
        }
    }

    fn check(&mut self) -> Vec<DbDiff> {
        check(&mut self.command, &mut self.queries).expect("test database")
    }

    fn query(&mut self, name: &str) -> &mut Client {
        &mut self
            .queries
            .iter_mut()
            .find(|(n, _)| n == name)
            .expect("test database")
            .1
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
    let pg = pg();

    // Given consistent data, every DB is in sync.
    let mut w = seeded(pg, "sync_ok");
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
        .expect("test database");
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
    let mut w = seeded(pg, "sync_missing");
    w.query("query-db-primary")
        .execute("DELETE FROM read_reports WHERE id = $1", &[&id(3)])
        .expect("test database");
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
    let mut w = seeded(pg, "sync_stats");
    w.query("query-db-replica1")
        .execute(
            "UPDATE statistics SET count = count + 1 WHERE category = 'kebersihan' AND status = 'pending'",
            &[],
        )
        .expect("test database");
    expect_diff(
        &w.check(),
        "query-db-replica1",
        &["statistics kebersihan/pending: count 2, but 1 live rows"],
    );

    // A drifted deep-page count (`list_counts`), the rows themselves all right.
    let mut w = seeded(pg, "sync_list_counts");
    w.query("query-db-replica1")
        .execute(
            "UPDATE list_counts SET count = count + 2 WHERE category = 'kebersihan' \
             AND status = ''",
            &[],
        )
        .expect("test database");
    expect_diff(
        &w.check(),
        "query-db-replica1",
        &["list_counts kebersihan/* from -infinity: count 4, but 2 live rows"],
    );

    // A resurrected report: deleted in command-db, live on the primary.
    let mut w = seeded(pg, "sync_tomb");
    w.query("query-db-primary")
        .execute(
            "UPDATE read_reports SET deleted_at = NULL WHERE id = $1",
            &[&id(4)],
        )
        .expect("test database");
    expect_diff(
        &w.check(),
        "query-db-primary",
        &[&id(4).to_string(), "deleted in command-db", "tombstones"],
    );
}

/// `projection check-sync` with the service's environment: exit 0 and "in sync" for every
/// DB, or exit 1 naming the DB and the difference.
#[test]
fn check_sync_subcommand_reports_and_fails() {
    let pg = pg();
    let mut w = seeded(pg, "sync_cli");
    let env = [
        ("COMMAND_DATABASE_URL", pg.url("sync_cli_command")),
        (
            "QUERY_DATABASE_URLS",
            format!(
                "query-db-primary={},query-db-replica1={}",
                pg.url("sync_cli_primary"),
                pg.url("sync_cli_replica1")
            ),
        ),
    ];
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_projection"))
            .args(["check-sync", "--wait", "0"])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run projection check-sync")
    };

    // Given agreeing DBs, the check passes and says so per DB.
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("query-db-primary: in sync"), "{text}");
    assert!(text.contains("query-db-replica1: in sync"), "{text}");

    // When a replica lags a version, it fails and names the DB and the report.
    w.query("query-db-replica1")
        .execute(
            "UPDATE read_reports SET version = 2 WHERE id = $1",
            &[&id(2)],
        )
        .expect("tamper");
    let out = run();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("query-db-primary: in sync"), "{text}");
    assert!(
        text.contains("query-db-replica1: 1 difference(s)"),
        "{text}"
    );
    assert!(text.contains(&id(2).to_string()), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("query-db-replica1"),
        "the error names the DB: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// History is checked against the event log: given a command DB written the way the command
/// service writes it and both query DBs rebuilt from it, when one history row of the replica
/// is tampered with (payload, then type, then a lost row), then `projection check-sync` fails
/// naming that DB, the report and the version; after `projection rebuild` it passes again.
#[test]
fn check_sync_compares_history_with_the_event_log() {
    use shared::model::{Category, Status};

    let pg = pg();
    let command_url = pg.create_db("sync_hist_command");
    let primary_url = pg.create_db("sync_hist_primary");
    let replica_url = pg.create_db("sync_hist_replica");
    let mut command = crate::rebuild::CommandDb(pg.client("sync_hist_command"));
    shared::migrate::command_db(&mut command.0).expect("migrate command");
    let mut reports: Vec<_> = (0..4)
        .map(|n| command.create(n, Category::Infrastruktur))
        .collect();
    command.update(&mut reports[1], Category::Infrastruktur, Status::InProgress);
    command.update(&mut reports[1], Category::Kesehatan, Status::Resolved);
    command.delete(&reports[2]);
    let env = [
        ("COMMAND_DATABASE_URL", command_url),
        (
            "QUERY_DATABASE_URLS",
            format!("query-db-primary={primary_url},query-db-replica1={replica_url}"),
        ),
    ];
    let projection = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_projection"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run projection");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let check_sync = || projection(&["check-sync", "--wait", "0"]);
    for db in ["query-db-primary", "query-db-replica1"] {
        let (code, text) = projection(&["rebuild", "--db", db]);
        assert_eq!(code, Some(0), "{text}");
    }
    let (code, text) = check_sync();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("query-db-replica1: in sync"), "{text}");

    let mut replica = pg.client("sync_hist_replica");
    let target = reports[1].id;
    let tampers = [
        (
            "UPDATE report_history SET payload = payload || ' ' WHERE report_id = $1 AND version = 2",
            "history version 2 (ReportUpdated) has another payload than the event log",
        ),
        (
            "UPDATE report_history SET event_type = 'ReportDeleted' WHERE report_id = $1 AND version = 2",
            "history version 2 is ReportDeleted here, ReportUpdated in the event log",
        ),
        (
            "DELETE FROM report_history WHERE report_id = $1 AND version = 3",
            "history lacks version 3 (ReportUpdated) of the event log",
        ),
    ];
    for (tamper, expected) in tampers {
        // When one history row of the replica differs from the log ...
        replica.execute(tamper, &[&target]).expect("tamper");
        // ... then check-sync fails naming the DB, the report and the difference ...
        let (code, text) = check_sync();
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("query-db-primary: in sync"), "{text}");
        assert!(text.contains("query-db-replica1: "), "{text}");
        assert!(
            text.contains(&format!("report {target}: {expected}")),
            "expected {expected:?} in:\n{text}"
        );
        // ... and after a rebuild of that DB it passes again.
        let (code, text) = projection(&["rebuild", "--db", "query-db-replica1"]);
        assert_eq!(code, Some(0), "{text}");
        let (code, text) = check_sync();
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("query-db-replica1: in sync"), "{text}");
    }

    // A history row of a report the log never had is named too.
    let stranger = Uuid::from_u128(0xdead);
    replica
        .execute(
            "INSERT INTO report_history (report_id, version, event_type, at, payload) \
             VALUES ($1, 1, 'ReportCreated', now(), '{}')",
            &[&stranger],
        )
        .expect("tamper");
    let (code, text) = check_sync();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "report {stranger}: history has version 1 (ReportCreated) that the event log lacks"
        )),
        "{text}"
    );
    assert!(
        text.contains("history: 7 events in command-db's event log, 8 here"),
        "{text}"
    );
}

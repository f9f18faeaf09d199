//! Rebuilding a read model from the command DB: given a command DB written the way the
//! command service writes it and a read model gone wrong in every way, when the rebuild runs
//! (waiting for the writers' lock), then the read model equals the command DB, statistics are
//! exact and the checkpoint is untouched; and the `projection rebuild` subcommand does the
//! same from the service's environment.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::{Client, NoTls};
use projection::rebuild::{rebuild, RebuildConfig};
use projection::writer::WRITE_LOCK;
use shared::config::NamedDb;
use shared::model::{now_micros, Category, Location, Report, Status, Tombstone};
use uuid::Uuid;

use crate::support::pg;

/// The command service's writes, done the same way: row and event in one transaction.
pub struct CommandDb(pub Client);

impl CommandDb {
    fn event(&mut self, kind: &str, id: Uuid, version: i64, payload: String) {
        self.0
            .execute(
                "INSERT INTO event_log (event_id, event_type, report_id, version, payload, \
                 created_at) VALUES ($1, $2, $3, $4, $5, now())",
                &[&Uuid::new_v4(), &kind, &id, &version, &payload],
            )
            .expect("insert event");
    }

    pub fn create(&mut self, n: usize, category: Category) -> Report {
        let now = now_micros();
        let r = Report {
            id: Uuid::new_v4(),
            title: format!("laporan {n} — jalan rusak \"besar\"\n\\ tab\t"),
            description: format!("deskripsi {n}"),
            category,
            status: Status::Pending,
            version: 1,
            created_at: now,
            updated_at: now,
            // Every other report has a place, so a rebuild must carry location and address.
            location: (n % 2 == 1).then(|| Location {
                lat: -6.2 + n as f64 * 0.001,
                lng: 106.8,
            }),
            address: (n % 2 == 1).then(|| format!("Jl. Sudirman No. {n}")),
            // And every third an Open311 photo link, which a rebuild must keep too.
            media_url: n
                .is_multiple_of(3)
                .then(|| format!("https://foto.example/{n}.jpg")),
        };
        let (lat, lng) = match r.location {
            Some(l) => (Some(l.lat), Some(l.lng)),
            None => (None, None),
        };
        self.0
            .execute(
                "INSERT INTO reports (id, title, description, category, status, version, \
                 created_at, updated_at, lat, lng, address, media_url) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6, $7, $8, $9, $10)",
                &[
                    &r.id,
                    &r.title,
                    &r.description,
                    &r.category.as_str(),
                    &r.status.as_str(),
                    &now,
                    &lat,
                    &lng,
                    &r.address,
                    &r.media_url,
                ],
            )
            .expect("insert report");
        self.event("ReportCreated", r.id, 1, json(&r));
        r
    }

    pub fn update(&mut self, r: &mut Report, category: Category, status: Status) {
        r.category = category;
        r.status = status;
        r.version += 1;
        r.updated_at = now_micros();
        self.0
            .execute(
                "UPDATE reports SET category = $2, status = $3, version = $4, \
                 updated_at = $5 WHERE id = $1",
                &[
                    &r.id,
                    &r.category.as_str(),
                    &r.status.as_str(),
                    &r.version,
                    &r.updated_at,
                ],
            )
            .expect("update report");
        self.event("ReportUpdated", r.id, r.version, json(&*r));
    }

    pub fn delete(&mut self, r: &Report) {
        let t = Tombstone {
            id: r.id,
            version: r.version + 1,
            deleted_at: now_micros(),
        };
        self.0
            .execute(
                "UPDATE reports SET version = $2, updated_at = $3, deleted_at = $3 \
                 WHERE id = $1",
                &[&t.id, &t.version, &t.deleted_at],
            )
            .expect("delete report");
        self.event("ReportDeleted", t.id, t.version, json(&t));
    }
}

fn json(v: &impl Snapshot) -> String {
    v.json()
}

/// A payload the command service logs, serialised as it does.
trait Snapshot {
    fn json(&self) -> String;
}

impl Snapshot for Report {
    fn json(&self) -> String {
        serde_json::to_string(self).expect("serialize")
    }
}

impl Snapshot for Tombstone {
    fn json(&self) -> String {
        serde_json::to_string(self).expect("serialize")
    }
}

/// (version, deleted, category, status, doc) per report of the read model.
type ReadRows = BTreeMap<Uuid, (i64, bool, String, String, String)>;

fn read_rows(c: &mut Client) -> ReadRows {
    c.query(
        "SELECT id, version, deleted_at IS NOT NULL, category, status, doc FROM read_reports",
        &[],
    )
    .expect("read_reports")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))))
    .collect()
}

fn statistics(c: &mut Client) -> BTreeMap<(String, String), i64> {
    c.query(
        "SELECT category, status, count FROM statistics WHERE count <> 0",
        &[],
    )
    .expect("statistics")
    .iter()
    .map(|r| ((r.get(0), r.get(1)), r.get(2)))
    .collect()
}

#[test]
fn rebuild_restores_a_corrupted_read_model() {
    let pg = pg();
    let command_url = pg.create_db("rebuild_command");
    let query_url = pg.create_db("rebuild_query");
    let mut command = CommandDb(Client::connect(&command_url, NoTls).expect("connect"));
    shared::migrate::command_db(&mut command.0).expect("migrate command");
    let mut query = Client::connect(&query_url, NoTls).expect("connect");
    shared::migrate::query_db(&mut query).expect("migrate query");

    // Given: reports created, moved between categories and statuses, some deleted, ...
    let mut reports: Vec<Report> = (0..2500)
        .map(|n| command.create(n, Category::ALL[n % Category::ALL.len()]))
        .collect();
    for (n, r) in reports.iter_mut().enumerate().filter(|(n, _)| n % 3 == 0) {
        let status = Status::ALL[n % Status::ALL.len()];
        command.update(r, Category::Infrastruktur, status);
    }
    for r in reports.iter().filter(|r| r.version == 1).step_by(7) {
        command.delete(r);
    }
    // ... a checkpoint the projection wrote, and a read model gone wrong in every way.
    query
        .batch_execute(
            "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at) \
             VALUES ('report-events', '1700000000000-3', 4242, 99, now());
             INSERT INTO read_reports VALUES (gen_random_uuid(), 'ghost', '', 'lainnya', \
               'pending', 9, now(), now(), NULL, '{}');
             INSERT INTO statistics VALUES ('lainnya', 'pending', 77, now()), \
               ('keamanan', 'resolved', 5, now()); \
             UPDATE list_counts SET count = count + 5 WHERE status = ''; \
             ALTER DATABASE rebuild_query SET reports.list_bucket_rows = 16;",
        )
        .expect("corrupt");
    let live: Vec<&Report> = reports.iter().filter(|r| r.version > 1).collect();
    query
        .execute(
            "INSERT INTO read_reports VALUES ($1, 'stale', '', 'lainnya', 'pending', 1, \
             now(), now(), now(), '{}')",
            &[&live[0].id],
        )
        .expect("corrupt");

    // When: the rebuild runs while another session holds the projection's lock a moment.
    let mut holder = Client::connect(&query_url, NoTls).expect("connect");
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let release = std::thread::spawn(move || {
        let mut held = holder.transaction().expect("begin");
        held.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
            .expect("lock");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(Duration::from_millis(400));
        held.commit().expect("release");
    });
    locked.recv().expect("lock taken");
    let config = RebuildConfig {
        command_url: command_url.clone(),
        target: NamedDb {
            name: "rebuild_query".into(),
            url: query_url.clone(),
        },
    };
    let summary = rebuild(&config).expect("rebuild");
    release.join().expect("holder thread");

    // Then: every report as the command DB has it, docs as the projection stores them, ...
    let mut want: ReadRows = BTreeMap::new();
    for r in command
        .0
        .query(
            "SELECT r.id, r.version, r.deleted_at IS NOT NULL, r.category, r.status, \
               e.payload FROM reports r JOIN event_log e ON e.report_id = r.id \
               AND e.version = CASE WHEN r.deleted_at IS NULL THEN r.version \
                                    ELSE r.version - 1 END",
            &[],
        )
        .expect("command rows")
    {
        want.insert(r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)));
    }
    let got = read_rows(&mut query);
    assert_eq!(got.len(), want.len(), "row count");
    for (id, w) in &want {
        assert_eq!(got.get(id), Some(w), "report {id}");
    }
    // ... statistics equal GROUP BY over the command DB's live reports, ...
    let want_stats: BTreeMap<(String, String), i64> = command
        .0
        .query(
            "SELECT category, status, count(*) FROM reports WHERE deleted_at IS NULL \
             GROUP BY 1, 2",
            &[],
        )
        .expect("group by")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    assert_eq!(statistics(&mut query), want_stats);
    // ... the deep-page counts exact again, cut into many buckets (at most 16 reports each
    // here) ...
    let drift: i64 = query
        .query_one("SELECT count(*) FROM list_counts_drift()", &[])
        .expect("drift")
        .get(0);
    assert_eq!(
        drift, 0,
        "list_counts differ from the rows after the rebuild"
    );
    let buckets: i64 = query
        .query_one(
            "SELECT count(*) FROM list_counts WHERE category = '' AND status = ''",
            &[],
        )
        .expect("buckets")
        .get(0);
    assert!(buckets > 100, "{buckets} buckets for ~2 100 live reports");
    // ... the checkpoint untouched, and the summary telling the same story.
    let cp = query
        .query_one("SELECT entry_id, position, applied FROM checkpoint", &[])
        .expect("checkpoint");
    let cp: (String, i64, i64) = (cp.get(0), cp.get(1), cp.get(2));
    assert_eq!(cp, ("1700000000000-3".to_string(), 4242, 99));
    let deleted = want.values().filter(|w| w.1).count() as u64;
    assert!(deleted > 100, "the test deletes reports");
    assert_eq!(summary.tombstones, deleted);
    assert_eq!(summary.live, want.len() as u64 - deleted);
    assert_eq!(summary.statistics, want_stats.len() as u64);
    assert_eq!(summary.replaced, 2);
    assert_eq!(
        (
            summary.checkpoint.entry_id.to_string(),
            summary.checkpoint.position
        ),
        ("1700000000000-3".to_string(), 4242)
    );
    assert!(
        summary.lock_wait >= Duration::from_millis(300),
        "the rebuild must wait for the projection's lock, waited {:?}",
        summary.lock_wait
    );

    // ... and the history read model holds every event of the log, as the writer records it.
    let history = |c: &mut Client, sql: &str| -> Vec<(Uuid, i64, String, String)> {
        c.query(sql, &[])
            .expect("history rows")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let want_history = history(
        &mut command.0,
        "SELECT report_id, version, event_type, payload FROM event_log ORDER BY 1, 2",
    );
    assert_eq!(
        history(
            &mut query,
            "SELECT report_id, version, event_type, payload FROM report_history ORDER BY 1, 2",
        ),
        want_history
    );
    assert_eq!(summary.history, want_history.len() as u64);
    // ... the place columns say what each doc says, tombstones (last live doc) included, ...
    let (wrong, located) = crate::support::place_mismatches(&mut query);
    assert_eq!(wrong, 0, "rows whose place columns disagree with doc");
    let located_tombstones: i64 = query
        .query_one(
            "SELECT count(*) FROM read_reports WHERE deleted_at IS NOT NULL AND lat IS NOT NULL",
            &[],
        )
        .expect("located tombstones")
        .get(0);
    assert!(
        located > 1000 && located_tombstones > 10,
        "{located} / {located_tombstones}"
    );

    // A second rebuild of a correct model changes nothing.
    let again = rebuild(&config).expect("rebuild");
    assert_eq!(read_rows(&mut query), got);
    assert_eq!(again.replaced, want.len() as u64);
}

/// `projection rebuild --db NAME` picks NAME out of `QUERY_DATABASE_URLS` and rebuilds it
/// from `COMMAND_DATABASE_URL`; an unknown name is a usage error listing the known ones.
#[test]
fn rebuild_subcommand_uses_the_service_environment() {
    let pg = pg();
    let command_url = pg.create_db("rebuild_cli_command");
    let primary_url = pg.create_db("rebuild_cli_primary");
    let replica_url = pg.create_db("rebuild_cli_replica");
    let mut command = CommandDb(Client::connect(&command_url, NoTls).expect("connect"));
    shared::migrate::command_db(&mut command.0).expect("migrate command");
    // Given three reports, one of them deleted, ...
    let reports: Vec<Report> = (0..3)
        .map(|n| command.create(n, Category::Kesehatan))
        .collect();
    command.delete(&reports[0]);
    let env = [
        ("COMMAND_DATABASE_URL", command_url.clone()),
        (
            "QUERY_DATABASE_URLS",
            format!("query-db-primary={primary_url},query-db-replica1={replica_url}"),
        ),
    ];
    let run = |db: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_projection"))
            .args(["rebuild", "--db", db])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("run projection rebuild")
    };

    // ... when the replica is rebuilt by name, ...
    let out = run("query-db-replica1");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("query-db-replica1 rebuilt"), "{text}");
    assert!(text.contains("2 live reports, 1 tombstones"), "{text}");
    // ... then it holds every report and the primary is untouched (no schema even).
    let mut replica = Client::connect(&replica_url, NoTls).expect("connect");
    assert_eq!(read_rows(&mut replica).len(), 3);
    let mut primary = Client::connect(&primary_url, NoTls).expect("connect");
    let tables: i64 = primary
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'read_reports'",
            &[],
        )
        .expect("pg_tables")
        .get(0);
    assert_eq!(tables, 0, "only the named DB is rebuilt");

    // An unknown name changes nothing and names the DBs there are.
    let out = run("query-db-replica9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("query-db-primary") && err.contains("query-db-replica1"),
        "{err}"
    );
}

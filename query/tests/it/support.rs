//! Shared test plumbing: one PostgreSQL cluster for the whole binary, a fresh migrated
//! database per test, the query binary on a free port, and a seeder that writes the read
//! model exactly as the projection does (row with `doc` = `serde_json::to_string(&Report)`,
//! tombstones, and the `statistics` counts moved in the same transaction).

use std::sync::LazyLock;
use std::time::Duration;

use postgres::Client;
use shared::model::{Category, Report, Status};
use shared::testkit::{http, HttpResponse, PgCluster, Service};
use time::OffsetDateTime;
use uuid::Uuid;

/// The cluster every test shares (the harness stops it when the test process exits).
pub static PG: LazyLock<PgCluster> = LazyLock::new(PgCluster::start);

/// A fresh database named `name` on `cluster`, with the query schema applied.
pub fn fresh_db_on(cluster: &PgCluster, name: &str) -> String {
    let url = cluster.create_db(name);
    let mut c = cluster.client(name);
    shared::migrate::query_db(&mut c).expect("migrate query db");
    url
}

/// A fresh migrated database on the shared cluster.
pub fn fresh_db(name: &str) -> String {
    fresh_db_on(&PG, name)
}

/// Starts the query binary reading `urls` (`QUERY_DATABASE_URLS`).
pub fn start_query(urls: &str, extra: &[(&str, String)]) -> Service {
    let mut env: Vec<(&str, String)> = vec![
        ("INSTANCE_ID", "query-test".to_owned()),
        ("QUERY_DATABASE_URLS", urls.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    Service::start(env!("CARGO_BIN_EXE_query"), &env)
}

/// GET `path`, panicking with the service log when the request itself fails.
pub fn get(svc: &Service, path: &str) -> HttpResponse {
    get_with(svc, path, &[])
}

pub fn get_with(svc: &Service, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http(svc.port, "GET", path, headers, b"")
        .unwrap_or_else(|e| panic!("GET {path}: {e}\nservice log:\n{}", svc.log()))
}

/// A report as the command service would have created it.
pub fn report(n: u32, category: Category, status: Status, created_at: OffsetDateTime) -> Report {
    Report {
        id: Uuid::new_v4(),
        title: format!("report {n}"),
        description: format!("description of report {n} with \"quotes\" and ünïcode"),
        category,
        status,
        version: 1,
        created_at,
        updated_at: created_at,
        location: None,
        address: None,
        media_url: None,
    }
}

/// Writes `r` (a create or a newer version) like the projection: upsert the row and move
/// the statistics from the old (category, status) to the new one, in one transaction.
pub fn apply(client: &mut Client, r: &Report) {
    let mut tx = client.transaction().expect("begin");
    writer_lock(&mut tx);
    let doc = serde_json::to_string(r).expect("report json");
    let old = tx
        .query_opt(
            "SELECT category, status, deleted_at IS NOT NULL FROM read_reports WHERE id = $1",
            &[&r.id],
        )
        .expect("old row");
    if let Some(old) = &old {
        assert!(!old.get::<_, bool>(2), "seeder: {} is deleted", r.id);
        move_count(&mut tx, old.get(0), old.get(1), -1, r.updated_at);
    }
    tx.execute(
        "INSERT INTO read_reports (id, title, description, category, status, version, \
         created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,NULL,$9,$10,$11,$12,report_search($2,$3,$12)) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, \
         description = excluded.description, category = excluded.category, \
         status = excluded.status, version = excluded.version, \
         updated_at = excluded.updated_at, doc = excluded.doc, lat = excluded.lat, \
         lng = excluded.lng, address = excluded.address, search = excluded.search",
        &[
            &r.id,
            &r.title,
            &r.description,
            &r.category.as_str(),
            &r.status.as_str(),
            &r.version,
            &r.created_at,
            &r.updated_at,
            &doc,
            &r.location.map(|l| l.lat),
            &r.location.map(|l| l.lng),
            &r.address,
        ],
    )
    .expect("upsert report");
    move_count(
        &mut tx,
        r.category.as_str(),
        r.status.as_str(),
        1,
        r.updated_at,
    );
    tx.commit().expect("commit");
}

/// Deletes `r` like the projection: a tombstone at the next version, counts moved.
pub fn delete(client: &mut Client, r: &Report) -> i64 {
    let mut tx = client.transaction().expect("begin");
    writer_lock(&mut tx);
    let row = tx
        .query_one(
            "UPDATE read_reports SET deleted_at = now(), version = version + 1 \
             WHERE id = $1 AND deleted_at IS NULL RETURNING category, status, version",
            &[&r.id],
        )
        .expect("tombstone");
    move_count(
        &mut tx,
        row.get(0),
        row.get(1),
        -1,
        shared::model::now_micros(),
    );
    tx.commit().expect("commit");
    row.get(2)
}

/// The projection's writer lock (`projection::writer::WRITE_LOCK`), taken first as the
/// projection does: the `list_counts` triggers take it too, and a seeder that locked a
/// statistics row before them could deadlock with another seeder.
fn writer_lock(tx: &mut postgres::Transaction<'_>) {
    tx.execute("SELECT pg_advisory_xact_lock(123636797826403)", &[])
        .expect("writer lock");
}

fn move_count(
    tx: &mut postgres::Transaction<'_>,
    category: &str,
    status: &str,
    delta: i64,
    at: OffsetDateTime,
) {
    // A decrement is an UPDATE: the CHECK (count >= 0) is tested on the proposed row of an
    // INSERT ... ON CONFLICT before the conflict is resolved.
    let sql = if delta < 0 {
        "UPDATE statistics SET count = count + $3, \
         last_updated = greatest(last_updated, $4) WHERE category = $1 AND status = $2"
    } else {
        "INSERT INTO statistics (category, status, count, last_updated) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (category, status) DO UPDATE SET count = statistics.count + excluded.count, \
         last_updated = greatest(statistics.last_updated, excluded.last_updated)"
    };
    tx.execute(sql, &[&category, &status, &delta, &at])
        .expect("move statistics");
}

/// `n` reports with categories and statuses spread over every pair and groups of five with
/// identical `created_at` (to exercise the id tie-break); all applied to `client`.
pub fn seed(client: &mut Client, n: u32) -> Vec<Report> {
    let base = OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("time");
    (0..n)
        .map(|i| {
            let category = Category::ALL[i as usize % Category::ALL.len()];
            let status = Status::ALL[(i as usize / 6) % Status::ALL.len()];
            let r = report(
                i,
                category,
                status,
                base + Duration::from_secs(u64::from(i / 5)),
            );
            apply(client, &r);
            r
        })
        .collect()
}

/// `reports` ordered as the API must list them: newest first, id descending on ties.
pub fn newest_first(reports: &[Report]) -> Vec<Uuid> {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    sorted.iter().map(|r| r.id).collect()
}

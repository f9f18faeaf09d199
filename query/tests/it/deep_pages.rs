//! Issue 13 point 3: numbered pages skip whole buckets of `list_counts` (sql/query.sql) instead
//! of OFFSET rows. The buckets here hold at most 4 reports (`reports.list_bucket_rows`), so
//! every page crosses bucket boundaries, and each answer must be exactly OFFSET's: over HTTP
//! for every filter shape after creates, updates (category and status moved) and deletes, and
//! at the library level in one snapshot with OFFSET while writers keep changing the rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::{Client, IsolationLevel};
use query::search::{self, ListQuery};
use shared::model::{Category, Report, Status};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::support::{apply, delete, fresh_db, get, report, seed, start_query, PG};

/// Buckets of at most this many live reports (pieces of half of it after a cut): boundaries
/// every couple of reports.
const BUCKET_ROWS: i64 = 4;

/// A fresh database whose sessions cut buckets at [`BUCKET_ROWS`].
fn small_buckets(name: &str) -> String {
    let url = fresh_db(name);
    PG.client(name)
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET reports.list_bucket_rows = {BUCKET_ROWS}"
        ))
        .expect("set bucket size");
    url
}

/// The filter shapes of a plain list, as query strings.
fn shapes() -> Vec<String> {
    vec![
        String::new(),
        "category=kebersihan".into(),
        "status=pending".into(),
        "category=infrastruktur&status=resolved".into(),
        "category=keamanan&status=rejected".into(),
    ]
}

/// The ids OFFSET gives for `query`'s filter: the plain statement the bucket walk replaces.
/// Runs `read` in one read-only REPEATABLE READ snapshot: the page and its reference see the
/// same committed state while writers go on.
fn in_snapshot<T>(c: &mut Client, read: impl FnOnce(&mut postgres::Transaction<'_>) -> T) -> T {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .expect("snapshot");
    let out = read(&mut tx);
    tx.commit().expect("end snapshot");
    out
}

fn offset_ids(c: &mut impl postgres::GenericClient, q: &ListQuery, offset: i64) -> Vec<Uuid> {
    let category = q.filter.category.map(|c| c.as_str().to_owned());
    let status = q.filter.status.map(|s| s.as_str().to_owned());
    c.query(
        "SELECT id FROM read_reports WHERE deleted_at IS NULL \
         AND ($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR status = $2) \
         ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
        &[&category, &status, &q.per_page, &offset],
    )
    .expect("offset page")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn live_count(c: &mut Client, q: &ListQuery) -> i64 {
    let category = q.filter.category.map(|c| c.as_str().to_owned());
    let status = q.filter.status.map(|s| s.as_str().to_owned());
    c.query_one(
        "SELECT count(*) FROM read_reports WHERE deleted_at IS NULL \
         AND ($1::text IS NULL OR category = $1) AND ($2::text IS NULL OR status = $2)",
        &[&category, &status],
    )
    .expect("count")
    .get(0)
}

fn parse(query: &str) -> ListQuery {
    let params = shared::http::parse_query(query).expect("query string");
    ListQuery::parse(&params).expect("list query")
}

fn ids_of(docs: &[u8]) -> Vec<Uuid> {
    let mut json = b"[".to_vec();
    json.extend_from_slice(docs);
    json.push(b']');
    let reports: Vec<Report> = serde_json::from_slice(&json).expect("page of reports");
    reports.iter().map(|r| r.id).collect()
}

fn drift(c: &mut Client) -> Vec<String> {
    c.query("SELECT * FROM list_counts_drift()", &[])
        .expect("drift")
        .iter()
        .map(|r| format!("{r:?}"))
        .collect()
}

fn buckets(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM list_counts WHERE category = '' AND status = ''",
        &[],
    )
    .expect("buckets")
    .get(0)
}

#[test]
fn deep_pages_equal_offset_for_every_filter() {
    let url = small_buckets("deep_pages");
    let mut c = PG.client("deep_pages");
    // 180 reports in groups of five at one instant (ties across boundaries), then some moved
    // to another category and status, some deleted.
    let mut reports = seed(&mut c, 180);
    for (n, r) in reports.iter_mut().enumerate().filter(|(n, _)| n % 4 == 1) {
        r.version += 1;
        r.category = Category::ALL[(n / 4) % Category::ALL.len()];
        r.status = Status::ALL[n % Status::ALL.len()];
        apply(&mut c, r);
    }
    for r in reports.iter().step_by(9) {
        delete(&mut c, r);
    }
    assert_eq!(drift(&mut c), Vec::<String>::new(), "list_counts exact");
    let n_buckets = buckets(&mut c);
    // Five reports share each instant, so a bucket holds at least five here.
    assert!(
        n_buckets > 20,
        "only {n_buckets} buckets: boundaries not crossed"
    );

    let svc = start_query(&format!("only={url}"), &[]);
    for shape in shapes() {
        for per_page in [1, 7, 20] {
            let q = parse(&format!("{shape}&per_page={per_page}"));
            let total = live_count(&mut c, &q);
            assert!(total > 0, "{shape}: the data has no match");
            let pages = (total + per_page - 1) / per_page;
            for page in 1..=pages + 1 {
                let path = format!("/reports?{shape}&per_page={per_page}&page={page}");
                let r = get(&svc, &path);
                assert_eq!(
                    r.status,
                    200,
                    "{path}: {}",
                    String::from_utf8_lossy(&r.body)
                );
                let v = r.json();
                assert_eq!(v["meta"]["total"], total, "{path}");
                assert_eq!(v["meta"]["total_pages"], pages, "{path}");
                let got: Vec<Uuid> = v["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|d| d["id"].as_str().expect("id").parse().expect("uuid"))
                    .collect();
                let want = offset_ids(&mut c, &q, (page - 1) * per_page);
                assert_eq!(got, want, "{path}");
            }
        }
    }
}

/// While two writers create, move and delete reports, every deep page read in one snapshot
/// equals OFFSET in that snapshot, and the counts stay exact at every commit.
#[test]
fn deep_pages_equal_offset_under_concurrent_writes() {
    small_buckets("deep_pages_writes");
    let mut c = PG.client("deep_pages_writes");
    let reports = seed(&mut c, 120);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2u32)
        .map(|w| {
            let stop = Arc::clone(&stop);
            let mut reports: Vec<Report> = reports
                .iter()
                .filter(|r| r.title.len() % 2 == w as usize % 2)
                .cloned()
                .collect();
            std::thread::spawn(move || {
                let mut c = PG.client("deep_pages_writes");
                let base = OffsetDateTime::from_unix_timestamp(1_750_000_000).expect("time");
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && n < 400 {
                    n += 1;
                    let k = (n * 7 + w) as usize;
                    match n % 4 {
                        // A new report somewhere in the middle of the order, not only on top.
                        0 | 1 => {
                            let at = base + Duration::from_millis(u64::from(n * 37 % 40_000));
                            let r = report(
                                10_000 * (w + 1) + n,
                                Category::ALL[k % Category::ALL.len()],
                                Status::ALL[k % Status::ALL.len()],
                                at,
                            );
                            apply(&mut c, &r);
                            reports.push(r);
                        }
                        2 => {
                            let len = reports.len();
                            let r = &mut reports[k % len];
                            r.version += 1;
                            r.category = Category::ALL[(k / 3) % Category::ALL.len()];
                            r.status = Status::ALL[(k / 5) % Status::ALL.len()];
                            apply(&mut c, r);
                        }
                        _ => {
                            let r = reports.swap_remove(k % reports.len());
                            delete(&mut c, &r);
                        }
                    }
                }
            })
        })
        .collect();

    let mut checked = 0;
    let mut reader = PG.client("deep_pages_writes");
    while writers.iter().any(|w| !w.is_finished()) || checked < 50 {
        for shape in shapes() {
            for (page, per_page) in [(2, 1), (5, 7), (3, 20), (40, 3), (200, 1)] {
                let q = parse(&format!("{shape}&per_page={per_page}&page={page}"));
                let (docs, listed, want, total) = in_snapshot(&mut reader, |tx| {
                    let mut docs = Vec::new();
                    let listed = search::list(tx, &q, &mut docs).expect("deep page");
                    let want = offset_ids(tx, &q, (page - 1) * per_page);
                    let total: i64 = tx
                        .query_one(
                            "SELECT count(*) FROM read_reports WHERE deleted_at IS NULL \
                             AND ($1::text IS NULL OR category = $1) \
                             AND ($2::text IS NULL OR status = $2)",
                            &[
                                &q.filter.category.map(|c| c.as_str()),
                                &q.filter.status.map(|s| s.as_str()),
                            ],
                        )
                        .expect("count")
                        .get(0);
                    (docs, listed, want, total)
                });
                assert_eq!(ids_of(&docs), want, "{shape} page {page} per {per_page}");
                assert_eq!(listed.total, total, "{shape}: total");
                checked += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    assert_eq!(drift(&mut c), Vec::<String>::new(), "list_counts exact");
    assert!(buckets(&mut c) > 30, "boundaries crossed");
}

/// The projection's live-row upsert (`projection/src/writer.rs`, `Snapshots::write`): one
/// statement for many reports, so the INSERT and the UPDATE trigger both see several rows.
const UPSERT_MANY: &str = "INSERT INTO read_reports (id, title, description, category, status, \
     version, created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
     SELECT id, title, description, category, status, version, created_at, updated_at, NULL, doc, \
       NULL, NULL, NULL, report_search(title, description, NULL) \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], \
       $7::timestamptz[], $8::timestamptz[], $9::text[]) \
       AS b(id, title, description, category, status, version, created_at, updated_at, doc) \
     ON CONFLICT (id) DO UPDATE SET title = EXCLUDED.title, \
       description = EXCLUDED.description, category = EXCLUDED.category, \
       status = EXCLUDED.status, version = EXCLUDED.version, \
       created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
       deleted_at = NULL, doc = EXCLUDED.doc, search = EXCLUDED.search \
     WHERE read_reports.version < EXCLUDED.version AND read_reports.deleted_at IS NULL";

/// Writes `reports` in one statement, as the projection writes a batch (writers' lock first,
/// statistics recounted in the same transaction), and checks the counts right after.
fn upsert_many(c: &mut Client, reports: &[Report], what: &str) {
    let mut tx = c.transaction().expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock(123636797826403)", &[])
        .expect("writer lock");
    let ids: Vec<Uuid> = reports.iter().map(|r| r.id).collect();
    let titles: Vec<&str> = reports.iter().map(|r| r.title.as_str()).collect();
    let descriptions: Vec<&str> = reports.iter().map(|r| r.description.as_str()).collect();
    let categories: Vec<&str> = reports.iter().map(|r| r.category.as_str()).collect();
    let statuses: Vec<&str> = reports.iter().map(|r| r.status.as_str()).collect();
    let versions: Vec<i64> = reports.iter().map(|r| r.version).collect();
    let created: Vec<OffsetDateTime> = reports.iter().map(|r| r.created_at).collect();
    let updated: Vec<OffsetDateTime> = reports.iter().map(|r| r.updated_at).collect();
    let docs: Vec<String> = reports
        .iter()
        .map(|r| serde_json::to_string(r).expect("report json"))
        .collect();
    let written = tx
        .execute(
            UPSERT_MANY,
            &[
                &ids,
                &titles,
                &descriptions,
                &categories,
                &statuses,
                &versions,
                &created,
                &updated,
                &docs,
            ],
        )
        .expect("upsert many");
    assert_eq!(written, reports.len() as u64, "{what}: rows written");
    recount_and_check(tx, what);
}

/// Runs `sql` (one statement over many rows) as a writer would, then checks the counts.
fn statement(c: &mut Client, sql: &str, what: &str) {
    let mut tx = c.transaction().expect("begin");
    tx.execute("SELECT pg_advisory_xact_lock(123636797826403)", &[])
        .expect("writer lock");
    tx.batch_execute(sql).expect(what);
    recount_and_check(tx, what);
}

fn recount_and_check(mut tx: postgres::Transaction<'_>, what: &str) {
    tx.batch_execute(
        "DELETE FROM statistics; \
         INSERT INTO statistics (category, status, count, last_updated) \
         SELECT category, status, count(*), now() FROM read_reports \
          WHERE deleted_at IS NULL GROUP BY 1, 2",
    )
    .expect("statistics");
    let drift: Vec<String> = tx
        .query("SELECT format('%s/%s %s: %s counted, %s stored', category, status, bucket, counted, stored) FROM list_counts_drift()", &[])
        .expect("drift")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(drift, Vec::<String>::new(), "{what}: list_counts exact");
    tx.commit().expect("commit");
}

/// Multi-row statements — what the projection sends — at every edge of the counting: new
/// reports in the newest bucket that push it over its limit within one statement, reports
/// older than every boundary and in the middle, status and category moves, an update that
/// moves no count (title only) next to one that does, a `created_at` move, tombstones, plain
/// DELETEs, a shape emptied down to merging and a shape with a single bucket. The counts are
/// checked after every statement, and every page equals OFFSET at the end.
#[test]
fn multi_row_statements_keep_counts_exact() {
    small_buckets("deep_pages_batches");
    let mut c = PG.client("deep_pages_batches");
    let base = OffsetDateTime::from_unix_timestamp(1_760_000_000).expect("time");
    let at = |secs: i64| base + time::Duration::seconds(secs);
    let mut n = 0u32;
    let mut new = |category: Category, status: Status, created: OffsetDateTime| {
        n += 1;
        report(n, category, status, created)
    };
    let mut all: Vec<Report> = (0..40)
        .map(|i| new(Category::ALL[i % 3], Status::ALL[i % 2], at(i as i64 * 10)))
        .collect();
    upsert_many(&mut c, &all, "first batch: every shape starts");
    assert!(buckets(&mut c) > 4, "the first batch was re-cut");

    // Newest bucket over its limit inside one statement (buckets of 4 reports).
    let fresh: Vec<Report> = (0..12)
        .map(|i| new(Category::Kebersihan, Status::Pending, at(1_000 + i)))
        .collect();
    upsert_many(&mut c, &fresh, "newest bucket crosses its limit");
    all.extend(fresh);

    // Older than every boundary, in the middle, and ties at one instant.
    let mut old: Vec<Report> = (0..6)
        .map(|i| {
            new(
                Category::ALL[i % 6],
                Status::ALL[i % 4],
                at(-500 - i as i64),
            )
        })
        .collect();
    for _ in 0..6 {
        old.push(new(Category::Keamanan, Status::Resolved, at(155)));
    }
    upsert_many(
        &mut c,
        &old,
        "older than the oldest boundary and in the middle",
    );
    all.extend(old);

    // One statement: status moves, category moves, a title-only edit, a created_at move,
    // and new reports next to them (both triggers see rows).
    let mut batch = Vec::new();
    for (i, r) in all.iter_mut().enumerate().filter(|(i, _)| i % 5 == 0) {
        r.version += 1;
        match i % 4 {
            0 => r.status = Status::ALL[(i / 5) % 4],
            1 => r.category = Category::ALL[(i / 5) % 6],
            2 => r.title = format!("edited {i}"),
            _ => r.created_at = at(2_000 + i as i64),
        }
        batch.push(r.clone());
    }
    let added: Vec<Report> = (0..5)
        .map(|i| new(Category::Lainnya, Status::Rejected, at(3_000 + i)))
        .collect();
    batch.extend(added.iter().cloned());
    all.extend(added);
    upsert_many(
        &mut c,
        &batch,
        "moves, a no-op edit and creates in one statement",
    );

    // Tombstones (the projection's delete) and plain DELETEs.
    let gone: Vec<Uuid> = all.iter().step_by(7).map(|r| r.id).collect();
    statement(
        &mut c,
        &format!(
            "UPDATE read_reports SET deleted_at = now(), version = version + 1 \
             WHERE id IN ({})",
            gone.iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "tombstones",
    );
    all.retain(|r| !gone.contains(&r.id));
    let removed: Vec<Uuid> = all.iter().skip(3).step_by(11).map(|r| r.id).collect();
    statement(
        &mut c,
        &format!(
            "DELETE FROM read_reports WHERE id IN ({})",
            removed
                .iter()
                .map(|id| format!("'{id}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "plain deletes",
    );
    all.retain(|r| !removed.contains(&r.id));

    // Empty most of one shape: its buckets fall under an eighth of the limit and merge; then
    // a shape left with a single bucket.
    statement(
        &mut c,
        "UPDATE read_reports SET deleted_at = now(), version = version + 1 \
         WHERE deleted_at IS NULL AND category = 'kebersihan' \
           AND id <> (SELECT id FROM read_reports WHERE deleted_at IS NULL \
                       AND category = 'kebersihan' ORDER BY id DESC LIMIT 1)",
        "a shape emptied down to one report",
    );
    statement(
        &mut c,
        "UPDATE read_reports SET status = 'in_progress', version = version + 1 \
         WHERE deleted_at IS NULL AND category = 'kebersihan'",
        "a single-bucket shape moved",
    );

    let mut reader = PG.client("deep_pages_batches");
    for shape in shapes() {
        for (page, per_page) in [(1, 1), (2, 3), (4, 2), (3, 5), (9, 1)] {
            let q = parse(&format!("{shape}&per_page={per_page}&page={page}"));
            let (docs, want) = in_snapshot(&mut reader, |tx| {
                let mut docs = Vec::new();
                search::list(tx, &q, &mut docs).expect("deep page");
                (docs, offset_ids(tx, &q, (page - 1) * per_page))
            });
            assert_eq!(ids_of(&docs), want, "{shape} page {page} per {per_page}");
        }
    }
}

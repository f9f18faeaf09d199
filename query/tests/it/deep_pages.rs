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
                let mut tx = reader
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .expect("snapshot");
                let mut docs = Vec::new();
                let listed = search::list(&mut tx, &q, &mut docs).expect("deep page");
                let want = offset_ids(&mut tx, &q, (page - 1) * per_page);
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
                tx.commit().expect("end snapshot");
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

//! Acceptance (7): at 20 000 rows (ANALYZEd) every list shape, the lookup by id and the totals
//! are planned on an index: no Seq Scan on `read_reports`; so are the Open311 statements. The
//! statements checked are the very ones the service sends (`query::store`,
//! `query::open311`), with parameters bound the same way.

use postgres::types::{ToSql, Type};
use query::paging::Filter;
use query::store;
use shared::model::{Category, Status};

use crate::support::{fresh_db, PG};

#[test]
fn list_and_lookup_queries_use_indexes() {
    fresh_db("explain");
    let mut c = PG.client("explain");
    c.batch_execute(
        "INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc) \
         SELECT gen_random_uuid(), 'title ' || i, 'description', \
             (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + i % 6], \
             (ARRAY['pending','in_progress','resolved','rejected'])[1 + (i / 6) % 4], \
             1, now() - i * interval '1 second', now(), \
             CASE WHEN i % 50 = 0 THEN now() END, '{}' \
         FROM generate_series(1, 20000) AS i; \
         INSERT INTO statistics (category, status, count, last_updated) \
         SELECT category, status, count(*), now() FROM read_reports \
         WHERE deleted_at IS NULL GROUP BY category, status; \
         ANALYZE;",
    )
    .unwrap();

    let explain = |c: &mut postgres::Client, sql: &str, params: &[(&(dyn ToSql + Sync), Type)]| {
        c.query_typed(&format!("EXPLAIN {sql}"), params)
            .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let category = "kesehatan";
    let status = "in_progress";
    let shapes = [
        (Filter::default(), "read_reports_newest"),
        (
            Filter {
                category: Some(Category::Kesehatan),
                status: None,
            },
            "read_reports_category_newest",
        ),
        (
            Filter {
                category: None,
                status: Some(Status::InProgress),
            },
            "read_reports_status_newest",
        ),
        (
            Filter {
                category: Some(Category::Kesehatan),
                status: Some(Status::InProgress),
            },
            "read_reports_category_status_newest",
        ),
    ];
    for (filter, index) in shapes {
        for (limit, offset) in [(20i64, 0i64), (100, 0), (100, 1000)] {
            let mut params: Vec<(&(dyn ToSql + Sync), Type)> =
                vec![(&limit, Type::INT8), (&offset, Type::INT8)];
            if filter.category.is_some() {
                params.push((&category, Type::TEXT));
            }
            if filter.status.is_some() {
                params.push((&status, Type::TEXT));
            }
            let plan = explain(&mut c, store::list_sql(&filter), &params);
            assert!(
                !plan.contains("Seq Scan on read_reports"),
                "{filter:?} limit {limit} offset {offset}: seq scan\n{plan}"
            );
            // Past the end of a small filter (offset 1000 of ~800 rows) the planner may
            // prefer a bitmap scan of the filter's index and a sort; a non-selective filter
            // (1/6 of the rows) may walk the newest-first index and filter on the way. Either
            // way an index, never a scan of the whole table.
            assert!(
                plan.contains(&format!("using {index} on read_reports"))
                    || plan.contains(&format!("Bitmap Index Scan on {index}"))
                    || plan.contains("Index Scan using read_reports_newest on read_reports"),
                "{filter:?} limit {limit} offset {offset}: expected {index}\n{plan}"
            );
        }
    }
    // A rare value: the filtered shape must use its own index.
    c.batch_execute(
        "UPDATE read_reports SET category = 'kebersihan' WHERE category = 'lainnya' \
         AND id NOT IN (SELECT id FROM read_reports WHERE category = 'lainnya' LIMIT 30); \
         ANALYZE read_reports;",
    )
    .unwrap();
    let (limit, offset, rare) = (20i64, 0i64, "lainnya");
    let filter = Filter {
        category: Some(Category::Lainnya),
        status: None,
    };
    let plan = explain(
        &mut c,
        store::list_sql(&filter),
        &[
            (&limit, Type::INT8),
            (&offset, Type::INT8),
            (&rare, Type::TEXT),
        ],
    );
    assert!(
        plan.contains("Index Scan using read_reports_category_newest on read_reports"),
        "rare category\n{plan}"
    );
    let id = uuid::Uuid::new_v4();
    let plan = explain(&mut c, store::REPORT_BY_ID, &[(&id, Type::UUID)]);
    assert!(
        plan.contains("Index Scan using read_reports_pkey"),
        "{plan}"
    );
    open311_queries_use_indexes(&mut c);
}

/// Open311 (SPEC §7.2): the list in every filter shape the standard allows (default window,
/// one or all services, open/closed, a narrow and a wide date range), the lookup of many ids
/// and of one, on the same 20 000 rows (one category made rare above).
fn open311_queries_use_indexes(c: &mut postgres::Client) {
    use query::open311::{self, ListQuery};
    use shared::open311::Form;
    let now = time::OffsetDateTime::now_utc();
    for q in [
        "",
        "service_code=lainnya",
        "service_code=kesehatan,keamanan&status=open",
        "status=closed",
        "start_date=2000-01-01",
        "start_date=2000-01-01&end_date=2000-01-02",
        "service_request_id=6a1b8a8e-2c1f-4d0e-9b7a-2f1c3d4e5f60,7a1b8a8e-2c1f-4d0e-9b7a-2f1c3d4e5f60",
    ] {
        let query = ListQuery::parse(&Form::parse(q.as_bytes()).expect("form"), now).expect("query");
        let plan = match &query {
            ListQuery::Ids(ids) => explain_open311(c, open311::BY_IDS, &[(ids, Type::UUID_ARRAY)]),
            ListQuery::Filtered { start, end, categories, statuses } => explain_open311(
                c,
                open311::LIST,
                &[
                    (start, Type::TIMESTAMPTZ),
                    (end, Type::TIMESTAMPTZ),
                    (categories, Type::TEXT_ARRAY),
                    (statuses, Type::TEXT_ARRAY),
                    (&open311::MAX_REQUESTS, Type::INT8),
                ],
            ),
        };
        assert!(!plan.contains("Seq Scan"), "open311 {q:?}: seq scan\n{plan}");
        assert!(plan.contains("Index"), "open311 {q:?}: no index\n{plan}");
    }
    let id = uuid::Uuid::new_v4();
    let plan = explain_open311(c, open311::BY_ID, &[(&id, Type::UUID)]);
    assert!(
        plan.contains("Index Scan using read_reports_pkey"),
        "{plan}"
    );
}

fn explain_open311(
    c: &mut postgres::Client,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> String {
    c.query_typed(&format!("EXPLAIN {sql}"), params)
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

//! SPEC §7.1 on the read side: `near=` (nearest first, `distance_m` within 0.5 % of the
//! haversine reference, ties at one spot paged without loss), `bbox=`, `q=` (every word, case
//! and accents ignored), each combined with the filters, and cursors that visit every report
//! existing at the start exactly once while a writer inserts and updates concurrently.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::types::Type;
use query::search::{ListQuery, Statement};
use serde_json::Value;
use shared::geo::haversine_m;
use shared::model::{Category, Location, Report, Status};
use shared::testkit::Service;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::support::{apply, delete, fresh_db, get, newest_first, report, seed, start_query, PG};

/// Follows `meta.next_cursor` from `first` to the end; returns every item served, in order.
fn follow(svc: &Service, first: &str) -> Vec<Value> {
    follow_paced(svc, first, || {})
}

/// [`follow`], calling `between` before each next page.
fn follow_paced(svc: &Service, first: &str, mut between: impl FnMut()) -> Vec<Value> {
    let mut items = Vec::new();
    let mut path = first.to_owned();
    for _ in 0..10_000 {
        let r = get(svc, &path);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let v = r.json();
        items.extend(v["data"].as_array().expect("data").iter().cloned());
        match v["meta"]["next_cursor"].as_str() {
            Some(c) => {
                between();
                let base = first.split("&cursor=").next().unwrap_or(first);
                path = format!("{base}&cursor={c}");
            }
            None => return items,
        }
    }
    panic!("{first}: cursors never ended");
}

fn ids(items: &[Value]) -> Vec<Uuid> {
    items
        .iter()
        .map(|d| {
            d["id"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .expect("id")
        })
        .collect()
}

#[test]
fn near_and_bbox_with_filters_and_cursors() {
    let url = fresh_db("search_geo");
    let mut c = PG.client("search_geo");
    let base = OffsetDateTime::from_unix_timestamp(1_760_000_000).expect("time");
    let center = Location {
        lat: -6.2,
        lng: 106.8,
    };
    let mut reports: Vec<Report> = Vec::new();
    for i in 0..80u32 {
        let category = Category::ALL[i as usize % 2];
        let mut r = report(
            i,
            category,
            Status::Pending,
            base + time::Duration::seconds(i.into()),
        );
        // A spiral out to ~3.5 km; every fifth report shares a spot with the one before it
        // (ties in distance), a few have no place at all.
        let k = if i % 5 == 4 { i - 1 } else { i };
        let angle = f64::from(k) * 0.7;
        let d = 0.0004 * f64::from(k);
        r.location = (i % 13 != 12).then(|| Location {
            lat: center.lat + d * angle.sin(),
            lng: center.lng + d * angle.cos(),
        });
        r.address = Some(format!("Jl. Nomor {i}"));
        apply(&mut c, &r);
        reports.push(r);
    }
    let gone = reports.remove(10);
    delete(&mut c, &gone);
    let svc = start_query(&format!("only={url}"), &[]);

    let radius = 2_000.0;
    // Stay clear of the boundary: the reference must not decide by rounding.
    let dist = |r: &Report| r.location.map(|l| haversine_m(center, l));
    assert!(reports
        .iter()
        .filter_map(dist)
        .all(|d| (d - radius).abs() > 5.0));
    let mut expect: Vec<(f64, Uuid)> = reports
        .iter()
        .filter_map(|r| dist(r).filter(|d| *d <= radius).map(|d| (d, r.id)))
        .collect();
    expect.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    assert!(expect.len() > 20, "the fixture has enough matches");

    for per_page in [1, 3, 4, 100] {
        let items = follow(
            &svc,
            &format!("/reports?near=-6.2,106.8&radius_m={radius}&per_page={per_page}"),
        );
        let want: Vec<Uuid> = expect.iter().map(|e| e.1).collect();
        assert_eq!(
            ids(&items),
            want,
            "near per_page={per_page}: order or membership"
        );
        for (item, (d, _)) in items.iter().zip(&expect) {
            let got = item["distance_m"].as_f64().expect("distance_m");
            assert!(
                (got - d).abs() <= d * 0.005 + 0.1,
                "distance {got} vs haversine {d}"
            );
        }
    }
    // page=N agrees with the cursor walk.
    let p2 = get(
        &svc,
        "/reports?near=-6.2,106.8&radius_m=2000&per_page=4&page=2",
    )
    .json();
    let want: Vec<Uuid> = expect.iter().skip(4).take(4).map(|e| e.1).collect();
    assert_eq!(ids(p2["data"].as_array().expect("data")), want);
    assert_eq!(p2["meta"]["total"], expect.len());

    // Combined with a category.
    let cat = Category::ALL[1];
    let items = follow(
        &svc,
        &format!("/reports?near=-6.2,106.8&radius_m=2000&category={cat}&per_page=5"),
    );
    let want: Vec<Uuid> = expect
        .iter()
        .filter(|e| reports.iter().any(|r| r.id == e.1 && r.category == cat))
        .map(|e| e.1)
        .collect();
    assert_eq!(ids(&items), want, "near + category");

    // bbox: inside the box, newest first, with a category, by cursor.
    let (min_lng, min_lat, max_lng, max_lat) = (106.79, -6.21, 106.81, -6.19);
    let inside: Vec<Report> = reports
        .iter()
        .filter(|r| {
            r.category == cat
                && r.location.is_some_and(|l| {
                    (min_lng..=max_lng).contains(&l.lng) && (min_lat..=max_lat).contains(&l.lat)
                })
        })
        .cloned()
        .collect();
    assert!(inside.len() > 3);
    let items = follow(
        &svc,
        &format!("/reports?bbox={min_lng},{min_lat},{max_lng},{max_lat}&category={cat}&per_page=2"),
    );
    assert_eq!(ids(&items), newest_first(&inside), "bbox + category");
    assert!(items.iter().all(|i| i.get("distance_m").is_none()));
}

#[test]
fn full_text_every_word_case_and_accent_insensitive() {
    let url = fresh_db("search_q");
    let mut c = PG.client("search_q");
    let base = OffsetDateTime::from_unix_timestamp(1_760_000_000).expect("time");
    let texts = [
        (
            "Jalan berlubang",
            "Lubang besar dekat sekolah",
            Some("Jl. Diponegoro 12"),
        ),
        (
            "Lampu jalan mati",
            "Gelap sejak minggu lalu",
            Some("Jl. Cikini Raya"),
        ),
        ("Sampah menumpuk", "Di depan Café Kopi", None),
        ("JALAN rusak", "Aspal mengelupas", Some("Jalan Diponegoro")),
        ("Pohon tumbang", "Menutup jalan", None),
    ];
    let mut reports = Vec::new();
    for (i, (title, description, address)) in texts.iter().enumerate() {
        let status = if i == 3 {
            Status::Resolved
        } else {
            Status::Pending
        };
        let mut r = report(
            i as u32,
            Category::Infrastruktur,
            status,
            base + time::Duration::seconds(i as i64),
        );
        r.title = (*title).into();
        r.description = (*description).into();
        r.address = address.map(Into::into);
        apply(&mut c, &r);
        reports.push(r);
    }
    let svc = start_query(&format!("only={url}"), &[]);
    let check = |query: &str, expect: &[usize]| {
        let items = follow(&svc, &format!("/reports?{query}&per_page=2"));
        let want: Vec<Uuid> = expect.iter().map(|i| reports[*i].id).collect();
        assert_eq!(ids(&items), want, "{query}");
        let first = get(&svc, &format!("/reports?{query}")).json();
        assert_eq!(first["meta"]["total"], expect.len(), "{query}");
    };
    // Newest first; every word must match, in any field, in any case.
    check("q=jalan", &[4, 3, 1, 0]);
    check("q=JALAN+diponegoro", &[3, 0]);
    check("q=jalan%20diponegoro&status=resolved", &[3]);
    check("q=jalan+xyz", &[]);
    // Accents on either side.
    check("q=cafe", &[2]);
    check("q=caf%C3%A9+KOPI", &[2]);
    check("q=j%C3%A1lan+cikini", &[1]);
    // Address alone matches.
    check("q=cikini", &[1]);
    // Punctuation only: no words, nothing matches, no error.
    check("q=%21%21", &[]);
}

#[test]
fn cursors_see_every_report_once_under_concurrent_writes() {
    let url = fresh_db("search_cursor");
    let mut c = PG.client("search_cursor");
    let initial = seed(&mut c, 300);
    let svc = start_query(&format!("only={url}"), &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let writer = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        let mut updates = initial.clone();
        std::thread::spawn(move || {
            let mut c = PG.client("search_cursor");
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                // A new report (newer than all) and an update of an existing one.
                let r = report(
                    10_000 + n,
                    Category::Lainnya,
                    Status::Pending,
                    shared::model::now_micros(),
                );
                apply(&mut c, &r);
                let u = &mut updates[(n as usize * 7) % 300];
                u.version += 1;
                u.status = Status::ALL[n as usize % 4];
                u.title = format!("edited {n}");
                u.updated_at = shared::model::now_micros();
                apply(&mut c, u);
                n += 1;
                rounds.store(n, Ordering::SeqCst);
            }
            n
        })
    };
    // Between two pages the writer always gets at least one round in (a cached or fast page
    // must not let the walk finish before any write happened).
    let after_a_write = || {
        let seen = rounds.load(Ordering::SeqCst);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while rounds.load(Ordering::SeqCst) == seen && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let items = follow_paced(&svc, "/reports?per_page=7", after_a_write);
    let by_status = follow_paced(&svc, "/reports?status=pending&per_page=50", after_a_write);
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    assert!(writes > 5, "the writer made only {writes} rounds");

    let seen = ids(&items);
    let unique: HashSet<&Uuid> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a report was served twice");
    for r in &initial {
        assert!(unique.contains(&r.id), "report {} was skipped", r.id);
    }
    // Served in the keyset order, so the walk never went back.
    let keys: Vec<(String, Uuid)> = items
        .iter()
        .map(|d| {
            (
                d["created_at"].as_str().unwrap_or_default().to_owned(),
                ids(std::slice::from_ref(d))[0],
            )
        })
        .collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "not newest first");
    let filtered = ids(&by_status);
    let unique: HashSet<&Uuid> = filtered.iter().collect();
    assert_eq!(
        unique.len(),
        filtered.len(),
        "status walk served a report twice"
    );
}

/// The plan of `sql`, as `EXPLAIN {how} sql` prints it.
fn plan(
    c: &mut postgres::Client,
    how: &str,
    sql: &str,
    params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
) -> String {
    c.query_typed(&format!("EXPLAIN {how} {sql}"), params)
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The plan of a statement run (`EXPLAIN (ANALYZE, COSTS OFF)`): which nodes ran.
fn analyzed(c: &mut postgres::Client, st: &Statement) -> String {
    plan(c, "(ANALYZE, COSTS OFF)", &st.sql, &st.params())
}

/// Fails when the plan of `sql` scans `read_reports` sequentially.
fn no_seq_scan(
    c: &mut postgres::Client,
    what: &str,
    sql: &str,
    params: &[(&(dyn postgres::types::ToSql + Sync), Type)],
) {
    let plan = plan(c, "", sql, params);
    assert!(
        !plan.contains("Seq Scan on read_reports"),
        "{what}: seq scan\n{plan}"
    );
}

#[test]
fn search_shapes_use_indexes() {
    fresh_db("search_explain");
    let mut c = PG.client("search_explain");
    c.batch_execute(
        "WITH s (id, title, description, category, status, version, created_at, updated_at, \
             deleted_at, doc) AS (SELECT md5(i::text)::uuid, 'Laporan ' || i, 'Jalan rusak nomor ' || i, \
             (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + i % 6], \
             (ARRAY['pending','in_progress','resolved','rejected'])[1 + (i / 6) % 4], \
             1, now() - i * interval '1 second', now(), CASE WHEN i % 50 = 0 THEN now() END, \
             json_build_object('location', json_build_object('lat', -6.2 + (i % 200) * 0.002, \
                 'lng', 106.8 + (i / 200) * 0.002), 'address', 'Jl. Sudirman ' || i)::text \
         FROM generate_series(1, 20000) AS i) \
         INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
         SELECT *, (doc::jsonb #>> '{location,lat}')::float8, \
             (doc::jsonb #>> '{location,lng}')::float8, doc::jsonb ->> 'address', \
             report_search(title, description, doc::jsonb ->> 'address') FROM s; \
         INSERT INTO statistics (category, status, count, last_updated) \
         SELECT category, status, count(*), now() FROM read_reports \
         WHERE deleted_at IS NULL GROUP BY category, status;",
    )
    .expect("seed");
    // What autovacuum does on a live system: merges GIN's pending list and gathers statistics
    // (a fresh GIN pending list makes the planner price the index as a full scan).
    c.batch_execute("VACUUM ANALYZE read_reports")
        .expect("vacuum");
    c.batch_execute("ANALYZE statistics").expect("analyze");
    let id = "0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e";
    for query in [
        "near=-6.0,106.9&radius_m=500".to_owned(),
        "near=-6.0,106.9&radius_m=50000&status=resolved".to_owned(),
        format!("near=-6.0,106.9&cursor=d.40a0000000000000.{id}"),
        "near=-6.0,106.9&radius_m=50000&page=3".to_owned(),
        "bbox=106.8,-6.2,106.81,-6.19".to_owned(),
        "bbox=106.8,-6.2,106.81,-6.19&category=kesehatan".to_owned(),
        "q=12345".to_owned(),
        "q=sudirman+12345".to_owned(),
        "q=jalan+rusak&category=keamanan&per_page=100".to_owned(),
        "q=12345&bbox=106.7,-6.3,106.9,-6.1".to_owned(),
        "q=jalan&bbox=106.7,-6.3,106.9,-6.1&status=pending&page=4".to_owned(),
        "q=12345&bbox=-180,-90,180,90".to_owned(),
        "q=jalan&bbox=-180,-90,180,90".to_owned(),
        "q=12345&near=-6.0,106.9&radius_m=50000".to_owned(),
        "q=jalan&near=-6.0,106.9&radius_m=50000&page=3".to_owned(),
        format!("cursor=n.1700000000000000.{id}"),
        format!("cursor=n.1700000000000000.{id}&category=kesehatan&status=pending"),
    ] {
        let params = shared::http::parse_query(&query).expect("query");
        let q = ListQuery::parse(&params).expect("valid");
        // `near=` with `q=` has a probe and two ways to read, whichever the probe picks.
        let mut statements = vec![Statement::build(&q)];
        if let Some(probe) = query::search::near_probe(&q) {
            no_seq_scan(&mut c, &query, &probe.sql, &probe.params());
            statements.push(Statement::build_from(&q, query::search::NearSource::Index));
        }
        for st in &statements {
            no_seq_scan(&mut c, &query, &st.sql, &st.params());
        }
    }
    // The plans that keep a filtered `near=` and a small box in milliseconds at a million
    // reports (README "At a million reports"), run here: a filtered KNN scan tests the filter
    // in `read_reports_near_filtered`, and a box holding few reports (36 here) is counted
    // index-only in `read_reports_box` and answered from that count, its newest-first walk
    // never started.
    for (query, expect, never) in [
        (
            "near=-6.0,106.9&radius_m=50000&category=kesehatan",
            "Index Scan using read_reports_near_filtered on read_reports",
            None,
        ),
        (
            "near=-6.0,106.9&radius_m=50000&category=kesehatan&status=pending&page=3",
            "Index Scan using read_reports_near_filtered on read_reports",
            None,
        ),
        (
            "bbox=106.8,-6.2,106.81,-6.19",
            "Index Only Scan using read_reports_box on read_reports",
            Some("Index Scan using read_reports_newest on read_reports"),
        ),
        (
            "bbox=106.8,-6.2,106.81,-6.19&status=resolved&per_page=5&page=30",
            "Index Only Scan using read_reports_box on read_reports",
            Some("Index Scan using read_reports_newest on read_reports"),
        ),
    ] {
        let params = shared::http::parse_query(query).expect("query");
        let st = Statement::build(&ListQuery::parse(&params).expect("valid"));
        let plan = analyzed(&mut c, &st);
        assert!(plan.contains(expect), "{query}: expected {expect}\n{plan}");
        if let Some(walk) = never {
            let walked = plan
                .lines()
                .filter(|l| l.contains(walk))
                .any(|l| !l.contains("(never executed)"));
            assert!(!walked, "{query}: the walk ran\n{plan}");
        }
    }
}

/// A small box without words is answered from its own index when it holds at most
/// `BOX_SORT_ROWS` reports and by the newest-first walk when it holds more, a large one by
/// the walk: each gives what a plain SQL reference gives (total, every cursor page, a
/// numbered page), with filters.
#[test]
fn small_and_large_boxes_answer_alike() {
    use query::search::{BOX_SORT_ROWS, TOTAL_CAP};
    let url = fresh_db("search_boxes");
    let mut c = PG.client("search_boxes");
    let large = BOX_SORT_ROWS + 300;
    // Row i is i seconds old. The first `large` rows lie in the big box (lat -6.2), spread
    // over 6 categories; then 300 rows in the small box (lat 10.0), the oldest, below the
    // newest-first walk; every 97th row is deleted.
    c.execute(
        "INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc) \
         SELECT id, 'nomor ' || i, 'laporan', \
             (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + i % 6], \
             'pending', 1, t, t, CASE WHEN i % 97 = 0 THEN t END, \
             json_build_object('id', id, 'location', json_build_object( \
                 'lat', CASE WHEN i <= $1 THEN -6.2 ELSE 10.0 END, \
                 'lng', 106.8 + (i % 50) * 0.0001))::text \
         FROM generate_series(1, $1::int8 + 300) AS i, \
         LATERAL (SELECT md5(i::text)::uuid AS id, \
             timestamptz '2026-01-01' - i * interval '1 second' AS t) x",
        &[&large],
    )
    .expect("seed");
    c.batch_execute("VACUUM ANALYZE read_reports")
        .expect("analyze");
    let svc = start_query(&format!("only={url}"), &[]);
    let cap = usize::try_from(TOTAL_CAP).expect("cap");
    // Boxes of ~0.2 km² (counted first: the first holds more than the bound, the others
    // fewer) and one of ~500 km² (walked without a count).
    for (query, reference) in [
        ("bbox=106.799,-6.201,106.806,-6.199", "lat < 0"),
        (
            "bbox=106.799,-6.201,106.806,-6.199&category=kesehatan",
            "lat < 0 AND category = 'kesehatan'",
        ),
        ("bbox=106.799,9.999,106.806,10.001", "lat > 0"),
        (
            "bbox=106.799,9.999,106.806,10.001&category=lainnya&status=pending",
            "lat > 0 AND category = 'lainnya'",
        ),
        ("bbox=106.799,9.999,106.806,10.001&status=resolved", "false"),
        (
            "bbox=106.7,-6.3,106.9,-6.1&category=keamanan",
            "lat < 0 AND category = 'keamanan'",
        ),
    ] {
        let want: Vec<Uuid> = c
            .query(
                format!(
                    "SELECT id FROM read_reports WHERE deleted_at IS NULL AND {reference} \
                     ORDER BY created_at DESC, id DESC"
                )
                .as_str(),
                &[],
            )
            .expect("reference")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let first = get(&svc, &format!("/reports?{query}&per_page=7")).json();
        let meta = &first["meta"];
        assert_eq!(meta["total"], want.len().min(cap), "{query}: {meta}");
        assert_eq!(
            meta["total_capped"].as_bool().unwrap_or(false),
            want.len() > cap,
            "{query}: {meta}"
        );
        let items = follow(&svc, &format!("/reports?{query}&per_page=100"));
        assert_eq!(ids(&items), want, "{query}: cursor pages");
        let page = get(&svc, &format!("/reports?{query}&per_page=50&page=3")).json();
        let got = ids(page["data"].as_array().expect("data"));
        let expect: Vec<Uuid> = want.iter().skip(100).take(50).copied().collect();
        assert_eq!(got, expect, "{query}: page 3");
    }
}

/// Totals of `q`/`bbox` are exact up to `TOTAL_CAP` and capped beyond it, and matches older
/// than the bounded walk of the newest rows (`WALK_ROWS`) are found by the fallback: every
/// answer (total, pages by cursor and by number) equals a plain SQL reference. `q` with a
/// `bbox` takes each of its three ways there: the index alone (few hits in the walk), the
/// walk going on (`DENSE_HITS` or more), the index after both walks.
#[test]
fn capped_totals_and_matches_beyond_the_walk() {
    use query::search::{TOTAL_CAP, WALK_ROWS};
    let url = fresh_db("search_walk");
    let mut c = PG.client("search_walk");
    let n = WALK_ROWS + 400;
    // Row i is i seconds old. `langka`: 5 rows inside the walk, 150 older ones; `jarang`: 30
    // rows, all older than the walk; `umum`: every row; every third row lies in the box.
    // In the box, `campur` is in 26 rows of the walk and 133 older ones (the walk goes on and
    // fills the page), `sedang` in 44 of the walk and 4 older (it goes on, then the index).
    c.execute(
        "WITH s (id, title, description, category, status, version, created_at, updated_at, \
             deleted_at, doc) AS (SELECT id, title, 'laporan umum', 'lainnya', 'pending', 1, t, t, \
             CASE WHEN i % 97 = 0 THEN t END, \
             json_build_object('id', id, 'title', title, 'location', \
                 json_build_object('lat', CASE WHEN i % 3 = 0 THEN -6.2 ELSE 10.0 END, \
                                   'lng', 106.8))::text \
         FROM generate_series(1, $1::int8) AS i, \
         LATERAL (SELECT md5(i::text)::uuid AS id, \
             timestamptz '2026-01-01' - i * interval '1 second' AS t, \
             CASE WHEN i IN (10, 500, 1000, 2000, 3000) OR i > $1 - 150 THEN 'langka ' \
                  WHEN i BETWEEN $1 - 200 AND $1 - 171 THEN 'jarang ' ELSE '' END \
             || CASE WHEN (i <= $1 - 400 AND i % 150 = 0) OR (i > $1 - 400 AND i % 3 = 0) \
                     THEN 'campur ' ELSE '' END \
             || CASE WHEN i % 90 = 0 THEN 'sedang ' ELSE '' END \
             || 'nomor ' || i AS title) x) \
         INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
         SELECT *, (doc::jsonb #>> '{location,lat}')::float8, \
             (doc::jsonb #>> '{location,lng}')::float8, doc::jsonb ->> 'address', \
             report_search(title, description, doc::jsonb ->> 'address') FROM s",
        &[&n],
    )
    .expect("seed");
    c.batch_execute("VACUUM ANALYZE read_reports")
        .expect("analyze");
    let svc = start_query(&format!("only={url}"), &[]);
    let cap = usize::try_from(TOTAL_CAP).expect("cap");
    for (query, reference) in [
        ("q=langka", "title LIKE 'langka%'"),
        ("q=jarang", "title LIKE 'jarang%'"),
        ("q=umum", "true"),
        (
            "q=langka&bbox=106.7,-6.3,106.9,-6.1",
            "title LIKE 'langka%' AND lat < 0",
        ),
        (
            "q=campur&bbox=106.7,-6.3,106.9,-6.1",
            "title LIKE '%campur%' AND lat < 0",
        ),
        (
            "q=sedang&bbox=106.7,-6.3,106.9,-6.1",
            "title LIKE '%sedang%' AND lat < 0",
        ),
        (
            "q=sedang+langka&bbox=106.7,-6.3,106.9,-6.1",
            "title LIKE '%sedang%' AND title LIKE '%langka%' AND lat < 0",
        ),
        ("q=jarang&bbox=-180,-90,180,90", "title LIKE 'jarang%'"),
        ("bbox=106.7,-6.3,106.9,-6.1", "lat < 0"),
    ] {
        let want: Vec<Uuid> = c
            .query(
                format!(
                    "SELECT id FROM read_reports WHERE deleted_at IS NULL AND {reference} \
                     ORDER BY created_at DESC, id DESC"
                )
                .as_str(),
                &[],
            )
            .expect("reference")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!want.is_empty(), "{query}: the seed matches nothing");
        let first = get(&svc, &format!("/reports?{query}&per_page=7")).json();
        let meta = &first["meta"];
        assert_eq!(meta["total"], want.len().min(cap), "{query}: {meta}");
        assert_eq!(
            meta["total_capped"].as_bool().unwrap_or(false),
            want.len() > cap,
            "{query}: {meta}"
        );
        if want.len() <= 2_000 {
            let items = follow(&svc, &format!("/reports?{query}&per_page=40"));
            assert_eq!(ids(&items), want, "{query}: cursor pages");
        }
        // A numbered page beyond the capped total still lists the right reports.
        let page = get(&svc, &format!("/reports?{query}&per_page=50&page=3")).json();
        let got = ids(page["data"].as_array().expect("data"));
        let expect: Vec<Uuid> = want.iter().skip(100).take(50).copied().collect();
        assert_eq!(got, expect, "{query}: page 3");
    }
    // Each way of `q` + `bbox` was the one taken: the text index read (or not), the walk
    // going on (or not).
    let ran = |plan: &str, node: &str| {
        plan.lines()
            .any(|l| l.contains(node) && !l.contains("(never executed)"))
    };
    for (query, index, more) in [
        ("q=langka&bbox=106.7,-6.3,106.9,-6.1", true, false),
        ("q=campur&bbox=106.7,-6.3,106.9,-6.1", false, true),
        ("q=sedang&bbox=106.7,-6.3,106.9,-6.1", true, true),
    ] {
        let st = Statement::build(
            &ListQuery::parse(&shared::http::parse_query(query).expect("query")).expect("valid"),
        );
        let plan = analyzed(&mut c, &st);
        assert_eq!(
            ran(&plan, "Bitmap Index Scan on read_reports_search_place"),
            index,
            "{query}: the text index\n{plan}"
        );
        assert!(
            !plan.contains("read_reports_bbox"),
            "{query}: the box's index\n{plan}"
        );
        let walked_on = plan
            .split("CTE t_more")
            .nth(1)
            .and_then(|rest| rest.split("CTE t_gin").next())
            .is_some_and(|more| ran(more, "Index Scan using read_reports_newest"));
        assert_eq!(walked_on, more, "{query}: the walk going on\n{plan}");
    }
}

/// `query::cells::cell` is `report_cells` in SQL, term for term: a box's cover, computed here,
/// holds the cells the index stored for every point inside it (edges of the world, of cells,
/// and points anywhere).
#[test]
fn place_cells_agree_with_the_index() {
    use query::cells::{cell, LEVELS};
    fresh_db("search_cells");
    let mut c = PG.client("search_cells");
    let mut points = Vec::new();
    for lat in [
        -90.0,
        -89.995,
        -6.2,
        -0.005,
        0.0,
        0.04,
        45.000_000_01,
        89.999,
        90.0,
    ] {
        for lng in [
            -180.0, -179.995, -0.02, 0.0, 106.8, 107.6046, 179.995, 180.0,
        ] {
            points.push((lat, lng));
        }
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..500 {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let a = (x >> 11) as f64 / (1u64 << 53) as f64;
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let b = (x >> 11) as f64 / (1u64 << 53) as f64;
        points.push((a * 180.0 - 90.0, b * 360.0 - 180.0));
    }
    let (lats, lngs): (Vec<f64>, Vec<f64>) = points.iter().copied().unzip();
    let rows = c
        .query(
            "SELECT p.lat, p.lng, report_cells(p.lat, p.lng) \
             FROM unnest($1::float8[], $2::float8[]) WITH ORDINALITY AS p(lat, lng, n) ORDER BY n",
            &[&lats, &lngs],
        )
        .expect("cells");
    assert_eq!(rows.len(), points.len());
    for row in rows {
        let (lat, lng): (f64, f64) = (row.get(0), row.get(1));
        let sql: Vec<i64> = row.get(2);
        let ours: Vec<i64> = (0..LEVELS.len()).map(|l| cell(l, lat, lng)).collect();
        assert_eq!(sql, ours, "({lat}, {lng})");
    }
}

/// `q=` with `near=`: words rare among the nearest reports are read from the text index
/// (`NearSource::Index`), common ones along the KNN scan (`NearSource::Knn`); both answer
/// what the reference says, in distance order, ties at one spot included, by cursor and by
/// page, with the same totals.
#[test]
fn rare_words_near_a_place_come_from_the_text_index() {
    use query::search::{near_probe, NearSource, TOTAL_CAP};
    let url = fresh_db("search_near_words");
    let mut c = PG.client("search_near_words");
    // 1 500 reports on a spiral out to ~420 m from (-6.2, 106.8), the nearer the newer; every
    // fifth at the spot of the one before (a tie in distance). `langka`: a pair at one spot
    // in every 30 from the 600th on, none among the 600 nearest; `umum`: every report.
    c.execute(
        "WITH s AS (SELECT md5('nw' || i)::uuid AS id, \
             timestamptz '2026-01-01' - i * interval '1 second' AS t, \
             CASE WHEN i % 5 = 4 THEN i - 1 ELSE i END AS k, \
             CASE WHEN i >= 600 AND i % 30 IN (3, 4) THEN 'langka ' ELSE '' END \
                 || 'umum nomor ' || i AS title \
             FROM generate_series(0, 1499) AS i) \
         INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
         SELECT id, title, 'laporan', 'lainnya', 'pending', 1, t, t, NULL, \
             json_build_object('id', id, 'title', title)::text, \
             -6.2 + 0.0000025 * k * sin(k * 0.7), 106.8 + 0.0000025 * k * cos(k * 0.7), \
             NULL, report_search(title, 'laporan', NULL) FROM s",
        &[],
    )
    .expect("seed");
    c.batch_execute("VACUUM ANALYZE read_reports")
        .expect("analyze");
    let svc = start_query(&format!("only={url}"), &[]);
    let center = Location {
        lat: -6.2,
        lng: 106.8,
    };
    let mut all: Vec<(f64, Uuid, String)> = c
        .query("SELECT id, lat, lng, title FROM read_reports", &[])
        .expect("rows")
        .iter()
        .map(|r| {
            let at = Location {
                lat: r.get(1),
                lng: r.get(2),
            };
            (haversine_m(center, at), r.get(0), r.get(3))
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let cap = usize::try_from(TOTAL_CAP).expect("cap");
    for (word, source, per_pages) in [
        ("langka", NearSource::Index, [1, 7]),
        ("umum", NearSource::Knn, [7, 100]),
    ] {
        let query = format!("q={word}&near=-6.2,106.8");
        let q =
            ListQuery::parse(&shared::http::parse_query(&query).expect("query")).expect("valid");
        let probe = near_probe(&q).expect("a probe for q + near");
        assert_eq!(probe.choose(&mut c).expect("probe"), source, "{query}");
        let want: Vec<Uuid> = all
            .iter()
            .filter(|(_, _, title)| title.contains(word))
            .map(|(_, id, _)| *id)
            .collect();
        assert!(want.len() > 40, "{query}: the fixture has enough matches");
        for per_page in per_pages {
            let items = follow(&svc, &format!("/reports?{query}&per_page={per_page}"));
            assert_eq!(ids(&items), want, "{query} per_page={per_page}");
        }
        let first = get(&svc, &format!("/reports?{query}&per_page=7")).json();
        assert_eq!(first["meta"]["total"], want.len().min(cap), "{query}");
        let page = get(&svc, &format!("/reports?{query}&per_page=7&page=3")).json();
        let got = ids(page["data"].as_array().expect("data"));
        let expect: Vec<Uuid> = want.iter().skip(14).take(7).copied().collect();
        assert_eq!(got, expect, "{query}: page 3");
        // The rare words' statement reads the text index, not the radius.
        let st = Statement::build_from(&q, source);
        let plan = analyzed(&mut c, &st);
        assert_eq!(
            plan.contains("Bitmap Index Scan on read_reports_search_place"),
            source == NearSource::Index,
            "{query}\n{plan}"
        );
    }
}

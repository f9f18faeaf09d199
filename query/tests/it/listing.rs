//! Acceptance (1): pagination over 250 reports with per_page 1, 20, 100 and 1000 (served as
//! 100), filters alone and combined; totals right, every report exactly once, newest first
//! with a stable tie-break, tombstones never listed.

use std::collections::HashSet;

use shared::model::{Category, Report, Status};
use uuid::Uuid;

use crate::support::{delete, fresh_db, get, newest_first, seed, start_query, PG};

/// Pages through `query` with `per_page` and returns the ids in order, checking every meta.
fn page_through(
    svc: &shared::testkit::Service,
    query: &str,
    per_page: u32,
    expect: &[Uuid],
) -> Vec<Uuid> {
    let served = per_page.min(100) as usize;
    let total = expect.len();
    let total_pages = total.div_ceil(served);
    let mut ids = Vec::new();
    let mut page = 1;
    loop {
        let path = format!("/reports?{query}&page={page}&per_page={per_page}");
        let r = get(svc, &path);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-instance-id"), Some("query-test"));
        let v = r.json();
        assert_eq!(v["success"], true);
        assert_eq!(v["instance"], "query-test");
        let meta = &v["meta"];
        assert_eq!(meta["total"], total as u64, "{path}");
        assert_eq!(meta["page"], page, "{path}");
        assert_eq!(meta["per_page"], served as u64, "{path}");
        assert_eq!(meta["total_pages"], total_pages as u64, "{path}");
        let data = v["data"].as_array().expect("data array");
        if page <= total_pages {
            let expected_len = served.min(total - (page - 1) * served);
            assert_eq!(data.len(), expected_len, "{path}");
        } else {
            assert!(data.is_empty(), "{path}: past the last page");
            break;
        }
        for d in data {
            // The stored document is served as is: it must be a full report.
            let report: Report = serde_json::from_value(d.clone()).expect("report json");
            ids.push(report.id);
        }
        page += 1;
    }
    let unique: HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "{query} per_page={per_page}: duplicates"
    );
    assert_eq!(
        ids, expect,
        "{query} per_page={per_page}: order or membership"
    );
    ids
}

#[test]
fn pagination_filters_totals_and_order() {
    let url = fresh_db("listing");
    let mut client = PG.client("listing");
    let mut reports = seed(&mut client, 260);
    // Ten tombstones: they must disappear from every page and every total.
    for r in reports.drain(250..) {
        delete(&mut client, &r);
    }
    let svc = start_query(&format!("only={url}"), &[]);

    let all = newest_first(&reports);
    for per_page in [1, 20, 100, 1000] {
        page_through(&svc, "", per_page, &all);
    }
    let default = get(&svc, "/reports").json();
    assert_eq!(default["meta"]["per_page"], 20);
    assert_eq!(default["meta"]["page"], 1);
    assert_eq!(default["meta"]["total"], 250);

    let matching = |c: Option<Category>, s: Option<Status>| -> Vec<Uuid> {
        let subset: Vec<Report> = reports
            .iter()
            .filter(|r| {
                (c.is_none() || c == Some(r.category)) && (s.is_none() || s == Some(r.status))
            })
            .cloned()
            .collect();
        newest_first(&subset)
    };
    for c in Category::ALL {
        page_through(&svc, &format!("category={c}"), 7, &matching(Some(*c), None));
    }
    for s in Status::ALL {
        page_through(&svc, &format!("status={s}"), 20, &matching(None, Some(*s)));
    }
    for c in Category::ALL {
        for s in Status::ALL {
            let expect = matching(Some(*c), Some(*s));
            page_through(&svc, &format!("category={c}&status={s}"), 3, &expect);
        }
    }
    // A page far past the end is empty, not an error.
    let v = get(&svc, "/reports?page=1000000&per_page=100").json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["meta"]["total"], 250);
}

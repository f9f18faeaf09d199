//! Acceptance (2): `/statistics` equals `GROUP BY category, status` over the live rows of the
//! read model, after creates, status and category changes and deletes (tombstones excluded).

use std::collections::BTreeMap;

use shared::model::{Category, Status};

use crate::support::{apply, delete, fresh_db, get, seed, start_query, PG};

#[test]
fn statistics_equal_group_by_over_the_read_model() {
    let url = fresh_db("statistics");
    let mut client = PG.client("statistics");
    let mut reports = seed(&mut client, 120);
    // Status changes, category changes, both, and deletes.
    for (i, r) in reports.iter_mut().enumerate().take(40) {
        r.version += 1;
        r.updated_at = shared::model::now_micros();
        match i % 3 {
            0 => r.status = Status::Resolved,
            1 => r.category = Category::Lainnya,
            _ => {
                r.status = Status::Rejected;
                r.category = Category::Keamanan;
            }
        }
        apply(&mut client, r);
    }
    for r in &reports[40..60] {
        delete(&mut client, r);
    }
    let svc = start_query(&format!("only={url}"), &[]);

    // The truth: a GROUP BY over the live rows.
    let mut expect: BTreeMap<(String, String), i64> = BTreeMap::new();
    for row in client
        .query(
            "SELECT category, status, count(*) FROM read_reports WHERE deleted_at IS NULL \
             GROUP BY category, status",
            &[],
        )
        .unwrap()
    {
        expect.insert((row.get(0), row.get(1)), row.get(2));
    }
    let count = |c: &str, s: &str| {
        expect
            .get(&(c.to_owned(), s.to_owned()))
            .copied()
            .unwrap_or(0)
    };

    let r = get(&svc, "/statistics");
    assert_eq!(r.status, 200);
    let v = r.json();
    let data = v["data"].as_array().expect("data array");
    assert_eq!(
        data.len(),
        Category::ALL.len(),
        "one entry per category, zeros included"
    );
    let mut grand_total = 0;
    for (entry, c) in data.iter().zip(Category::ALL) {
        let c = c.as_str();
        assert_eq!(entry["category"], c);
        let per_status: Vec<i64> = Status::ALL.iter().map(|s| count(c, s.as_str())).collect();
        let got: Vec<i64> = [
            "pending_count",
            "in_progress_count",
            "resolved_count",
            "rejected_count",
        ]
        .iter()
        .map(|k| entry[k].as_i64().unwrap())
        .collect();
        assert_eq!(got, per_status, "category {c}: {entry}");
        assert_eq!(
            entry["total_count"].as_i64().unwrap(),
            per_status.iter().sum::<i64>()
        );
        assert!(entry["last_updated"].is_string(), "{entry}");
        grand_total += entry["total_count"].as_i64().unwrap();
    }
    assert_eq!(grand_total, 100, "120 seeded, 20 deleted");

    // The filter returns that category only; the list total agrees with the statistics.
    let v = get(&svc, "/statistics?category=lainnya").json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["category"], "lainnya");
    let lainnya: i64 = Status::ALL
        .iter()
        .map(|s| count("lainnya", s.as_str()))
        .sum();
    assert_eq!(data[0]["total_count"], lainnya);
    let listed = get(&svc, "/reports?category=lainnya").json();
    assert_eq!(listed["meta"]["total"], lainnya);

    let bad = get(&svc, "/statistics?category=sampah");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap()
        .contains("kebersihan, kriminalitas"));
}

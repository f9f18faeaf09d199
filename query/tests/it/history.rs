//! `GET /reports/{id}/history` over HTTP: every version oldest first with what changed, a
//! deleted report's history still readable, 400 for a bad id, 404 for an unknown one.

use serde_json::json;
use uuid::Uuid;

use crate::support::{fresh_db, get, start_query, PG};

#[test]
fn history_lists_every_version_even_after_delete() {
    let url = fresh_db("history");
    let mut c = PG.client("history");
    let id = Uuid::new_v4();
    let v1 = json!({"id": id, "title": "Jalan rusak", "description": "d", "category": "infrastruktur",
        "status": "pending", "version": 1, "created_at": "2025-10-01T00:00:00Z",
        "updated_at": "2025-10-01T00:00:00Z", "location": {"lat": -6.2, "lng": 106.8}});
    let mut v2 = v1.clone();
    v2["status"] = json!("in_progress");
    v2["version"] = json!(2);
    let d3 = json!({"id": id, "version": 3, "deleted_at": "2025-10-03T00:00:00Z"});
    // Stored out of order, as a projection may receive them.
    for (version, kind, payload, at) in [
        (3i64, "ReportDeleted", &d3, "2025-10-03T00:00:00Z"),
        (1, "ReportCreated", &v1, "2025-10-01T00:00:00Z"),
        (2, "ReportUpdated", &v2, "2025-10-02T00:00:00Z"),
    ] {
        c.execute(
            "INSERT INTO report_history (report_id, version, event_type, at, payload) \
             VALUES ($1, $2, $3, $4::text::timestamptz, $5)",
            &[&id, &version, &kind, &at, &payload.to_string()],
        )
        .expect("history row");
    }
    let svc = start_query(&format!("only={url}"), &[]);
    let r = get(&svc, &format!("/reports/{id}/history"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["data"],
        json!([
            {"version": 1, "event_type": "ReportCreated", "at": "2025-10-01T00:00:00Z", "changes": v1},
            {"version": 2, "event_type": "ReportUpdated", "at": "2025-10-02T00:00:00Z",
             "changes": {"status": "in_progress"}},
            {"version": 3, "event_type": "ReportDeleted", "at": "2025-10-03T00:00:00Z",
             "changes": {"deleted_at": "2025-10-03T00:00:00Z"}},
        ])
    );
    assert_eq!(
        get(&svc, &format!("/reports/{}/history", Uuid::new_v4())).status,
        404
    );
    let bad = get(&svc, "/reports/not-a-uuid/history");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("not a UUID"));
}

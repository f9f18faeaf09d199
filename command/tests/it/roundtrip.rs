//! Create → update → delete: rows, versions, event-log entries and stream entries are exactly
//! right, in position order.

use std::time::Duration;

use serde_json::json;
use shared::event::{EventType, Payload};
use shared::testkit::wait_until;

use super::*;

#[test]
fn create_update_delete_round_trip() {
    let stack = Stack::new("roundtrip");
    let port = stack.svc.port;

    let created = post(port, &new_report(1));
    assert_eq!(created.status, 201, "{:?}", created.json());
    assert_eq!(created.header("x-instance-id"), Some("command-1"));
    assert_eq!(created.header("etag"), Some("\"1\""));
    let body = created.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["instance"], "command-1");
    let data = &body["data"];
    let id = data["id"].as_str().expect("id").to_owned();
    assert_eq!(data["version"], 1);
    assert_eq!(data["status"], "pending");
    assert_eq!(data["category"], "kriminalitas");
    assert_eq!(data["title"], "Laporan 1");

    let updated = put(
        port,
        &id,
        &json!({"status": "in_progress", "category": "kesehatan"}),
        Some(1),
    );
    assert_eq!(updated.status, 200, "{:?}", updated.json());
    let data = updated.json()["data"].clone();
    assert_eq!(data["version"], 2);
    assert_eq!(data["status"], "in_progress");
    assert_eq!(data["category"], "kesehatan");
    assert_eq!(data["title"], "Laporan 1", "absent fields are unchanged");

    // The same change again alters nothing: no new version, no new event.
    let same = put(port, &id, &json!({"status": "in_progress"}), None);
    assert_eq!(same.status, 200);
    assert_eq!(same.json()["data"]["version"], 2);

    let deleted = delete(port, &id, Some(2));
    assert_eq!(deleted.status, 200, "{:?}", deleted.json());
    assert_eq!(deleted.json()["data"]["version"], 3);
    assert_eq!(deleted.header("etag"), Some("\"3\""));

    // Gone from every write path.
    assert_eq!(put(port, &id, &json!({"title": "x"}), None).status, 404);
    assert_eq!(delete(port, &id, None).status, 404);

    let mut db = stack.db();
    let row = db
        .query_one("SELECT version, status, category, deleted_at IS NOT NULL FROM reports WHERE id = $1::text::uuid", &[&id])
        .expect("report row");
    assert_eq!(row.get::<_, i64>(0), 3);
    assert_eq!(row.get::<_, String>(1), "in_progress");
    assert_eq!(row.get::<_, String>(2), "kesehatan");
    assert!(row.get::<_, bool>(3));
    let log: Vec<(String, i64)> = db
        .query("SELECT event_type, version FROM event_log WHERE report_id = $1::text::uuid ORDER BY position", &[&id])
        .expect("event log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        log,
        vec![
            ("ReportCreated".to_owned(), 1),
            ("ReportUpdated".to_owned(), 2),
            ("ReportDeleted".to_owned(), 3)
        ]
    );

    wait_until("3 events in the stream", Duration::from_secs(10), || {
        stream_events(&stack.redis).len() == 3
    });
    let events = stream_events(&stack.redis);
    let kinds: Vec<EventType> = events.iter().map(|e| e.event_type).collect();
    assert_eq!(
        kinds,
        [
            EventType::ReportCreated,
            EventType::ReportUpdated,
            EventType::ReportDeleted
        ]
    );
    assert!(
        events.windows(2).all(|w| w[0].position < w[1].position),
        "position order"
    );
    for (e, v) in events.iter().zip(1..) {
        assert_eq!(e.report_id.to_string(), id);
        assert_eq!(e.version, v);
        let payload = e
            .decode_payload()
            .expect("payload decodes and matches the envelope");
        assert_eq!(payload.version(), v);
    }
    match events[1].decode_payload().expect("payload") {
        Payload::Snapshot(r) => assert_eq!(r.status.as_str(), "in_progress"),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    assert!(matches!(
        events[2].decode_payload(),
        Ok(Payload::Deleted(_))
    ));
    // The relay appends to the stream before it commits the marks, so the marks may trail
    // the stream by a moment.
    wait_until(
        "every event marked published",
        Duration::from_secs(10),
        || {
            let unpublished: i64 = db
                .query_one(
                    "SELECT count(*) FROM event_log WHERE published_at IS NULL",
                    &[],
                )
                .expect("count")
                .get(0);
            unpublished == 0
        },
    );
}

#[test]
fn health_and_metrics() {
    let stack = Stack::new("health");
    let r = http(stack.svc.port, "GET", "/health", &[], b"").expect("health");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "healthy", "service": "reporting-command", "instance": "command-1"})
    );
    post(stack.svc.port, &new_report(2));
    let m = http(stack.svc.port, "GET", "/metrics", &[], b"").expect("metrics");
    assert_eq!(m.status, 200);
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(text.contains("command_requests_total{instance=\"command-1\",route=\"POST /reports\",status=\"2xx\"} 1"), "{text}");
    assert!(
        text.contains("command_db_up{instance=\"command-1\"} 1"),
        "{text}"
    );
}

/// An idle service must be idle: the relay waits on LISTEN/NOTIFY, it never spins. CPU time
/// (not wall time) of the process over two idle seconds, so a busy machine cannot fake it.
#[test]
fn idle_service_does_not_spin() {
    let stack = Stack::new("idle");
    post(stack.svc.port, &new_report(1));
    std::thread::sleep(Duration::from_millis(500));
    let pid = stack.svc.pid().expect("pid");
    let cpu_ticks = || -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
        // Fields after the parenthesised name; utime and stime are the 14th and 15th overall.
        let rest = stat.rsplit_once(')').expect("stat format").1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    };
    let before = cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks() - before;
    // A spinning thread burns ~200 ticks (100 Hz) in 2 s; an idle relay a handful.
    assert!(
        used < 50,
        "idle command service used {used} CPU ticks in 2 s"
    );
}

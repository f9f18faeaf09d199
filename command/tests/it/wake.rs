//! The relay's wake-up after the write's commit (`command/src/wake.rs`): a write wakes the
//! leader although its commit no longer notifies, and a write whose wake-up never comes is
//! still published by the leader's poll.

use std::time::Duration;

use command::store::CREATE_SQL;
use postgres::types::{ToSql, Type};
use shared::testkit::{wait_until, RedisServer};

use super::relay::{leads, metric};
use super::*;

/// Generous: far above any wake-up on a loaded machine, far below [`LONG_POLL_MS`].
const PUBLISH_DEADLINE: Duration = Duration::from_secs(20);

/// A poll interval so long that only a wake-up can explain a publish within
/// [`PUBLISH_DEADLINE`].
const LONG_POLL_MS: &str = "120000";

fn published(redis: &RedisServer, report: &str) -> bool {
    stream_events(redis)
        .iter()
        .any(|e| e.report_id.to_string() == report)
}

/// With a two-minute poll, a POST, a PUT and a DELETE each reach the stream within the
/// deadline: only the notifier's NOTIFY after the commit can have woken the leader (the
/// statements themselves do not notify: `faults::a_repeated_create_statement_…`).
#[test]
fn a_write_wakes_the_relay_after_its_commit() {
    let db_url = pg().create_db("wake_after_commit");
    let redis = RedisServer::start();
    let svc = start_command_with(
        &db_url,
        &redis.url(),
        "command-1",
        &[("RELAY_POLL_MS", LONG_POLL_MS.to_owned())],
    );
    wait_until("the relay leads", Duration::from_secs(30), || {
        leads(svc.port)
    });
    // The first batch of a new term runs at once; let it pass, so that what follows can only
    // be published on a wake-up.
    std::thread::sleep(Duration::from_millis(500));

    let r = post(svc.port, &new_report(1));
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["data"]["id"].as_str().expect("id").to_owned();
    wait_until("the POST is published", PUBLISH_DEADLINE, || {
        published(&redis, &id)
    });
    let r = put(
        svc.port,
        &id,
        &serde_json::json!({"title": "diperbarui"}),
        None,
    );
    assert_eq!(r.status, 200, "{:?}", r.json());
    wait_until("the PUT is published", PUBLISH_DEADLINE, || {
        stream_events(&redis).iter().any(|e| e.version == 2)
    });
    let r = delete(svc.port, &id, Some(2));
    assert_eq!(r.status, 200, "{:?}", r.json());
    wait_until("the DELETE is published", PUBLISH_DEADLINE, || {
        stream_events(&redis).iter().any(|e| e.version == 3)
    });
    let wakeups = metric(svc.port, "command_relay_wakeups_total").unwrap_or(0.0);
    assert!(
        (1.0..=3.0).contains(&wakeups),
        "{wakeups} wake-ups for 3 writes\n{}",
        svc.log()
    );
}

/// An instance killed between its COMMIT and its wake-up leaves a committed event that
/// nobody notifies about. The test commits exactly that: the create statement the service
/// runs (`CREATE_SQL`), on its own connection, with no wake-up after it. The leader's poll
/// (shortened here, so the test stays fast) publishes it.
#[test]
fn an_event_whose_wake_up_was_lost_is_published_by_the_poll() {
    let db_url = pg().create_db("wake_lost");
    let redis = RedisServer::start();
    let svc = start_command_with(
        &db_url,
        &redis.url(),
        "command-1",
        &[("RELAY_POLL_MS", "1000".to_owned())],
    );
    wait_until("the relay leads", Duration::from_secs(30), || {
        leads(svc.port)
    });
    std::thread::sleep(Duration::from_millis(500));

    let mut db = postgres::Client::connect(&db_url, postgres::NoTls).expect("connect");
    let now = time::OffsetDateTime::now_utc();
    let (id, event_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let none: Option<f64> = None;
    let no_text: Option<String> = None;
    let report = shared::model::Report {
        id,
        title: "Lampu jalan mati".into(),
        description: "Sudah seminggu gelap".into(),
        category: shared::model::Category::Infrastruktur,
        status: shared::model::Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: None,
        address: None,
        media_url: None,
    };
    let payload = serde_json::to_string(&report).expect("payload");
    let params: [(&(dyn ToSql + Sync), Type); 13] = [
        (&id, Type::UUID),
        (&report.title, Type::TEXT),
        (&report.description, Type::TEXT),
        (&"infrastruktur", Type::TEXT),
        (&"pending", Type::TEXT),
        (&now, Type::TIMESTAMPTZ),
        (&none, Type::FLOAT8),
        (&none, Type::FLOAT8),
        (&no_text, Type::TEXT),
        (&no_text, Type::TEXT),
        (&event_id, Type::UUID),
        (&"ReportCreated", Type::TEXT),
        (&payload, Type::TEXT),
    ];
    let rows = db.query_typed(CREATE_SQL, &params).expect("commit");
    assert_eq!(rows.len(), 1, "one event written");
    let id = id.to_string();
    wait_until("the poll publishes the event", PUBLISH_DEADLINE, || {
        published(&redis, &id)
    });
    assert_eq!(
        metric(svc.port, "command_relay_wakeups_total"),
        Some(0.0),
        "no wake-up was sent: the poll published it"
    );
}

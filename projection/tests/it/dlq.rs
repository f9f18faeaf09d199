//! Poison entries go to the dead-letter stream with their reason; the entries after them are
//! applied.

use std::time::Duration;

use shared::event::{Event, EventType, DLQ_STREAM, STREAM};
use shared::model::{Category, Report, Status};
use shared::testkit::{wait_until, RedisServer};
use uuid::Uuid;

use crate::support::*;

fn xadd(conn: &mut redis::Connection, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query(conn).expect("xadd")
}

#[test]
fn poison_entries_land_in_the_dlq_and_later_entries_apply() {
    // Given a running projection
    let url = pg().create_db("dlq");
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &[("main", url.clone())]);
    let mut cmd = CommandSide::new(9);

    // When three poison entries are XADDed by hand, followed by good events
    let garbage = xadd(&mut conn, &[("hello", "world")]);
    let good = cmd.next_event();
    let mut fields: Vec<(&str, String)> = good.to_fields().to_vec();
    fields[1].1 = "ReportExploded".into();
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let unknown_type = xadd(&mut conn, &refs);
    fields[1].1 = "ReportCreated".into();
    fields[5].1 = "{not json".into();
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let bad_payload = xadd(&mut conn, &refs);
    publish(&mut conn, &[good]);
    publish(&mut conn, &cmd.batch(20));

    // Then the good events are applied
    wait_converged(&url, &cmd.expected(), Duration::from_secs(15));
    // and each poison entry is in the DLQ with its original fields, reason and source id
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(DLQ_STREAM)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange dlq");
    let find = |source: &str| -> Vec<(String, String)> {
        dlq.iter()
            .map(|(_, f)| f.clone())
            .find(|f| f.iter().any(|(k, v)| k == "source_id" && v == source))
            .unwrap_or_else(|| panic!("{source} not in DLQ: {dlq:?}"))
    };
    let reason = |f: &[(String, String)]| -> String {
        f.iter()
            .find(|(k, _)| k == "reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let g = find(&garbage);
    assert!(reason(&g).contains("missing field event_id"), "{g:?}");
    assert!(g.contains(&("hello".into(), "world".into())), "{g:?}");
    let u = find(&unknown_type);
    assert!(reason(&u).contains("unknown event_type"), "{u:?}");
    let b = find(&bad_payload);
    assert!(reason(&b).contains("bad field payload"), "{b:?}");
    assert_eq!(dlq.len(), 3, "{dlq:?}");
    // and nothing stays pending: poison is acked once parked
    wait_until("all acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    assert_eq!(
        metric(projection.port, "projection_dlq_total", None),
        Some(3.0)
    );
}

#[test]
fn an_entry_every_db_rejects_is_parked_once_and_the_rest_of_its_batch_applies() {
    // Given a projection over two query DBs
    let a = pg().create_db("poison_a");
    let b = pg().create_db("poison_b");
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &[("a", a.clone()), ("b", b.clone())]);
    let mut cmd = CommandSide::new(14);

    // When an entry that decodes but whose title holds U+0000 (PostgreSQL refuses it in a text
    // column: 22021) is published in the middle of good events, in one burst
    let before = cmd.batch(40);
    let now = shared::model::now_micros();
    let report = Report {
        id: Uuid::new_v4(),
        title: "jalan\u{0}rusak".into(),
        description: "lubang".into(),
        category: Category::Infrastruktur,
        status: Status::Pending,
        version: 1,
        created_at: now,
        updated_at: now,
        location: None,
        address: None,
        media_url: None,
    };
    let poison = Event {
        event_id: Uuid::new_v4(),
        event_type: EventType::ReportCreated,
        report_id: report.id,
        version: 1,
        position: 1_000_000,
        payload: serde_json::to_string(&report).expect("json"),
        timestamp: now,
    };
    let after = cmd.batch(40);
    let mut all = before;
    all.push(poison.clone());
    all.extend(after);
    publish(&mut conn, &all);

    // Then every other event is applied in both DBs (the poison's report never appears)
    let expected = cmd.expected();
    wait_converged(&a, &expected, Duration::from_secs(20));
    wait_converged(&b, &expected, Duration::from_secs(20));
    // and the poison is in the DLQ exactly once, with the database's reason
    let dlq: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(DLQ_STREAM)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("xrange dlq");
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let fields = &dlq[0].1;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(get("report_id"), poison.report_id.to_string(), "{fields:?}");
    assert!(get("reason").contains("22021"), "{fields:?}");
    // and nothing stays pending: the pipeline goes on
    wait_until("all acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    assert_eq!(
        metric(projection.port, "projection_dlq_total", None),
        Some(1.0)
    );
    // and later events still apply
    publish(&mut conn, &cmd.batch(10));
    let expected = cmd.expected();
    wait_converged(&a, &expected, Duration::from_secs(20));
}

//! The history read model (SPEC §7.1): given creates, updates, deletes and duplicates on the
//! stream, when the projection applies them, then `report_history` holds exactly one row per
//! (report, version) with that event's type and payload — deleted reports' included.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::testkit::RedisServer;
use uuid::Uuid;

use crate::support::*;

#[test]
fn every_version_is_recorded_once() {
    let url = pg().create_db("history");
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let _projection = start_projection("projection", &redis, &[("h", url.clone())]);

    let mut cmd = CommandSide::new(11);
    let events = cmd.batch(400);
    publish(&mut conn, &events);
    // The same events again: a replay changes nothing.
    publish(&mut conn, &events[..100]);
    let expected = cmd.expected();
    assert!(expected.iter().any(|r| r.deleted));
    wait_converged(&url, &expected, Duration::from_secs(30));

    let mut want: BTreeMap<(Uuid, i64), (String, String)> = BTreeMap::new();
    for e in &events {
        want.insert(
            (e.report_id, e.version),
            (e.event_type.as_str().to_owned(), e.payload.clone()),
        );
    }
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("query db");
    let got: BTreeMap<(Uuid, i64), (String, String)> = client
        .query(
            "SELECT report_id, version, event_type, payload FROM report_history",
            &[],
        )
        .expect("history")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    assert_eq!(got.len(), want.len(), "one row per (report, version)");
    assert_eq!(got, want);
}

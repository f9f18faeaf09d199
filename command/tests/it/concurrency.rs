//! Two command instances on one database writing the same reports concurrently: versions
//! strictly increase per report, and `If-Match` turns lost updates into 409s.

use std::sync::{Arc, Mutex};

use serde_json::json;

use super::*;

#[test]
fn two_instances_no_lost_update() {
    let stack = Stack::new("two_instances");
    let second = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let ports = [stack.svc.port, second.port];

    let ids: Vec<String> = (0..5)
        .map(|i| {
            post(ports[i % 2], &new_report(i)).json()["data"]["id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    let ids = Arc::new(ids);
    // (report, version written) for every 200, and the 409 count.
    let written = Arc::new(Mutex::new(Vec::<(String, i64)>::new()));
    let conflicts = Arc::new(Mutex::new(0usize));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (ids, written, conflicts) = (ids.clone(), written.clone(), conflicts.clone());
            let port = ports[t % 2];
            std::thread::spawn(move || {
                for round in 0..25 {
                    let id = &ids[round % ids.len()];
                    // Optimistic read-modify-write: guess version 1, and on a 409 retry with
                    // the current version the conflict answer reports.
                    let mut expect = 1;
                    loop {
                        let r = put(
                            port,
                            id,
                            &json!({"title": format!("t{t} r{round}")}),
                            Some(expect),
                        );
                        match r.status {
                            200 => {
                                let v = r.json()["data"]["version"].as_i64().expect("version");
                                assert_eq!(
                                    v,
                                    expect + 1,
                                    "a write at If-Match {expect} makes {}",
                                    expect + 1
                                );
                                written.lock().expect("lock").push((id.clone(), v));
                                break;
                            }
                            409 => {
                                *conflicts.lock().expect("lock") += 1;
                                expect = r.json()["data"]["current_version"]
                                    .as_i64()
                                    .expect("current");
                            }
                            other => panic!("unexpected {other}: {:?}", r.json()),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let written = written.lock().expect("lock").clone();
    assert_eq!(written.len(), 8 * 25);
    assert!(
        *conflicts.lock().expect("lock") > 0,
        "concurrent writers do conflict"
    );
    // No two successful writes produced the same version of a report: nothing was lost.
    let mut seen = std::collections::HashSet::new();
    for w in &written {
        assert!(
            seen.insert(w.clone()),
            "version {} of {} written twice",
            w.1,
            w.0
        );
    }
    let mut db = stack.db();
    for id in ids.iter() {
        let versions: Vec<i64> = db
            .query(
                "SELECT version FROM event_log WHERE report_id = $1::text::uuid ORDER BY position",
                &[id],
            )
            .expect("events")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(
            versions, expected,
            "versions of {id} strictly increase by one in position order"
        );
        let final_version: i64 = db
            .query_one(
                "SELECT version FROM reports WHERE id = $1::text::uuid",
                &[id],
            )
            .expect("row")
            .get(0);
        assert_eq!(final_version, versions.len() as i64);
    }
}

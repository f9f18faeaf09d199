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

/// Updates without `If-Match` racing on ONE report from two instances: each is written
/// optimistically (read, then a write conditional on the version read) and, after losing a
/// few races, on the row lock. Every PUT must land exactly once — 200, a version of its own,
/// one event — and a DELETE racing with them too: nothing lost, nothing written twice,
/// versions strictly increasing in event-log order.
#[test]
fn racing_updates_without_if_match_each_land_once() {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 15;
    let stack = Stack::new("racing_updates");
    let second = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let ports = [stack.svc.port, second.port];
    let id = post(ports[0], &new_report(1)).json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let versions = Arc::new(Mutex::new(Vec::<i64>::new()));
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (id, versions) = (id.clone(), versions.clone());
            let port = ports[t % 2];
            std::thread::spawn(move || {
                for round in 0..ROUNDS {
                    // Distinct titles: every PUT changes the report, so every one is a version.
                    let r = put(port, &id, &json!({"title": format!("t{t} r{round}")}), None);
                    assert_eq!(r.status, 200, "{:?}", r.json());
                    let v = r.json()["data"]["version"].as_i64().expect("version");
                    versions.lock().expect("lock").push(v);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let r = delete(ports[1], &id, None);
    assert_eq!(r.status, 200, "{:?}", r.json());
    let tomb_version = r.json()["data"]["version"].as_i64().expect("version");

    let mut answered = versions.lock().expect("lock").clone();
    answered.sort_unstable();
    let updates = (WRITERS * ROUNDS) as i64;
    assert_eq!(
        answered,
        (2..=updates + 1).collect::<Vec<i64>>(),
        "each PUT answered a version of its own"
    );
    assert_eq!(tomb_version, updates + 2);
    let mut db = stack.db();
    let logged: Vec<i64> = db
        .query(
            "SELECT version FROM event_log WHERE report_id = $1::text::uuid ORDER BY position",
            &[&id],
        )
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        logged,
        (1..=updates + 2).collect::<Vec<i64>>(),
        "one event per version, in position order"
    );
    assert_eq!(
        delete(ports[0], &id, None).status,
        404,
        "a tombstone stays deleted"
    );
}

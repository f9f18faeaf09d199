//! Faults: Redis down while writing (nothing lost, backlog published in order when it
//! returns), and the command DB killed mid-load (503s, never a 2xx for an uncommitted write,
//! full service again after restart without restarting the service).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shared::testkit::wait_until;

use super::*;

#[test]
fn redis_outage_loses_nothing() {
    let stack = Stack::new("redis_outage");
    let port = stack.svc.port;
    stack.redis.stop();

    let mut ids = Vec::new();
    for i in 0..200 {
        // Every write succeeds while Redis is down; a third of them are updates of earlier
        // reports, so per-report order matters.
        if i % 3 == 2 {
            let id: &String = &ids[i / 3];
            let r = put(port, id, &json!({"title": format!("ubah {i}")}), None);
            assert_eq!(
                r.status,
                200,
                "write {i} while redis is down: {:?}",
                r.json()
            );
        } else {
            let r = post(port, &new_report(i));
            assert_eq!(
                r.status,
                201,
                "write {i} while redis is down: {:?}",
                r.json()
            );
            ids.push(r.json()["data"]["id"].as_str().expect("id").to_owned());
        }
    }
    let ready = http(port, "GET", "/ready", &[], b"").expect("ready");
    assert_eq!(ready.status, 200, "writes still work, so still ready");
    assert_eq!(ready.json()["data"]["redis"], false);

    stack.redis.start_again();
    wait_until(
        "all 200 events in the stream",
        Duration::from_secs(20),
        || stream_events(&stack.redis).len() >= 200,
    );
    let events = stream_events(&stack.redis);
    assert_eq!(events.len(), 200, "none missing, none twice");
    let mut positions: Vec<i64> = events.iter().map(|e| e.position).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "stream is in position order"
    );
    positions.dedup();
    assert_eq!(positions.len(), 200);
    let mut last: HashMap<uuid::Uuid, i64> = HashMap::new();
    for e in &events {
        let prev = last.insert(e.report_id, e.version).unwrap_or(0);
        assert_eq!(e.version, prev + 1, "report {} out of order", e.report_id);
    }
    let mut db = stack.db();
    let (rows, log, _) = fingerprint(&mut db);
    assert_eq!((rows, log), (ids.len() as i64, 200));
}

#[test]
fn command_db_killed_mid_load() {
    let cluster = PgCluster::start();
    let stack = Stack::on(&cluster, "db_outage");
    let port = stack.svc.port;
    let stop = Arc::new(AtomicBool::new(false));
    // Every id the service acknowledged with a 2xx, and the statuses seen.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, acked, statuses) = (stop.clone(), acked.clone(), statuses.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    // A connection reset (the DB died mid-request) is not an acknowledgement.
                    let Ok(r) = http(
                        port,
                        "POST",
                        "/reports",
                        &[],
                        new_report(w * 100_000 + i).to_string().as_bytes(),
                    ) else {
                        continue;
                    };
                    *statuses.lock().expect("lock").entry(r.status).or_default() += 1;
                    if r.status == 201 {
                        acked
                            .lock()
                            .expect("lock")
                            .push(r.json()["data"]["id"].as_str().expect("id").to_owned());
                    } else {
                        assert_eq!(
                            r.status,
                            503,
                            "only 503 while the DB is down: {:?}",
                            r.json()
                        );
                        assert!(r.header("retry-after").is_some());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    cluster.kill();
    std::thread::sleep(Duration::from_secs(2));
    let during = statuses
        .lock()
        .expect("lock")
        .get(&503)
        .copied()
        .unwrap_or(0);
    assert!(during > 0, "writes during the outage answer 503");
    assert!(stack.svc.is_running(), "the service survives the outage");
    let health = http(port, "GET", "/health", &[], b"").expect("health while DB down");
    assert_eq!(health.status, 200);
    assert_eq!(
        http(port, "GET", "/ready", &[], b"").expect("ready").status,
        503
    );

    cluster.start_again();
    let before = acked.lock().expect("lock").len();
    wait_until(
        "writes succeed again after the DB restart",
        Duration::from_secs(20),
        || acked.lock().expect("lock").len() > before + 10,
    );
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer thread");
    }

    // Every acknowledged write is in the DB with its event; nothing exists that was not acked
    // except writes whose answer was lost with the connection (counted, never more than the
    // writer count per outage).
    let acked = acked.lock().expect("lock").clone();
    let mut db = stack.db();
    let present: i64 = db
        .query_one(
            "SELECT count(*) FROM reports r JOIN event_log e ON e.report_id = r.id \
             WHERE r.id::text = ANY($1)",
            &[&acked],
        )
        .expect("count")
        .get(0);
    assert_eq!(
        present as usize,
        acked.len(),
        "every 2xx write is committed with its event"
    );
    let (rows, log, _) = fingerprint(&mut db);
    assert_eq!(rows, log, "one event per report");
    assert!(
        rows as usize - acked.len() <= 4,
        "at most one in-flight write per writer without an answer"
    );
}

/// Two instances elect one publishing relay; when the leader is SIGKILLed the other takes
/// over, and writes made meanwhile reach the stream without anyone stepping in. (Takeover is
/// normally within a second; the deadlines are generous because this binary also runs the
/// fuzz targets, which keep both cores busy.)
#[test]
fn relay_leader_killed_follower_takes_over() {
    let stack = Stack::new("relay_failover");
    let second = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let leader_of = |port: u16| -> bool {
        http(port, "GET", "/metrics", &[], b"").is_ok_and(|r| {
            String::from_utf8_lossy(&r.body)
                .lines()
                .any(|l| l.starts_with("command_relay_leader") && l.ends_with(" 1"))
        })
    };
    wait_until("one relay leads", Duration::from_secs(30), || {
        leader_of(stack.svc.port) ^ leader_of(second.port)
    });
    let (leader, follower) = if leader_of(stack.svc.port) {
        (&stack.svc, &second)
    } else {
        (&second, &stack.svc)
    };
    assert_eq!(post(follower.port, &new_report(1)).status, 201);
    wait_until("the first event published", Duration::from_secs(30), || {
        stream_events(&stack.redis).len() == 1
    });

    leader.kill();
    for i in 2..=11 {
        assert_eq!(post(follower.port, &new_report(i)).status, 201);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while stream_events(&stack.redis).len() < 11 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not take over: {} events in the stream\nfollower log:\n{}",
            stream_events(&stack.redis).len(),
            follower.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(leader_of(follower.port), "the survivor now leads");
}

/// Issue 14 (7): after a command-DB restart, no write fails once `/ready` is 200 again. Two
/// instances share the DB, as behind nginx: both have pooled connections to the old server
/// process. Instance A's `/ready` turns 200; then 30 sequential POSTs, alternating between
/// the instances, must all be 201 — instance B's pool still holds only dead connections, and
/// each must be noticed and replaced: a create (one statement, no `BEGIN`) repeats its
/// statement on a fresh connection, which is a no-op if the dead one had committed it.
#[test]
fn writes_after_a_command_db_restart_all_succeed() {
    let cluster = PgCluster::start();
    let stack = Stack::on(&cluster, "db_restart");
    let a = stack.svc.port;
    let b_svc = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let b = b_svc.port;
    // Fill both pools: concurrent writes make each instance open several connections.
    let fill: Vec<_> = (0..8)
        .map(|t| {
            let port = if t % 2 == 0 { a } else { b };
            std::thread::spawn(move || {
                for i in 0..5 {
                    assert_eq!(post(port, &new_report(t * 10 + i)).status, 201);
                }
            })
        })
        .collect();
    for t in fill {
        t.join().expect("filler thread");
    }

    cluster.stop();
    cluster.start_again();
    wait_until("instance A ready again", Duration::from_secs(30), || {
        http(a, "GET", "/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    for i in 0..30 {
        let port = if i % 2 == 0 { b } else { a };
        let r = post(port, &new_report(1000 + i));
        assert_eq!(
            r.status,
            201,
            "POST {i} after the restart (instance {}): {:?}",
            if port == a { "A" } else { "B" },
            r.json()
        );
    }
    // B's /ready is honest too: a dead pooled connection is not a dead database.
    assert_eq!(
        http(b, "GET", "/ready", &[], b"").expect("ready").status,
        200
    );
    let mut db = stack.db();
    let (rows, log, _) = fingerprint(&mut db);
    assert_eq!(
        (rows, log),
        (70, 70),
        "every write exactly once, with its event"
    );
}

/// A create is one statement without `BEGIN`, so when its connection dies the service cannot
/// know whether it committed; it repeats the statement on another connection. The repeat must
/// then be a no-op when the first try committed: no second row, no second event — and the
/// service answers 201 because the row is there. Neither try notifies in its commit: the
/// relay's wake-up is sent after the commit (`wake.rs`), so notifying commits no longer
/// serialise the writes.
#[test]
fn a_repeated_create_statement_writes_once_and_never_notifies() {
    use postgres::fallible_iterator::FallibleIterator;
    use postgres::types::{ToSql, Type};

    let stack = Stack::new("create_repeat");
    let mut listener = stack.db();
    listener
        .batch_execute("LISTEN report_events")
        .expect("LISTEN");
    let mut db = stack.db();
    let before = fingerprint(&mut db);
    let now = time::OffsetDateTime::now_utc();
    let (id, event_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let none: Option<f64> = None;
    let no_text: Option<String> = None;
    let params: [(&(dyn ToSql + Sync), Type); 13] = [
        (&id, Type::UUID),
        (&"Jalan berlubang", Type::TEXT),
        (&"Lubang besar di depan sekolah", Type::TEXT),
        (&"infrastruktur", Type::TEXT),
        (&"pending", Type::TEXT),
        (&now, Type::TIMESTAMPTZ),
        (&none, Type::FLOAT8),
        (&none, Type::FLOAT8),
        (&no_text, Type::TEXT),
        (&no_text, Type::TEXT),
        (&event_id, Type::UUID),
        (&"ReportCreated", Type::TEXT),
        (&"{}", Type::TEXT),
    ];
    let first = db
        .query_typed(command::store::CREATE_SQL, &params)
        .expect("first try");
    let repeat = db
        .query_typed(command::store::CREATE_SQL, &params)
        .expect("repeat");
    assert_eq!((first.len(), repeat.len()), (1, 0), "rows returned");
    let after = fingerprint(&mut db);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (1, 1),
        "one report and one event"
    );
    // Notifications of one session arrive in commit order: anything before the marker was
    // sent by a try's commit.
    db.batch_execute("NOTIFY report_events, 'marker'")
        .expect("marker");
    let mut payloads = Vec::new();
    let mut notifications = listener.notifications();
    let mut it = notifications.timeout_iter(Duration::from_secs(30));
    while let Some(n) = it.next().expect("notification") {
        payloads.push(n.payload().to_string());
        if n.payload() == "marker" {
            break;
        }
    }
    assert_eq!(payloads, ["marker"], "the create statement does not notify");
}

//! Every query DB converges to the same read model, statistics exact, everything acked and
//! the stream trimmed below the lowest checkpoint.

use std::time::{Duration, Instant};

use shared::event::STREAM;
use shared::testkit::{http, wait_until, RedisServer};

use crate::support::*;

#[test]
fn three_dbs_converge_on_thousands_of_mixed_events() {
    // Given three fresh query DBs and a running projection
    let dbs: Vec<(&str, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, pg().create_db(&format!("converge_{n}"))))
        .collect();
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &dbs);
    let health = http(projection.port, "GET", "/health", &[], b"").expect("health");
    let body = health.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "reporting-projection");
    assert_eq!(body["instance"], "projection");

    // When a command side publishes ~3 000 creates/updates/deletes (with duplicates) in bursts
    let mut cmd = CommandSide::new(7);
    for _ in 0..6 {
        publish(&mut conn, &cmd.batch(500));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Then all three DBs hold exactly the command side's state, with exact statistics
    let expected = cmd.expected();
    assert!(expected.iter().any(|r| r.deleted) && expected.len() > 500);
    for (_, url) in &dbs {
        wait_converged(url, &expected, Duration::from_secs(30));
        // with the place columns saying what each row's doc says
        let mut c = postgres::Client::connect(url, postgres::NoTls).expect("connect");
        let (wrong, located) = place_mismatches(&mut c);
        assert_eq!(wrong, 0, "rows whose place columns disagree with doc");
        assert!(located > 100, "only {located} located rows");
    }
    // and everything is acked, the lag is zero and the stream is trimmed below the checkpoint
    wait_until("all entries acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    for (name, _) in &dbs {
        wait_until("lag 0", Duration::from_secs(5), || {
            metric(projection.port, "projection_lag_entries", Some(name)) == Some(0.0)
        });
        assert_eq!(
            metric(projection.port, "projection_db_up", Some(name)),
            Some(1.0)
        );
        // and the writer's time is accounted per stage: every batch takes the lock, upserts
        // rows, records history, moves the checkpoint and commits
        for stage in ["lock", "rows", "history", "checkpoint", "commit"] {
            let s = stage_seconds(projection.port, name, stage);
            assert!(s.is_some_and(|s| s > 0.0), "{name} {stage}: {s:?}");
        }
    }
    let start = Instant::now();
    wait_until("stream trimmed", Duration::from_secs(15), || {
        redis::cmd("XLEN")
            .arg(STREAM)
            .query::<i64>(&mut conn)
            .unwrap_or(-1)
            <= 1
    });
    eprintln!("trimmed after {:?}", start.elapsed());
    let mut c = pg().client("converge_a");
    let cp: (String, i64) = c
        .query_one(
            "SELECT entry_id, applied FROM checkpoint WHERE stream = $1",
            &[&STREAM],
        )
        .map(|r| (r.get(0), r.get(1)))
        .expect("checkpoint row");
    assert!(cp.1 >= 3000, "applied count {}", cp.1);
}

//! SIGKILL mid-run loses nothing: unacked entries are re-read after the restart and every DB
//! converges.

use std::time::Duration;

use shared::testkit::{wait_until, RedisServer};

use crate::support::*;

#[test]
fn killed_mid_run_and_restarted_converges() {
    // Given a projection applying a stream of events to three DBs
    let dbs: Vec<(&str, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, pg().create_db(&format!("crash_{n}"))))
        .collect();
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &dbs);
    let mut cmd = CommandSide::new(3);
    publish(&mut conn, &cmd.batch(1000));
    wait_until("some entries applied", Duration::from_secs(10), || {
        metric(projection.port, "projection_applied_total", Some("a")).unwrap_or(0.0) > 0.0
    });

    // When it is killed with SIGKILL in the middle of the work, more events arrive meanwhile,
    // and it is started again
    publish(&mut conn, &cmd.batch(500));
    projection.kill();
    let in_flight = pending(&mut conn);
    assert!(in_flight > 0, "the kill should hit work in flight");
    publish(&mut conn, &cmd.batch(500));
    projection.start_again();
    publish(&mut conn, &cmd.batch(200));

    // Then every DB converges and nothing stays pending
    let expected = cmd.expected();
    for (_, url) in &dbs {
        wait_converged(url, &expected, Duration::from_secs(30));
    }
    wait_until("all acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
}

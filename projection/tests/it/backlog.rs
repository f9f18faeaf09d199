//! A backlog that piled up while the projection was stopped is read from the stream once and
//! handed to every writer through the fan-out, paced to the writers: no writer is overrun and
//! detached, none reads it again on its own, and every DB converges.

use std::time::Duration;

use shared::testkit::{wait_until, RedisServer};

use crate::support::*;

/// More than a writer's channel holds (`WRITER_QUEUE_BATCHES` × `READ_COUNT` = 16 384), so a
/// reader that did not pace itself would overrun every writer.
const BACKLOG: usize = 20_000;

#[test]
fn a_backlog_is_read_once_and_paced_to_the_writers() {
    // Given three query DBs the projection has already applied a few events to, and the
    // projection stopped
    let dbs: Vec<(&str, String)> = ["a", "b", "c"]
        .iter()
        .map(|n| (*n, pg().create_db(&format!("backlog_{n}"))))
        .collect();
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &dbs);
    let mut cmd = CommandSide::new(11);
    publish(&mut conn, &cmd.batch(100));
    for (_, url) in &dbs {
        wait_converged(url, &cmd.expected(), Duration::from_secs(30));
    }
    wait_until("first events acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    assert_eq!(projection.terminate(), Some(0));

    // When a backlog larger than a writer's channel is published and the projection starts
    publish(&mut conn, &cmd.batch(BACKLOG));
    projection.start_again();

    // Then every DB converges, everything is acked,
    let expected = cmd.expected();
    for (_, url) in &dbs {
        wait_converged(url, &expected, Duration::from_secs(120));
    }
    wait_until("all acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    // and no writer read the backlog itself: it came through the fan-out, and none was detached
    for (name, _) in &dbs {
        assert_eq!(
            metric(projection.port, "projection_caught_up_total", Some(name)),
            Some(0.0),
            "{name} read entries itself; log:\n{}",
            projection.log()
        );
    }
    assert!(
        !projection.log().contains("detached, it catches up"),
        "a writer was overrun:\n{}",
        projection.log()
    );
}

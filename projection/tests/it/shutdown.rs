//! SIGTERM stops the projection gracefully: the batch in flight is committed, exit code 0.

use std::time::Duration;

use shared::testkit::RedisServer;

use crate::support::*;

#[test]
fn sigterm_exits_zero_after_committing() {
    // Given a projection with work in flight
    let url = pg().create_db("shutdown");
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection("projection", &redis, &[("main", url.clone())]);
    let mut cmd = CommandSide::new(13);
    publish(&mut conn, &cmd.batch(300));
    wait_converged(&url, &cmd.expected(), Duration::from_secs(15));
    publish(&mut conn, &cmd.batch(300));

    // When it gets SIGTERM
    let code = projection.terminate();

    // Then it exits 0 and says it stopped
    assert_eq!(code, Some(0), "log:\n{}", projection.log());
    assert!(
        projection.log().contains("projection stopped"),
        "{}",
        projection.log()
    );
    // and whatever it did not finish is picked up by the next run
    let again = start_projection("projection", &redis, &[("main", url.clone())]);
    wait_converged(&url, &cmd.expected(), Duration::from_secs(15));
    drop(again);
}

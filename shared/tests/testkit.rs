//! The harness itself works: a real cluster and a real Redis start, answer, stop and restart,
//! and the migrations apply twice without error (they are idempotent).

use shared::testkit::{PgCluster, RedisServer};

#[test]
fn postgres_and_redis_start_restart_and_migrate() {
    let pg = PgCluster::start();
    let url = pg.create_db("harness");
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    shared::migrate::command_db(&mut client).unwrap();
    shared::migrate::command_db(&mut client).unwrap();
    shared::migrate::query_db(&mut client).unwrap();
    shared::migrate::query_db(&mut client).unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM event_log", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(client);
    pg.stop();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    pg.start_again();
    pg.kill();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_err());
    pg.start_again();
    assert!(postgres::Client::connect(&url, postgres::NoTls).is_ok());

    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis up");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    redis.stop();
    assert!(redis.connection().is_none());
    redis.start_again();
    let mut conn = redis.connection().expect("redis up again");
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
    assert_eq!(v.as_deref(), Some("v"), "AOF keeps data across a restart");
}

//! Bounded retention (SPEC §7.4): a DB away for longer than the bound is stale — it stops
//! holding back acks and trims, the stream stays bounded, the DB is marked so no query
//! instance reads it — and a DB whose checkpoint is older than the trimmed stream (a restored
//! backup) is recognised as stale the moment the projection connects to it.

use std::time::Duration;

use shared::testkit::{wait_until, PgCluster, RedisServer};

use crate::support::*;

/// Small enough that a test outgrows it in a second.
const BOUND: usize = 100;

#[test]
fn a_db_away_beyond_the_bound_is_stale_and_the_stream_stays_bounded() {
    // Given two query DBs on two clusters and a projection with a 100-entry bound
    let clusters: Vec<PgCluster> = (0..2).map(|_| PgCluster::start()).collect();
    let dbs: Vec<(&str, String)> = ["primary", "replica"]
        .iter()
        .zip(&clusters)
        .map(|(n, c)| (*n, c.create_db("reports_read")))
        .collect();
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection_with(
        "projection",
        &redis,
        &dbs,
        &[("STREAM_MAX_ENTRIES", BOUND.to_string())],
    );
    let mut cmd = CommandSide::new(31);
    publish(&mut conn, &cmd.batch(50));
    for (_, url) in &dbs {
        wait_converged(url, &cmd.expected(), Duration::from_secs(20));
    }

    // When the replica's database stops and ten times the bound flows
    clusters[1].stop();
    wait_until("replica reported down", Duration::from_secs(10), || {
        metric(projection.port, "projection_db_up", Some("replica")) == Some(0.0)
    });
    for _ in 0..10 {
        publish(&mut conn, &cmd.batch(BOUND));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Then the replica is declared stale, the primary stays current, and neither the pending
    // list nor the stream keeps the replica's backlog
    wait_until("replica stale", Duration::from_secs(10), || {
        metric(projection.port, "projection_db_stale", Some("replica")) == Some(1.0)
    });
    wait_converged(&dbs[0].1, &cmd.expected(), Duration::from_secs(20));
    wait_until("all acked", Duration::from_secs(10), || {
        pending(&mut conn) == 0
    });
    // Trimming runs every 5 s.
    wait_until("stream trimmed", Duration::from_secs(15), || {
        stream_len(&mut conn) < BOUND as i64
    });

    // When the replica's database returns
    clusters[1].start_again();

    // Then the projection marks it stale in the DB itself (no query instance reads it) and
    // applies nothing to it from the trimmed stream
    wait_until("replica marked in its DB", Duration::from_secs(15), || {
        stale_mark(&dbs[1].1)
    });
    assert_eq!(
        metric(projection.port, "projection_db_stale", Some("primary")),
        Some(0.0)
    );
}

#[test]
fn a_restored_backup_older_than_the_stream_is_stale_at_connect() {
    // Given a projection that applied a stream which was then trimmed
    let primary = pg().create_db("restored_primary");
    let restored = pg().create_db("restored_replica");
    let dbs = [("primary", primary.clone()), ("replica", restored.clone())];
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let extra = [("STREAM_MAX_ENTRIES", BOUND.to_string())];
    let projection = start_projection_with("projection", &redis, &dbs, &extra);
    let mut cmd = CommandSide::new(32);
    publish(&mut conn, &cmd.batch(60));
    for (_, url) in &dbs {
        wait_converged(url, &cmd.expected(), Duration::from_secs(20));
    }
    // (an old copy of the replica: its checkpoint as it was after the first 10 entries)
    let mut c = postgres::Client::connect(&restored, postgres::NoTls).expect("connect");
    let first: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(shared::event::STREAM)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(10)
        .query(&mut conn)
        .expect("xrange");
    let old_checkpoint = first.last().map(|(id, _)| id.clone()).expect("entries");
    publish(&mut conn, &cmd.batch(60));
    wait_converged(&primary, &cmd.expected(), Duration::from_secs(20));
    wait_until("stream trimmed", Duration::from_secs(15), || {
        stream_len(&mut conn) < 60
    });
    assert!(!stale_mark(&restored));

    // When the projection restarts and finds the replica restored from the old copy: an old
    // checkpoint, and no stale mark (the backup was taken while it was current)
    drop(projection);
    c.execute(
        "UPDATE checkpoint SET entry_id = $1, stale = false",
        &[&old_checkpoint],
    )
    .expect("restore");
    let projection = start_projection_with("projection", &redis, &dbs, &extra);

    // Then it is judged stale at connect and marked in the DB; the primary is not
    wait_until("restored replica marked", Duration::from_secs(15), || {
        stale_mark(&restored)
    });
    assert_eq!(
        metric(projection.port, "projection_db_stale", Some("replica")),
        Some(1.0)
    );
    assert!(!stale_mark(&primary));
    publish(&mut conn, &cmd.batch(10));
    wait_converged(&primary, &cmd.expected(), Duration::from_secs(20));
}

#[test]
fn a_stale_db_is_rebuilt_by_the_projection_and_rejoins_while_events_flow() {
    // Given two query DBs, a command DB, and a projection with a 100-entry bound that knows
    // the command DB
    let clusters: Vec<PgCluster> = (0..2).map(|_| PgCluster::start()).collect();
    let dbs: Vec<(&str, String)> = ["primary", "replica"]
        .iter()
        .zip(&clusters)
        .map(|(n, c)| (*n, c.create_db("reports_read")))
        .collect();
    let command_url = pg().create_db("rebuild_command");
    let mut command = postgres::Client::connect(&command_url, postgres::NoTls).expect("connect");
    shared::migrate::command_db(&mut command).expect("command schema");
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let projection = start_projection_with(
        "projection",
        &redis,
        &dbs,
        &[
            ("STREAM_MAX_ENTRIES", BOUND.to_string()),
            ("COMMAND_DATABASE_URL", command_url.clone()),
        ],
    );
    let mut cmd = CommandSide::new(33);
    let mut write = |cmd: &mut CommandSide, conn: &mut redis::Connection, n: usize| {
        let events = cmd.batch(n);
        cmd.write_command_db(&mut command);
        publish(conn, &events);
    };
    write(&mut cmd, &mut conn, 50);
    for (_, url) in &dbs {
        wait_converged(url, &cmd.expected(), Duration::from_secs(20));
    }

    // When the replica is away while ten times the bound flows, and comes back while events
    // keep flowing
    clusters[1].stop();
    wait_until("replica reported down", Duration::from_secs(10), || {
        metric(projection.port, "projection_db_up", Some("replica")) == Some(0.0)
    });
    for _ in 0..10 {
        write(&mut cmd, &mut conn, BOUND);
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_until("replica stale", Duration::from_secs(10), || {
        metric(projection.port, "projection_db_stale", Some("replica")) == Some(1.0)
    });
    wait_until("stream trimmed", Duration::from_secs(15), || {
        stream_len(&mut conn) < BOUND as i64
    });
    clusters[1].start_again();
    for _ in 0..10 {
        write(&mut cmd, &mut conn, 20);
        std::thread::sleep(Duration::from_millis(100));
    }

    // Then the projection rebuilds it from the command DB by itself, catches it up and lets it
    // rejoin: it holds the full read model, the stale mark is gone, and it stays current
    wait_until("replica rebuilt", Duration::from_secs(30), || {
        metric(
            projection.port,
            "projection_rebuilds_total",
            Some("replica"),
        ) >= Some(1.0)
    });
    wait_converged(&dbs[1].1, &cmd.expected(), Duration::from_secs(30));
    wait_until("stale mark cleared", Duration::from_secs(15), || {
        !stale_mark(&dbs[1].1)
            && metric(projection.port, "projection_db_stale", Some("replica")) == Some(0.0)
    });
    write(&mut cmd, &mut conn, 30);
    for (_, url) in &dbs {
        wait_converged(url, &cmd.expected(), Duration::from_secs(20));
    }
    assert_eq!(
        metric(
            projection.port,
            "projection_rebuilds_total",
            Some("primary")
        ),
        Some(0.0)
    );
}

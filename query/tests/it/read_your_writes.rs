//! Read your own write through the whole pipeline: a write to the real command service
//! (in-process, with its relay), the real projection (in-process) applying it, and an
//! immediate read from the query binary with `min_version` returns the new version.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shared::config::NamedDb;
use shared::testkit::{free_port, http, wait_until, RedisServer};

use crate::support::{get, start_query, PG};

#[test]
fn a_write_then_an_immediate_read_with_its_version_sees_it() {
    let command_db = PG.create_db("ryw_command");
    let query_db = PG.create_db("ryw_query");
    let redis = RedisServer::start();
    let command_port = free_port();
    let _command = command::start(command::Config {
        instance: "command-ryw".into(),
        port: command_port,
        database_url: command_db,
        redis_url: redis.url(),
        workers: 2,
        stack_size: 128 * 1024,
        pool_size: 2,
        relay_batch: 500,
        relay_poll: Duration::from_millis(500),
        statement_timeout: Duration::from_secs(5),
        tokens: command::auth::Tokens::default(),
    })
    .expect("start command");
    wait_until("command /ready", Duration::from_secs(20), || {
        http(command_port, "GET", "/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let projection_config = projection::config::Config {
        instance_id: "projection-ryw".into(),
        port: free_port(),
        redis_url: redis.url(),
        query_dbs: vec![NamedDb {
            name: "query-db-primary".into(),
            url: query_db.clone(),
        }],
        command_url: None,
        bound: projection::retention::Bound {
            max_entries: projection::config::STREAM_MAX_ENTRIES_DEFAULT,
            max_age: Duration::from_secs(projection::config::STREAM_MAX_AGE_SECS_DEFAULT),
        },
        // The deployed cadence: read-your-writes must hold with it.
        commit_interval: Duration::from_millis(projection::config::COMMIT_INTERVAL_MS_DEFAULT),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let projection_stop = stop.clone();
    let projection =
        std::thread::spawn(move || projection::run(projection_config, projection_stop));
    // The projection applies the schema; the query service needs it before it can answer.
    wait_until("query schema applied", Duration::from_secs(20), || {
        postgres::Client::connect(&query_db, postgres::NoTls)
            .and_then(|mut c| c.query("SELECT 1 FROM checkpoint LIMIT 1", &[]))
            .is_ok()
    });
    let query = start_query(&format!("query-db-primary={query_db}"), &[]);

    let created = http(
        command_port,
        "POST",
        "/reports",
        &[],
        json!({"title": "Lampu jalan mati", "description": "Jl. Merdeka", "category": "keamanan"})
            .to_string()
            .as_bytes(),
    )
    .expect("create");
    assert_eq!(created.status, 201);
    let id = created.json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let first = get(&query, &format!("/reports/{id}?min_version=1"));
    assert_eq!(first.status, 200, "{:?}", first.json());
    assert_eq!(first.json()["data"]["version"], 1);

    for round in 2..=6 {
        let updated = http(
            command_port,
            "PUT",
            &format!("/reports/{id}"),
            &[],
            json!({"title": format!("Lampu jalan mati ({round})")})
                .to_string()
                .as_bytes(),
        )
        .expect("update");
        assert_eq!(updated.status, 200);
        let version = updated.json()["data"]["version"].as_i64().expect("version");
        // Immediately, with no sleep: the bounded wait covers relay + projection.
        let read = get(&query, &format!("/reports/{id}?min_version={version}"));
        assert_eq!(read.status, 200, "round {round}: {:?}", read.json());
        assert_eq!(read.json()["data"]["version"], version);
        assert_eq!(
            read.json()["data"]["title"],
            format!("Lampu jalan mati ({round})")
        );
    }

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    projection
        .join()
        .expect("projection thread")
        .expect("projection stops cleanly");
}

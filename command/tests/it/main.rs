//! Integration tests of the command service against real PostgreSQL and Redis: the binary is
//! started as a child process on a free port, exactly as in production.

mod auth;
mod bad_input;
mod concurrency;
mod faults;
mod fuzz;
mod hostile;
mod open311;
mod place;
mod relay;
mod roundtrip;
mod startup;
mod wake;

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use shared::event::{Event, STREAM};
use shared::testkit::{http, HttpResponse, PgCluster, RedisServer, Service};

/// One PostgreSQL cluster for the tests that do not kill it; each test gets its own database.
fn pg() -> &'static PgCluster {
    static PG: OnceLock<PgCluster> = OnceLock::new();
    PG.get_or_init(PgCluster::start)
}

/// A command service with its own database and Redis.
struct Stack {
    db_url: String,
    redis: RedisServer,
    svc: Service,
}

impl Stack {
    fn new(db_name: &str) -> Stack {
        Self::on(pg(), db_name)
    }

    fn on(cluster: &PgCluster, db_name: &str) -> Stack {
        let db_url = cluster.create_db(db_name);
        let redis = RedisServer::start();
        let svc = start_command(&db_url, &redis.url(), "command-1");
        Stack { db_url, redis, svc }
    }

    fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.db_url, postgres::NoTls).expect("connect to test db")
    }
}

fn start_command(db_url: &str, redis_url: &str, instance: &str) -> Service {
    start_command_with(db_url, redis_url, instance, &[])
}

fn start_command_with(
    db_url: &str,
    redis_url: &str,
    instance: &str,
    extra: &[(&str, String)],
) -> Service {
    let mut env = vec![
        ("COMMAND_DATABASE_URL", db_url.to_owned()),
        ("REDIS_URL", redis_url.to_owned()),
        ("INSTANCE_ID", instance.to_owned()),
        ("MAY_WORKERS", "4".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let svc = Service::start(env!("CARGO_BIN_EXE_command"), &env);
    // Writes need the schema: wait for readiness, not just liveness.
    shared::testkit::wait_until("command /ready", Duration::from_secs(20), || {
        http(svc.port, "GET", "/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    svc
}

fn post(port: u16, body: &Value) -> HttpResponse {
    http(port, "POST", "/reports", &[], body.to_string().as_bytes()).expect("POST /reports")
}

fn put(port: u16, id: &str, body: &Value, if_match: Option<i64>) -> HttpResponse {
    let tag = if_match.map(|v| v.to_string());
    let headers: Vec<(&str, &str)> = tag.iter().map(|t| ("If-Match", t.as_str())).collect();
    http(
        port,
        "PUT",
        &format!("/reports/{id}"),
        &headers,
        body.to_string().as_bytes(),
    )
    .expect("PUT /reports/{id}")
}

fn delete(port: u16, id: &str, if_match: Option<i64>) -> HttpResponse {
    let tag = if_match.map(|v| v.to_string());
    let headers: Vec<(&str, &str)> = tag.iter().map(|t| ("If-Match", t.as_str())).collect();
    http(port, "DELETE", &format!("/reports/{id}"), &headers, b"").expect("DELETE /reports/{id}")
}

fn new_report(i: usize) -> Value {
    let categories = [
        "kebersihan",
        "kriminalitas",
        "infrastruktur",
        "kesehatan",
        "keamanan",
        "lainnya",
    ];
    serde_json::json!({
        "title": format!("Laporan {i}"),
        "description": format!("Deskripsi laporan nomor {i}"),
        "category": categories[i % categories.len()],
    })
}

/// Every entry of the stream, decoded, in stream order.
fn stream_events(redis: &RedisServer) -> Vec<Event> {
    let Some(mut conn) = redis.connection() else {
        return Vec::new();
    };
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(STREAM)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap_or_default();
    reply
        .ids
        .iter()
        .map(|entry| {
            let fields: Vec<(&str, Vec<u8>)> = entry
                .map
                .iter()
                .map(|(k, v)| {
                    let bytes = match v {
                        redis::Value::BulkString(b) => b.clone(),
                        other => panic!("unexpected stream value {other:?}"),
                    };
                    (k.as_str(), bytes)
                })
                .collect();
            Event::from_fields(fields.iter().map(|(k, v)| (*k, v.as_slice())))
                .expect("stream entry decodes")
        })
        .collect()
}

/// Row count, event count and the sum of versions: a fingerprint that changes with any write.
fn fingerprint(client: &mut postgres::Client) -> (i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM reports), (SELECT count(*) FROM event_log), \
             (SELECT coalesce(sum(version), 0)::bigint FROM reports)",
            &[],
        )
        .expect("fingerprint query");
    (row.get(0), row.get(1), row.get(2))
}

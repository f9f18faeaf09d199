//! End to end through the real command side: 5 000 mixed creates, updates and deletes over
//! HTTP to the command service (in-process, with its relay) → Redis → the projection binary
//! → three query DBs. Then every query DB equals the command DB (rows, versions, tombstones)
//! and its statistics equal a GROUP BY over its read model.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shared::model::{Category, Report, Status};
use shared::testkit::{free_port, http, wait_until, RedisServer};

use crate::support::{pg, start_projection, wait_converged, Rng, RowView};

/// Given an empty system, when 5 000 mixed writes go through the command service, then all
/// three query DBs converge to the command DB's state.
#[test]
fn five_thousand_writes_through_the_command_service() {
    let cluster = pg();
    let command_db = cluster.create_db("e2e_command");
    let dbs: Vec<(&str, String)> = vec![
        ("query-db-primary", cluster.create_db("e2e_q1")),
        ("query-db-replica1", cluster.create_db("e2e_q2")),
        ("query-db-replica2", cluster.create_db("e2e_q3")),
    ];
    let redis = RedisServer::start();
    let port = free_port();
    let _command = command::start(command::Config {
        instance: "command-e2e".into(),
        port,
        database_url: command_db.clone(),
        redis_url: redis.url(),
        workers: 4,
        stack_size: 128 * 1024,
        pool_size: 4,
        relay_batch: 500,
        relay_poll: Duration::from_millis(500),
        statement_timeout: Duration::from_secs(5),
        tokens: command::auth::Tokens::default(),
    })
    .expect("start the command service");
    wait_until("command /ready", Duration::from_secs(20), || {
        http(port, "GET", "/ready", &[], b"").is_ok_and(|r| r.status == 200)
    });
    let _projection = start_projection("projection-e2e", &redis, &dbs);

    // Eight clients; each creates reports and then updates or deletes ones it created, so the
    // mix has category and status changes and deletes of every kind.
    const WRITES: usize = 5_000;
    const CLIENTS: usize = 8;
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (done, failures) = (done.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(c as u64 + 1);
                let mut mine: Vec<String> = Vec::new();
                for i in 0..WRITES / CLIENTS {
                    let roll = rng.below(100);
                    let (status, text) = if mine.len() < 5 || roll < 45 {
                        let cat = Category::ALL[rng.below(6) as usize];
                        let r = http(
                            port,
                            "POST",
                            "/reports",
                            &[],
                            json!({"title": format!("c{c} laporan {i}"), "description": "uji", "category": cat.as_str()})
                                .to_string()
                                .as_bytes(),
                        );
                        match r {
                            Ok(r) if r.status == 201 => {
                                mine.push(r.json()["data"]["id"].as_str().unwrap_or_default().to_owned());
                                (201, String::new())
                            }
                            Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
                            Err(e) => (0, e.to_string()),
                        }
                    } else {
                        let id = mine[rng.below(mine.len() as u64) as usize].clone();
                        let body = match roll % 3 {
                            0 => json!({"status": Status::ALL[rng.below(4) as usize].as_str()}),
                            1 => json!({"category": Category::ALL[rng.below(6) as usize].as_str()}),
                            _ => json!({"title": format!("ubah {i}"), "status": "resolved"}),
                        };
                        let r = if roll >= 90 {
                            mine.retain(|m| *m != id);
                            http(port, "DELETE", &format!("/reports/{id}"), &[], b"")
                        } else {
                            http(port, "PUT", &format!("/reports/{id}"), &[], body.to_string().as_bytes())
                        };
                        match r {
                            Ok(r) if r.status == 200 => (200, String::new()),
                            Ok(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
                            Err(e) => (0, e.to_string()),
                        }
                    };
                    if !(200..300).contains(&status) {
                        failures.lock().expect("lock").push(format!("{status}: {text}"));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().expect("lock").clone();
    assert!(
        failures.is_empty(),
        "{} writes failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert_eq!(done.load(Ordering::Relaxed), WRITES);

    let expected = command_state(&command_db);
    assert!(
        expected.iter().any(|r| r.deleted),
        "the mix includes deletes"
    );
    for (name, url) in &dbs {
        wait_converged(url, &expected, Duration::from_secs(60));
        eprintln!("{name}: converged ({} reports)", expected.len());
    }
}

/// The command DB's reports in the shape the read model is compared in.
fn command_state(url: &str) -> Vec<RowView> {
    let mut client = postgres::Client::connect(url, postgres::NoTls).expect("command db");
    client
        .query(
            "SELECT id, title, description, category, status, version, created_at, updated_at, \
             deleted_at IS NOT NULL, lat, lng, address, media_url FROM reports ORDER BY id",
            &[],
        )
        .expect("reports")
        .iter()
        .map(|r| {
            let deleted: bool = r.get(8);
            let category: String = r.get(3);
            let status: String = r.get(4);
            let report = Report {
                id: r.get(0),
                title: r.get(1),
                description: r.get(2),
                category: category.parse().expect("category"),
                status: status.parse().expect("status"),
                version: r.get(5),
                created_at: r.get(6),
                updated_at: r.get(7),
                location: match (r.get(9), r.get(10)) {
                    (Some(lat), Some(lng)) => Some(shared::model::Location { lat, lng }),
                    _ => None,
                },
                address: r.get(11),
                media_url: r.get(12),
            };
            RowView {
                id: report.id,
                version: report.version,
                deleted,
                live: (!deleted).then_some((category, status, report)),
            }
        })
        .collect()
}

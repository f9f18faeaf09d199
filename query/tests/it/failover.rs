//! Acceptance (4): with the preferred query DB stopped, reads keep answering 200 from the
//! other one; when it is back, traffic returns to it. Both down: 503, and recovery by itself.
//! Primary and secondary are separate PostgreSQL clusters, stopped and started for real.

use std::time::{Duration, Instant};

use shared::testkit::{wait_until, PgCluster, Service};

use crate::support::{fresh_db_on, get, seed};

fn serving(svc: &Service) -> String {
    let m = get(svc, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/plain")));
    let text = String::from_utf8_lossy(&m.body).into_owned();
    text.lines()
        .find(|l| l.starts_with("query_db_serving{") && l.ends_with(" 1"))
        .and_then(|l| l.split("db=\"").nth(1))
        .and_then(|l| l.split('"').next())
        .unwrap_or("none")
        .to_owned()
}

#[test]
fn reads_survive_the_preferred_db_and_return_to_it() {
    let primary = PgCluster::start();
    let secondary = PgCluster::start();
    let p_url = fresh_db_on(&primary, "failover");
    let s_url = fresh_db_on(&secondary, "failover");
    let reports = seed(&mut primary.client("failover"), 30);
    for r in &reports {
        crate::support::apply(&mut secondary.client("failover"), r);
    }
    let svc = crate::support::start_query(&format!("primary={p_url},secondary={s_url}"), &[]);
    let one = format!("/reports/{}", reports[0].id);

    let r = get(&svc, "/reports");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-query-db"), Some("primary"));
    assert_eq!(serving(&svc), "primary");

    primary.stop();
    // Every read while the primary is down is a 200, served by the secondary.
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        for path in ["/reports", one.as_str(), "/statistics"] {
            let r = get(&svc, path);
            assert_eq!(
                r.status,
                200,
                "{path} with primary down: {}\n{}",
                String::from_utf8_lossy(&r.body),
                svc.log()
            );
            assert_eq!(r.header("x-query-db"), Some("secondary"), "{path}");
            n += 1;
        }
    }
    assert!(n > 10, "only {n} reads in 3 s");
    assert_eq!(serving(&svc), "secondary");
    assert_eq!(get(&svc, "/ready").status, 200);
    let metrics = String::from_utf8_lossy(&get(&svc, "/metrics").body).into_owned();
    assert!(
        metrics.contains("query_failovers_total{instance=\"query-test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("query_db_up{instance=\"query-test\",db=\"primary\"} 0"),
        "{metrics}"
    );

    primary.start_again();
    wait_until(
        "traffic back on the primary",
        Duration::from_secs(10),
        || get(&svc, "/reports").header("x-query-db") == Some("primary"),
    );
    assert_eq!(serving(&svc), "primary");
    for path in ["/reports", one.as_str(), "/statistics"] {
        let r = get(&svc, path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("x-query-db"), Some("primary"), "{path}");
    }

    // Both down: 503 with Retry-After, /health still 200; then it recovers by itself.
    primary.stop();
    secondary.stop();
    wait_until(
        "not ready with both DBs down",
        Duration::from_secs(10),
        || get(&svc, "/ready").status == 503,
    );
    let r = get(&svc, "/reports");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(get(&svc, "/health").status, 200);
    secondary.start_again();
    wait_until("reads from the secondary", Duration::from_secs(10), || {
        let r = get(&svc, "/reports");
        r.status == 200 && r.header("x-query-db") == Some("secondary")
    });
    primary.start_again();
    wait_until("back on the primary", Duration::from_secs(10), || {
        get(&svc, one.as_str()).header("x-query-db") == Some("primary")
    });
}

/// Issue 14 (6): a statement cancelled on the preferred DB (SQLSTATE 57014, what its
/// statement timeout raises) answers 503 for that request only: the DB is not marked down,
/// nothing fails over, and the next read is served by the same DB. The read is held on a
/// table lock and cancelled with `pg_cancel_backend`, which raises the same SQLSTATE at once
/// instead of after the 5 s timeout.
#[test]
fn a_cancelled_statement_is_a_503_not_a_failover() {
    let p_url = crate::support::fresh_db("cancel_primary");
    let s_url = crate::support::fresh_db("cancel_secondary");
    let reports = seed(&mut crate::support::PG.client("cancel_primary"), 3);
    for r in &reports {
        crate::support::apply(&mut crate::support::PG.client("cancel_secondary"), r);
    }
    let svc = crate::support::start_query(&format!("primary={p_url},secondary={s_url}"), &[]);
    let one = format!("/reports/{}", reports[0].id);
    assert_eq!(get(&svc, &one).header("x-query-db"), Some("primary"));

    let mut locker = crate::support::PG.client("cancel_primary");
    let mut lock = locker.transaction().expect("begin");
    lock.batch_execute("LOCK TABLE read_reports IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let port = svc.port;
    // A report not read before: `one` is answered from memory now (`cache.rs`), without
    // touching the locked table.
    let path = format!("/reports/{}", reports[1].id);
    let blocked = std::thread::spawn(move || {
        shared::testkit::http(port, "GET", &path, &[], b"").expect("an answer")
    });
    let mut admin = crate::support::PG.client("cancel_primary");
    // The read first waits for its point-read round (`points.rs`), whose statement waits on
    // the lock too; after the round's bound it reads on a pooled connection of its own. That
    // statement is the one cancelled here (the round's connection is `query-point-reads`).
    let waiting = |admin: &mut postgres::Client| -> Vec<i32> {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE '%read_reports%' \
                 AND application_name <> 'query-point-reads'",
                &[],
            )
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    wait_until(
        "the read waits on the lock",
        Duration::from_secs(10),
        || !waiting(&mut admin).is_empty(),
    );
    for pid in waiting(&mut admin) {
        admin
            .execute("SELECT pg_cancel_backend($1)", &[&pid])
            .expect("cancel");
    }
    let answer = blocked.join().expect("reader thread");
    lock.rollback().expect("unlock");

    assert_eq!(
        answer.status,
        503,
        "the cancelled read: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.header("retry-after"), Some("1"));
    let error = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("statement cancelled"), "{error}");
    // Not an outage: still up, still serving, no failover, and the next read is its own.
    let metrics = String::from_utf8_lossy(&get(&svc, "/metrics").body).into_owned();
    assert!(
        metrics.contains("query_db_up{instance=\"query-test\",db=\"primary\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("query_failovers_total{instance=\"query-test\"} 0"),
        "{metrics}"
    );
    assert_eq!(serving(&svc), "primary");
    let next = get(&svc, &one);
    assert_eq!(next.status, 200);
    assert_eq!(next.header("x-query-db"), Some("primary"));
}

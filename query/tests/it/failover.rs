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

//! SPEC §7.4: a stale read model is never served. A DB the projection marked stale, or one
//! whose checkpoint is far behind the other reachable DBs (a restored backup the projection has
//! not looked at yet), is skipped; `/ready` and `/metrics` say so; with only stale DBs left
//! reads get 503; when the mark goes, the DB serves again.

use std::time::Duration;

use shared::testkit::wait_until;

use crate::support::{fresh_db, get, seed, start_query, PG};

fn checkpoint(db: &str, position: i64, stale: bool) {
    PG.client(db)
        .execute(
            "INSERT INTO checkpoint (stream, entry_id, position, updated_at, stale) \
             VALUES ('report-events', '1-0', $1, now(), $2) \
             ON CONFLICT (stream) DO UPDATE SET position = $1, stale = $2",
            &[&position, &stale],
        )
        .expect("checkpoint");
}

fn metrics(svc: &shared::testkit::Service) -> String {
    String::from_utf8_lossy(&get(svc, "/metrics").body).into_owned()
}

#[test]
fn stale_dbs_are_never_read_and_ready_says_so() {
    // Given a preferred and a second query DB holding the same reports, both current
    let p_url = fresh_db("stale_preferred");
    let s_url = fresh_db("stale_second");
    let reports = seed(&mut PG.client("stale_preferred"), 5);
    for r in &reports {
        crate::support::apply(&mut PG.client("stale_second"), r);
    }
    checkpoint("stale_preferred", 1_000, false);
    checkpoint("stale_second", 1_000, false);
    let svc = start_query(&format!("preferred={p_url},second={s_url}"), &[]);
    assert_eq!(
        get(&svc, "/reports").header("x-query-db"),
        Some("preferred")
    );

    // When the projection marks the preferred DB stale
    checkpoint("stale_preferred", 1_000, true);

    // Then reads move to the second DB, and /ready and /metrics name the stale one
    wait_until("reads leave the stale DB", Duration::from_secs(5), || {
        get(&svc, "/reports").header("x-query-db") == Some("second")
    });
    let ready = get(&svc, "/ready");
    assert_eq!(ready.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&ready.body).expect("json");
    assert_eq!(body["data"]["databases"][0]["stale"], true, "{body}");
    assert_eq!(body["data"]["databases"][1]["stale"], false, "{body}");
    let m = metrics(&svc);
    assert!(
        m.contains("query_db_stale{instance=\"query-test\",db=\"preferred\"} 1"),
        "{m}"
    );

    // When the second DB is a restored backup far behind (unmarked) and the preferred one is
    // rebuilt and current again
    checkpoint("stale_second", 1, false);
    checkpoint("stale_preferred", 1_000_000, false);

    // Then the backup is stale by comparison and never read
    wait_until("the backup is recognised", Duration::from_secs(5), || {
        metrics(&svc).contains("query_db_stale{instance=\"query-test\",db=\"second\"} 1")
    });
    for _ in 0..20 {
        let r = get(&svc, "/reports");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-query-db"), Some("preferred"));
    }

    // When every reachable DB is stale
    checkpoint("stale_preferred", 1_000_000, true);

    // Then nothing stale is served: 503, and /ready says why
    wait_until("no DB serves", Duration::from_secs(5), || {
        get(&svc, "/ready").status == 503
    });
    let r = get(&svc, "/reports");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    let ready = String::from_utf8_lossy(&get(&svc, "/ready").body).into_owned();
    assert!(ready.contains("preferred (stale)"), "{ready}");
}

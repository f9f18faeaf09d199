//! The response cache (SPEC §7.3, issue 13 point 1): lists and statistics from memory, never
//! staler than the query DB; `If-None-Match` → 304 without the DB; a failover never serves
//! the first DB's entries. Real PostgreSQL, the real `query` binary with its default `QUERY_CACHE=on`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::model::{Category, Status};
use shared::testkit::{http, signal, wait_until, HttpResponse, PgCluster, Service};

use crate::support::{apply, fresh_db, fresh_db_on, get, get_with, report, seed, start_query, PG};

/// The query binary reading `dbs` (`name=url,…`) with a listener on each of them.
fn start_cached(dbs: &str) -> Service {
    start_query(dbs, &[("QUERY_CACHE", "on".to_owned())])
}

/// Waits until the listener of the DB serving `path` is up: the answer carries an `ETag`.
fn wait_cached(svc: &Service, path: &str) -> String {
    let mut etag = None;
    wait_until(
        "a cached answer with an ETag",
        Duration::from_secs(10),
        || {
            etag = get(svc, path).header("etag").map(str::to_owned);
            etag.is_some()
        },
    );
    etag.unwrap_or_default()
}

/// The total number of reports a `/statistics` answer counts.
fn stats_total(r: &HttpResponse) -> i64 {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["total_count"].as_i64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(-1)
}

/// The number of live reports the DB itself counts right now.
fn db_total(client: &mut postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(count), 0)::bigint FROM statistics",
            &[],
        )
        .expect("db total")
        .get(0)
}

#[test]
fn a_read_after_a_commit_never_gets_the_earlier_answer() {
    let url = fresh_db("cache_hammer");
    seed(&mut PG.client("cache_hammer"), 10);
    let svc = start_cached(&format!("main={url}"));
    wait_cached(&svc, "/statistics");

    // One writer creates reports as fast as it can while readers compare every answer with
    // what the DB said just before the request started. Reports are only added, so a count
    // is a position: an answer counting fewer than the DB did is an answer from before.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut c = PG.client("cache_hammer");
            let mut n = 1000;
            while !stop.load(Ordering::Acquire) {
                let at = shared::model::now_micros();
                apply(&mut c, &report(n, Category::Lainnya, Status::Pending, at));
                n += 1;
            }
            n - 1000
        })
    };
    let port = svc.port;
    let readers: Vec<_> = (0..3)
        .map(|k| {
            std::thread::spawn(move || {
                let mut c = PG.client("cache_hammer");
                let (mut answers, mut not_modified, mut etag, mut last) = (0, 0, String::new(), 0);
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until {
                    let before = db_total(&mut c);
                    let path = if k == 0 {
                        "/reports?per_page=1"
                    } else {
                        "/statistics"
                    };
                    let inm = [("If-None-Match", etag.as_str())];
                    let headers: &[(&str, &str)] = if k == 2 { &inm } else { &[] };
                    let r = http(port, "GET", path, headers, b"").expect("GET");
                    // A 304 stands for the last answer: it must still be new enough.
                    let got = if r.status == 304 {
                        not_modified += 1;
                        last
                    } else if k == 0 {
                        r.json()["meta"]["total"].as_i64().unwrap_or(-1)
                    } else {
                        stats_total(&r)
                    };
                    assert!(
                        got >= before,
                        "{path}: answered {got} reports after the DB counted {before}"
                    );
                    if r.status == 200 {
                        etag = r.header("etag").unwrap_or_default().to_owned();
                    }
                    last = got;
                    answers += 1;
                }
                (answers, not_modified)
            })
        })
        .collect();
    let mut answers = 0;
    for r in readers {
        answers += r.join().expect("reader").0;
    }
    stop.store(true, Ordering::Release);
    let written = writer.join().expect("writer");
    assert!(
        written > 10 && answers > 30,
        "{written} writes, {answers} answers"
    );

    // Quiet again: the cached answer equals the DB.
    let total = db_total(&mut PG.client("cache_hammer"));
    wait_until(
        "the cache catches the last write",
        Duration::from_secs(5),
        || stats_total(&get(&svc, "/statistics")) == total,
    );
}

#[test]
fn if_none_match_answers_304_and_hits_answer_without_touching_the_db() {
    let url = fresh_db("cache_304");
    seed(&mut PG.client("cache_304"), 12);
    let svc = start_cached(&format!("main={url}"));
    let etag = wait_cached(&svc, "/statistics");
    let list = get(&svc, "/reports?per_page=5");
    assert_eq!(
        list.header("etag"),
        Some(etag.as_str()),
        "one position, one tag"
    );

    // An exclusive lock on the read model and its position: any statement reading them would
    // wait for it (and be cancelled by the statement timeout). Answers now can only come from
    // memory, with no round trip of any kind.
    let mut locker = PG.client("cache_304");
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute(
        "LOCK TABLE statistics, read_reports, read_model_position IN ACCESS EXCLUSIVE MODE",
    )
    .expect("lock");
    let r = get_with(&svc, "/statistics", &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("x-query-db"), Some("main"));
    let r = get_with(
        &svc,
        "/reports?per_page=9",
        &[("If-None-Match", &format!("W/{etag}, \"x\""))],
    );
    assert_eq!(r.status, 304, "a weak tag in a list matches too");
    let hit = get(&svc, "/reports?per_page=5");
    assert_eq!((hit.status, hit.body.clone()), (200, list.body.clone()));
    assert_eq!(stats_total(&get(&svc, "/statistics")), 12);
    tx.rollback().expect("rollback");

    // A change moves the position: the old tag gets the new answer.
    apply(
        &mut PG.client("cache_304"),
        &report(
            99,
            Category::Lainnya,
            Status::Pending,
            shared::model::now_micros(),
        ),
    );
    wait_until(
        "a new position after a write",
        Duration::from_secs(5),
        || {
            let r = get_with(&svc, "/statistics", &[("If-None-Match", &etag)]);
            r.status == 200 && stats_total(&r) == 13 && r.header("etag") != Some(etag.as_str())
        },
    );
}

#[test]
fn a_failover_never_serves_the_first_dbs_entries() {
    let primary = PgCluster::start();
    let secondary = PgCluster::start();
    let p_url = fresh_db_on(&primary, "cache_failover");
    let s_url = fresh_db_on(&secondary, "cache_failover");
    seed(&mut primary.client("cache_failover"), 3);
    seed(&mut secondary.client("cache_failover"), 5);
    let svc = start_cached(&format!("primary={p_url},secondary={s_url}"));
    wait_cached(&svc, "/statistics");
    let r = get(&svc, "/statistics");
    assert_eq!(
        (r.header("x-query-db"), stats_total(&r)),
        (Some("primary"), 3)
    );

    primary.stop();
    // Every answer matches the DB it names; the secondary's answers are the secondary's.
    let mut from_secondary = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let r = get(&svc, "/statistics");
        if r.status != 200 {
            continue;
        }
        match r.header("x-query-db") {
            Some("secondary") => {
                assert_eq!(
                    stats_total(&r),
                    5,
                    "the primary's answer under the secondary's name"
                );
                from_secondary += 1;
            }
            Some("primary") => assert_eq!(stats_total(&r), 3),
            other => panic!("answered by {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(from_secondary > 0, "never failed over\n{}", svc.log());
}

/// The preferred DB passed over while its listener still runs (the projection marked it
/// stale: reachable, its rounds succeed, its entries still valid for it): from then on no
/// answer comes from its memory or its rounds. A cache or a point read tied to the preferred
/// DB instead of the one a read would use now would answer its data here.
#[test]
fn a_db_passed_over_never_answers_from_its_memory_or_its_rounds() {
    let p_url = fresh_db("cache_passed_p");
    let s_url = fresh_db("cache_passed_s");
    let reports = seed(&mut PG.client("cache_passed_p"), 3);
    // The second DB holds the same reports under other titles, and one more.
    for r in &reports {
        let mut other = r.clone();
        other.title = format!("second: {}", r.title);
        apply(&mut PG.client("cache_passed_s"), &other);
    }
    seed(&mut PG.client("cache_passed_s"), 1);
    let checkpoint = |db: &str, stale: bool| {
        PG.client(db)
            .execute(
                "INSERT INTO checkpoint (stream, entry_id, position, updated_at, stale) \
                 VALUES ('report-events', '1-0', 1000, now(), $1) \
                 ON CONFLICT (stream) DO UPDATE SET stale = $1",
                &[&stale],
            )
            .expect("checkpoint");
    };
    checkpoint("cache_passed_p", false);
    checkpoint("cache_passed_s", false);
    let svc = start_cached(&format!("preferred={p_url},second={s_url}"));
    wait_cached(&svc, "/statistics");
    let one = format!("/reports/{}", reports[0].id);
    let r = get(&svc, &one);
    assert_eq!(
        (r.header("x-query-db"), r.json()["data"]["title"].as_str()),
        (Some("preferred"), Some(reports[0].title.as_str()))
    );
    assert_eq!(stats_total(&get(&svc, "/statistics")), 3);

    checkpoint("cache_passed_p", true);
    wait_until("reads leave the stale DB", Duration::from_secs(5), || {
        get(&svc, &one).header("x-query-db") == Some("second")
    });
    let second_title = format!("second: {}", reports[0].title);
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let r = get(&svc, &one);
        assert_eq!(
            (r.header("x-query-db"), r.json()["data"]["title"].as_str()),
            (Some("second"), Some(second_title.as_str())),
            "a point read from the passed-over DB"
        );
        let s = get(&svc, "/statistics");
        assert_eq!(
            (s.header("x-query-db"), stats_total(&s)),
            (Some("second"), 4),
            "statistics from the passed-over DB"
        );
        let l = get(&svc, "/reports?per_page=1");
        assert_eq!(
            (l.header("x-query-db"), l.json()["meta"]["total"].as_i64()),
            (Some("second"), Some(4)),
            "a list from the passed-over DB"
        );
    }
}

/// The fault the fence's lease is for: an instance stopped (SIGSTOP) while it serves from
/// memory holds the fence, so a commit cuts its connection off and out-waits its lease. The
/// commit goes through in bounded time, and the instance, woken after the commit, never
/// answers the count from before it: not from memory, not as a 304.
#[test]
fn a_stopped_instance_holds_no_commit_and_wakes_without_its_old_answers() {
    let url = fresh_db("cache_sigstop");
    seed(&mut PG.client("cache_sigstop"), 4);
    let svc = start_cached(&format!("main={url}"));
    let etag = wait_cached(&svc, "/statistics");
    assert_eq!(stats_total(&get(&svc, "/statistics")), 4);
    let pid = svc.pid().expect("the query process runs");

    signal(pid, "STOP");
    let started = Instant::now();
    apply(
        &mut PG.client("cache_sigstop"),
        &report(
            50,
            Category::Lainnya,
            Status::Pending,
            shared::model::now_micros(),
        ),
    );
    let took = started.elapsed();
    signal(pid, "CONT");
    // Cut off after a second, then the lease (a second): well under the writers' 10 s
    // statement timeout.
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(6),
        "the commit past a stopped listener took {took:?}"
    );

    // The first answers after waking come from the DB (the lease is over) or from a new
    // position: 5, never 4.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let r = get_with(&svc, "/statistics", &[("If-None-Match", &etag)]);
        assert_eq!(r.status, 200, "a 304 for the position before the commit");
        assert_eq!(stats_total(&r), 5, "the answer from before the commit");
    }
    // And the instance fences again: answers from memory, under a new tag.
    let fresh = wait_cached(&svc, "/statistics");
    assert_ne!(fresh, etag);
    let mut c = PG.client("cache_sigstop");
    wait_until(
        "the listener holds the fence again",
        Duration::from_secs(5),
        || {
            c.query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
                &[&query::cache::APPLICATION_NAME],
            )
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
        },
    );
}

/// Every commit waits for the listeners to let go, and only for that: a healthy listener
/// lets go when a writer asks, so a stream of commits never cuts it off (the path that
/// out-waits a lease), and the cache follows every one.
#[test]
fn a_commit_waits_for_the_fence_but_never_for_the_lease() {
    let url = fresh_db("cache_fence_cost");
    seed(&mut PG.client("cache_fence_cost"), 2);
    let svc = start_cached(&format!("main={url}"));
    wait_cached(&svc, "/statistics");
    let mut c = PG.client("cache_fence_cost");
    let backend = |c: &mut postgres::Client| -> i32 {
        c.query_one(
            "SELECT pid FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
            &[&query::cache::APPLICATION_NAME],
        )
        .expect("the listener's backend")
        .get(0)
    };
    let listener = backend(&mut c);
    for n in 0..40 {
        apply(
            &mut c,
            &report(
                100 + n,
                Category::Lainnya,
                Status::Pending,
                shared::model::now_micros(),
            ),
        );
    }
    assert_eq!(backend(&mut c), listener, "the listener was cut off");
    wait_until(
        "the cache has the last write",
        Duration::from_secs(5),
        || stats_total(&get(&svc, "/statistics")) == 42,
    );
    assert!(
        svc.log()
            .contains("cache main: connected; it holds the fence"),
        "{}",
        svc.log()
    );
}

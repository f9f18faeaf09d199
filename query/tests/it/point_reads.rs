//! Point reads through the sync rounds (issue 13 point 2, `cache.rs`): concurrent
//! `GET /reports/{id}` share one statement per round, every answer is the right report, and
//! none is older than the DB was when the request started. Real PostgreSQL, the real `query`
//! binary with its default `QUERY_CACHE=on`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::testkit::{http, wait_until};
use uuid::Uuid;

use crate::support::{apply, delete, fresh_db, get, seed, start_query, PG};

/// Transactions committed in database `db` as the statistics system has them.
fn xact_commit(db: &str) -> i64 {
    // A connection of its own, read before its own transaction is counted.
    PG.client("postgres")
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .expect("pg_stat_database")
        .get(0)
}

/// Backends connected to `db` other than the asking one.
fn backends(db: &str) -> i64 {
    PG.client("postgres")
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .expect("pg_stat_activity")
        .get(0)
}

/// `READERS` threads read `READS_EACH` random ids each (live, deleted, unknown) at once: every
/// answer is right, and the DB commits far fewer transactions than there were reads, because
/// the reads waiting at the same moment were one `id = ANY($1)` statement. Each read on a
/// pooled connection of its own would be one transaction: without the coalescing the count
/// is at least the number of reads. The count is read after the service stopped, when every
/// backend of the DB has exited and flushed its statistics.
#[test]
fn concurrent_point_reads_share_one_statement_and_each_gets_its_report() {
    const READERS: usize = 60;
    const READS_EACH: usize = 10;
    let url = fresh_db("point_reads");
    let reports = seed(&mut PG.client("point_reads"), 40);
    // The first one is a tombstone: 404 like an unknown id.
    delete(&mut PG.client("point_reads"), &reports[0]);
    let svc = start_query(&format!("main={url}"), &[]);
    // The listener is up once a statistics answer carries an ETag.
    wait_until("the sync rounds run", Duration::from_secs(10), || {
        get(&svc, "/statistics").header("etag").is_some()
    });
    let before = xact_commit("point_reads");

    let port = svc.port;
    let reports = Arc::new(reports);
    let readers: Vec<_> = (0..READERS)
        .map(|k| {
            let reports = Arc::clone(&reports);
            std::thread::spawn(move || {
                for n in 0..READS_EACH {
                    let i = (k * 7 + n * 13) % (reports.len() + 1);
                    let (id, expect) = match reports.get(i) {
                        None => (Uuid::new_v4(), 404),
                        Some(r) if i == 0 => (r.id, 404),
                        Some(r) => (r.id, 200),
                    };
                    let r =
                        http(port, "GET", &format!("/reports/{id}"), &[], b"").expect("GET by id");
                    assert_eq!(
                        r.status,
                        expect,
                        "{id}: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    if expect == 200 {
                        let doc = r.json();
                        assert_eq!(doc["data"]["id"].as_str(), Some(id.to_string().as_str()));
                        assert_eq!(doc["data"]["title"], reports[i].title.as_str());
                        assert_eq!(r.header("x-query-db"), Some("main"));
                    }
                }
            })
        })
        .collect();
    for r in readers {
        r.join().expect("reader");
    }
    let reads = (READERS * READS_EACH) as i64;
    assert_eq!(svc.terminate(), Some(0), "{}", svc.log());
    wait_until(
        "every backend of the service exited",
        Duration::from_secs(10),
        || backends("point_reads") == 0,
    );
    let committed = xact_commit("point_reads") - before;
    // Probes and idle rounds add a few dozen a second; coalescing leaves well under half.
    assert!(
        committed < reads / 2,
        "{reads} point reads took {committed} transactions: not coalesced\n{}",
        svc.log()
    );
    assert!(
        committed > 0,
        "no transaction at all: the reads never reached the DB"
    );
}

/// A point read that starts after a new version is committed never answers an older one:
/// writers bump versions as fast as they can while readers compare each answer's version
/// with what the DB held just before the request was sent.
#[test]
fn a_point_read_after_a_commit_never_gets_the_earlier_version() {
    let url = fresh_db("point_fresh");
    // The writer changes the first four; the other four are read between its commits, so
    // they are answered from memory across positions, the first four never at an old one.
    let all = seed(&mut PG.client("point_fresh"), 8);
    let reports = all[..4].to_vec();
    let svc = start_query(&format!("main={url}"), &[]);
    wait_until("the sync rounds run", Duration::from_secs(10), || {
        get(&svc, "/statistics").header("etag").is_some()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let mut reports = reports.clone();
        std::thread::spawn(move || {
            let mut c = PG.client("point_fresh");
            let mut writes = 0;
            while !stop.load(Ordering::Acquire) {
                for r in &mut reports {
                    r.version += 1;
                    r.updated_at = shared::model::now_micros();
                    r.title = format!("version {}", r.version);
                    apply(&mut c, r);
                    writes += 1;
                }
            }
            writes
        })
    };
    let port = svc.port;
    let ids: Vec<Uuid> = all.iter().map(|r| r.id).collect();
    let readers: Vec<_> = (0..4)
        .map(|k| {
            let ids = ids.clone();
            std::thread::spawn(move || {
                let mut c = PG.client("point_fresh");
                let until = Instant::now() + Duration::from_secs(3);
                let mut answers = 0;
                let mut n = k;
                while Instant::now() < until {
                    let id = ids[n % ids.len()];
                    n += 1;
                    let before: i64 = c
                        .query_one("SELECT version FROM read_reports WHERE id = $1", &[&id])
                        .expect("version")
                        .get(0);
                    let r = http(port, "GET", &format!("/reports/{id}"), &[], b"").expect("GET");
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let got = r.json()["data"]["version"].as_i64().unwrap_or(-1);
                    assert!(
                        got >= before,
                        "{id}: answered version {got} after the DB held {before}"
                    );
                    answers += 1;
                }
                answers
            })
        })
        .collect();
    let answers: i64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    stop.store(true, Ordering::Release);
    let writes = writer.join().expect("writer");
    assert!(
        writes > 20 && answers > 20,
        "{writes} writes, {answers} answers"
    );
}

/// Answers by id from memory outlive a commit that did not change their report: after reads
/// of two reports and a commit changing only the first, the second is answered while the
/// read model is locked against any reader (so from memory), and the first is answered at
/// its new version once the lock is gone. The commit also moved the position, which drops
/// every list and statistics answer: only a report's own change drops its answer.
#[test]
fn an_answer_by_id_outlives_a_commit_that_did_not_change_it() {
    let url = fresh_db("point_kept");
    let mut reports = seed(&mut PG.client("point_kept"), 2);
    let svc = start_query(&format!("main={url}"), &[]);
    let etag = wait_etag(&svc);
    let path = |r: &shared::model::Report| format!("/reports/{}", r.id);
    for r in &reports {
        assert_eq!(get(&svc, &path(r)).status, 200);
    }

    reports[0].version += 1;
    reports[0].title = "changed".to_owned();
    apply(&mut PG.client("point_kept"), &reports[0]);
    wait_until("a new position", Duration::from_secs(5), || {
        get(&svc, "/statistics").header("etag") != Some(etag.as_str())
    });

    let mut locker = PG.client("point_kept");
    let mut tx = locker.transaction().expect("begin");
    tx.batch_execute("LOCK TABLE read_reports IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let kept = get(&svc, &path(&reports[1]));
    assert_eq!(kept.status, 200, "{}", String::from_utf8_lossy(&kept.body));
    assert_eq!(kept.json()["data"]["title"], reports[1].title.as_str());
    tx.rollback().expect("unlock");
    let changed = get(&svc, &path(&reports[0])).json();
    assert_eq!(
        (
            changed["data"]["version"].as_i64(),
            changed["data"]["title"].as_str()
        ),
        (Some(reports[0].version), Some("changed"))
    );
}

/// The first `ETag` the service gives: its cache fence is up.
fn wait_etag(svc: &shared::testkit::Service) -> String {
    let mut etag = String::new();
    wait_until("the cache fence is up", Duration::from_secs(10), || {
        etag = get(svc, "/statistics")
            .header("etag")
            .unwrap_or_default()
            .to_owned();
        !etag.is_empty()
    });
    etag
}

//! The relay's leadership lease, its fencing token, bounded LISTEN/NOTIFY and unknown event
//! types — against real PostgreSQL, Redis and command processes (SIGSTOP, `CLIENT KILL`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command::fence::{self, FenceError, FENCE_KEY};
use command::lease::{self, Term};
use serde_json::json;
use shared::event::{Event, EventType, STREAM};
use shared::testkit::{signal, wait_until, Service};

use super::*;

/// One metric of a command instance, when it answers.
pub(super) fn metric(port: u16, name: &str) -> Option<f64> {
    let r = http(port, "GET", "/metrics", &[], b"").ok()?;
    String::from_utf8_lossy(&r.body)
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub(super) fn leads(port: u16) -> bool {
    metric(port, "command_relay_leader") == Some(1.0)
}

/// Waits until exactly one of the two leads; returns (leader, follower).
fn leader_and_follower<'a>(a: &'a Service, b: &'a Service) -> (&'a Service, &'a Service) {
    wait_until("one relay leads", Duration::from_secs(30), || {
        leads(a.port) ^ leads(b.port)
    });
    if leads(a.port) {
        (a, b)
    } else {
        (b, a)
    }
}

/// Per report, the stream holds versions 1, 2, 3, … in stream order: none twice, none before
/// an older one, none missing.
fn assert_in_version_order(events: &[Event]) {
    let mut last: HashMap<uuid::Uuid, i64> = HashMap::new();
    for e in events {
        let prev = last.insert(e.report_id, e.version).unwrap_or(0);
        assert_eq!(
            e.version,
            prev + 1,
            "report {}: version {} after {prev} in the stream",
            e.report_id,
            e.version
        );
    }
}

/// A report with `n` versions written through `port`; returns its id.
fn report_with_versions(port: u16, i: usize, n: usize) -> String {
    let r = post(port, &new_report(i));
    assert_eq!(r.status, 201, "{:?}", r.json());
    let id = r.json()["data"]["id"].as_str().expect("id").to_owned();
    for v in 2..=n {
        let r = put(port, &id, &json!({"title": format!("versi {v}")}), None);
        assert_eq!(r.status, 200, "{:?}", r.json());
    }
    id
}

fn wait_for_stream(stack: &Stack, n: usize, what: &str, follower: &Service) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_events(&stack.redis).len() < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} events in the stream\nlog:\n{}",
            stream_events(&stack.redis).len(),
            follower.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lease row: one holder at a time, a new epoch per term, renewal only while unexpired,
/// release on demand, and an epoch that can be raised only by the holder.
#[test]
fn lease_has_one_holder_and_growing_epochs() {
    let url = pg().create_db("relay_lease_rules");
    let mut a = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    shared::migrate::command_db(&mut a).expect("migrate");
    let mut b = postgres::Client::connect(&url, postgres::NoTls).expect("connect");

    let t1 = lease::acquire(&mut a, "a")
        .expect("acquire")
        .expect("free lease");
    assert_eq!(t1, Term { epoch: 1 });
    assert_eq!(lease::acquire(&mut b, "b").expect("acquire"), None);
    assert!(lease::renew(&mut a, "a", &t1).expect("renew"));
    assert!(!lease::renew(&mut b, "b", &t1).expect("renew"), "not b's");

    // Expire it by the DB's clock: a cannot renew, b takes it with a new epoch.
    a.execute(
        "UPDATE relay_lease SET expires_at = now() - interval '1 second'",
        &[],
    )
    .expect("expire");
    assert!(!lease::renew(&mut a, "a", &t1).expect("renew"), "expired");
    let t2 = lease::acquire(&mut b, "b")
        .expect("acquire")
        .expect("expired");
    assert_eq!(t2.epoch, 2);
    assert_eq!(
        lease::raise_epoch(&mut a, "a", &t1, 10).expect("raise"),
        None
    );
    let t3 = lease::raise_epoch(&mut b, "b", &t2, 10)
        .expect("raise")
        .expect("b holds it");
    assert_eq!(t3.epoch, 10);

    // The holder re-acquiring (after a reconnect) starts a new term.
    let t4 = lease::acquire(&mut b, "b").expect("acquire").expect("own");
    assert_eq!(t4.epoch, 11);
    lease::release(&mut b, "b", &t4).expect("release");
    let t5 = lease::acquire(&mut a, "a")
        .expect("acquire")
        .expect("released");
    assert_eq!(t5.epoch, 12);
}

fn fields(version: i64, report: uuid::Uuid) -> [(&'static str, String); 7] {
    Event {
        event_id: uuid::Uuid::new_v4(),
        event_type: EventType::ReportUpdated,
        report_id: report,
        version,
        position: version,
        payload: "{}".into(),
        timestamp: time::OffsetDateTime::now_utc(),
    }
    .to_fields()
}

/// The fencing token in Redis: after a claim with epoch 2, a publish with epoch 1 appends
/// nothing; the claim returns the ids the stream ends with.
#[test]
fn fence_refuses_a_stale_epoch() {
    let redis = RedisServer::start();
    let mut conn = redis.connection().expect("redis");
    let report = uuid::Uuid::new_v4();
    let first = fields(1, report);
    assert_eq!(
        fence::publish(&mut conn, 1, std::slice::from_ref(&first)).expect("publish"),
        1
    );
    let ids = fence::claim(&mut conn, 2, 10).expect("claim");
    assert_eq!(ids, vec![first[0].1.clone()], "the tail's event ids");
    match fence::publish(&mut conn, 1, &[fields(2, report)]) {
        Err(FenceError::Fenced { newer }) => assert_eq!(newer, 2),
        other => panic!("a stale epoch must be fenced, got {other:?}"),
    }
    assert!(matches!(
        fence::claim(&mut conn, 1, 10),
        Err(FenceError::Fenced { newer: 2 })
    ));
    assert_eq!(
        stream_events(&redis).len(),
        1,
        "the stale batch was refused"
    );
    assert_eq!(
        fence::publish(&mut conn, 2, &[fields(2, report), fields(3, report)]).expect("publish"),
        2
    );
    let fence_value: i64 = redis::cmd("GET")
        .arg(FENCE_KEY)
        .query(&mut conn)
        .expect("GET fence");
    assert_eq!(fence_value, 2);
    assert_in_version_order(&stream_events(&redis));
}

/// Cuts one Redis client by name, over and over, until stopped: what a firewall rule for
/// the leader's socket would do. Returns how many connections it killed.
fn cut_loop(
    redis_url: String,
    name: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut conn = redis::Client::open(redis_url)
            .expect("redis url")
            .get_connection()
            .expect("redis");
        let mut kills = 0;
        while !stop.load(Ordering::SeqCst) {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query(&mut conn)
                .expect("CLIENT LIST");
            for line in list.lines() {
                let mut id = None;
                let mut named = false;
                for kv in line.split_whitespace() {
                    if let Some(v) = kv.strip_prefix("id=") {
                        id = Some(v.to_owned());
                    }
                    named |= kv == format!("name={name}");
                }
                if let (Some(id), true) = (id, named) {
                    let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(&id)
                        .query(&mut conn);
                    kills += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kills
    })
}

/// A leader whose own Redis connection keeps being cut (Redis itself is fine) loses the lease
/// and the other instance publishes; events keep flowing in per-report order.
#[test]
fn leader_cut_from_redis_is_replaced() {
    let stack = Stack::new("relay_cut");
    let second = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let (leader, follower) = leader_and_follower(&stack.svc, &second);
    let leader_name = if leader.port == stack.svc.port {
        "command-1"
    } else {
        "command-2"
    };
    let before = report_with_versions(follower.port, 1, 3);
    wait_for_stream(&stack, 3, "before the cut", follower);

    let stop = Arc::new(AtomicBool::new(false));
    let cutter = cut_loop(
        stack.redis.url(),
        command::relay::client_name(leader_name),
        stop.clone(),
    );
    let cut_at = Instant::now();
    // Writes through both instances: the request path never waits on Redis.
    for v in 4..=6 {
        let r = put(
            leader.port,
            &before,
            &json!({"title": format!("v{v}")}),
            None,
        );
        assert_eq!(r.status, 200);
    }
    report_with_versions(follower.port, 2, 2);
    wait_until("the other instance leads", Duration::from_secs(30), || {
        leads(follower.port)
    });
    let took_over = cut_at.elapsed();
    wait_for_stream(&stack, 8, "during the cut", follower);
    let published = cut_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    let kills = cutter.join().expect("cutter");
    println!(
        "leader cut from Redis: {kills} connections killed, new leader after {took_over:?}, \
         backlog in the stream after {published:?}"
    );
    assert!(kills > 0, "the cut hit the leader's connection");
    // It notices its lease ran out at its next turn (within one backoff pause).
    wait_until(
        "the cut instance steps down",
        Duration::from_secs(10),
        || !leads(leader.port),
    );

    // Healed: everything written later flows too, in order.
    report_with_versions(leader.port, 3, 2);
    wait_for_stream(&stack, 10, "after the cut", follower);
    let events = stream_events(&stack.redis);
    assert_eq!(events.len(), 10, "none lost, none twice");
    assert_in_version_order(&events);
}

/// A frozen (SIGSTOPped) leader is replaced; when it wakes it publishes nothing stale, and
/// every report's events are in the stream once, in version order.
#[test]
fn frozen_leader_is_replaced_and_fenced() {
    let stack = Stack::new("relay_frozen");
    let second = start_command(&stack.db_url, &stack.redis.url(), "command-2");
    let (leader, follower) = leader_and_follower(&stack.svc, &second);
    let id = report_with_versions(follower.port, 1, 2);
    wait_for_stream(&stack, 2, "before the freeze", follower);

    let pid = leader.pid().expect("leader pid");
    signal(pid, "STOP");
    let frozen_at = Instant::now();
    for v in 3..=6 {
        let r = put(follower.port, &id, &json!({"title": format!("v{v}")}), None);
        assert_eq!(r.status, 200);
    }
    report_with_versions(follower.port, 2, 3);
    let result = std::panic::catch_unwind(|| {
        wait_until("the follower leads", Duration::from_secs(30), || {
            leads(follower.port)
        });
        let took_over = frozen_at.elapsed();
        wait_for_stream(&stack, 9, "while the leader is frozen", follower);
        println!(
            "frozen leader: replaced after {took_over:?}, backlog published after {:?}",
            frozen_at.elapsed()
        );
    });
    signal(pid, "CONT");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }

    // The woken instance steps down and serves writes; they flow through the new leader.
    for v in 7..=8 {
        let r = put(leader.port, &id, &json!({"title": format!("v{v}")}), None);
        assert_eq!(r.status, 200, "the woken instance serves writes");
    }
    wait_for_stream(&stack, 11, "after the wake-up", follower);
    wait_until("the woken one follows", Duration::from_secs(10), || {
        !leads(leader.port)
    });
    let events = stream_events(&stack.redis);
    assert_eq!(events.len(), 11, "none lost, none twice");
    assert_in_version_order(&events);
}

/// An event-log row of a type this version does not know (written by a newer version during a
/// rolling upgrade) is published as it is and does not hold back the events after it.
#[test]
fn unknown_event_type_is_published_as_is() {
    let stack = Stack::new("relay_unknown_type");
    let mut db = stack.db();
    db.execute(
        "WITH e AS (INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
         VALUES (gen_random_uuid(), 'ReportArchived', gen_random_uuid(), 1, '{}', now()) RETURNING 1) \
         SELECT pg_notify('report_events', '') FROM e",
        &[],
    )
    .expect("insert a row of a newer version");
    assert_eq!(post(stack.svc.port, &new_report(1)).status, 201);

    let mut conn = stack.redis.connection().expect("redis");
    let mut types = Vec::new();
    wait_until("both rows in the stream", Duration::from_secs(20), || {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap_or_default();
        types = reply
            .ids
            .iter()
            .map(|e| e.get::<String>("event_type").unwrap_or_default())
            .collect();
        types.len() >= 2
    });
    assert_eq!(
        types,
        vec!["ReportArchived", "ReportCreated"],
        "position order"
    );
    assert_eq!(
        metric(stack.svc.port, "command_relay_unknown_types_total"),
        Some(1.0)
    );
    let unpublished: i64 = db
        .query_one(
            "SELECT count(*) FROM event_log WHERE published_at IS NULL",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(unpublished, 0);
}

/// With Redis down, 50 000 writes keep PostgreSQL's notification queue near empty and all
/// succeed. The writes are a server-side loop — insert the report, insert its event-log row,
/// `pg_notify` — one transaction each (through HTTP they would take minutes in a debug build):
/// one NOTIFY per write, the worst case, since the service's notifier (`wake.rs`) sends at
/// most one per 2 ms; a few HTTP writes at the end show the service too.
///
/// The bound: the queue's unit is an 8 KiB page (usage 1e-6 ≈ one page ≈ 256 of these
/// notifications); we allow 20 pages. But a session that LISTENs and stops reading does not
/// pin the queue at once: PostgreSQL first pushes its notifications into the TCP socket (on
/// loopback ~4 MB, ~165 000 empty notifications, measured), and only then does the queue grow
/// toward the failing COMMIT. So the test also sums the kernel's send and receive queues of
/// every connection to PostgreSQL: notifications nobody reads sit there (50 000 ≈ 1.2 MB),
/// and with the relay draining (or not listening) they are near empty.
#[test]
fn notify_queue_stays_bounded_while_redis_is_down() {
    const WRITES: i64 = 50_000;
    const MAX_USAGE: f64 = 20e-6;
    /// Bytes in flight on all PostgreSQL connections: a few protocol messages, not 1.2 MB.
    const MAX_UNREAD: u64 = 64 * 1024;
    let stack = Stack::new("relay_notify_bounded");
    stack.redis.stop();

    let stop = Arc::new(AtomicBool::new(false));
    let max_usage = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_usage, url) = (stop.clone(), max_usage.clone(), stack.db_url.clone());
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
            while !stop.load(Ordering::SeqCst) {
                let usage: f64 = c
                    .query_one("SELECT pg_notification_queue_usage()", &[])
                    .expect("usage")
                    .get(0);
                max_usage.fetch_max(usage.to_bits(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let mut db = stack.db();
    db.batch_execute(&format!(
        "DO $$ \
         DECLARE r uuid; \
         BEGIN \
           FOR i IN 1..{WRITES} LOOP \
             r := gen_random_uuid(); \
             INSERT INTO reports (id, title, description, category, status, version, created_at, updated_at) \
               VALUES (r, 'Laporan ' || i, 'Deskripsi', 'lainnya', 'pending', 1, now(), now()); \
             INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
               VALUES (gen_random_uuid(), 'ReportCreated', r, 1, '{{}}', now()); \
             PERFORM pg_notify('report_events', ''); \
             COMMIT; \
           END LOOP; \
         END $$"
    ))
    .expect("every write commits");
    for i in 0..20 {
        assert_eq!(post(stack.svc.port, &new_report(i)).status, 201);
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let usage: f64 = db
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .expect("usage")
        .get(0);
    let peak = f64::from_bits(max_usage.load(Ordering::SeqCst)).max(usage);
    println!("notification queue usage with redis down: peak {peak:e}, after {usage:e}");
    assert!(
        peak <= MAX_USAGE,
        "queue usage {peak:e} > {MAX_USAGE:e}: a session holds notifications back\n{}",
        stack.svc.log()
    );
    let pg_port = stack
        .db_url
        .parse::<postgres::Config>()
        .expect("db url")
        .get_ports()[0];
    let unread = unread_bytes(pg_port);
    println!("bytes queued on connections to postgres: {unread}");
    assert!(
        unread <= MAX_UNREAD,
        "{unread} bytes sit unread on PostgreSQL connections: a LISTENing session stopped \
         reading\n{}",
        stack.svc.log()
    );
    let (rows, log, _) = fingerprint(&mut db);
    assert_eq!((rows, log), (WRITES + 20, WRITES + 20));
}

/// Sum of the kernel's send and receive queues (`tx_queue:rx_queue` in `/proc/net/tcp*`) of
/// every TCP connection from or to `port`.
fn unread_bytes(port: u16) -> u64 {
    let port_hex = format!(":{port:04X}");
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st tx_queue:rx_queue …; 01 = ESTABLISHED
            if f.len() > 4
                && f[3] == "01"
                && (f[1].ends_with(&port_hex) || f[2].ends_with(&port_hex))
            {
                if let Some((tx, rx)) = f[4].split_once(':') {
                    total += u64::from_str_radix(tx, 16).unwrap_or(0)
                        + u64::from_str_radix(rx, 16).unwrap_or(0);
                }
            }
        }
    }
    total
}

//! Tests of the bench engine against a tiny in-process HTTP/1.1 server: a healthy one (every
//! figure present, no errors), a stalling one (the stall shows in the tail measured from the
//! intended send times), and one whose writes reach a real query DB late (propagation lag).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::schedule::Endpoint;
use super::*;

/// What the fake server does with each request.
#[derive(Default)]
struct Behaviour {
    /// Request number (1-based, all connections) that sleeps `stall` while holding the
    /// server-wide lock, so every request behind it waits too.
    stall_at: Option<u64>,
    stall: Duration,
    /// Time every request takes, with the server-wide lock held (capacity = 1 / work).
    work: Duration,
    /// Created/updated (id, version) go here, for the fake projection.
    writes: Option<crossbeam_channel::Sender<(Uuid, i64)>>,
}

struct FakeServer {
    url: String,
    /// Every request path, in arrival order.
    paths: Arc<Mutex<Vec<String>>>,
    /// Time each request spent being processed (lock held), in request order.
    processing: Arc<Mutex<Vec<Duration>>>,
    /// TCP connections accepted.
    accepted: Arc<AtomicU64>,
}

fn start_fake(behaviour: Behaviour) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let processing = Arc::new(Mutex::new(Vec::new()));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicU64::new(0));
    let accepted_in = Arc::clone(&accepted);
    let state = Arc::new((
        Mutex::new(HashMap::<Uuid, i64>::new()),
        AtomicU64::new(0),
        behaviour,
        Arc::clone(&processing),
        AtomicU64::new(0),
        Arc::clone(&paths),
    ));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            accepted_in.fetch_add(1, Ordering::SeqCst);
            let state = Arc::clone(&state);
            std::thread::spawn(move || {
                let conn_no = state.4.fetch_add(1, Ordering::SeqCst);
                let _ = serve(stream, conn_no, &state);
            });
        }
    });
    FakeServer {
        url,
        processing,
        paths,
        accepted,
    }
}

type State = (
    Mutex<HashMap<Uuid, i64>>,
    AtomicU64,
    Behaviour,
    Arc<Mutex<Vec<Duration>>>,
    AtomicU64,
    Arc<Mutex<Vec<String>>>,
);

fn serve(stream: TcpStream, conn_no: u64, state: &State) -> std::io::Result<()> {
    let (reports, counter, behaviour, processing, _, paths) = state;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        paths.lock().unwrap().push(path.clone());

        // One request at a time server-wide: a stall holds everyone behind it.
        let (status, json, version) = {
            let mut map = reports.lock().unwrap();
            let began = Instant::now();
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            if behaviour.stall_at == Some(n) {
                std::thread::sleep(behaviour.stall);
            }
            if !behaviour.work.is_zero() {
                std::thread::sleep(behaviour.work);
            }
            let answer = route(&method, &path, &mut map, behaviour);
            processing.lock().unwrap().push(began.elapsed());
            answer
        };
        let body = json.to_string();
        let etag = version.map_or(String::new(), |v| format!("ETag: \"{v}\"\r\n"));
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Instance-ID: fake-{}\r\n{etag}\r\n",
            body.len(),
            conn_no % 2 + 1
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(body.as_bytes())?;
    }
}

fn route(
    method: &str,
    path: &str,
    map: &mut HashMap<Uuid, i64>,
    behaviour: &Behaviour,
) -> (u16, serde_json::Value, Option<i64>) {
    let notify = |id: Uuid, v: i64| {
        if let Some(tx) = &behaviour.writes {
            let _ = tx.send((id, v));
        }
    };
    let id_of = |p: &str| {
        p.strip_prefix("/reports/")
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    match method {
        "POST" if path == "/reports" => {
            let id = Uuid::new_v4();
            map.insert(id, 1);
            notify(id, 1);
            (
                201,
                serde_json::json!({"success": true, "data": {"id": id, "version": 1}}),
                Some(1),
            )
        }
        "PUT" => match id_of(path).and_then(|id| map.get_mut(&id).map(|v| (id, v))) {
            Some((id, v)) => {
                *v += 1;
                let v = *v;
                notify(id, v);
                (
                    200,
                    serde_json::json!({"success": true, "data": {"id": id, "version": v}}),
                    Some(v),
                )
            }
            None => (404, serde_json::json!({"success": false}), None),
        },
        "DELETE" => match id_of(path).and_then(|id| map.remove(&id)) {
            Some(v) => (200, serde_json::json!({"success": true}), Some(v + 1)),
            None => (404, serde_json::json!({"success": false}), None),
        },
        "GET" if path.starts_with("/reports/") => {
            (200, serde_json::json!({"success": true, "data": {}}), None)
        }
        "GET" if path.starts_with("/reports") => {
            let ids: Vec<String> = (1..=5u128)
                .map(|n| Uuid::from_u128(n).to_string())
                .collect();
            let data: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
            (
                200,
                serde_json::json!({"success": true, "data": data}),
                None,
            )
        }
        "GET" if path == "/statistics" || path == "/health" => {
            (200, serde_json::json!({"success": true}), None)
        }
        _ => (404, serde_json::json!({"success": false}), None),
    }
}

/// The tests that judge the generator's own timing (whether it kept its schedule) run one at
/// a time: on two cores, two load generators in one test process starve each other's
/// dispatch threads and each rightly reports itself as the bottleneck.
static TIMED: Mutex<()> = Mutex::new(());

/// Takes [`TIMED`]; a test that panicked while holding it does not poison the others.
fn timed() -> std::sync::MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(url: &str, write_rps: f64, read_rps: f64, secs: f64) -> BenchConfig {
    let mut cfg = BenchConfig::new(url, url, write_rps, read_rps);
    cfg.duration = Duration::from_secs_f64(secs);
    cfg
}

#[test]
fn a_stall_shows_in_the_tail_measured_from_intended_send_time() {
    let _timed = timed();
    let stall = Duration::from_millis(300);
    // Request 1 is the preflight, 2 the id prefetch; stall a third of the way into the run.
    let server = start_fake(Behaviour {
        stall_at: Some(100),
        stall,
        ..Behaviour::default()
    });
    let cfg = config(&server.url, 0.0, 100.0, 3.0);
    let report = run(&cfg).unwrap();
    eprintln!("{}", report.table());
    let reads = &report.reads;
    assert_eq!(reads.sent, 300, "{}", report.table());
    assert_eq!(reads.error_count(), 0, "{}", report.table());

    // The server itself was instant for everything but the one stalled request...
    let processing = server.processing.lock().unwrap().clone();
    let slow: Vec<_> = processing
        .iter()
        .filter(|d| **d > Duration::from_millis(20))
        .collect();
    assert_eq!(
        slow.len(),
        1,
        "only the stalled request is slow on the server: {slow:?}"
    );

    // ...yet the ~30 requests scheduled during the stall queued behind it, and each carries
    // its wait: the tail is the stall, not one outlier among 300.
    let l = &reads.latency;
    assert!(
        l.max_ms >= 290.0,
        "max should include the whole stall: {l:?}"
    );
    assert!(l.p99_ms >= 200.0, "p99 should show the stall: {l:?}");
    assert!(
        l.p95_ms >= 50.0,
        "requests behind the stall carry the wait: {l:?}"
    );
    assert!(l.p50_ms < 50.0, "the median is unaffected: {l:?}");
    // The stall is charged to the server, not to the generator: its own delay stays well
    // under the stall, and it kept its fixed connections (none added while one hung). Whether
    // it also kept a 5 ms schedule depends on the machine's load, so that is reported (and
    // must agree with the warning), not asserted.
    let g = &report.generator;
    assert!(
        g.own_delay_max_ms < stall.as_secs_f64() * 1000.0 / 2.0,
        "the stall must not be counted as the generator's own delay: {g:?}"
    );
    assert_eq!(g.bottleneck, g.warning.is_some(), "{g:?}");
    assert_eq!(g.connections_per_side, 64);
    assert_eq!(g.connections_opened, 64, "{g:?}");
}

#[test]
fn b_healthy_server_gives_every_figure_and_no_errors() {
    let _timed = timed();
    let server = start_fake(Behaviour::default());
    let cfg = config(&server.url, 20.0, 80.0, 2.5);
    let report = run(&cfg).unwrap();
    let table = report.table();
    eprintln!("{table}");
    // The original mix: the three writes and SPEC §6's five reads, none of the new ones.
    let names: Vec<&str> = report.endpoints.iter().map(|e| e.name.as_str()).collect();
    let original: Vec<&str> = Endpoint::ALL[..8].iter().map(|e| e.name()).collect();
    assert_eq!(names, original, "{table}");
    for e in &report.endpoints {
        assert!(e.sent > 0, "{} sent nothing\n{table}", e.name);
        assert_eq!(e.ok, e.sent, "{} had errors\n{table}", e.name);
        assert!(e.errors.is_empty(), "{table}");
        assert!(e.achieved_rps > 0.0, "{table}");
        assert!(
            e.latency.p50_ms > 0.0 && e.latency.max_ms >= e.latency.p99_ms,
            "{table}"
        );
    }
    assert_eq!(report.writes.sent, 50, "{table}");
    assert_eq!(report.reads.sent, 200, "{table}");
    assert_eq!(report.total_errors(), 0);
    for side in ["write", "read"] {
        let counts = &report.instances[side];
        assert!(counts.values().sum::<u64>() > 0, "{side}: {counts:?}");
    }
    // Whether the generator kept a 5 ms schedule depends on the machine's load: the flag
    // must agree with the warning; the run's figures above are what this test is about.
    let g = &report.generator;
    assert_eq!(g.bottleneck, g.warning.is_some(), "{g:?}");
    assert!(report.propagation.is_none());

    // The JSON carries every figure and reads back to the same report.
    let json = serde_json::to_value(&report).unwrap();
    for key in [
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "sent",
        "ok",
        "achieved_rps",
    ] {
        assert!(
            json["reads"][key].is_number(),
            "reads.{key} missing: {json}"
        );
        assert!(
            json["endpoints"][0][key].is_number(),
            "endpoints[0].{key} missing"
        );
    }
    let back: BenchReport = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, report);
    let cmp = report::compare(&json, &json);
    assert!(cmp.contains("reads.p99_ms"), "{cmp}");
    assert!(cmp.contains("1.00"), "{cmp}");
}

#[test]
fn c_propagation_lag_is_measured_on_each_query_db() {
    let _timed = timed();
    use shared::testkit::PgCluster;

    let pg = PgCluster::start();
    let mut dbs = Vec::new();
    for name in ["lag_primary", "lag_replica1"] {
        let url = pg.create_db(name);
        shared::migrate::query_db(&mut pg.client(name)).unwrap();
        dbs.push((format!("query-db-{name}"), url));
    }
    // A fake projection: applies each write to both DBs 30 ms (primary) / 60 ms (replica)
    // after the server answered it.
    let (tx, rx) = crossbeam_channel::unbounded::<(Uuid, i64)>();
    let mut clients: Vec<_> = ["lag_primary", "lag_replica1"]
        .iter()
        .map(|n| pg.client(n))
        .collect();
    std::thread::spawn(move || {
        while let Ok((id, version)) = rx.recv() {
            let due = Instant::now();
            for (i, c) in clients.iter_mut().enumerate() {
                let at = due + Duration::from_millis(30 * (i as u64 + 1));
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                c.execute(
                    "INSERT INTO read_reports (id, title, description, category, status, version, created_at, updated_at, doc) \
                     VALUES ($1, 't', 'd', 'lainnya', 'pending', $2, now(), now(), '{}') \
                     ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                    &[&id, &version],
                )
                .unwrap();
            }
        }
    });
    let server = start_fake(Behaviour {
        writes: Some(tx),
        ..Behaviour::default()
    });
    let mut cfg = config(&server.url, 5.0, 0.0, 2.0);
    cfg.query_dbs = dbs;
    cfg.lag_every = 2;
    let report = run(&cfg).unwrap();
    eprintln!("{}", report.table());
    let p = report.propagation.clone().unwrap();
    assert!(p.sampled >= 4, "{}", report.table());
    assert_eq!(p.per_db.len(), 2);
    for (db, at_least) in p.per_db.iter().zip([30.0, 60.0]) {
        assert_eq!(db.samples, p.sampled, "{}", report.table());
        assert_eq!(db.not_visible, 0);
        assert!(db.error.is_none(), "{db:?}");
        assert!(db.p50_ms >= at_least - 1.0, "{db:?}");
        assert!(db.max_ms < 1000.0, "{db:?}");
    }
    assert_eq!(p.all.samples, p.sampled);
    assert!(p.all.p50_ms >= 59.0, "{:?}", p.all);
}

#[test]
fn unreachable_endpoint_fails_fast_with_a_hint() {
    let port = shared::testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let err = run(&config(&url, 1.0, 1.0, 1.0)).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("is not answering") && text.contains("cargo xtask up"),
        "{text}"
    );
}

#[test]
fn flags_resolve_levels_and_defaults() {
    let parse = |s: &str| -> anyhow::Result<Box<Bench>> {
        let argv = std::iter::once("bench").chain(s.split_whitespace());
        match crate::flags::parse(argv.map(std::ffi::OsString::from))? {
            crate::flags::Task::Bench(b) => Ok(b),
            _ => anyhow::bail!("`bench {s}` parsed as another command"),
        }
    };
    let local = LocalCluster::of(&Topology::default());
    let cfg = parse("").unwrap().config(Some(&local)).unwrap();
    assert_eq!(
        (cfg.level.as_str(), cfg.write_rps, cfg.read_rps),
        ("light", 10.0, 40.0)
    );
    assert_eq!(cfg.duration, Duration::from_secs(10));
    assert_eq!(cfg.write_url, "http://127.0.0.1:8080");
    assert_eq!(cfg.read_url, "http://127.0.0.1:8090");
    assert_eq!(cfg.query_dbs[0].0, "query-db-primary");

    let cfg = parse("--level stress --duration 3")
        .unwrap()
        .config(Some(&local))
        .unwrap();
    assert_eq!((cfg.write_rps, cfg.read_rps), (200.0, 800.0));
    assert_eq!(cfg.duration, Duration::from_secs(3));

    let cfg = parse("--level max").unwrap().config(Some(&local)).unwrap();
    assert_eq!(cfg.duration, MAX_STEP);

    let cfg = parse("--write-rps 7 --read-rps 9 --write-url http://h:1 --read-url http://h:2")
        .unwrap()
        .config(Some(&local))
        .unwrap();
    assert_eq!(
        (cfg.level.as_str(), cfg.write_rps, cfg.read_rps),
        ("custom", 7.0, 9.0)
    );
    assert!(
        cfg.query_dbs.is_empty(),
        "remote targets get no local lag DBs"
    );

    let err = |s: &str| {
        format!(
            "{:#}",
            parse(s)
                .and_then(|b| b.config(Some(&local)).map(|_| ()))
                .unwrap_err()
        )
    };
    assert!(err("--level extreme --write-rps 3").contains("not both"));
    assert!(err("--level huge").contains("unknown level `huge`"));
    assert!(err("--duration x").contains("--duration"));
    assert!(err("--mix list=1,bogus=2").contains("bogus"));
    assert!(err("--query-db nourl").contains("--query-db"));
}

/// The connection count never grows: with 2 connections, a stalled server holds both, the
/// requests due meanwhile wait in the generator's queue, and that wait is reported as the
/// server's (it counts in their latency) — not as the generator being late.
#[test]
fn a_fixed_set_of_connections_queues_the_rest_and_blames_the_server() {
    let _timed = timed();
    let server = start_fake(Behaviour {
        stall_at: Some(20),
        stall: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let mut cfg = config(&server.url, 0.0, 100.0, 1.5);
    cfg.connections = 2;
    let report = run(&cfg).unwrap();
    let g = &report.generator;
    eprintln!("{}", report.table());
    // The preflight and the id prefetch open one connection each; the run only its two.
    let accepted = server.accepted.load(Ordering::SeqCst);
    assert!(accepted <= 2 + 2, "{accepted} connections accepted: {g:?}");
    assert_eq!(
        (g.connections_per_side, g.connections_opened),
        (2, 2),
        "{g:?}"
    );
    assert!(g.queued_for_connection >= 20, "{g:?}");
    assert!(g.connection_wait_max_ms >= 200.0, "{g:?}");
    // The waits are not the generator's: only its own pacing counts as late. (Not zero: on
    // a busy machine the pacer itself may wake late, and then it rightly says so.)
    assert!(
        g.late_sends * 2 < g.queued_for_connection,
        "waits for a busy connection counted as the generator's lateness: {g:?}"
    );
    assert_eq!(report.reads.sent, 150);
    assert_eq!(report.reads.error_count(), 0, "{}", report.table());
    // The wait in the queue counts: latency is from the intended time.
    assert!(
        report.reads.latency.max_ms >= 250.0,
        "{:?}",
        report.reads.latency
    );
    assert!(report.table().contains("waited for a busy connection"));
}

/// `--mix extended` adds near, q and history, each with its own latency row in the table and
/// in the JSON, and the requests have the shapes the query service answers.
#[test]
fn extended_mix_measures_near_q_and_history() {
    let server = start_fake(Behaviour::default());
    let mut cfg = config(&server.url, 20.0, 100.0, 3.0);
    cfg.mix = Mix::parse("extended").unwrap();
    let report = run(&cfg).unwrap();
    let table = report.table();
    eprintln!("{table}");
    let names: Vec<&str> = report.endpoints.iter().map(|e| e.name.as_str()).collect();
    let all: Vec<&str> = Endpoint::ALL.iter().map(|e| e.name()).collect();
    assert_eq!(names, all, "{table}");
    for e in [Endpoint::Near, Endpoint::Search, Endpoint::History] {
        let row = report
            .endpoints
            .iter()
            .find(|r| r.name == e.name())
            .unwrap();
        assert!(row.sent > 0 && row.ok == row.sent, "{table}");
        assert!(table.contains(e.name()), "{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mix"]["near"], 8, "{json}");
    assert!(json["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["name"] == "GET /reports/{id}/history" && e["p99_ms"].is_number()));
    // Every path the fake server saw parses as the query service's parameters would.
    let paths = server.paths.lock().unwrap();
    let near: Vec<&String> = paths.iter().filter(|p| p.contains("near=")).collect();
    assert!(!near.is_empty());
    for p in near {
        let (_, q) = p.split_once('?').unwrap();
        let params: HashMap<&str, &str> =
            q.split('&').filter_map(|kv| kv.split_once('=')).collect();
        assert!(shared::geo::parse_near(params["near"]).is_ok(), "{p}");
        assert_eq!(params["radius_m"], "1000", "{p}");
    }
    assert!(paths
        .iter()
        .any(|p| p.starts_with("/reports?q=") && !p.contains(' ')));
    assert!(paths
        .iter()
        .any(|p| p.starts_with("/reports/") && p.ends_with("/history")));
}

#[test]
fn max_steps_up_until_the_bound_breaks() {
    let _timed = timed();
    // A server that handles one request at a time in 4 ms: about 250 req/s at most.
    let server = start_fake(Behaviour {
        work: Duration::from_millis(4),
        ..Behaviour::default()
    });
    let cfg = config(&server.url, 0.0, 0.0, 1.0).level("max").unwrap();
    // Generous bound and big steps: other tests share the two CPUs, and the overloaded step
    // (450 req/s, ~0.8 s of backlog) breaks any bound by far.
    let search = MaxSearch {
        start_rps: 50.0,
        factor: 3.0,
        p99_bound_ms: 150.0,
        max_steps: 4,
    };
    let report = run_max(&cfg, &search).unwrap();
    let table = report.table();
    eprintln!("{table}");
    assert_eq!(report.level, "max");
    assert!(report.steps.len() >= 2, "{table}");
    assert!(report.steps[0].held, "{table}");
    let last = report.steps.last().unwrap();
    assert!(!last.held && last.why_not.is_some(), "{table}");
    let best = report.max_sustained_rps.unwrap();
    assert!((50.0..=150.0).contains(&best), "{table}");
    assert!(table.contains("highest rate that held"), "{table}");
}

#[test]
fn seed_creates_and_walks_the_workflow() {
    let _timed = timed();
    let server = start_fake(Behaviour::default());
    let summary = crate::ops::seed::seed(&server.url, 20, Some("t0ken")).unwrap();
    assert_eq!(summary.created, 20);
    assert_eq!(summary.categories.values().sum::<u64>(), 20);
    let statuses: Vec<(&str, u64)> = summary
        .statuses
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        statuses,
        [
            ("in_progress", 6),
            ("pending", 8),
            ("rejected", 2),
            ("resolved", 4)
        ]
    );
    // 20 creates + 6 + 2×4 + 2 updates.
    assert_eq!(summary.instances.values().sum::<u64>(), 36);
}

/// `--burst`: the POSTs are closed loop on a fixed set of connections (every create the fake
/// server saw is counted), and the drain returns only once every event-log row is published
/// and every query DB's checkpoint has reached the last position.
#[test]
fn burst_then_drain_waits_for_every_query_db() {
    use shared::testkit::PgCluster;

    let server = start_fake(Behaviour::default());
    let b = burst::post_burst(&server.url, None, Duration::from_millis(400), 3).unwrap();
    let posts = server
        .paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| *p == "/reports")
        .count();
    assert!(b.created >= 10 && b.errors == 0, "{b:?}");
    assert_eq!(b.created as usize, posts, "{b:?}");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3, "{b:?}");

    let pg = PgCluster::start();
    let command_url = pg.create_db("drain_command");
    shared::migrate::command_db(&mut pg.client("drain_command")).unwrap();
    let query_url = pg.create_db("drain_query");
    shared::migrate::query_db(&mut pg.client("drain_query")).unwrap();
    let mut command = pg.client("drain_command");
    for version in 1..=3i64 {
        command
            .execute(
                "INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
                 VALUES ($1, 'ReportCreated', $2, $3, '{}', now())",
                &[&Uuid::new_v4(), &Uuid::from_u128(7), &version],
            )
            .unwrap();
    }
    // A fake relay publishes after 200 ms, a fake projection reaches position 3 after 500 ms.
    let mut query = pg.client("drain_query");
    let pipeline = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        command
            .execute("UPDATE event_log SET published_at = now()", &[])
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        query
            .execute(
                "INSERT INTO checkpoint (stream, entry_id, position, updated_at) VALUES ($1, '1-0', 3, now())",
                &[&shared::event::STREAM],
            )
            .unwrap();
    });
    let started = Instant::now();
    let last = burst::drain(&command_url, &[("query-db".to_string(), query_url)]).unwrap();
    let waited = started.elapsed();
    pipeline.join().unwrap();
    assert_eq!(last, 3);
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
}

/// The drain when rows committed out of position order: the stream (and so each query DB's
/// checkpoint) ends with the last row published, position 2 here, not the highest position 3,
/// which was published first. The old check waited for 3 until its timeout (seen after a
/// burst: a DB "behind" at 121 615 of 121 687 with every entry applied).
#[test]
fn drain_ends_at_the_last_row_published_not_the_highest_position() {
    use shared::testkit::PgCluster;

    let pg = PgCluster::start();
    let command_url = pg.create_db("drain_order_command");
    shared::migrate::command_db(&mut pg.client("drain_order_command")).unwrap();
    let query_url = pg.create_db("drain_order_query");
    shared::migrate::query_db(&mut pg.client("drain_order_query")).unwrap();
    let mut command = pg.client("drain_order_command");
    for version in 1..=3i64 {
        command
            .execute(
                "INSERT INTO event_log (event_id, event_type, report_id, version, payload, created_at) \
                 VALUES ($1, 'ReportCreated', $2, $3, '{}', now())",
                &[&Uuid::new_v4(), &Uuid::from_u128(8), &version],
            )
            .unwrap();
    }
    // Position 3 committed (and was published) first, then 1 and 2 in a later relay batch.
    command
        .execute(
            "UPDATE event_log SET published_at = now() - interval '1 second' WHERE position = 3",
            &[],
        )
        .unwrap();
    command
        .execute(
            "UPDATE event_log SET published_at = now() WHERE position < 3",
            &[],
        )
        .unwrap();
    pg.client("drain_order_query")
        .execute(
            "INSERT INTO checkpoint (stream, entry_id, position, updated_at) VALUES ($1, '3-0', 2, now())",
            &[&shared::event::STREAM],
        )
        .unwrap();
    let started = Instant::now();
    let last = burst::drain(&command_url, &[("query-db".to_string(), query_url)]).unwrap();
    assert_eq!(last, 3);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

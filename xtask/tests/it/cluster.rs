//! The local cluster end to end (issue 5): `up --commands 3 --queries 3 --replicas 2 --detach
//! --auth` as real processes on free, non-default ports with its own state directory, writes
//! through nginx's write port and reads through its read port, every command and query
//! instance serving, every query DB converging with the command DB, a `kill -9`'d command
//! instance and a stopped replica not failing requests, a rebuild under write load, nginx's
//! own errors as JSON, a plain `up` on the same data being open (and saying so), and
//! `down --volumes` leaving no process and no data behind.
//!
//! It runs the debug service binaries that `cargo xtask test` builds (`XTASK_BIN_DIR`).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{bin_dir, command_model, pg, ports_of, query_model, run_xtask};
use postgres::Client;
use serde_json::{json, Value};
use shared::testkit::{http, HttpResponse};

/// A base port whose whole port set is free, below the ephemeral range so that no client
/// socket grabs one of them meanwhile.
fn free_base() -> u16 {
    let start = 12_000 + (std::process::id() % 180) as u16 * 100;
    (0..180u16)
        .map(|i| 12_000 + (start - 12_000 + i * 100) % 18_000)
        .find(|base| {
            ports_of(*base)
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("no free set of ports for the cluster")
}

struct Cluster {
    /// The state directory (`XTASK_STATE_DIR`); `down --volumes` deletes it.
    state: tempfile::TempDir,
    base: u16,
    token: String,
    down: bool,
}

impl Cluster {
    fn xtask(&self, args: &[&str]) -> Output {
        run_xtask(self.state.path(), args)
    }

    fn xtask_ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(
            out.status.success(),
            "xtask {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn write_port(&self) -> u16 {
        self.base
    }
    fn read_port(&self) -> u16 {
        self.base + 10
    }
    fn command_db(&self) -> Client {
        pg(self.base - 2640, "reports")
    }
    /// query-db-primary (r = 0) or replica r.
    fn query_db(&self, r: u16) -> Client {
        pg(self.base - 2639 + r, "reports_read")
    }

    fn state_json(&self) -> Value {
        let text =
            std::fs::read_to_string(self.state.path().join("state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json parses")
    }

    fn pid_of(&self, service: &str) -> u32 {
        self.state_json()["services"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == service)
            .and_then(|s| s["pid"].as_u64())
            .unwrap_or_else(|| panic!("no pid for {service} in state.json")) as u32
    }

    fn all_pids(&self) -> Vec<u32> {
        let state = self.state_json();
        let mut pids: Vec<u32> = state["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["pid"].as_u64())
            .map(|p| p as u32)
            .collect();
        pids.extend(state["supervisor_pid"].as_u64().map(|p| p as u32));
        pids
    }

    fn create(&self, n: usize) -> HttpResponse {
        let category = ["kebersihan", "infrastruktur", "keamanan"][n % 3];
        let body = json!({
            "title": format!("Jalan berlubang nomor {n}"),
            "description": "Lubang besar di depan pasar",
            "category": category,
        });
        self.send("POST", "/reports", &body)
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> HttpResponse {
        let auth = format!("Bearer {}", self.token);
        let body = body.to_string();
        http(
            self.write_port(),
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn read(&self, path: &str) -> HttpResponse {
        http(self.read_port(), "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.xtask(&["down", "--volumes"]);
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn instance(r: &HttpResponse) -> String {
    r.header("x-instance-id").unwrap_or("?").to_string()
}

fn expect_status(r: &HttpResponse, want: u16, what: &str) -> Value {
    assert_eq!(
        r.status,
        want,
        "{what}: expected {want}, got {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    r.json()
}

/// Waits until every listed query DB (0 = primary, r = replica r) equals the command DB.
fn converged(c: &Cluster, dbs: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut command = c.command_db();
    for &r in dbs {
        let mut query = c.query_db(r);
        loop {
            let want = command_model(&mut command);
            let got = query_model(&mut query);
            if got == want {
                println!("query DB {r} converged: {} reports", want.0.len());
                break;
            }
            if Instant::now() > deadline {
                let differ: Vec<_> = want
                    .0
                    .iter()
                    .filter(|(id, w)| got.0.get(*id) != Some(w))
                    .take(5)
                    .collect();
                panic!(
                    "query DB {r} did not converge: {} rows vs {} in command-db; first \
                     differences {differ:?}; statistics {:?} vs {:?}",
                    got.0.len(),
                    want.0.len(),
                    got.1,
                    want.1
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn local_cluster_end_to_end() {
    let started = Instant::now();
    for bin in ["command", "query", "projection"] {
        assert!(
            bin_dir().join(bin).exists(),
            "{} is missing: run `cargo xtask test` (it builds the service binaries first), \
             or `cargo build --workspace --bins`",
            bin_dir().join(bin).display()
        );
    }
    let state = tempfile::Builder::new()
        .prefix("xtask-cluster-")
        .tempdir()
        .expect("temp dir");
    // PostgreSQL runs as `postgres` when we are root: its data dir must be reachable.
    Command::new("chmod")
        .arg("755")
        .arg(state.path())
        .status()
        .expect("chmod");
    let mut c = Cluster {
        state,
        base: free_base(),
        token: String::new(),
        down: false,
    };
    let base = c.base.to_string();

    // Up, with writes behind a generated token.
    let out = c.xtask_ok(&[
        "up",
        "--commands",
        "3",
        "--queries",
        "3",
        "--replicas",
        "2",
        "--detach",
        "--no-build",
        "--no-install",
        "--auth",
        "--base-port",
        &base,
    ]);
    c.token = out
        .lines()
        .find_map(|l| l.split_once("Authorization: Bearer ").map(|x| x.1.trim()))
        .expect("the banner shows the token")
        .to_string();
    assert_eq!(c.token.len(), 32, "16 random bytes, hex");
    let token_file = c.state.path().join("auth-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token_file)
            .expect("token file")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "token file mode");
    let status = c.xtask_ok(&["status"]);
    assert!(status.contains("auth: on"), "{status}");
    assert!(
        !status.contains(&c.token),
        "status must not print the token"
    );

    // Writes need the token.
    let body = json!({"title": "t", "description": "d", "category": "lainnya"}).to_string();
    let r = http(c.write_port(), "POST", "/reports", &[], body.as_bytes()).expect("POST");
    expect_status(&r, 401, "POST without a token");
    let r = http(
        c.write_port(),
        "POST",
        "/reports",
        &[("Authorization", "Bearer wrong")],
        body.as_bytes(),
    )
    .expect("POST");
    expect_status(&r, 403, "POST with a wrong token");

    // Every command instance takes writes.
    let mut writers = BTreeSet::new();
    let mut ids = Vec::new();
    for n in 0..30 {
        let r = c.create(n);
        let v = expect_status(&r, 201, "create");
        writers.insert(instance(&r));
        ids.push(v["data"]["id"].as_str().expect("id").to_string());
    }
    for (n, id) in ids.iter().enumerate().take(6) {
        let status = ["in_progress", "resolved", "rejected"][n % 3];
        let r = c.send(
            "PUT",
            &format!("/reports/{id}"),
            &json!({ "status": status }),
        );
        expect_status(&r, 200, "update");
    }
    let r = c.send("DELETE", &format!("/reports/{}", ids[7]), &json!({}));
    expect_status(&r, 200, "delete");
    assert_eq!(
        writers,
        BTreeSet::from(["command-1", "command-2", "command-3"].map(String::from))
    );

    // Every query instance serves reads, and what was written is readable.
    let r = c.read(&format!("/reports/{}?min_version=2", ids[0]));
    let v = expect_status(&r, 200, "read your write");
    assert_eq!(v["data"]["status"], "in_progress");
    let mut readers = BTreeSet::new();
    for _ in 0..30 {
        let r = c.read("/reports?per_page=5");
        expect_status(&r, 200, "list");
        readers.insert(instance(&r));
    }
    assert_eq!(
        readers,
        BTreeSet::from(["query-1", "query-2", "query-3"].map(String::from))
    );
    converged(&c, &[0, 1, 2]);

    // A deliberate 503 is an answer, not an outage: nginx passes it on at once instead of
    // retrying it on every other instance (3 × the 2 s wait), and counts no failure for it,
    // so every instance stays in rotation afterwards.
    for _ in 0..3 {
        let asked = Instant::now();
        let r = c.read(&format!("/reports/{}?min_version=999", ids[1]));
        expect_status(&r, 503, "min_version far ahead");
        assert!(
            asked.elapsed() < Duration::from_millis(4_500),
            "the 503 took {:?}: nginx retried it on other instances",
            asked.elapsed()
        );
    }
    let mut readers = BTreeSet::new();
    for _ in 0..30 {
        let r = c.read("/reports?per_page=5");
        expect_status(&r, 200, "list after 503s");
        readers.insert(instance(&r));
    }
    assert_eq!(
        readers,
        BTreeSet::from(["query-1", "query-2", "query-3"].map(String::from)),
        "an instance that answered 503 was taken out of rotation"
    );

    // A command instance killed hard: writes still succeed (nginx tries the next one, the
    // supervisor restarts it). Once the process is gone, that is: a POST already sent to it
    // when it dies gets a 502/503, because nginx rightly never re-sends a non-idempotent
    // request (no `non_idempotent`), so the client decides whether to retry.
    let pid = c.pid_of("command-2");
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "command-2 survived kill -9");
        std::thread::sleep(Duration::from_millis(20));
    }
    // nginx notices the closed keep-alive connections on its next event-loop turn.
    std::thread::sleep(Duration::from_millis(200));
    for n in 100..120 {
        expect_status(&c.create(n), 201, "create after kill -9 of command-2");
    }
    // A replica stopped: reads and writes still succeed; query-1 fails over.
    c.xtask_ok(&["stop", "query-db-replica1"]);
    for n in 0..30 {
        expect_status(&c.read("/reports?per_page=3"), 200, "list without replica1");
        expect_status(
            &c.read(&format!("/reports/{}", ids[n % ids.len()])),
            if n % ids.len() == 7 { 404 } else { 200 },
            "get without replica1",
        );
        expect_status(&c.read("/statistics"), 200, "statistics without replica1");
    }
    for n in 200..210 {
        expect_status(&c.create(n), 201, "create without replica1");
    }
    converged(&c, &[0, 2]);

    // Rebuild replica2, gone wrong, while writes keep flowing.
    let removed: Vec<String> = c
        .query_db(2)
        .query(
            "DELETE FROM read_reports WHERE ctid IN (SELECT ctid FROM read_reports LIMIT 10) \
             RETURNING id::text",
            &[],
        )
        .expect("corrupt replica2")
        .iter()
        .map(|r| r.get(0))
        .collect();
    c.query_db(2)
        .batch_execute("UPDATE statistics SET count = count + 5")
        .expect("corrupt replica2 statistics");
    // check-sync sees it: non-zero exit, naming the DB and a report.
    let command_url = format!("postgres://postgres@127.0.0.1:{}/reports", c.base - 2640);
    let replica2 = format!(
        "query-db-replica2=postgres://postgres@127.0.0.1:{}/reports_read",
        c.base - 2637
    );
    let check = |c: &Cluster| {
        c.xtask(&[
            "check-sync",
            "--command-db",
            &command_url,
            "--query-db",
            &replica2,
            "--wait",
            "0",
        ])
    };
    let out = check(&c);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "check-sync must fail on a tampered DB:\n{text}"
    );
    assert!(text.contains("query-db-replica2"), "names the DB:\n{text}");
    assert!(
        removed.iter().any(|id| text.contains(id.as_str())),
        "names a report that differs:\n{text}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let (port, token) = (c.write_port(), c.token.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"title": format!("under rebuild {n}"),
                                  "description": "d", "category": "kesehatan"})
                .to_string();
                let auth = format!("Bearer {token}");
                let r = http(
                    port,
                    "POST",
                    "/reports",
                    &[("Authorization", &auth)],
                    body.as_bytes(),
                )
                .expect("POST during rebuild");
                assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = c.xtask_ok(&["rebuild", "--db", "query-db-replica2"]);
    assert!(out.contains("rebuilt"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer thread");
    assert!(written > 0, "writes flowed during the rebuild");
    converged(&c, &[0, 2]);
    let out = check(&c);
    assert!(
        out.status.success(),
        "check-sync after the rebuild:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The replica returns and catches up from its own checkpoint.
    c.xtask_ok(&["start", "query-db-replica1"]);
    converged(&c, &[0, 1, 2]);

    // A short bench against this cluster: every figure present, counts non-zero, no errors.
    let bench_out = c.state.path().join("bench-light.json");
    let bench_file = bench_out.display().to_string();
    c.xtask_ok(&[
        "bench",
        "--level",
        "light",
        "--duration",
        "3",
        "--token",
        &c.token,
        "--out",
        &bench_file,
    ]);
    let bench: Value =
        serde_json::from_str(&std::fs::read_to_string(&bench_out).expect("bench JSON"))
            .expect("bench JSON parses");
    for side in ["writes", "reads"] {
        let e = &bench[side];
        assert!(e["sent"].as_u64().unwrap_or(0) > 0, "{side}: sent: {e}");
        assert_eq!(e["sent"], e["ok"], "{side}: every request ok: {e}");
        assert_eq!(e["errors"], json!({}), "{side}: no errors: {e}");
        for figure in ["achieved_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
            assert!(
                e[figure].as_f64().is_some_and(|v| v > 0.0),
                "{side}.{figure}: {e}"
            );
        }
    }
    assert!(
        bench["endpoints"].as_array().is_some_and(|a| a.len() >= 5),
        "per-endpoint rows"
    );
    for side in ["write", "read"] {
        let spread = bench["instances"][side]
            .as_object()
            .expect("instance spread");
        assert!(!spread.is_empty(), "{side} instances: {spread:?}");
    }
    let lag = &bench["propagation"]["all"];
    assert!(
        lag["samples"].as_u64().unwrap_or(0) > 0,
        "propagation sampled: {lag}"
    );
    assert!(lag["p99_ms"].as_f64().is_some(), "propagation p99: {lag}");

    // Logs never hold the token.
    for entry in std::fs::read_dir(c.state.path().join("logs")).expect("logs") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            !text.contains(&c.token),
            "{} holds the token",
            path.display()
        );
    }

    // nginx answers for itself in JSON, without a version.
    let big = vec![b'x'; 100 * 1024];
    let auth = format!("Bearer {}", c.token);
    let r = http(
        c.write_port(),
        "POST",
        "/reports",
        &[("Authorization", &auth)],
        &big,
    )
    .expect("POST");
    assert_eq!(expect_status(&r, 413, "100 KiB body")["instance"], "nginx");
    assert_eq!(c.read("/health").header("server"), Some("nginx"));

    // Down keeps the data; a plain `up` on it is open, and says so.
    let pids = c.all_pids();
    assert!(pids.len() >= 14, "pids {pids:?}");
    c.xtask_ok(&["down"]);
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    let out = c.xtask_ok(&[
        "up",
        "--commands",
        "3",
        "--queries",
        "3",
        "--replicas",
        "2",
        "--detach",
        "--no-build",
        "--no-install",
        "--base-port",
        &base,
    ]);
    assert!(
        out.contains("writes are open: no auth — use --auth"),
        "{out}"
    );
    assert!(!token_file.exists(), "the old token must not turn auth on");
    assert!(c.xtask_ok(&["status"]).contains("auth: off"));
    let r = http(c.write_port(), "POST", "/reports", &[], body.as_bytes()).expect("POST");
    expect_status(&r, 201, "POST without a token, auth off");
    let v = expect_status(&c.read("/reports?per_page=1"), 200, "list after restart");
    assert!(
        v["meta"]["total"].as_u64().unwrap_or(0) > 60,
        "data kept: {v}"
    );

    // Down with volumes: no process, no data.
    let pids = c.all_pids();
    c.xtask_ok(&["down", "--volumes"]);
    c.down = true;
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running after down: {left:?}");
    assert!(!c.state.path().exists(), "state dir left behind");
    for port in ports_of(c.base) {
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still taken"
        );
    }
    println!("cluster test took {:?}", started.elapsed());
}

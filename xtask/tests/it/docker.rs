//! The topology under Docker Compose end to end (issue 10): `up --docker --commands 3
//! --queries 3 --replicas 2` on free ports in its own state directory (so its own Compose
//! project), writes through nginx reaching all 3 command containers and reads all 3 query
//! containers, every query DB converging with exact statistics; then, under light write load,
//! a crashed command container and a crashed projection container brought back by the restart
//! policy and a replica rebuilt inside the projection container, with no acknowledged write
//! lost and `check-sync` (run in the projection's container) passing; `down --volumes` leaves
//! no container, network or volume of the project.
//!
//! A crash is SIGKILL of the container's main process from the host: that is what a restart
//! policy exists for. (`docker kill` is an operator's stop to the engine: it marks the
//! container manually stopped and the policy leaves it down — checked on docker.io 20.10.)
//!
//! `up --docker` installs and starts the engine itself when none answers and reuses images
//! whose inputs are unchanged, so only the first run on a machine builds the Debian base.
//! The [`Deployment`] guard runs `down --volumes` and then removes anything still labelled
//! with its project, also when the test fails.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{command_model, pg, ports_of, query_model, run_xtask};
use postgres::Client;
use serde_json::json;
use shared::testkit::http;

/// The service image `up --docker` runs (`images::SERVICE`: the workspace version).
const SERVICE_IMAGE: &str = concat!("reporting:", env!("CARGO_PKG_VERSION"));

/// Writes per second of the light load that runs through the faults.
const LOAD_WRITES_PER_SEC: u64 = 10;

/// Debian's client, the daemon's own version, when installed (as `up --docker` leaves it).
fn docker() -> Command {
    if Path::new("/usr/bin/docker").exists() {
        Command::new("/usr/bin/docker")
    } else {
        Command::new("docker")
    }
}

fn docker_out(args: &[&str]) -> String {
    let out = docker()
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A base port whose whole set is free, every port below the ephemeral range (32768) so no
/// client socket takes one meanwhile, and apart from the cluster test's range.
fn free_base() -> u16 {
    let start = (std::process::id() % 25) as u16;
    (0..25u16)
        .map(|i| 30_000 + ((start + i) % 25) * 100)
        .find(|base| {
            ports_of(*base)
                .iter()
                .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        })
        .expect("no free set of ports for the Compose deployment")
}

struct Deployment {
    state: tempfile::TempDir,
    base: u16,
    down: bool,
}

impl Deployment {
    fn xtask(&self, args: &[&str]) -> Output {
        run_xtask(self.state.path(), args)
    }

    fn xtask_ok(&self, args: &[&str]) -> String {
        let out = self.xtask(args);
        assert!(out.status.success(), "xtask {args:?} failed (output above)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Compose project `up --docker` wrote down.
    fn project(&self) -> String {
        std::fs::read_to_string(self.state.path().join("compose/project"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn container(&self, service: &str) -> String {
        let filter_p = format!("label=com.docker.compose.project={}", self.project());
        let filter_s = format!("label=com.docker.compose.service={service}");
        docker_out(&["ps", "-aq", "--filter", &filter_p, "--filter", &filter_s])
    }

    /// (state, health, restart count) of a service's container.
    fn state_of(&self, service: &str) -> (String, String, u32) {
        let id = self.container(service);
        let out = docker_out(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}} {{.RestartCount}}",
            &id,
        ]);
        let f: Vec<&str> = out.split_whitespace().collect();
        match f.as_slice() {
            [state, health, restarts] => (
                state.to_string(),
                health.to_string(),
                restarts.parse().unwrap_or(0),
            ),
            _ => (out.clone(), String::new(), 0),
        }
    }

    /// Crashes a service: SIGKILL to its container's main process, from the host.
    fn crash(&self, service: &str) -> u32 {
        let before = self.state_of(service).2;
        let id = self.container(service);
        let pid = docker_out(&["inspect", "--format", "{{.State.Pid}}", &id]);
        assert!(
            pid.parse::<u32>().is_ok_and(|p| p > 0),
            "{service} has no running process ({pid})"
        );
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -KILL {pid} ({service})");
        println!("crashed {service} (pid {pid}, restarts so far {before})");
        before
    }

    /// Waits until the restart policy has brought `service` back, healthy.
    fn wait_restarted(&self, service: &str, restarts_before: u32) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (state, health, restarts) = self.state_of(service);
            if restarts > restarts_before && state == "running" && health == "healthy" {
                println!("{service} is back (restart {restarts}), healthy");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{service} not back after a crash: {state} {health}, restarts {restarts}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn command_db(&self) -> Client {
        pg(self.base - 2640, "reports")
    }
    /// query-db-primary (r = 0) or replica r.
    fn query_db(&self, r: u16) -> Client {
        pg(self.base - 2639 + r, "reports_read")
    }

    /// What is left of the project: containers, networks, volumes (by Compose's label).
    fn leftovers(&self, project: &str) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={project}");
        let mut left = Vec::new();
        for what in [
            &["ps", "-aq", "--filter", &filter][..],
            &["network", "ls", "-q", "--filter", &filter],
            &["volume", "ls", "-q", "--filter", &filter],
        ] {
            left.extend(
                docker_out(what)
                    .split_whitespace()
                    .map(|s| format!("{} {s}", what[0])),
            );
        }
        left
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let project = self.project();
        if !self.down {
            let _ = self.xtask(&["down", "--volumes"]);
        }
        if project.is_empty() {
            return;
        }
        // Whatever `down` could not remove (a failed test may leave odd states).
        let filter = format!("label=com.docker.compose.project={project}");
        for (list, remove) in [
            (
                &["ps", "-aq", "--filter", &filter][..],
                &["rm", "-f", "-v"][..],
            ),
            (
                &["network", "ls", "-q", "--filter", &filter],
                &["network", "rm"],
            ),
            (
                &["volume", "ls", "-q", "--filter", &filter],
                &["volume", "rm", "-f"],
            ),
        ] {
            let ids = docker_out(list);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = docker().args(remove).args(&ids).output();
            }
        }
    }
}

/// Waits until every query DB (primary, replica 1, replica 2) equals the command DB, rows
/// and statistics alike.
fn converged(d: &Deployment) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut command = d.command_db();
    for r in 0..=2 {
        let mut query = d.query_db(r);
        loop {
            let want = command_model(&mut command);
            let got = query_model(&mut query);
            if got == want {
                println!("query DB {r} converged: {} reports", want.0.len());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "query DB {r} did not converge: {} rows vs {}; statistics {:?} vs {:?}",
                got.0.len(),
                want.0.len(),
                got.1,
                want.1
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn create(port: u16, n: usize) -> Option<String> {
    let category = ["kebersihan", "infrastruktur", "keamanan"][n % 3];
    let body = json!({
        "title": format!("Lampu jalan mati nomor {n}"),
        "description": "Gelap di malam hari",
        "category": category,
    })
    .to_string();
    let r = http(
        port,
        "POST",
        "/reports",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .ok()?;
    if r.status != 201 {
        return None;
    }
    r.json()["data"]["id"].as_str().map(str::to_owned)
}

/// Light write load through nginx until stopped; returns every acknowledged report id.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            let mut failed = 0;
            let mut n = 10_000;
            while !s.load(Ordering::Relaxed) {
                n += 1;
                match create(port, n) {
                    Some(id) => a.lock().expect("acked").push(id),
                    None => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(1000 / LOAD_WRITES_PER_SEC));
            }
            failed
        });
        Load {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self
            .thread
            .take()
            .map(|t| t.join().expect("load thread"))
            .unwrap_or(0);
        let acked = self.acked.lock().expect("acked").clone();
        (acked, failed)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn up_docker_serves_survives_crashes_and_leaves_nothing() {
    let base = free_base();
    let d = Deployment {
        state: tempfile::tempdir().expect("state dir"),
        base,
        down: false,
    };
    let mut d = d;
    let port = base.to_string();
    let out = d.xtask_ok(&[
        "up",
        "--docker",
        "--commands",
        "3",
        "--queries",
        "3",
        "--replicas",
        "2",
        "--base-port",
        &port,
        "--detach",
        "--no-build",
    ]);
    // The same endpoints `up` prints.
    for line in [
        format!("writes (nginx)         http://127.0.0.1:{base}"),
        format!("reads (nginx)          http://127.0.0.1:{}", base + 10),
        "query-db-replica2".to_string(),
    ] {
        assert!(out.contains(&line), "`up --docker` did not print {line:?}");
    }
    let project = d.project();
    assert!(!project.is_empty(), "no project marker");

    // The committed command.env still holds the placeholder: the command service (same image,
    // same variable as the Kubernetes Secret feeds) refuses to start and says what to do.
    let env_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/generated/command.env");
    let env_file = env_file.to_string_lossy();
    let refused = docker()
        .args([
            "run",
            "--rm",
            "--env-file",
            &env_file,
            SERVICE_IMAGE,
            "command",
        ])
        .output()
        .expect("docker run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "placeholder token: {stderr}"
    );
    assert!(
        stderr.contains("COMMAND_API_TOKENS") && stderr.contains("openssl rand"),
        "the refusal says how to set a token: {stderr}"
    );

    // Writes reach all 3 command containers through nginx; reads all 3 query containers.
    let mut writers = BTreeSet::new();
    for n in 0..30 {
        let category = ["kebersihan", "kesehatan", "lainnya"][n % 3];
        let body = json!({"title": format!("Sampah menumpuk {n}"), "description": "Sudah seminggu", "category": category}).to_string();
        let r = http(
            base,
            "POST",
            "/reports",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .expect("POST through nginx");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        writers.insert(r.header("x-instance-id").unwrap_or("?").to_string());
        // Every third one moves on in the workflow, so statistics see status changes too.
        if n % 3 == 0 {
            let id = r.json()["data"]["id"].as_str().unwrap_or("").to_string();
            let up = http(
                base,
                "PUT",
                &format!("/reports/{id}"),
                &[("Content-Type", "application/json")],
                br#"{"status":"in_progress"}"#,
            )
            .expect("PUT through nginx");
            assert_eq!(up.status, 200, "{}", String::from_utf8_lossy(&up.body));
        }
    }
    assert_eq!(
        writers,
        BTreeSet::from(["command-1".into(), "command-2".into(), "command-3".into()]),
        "writes through nginx"
    );
    let mut readers = BTreeSet::new();
    for _ in 0..30 {
        let r = http(base + 10, "GET", "/reports?per_page=5", &[], b"").expect("GET via nginx");
        assert_eq!(r.status, 200);
        readers.insert(r.header("x-instance-id").unwrap_or("?").to_string());
    }
    assert_eq!(
        readers,
        BTreeSet::from(["query-1".into(), "query-2".into(), "query-3".into()]),
        "reads through nginx"
    );
    converged(&d);
    let status = d.xtask_ok(&["status"]);
    assert!(
        status.contains("query-db-replica2") && !status.contains("unhealthy"),
        "status"
    );

    // Under light load: crash a command container and the projection; rebuild a replica.
    let load = Load::start(base);
    std::thread::sleep(Duration::from_secs(2));
    let before = d.crash("command-2");
    d.wait_restarted("command-2", before);
    let before = d.crash("projection");
    d.wait_restarted("projection", before);
    d.xtask_ok(&["rebuild", "--db", "query-db-replica1"]);
    std::thread::sleep(Duration::from_secs(2));
    let (acked, failed) = load.finish();
    println!("load: {} writes acknowledged, {failed} not", acked.len());
    assert!(acked.len() >= 20, "too few writes went through the faults");

    // No acknowledged write lost: in the command DB and, once converged, in every query DB.
    let mut command = d.command_db();
    let ids: BTreeSet<String> = command
        .query("SELECT id::text FROM reports", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    d.xtask_ok(&["check-sync", "--wait", "60"]);
    converged(&d);

    // `down --volumes` leaves nothing of the project.
    d.xtask_ok(&["down", "--volumes"]);
    d.down = true;
    let left = d.leftovers(&project);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!d.state.path().join("compose").exists());
}

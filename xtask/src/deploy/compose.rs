//! The topology under Docker Compose: `up --docker` and, for a deployment it started, `down`,
//! `status` and `logs`.
//!
//! `up --docker` installs and starts the engine ([`crate::deploy::engine`]), builds or reuses every
//! image ([`crate::deploy::images`]), renders the Compose files into `<state dir>/compose/` and starts
//! the project, then waits until every container is running and healthy before it prints the
//! endpoints — the same ones `up` prints, because every service is published on the host's
//! loopback at its `up` port.
//!
//! The project name is written to `<state dir>/compose/project`; its presence (and no live
//! local supervisor) is what makes `down`, `status` and `logs` act on the Compose deployment.
//! Every container, network and volume of the project carries Compose's project label, so
//! `down --volumes` removes exactly what `up --docker` created.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::cluster::topology::Topology;
use crate::cluster::{alive, Layout};
use crate::deploy::engine::Engine;
use crate::deploy::render;

/// How long `up --docker` waits for every container to be healthy. A cold start (initdb of
/// each PostgreSQL, migrations) takes ~20–40 s on 2 busy cores; the rest is margin.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Compose's label naming a container's service.
const SERVICE_LABEL: &str = "com.docker.compose.service";

/// A Compose deployment of this checkout (or of `$XTASK_STATE_DIR`).
pub struct Deployment {
    dir: PathBuf,
    project: String,
    engine: Engine,
}

impl Deployment {
    fn at(layout: &Layout, engine: Engine) -> Deployment {
        let dir = layout.dir.join("compose");
        Deployment {
            project: project_name(&layout.dir),
            dir,
            engine,
        }
    }

    /// The Compose deployment `down`/`status`/`logs` should act on: one was started here and
    /// no local cluster runs in the same state directory.
    pub fn find(sh: &Shell) -> Option<Deployment> {
        let layout = Layout::new(sh);
        let local_running = layout
            .read_state()
            .ok()
            .and_then(|s| s.supervisor_pid)
            .is_some_and(alive);
        let marker = layout.dir.join("compose").join("project");
        if local_running || !marker.exists() {
            return None;
        }
        let engine = crate::deploy::engine::ensure(sh).ok()?;
        Some(Deployment::at(&layout, engine))
    }

    fn file(&self) -> PathBuf {
        self.dir.join("docker-compose.yml")
    }

    /// `docker-compose -p PROJECT -f FILE` followed by `args`.
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.engine.compose);
        c.arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(self.file())
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let status = self
            .compose(args)
            .status()
            .with_context(|| format!("run {} {}", self.engine.compose, args.join(" ")))?;
        if !status.success() {
            bail!(
                "{} {} failed ({status})",
                self.engine.compose,
                args.join(" ")
            );
        }
        Ok(())
    }

    /// (service, container state, health) of every container of the project.
    pub fn containers(&self, sh: &Shell) -> Result<Vec<(String, String, String)>> {
        let docker = &self.engine.docker;
        let filter = format!("label=com.docker.compose.project={}", self.project);
        let ids = cmd!(sh, "{docker} ps -aq --filter {filter}")
            .quiet()
            .read()
            .context("docker ps")?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let format = format!(
            "{{{{index .Config.Labels \"{SERVICE_LABEL}\"}}}} {{{{.State.Status}}}} \
             {{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{else}}}}none{{{{end}}}}"
        );
        let out = cmd!(sh, "{docker} inspect --format {format} {ids...}")
            .quiet()
            .read()
            .context("docker inspect")?;
        let mut rows: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect();
        rows.sort();
        Ok(rows)
    }

    /// `docker-compose down`, with `--volumes` also the data and the rendered files.
    pub fn down(&self, volumes: bool) -> Result<()> {
        println!("stopping the Compose project {}", self.project);
        let mut args = vec!["down", "--remove-orphans", "--timeout", "20"];
        if volumes {
            args.push("--volumes");
        }
        self.run(&args)?;
        if volumes {
            std::fs::remove_dir_all(&self.dir)
                .with_context(|| format!("remove {}", self.dir.display()))?;
            println!("removed the project's volumes and {}", self.dir.display());
        }
        Ok(())
    }

    /// Runs `projection ARGS` (rebuild, check-sync) inside the running projection container,
    /// with the projection's own environment — what an operator does with
    /// `docker-compose exec projection projection check-sync`.
    pub fn projection_op(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["exec", "-T", "projection", "projection"];
        full.extend_from_slice(args);
        self.run(&full)
    }

    /// Follows the logs of one service or all (`docker-compose logs -f`).
    pub fn logs(&self, service: Option<&str>) -> Result<()> {
        let mut args = vec!["logs", "--follow", "--tail", "50"];
        args.extend(service);
        self.run(&args)
    }

    /// One line per service (container state, health) and each query DB's checkpoint.
    pub fn status(&self, sh: &Shell, json: bool) -> Result<()> {
        let topo: Topology = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("topology.json"))
                .context("read the deployment's topology.json")?,
        )
        .context("parse topology.json")?;
        let containers = self.containers(sh)?;
        #[derive(Serialize)]
        struct Row {
            name: String,
            address: String,
            state: String,
            health: String,
        }
        let rows: Vec<Row> = topo
            .services()
            .iter()
            .map(|svc| {
                let c = containers.iter().find(|c| c.0 == svc.name);
                Row {
                    name: svc.name.clone(),
                    address: svc
                        .ports
                        .iter()
                        .map(|p| format!("127.0.0.1:{}", p.0))
                        .collect::<Vec<_>>()
                        .join(","),
                    state: c.map_or("absent".into(), |c| c.1.clone()),
                    health: c.map_or("-".into(), |c| c.2.clone()),
                }
            })
            .collect();
        let dbs = match crate::cluster::health::http_get(topo.ports.projection, "/metrics") {
            Ok((200, body)) => Ok(crate::cluster::health::parse_projection_metrics(&body)),
            Ok((code, _)) => Err(format!("projection /metrics answered {code}")),
            Err(err) => Err(format!("projection /metrics: {err:#}")),
        };
        if json {
            let value = serde_json::json!({
                "mode": "docker",
                "project": self.project,
                "services": rows,
                "query_dbs": dbs.as_ref().ok(),
                "query_dbs_error": dbs.as_ref().err(),
            });
            println!("{}", serde_json::to_string_pretty(&value)?);
            return Ok(());
        }
        println!("cluster: Docker Compose project {}", self.project);
        println!("{:<20} {:<30} {:<11} HEALTH", "SERVICE", "ADDRESS", "STATE");
        for r in &rows {
            println!(
                "{:<20} {:<30} {:<11} {}",
                r.name, r.address, r.state, r.health
            );
        }
        println!();
        println!("{:<20} {:>14} {:>10}", "QUERY DB", "CHECKPOINT", "LAG");
        match dbs {
            Ok(dbs) => {
                for db in dbs {
                    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}"));
                    println!("{:<20} {:>14} {:>10}", db.db, f(db.checkpoint), f(db.lag));
                }
            }
            Err(err) => println!("(checkpoints unavailable: {err})"),
        }
        Ok(())
    }

    /// Waits until every service of `topo` has a running, healthy container.
    fn wait_healthy(&self, sh: &Shell, topo: &Topology) -> Result<()> {
        let start = Instant::now();
        let names: Vec<String> = topo.services().into_iter().map(|s| s.name).collect();
        let mut last_report = Instant::now();
        loop {
            let containers = self.containers(sh)?;
            let pending: Vec<String> = names
                .iter()
                .filter(|n| {
                    !containers
                        .iter()
                        .any(|c| &c.0 == *n && c.1 == "running" && c.2 == "healthy")
                })
                .cloned()
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                let _ = self
                    .compose(&["logs", "--tail", "20"])
                    .args(&pending)
                    .status();
                bail!(
                    "not healthy after {}s: {} (their last log lines are above)",
                    READY_TIMEOUT.as_secs(),
                    pending.join(" ")
                );
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                println!("waiting for: {}", pending.join(" "));
                last_report = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Compose project name: `reporting` for the checkout's own state dir, else one per state
/// directory (tests and drills run their own beside a developer's).
fn project_name(state_dir: &std::path::Path) -> String {
    if state_dir.file_name().is_some_and(|n| n == ".cluster") {
        return "reporting".into();
    }
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("reporting-{:08x}", hash as u32)
}

/// What `up --docker` was asked for.
pub struct UpDocker<'a> {
    pub topo: &'a Topology,
    pub detach: bool,
    pub auth: bool,
    pub no_build: bool,
}

impl UpDocker<'_> {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let engine = crate::deploy::engine::ensure(sh)?;
        crate::deploy::images::build_all(sh, &engine, !self.no_build)?;
        let layout = Layout::new(sh);
        let dep = Deployment::at(&layout, engine);
        let fresh = !dep.dir.join("project").exists();
        if fresh {
            crate::cluster::up::check_ports_free(self.topo)?;
        }
        let root = sh.current_dir();
        for (path, text) in render::render_all(self.topo, &dep.dir, &root)? {
            render::ensure_file_contents(&path, &text, false)?;
        }
        std::fs::write(
            dep.dir.join("topology.json"),
            serde_json::to_string_pretty(self.topo)?,
        )
        .context("write topology.json")?;
        std::fs::write(dep.dir.join("project"), format!("{}\n", dep.project))
            .context("write the project marker")?;
        // The rendered env file holds the placeholder (which the command service refuses);
        // here it gets a real token, or none.
        let env_file = dep.dir.join(render::COMMAND_ENV_FILE);
        let token = if self.auth {
            Some(crate::cluster::secret::random_token()?)
        } else {
            None
        };
        crate::cluster::secret::write_private(
            &env_file,
            &render::command_env(token.as_deref().unwrap_or("")),
        )?;
        println!(
            "starting Compose project {} ({})",
            dep.project,
            dep.file().display()
        );
        dep.run(&["up", "--detach", "--no-build", "--remove-orphans"])?;
        dep.wait_healthy(sh, self.topo)?;
        println!(
            "ready: {} services, all healthy",
            self.topo.services().len()
        );
        // `up --docker` publishes every service at the same host ports as `up` (render::compose).
        for (what, url) in self.topo.endpoints() {
            println!("  {what:<22} {url}");
        }
        match &token {
            Some(token) => {
                println!("  {:<22} Authorization: Bearer {token}", "writes need");
                println!("  (token also in {}, mode 0600)", env_file.display());
            }
            None => println!("  writes are open: no auth — use --auth"),
        }
        println!(
            "`cargo xtask status`, `cargo xtask logs [SERVICE]`, `cargo xtask down [--volumes]`"
        );
        if self.detach {
            return Ok(());
        }
        // Foreground: follow the logs until Ctrl-C, then stop the project (as `up` does).
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
        }
        println!("Ctrl-C stops everything");
        let mut logs = dep
            .compose(&["logs", "--follow", "--tail", "0"])
            .stdin(Stdio::null())
            .spawn()
            .context("follow the logs")?;
        while !stop.load(Ordering::Relaxed) {
            if logs.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = logs.kill();
        let _ = logs.wait();
        dep.run(&["stop", "--timeout", "20"])
    }
}

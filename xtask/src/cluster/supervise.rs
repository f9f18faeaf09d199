//! The supervisor of the local cluster: starts every service in tiers (databases and Redis,
//! PgBouncer, our services, nginx), health-checks each tier before the next, creates the
//! databases, then keeps every child running: a child that exits unexpectedly is restarted
//! with exponential backoff and the restart is logged.
//!
//! It runs inside `cargo xtask up` (foreground: children's output streamed with a
//! `[service]` prefix, Ctrl-C stops everything in reverse order) or as the hidden
//! `cargo xtask supervise` process that `up --detach` leaves behind (children's output in
//! `.cluster/logs/<service>.log`). Either way it publishes `.cluster/state.json` and obeys
//! requests that `stop|start|restart SERVICE` drop into `.cluster/control/`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::health;
use crate::cluster::packages::{is_root, pg_tool};
use crate::cluster::topology::{Kind, Service, Target, Topology, COMMAND_DB, PG_USER, QUERY_DB};
use crate::cluster::{self, Layout, ServiceState, State};

/// First restart delay after a crash; doubles per crash up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// A crash loop settles at one attempt per this interval instead of spinning.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A child that ran this long before dying counts as healthy; its backoff starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a tier may take to become healthy (migrations run at start).
const TIER_TIMEOUT: Duration = Duration::from_secs(120);
/// Grace period between the stop signal and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How often the loop checks children, control requests and signals.
const TICK: Duration = Duration::from_millis(250);

/// Hidden `cargo xtask supervise`: the detached supervisor started by `up --detach`.
pub struct Supervise;

impl Supervise {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let layout = Layout::new(sh);
        let path = layout.topology_file();
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let topo: Topology =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Supervisor::new(sh, layout, topo, false)?.run()
    }
}

struct Proc {
    svc: Service,
    child: Option<Child>,
    /// False after `stop SERVICE`: not restarted until `start`.
    wanted: bool,
    started_at: Instant,
    restarts: u32,
    backoff: Duration,
    retry_at: Option<Instant>,
}

pub struct Supervisor<'a> {
    sh: &'a Shell,
    layout: Layout,
    topo: Topology,
    foreground: bool,
    procs: Vec<Proc>,
    term: Arc<AtomicBool>,
    phase: String,
    root: PathBuf,
    /// uid/gid of `postgres` when we are root: PostgreSQL and PgBouncer refuse to run as root.
    pg_ids: Option<(u32, u32)>,
    /// The bearer token of `up --auth` (from the state dir's 0600 file); never logged.
    auth_token: Option<String>,
}

impl<'a> Supervisor<'a> {
    pub fn new(
        sh: &'a Shell,
        layout: Layout,
        topo: Topology,
        foreground: bool,
    ) -> Result<Supervisor<'a>> {
        let pg_ids = if is_root() {
            Some(postgres_ids(sh)?)
        } else {
            None
        };
        let auth_token = read_token(&layout.auth_token_file())?;
        let procs = topo
            .services()
            .into_iter()
            .map(|svc| Proc {
                svc,
                child: None,
                wanted: true,
                started_at: Instant::now(),
                restarts: 0,
                backoff: MIN_BACKOFF,
                retry_at: None,
            })
            .collect();
        Ok(Supervisor {
            sh,
            root: sh.current_dir(),
            layout,
            topo,
            foreground,
            procs,
            term: Arc::new(AtomicBool::new(false)),
            phase: "starting".into(),
            pg_ids,
            auth_token,
        })
    }

    pub fn run(mut self) -> Result<()> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        signal_hook::flag::register(SIGINT, Arc::clone(&self.term))?;
        signal_hook::flag::register(SIGTERM, Arc::clone(&self.term))?;
        if self.foreground {
            signal_hook::flag::register(SIGHUP, Arc::clone(&self.term))?;
        } else {
            // Detached: outlive the terminal that started us.
            signal_hook::flag::register(SIGHUP, Arc::new(AtomicBool::new(false)))?;
        }
        std::fs::create_dir_all(self.layout.control())?;
        for entry in std::fs::read_dir(self.layout.control())?.flatten() {
            let _ = std::fs::remove_file(entry.path()); // stale requests of an earlier run
        }
        self.write_state();
        if let Err(err) = self.start_all() {
            self.phase = format!("failed: {err:#}");
            self.event(&format!("start-up failed: {err:#}; stopping everything"));
            self.shutdown();
            return Err(err);
        }
        self.phase = "ready".into();
        self.write_state();
        self.event("ready");
        for (what, url) in self.topo.endpoints() {
            self.event(&format!("  {what:<22} {url}"));
        }
        match (&self.auth_token, self.foreground) {
            // Foreground output is the user's terminal, not a log file: the token may show.
            (Some(token), true) => self.event(&format!(
                "  {:<22} Authorization: Bearer {token}",
                "writes need"
            )),
            (Some(_), false) => self.event(&format!(
                "  auth: on (token in {})",
                self.layout.auth_token_file().display()
            )),
            (None, _) => self.event("  writes are open: no auth — use --auth"),
        }
        if self.foreground {
            self.event("Ctrl-C stops everything");
        }
        while !self.term.load(Ordering::Relaxed) {
            self.tick();
            std::thread::sleep(TICK);
        }
        self.event("stop requested");
        self.shutdown();
        Ok(())
    }

    fn start_all(&mut self) -> Result<()> {
        for tier in 0..=3u8 {
            let idx: Vec<usize> = (0..self.procs.len())
                .filter(|i| self.procs[*i].svc.kind.tier() == tier)
                .collect();
            for &i in &idx {
                self.spawn(i)?;
            }
            self.write_state();
            self.wait_healthy(&idx)?;
            if tier == 0 {
                self.ensure_databases()?;
            }
        }
        Ok(())
    }

    fn wait_healthy(&mut self, idx: &[usize]) -> Result<()> {
        let deadline = Instant::now() + TIER_TIMEOUT;
        let mut pending: Vec<usize> = idx.to_vec();
        loop {
            if self.term.load(Ordering::Relaxed) {
                bail!("interrupted during start-up");
            }
            self.tick();
            let mut still = Vec::new();
            for &i in &pending {
                match health::check(self.sh, &self.procs[i].svc) {
                    Ok(detail) => {
                        let name = self.procs[i].svc.name.clone();
                        self.event(&format!("{name} healthy: {detail}"));
                    }
                    Err(_) => still.push(i),
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = pending
                    .iter()
                    .map(|i| self.procs[*i].svc.name.clone())
                    .collect();
                let mut msg = format!(
                    "not healthy after {}s: {}",
                    TIER_TIMEOUT.as_secs(),
                    names.join(", ")
                );
                for name in &names {
                    msg.push_str(&format!(
                        "\n--- last lines of {name}.log ---\n{}",
                        tail(&self.layout.log(name), 15)
                    ));
                }
                bail!(msg);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// `reports` on command-db and `reports_read` on every query DB, created once.
    fn ensure_databases(&self) -> Result<()> {
        let psql = pg_tool("psql");
        let createdb = pg_tool("createdb");
        for svc in self
            .topo
            .services()
            .iter()
            .filter(|s| s.kind == Kind::Postgres)
        {
            let db = if svc.name == "command-db" {
                COMMAND_DB
            } else {
                QUERY_DB
            };
            let port = svc.port().to_string();
            let sql = format!("SELECT 1 FROM pg_database WHERE datname = '{db}'");
            let exists = cmd!(
                self.sh,
                "{psql} -h 127.0.0.1 -p {port} -U {PG_USER} -d postgres -tAc {sql}"
            )
            .quiet()
            .read()
            .with_context(|| format!("query databases of {}", svc.name))?;
            if exists.trim() != "1" {
                cmd!(
                    self.sh,
                    "{createdb} -h 127.0.0.1 -p {port} -U {PG_USER} {db}"
                )
                .quiet()
                .run()
                .with_context(|| format!("create database {db} on {}", svc.name))?;
                self.event(&format!("created database {db} on {}", svc.name));
            }
        }
        Ok(())
    }

    /// One pass: control requests, crashed children, due restarts.
    fn tick(&mut self) {
        let mut changed = self.handle_control();
        for i in 0..self.procs.len() {
            let exited = match self.procs[i].child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("wait failed: {e}")),
                _ => None,
            };
            if let Some(status) = exited {
                changed = true;
                let p = &mut self.procs[i];
                p.child = None;
                if p.started_at.elapsed() >= STABLE_AFTER {
                    p.backoff = MIN_BACKOFF;
                }
                let delay = p.backoff;
                p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                p.retry_at = Some(Instant::now() + delay);
                p.restarts += 1;
                let msg = format!(
                    "{} exited unexpectedly ({status}); restart #{} in {}s",
                    p.svc.name,
                    p.restarts,
                    delay.as_secs()
                );
                self.event(&msg);
            }
            let p = &self.procs[i];
            if p.child.is_none() && p.wanted && p.retry_at.is_some_and(|t| Instant::now() >= t) {
                changed = true;
                let name = p.svc.name.clone();
                self.event(&format!("restarting {name}"));
                if let Err(err) = self.spawn(i) {
                    self.event(&format!("restart of {name} failed: {err:#}"));
                    let p = &mut self.procs[i];
                    p.retry_at = Some(Instant::now() + p.backoff);
                    p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if changed {
            self.write_state();
        }
    }

    /// Requests from `stop|start|restart SERVICE`: files `<service>.<action>` in control/.
    fn handle_control(&mut self) -> bool {
        let Ok(entries) = std::fs::read_dir(self.layout.control()) else {
            return false;
        };
        let mut changed = false;
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = std::fs::remove_file(&path);
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some((name, action)) = file.rsplit_once('.') else {
                continue;
            };
            let Some(i) = self.procs.iter().position(|p| p.svc.name == name) else {
                self.event(&format!("ignoring request for unknown service {name}"));
                continue;
            };
            changed = true;
            match action {
                "stop" => {
                    self.procs[i].wanted = false;
                    self.procs[i].retry_at = None;
                    self.event(&format!("stopping {name} on request"));
                    self.stop_procs(&[i]);
                }
                "start" | "restart" => {
                    if action == "restart" {
                        self.event(&format!("restarting {name} on request"));
                        self.stop_procs(&[i]);
                    } else {
                        self.event(&format!("starting {name} on request"));
                    }
                    let p = &mut self.procs[i];
                    p.wanted = true;
                    p.backoff = MIN_BACKOFF;
                    p.retry_at = None;
                    if p.child.is_none() {
                        if let Err(err) = self.spawn(i) {
                            self.event(&format!("start of {name} failed: {err:#}"));
                            self.procs[i].retry_at = Some(Instant::now() + MIN_BACKOFF);
                        }
                    }
                }
                other => self.event(&format!("ignoring unknown action {other} for {name}")),
            }
        }
        changed
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let svc = self.procs[i].svc.clone();
        let mut command = self.command_for(&svc)?;
        command.process_group(0).stdin(Stdio::null());
        if matches!(svc.kind, Kind::Postgres | Kind::Pgbouncer) {
            if let Some((uid, gid)) = self.pg_ids {
                // Start in the state dir: the checkout itself may be closed to `postgres`
                // (a clone under /root), and the child would fail to chdir there.
                command.uid(uid).gid(gid).current_dir(&self.layout.dir);
            }
        }
        std::fs::create_dir_all(self.layout.logs())?;
        let log_path = self.layout.log(&svc.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        // Logs append across runs and restarts; a marker shows where each one begins.
        let _ = writeln!(log, "==== {} [xtask] starting {} ====", clock(), svc.name);
        if self.foreground {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        } else {
            command.stdout(log.try_clone()?).stderr(log.try_clone()?);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", svc.name))?;
        if self.foreground {
            if let Some(out) = child.stdout.take() {
                stream(&svc.name, out, log.try_clone()?);
            }
            if let Some(err) = child.stderr.take() {
                stream(&svc.name, err, log);
            }
        }
        self.event(&format!("started {} (pid {})", svc.name, child.id()));
        let p = &mut self.procs[i];
        p.child = Some(child);
        p.started_at = Instant::now();
        p.retry_at = None;
        Ok(())
    }

    fn command_for(&self, svc: &Service) -> Result<Command> {
        let sh = self.sh;
        let l = &self.layout;
        let port = svc.port().to_string();
        let cmd = match svc.kind {
            Kind::Postgres => {
                let postgres = pg_tool("postgres");
                let data = l.data(&svc.name);
                let run = l.run();
                // fsync stays on: the local cluster is also where durability is demonstrated.
                let tuning = super::tuning::postgres_args(&svc.name);
                cmd!(
                    sh,
                    "{postgres} -D {data} -p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={run} -c fsync=on -c max_connections=300 {tuning...}"
                )
            }
            Kind::Redis => {
                let conf = l.redis_conf();
                cmd!(sh, "redis-server {conf}")
            }
            Kind::Pgbouncer => {
                let ini = l.pgbouncer().join("pgbouncer.ini");
                cmd!(sh, "pgbouncer {ini}")
            }
            Kind::Nginx => {
                let prefix = l.nginx();
                let conf = prefix.join("nginx.conf");
                cmd!(sh, "nginx -e stderr -p {prefix} -c {conf}")
            }
            Kind::Command | Kind::Query | Kind::Projection => {
                let bin = bin_dir(&self.root).join(svc.kind.bin_name());
                let mut c = cmd!(sh, "{bin}");
                for (k, v) in self.topo.env(svc, Target::Local) {
                    c = c.env(k, v);
                }
                for name in Topology::secret_env(svc.kind) {
                    // The only secret so far is the token list; absent = writes open.
                    if let (&"COMMAND_API_TOKENS", Some(token)) = (name, &self.auth_token) {
                        c = c.env(name, token);
                    }
                }
                c
            }
        };
        Ok(cmd.into())
    }

    /// Stops children: stop signal, grace period, then SIGKILL.
    fn stop_procs(&mut self, idx: &[usize]) {
        for &i in idx {
            if let Some(child) = &self.procs[i].child {
                cluster::signal(
                    self.sh,
                    child.id(),
                    cluster::stop_signal(self.procs[i].svc.kind),
                );
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            let mut running = 0;
            for &i in idx {
                let p = &mut self.procs[i];
                if let Some(child) = p.child.as_mut() {
                    match child.try_wait() {
                        Ok(None) => running += 1,
                        _ => p.child = None,
                    }
                }
            }
            if running == 0 {
                break;
            }
            if Instant::now() >= deadline {
                for &i in idx {
                    if let Some(mut child) = self.procs[i].child.take() {
                        let name = self.procs[i].svc.name.clone();
                        self.event(&format!("{name} ignored the stop signal; killing it"));
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.write_state();
    }

    /// Reverse tier order: nginx first, the databases last.
    fn shutdown(&mut self) {
        if !self.phase.starts_with("failed") {
            self.phase = "stopping".into();
        }
        self.write_state();
        for tier in (0..=3u8).rev() {
            let idx: Vec<usize> = (0..self.procs.len())
                .filter(|i| {
                    self.procs[*i].svc.kind.tier() == tier && self.procs[*i].child.is_some()
                })
                .collect();
            self.stop_procs(&idx);
        }
        if !self.phase.starts_with("failed") {
            self.phase = "stopped".into();
        }
        self.write_state();
        self.event("all services stopped");
    }

    fn write_state(&self) {
        let services = self
            .procs
            .iter()
            .map(|p| ServiceState {
                name: p.svc.name.clone(),
                kind: p.svc.kind,
                pid: p.child.as_ref().map(Child::id),
                ports: p.svc.ports.iter().map(|x| x.0).collect(),
                address: p
                    .svc
                    .ports
                    .iter()
                    .map(|x| format!("127.0.0.1:{}", x.0))
                    .collect::<Vec<_>>()
                    .join(","),
                log: self.layout.log(&p.svc.name),
                status: match (&p.child, p.wanted) {
                    (Some(_), _) => "running",
                    (None, false) => "stopped",
                    (None, true) => "restarting",
                }
                .into(),
                restarts: p.restarts,
            })
            .collect();
        let state = State {
            topology: self.topo.clone(),
            supervisor_pid: Some(std::process::id()),
            mode: if self.foreground {
                "foreground"
            } else {
                "detached"
            }
            .into(),
            phase: self.phase.clone(),
            services,
            endpoints: self.topo.endpoints(),
            auth: self.auth_token.is_some(),
        };
        if let Err(err) = self.layout.write_state(&state) {
            self.event(&format!("cannot write state: {err:#}"));
        }
    }

    fn event(&self, msg: &str) {
        println!("{} [xtask] {msg}", clock());
        let _ = std::io::stdout().flush();
    }
}

/// The token in `path`, `None` when the file does not exist (writes open).
pub fn read_token(path: &std::path::Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Ok(_) => bail!(
            "{} is empty; `cargo xtask up --auth` writes it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Where the service binaries are: `target/release`, or `$XTASK_BIN_DIR` (e.g. to run debug
/// builds or stand-ins with `up --no-build`).
pub fn bin_dir(root: &std::path::Path) -> PathBuf {
    match std::env::var_os("XTASK_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root.join("target/release"),
    }
}

fn postgres_ids(sh: &Shell) -> Result<(u32, u32)> {
    let uid = cmd!(sh, "id -u {PG_USER}")
        .quiet()
        .read()
        .context("no `postgres` user (needed to run PostgreSQL as root)")?;
    let gid = cmd!(sh, "id -g {PG_USER}").quiet().read()?;
    Ok((
        uid.trim().parse().context("uid of postgres")?,
        gid.trim().parse().context("gid of postgres")?,
    ))
}

/// Copies a child's output line by line to our stdout with a `[service]` prefix and to its
/// log file. The thread ends when the child closes the pipe.
fn stream(name: &str, from: impl Read + Send + 'static, mut log: File) {
    let prefix = format!("[{name:<18}]");
    let _ = std::thread::Builder::new()
        .name(format!("log-{name}"))
        .spawn(move || {
            let reader = BufReader::new(from);
            for line in reader.split(b'\n').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&line);
                let _ = writeln!(log, "{text}");
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{prefix} {text}");
            }
        });
}

/// Last `n` lines of a file, for error messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// UTC wall clock `HH:MM:SS`, for the supervisor's event lines.
fn clock() -> String {
    let format = time::macros::format_description!("[hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&format)
        // Formatting three always-present fields cannot fail; keep the line anyway.
        .unwrap_or_else(|_| "--:--:--".into())
}

//! `cargo xtask up`: the whole topology on this machine as real processes, no Docker.
//!
//! Prepares everything that does not need a running process (packages, release binaries,
//! free ports, `.cluster/` with initdb'd PostgreSQL clusters and the Redis, PgBouncer and nginx
//! configs rendered from [`crate::cluster::topology`]), then hands over to the supervisor: in this
//! process (foreground) or in a detached `cargo xtask supervise` process (`--detach`).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::packages::{self, is_root, pg_tool};
use crate::cluster::secret::{random_token, write_private};
use crate::cluster::supervise::{bin_dir, tail, Supervisor};
use crate::cluster::topology::{Kind, Target, Topology, PG_USER};
use crate::cluster::{alive, Layout};

/// How long `up --detach` waits for the supervisor to report the cluster ready.
const READY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct Up {
    pub topo: Topology,
    pub detach: bool,
    pub docker: bool,
    pub no_build: bool,
    pub no_install: bool,
    /// Writes need a bearer token: a random one is generated and given to every command
    /// instance as `COMMAND_API_TOKENS`.
    pub auth: bool,
}

impl Up {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let layout = Layout::new(sh);
        if let Ok(state) = layout.read_state() {
            if let Some(pid) = state.supervisor_pid.filter(|p| alive(*p)) {
                bail!("the cluster is already running (supervisor pid {pid}); `cargo xtask down` first");
            }
        }
        if !self.no_install {
            packages::ensure_installed(sh)?;
        }
        if !self.no_build {
            println!("building release binaries (cargo build --release --bins)");
            cmd!(sh, "cargo build --release --bins")
                .run()
                .context("release build failed")?;
        }
        for kind in [Kind::Command, Kind::Query, Kind::Projection] {
            let bin = bin_dir(&sh.current_dir()).join(kind.bin_name());
            if !bin.exists() {
                bail!(
                    "{} is missing; run `cargo build --release --bins`",
                    bin.display()
                );
            }
        }
        check_ports_free(&self.topo)?;
        prepare(sh, &layout, &self.topo)?;
        let token = if self.auth {
            Some(write_token(&layout.auth_token_file())?)
        } else {
            // A token file of an earlier `up --auth` would otherwise turn auth on silently.
            match std::fs::remove_file(layout.auth_token_file()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("remove the old auth token"),
            }
            None
        };

        if !self.detach {
            return Supervisor::new(sh, layout, self.topo, true)?.run();
        }
        let _ = std::fs::remove_file(layout.state_file());
        let sup_log = layout.logs().join("supervisor.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&sup_log)?;
        let exe = std::env::current_exe().context("path of the xtask binary")?;
        let child = Command::new(exe)
            .arg("supervise")
            .current_dir(sh.current_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("start the detached supervisor")?;
        let pid = child.id();
        println!("supervisor started (pid {pid}); log: {}", sup_log.display());
        // The supervisor outlives us; dropping `child` does not kill it.
        drop(child);
        let start = Instant::now();
        loop {
            if let Ok(state) = layout.read_state() {
                if state.supervisor_pid == Some(pid) {
                    if state.phase == "ready" {
                        println!("ready: {} services", state.services.len());
                        for (what, url) in &state.endpoints {
                            println!("  {what:<22} {url}");
                        }
                        match &token {
                            Some(token) => {
                                println!("  {:<22} Authorization: Bearer {token}", "writes need");
                                println!(
                                    "  (token also in {}, mode 0600)",
                                    layout.auth_token_file().display()
                                );
                            }
                            None => println!("  writes are open: no auth — use --auth"),
                        }
                        println!(
                            "logs: {}/<service>.log; `cargo xtask status`, `cargo xtask down`",
                            layout.logs().display()
                        );
                        return Ok(());
                    }
                    if state.phase.starts_with("failed") {
                        bail!("{}", state.phase);
                    }
                }
            }
            if !alive(pid) {
                bail!(
                    "the supervisor exited during start-up; last lines of its log:\n{}",
                    tail(&layout.logs().join("supervisor.log"), 30)
                );
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "cluster not ready after {}s; see {}",
                    READY_TIMEOUT.as_secs(),
                    layout.logs().display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Writes a fresh random token to `path`, readable by the owner only, and returns it.
fn write_token(path: &std::path::Path) -> Result<String> {
    let token = random_token()?;
    write_private(path, &format!("{token}\n"))?;
    Ok(token)
}

/// A clear error naming the port, its service and the flag that moves it.
pub fn check_ports_free(topo: &Topology) -> Result<()> {
    for svc in topo.services() {
        for (port, flag) in &svc.ports {
            if TcpListener::bind(("127.0.0.1", *port)).is_err() {
                bail!(
                    "port {port} (for {}) is already in use; move it with --{flag} <PORT> \
                     or shift every port with --base-port <P>",
                    svc.name
                );
            }
        }
    }
    Ok(())
}

/// Creates `.cluster/` and everything in it that does not need a running process.
fn prepare(sh: &Shell, layout: &Layout, topo: &Topology) -> Result<()> {
    for dir in [
        layout.dir.clone(),
        layout.logs(),
        layout.run(),
        layout.control(),
        layout.nginx().join("tmp"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    }
    // initdb refuses to run as root; `env` is a no-op wrapper for the non-root case.
    let (wrap, wrap_args): (&str, &[&str]) = if is_root() {
        ("runuser", &["-u", PG_USER, "--"])
    } else {
        ("env", &[])
    };
    let run = layout.run();
    if is_root() {
        cmd!(sh, "chown {PG_USER}: {run}").quiet().run()?;
        // PostgreSQL runs as `postgres`: every directory above its data must be traversable.
        let state_dir = &layout.dir;
        if cmd!(sh, "runuser -u {PG_USER} -- test -x {state_dir}")
            .quiet()
            .run()
            .is_err()
        {
            bail!(
                "user {PG_USER} cannot reach {} (a parent directory is not world-executable); \
                 clone the repository somewhere like /srv or /work, or `chmod o+x` its parents",
                state_dir.display()
            );
        }
    }
    for svc in topo.services().iter().filter(|s| s.kind == Kind::Postgres) {
        let data = layout.data(&svc.name);
        if data.join("PG_VERSION").exists() {
            continue;
        }
        println!("initdb {} ({})", svc.name, data.display());
        std::fs::create_dir_all(&data)?;
        if is_root() {
            cmd!(sh, "chown {PG_USER}: {data}").quiet().run()?;
        }
        cmd!(sh, "chmod 700 {data}").quiet().run()?;
        let initdb = pg_tool("initdb");
        cmd!(sh, "{wrap} {wrap_args...} {initdb} -D {data} -U {PG_USER} --auth=trust -E UTF8 --no-locale")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("initdb for {}", svc.name))?;
    }

    let redis_dir = layout.data("redis");
    std::fs::create_dir_all(&redis_dir)?;
    let redis_conf = format!(
        "# Generated by `cargo xtask up`.\nbind 127.0.0.1\nport {}\ndaemonize no\ndir {}\n\
         appendonly yes\nappendfsync everysec\nsave \"{}\"\nlogfile \"\"\nprotected-mode yes\n",
        topo.ports.redis,
        redis_dir.display(),
        super::tuning::REDIS_SAVE
    );
    write(&layout.redis_conf(), &redis_conf)?;

    let pgb = layout.pgbouncer();
    write(
        &pgb.join("pgbouncer.ini"),
        &topo.pgbouncer_ini(Target::Local, Some(&pgb)),
    )?;
    write(&pgb.join("userlist.txt"), &topo.pgbouncer_userlist())?;
    write(
        &layout.nginx().join("nginx.conf"),
        &topo.nginx_conf(Target::Local, Some(&layout.nginx())),
    )?;
    write(
        &layout.topology_file(),
        &serde_json::to_string_pretty(topo)?,
    )?;
    Ok(())
}

fn write(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

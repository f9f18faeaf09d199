//! The local cluster's state directory `.cluster/` (gitignored) and its state file, shared by
//! `up`, the supervisor, `down`, `status`, `logs` and `stop|start|restart`.
//!
//! Layout: `data/<service>` (PostgreSQL clusters, Redis AOF), `run/` (unix sockets), `logs/`,
//! `nginx/`, `pgbouncer/`, `redis/redis.conf`, `control/` (requests to the supervisor) and
//! `state.json` (what runs where; rewritten by the supervisor on every change), and
//! `auth-token` (mode 0600, only with `up --auth`).
//!
//! `$XTASK_STATE_DIR` moves the whole directory elsewhere (tests run a second cluster in a
//! temp dir without touching a developer's); every command and the detached supervisor read
//! the same variable, so they agree on it. Without it, the directory is `<root>/.cluster`,
//! unless PostgreSQL — run as `postgres` when we are root — could not reach it (a checkout
//! under `/root`, say): then it is `/var/tmp/laporan-warga-cluster-<hash of the root>`, the
//! same for every command run from that checkout.

pub mod health;
pub mod local;
pub mod logs;
pub mod ops;
pub mod packages;
pub mod secret;
pub mod status;
pub mod supervise;
pub mod topology;
pub mod tuning;
pub mod up;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::cluster::topology::{Kind, Topology};

/// Overrides the state directory (default `<root>/.cluster`).
pub const STATE_DIR_ENV: &str = "XTASK_STATE_DIR";

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(sh: &Shell) -> Layout {
        let root = sh.current_dir();
        let dir = match std::env::var_os(STATE_DIR_ENV) {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ if crate::cluster::packages::is_root() && !others_can_traverse(&root) => {
                PathBuf::from(format!(
                    "/var/tmp/laporan-warga-cluster-{:016x}",
                    fnv1a(&root)
                ))
            }
            _ => root.join(".cluster"),
        };
        Layout { dir }
    }
    pub fn data(&self, service: &str) -> PathBuf {
        self.dir.join("data").join(service)
    }
    pub fn run(&self) -> PathBuf {
        self.dir.join("run")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn log(&self, service: &str) -> PathBuf {
        self.logs().join(format!("{service}.log"))
    }
    pub fn nginx(&self) -> PathBuf {
        self.dir.join("nginx")
    }
    pub fn pgbouncer(&self) -> PathBuf {
        self.dir.join("pgbouncer")
    }
    pub fn redis_conf(&self) -> PathBuf {
        self.dir.join("redis").join("redis.conf")
    }
    pub fn control(&self) -> PathBuf {
        self.dir.join("control")
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn topology_file(&self) -> PathBuf {
        self.dir.join("topology.json")
    }
    /// The bearer token of `up --auth`; absent when writes are open.
    pub fn auth_token_file(&self) -> PathBuf {
        self.dir.join("auth-token")
    }

    pub fn read_state(&self) -> Result<State> {
        let path = self.state_file();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster state at {} (run `cargo xtask up` first)",
                path.display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// Atomic replace, so readers never see a half-written file.
    pub fn write_state(&self, state: &State) -> Result<()> {
        let path = self.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(state)?;
        std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))?;
        Ok(())
    }

    /// The running supervisor's state, or an error saying the cluster is not up.
    /// The local cluster's topology from its state file, or the default one (saying so) when
    /// there is none: commands that only need addresses work against default ports too.
    pub fn topology_or_default(&self) -> Topology {
        match self.read_state() {
            Ok(state) => state.topology,
            Err(err) => {
                eprintln!("note: {err:#}; assuming the default local ports");
                Topology::default()
            }
        }
    }

    pub fn running_state(&self) -> Result<State> {
        let state = self.read_state()?;
        if !state.supervisor_pid.is_some_and(alive) {
            bail!(
                "the cluster is not running (no live supervisor); start it with `cargo xtask up`"
            );
        }
        Ok(state)
    }
}

/// `.cluster/state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub topology: Topology,
    pub supervisor_pid: Option<u32>,
    /// `foreground` or `detached`.
    pub mode: String,
    /// `starting`, `ready`, `stopping`, `stopped` or `failed: <reason>`.
    pub phase: String,
    pub services: Vec<ServiceState>,
    /// User-facing endpoints.
    pub endpoints: Vec<(String, String)>,
    /// Whether writes need a bearer token (`up --auth`); the token itself is never here.
    #[serde(default)]
    pub auth: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub kind: Kind,
    pub pid: Option<u32>,
    pub ports: Vec<u16>,
    pub address: String,
    pub log: PathBuf,
    /// `running`, `stopped` (on request), `restarting` (after a crash, in backoff).
    pub status: String,
    pub restarts: u32,
}

/// Whether every directory from `/` down to `dir` lets other users through (`o+x`), so the
/// `postgres` user can reach a data directory below it.
fn others_can_traverse(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A stable 64-bit FNV-1a hash of a path, to name its fallback state directory.
fn fnv1a(path: &std::path::Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

pub fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; treat it as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends a signal by name (`TERM`, `INT`, `KILL`) with `kill(1)`: this crate forbids unsafe.
pub fn signal(sh: &Shell, pid: u32, sig: &str) {
    let pid = pid.to_string();
    let _ = cmd!(sh, "kill -{sig} {pid}").quiet().ignore_stderr().run();
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask down [--volumes]`.
pub struct Down {
    pub volumes: bool,
}

impl Down {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if let Some(deployment) = crate::deploy::compose::Deployment::find(sh) {
            return deployment.down(self.volumes);
        }
        let layout = Layout::new(sh);
        if let Ok(state) = layout.read_state() {
            if let Some(pid) = state.supervisor_pid.filter(|p| alive(*p)) {
                println!("stopping the cluster (supervisor pid {pid})");
                signal(sh, pid, "TERM");
                if !wait_until(Duration::from_secs(90), || !alive(pid)) {
                    bail!("supervisor {pid} did not stop within 90 s");
                }
            }
            // Anything left behind by a supervisor that died (kill -9, machine trouble).
            let mut left = Vec::new();
            for svc in state.services.iter().rev() {
                if let Some(pid) = svc.pid.filter(|p| alive(*p)) {
                    println!("stopping leftover {} (pid {pid})", svc.name);
                    signal(sh, pid, stop_signal(svc.kind));
                    left.push(pid);
                }
            }
            if !wait_until(Duration::from_secs(20), || left.iter().all(|p| !alive(*p))) {
                for pid in left.iter().filter(|p| alive(**p)) {
                    signal(sh, *pid, "KILL");
                }
            }
            println!("cluster stopped");
        } else {
            println!("no cluster state found; nothing to stop");
        }
        if self.volumes && layout.dir.exists() {
            std::fs::remove_dir_all(&layout.dir)
                .with_context(|| format!("remove {}", layout.dir.display()))?;
            println!("removed {}", layout.dir.display());
        }
        Ok(())
    }
}

/// The signal that shuts a service down quickly and cleanly: PostgreSQL's SIGTERM is "smart"
/// shutdown (waits for every client to leave), SIGINT is "fast"; the rest stop on SIGTERM.
pub fn stop_signal(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => "INT",
        _ => "TERM",
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn fallback_state_dir_only_when_postgres_cannot_traverse() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let open = tmp.path().join("open");
        let closed = tmp.path().join("closed");
        let inner = closed.join("repo");
        std::fs::create_dir_all(&open).expect("mkdir");
        std::fs::create_dir_all(&inner).expect("mkdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(others_can_traverse(&open));
        assert!(!others_can_traverse(&inner));
        // Stable per path, different between paths.
        assert_eq!(fnv1a(&inner), fnv1a(&inner.clone()));
        assert_ne!(fnv1a(&inner), fnv1a(&open));
    }
}

//! The Docker engine and Compose that `images` and `up --docker` drive: installed from Debian's
//! archive when missing (`docker.io`, `docker-compose`, and `debootstrap` for the base image),
//! and `dockerd` started by us when no engine answers.
//!
//! Guarantees: after [`ensure`] returns, `docker info` answers through the returned
//! [`Engine`], whose `docker` is a client that speaks the running daemon's API and whose
//! `compose` is a Compose that supports `depends_on: condition: service_healthy`. A dockerd we
//! started keeps running after we exit (it is the machine's engine from then on); its log is
//! [`DOCKERD_LOG`].

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::packages;

/// Debian packages the container paths need, with a file proving each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("docker.io", "/usr/sbin/dockerd"),
    // Compose v1 (python); Debian bookworm has no v2 plugin. It reads `depends_on` conditions.
    ("docker-compose", "/usr/bin/docker-compose"),
    // Builds the base image when `debian:bookworm-slim` cannot be pulled.
    ("debootstrap", "/usr/sbin/debootstrap"),
];

/// Where a dockerd started by us writes its log.
pub const DOCKERD_LOG: &str = "/var/log/xtask-dockerd.log";

/// How long a freshly started dockerd may take to answer `docker info`. It is usually ready in
/// 1–3 s; the margin covers a busy 2-core machine running the test suite meanwhile.
const DOCKERD_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The two clients everything else calls.
pub struct Engine {
    /// The docker CLI: Debian's (`/usr/bin/docker`, same version as its daemon) when present,
    /// else whatever `docker` is on `$PATH` (API version negotiation lets a newer client talk
    /// to an older daemon).
    pub docker: String,
    /// Compose: `docker-compose` (v1) from Debian.
    pub compose: String,
}

/// Installs what is missing (saying so), starts dockerd when none answers, and returns the
/// clients to use.
pub fn ensure(sh: &Shell) -> Result<Engine> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        packages::install(
            sh,
            &missing,
            "the Docker engine, Compose and the base image builder",
        )?;
    }
    let docker = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker".to_string()
    } else {
        "docker".to_string()
    };
    let engine = Engine {
        docker,
        compose: "docker-compose".to_string(),
    };
    if !engine.answers(sh) {
        start_dockerd(sh, &engine)?;
    }
    Ok(engine)
}

impl Engine {
    /// Whether `docker info` answers (an engine runs and we may talk to it).
    pub fn answers(&self, sh: &Shell) -> bool {
        let docker = &self.docker;
        cmd!(sh, "{docker} info")
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .is_ok()
    }
}

fn start_dockerd(sh: &Shell, engine: &Engine) -> Result<()> {
    if !packages::is_root() {
        bail!(
            "no Docker engine answers (`{} info` failed) and starting dockerd needs root; \
             start it (e.g. `sudo systemctl start docker`) or add yourself to the docker group",
            engine.docker
        );
    }
    println!("no Docker engine answers: starting dockerd (log: {DOCKERD_LOG})");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("open {DOCKERD_LOG}"))?;
    // Its own process group, so a Ctrl-C meant for us does not stop the machine's engine.
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("/usr/sbin/dockerd")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("dup the dockerd log")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("start /usr/sbin/dockerd")?;
    let start = Instant::now();
    loop {
        if engine.answers(sh) {
            println!(
                "dockerd is up (pid {}, {:.1}s)",
                child.id(),
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "dockerd exited during start-up ({status}); last lines of {DOCKERD_LOG}:\n{}",
                crate::cluster::supervise::tail(Path::new(DOCKERD_LOG), 20)
            );
        }
        if start.elapsed() > DOCKERD_START_TIMEOUT {
            bail!(
                "dockerd did not answer within {}s; see {DOCKERD_LOG}",
                DOCKERD_START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

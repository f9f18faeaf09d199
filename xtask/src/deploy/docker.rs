//! Docker paths: `cargo xtask images` (build the service image from `deploy/Dockerfile`) and
//! `cargo xtask up --docker` (render the Compose file for the topology, then
//! `docker compose up --build`). Both check first that a Docker engine answers, so a machine
//! without one gets a clear error instead of a connection trace.

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::render::{self, IMAGE};
use crate::topology::Topology;

/// Where `up --docker` renders its files (gitignored with the rest of `.cluster/`).
const COMPOSE_DIR: &str = ".cluster/compose";

pub struct Images;

impl Images {
    pub fn run(self, sh: &Shell) -> Result<()> {
        require_engine(sh)?;
        cmd!(sh, "docker build -f deploy/Dockerfile -t {IMAGE} .")
            .run()
            .context("docker build failed")?;
        println!("built {IMAGE} (binaries: command, query, projection)");
        Ok(())
    }
}

pub fn compose_up(sh: &Shell, topo: &Topology, detach: bool, auth: bool) -> Result<()> {
    require_engine(sh)?;
    let root = sh.current_dir();
    let out = root.join(COMPOSE_DIR);
    for (path, text) in render::render_all(topo, &out, &root)? {
        render::ensure_file_contents(&path, &text, false)?;
    }
    // The rendered env file holds a placeholder; here it gets a real token, or none.
    let env_file = out.join(render::COMMAND_ENV_FILE);
    if auth {
        let token = crate::up::random_token()?;
        crate::up::write_private(&env_file, &render::command_env(&token))?;
        println!("writes need: Authorization: Bearer {token}");
    } else {
        crate::up::write_private(&env_file, &render::command_env(""))?;
        println!("writes are open: no auth — use --auth");
    }
    let file = out.join("docker-compose.yml");
    let detach: &[&str] = if detach { &["--detach"] } else { &[] };
    cmd!(sh, "docker compose -f {file} up --build {detach...}")
        .run()
        .context("docker compose up failed")?;
    Ok(())
}

fn require_engine(sh: &Shell) -> Result<()> {
    if cmd!(sh, "docker --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        bail!("the docker CLI is not installed; use `cargo xtask up` (local processes) instead");
    }
    if cmd!(sh, "docker info")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        bail!(
            "no Docker engine answers on this machine (`docker info` failed); start dockerd, \
             or use `cargo xtask up` to run the topology as local processes"
        );
    }
    Ok(())
}

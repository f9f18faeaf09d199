//! `cargo xtask rebuild --db NAME` and `cargo xtask check-sync`: the read model's operations
//! on the local cluster. Both live in the projection (`projection::rebuild`,
//! `projection::check_sync`) and run as subcommands of its binary, so any deployment can run
//! them; this module only hands the binary the local cluster's environment.
//!
//! Guarantees: nothing here knows how a read model is built or checked; the projection
//! binary's exit code and output are passed through unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::Layout;
use crate::topology::{Target, Topology};

/// `cargo xtask rebuild --db NAME` on the running local cluster.
pub struct Rebuild {
    pub db: String,
}

impl Rebuild {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let state = Layout::new(sh).running_state()?;
        let env = ProjectionEnv::of(&state.topology);
        let bin = projection_bin(&sh.current_dir())?;
        let db = &self.db;
        env.apply(cmd!(sh, "{bin} rebuild --db {db}"))
            .quiet()
            .run()
            .with_context(|| format!("rebuild of {db} failed"))?;
        Ok(())
    }
}

/// `cargo xtask check-sync [--command-db URL] [--query-db name=URL …] [--wait S]`: the local
/// cluster's DBs unless given.
pub struct CheckSync {
    pub command_db: Option<String>,
    pub query_dbs: Vec<(String, String)>,
    pub wait: Option<Duration>,
}

impl CheckSync {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let mut env = match (&self.command_db, self.query_dbs.is_empty()) {
            (Some(_), false) => ProjectionEnv::default(),
            _ => ProjectionEnv::of(&Layout::new(sh).topology_or_default()),
        };
        if let Some(url) = self.command_db {
            env.command_db = url;
        }
        if !self.query_dbs.is_empty() {
            env.query_dbs = self.query_dbs;
        }
        let bin = projection_bin(&sh.current_dir())?;
        let wait = self.wait.map(|w| w.as_secs_f64().to_string());
        let wait = wait.iter().flat_map(|w| ["--wait", w.as_str()]);
        env.apply(cmd!(sh, "{bin} check-sync {wait...}"))
            .quiet()
            .run()
            .context("check-sync failed")?;
        Ok(())
    }
}

/// The environment the projection binary's subcommands read.
#[derive(Clone, Debug, Default)]
pub struct ProjectionEnv {
    pub command_db: String,
    /// Every query DB by its service name, reached directly (not through PgBouncer).
    pub query_dbs: Vec<(String, String)>,
}

impl ProjectionEnv {
    pub fn of(topo: &Topology) -> ProjectionEnv {
        ProjectionEnv {
            command_db: topo.command_db_url(Target::Local),
            query_dbs: topo
                .query_db_names()
                .into_iter()
                .map(|name| {
                    let url = topo.query_db_url(&name, Target::Local);
                    (name, url)
                })
                .collect(),
        }
    }

    /// `QUERY_DATABASE_URLS` as the projection parses it.
    pub fn query_database_urls(&self) -> String {
        let urls: Vec<String> = self
            .query_dbs
            .iter()
            .map(|(name, url)| format!("{name}={url}"))
            .collect();
        urls.join(",")
    }

    pub fn apply<'a>(&self, cmd: xshell::Cmd<'a>) -> xshell::Cmd<'a> {
        cmd.env("COMMAND_DATABASE_URL", &self.command_db)
            .env("QUERY_DATABASE_URLS", self.query_database_urls())
            .env("INSTANCE_ID", "projection-ops")
    }
}

/// The projection binary `up` runs (`target/release`, or `$XTASK_BIN_DIR`).
pub fn projection_bin(root: &Path) -> Result<PathBuf> {
    let bin = crate::supervise::bin_dir(root).join("projection");
    if !bin.exists() {
        bail!(
            "{} is missing; run `cargo build --release --bins` (or `cargo xtask up`)",
            bin.display()
        );
    }
    Ok(bin)
}

//! `cargo xtask`: the project's task runner (build, test, run the local cluster, render
//! deployment files).
//!
//! This file only parses the command line into a [`Task`], changes to the project root and
//! dispatches to one module per command. Errors are `anyhow` chains printed with `{:#}` and a
//! non-zero exit code; nothing here panics on user input.

mod bench;
mod cluster;
mod deploy;
mod drill;
mod flags;
mod http;
mod ops;
mod test;

// Old paths of the moved modules, until their users are updated.
use cluster::{health, logs, packages, status, supervise, topology, up};
use deploy::{docker, render};
use ops::read_model as rebuild;
use ops::seed;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::Task;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let task = flags::parse(std::env::args_os().skip(1))?;
    let sh = Shell::new()?;
    let root = project_root()?;
    sh.change_dir(&root);
    match task {
        Task::Help => {
            print!("{}", flags::HELP);
            Ok(())
        }
        Task::Test(t) => t.run(&sh),
        Task::Up(t) => t.run(&sh),
        Task::Supervise(t) => t.run(&sh),
        Task::Down(t) => t.run(&sh),
        Task::Status(t) => t.run(&sh),
        Task::Logs(t) => t.run(&sh),
        Task::Service(t) => t.run(&sh),
        Task::Render(t) => t.run(&sh),
        Task::Images(t) => t.run(&sh),
        Task::Rebuild(t) => t.run(&sh),
        Task::Drill(t) => t.run(&sh),
        Task::Bench(t) => t.run(&sh),
        Task::Seed(t) => t.run(&sh),
        Task::CheckSync(t) => t.run(&sh),
    }
}

/// The workspace root: the parent of this crate's manifest directory, fixed at compile time
/// so `cargo xtask` works from any sub-directory (and the detached supervisor, re-executed from
/// `target/`, finds the same root).
fn project_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = dir
        .parent()
        .context("xtask manifest dir has no parent")?
        .to_path_buf();
    Ok(root)
}

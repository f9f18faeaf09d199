//! From parsed [`Args`] to the struct of the module that runs each command: one function per
//! command, named after it, referenced by its entry in [`super::declare::COMMANDS`].
//!
//! Values arrive checked against their declared kind and with their defaults filled in; what is
//! left here is what involves more than one flag (ports moved by `--base-port`, bench modes
//! that exclude each other).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use super::args::Args;
use super::Task;
use crate::cluster::ops::{ServiceAction, ServiceOp};
use crate::cluster::topology::{Ports, Topology};

/// A flag with a declared default or `required`: the parser guarantees a value.
fn given<T>(value: Option<T>, args: &Args, key: &str) -> Result<T> {
    value.with_context(|| format!("`{}`: --{key} has no value", args.command))
}

pub fn test(_: &Args) -> Result<Task> {
    Ok(Task::Test(crate::test::Test))
}

pub fn up(a: &Args) -> Result<Task> {
    let commands = given(a.int("commands")?, a, "commands")?;
    let queries = given(a.int("queries")?, a, "queries")?;
    let replicas = given(a.int("replicas")?, a, "replicas")?;
    let mut ports = match a.int::<u16>("base-port")? {
        Some(base) => Ports::with_base(base)?,
        None => Ports::default(),
    };
    for flag in Ports::FLAGS {
        if let Some(port) = a.int::<u16>(flag)? {
            ports.set(flag, port)?;
        }
    }
    let mut topo = Topology::new(commands, queries, replicas, ports);
    topo.rate_limits = !a.on("no-rate-limit");
    topo.validate()?;
    Ok(Task::Up(crate::cluster::up::Up {
        topo,
        detach: a.on("detach"),
        docker: a.on("docker"),
        no_build: a.on("no-build"),
        no_install: a.on("no-install"),
        auth: a.on("auth"),
    }))
}

pub fn supervise(_: &Args) -> Result<Task> {
    Ok(Task::Supervise(crate::cluster::supervise::Supervise))
}

pub fn down(a: &Args) -> Result<Task> {
    Ok(Task::Down(crate::cluster::Down {
        volumes: a.on("volumes"),
    }))
}

pub fn status(a: &Args) -> Result<Task> {
    Ok(Task::Status(crate::cluster::status::Status {
        json: a.on("json"),
    }))
}

pub fn logs(a: &Args) -> Result<Task> {
    Ok(Task::Logs(crate::cluster::logs::Logs {
        service: a.text("service")?,
    }))
}

fn service(a: &Args, action: ServiceAction) -> Result<Task> {
    let service = given(a.text("service")?, a, "service")?;
    Ok(Task::Service(ServiceOp { action, service }))
}

pub fn stop(a: &Args) -> Result<Task> {
    service(a, ServiceAction::Stop)
}

pub fn start(a: &Args) -> Result<Task> {
    service(a, ServiceAction::Start)
}

pub fn restart(a: &Args) -> Result<Task> {
    service(a, ServiceAction::Restart)
}

pub fn render(a: &Args) -> Result<Task> {
    let topo = Topology::new(
        given(a.int("commands")?, a, "commands")?,
        given(a.int("queries")?, a, "queries")?,
        given(a.int("replicas")?, a, "replicas")?,
        Ports::default(),
    );
    Ok(Task::Render(crate::deploy::render::Render {
        topo,
        out: PathBuf::from(given(a.text("out")?, a, "out")?),
        check: a.on("check"),
    }))
}

pub fn images(a: &Args) -> Result<Task> {
    Ok(Task::Images(crate::deploy::images::Images {
        no_build: a.on("no-build"),
    }))
}

pub fn drill(a: &Args) -> Result<Task> {
    Ok(Task::Drill(crate::drill::Drill {
        short: a.on("short"),
        keep: a.on("keep"),
        base_port: given(a.int("base-port")?, a, "base-port")?,
    }))
}

pub fn rebuild(a: &Args) -> Result<Task> {
    Ok(Task::Rebuild(crate::ops::read_model::Rebuild {
        db: given(a.text("db")?, a, "db")?,
    }))
}

pub fn seed(a: &Args) -> Result<Task> {
    Ok(Task::Seed(crate::ops::seed::Seed {
        count: given(a.int("count")?, a, "count")?,
        write_url: a.text("write-url")?,
        token: a.text("token")?,
    }))
}

pub fn check_sync(a: &Args) -> Result<Task> {
    Ok(Task::CheckSync(crate::ops::read_model::CheckSync {
        command_db: a.text("command-db")?,
        query_dbs: a.named("query-db")?,
        wait: a.decimal("wait")?.map(Duration::from_secs_f64),
    }))
}

pub fn bench(a: &Args) -> Result<Task> {
    let mix = match a.text("mix")? {
        Some(text) => Some(crate::bench::Mix::parse(&text)?),
        None => None,
    };
    let bench = crate::bench::Bench {
        level: a.text("level")?,
        write_rps: a.decimal("write-rps")?,
        read_rps: a.decimal("read-rps")?,
        duration: a.decimal("duration")?,
        mix,
        write_url: a.text("write-url")?,
        read_url: a.text("read-url")?,
        out: a.text("out")?.map(PathBuf::from),
        compare: a.text("compare")?.map(PathBuf::from),
        token: a.text("token")?,
        query_dbs: a.named("query-db")?,
        no_lag: a.on("no-lag"),
        connections: a.int("connections")?,
        burst: a.decimal("burst")?,
        runs: a.int("runs")?,
        throughput: a.on("throughput"),
        scale: a.int("scale")?,
    };
    bench.check()?;
    Ok(Task::Bench(Box::new(bench)))
}

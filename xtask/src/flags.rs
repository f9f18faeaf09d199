//! Command-line parsing for `cargo xtask` (lexopt, no clap).
//!
//! Every sub-command becomes one struct owned by the module that runs it; this file only turns
//! `argv` into those structs, with an error naming the flag whenever a value is bad.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use lexopt::prelude::*;

use crate::ops::{ServiceAction, ServiceOp};
use crate::topology::{Ports, Topology};

pub const HELP: &str = "\
cargo xtask <COMMAND>

Commands:
  test                                   install what is missing, fmt + clippy + cargo test
  up --commands N --queries M [--replicas R] [--detach] [--docker] [--auth]
     [--base-port P] [--no-rate-limit] [--no-build] [--no-install] [port flags]
                                         run the whole topology as local processes
                                         (--auth: writes need a generated bearer token;
                                         $XTASK_STATE_DIR moves .cluster elsewhere;
                                         --no-rate-limit: no nginx limit_req, for capacity benchmarks)
  down [--volumes]                       stop everything (--volumes deletes .cluster data)
  status [--json]                        pid, address, health, checkpoints and lag
  logs [SERVICE]                         follow the log file(s)
  stop|start|restart SERVICE             one service by its name (e.g. query-db-replica1)
  render [--commands N --queries M --replicas R] [--out DIR] [--check]
                                         docker-compose.yml, nginx.conf, pgbouncer.ini, k8s/
                                         (default 3/3/2 into deploy/generated, committed)
  images                                 docker build of the service image
  drill [--short] [--keep] [--base-port P]
                                         fault drills under load on a separate cluster:
                                         kills, hangs, restarts; 0 writes lost or it fails
  rebuild --db NAME                      rebuild one query DB's read model from command-db while
                                         the system serves (NAME: query-db-primary, query-db-replicaK)
  seed [N] [--write-url URL] [--token T] create N reports (default 100), all categories/statuses
  check-sync [--command-db URL] [--query-db name=URL ...] [--wait S]
                                         compare command DB with every query DB (default: local)
  bench [--level light|medium|heavy|extreme|stress|max] [--write-rps W --read-rps R]
        [--duration S] [--mix list=40,id=20,category=25,stats=10,health=5]
        [--write-url URL] [--read-url URL] [--query-db name=URL ...] [--no-lag]
        [--out FILE] [--compare OLD.json] [--token T] [--max-workers N]
                                         open-loop load, latency from intended send time,
                                         JSON to target/bench/<time>-<level>.json
                                         (--token defaults to $XTASK_TOKEN)
  bench --throughput [--duration S] [--out FILE] [--token T]
                                         closed loop (wrk -t1 -c64, S s each, default 5):
                                         pgbench -S ceiling, reads to query-1 and via nginx,
                                         POST to command-1, projection events/s, RSS;
                                         JSON to target/bench/<time>-throughput.json
  bench --scale N                        the query service's statements at N reports in a
                                         scratch DB: EXPLAIN (no seq scan) and latency

Port flags (defaults; --base-port P shifts all of them by P-8080):
  --write-port 8080 --read-port 8090 --command-port-base 8100 (command-k = base+k)
  --query-port-base 8200 (query-k = base+k) --projection-port 8070
  --command-db-port 5440 --query-db-port 5441 (replica r = port+r)
  --redis-port 6390 --pgbouncer-port 6440
";

pub enum Task {
    Help,
    Test(crate::test::Test),
    Up(crate::up::Up),
    Supervise(crate::supervise::Supervise),
    Down(crate::cluster::Down),
    Status(crate::status::Status),
    Logs(crate::logs::Logs),
    Service(ServiceOp),
    Render(crate::render::Render),
    Images(crate::docker::Images),
    Rebuild(crate::rebuild::Rebuild),
    Drill(crate::drill::Drill),
    Bench(Box<crate::bench::Bench>),
    Seed(crate::seed::Seed),
    CheckSync(crate::rebuild::CheckSync),
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Task> {
    let mut p = lexopt::Parser::from_iter(std::iter::once(OsString::from("xtask")).chain(args));
    let sub = match p.next()? {
        None => return Ok(Task::Help),
        Some(Value(v)) => v.string()?,
        Some(Short('h') | Long("help")) => return Ok(Task::Help),
        Some(arg) => bail!("{}", arg.unexpected()),
    };
    let task = match sub.as_str() {
        "help" => Task::Help,
        "test" => {
            no_more(&mut p)?;
            Task::Test(crate::test::Test)
        }
        "up" => Task::Up(parse_up(&mut p)?),
        "supervise" => {
            no_more(&mut p)?;
            Task::Supervise(crate::supervise::Supervise)
        }
        "down" => {
            let mut volumes = false;
            while let Some(arg) = p.next()? {
                match arg {
                    Long("volumes") | Short('v') => volumes = true,
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            Task::Down(crate::cluster::Down { volumes })
        }
        "status" => {
            let mut json = false;
            while let Some(arg) = p.next()? {
                match arg {
                    Long("json") => json = true,
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            Task::Status(crate::status::Status { json })
        }
        "logs" => {
            let mut service = None;
            while let Some(arg) = p.next()? {
                match arg {
                    Value(v) if service.is_none() => service = Some(v.string()?),
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            Task::Logs(crate::logs::Logs { service })
        }
        "stop" | "start" | "restart" => {
            let action = match sub.as_str() {
                "stop" => ServiceAction::Stop,
                "start" => ServiceAction::Start,
                _ => ServiceAction::Restart,
            };
            let mut service = None;
            while let Some(arg) = p.next()? {
                match arg {
                    Value(v) if service.is_none() => service = Some(v.string()?),
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            let service = service.with_context(|| format!("`{sub}` needs a SERVICE name"))?;
            Task::Service(ServiceOp { action, service })
        }
        "render" => {
            let mut topo = crate::render::default_topology();
            let mut out = PathBuf::from(crate::render::DEFAULT_OUT);
            let mut check = false;
            while let Some(arg) = p.next()? {
                match arg {
                    Long("commands") => topo.commands = count(&mut p, "--commands")?,
                    Long("queries") => topo.queries = count(&mut p, "--queries")?,
                    Long("replicas") => topo.replicas = number(&mut p, "--replicas")?,
                    Long("out") => out = PathBuf::from(p.value()?),
                    Long("check") => check = true,
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            Task::Render(crate::render::Render { topo, out, check })
        }
        "bench" => Task::Bench(Box::new(crate::bench::Bench::parse(&mut p)?)),
        "seed" => Task::Seed(crate::seed::Seed::parse(&mut p)?),
        "check-sync" => {
            let mut c = crate::rebuild::CheckSync {
                command_db: None,
                query_dbs: Vec::new(),
                wait: None,
            };
            while let Some(arg) = p.next()? {
                match arg {
                    Long("command-db") => c.command_db = Some(p.value()?.string()?),
                    Long("query-db") => {
                        let raw = p.value()?.string()?;
                        c.query_dbs
                            .push(crate::bench::parse_named_url("--query-db", &raw)?);
                    }
                    Long("wait") => {
                        let secs: f64 = number(&mut p, "--wait")?;
                        if !(0.0..=3600.0).contains(&secs) {
                            bail!("--wait expects seconds (0..3600), got `{secs}`");
                        }
                        c.wait = Some(std::time::Duration::from_secs_f64(secs));
                    }
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            Task::CheckSync(c)
        }
        "rebuild" => {
            let mut db = None;
            while let Some(arg) = p.next()? {
                match arg {
                    Long("db") => db = Some(p.value()?.string()?),
                    Value(v) if db.is_none() => db = Some(v.string()?),
                    _ => bail!("{}", arg.unexpected()),
                }
            }
            let db =
                db.context("`rebuild` needs --db NAME (query-db-primary, query-db-replicaK)")?;
            Task::Rebuild(crate::rebuild::Rebuild { db })
        }
        "drill" => Task::Drill(crate::drill::Drill::parse(&mut p)?),
        "images" => {
            no_more(&mut p)?;
            Task::Images(crate::docker::Images)
        }
        other => bail!("unknown command `{other}`\n\n{HELP}"),
    };
    Ok(task)
}

fn parse_up(p: &mut lexopt::Parser) -> Result<crate::up::Up> {
    let mut commands = None;
    let mut queries = None;
    let mut replicas = 0;
    let mut up = crate::up::Up::default();
    let mut base_port: Option<u16> = None;
    let mut explicit: Vec<(&'static str, u16)> = Vec::new();
    let mut no_rate_limit = false;
    while let Some(arg) = p.next()? {
        match arg {
            Long("commands") => commands = Some(count(p, "--commands")?),
            Long("queries") => queries = Some(count(p, "--queries")?),
            Long("replicas") => replicas = number(p, "--replicas")?,
            Long("detach") | Short('d') => up.detach = true,
            Long("docker") => up.docker = true,
            Long("no-build") => up.no_build = true,
            Long("no-install") => up.no_install = true,
            Long("auth") => up.auth = true,
            Long("no-rate-limit") => no_rate_limit = true,
            Long("base-port") => base_port = Some(number(p, "--base-port")?),
            Long(flag) => {
                let Some(flag) = Ports::FLAGS.iter().copied().find(|f| *f == flag) else {
                    bail!("unknown flag --{flag} for `up`\n\n{HELP}");
                };
                explicit.push((flag, number(p, &format!("--{flag}"))?));
            }
            _ => bail!("{}", arg.unexpected()),
        }
    }
    let commands = commands.context("`up` needs --commands N")?;
    let queries = queries.context("`up` needs --queries M")?;
    let mut ports = match base_port {
        Some(base) => Ports::with_base(base)?,
        None => Ports::default(),
    };
    for (flag, value) in explicit {
        ports.set(flag, value)?;
    }
    up.topo = Topology::new(commands, queries, replicas, ports);
    up.topo.rate_limits = !no_rate_limit;
    up.topo.validate()?;
    Ok(up)
}

fn no_more(p: &mut lexopt::Parser) -> Result<()> {
    if let Some(arg) = p.next()? {
        bail!("{}", arg.unexpected());
    }
    Ok(())
}

fn number<T: std::str::FromStr>(p: &mut lexopt::Parser, flag: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let raw = p.value()?.string()?;
    raw.parse::<T>()
        .with_context(|| format!("{flag} expects a number, got `{raw}`"))
}

fn count(p: &mut lexopt::Parser, flag: &str) -> Result<u32> {
    let n: u32 = number(p, flag)?;
    if n == 0 {
        bail!("{flag} must be at least 1");
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Task> {
        parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn up_flags() {
        let Ok(Task::Up(up)) =
            parse_str("up --commands 2 --queries 3 --replicas 1 --detach --redis-port 7000")
        else {
            panic!("expected up");
        };
        assert_eq!(
            (up.topo.commands, up.topo.queries, up.topo.replicas),
            (2, 3, 1)
        );
        assert!(up.detach);
        assert_eq!(up.topo.ports.redis, 7000);
        assert_eq!(up.topo.ports.write, 8080);
    }

    #[test]
    fn base_port_shifts_everything() {
        let Ok(Task::Up(up)) = parse_str("up --commands 1 --queries 1 --base-port 9080") else {
            panic!("expected up");
        };
        assert_eq!(up.topo.ports.write, 9080);
        assert_eq!(up.topo.ports.redis, 7390);
        assert_eq!(up.topo.ports.command_db, 6440);
    }

    #[test]
    fn rate_limits_are_on_unless_turned_off() {
        let Ok(Task::Up(on)) = parse_str("up --commands 1 --queries 1") else {
            panic!("expected up");
        };
        assert!(on.topo.rate_limits);
        let conf = on.topo.nginx_conf(crate::topology::Target::Local, None);
        assert_eq!(conf.matches("limit_req zone=").count(), 2, "{conf}");
        let Ok(Task::Up(off)) = parse_str("up --commands 1 --queries 1 --no-rate-limit") else {
            panic!("expected up");
        };
        assert!(!off.topo.rate_limits);
        let conf = off.topo.nginx_conf(crate::topology::Target::Local, None);
        assert_eq!(conf.matches("limit_req zone=").count(), 0, "{conf}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse_str("up --commands x --queries 1")
            .err()
            .map(|e| format!("{e:#}"));
        assert!(err.unwrap_or_default().contains("--commands"));
        assert!(parse_str("up --queries 1").is_err());
        assert!(parse_str("bogus").is_err());
        assert!(parse_str("stop").is_err());
    }
}

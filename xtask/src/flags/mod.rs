//! The `cargo xtask` command line, declared once.
//!
//! Layout: [`declare`] lists every command and flag with its value kind, default and one-line
//! doc; [`args`] parses `argv` against that list (over lexopt, with the one value parser);
//! [`help`] writes `--help` from the same list; [`build`] turns each command's parsed flags
//! into the struct of the module that runs it. Adding a flag is one entry in [`declare`] and
//! one line in [`build`]; the help follows by itself.

mod args;
mod build;
mod declare;
mod help;

use std::ffi::OsString;

use anyhow::Result;

use crate::cluster::ops::ServiceOp;

pub enum Task {
    /// The help text to print (the overview, or one command's).
    Help(String),
    Test(crate::test::Test),
    Up(crate::cluster::up::Up),
    Supervise(crate::cluster::supervise::Supervise),
    Down(crate::cluster::Down),
    Status(crate::cluster::status::Status),
    Logs(crate::cluster::logs::Logs),
    Service(ServiceOp),
    Render(crate::deploy::render::Render),
    Images(crate::deploy::images::Images),
    Rebuild(crate::ops::read_model::Rebuild),
    Drill(crate::drill::Drill),
    Bench(Box<crate::bench::Bench>),
    Seed(crate::ops::seed::Seed),
    CheckSync(crate::ops::read_model::CheckSync),
}

/// `argv` without the program name → the task to run; an error names the flag and what it
/// expects.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Task> {
    match args::parse(declare::COMMANDS, args)? {
        args::Parsed::Help(None) => Ok(Task::Help(help::overview(declare::COMMANDS))),
        args::Parsed::Help(Some(command)) => Ok(Task::Help(help::command(command))),
        args::Parsed::Run(command, args) => (command.build)(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::args::{Flag, Kind, Parsed};
    use super::declare::COMMANDS;
    use super::*;
    use crate::cluster::topology::Ports;

    fn parse_str(s: &str) -> Result<Task> {
        parse(s.split_whitespace().map(OsString::from))
    }

    /// The error of `argv` (`{:#}`), or a note that it parsed.
    fn error_of(argv: &str) -> String {
        match parse_str(argv) {
            Ok(_) => format!("`{argv}` parsed"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// `argv` fails with an error containing `expect`.
    fn check_err(argv: &str, expect: &str) {
        let got = error_of(argv);
        assert!(
            got.contains(expect),
            "`{argv}`: expected {expect:?}, got {got:?}"
        );
    }

    /// A valid value for `flag` alone.
    fn sample(flag: &Flag) -> String {
        match (flag.long, flag.kind) {
            ("level", _) => "medium".into(),
            ("mix", _) => "list=1,id=1".into(),
            (_, Kind::Int { min, .. }) => min.max(1).to_string(),
            (_, Kind::Port) => "30000".into(),
            (_, Kind::Decimal { max, .. }) => max.to_string(),
            (_, Kind::NamedUrl) => "q=postgres://h/db".into(),
            _ => "x".into(),
        }
    }

    /// `command` with its required flags and positional filled in.
    fn minimal(name: &str) -> Vec<String> {
        let Some(c) = COMMANDS.iter().find(|c| c.name == name) else {
            panic!("no command {name}");
        };
        let mut argv = vec![name.to_owned()];
        if let Some(p) = c.positional.as_ref().filter(|p| p.required) {
            argv.push(sample(p));
        }
        for f in c.flags.iter().filter(|f| f.required) {
            argv.push(format!("--{}", f.long));
            argv.push(sample(f));
        }
        argv
    }

    #[test]
    fn every_flag_of_every_command_parses_alone() {
        for c in COMMANDS {
            for f in c.flags.iter().chain(&c.positional) {
                let mut argv = minimal(c.name);
                let as_positional = c.positional.as_ref().is_some_and(|p| std::ptr::eq(p, f));
                if !as_positional {
                    argv.push(format!("--{}", f.long));
                }
                // A required positional is in `minimal` already.
                if f.kind != Kind::Switch && !(as_positional && f.required) {
                    argv.push(sample(f));
                }
                let parsed = args::parse(COMMANDS, argv.iter().map(OsString::from));
                let Ok(Parsed::Run(_, a)) = parsed else {
                    panic!("{argv:?} did not parse to a run");
                };
                let task = (c.build)(&a);
                assert!(
                    task.is_ok(),
                    "{argv:?}: {:#}",
                    task.err().map(|e| e.to_string()).unwrap_or_default()
                );
            }
        }
    }

    #[test]
    fn help_lists_every_command_and_flag() {
        let overview = match parse_str("--help") {
            Ok(Task::Help(text)) => text,
            _ => panic!("--help is not help"),
        };
        assert!(matches!(parse_str(""), Ok(Task::Help(t)) if t == overview));
        assert!(matches!(parse_str("help"), Ok(Task::Help(t)) if t == overview));
        for c in COMMANDS {
            let line = format!("\n  {}", c.name);
            assert_eq!(overview.contains(&line), !c.hidden, "{}", c.name);
            let own = match parse_str(&format!("{} --help", c.name)) {
                Ok(Task::Help(text)) => text,
                _ => panic!("{} --help is not help", c.name),
            };
            assert!(
                matches!(parse_str(&format!("help {}", c.name)), Ok(Task::Help(t)) if t == own)
            );
            assert!(own.starts_with(&format!("cargo xtask {}", c.name)), "{own}");
            assert!(own.contains(c.doc), "{own}");
            for f in c.flags {
                if !c.hidden {
                    assert!(
                        overview.contains(&format!("--{}", f.long)),
                        "{} --{}",
                        c.name,
                        f.long
                    );
                }
                assert!(own.contains(&f.usage()), "{} --{}: {own}", c.name, f.long);
                let facts = own
                    .replace("\n ", " ")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !matches!(f.kind, Kind::Switch | Kind::Text) {
                    assert!(
                        facts.contains(&f.kind.expects()),
                        "{} --{}: {own}",
                        c.name,
                        f.long
                    );
                }
                if let Some(d) = f.default.or(f.otherwise) {
                    assert!(
                        facts.contains(&format!("default {d}")),
                        "{} --{}: {own}",
                        c.name,
                        f.long
                    );
                }
            }
        }
    }

    #[test]
    fn declared_port_defaults_are_the_topology_defaults() {
        let Some(up) = COMMANDS.iter().find(|c| c.name == "up") else {
            panic!("no up");
        };
        for name in Ports::FLAGS {
            let Some(f) = up.flags.iter().find(|f| f.long == *name) else {
                panic!("up does not declare --{name}");
            };
            assert_eq!(f.kind, Kind::Port);
            let shown = f
                .otherwise
                .and_then(|o| o.split(',').next())
                .unwrap_or_default();
            let mut ports = Ports::default();
            ports.set(name, shown.parse().unwrap_or(0)).unwrap();
            assert_eq!(ports, Ports::default(), "--{name} shows {shown}");
        }
    }

    #[test]
    fn render_defaults_are_the_original_deployment() {
        let Ok(Task::Render(r)) = parse_str("render") else {
            panic!("expected render");
        };
        assert_eq!(r.topo, crate::deploy::render::default_topology());
        assert_eq!(
            r.out,
            std::path::Path::new(crate::deploy::render::DEFAULT_OUT)
        );
        assert!(!r.check);
        let Ok(Task::Render(r)) =
            parse_str("render --commands 2 --queries 1 --replicas 0 --out /tmp/x --check")
        else {
            panic!("expected render");
        };
        assert_eq!(
            (r.topo.commands, r.topo.queries, r.topo.replicas),
            (2, 1, 0)
        );
        assert_eq!(r.out, std::path::Path::new("/tmp/x"));
        assert!(r.check);
    }

    #[test]
    fn seed_drill_rebuild_check_sync_and_services() {
        let Ok(Task::Seed(s)) = parse_str("seed") else {
            panic!("expected seed");
        };
        assert_eq!((s.count, s.write_url, s.token), (100, None, None));
        let Ok(Task::Seed(s)) = parse_str("seed 7 --write-url http://h:1 --token t") else {
            panic!("expected seed");
        };
        assert_eq!(
            (s.count, s.write_url.as_deref(), s.token.as_deref()),
            (7, Some("http://h:1"), Some("t"))
        );

        let Ok(Task::Drill(d)) = parse_str("drill") else {
            panic!("expected drill");
        };
        assert_eq!((d.short, d.keep, d.base_port), (false, false, 28080));
        let Ok(Task::Drill(d)) = parse_str("drill --short --keep --base-port 30080") else {
            panic!("expected drill");
        };
        assert_eq!((d.short, d.keep, d.base_port), (true, true, 30080));

        for argv in [
            "rebuild --db query-db-replica1",
            "rebuild query-db-replica1",
        ] {
            let Ok(Task::Rebuild(r)) = parse_str(argv) else {
                panic!("expected rebuild: {argv}");
            };
            assert_eq!(r.db, "query-db-replica1");
        }

        let Ok(Task::CheckSync(c)) = parse_str("check-sync") else {
            panic!("expected check-sync");
        };
        assert!(c.command_db.is_none() && c.query_dbs.is_empty() && c.wait.is_none());
        let Ok(Task::CheckSync(c)) = parse_str(
            "check-sync --command-db postgres://c --query-db a=postgres://x --query-db b=postgres://y --wait 2.5",
        ) else {
            panic!("expected check-sync");
        };
        assert_eq!(c.command_db.as_deref(), Some("postgres://c"));
        assert_eq!(
            c.query_dbs,
            [
                ("a".into(), "postgres://x".into()),
                ("b".into(), "postgres://y".into())
            ]
        );
        assert_eq!(c.wait, Some(std::time::Duration::from_millis(2500)));

        let Ok(Task::Service(op)) = parse_str("restart query-db-replica1") else {
            panic!("expected restart");
        };
        assert_eq!(op.service, "query-db-replica1");
        assert!(matches!(
            op.action,
            crate::cluster::ops::ServiceAction::Restart
        ));
        let Ok(Task::Logs(l)) = parse_str("logs") else {
            panic!("expected logs");
        };
        assert!(l.service.is_none());
        let Ok(Task::Down(d)) = parse_str("down -v") else {
            panic!("expected down");
        };
        assert!(d.volumes);
        assert!(matches!(parse_str("status --json"), Ok(Task::Status(s)) if s.json));
        assert!(matches!(parse_str("images --no-build"), Ok(Task::Images(i)) if i.no_build));
        assert!(
            matches!(parse_str("up --docker --commands 1 --queries 1 --auth -d"), Ok(Task::Up(u)) if u.docker && u.auth && u.detach && !u.no_build)
        );
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
    fn up_defaults_to_the_original_two_replicas() {
        let Ok(Task::Up(up)) = parse_str("up --commands 3 --queries 3") else {
            panic!("expected up");
        };
        assert_eq!(up.topo.replicas, 2);
        let Ok(Task::Up(up)) = parse_str("up --commands 3 --queries 3 --replicas 0") else {
            panic!("expected up");
        };
        assert_eq!(up.topo.replicas, 0);
        assert_eq!(up.topo.query_db_names(), ["query-db-primary"]);
        let Ok(Task::Render(render)) = parse_str("render") else {
            panic!("expected render");
        };
        assert_eq!(render.topo.replicas, 2);
    }

    #[test]
    fn base_port_shifts_everything() {
        let Ok(Task::Up(up)) = parse_str("up --commands 1 --queries 1 --base-port 9080") else {
            panic!("expected up");
        };
        assert_eq!(up.topo.ports.write, 9080);
        assert_eq!(up.topo.ports.redis, 7390);
        assert_eq!(up.topo.ports.command_db, 6440);
        // An explicit port flag wins over the shift.
        let Ok(Task::Up(up)) =
            parse_str("up --commands 1 --queries 1 --base-port 9080 --redis-port 7001")
        else {
            panic!("expected up");
        };
        assert_eq!((up.topo.ports.write, up.topo.ports.redis), (9080, 7001));
    }

    #[test]
    fn rate_limits_are_on_unless_turned_off() {
        let Ok(Task::Up(on)) = parse_str("up --commands 1 --queries 1") else {
            panic!("expected up");
        };
        assert!(on.topo.rate_limits);
        let conf = on
            .topo
            .nginx_conf(crate::cluster::topology::Target::Local, None);
        assert_eq!(conf.matches("limit_req zone=").count(), 2, "{conf}");
        let Ok(Task::Up(off)) = parse_str("up --commands 1 --queries 1 --no-rate-limit") else {
            panic!("expected up");
        };
        assert!(!off.topo.rate_limits);
        let conf = off
            .topo
            .nginx_conf(crate::cluster::topology::Target::Local, None);
        assert_eq!(conf.matches("limit_req zone=").count(), 0, "{conf}");
    }

    #[test]
    fn bad_values_name_the_flag_and_what_it_expects() {
        for (argv, expect) in [
            (
                "up --commands x --queries 1",
                r#"--commands expects a positive integer, got "x""#,
            ),
            (
                "up --commands 0 --queries 1",
                r#"--commands expects a positive integer, got "0""#,
            ),
            (
                "up --commands 1 --queries 1 --replicas -1",
                r#"--replicas expects a non-negative integer, got "-1""#,
            ),
            (
                "up --commands 1 --queries 1 --base-port 70000",
                r#"--base-port expects a port number from 1 to 65535, got "70000""#,
            ),
            (
                "up --commands 1 --queries 1 --redis-port y",
                r#"--redis-port expects a port number"#,
            ),
            ("up --commands", "--commands expects a positive integer"),
            ("up --queries 1", "`up` needs --commands N"),
            (
                "up --commands 1 --queries 1 --bogus",
                "--bogus is not a flag of `up`",
            ),
            (
                "render --replicas many",
                r#"--replicas expects a non-negative integer, got "many""#,
            ),
            (
                "drill --base-port 0",
                r#"--base-port expects a port number from 1 to 65535, got "0""#,
            ),
            ("drill --fast", "--fast is not a flag of `drill`"),
            (
                "seed x",
                r#"N of `seed` expects a non-negative integer, got "x""#,
            ),
            ("seed 1 2", "unexpected argument"),
            (
                "check-sync --wait 4000",
                r#"--wait expects seconds from 0 to 3600, got "4000""#,
            ),
            (
                "check-sync --query-db nourl",
                r#"--query-db expects name=postgres://…, got "nourl""#,
            ),
            (
                "bench --duration 0",
                r#"--duration expects seconds above 0 and at most 86400, got "0""#,
            ),
            ("bench --duration x", "--duration expects seconds"),
            (
                "bench --write-rps nan",
                "--write-rps expects requests per second from 0 to 1000000",
            ),
            (
                "bench --connections 0",
                r#"--connections expects a positive integer, got "0""#,
            ),
            ("bench --scale -5", "--scale expects a non-negative integer"),
            ("bench --level huge", "unknown level `huge`"),
            ("bench --mix list=1,bogus=2", "bogus"),
            ("bench --throughput --level light", "--throughput"),
            ("rebuild", "`rebuild` needs --db NAME"),
            ("stop", "`stop` needs SERVICE"),
            ("status --json=1", "--json"),
            ("bogus", "unknown command `bogus`"),
            ("--commands 1", "the command comes first"),
        ] {
            check_err(argv, expect);
        }
    }
}

//! The projection binary's operator subcommands: `projection rebuild --db NAME` and
//! `projection check-sync [--wait S]`. They read the same environment as the service
//! (`QUERY_DATABASE_URLS` names the query DBs, plus `COMMAND_DATABASE_URL`), so every
//! deployment that runs the projection — the local cluster, Compose, Kubernetes — can run
//! them in the projection's own container; `cargo xtask rebuild`/`check-sync` only call them.
//!
//! Guarantees: flags are parsed here only and the usage text sits next to the parser; a bad
//! flag or an unknown DB name exits 2 naming it, a failed rebuild or an unreachable DB exits 3,
//! differences found by `check-sync` exit 1 — never a panic.

use std::time::Duration;

use shared::config::{self, NamedDb};

use crate::check_sync::{self, DEFAULT_WAIT};
use crate::config::{QUERY_DATABASE_URLS, QUERY_DATABASE_URLS_DEFAULT};
use crate::rebuild::{self, RebuildConfig};

/// The command DB the subcommands read, named as the command service names it.
pub const COMMAND_DATABASE_URL: &str = "COMMAND_DATABASE_URL";
pub const COMMAND_DATABASE_URL_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/reports";

/// Longest `--wait` accepted: an hour is far beyond any catch-up; a larger value is a typo.
const MAX_WAIT_SECS: f64 = 3600.0;

/// Exit codes, documented in [`USAGE`].
pub const EXIT_DIFFERENCES: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_FAILED: i32 = 3;

pub const USAGE: &str = "\
usage: projection                      run the service (configured by the environment)
       projection rebuild --db NAME    rebuild query DB NAME (a name in QUERY_DATABASE_URLS)
                                       from COMMAND_DATABASE_URL under the writers' lock;
                                       the service may keep running meanwhile
       projection check-sync [--wait S]
                                       compare COMMAND_DATABASE_URL with every query DB in
                                       QUERY_DATABASE_URLS, re-checking up to S seconds
                                       (default 5) while they catch up
exit: 0 done / in sync, 1 out of sync, 2 bad usage or configuration, 3 a DB failed
";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Subcommand {
    /// No arguments: run the service.
    Serve,
    Help,
    Rebuild {
        db: String,
    },
    CheckSync {
        wait: Duration,
    },
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Subcommand, String> {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Ok(Subcommand::Serve);
    };
    let mut db = None;
    let mut wait = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match (first.as_str(), flag.as_str()) {
            (_, "-h" | "--help") => return Ok(Subcommand::Help),
            ("rebuild", "--db") => db = Some(value()?),
            ("check-sync", "--wait") => {
                let raw = value()?;
                let secs = raw
                    .parse::<f64>()
                    .ok()
                    .filter(|s| (0.0..=MAX_WAIT_SECS).contains(s))
                    .ok_or_else(|| format!("--wait expects seconds (0..3600), got `{raw}`"))?;
                wait = Some(Duration::from_secs_f64(secs));
            }
            (sub, _) => return Err(format!("unexpected argument `{arg}` for `{sub}`")),
        }
    }
    match first.as_str() {
        "-h" | "--help" | "help" => Ok(Subcommand::Help),
        "rebuild" => Ok(Subcommand::Rebuild {
            db: db.ok_or("`rebuild` needs --db NAME")?,
        }),
        "check-sync" => Ok(Subcommand::CheckSync {
            wait: wait.unwrap_or(DEFAULT_WAIT),
        }),
        other => Err(format!("unknown subcommand `{other}`")),
    }
}

/// Runs an operator subcommand (not [`Subcommand::Serve`]) and returns the exit code.
pub fn run(sub: Subcommand) -> i32 {
    if matches!(sub, Subcommand::Serve | Subcommand::Help) {
        print!("{USAGE}");
        return 0;
    }
    let query_dbs = match query_dbs() {
        Ok(dbs) => dbs,
        Err(e) => {
            shared::error!("configuration: {e}");
            return EXIT_USAGE;
        }
    };
    let command_url = config::string(COMMAND_DATABASE_URL, COMMAND_DATABASE_URL_DEFAULT);
    match sub {
        Subcommand::Serve | Subcommand::Help => 0,
        Subcommand::Rebuild { db } => {
            let names: Vec<String> = query_dbs.iter().map(|d| d.name.clone()).collect();
            let Some(target) = query_dbs.into_iter().find(|d| d.name == db) else {
                shared::error!(
                    "no query DB `{db}` in {QUERY_DATABASE_URLS}; the query DBs are: {}",
                    names.join(" ")
                );
                return EXIT_USAGE;
            };
            println!(
                "rebuilding {db} from command-db (its projection writer waits meanwhile; reads go on)"
            );
            match rebuild::rebuild(&RebuildConfig {
                command_url,
                target,
            }) {
                Ok(report) => {
                    println!("{}", report.render());
                    0
                }
                Err(e) => {
                    shared::error!("rebuild of {db}: {e}");
                    EXIT_FAILED
                }
            }
        }
        Subcommand::CheckSync { wait } => {
            match check_sync::check_until(&command_url, &query_dbs, wait) {
                Ok(diffs) => {
                    for d in &diffs {
                        println!("{}", d.render());
                    }
                    let bad: Vec<&str> = diffs
                        .iter()
                        .filter(|d| !d.in_sync())
                        .map(|d| d.db.as_str())
                        .collect();
                    if bad.is_empty() {
                        return 0;
                    }
                    shared::error!(
                        "out of sync with command-db: {} (after waiting {:.1} s)",
                        bad.join(", "),
                        wait.as_secs_f64()
                    );
                    EXIT_DIFFERENCES
                }
                Err(e) => {
                    shared::error!("check-sync: {e}");
                    EXIT_FAILED
                }
            }
        }
    }
}

fn query_dbs() -> Result<Vec<NamedDb>, config::ConfigError> {
    let urls = config::string(QUERY_DATABASE_URLS, QUERY_DATABASE_URLS_DEFAULT);
    config::named_dbs(QUERY_DATABASE_URLS, &urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expect: Result<Subcommand, &str>) {
        let got = parse(args.iter().map(|a| a.to_string()));
        assert_eq!(got, expect.map_err(str::to_owned), "args {args:?}");
    }

    #[test]
    fn parses_the_subcommands() {
        check(&[], Ok(Subcommand::Serve));
        check(&["--help"], Ok(Subcommand::Help));
        check(&["rebuild", "--help"], Ok(Subcommand::Help));
        check(
            &["rebuild", "--db", "query-db-replica1"],
            Ok(Subcommand::Rebuild {
                db: "query-db-replica1".into(),
            }),
        );
        check(
            &["rebuild", "--db=query-db-primary"],
            Ok(Subcommand::Rebuild {
                db: "query-db-primary".into(),
            }),
        );
        check(&["rebuild"], Err("`rebuild` needs --db NAME"));
        check(&["rebuild", "--db"], Err("--db needs a value"));
        check(
            &["check-sync"],
            Ok(Subcommand::CheckSync { wait: DEFAULT_WAIT }),
        );
        check(
            &["check-sync", "--wait", "0.5"],
            Ok(Subcommand::CheckSync {
                wait: Duration::from_millis(500),
            }),
        );
        check(
            &["check-sync", "--wait", "-1"],
            Err("--wait expects seconds (0..3600), got `-1`"),
        );
        check(
            &["check-sync", "--db", "x"],
            Err("unexpected argument `--db` for `check-sync`"),
        );
        check(&["replay"], Err("unknown subcommand `replay`"));
    }
}

//! After each fault: is every acknowledged write there, with its last version, in the command
//! DB and (through check-sync) in every query DB; does anything exist that nobody was told
//! about; are the statistics exact?

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};

use super::load::Ledger;
use crate::rebuild::ProjectionEnv;

/// What the verifier found for one fault.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Verdict {
    /// Acknowledged writes whose effect is missing in the command DB (must be 0).
    pub lost: u64,
    /// Reports changed or created without an acknowledgement beyond what unanswered requests
    /// explain (must be 0).
    pub phantom: u64,
    /// Query DBs that did not converge to the command DB (must be empty).
    pub not_converged: Vec<String>,
    /// First few problems, for the log.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.phantom == 0 && self.not_converged.is_empty()
    }
}

/// Checks the ledger of a run tagged `tag` against the databases, waiting up to `converge`
/// for the query DBs to catch up.
pub fn verify(
    ledger: &Ledger,
    tag: &str,
    projection: &Path,
    dbs: &ProjectionEnv,
    converge: Duration,
) -> Result<Verdict> {
    let command_db = dbs.command_db.as_str();
    let mut v = Verdict::default();
    let mut client = Client::connect(command_db, NoTls)
        .with_context(|| format!("connect to command-db at {command_db}"))?;
    let pattern = format!("Laporan {tag}-%");
    let rows: HashMap<String, (i64, bool)> = client
        .query(
            "SELECT id::text, version, deleted_at IS NOT NULL FROM reports WHERE title LIKE $1",
            &[&pattern],
        )
        .context("read command-db reports")?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();

    for (id, acked) in &ledger.acked {
        let uncertain = ledger.uncertain.contains_key(id);
        match rows.get(id) {
            None => {
                v.lost += 1;
                v.problems.push(format!(
                    "report {id} acknowledged at v{} is missing",
                    acked.version
                ));
            }
            Some(&(version, deleted)) => {
                if version < acked.version || (acked.deleted && !deleted) {
                    v.lost += 1;
                    v.problems.push(format!(
                        "report {id}: acknowledged v{} deleted={} but command-db has v{version} deleted={deleted}",
                        acked.version, acked.deleted
                    ));
                } else if version > acked.version && !uncertain {
                    v.phantom += 1;
                    v.problems.push(format!(
                        "report {id}: command-db has v{version}, the last acknowledged write was v{}",
                        acked.version
                    ));
                }
            }
        }
    }
    let unknown = rows
        .keys()
        .filter(|id| !ledger.acked.contains_key(*id))
        .count() as u64;
    if unknown > ledger.uncertain_creates {
        v.phantom += unknown - ledger.uncertain_creates;
        v.problems.push(format!(
            "{unknown} reports exist that were never acknowledged, but only {} creates went unanswered",
            ledger.uncertain_creates
        ));
    }

    // The query DBs: identical to the command DB, statistics exact.
    let deadline = Instant::now() + converge;
    loop {
        let failing = match check_sync(projection, dbs) {
            Ok(failing) => failing,
            Err(e) if Instant::now() < deadline => {
                v.problems.push(format!("check-sync: {e:#}"));
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if failing.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for (db, text) in failing {
                v.problems.push(text);
                v.not_converged.push(db);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    v.problems.truncate(10);
    Ok(v)
}

/// One `projection check-sync --wait 0`: the query DBs that differ, each with its rendered
/// differences; an error when the check itself failed (a DB unreachable, say).
fn check_sync(projection: &Path, dbs: &ProjectionEnv) -> Result<Vec<(String, String)>> {
    let out = std::process::Command::new(projection)
        .args(["check-sync", "--wait", "0"])
        .env("COMMAND_DATABASE_URL", &dbs.command_db)
        .env("QUERY_DATABASE_URLS", dbs.query_database_urls())
        .output()
        .with_context(|| format!("run {} check-sync", projection.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.code() {
        Some(0) => Ok(Vec::new()),
        Some(1) => Ok(failing_dbs(&stdout)),
        _ => bail!(
            "{}",
            String::from_utf8_lossy(&out.stderr).trim_end().to_owned()
        ),
    }
}

/// The DBs `check-sync` printed as differing: a block per DB, its first line `NAME: in sync`
/// or `NAME: N difference(s)`, the differences indented under it.
fn failing_dbs(stdout: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in stdout.lines() {
        match blocks.last_mut() {
            Some((_, text)) if line.starts_with(' ') => {
                text.push('\n');
                text.push_str(line);
            }
            _ => {
                let db = line.split_once(": ").map_or(line, |(db, _)| db);
                blocks.push((db.to_owned(), line.to_owned()));
            }
        }
    }
    blocks.retain(|(_, text)| !text.ends_with(": in sync"));
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stdout: &str, expect: &[(&str, &str)]) {
        let got = failing_dbs(stdout);
        let got: Vec<(&str, &str)> = got.iter().map(|(d, t)| (d.as_str(), t.as_str())).collect();
        assert_eq!(got, expect, "{stdout}");
    }

    #[test]
    fn reads_the_failing_dbs_of_check_sync() {
        check("query-db-primary: in sync\n", &[]);
        check(
            "query-db-primary: in sync\nquery-db-replica1: 2 difference(s)\n  a\n  b\n",
            &[(
                "query-db-replica1",
                "query-db-replica1: 2 difference(s)\n  a\n  b",
            )],
        );
    }
}

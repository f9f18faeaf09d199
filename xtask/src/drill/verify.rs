//! After each fault: is every acknowledged write there, with its last version, in the command
//! DB and (through check-sync) in every query DB; does anything exist that nobody was told
//! about; are the statistics exact?

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use postgres::{Client, NoTls};

use super::load::Ledger;
use crate::check_sync;

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
    command_db: &str,
    query_dbs: &[(String, String)],
    converge: Duration,
) -> Result<Verdict> {
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
        let diffs = check_sync::check_urls(command_db, query_dbs);
        let failing: Vec<check_sync::DbDiff> = match diffs {
            Ok(d) => d.into_iter().filter(|d| !d.in_sync()).collect(),
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
            for d in failing {
                v.problems.push(d.render());
                v.not_converged.push(d.db);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    v.problems.truncate(10);
    Ok(v)
}

//! The history read model (SPEC §7.1): every event of a report, kept as it came, so the query
//! service can show each version and what changed.
//!
//! Guarantees: written in the writer's batch transaction, so a report's history is committed
//! exactly when its row and the checkpoint are; one row per `(report, version)` with
//! `ON CONFLICT DO NOTHING`, so duplicates, replays and late older events are harmless and the
//! order of arrival does not matter; a delete adds its row and removes none.

use postgres::{Statement, Transaction};

use crate::fanout::Decoded;

/// Every entry of a batch, one statement (`record`).
pub const RECORD: &str =
    "INSERT INTO report_history (report_id, version, event_type, at, payload) \
     SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::timestamptz[], $5::text[]) \
     ON CONFLICT (report_id, version) DO NOTHING";

/// Records every entry of a batch, in one statement: `statement` is [`RECORD`] prepared.
pub fn record(
    tx: &mut Transaction<'_>,
    statement: &Statement,
    entries: &[&Decoded],
) -> Result<(), postgres::Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.event.report_id).collect();
    let versions: Vec<i64> = entries.iter().map(|e| e.event.version).collect();
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e.event.event_type.as_str())
        .collect();
    let ats: Vec<time::OffsetDateTime> = entries.iter().map(|e| e.event.timestamp).collect();
    let payloads: Vec<&str> = entries.iter().map(|e| e.event.payload.as_str()).collect();
    tx.execute(statement, &[&ids, &versions, &types, &ats, &payloads])?;
    Ok(())
}

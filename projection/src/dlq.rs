//! The dead-letter stream (SPEC §4.7): an entry the projection cannot apply (unparseable,
//! unknown event type, payload disagreeing with its envelope) is copied to
//! `report-events-dlq` with its original fields plus `reason` and `source_id`, then acked, so
//! one poison entry never stops the pipeline.
//!
//! Guarantee: the copy is written before the ack, so a poison entry is never just dropped (a
//! crash in between may copy it twice — at-least-once, like everything on the stream).

use shared::event::DLQ_STREAM;

use crate::stream::RawEntry;
use crate::Error;

/// XADDs the entry to the DLQ with `reason`.
pub fn park(conn: &mut redis::Connection, entry: &RawEntry, reason: &str) -> Result<(), Error> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(DLQ_STREAM).arg("*");
    for (name, value) in entry.fields.iter().flatten() {
        if name == "reason" || name == "source_id" {
            continue;
        }
        cmd.arg(name).arg(value.as_slice());
    }
    cmd.arg("reason").arg(reason);
    cmd.arg("source_id").arg(entry.id.to_string());
    let _: redis::Value = cmd.query(conn).map_err(|e| Error::redis("xadd dlq", e))?;
    shared::warn!("dlq: entry {} parked: {reason}", entry.id);
    Ok(())
}

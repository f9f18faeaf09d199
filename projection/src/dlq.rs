//! The dead-letter stream (SPEC §4.7, §7.4): an entry the projection cannot apply is copied to
//! `report-events-dlq` with its original fields plus `reason` and `source_id`, so one poison
//! entry never stops the pipeline. Two kinds reach it:
//! - entries that do not decode (unparseable, unknown event type, payload disagreeing with its
//!   envelope): the reader parks them with [`park`] and acks them;
//! - entries that decode but that a query DB rejects when applied (e.g. a title holding U+0000:
//!   SQLSTATE 22021): the writer that found them parks them with [`park_once`] after bounded
//!   retries, then moves its checkpoint past them (`writer.rs`).
//!
//! Guarantees: the copy is written before the entry is acked or skipped, so a poison entry is
//! never just dropped. [`park`] is at-least-once (a crash in between may copy it twice);
//! [`park_once`] copies an entry once however many DBs reject it, and a retry after a crash
//! finds the copy already there.

use shared::event::DLQ_STREAM;

use crate::stream::RawEntry;
use crate::Error;

/// How long the "already parked" marker of a rejected entry lives. It only has to outlast the
/// moment every writer has skipped the entry (seconds, or one rebuild); a week also covers a
/// DB that comes back from a long outage and meets the same entry while catching up.
const PARKED_MARKER_TTL_SECS: u64 = 7 * 24 * 3600;

/// XADDs the entry to the DLQ with `reason`.
pub fn park(conn: &mut redis::Connection, entry: &RawEntry, reason: &str) -> Result<(), Error> {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(DLQ_STREAM).arg("*");
    push_fields(&mut cmd, entry, reason);
    let _: redis::Value = cmd.query(conn).map_err(|e| Error::redis("xadd dlq", e))?;
    shared::warn!("dlq: entry {} parked: {reason}", entry.id);
    Ok(())
}

/// XADDs the entry to the DLQ unless it was parked already (by this or another writer).
/// Atomic in Redis: the marker key and the copy are written by one script, so neither exists
/// without the other. Returns whether this call made the copy.
pub fn park_once(
    conn: &mut redis::Connection,
    entry: &RawEntry,
    reason: &str,
) -> Result<bool, Error> {
    // KEYS[1] = marker, KEYS[2] = DLQ stream; ARGV[1] = TTL, ARGV[2..] = field, value, ...
    const SCRIPT: &str = "\
        if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then \
          redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2)) \
          return 1 \
        end \
        return 0";
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(SCRIPT)
        .arg(2)
        .arg(format!("{DLQ_STREAM}:parked:{}", entry.id))
        .arg(DLQ_STREAM)
        .arg(PARKED_MARKER_TTL_SECS);
    push_fields(&mut cmd, entry, reason);
    let made: i64 = cmd
        .query(conn)
        .map_err(|e| Error::redis("park in dlq", e))?;
    if made == 1 {
        shared::warn!("dlq: entry {} parked: {reason}", entry.id);
    }
    Ok(made == 1)
}

/// The entry's own fields, then `reason` and `source_id` (ours replace any it carried).
fn push_fields(cmd: &mut redis::Cmd, entry: &RawEntry, reason: &str) {
    for (name, value) in entry.fields.iter().flatten() {
        if name == "reason" || name == "source_id" {
            continue;
        }
        cmd.arg(name).arg(value.as_slice());
    }
    cmd.arg("reason").arg(reason);
    cmd.arg("source_id").arg(entry.id.to_string());
}

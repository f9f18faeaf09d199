//! Each query DB's checkpoint row: how far it has applied the stream (last entry id, that
//! entry's event-log position, entries applied), read at (re)connect and written inside the
//! same transaction as the data it covers.
//!
//! Guarantees (SPEC §4.2): the checkpoint never claims more than the committed data, because
//! both commit or roll back together; the entry id never moves backwards.

use postgres::GenericClient;
use shared::event::STREAM;

use crate::stream::EntryId;

/// What a query DB has applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Every stream entry up to this id is applied (`0-0`: none yet).
    pub entry_id: EntryId,
    /// The event-log position of that entry.
    pub position: i64,
}

/// The checkpoint of `STREAM`, or the zero checkpoint when the DB has none yet. An entry id
/// that does not parse (someone edited the row) counts as none: replaying is always safe.
pub fn read(client: &mut impl GenericClient) -> Result<Checkpoint, postgres::Error> {
    let row = client.query_opt(
        "SELECT entry_id, position FROM checkpoint WHERE stream = $1",
        &[&STREAM],
    )?;
    let Some(row) = row else {
        return Ok(Checkpoint::default());
    };
    let text: String = row.try_get(0)?;
    let position: i64 = row.try_get(1)?;
    match EntryId::parse(&text) {
        Some(entry_id) => Ok(Checkpoint { entry_id, position }),
        None => {
            shared::warn!(
                "checkpoint entry_id {text:?} is not a stream id; replaying from the start"
            );
            Ok(Checkpoint::default())
        }
    }
}

/// Records `cp` and `applied` more entries, in the caller's transaction.
pub fn write(
    tx: &mut impl GenericClient,
    cp: Checkpoint,
    applied: i64,
) -> Result<(), postgres::Error> {
    tx.execute(
        "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at) \
         VALUES ($1, $2, $3, $4, now()) \
         ON CONFLICT (stream) DO UPDATE SET entry_id = EXCLUDED.entry_id, \
           position = EXCLUDED.position, applied = checkpoint.applied + EXCLUDED.applied, \
           updated_at = EXCLUDED.updated_at",
        &[&STREAM, &cp.entry_id.to_string(), &cp.position, &applied],
    )?;
    Ok(())
}

//! Each query DB's checkpoint row: how far it has applied the stream (last entry id, that
//! entry's event-log position, entries applied), read at (re)connect and written inside the
//! same transaction as the data it covers.
//!
//! Guarantees (SPEC §4.2): the checkpoint never claims more than the committed data, because
//! both commit or roll back together; the entry id never moves backwards, except when a
//! rebuild replaces the data it covers ([`restart_at`]).
//!
//! The same row carries the retention state (SPEC §7.4): the `stale` mark the query instances
//! obey, and the `stream_epoch` of the stream the entry id belongs to (`retention.rs`).

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

/// The checkpoint row with its retention state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recorded {
    pub cp: Checkpoint,
    /// The projection marked this read model stale; only a rebuild clears it.
    pub stale: bool,
    /// The stream this checkpoint follows (`None`: a row from before epochs, or no row).
    pub epoch: Option<String>,
}

/// The checkpoint row with its retention state (all defaults when there is no row yet).
pub fn read_recorded(client: &mut impl GenericClient) -> Result<Recorded, postgres::Error> {
    let cp = read(client)?;
    let row = client.query_opt(
        "SELECT stale, stream_epoch FROM checkpoint WHERE stream = $1",
        &[&STREAM],
    )?;
    let (stale, epoch) = match row {
        Some(r) => (r.try_get(0)?, r.try_get(1)?),
        None => (false, None),
    };
    Ok(Recorded { cp, stale, epoch })
}

/// Sets or clears the stale mark (creating the row for a DB that has none yet).
pub fn mark_stale(client: &mut impl GenericClient, stale: bool) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at, stale) \
         VALUES ($1, '0-0', 0, 0, now(), $2) \
         ON CONFLICT (stream) DO UPDATE SET stale = EXCLUDED.stale, updated_at = now()",
        &[&STREAM, &stale],
    )?;
    Ok(())
}

/// Records that this checkpoint follows the stream `epoch`.
pub fn set_epoch(client: &mut impl GenericClient, epoch: &str) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at, stream_epoch) \
         VALUES ($1, '0-0', 0, 0, now(), $2) \
         ON CONFLICT (stream) DO UPDATE SET stream_epoch = EXCLUDED.stream_epoch",
        &[&STREAM, &epoch],
    )?;
    Ok(())
}

/// After a rebuild from a command-DB snapshot: the read model now holds every event published
/// up to `cp.entry_id` (and more), on stream `epoch`; it stays marked stale until it has
/// caught up. The entry id may move backwards here, which is the point: catch-up starts there.
pub fn restart_at(
    client: &mut impl GenericClient,
    cp: Checkpoint,
    epoch: &str,
) -> Result<(), postgres::Error> {
    client.execute(
        "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at, stale, \
           stream_epoch) VALUES ($1, $2, $3, 0, now(), true, $4) \
         ON CONFLICT (stream) DO UPDATE SET entry_id = EXCLUDED.entry_id, \
           position = EXCLUDED.position, updated_at = now(), stale = true, \
           stream_epoch = EXCLUDED.stream_epoch",
        &[&STREAM, &cp.entry_id.to_string(), &cp.position, &epoch],
    )?;
    Ok(())
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

/// Moves the checkpoint by a batch (`write`).
pub const WRITE: &str = "INSERT INTO checkpoint (stream, entry_id, position, applied, updated_at) \
     VALUES ($1, $2, $3, $4, now()) \
     ON CONFLICT (stream) DO UPDATE SET entry_id = EXCLUDED.entry_id, \
       position = EXCLUDED.position, applied = checkpoint.applied + EXCLUDED.applied, \
       updated_at = EXCLUDED.updated_at";

/// Records `cp` and `applied` more entries, in the caller's transaction: `statement` is
/// [`WRITE`] prepared.
pub fn write(
    tx: &mut impl GenericClient,
    statement: &postgres::Statement,
    cp: Checkpoint,
    applied: i64,
) -> Result<(), postgres::Error> {
    tx.execute(
        statement,
        &[&STREAM, &cp.entry_id.to_string(), &cp.position, &applied],
    )?;
    Ok(())
}

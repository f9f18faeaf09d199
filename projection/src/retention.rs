//! Bounded retention and stale read models (SPEC §7.4).
//!
//! The stream keeps at most a configured backlog for a lagging query DB: [`Bound`] (entries and
//! age). A query DB is **stale** when its read model may be missing events the stream no longer
//! holds; it is then never served, never holds back acks or trims, and is rebuilt from the
//! command DB (`writer.rs`). Three ways to get there, each checked where the facts are:
//! - **beyond the bound** (the reader, [`beyond`]): a detached DB whose unapplied backlog holds
//!   more than `max_entries` entries or an entry older than `max_age`. The reader stops waiting
//!   for it, so acks and trims go on for the others;
//! - **trimmed past** (the writer at connect, [`judge`]): its checkpoint is below the trim mark,
//!   so the stream lost entries it needs. This catches a restored backup, a new DB joining a
//!   trimmed stream, and — because every trim raises the mark *before* it trims — a DB that was
//!   declared beyond the bound, even across a projection restart;
//! - **another stream** (the writer at connect, [`judge`]): its checkpoint names a stream epoch
//!   other than the current one. The epoch is a random id kept in Redis beside the stream and
//!   created when missing, so a Redis that lost its data (stream and epoch together) gets a new
//!   epoch and every checkpoint from before is recognised as following a stream that is gone.
//!
//! Why not trust a flag stored in the read model alone: a restored backup carries its own old
//! "not stale" state. The facts used here live outside the DB (the trim mark and the epoch in
//! Redis), and the checkpoint is compared with them. The query side adds its own comparison of
//! checkpoint positions across DBs (`query/src/failover.rs`), so it does not depend on the
//! projection having looked at a DB yet.
//!
//! The marks are written by the projection only: the reader raises `trimmed_below` (never
//! lowers it) right before each XTRIM; the epoch is set once with HSETNX by whichever thread
//! reads it first.

use std::collections::VecDeque;
use std::time::Duration;

use redis::Value;
use shared::event::STREAM;

use crate::checkpoint::Recorded;
use crate::stream::EntryId;
use crate::Error;

/// The Redis hash beside the stream that holds `epoch` and `trimmed_below`.
pub fn key() -> String {
    format!("{STREAM}:retention")
}

/// How much backlog the stream keeps for a lagging DB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    pub max_entries: usize,
    pub max_age: Duration,
}

/// The retention state kept in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marks {
    /// Identity of the current stream.
    pub epoch: String,
    /// Entries below this id may have been trimmed.
    pub trimmed_below: EntryId,
}

/// Why a DB is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// The read model carries the mark from an earlier judgement (cleared only by a rebuild).
    Marked,
    /// Its checkpoint follows another stream (Redis lost its data, or another deployment's).
    OtherStream { epoch: String },
    /// The stream was trimmed past its checkpoint.
    TrimmedPast {
        checkpoint: EntryId,
        trimmed_below: EntryId,
    },
    /// Its backlog outgrew the bound while it was away (decided by the reader).
    BeyondBound,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::Marked => write!(f, "marked stale earlier and not rebuilt yet"),
            Stale::OtherStream { epoch } => {
                write!(
                    f,
                    "its checkpoint follows stream epoch {epoch}, not the current one"
                )
            }
            Stale::TrimmedPast {
                checkpoint,
                trimmed_below,
            } => write!(
                f,
                "its checkpoint {checkpoint} is older than the stream's retained entries \
                 (trimmed below {trimmed_below})"
            ),
            Stale::BeyondBound => write!(f, "its backlog outgrew the retention bound"),
        }
    }
}

/// Reads the marks, creating the epoch when Redis has none (a new stream, or a Redis that lost
/// its data).
pub fn read(conn: &mut redis::Connection) -> Result<Marks, Error> {
    let key = key();
    let (_, values): (Value, Vec<Option<String>>) = redis::pipe()
        .cmd("HSETNX")
        .arg(&key)
        .arg("epoch")
        .arg(uuid::Uuid::new_v4().to_string())
        .cmd("HMGET")
        .arg(&key)
        .arg("epoch")
        .arg("trimmed_below")
        .query(conn)
        .map_err(|e| Error::redis("read retention marks", e))?;
    let epoch = values
        .first()
        .cloned()
        .flatten()
        .ok_or_else(|| Error::Reply(format!("{key} has no epoch")))?;
    let trimmed_below = values
        .get(1)
        .cloned()
        .flatten()
        .and_then(|t| EntryId::parse(&t))
        .unwrap_or(EntryId::ZERO);
    Ok(Marks {
        epoch,
        trimmed_below,
    })
}

/// Records that entries below `below` may be gone; called before the XTRIM that removes them.
pub fn raise_trim_mark(conn: &mut redis::Connection, below: EntryId) -> Result<(), Error> {
    let _: Value = redis::cmd("HSET")
        .arg(key())
        .arg("trimmed_below")
        .arg(below.to_string())
        .query(conn)
        .map_err(|e| Error::redis("raise trim mark", e))?;
    Ok(())
}

/// What a writer decides when it (re)connects to its DB.
pub fn judge(recorded: &Recorded, marks: &Marks) -> Option<Stale> {
    if recorded.stale {
        return Some(Stale::Marked);
    }
    if let Some(epoch) = &recorded.epoch {
        if *epoch != marks.epoch {
            return Some(Stale::OtherStream {
                epoch: epoch.clone(),
            });
        }
    }
    // Entries after the checkpoint are needed; those below the mark may be gone.
    if recorded.cp.entry_id.next() < marks.trimmed_below {
        return Some(Stale::TrimmedPast {
            checkpoint: recorded.cp.entry_id,
            trimmed_below: marks.trimmed_below,
        });
    }
    None
}

/// The ids the reader has read most recently, at most `max_entries` of them, oldest first:
/// enough to tell whether a DB's backlog holds more than `max_entries` entries and how old its
/// oldest unapplied entry is, without asking Redis. 16 bytes per entry.
#[derive(Debug, Default)]
pub struct Recent {
    ids: VecDeque<EntryId>,
    cap: usize,
}

impl Recent {
    pub fn new(cap: usize) -> Recent {
        Recent {
            ids: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Notes an id read from the stream (ids older than the newest are re-reads: ignored).
    pub fn push(&mut self, id: EntryId) {
        if self.ids.back().is_some_and(|last| id <= *last) {
            return;
        }
        if self.ids.len() == self.cap {
            self.ids.pop_front();
        }
        self.ids.push_back(id);
    }

    /// Whether a DB that has applied everything up to `applied` is beyond `bound` at `now_ms`.
    pub fn beyond(&self, applied: EntryId, bound: Bound, now_ms: u64) -> bool {
        beyond(&self.ids, self.cap, applied, bound, now_ms)
    }

    /// The oldest id still within the bound: what to trim below when no DB is current.
    pub fn floor(&self, bound: Bound, now_ms: u64) -> Option<EntryId> {
        let by_age = EntryId {
            ms: now_ms.saturating_sub(bound.max_age.as_millis() as u64),
            seq: 0,
        };
        let by_count = (self.ids.len() == self.cap)
            .then(|| self.ids.front().copied())
            .flatten();
        let floor = by_count.map_or(by_age, |c| c.max(by_age));
        (floor > EntryId::ZERO).then_some(floor)
    }
}

/// See [`Recent::beyond`]: more than `cap` entries after `applied` (the window is full and
/// starts after it), or an unapplied entry older than `max_age`.
fn beyond(
    ids: &VecDeque<EntryId>,
    cap: usize,
    applied: EntryId,
    bound: Bound,
    now_ms: u64,
) -> bool {
    let Some(front) = ids.front() else {
        return false;
    };
    if ids.len() >= cap && applied < *front {
        return true;
    }
    let first_unapplied = ids.partition_point(|id| *id <= applied);
    let Some(oldest) = ids.get(first_unapplied) else {
        return false;
    };
    oldest.ms.saturating_add(bound.max_age.as_millis() as u64) < now_ms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    #[test]
    fn judging_a_db_at_connect() {
        let marks = Marks {
            epoch: "e1".into(),
            trimmed_below: id(100, 0),
        };
        let check = |stale: bool, epoch: Option<&str>, cp: EntryId, expect: Option<Stale>| {
            let recorded = Recorded {
                cp: Checkpoint {
                    entry_id: cp,
                    position: 0,
                },
                stale,
                epoch: epoch.map(str::to_owned),
            };
            assert_eq!(judge(&recorded, &marks), expect, "{recorded:?}");
        };
        check(false, Some("e1"), id(150, 0), None);
        // Exactly the entry before the mark applied: nothing it needs is gone.
        check(false, Some("e1"), id(99, u64::MAX), None);
        check(false, Some("e1"), id(100, 0), None);
        // A restored backup / a new DB on a trimmed stream.
        check(
            false,
            Some("e1"),
            id(99, 3),
            Some(Stale::TrimmedPast {
                checkpoint: id(99, 3),
                trimmed_below: id(100, 0),
            }),
        );
        check(
            false,
            None,
            EntryId::ZERO,
            Some(Stale::TrimmedPast {
                checkpoint: EntryId::ZERO,
                trimmed_below: id(100, 0),
            }),
        );
        // A checkpoint from before a Redis data loss.
        check(
            false,
            Some("e0"),
            id(150, 0),
            Some(Stale::OtherStream { epoch: "e0".into() }),
        );
        // The mark wins until a rebuild clears it.
        check(true, Some("e1"), id(150, 0), Some(Stale::Marked));
        // A row from before epochs on an untrimmed stream is adopted.
        let untrimmed = Marks {
            epoch: "e1".into(),
            trimmed_below: EntryId::ZERO,
        };
        let fresh = Recorded::default();
        assert_eq!(judge(&fresh, &untrimmed), None);
    }

    #[test]
    fn the_bound_in_entries_and_age() {
        let bound = Bound {
            max_entries: 3,
            max_age: Duration::from_secs(10),
        };
        let check = |read: &[u64], applied: u64, now_ms: u64, expect: bool| {
            let mut r = Recent::new(bound.max_entries);
            for ms in read {
                r.push(id(*ms, 0));
            }
            assert_eq!(
                r.beyond(id(applied, 0), bound, now_ms),
                expect,
                "read {read:?} applied {applied} now {now_ms}"
            );
        };
        // Current: nothing unapplied, however old the last entry.
        check(&[1_000, 2_000, 3_000], 3_000, 1_000_000, false);
        // Three unapplied entries (the window is full and starts after it): at the bound.
        check(&[1_000, 2_000, 3_000], 500, 3_500, true);
        check(&[1_000, 2_000, 3_000, 4_000], 1_000, 4_500, true);
        check(&[1_000, 2_000, 3_000, 4_000], 2_000, 4_500, false);
        // More than three: the window slid past it.
        check(&[1_000, 2_000, 3_000, 4_000, 5_000], 1_000, 5_500, true);
        // Age: its oldest unapplied entry is 2 000 (applied 1 000).
        check(&[1_000, 2_000], 1_000, 11_999, false);
        check(&[1_000, 2_000], 1_000, 12_001, true);
        // Nothing read yet: nothing to judge.
        check(&[], 0, 1_000_000, false);
        // Re-reads do not count twice: three distinct ids do not fill a window of four.
        let mut r = Recent::new(4);
        for ms in [1, 2, 2, 1, 3] {
            r.push(id(ms, 0));
        }
        assert!(!r.beyond(EntryId::ZERO, bound, 5));
        assert_eq!(r.floor(bound, 5), None);
        r.push(id(4, 0));
        assert_eq!(r.floor(bound, 5), Some(id(1, 0)));
        assert_eq!(r.floor(bound, 20_000), Some(id(10_000, 0)));
    }
}

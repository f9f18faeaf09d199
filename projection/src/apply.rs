//! The pure apply rules of the read model: given a report's current row (or none) and one
//! event, what the row becomes and how `statistics` moves. No I/O here; `writer.rs` reads the
//! old rows, folds a batch of events through [`apply`] and writes the result.
//!
//! Guarantees (SPEC §4.3, §4.4):
//! - an event applies only when its version is newer than the row's, so duplicates, older
//!   versions and replays of any range are no-ops;
//! - a tombstone is final: nothing brings a deleted report back;
//! - the statistics delta is exactly old row → new row: a live row counts under its
//!   (category, status), a tombstoned row counts nowhere;
//! - [`fold`] applies a whole batch: each report is written once (its last winning event) and
//!   the statistics move by one net delta per (category, status), equal to the sum of the
//!   per-event deltas, so the writer needs one statement per kind of write, not one per event.

use std::collections::{BTreeMap, HashMap};

use shared::event::Payload;
use uuid::Uuid;

/// What the projection knows about one stored report row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub version: i64,
    pub state: RowState,
}

/// A row is either live (counted in `statistics`) or a tombstone (counted nowhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowState {
    Live { category: String, status: String },
    Tombstone,
}

/// The part of an event the rules look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Upsert {
        version: i64,
        category: String,
        status: String,
    },
    Delete {
        version: i64,
    },
}

impl Change {
    pub fn from_payload(p: &Payload) -> Change {
        match p {
            Payload::Snapshot(r) => Change::Upsert {
                version: r.version,
                category: r.category.as_str().to_owned(),
                status: r.status.as_str().to_owned(),
            },
            Payload::Deleted(t) => Change::Delete { version: t.version },
        }
    }

    fn version(&self) -> i64 {
        match self {
            Change::Upsert { version, .. } | Change::Delete { version } => *version,
        }
    }
}

/// Why an event left the row alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The row already has this version or a newer one (duplicate, older, replay).
    NotNewer,
    /// The report is deleted; a tombstone is final.
    Deleted,
}

/// One (category, status) counter moved by `delta`.
pub type StatDelta = ((String, String), i64);

/// The result of applying one event to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Skip(Skip),
    /// Write `row`; move the counters by `stats` (never contains a zero delta).
    Write {
        row: Row,
        stats: Vec<StatDelta>,
    },
}

/// The rule itself.
pub fn apply(old: Option<&Row>, change: &Change) -> Outcome {
    if let Some(old) = old {
        if old.version >= change.version() {
            return Outcome::Skip(Skip::NotNewer);
        }
        if old.state == RowState::Tombstone {
            return Outcome::Skip(Skip::Deleted);
        }
    }
    let new = match change {
        Change::Upsert {
            version,
            category,
            status,
        } => Row {
            version: *version,
            state: RowState::Live {
                category: category.clone(),
                status: status.clone(),
            },
        },
        Change::Delete { version } => Row {
            version: *version,
            state: RowState::Tombstone,
        },
    };
    let mut stats: Vec<StatDelta> = Vec::with_capacity(2);
    let key = |s: &RowState| match s {
        RowState::Live { category, status } => Some((category.clone(), status.clone())),
        RowState::Tombstone => None,
    };
    let old_key = old.and_then(|o| key(&o.state));
    let new_key = key(&new.state);
    if old_key != new_key {
        if let Some(k) = old_key {
            stats.push((k, -1));
        }
        if let Some(k) = new_key {
            stats.push((k, 1));
        }
    }
    Outcome::Write { row: new, stats }
}

/// What a batch does to the read model, worked out by [`fold`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fold {
    /// Per report written, the index (into the batch) of the event whose row to store: the
    /// last event that won. Ordered by id, which is also the writer's lock order.
    pub writes: BTreeMap<Uuid, usize>,
    /// The net statistics delta of the whole batch, zeros left out.
    pub stats: BTreeMap<(String, String), i64>,
}

/// Folds `batch` (in stream order) through [`apply`], starting from the stored `rows`; `rows`
/// ends as the rows after the batch.
pub fn fold(rows: &mut HashMap<Uuid, Row>, batch: &[(Uuid, Change)]) -> Fold {
    let mut out = Fold::default();
    for (i, (id, change)) in batch.iter().enumerate() {
        if let Outcome::Write { row, stats } = apply(rows.get(id), change) {
            for (k, d) in stats {
                *out.stats.entry(k).or_default() += d;
            }
            rows.insert(*id, row);
            out.writes.insert(*id, i);
        }
    }
    out.stats.retain(|_, d| *d != 0);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn up(version: i64, category: &str, status: &str) -> Change {
        Change::Upsert {
            version,
            category: category.into(),
            status: status.into(),
        }
    }
    fn del(version: i64) -> Change {
        Change::Delete { version }
    }

    /// Given the events already applied, when `events` arrive, then the row is `expect_row`
    /// and the counters moved by exactly `expect_stats` (only non-zero counters listed).
    fn check(
        given: &[Change],
        events: &[Change],
        expect_row: Option<Row>,
        expect_stats: &[(&str, &str, i64)],
    ) {
        let mut row: Option<Row> = None;
        let mut fold = |changes: &[Change], stats: &mut BTreeMap<(String, String), i64>| {
            for c in changes {
                if let Outcome::Write { row: new, stats: d } = apply(row.as_ref(), c) {
                    for (k, v) in d {
                        *stats.entry(k).or_default() += v;
                    }
                    row = Some(new);
                }
            }
        };
        fold(given, &mut BTreeMap::new());
        let mut moved = BTreeMap::new();
        fold(events, &mut moved);
        moved.retain(|_, v| *v != 0);
        let expect: BTreeMap<(String, String), i64> = expect_stats
            .iter()
            .map(|(c, s, v)| ((c.to_string(), s.to_string()), *v))
            .collect();
        assert_eq!(row, expect_row, "row after {events:?} given {given:?}");
        assert_eq!(moved, expect, "stats after {events:?} given {given:?}");
    }

    fn live(version: i64, category: &str, status: &str) -> Option<Row> {
        Some(Row {
            version,
            state: RowState::Live {
                category: category.into(),
                status: status.into(),
            },
        })
    }
    fn tomb(version: i64) -> Option<Row> {
        Some(Row {
            version,
            state: RowState::Tombstone,
        })
    }

    #[test]
    fn create_counts_once() {
        check(
            &[],
            &[up(1, "kebersihan", "pending")],
            live(1, "kebersihan", "pending"),
            &[("kebersihan", "pending", 1)],
        );
    }

    #[test]
    fn duplicate_is_a_no_op() {
        let c = up(1, "kebersihan", "pending");
        check(
            std::slice::from_ref(&c),
            &[c.clone(), c.clone()],
            live(1, "kebersihan", "pending"),
            &[],
        );
    }

    #[test]
    fn older_version_is_a_no_op() {
        check(
            &[
                up(1, "kebersihan", "pending"),
                up(3, "kebersihan", "resolved"),
            ],
            &[up(2, "keamanan", "in_progress")],
            live(3, "kebersihan", "resolved"),
            &[],
        );
    }

    #[test]
    fn update_after_delete_never_resurrects() {
        check(
            &[up(1, "kebersihan", "pending"), del(2)],
            &[
                up(3, "kebersihan", "resolved"),
                up(1, "kebersihan", "pending"),
            ],
            tomb(2),
            &[],
        );
    }

    #[test]
    fn delete_moves_the_count_out() {
        check(
            &[
                up(1, "kebersihan", "pending"),
                up(2, "kebersihan", "in_progress"),
            ],
            &[del(3)],
            tomb(3),
            &[("kebersihan", "in_progress", -1)],
        );
    }

    #[test]
    fn delete_before_create_leaves_a_tombstone() {
        check(&[], &[del(2), up(1, "lainnya", "pending")], tomb(2), &[]);
    }

    #[test]
    fn category_change_moves_between_categories() {
        check(
            &[up(1, "kebersihan", "pending")],
            &[up(2, "infrastruktur", "pending")],
            live(2, "infrastruktur", "pending"),
            &[
                ("kebersihan", "pending", -1),
                ("infrastruktur", "pending", 1),
            ],
        );
    }

    #[test]
    fn status_change_moves_between_statuses() {
        check(
            &[up(1, "kesehatan", "pending")],
            &[up(2, "kesehatan", "rejected")],
            live(2, "kesehatan", "rejected"),
            &[("kesehatan", "pending", -1), ("kesehatan", "rejected", 1)],
        );
    }

    #[test]
    fn title_only_change_moves_nothing() {
        check(
            &[up(1, "kesehatan", "pending")],
            &[up(2, "kesehatan", "pending")],
            live(2, "kesehatan", "pending"),
            &[],
        );
    }

    #[test]
    fn out_of_order_arrival_ends_at_the_newest() {
        check(
            &[],
            &[
                up(3, "keamanan", "resolved"),
                up(1, "keamanan", "pending"),
                up(2, "lainnya", "pending"),
            ],
            live(3, "keamanan", "resolved"),
            &[("keamanan", "resolved", 1)],
        );
    }

    #[test]
    fn replaying_a_range_is_a_no_op() {
        let range = [
            up(1, "kebersihan", "pending"),
            up(2, "kriminalitas", "pending"),
            up(3, "kriminalitas", "in_progress"),
            del(4),
        ];
        check(&range, &range, tomb(4), &[]);
        check(
            &range[..3],
            &range[1..3],
            live(3, "kriminalitas", "in_progress"),
            &[],
        );
    }

    /// Given stored `rows`, when `batch` is folded, then exactly the reports in `expect_writes`
    /// are written (each from the event at that index) and the statistics move by
    /// `expect_stats` — one net delta per key, equal to folding the events one by one.
    fn check_fold(
        rows: &[(u128, Option<Row>)],
        batch: &[(u128, Change)],
        expect_writes: &[(u128, usize)],
        expect_stats: &[(&str, &str, i64)],
    ) {
        let mut stored: HashMap<Uuid, Row> = rows
            .iter()
            .filter_map(|(id, r)| Some((Uuid::from_u128(*id), r.clone()?)))
            .collect();
        let batch: Vec<(Uuid, Change)> = batch
            .iter()
            .map(|(id, c)| (Uuid::from_u128(*id), c.clone()))
            .collect();
        let got = fold(&mut stored, &batch);
        let writes: BTreeMap<Uuid, usize> = expect_writes
            .iter()
            .map(|(id, i)| (Uuid::from_u128(*id), *i))
            .collect();
        let stats: BTreeMap<(String, String), i64> = expect_stats
            .iter()
            .map(|(c, s, v)| ((c.to_string(), s.to_string()), *v))
            .collect();
        assert_eq!(got.writes, writes, "writes of {batch:?}");
        assert_eq!(got.stats, stats, "stats of {batch:?}");
    }

    #[test]
    fn fold_writes_each_report_once_from_its_last_winner() {
        check_fold(
            &[],
            &[
                (1, up(1, "kebersihan", "pending")),
                (2, up(1, "keamanan", "pending")),
                (1, up(2, "kebersihan", "resolved")),
                (1, up(1, "kebersihan", "pending")), // late duplicate: skipped
            ],
            &[(1, 2), (2, 1)],
            &[("kebersihan", "resolved", 1), ("keamanan", "pending", 1)],
        );
    }

    #[test]
    fn fold_nets_the_statistics_of_the_batch() {
        // Moves that cancel out leave no delta at all, not a zero one.
        check_fold(
            &[(1, live(1, "kesehatan", "pending"))],
            &[
                (1, up(2, "kesehatan", "rejected")),
                (1, up(3, "kesehatan", "pending")),
                (2, up(1, "kesehatan", "pending")),
                (3, up(1, "lainnya", "pending")),
                (3, del(2)),
            ],
            &[(1, 1), (2, 2), (3, 4)],
            &[("kesehatan", "pending", 1)],
        );
    }

    #[test]
    fn fold_respects_stored_rows_and_tombstones() {
        check_fold(
            &[(1, tomb(3)), (2, live(5, "keamanan", "resolved"))],
            &[
                (1, up(4, "keamanan", "pending")),
                (2, up(4, "keamanan", "pending")),
                (2, del(6)),
            ],
            &[(2, 2)],
            &[("keamanan", "resolved", -1)],
        );
    }
}

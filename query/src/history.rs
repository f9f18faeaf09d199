//! `GET /reports/{id}/history` (SPEC §7.1): every version of a report, oldest first, as
//! `[{version, event_type, at, changes}]`, from the `report_history` read model.
//!
//! The table keeps each event's payload; [`entries`] (pure, tested in-module) turns the
//! ordered payloads into what changed: the first entry holds the whole report, each later
//! one the fields whose value differs from the version before (a cleared field is `null`),
//! and a delete holds `deleted_at`. `version` and `updated_at` are not "changes": every
//! version moves them, and the entry carries both as `version` and `at`.

use postgres::types::Type;
use postgres::GenericClient;
use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

/// Most versions one answer lists: a report edited more often than this is a runaway
/// client; the oldest versions (creation first) are the ones kept.
pub const MAX_VERSIONS: i64 = 1_000;

/// One stored event of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub version: i64,
    pub event_type: String,
    pub at: OffsetDateTime,
    pub payload: String,
}

/// One entry of the answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub version: i64,
    pub event_type: String,
    pub at: String,
    pub changes: Map<String, Value>,
}

/// The fields that change with every version and are reported outside `changes`.
const NOT_CHANGES: [&str; 3] = ["version", "updated_at", "id"];

/// Ordered stored events → the history entries.
pub fn entries(stored: &[Stored]) -> Vec<Entry> {
    let mut previous: Option<Map<String, Value>> = None;
    let mut out = Vec::with_capacity(stored.len());
    for s in stored {
        let payload = match serde_json::from_str::<Value>(&s.payload) {
            Ok(Value::Object(m)) => m,
            // The projection stores only payloads that decoded; keep the version visible.
            _ => Map::new(),
        };
        let changes = if s.event_type == "ReportDeleted" {
            payload
                .iter()
                .filter(|(k, _)| k.as_str() == "deleted_at")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            match &previous {
                // The first entry holds the whole report.
                None => payload.clone(),
                Some(prev) => {
                    let mut changed = Map::new();
                    for (k, v) in &payload {
                        if !NOT_CHANGES.contains(&k.as_str()) && prev.get(k) != Some(v) {
                            changed.insert(k.clone(), v.clone());
                        }
                    }
                    for k in prev.keys() {
                        if !payload.contains_key(k) && !NOT_CHANGES.contains(&k.as_str()) {
                            changed.insert(k.clone(), Value::Null);
                        }
                    }
                    changed
                }
            }
        };
        if s.event_type != "ReportDeleted" {
            previous = Some(payload);
        }
        out.push(Entry {
            version: s.version,
            event_type: s.event_type.clone(),
            at: s
                .at
                .to_offset(time::UtcOffset::UTC)
                .format(&Rfc3339)
                .unwrap_or_default(),
            changes,
        });
    }
    out
}

/// The statement [`load`] sends (`$1` the report id, `$2` [`MAX_VERSIONS`]); public so
/// `bench --scale` measures and EXPLAINs exactly this text.
pub const SELECT_HISTORY: &str = "SELECT version, event_type, at, payload FROM report_history \
     WHERE report_id = $1 ORDER BY version LIMIT $2";

/// The stored events of one report, oldest first (empty when it has none).
pub fn load(client: &mut impl GenericClient, id: &Uuid) -> Result<Vec<Stored>, postgres::Error> {
    client
        .query_typed(
            SELECT_HISTORY,
            &[(id, Type::UUID), (&MAX_VERSIONS, Type::INT8)],
        )?
        .iter()
        .map(|r| {
            Ok(Stored {
                version: r.try_get(0)?,
                event_type: r.try_get(1)?,
                at: r.try_get(2)?,
                payload: r.try_get(3)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(version: i64, event_type: &str, payload: &str) -> Stored {
        Stored {
            version,
            event_type: event_type.into(),
            at: OffsetDateTime::from_unix_timestamp(1_760_000_000 + version).unwrap(),
            payload: payload.into(),
        }
    }

    fn check(given: &[Stored], expect: serde_json::Value) {
        let got = serde_json::to_value(entries(given)).unwrap();
        assert_eq!(got, expect);
    }

    #[test]
    fn changes_between_versions() {
        let v1 = r#"{"id":"a","title":"t","status":"pending","version":1,"updated_at":"x1","location":{"lat":1.0,"lng":2.0}}"#;
        let v2 = r#"{"id":"a","title":"t","status":"in_progress","version":2,"updated_at":"x2","location":{"lat":1.0,"lng":2.0}}"#;
        let v3 = r#"{"id":"a","title":"t2","status":"in_progress","version":3,"updated_at":"x3"}"#;
        let d4 = r#"{"id":"a","version":4,"deleted_at":"2025-10-09T08:53:24Z"}"#;
        check(
            &[
                stored(1, "ReportCreated", v1),
                stored(2, "ReportUpdated", v2),
                stored(3, "ReportUpdated", v3),
                stored(4, "ReportDeleted", d4),
            ],
            serde_json::json!([
                {"version": 1, "event_type": "ReportCreated", "at": "2025-10-09T08:53:21Z",
                 "changes": serde_json::from_str::<Value>(v1).unwrap()},
                {"version": 2, "event_type": "ReportUpdated", "at": "2025-10-09T08:53:22Z",
                 "changes": {"status": "in_progress"}},
                {"version": 3, "event_type": "ReportUpdated", "at": "2025-10-09T08:53:23Z",
                 "changes": {"title": "t2", "location": null}},
                {"version": 4, "event_type": "ReportDeleted", "at": "2025-10-09T08:53:24Z",
                 "changes": {"deleted_at": "2025-10-09T08:53:24Z"}},
            ]),
        );
        check(&[], serde_json::json!([]));
        // A report whose only known event is its delete.
        check(
            &[stored(2, "ReportDeleted", d4)],
            serde_json::json!([{"version": 2, "event_type": "ReportDeleted",
                "at": "2025-10-09T08:53:22Z", "changes": {"deleted_at": "2025-10-09T08:53:24Z"}}]),
        );
    }
}

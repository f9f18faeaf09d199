//! Events (SPEC §3) and their Redis-stream field codec — the only place that knows the wire
//! format between the relay (command side) and the projection.
//!
//! Events are state snapshots carrying a version, so applying them is idempotent and
//! order-tolerant: the projection never needs exactly-once delivery.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{Report, Tombstone};

/// The stream every change is published to.
pub const STREAM: &str = "report-events";
/// The projection's consumer group on [`STREAM`].
pub const GROUP: &str = "projection-service";
/// Where entries the projection cannot apply go, with the reason.
pub const DLQ_STREAM: &str = "report-events-dlq";

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    ReportCreated,
    ReportUpdated,
    ReportDeleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ReportCreated => "ReportCreated",
            EventType::ReportUpdated => "ReportUpdated",
            EventType::ReportDeleted => "ReportDeleted",
        }
    }
}

impl FromStr for EventType {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, DecodeError> {
        match s {
            "ReportCreated" => Ok(EventType::ReportCreated),
            "ReportUpdated" => Ok(EventType::ReportUpdated),
            "ReportDeleted" => Ok(EventType::ReportDeleted),
            other => Err(DecodeError::UnknownEventType(other.to_owned())),
        }
    }
}

/// The decoded payload of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The full report after a create or update.
    Snapshot(Report),
    /// The report was deleted at this version.
    Deleted(Tombstone),
}

impl Payload {
    pub fn id(&self) -> Uuid {
        match self {
            Payload::Snapshot(r) => r.id,
            Payload::Deleted(t) => t.id,
        }
    }
    pub fn version(&self) -> i64 {
        match self {
            Payload::Snapshot(r) => r.version,
            Payload::Deleted(t) => t.version,
        }
    }
}

/// One change, as stored in the command DB's event log and published to the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: EventType,
    pub report_id: Uuid,
    pub version: i64,
    /// The command DB's event-log sequence number.
    pub position: i64,
    /// The payload JSON, kept as text so the relay never re-serialises it.
    pub payload: String,
    pub timestamp: OffsetDateTime,
}

/// Why a stream entry could not be decoded; the projection puts the entry in the DLQ with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    MissingField(&'static str),
    BadField {
        field: &'static str,
        reason: String,
    },
    UnknownEventType(String),
    /// The payload disagrees with the envelope (other id, other version, wrong shape for the type).
    Inconsistent(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::MissingField(field) => write!(f, "missing field {field}"),
            DecodeError::BadField { field, reason } => write!(f, "bad field {field}: {reason}"),
            DecodeError::UnknownEventType(t) => write!(f, "unknown event_type {t:?}"),
            DecodeError::Inconsistent(why) => write!(f, "inconsistent event: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl Event {
    /// The stream entry's fields, in SPEC §3 order.
    pub fn to_fields(&self) -> [(&'static str, String); 7] {
        [
            ("event_id", self.event_id.to_string()),
            ("event_type", self.event_type.as_str().to_owned()),
            ("report_id", self.report_id.to_string()),
            ("version", self.version.to_string()),
            ("position", self.position.to_string()),
            ("payload", self.payload.clone()),
            ("timestamp", format_rfc3339(self.timestamp)),
        ]
    }

    /// Decodes a stream entry from its fields. Unknown extra fields are ignored so the format
    /// can grow; every SPEC §3 field must be present and well-formed.
    pub fn from_fields<'a, I>(fields: I) -> Result<Event, DecodeError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut slots: [Option<&'a [u8]>; 7] = [None; 7];
        const NAMES: [&str; 7] = [
            "event_id",
            "event_type",
            "report_id",
            "version",
            "position",
            "payload",
            "timestamp",
        ];
        for (name, value) in fields {
            if let Some(i) = NAMES.iter().position(|n| *n == name) {
                slots[i] = Some(value);
            }
        }
        let text = |i: usize| -> Result<&'a str, DecodeError> {
            let raw = slots[i].ok_or(DecodeError::MissingField(NAMES[i]))?;
            std::str::from_utf8(raw).map_err(|_| DecodeError::BadField {
                field: NAMES[i],
                reason: "not UTF-8".into(),
            })
        };
        let bad = |i: usize, reason: String| DecodeError::BadField {
            field: NAMES[i],
            reason,
        };
        let event_id = Uuid::parse_str(text(0)?).map_err(|e| bad(0, e.to_string()))?;
        let event_type = text(1)?.parse()?;
        let report_id = Uuid::parse_str(text(2)?).map_err(|e| bad(2, e.to_string()))?;
        let version: i64 = text(3)?.parse().map_err(|e| bad(3, format!("{e}")))?;
        if version < 1 {
            return Err(bad(3, format!("must be at least 1, got {version}")));
        }
        let position: i64 = text(4)?.parse().map_err(|e| bad(4, format!("{e}")))?;
        let payload = text(5)?.to_owned();
        let timestamp =
            OffsetDateTime::parse(text(6)?, &Rfc3339).map_err(|e| bad(6, e.to_string()))?;
        Ok(Event {
            event_id,
            event_type,
            report_id,
            version,
            position,
            payload,
            timestamp,
        })
    }

    /// Parses the payload and checks it agrees with the envelope.
    pub fn decode_payload(&self) -> Result<Payload, DecodeError> {
        let payload = match self.event_type {
            EventType::ReportCreated | EventType::ReportUpdated => {
                Payload::Snapshot(serde_json::from_str::<Report>(&self.payload).map_err(|e| {
                    DecodeError::BadField {
                        field: "payload",
                        reason: e.to_string(),
                    }
                })?)
            }
            EventType::ReportDeleted => Payload::Deleted(
                serde_json::from_str::<Tombstone>(&self.payload).map_err(|e| {
                    DecodeError::BadField {
                        field: "payload",
                        reason: e.to_string(),
                    }
                })?,
            ),
        };
        if payload.id() != self.report_id {
            return Err(DecodeError::Inconsistent(format!(
                "payload id {} but report_id {}",
                payload.id(),
                self.report_id
            )));
        }
        if payload.version() != self.version {
            return Err(DecodeError::Inconsistent(format!(
                "payload version {} but version {}",
                payload.version(),
                self.version
            )));
        }
        Ok(payload)
    }
}

/// RFC 3339 in UTC, the one timestamp format on the wire.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Category, Status};

    fn sample() -> Event {
        let id = Uuid::new_v4();
        let now = crate::model::now_micros();
        let report = Report {
            id,
            title: "Sampah menumpuk".into(),
            description: "Di depan pasar".into(),
            category: Category::Kebersihan,
            status: Status::Pending,
            version: 1,
            created_at: now,
            updated_at: now,
            location: None,
            address: None,
            media_url: None,
        };
        Event {
            event_id: Uuid::new_v4(),
            event_type: EventType::ReportCreated,
            report_id: id,
            version: 1,
            position: 42,
            payload: serde_json::to_string(&report).unwrap(),
            timestamp: now,
        }
    }

    fn decode(fields: &[(&str, &str)]) -> Result<Event, DecodeError> {
        Event::from_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes())))
    }

    #[test]
    fn fields_round_trip() {
        let e = sample();
        let fields = e.to_fields();
        let back = Event::from_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes()))).unwrap();
        assert_eq!(back, e);
        assert!(matches!(back.decode_payload().unwrap(), Payload::Snapshot(r) if r.version == 1));
    }

    #[test]
    fn bad_entries_say_why() {
        let e = sample();
        let fields = e.to_fields();
        let owned: Vec<(&str, String)> = fields.iter().map(|(k, v)| (*k, v.clone())).collect();
        let with = |name: &str, value: &str| -> Vec<(&str, String)> {
            owned
                .iter()
                .map(|(k, v)| {
                    (
                        *k,
                        if *k == name {
                            value.to_owned()
                        } else {
                            v.clone()
                        },
                    )
                })
                .collect()
        };
        let check = |fields: Vec<(&str, String)>, expect: &str| {
            let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = decode(&refs)
                .and_then(|e| e.decode_payload().map(|_| e))
                .unwrap_err()
                .to_string();
            assert!(got.contains(expect), "expected {expect:?} in {got:?}");
        };
        check(with("event_type", "ReportExploded"), "unknown event_type");
        check(with("version", "x"), "bad field version");
        check(with("version", "0"), "at least 1");
        check(with("report_id", "nope"), "bad field report_id");
        check(with("payload", "{not json"), "bad field payload");
        check(
            with("report_id", &Uuid::new_v4().to_string()),
            "inconsistent",
        );
        check(with("version", "7"), "inconsistent");
        check(with("timestamp", "yesterday"), "bad field timestamp");
        let missing: Vec<(&str, String)> = owned
            .iter()
            .filter(|(k, _)| *k != "position")
            .cloned()
            .collect();
        check(missing, "missing field position");
    }
}

//! The report model (SPEC §2.1): categories, statuses, the report snapshot with its version.
//!
//! The same type is the command service's response body, the event payload and the read
//! model's row, so the three can never drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Longest title accepted, in characters after trimming (SPEC §2.2).
pub const TITLE_MAX_CHARS: usize = 255;
/// Longest description accepted, in characters after trimming (SPEC §2.2).
pub const DESCRIPTION_MAX_CHARS: usize = 10_000;
/// Longest address accepted, in characters after trimming (SPEC §7.1).
pub const ADDRESS_MAX_CHARS: usize = 255;
/// Longest `media_url` accepted (SPEC §7.2), in characters: the longest URL every browser and
/// proxy in common use still passes along whole.
pub const MEDIA_URL_MAX_CHARS: usize = 2048;

macro_rules! closed_enum {
    ($(#[$m:meta])* $name:ident, $what:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in the order the API documents them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The valid values joined for an error message.
            pub fn valid_values() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?}; valid values: {}"),
                        other,
                        Self::valid_values()
                    )),
                }
            }
        }
    };
}

closed_enum!(
    /// What kind of problem a report is about.
    Category, "category" {
        Kebersihan = "kebersihan",
        Kriminalitas = "kriminalitas",
        Infrastruktur = "infrastruktur",
        Kesehatan = "kesehatan",
        Keamanan = "keamanan",
        Lainnya = "lainnya",
    }
);

closed_enum!(
    /// Where a report is in the officers' workflow; every report starts `pending`.
    Status, "status" {
        Pending = "pending",
        InProgress = "in_progress",
        Resolved = "resolved",
        Rejected = "rejected",
    }
);

/// A report snapshot: the full state after a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: Uuid,
    pub title: String,
    pub description: String,
    pub category: Category,
    pub status: Status,
    /// Starts at 1, +1 per change (a delete is a change too).
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// Where the problem is (SPEC §7.1). Omitted from the JSON when unknown, so the document of
    /// a report without a place is byte-for-byte what it was before locations existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// A free-text street address, at most [`ADDRESS_MAX_CHARS`]; omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A photo of the problem, as an http(s) URL given through Open311 (SPEC §7.2). The
    /// report keeps only the link (the media lives wherever the client uploaded it); it is a
    /// report field like `address`, so it travels in the event, the read model's document
    /// and a rebuild, and a PUT leaves it as it is. Omitted when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
}

/// A point in WGS84 degrees. Only finite values in range are ever built (the command service
/// validates them, and JSON cannot spell NaN), which is what makes the `Eq` below sound.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

impl Eq for Location {}

/// What a delete leaves behind: enough to order it against other versions of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub id: Uuid,
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub deleted_at: OffsetDateTime,
}

/// Now, truncated to microseconds: PostgreSQL's `timestamptz` precision, so that a snapshot
/// built in memory equals the row read back.
pub fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let micros = now.microsecond();
    now.replace_microsecond(micros).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_and_list_valid_values() {
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>(), Ok(*c));
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
        let err = "Sampah".parse::<Category>().unwrap_err();
        assert!(err.contains("kebersihan, kriminalitas"), "{err}");
        let err = "done".parse::<Status>().unwrap_err();
        assert!(err.contains("in_progress"), "{err}");
        assert_eq!(
            serde_json::to_string(&Status::InProgress).unwrap(),
            "\"in_progress\""
        );
    }
}

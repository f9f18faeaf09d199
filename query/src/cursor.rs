//! Cursors of `GET /reports` (SPEC §7.1): an opaque token naming the last report a page
//! served, so the next page starts strictly after it (keyset paging).
//!
//! Two orders exist: newest first, keyed by `(created_at, id)`, and nearest first, keyed by
//! `(chord, id)` (the chord to the `near=` point, see `shared::geo`). Both keys are immutable
//! for the life of a report (an update changes neither `created_at` nor the location's
//! distance unless it moves the report), so a client following cursors sees every report that
//! existed when it started exactly once, however many are created meanwhile.
//!
//! The token is `n.<created_at µs>.<id>` or `d.<chord as f64 bits, hex>.<id>`: exact (the
//! chord round-trips bit for bit), URL-safe, and short. Anything else is a 400 naming `cursor`.

use shared::http::ApiError;
use time::OffsetDateTime;
use uuid::Uuid;

/// Where the previous page ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursor {
    /// Newest first: continue with reports older than this one.
    Newest {
        created_at: OffsetDateTime,
        id: Uuid,
    },
    /// Nearest first: continue with reports farther than this one.
    Near { chord: f64, id: Uuid },
}

impl Cursor {
    pub fn encode(&self) -> String {
        match self {
            Cursor::Newest { created_at, id } => {
                let micros = created_at.unix_timestamp_nanos() / 1_000;
                format!("n.{micros}.{}", id.simple())
            }
            Cursor::Near { chord, id } => format!("d.{:x}.{}", chord.to_bits(), id.simple()),
        }
    }

    pub fn decode(raw: &str) -> Result<Cursor, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "cursor {raw:?} is malformed: pass meta.next_cursor of the previous page unchanged"
            ))
        };
        let mut parts = raw.split('.');
        let (Some(kind), Some(key), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        match kind {
            "n" => {
                let micros: i128 = key.parse().map_err(|_| bad())?;
                let nanos = micros.checked_mul(1_000).ok_or_else(bad)?;
                let created_at =
                    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad())?;
                Ok(Cursor::Newest { created_at, id })
            }
            "d" => {
                let bits = u64::from_str_radix(key, 16).map_err(|_| bad())?;
                let chord = f64::from_bits(bits);
                if !chord.is_finite() || chord < 0.0 {
                    return Err(bad());
                }
                Ok(Cursor::Near { chord, id })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, expect: &str) {
        let got = match Cursor::decode(raw) {
            Ok(c) => {
                assert_eq!(Cursor::decode(&c.encode()), Ok(c), "round trip of {raw}");
                c.encode()
            }
            Err(e) => format!("{}: {}", e.status(), e.message()),
        };
        assert!(
            got.contains(expect),
            "{raw:?}: expected {expect:?} in {got:?}"
        );
    }

    #[test]
    fn tokens() {
        let id = "0b6f3c1e2d4a4b5c8d9e0f1a2b3c4d5e";
        check(
            &format!("n.1750000000123456.{id}"),
            &format!("n.1750000000123456.{id}"),
        );
        check(&format!("n.-5.{id}"), "n.-5.");
        let chord = 1234.5678_f64;
        check(&format!("d.{:x}.{id}", chord.to_bits()), "d.4093");
        let back = Cursor::decode(&format!("d.{:x}.{id}", chord.to_bits())).unwrap();
        assert!(matches!(back, Cursor::Near { chord: c, .. } if c == chord));
        for bad in [
            "",
            "n",
            "n.1",
            &format!("n.x.{id}"),
            &format!("x.1.{id}"),
            "n.1.not-a-uuid",
            &format!("n.1.{id}.extra"),
            &format!("d.{:x}.{id}", f64::NAN.to_bits()),
            &format!("d.{:x}.{id}", (-1.0f64).to_bits()),
            &format!("d.zz.{id}"),
            &format!("n.99999999999999999999999999.{id}"),
            // Found by the fuzzer: overflowed the µs → ns multiplication.
            &format!("n.179999999999999999999950000000000000.{id}"),
        ] {
            check(bad, "400: cursor");
        }
    }
}

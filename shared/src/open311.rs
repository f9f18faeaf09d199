//! What the command and query services share of the Open311 GeoReport v2 API (SPEC §7.2):
//! the service list (one service per category), the status mapping, the standard's error
//! shape, the `application/x-www-form-urlencoded` decoder and W3C datetimes.
//!
//! Guarantees: every error under `/open311/` leaves through [`error_reply`], the one function
//! that turns an [`ApiError`] into `[{"code": N, "description": "…"}]` with the same status
//! and headers (`Allow`, `Retry-After`, `WWW-Authenticate`) the JSON API would send; every
//! decoding failure is an [`ApiError::BadRequest`] that names the parameter.

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::http::{check_text, percent_decode, ApiError, Reply};
use crate::model::{Category, Status};

/// Where the API is mounted on both services.
pub const PREFIX: &str = "/open311/v2/";

/// Whether a request path is under the Open311 mount, so its errors take the standard's shape.
pub fn is_open311(path: &str) -> bool {
    path.starts_with("/open311/")
}

/// One entry of `services.json` (GeoReport v2 "GET Service List").
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Service {
    pub service_code: &'static str,
    pub service_name: &'static str,
    pub description: &'static str,
    /// We define no extra attributes per service, so clients never need the definition call.
    pub metadata: bool,
    /// `realtime`: a request is a report at once, its id is known in the create answer.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub keywords: &'static str,
    pub group: &'static str,
}

/// The service of a category: its name, description, keywords and group.
pub fn service(category: Category) -> Service {
    let (service_name, description, keywords, group) = match category {
        Category::Kebersihan => (
            "Kebersihan",
            "Sampah menumpuk, saluran tersumbat, lingkungan kotor",
            "sampah, got, saluran, kotor, bau",
            "lingkungan",
        ),
        Category::Kriminalitas => (
            "Kriminalitas",
            "Pencurian, vandalisme dan tindak kejahatan lain",
            "pencurian, vandalisme, kejahatan",
            "keamanan",
        ),
        Category::Infrastruktur => (
            "Infrastruktur",
            "Jalan berlubang, lampu jalan mati, jembatan dan fasilitas umum rusak",
            "jalan, lubang, lampu, jembatan, trotoar",
            "prasarana",
        ),
        Category::Kesehatan => (
            "Kesehatan",
            "Wabah, sarang nyamuk, bahaya bagi kesehatan warga",
            "wabah, nyamuk, demam berdarah, limbah",
            "lingkungan",
        ),
        Category::Keamanan => (
            "Keamanan",
            "Gangguan ketertiban, tempat rawan, bahaya bagi keselamatan warga",
            "ketertiban, rawan, bahaya, keselamatan",
            "keamanan",
        ),
        Category::Lainnya => (
            "Lainnya",
            "Masalah lain yang tidak termasuk layanan di atas",
            "lain-lain",
            "umum",
        ),
    };
    Service {
        service_code: category.as_str(),
        service_name,
        description,
        metadata: false,
        kind: "realtime",
        keywords,
        group,
    }
}

/// The whole `services.json` answer, in the documented category order.
pub fn services_body() -> Vec<u8> {
    let all: Vec<Service> = Category::ALL.iter().map(|c| service(*c)).collect();
    // Serialising plain data structures into a Vec cannot fail.
    serde_json::to_vec(&all).unwrap_or_default()
}

/// The standard's two statuses: `pending`/`in_progress` are `open`, `resolved`/`rejected`
/// are `closed` (the exact status goes to `status_notes`).
pub fn status_of(status: Status) -> &'static str {
    match status {
        Status::Pending | Status::InProgress => "open",
        Status::Resolved | Status::Rejected => "closed",
    }
}

/// The statuses an Open311 `status` value stands for; anything else is a 400 naming `status`.
pub fn statuses(open311: &str) -> Result<&'static [Status], ApiError> {
    match open311 {
        "open" => Ok(&[Status::Pending, Status::InProgress]),
        "closed" => Ok(&[Status::Resolved, Status::Rejected]),
        other => Err(ApiError::BadRequest(format!(
            "status: unknown value {other:?}; valid values: open, closed"
        ))),
    }
}

/// One entry of the standard's error answer.
#[derive(Debug, Serialize)]
struct ErrorEntry {
    code: u16,
    description: String,
}

/// The one place an error under `/open311/` becomes an answer: the status and headers of
/// [`ApiError::into_reply`] (which also logs an internal error), the body in the standard's
/// shape `[{"code": 400, "description": "…"}]`.
pub fn error_reply(error: ApiError, instance: &str) -> Reply {
    let entry = ErrorEntry {
        code: error.status(),
        description: error.message(),
    };
    let mut reply = error.into_reply(instance);
    reply.body = serde_json::to_vec(&[entry]).unwrap_or_default();
    reply
}

/// A decoded `application/x-www-form-urlencoded` body (or query string): names and values
/// percent-decoded (`+` is a space), in order, repeated names kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(Vec<(String, String)>);

impl Form {
    /// Decodes a form. A body that is not UTF-8, a bad percent-escape, a decoded name or value
    /// that is not UTF-8 or holds a control character other than tab, newline and carriage
    /// return: 400 naming the parameter.
    pub fn parse(raw: &[u8]) -> Result<Form, ApiError> {
        let text = std::str::from_utf8(raw).map_err(|_| {
            ApiError::BadRequest("the form is not UTF-8: percent-encode other bytes".into())
        })?;
        let mut pairs = Vec::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let name = percent_decode(k).map_err(|_| {
                ApiError::BadRequest(format!(
                    "parameter name {k:?} is not valid percent-encoded UTF-8"
                ))
            })?;
            check_text(&format!("parameter name {name:?}"), &name)?;
            let value = percent_decode(v).map_err(|_| {
                ApiError::BadRequest(format!(
                    "{name}: the value is not valid percent-encoded UTF-8"
                ))
            })?;
            check_text(&name, &value)?;
            pairs.push((name, value));
        }
        Ok(Form(pairs))
    }

    /// A single-valued parameter, trimmed; `None` when absent or blank (clients send empty
    /// fields for what they do not know). Given twice with different values: 400, since
    /// picking one would silently drop what the client meant.
    pub fn get(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut found: Option<&str> = None;
        for (_, v) in self.0.iter().filter(|(k, _)| k == name) {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match found {
                Some(prev) if prev != v => {
                    return Err(ApiError::BadRequest(format!(
                        "{name} is given more than once with different values"
                    )))
                }
                _ => found = Some(v),
            }
        }
        Ok(found)
    }

    /// A comma-list parameter (`service_code=a,b` or repeated `service_code=a&service_code=b`):
    /// every non-blank item; empty when absent.
    pub fn list(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Every parameter name, for tests and diagnostics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
}

/// A W3C datetime (the profile of ISO 8601 GeoReport v2 names): `2010-04-14T06:37:38-08:00`,
/// with or without seconds or fractions, `Z` or an offset; or a bare date (`2010-04-14`,
/// midnight UTC). A `+` sent unescaped in a query string arrives as a space and is read as
/// the `+` the client meant. The result is in UTC. Anything else: 400 naming `name`.
pub fn parse_datetime(name: &str, raw: &str) -> Result<OffsetDateTime, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{name}: {raw:?} is not a W3C datetime (like 2010-04-14T06:37:38-08:00 or 2010-04-14)"
        ))
    };
    let s = raw.trim();
    if s.len() == 10 {
        let date =
            Date::parse(s, format_description!("[year]-[month]-[day]")).map_err(|_| bad())?;
        return Ok(date.midnight().assume_utc());
    }
    if !s.is_ascii() || s.len() < 17 || !matches!(s.as_bytes()[10], b'T' | b't') {
        return Err(bad());
    }
    let mut s = s.to_owned();
    // `…T06:37:38 08:00`: an unescaped `+` decoded as a space.
    if let Some(i) = s.rfind(' ') {
        if i > 10 {
            s.replace_range(i..=i, "+");
        }
    }
    // `…T06:37Z` / `…T06:37-08:00`: minutes precision, as W3C allows; seconds are zero.
    if s.as_bytes()
        .get(16)
        .is_some_and(|b| !b.is_ascii_digit() && *b != b':')
    {
        s.insert_str(16, ":00");
    }
    OffsetDateTime::parse(&s, &Rfc3339)
        .map(|t| t.to_offset(UtcOffset::UTC))
        .map_err(|_| bad())
}

/// A timestamp as GeoReport v2 shows them: seconds precision with a numeric offset, in UTC
/// (`2010-04-14T14:37:38+00:00`).
pub fn format_datetime(at: OffsetDateTime) -> String {
    let t = at.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is the Debug of the decoded pairs, or a fragment of the 400.
    fn check(raw: &str, expect: &str) {
        let got = match Form::parse(raw.as_bytes()) {
            Ok(f) => format!("{:?}", f.0),
            Err(e) => format!("{}: {}", e.status(), e.message()),
        };
        assert!(
            got.contains(expect),
            "{raw:?}: expected {expect:?} in {got:?}"
        );
    }

    #[test]
    fn form_decoding() {
        check("", "[]");
        check(
            "service_code=kebersihan&lat=-6.2&long=106.8",
            r#"[("service_code", "kebersihan"), ("lat", "-6.2"), ("long", "106.8")]"#,
        );
        check(
            "description=Jalan+rusak%20parah%21",
            r#""Jalan rusak parah!""#,
        );
        check("a=1&&b", r#"[("a", "1"), ("b", "")]"#);
        check("k=a%3Db%26c", r#"("k", "a=b&c")"#);
        check("d=baris%0D%0Akedua%09tab", r#""baris\r\nkedua\ttab""#);
        check("d=%C3%A9", r#""é""#);
        check(
            "description=%zz",
            "400: description: the value is not valid",
        );
        check("description=%4", "400: description: the value is not valid");
        check(
            "description=%ff",
            "400: description: the value is not valid",
        );
        check(
            "description=a%00b",
            "400: description contains the control character U+0000",
        );
        check("x%00=1", "400: parameter name");
        check("%zz=1", "400: parameter name \"%zz\"");
        assert!(Form::parse(b"a=\xff")
            .unwrap_err()
            .message()
            .contains("not UTF-8"));
    }

    #[test]
    fn form_values() {
        let f = Form::parse(b"a=1&a=1&b=&b=2&c=x&c=y&l=a,b&l=c,,&e=+").unwrap();
        assert_eq!(f.get("a"), Ok(Some("1")));
        assert_eq!(f.get("b"), Ok(Some("2")));
        assert!(f
            .get("c")
            .unwrap_err()
            .message()
            .contains("c is given more than once"));
        assert_eq!(f.get("e"), Ok(None));
        assert_eq!(f.get("missing"), Ok(None));
        assert_eq!(f.list("l"), vec!["a", "b", "c"]);
        assert!(f.list("missing").is_empty());
    }

    #[test]
    fn datetimes() {
        let check = |raw: &str, expect: &str| {
            let got = match parse_datetime("start_date", raw) {
                Ok(t) => format_datetime(t),
                Err(e) => format!("{}: {}", e.status(), e.message()),
            };
            assert!(
                got.contains(expect),
                "{raw:?}: expected {expect:?} in {got:?}"
            );
        };
        // The published specification's own examples.
        check("2010-04-14T06:37:38-08:00", "2010-04-14T14:37:38+00:00");
        check("2010-04-15T06:37:38-08:00", "2010-04-15T14:37:38+00:00");
        check("2010-04-14T06:37:38 08:00", "2010-04-13T22:37:38+00:00");
        check("2010-04-14T06:37:38Z", "2010-04-14T06:37:38+00:00");
        check("2010-04-14T06:37:38.250+07:00", "2010-04-13T23:37:38+00:00");
        check("2010-04-14T06:37Z", "2010-04-14T06:37:00+00:00");
        check("2010-04-14T06:37+07:00", "2010-04-13T23:37:00+00:00");
        check("2010-04-14", "2010-04-14T00:00:00+00:00");
        for bad in [
            "",
            "yesterday",
            "2010-13-01",
            "2010-04-14T25:00:00Z",
            "2010-04-14T06:37:38",
            "2010-04-14 06:37:38Z",
            "1271226458",
            "2010-04-14T06:37:38-08:00xx",
            "2010-04-14Tééé",
        ] {
            check(bad, "400: start_date: ");
        }
    }

    #[test]
    fn statuses_map_both_ways() {
        for s in Status::ALL {
            let back = statuses(status_of(*s)).unwrap();
            assert!(back.contains(s), "{s:?}");
        }
        assert_eq!(status_of(Status::InProgress), "open");
        assert_eq!(status_of(Status::Rejected), "closed");
        assert!(statuses("pending")
            .unwrap_err()
            .message()
            .contains("status: unknown value"));
    }

    #[test]
    fn services_one_per_category() {
        let v: serde_json::Value = serde_json::from_slice(&services_body()).unwrap();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), Category::ALL.len());
        for (entry, c) in list.iter().zip(Category::ALL) {
            assert_eq!(entry["service_code"], c.as_str());
            assert_eq!(entry["metadata"], false);
            assert_eq!(entry["type"], "realtime");
            for field in ["service_name", "description", "keywords", "group"] {
                assert!(
                    entry[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{field}"
                );
            }
        }
    }

    #[test]
    fn errors_take_the_standard_shape() {
        let check = |e: ApiError, status: u16, fragment: &str, header: Option<&str>| {
            let r = error_reply(e, "query-1");
            assert_eq!(r.status, status);
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v[0]["code"], status, "{v}");
            assert!(
                v[0]["description"].as_str().unwrap().contains(fragment),
                "{v}"
            );
            assert_eq!(v.as_array().unwrap().len(), 1);
            if let Some(h) = header {
                assert!(r.headers.iter().any(|x| x == h), "{:?}", r.headers);
            }
        };
        check(
            ApiError::BadRequest("lat: bad".into()),
            400,
            "lat: bad",
            None,
        );
        check(
            ApiError::Unauthorized,
            401,
            "credentials",
            Some("WWW-Authenticate: Bearer"),
        );
        check(ApiError::Forbidden, 403, "invalid", None);
        check(ApiError::NotFound("x".into()), 404, "x", None);
        check(
            ApiError::MethodNotAllowed { allow: "GET" },
            405,
            "GET",
            Some("Allow: GET"),
        );
        check(
            ApiError::PayloadTooLarge { declared: 70000 },
            413,
            "70000",
            None,
        );
        check(
            ApiError::Unavailable("db".into()),
            503,
            "db",
            Some("Retry-After: 1"),
        );
    }
}

//! Request validation: turns a request body into a typed command (`CreateReport`,
//! `UpdateReport`) or a 400 that names the field and the rule (SPEC §2.2). Pure: no I/O, so
//! every rule is tested in-module, and a rejected request can never have touched the database.

use serde_json::{Map, Value};
use shared::http::{check_text, ApiError};
use shared::model::{Category, Location, Status, DESCRIPTION_MAX_CHARS, TITLE_MAX_CHARS};

use crate::place::{self, Patch};

/// Create a report: the three required fields, trimmed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateReport {
    pub title: String,
    pub description: String,
    pub category: Category,
    /// Optional (SPEC §7.1), checked by `place.rs`.
    pub location: Option<Location>,
    pub address: Option<String>,
    /// Only through Open311 (SPEC §7.2), checked by `open311.rs`; the JSON API has none.
    pub media_url: Option<String>,
}

/// Change a report: any subset of the fields; an absent field stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateReport {
    pub title: Option<String>,
    pub description: Option<String>,
    pub category: Option<Category>,
    pub status: Option<Status>,
    /// Absent: unchanged; `Some(None)`: cleared (`null`).
    pub location: Patch<Location>,
    pub address: Patch<String>,
}

pub fn create(body: &[u8]) -> Result<CreateReport, ApiError> {
    let obj = object(body)?;
    let required = |name: &str| -> Result<String, ApiError> {
        match text_field(&obj, name)? {
            Some(v) => Ok(v),
            None => Err(bad(format!("{name} is required"))),
        }
    };
    let title = checked_len("title", required("title")?, TITLE_MAX_CHARS)?;
    let description = checked_len(
        "description",
        required("description")?,
        DESCRIPTION_MAX_CHARS,
    )?;
    let category = parse_enum::<Category>(&required("category")?)?;
    Ok(CreateReport {
        title,
        description,
        category,
        location: place::location(&obj)?.flatten(),
        address: place::address(&obj)?.flatten(),
        media_url: None,
    })
}

pub fn update(body: &[u8]) -> Result<UpdateReport, ApiError> {
    let obj = object(body)?;
    let cmd = UpdateReport {
        title: text_field(&obj, "title")?
            .map(|t| checked_len("title", t, TITLE_MAX_CHARS))
            .transpose()?,
        description: text_field(&obj, "description")?
            .map(|d| checked_len("description", d, DESCRIPTION_MAX_CHARS))
            .transpose()?,
        category: text_field(&obj, "category")?
            .map(|c| parse_enum::<Category>(&c))
            .transpose()?,
        status: text_field(&obj, "status")?
            .map(|s| parse_enum::<Status>(&s))
            .transpose()?,
        location: place::location(&obj)?,
        address: place::address(&obj)?,
    };
    if cmd == UpdateReport::default() {
        return Err(bad(
            "nothing to update: give at least one of title, description, category, status, \
             location, address"
                .into(),
        ));
    }
    Ok(cmd)
}

/// `If-Match: <version>` (also `"3"` or `W/"3"`); `*` or absent means "any version".
pub fn if_match(header: Option<&str>) -> Result<Option<i64>, ApiError> {
    let Some(raw) = header else { return Ok(None) };
    let v = raw.trim();
    if v == "*" {
        return Ok(None);
    }
    let v = v.strip_prefix("W/").unwrap_or(v).trim_matches('"');
    match v.parse::<i64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(bad(format!(
            "If-Match must be a version number (a positive integer), got {raw:?}"
        ))),
    }
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(bad("body is empty: expected a JSON object".into()));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("body is not valid UTF-8".into()))?;
    // serde_json refuses nesting deeper than 128 levels, so a hostile body cannot exhaust
    // the coroutine stack.
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("body must be a JSON object".into())),
        Err(e) => Err(bad(format!("body is not valid JSON: {e}"))),
    }
}

/// A string field, trimmed; `None` when absent. Present but empty (after trimming) is an
/// error, as is any type other than a string or a control character other than tab, newline
/// and carriage return (SPEC §7.1; PostgreSQL cannot even store U+0000).
fn text_field(obj: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => {
            check_text(name, s)?;
            let t = s.trim();
            if t.is_empty() {
                Err(bad(format!("{name} must not be empty")))
            } else {
                Ok(Some(t.to_owned()))
            }
        }
        Some(other) => Err(bad(format!(
            "{name} must be a string, got {}",
            json_type(other)
        ))),
    }
}

fn checked_len(name: &str, value: String, max: usize) -> Result<String, ApiError> {
    let n = value.chars().count();
    if n > max {
        Err(bad(format!(
            "{name} is too long: {n} characters, the limit is {max}"
        )))
    } else {
        Ok(value)
    }
}

fn parse_enum<T: std::str::FromStr<Err = String>>(v: &str) -> Result<T, ApiError> {
    v.parse::<T>().map_err(bad)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is either "ok" or a fragment of the 400 message.
    fn check_create(body: &str, expect: &str) {
        match create(body.as_bytes()) {
            Ok(_) => assert_eq!(expect, "ok", "body {body:?} was accepted"),
            Err(e) => {
                assert_eq!(e.status(), 400, "{body:?}");
                let msg = e.message();
                assert!(
                    msg.contains(expect),
                    "body {body:?}: expected {expect:?} in {msg:?}"
                );
            }
        }
    }

    fn check_update(body: &str, expect: &str) {
        match update(body.as_bytes()) {
            Ok(_) => assert_eq!(expect, "ok", "body {body:?} was accepted"),
            Err(e) => {
                let msg = e.message();
                assert!(
                    msg.contains(expect),
                    "body {body:?}: expected {expect:?} in {msg:?}"
                );
            }
        }
    }

    #[test]
    fn create_rules() {
        let ok = r#"{"title":"Jalan berlubang","description":"Di Jl. Sudirman","category":"infrastruktur"}"#;
        check_create(ok, "ok");
        check_create(
            r#"{"title":"  t  ","description":"d","category":"lainnya","extra":[1,2],"status":"x"}"#,
            "ok",
        );
        check_create("", "body is empty");
        check_create("not json", "not valid JSON");
        check_create("[1,2]", "must be a JSON object");
        check_create("\"str\"", "must be a JSON object");
        check_create(
            r#"{"description":"d","category":"lainnya"}"#,
            "title is required",
        );
        check_create(
            r#"{"title":"t","category":"lainnya"}"#,
            "description is required",
        );
        check_create(r#"{"title":"t","description":"d"}"#, "category is required");
        check_create(
            r#"{"title":"   ","description":"d","category":"lainnya"}"#,
            "title must not be empty",
        );
        check_create(
            r#"{"title":5,"description":"d","category":"lainnya"}"#,
            "title must be a string, got a number",
        );
        check_create(
            r#"{"title":null,"description":"d","category":"lainnya"}"#,
            "got null",
        );
        check_create(
            r#"{"title":"t","description":"d","category":"sampah"}"#,
            "valid values: kebersihan, kriminalitas, infrastruktur, kesehatan, keamanan, lainnya",
        );
        let long_title = format!(
            r#"{{"title":"{}","description":"d","category":"lainnya"}}"#,
            "a".repeat(256)
        );
        check_create(
            &long_title,
            "title is too long: 256 characters, the limit is 255",
        );
        // 255 multi-byte characters are fine: the limit counts characters, not bytes.
        let utf8_title = format!(
            r#"{{"title":"{}","description":"d","category":"lainnya"}}"#,
            "é".repeat(255)
        );
        check_create(&utf8_title, "ok");
        let padded = format!(
            r#"{{"title":"  {}  ","description":"d","category":"lainnya"}}"#,
            "a".repeat(255)
        );
        check_create(&padded, "ok");
        let long_desc = format!(
            r#"{{"title":"t","description":"{}","category":"lainnya"}}"#,
            "d".repeat(10_001)
        );
        check_create(
            &long_desc,
            "description is too long: 10001 characters, the limit is 10000",
        );
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        check_create(&deep, "not valid JSON");
        // Control characters: 400 naming the field; tab, newline and carriage return are text.
        check_create(
            r#"{"title":"a\u0000b","description":"d","category":"lainnya"}"#,
            "title contains the control character U+0000",
        );
        check_create(
            r#"{"title":"t","description":"a\u001bb","category":"lainnya"}"#,
            "description contains the control character U+001B",
        );
        check_create(
            r#"{"title":"t","description":"d","category":"lainnya\u0000"}"#,
            "category contains the control character U+0000",
        );
        check_create(
            r#"{"title":"t","description":"baris 1\r\nbaris\t2","category":"lainnya"}"#,
            "ok",
        );
        assert!(create(b"{\"title\":\"\xff\"}")
            .unwrap_err()
            .message()
            .contains("UTF-8"));
    }

    #[test]
    fn update_rules() {
        check_update(r#"{"status":"in_progress"}"#, "ok");
        check_update(r#"{"category":"kesehatan","title":"baru"}"#, "ok");
        check_update("{}", "nothing to update");
        check_update(r#"{"unknown":1}"#, "nothing to update");
        check_update(
            r#"{"status":"done"}"#,
            "valid values: pending, in_progress, resolved, rejected",
        );
        check_update(r#"{"status":1}"#, "status must be a string");
        check_update(r#"{"title":""}"#, "title must not be empty");
        check_update(
            r#"{"status":"pending\u0000"}"#,
            "status contains the control character U+0000",
        );
        check_update(
            r#"{"title":"a\u0007"}"#,
            "title contains the control character U+0007",
        );
        check_update(
            r#"{"description":"\u0000"}"#,
            "description contains the control character U+0000",
        );
    }

    #[test]
    fn if_match_header() {
        assert_eq!(if_match(None), Ok(None));
        assert_eq!(if_match(Some("*")), Ok(None));
        assert_eq!(if_match(Some("3")), Ok(Some(3)));
        assert_eq!(if_match(Some("\"3\"")), Ok(Some(3)));
        assert_eq!(if_match(Some("W/\"12\"")), Ok(Some(12)));
        for bad in ["0", "-1", "abc", "\"\"", "1.5"] {
            assert!(if_match(Some(bad)).is_err(), "{bad}");
        }
    }
}

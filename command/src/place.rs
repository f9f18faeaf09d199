//! Where a report is (SPEC §7.1): the optional `location {lat, lng}` and `address` of a create
//! or update body, checked. Pure, like `validate.rs`, which calls it.
//!
//! Rules: a location has both numbers or is refused (both-or-neither); lat ∈ [-90, 90], lng ∈
//! [-180, 180]; `"location": null` and `"address": null` clear the field on update; an
//! address is trimmed, at most [`ADDRESS_MAX_CHARS`] characters, and holds no control
//! characters other than tab, newline and carriage return. Every refusal names the field.

use serde_json::{Map, Value};
use shared::geo::check_location;
use shared::http::ApiError;
use shared::model::{Location, ADDRESS_MAX_CHARS};

/// A field of an update: absent (unchanged), `null` (cleared) or a new value.
pub type Patch<T> = Option<Option<T>>;

/// `location` of a body: `None` absent, `Some(None)` null, `Some(Some(l))` a checked location.
pub fn location(obj: &Map<String, Value>) -> Result<Patch<Location>, ApiError> {
    let bad = |m: String| ApiError::BadRequest(m);
    match obj.get("location") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Object(o)) => {
            let coord = |name: &str| match o.get(name) {
                Some(Value::Number(n)) => n
                    .as_f64()
                    .ok_or_else(|| bad(format!("location.{name} must be a number, got {n}"))),
                None | Some(Value::Null) => Err(bad(format!(
                    "location needs both lat and lng; location.{name} is missing"
                ))),
                Some(_) => Err(bad(format!("location.{name} must be a number"))),
            };
            let (lat, lng) = (coord("lat")?, coord("lng")?);
            check_location(lat, lng, "location")
                .map(|l| Some(Some(l)))
                .map_err(bad)
        }
        Some(_) => Err(bad(
            "location must be an object {\"lat\": number, \"lng\": number} or null".into(),
        )),
    }
}

/// `address` of a body: `None` absent, `Some(None)` null or blank, `Some(Some(a))` checked.
pub fn address(obj: &Map<String, Value>) -> Result<Patch<String>, ApiError> {
    match obj.get("address") {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::String(s)) => check_address(s).map(Some),
        Some(_) => Err(ApiError::BadRequest(
            "address must be a string or null".into(),
        )),
    }
}

/// An address as given in any format (JSON or Open311's form): trimmed; blank means none.
pub fn check_address(raw: &str) -> Result<Option<String>, ApiError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(ApiError::BadRequest(
            "address contains a control character (only tab, newline and carriage return are allowed)"
                .into(),
        ));
    }
    let n = t.chars().count();
    if n > ADDRESS_MAX_CHARS {
        return Err(ApiError::BadRequest(format!(
            "address is too long: {n} characters, the limit is {ADDRESS_MAX_CHARS}"
        )));
    }
    Ok(Some(t.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is the Debug of the parsed `(location, address)` or a fragment of the 400.
    fn check(body: &str, expect: &str) {
        let obj: Map<String, Value> = serde_json::from_str(body).unwrap();
        let got = location(&obj)
            .and_then(|l| Ok((l, address(&obj)?)))
            .map(|v| format!("{v:?}"))
            .unwrap_or_else(|e| format!("{}: {}", e.status(), e.message()));
        assert!(
            got.contains(expect),
            "{body}: expected {expect:?} in {got:?}"
        );
    }

    #[test]
    fn rules() {
        check("{}", "(None, None)");
        check(
            r#"{"location":{"lat":-6.2,"lng":106.8}}"#,
            "Some(Some(Location { lat: -6.2, lng: 106.8 }))",
        );
        check(r#"{"location":{"lat":-90,"lng":180}}"#, "lat: -90.0");
        check(
            r#"{"location":null,"address":null}"#,
            "(Some(None), Some(None))",
        );
        check(
            r#"{"location":{"lat":-6.2}}"#,
            "400: location needs both lat and lng; location.lng is missing",
        );
        check(
            r#"{"location":{"lng":1,"lat":null}}"#,
            "location.lat is missing",
        );
        check(
            r#"{"location":{"lat":"-6.2","lng":1}}"#,
            "400: location.lat must be a number",
        );
        check(r#"{"location":{"lat":90.5,"lng":1}}"#, "400: location: lat");
        check(r#"{"location":{"lat":1,"lng":-181}}"#, "400: location: lng");
        check(r#"{"location":[1,2]}"#, "400: location must be an object");
        check(
            r#"{"address":"  Jl. Sudirman No. 1  "}"#,
            "Some(Some(\"Jl. Sudirman No. 1\"))",
        );
        check(r#"{"address":"   "}"#, "Some(None)");
        check(r#"{"address":5}"#, "400: address must be a string");
        check(
            r#"{"address":"a\u0000b"}"#,
            "400: address contains a control",
        );
        check(
            r#"{"address":"a\u001bb"}"#,
            "400: address contains a control",
        );
        check(
            r#"{"address":"a\u0085b"}"#,
            "400: address contains a control",
        );
        check(r#"{"address":"a\tb\r\nc"}"#, "Some(Some(");
        let long = format!(r#"{{"address":"{}"}}"#, "é".repeat(256));
        check(
            &long,
            "400: address is too long: 256 characters, the limit is 255",
        );
        let max = format!(r#"{{"address":"{}"}}"#, "é".repeat(255));
        check(&max, "Some(Some(");
    }
}

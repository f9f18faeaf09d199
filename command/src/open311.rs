//! The write half of Open311 GeoReport v2 (SPEC §7.2) on the command service:
//! `GET /open311/v2/services.json` and `POST /open311/v2/requests.json`.
//!
//! A request arrives as `application/x-www-form-urlencoded` and becomes the same
//! [`CreateReport`] the JSON `POST /reports` builds, committed through the same
//! [`store::create`] transaction: the same event, the same guarantees. [`request`] is pure (a
//! form in, a command or a 400 naming the parameter out), so every rule is tested in-module
//! and a refused request never reaches the database.

use serde::Serialize;
use shared::geo::check_location;
use shared::http::{ApiError, Incoming, Reply};
use shared::model::{Category, DESCRIPTION_MAX_CHARS, MEDIA_URL_MAX_CHARS, TITLE_MAX_CHARS};
use shared::open311::{self, Form};

use crate::place::check_address;
use crate::routes::{require_schema, Ctx};
use crate::store;
use crate::validate::CreateReport;

/// `GET /open311/v2/services.json`: one service per category.
pub fn services() -> Reply {
    Reply::new(200, open311::services_body())
}

/// The create answer: the standard's one-element array.
#[derive(Serialize)]
struct Created {
    service_request_id: String,
}

/// `POST /open311/v2/requests.json`: checks the write token (`api_key` in the form, or a
/// Bearer header), the form, and creates the report.
pub fn create(ctx: &Ctx, req: &Incoming) -> Result<Reply, ApiError> {
    if let Some(ct) = req.header("content-type") {
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(ApiError::BadRequest(format!(
                "Content-Type must be application/x-www-form-urlencoded, got {ct:?}"
            )));
        }
    }
    let form = Form::parse(&req.body)?;
    match form.get("api_key")? {
        // The standard's credential is the form's api_key; it is the same write token.
        Some(key) => ctx.tokens.check(Some(&format!("Bearer {key}")))?,
        None => ctx.tokens.check(req.header("authorization"))?,
    }
    let cmd = request(&form)?;
    require_schema(ctx)?;
    let report = store::create(&ctx.pool, cmd).map_err(store::StoreError::into_api)?;
    ctx.waker.wake();
    let body = serde_json::to_vec(&[Created {
        service_request_id: report.id.to_string(),
    }])
    .unwrap_or_default();
    Ok(Reply::new(201, body))
}

/// A form, checked, as the command `POST /reports` would build: `service_code` (required),
/// `lat`+`long` or `address_string` (at least one), `description`, `media_url`; everything
/// else (`api_key`, `email`, `device_id`, `attribute[…]`, …) is ignored.
pub fn request(form: &Form) -> Result<CreateReport, ApiError> {
    let bad = ApiError::BadRequest;
    let code = form
        .get("service_code")?
        .ok_or_else(|| bad("service_code is required".into()))?;
    let category = code.parse::<Category>().map_err(|_| {
        bad(format!(
            "service_code: unknown service {code:?}; valid values: {}",
            Category::valid_values()
        ))
    })?;
    let location = match (form.get("lat")?, form.get("long")?) {
        (None, None) => None,
        (Some(lat), Some(long)) => {
            let lat = number("lat", lat)?;
            let long = number("long", long)?;
            if !(-90.0..=90.0).contains(&lat) {
                return Err(bad(format!("lat must be between -90 and 90, got {lat}")));
            }
            Some(
                check_location(lat, long, "long")
                    .map_err(|_| bad(format!("long must be between -180 and 180, got {long}")))?,
            )
        }
        (Some(_), None) => return Err(bad("long is required when lat is given".into())),
        (None, Some(_)) => return Err(bad("lat is required when long is given".into())),
    };
    let address = match form.get("address_string")? {
        Some(a) => check_address(a).map_err(|e| bad(format!("address_string: {}", e.message())))?,
        None => None,
    };
    if location.is_none() && address.is_none() {
        return Err(bad(
            "a location is required: lat and long, or address_string".into(),
        ));
    }
    let description = form.get("description")?.unwrap_or("").to_owned();
    let n = description.chars().count();
    if n > DESCRIPTION_MAX_CHARS {
        return Err(bad(format!(
            "description is too long: {n} characters, the limit is {DESCRIPTION_MAX_CHARS}"
        )));
    }
    let media_url = form.get("media_url")?.map(media_url).transpose()?;
    Ok(CreateReport {
        title: title(&description, category),
        description,
        category,
        location,
        address,
        media_url,
    })
}

/// The title of a request: the first non-blank line of the description, cut to
/// [`TITLE_MAX_CHARS`] characters; without a description, the service's name.
pub fn title(description: &str, category: Category) -> String {
    match description.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line
            .chars()
            .take(TITLE_MAX_CHARS)
            .collect::<String>()
            .trim_end()
            .to_owned(),
        None => open311::service(category).service_name.to_owned(),
    }
}

fn number(name: &str, raw: &str) -> Result<f64, ApiError> {
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(ApiError::BadRequest(format!(
            "{name} must be a decimal number of degrees, got {raw:?}"
        ))),
    }
}

/// `media_url`: an absolute `http`/`https` URL with a host, at most [`MEDIA_URL_MAX_CHARS`]
/// characters, no spaces. Anything else is refused rather than stored: the link is shown to
/// officers and other clients, so a `javascript:` or `file:` URL must never get in.
pub fn media_url(raw: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("media_url {why}"));
    let n = raw.chars().count();
    if n > MEDIA_URL_MAX_CHARS {
        return Err(bad(&format!(
            "is too long: {n} characters, the limit is {MEDIA_URL_MAX_CHARS}"
        )));
    }
    let lower = raw.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| bad("must be an http:// or https:// URL"))?;
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must not contain spaces or control characters"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') {
        return Err(bad("must name a host"));
    }
    Ok(raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is "ok: <title>" for an accepted form or a fragment of the 400.
    fn check(body: &str, expect: &str) {
        let got = Form::parse(body.as_bytes())
            .and_then(|f| request(&f))
            .map(|c| format!("ok: {}", c.title))
            .unwrap_or_else(|e| format!("{}: {}", e.status(), e.message()));
        assert!(
            got.contains(expect),
            "{body:?}: expected {expect:?} in {got:?}"
        );
    }

    #[test]
    fn request_rules() {
        let at = "lat=-6.2&long=106.8";
        check(
            &format!("service_code=infrastruktur&{at}&description=Jalan+berlubang%0Adalam"),
            "ok: Jalan berlubang",
        );
        check(&format!("service_code=kebersihan&{at}"), "ok: Kebersihan");
        check(
            "service_code=lainnya&address_string=Jl.+Sudirman+1&description=%0A%0A++baris+dua++",
            "ok: baris dua",
        );
        check(
            &format!("service_code=kebersihan&{at}&api_key=k&email=a%40b&attribute%5Bx%5D=1"),
            "ok",
        );
        check(&format!("service_code=kebersihan&{at}&lat=-6.2"), "ok");
        check(at, "400: service_code is required");
        check(
            &format!("service_code=&{at}"),
            "400: service_code is required",
        );
        check(
            &format!("service_code=sampah&{at}"),
            "400: service_code: unknown service",
        );
        check(
            &format!("service_code=a&service_code=b&{at}"),
            "400: service_code is given more than once",
        );
        check("service_code=kebersihan", "400: a location is required");
        check(
            "service_code=kebersihan&address_string=++",
            "400: a location is required",
        );
        check("service_code=kebersihan&lat=1", "400: long is required");
        check("service_code=kebersihan&long=1", "400: lat is required");
        check(
            "service_code=kebersihan&lat=x&long=1",
            "400: lat must be a decimal",
        );
        check(
            "service_code=kebersihan&lat=1&long=NaN",
            "400: long must be a decimal",
        );
        check(
            "service_code=kebersihan&lat=inf&long=1",
            "400: lat must be a decimal",
        );
        check(
            "service_code=kebersihan&lat=91&long=1",
            "400: lat must be between",
        );
        check(
            "service_code=kebersihan&lat=1&long=-180.5",
            "400: long must be between",
        );
        check(
            &format!("service_code=kebersihan&address_string={}", "a".repeat(256)),
            "400: address_string: address is too long",
        );
        check(
            &format!(
                "service_code=kebersihan&{at}&description={}",
                "d".repeat(10_001)
            ),
            "400: description is too long",
        );
        check(
            &format!("service_code=kebersihan&{at}&description=a%1Bb"),
            "400: description contains the control character U+001B",
        );
        check(
            &format!("service_code=kebersihan&{at}&media_url=ftp://x/y"),
            "400: media_url",
        );
    }

    #[test]
    fn titles() {
        let check = |description: &str, expect: &str| {
            assert_eq!(
                title(description, Category::Keamanan),
                expect,
                "{description:?}"
            );
        };
        check("", "Keamanan");
        check(" \n \r\n", "Keamanan");
        check("Lampu mati\nsejak kemarin", "Lampu mati");
        check("  Lampu mati  \r\nlagi", "Lampu mati");
        let long = "é".repeat(300);
        assert_eq!(
            title(&long, Category::Keamanan).chars().count(),
            TITLE_MAX_CHARS
        );
    }

    #[test]
    fn media_urls() {
        let check = |raw: &str, ok: bool| {
            assert_eq!(media_url(raw).is_ok(), ok, "{raw:?}");
        };
        check("http://foto.example/a.jpg", true);
        check("HTTPS://foto.example:8443/a.jpg?x=1#f", true);
        check("https://user@foto.example/a", true);
        check(&format!("https://x.example/{}", "a".repeat(2000)), true);
        check(&format!("https://x.example/{}", "a".repeat(2048)), false);
        check("javascript:alert(1)", false);
        check("file:///etc/passwd", false);
        check("foto.example/a.jpg", false);
        check("https://", false);
        check("https:///path", false);
        check("https://:80/path", false);
        check("https://a b/c", false);
        check("https://x.example/\u{85}", false);
    }
}

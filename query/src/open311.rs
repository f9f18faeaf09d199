//! The read half of Open311 GeoReport v2 (SPEC §7.2) on the query service:
//! `GET /open311/v2/services.json`, `GET /open311/v2/requests.json` and
//! `GET /open311/v2/requests/{id}.json`, served from the same read model as `/reports`.
//!
//! Guarantees: a list is newest first and holds at most [`MAX_REQUESTS`]; without dates it
//! covers the last [`DEFAULT_WINDOW`]; every statement is one of the constants below, each an
//! index scan (`tests/it/explain.rs` checks at 20 000 rows); a tombstone is never served; every
//! bad parameter is a 400 naming it (the standard's error shape is applied by the server).

use postgres::types::Type;
use postgres::GenericClient;
use serde::Serialize;
use shared::http::{ApiError, Incoming, Reply};
use shared::model::{Category, Report, Status};
use shared::open311::{self, format_datetime, parse_datetime, Form};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::Ctx;

/// Most requests one list answers: the standard's own default cap, which also bounds the
/// answer to ~1 MB.
pub const MAX_REQUESTS: i64 = 1000;

/// The period a list covers when the client gives no `start_date` (the standard's default).
pub const DEFAULT_WINDOW: Duration = Duration::days(90);

/// Requests by id (`service_request_id=a,b`), newest first; the primary key answers it.
pub const BY_IDS: &str = "SELECT doc FROM read_reports \
     WHERE id = ANY($1::uuid[]) AND deleted_at IS NULL \
     ORDER BY created_at DESC, id DESC";

/// Requests in `[$1, $2]` with a category in `$3` and a status in `$4`, newest first, at most
/// `$5`. The arrays always hold the wanted values (all of them when the client filters none),
/// so one statement covers every filter shape; `created_at` bounds make it a range of
/// `read_reports_newest` (or of a category/status index when the planner finds one rarer).
pub const LIST: &str = "SELECT doc FROM read_reports \
     WHERE deleted_at IS NULL AND created_at >= $1 AND created_at <= $2 \
       AND category = ANY($3::text[]) AND status = ANY($4::text[]) \
     ORDER BY created_at DESC, id DESC LIMIT $5";

/// One live request by id.
pub const BY_ID: &str = "SELECT doc FROM read_reports WHERE id = $1 AND deleted_at IS NULL";

/// `GET /open311/v2/services.json`.
pub fn services() -> Reply {
    Reply::new(200, open311::services_body())
}

/// What a list asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListQuery {
    /// `service_request_id`: the standard says it overrides every other parameter.
    Ids(Vec<Uuid>),
    Filtered {
        start: OffsetDateTime,
        end: OffsetDateTime,
        categories: Vec<&'static str>,
        statuses: Vec<&'static str>,
    },
}

impl ListQuery {
    /// Reads the query string at time `now`. Unknown parameters (`jurisdiction_id`, …) are
    /// ignored, as the standard's clients send them.
    pub fn parse(form: &Form, now: OffsetDateTime) -> Result<ListQuery, ApiError> {
        let bad = ApiError::BadRequest;
        let ids = form.list("service_request_id");
        if !ids.is_empty() {
            if ids.len() as i64 > MAX_REQUESTS {
                return Err(bad(format!(
                    "service_request_id: at most {MAX_REQUESTS} ids, got {}",
                    ids.len()
                )));
            }
            return ids
                .iter()
                .map(|raw| {
                    Uuid::try_parse(raw).map_err(|_| {
                        bad(format!(
                            "service_request_id: {raw:?} is not a request id (a UUID)"
                        ))
                    })
                })
                .collect::<Result<_, _>>()
                .map(ListQuery::Ids);
        }
        let mut categories: Vec<&'static str> = Vec::new();
        for code in form.list("service_code") {
            let c = code.parse::<Category>().map_err(|_| {
                bad(format!(
                    "service_code: unknown service {code:?}; valid values: {}",
                    Category::valid_values()
                ))
            })?;
            if !categories.contains(&c.as_str()) {
                categories.push(c.as_str());
            }
        }
        if categories.is_empty() {
            categories = Category::ALL.iter().map(|c| c.as_str()).collect();
        }
        let mut statuses: Vec<&'static str> = Vec::new();
        for s in form.list("status") {
            for st in open311::statuses(s)? {
                if !statuses.contains(&st.as_str()) {
                    statuses.push(st.as_str());
                }
            }
        }
        if statuses.is_empty() {
            statuses = Status::ALL.iter().map(|s| s.as_str()).collect();
        }
        let end = form
            .get("end_date")?
            .map(|raw| parse_datetime("end_date", raw))
            .transpose()?;
        let start = form
            .get("start_date")?
            .map(|raw| parse_datetime("start_date", raw))
            .transpose()?;
        // Without a start: the DEFAULT_WINDOW before the end (or before now).
        let start = start.unwrap_or_else(|| end.unwrap_or(now) - DEFAULT_WINDOW);
        // Without an end: everything since the start. A far-future bound instead of `now`,
        // so a clock a little behind the command service's never hides a new report.
        let end =
            end.unwrap_or(OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap_or(now));
        if start > end {
            return Err(bad("start_date must not be after end_date".into()));
        }
        Ok(ListQuery::Filtered {
            start,
            end,
            categories,
            statuses,
        })
    }
}

/// `GET /open311/v2/requests.json`.
pub fn list(ctx: &Ctx, req: &Incoming) -> Result<Reply, ApiError> {
    let form = Form::parse(req.query.as_deref().unwrap_or("").as_bytes())?;
    let query = ListQuery::parse(&form, OffsetDateTime::now_utc())?;
    let (docs, db) = ctx.dbs.run(|conn| fetch(&mut **conn, &query))?;
    let requests = docs
        .iter()
        .map(|d| request(d))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Reply::new(200, to_json(&requests)).with_header(db.header))
}

/// `GET /open311/v2/requests/{id}.json`: a one-element array, or 404.
pub fn one(ctx: &Ctx, id_json: &str) -> Result<Reply, ApiError> {
    let raw = id_json.strip_suffix(".json").unwrap_or(id_json);
    let id = Uuid::try_parse(raw).map_err(|_| {
        ApiError::BadRequest(format!(
            "service_request_id: {raw:?} is not a request id (a UUID)"
        ))
    })?;
    let (doc, db) = ctx.dbs.run(|conn| {
        let rows = conn.query_typed(BY_ID, &[(&id, Type::UUID)])?;
        rows.first().map(|r| r.try_get::<_, String>(0)).transpose()
    })?;
    let doc = doc.ok_or_else(|| ApiError::NotFound(format!("service request {id} not found")))?;
    Ok(Reply::new(200, to_json(&[request(&doc)?])).with_header(db.header))
}

/// The documents a list query selects, newest first.
pub fn fetch(
    client: &mut impl GenericClient,
    query: &ListQuery,
) -> Result<Vec<String>, postgres::Error> {
    let rows = match query {
        ListQuery::Ids(ids) => client.query_typed(BY_IDS, &[(ids, Type::UUID_ARRAY)])?,
        ListQuery::Filtered {
            start,
            end,
            categories,
            statuses,
        } => client.query_typed(
            LIST,
            &[
                (start, Type::TIMESTAMPTZ),
                (end, Type::TIMESTAMPTZ),
                (categories, Type::TEXT_ARRAY),
                (statuses, Type::TEXT_ARRAY),
                (&MAX_REQUESTS, Type::INT8),
            ],
        )?,
    };
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// One service request as the standard names its fields.
#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceRequest {
    pub service_request_id: String,
    pub status: &'static str,
    /// The exact workflow status: `open`/`closed` alone would lose it.
    pub status_notes: &'static str,
    pub service_name: &'static str,
    pub service_code: &'static str,
    pub description: String,
    pub requested_datetime: String,
    pub updated_datetime: String,
    pub address: Option<String>,
    pub lat: Option<f64>,
    pub long: Option<f64>,
    pub media_url: Option<String>,
}

/// A read-model document as a service request. A document the service cannot read is a 503
/// through [`ApiError::Unavailable`] (the read API has no 500), logged with the reason.
pub fn request(doc: &str) -> Result<ServiceRequest, ApiError> {
    let r: Report = serde_json::from_str(doc).map_err(|e| {
        shared::error!("open311: unreadable read-model document: {e}");
        ApiError::Unavailable("a stored report could not be read; see the service log".into())
    })?;
    Ok(from_report(&r))
}

pub fn from_report(r: &Report) -> ServiceRequest {
    ServiceRequest {
        service_request_id: r.id.to_string(),
        status: open311::status_of(r.status),
        status_notes: r.status.as_str(),
        service_name: open311::service(r.category).service_name,
        service_code: r.category.as_str(),
        description: r.description.clone(),
        requested_datetime: format_datetime(r.created_at),
        updated_datetime: format_datetime(r.updated_at),
        address: r.address.clone(),
        lat: r.location.map(|l| l.lat),
        long: r.location.map(|l| l.lng),
        media_url: r.media_url.clone(),
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data structures into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// `expect` is a fragment of the Debug of the parsed query, or of the 400.
    fn check(query: &str, expect: &str) {
        let now = datetime!(2024-05-01 12:00 UTC);
        let got = Form::parse(query.as_bytes())
            .and_then(|f| ListQuery::parse(&f, now))
            .map(|q| format!("{q:?}"))
            .unwrap_or_else(|e| format!("{}: {}", e.status(), e.message()));
        assert!(
            got.contains(expect),
            "{query:?}: expected {expect:?} in {got:?}"
        );
    }

    #[test]
    fn list_parameters() {
        check(
            "",
            "start: 2024-02-01 12:00:00.0 +00:00:00, end: 9999-12-31",
        );
        check(
            "",
            r#"categories: ["kebersihan", "kriminalitas", "infrastruktur""#,
        );
        check(
            "",
            r#"statuses: ["pending", "in_progress", "resolved", "rejected"]"#,
        );
        check(
            "jurisdiction_id=city.gov.id&status=",
            "statuses: [\"pending\"",
        );
        check("status=open", r#"statuses: ["pending", "in_progress"]"#);
        check("status=closed", r#"statuses: ["resolved", "rejected"]"#);
        check(
            "status=open,closed,open",
            r#"["pending", "in_progress", "resolved", "rejected"]"#,
        );
        check(
            "status=pending",
            "400: status: unknown value \"pending\"; valid values: open, closed",
        );
        check(
            "service_code=kebersihan,keamanan&service_code=kebersihan",
            r#"categories: ["kebersihan", "keamanan"]"#,
        );
        check(
            "service_code=sampah",
            "400: service_code: unknown service \"sampah\"",
        );
        check(
            "start_date=2010-04-14T06:37:38-08:00",
            "start: 2010-04-14 14:37:38.0 +00:00:00, end: 9999-12-31",
        );
        check(
            "end_date=2010-04-15T06:37:38-08:00",
            "start: 2010-01-15 14:37:38.0 +00:00:00, end: 2010-04-15 14:37:38.0",
        );
        check(
            "start_date=2010-04-14&end_date=2010-04-15",
            "start: 2010-04-14 0:00:00.0 +00:00:00, end: 2010-04-15 0:00:00.0",
        );
        check(
            "start_date=2010-04-16&end_date=2010-04-15",
            "400: start_date must not be after end_date",
        );
        check(
            "start_date=yesterday",
            "400: start_date: \"yesterday\" is not a W3C datetime",
        );
        check("end_date=2010-04-15T06:37:38", "400: end_date: ");
        let id = "6a1b8a8e-2c1f-4d0e-9b7a-2f1c3d4e5f60";
        check(
            &format!("service_request_id={id}&status=bogus"),
            "Ids([6a1b8a8e",
        );
        check(
            "service_request_id=abc",
            "400: service_request_id: \"abc\" is not a request id",
        );
        let many = vec![id; 1001].join(",");
        check(
            &format!("service_request_id={many}"),
            "400: service_request_id: at most 1000 ids",
        );
    }

    #[test]
    fn requests_follow_the_published_example() {
        let at = datetime!(2010-04-14 06:37:38 -08:00);
        let mut r = Report {
            id: Uuid::nil(),
            title: "Lubang".into(),
            description: "Lubang besar di jalan".into(),
            category: Category::Infrastruktur,
            status: Status::InProgress,
            version: 2,
            created_at: at,
            updated_at: at + Duration::hours(1),
            location: Some(shared::model::Location {
                lat: 37.762221815,
                lng: -122.4651145,
            }),
            address: Some("8TH AVE and JUDAH ST".into()),
            media_url: Some("http://city.gov.s3.amazonaws.com/requests/media/638344.jpg".into()),
        };
        let v = serde_json::to_value(from_report(&r)).unwrap();
        let expect = serde_json::json!({
            "service_request_id": "00000000-0000-0000-0000-000000000000",
            "status": "open",
            "status_notes": "in_progress",
            "service_name": "Infrastruktur",
            "service_code": "infrastruktur",
            "description": "Lubang besar di jalan",
            "requested_datetime": "2010-04-14T14:37:38+00:00",
            "updated_datetime": "2010-04-14T15:37:38+00:00",
            "address": "8TH AVE and JUDAH ST",
            "lat": 37.762221815,
            "long": -122.4651145,
            "media_url": "http://city.gov.s3.amazonaws.com/requests/media/638344.jpg",
        });
        assert_eq!(v, expect);
        r.status = Status::Rejected;
        r.location = None;
        r.address = None;
        r.media_url = None;
        let v = serde_json::to_value(from_report(&r)).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["status_notes"].as_str()),
            (Some("closed"), Some("rejected"))
        );
        assert!(
            v["lat"].is_null()
                && v["long"].is_null()
                && v["address"].is_null()
                && v["media_url"].is_null()
        );
        assert_eq!(request("{").unwrap_err().status(), 503);
    }
}

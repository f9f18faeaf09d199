//! Open311 GeoReport v2 on the query service (SPEC §7.2), over real HTTP against a read model
//! written the way the projection writes it: services.json, the list with the standard's
//! filters and defaults, one request, the published specification's field names, types, date
//! format and the status mapping, and every bad parameter a 400 in the standard's shape.

use shared::model::{Category, Location, Status};
use shared::testkit::HttpResponse;
use time::{Duration, OffsetDateTime};

use crate::support::{apply, delete, fresh_db, get, report, start_query};

fn assert_open311_error(r: &HttpResponse, status: u16, fragment: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["code"], status, "{v}");
    let d = list[0]["description"].as_str().unwrap_or_default();
    assert!(d.contains(fragment), "expected {fragment:?} in {d:?}");
}

fn ids(r: &HttpResponse) -> Vec<String> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("not an array"))
        .iter()
        .map(|x| {
            x["service_request_id"]
                .as_str()
                .expect("service_request_id")
                .to_owned()
        })
        .collect()
}

/// Whether `s` is shaped like the specification's `2010-04-14T06:37:38-08:00`.
fn w3c_shaped(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 25
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 | 22 => *c == b':',
            19 => *c == b'+' || *c == b'-',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn services_list_and_one_request() {
    let url = fresh_db("open311");
    let mut c = crate::support::PG.client("open311");
    let svc = start_query(&format!("query-db-primary={url}"), &[]);
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();

    let services = get(&svc, "/open311/v2/services.json");
    assert_eq!(services.status, 200);
    let list = services.json();
    assert_eq!(list.as_array().unwrap().len(), 6);
    for s in list.as_array().unwrap() {
        for field in [
            "service_code",
            "service_name",
            "description",
            "keywords",
            "group",
        ] {
            assert!(s[field].is_string(), "{field} in {s}");
        }
        assert_eq!(s["metadata"], false);
        assert_eq!(s["type"], "realtime");
    }

    // Four reports of the last days, one of 100 days ago, one deleted.
    let mut located = report(
        1,
        Category::Infrastruktur,
        Status::InProgress,
        now - Duration::hours(3),
    );
    located.location = Some(Location {
        lat: -6.2088,
        lng: 106.8456,
    });
    located.address = Some("Jl. Sudirman No. 1".into());
    located.media_url = Some("https://foto.example/1.jpg".into());
    let pending = report(
        2,
        Category::Kebersihan,
        Status::Pending,
        now - Duration::hours(2),
    );
    let resolved = report(
        3,
        Category::Kebersihan,
        Status::Resolved,
        now - Duration::hours(1),
    );
    let rejected = report(
        4,
        Category::Keamanan,
        Status::Rejected,
        now - Duration::minutes(30),
    );
    let old = report(
        5,
        Category::Kebersihan,
        Status::Pending,
        now - Duration::days(100),
    );
    let gone = report(
        6,
        Category::Kebersihan,
        Status::Pending,
        now - Duration::minutes(10),
    );
    for r in [&located, &pending, &resolved, &rejected, &old, &gone] {
        apply(&mut c, r);
    }
    delete(&mut c, &gone);
    let id = |r: &shared::model::Report| r.id.to_string();

    // Default: the last 90 days, newest first, no tombstone.
    let all = ids(&get(&svc, "/open311/v2/requests.json"));
    assert_eq!(
        all,
        [id(&rejected), id(&resolved), id(&pending), id(&located)]
    );

    // The published example's fields and types.
    let body = get(
        &svc,
        &format!(
            "/open311/v2/requests.json?service_request_id={}",
            located.id
        ),
    )
    .json();
    let r = &body[0];
    assert_eq!(r["service_request_id"], id(&located));
    assert_eq!(r["status"], "open");
    assert_eq!(r["status_notes"], "in_progress");
    assert_eq!(r["service_code"], "infrastruktur");
    assert_eq!(r["service_name"], "Infrastruktur");
    assert_eq!(r["description"], located.description);
    assert_eq!(r["address"], "Jl. Sudirman No. 1");
    assert_eq!(r["lat"].as_f64(), Some(-6.2088));
    assert_eq!(r["long"].as_f64(), Some(106.8456));
    assert_eq!(r["media_url"], "https://foto.example/1.jpg");
    for field in ["requested_datetime", "updated_datetime"] {
        let s = r[field].as_str().unwrap();
        assert!(w3c_shaped(s), "{field} {s:?}");
        let back = shared::open311::parse_datetime(field, s).unwrap();
        assert_eq!(back, located.created_at.replace_microsecond(0).unwrap());
    }

    // Status mapping both ways.
    let closed = get(&svc, "/open311/v2/requests.json?status=closed");
    assert_eq!(ids(&closed), [id(&rejected), id(&resolved)]);
    let notes: Vec<String> = closed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            format!(
                "{} {}",
                x["status"].as_str().unwrap(),
                x["status_notes"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(notes, ["closed rejected", "closed resolved"]);
    assert_eq!(
        ids(&get(&svc, "/open311/v2/requests.json?status=open")),
        [id(&pending), id(&located)]
    );

    // service_code comma list, combined with status.
    assert_eq!(
        ids(&get(
            &svc,
            "/open311/v2/requests.json?service_code=kebersihan,keamanan&status=open"
        )),
        [id(&pending)]
    );
    // Dates: an explicit window reaches the old report; W3C forms with offsets.
    let start = shared::open311::format_datetime(now - Duration::days(101));
    let end = shared::open311::format_datetime(now - Duration::days(99));
    let q = format!(
        "/open311/v2/requests.json?start_date={}&end_date={}",
        start.replace('+', "%2B"),
        end.replace('+', "%2B")
    );
    assert_eq!(ids(&get(&svc, &q)), [id(&old)]);
    // An unescaped `+` (a space once decoded) means the same.
    assert_eq!(
        ids(&get(
            &svc,
            &format!("/open311/v2/requests.json?start_date={start}&end_date={end}")
        )),
        [id(&old)]
    );
    let since = shared::open311::format_datetime(now - Duration::minutes(90)).replace('+', "%2B");
    assert_eq!(
        ids(&get(
            &svc,
            &format!("/open311/v2/requests.json?start_date={since}")
        )),
        [id(&rejected), id(&resolved)]
    );
    // service_request_id overrides every other filter, as the standard says.
    let q = format!(
        "/open311/v2/requests.json?service_request_id={},{}&status=closed&service_code=lainnya",
        old.id, gone.id
    );
    assert_eq!(ids(&get(&svc, &q)), [id(&old)]);

    // One request: a one-element array; unknown or deleted: 404 in the standard's shape.
    let one = get(&svc, &format!("/open311/v2/requests/{}.json", pending.id));
    assert_eq!(ids(&one), [id(&pending)]);
    assert_eq!(one.json()[0]["lat"], serde_json::Value::Null);
    assert_open311_error(
        &get(&svc, &format!("/open311/v2/requests/{}.json", gone.id)),
        404,
        "not found",
    );
    assert_open311_error(
        &get(
            &svc,
            &format!("/open311/v2/requests/{}.json", uuid::Uuid::new_v4()),
        ),
        404,
        "not found",
    );
}

#[test]
fn bad_parameters_are_a_400_naming_them() {
    let url = fresh_db("open311_bad");
    let svc = start_query(&format!("query-db-primary={url}"), &[]);
    let cases = [
        ("status=pending", "status: unknown value"),
        ("status=open&status=bogus", "status: unknown value"),
        ("service_code=sampah", "service_code: unknown service"),
        ("start_date=yesterday", "start_date: "),
        ("end_date=2010-04-14T06:37:38", "end_date: "),
        ("start_date=2010-02-30", "start_date: "),
        (
            "start_date=2011-01-01&end_date=2010-01-01",
            "start_date must not be after end_date",
        ),
        (
            "service_request_id=42",
            "service_request_id: \"42\" is not a request id",
        ),
        ("service_code=%zz", "service_code: the value is not valid"),
        (
            "service_code=a%00",
            "service_code contains the control character U+0000",
        ),
        (
            "start_date=1&start_date=2",
            "start_date is given more than once",
        ),
    ];
    for (q, fragment) in cases {
        let r = get(&svc, &format!("/open311/v2/requests.json?{q}"));
        assert_open311_error(&r, 400, fragment);
    }
    assert_open311_error(
        &get(&svc, "/open311/v2/requests/nope.json"),
        400,
        "service_request_id",
    );
    assert_open311_error(
        &get(&svc, "/open311/v2/requests/x/y.json"),
        404,
        "no such path",
    );
    let post =
        shared::testkit::http(svc.port, "POST", "/open311/v2/requests.json", &[], b"a=1").unwrap();
    assert_open311_error(&post, 405, "GET");
    assert_eq!(post.header("allow"), Some("GET"));
}

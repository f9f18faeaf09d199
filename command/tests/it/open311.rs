//! Open311 GeoReport v2 on the command service (SPEC §7.2), over real HTTP with real
//! form-encoded bodies: services.json, a create that commits the same row and event as
//! `POST /reports`, `api_key` as the write token, and every bad input a 4xx in the standard's
//! error shape naming the parameter, with nothing written.

use shared::event::EventType;

use super::*;

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn submit(port: u16, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    http(
        port,
        "POST",
        "/open311/v2/requests.json",
        headers,
        body.as_bytes(),
    )
    .expect("POST /open311/v2/requests.json")
}

/// An answer in the standard's error shape: `[{"code": status, "description": "…"}]`.
fn assert_open311_error(r: &HttpResponse, status: u16, fragment: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let list = v.as_array().unwrap_or_else(|| panic!("not an array: {v}"));
    assert_eq!(list.len(), 1, "{v}");
    assert_eq!(list[0]["code"], status, "{v}");
    let d = list[0]["description"].as_str().unwrap_or_default();
    assert!(d.contains(fragment), "expected {fragment:?} in {d:?}");
}

#[test]
fn services_and_form_encoded_create() {
    let stack = Stack::new("open311");
    let port = stack.svc.port;
    let services = http(port, "GET", "/open311/v2/services.json", &[], b"").unwrap();
    assert_eq!(services.status, 200);
    let list = services.json();
    let codes: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service_code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "kebersihan",
            "kriminalitas",
            "infrastruktur",
            "kesehatan",
            "keamanan",
            "lainnya"
        ]
    );
    assert_eq!(list[0]["metadata"], false);
    assert_eq!(list[0]["type"], "realtime");

    // A client as the standard shows it: `+` for spaces, escapes, fields we ignore.
    let body = "api_key=xyz&jurisdiction_id=kota.example&service_code=infrastruktur\
                &lat=-6.2088&long=106.8456&address_string=Jl.+Sudirman+No.+1%2C+Jakarta\
                &email=warga%40example.com&device_id=abc&attribute%5BWHISPAY%5D=1\
                &description=Jalan+berlubang+besar%0D%0ADi+depan+sekolah%2C+%C2%B12+m\
                &media_url=https%3A%2F%2Ffoto.example%2Fa.jpg%3Fs%3D1";
    let r = submit(port, &[FORM], body);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let id = v[0]["service_request_id"]
        .as_str()
        .expect("service_request_id")
        .to_owned();
    assert_eq!(v.as_array().unwrap().len(), 1);

    // The same row and the same event as a JSON create.
    let mut db = stack.db();
    let row = db
        .query_one(
            "SELECT title, description, category, status, version, lat, lng, address, media_url \
             FROM reports WHERE id = $1::text::uuid",
            &[&id],
        )
        .expect("the report row");
    assert_eq!(row.get::<_, String>(0), "Jalan berlubang besar");
    assert_eq!(
        row.get::<_, String>(1),
        "Jalan berlubang besar\r\nDi depan sekolah, ±2 m"
    );
    assert_eq!(row.get::<_, String>(2), "infrastruktur");
    assert_eq!(row.get::<_, String>(3), "pending");
    assert_eq!(row.get::<_, i64>(4), 1);
    assert_eq!(row.get::<_, Option<f64>>(5), Some(-6.2088));
    assert_eq!(row.get::<_, Option<f64>>(6), Some(106.8456));
    assert_eq!(
        row.get::<_, Option<String>>(7).as_deref(),
        Some("Jl. Sudirman No. 1, Jakarta")
    );
    assert_eq!(
        row.get::<_, Option<String>>(8).as_deref(),
        Some("https://foto.example/a.jpg?s=1")
    );
    let events: i64 = db
        .query_one(
            "SELECT count(*) FROM event_log WHERE report_id = $1::text::uuid \
             AND event_type = 'ReportCreated' AND version = 1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(events, 1);
    shared::testkit::wait_until("the event on the stream", Duration::from_secs(10), || {
        stream_events(&stack.redis).iter().any(|e| {
            e.report_id.to_string() == id
                && e.event_type == EventType::ReportCreated
                && e.payload
                    .contains("\"media_url\":\"https://foto.example/a.jpg?s=1\"")
        })
    });

    // Without a description the title is the service's name; an address alone is a place.
    let r = submit(
        port,
        &[],
        "service_code=kebersihan&address_string=Pasar+Baru",
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id2 = r.json()[0]["service_request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let title: String = db
        .query_one(
            "SELECT title FROM reports WHERE id = $1::text::uuid",
            &[&id2],
        )
        .unwrap()
        .get(0);
    assert_eq!(title, "Kebersihan");

    // A later JSON update leaves the photo link as it was.
    let r = put(
        port,
        &id,
        &serde_json::json!({"status": "in_progress"}),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["data"]["media_url"],
        "https://foto.example/a.jpg?s=1"
    );
}

#[test]
fn bad_input_is_a_400_naming_the_parameter() {
    let stack = Stack::new("open311_bad");
    let port = stack.svc.port;
    let mut db = stack.db();
    let before = fingerprint(&mut db);
    let at = "lat=-6.2&long=106.8";
    let cases: Vec<(String, &str)> = vec![
        (at.into(), "service_code is required"),
        (
            format!("service_code=sampah&{at}"),
            "service_code: unknown service",
        ),
        (
            "service_code=kebersihan".into(),
            "lat and long, or address_string",
        ),
        ("service_code=kebersihan&lat=1".into(), "long is required"),
        (
            "service_code=kebersihan&lat=abc&long=1".into(),
            "lat must be a decimal",
        ),
        (
            "service_code=kebersihan&lat=95&long=1".into(),
            "lat must be between",
        ),
        (
            "service_code=kebersihan&lat=1&long=200".into(),
            "long must be between",
        ),
        (
            format!("service_code=kebersihan&{at}&media_url=javascript%3Aalert(1)"),
            "media_url",
        ),
        (
            format!(
                "service_code=kebersihan&{at}&media_url=https://x.example/{}",
                "a".repeat(2100)
            ),
            "media_url is too long",
        ),
        (
            format!("service_code=kebersihan&{at}&description=%E0%A4"),
            "description: the value is not valid",
        ),
        (
            format!("service_code=kebersihan&{at}&description=%zz"),
            "description: the value is not valid",
        ),
        (
            format!("service_code=kebersihan&{at}&description=a%00b"),
            "description contains the control character U+0000",
        ),
        (
            format!("service_code=kebersihan&address_string={}", "j".repeat(300)),
            "address_string: address is too long",
        ),
        (
            format!(
                "service_code=kebersihan&{at}&description={}",
                "d".repeat(10_001)
            ),
            "description is too long",
        ),
        (
            format!("service_code=kebersihan&service_code=keamanan&{at}"),
            "service_code is given more than once",
        ),
    ];
    for (body, fragment) in &cases {
        let r = submit(port, &[FORM], body);
        assert_open311_error(&r, 400, fragment);
    }
    // Not a form at all.
    let r = submit(
        port,
        &[("Content-Type", "application/json")],
        r#"{"service_code":"x"}"#,
    );
    assert_open311_error(&r, 400, "application/x-www-form-urlencoded");
    let r = http(
        port,
        "POST",
        "/open311/v2/requests.json",
        &[FORM],
        b"service_code=\xff",
    )
    .unwrap();
    assert_open311_error(&r, 400, "not UTF-8");
    // Framing, method and path errors under /open311/ take the same shape.
    let big = format!(
        "service_code=kebersihan&{at}&description={}",
        "d".repeat(70_000)
    );
    assert_open311_error(&submit(port, &[FORM], &big), 413, "exceeds the limit");
    let r = http(port, "GET", "/open311/v2/requests.json", &[], b"").unwrap();
    assert_open311_error(&r, 405, "POST");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = http(port, "DELETE", "/open311/v2/services.json", &[], b"").unwrap();
    assert_open311_error(&r, 405, "GET");
    let r = http(port, "GET", "/open311/v2/nothing.json", &[], b"").unwrap();
    assert_open311_error(&r, 404, "no such path");
    // The JSON API keeps its own envelope.
    let r = http(port, "GET", "/nothing", &[], b"").unwrap();
    assert_eq!(r.json()["success"], false);
    assert_eq!(
        fingerprint(&mut db),
        before,
        "a refused request wrote something"
    );
}

#[test]
fn api_key_is_the_write_token() {
    let db_url = pg().create_db("open311_auth");
    let redis = RedisServer::start();
    let svc = start_command_with(
        &db_url,
        &redis.url(),
        "command-1",
        &[("COMMAND_API_TOKENS", "rahasia-311,other".into())],
    );
    let body = "service_code=keamanan&lat=-6.9&long=107.6&description=Lampu+mati";
    let none = submit(svc.port, &[FORM], body);
    assert_open311_error(&none, 401, "missing credentials");
    let wrong = submit(svc.port, &[FORM], &format!("{body}&api_key=nope"));
    assert_open311_error(&wrong, 403, "invalid token");
    // A right key in the form wins over a wrong header, as the form is the standard's way.
    let ok = submit(
        svc.port,
        &[FORM, ("Authorization", "Bearer nope")],
        &format!("api_key=rahasia-311&{body}"),
    );
    assert_eq!(ok.status, 201, "{}", String::from_utf8_lossy(&ok.body));
    let bearer = submit(svc.port, &[FORM, ("Authorization", "Bearer other")], body);
    assert_eq!(
        bearer.status,
        201,
        "{}",
        String::from_utf8_lossy(&bearer.body)
    );
    // Reading the service list needs no token.
    let services = http(svc.port, "GET", "/open311/v2/services.json", &[], b"").unwrap();
    assert_eq!(services.status, 200);
    let mut db = postgres::Client::connect(&db_url, postgres::NoTls).expect("db");
    assert_eq!(
        fingerprint(&mut db).0,
        2,
        "exactly the two authorised creates"
    );
}

//! SPEC §2.2 row by row: every bad input gets its clear error, the database is unchanged
//! afterwards, and the service still answers /health.

use std::time::Duration;

use serde_json::json;
use shared::testkit::raw;

use super::*;

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// A fragment the `error` text must contain.
    error: &'static str,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &str,
    body: &[u8],
    status: u16,
    error: &'static str,
) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        headers: Vec::new(),
        body: body.to_vec(),
        status,
        error,
    }
}

#[test]
fn bad_input_table() {
    let stack = Stack::new("bad_input");
    let port = stack.svc.port;
    let existing = post(port, &new_report(0)).json()["data"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let unknown = uuid::Uuid::new_v4().to_string();
    let mut db = stack.db();
    let before = fingerprint(&mut db);

    let obj = |v: serde_json::Value| v.to_string().into_bytes();
    let long_title =
        obj(json!({"title": "a".repeat(256), "description": "d", "category": "lainnya"}));
    let long_desc =
        obj(json!({"title": "t", "description": "d".repeat(10_001), "category": "lainnya"}));
    let mut cases = vec![
        case(
            "not JSON",
            "POST",
            "/reports",
            b"{title: nope",
            400,
            "not valid JSON",
        ),
        case(
            "JSON but not an object",
            "POST",
            "/reports",
            b"[1,2,3]",
            400,
            "must be a JSON object",
        ),
        case(
            "wrong field type",
            "POST",
            "/reports",
            &obj(json!({"title": 1, "description": "d", "category": "lainnya"})),
            400,
            "title must be a string",
        ),
        case(
            "missing title",
            "POST",
            "/reports",
            &obj(json!({"description": "d", "category": "lainnya"})),
            400,
            "title is required",
        ),
        case(
            "empty description",
            "POST",
            "/reports",
            &obj(json!({"title": "t", "description": "  ", "category": "lainnya"})),
            400,
            "description must not be empty",
        ),
        case(
            "missing category",
            "POST",
            "/reports",
            &obj(json!({"title": "t", "description": "d"})),
            400,
            "category is required",
        ),
        case(
            "unknown category",
            "POST",
            "/reports",
            &obj(json!({"title": "t", "description": "d", "category": "sampah"})),
            400,
            "valid values: kebersihan, kriminalitas, infrastruktur, kesehatan, keamanan, lainnya",
        ),
        case(
            "unknown status",
            "PUT",
            &format!("/reports/{existing}"),
            &obj(json!({"status": "selesai"})),
            400,
            "valid values: pending, in_progress, resolved, rejected",
        ),
        case(
            "title too long",
            "POST",
            "/reports",
            &long_title,
            400,
            "title is too long: 256 characters, the limit is 255",
        ),
        case(
            "description too long",
            "POST",
            "/reports",
            &long_desc,
            400,
            "the limit is 10000",
        ),
        case(
            "body over 64 KiB",
            "POST",
            "/reports",
            &vec![b' '; 64 * 1024 + 1],
            413,
            "exceeds the limit",
        ),
        case(
            "10 MB body",
            "POST",
            "/reports",
            &vec![b'a'; 10 * 1024 * 1024],
            413,
            "exceeds the limit",
        ),
        case(
            "id not a UUID (PUT)",
            "PUT",
            "/reports/123",
            &obj(json!({"title": "t"})),
            400,
            "not a valid UUID",
        ),
        case(
            "id not a UUID (DELETE)",
            "DELETE",
            "/reports/not-a-uuid",
            b"",
            400,
            "not a valid UUID",
        ),
        case(
            "unknown report (PUT)",
            "PUT",
            &format!("/reports/{unknown}"),
            &obj(json!({"title": "t"})),
            404,
            "not found",
        ),
        case(
            "unknown report (DELETE)",
            "DELETE",
            &format!("/reports/{unknown}"),
            b"",
            404,
            "not found",
        ),
        // SPEC §7.1: U+0000 used to reach PostgreSQL and come back as a 500.
        case(
            "U+0000 in the title",
            "POST",
            "/reports",
            br#"{"title":"a\u0000b","description":"d","category":"lainnya"}"#,
            400,
            "title contains the control character U+0000",
        ),
        case(
            "ESC in the description",
            "POST",
            "/reports",
            br#"{"title":"t","description":"\u001b[2J","category":"lainnya"}"#,
            400,
            "description contains the control character U+001B",
        ),
        case(
            "U+0000 in the category",
            "POST",
            "/reports",
            br#"{"title":"t","description":"d","category":"lainnya\u0000"}"#,
            400,
            "category contains the control character U+0000",
        ),
        case(
            "U+0000 in the title (PUT)",
            "PUT",
            &format!("/reports/{existing}"),
            br#"{"title":"a\u0000"}"#,
            400,
            "title contains the control character U+0000",
        ),
        case(
            "U+0000 in the status (PUT)",
            "PUT",
            &format!("/reports/{existing}"),
            br#"{"status":"pending\u0000"}"#,
            400,
            "status contains the control character U+0000",
        ),
        case("unknown path", "GET", "/nope", b"", 404, "no such path"),
        case(
            "wrong method on /reports",
            "GET",
            "/reports",
            b"",
            405,
            "allowed: POST",
        ),
        case(
            "wrong method on a report",
            "POST",
            &format!("/reports/{existing}"),
            b"{}",
            405,
            "allowed: PUT, DELETE",
        ),
        case(
            "non-UTF-8 body",
            "POST",
            "/reports",
            b"{\"title\":\"\xff\xfe\",\"description\":\"d\",\"category\":\"lainnya\"}",
            400,
            "not valid UTF-8",
        ),
        case(
            "JSON nested 10 000 deep",
            "POST",
            "/reports",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
            400,
            "not valid JSON",
        ),
        case(
            "nothing to update",
            "PUT",
            &format!("/reports/{existing}"),
            b"{}",
            400,
            "nothing to update",
        ),
        case(
            "query string on a bad id",
            "PUT",
            "/reports/xyz?force=1",
            &obj(json!({"title": "t"})),
            400,
            "not a valid UUID",
        ),
    ];
    let mut stale = case(
        "stale If-Match",
        "PUT",
        &format!("/reports/{existing}"),
        &obj(json!({"title": "t"})),
        409,
        "current version is 1",
    );
    stale.headers.push(("If-Match", "7".into()));
    cases.push(stale);
    let mut bad_tag = case(
        "If-Match not a number",
        "DELETE",
        &format!("/reports/{existing}"),
        b"",
        400,
        "If-Match must be a version number",
    );
    bad_tag.headers.push(("If-Match", "abc".into()));
    cases.push(bad_tag);

    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = http(port, c.method, &c.path, &headers, &c.body)
            .unwrap_or_else(|e| panic!("{}: no answer: {e}", c.what));
        assert_eq!(
            r.status,
            c.status,
            "{}: {:?}",
            c.what,
            String::from_utf8_lossy(&r.body)
        );
        let body = r.json();
        assert_eq!(body["success"], false, "{}", c.what);
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(c.error),
            "{}: expected {:?} in {error:?}",
            c.what,
            c.error
        );
        assert_eq!(r.header("x-instance-id"), Some("command-1"), "{}", c.what);
        if c.status == 405 {
            assert!(r.header("allow").is_some(), "{}: 405 carries Allow", c.what);
        }
        assert_eq!(
            fingerprint(&mut db),
            before,
            "{}: the database changed",
            c.what
        );
        assert_health(port, c.what);
    }

    // Framing attacks, sent as raw bytes.
    let raw_cases: Vec<(&str, Vec<u8>, Option<u16>)> = vec![
        ("malformed Content-Length", b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), Some(400)),
        ("negative Content-Length", b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(), Some(400)),
        ("conflicting Content-Length", b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(), Some(400)),
        ("huge declared Content-Length", b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(), Some(413)),
        ("chunked body", b"POST /reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), Some(411)),
        ("20 headers (more than upstream may_minihttp's 16)", request_with_headers(20), Some(200)),
        ("40 headers", request_with_headers(40), Some(431)),
        ("garbage request line", b"\x00\x01\x02 nonsense\r\n\r\n".to_vec(), Some(400)),
        ("invalid header bytes", b"GET /health HTTP/1.1\r\nX-Bad\x01: v\r\n\r\n".to_vec(), Some(400)),
    ];
    for (what, bytes, expect) in raw_cases {
        let answer = raw(port, &bytes, Duration::from_secs(5)).unwrap_or_default();
        let parsed = shared::testkit::client::parse_response(&answer);
        match (expect, parsed) {
            (Some(status), Some(r)) => assert_eq!(
                r.status,
                status,
                "{what}: {}",
                String::from_utf8_lossy(&r.body)
            ),
            (Some(status), None) => panic!("{what}: expected {status}, got no answer"),
            (None, _) => {}
        }
        assert_eq!(fingerprint(&mut db), before, "{what}: the database changed");
        assert_health(port, what);
    }

    // A query string on a known path routes to the path.
    let r = http(port, "GET", "/health?verbose=1", &[], b"").expect("health with query");
    assert_eq!(r.status, 200);
    assert!(stack.svc.is_running());
}

fn request_with_headers(n: usize) -> Vec<u8> {
    let mut r = b"GET /health HTTP/1.1\r\n".to_vec();
    for i in 0..n {
        r.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r
}

fn assert_health(port: u16, after: &str) {
    let r = http(port, "GET", "/health", &[], b"")
        .unwrap_or_else(|e| panic!("after {after}: /health: {e}"));
    assert_eq!(r.status, 200, "after {after}: /health");
}

//! Acceptance (6): bad reads are clear 4xx answers in the envelope, never a crash: after each
//! one the service still answers `/health`.

use std::time::Duration;

use shared::testkit::{http, raw, HttpResponse};

use crate::support::{fresh_db, seed, start_query, PG};

#[test]
fn bad_inputs_are_clear_errors_and_the_service_lives_on() {
    let url = fresh_db("bad_input");
    let reports = seed(&mut PG.client("bad_input"), 5);
    let svc = start_query(&format!("only={url}"), &[]);
    let port = svc.port;
    let id = reports[0].id;

    let still_alive = |what: &str| {
        let h = http(port, "GET", "/health", &[], b"")
            .unwrap_or_else(|e| panic!("/health after {what}: {e}\nlog:\n{}", svc.log()));
        assert_eq!(h.status, 200, "/health after {what}");
        let v = h.json();
        assert_eq!(
            v,
            serde_json::json!({"status": "healthy", "service": "reporting-query", "instance": "query-test"})
        );
    };
    let check = |r: &HttpResponse, what: &str, status: u16, error_part: &str| {
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.header("x-instance-id"), Some("query-test"), "{what}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        let v = r.json();
        if status >= 400 {
            assert_eq!(v["success"], false, "{what}");
            let error = v["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(error_part),
                "{what}: error {error:?} lacks {error_part:?}"
            );
        } else if what.starts_with("GET /health") {
            // /health is the bare SPEC object, not an envelope.
            assert_eq!(v["status"], "healthy", "{what}");
        } else {
            assert_eq!(v["success"], true, "{what}");
        }
        still_alive(what);
    };

    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/reports/not-a-uuid", 400, "is not a UUID"),
        ("GET", "/reports/12345", 400, "is not a UUID"),
        ("GET", "/reports/%zz", 400, "is not a UUID"),
        (
            "GET",
            "/reports?page=0",
            400,
            "page must be a positive integer",
        ),
        (
            "GET",
            "/reports?page=-1",
            400,
            "page must be a positive integer",
        ),
        (
            "GET",
            "/reports?page=abc",
            400,
            "page must be a positive integer",
        ),
        (
            "GET",
            "/reports?per_page=0",
            400,
            "per_page must be a positive integer",
        ),
        (
            "GET",
            "/reports?per_page=",
            400,
            "per_page must be a positive integer",
        ),
        (
            "GET",
            "/reports?category=sampah",
            400,
            "valid values: kebersihan, kriminalitas",
        ),
        (
            "GET",
            "/reports?status=done",
            400,
            "valid values: pending, in_progress",
        ),
        // SPEC §7.1: a control character in any parameter is a 400 naming it.
        (
            "GET",
            "/reports?category=a%00b",
            400,
            "parameter category contains the control character U+0000",
        ),
        (
            "GET",
            "/reports?status=pending%1B",
            400,
            "parameter status contains the control character U+001B",
        ),
        (
            "GET",
            "/statistics?category=%00",
            400,
            "parameter category contains the control character U+0000",
        ),
        ("GET", "/reports?category=%zz", 400, "bad percent-escape"),
        (
            "GET",
            "/reports/00000000-0000-0000-0000-000000000000",
            404,
            "not found",
        ),
        ("GET", "/nope", 404, "no such path"),
        ("GET", "/reports/", 404, "no such path"),
        ("GET", "/", 404, "no such path"),
        ("POST", "/reports", 405, "allowed: GET"),
        (
            "DELETE",
            "/reports/00000000-0000-0000-0000-000000000000",
            405,
            "allowed: GET",
        ),
        ("PUT", "/statistics", 405, "allowed: GET"),
        ("GET", "/health?probe=1", 200, ""),
        ("GET", "/reports?page=1&per_page=2&unknown=x", 200, ""),
        ("GET", "/statistics?", 200, ""),
    ];
    for (method, path, status, error) in cases {
        let r = http(port, method, path, &[], b"").unwrap();
        check(&r, &format!("{method} {path}"), *status, error);
        if *status == 405 {
            assert_eq!(r.header("allow"), Some("GET"), "{method} {path}");
        }
    }
    let r = http(
        port,
        "GET",
        &format!("/reports/{id}?min_version=x"),
        &[],
        b"",
    )
    .unwrap();
    check(
        &r,
        "min_version=x",
        400,
        "min_version must be a non-negative integer",
    );
    let r = http(
        port,
        "GET",
        &format!("/reports/{id}"),
        &[("X-Min-Version", "-3")],
        b"",
    )
    .unwrap();
    check(
        &r,
        "X-Min-Version: -3",
        400,
        "X-Min-Version must be a non-negative integer",
    );
    let r = http(port, "GET", &format!("/reports/{id}?x=1"), &[], b"").unwrap();
    check(&r, "query string on a report", 200, "");
    assert_eq!(r.json()["data"]["id"], id.to_string());

    let mut oversized =
        b"POST /reports HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n".to_vec();
    oversized.resize(oversized.len() + 70_000, b'x');
    // Framing that may_minihttp itself would panic on or mishandle.
    for (what, bytes, status) in [
        (
            "malformed Content-Length",
            &b"GET /reports HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"[..],
            400,
        ),
        (
            "negative Content-Length",
            &b"GET /reports HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"[..],
            400,
        ),
        (
            "conflicting Content-Length",
            &b"GET /reports HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            400,
        ),
        (
            "chunked body",
            // Headers only: may_minihttp drops the connection (and the queued 411) when the
            // unread chunk bytes arrive in the same read and fail to parse as a request.
            &b"POST /reports HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            411,
        ),
        (
            "body over 64 KiB",
            // The whole body is sent: a declared body small enough to drain is read before
            // the 413 is written, so the answer reaches a keep-alive client.
            &oversized[..],
            413,
        ),
    ] {
        let answer = raw(port, bytes, Duration::from_secs(5)).unwrap();
        let r = shared::testkit::client::parse_response(&answer)
            .unwrap_or_else(|| panic!("{what}: no response: {}", String::from_utf8_lossy(&answer)));
        check(&r, what, status, "");
    }
    // Garbage that is not HTTP at all: the connection is dropped, the service lives on.
    let _ = raw(
        port,
        b"\x00\x01\x02 nonsense\r\n\r\n",
        Duration::from_secs(2),
    );
    still_alive("garbage bytes");
}

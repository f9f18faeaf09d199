//! Hostile HTTP against a running service, endpoint by endpoint: a bad request line, a bad
//! `Content-Length` (`12abc`, `+5`), too many headers, a request head of 40 KiB, headers sent
//! slowly, a 10 MB body, invalid UTF-8, JSON nested 10 000 deep, control characters in the
//! body and the query string, and a request smuggled behind a body whose framing we reject
//! (chunked, `+5`). Every request must get an answer below 500 (a 4xx wherever the input is
//! wrong); a rejected framing is answered once and the connection closed, so nothing behind
//! it is ever taken for a request; and afterwards no worker may be stuck: a burst of
//! concurrent requests is answered promptly.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::client::{parse_response, raw};
use super::http;

/// One endpoint and whether it reads a request body.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub takes_body: bool,
}

fn send(port: u16, bytes: &[u8], what: &str) -> u16 {
    let answer = raw(port, bytes, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    parse_response(&answer)
        .unwrap_or_else(|| {
            panic!(
                "{what}: not an HTTP response: {:?}",
                String::from_utf8_lossy(&answer)
            )
        })
        .status
}

fn with_body(e: &Endpoint, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{} {} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        e.method,
        e.path,
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// Writes `bytes`, then reads until the server closes (or 10 s pass). Returns every
/// response received, in order, and whether the server closed the connection.
fn exchange(port: u16, bytes: &[u8]) -> (Vec<super::HttpResponse>, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let timeout = Some(Duration::from_secs(10));
    stream.set_read_timeout(timeout).expect("timeout");
    stream.set_write_timeout(timeout).expect("timeout");
    let _ = stream.write_all(bytes);
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = loop {
        match std::io::Read::read(&mut stream, &mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // A reset after the answer is a close too; a timeout is not.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let mut responses = Vec::new();
    let mut rest = &got[..];
    while let Some(r) = parse_response(rest) {
        let head = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a parsed response has a head");
        rest = &rest[head + 4 + r.body.len()..];
        responses.push(r);
    }
    (responses, closed)
}

/// The same request with a query parameter added.
fn with_param(path: &str, param: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{param}")
}

/// A complete, valid request that must never run when it arrives hidden in a rejected body:
/// a create, so a test that compares the database before and after sees it if it did.
const SMUGGLED: &str = "POST /reports HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
    Content-Length: 59\r\n\r\n\
    {\"title\":\"smuggled\",\"description\":\"d\",\"category\":\"lainnya\"}";

/// Requests whose framing we refuse, each carrying [`SMUGGLED`] where its body would be.
fn smuggling_cases(e: &Endpoint) -> Vec<(&'static str, Vec<u8>, u16)> {
    let head = |framing: &str| {
        format!(
            "{} {} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n",
            e.method, e.path
        )
    };
    let chunked = format!(
        "{}{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
        head("Transfer-Encoding: chunked"),
        SMUGGLED.len()
    );
    // `+5`: five bytes of body to a lenient parser, a malformed length to us.
    let plus = format!("{}hello{SMUGGLED}", head("Content-Length: +5"));
    // The smuggled request right behind a head that says nothing about its body's end.
    let plus_bare = format!("{}{SMUGGLED}", head("Content-Length: +0"));
    vec![
        ("chunked body", chunked.into_bytes(), 411),
        ("Content-Length: +5", plus.into_bytes(), 400),
        ("Content-Length: +0", plus_bare.into_bytes(), 400),
    ]
}

/// Runs every hostile case against every endpoint; panics naming the case on failure.
pub fn run(port: u16, endpoints: &[Endpoint]) {
    let status = send(
        port,
        b"\x16\x03\x01 not http at all\r\n\r\n",
        "bad request line",
    );
    assert_eq!(status, 400, "bad request line");

    for e in endpoints {
        let name = format!("{} {}", e.method, e.path);
        let bad_length = format!(
            "{} {} HTTP/1.1\r\nHost: t\r\nContent-Length: 12abc\r\n\r\n",
            e.method, e.path
        );
        assert_eq!(
            send(port, bad_length.as_bytes(), &name),
            400,
            "{name}: bad Content-Length"
        );

        let mut many = format!("{} {} HTTP/1.1\r\n", e.method, e.path);
        for i in 0..40 {
            many.push_str(&format!("X-Header-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(
            send(port, many.as_bytes(), &name),
            431,
            "{name}: 40 headers"
        );

        // One header line of 40 KiB: more head than the stated limit (32 KiB), answered 431
        // before the head ends, and the connection closed.
        let flood = format!(
            "{} {} HTTP/1.1\r\nHost: t\r\nX-Flood: {}",
            e.method,
            e.path,
            "f".repeat(40 * 1024)
        );
        let (answers, closed) = exchange(port, flood.as_bytes());
        let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [431], "{name}: 40 KiB request head");
        assert!(closed, "{name}: connection open after a 431");

        for (case, bytes, status) in smuggling_cases(e) {
            let (answers, closed) = exchange(port, &bytes);
            let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
            assert_eq!(
                statuses,
                [status],
                "{name}: {case}: one answer, nothing smuggled behind it"
            );
            assert!(closed, "{name}: {case}: connection left open");
            assert_eq!(
                answers[0].header("connection"),
                Some("close"),
                "{name}: {case}"
            );
        }

        // Control characters in the query string: never a 500 (a 400 where the parameter
        // is read; the endpoints' own tests say which).
        let nul = format!(
            "GET {} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            with_param(e.path, "category=a%00b")
        );
        let status = send(port, nul.as_bytes(), &name);
        assert!(
            status < 500,
            "{name}: U+0000 in the query answered {status}"
        );

        let big = with_body(e, &vec![b'x'; 10 * 1024 * 1024]);
        assert_eq!(send(port, &big, &name), 413, "{name}: 10 MB body");

        let utf8 = with_body(
            e,
            b"{\"title\":\"\xff\xfe\xfd\",\"description\":\"d\",\"category\":\"lainnya\"}",
        );
        let deep = with_body(
            e,
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).as_bytes(),
        );
        let nul = with_body(
            e,
            br#"{"title":"a\u0000b","description":"d","category":"lainnya","status":"pending"}"#,
        );
        let escape = with_body(
            e,
            br#"{"title":"t","description":"\u001b[2J","category":"lainnya"}"#,
        );
        for (case, bytes) in [
            ("invalid UTF-8 body", utf8),
            ("JSON nested 10 000 deep", deep),
            ("U+0000 in a text field", nul),
            ("ESC in a text field", escape),
        ] {
            let status = send(port, &bytes, &name);
            if e.takes_body {
                assert_eq!(status, 400, "{name}: {case}");
            } else {
                // The endpoint ignores bodies: the body cannot make it fail.
                assert!(status < 500, "{name}: {case} answered {status}");
            }
        }

        slow_headers(port, e, &name);
    }
    no_stuck_worker(port);
}

/// Sends the request line and half the headers, stalls, checks the service still answers
/// others meanwhile, then completes the request and expects an answer.
fn slow_headers(port: u16, e: &Endpoint, name: &str) {
    let mut slow = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let _ = slow.write_all(format!("{} {} HTTP/1.1\r\nHost: t\r\n", e.method, e.path).as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let meanwhile = http(port, "GET", "/health", &[], b"").expect("health while a client is slow");
    assert_eq!(
        meanwhile.status, 200,
        "{name}: /health while a client sends slowly"
    );
    let _ = slow.write_all(b"X-Slow: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Read until one whole response is in: may_minihttp keeps the connection open.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let r = loop {
        if let Some(r) = parse_response(&answer) {
            break r;
        }
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) | Err(_) => panic!("{name}: slow request got no answer"),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    };
    assert!(r.status < 500, "{name}: slow request answered {}", r.status);
}

/// 32 concurrent requests all answered within 5 s: no worker is stuck on a hostile client.
fn no_stuck_worker(port: u16) {
    let start = Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            std::thread::spawn(move || http(port, "GET", "/health", &[], b"").map(|r| r.status))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread").expect("answer"), 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a worker is stuck: {:?}",
        start.elapsed()
    );
}

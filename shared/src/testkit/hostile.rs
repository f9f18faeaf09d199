//! Hostile HTTP against a running service, endpoint by endpoint: a bad request line, a bad
//! `Content-Length`, too many headers, headers sent slowly, a 10 MB body, invalid UTF-8 and
//! JSON nested 10 000 deep. Every request must get an answer below 500 (a 4xx wherever the
//! input is wrong), and afterwards no worker may be stuck: a burst of concurrent requests is
//! answered promptly.

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
        for (case, bytes) in [
            ("invalid UTF-8 body", utf8),
            ("JSON nested 10 000 deep", deep),
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

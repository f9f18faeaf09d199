//! The projection's small operations port: `GET /health` (liveness, no dependency calls) and
//! `GET /metrics` (Prometheus text). A plain `TcpListener` on one named thread, one request
//! per connection: two endpoints for a scraper and a health checker do not need a coroutine
//! runtime.
//!
//! Guarantee: bad or slow clients cost at most [`IO_TIMEOUT`] and never touch the pipeline.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::metrics::{now_ms, Metrics};
use crate::Error;

/// Per-connection read/write timeout: a scraper answers in milliseconds.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read; our requests have no body.
const HEAD_LIMIT: usize = 8 * 1024;

/// Binds `port` on all interfaces and serves on a named thread until the process exits.
pub fn serve(port: u16, instance: &str, metrics: Arc<Metrics>) -> Result<JoinHandle<()>, Error> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|source| Error::Bind { port, source })?;
    let health = serde_json::json!({
        "status": "healthy",
        "service": "reporting-projection",
        "instance": instance,
    })
    .to_string();
    let instance = instance.to_owned();
    shared::info!("http: /health and /metrics on port {port}");
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = handle(s, &instance, &health, &metrics) {
                            shared::warn!("http: {e}");
                        }
                    }
                    Err(e) => shared::warn!("http: accept: {e}"),
                }
            }
        })
        .map_err(|source| Error::Spawn {
            thread: "http".into(),
            source,
        })
}

fn handle(
    mut s: TcpStream,
    instance: &str,
    health: &str,
    metrics: &Metrics,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_LIMIT {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split(' ');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let path = path.split('?').next().unwrap_or(path);
    let (status, ctype, body, extra) = match (method, path) {
        ("GET", "/health") => ("200 OK", "application/json", health.to_owned(), ""),
        ("GET", "/metrics") => (
            "200 OK",
            shared::prometheus::CONTENT_TYPE,
            metrics.render(now_ms()),
            "",
        ),
        (_, "/health" | "/metrics") => (
            "405 Method Not Allowed",
            "application/json",
            error_body(instance, "method not allowed; allowed: GET"),
            "Allow: GET\r\n",
        ),
        _ => (
            "404 Not Found",
            "application/json",
            error_body(instance, "not found"),
            "",
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         X-Instance-ID: {instance}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(reply.as_bytes())?;
    s.flush()
}

fn error_body(instance: &str, error: &str) -> String {
    serde_json::json!({ "success": false, "error": error, "instance": instance }).to_string()
}

//! xtask's one HTTP client (`bench`, `seed`, the drills' load, health probes, `status`): a
//! small blocking HTTP/1.1 client, one keep-alive connection per [`Conn`], no TLS. It reads
//! every body framing HTTP/1.1 allows — `Content-Length`, `Transfer-Encoding: chunked`, and
//! until-close — and honours `Connection: close` by opening a new connection next time.
//! (The testkit's client in `shared` stays separate on purpose: it sends hostile bytes.)
//!
//! It is deliberately minimal so that what the bench measures is the server, not a client
//! library: one `write` per request, buffered reads, the connection reused until the server
//! closes it. A request on a reused connection that the server had already closed (an idle
//! keep-alive timeout) is retried once on a fresh connection, because nothing reached the
//! server; any other failure is reported as what it was.
//!
//! A [`Conn`] runs over any [`Transport`]: `std`'s `TcpStream` blocks its thread, `may`'s
//! parks only its coroutine, which is how the bench keeps a fixed set of connections on a
//! few threads (`bench::engine`).

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Largest response head we accept; ours are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body we accept: a list page of 100 reports with 10 000-char descriptions
/// is about 1 MiB, so 16 MiB only stops a runaway.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where requests go: an `http://host:port` base URL resolved once.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as given, for the `Host` header.
    pub host: String,
    /// Path prefix of the base URL (usually empty), prepended to every request path.
    pub prefix: String,
}

impl Target {
    /// Parses `http://host:port[/prefix]` or `host:port`.
    pub fn parse(url: &str) -> Result<Target> {
        if url.starts_with("https://") {
            bail!("{url}: https is not supported by the bench client; use http:// (e.g. nginx)");
        }
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let with_port = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolve {with_port}"))?
            .next()
            .with_context(|| format!("{with_port} resolves to no address"))?;
        Ok(Target {
            addr,
            host: host.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// How a request failed without an HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpError {
    /// The TCP connection could not be opened (refused, unreachable, connect timeout).
    Connect(String),
    /// No complete answer within the request timeout.
    Timeout,
    /// The connection broke mid-request (reset, EOF before a full response).
    Io(String),
    /// The bytes that came back are not an HTTP/1.1 response we understand.
    Protocol(String),
}

impl HttpError {
    /// The key errors are counted under in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect(_) => "connect",
            HttpError::Timeout => "timeout",
            HttpError::Io(_) => "io",
            HttpError::Protocol(_) => "protocol",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) => write!(f, "connect: {e}"),
            HttpError::Timeout => f.write_str("timeout"),
            HttpError::Io(e) => write!(f, "i/o: {e}"),
            HttpError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// One response, with the headers the bench looks at already picked out.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// `X-Instance-ID`.
    pub instance: Option<String>,
    /// `ETag` without quotes.
    pub etag: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The report version of a write answer: `ETag`, else `data.version` in the body.
    pub fn version(&self) -> Option<i64> {
        if let Some(v) = self.etag.as_deref().and_then(|e| e.parse().ok()) {
            return Some(v);
        }
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json.get("data")?.get("version")?.as_i64()
    }
}

/// A byte stream a [`Conn`] can run over: a TCP connection that can be opened with a
/// timeout and tuned for request/response traffic.
pub trait Transport: Read + Write + Sized {
    fn open(addr: &SocketAddr, timeout: Duration) -> std::io::Result<Self>;
    /// `TCP_NODELAY` and read/write timeouts; failures only cost latency, so they are ignored.
    fn tune(&self, timeout: Duration);
}

impl Transport for TcpStream {
    fn open(addr: &SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        TcpStream::connect_timeout(addr, timeout)
    }

    fn tune(&self, timeout: Duration) {
        let _ = self.set_nodelay(true);
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
}

/// In a coroutine, waiting on this parks the coroutine, not the thread.
impl Transport for may::net::TcpStream {
    fn open(addr: &SocketAddr, timeout: Duration) -> std::io::Result<may::net::TcpStream> {
        may::net::TcpStream::connect_timeout(addr, timeout)
    }

    fn tune(&self, timeout: Duration) {
        let _ = self.set_nodelay(true);
        let _ = self.set_read_timeout(Some(timeout));
        let _ = self.set_write_timeout(Some(timeout));
    }
}

/// A keep-alive connection to one target, opened lazily.
pub struct Conn<S: Transport = TcpStream> {
    target: Target,
    timeout: Duration,
    stream: Option<S>,
    /// Bytes read past the end of the previous response (should stay empty: no pipelining).
    buf: Vec<u8>,
    /// Extra header lines (`Name: value\r\n`) sent with every request.
    extra_headers: String,
    /// TCP connections opened so far (the first, and one after each close).
    connects: u64,
}

impl Conn {
    pub fn new(target: Target, timeout: Duration) -> Conn {
        Conn::over(target, timeout)
    }
}

impl<S: Transport> Conn<S> {
    /// A connection over the transport `S`.
    pub fn over(target: Target, timeout: Duration) -> Conn<S> {
        Conn {
            target,
            timeout,
            stream: None,
            buf: Vec::with_capacity(8192),
            extra_headers: String::new(),
            connects: 0,
        }
    }

    /// Opens the connection now rather than with the first request, so a pool of them can be
    /// ready before a measurement starts.
    pub fn open(&mut self) -> Result<(), HttpError> {
        self.connect()
    }

    /// TCP connections this `Conn` has opened so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Conn<S> {
        if let Some(t) = token {
            self.extra_headers = format!("Authorization: Bearer {t}\r\n");
        }
        self
    }

    /// One request; `body` is sent as JSON when given.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let mut req = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\n{}",
            self.target.prefix, self.target.host, self.extra_headers
        );
        if let Some(b) = body {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
        } else if matches!(method, "POST" | "PUT" | "PATCH") {
            req.push_str("Content-Length: 0\r\n\r\n");
        } else {
            req.push_str("\r\n");
        }
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        let reused = self.stream.is_some();
        match self.exchange(&bytes) {
            Err(Failure::Stale(_)) if reused => {
                // The server closed the idle connection before our request: nothing was
                // processed, so one retry on a new connection is safe even for a POST.
                self.stream = None;
                self.exchange(&bytes).map_err(Failure::into_error)
            }
            other => other.map_err(Failure::into_error),
        }
    }

    fn connect(&mut self) -> Result<(), HttpError> {
        if self.stream.is_none() {
            let s = S::open(&self.target.addr, self.timeout)
                .map_err(|e| HttpError::Connect(format!("{}: {e}", self.target.addr)))?;
            s.tune(self.timeout);
            self.connects += 1;
            self.buf.clear();
            self.stream = Some(s);
        }
        Ok(())
    }

    fn exchange(&mut self, bytes: &[u8]) -> Result<Response, Failure> {
        let result = self.exchange_inner(bytes);
        match &result {
            Ok((_, close)) if !*close => {}
            _ => self.stream = None,
        }
        result.map(|(r, _)| r)
    }

    fn exchange_inner(&mut self, bytes: &[u8]) -> Result<(Response, bool), Failure> {
        self.connect().map_err(Failure::Error)?;
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Error(HttpError::Io("no connection".into())));
        };
        if let Err(e) = stream.write_all(bytes) {
            return Err(io_failure(e, true));
        }
        // Read the head.
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Failure::Error(HttpError::Protocol(
                    "response head larger than 64 KiB".into(),
                )));
            }
            match stream.read(&mut chunk) {
                Ok(0) => return Err(io_failure_eof(self.buf.is_empty())),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e, self.buf.is_empty())),
            }
        };
        let mut head = parse_head(&self.buf[..head_end]).map_err(Failure::Error)?;
        self.buf.drain(..head_end);
        let no_body = matches!(head.status, 100..=199 | 204 | 304);
        let body = if no_body {
            Vec::new()
        } else if head.chunked {
            read_chunked(stream, &mut self.buf)?
        } else if let Some(len) = head.content_length {
            if len > MAX_BODY {
                return Err(Failure::Error(HttpError::Protocol(format!(
                    "body of {len} bytes is too large"
                ))));
            }
            fill(stream, &mut self.buf, len)?;
            self.buf.drain(..len).collect()
        } else {
            // Neither length nor chunks: the body ends when the server closes (RFC 9112 §6.3).
            head.close = true;
            read_to_close(stream, &mut self.buf)?
        };
        Ok((
            Response {
                status: head.status,
                instance: head.instance,
                etag: head.etag,
                body,
            },
            head.close,
        ))
    }
}

/// Why an exchange failed: `Stale` means the connection was dead before anything was read,
/// which is retryable on a reused connection.
enum Failure {
    Stale(HttpError),
    Error(HttpError),
}

impl Failure {
    fn into_error(self) -> HttpError {
        match self {
            Failure::Stale(e) | Failure::Error(e) => e,
        }
    }
}

fn io_failure(e: std::io::Error, nothing_read: bool) -> Failure {
    let err = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => return Failure::Error(HttpError::Timeout),
        _ => HttpError::Io(e.to_string()),
    };
    let stale = nothing_read
        && matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
        );
    if stale {
        Failure::Stale(err)
    } else {
        Failure::Error(err)
    }
}

fn io_failure_eof(nothing_read: bool) -> Failure {
    let err = HttpError::Io("connection closed before a full response".into());
    if nothing_read {
        Failure::Stale(err)
    } else {
        Failure::Error(err)
    }
}

/// Reads until `buf` holds at least `want` bytes.
fn fill(stream: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> Result<(), Failure> {
    let mut chunk = [0u8; 8192];
    while buf.len() < want {
        match stream.read(&mut chunk) {
            Ok(0) => {
                return Err(Failure::Error(HttpError::Io(
                    "connection closed mid-body".into(),
                )))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e, false)),
        }
    }
    Ok(())
}

/// Reads one CRLF-terminated line at the start of `buf` (more from `stream` as needed) and
/// removes it, CRLF included.
fn take_line(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<String, Failure> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MAX_HEAD {
            return Err(Failure::Error(HttpError::Protocol(
                "chunk line larger than 64 KiB".into(),
            )));
        }
        let want = buf.len() + 1;
        fill(stream, buf, want)?;
    }
}

/// A `Transfer-Encoding: chunked` body: `size[;ext] CRLF data CRLF` … `0 CRLF` trailers CRLF.
fn read_chunked(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<Vec<u8>, Failure> {
    let protocol = |what: String| Failure::Error(HttpError::Protocol(what));
    let mut body = Vec::new();
    loop {
        let line = take_line(stream, buf)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| protocol(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailer fields, if any, up to the empty line.
            while !take_line(stream, buf)?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err(protocol(format!(
                "chunked body larger than {MAX_BODY} bytes"
            )));
        }
        fill(stream, buf, size + 2)?;
        if &buf[size..size + 2] != b"\r\n" {
            return Err(protocol("chunk not followed by CRLF".into()));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// A body without framing: everything until the server closes the connection.
fn read_to_close(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<Vec<u8>, Failure> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(std::mem::take(buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure(e, false)),
        }
        if buf.len() > MAX_BODY {
            return Err(Failure::Error(HttpError::Protocol(format!(
                "body larger than {MAX_BODY} bytes"
            ))));
        }
    }
}

/// `GET path` on `127.0.0.1:port` on a connection of its own: status and body as text.
/// For probes (`status`, health checks), where one request per connection is fine.
pub fn get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let target = Target::parse(&format!("127.0.0.1:{port}"))?;
    let r = Conn::new(target, timeout)
        .request("GET", path, None)
        .with_context(|| format!("GET 127.0.0.1:{port}{path}"))?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    close: bool,
    instance: Option<String>,
    etag: Option<String>,
}

fn parse_head(raw: &[u8]) -> Result<Head, HttpError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| HttpError::Protocol("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Protocol(format!(
            "bad status line {status_line:?}"
        )));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Protocol(format!("bad status line {status_line:?}")))?;
    let mut head = Head {
        status,
        content_length: None,
        chunked: false,
        close: version == "HTTP/1.0",
        instance: None,
        etag: None,
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Protocol(format!("bad header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| HttpError::Protocol(format!("bad Content-Length {value:?}")))?;
            head.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("x-instance-id") {
            head.instance = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("etag") {
            head.etag = Some(value.trim_matches('"').to_string());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // `chunked` is always the last coding when present (RFC 9112 §6.1).
            head.chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(head)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.addr.port(), 8080);
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.prefix, "");
        let t = Target::parse("127.0.0.1:9/api/").unwrap();
        assert_eq!(t.prefix, "/api");
        assert!(Target::parse("https://x:1").is_err());
    }

    #[test]
    fn heads_parse() {
        let h = parse_head(
            b"HTTP/1.1 201 Created\r\nContent-Length: 12\r\nX-Instance-ID: command-2\r\nETag: \"3\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            (h.status, h.content_length, h.close),
            (201, Some(12), false)
        );
        assert_eq!(h.instance.as_deref(), Some("command-2"));
        assert_eq!(h.etag.as_deref(), Some("3"));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .unwrap()
                .close
        );
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    /// A server of our own answers a chunked response on a keep-alive connection, then a
    /// body delimited by `Connection: close`; the client reads both and reconnects for a third.
    #[test]
    fn reads_chunked_and_close_delimited_bodies() {
        use std::io::BufRead;
        use std::net::TcpListener;

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Instance-ID: q-1\r\n\r\n\
              5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\nno such thing",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
        let server = std::thread::spawn(move || {
            let mut connections = 0;
            let mut answered = 0;
            while answered < answers.len() {
                let (stream, _) = listener.accept().expect("accept");
                connections += 1;
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut writer = stream;
                // Answer requests on this connection until one of ours says close.
                loop {
                    let mut line = String::new();
                    while reader.read_line(&mut line).expect("read") > 0 && line != "\r\n" {
                        line.clear();
                    }
                    writer.write_all(answers[answered]).expect("write");
                    answered += 1;
                    if answered == 2 || answered == answers.len() {
                        break;
                    }
                }
            }
            connections
        });

        let target = Target::parse(&format!("127.0.0.1:{port}")).expect("target");
        let mut conn = Conn::new(target, Duration::from_secs(5));
        let r = conn.request("GET", "/a", None).expect("chunked");
        assert_eq!(
            (r.status, r.body.as_slice(), r.instance.as_deref()),
            (200, &b"hello, world"[..], Some("q-1"))
        );
        let r = conn.request("GET", "/b", None).expect("close-delimited");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"no such thing"[..]));
        let r = conn.request("GET", "/c", None).expect("after close");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        assert_eq!(
            server.join().expect("server"),
            2,
            "a new connection after close"
        );
    }
}

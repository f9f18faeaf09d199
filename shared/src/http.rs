//! The HTTP edge shared by the command and query services on `may_minihttp`: reading a request
//! safely, the JSON envelope (SPEC §2), and the one function that turns an [`ApiError`] into a
//! status and an envelope.
//!
//! `may_minihttp` 0.1 trusts its input more than we do: it parses `Content-Length` with
//! `unwrap`, has no body limit, and turns a failing `call()` into a 500 with raw error text.
//! [`Incoming::read`] therefore checks the framing headers itself before touching the body and
//! never returns an I/O error for bad input, only an [`ApiError`] that becomes a 4xx.

use std::borrow::Cow;
use std::io::Read;
use std::sync::{OnceLock, RwLock};

use may_minihttp::{Request, Response};
use serde::Serialize;

/// Largest request body accepted (SPEC §2.2: larger is 413).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Largest declared body we still read and discard after answering 413, so the answer reaches
/// the client on a keep-alive connection. Beyond it the connection is closed instead: reading
/// gigabytes to be polite would be a denial of service against ourselves.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// An error a request can end in. Each variant's doc says what the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400 with the message.
    BadRequest(String),
    /// 401: a write without credentials.
    Unauthorized,
    /// 403: credentials that are not valid.
    Forbidden,
    /// 404 with the message.
    NotFound(String),
    /// 405 with `Allow`.
    MethodNotAllowed { allow: &'static str },
    /// 409 with the current version in `error` and `data`.
    Conflict { current: i64 },
    /// 411: a body without `Content-Length` (chunked bodies are not supported).
    LengthRequired,
    /// 413: the body exceeds [`BODY_LIMIT`].
    PayloadTooLarge { declared: usize },
    /// 503 with `Retry-After`: a dependency is down or too slow; the service keeps running.
    Unavailable(String),
    /// 500 with a generic message; the detail goes to the log, not to the client.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Conflict { .. } => 409,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::Unavailable(_) => 503,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::BadRequest(m) | ApiError::NotFound(m) | ApiError::Unavailable(m) => m.clone(),
            ApiError::Unauthorized => {
                "missing credentials: send Authorization: Bearer <token>".into()
            }
            ApiError::Forbidden => "invalid token".into(),
            ApiError::MethodNotAllowed { allow } => format!("method not allowed; allowed: {allow}"),
            ApiError::Conflict { current } => {
                format!("version conflict: current version is {current}")
            }
            ApiError::LengthRequired => "a body needs a Content-Length header".into(),
            ApiError::PayloadTooLarge { declared } => {
                format!("body of {declared} bytes exceeds the limit of {BODY_LIMIT} bytes")
            }
            ApiError::Internal(_) => "internal error".into(),
        }
    }

    /// The one place an error becomes an HTTP answer.
    pub fn into_reply(self, instance: &str) -> Reply {
        let status = self.status();
        if let ApiError::Internal(detail) = &self {
            crate::error!("internal error: {detail}");
        }
        let error = self.message();
        let data = match &self {
            ApiError::Conflict { current } => {
                Some(serde_json::json!({ "current_version": current }))
            }
            _ => None,
        };
        let body = Envelope {
            success: false,
            message: None,
            data: data.as_ref(),
            error: Some(&error),
            instance,
            meta: None::<&()>,
        }
        .to_vec();
        let reply = Reply::new(status, body);
        match self {
            ApiError::MethodNotAllowed { allow } => reply.with_header(allow_header(allow)),
            ApiError::Conflict { current } => reply.with_header(etag_header(current)),
            ApiError::Unavailable(_) => reply.with_header("Retry-After: 1"),
            ApiError::Unauthorized => reply.with_header("WWW-Authenticate: Bearer"),
            _ => reply,
        }
    }
}

/// The JSON envelope of every response (SPEC §2).
#[derive(Debug, Serialize)]
pub struct Envelope<'a, D: Serialize, M: Serialize> {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    pub instance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<M>,
}

impl<D: Serialize, M: Serialize> Envelope<'_, D, M> {
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising plain data structures into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A successful envelope with `data` (and optional `message`).
pub fn ok_body<D: Serialize>(instance: &str, message: Option<&str>, data: D) -> Vec<u8> {
    Envelope {
        success: true,
        message,
        data: Some(data),
        error: None,
        instance,
        meta: None::<()>,
    }
    .to_vec()
}

/// A response about to be written: status, body and extra header lines.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The whole `Content-Type: …` header line.
    pub content_type: &'static str,
    /// Whole header lines: `&'static` ones cost nothing, per-response values (an `ETag`) are
    /// owned and freed with the response.
    pub headers: Vec<Cow<'static, str>>,
}

impl Reply {
    pub fn new(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            body,
            content_type: "Content-Type: application/json",
            headers: Vec::new(),
        }
    }

    /// Prometheus text instead of JSON.
    pub fn text(status: u16, body: String) -> Reply {
        Reply {
            content_type: "Content-Type: text/plain; version=0.0.4",
            ..Reply::new(status, body.into_bytes())
        }
    }

    pub fn with_header(mut self, header: impl Into<Cow<'static, str>>) -> Reply {
        self.headers.push(header.into());
        self
    }

    /// Writes the reply with the content type and the instance header.
    pub fn write(self, instance_header: &'static str, rsp: &mut Response) {
        rsp.status_code(self.status as usize, reason(self.status));
        rsp.header(self.content_type);
        rsp.header(instance_header);
        // may_minihttp holds at most 16 headers; ours never exceed a handful.
        for h in self.headers.into_iter().take(12) {
            rsp.header(h);
        }
        rsp.body_vec(self.body);
    }
}

/// `X-Instance-ID: <id>`, built once at start-up (headers must be `&'static str`).
pub fn instance_header(instance: &str) -> &'static str {
    Box::leak(format!("X-Instance-ID: {instance}").into_boxed_str())
}

fn allow_header(allow: &'static str) -> &'static str {
    static CACHE: OnceLock<RwLock<Vec<(&'static str, &'static str)>>> = OnceLock::new();
    intern(CACHE.get_or_init(Default::default), allow, || {
        format!("Allow: {allow}")
    })
}

/// `ETag: "<version>"`, built per response and freed with it. Nothing is cached or leaked,
/// so memory stays bounded whatever version (or, for lists, position) a client makes us
/// serve; one small allocation per response is noise next to the body.
pub fn etag_header(version: i64) -> Cow<'static, str> {
    Cow::Owned(format!("ETag: \"{version}\""))
}

fn intern(
    cache: &RwLock<Vec<(&'static str, &'static str)>>,
    key: &'static str,
    make: impl FnOnce() -> String,
) -> &'static str {
    if let Ok(read) = cache.read() {
        if let Some((_, v)) = read.iter().find(|(k, _)| *k == key) {
            return v;
        }
    }
    let value: &'static str = Box::leak(make().into_boxed_str());
    if let Ok(mut write) = cache.write() {
        write.push((key, value));
    }
    value
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A request copied out of `may_minihttp`'s borrowed buffers, with its body read and checked.
#[derive(Debug)]
pub struct Incoming {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string (after `?`), if any.
    pub query: Option<String>,
    /// Header names lower-cased; values that are not UTF-8 are kept lossily.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Incoming {
    /// Copies the request and reads its body, enforcing [`BODY_LIMIT`]. Never panics on bad
    /// framing headers: a malformed or repeated `Content-Length` is a 400, a body without one
    /// (chunked) a 411, an oversized one a 413 (drained when small enough to drain).
    pub fn read(req: Request) -> Result<Incoming, ApiError> {
        let method = req.method().to_owned();
        let (path, query) = match req.path().split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (req.path().to_owned(), None),
        };
        let mut headers = Vec::with_capacity(req.headers().len());
        let mut lengths: Vec<Option<usize>> = Vec::new();
        let mut chunked = false;
        for h in req.headers() {
            let name = h.name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(h.value).trim().to_owned();
            match name.as_str() {
                "content-length" => lengths.push(parse_content_length(&value)),
                "transfer-encoding" => chunked = true,
                _ => {}
            }
            headers.push((name, value));
        }
        // may_minihttp reads the body by the FIRST Content-Length header (and panics if it is
        // not a number). When that one is a sane number we can always drain the body, so our
        // error answer reaches the client and the connection stays usable.
        let drainable = matches!(lengths.first(), Some(Some(n)) if *n <= DRAIN_LIMIT);
        let reject = |req: Request, e: ApiError| {
            if drainable {
                drop(req.body());
            }
            Err(e)
        };
        let declared = match lengths.as_slice() {
            [] => 0,
            [None, ..] | [_, None, ..] => {
                return reject(req, ApiError::BadRequest("malformed Content-Length".into()));
            }
            [Some(first), rest @ ..] => {
                if rest.iter().any(|n| *n != Some(*first)) {
                    return reject(
                        req,
                        ApiError::BadRequest("conflicting Content-Length headers".into()),
                    );
                }
                *first
            }
        };
        if chunked {
            return reject(req, ApiError::LengthRequired);
        }
        if declared > BODY_LIMIT {
            return reject(req, ApiError::PayloadTooLarge { declared });
        }
        let mut body = Vec::with_capacity(declared);
        if declared > 0 {
            req.body()
                .read_to_end(&mut body)
                .map_err(|e| ApiError::BadRequest(format!("could not read body: {e}")))?;
            if body.len() != declared {
                return Err(ApiError::BadRequest(format!(
                    "body ended after {} of {declared} bytes",
                    body.len()
                )));
            }
        }
        Ok(Incoming {
            method,
            path,
            query,
            headers,
            body,
        })
    }

    /// The first value of a header, by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameters, percent-decoded, each name and value held to [`check_text`]:
    /// whatever parameter a handler passes on to SQL, it cannot carry a control character.
    pub fn params(&self) -> Result<Vec<(String, String)>, ApiError> {
        let params = match &self.query {
            Some(q) => parse_query(q)?,
            None => return Ok(Vec::new()),
        };
        for (name, value) in &params {
            check_text(&format!("parameter name {name:?}"), name)?;
            check_text(&format!("parameter {name}"), value)?;
        }
        Ok(params)
    }
}

/// The one rule for text from clients (SPEC §7.1): no control characters but tab, newline and
/// carriage return. PostgreSQL cannot store U+0000 in `text` at all (the insert would fail
/// with a 500), and the other controls are invisible or harmful in every client that shows a
/// report. The 400 names `field` and the character.
pub fn check_text(field: &str, value: &str) -> Result<(), ApiError> {
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        Some(c) => Err(ApiError::BadRequest(format!(
            "{field} contains the control character U+{:04X}; only tab, newline and carriage \
             return are allowed",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

/// Digits only (no sign, no spaces); `None` when malformed. All digits but too large for
/// usize is `usize::MAX`: certainly over the limit.
fn parse_content_length(value: &str) -> Option<usize> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(value.parse().unwrap_or(usize::MAX))
}

/// Splits and percent-decodes a query string (`+` is a space). Invalid escapes or non-UTF-8
/// results are a 400, never a silent mangling.
pub fn parse_query(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

pub(crate) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::BadRequest(format!("bad percent-escape in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::BadRequest(format!("query parameter {s:?} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings() {
        let check = |q: &str, expect: &[(&str, &str)]| {
            let got = parse_query(q).unwrap();
            let got: Vec<(&str, &str)> =
                got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(got, expect, "query {q:?}");
        };
        check("", &[]);
        check("page=2&per_page=20", &[("page", "2"), ("per_page", "20")]);
        check(
            "category=kebersihan&&x",
            &[("category", "kebersihan"), ("x", "")],
        );
        check("t=a+b%20c%2F", &[("t", "a b c/")]);
        assert!(parse_query("x=%zz").is_err());
        assert!(parse_query("x=%ff").is_err());
        assert!(parse_query("x=%4").is_err());
    }

    #[test]
    fn control_characters() {
        let check = |value: &str, expect: Option<&str>| {
            let got = check_text("title", value).err().map(|e| e.message());
            match (expect, got) {
                (None, None) => {}
                (Some(fragment), Some(msg)) => assert!(
                    msg.contains("title") && msg.contains(fragment),
                    "{value:?}: expected {fragment:?} in {msg:?}"
                ),
                (expect, got) => panic!("{value:?}: expected {expect:?}, got {got:?}"),
            }
        };
        check("Jalan berlubang", None);
        check("tab\there, lines\r\nand\nmore", None);
        check("é ü 日本 \u{200b} \u{202e}", None);
        check("a\u{0}b", Some("U+0000"));
        check("\u{1b}[31m", Some("U+001B"));
        check("bell\u{7}", Some("U+0007"));
        check("del\u{7f}", Some("U+007F"));
        check("c1\u{85}", Some("U+0085"));
    }

    #[test]
    fn params_refuse_control_characters() {
        let incoming = |query: &str| Incoming {
            method: "GET".into(),
            path: "/reports".into(),
            query: Some(query.into()),
            headers: Vec::new(),
            body: Vec::new(),
        };
        assert!(incoming("category=kebersihan&q=a+b%09c").params().is_ok());
        let msg = incoming("category=a%00b").params().unwrap_err().message();
        assert!(
            msg.contains("parameter category") && msg.contains("U+0000"),
            "{msg}"
        );
        let msg = incoming("status=x%1B").params().unwrap_err().message();
        assert!(msg.contains("parameter status"), "{msg}");
        assert!(incoming("a%00=1").params().is_err());
    }

    #[test]
    fn etags_are_bounded_whatever_the_version() {
        // The old cache kept one leaked header per version up to the highest one served:
        // this version would have tried to allocate 2^63 of them.
        assert_eq!(etag_header(i64::MAX), "ETag: \"9223372036854775807\"");
        assert_eq!(etag_header(-1), "ETag: \"-1\"");
        for v in [1, 2, 1 << 40, i64::MAX - 1] {
            assert_eq!(etag_header(v), format!("ETag: \"{v}\""));
        }
    }

    #[test]
    fn content_length() {
        assert_eq!(parse_content_length("12"), Some(12));
        assert_eq!(
            parse_content_length("99999999999999999999999"),
            Some(usize::MAX)
        );
        for bad in ["", "-1", "abc", "1 2", "0x10", "+5"] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_become_envelopes() {
        let r = ApiError::Conflict { current: 3 }.into_reply("command-1");
        assert_eq!(r.status, 409);
        assert!(r.headers.iter().any(|h| h == "ETag: \"3\""));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["data"]["current_version"], 3);
        assert_eq!(v["instance"], "command-1");
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("current version is 3"));
        let r = ApiError::MethodNotAllowed { allow: "GET, POST" }.into_reply("x");
        assert_eq!(r.headers, vec!["Allow: GET, POST"]);
        assert_eq!(etag_header(7), "ETag: \"7\"");
    }
}

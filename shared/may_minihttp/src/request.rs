use std::cell::Cell;
use std::fmt;
use std::io::{self, BufRead, Read};
use std::mem::MaybeUninit;

pub(crate) const MAX_HEADERS: usize = 16;

/// PATCH: request headers accepted (upstream: 16, shared with the response). Real clients and
/// proxies send up to ~20; more than this is answered 431 instead of dropping the connection.
pub(crate) const MAX_REQUEST_HEADERS: usize = 32;

/// PATCH: the largest request head (request line + headers) buffered while waiting for its
/// end. 32 KiB is what nginx itself accepts by default (`large_client_header_buffers 4 8k`),
/// so nothing nginx forwards is refused; beyond it a client is flooding us, and every byte
/// more would be memory a hostile client controls. Answered 431, then the connection closes.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;

use bytes::{Buf, BufMut, BytesMut};
use may::net::TcpStream;

use crate::http_server::err;

pub struct BodyReader<'buf, 'stream> {
    // remaining bytes for body
    req_buf: &'buf mut BytesMut,
    // the max body length limit
    body_limit: usize,
    // total read count
    total_read: usize,
    // used to read extra body bytes
    stream: &'stream mut TcpStream,
}

impl<'buf, 'stream> BodyReader<'buf, 'stream> {
    fn read_more_data(&mut self) -> io::Result<usize> {
        crate::http_server::reserve_buf(self.req_buf);
        let read_buf: &mut [u8] = unsafe { std::mem::transmute(self.req_buf.chunk_mut()) };
        let n = self.stream.read(read_buf)?;
        unsafe { self.req_buf.advance_mut(n) };
        Ok(n)
    }
}

impl<'buf, 'stream> Read for BodyReader<'buf, 'stream> {
    // the user should control the body reading, don't exceeds the body!
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.total_read >= self.body_limit {
            return Ok(0);
        }

        loop {
            if !self.req_buf.is_empty() {
                let min_len = buf.len().min(self.body_limit - self.total_read);
                let n = self.req_buf.reader().read(&mut buf[..min_len])?;
                self.total_read += n;
                return Ok(n);
            }

            if self.read_more_data()? == 0 {
                return Ok(0);
            }
        }
    }
}

impl<'buf, 'stream> BufRead for BodyReader<'buf, 'stream> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let remain = self.body_limit - self.total_read;
        if remain == 0 {
            return Ok(&[]);
        }
        if self.req_buf.is_empty() {
            self.read_more_data()?;
        }
        let n = self.req_buf.len().min(remain);
        Ok(&self.req_buf.chunk()[0..n])
    }

    fn consume(&mut self, amt: usize) {
        assert!(amt <= self.body_limit - self.total_read);
        assert!(amt <= self.req_buf.len());
        self.total_read += amt;
        self.req_buf.advance(amt)
    }
}

impl<'buf, 'stream> Drop for BodyReader<'buf, 'stream> {
    fn drop(&mut self) {
        // consume all the remaining bytes
        while let Ok(n) = self.fill_buf().map(|b| b.len()) {
            if n == 0 {
                break;
            }
            // println!("drop: {:?}", n);
            self.consume(n);
        }
    }
}

// we should hold the mut ref of req_buf
// before into body, this req_buf is only for holding headers
// after into body, this req_buf is mutable to read extra body bytes
// and the headers buf can be reused
pub struct Request<'buf, 'header, 'stream> {
    req: httparse::Request<'header, 'buf>,
    req_buf: &'buf mut BytesMut,
    stream: &'stream mut TcpStream,
    /// PATCH: `Content-Length` is absent or one plain number (repeats agreeing), and there is
    /// no `Transfer-Encoding`: the end of this request is known.
    framing_ok: bool,
    /// PATCH: set when the connection must close after the answer: the framing is ambiguous,
    /// or a body was announced and the service has not (yet) taken it with [`Request::body`].
    /// Otherwise the unread body would be parsed as the next request.
    close_after: &'header Cell<bool>,
}

impl<'buf, 'header, 'stream> Request<'buf, 'header, 'stream> {
    pub fn method(&self) -> &str {
        self.req.method.unwrap()
    }

    pub fn path(&self) -> &str {
        self.req.path.unwrap()
    }

    pub fn version(&self) -> u8 {
        self.req.version.unwrap()
    }

    pub fn headers(&self) -> &[httparse::Header<'_>] {
        self.req.headers
    }

    pub fn body(self) -> BodyReader<'buf, 'stream> {
        // PATCH: the reader drains the whole body when dropped, so the next request starts
        // where this one ends, unless the framing leaves that end in doubt.
        if self.framing_ok {
            self.close_after.set(false);
        }
        BodyReader {
            body_limit: self.content_length(),
            total_read: 0,
            stream: self.stream,
            req_buf: self.req_buf,
        }
    }

    fn content_length(&self) -> usize {
        framing(self.req.headers).0
    }
}

/// PATCH: `(body length, framing is unambiguous)`. The length is the first `Content-Length`
/// when it is digits only (upstream unwrapped `str::parse`, which also takes `+5`), else 0.
/// The framing is ambiguous when any `Content-Length` is not digits only, two disagree, or a
/// `Transfer-Encoding` is present (not supported here): a proxy in front of us may read such
/// a request's end differently, so the connection must not be reused after it.
fn framing(headers: &[httparse::Header<'_>]) -> (usize, bool) {
    let mut first: Option<Option<usize>> = None;
    let mut ok = true;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            ok = false;
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = strict_length(header.value);
            match first {
                None => first = Some(value),
                Some(seen) if seen == value => {}
                Some(_) => ok = false,
            }
            if value.is_none() {
                ok = false;
            }
        }
    }
    (first.flatten().unwrap_or(0), ok)
}

/// Digits only, surrounding spaces allowed; `None` otherwise (or when it overflows).
fn strict_length(value: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// PATCH: why a request could not be parsed; the connection loop answers it and closes.
#[derive(Debug)]
pub enum BadRequest {
    /// httparse refused the head (bad request line, too many headers, bad bytes).
    Parse(httparse::Error),
    /// The head is still incomplete after [`MAX_HEAD_BYTES`].
    HeadTooLarge,
}

impl BadRequest {
    /// The complete HTTP response for this error (`Connection: close`, JSON body).
    pub(crate) fn response(&self) -> Vec<u8> {
        let (status, body) = match self {
            BadRequest::Parse(httparse::Error::TooManyHeaders) => (
                "431 Request Header Fields Too Large",
                format!(
                    "{{\"success\":false,\"error\":\"too many request headers (limit {MAX_REQUEST_HEADERS})\"}}"
                ),
            ),
            BadRequest::HeadTooLarge => (
                "431 Request Header Fields Too Large",
                format!(
                    "{{\"success\":false,\"error\":\"request head larger than {MAX_HEAD_BYTES} bytes\"}}"
                ),
            ),
            BadRequest::Parse(other) => (
                "400 Bad Request",
                format!("{{\"success\":false,\"error\":\"malformed HTTP request: {other}\"}}"),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nServer: M\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

impl fmt::Display for BadRequest {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            BadRequest::Parse(e) => write!(f, "bad request: {e}"),
            BadRequest::HeadTooLarge => write!(f, "request head larger than {MAX_HEAD_BYTES} bytes"),
        }
    }
}

impl std::error::Error for BadRequest {}

impl<'buf, 'header, 'stream> fmt::Debug for Request<'buf, 'header, 'stream> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "<HTTP Request {} {}>", self.method(), self.path())
    }
}

pub fn decode<'header, 'buf, 'stream>(
    headers: &'header mut [MaybeUninit<httparse::Header<'buf>>; MAX_REQUEST_HEADERS],
    req_buf: &'buf mut BytesMut,
    stream: &'stream mut TcpStream,
    close_after: &'header Cell<bool>,
) -> io::Result<Option<Request<'buf, 'header, 'stream>>> {
    let mut req = httparse::Request::new(&mut []);
    // safety: don't hold the reference of req_buf
    // so we can transfer the mutable reference to Request
    let buf: &[u8] = unsafe { std::mem::transmute(req_buf.chunk()) };
    let status = match req.parse_with_uninit_headers(buf, headers) {
        Ok(s) => s,
        Err(e) => {
            // PATCH: a typed error the connection loop answers (400/431) before closing.
            return err(io::Error::new(io::ErrorKind::InvalidData, BadRequest::Parse(e)));
        }
    };

    let len = match status {
        httparse::Status::Complete(amt) => amt,
        httparse::Status::Partial => return Ok(None),
    };
    req_buf.advance(len);

    // PATCH: decide now whether the connection can carry another request after this one.
    let (body_len, framing_ok) = framing(req.headers);
    close_after.set(!framing_ok || body_len > 0);

    // println!("req: {:?}", std::str::from_utf8(req_buf).unwrap());
    Ok(Some(Request {
        req,
        req_buf,
        stream,
        framing_ok,
        close_after,
    }))
}

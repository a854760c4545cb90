//! Request-head parsing on httparse, plus the RFC 9112 framing rules that
//! httparse leaves to its caller.

use bytes::{Bytes, BytesMut};

/// Bounds on what one request head may take. All are enforced before the
/// head is complete, so a client cannot make the server buffer more than
/// `max_head_bytes` for a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line (method, target, version), excluding CRLF. Past it: 414.
    pub max_request_line: usize,
    /// Longest head, request line and header block and the blank line. Past it: 431.
    pub max_head_bytes: usize,
    /// Most header fields. Past it: 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line: 8 * 1024,
            max_head_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    /// Any other token; the raw name is `RequestHead::method_str`.
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request body is framed (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (no Content-Length, no Transfer-Encoding, or Content-Length: 0).
    Empty,
    /// Content-Length: n, n > 0.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// A parsed request head. It owns its bytes (a `Bytes` split off the read
/// buffer, so no copy) and keeps offsets into them: it borrows nothing from
/// the socket or the read buffer and can be held across awaits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    // implementation-defined private fields
}

impl RequestHead {
    pub fn method(&self) -> Method {
        todo!()
    }
    /// The method token as sent, e.g. "GET".
    pub fn method_str(&self) -> &str {
        todo!()
    }
    pub fn version(&self) -> Version {
        todo!()
    }
    /// The request target as sent ("/orders?limit=5", or "*", or absolute-form).
    pub fn target(&self) -> &str {
        todo!()
    }
    /// The path of the target, without the query: "/orders". For
    /// absolute-form targets ("http://host/p?q") the path part, "/p".
    pub fn path(&self) -> &str {
        todo!()
    }
    /// The query without its '?', if any: "limit=5".
    pub fn query(&self) -> Option<&str> {
        todo!()
    }
    /// The value of the first header with this name (ASCII case-insensitive),
    /// with surrounding whitespace trimmed.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let _ = name;
        todo!()
    }
    /// Every header, in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        std::iter::empty()
    }
    pub fn body_kind(&self) -> BodyKind {
        todo!()
    }
    /// Whether the client asked to keep the connection open after this
    /// request: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`. Connection is a comma-separated token list,
    /// case-insensitive.
    pub fn keep_alive(&self) -> bool {
        todo!()
    }
    /// `Expect: 100-continue` was sent (case-insensitive), HTTP/1.1 only.
    pub fn expects_continue(&self) -> bool {
        todo!()
    }
    /// Length of the head in bytes, CRLFCRLF included.
    pub fn len(&self) -> usize {
        todo!()
    }
    /// The raw head bytes.
    pub fn as_bytes(&self) -> &Bytes {
        todo!()
    }
}

/// Why a head was refused. Every variant means the connection's framing can
/// no longer be trusted: the driver answers `status()` with
/// `Connection: close` and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// 400, with a short reason ("malformed request line", "missing Host",
    /// "repeated Host", "Content-Length with Transfer-Encoding",
    /// "invalid Content-Length", "conflicting Content-Length",
    /// "whitespace before colon", "obsolete line folding",
    /// "invalid header value", "invalid header name",
    /// "Transfer-Encoding not ending in chunked", ...).
    BadRequest(&'static str),
    /// 414: request line longer than `max_request_line`.
    UriTooLong,
    /// 431: head longer than `max_head_bytes`, or more than `max_headers` fields.
    HeadersTooLarge,
    /// 501: a transfer coding other than chunked (e.g. gzip, or an unknown token).
    UnsupportedTransferCoding,
    /// 505: a well-formed "HTTP/x.y" version that is not 1.0 or 1.1.
    VersionNotSupported,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        todo!()
    }
    /// A short human message for the response body.
    pub fn message(&self) -> &'static str {
        todo!()
    }
}

/// Parses one request head from the front of `buf`.
///
/// - `Ok(Some(head))`: a complete, valid head was split off the front of
///   `buf` (the body, if any, and later pipelined requests stay in `buf`).
/// - `Ok(None)`: not complete yet and still within the limits; `buf` is
///   untouched. Call again with more bytes appended.
/// - `Err(e)`: refuse the request (see `HeadError`). `buf` is left as is.
///
/// Leading empty lines (CRLF) before a request line are skipped and consumed
/// (RFC 9112 section 2.2), at most a few.
///
/// Framing rules enforced (each an `Err`): Content-Length together with
/// Transfer-Encoding; Transfer-Encoding whose final coding is not chunked
/// (400), or containing a coding other than chunked (501); chunked applied
/// twice (400); Content-Length not all digits, empty, overflowing u64, or
/// differing values (repeated identical values are accepted, as in RFC 9110,
/// also comma-separated "5, 5"); obs-fold; whitespace between a field name
/// and the colon; control characters (other than HTAB) in values; in HTTP/1.1
/// a missing or repeated Host; any version other than HTTP/1.0 and HTTP/1.1
/// (505 when it has the form HTTP/d.d, else 400); a request line past
/// `max_request_line` (414, detected even before the line is complete);
/// a head past `max_head_bytes` or more than `max_headers` fields (431, also
/// detected before the head is complete).
///
/// The result does not depend on how the bytes were split across calls.
pub fn parse_head(buf: &mut BytesMut, limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let _ = (buf, limits);
    todo!()
}

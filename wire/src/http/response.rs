//! Response-head encoding into a caller-owned buffer, and chunked framing.

use bytes::BytesMut;

use super::date::HttpDate;

/// A status code with its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCode(pub u16);

impl StatusCode {
    pub const CONTINUE: StatusCode = StatusCode(100);
    pub const OK: StatusCode = StatusCode(200);
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    pub const PAYLOAD_TOO_LARGE: StatusCode = StatusCode(413);
    pub const URI_TOO_LONG: StatusCode = StatusCode(414);
    pub const UNSUPPORTED_MEDIA_TYPE: StatusCode = StatusCode(415);
    pub const UNPROCESSABLE: StatusCode = StatusCode(422);
    pub const HEADERS_TOO_LARGE: StatusCode = StatusCode(431);
    pub const INTERNAL_ERROR: StatusCode = StatusCode(500);
    pub const NOT_IMPLEMENTED: StatusCode = StatusCode(501);
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    pub const VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);

    /// The standard reason phrase ("OK", "Not Found", ...; "Unknown" otherwise).
    pub fn reason(&self) -> &'static str {
        todo!()
    }
}

/// How the response body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`. For a HEAD response the same header is sent and
    /// the caller writes no body.
    Length(u64),
    /// `Transfer-Encoding: chunked`; the body follows as `encode_chunk` calls
    /// and ends with `encode_last_chunk`.
    Chunked,
    /// No body and no length header (1xx, 204, 304).
    None,
}

/// What goes into one response head.
#[derive(Clone, Copy, Debug)]
pub struct ResponseHead<'a> {
    pub status: StatusCode,
    pub framing: Framing,
    /// Adds `Connection: close` when false. (HTTP/1.1 keep-alive is the
    /// default, so nothing is added when true, unless `http10` is set, in
    /// which case `Connection: keep-alive` is added.)
    pub keep_alive: bool,
    /// The request was HTTP/1.0: the status line still says HTTP/1.1
    /// (RFC 9110 section 6.2), but keep-alive must be explicit and chunked
    /// framing must not be used (caller's job to avoid).
    pub http10: bool,
    /// e.g. b"text/plain; charset=utf-8"; no header when None.
    pub content_type: Option<&'a [u8]>,
    /// Further headers, written as given (names and values must be valid:
    /// the encoder does not check them).
    pub extra: &'a [(&'a str, &'a [u8])],
}

impl ResponseHead<'_> {
    /// Appends the status line and headers, ending with the blank line:
    /// "HTTP/1.1 200 OK\r\nServer: ringside\r\nDate: ...\r\nContent-Type: ...\r\n
    /// Content-Length: n\r\n[Connection: close\r\n][extra]\r\n".
    /// Integers are formatted without allocation.
    pub fn encode(&self, date: &HttpDate, out: &mut BytesMut) {
        let _ = (date, out);
        todo!()
    }
}

/// "HTTP/1.1 100 Continue\r\n\r\n".
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends one chunk: hex size, CRLF, data, CRLF. An empty `data` appends nothing
/// (an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    let _ = (data, out);
    todo!()
}

/// Appends the last chunk and the end of the (empty) trailer section: "0\r\n\r\n".
pub fn encode_last_chunk(out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n\r\n");
}

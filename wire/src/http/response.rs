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
        // RFC 9110 section 15 names.
        match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            203 => "Non-Authoritative Information",
            204 => "No Content",
            205 => "Reset Content",
            206 => "Partial Content",
            300 => "Multiple Choices",
            301 => "Moved Permanently",
            302 => "Found",
            303 => "See Other",
            304 => "Not Modified",
            307 => "Temporary Redirect",
            308 => "Permanent Redirect",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            406 => "Not Acceptable",
            408 => "Request Timeout",
            409 => "Conflict",
            410 => "Gone",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Content Too Large",
            414 => "URI Too Long",
            415 => "Unsupported Media Type",
            416 => "Range Not Satisfiable",
            417 => "Expectation Failed",
            421 => "Misdirected Request",
            422 => "Unprocessable Content",
            426 => "Upgrade Required",
            428 => "Precondition Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "Unknown",
        }
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
    /// `HTTP/1.1 200 OK\r\nServer: ringside\r\nDate: ...\r\nContent-Type: ...\r\n`
    /// `Content-Length: n\r\n[Connection: close\r\n][extra]\r\n`.
    /// Integers are formatted without allocation.
    pub fn encode(&self, date: &HttpDate, out: &mut BytesMut) {
        let reason = self.status.reason();
        let extra_len: usize = self.extra.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
        // One reservation for the usual head (fixed parts are ~120 bytes).
        out.reserve(128 + reason.len() + self.content_type.map_or(0, |c| c.len()) + extra_len);

        if self.status.0 == 200 {
            // Nearly every response: its fixed start in one piece.
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nServer: ringside\r\nDate: ");
        } else {
            out.extend_from_slice(b"HTTP/1.1 ");
            put_decimal(out, u64::from(self.status.0));
            out.extend_from_slice(b" ");
            out.extend_from_slice(reason.as_bytes());
            out.extend_from_slice(b"\r\nServer: ringside\r\nDate: ");
        }
        out.extend_from_slice(date.as_bytes());
        // Each field's CRLF goes out with the next field's name: fewer pieces.
        if let Some(ct) = self.content_type {
            out.extend_from_slice(b"\r\nContent-Type: ");
            out.extend_from_slice(ct);
        }
        match self.framing {
            Framing::Length(n) => {
                out.extend_from_slice(b"\r\nContent-Length: ");
                put_decimal(out, n);
            }
            Framing::Chunked => out.extend_from_slice(b"\r\nTransfer-Encoding: chunked"),
            Framing::None => {}
        }
        if !self.keep_alive {
            out.extend_from_slice(b"\r\nConnection: close");
        } else if self.http10 {
            out.extend_from_slice(b"\r\nConnection: keep-alive");
        }
        for (name, value) in self.extra {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\r\n\r\n");
    }
}

/// The longest content type and head a [`HeadEncoder`] keeps.
const CACHED_TYPE_MAX: usize = 64;
const CACHED_HEAD_MAX: usize = 192;

/// A core's response-head encoder: it holds the current Date, and the last
/// plain head it encoded, to copy whole while the next one is the same (a
/// 200 with keep-alive to an HTTP/1.1 request, framed by Content-Length,
/// with a content type and no other field). A server that answers the same
/// kind of request again and again (pipelined, or polled) then encodes that
/// head once per second, when the Date changes, not once per response. Any
/// other head is encoded as usual.
#[derive(Clone, Debug)]
pub struct HeadEncoder {
    date: HttpDate,
    /// `head[..head_len]` is the head for these, and `date`; `head_len ==
    /// 0`: nothing kept.
    length: u64,
    content_type: [u8; CACHED_TYPE_MAX],
    type_len: usize,
    head: [u8; CACHED_HEAD_MAX],
    head_len: usize,
}

impl HeadEncoder {
    pub fn new(date: HttpDate) -> Self {
        HeadEncoder {
            date,
            length: 0,
            content_type: [0; CACHED_TYPE_MAX],
            type_len: 0,
            head: [0; CACHED_HEAD_MAX],
            head_len: 0,
        }
    }

    /// The Date the heads get.
    pub fn date(&self) -> &HttpDate {
        &self.date
    }

    /// A new Date for the heads from now on (a head kept with the old one
    /// is dropped).
    pub fn set_date(&mut self, date: HttpDate) {
        if date != self.date {
            self.date = date;
            self.head_len = 0;
        }
    }

    /// Appends what `head.encode(self.date(), out)` appends.
    pub fn encode(&mut self, head: &ResponseHead<'_>, out: &mut BytesMut) {
        let (Some(content_type), Framing::Length(length), 200, true, false, true) = (
            head.content_type,
            head.framing,
            head.status.0,
            head.keep_alive,
            head.http10,
            head.extra.is_empty(),
        ) else {
            head.encode(&self.date, out);
            return;
        };
        if self.head_len != 0
            && self.length == length
            && same_bytes(&self.content_type[..self.type_len], content_type)
        {
            out.extend_from_slice(&self.head[..self.head_len]);
            return;
        }
        let start = out.len();
        head.encode(&self.date, out);
        let encoded = &out[start..];
        if content_type.len() <= CACHED_TYPE_MAX && encoded.len() <= CACHED_HEAD_MAX {
            self.length = length;
            self.content_type[..content_type.len()].copy_from_slice(content_type);
            self.type_len = content_type.len();
            self.head[..encoded.len()].copy_from_slice(encoded);
            self.head_len = encoded.len();
        } else {
            self.head_len = 0;
        }
    }
}

/// `a == b`, eight bytes at a time and without a call to `memcmp`, whose
/// call costs more than the compare at a content type's length.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().unwrap_or_default());
    // Whole words, then the last eight bytes (overlapping the last word).
    (0..n / 8).all(|k| word(a, 8 * k) == word(b, 8 * k)) && word(a, n - 8) == word(b, n - 8)
}

/// "HTTP/1.1 100 Continue\r\n\r\n".
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Appends one chunk: hex size, CRLF, data, CRLF. An empty `data` appends nothing
/// (an empty chunk would end the body).
pub fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    out.reserve(data.len() + 20);
    encode_chunk_head(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes (not 0: that is the last
/// chunk); the caller appends the data and then "\r\n".
pub fn encode_chunk_head(len: usize, out: &mut BytesMut) {
    put_hex(out, len as u64);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the end of the (empty) trailer section: "0\r\n\r\n".
pub fn encode_last_chunk(out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Appends `n` in decimal, formatted on the stack.
fn put_decimal(out: &mut BytesMut, n: u64) {
    let mut digits = [0u8; 20];
    out.extend_from_slice(decimal_digits(n, 1, &mut digits));
}

/// The decimal digits of `n`, zero-padded to at least `width` (at most
/// 20), written into `digits` without formatting machinery: the response
/// encoder and the application's page and export renderers share it.
pub fn decimal_digits(mut n: u64, width: usize, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - width.min(digits.len()));
    digits[start..i].fill(b'0');
    &digits[start..]
}

/// Appends `n` in lowercase hex, formatted on the stack.
fn put_hex(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date() -> HttpDate {
        HttpDate::from_unix_secs(784_111_777)
    }

    fn encode(head: &ResponseHead<'_>) -> String {
        let mut out = BytesMut::new();
        head.encode(&date(), &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    fn head(status: StatusCode, framing: Framing) -> ResponseHead<'static> {
        ResponseHead {
            status,
            framing,
            keep_alive: true,
            http10: false,
            content_type: None,
            extra: &[],
        }
    }

    #[test]
    fn reasons() {
        let all = [
            (StatusCode::CONTINUE, "Continue"),
            (StatusCode::OK, "OK"),
            (StatusCode::BAD_REQUEST, "Bad Request"),
            (StatusCode::NOT_FOUND, "Not Found"),
            (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
            (StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
            (StatusCode::PAYLOAD_TOO_LARGE, "Content Too Large"),
            (StatusCode::URI_TOO_LONG, "URI Too Long"),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type"),
            (StatusCode::UNPROCESSABLE, "Unprocessable Content"),
            (
                StatusCode::HEADERS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            (StatusCode::INTERNAL_ERROR, "Internal Server Error"),
            (StatusCode::NOT_IMPLEMENTED, "Not Implemented"),
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            (
                StatusCode::VERSION_NOT_SUPPORTED,
                "HTTP Version Not Supported",
            ),
        ];
        for (code, reason) in all {
            assert_eq!(code.reason(), reason);
        }
        assert_eq!(StatusCode(204).reason(), "No Content");
        assert_eq!(StatusCode(299).reason(), "Unknown");
    }

    #[test]
    fn encode_ok_with_length() {
        let h = ResponseHead {
            content_type: Some(b"text/plain; charset=utf-8"),
            ..head(StatusCode::OK, Framing::Length(13))
        };
        assert_eq!(
            encode(&h),
            "HTTP/1.1 200 OK\r\nServer: ringside\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 13\r\n\r\n"
        );
    }

    #[test]
    fn encode_close_chunked_and_extra() {
        let extra: &[(&str, &[u8])] = &[("Retry-After", b"5"), ("X-Request-Id", b"abc")];
        let h = ResponseHead {
            keep_alive: false,
            extra,
            ..head(StatusCode::SERVICE_UNAVAILABLE, Framing::Chunked)
        };
        assert_eq!(
            encode(&h),
            "HTTP/1.1 503 Service Unavailable\r\nServer: ringside\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\nRetry-After: 5\r\nX-Request-Id: abc\r\n\r\n"
        );
    }

    #[test]
    fn encode_http10_and_no_body() {
        let h = ResponseHead {
            http10: true,
            ..head(StatusCode(204), Framing::None)
        };
        assert_eq!(
            encode(&h),
            "HTTP/1.1 204 No Content\r\nServer: ringside\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        let h = ResponseHead {
            http10: true,
            keep_alive: false,
            ..head(StatusCode::OK, Framing::Length(0))
        };
        assert!(encode(&h).ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"));
        let h = head(StatusCode::OK, Framing::Length(u64::MAX));
        assert!(encode(&h).contains("\r\nContent-Length: 18446744073709551615\r\n"));
    }

    #[test]
    fn encode_appends() {
        let mut out = BytesMut::from(&b"previous"[..]);
        head(StatusCode::NOT_FOUND, Framing::Length(0)).encode(&date(), &mut out);
        assert!(out.starts_with(b"previousHTTP/1.1 404 Not Found\r\n"));
    }

    #[test]
    fn chunks() {
        let mut out = BytesMut::new();
        encode_chunk(b"", &mut out);
        assert!(out.is_empty());
        encode_chunk(b"hello", &mut out);
        encode_chunk(&[b'x'; 0x1ab], &mut out);
        encode_last_chunk(&mut out);
        let mut want = b"5\r\nhello\r\n1ab\r\n".to_vec();
        want.extend_from_slice(&[b'x'; 0x1ab]);
        want.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(&out[..], &want[..]);
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn integer_formatting() {
        for n in [0u64, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut out = BytesMut::new();
            put_decimal(&mut out, n);
            assert_eq!(&out[..], n.to_string().as_bytes());
            let mut out = BytesMut::new();
            put_hex(&mut out, n);
            assert_eq!(&out[..], format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn long_heads_are_encoded_whole() {
        // Past the encoder's first reservation (128 bytes plus the parts
        // it counts), every length gives the same bytes.
        for len in 150..300 {
            let value = vec![b'v'; len];
            let extra = [("X-Long", &value[..])];
            let got = encode(&ResponseHead {
                content_type: Some(b"text/plain"),
                extra: &extra,
                ..head(StatusCode::NOT_FOUND, Framing::Length(12_345))
            });
            let want = format!(
                "HTTP/1.1 404 Not Found\r\nServer: ringside\r\nDate: {}\r\n\
                 Content-Type: text/plain\r\nContent-Length: 12345\r\n\
                 X-Long: {}\r\n\r\n",
                date().as_str(),
                String::from_utf8(value).unwrap()
            );
            assert_eq!(got, want, "value of {len} bytes");
        }
    }

    #[test]
    fn decimal_digits_pad_to_the_width() {
        for (n, width, want) in [
            (5u64, 3, "005"),
            (12_345, 2, "12345"),
            (0, 1, "0"),
            (0, 20, "00000000000000000000"),
            (7, 30, "00000000000000000007"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            // A used buffer: padding must not depend on what it held.
            let mut digits = [b'x'; 20];
            assert_eq!(decimal_digits(n, width, &mut digits), want.as_bytes());
        }
    }

    mod head_encoder {
        use super::*;
        use proptest::prelude::*;

        /// One response to encode: a field each, drawn from a few values so
        /// that a sequence repeats heads (hits) and changes one part at a
        /// time (misses on that part alone).
        fn response() -> impl Strategy<Value = (u16, Option<usize>, u64, bool, bool, bool, u8)> {
            (
                prop::sample::select(vec![200u16, 200, 200, 404, 204]),
                prop::option::weighted(0.9, 0usize..TYPES.len()),
                prop::sample::select(vec![0u64, 13, 13, 14, 1_000_000_000_000]),
                prop::bool::weighted(0.9),
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.1),
                0u8..3,
            )
        }

        const TYPES: [&[u8]; 7] = [
            b"text/plain",
            b"text/plain; charset=utf-8",
            b"text/plaim",
            // The same length as the one above, differing in one byte
            // inside a word; then a type shorter than a word, and its twin.
            b"text/plaim; charset=utf-8",
            b"a/b",
            b"a/c",
            // Longer than the cache keeps: never cached, still encoded right.
            b"application/x-a-content-type-longer-than-the-sixty-four-bytes-kept",
        ];

        proptest! {
            /// Every head comes out byte for byte as `encode` writes it,
            /// whatever came before it.
            #[test]
            fn cached_heads_are_the_encoded_ones(
                responses in proptest::collection::vec(response(), 1..40),
            ) {
                let mut encoder = HeadEncoder::new(HttpDate::from_unix_secs(784_111_777));
                let extra: &[(&str, &[u8])] = &[("Retry-After", b"1")];
                for (status, ct, length, keep_alive, http10, with_extra, second) in responses {
                    let head = ResponseHead {
                        status: StatusCode(status),
                        framing: if length == 0 { Framing::Chunked } else { Framing::Length(length) },
                        keep_alive,
                        http10,
                        content_type: ct.map(|i| TYPES[i]),
                        extra: if with_extra { extra } else { &[] },
                    };
                    let date = HttpDate::from_unix_secs(784_111_777 + i64::from(second));
                    encoder.set_date(date);
                    prop_assert_eq!(encoder.date(), &date);
                    let (mut want, mut got) = (BytesMut::new(), BytesMut::from(&b"before"[..]));
                    head.encode(&date, &mut want);
                    encoder.encode(&head, &mut got);
                    prop_assert_eq!(&got[..6], b"before");
                    prop_assert_eq!(&got[6..], &want[..]);
                }
            }
        }

        #[test]
        fn a_repeated_head_is_copied_until_the_date_changes() {
            let mut encoder = HeadEncoder::new(date());
            let h = ResponseHead {
                content_type: Some(b"text/plain"),
                ..head(StatusCode::OK, Framing::Length(13))
            };
            let mut out = BytesMut::new();
            encoder.encode(&h, &mut out);
            assert_eq!(encoder.head_len, out.len());
            // A head it keeps is what it appends, even if `encode` would
            // now differ: proof that the copy, not an encode, ran.
            encoder.head[..4].copy_from_slice(b"XTTP");
            let mut again = BytesMut::new();
            encoder.encode(&h, &mut again);
            assert_eq!(&again[..4], b"XTTP");
            // The same Date keeps it; a new one drops it.
            encoder.set_date(date());
            assert_eq!(encoder.head_len, out.len());
            encoder.set_date(HttpDate::from_unix_secs(784_111_778));
            assert_eq!(encoder.head_len, 0);
        }
    }
}

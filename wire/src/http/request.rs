//! Request-head parsing on httparse, plus the RFC 9112 framing rules that
//! httparse leaves to its caller.

use std::mem::MaybeUninit;

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

/// Where a parsed head's parts are, without the bytes themselves: offsets
/// into the head (which starts at the request line and ends after the blank
/// line) and what the framing rules decided. u32 offsets keep it small (a
/// head longer than u32::MAX is refused with 431).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadMeta {
    len: u32,
    method: Method,
    version: Version,
    keep_alive: bool,
    expects_continue: bool,
    body_kind: BodyKind,
    /// The method is `bytes[..method_end]`.
    method_end: u32,
    target: (u32, u32),
    /// Empty only for an absolute-form target without a path, read as "/".
    path: (u32, u32),
    /// A start of 0 means no query (offset 0 is inside the method).
    query: (u32, u32),
    /// Offset of the first header line (just past the request line).
    headers_start: u32,
}

impl HeadMeta {
    /// Length of the head in bytes, CRLFCRLF included.
    ///
    /// Empty lines skipped before the request line are not part of the head:
    /// the parser consumes them as well, so it takes that many bytes more.
    #[allow(clippy::len_without_is_empty, reason = "a head is never empty")]
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn method(&self) -> Method {
        self.method
    }
    pub fn version(&self) -> Version {
        self.version
    }
    pub fn body_kind(&self) -> BodyKind {
        self.body_kind
    }
    /// See [`HeadView::keep_alive`].
    pub fn keep_alive(&self) -> bool {
        self.keep_alive
    }
    /// `Expect: 100-continue` was sent (case-insensitive), HTTP/1.1 only.
    pub fn expects_continue(&self) -> bool {
        self.expects_continue
    }
}

/// A parsed request head that owns its bytes (a `Bytes` split off the read
/// buffer, so no copy): it borrows nothing from the socket or the read
/// buffer and can be held across awaits. Its accessors are those of
/// [`HeadView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    // Starts at the request line (leading empty lines are dropped), ends
    // after the blank line; the meta's offsets index into it.
    bytes: Bytes,
    meta: HeadMeta,
}

impl RequestHead {
    /// The head's parts, read from its bytes.
    pub fn view(&self) -> HeadView<'_> {
        HeadView::new(&self.bytes, &self.meta)
    }
    pub fn meta(&self) -> &HeadMeta {
        &self.meta
    }
    pub fn method_str(&self) -> &str {
        self.view().method_str()
    }
    pub fn target(&self) -> &str {
        self.view().target()
    }
    pub fn path(&self) -> &str {
        self.view().path()
    }
    pub fn path_bytes(&self) -> &[u8] {
        self.view().path_bytes()
    }
    pub fn query(&self) -> Option<&str> {
        self.view().query()
    }
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.view().header(name)
    }
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.view().headers()
    }
    /// The raw head bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// The framing decisions and the length (`method()`, `keep_alive()`,
/// `len()`, ...) are the meta's; the text is read through `view()` or the
/// accessors above.
impl std::ops::Deref for RequestHead {
    type Target = HeadMeta;
    fn deref(&self) -> &HeadMeta {
        &self.meta
    }
}

/// A parsed head read through its bytes, wherever they are: owned by a
/// [`RequestHead`], or still at the front of the connection's read buffer
/// (see [`parse_head_in_place`]).
#[derive(Clone, Copy, Debug)]
pub struct HeadView<'a> {
    bytes: &'a [u8],
    meta: &'a HeadMeta,
}

impl<'a> HeadView<'a> {
    /// `bytes` must start with the head `meta` was parsed from (its first
    /// `meta.len()` bytes are used).
    pub fn new(bytes: &'a [u8], meta: &'a HeadMeta) -> Self {
        HeadView {
            bytes: &bytes[..meta.len()],
            meta,
        }
    }
    pub fn meta(&self) -> &'a HeadMeta {
        self.meta
    }
    pub fn method(&self) -> Method {
        self.meta.method
    }
    /// The method token as sent, e.g. "GET".
    pub fn method_str(&self) -> &'a str {
        self.str_at(0, self.meta.method_end)
    }
    pub fn version(&self) -> Version {
        self.meta.version
    }
    /// The request target as sent ("/orders?limit=5", or "*", or absolute-form).
    pub fn target(&self) -> &'a str {
        self.str_at(self.meta.target.0, self.meta.target.1)
    }
    /// The path of the target, without the query: "/orders". For
    /// absolute-form targets ("http://host/p?q") the path part, "/p".
    pub fn path(&self) -> &'a str {
        let (start, end) = self.meta.path;
        if start == end {
            return "/";
        }
        self.str_at(start, end)
    }
    /// The path as bytes, as `path` gives it but without a UTF-8 check:
    /// what a router matching against literals needs.
    pub fn path_bytes(&self) -> &'a [u8] {
        let (start, end) = self.meta.path;
        if start == end {
            return b"/";
        }
        &self.bytes[start as usize..end as usize]
    }
    /// The query without its '?', if any: "limit=5".
    pub fn query(&self) -> Option<&'a str> {
        let (start, end) = self.meta.query;
        (start != 0).then(|| self.str_at(start, end))
    }
    /// The value of the first header with this name (ASCII case-insensitive),
    /// with surrounding whitespace trimmed.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
    /// Every header, in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        HeaderLines {
            rest: &self.bytes[self.meta.headers_start as usize..],
        }
    }
    pub fn body_kind(&self) -> BodyKind {
        self.meta.body_kind
    }
    /// Whether the client asked to keep the connection open after this
    /// request: HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`. Connection is a comma-separated token list,
    /// case-insensitive.
    ///
    /// An HTTP/1.0 request with Transfer-Encoding is never kept alive: RFC 9112
    /// section 6.1 says its framing must be treated as faulty.
    pub fn keep_alive(&self) -> bool {
        self.meta.keep_alive
    }
    /// `Expect: 100-continue` was sent (case-insensitive), HTTP/1.1 only.
    pub fn expects_continue(&self) -> bool {
        self.meta.expects_continue
    }
    /// Length of the head in bytes, CRLFCRLF included.
    #[allow(clippy::len_without_is_empty, reason = "a head is never empty")]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// The raw head bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    fn str_at(&self, start: u32, end: u32) -> &'a str {
        // Validated as UTF-8 (ASCII tokens, or httparse's URI check) at parse time.
        std::str::from_utf8(&self.bytes[start as usize..end as usize]).unwrap_or("")
    }
}

/// Walks the header block of an already validated head, one line per field
/// (obs-fold is refused, so no field spans lines).
struct HeaderLines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for HeaderLines<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let lf = memchr::memchr(b'\n', self.rest)?;
        let mut line = &self.rest[..lf];
        if let [l @ .., b'\r'] = line {
            line = l;
        }
        if line.is_empty() {
            self.rest = &[];
            return None;
        }
        self.rest = &self.rest[lf + 1..];
        let colon = memchr::memchr(b':', line).unwrap_or(line.len());
        let name = std::str::from_utf8(&line[..colon]).unwrap_or("");
        let value = line.get(colon + 1..).unwrap_or(&[]);
        Some((name, trim_ows(value)))
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
        match self {
            HeadError::BadRequest(_) => 400,
            HeadError::UriTooLong => 414,
            HeadError::HeadersTooLarge => 431,
            HeadError::UnsupportedTransferCoding => 501,
            HeadError::VersionNotSupported => 505,
        }
    }
    /// A short human message for the response body.
    pub fn message(&self) -> &'static str {
        match self {
            HeadError::BadRequest(reason) => reason,
            HeadError::UriTooLong => "request line too long",
            HeadError::HeadersTooLarge => "request header fields too large",
            HeadError::UnsupportedTransferCoding => "transfer coding not implemented",
            HeadError::VersionNotSupported => "HTTP version not supported",
        }
    }
}

/// How many empty lines may precede a request line before we give up on the
/// client (RFC 9112 section 2.2 asks to ignore "at least one").
const MAX_EMPTY_LINES: usize = 8;

/// Header slots kept on the stack; larger `max_headers` settings fall back to
/// a heap buffer.
const STACK_HEADERS: usize = 128;

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
    Ok(parse_head_in_place(buf, limits)?.map(|meta| RequestHead {
        bytes: buf.split_to(meta.len()).freeze(),
        meta,
    }))
}

/// [`parse_head`] without taking the head out of `buf`: on `Ok(Some(meta))`
/// the leading empty lines are consumed and the head is `buf[..meta.len()]`,
/// read through a [`HeadView`]; the caller removes it (`advance`) once done
/// with it. Splitting the head off into its own `Bytes`, as `parse_head`
/// does, costs two atomic reference-count updates per request, which a
/// request without a body (nothing else to take from `buf` meanwhile)
/// does not need.
pub fn parse_head_in_place(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<HeadMeta>, HeadError> {
    let Some(start) = skip_empty_lines(buf)? else {
        return Ok(None);
    };
    let head = &buf[start..];

    // Split invariance: every outcome is decided by the earliest byte that
    // decides it. httparse reports syntax errors at the first bad byte, so it
    // is only shown the bytes before the first limit violation; a syntax
    // error there wins over the limit, and the limit wins over anything later.
    let l = limits.max_request_line;
    let h = limits.max_head_bytes;
    // The line may take l bytes plus CRLF; past that it is too long, which is
    // known once l + 2 bytes are in (the CR/LF ambiguity needs the last one).
    let line_overflow = l.checked_add(2).is_some_and(|l2| {
        head.len() >= l2
            && match memchr::memchr(b'\n', &head[..l2]) {
                None => true,
                Some(i) => i == l + 1 && head[l] != b'\r',
            }
    });
    let head_overflow = head.len() > h;
    let limit_err = match (line_overflow, head_overflow) {
        // Each is reported where it happened: byte l + 1 versus byte h.
        (true, true) if h < l + 1 => Some(HeadError::HeadersTooLarge),
        (true, _) => Some(HeadError::UriTooLong),
        (false, true) => Some(HeadError::HeadersTooLarge),
        (false, false) => None,
    };
    let mut view_len = head.len().min(h);
    if line_overflow {
        view_len = view_len.min(l + 1);
    }
    let view = &head[..view_len];

    // httparse starts over on every call; run it only when it can decide
    // something, so a head trickling in costs a memchr scan per call.
    if limit_err.is_none()
        && !ends_with_blank_line(view)
        && !worth_parsing(view, limits.max_headers)
    {
        return Ok(None);
    }
    match parse_view(view, limits.max_headers)? {
        Some(meta) => {
            if start > 0 {
                bytes::Buf::advance(buf, start);
            }
            Ok(Some(meta))
        }
        None => match limit_err {
            Some(e) => Err(e),
            None => Ok(None),
        },
    }
}

/// Returns the offset of the request line, or None if only (part of) empty
/// lines are there.
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, HeadError> {
    let mut pos = 0;
    for _ in 0..MAX_EMPTY_LINES {
        match buf.get(pos) {
            None => return Ok(None),
            Some(b'\n') => pos += 1,
            Some(b'\r') => match buf.get(pos + 1) {
                None => return Ok(None),
                Some(b'\n') => pos += 2,
                Some(_) => return Err(HeadError::BadRequest("invalid line ending")),
            },
            Some(_) => return Ok(Some(pos)),
        }
    }
    match buf.get(pos) {
        None => Ok(None),
        Some(b'\r' | b'\n') => Err(HeadError::BadRequest(
            "too many empty lines before request line",
        )),
        Some(_) => Ok(Some(pos)),
    }
}

/// A view ending with an empty line holds a complete first head (its end is
/// that line or an earlier one), so httparse reaches a verdict on it: the
/// usual case, a head or a pipelined batch that arrived whole, skips the
/// scan in `worth_parsing`.
fn ends_with_blank_line(view: &[u8]) -> bool {
    matches!(view, [.., b'\n', b'\r', b'\n'] | [.., b'\n', b'\n'])
}

/// Whether httparse could reach a verdict on `view` (which is within the
/// limits): the head is complete (a line starting with CR or LF follows an
/// LF), more header lines are there than allowed, or the first byte cannot
/// start a method (e.g. TLS sent to a plain port, answered at once). Each
/// condition stays true as bytes are appended, keeping split invariance.
fn worth_parsing(view: &[u8], max_headers: usize) -> bool {
    if view.first().is_some_and(|&b| !is_tchar(b)) {
        return true;
    }
    let too_many = max_headers.saturating_add(2);
    let mut lines = 0usize;
    for i in memchr::memchr_iter(b'\n', view) {
        lines += 1;
        if lines >= too_many || matches!(view.get(i + 1), Some(b'\r' | b'\n')) {
            return true;
        }
    }
    false
}

/// Ok(None): undecided on these bytes (partial head, or a version that may
/// still turn out to be HTTP/d.d).
fn parse_view(view: &[u8], max_headers: usize) -> Result<Option<HeadMeta>, HeadError> {
    // Each header line takes at least 3 bytes ("a:\n"), so a view can hold no
    // more than len / 3 of them: fewer slots than max_headers then suffice.
    let slots = max_headers.min(view.len() / 3 + 1);
    if slots <= STACK_HEADERS {
        let mut headers = [const { MaybeUninit::uninit() }; STACK_HEADERS];
        run_httparse(view, &mut headers[..slots])
    } else {
        let mut headers = Vec::new();
        headers.resize_with(slots, MaybeUninit::uninit);
        run_httparse(view, &mut headers)
    }
}

fn run_httparse<'b>(
    view: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Option<HeadMeta>, HeadError> {
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(view, slots) {
        Ok(httparse::Status::Complete(n)) => analyze(&req, view, n).map(Some),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::Version) => version_error(view),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::HeadersTooLarge),
        Err(httparse::Error::HeaderName) => Err(HeadError::BadRequest(header_name_error(view))),
        Err(httparse::Error::HeaderValue) => Err(HeadError::BadRequest("invalid header value")),
        Err(httparse::Error::NewLine) => Err(HeadError::BadRequest(newline_error(view))),
        Err(_) => Err(HeadError::BadRequest("malformed request line")),
    }
}

/// The version field: what follows the second SP of the request line (httparse
/// only reports a version error after a valid method and target, each
/// followed by one SP).
fn version_field(view: &[u8]) -> &[u8] {
    let after_method = memchr::memchr(b' ', view).map_or(view.len(), |i| i + 1);
    let rest = &view[after_method..];
    let after_target = memchr::memchr(b' ', rest).map_or(rest.len(), |i| i + 1);
    &rest[after_target..]
}

/// httparse refused the version. 505 if it is "HTTP/d.d" ending the line, 400
/// if it cannot be, Ok(None) while the bytes so far could still be either.
fn version_error(view: &[u8]) -> Result<Option<HeadMeta>, HeadError> {
    let v = version_field(view);
    let bad = HeadError::BadRequest("malformed request line");
    for (i, want) in b"HTTP/d.d".iter().enumerate() {
        let Some(&b) = v.get(i) else { return Ok(None) };
        let ok = match want {
            b'd' => b.is_ascii_digit(),
            _ => b == *want,
        };
        if !ok {
            return Err(bad);
        }
    }
    match v.get(8..) {
        Some([b'\n', ..] | [b'\r', b'\n', ..]) => Err(HeadError::VersionNotSupported),
        Some([] | [b'\r']) | None => Ok(None),
        Some(_) => Err(bad),
    }
}

/// Names the header-name error httparse found: the first header line whose
/// name is not a token followed by ':'. Looks at no byte past the one
/// httparse stopped at, so the message is split-invariant too.
fn header_name_error(view: &[u8]) -> &'static str {
    let Some(mut pos) = memchr::memchr(b'\n', view).map(|i| i + 1) else {
        return "invalid header name";
    };
    loop {
        let line = &view[pos..];
        if let Some(b' ' | b'\t') = line.first() {
            return "obsolete line folding";
        }
        let name_len = line.iter().take_while(|&&b| is_tchar(b)).count();
        match line.get(name_len) {
            Some(b':') if name_len > 0 => match memchr::memchr(b'\n', line) {
                Some(i) => pos += i + 1,
                None => return "invalid header name",
            },
            Some(b' ' | b'\t') if name_len > 0 => return "whitespace before colon",
            _ => return "invalid header name",
        }
    }
}

/// httparse wanted a line end and found something else: after the version
/// ("HTTP/1.1x") that is a malformed request line, elsewhere a CR without LF.
fn newline_error(view: &[u8]) -> &'static str {
    let line_end = memchr::memchr(b'\n', view).unwrap_or(view.len());
    let v = version_field(&view[..line_end]);
    match v.get(8) {
        Some(b'\r' | b'\n') | None => "invalid line ending",
        Some(_) => "malformed request line",
    }
}

/// Applies the RFC 9112 rules httparse leaves to its caller to a complete head.
fn analyze(
    req: &httparse::Request<'_, '_>,
    view: &[u8],
    len: usize,
) -> Result<HeadMeta, HeadError> {
    let (Some(method_str), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::BadRequest("malformed request line"));
    };
    if u32::try_from(len).is_err() {
        return Err(HeadError::HeadersTooLarge);
    }
    let version = if minor == 1 {
        Version::Http11
    } else {
        Version::Http10
    };

    let mut hosts = 0usize;
    let mut host_valid = true;
    let mut content_length: Option<u64> = None;
    let mut te = TeState::default();
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut expect_continue = false;
    // httparse strips the whitespace around each value.
    for hdr in req.headers.iter() {
        let name = hdr.name.as_bytes();
        // The names that matter have distinct lengths: one compare per field.
        match name.len() {
            4 if eq_lowercase(name, b"host") => {
                hosts += 1;
                host_valid &= super::host::is_valid_host(hdr.value);
            }
            14 if eq_lowercase(name, b"content-length") => {
                for item in hdr.value.split(|&b| b == b',') {
                    let n = parse_decimal(trim_ows(item))
                        .ok_or(HeadError::BadRequest("invalid Content-Length"))?;
                    if content_length.is_some_and(|prev| prev != n) {
                        return Err(HeadError::BadRequest("conflicting Content-Length"));
                    }
                    content_length = Some(n);
                }
            }
            17 if eq_lowercase(name, b"transfer-encoding") => te.add(hdr.value),
            10 if eq_lowercase(name, b"connection") => {
                let value = hdr.value;
                // Nearly always a single token: no split.
                if eq_lowercase(value, b"keep-alive") {
                    conn_keep_alive = true;
                } else {
                    for token in value.split(|&b| b == b',').map(trim_ows) {
                        conn_close |= token.eq_ignore_ascii_case(b"close");
                        conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    }
                }
            }
            6 if eq_lowercase(name, b"expect") => {
                expect_continue |= hdr.value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
    }

    let body_kind = if te.present {
        if content_length.is_some() {
            return Err(HeadError::BadRequest(
                "Content-Length with Transfer-Encoding",
            ));
        }
        te.check()?;
        BodyKind::Chunked
    } else {
        match content_length {
            None | Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };
    // RFC 9112 section 3.2: more than one Host is refused in any version.
    if hosts > 1 {
        return Err(HeadError::BadRequest("repeated Host"));
    }
    if hosts == 0 && version == Version::Http11 {
        return Err(HeadError::BadRequest("missing Host"));
    }
    if !host_valid {
        return Err(HeadError::BadRequest("invalid Host"));
    }

    let keep_alive = match version {
        Version::Http11 => !conn_close,
        // An HTTP/1.0 message with Transfer-Encoding has faulty framing and
        // must end the connection (RFC 9112 section 6.1).
        Version::Http10 => conn_keep_alive && !conn_close && !te.present,
    };

    // Offsets: the view starts with the method, then one SP, then the target.
    let method_end = method_str.len();
    let target_start = method_end + 1;
    let target_end = target_start + target.len();
    let (path, query) = split_target(target.as_bytes());
    let at = |i: usize| (target_start + i) as u32;
    // httparse took exactly "SP HTTP/1.x" then CRLF or LF after the target.
    let version_end = target_end + 1 + 8;
    let headers_start = version_end + if view[version_end] == b'\r' { 2 } else { 1 };
    debug_assert_eq!(
        Some(headers_start),
        memchr::memchr(b'\n', view).map(|i| i + 1)
    );

    Ok(HeadMeta {
        len: len as u32,
        method: method_from(method_str),
        version,
        keep_alive,
        expects_continue: expect_continue && version == Version::Http11,
        body_kind,
        method_end: method_end as u32,
        target: (target_start as u32, target_end as u32),
        path: (at(path.0), at(path.1)),
        query: query.map_or((0, 0), |(s, e)| (at(s), at(e))),
        headers_start: headers_start as u32,
    })
}

/// Transfer-Encoding codings over all its field lines, in order.
#[derive(Default)]
struct TeState {
    present: bool,
    chunked: usize,
    last_chunked: bool,
    other: bool,
    invalid: bool,
}

impl TeState {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        // Empty list elements are allowed and ignored (RFC 9110 section 5.6.1).
        for coding in value
            .split(|&b| b == b',')
            .map(trim_ows)
            .filter(|c| !c.is_empty())
        {
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
                self.last_chunked = true;
            } else {
                // A coding name, maybe with parameters: "gzip;q=1".
                let name = trim_ows(coding.split(|&b| b == b';').next().unwrap_or(&[]));
                if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                    self.invalid = true;
                } else {
                    self.other = true;
                }
                self.last_chunked = false;
            }
        }
    }

    fn check(&self) -> Result<(), HeadError> {
        if self.invalid {
            Err(HeadError::BadRequest("invalid Transfer-Encoding"))
        } else if self.other {
            Err(HeadError::UnsupportedTransferCoding)
        } else if self.chunked > 1 {
            Err(HeadError::BadRequest("chunked applied twice"))
        } else if !self.last_chunked {
            Err(HeadError::BadRequest(
                "Transfer-Encoding not ending in chunked",
            ))
        } else {
            Ok(())
        }
    }
}

/// 1*DIGIT into a u64; None if empty, not all digits, or overflowing.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// `s` equals `lower` ignoring ASCII case, for `lower` made of lowercase
/// letters, digits and '-' and `s` bytes httparse accepted in a field name or
/// value. Compares words with the case bit set: for those bytes only letters
/// differ by that bit alone (the other bytes that would match, 0x0D and
/// 0x10-0x19, are control characters httparse refuses). The length is a
/// constant, so each call unrolls into a few word compares (names are
/// compared on every field of every request).
fn eq_lowercase<const N: usize>(s: &[u8], lower: &[u8; N]) -> bool {
    debug_assert!(lower
        .iter()
        .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    let Ok(s) = <&[u8; N]>::try_from(s) else {
        return false;
    };
    let mut i = 0;
    while i + 8 <= N {
        let x = u64::from_le_bytes(word(s, i));
        if x | 0x2020_2020_2020_2020 != u64::from_le_bytes(word(lower, i)) {
            return false;
        }
        i += 8;
    }
    if i + 4 <= N {
        let x = u32::from_le_bytes(word(s, i));
        if x | 0x2020_2020 != u32::from_le_bytes(word(lower, i)) {
            return false;
        }
        i += 4;
    }
    s[i..].iter().zip(&lower[i..]).all(|(&x, &y)| x | 0x20 == y)
}

/// The `W` bytes of `s` from `at` (always in bounds: the callers' lengths
/// are constants).
fn word<const W: usize>(s: &[u8], at: usize) -> [u8; W] {
    s[at..at + W].try_into().unwrap_or([0; W])
}

/// The offset of the first `needle` in `hay`, eight bytes at a time (a
/// target is short: this beats a search call's setup and a byte loop).
#[inline(always)]
fn find_byte(hay: &[u8], needle: u8) -> Option<usize> {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let pattern = LOW * u64::from(needle);
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in chunks.by_ref() {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default()) ^ pattern;
        // The lowest flagged byte is exact (false flags only sit above a zero).
        let zero = x.wrapping_sub(LOW) & !x & HIGH;
        if zero != 0 {
            return Some(offset + (zero.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// (path range, query range) within the target, query without its '?'.
/// An empty path range stands for "/" (absolute-form without a path).
// Once per request, from one place: inlined, it costs no call (the other
// forms are out of line).
#[inline(always)]
fn split_target(t: &[u8]) -> ((usize, usize), Option<(usize, usize)>) {
    let path_start = match t.first() {
        Some(b'/') | None => 0,
        _ => path_start_of_other_form(t),
    };
    match find_byte(&t[path_start..], b'?') {
        Some(q) => (
            (path_start, path_start + q),
            Some((path_start + q + 1, t.len())),
        ),
        None => ((path_start, t.len()), None),
    }
}

/// Where the path starts in a target not in origin-form (rare: kept out of
/// line, so the common case inlines into the head's analysis).
#[cold]
#[inline(never)]
fn path_start_of_other_form(t: &[u8]) -> usize {
    match absolute_form_authority(t) {
        // The path starts at the first '/' or '?' after the authority.
        Some(auth) => t[auth..]
            .iter()
            .position(|&b| b == b'/' || b == b'?')
            .map_or(t.len(), |i| auth + i),
        // asterisk-form "*" and authority-form "host:port": no path split.
        None => 0,
    }
}

/// For "scheme://authority...", the offset of the authority.
fn absolute_form_authority(t: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', t)?;
    let scheme = &t[..colon];
    let scheme_ok = scheme.first().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    (scheme_ok && t[colon..].starts_with(b"://")).then_some(colon + 3)
}

#[inline(always)]
fn method_from(m: &str) -> Method {
    match m {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        "CONNECT" => Method::Connect,
        "TRACE" => Method::Trace,
        _ => Method::Other,
    }
}

/// tchar (RFC 9110 section 5.6.2), the same set httparse uses for names;
/// the body decoder checks chunk extensions with it too.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Strips optional whitespace (SP, HTAB) from both ends.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        parse_with(bytes, &Limits::default())
    }

    fn parse_with(bytes: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(bytes);
        let r = parse_head(&mut buf, limits);
        if !matches!(r, Ok(Some(_))) {
            assert_eq!(
                &buf[..],
                bytes,
                "buf must be untouched unless a head is returned"
            );
        }
        r
    }

    fn ok(bytes: &[u8]) -> RequestHead {
        parse(bytes).expect("valid head").expect("complete head")
    }

    fn bad(bytes: &[u8]) -> &'static str {
        match parse(bytes) {
            Err(HeadError::BadRequest(reason)) => reason,
            other => panic!(
                "expected 400 for {:?}, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /orders?limit=5 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        let h = ok(raw);
        assert_eq!(h.method(), Method::Get);
        assert_eq!(h.method_str(), "GET");
        assert_eq!(h.version(), Version::Http11);
        assert_eq!(h.target(), "/orders?limit=5");
        assert_eq!(h.path(), "/orders");
        assert_eq!(h.query(), Some("limit=5"));
        assert_eq!(h.body_kind(), BodyKind::Empty);
        assert!(h.keep_alive());
        assert!(!h.expects_continue());
        assert_eq!(h.len(), raw.len());
        assert_eq!(&h.as_bytes()[..], &raw[..]);
    }

    #[test]
    fn incomplete_returns_none_and_keeps_buffer() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        for n in 0..raw.len() {
            assert_eq!(parse(&raw[..n]), Ok(None), "prefix of {n} bytes");
        }
        assert!(parse(raw).unwrap().is_some());
    }

    #[test]
    fn methods() {
        for (name, m) in [
            ("GET", Method::Get),
            ("HEAD", Method::Head),
            ("POST", Method::Post),
            ("PUT", Method::Put),
            ("DELETE", Method::Delete),
            ("PATCH", Method::Patch),
            ("OPTIONS", Method::Options),
            ("CONNECT", Method::Connect),
            ("TRACE", Method::Trace),
            ("PURGE", Method::Other),
            ("get", Method::Other),
        ] {
            let h = ok(format!("{name} / HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(h.method(), m);
            assert_eq!(h.method_str(), name);
        }
    }

    #[test]
    fn pipelined_requests_in_one_buffer() {
        let mut buf = BytesMut::from(
            &b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d"[..],
        );
        let l = Limits::default();
        let a = parse_head(&mut buf, &l).unwrap().unwrap();
        assert_eq!(a.path(), "/a");
        let b = parse_head(&mut buf, &l).unwrap().unwrap();
        assert_eq!(b.path(), "/b");
        assert_eq!(b.body_kind(), BodyKind::Length(3));
        assert!(buf.starts_with(b"abc"));
        bytes::Buf::advance(&mut buf, 3);
        let c = parse_head(&mut buf, &l).unwrap().unwrap();
        assert_eq!(c.path(), "/c");
        assert_eq!(parse_head(&mut buf, &l), Ok(None));
        assert_eq!(&buf[..], b"GET /d");
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let raw = b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let mut buf = BytesMut::from(&raw[..]);
        let h = parse_head(&mut buf, &Limits::default()).unwrap().unwrap();
        assert!(h.as_bytes().starts_with(b"GET / "));
        assert_eq!(h.len() + 5, raw.len() - 4);
        assert_eq!(&buf[..], b"rest");
        // Only empty lines so far: wait, untouched.
        assert_eq!(parse(b"\r\n\r\n\r"), Ok(None));
        // Too many of them.
        assert_eq!(
            bad(&b"\r\n".repeat(MAX_EMPTY_LINES + 1)),
            "too many empty lines before request line"
        );
        assert!(
            ok(&[
                &b"\r\n".repeat(MAX_EMPTY_LINES)[..],
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            ]
            .concat())
            .len()
                > 0
        );
        assert_eq!(
            bad(b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "invalid line ending"
        );
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        let h = ok(b"GET /x HTTP/1.1\nHost: a\nX: y\n\n");
        assert_eq!(h.header("x"), Some(&b"y"[..]));
        assert_eq!(h.header("host"), Some(&b"a"[..]));
        assert_eq!(h.headers().count(), 2);
    }

    #[test]
    fn header_lookup() {
        let h = ok(b"GET / HTTP/1.1\r\nHost: a\r\nX-Thing:   spaced value \t \r\nx-thing: second\r\nEmpty:\r\n\r\n");
        assert_eq!(h.header("X-THING"), Some(&b"spaced value"[..]));
        assert_eq!(h.header("empty"), Some(&b""[..]));
        assert_eq!(h.header("missing"), None);
        let all: Vec<_> = h.headers().collect();
        assert_eq!(
            all,
            vec![
                ("Host", &b"a"[..]),
                ("X-Thing", &b"spaced value"[..]),
                ("x-thing", &b"second"[..]),
                ("Empty", &b""[..]),
            ]
        );
    }

    #[test]
    fn path_and_query_forms() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("/", "/", None),
            ("/orders", "/orders", None),
            ("/orders?limit=5&x=1", "/orders", Some("limit=5&x=1")),
            ("/p?", "/p", Some("")),
            ("/p?a?b", "/p", Some("a?b")),
            ("http://example.com/p?q", "/p", Some("q")),
            ("http://example.com", "/", None),
            ("https://example.com:8443?x=1", "/", Some("x=1")),
            ("http://user@host/a/b", "/a/b", None),
            ("*", "*", None),
        ];
        for (target, path, query) in cases {
            let h = ok(format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            assert_eq!(h.target(), *target);
            assert_eq!(h.path(), *path, "path of {target}");
            assert_eq!(h.query(), *query, "query of {target}");
        }
        let h = ok(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        assert_eq!(h.path(), "example.com:443");
        assert_eq!(h.query(), None);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| ok(raw).keep_alive();
        assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, CLOSE\r\n\r\n"
        ));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: te\r\nConnection: close\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(ka(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: foo ,Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
        // HTTP/1.0 with Transfer-Encoding: framing is faulty, close after it.
        assert!(!ka(
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert_eq!(ok(b"GET / HTTP/1.0\r\n\r\n").version(), Version::Http10);
    }

    #[test]
    fn expect_continue() {
        assert!(ok(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
        )
        .expects_continue());
        assert!(
            !ok(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue-x\r\n\r\n").expects_continue()
        );
        assert!(!ok(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expects_continue());
        assert!(!ok(b"POST / HTTP/1.1\r\nHost: a\r\n\r\n").expects_continue());
    }

    #[test]
    fn host_rules() {
        assert_eq!(bad(b"GET / HTTP/1.1\r\n\r\n"), "missing Host");
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            "repeated Host"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            "repeated Host"
        );
        assert!(parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        for bad_host in ["exa mple", "a/b", "x@y", "[::1", "h:99999999"] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {bad_host}\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), "invalid Host", "{bad_host}");
        }
        assert!(parse(b"GET / HTTP/1.1\r\nHost: \r\n\r\n")
            .unwrap()
            .is_some());
        assert!(parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n")
            .unwrap()
            .is_some());
    }

    #[test]
    fn content_length() {
        let kind = |raw: &[u8]| ok(raw).body_kind();
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n"),
            BodyKind::Length(42)
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            BodyKind::Empty
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n"),
            BodyKind::Length(5)
        );
        assert_eq!(
            kind(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            BodyKind::Length(u64::MAX)
        );
        for v in [
            "",
            "-1",
            "+5",
            "5a",
            "0x10",
            "1 2",
            "5,",
            "18446744073709551616",
            " , ",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(bad(raw.as_bytes()), "invalid Content-Length", "value {v:?}");
        }
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n"),
            "conflicting Content-Length"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"),
            "conflicting Content-Length"
        );
    }

    #[test]
    fn transfer_encoding() {
        let te = |v: &str| {
            parse(
                format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n").as_bytes(),
            )
        };
        for v in ["chunked", "Chunked", "CHUNKED", " chunked ", ", chunked"] {
            assert_eq!(
                te(v).unwrap().unwrap().body_kind(),
                BodyKind::Chunked,
                "{v:?}"
            );
        }
        let two = ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(two.body_kind(), BodyKind::Chunked);
        for v in [
            "gzip",
            "gzip, chunked",
            "identity",
            "chunked, gzip",
            "x-custom",
            "deflate;q=1",
        ] {
            assert_eq!(te(v), Err(HeadError::UnsupportedTransferCoding), "{v:?}");
        }
        assert_eq!(
            te("chunked, chunked"),
            Err(HeadError::BadRequest("chunked applied twice"))
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(HeadError::BadRequest("chunked applied twice"))
        );
        assert_eq!(
            te(""),
            Err(HeadError::BadRequest(
                "Transfer-Encoding not ending in chunked"
            ))
        );
        assert_eq!(
            te("chunked/1"),
            Err(HeadError::BadRequest("invalid Transfer-Encoding"))
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            "Content-Length with Transfer-Encoding"
        );
        assert_eq!(
            bad(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"),
            "Content-Length with Transfer-Encoding"
        );
    }

    #[test]
    fn header_syntax_errors() {
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            "whitespace before colon"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n"),
            "whitespace before colon"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  folded\r\n\r\n"),
            "obsolete line folding"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tfolded\r\n\r\n"),
            "obsolete line folding"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
            "obsolete line folding"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n"),
            "invalid header name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
            "invalid header name"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"),
            "invalid header name"
        );
        for ctl in [0u8, 1, 0x0b, 0x0c, 0x1f, 0x7f] {
            let raw = [
                &b"GET / HTTP/1.1\r\nHost: a\r\nX: a"[..],
                &[ctl],
                b"b\r\n\r\n",
            ]
            .concat();
            assert_eq!(bad(&raw), "invalid header value", "control byte {ctl:#x}");
        }
        // HTAB and obs-text are fine in values.
        assert_eq!(
            ok(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb\xff\r\n\r\n").header("x"),
            Some(&b"a\tb\xff"[..])
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"),
            "invalid header value"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\r\nHost: a\r\n\rX"),
            "invalid line ending"
        );
    }

    #[test]
    fn request_line_errors() {
        assert_eq!(
            bad(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(bad(b"GET /\r\nHost: a\r\n\r\n"), "malformed request line");
        assert_eq!(
            bad(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET / http/1.1\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET / HTTP/1\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET / HTTP/2.0x\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
            "malformed request line"
        );
        assert_eq!(
            bad(b"GET / HTTP/1.1\rX\nHost: a\r\n\r\n"),
            "invalid line ending"
        );
        // Garbage (e.g. a TLS hello) is refused without waiting for a line end.
        assert_eq!(bad(b"\x16\x03\x01\x02\x00"), "malformed request line");
    }

    #[test]
    fn version_not_supported() {
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            let raw = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(
                parse(raw.as_bytes()),
                Err(HeadError::VersionNotSupported),
                "{v}"
            );
            assert_eq!(HeadError::VersionNotSupported.status(), 505);
        }
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::VersionNotSupported)
        );
        assert_eq!(
            parse(b"GET / HTTP/2.0\nHost: a\n\n"),
            Err(HeadError::VersionNotSupported)
        );
    }

    #[test]
    fn uri_too_long() {
        let limits = Limits {
            max_request_line: 20,
            ..Limits::default()
        };
        // Exactly at the limit: 20 bytes of line, then CRLF.
        let line = format!("GET /{} HTTP/1.1", "a".repeat(20 - 14));
        assert_eq!(line.len(), 20);
        let raw = format!("{line}\r\nHost: a\r\n\r\n");
        assert!(parse_with(raw.as_bytes(), &limits).unwrap().is_some());
        let raw = format!("{line}\nHost: a\r\n\r\n");
        assert!(parse_with(raw.as_bytes(), &limits).unwrap().is_some());
        // One byte more.
        let line = format!("GET /{} HTTP/1.1", "a".repeat(21 - 14));
        let raw = format!("{line}\r\nHost: a\r\n\r\n");
        assert_eq!(
            parse_with(raw.as_bytes(), &limits),
            Err(HeadError::UriTooLong)
        );
        let raw = format!("{line}\nHost: a\r\n\r\n");
        assert_eq!(
            parse_with(raw.as_bytes(), &limits),
            Err(HeadError::UriTooLong)
        );
        // Detected before the line is complete.
        let partial = format!("GET /{}", "a".repeat(30));
        assert_eq!(
            parse_with(partial.as_bytes(), &limits),
            Err(HeadError::UriTooLong)
        );
        assert_eq!(parse_with(&partial.as_bytes()[..21], &limits), Ok(None));
        assert_eq!(
            parse_with(&partial.as_bytes()[..22], &limits),
            Err(HeadError::UriTooLong)
        );
        // Default limit: an 8 KiB target.
        let raw = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(9000));
        assert_eq!(parse(raw.as_bytes()), Err(HeadError::UriTooLong));
        assert_eq!(HeadError::UriTooLong.status(), 414);
        // An earlier syntax error wins over the length.
        let raw = format!("G{{T /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(bad(raw.as_bytes()), "malformed request line");
    }

    #[test]
    fn headers_too_large_by_bytes() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        let exact = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(64 - 32)
        );
        assert_eq!(exact.len(), 64);
        assert!(parse_with(exact.as_bytes(), &limits).unwrap().is_some());
        let over = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(64 - 31)
        );
        assert_eq!(
            parse_with(over.as_bytes(), &limits),
            Err(HeadError::HeadersTooLarge)
        );
        // Detected before the head is complete.
        let partial = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}", "b".repeat(100));
        assert_eq!(parse_with(&partial.as_bytes()[..64], &limits), Ok(None));
        assert_eq!(
            parse_with(&partial.as_bytes()[..65], &limits),
            Err(HeadError::HeadersTooLarge)
        );
        // Default limit.
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "b".repeat(17000)
        );
        assert_eq!(parse(raw.as_bytes()), Err(HeadError::HeadersTooLarge));
        assert_eq!(HeadError::HeadersTooLarge.status(), 431);
        // A syntax error before the limit wins.
        let raw = format!("GET / HTTP/1.1\r\nHost : a\r\nX: {}", "b".repeat(100));
        assert_eq!(bad_with(raw.as_bytes(), &limits), "whitespace before colon");
    }

    fn bad_with(bytes: &[u8], limits: &Limits) -> &'static str {
        match parse_with(bytes, limits) {
            Err(HeadError::BadRequest(reason)) => reason,
            other => panic!("expected 400, got {other:?}"),
        }
    }

    #[test]
    fn headers_too_large_by_count() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let three = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_with(three, &limits)
                .unwrap()
                .unwrap()
                .headers()
                .count(),
            3
        );
        let four = b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(parse_with(four, &limits), Err(HeadError::HeadersTooLarge));
        // Detected before the head is complete.
        assert_eq!(
            parse_with(&four[..four.len() - 2], &limits),
            Err(HeadError::HeadersTooLarge)
        );
        // Default: 64.
        let many: String = (0..65).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(raw.as_bytes()), Err(HeadError::HeadersTooLarge));
        let fits: String = (0..63).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{fits}\r\n");
        assert_eq!(ok(raw.as_bytes()).headers().count(), 64);
    }

    #[test]
    fn more_headers_than_the_stack_holds() {
        let limits = Limits {
            max_headers: 300,
            ..Limits::default()
        };
        let many: String = (0..299).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        let h = parse_with(raw.as_bytes(), &limits).unwrap().unwrap();
        assert_eq!(h.headers().count(), 300);
        assert_eq!(h.header("x-298"), Some(&b"v"[..]));
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\nOne: more\r\n{many}\r\n");
        assert_eq!(
            parse_with(raw.as_bytes(), &limits),
            Err(HeadError::HeadersTooLarge)
        );
    }

    #[test]
    fn error_statuses_and_messages() {
        assert_eq!(HeadError::BadRequest("x").status(), 400);
        assert_eq!(
            HeadError::BadRequest("missing Host").message(),
            "missing Host"
        );
        assert_eq!(HeadError::UnsupportedTransferCoding.status(), 501);
        for e in [
            HeadError::UriTooLong,
            HeadError::HeadersTooLarge,
            HeadError::UnsupportedTransferCoding,
            HeadError::VersionNotSupported,
        ] {
            assert!(!e.message().is_empty());
        }
    }

    #[test]
    fn head_stays_small() {
        // It is held across awaits in every connection task.
        assert!(
            std::mem::size_of::<RequestHead>() <= 96,
            "{}",
            std::mem::size_of::<RequestHead>()
        );
    }

    mod word_helpers {
        use super::super::{eq_lowercase, find_byte};
        use proptest::prelude::*;

        /// The bytes httparse lets through in names and values, weighted
        /// toward the ones that differ from a target by the case bit alone.
        fn field_byte() -> impl Strategy<Value = u8> {
            prop_oneof![
                prop::sample::select(b"kKeEpP-aAlLiIvVcCoOsS01hHtTnNx@[^~`{ \t".to_vec()),
                (0x20u8..=0xff).prop_filter("DEL", |&b| b != 0x7f),
            ]
        }

        proptest! {
            #[test]
            fn eq_lowercase_is_eq_ignore_ascii_case(
                s in proptest::collection::vec(field_byte(), 0..20),
                target in prop::sample::select(vec![
                    &b"host"[..], b"keep-alive", b"content-length",
                    b"transfer-encoding", b"connection", b"expect", b"100-continue",
                ]),
                copy in any::<bool>(),
            ) {
                // Half the time, a case-mangled copy of the target itself.
                let s = if copy {
                    target.iter().zip(s.iter().chain(std::iter::repeat(&b'a')))
                        .map(|(&t, &m)| if m & 1 == 1 { t.to_ascii_uppercase() } else { t })
                        .collect()
                } else {
                    s
                };
                let eq = match target {
                    b"host" => eq_lowercase(&s, b"host"),
                    b"keep-alive" => eq_lowercase(&s, b"keep-alive"),
                    b"content-length" => eq_lowercase(&s, b"content-length"),
                    b"transfer-encoding" => eq_lowercase(&s, b"transfer-encoding"),
                    b"connection" => eq_lowercase(&s, b"connection"),
                    b"expect" => eq_lowercase(&s, b"expect"),
                    _ => eq_lowercase(&s, b"100-continue"),
                };
                prop_assert_eq!(eq, s.eq_ignore_ascii_case(target));
            }

            #[test]
            fn find_byte_is_position(
                hay in proptest::collection::vec(prop::sample::select(b"/?a\xbf\x3e\x40".to_vec()), 0..40),
            ) {
                prop_assert_eq!(find_byte(&hay, b'?'), hay.iter().position(|&b| b == b'?'));
            }
        }
    }
}

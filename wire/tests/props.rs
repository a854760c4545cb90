//! Property tests of the HTTP codec: results must not depend on how the input
//! was split across reads, and encoded responses must parse back.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::Index;
use ringside_wire::http::response::{encode_chunk, encode_last_chunk};
use ringside_wire::http::{
    parse_head, parse_head_in_place, BodyDecoder, BodyError, BodyEvent, BodyKind, Framing,
    HeadError, HeadView, HttpDate, Limits, RequestHead, ResponseHead, StatusCode, Version,
};

// ---------------------------------------------------------------- heads

#[derive(Clone, Debug)]
enum FramingSpec {
    None,
    Length(u64),
    LengthTwice(u64),
    Chunked,
    Conflicting,
    Both,
    Gzip,
}

#[derive(Clone, Debug)]
struct HeadSpec {
    leading: usize,
    method: &'static str,
    target: String,
    version: &'static str,
    http10: bool,
    hosts: usize,
    framing: FramingSpec,
    connection: Option<&'static str>,
    extra: Vec<(String, String)>,
    lf_only: bool,
}

impl HeadSpec {
    fn render(&self) -> Vec<u8> {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let mut s = eol.repeat(self.leading);
        s += &format!("{} {} {}{eol}", self.method, self.target, self.version);
        for i in 0..self.hosts {
            s += &format!("Host: h{i}.example{eol}");
        }
        match &self.framing {
            FramingSpec::None => {}
            FramingSpec::Length(n) => s += &format!("Content-Length: {n}{eol}"),
            FramingSpec::LengthTwice(n) => {
                s += &format!("Content-Length: {n}{eol}content-length: {n}, {n}{eol}")
            }
            FramingSpec::Chunked => s += &format!("Transfer-Encoding: chunked{eol}"),
            FramingSpec::Conflicting => {
                s += &format!("Content-Length: 1{eol}Content-Length: 2{eol}")
            }
            FramingSpec::Both => {
                s += &format!("Content-Length: 1{eol}Transfer-Encoding: chunked{eol}")
            }
            FramingSpec::Gzip => s += &format!("Transfer-Encoding: gzip, chunked{eol}"),
        }
        if let Some(c) = self.connection {
            s += &format!("Connection: {c}{eol}");
        }
        for (n, v) in &self.extra {
            s += &format!("{n}: {v}{eol}");
        }
        s += eol;
        s.into_bytes()
    }

    fn is_valid(&self) -> bool {
        let host_ok = self.hosts == 1 || (self.hosts == 0 && self.http10);
        let framing_ok = matches!(
            self.framing,
            FramingSpec::None
                | FramingSpec::Length(_)
                | FramingSpec::LengthTwice(_)
                | FramingSpec::Chunked
        );
        let version_ok = matches!(self.version, "HTTP/1.0" | "HTTP/1.1");
        host_ok && framing_ok && version_ok && self.leading <= 8
    }

    /// The same head with whatever made it invalid replaced.
    fn made_valid(mut self) -> HeadSpec {
        if !matches!(self.version, "HTTP/1.0" | "HTTP/1.1") {
            self.version = "HTTP/1.1";
            self.http10 = false;
        }
        if !(self.hosts == 1 || (self.hosts == 0 && self.http10)) {
            self.hosts = 1;
        }
        if matches!(
            self.framing,
            FramingSpec::Conflicting | FramingSpec::Both | FramingSpec::Gzip
        ) {
            self.framing = FramingSpec::Chunked;
        }
        self.leading = self.leading.min(8);
        self
    }

    fn header_count(&self) -> usize {
        let framing = match self.framing {
            FramingSpec::None => 0,
            FramingSpec::Length(_) | FramingSpec::Chunked | FramingSpec::Gzip => 1,
            _ => 2,
        };
        self.hosts + framing + usize::from(self.connection.is_some()) + self.extra.len()
    }
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "/[a-zA-Z0-9/._~%-]{0,24}(\\?[a-z0-9=&?/]{0,12})?",
        1 => Just("*".to_owned()),
        1 => "https?://[a-z]{1,8}(:[0-9]{1,4})?(/[a-z/]{0,8})?(\\?[a-z=]{0,6})?",
    ]
}

fn head_spec() -> impl Strategy<Value = HeadSpec> {
    (
        prop_oneof![12 => Just(0usize), 2 => 1usize..4, 1 => Just(9usize)],
        prop::sample::select(vec!["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PURGE"]),
        target(),
        prop_oneof![
            8 => prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
            1 => prop::sample::select(vec!["HTTP/2.0", "HTTP/0.9", "HTTP/1.2", "HTTP/1.10", "http/1.1", "HTTP/2", "HTTP/1.1 "]),
        ],
        prop_oneof![8 => Just(1usize), 1 => Just(0usize), 1 => Just(2usize)],
        prop_oneof![
            4 => Just(FramingSpec::None),
            2 => (0u64..100_000).prop_map(FramingSpec::Length),
            1 => (1u64..1000).prop_map(FramingSpec::LengthTwice),
            2 => Just(FramingSpec::Chunked),
            1 => Just(FramingSpec::Conflicting),
            1 => Just(FramingSpec::Both),
            1 => Just(FramingSpec::Gzip),
        ],
        prop::option::of(prop::sample::select(vec!["close", "keep-alive", "Upgrade, Close", "te"])),
        prop::collection::vec(("X-[A-Za-z0-9-]{1,10}", "[ -~]{0,24}"), 0..6),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(leading, method, target, version, hosts, framing, connection, extra, lf_only)| HeadSpec {
                leading,
                method,
                target,
                version,
                http10: version == "HTTP/1.0",
                hosts,
                framing,
                connection,
                extra,
                lf_only,
            },
        )
}

/// A byte edit that likely breaks a head somewhere.
#[derive(Clone, Debug)]
enum Mutation {
    None,
    Insert(Index, u8),
    Replace(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        prop::sample::select(vec![
            b' ', b'\t', b'\r', b'\n', b':', b'/', b',', 0, 0x7f, 0xff, b'a', b'0'
        ]),
        any::<u8>(),
    ];
    prop_oneof![
        3 => Just(Mutation::None),
        2 => (any::<Index>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => (any::<Index>(), byte).prop_map(|(i, b)| Mutation::Replace(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn apply(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    match m {
        Mutation::None => {}
        Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
        Mutation::Replace(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Delete(i) => {
            bytes.remove(i.index(bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
    bytes
}

fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        1 => Just(Limits::default()),
        1 => (4usize..100, 8usize..400, 0usize..8).prop_map(|(l, h, n)| Limits {
            max_request_line: l,
            max_head_bytes: h,
            max_headers: n,
        }),
    ]
}

/// The input: a (maybe mutated) head followed by more heads or noise.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let follower = prop_oneof![
        (head_spec(), mutation()).prop_map(|(h, m)| apply(h.render(), &m)),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (
        (head_spec(), mutation()),
        prop::collection::vec(follower, 0..3),
    )
        .prop_map(|((h, m), rest)| {
            let mut out = apply(h.render(), &m);
            for r in rest {
                out.extend_from_slice(&r);
            }
            out
        })
}

/// Bytes from a small alphabet, often after the start of a valid head.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            &b""[..],
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
            b"POST /x HTTP/1.0\n",
        ]),
        prop::collection::vec(
            prop::sample::select(b"GET /a?HTP1.02 \r\n\t:Hhost,ck-".to_vec()),
            0..120,
        ),
    )
        .prop_map(|(prefix, tail)| [prefix, &tail[..]].concat())
}

type Drained = (Vec<RequestHead>, Result<(), HeadError>, Vec<u8>);

/// Parses heads off `data` all at once until it stops with None or an error.
fn drain_once(data: &[u8], limits: &Limits) -> Drained {
    let mut buf = BytesMut::from(data);
    let mut heads = Vec::new();
    loop {
        match parse_head(&mut buf, limits) {
            Ok(Some(h)) => heads.push(h),
            Ok(None) => return (heads, Ok(()), buf.to_vec()),
            Err(e) => return (heads, Err(e), buf.to_vec()),
        }
    }
}

/// Parses heads off `data` in place, as the connection does for a request
/// without a body: each head is read where it lies, then dropped from the
/// buffer. Gives each head's bytes and what its view reads from them.
fn drain_in_place(
    data: &[u8],
    limits: &Limits,
) -> (Vec<ViewParts>, Result<(), HeadError>, Vec<u8>) {
    let mut buf = BytesMut::from(data);
    let mut heads = Vec::new();
    loop {
        match parse_head_in_place(&mut buf, limits) {
            Ok(Some(meta)) => {
                heads.push(ViewParts::of(HeadView::new(&buf, &meta)));
                bytes::Buf::advance(&mut buf, meta.len());
            }
            Ok(None) => return (heads, Ok(()), buf.to_vec()),
            Err(e) => return (heads, Err(e), buf.to_vec()),
        }
    }
}

/// What a handler can read of a head, copied out of it.
#[derive(Debug, PartialEq)]
struct ViewParts {
    bytes: Vec<u8>,
    method: String,
    target: String,
    path: Vec<u8>,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    body_kind: BodyKind,
    keep_alive: bool,
    expects_continue: bool,
}

impl ViewParts {
    fn of(v: HeadView<'_>) -> Self {
        ViewParts {
            bytes: v.as_bytes().to_vec(),
            method: v.method_str().to_owned(),
            target: v.target().to_owned(),
            path: v.path_bytes().to_vec(),
            query: v.query().map(str::to_owned),
            headers: v
                .headers()
                .map(|(n, v)| (n.to_owned(), v.to_vec()))
                .collect(),
            body_kind: v.body_kind(),
            keep_alive: v.keep_alive(),
            expects_continue: v.expects_continue(),
        }
    }
}

/// The same, with `data` arriving in pieces cut at `cuts`, parsing after
/// every append. After an error the rest is appended unparsed.
fn drain_split(data: &[u8], cuts: &[Index], limits: &Limits) -> Drained {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    points.push(data.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut heads = Vec::new();
    let mut pos = 0;
    for p in points {
        buf.extend_from_slice(&data[pos..p]);
        pos = p;
        loop {
            let before = buf.clone();
            match parse_head(&mut buf, limits) {
                Ok(Some(h)) => heads.push(h),
                Ok(None) => {
                    assert_eq!(buf, before, "None must leave the buffer untouched");
                    break;
                }
                Err(e) => {
                    assert_eq!(buf, before, "Err must leave the buffer untouched");
                    buf.extend_from_slice(&data[pos..]);
                    return (heads, Err(e), buf.to_vec());
                }
            }
        }
    }
    (heads, Ok(()), buf.to_vec())
}

// ---------------------------------------------------------------- chunked

fn extension() -> impl Strategy<Value = String> {
    prop_oneof![
        ";[a-z]{1,6}",
        ";[a-z]{1,4}=[a-z0-9]{0,6}",
        "[ \t]{1,2};[ \t]?[a-z]{1,4}[ \t]?=[ \t]?\"[ a-z;=]{0,8}\"",
        "(;[a-z]{1,3}(=[a-z]{1,3})?){2,4}",
    ]
}

#[derive(Clone, Debug)]
struct ChunkedSpec {
    body: Vec<u8>,
    sizes: Vec<usize>,
    exts: Vec<Option<String>>,
    last_ext: Option<String>,
    trailers: Vec<(String, String)>,
    follower: Vec<u8>,
}

fn chunked_spec() -> impl Strategy<Value = ChunkedSpec> {
    (
        prop::collection::vec(any::<u8>(), 0..800),
        prop::collection::vec(prop_oneof![1usize..8, 1usize..300], 1..8),
        prop::collection::vec(prop::option::of(extension()), 1..6),
        prop::option::of(extension()),
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,8}", "[ -~]{0,16}"), 0..3),
        prop::collection::vec(any::<u8>(), 0..24),
    )
        .prop_map(
            |(body, sizes, exts, last_ext, trailers, follower)| ChunkedSpec {
                body,
                sizes,
                exts,
                last_ext,
                trailers,
                follower,
            },
        )
}

impl ChunkedSpec {
    fn encode(&self) -> Vec<u8> {
        let mut out = BytesMut::new();
        let mut rest = &self.body[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = self.sizes[i % self.sizes.len()].min(rest.len());
            let mut chunk = BytesMut::new();
            encode_chunk(&rest[..n], &mut chunk);
            if let Some(ext) = &self.exts[i % self.exts.len()] {
                // Put the extension between the size and its CRLF.
                let crlf = chunk.iter().position(|&b| b == b'\r').unwrap();
                let mut with = chunk[..crlf].to_vec();
                with.extend_from_slice(ext.as_bytes());
                with.extend_from_slice(&chunk[crlf..]);
                chunk = BytesMut::from(&with[..]);
            }
            out.extend_from_slice(&chunk);
            rest = &rest[n..];
            i += 1;
        }
        if self.last_ext.is_none() && self.trailers.is_empty() {
            encode_last_chunk(&mut out);
        } else {
            out.extend_from_slice(b"0");
            out.extend_from_slice(self.last_ext.as_deref().unwrap_or("").as_bytes());
            out.extend_from_slice(b"\r\n");
            for (n, v) in &self.trailers {
                out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&self.follower);
        out.to_vec()
    }
}

// ---------------------------------------------------------------- responses

#[derive(Clone, Debug)]
struct ResponseSpec {
    status: u16,
    framing: Framing,
    keep_alive: bool,
    http10: bool,
    content_type: Option<String>,
    extra: Vec<(String, String)>,
}

fn response_spec() -> impl Strategy<Value = ResponseSpec> {
    (
        prop_oneof![
            prop::sample::select(vec![
                100u16, 200, 204, 304, 400, 404, 405, 408, 413, 414, 422, 431, 500, 501, 503, 505
            ]),
            100u16..1000,
        ],
        prop_oneof![
            any::<u64>().prop_map(Framing::Length),
            (0u64..10_000).prop_map(Framing::Length),
            Just(Framing::Chunked),
            Just(Framing::None),
        ],
        any::<bool>(),
        any::<bool>(),
        prop::option::of("[a-z]{1,10}/[a-z+.-]{1,10}(; charset=utf-8)?"),
        prop::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[!-~]([ -~]{0,20}[!-~])?"), 0..4),
    )
        .prop_map(
            |(status, framing, keep_alive, http10, content_type, extra)| ResponseSpec {
                status,
                framing,
                keep_alive,
                http10,
                content_type,
                extra,
            },
        )
}

fn find<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

/// 512 cases unless PROPTEST_CASES says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// (1) parse_head gives the same heads, error and leftover bytes however
    /// the input is split.
    #[test]
    fn parse_head_is_split_invariant(
        data in stream(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        limits in limits(),
    ) {
        let once = drain_once(&data, &limits);
        let split = drain_split(&data, &cuts, &limits);
        prop_assert_eq!(&once, &split, "input {:?}", String::from_utf8_lossy(&data));
        // Every byte is accounted for: skipped empty lines, heads, leftover.
        let head_bytes: usize = once.0.iter().map(|h| h.len()).sum();
        prop_assert!(head_bytes + once.2.len() <= data.len());
        for h in &once.0 {
            prop_assert!(h.len() <= limits.max_head_bytes);
            prop_assert!(h.headers().count() <= limits.max_headers);
        }
    }

    /// Parsing in place (the connection's path for a request without a
    /// body) reads the same heads, stops at the same error and leaves the
    /// same bytes as splitting each head off.
    #[test]
    fn parse_head_in_place_reads_what_parse_head_splits(
        data in stream(),
        limits in limits(),
    ) {
        let (heads, end, rest) = drain_once(&data, &limits);
        let split: Vec<ViewParts> = heads.iter().map(|h| ViewParts::of(h.view())).collect();
        prop_assert_eq!((split, end, rest), drain_in_place(&data, &limits));
    }

    /// Split invariance on raw bytes from a small alphabet, which reaches
    /// corner cases the structured heads do not.
    #[test]
    fn parse_head_is_split_invariant_on_noise(
        data in noise(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        limits in limits(),
    ) {
        let once = drain_once(&data, &limits);
        let split = drain_split(&data, &cuts, &limits);
        prop_assert_eq!(once, split);
    }

    /// Valid heads parse back to their parts.
    #[test]
    fn valid_heads_parse(spec in head_spec().prop_map(HeadSpec::made_valid), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        prop_assert!(spec.is_valid());
        let raw = spec.render();
        let mut buf = BytesMut::from(&raw[..]);
        buf.extend_from_slice(&tail);
        let head = parse_head(&mut buf, &Limits::default());
        let head = head.map_err(|e| TestCaseError::fail(format!("{e:?} for {:?}", String::from_utf8_lossy(&raw))))?;
        let head = head.expect("complete");
        prop_assert_eq!(&buf[..], &tail[..]);
        prop_assert_eq!(head.len() + head_leading(&raw), raw.len());
        prop_assert_eq!(head.method_str(), spec.method);
        prop_assert_eq!(head.target(), spec.target.as_str());
        prop_assert!(spec.target.contains(head.path()) || head.path() == "/");
        prop_assert_eq!(head.version(), if spec.http10 { Version::Http10 } else { Version::Http11 });
        let kind = match spec.framing {
            FramingSpec::Length(0) | FramingSpec::None => BodyKind::Empty,
            FramingSpec::Length(n) | FramingSpec::LengthTwice(n) => BodyKind::Length(n),
            _ => BodyKind::Chunked,
        };
        prop_assert_eq!(head.body_kind(), kind);
        prop_assert_eq!(head.headers().count(), spec.header_count());
        for (name, value) in &spec.extra {
            let first = spec.extra.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).unwrap();
            prop_assert_eq!(head.header(name), Some(first.1.trim_matches([' ', '\t']).as_bytes()));
            let _ = value;
        }
        let close = spec.connection.is_some_and(|c| c.to_ascii_lowercase().contains("close"));
        let keep_alive = if spec.http10 {
            spec.connection == Some("keep-alive") && !matches!(spec.framing, FramingSpec::Chunked)
        } else {
            !close
        };
        prop_assert_eq!(head.keep_alive(), keep_alive);
    }

    /// (2) The chunked decoder yields the original body whatever the split
    /// and max_chunk, and leaves the bytes after the body alone.
    #[test]
    fn chunked_decoder_is_split_invariant(
        spec in chunked_spec(),
        cuts in prop::collection::vec(any::<Index>(), 0..16),
        max_chunk in 1usize..64,
    ) {
        let data = spec.encode();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        points.push(data.len());
        points.sort_unstable();
        let mut dec = BodyDecoder::new(BodyKind::Chunked, spec.body.len() as u64);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut ended = false;
        'feed: for p in points {
            buf.extend_from_slice(&data[pos..p]);
            pos = p;
            loop {
                match dec.decode(&mut buf, max_chunk) {
                    Ok(Some(BodyEvent::Data(d))) => {
                        prop_assert!(!d.is_empty() && d.len() <= max_chunk);
                        out.extend_from_slice(&d);
                    }
                    Ok(Some(BodyEvent::End)) => {
                        ended = true;
                        break 'feed;
                    }
                    Ok(None) => break,
                    Err(e) => return Err(TestCaseError::fail(format!("{e:?}"))),
                }
            }
        }
        prop_assert!(ended && dec.is_done());
        prop_assert_eq!(dec.decode(&mut buf, max_chunk), Ok(Some(BodyEvent::End)));
        buf.extend_from_slice(&data[pos..]);
        prop_assert_eq!(&out, &spec.body);
        prop_assert_eq!(&buf[..], &spec.follower[..]);
    }

    /// A body one byte over max_body is refused, and no more than max_body
    /// bytes come out first.
    #[test]
    fn chunked_decoder_enforces_max_body(spec in chunked_spec(), max_chunk in 1usize..64) {
        prop_assume!(!spec.body.is_empty());
        let data = spec.encode();
        let max_body = spec.body.len() as u64 - 1;
        let mut dec = BodyDecoder::new(BodyKind::Chunked, max_body);
        let mut buf = BytesMut::from(&data[..]);
        let mut total = 0u64;
        loop {
            match dec.decode(&mut buf, max_chunk) {
                Ok(Some(BodyEvent::Data(d))) => total += d.len() as u64,
                other => {
                    prop_assert_eq!(other, Err(BodyError::TooLarge));
                    break;
                }
            }
        }
        prop_assert!(total <= max_body);
    }

    /// (3) An encoded response head parses back with httparse.
    #[test]
    fn response_head_round_trip(spec in response_spec(), secs in 0i64..4_102_444_800) {
        let extra: Vec<(&str, &[u8])> = spec.extra.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let head = ResponseHead {
            status: StatusCode(spec.status),
            framing: spec.framing,
            keep_alive: spec.keep_alive,
            http10: spec.http10,
            content_type: spec.content_type.as_deref().map(str::as_bytes),
            extra: &extra,
        };
        let date = HttpDate::from_unix_secs(secs);
        let mut out = BytesMut::new();
        head.encode(&date, &mut out);

        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut res = httparse::Response::new(&mut headers);
        let n = res.parse(&out).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(n, httparse::Status::Complete(out.len()));
        prop_assert_eq!(res.version, Some(1));
        prop_assert_eq!(res.code, Some(spec.status));
        prop_assert_eq!(res.reason, Some(StatusCode(spec.status).reason()));
        let hs = &*res.headers;
        prop_assert_eq!(find(hs, "server"), vec![&b"ringside"[..]]);
        prop_assert_eq!(find(hs, "date"), vec![&date.as_bytes()[..]]);
        let cl = find(hs, "content-length");
        let te = find(hs, "transfer-encoding");
        match spec.framing {
            Framing::Length(n) => {
                let n = n.to_string();
                prop_assert_eq!(cl, vec![n.as_bytes()]);
                prop_assert!(te.is_empty());
            }
            Framing::Chunked => {
                prop_assert!(cl.is_empty());
                prop_assert_eq!(te, vec![&b"chunked"[..]]);
            }
            Framing::None => prop_assert!(cl.is_empty() && te.is_empty()),
        }
        let conn = find(hs, "connection");
        if !spec.keep_alive {
            prop_assert_eq!(conn, vec![&b"close"[..]]);
        } else if spec.http10 {
            prop_assert_eq!(conn, vec![&b"keep-alive"[..]]);
        } else {
            prop_assert!(conn.is_empty());
        }
        prop_assert_eq!(find(hs, "content-type"), spec.content_type.iter().map(|c| c.as_bytes()).collect::<Vec<_>>());
        let extras: Vec<(&str, &[u8])> = hs.iter().filter(|h| h.name.starts_with("X-")).map(|h| (h.name, h.value)).collect();
        prop_assert_eq!(extras, extra);
    }
}

/// Bytes of empty lines before the request line.
fn head_leading(raw: &[u8]) -> usize {
    raw.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

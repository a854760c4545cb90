//! parse_head on arbitrary bytes: never panics, drains pipelined heads, and
//! keeps its promises about what it consumes and returns.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringside_wire::http::{parse_head, BodyKind, HeadError, Limits, RequestHead};

const SMALL: Limits = Limits {
    max_request_line: 64,
    max_head_bytes: 256,
    max_headers: 4,
};

type Drained = (Vec<RequestHead>, Result<(), HeadError>, BytesMut);

/// Parses heads until None or an error, checking each step.
fn drain(
    buf: &mut BytesMut,
    limits: &Limits,
    heads: &mut Vec<RequestHead>,
) -> Result<(), HeadError> {
    loop {
        let before = buf.clone();
        match parse_head(buf, limits) {
            Ok(Some(head)) => {
                check_head(&head, &before, buf, limits);
                heads.push(head);
            }
            Ok(None) => {
                assert_eq!(*buf, before, "None must leave the buffer untouched");
                return Ok(());
            }
            Err(e) => {
                assert_eq!(*buf, before, "Err must leave the buffer untouched");
                assert!(matches!(e.status(), 400 | 414 | 431 | 501 | 505));
                assert!(!e.message().is_empty());
                return Err(e);
            }
        }
    }
}

fn check_head(head: &RequestHead, before: &[u8], after: &[u8], limits: &Limits) {
    let consumed = before.len() - after.len();
    // What was consumed: skipped empty lines, then exactly the head.
    let skipped = consumed
        .checked_sub(head.len())
        .expect("consumed less than the head");
    assert!(before[..skipped].iter().all(|&b| b == b'\r' || b == b'\n'));
    assert_eq!(&before[skipped..consumed], &head.as_bytes()[..]);
    assert_eq!(&before[consumed..], after);
    assert!(head.len() <= limits.max_head_bytes);
    assert!(head.as_bytes().ends_with(b"\n"));
    let line_end = head.as_bytes().iter().position(|&b| b == b'\n').unwrap();
    let line = head.as_bytes()[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head.as_bytes()[..line_end]);
    assert!(line.len() <= limits.max_request_line);
    assert!(head.headers().count() <= limits.max_headers);

    // Accessors never panic and agree with each other.
    let target = head.target();
    assert!(!target.is_empty());
    assert!(head.as_bytes().starts_with(head.method_str().as_bytes()));
    assert!(target.contains(head.path()) || head.path() == "/");
    if let Some(q) = head.query() {
        assert!(target.contains(q));
    }
    for (name, value) in head.headers() {
        assert!(!name.is_empty());
        // Values come trimmed.
        assert!(!matches!(value.first(), Some(b' ' | b'\t')));
        assert!(!matches!(value.last(), Some(b' ' | b'\t')));
        assert!(head.header(name).is_some());
    }
    let _ = (
        head.method(),
        head.version(),
        head.keep_alive(),
        head.expects_continue(),
    );
    match head.body_kind() {
        BodyKind::Length(n) => assert!(n > 0),
        BodyKind::Empty | BodyKind::Chunked => {}
    }
}

fn drain_all(data: &[u8], limits: &Limits) -> Drained {
    let mut buf = BytesMut::from(data);
    let mut heads = Vec::new();
    let r = drain(&mut buf, limits, &mut heads);
    (heads, r, buf)
}

/// The same input in two reads, cut at `cut`.
fn drain_two(data: &[u8], cut: usize, limits: &Limits) -> Drained {
    let mut buf = BytesMut::from(&data[..cut]);
    let mut heads = Vec::new();
    if let Err(e) = drain(&mut buf, limits, &mut heads) {
        buf.extend_from_slice(&data[cut..]);
        return (heads, Err(e), buf);
    }
    buf.extend_from_slice(&data[cut..]);
    let r = drain(&mut buf, limits, &mut heads);
    (heads, r, buf)
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks where to split the rest for the invariance check.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * data.len() / 255;
    for limits in [SMALL, Limits::default()] {
        let once = drain_all(data, &limits);
        let split = drain_two(data, cut, &limits);
        assert_eq!(once, split, "result depends on the split at {cut}");
    }
});

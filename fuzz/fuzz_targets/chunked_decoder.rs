//! The chunked (and Content-Length) body decoder on arbitrary bytes split at
//! a fuzz-chosen point: never panics, never yields more than max_body or
//! max_chunk, and does not depend on the split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringside_wire::http::{BodyDecoder, BodyError, BodyEvent, BodyKind};

/// Decodes until it needs more input or stops; Some(result) once it stopped.
fn pump(
    dec: &mut BodyDecoder,
    buf: &mut BytesMut,
    max_chunk: usize,
    max_body: u64,
    out: &mut Vec<u8>,
) -> Option<Result<(), BodyError>> {
    loop {
        match dec.decode(buf, max_chunk) {
            Ok(Some(BodyEvent::Data(d))) => {
                assert!(!d.is_empty());
                assert!(d.len() <= max_chunk.max(1));
                out.extend_from_slice(&d);
                assert!(out.len() as u64 <= max_body, "more data than max_body");
            }
            Ok(Some(BodyEvent::End)) => {
                assert!(dec.is_done());
                assert_eq!(dec.decode(buf, max_chunk), Ok(Some(BodyEvent::End)));
                return Some(Ok(()));
            }
            Ok(None) => return None,
            Err(e) => {
                assert!(matches!(e.status(), 400 | 413));
                assert_eq!(dec.decode(buf, max_chunk), Err(e), "errors must stick");
                return Some(Err(e));
            }
        }
    }
}

/// Feeds `data` in two reads cut at `cut`: (data, outcome, leftover bytes).
fn run(
    kind: BodyKind,
    max_body: u64,
    max_chunk: usize,
    data: &[u8],
    cut: usize,
) -> (Vec<u8>, Option<Result<(), BodyError>>, BytesMut) {
    let mut dec = BodyDecoder::new(kind, max_body);
    let mut buf = BytesMut::from(&data[..cut]);
    let mut out = Vec::new();
    let mut outcome = pump(&mut dec, &mut buf, max_chunk, max_body, &mut out);
    buf.extend_from_slice(&data[cut..]);
    if outcome.is_none() {
        outcome = pump(&mut dec, &mut buf, max_chunk, max_body, &mut out);
    }
    if let BodyKind::Length(n) = kind {
        if outcome == Some(Ok(())) {
            assert_eq!(out.len() as u64, n);
        }
    }
    (out, outcome, buf)
}

fuzz_target!(|input: &[u8]| {
    // Header: split point, max_chunk (0 included), max_body; then the body.
    let [cut, max_chunk, mb0, mb1, data @ ..] = input else {
        return;
    };
    let cut = usize::from(*cut) * data.len() / 255;
    let max_chunk = usize::from(*max_chunk % 80);
    let max_body = u64::from(u16::from_le_bytes([*mb0, *mb1]));

    let once = run(BodyKind::Chunked, max_body, max_chunk, data, data.len());
    let split = run(BodyKind::Chunked, max_body, max_chunk, data, cut);
    assert_eq!(once, split, "chunked result depends on the split at {cut}");

    let len = u64::from(*mb1) * 3;
    let once = run(BodyKind::Length(len), max_body, max_chunk, data, data.len());
    let split = run(BodyKind::Length(len), max_body, max_chunk, data, cut);
    assert_eq!(
        once, split,
        "Content-Length result depends on the split at {cut}"
    );
});

//! Request-body framing: Content-Length and chunked (RFC 9112 section 7.1).

use bytes::{Buf, Bytes, BytesMut};

use super::request::{is_tchar, BodyKind};

/// Decodes a request body from the front of the read buffer, handing out
/// data as zero-copy `Bytes` split off that buffer.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
    chunked: bool,
    max_body: u64,
    /// Sum of the chunk sizes announced so far.
    announced: u64,
}

/// Longest chunk-size line, extensions included, CRLF excluded.
const MAX_SIZE_LINE: usize = 4 * 1024;
/// Longest trailer section, final CRLF included.
const MAX_TRAILERS: usize = 16 * 1024;

// The chunked states scan lines byte by byte and keep how far they got
// (`scanned`), so a line arriving in pieces is never rescanned and every
// verdict falls on the same byte whatever the split. A partial line stays in
// the buffer; the caller only appends to it between calls.
#[derive(Clone, Copy, Debug)]
enum State {
    /// No body: End on the first call.
    Empty,
    Length {
        remaining: u64,
        checked: bool,
    },
    SizeLine {
        scanned: usize,
        size: u64,
        digits: u8,
        phase: SizePhase,
    },
    Data {
        remaining: u64,
    },
    /// The CRLF after chunk data.
    DataEnd,
    Trailers {
        scanned: usize,
        taken: usize,
        phase: TrailerPhase,
    },
    Done,
    Failed(BodyError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SizePhase {
    Digits,
    /// BWS after the size, before ';' or CR.
    Space,
    Ext,
    Cr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrailerPhase {
    LineStart,
    Name,
    Value,
    Cr,
    /// CR of the empty line ending the section.
    EndCr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyEvent {
    /// Some body bytes (never empty).
    Data(Bytes),
    /// The body is complete; for chunked, the last chunk and any trailers
    /// (read and dropped) were consumed. Bytes after it in the buffer belong
    /// to the next pipelined request.
    End,
}

/// Why a body was refused; the connection's framing is lost, so the driver
/// answers `status()` with `Connection: close` and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// 400: malformed chunk-size line (empty, non-hex digit, more than 16 hex
    /// digits / overflow of u64, bare LF instead of CRLF, missing CRLF after
    /// chunk data), chunk extension too long, or a malformed trailer section.
    BadChunk(&'static str),
    /// 413: the body exceeds the limit given to `new`.
    TooLarge,
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::BadChunk(_) => 400,
            BodyError::TooLarge => 413,
        }
    }
    pub fn message(&self) -> &'static str {
        match self {
            BodyError::BadChunk(reason) => reason,
            BodyError::TooLarge => "request body too large",
        }
    }
}

impl BodyDecoder {
    /// `max_body` bounds the decoded body bytes (a Content-Length above it is
    /// refused at the first `decode` call; a chunked body as soon as the sum
    /// of chunk sizes passes it). Chunk extensions are skipped (bounded to
    /// 4 KiB per line), trailers read and dropped (bounded to 16 KiB).
    pub fn new(kind: BodyKind, max_body: u64) -> Self {
        let (state, chunked) = match kind {
            BodyKind::Empty => (State::Empty, false),
            BodyKind::Length(n) => (
                State::Length {
                    remaining: n,
                    checked: false,
                },
                false,
            ),
            BodyKind::Chunked => (State::size_line(), true),
        };
        BodyDecoder {
            state,
            chunked,
            max_body,
            announced: 0,
        }
    }

    /// Decodes what it can from the front of `buf`:
    /// - `Ok(Some(Data(b)))`: `b` was split off `buf`. At most `max_chunk`
    ///   bytes are returned at once (callers use it to bound their work).
    /// - `Ok(Some(End))`: the body is complete (its framing consumed from `buf`).
    ///   Further calls return `Ok(Some(End))` again.
    /// - `Ok(None)`: more input is needed (any complete framing, such as a
    ///   chunk-size line, may have been consumed already; partial lines are
    ///   left in `buf`).
    /// - `Err(e)`: see `BodyError`.
    ///
    /// The concatenated data does not depend on how the input was split.
    ///
    /// A `max_chunk` of 0 is taken as 1 (data is never empty).
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_chunk: usize,
    ) -> Result<Option<BodyEvent>, BodyError> {
        let result = self.step(buf, max_chunk.max(1));
        if let Err(e) = result {
            // Framing is lost: every later call fails the same way.
            self.state = State::Failed(e);
        }
        result
    }

    /// True once `End` has been returned.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Body bytes still expected for a Content-Length body (None for chunked).
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            _ if self.chunked => None,
            State::Length { remaining, .. } => Some(remaining),
            _ => Some(0),
        }
    }

    fn step(
        &mut self,
        buf: &mut BytesMut,
        max_chunk: usize,
    ) -> Result<Option<BodyEvent>, BodyError> {
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Done => return Ok(Some(BodyEvent::End)),
                State::Empty => {
                    self.state = State::Done;
                    return Ok(Some(BodyEvent::End));
                }
                State::Length { remaining, checked } => {
                    if !checked && remaining > self.max_body {
                        return Err(BodyError::TooLarge);
                    }
                    if remaining == 0 {
                        self.state = State::Done;
                        return Ok(Some(BodyEvent::End));
                    }
                    let Some(data) = take_data(buf, remaining, max_chunk) else {
                        self.state = State::Length {
                            remaining,
                            checked: true,
                        };
                        return Ok(None);
                    };
                    self.state = State::Length {
                        remaining: remaining - data.len() as u64,
                        checked: true,
                    };
                    return Ok(Some(BodyEvent::Data(data)));
                }
                State::Data { remaining } => {
                    let Some(data) = take_data(buf, remaining, max_chunk) else {
                        return Ok(None);
                    };
                    let remaining = remaining - data.len() as u64;
                    self.state = if remaining == 0 {
                        State::DataEnd
                    } else {
                        State::Data { remaining }
                    };
                    return Ok(Some(BodyEvent::Data(data)));
                }
                State::DataEnd => {
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\r') => {}
                        Some(_) => {
                            return Err(BodyError::BadChunk("missing CRLF after chunk data"))
                        }
                    }
                    match buf.get(1) {
                        None => return Ok(None),
                        Some(b'\n') => {}
                        Some(_) => {
                            return Err(BodyError::BadChunk("missing CRLF after chunk data"))
                        }
                    }
                    buf.advance(2);
                    self.state = State::size_line();
                }
                State::SizeLine { .. } => {
                    if !self.scan_size_line(buf)? {
                        return Ok(None);
                    }
                }
                State::Trailers { .. } => {
                    if !self.scan_trailers(buf)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Scans the chunk-size line; true once it was consumed and the state moved on.
    fn scan_size_line(&mut self, buf: &mut BytesMut) -> Result<bool, BodyError> {
        let State::SizeLine {
            mut scanned,
            mut size,
            mut digits,
            mut phase,
        } = self.state
        else {
            return Ok(false);
        };
        let bad = |reason| Err(BodyError::BadChunk(reason));
        while let Some(&b) = buf.get(scanned) {
            if b == b'\n' && phase != SizePhase::Cr {
                return bad(if digits == 0 {
                    "empty chunk size"
                } else {
                    "bare LF in chunk-size line"
                });
            }
            match phase {
                SizePhase::Digits => match hex_value(b) {
                    Some(v) => {
                        // 16 hex digits fill a u64; a 17th would overflow.
                        if digits == 16 {
                            return bad("chunk size too long");
                        }
                        size = size << 4 | u64::from(v);
                        digits += 1;
                        // The size only grows with more digits: refuse as soon as it is too much.
                        match self.announced.checked_add(size) {
                            Some(total) if total <= self.max_body => {}
                            _ => return Err(BodyError::TooLarge),
                        }
                    }
                    None if digits == 0 => {
                        return bad(if b == b'\r' {
                            "empty chunk size"
                        } else {
                            "invalid chunk size"
                        });
                    }
                    None => {
                        phase = match b {
                            b' ' | b'\t' => SizePhase::Space,
                            b';' => SizePhase::Ext,
                            b'\r' => SizePhase::Cr,
                            _ => return bad("invalid chunk size"),
                        }
                    }
                },
                SizePhase::Space => {
                    phase = match b {
                        b' ' | b'\t' => SizePhase::Space,
                        b';' => SizePhase::Ext,
                        b'\r' => SizePhase::Cr,
                        _ => return bad("invalid chunk size"),
                    }
                }
                SizePhase::Ext => match b {
                    b'\r' => phase = SizePhase::Cr,
                    b'\t' | b' '..=b'~' | 0x80.. => {}
                    _ => return bad("invalid chunk extension"),
                },
                SizePhase::Cr => {
                    if b != b'\n' {
                        return bad("CR without LF in chunk-size line");
                    }
                    buf.advance(scanned + 1);
                    self.announced += size;
                    self.state = if size == 0 {
                        State::Trailers {
                            scanned: 0,
                            taken: 0,
                            phase: TrailerPhase::LineStart,
                        }
                    } else {
                        State::Data { remaining: size }
                    };
                    return Ok(true);
                }
            }
            scanned += 1;
            if scanned > MAX_SIZE_LINE && phase != SizePhase::Cr {
                return bad("chunk extension too long");
            }
        }
        self.state = State::SizeLine {
            scanned,
            size,
            digits,
            phase,
        };
        Ok(false)
    }

    /// Scans trailer lines (dropped as they complete); true once the empty
    /// line ending them was consumed and the body is done.
    fn scan_trailers(&mut self, buf: &mut BytesMut) -> Result<bool, BodyError> {
        let State::Trailers {
            mut scanned,
            mut taken,
            mut phase,
        } = self.state
        else {
            return Ok(false);
        };
        let bad = || Err(BodyError::BadChunk("malformed trailer section"));
        while let Some(&b) = buf.get(scanned) {
            if taken + scanned >= MAX_TRAILERS {
                return Err(BodyError::BadChunk("trailer section too long"));
            }
            scanned += 1;
            phase = match (phase, b) {
                (TrailerPhase::LineStart, b'\r') => TrailerPhase::EndCr,
                (TrailerPhase::LineStart | TrailerPhase::Name, _) if is_tchar(b) => {
                    TrailerPhase::Name
                }
                (TrailerPhase::Name, b':') => TrailerPhase::Value,
                (TrailerPhase::Value, b'\r') => TrailerPhase::Cr,
                (TrailerPhase::Value, b'\t' | b' '..=b'~' | 0x80..) => TrailerPhase::Value,
                (TrailerPhase::Cr, b'\n') => {
                    // A complete field line: drop it.
                    buf.advance(scanned);
                    taken += scanned;
                    scanned = 0;
                    TrailerPhase::LineStart
                }
                (TrailerPhase::EndCr, b'\n') => {
                    buf.advance(scanned);
                    self.state = State::Done;
                    return Ok(true);
                }
                _ => return bad(),
            };
        }
        self.state = State::Trailers {
            scanned,
            taken,
            phase,
        };
        Ok(false)
    }
}

impl State {
    fn size_line() -> State {
        State::SizeLine {
            scanned: 0,
            size: 0,
            digits: 0,
            phase: SizePhase::Digits,
        }
    }
}

/// Up to `max_chunk` of the `remaining` body bytes, split off the front of
/// `buf`; None if `buf` is empty.
fn take_data(buf: &mut BytesMut, remaining: u64, max_chunk: usize) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(remaining)
        .unwrap_or(usize::MAX)
        .min(buf.len())
        .min(max_chunk);
    Some(buf.split_to(n).freeze())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes everything in `input` at once; returns the data and the final result.
    fn run(
        kind: BodyKind,
        max_body: u64,
        input: &[u8],
        max_chunk: usize,
    ) -> (Vec<u8>, Result<Option<BodyEvent>, BodyError>, BytesMut) {
        let mut dec = BodyDecoder::new(kind, max_body);
        let mut buf = BytesMut::from(input);
        let mut data = Vec::new();
        loop {
            match dec.decode(&mut buf, max_chunk) {
                Ok(Some(BodyEvent::Data(b))) => {
                    assert!(!b.is_empty() && b.len() <= max_chunk.max(1));
                    data.extend_from_slice(&b);
                }
                other => return (data, other, buf),
            }
        }
    }

    fn chunk_err(input: &[u8]) -> &'static str {
        match run(BodyKind::Chunked, u64::MAX, input, 1024).1 {
            Err(BodyError::BadChunk(reason)) => reason,
            other => panic!(
                "expected BadChunk for {:?}, got {other:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    #[test]
    fn empty_body_ends_at_once() {
        let mut dec = BodyDecoder::new(BodyKind::Empty, 0);
        assert!(!dec.is_done());
        assert_eq!(dec.remaining(), Some(0));
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(dec.decode(&mut buf, 10), Ok(Some(BodyEvent::End)));
        assert!(dec.is_done());
        assert_eq!(dec.decode(&mut buf, 10), Ok(Some(BodyEvent::End)));
        assert_eq!(buf.len(), 16);
    }

    #[test]
    fn content_length_body() {
        let mut dec = BodyDecoder::new(BodyKind::Length(10), 100);
        assert_eq!(dec.remaining(), Some(10));
        let mut buf = BytesMut::from(&b"0123"[..]);
        assert_eq!(
            dec.decode(&mut buf, 3),
            Ok(Some(BodyEvent::Data(Bytes::from_static(b"012"))))
        );
        assert_eq!(dec.remaining(), Some(7));
        assert_eq!(
            dec.decode(&mut buf, 3),
            Ok(Some(BodyEvent::Data(Bytes::from_static(b"3"))))
        );
        assert_eq!(dec.decode(&mut buf, 3), Ok(None));
        buf.extend_from_slice(b"456789NEXT");
        assert_eq!(
            dec.decode(&mut buf, 100),
            Ok(Some(BodyEvent::Data(Bytes::from_static(b"456789"))))
        );
        assert_eq!(dec.remaining(), Some(0));
        assert!(!dec.is_done());
        assert_eq!(dec.decode(&mut buf, 100), Ok(Some(BodyEvent::End)));
        assert!(dec.is_done());
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn zero_max_chunk_still_progresses() {
        let (data, end, _) = run(BodyKind::Length(3), 3, b"abc", 0);
        assert_eq!(data, b"abc");
        assert_eq!(end, Ok(Some(BodyEvent::End)));
    }

    #[test]
    fn too_large_content_length() {
        let mut dec = BodyDecoder::new(BodyKind::Length(101), 100);
        let mut buf = BytesMut::new();
        assert_eq!(dec.decode(&mut buf, 10), Err(BodyError::TooLarge));
        assert_eq!(dec.decode(&mut buf, 10), Err(BodyError::TooLarge));
        assert_eq!(BodyError::TooLarge.status(), 413);
        let (data, end, _) = run(BodyKind::Length(100), 100, &[b'x'; 100], 64);
        assert_eq!(data.len(), 100);
        assert_eq!(end, Ok(Some(BodyEvent::End)));
    }

    #[test]
    fn chunked_simple() {
        let (data, end, rest) = run(
            BodyKind::Chunked,
            100,
            b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\nNEXT",
            1024,
        );
        assert_eq!(data, b"Wikipedia");
        assert_eq!(end, Ok(Some(BodyEvent::End)));
        assert_eq!(&rest[..], b"NEXT");
        let dec = BodyDecoder::new(BodyKind::Chunked, 1);
        assert_eq!(dec.remaining(), None);
    }

    #[test]
    fn chunked_hex_sizes_and_max_chunk() {
        let body: Vec<u8> = (0..=255u8).cycle().take(0x1af).collect();
        let mut input = b"1aF\r\n".to_vec(); // mixed-case hex digits
        input.extend_from_slice(&body);
        input.extend_from_slice(b"\r\n000\r\n\r\n");
        let (data, end, rest) = run(BodyKind::Chunked, 1000, &input, 7);
        assert_eq!(data, body);
        assert_eq!(end, Ok(Some(BodyEvent::End)));
        assert!(rest.is_empty());
    }

    #[test]
    fn chunked_extensions_and_trailers() {
        let input = b"3;name=value\r\nabc\r\n2 ; a ; b=\"q;\\\"x\"\r\nde\r\n0;last\r\nExpires: never\r\nX-Sum: 1\t2\r\n\r\nNEXT";
        let (data, end, rest) = run(BodyKind::Chunked, 100, input, 1024);
        assert_eq!(data, b"abcde");
        assert_eq!(end, Ok(Some(BodyEvent::End)));
        assert_eq!(&rest[..], b"NEXT");
    }

    #[test]
    fn chunked_byte_by_byte() {
        let input = b"3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut dec = BodyDecoder::new(BodyKind::Chunked, 100);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut ended = false;
        for &b in input.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(ev) = dec.decode(&mut buf, 2).unwrap() {
                match ev {
                    BodyEvent::Data(d) => data.extend_from_slice(&d),
                    BodyEvent::End => {
                        ended = true;
                        break;
                    }
                }
            }
            if ended {
                break;
            }
        }
        assert!(ended && dec.is_done());
        assert_eq!(data, b"abc0123456789abcdef");
        assert!(buf.is_empty(), "bytes after the body are not consumed");
    }

    #[test]
    fn malformed_chunk_sizes() {
        assert_eq!(chunk_err(b"\r\nabc"), "empty chunk size");
        assert_eq!(chunk_err(b"\nabc"), "empty chunk size");
        assert_eq!(chunk_err(b";ext\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"g\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"1g\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"-1\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"0x10\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"1 2\r\n"), "invalid chunk size");
        assert_eq!(chunk_err(b"00000000000000001\r\n"), "chunk size too long");
        assert_eq!(chunk_err(b"ffffffffffffffff0\r\n"), "chunk size too long");
        assert_eq!(chunk_err(b"3\nabc\r\n"), "bare LF in chunk-size line");
        assert_eq!(chunk_err(b"3;x\nabc\r\n"), "bare LF in chunk-size line");
        assert_eq!(chunk_err(b"3\rabc"), "CR without LF in chunk-size line");
        assert_eq!(chunk_err(b"3;a\x00b\r\n"), "invalid chunk extension");
        let long = [
            &b"1;"[..],
            &[b'x'; MAX_SIZE_LINE][..],
            b"\r\nx\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(chunk_err(&long), "chunk extension too long");
        let fits = [
            &b"1;"[..],
            &[b'x'; MAX_SIZE_LINE - 2][..],
            b"\r\nx\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            run(BodyKind::Chunked, 10, &fits, 10).1,
            Ok(Some(BodyEvent::End))
        );
    }

    #[test]
    fn missing_crlf_after_data() {
        assert_eq!(
            chunk_err(b"3\r\nabcd\r\n0\r\n\r\n"),
            "missing CRLF after chunk data"
        );
        assert_eq!(
            chunk_err(b"3\r\nabc\n0\r\n\r\n"),
            "missing CRLF after chunk data"
        );
        assert_eq!(
            chunk_err(b"3\r\nabc\rx0\r\n\r\n"),
            "missing CRLF after chunk data"
        );
        // Partial CRLF: wait.
        let (data, end, rest) = run(BodyKind::Chunked, 10, b"3\r\nabc\r", 10);
        assert_eq!(
            (data.as_slice(), end, &rest[..]),
            (&b"abc"[..], Ok(None), &b"\r"[..])
        );
    }

    #[test]
    fn malformed_trailers() {
        assert_eq!(
            chunk_err(b"0\r\nX : y\r\n\r\n"),
            "malformed trailer section"
        );
        assert_eq!(
            chunk_err(b"0\r\nNoColon\r\n\r\n"),
            "malformed trailer section"
        );
        assert_eq!(chunk_err(b"0\r\nX: y\n\r\n"), "malformed trailer section");
        assert_eq!(chunk_err(b"0\r\n\n"), "malformed trailer section");
        assert_eq!(chunk_err(b"0\r\n\rx"), "malformed trailer section");
        assert_eq!(
            chunk_err(b"0\r\nX: a\x01\r\n\r\n"),
            "malformed trailer section"
        );
        let big: Vec<u8> = [
            &b"0\r\n"[..],
            &b"X: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\n".repeat(600),
            b"\r\n",
        ]
        .concat();
        assert_eq!(chunk_err(&big), "trailer section too long");
    }

    #[test]
    fn partial_lines_stay_in_buffer() {
        let mut dec = BodyDecoder::new(BodyKind::Chunked, 100);
        let mut buf = BytesMut::from(&b"a;ext"[..]);
        assert_eq!(dec.decode(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"a;ext");
        buf.extend_from_slice(b"\r\n01234");
        assert_eq!(
            dec.decode(&mut buf, 100),
            Ok(Some(BodyEvent::Data(Bytes::from_static(b"01234"))))
        );
        assert!(buf.is_empty());
        buf.extend_from_slice(b"56789\r\n0\r\nTrail");
        assert_eq!(
            dec.decode(&mut buf, 100),
            Ok(Some(BodyEvent::Data(Bytes::from_static(b"56789"))))
        );
        assert_eq!(dec.decode(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"Trail");
        buf.extend_from_slice(b"er: x\r\n\r");
        assert_eq!(dec.decode(&mut buf, 100), Ok(None));
        assert_eq!(&buf[..], b"\r");
        buf.extend_from_slice(b"\n");
        assert_eq!(dec.decode(&mut buf, 100), Ok(Some(BodyEvent::End)));
    }

    #[test]
    fn too_large_chunked() {
        // The sum of chunk sizes passes the limit: refused at the size line.
        let input = b"5\r\nabcde\r\n6\r\nfghijk\r\n0\r\n\r\n";
        let (data, end, _) = run(BodyKind::Chunked, 10, input, 100);
        assert_eq!(data, b"abcde");
        assert_eq!(end, Err(BodyError::TooLarge));
        let (data, end, _) = run(BodyKind::Chunked, 11, input, 100);
        assert_eq!(data, b"abcdefghijk");
        assert_eq!(end, Ok(Some(BodyEvent::End)));
        // Refused as soon as the digits say so, before the line ends.
        let mut dec = BodyDecoder::new(BodyKind::Chunked, 1000);
        let mut buf = BytesMut::from(&b"100000"[..]);
        assert_eq!(dec.decode(&mut buf, 100), Err(BodyError::TooLarge));
        assert_eq!(dec.decode(&mut buf, 100), Err(BodyError::TooLarge));
        // A huge size cannot overflow the running sum.
        let (_, end, _) = run(
            BodyKind::Chunked,
            u64::MAX,
            b"1\r\nx\r\nffffffffffffffff\r\n",
            100,
        );
        assert_eq!(end, Err(BodyError::TooLarge));
    }

    #[test]
    fn error_statuses() {
        assert_eq!(BodyError::BadChunk("x").status(), 400);
        assert_eq!(BodyError::BadChunk("x").message(), "x");
        assert!(!BodyError::TooLarge.message().is_empty());
    }
}

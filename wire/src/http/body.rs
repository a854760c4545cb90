//! Request-body framing: Content-Length and chunked (RFC 9112 section 7.1).

use bytes::{Bytes, BytesMut};

use super::request::BodyKind;

/// Decodes a request body from the front of the read buffer, handing out
/// data as zero-copy `Bytes` split off that buffer.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    // implementation-defined private fields
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
        todo!()
    }
    pub fn message(&self) -> &'static str {
        todo!()
    }
}

impl BodyDecoder {
    /// `max_body` bounds the decoded body bytes (a Content-Length above it is
    /// refused at the first `decode` call; a chunked body as soon as the sum
    /// of chunk sizes passes it). Chunk extensions are skipped (bounded to
    /// 4 KiB per line), trailers read and dropped (bounded to 16 KiB).
    pub fn new(kind: BodyKind, max_body: u64) -> Self {
        let _ = (kind, max_body);
        todo!()
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
    pub fn decode(&mut self, buf: &mut BytesMut, max_chunk: usize) -> Result<Option<BodyEvent>, BodyError> {
        let _ = (buf, max_chunk);
        todo!()
    }

    /// True once `End` has been returned.
    pub fn is_done(&self) -> bool {
        todo!()
    }

    /// Body bytes still expected for a Content-Length body (None for chunked).
    pub fn remaining(&self) -> Option<u64> {
        todo!()
    }
}

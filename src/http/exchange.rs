//! One request and its response, as a handler sees them.
//!
//! The exchange lends the handler the connection's buffers and socket for
//! the duration of one request: it reads the body on demand (sending
//! `100 Continue` first when asked for), and encodes the response into the
//! connection's write buffer, flushing only when a streamed response needs it.

use std::io;
use std::time::Duration;

use monoio::time::Instant;

use bytes::Bytes;
use ringside_wire::http::response::{
    encode_chunk, encode_chunk_head, encode_last_chunk, CONTINUE_100,
};
use ringside_wire::http::{
    BodyDecoder, BodyEvent, BodyKind, Framing, HeadMeta, HeadView, Method, ResponseHead,
    StatusCode, Version,
};

use super::io::{ConnIo, IoFailure};
use super::render::BodyOut;

/// Why a body could not be read. The exchange has already decided the
/// connection's fate (closed after the response); the handler should answer
/// with [`Exchange::respond_body_error`] or simply return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed chunked framing: 400.
    Malformed(&'static str),
    /// Past the route's body limit: 413.
    TooLarge,
    /// No body bytes within the body timeout, or the body's deadline
    /// passed: 408.
    Timeout,
    /// The body arrived below the minimum data rate: 408.
    TooSlow,
    /// The client went away.
    Closed,
}

impl BodyError {
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            BodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Timeout | BodyError::TooSlow => StatusCode::REQUEST_TIMEOUT,
            BodyError::Closed => StatusCode::BAD_REQUEST,
        }
    }
    pub fn message(&self) -> &'static str {
        match self {
            BodyError::Malformed(m) => m,
            BodyError::TooLarge => "request body too large",
            BodyError::Timeout => "request body timed out",
            BodyError::TooSlow => "request body arrived below the minimum data rate",
            BodyError::Closed => "connection closed during the body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseState {
    NotStarted,
    Streaming,
    Done,
}

pub struct Exchange<'c, 'io> {
    pub(super) io: &'c mut ConnIo<'io>,
    /// Borrowed from the connection's loop: copying it in (64 bytes just
    /// written by the parser) stalled on every request.
    head: &'c HeadMeta,
    /// The head's bytes, split off the read buffer; `None` while they are
    /// still at its front (a request without a body: see `conn`), to be
    /// removed when the exchange ends.
    head_bytes: Option<Bytes>,
    body: BodyDecoder,
    body_kind: BodyKind,
    body_limit_set: bool,
    max_body: u64,
    continue_pending: bool,
    body_error: Option<BodyError>,
    /// The whole body must have arrived by then (a route's own deadline).
    body_deadline: Option<Instant>,
    /// Time spent waiting for the client's body bytes, and how many came:
    /// the minimum data rate is checked against these, so time the handler
    /// spends elsewhere (a busy database) is not held against the client.
    body_wait: Duration,
    body_received: u64,
    response: ResponseState,
    status: Option<StatusCode>,
    /// Whether the connection stays open after this exchange.
    pub(super) keep_alive: bool,
    /// An I/O failure while streaming; the connection must close.
    pub(super) io_failed: bool,
}

impl<'c, 'io> Exchange<'c, 'io> {
    /// `head_bytes`: the head split off the read buffer, or `None` when it
    /// is at the front of `io.rbuf` (only for a request without a body).
    pub(super) fn new(
        io: &'c mut ConnIo<'io>,
        head: &'c HeadMeta,
        head_bytes: Option<Bytes>,
        max_body: u64,
    ) -> Self {
        debug_assert!(head_bytes.is_some() || head.body_kind() == BodyKind::Empty);
        let kind = head.body_kind();
        let continue_pending = head.expects_continue() && kind != BodyKind::Empty;
        let keep_alive = head.keep_alive();
        Exchange {
            io,
            body: BodyDecoder::new(kind, max_body),
            body_kind: kind,
            body_limit_set: false,
            max_body,
            continue_pending,
            body_error: None,
            body_deadline: None,
            body_wait: Duration::ZERO,
            body_received: 0,
            response: ResponseState::NotStarted,
            status: None,
            keep_alive,
            io_failed: false,
            head,
            head_bytes,
        }
    }

    pub fn head(&self) -> HeadView<'_> {
        match &self.head_bytes {
            Some(bytes) => HeadView::new(bytes, self.head),
            None => HeadView::new(&self.io.rbuf, self.head),
        }
    }

    /// The status of the response written so far, if any.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    pub fn method(&self) -> Method {
        self.head.method()
    }

    pub fn path(&self) -> &str {
        self.head().path()
    }

    /// The path as bytes, unchecked for UTF-8: for routing by literal.
    pub fn path_bytes(&self) -> &[u8] {
        self.head().path_bytes()
    }

    /// Sets this route's body limit (the server's default otherwise). Only
    /// before the first `body_chunk`.
    pub fn set_body_limit(&mut self, max: u64) {
        if !self.body_limit_set && self.body.remaining() == self.initial_remaining() {
            self.max_body = max;
            self.body = BodyDecoder::new(self.body_kind, max);
        }
    }

    fn initial_remaining(&self) -> Option<u64> {
        match self.body_kind {
            BodyKind::Length(n) => Some(n),
            BodyKind::Empty => Some(0),
            BodyKind::Chunked => None,
        }
    }

    /// The whole body must have arrived by `deadline` (408 past it): a
    /// bound in time for a route that holds something scarce while it reads.
    pub fn set_body_deadline(&mut self, deadline: Instant) {
        self.body_deadline = Some(deadline);
    }

    /// Reads the body in pieces of up to `bytes` (for a handler that streams
    /// a large body somewhere); the read buffer grows to that size for this
    /// request only and is not pooled afterwards.
    pub fn set_body_read_size(&mut self, bytes: usize) {
        self.io.read_size = bytes.max(self.io.read_size);
    }

    /// The next piece of the request body, `Ok(None)` at its end. Pieces are
    /// at most a read buffer long; the server holds no more of the body than
    /// that, and reads the socket only when asked: a handler that is slow to
    /// ask closes the client's TCP window.
    pub async fn body_chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        self.body_limit_set = true;
        if let Some(e) = self.body_error {
            return Err(e);
        }
        if self.continue_pending {
            // The client waits for this before it sends the body; whatever
            // responses precede it in the pipeline go out first, in order.
            self.continue_pending = false;
            self.io.ensure_wbuf();
            self.io.wbuf.extend_from_slice(CONTINUE_100);
            if self.io.flush().await.is_err() {
                return Err(self.fail(BodyError::Closed));
            }
        }
        let max_chunk = self.io.read_size;
        loop {
            match self.body.decode(&mut self.io.rbuf, max_chunk) {
                Ok(Some(BodyEvent::Data(b))) => {
                    self.body_received += b.len() as u64;
                    return Ok(Some(b));
                }
                Ok(Some(BodyEvent::End)) => return Ok(None),
                Ok(None) => {}
                Err(e) => {
                    return Err(self.fail(match e {
                        ringside_wire::http::BodyError::TooLarge => BodyError::TooLarge,
                        ringside_wire::http::BodyError::BadChunk(m) => BodyError::Malformed(m),
                    }))
                }
            }
            let started = Instant::now();
            let (deadline, cause) = self.read_deadline(started);
            let read = self.io.read_more(deadline).await;
            self.body_wait += started.elapsed();
            match read {
                Ok(()) => {}
                Err(IoFailure::Timeout) => return Err(self.fail(cause)),
                Err(_) => return Err(self.fail(BodyError::Closed)),
            }
        }
    }

    /// When the next read of the body must have completed, and what it
    /// means if it has not: the earliest of the gap between two reads (the
    /// body timeout), the route's deadline, and the moment the client's
    /// average rate, over the time spent waiting for it, would fall below
    /// the minimum (never before the grace period).
    fn read_deadline(&self, now: Instant) -> (Instant, BodyError) {
        let settings = self.io.settings();
        let mut deadline = now + settings.body_timeout;
        if let Some(d) = self.body_deadline {
            deadline = deadline.min(d);
        }
        let mut cause = BodyError::Timeout;
        if settings.min_body_rate > 0 {
            let earned =
                Duration::from_secs_f64(self.body_received as f64 / settings.min_body_rate as f64);
            let allowed = earned.max(settings.body_rate_grace);
            let by_rate = now + allowed.saturating_sub(self.body_wait);
            if by_rate < deadline {
                deadline = by_rate;
                cause = BodyError::TooSlow;
            }
        }
        (deadline, cause)
    }

    fn fail(&mut self, e: BodyError) -> BodyError {
        self.body_error = Some(e);
        self.keep_alive = false;
        e
    }

    /// Reads and drops the rest of the body, for a response that did not
    /// need it; returns false if the connection must close instead.
    pub(super) async fn discard_body(&mut self) -> bool {
        if self.body.is_done() || self.body_kind == BodyKind::Empty {
            return true;
        }
        let mut budget = self.io.settings().max_discard_bytes;
        loop {
            match self.body_chunk().await {
                Ok(Some(b)) if (b.len() as u64) <= budget => budget -= b.len() as u64,
                Ok(None) => return true,
                _ => return false,
            }
        }
    }

    /// Whether the connection can be kept after the handler answers now:
    /// an unread body must be small enough to discard, and must not be one
    /// the client is still waiting to be asked for (100-continue).
    fn decide_keep_alive(&mut self) {
        if self.io.core_draining() || self.body_error.is_some() {
            self.keep_alive = false;
        }
        if !self.body.is_done() && self.body_kind != BodyKind::Empty {
            let small = matches!(self.body.remaining(),
                Some(n) if n <= self.io.settings().max_discard_bytes);
            if self.continue_pending || !small {
                self.keep_alive = false;
            }
        }
    }

    #[inline]
    fn write_head(
        &mut self,
        status: StatusCode,
        content_type: &[u8],
        extra: &[(&str, &[u8])],
        framing: Framing,
    ) {
        self.decide_keep_alive();
        self.status = Some(status);
        self.io.encode_head(&ResponseHead {
            status,
            framing,
            keep_alive: self.keep_alive,
            http10: self.head.version() == Version::Http10,
            content_type: Some(content_type),
            extra,
        });
    }

    /// Answers with a complete body (Content-Length framing). For HEAD the
    /// same headers go out without the body.
    #[inline]
    pub fn respond(&mut self, status: StatusCode, content_type: &[u8], body: &[u8]) {
        self.respond_with(status, content_type, &[], body)
    }

    /// `respond` with further headers.
    pub fn respond_with(
        &mut self,
        status: StatusCode,
        content_type: &[u8],
        extra: &[(&str, &[u8])],
        body: &[u8],
    ) {
        if self.response != ResponseState::NotStarted {
            return;
        }
        self.write_head(
            status,
            content_type,
            extra,
            Framing::Length(body.len() as u64),
        );
        if self.head.method() != Method::Head {
            self.io.wbuf.extend_from_slice(body);
        }
        self.response = ResponseState::Done;
    }

    /// Answers with a body rendered straight into the connection's write
    /// buffer (see [`super::render`]), in one pass: the head, whose
    /// Content-Length is known only then, is put in front of the body
    /// afterwards. An error from `render` is returned with nothing written,
    /// so the handler can still answer otherwise.
    pub fn respond_rendered<E>(
        &mut self,
        status: StatusCode,
        content_type: &[u8],
        extra: &[(&str, &[u8])],
        render: impl FnOnce(&mut BodyOut<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.response != ResponseState::NotStarted {
            return Ok(());
        }
        self.io.ensure_wbuf();
        let start = self.io.wbuf.len();
        if let Err(e) = render(&mut BodyOut::Write(&mut self.io.wbuf)) {
            self.io.wbuf.truncate(start);
            return Err(e);
        }
        let len = self.io.wbuf.len() - start;
        if self.head.method() == Method::Head {
            self.io.wbuf.truncate(start);
        }
        let head_start = self.io.wbuf.len();
        self.write_head(status, content_type, extra, Framing::Length(len as u64));
        let head_len = self.io.wbuf.len() - head_start;
        // The head was appended after the body: turn it to the front (one
        // move of the page within the buffer, far cheaper than rendering
        // it twice to learn its length first).
        self.io.wbuf[start..].rotate_right(head_len);
        self.response = ResponseState::Done;
        Ok(())
    }

    /// Appends a rendered piece of a streamed response (one chunk), written
    /// straight into the connection's write buffer like
    /// [`Exchange::respond_rendered`]; [`Exchange::flush`] sends it. An error
    /// from `render` is returned with nothing appended.
    pub fn queue_rendered_chunk<E>(
        &mut self,
        render: impl FnOnce(&mut BodyOut<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.response != ResponseState::Streaming || self.head.method() == Method::Head {
            return Ok(());
        }
        let wbuf = &mut self.io.wbuf;
        let start = wbuf.len();
        if let Err(e) = render(&mut BodyOut::Write(wbuf)) {
            wbuf.truncate(start);
            return Err(e);
        }
        let len = wbuf.len() - start;
        if len == 0 || self.head.version() == Version::Http10 {
            return Ok(());
        }
        // The chunk's size line goes in front of its data.
        encode_chunk_head(len, wbuf);
        let head_len = wbuf.len() - start - len;
        wbuf[start..].rotate_right(head_len);
        wbuf.extend_from_slice(b"\r\n");
        Ok(())
    }

    /// Answers a failed body read with its status, closing the connection.
    pub fn respond_body_error(&mut self, e: BodyError) {
        self.keep_alive = false;
        let msg = e.message();
        self.respond_error(e.status(), msg);
    }

    /// A short plain-text error: `"<code> <reason>: <message>\n"`.
    pub fn respond_error(&mut self, status: StatusCode, message: &str) {
        let mut body = Vec::with_capacity(64);
        body.extend_from_slice(status.0.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(status.reason().as_bytes());
        if !message.is_empty() {
            body.extend_from_slice(b": ");
            body.extend_from_slice(message.as_bytes());
        }
        body.push(b'\n');
        self.respond(status, b"text/plain; charset=utf-8", &body);
    }

    /// Starts a streamed response: chunked for HTTP/1.1, close-delimited for
    /// HTTP/1.0 (which has no chunked framing).
    pub fn start_stream(
        &mut self,
        status: StatusCode,
        content_type: &[u8],
        extra: &[(&str, &[u8])],
    ) {
        if self.response != ResponseState::NotStarted {
            return;
        }
        let http10 = self.head.version() == Version::Http10;
        if http10 {
            self.keep_alive = false;
        }
        let framing = if http10 {
            Framing::None
        } else {
            Framing::Chunked
        };
        self.write_head(status, content_type, extra, framing);
        self.response = ResponseState::Streaming;
    }

    /// Appends a piece of a streamed response; writes to the socket once
    /// enough is queued, so a client that reads slowly slows the handler.
    pub async fn send_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if self.response != ResponseState::Streaming || data.is_empty() {
            return Ok(());
        }
        if self.head.method() != Method::Head {
            if self.head.version() == Version::Http10 {
                self.io.wbuf.extend_from_slice(data);
            } else {
                encode_chunk(data, &mut self.io.wbuf);
            }
        }
        if self.io.wbuf.len() >= self.io.settings().write_high_water {
            if let Err(e) = self.io.flush().await {
                self.io_failed = true;
                self.keep_alive = false;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes everything queued so far and waits until the socket took it:
    /// a streaming handler calls it to produce no faster than the client reads.
    pub async fn flush(&mut self) -> io::Result<()> {
        if let Err(e) = self.io.flush().await {
            self.io_failed = true;
            self.keep_alive = false;
            return Err(e);
        }
        Ok(())
    }

    /// Gives up on the response: the connection is closed without sending
    /// what is queued (a streamed body is cut short, which the client can
    /// tell from the missing last chunk).
    pub fn abort_connection(&mut self) {
        self.io_failed = true;
        self.keep_alive = false;
    }

    /// Ends a streamed response.
    pub fn finish_stream(&mut self) {
        if self.response != ResponseState::Streaming {
            return;
        }
        if self.head.method() != Method::Head && self.head.version() != Version::Http10 {
            encode_last_chunk(&mut self.io.wbuf);
        }
        self.response = ResponseState::Done;
    }

    /// Called by the driver after the handler returned: a handler that
    /// wrote nothing gets a 500; one that left a stream open has it ended
    /// (and the connection closed, since the body may be cut short).
    pub(super) fn complete(&mut self) {
        match self.response {
            ResponseState::Done => {}
            ResponseState::Streaming => {
                self.keep_alive = false;
                self.finish_stream();
            }
            ResponseState::NotStarted => {
                self.keep_alive = false;
                match self.body_error {
                    Some(e) => self.respond_body_error(e),
                    None => self.respond_error(StatusCode::INTERNAL_ERROR, "no response"),
                }
            }
        }
    }

    /// Ends the exchange: a head still in the read buffer is removed from
    /// it. Returns whether the connection stays open and whether I/O failed.
    pub(super) fn into_parts(self) -> (bool, bool) {
        if self.head_bytes.is_none() {
            let n = self.head.len().min(self.io.rbuf.len());
            bytes::Buf::advance(&mut self.io.rbuf, n);
        }
        (self.keep_alive, self.io_failed)
    }
}

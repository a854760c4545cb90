//! The per-connection read/parse/handle/write loop.
//!
//! Rules it keeps (see docs/connection.md):
//! - An idle connection waits for readability holding no buffer; a buffer
//!   is borrowed from the core's pool when bytes arrive and given back when
//!   everything read has been answered.
//! - Every complete request already buffered is handled, in order, before
//!   the responses go out together in one write (pipelining).
//! - Deadlines are put on waits. A read or write that is cut by its
//!   deadline is never retried: the connection closes, so no byte an
//!   io_uring operation may already have moved can be lost silently.

use std::io;
use std::mem;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use ringside_wire::http::{parse_head, Framing, HttpDate, ResponseHead, StatusCode};

use super::exchange::Exchange;
use super::{HttpCore, HttpSettings, Service};

/// Read at least this much per read call, so a nearly full buffer is grown
/// (within the limits) rather than read a few bytes at a time.
const MIN_READ_SPARE: usize = 1024;
/// After answering with `Connection: close`, how long and how much unread
/// input is drained before the socket closes, so the kernel does not answer
/// the client's unread bytes with an RST that destroys the response.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IoFailure {
    Timeout,
    Closed,
    Error,
}

/// The connection's socket and borrowed buffers, lent to one exchange at a time.
pub(super) struct ConnIo {
    stream: TcpStream,
    /// Empty with no capacity while idle: no memory pinned.
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    shared: Rc<Shared>,
}

/// What a connection needs from its core, independent of the service type.
pub(super) struct Shared {
    pub(super) core: Rc<crate::runtime::CoreCtx>,
    pub(super) settings: HttpSettings,
    pub(super) buffers: super::BufPool,
    pub(super) date: std::cell::Cell<HttpDate>,
}

impl ConnIo {
    pub(super) fn settings(&self) -> &HttpSettings {
        &self.shared.settings
    }

    pub(super) fn date(&self) -> HttpDate {
        self.shared.date.get()
    }

    pub(super) fn core_draining(&self) -> bool {
        self.shared.core.draining()
    }

    pub(super) fn http_buf_size(&self) -> usize {
        self.shared.buffers.buf_size()
    }

    fn ensure_wbuf(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = self.shared.buffers.take();
        }
    }

    /// Gives both buffers back to the pool; called when nothing is pending.
    fn release_buffers(&mut self) {
        if self.rbuf.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.rbuf));
        }
        if self.wbuf.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.wbuf));
        }
    }

    /// Reads more bytes onto the end of `rbuf`, giving up at `deadline`.
    pub(super) async fn read_more(&mut self, deadline: Instant) -> Result<(), IoFailure> {
        if self.rbuf.capacity() == 0 {
            self.rbuf = self.shared.buffers.take();
        }
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPARE {
            self.rbuf.reserve(self.shared.buffers.buf_size());
        }
        let buf = mem::take(&mut self.rbuf);
        match monoio::time::timeout_at(deadline, self.stream.read(buf)).await {
            // The read is dropped (cancelled) with the buffer it owns; the
            // caller closes the connection, so nothing it read is missed.
            Err(_) => Err(IoFailure::Timeout),
            Ok((res, buf)) => {
                self.rbuf = buf;
                match res {
                    Ok(0) => Err(IoFailure::Closed),
                    Ok(_) => Ok(()),
                    Err(_) => Err(IoFailure::Error),
                }
            }
        }
    }

    /// Writes everything queued in `wbuf`, bounded by the write timeout: a
    /// client that stops reading is cut.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = mem::take(&mut self.wbuf);
        let limit = self.shared.settings.write_timeout;
        match monoio::time::timeout(limit, self.stream.write_all(buf)).await {
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
            Ok((res, mut buf)) => {
                buf.clear();
                self.wbuf = buf;
                res.map(|_| ())
            }
        }
    }

    /// Waits until the socket has bytes, without holding a buffer.
    async fn wait_readable(&mut self, limit: Duration) -> Wake {
        monoio::select! {
            r = self.stream.readable(false) => if r.is_ok() { Wake::Readable } else { Wake::Closed },
            _ = monoio::time::sleep(limit) => Wake::TimedOut,
            _ = self.shared.core.drain.wait() => Wake::Closed,
        }
    }

    /// Queues an error response that closes the connection.
    fn queue_error(&mut self, status: StatusCode, message: &str) {
        self.ensure_wbuf();
        let body_len = 3 + 1 + status.reason().len() + 2 + message.len() + 1;
        ResponseHead {
            status,
            framing: Framing::Length(body_len as u64),
            keep_alive: false,
            http10: false,
            content_type: Some(b"text/plain; charset=utf-8"),
            extra: &[],
        }
        .encode(&self.date(), &mut self.wbuf);
        let code = status.0.to_string();
        for part in [code.as_str(), " ", status.reason(), ": ", message, "\n"] {
            self.wbuf.extend_from_slice(part.as_bytes());
        }
    }

    /// Sends what is queued, then closes the write side and drains (briefly)
    /// what the client still sends, so the response is not lost to an RST.
    async fn close_gracefully(mut self) {
        if self.flush().await.is_err() {
            return;
        }
        self.release_buffers();
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut drained = 0;
        let mut buf = self.shared.buffers.take();
        while drained < LINGER_BYTES {
            buf.clear();
            match monoio::time::timeout_at(deadline, self.stream.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    drained += n;
                    buf = b;
                }
                Ok((_, b)) => {
                    self.shared.buffers.put(b);
                    return;
                }
                Err(_) => return,
            }
        }
        self.shared.buffers.put(buf);
    }
}

enum Wake {
    Readable,
    TimedOut,
    Closed,
}

/// Serves one connection until it closes.
pub(super) async fn serve<S: Service>(http: Rc<HttpCore<S>>, stream: TcpStream) {
    let accepted_at = Instant::now();
    let mut io = ConnIo {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        shared: http.shared.clone(),
    };
    let settings = io.shared.settings.clone();
    let mut fresh = true;
    loop {
        if io.rbuf.is_empty() {
            // Everything read has been answered: send the answers, give the
            // buffers back, and wait for the next request holding nothing.
            if io.flush().await.is_err() {
                return;
            }
            io.release_buffers();
            if io.core_draining() {
                return;
            }
            let limit = if fresh {
                settings.head_timeout
            } else {
                settings.keepalive_timeout
            };
            match io.wait_readable(limit).await {
                Wake::Readable => {}
                Wake::TimedOut if fresh => {
                    io.queue_error(StatusCode::REQUEST_TIMEOUT, "no request received in time");
                    return io.close_gracefully().await;
                }
                Wake::TimedOut | Wake::Closed => return,
            }
        }

        // A head must be complete within the head timeout, counted from the
        // accept for a new connection, from its first byte otherwise.
        let head_deadline = if fresh {
            accepted_at + settings.head_timeout
        } else {
            Instant::now() + settings.head_timeout
        };
        let head = loop {
            match parse_head(&mut io.rbuf, &settings.limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    // Answers to earlier pipelined requests go out before
                    // waiting on the network for the rest of this one.
                    if io.flush().await.is_err() {
                        return;
                    }
                    match io.read_more(head_deadline).await {
                        Ok(()) => {}
                        Err(IoFailure::Timeout) => {
                            io.queue_error(StatusCode::REQUEST_TIMEOUT, "request head timed out");
                            return io.close_gracefully().await;
                        }
                        Err(IoFailure::Closed) if !io.rbuf.is_empty() => {
                            // Half a head and then EOF: nothing to answer.
                            return;
                        }
                        Err(_) => return,
                    }
                }
                Err(e) => {
                    io.queue_error(StatusCode(e.status()), e.message());
                    return io.close_gracefully().await;
                }
            }
        };
        fresh = false;

        io.ensure_wbuf();
        let mut ex = Exchange::new(&mut io, head, settings.max_body_bytes);
        // Boxed so that the connection's own future (allocated for its whole
        // life) stays small; a handler's state lives only while it runs.
        Box::pin(http.service.call(&mut ex)).await;
        ex.complete();
        if ex.keep_alive && !ex.discard_body().await {
            ex.keep_alive = false;
        }
        let (keep_alive, io_failed) = ex.into_parts();
        if io_failed {
            return;
        }
        if !keep_alive {
            return io.close_gracefully().await;
        }
        if io.wbuf.len() >= settings.write_high_water && io.flush().await.is_err() {
            return;
        }
    }
}

/// Answers a connection past the core's limit with 503 and closes it.
pub(super) async fn refuse<S: Service>(http: Rc<HttpCore<S>>, stream: TcpStream) {
    let mut io = ConnIo {
        stream,
        rbuf: BytesMut::new(),
        wbuf: BytesMut::new(),
        shared: http.shared.clone(),
    };
    io.ensure_wbuf();
    let body = b"503 Service Unavailable: too many connections\n";
    ResponseHead {
        status: StatusCode::SERVICE_UNAVAILABLE,
        framing: Framing::Length(body.len() as u64),
        keep_alive: false,
        http10: false,
        content_type: Some(b"text/plain; charset=utf-8"),
        extra: &[("Retry-After", b"1")],
    }
    .encode(&io.date(), &mut io.wbuf);
    io.wbuf.extend_from_slice(body);
    let _ = monoio::time::timeout(Duration::from_secs(1), io.flush()).await;
    io.release_buffers();
}

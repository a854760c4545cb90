//! A busy connection's I/O: its socket and the buffers it borrowed from the
//! core's pool, lent to one exchange at a time; reads and writes under the
//! connection's deadline. Both the connection loop (`conn`) and the
//! exchange a handler sees (`exchange`) use it; neither imports the other
//! for it.

use std::io;
use std::mem;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use monoio::time::Instant;
use ringside_wire::http::{Framing, HeadEncoder, ResponseHead, StatusCode};

use super::admission::Active;
use super::stream::Stream;
use super::HttpSettings;
use crate::runtime::deadlines::DeadlineKey;

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

/// A busy connection: its socket, and the buffers it borrowed from the
/// core's pool, lent to one exchange at a time. It exists only while the
/// connection has work; the buffers go back to the pool when it is dropped.
pub(super) struct ConnIo<'a> {
    stream: &'a mut Stream,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    shared: &'a Shared,
    deadline_key: DeadlineKey,
    /// How much a read may ask for; a handler streaming a large body raises
    /// it for its request (bigger reads, fewer of them).
    pub(super) read_size: usize,
    /// Whether the last read filled all the room it was given: only then
    /// does the next one get `read_size` bytes of room. A client that sends
    /// little at a time (a trickle, a slow link) never costs a large buffer.
    reads_fill: bool,
    /// Whether bytes are probably waiting: right after the connection was
    /// reported readable, or after a read that filled its room. Only then
    /// is a plain non-blocking recv tried before the ring's read (a recv
    /// that finds nothing would be a wasted system call).
    bytes_waiting: bool,
    /// Set from the first read of a turn (`admission.rs`) until its
    /// request's handler is done: counted among the core's requests at
    /// work, except while it waits on the client.
    pub(super) active: Option<Active>,
}

impl<'a> ConnIo<'a> {
    pub(super) fn new(
        stream: &'a mut Stream,
        shared: &'a Shared,
        deadline_key: DeadlineKey,
    ) -> Self {
        ConnIo {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_size: shared.buffers.buf_size(),
            reads_fill: false,
            bytes_waiting: true,
            shared,
            deadline_key,
            active: None,
        }
    }
}

impl Drop for ConnIo<'_> {
    fn drop(&mut self) {
        self.release_buffers();
    }
}

/// What a connection needs from its core, independent of the service type.
pub(super) struct Shared {
    pub(super) core: Rc<crate::runtime::CoreCtx>,
    pub(super) admission: Rc<super::admission::Admission>,
    pub(super) settings: HttpSettings,
    pub(super) buffers: super::BufPool,
    /// The response heads' encoder, with the Date (updated every second).
    pub(super) heads: std::cell::RefCell<HeadEncoder>,
}

impl ConnIo<'_> {
    pub(super) fn settings(&self) -> &HttpSettings {
        &self.shared.settings
    }

    /// Appends a response head to `wbuf` (taken if need be).
    pub(super) fn encode_head(&mut self, head: &ResponseHead<'_>) {
        self.ensure_wbuf();
        self.shared.heads.borrow_mut().encode(head, &mut self.wbuf);
    }

    /// The core's coarse clock (the deadline ticker's).
    pub(super) fn now(&self) -> Instant {
        self.shared.core.deadlines.now()
    }

    pub(super) fn core_draining(&self) -> bool {
        self.shared.core.draining()
    }

    /// Takes a write buffer from the pool when the connection has none: on
    /// the first response bytes, not before (a handler that waits long, on
    /// a slow body or the database, holds no write buffer meanwhile).
    pub(super) fn ensure_wbuf(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = self.shared.buffers.take();
        }
    }

    /// Gives both buffers back to the pool; called when nothing is pending.
    pub(super) fn release_buffers(&mut self) {
        if self.rbuf.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.rbuf));
        }
        if self.wbuf.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.wbuf));
        }
    }

    /// Whether the last read filled its room (more may be in the socket).
    pub(super) fn bytes_waiting(&self) -> bool {
        self.bytes_waiting
    }

    /// One read that does not wait, for a connection woken by an event
    /// that may be stale: `Ok(false)` when nothing was there.
    pub(super) fn read_if_ready(&mut self) -> Result<bool, IoFailure> {
        let room = self.make_read_room();
        match self.stream.read_now(&mut self.rbuf) {
            Ok(Some(0)) => Err(IoFailure::Closed),
            Ok(Some(n)) => {
                self.reads_fill = n == room;
                self.bytes_waiting = self.reads_fill;
                Ok(true)
            }
            Ok(None) => {
                self.bytes_waiting = false;
                Ok(false)
            }
            Err(_) => Err(IoFailure::Error),
        }
    }

    /// Takes a read buffer if there is none and makes room in it; returns
    /// the room.
    fn make_read_room(&mut self) -> usize {
        if self.rbuf.capacity() == 0 {
            self.rbuf = self.shared.buffers.take();
        }
        let base = self.shared.buffers.buf_size();
        let wanted = if self.reads_fill {
            self.read_size
        } else {
            base.min(self.read_size)
        };
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPARE.min(wanted) {
            self.rbuf.reserve(wanted);
        }
        self.rbuf.capacity() - self.rbuf.len()
    }

    /// Reads more bytes onto the end of `rbuf`, giving up at `deadline`.
    pub(super) async fn read_more(&mut self, deadline: Instant) -> Result<(), IoFailure> {
        let room = self.make_read_room();
        if self.bytes_waiting {
            match self.stream.read_now(&mut self.rbuf) {
                Ok(Some(0)) => return Err(IoFailure::Closed),
                Ok(Some(n)) => {
                    self.reads_fill = n == room;
                    self.bytes_waiting = self.reads_fill;
                    return Ok(());
                }
                Ok(None) => self.bytes_waiting = false,
                Err(_) => return Err(IoFailure::Error),
            }
        }
        let _away = self.active.as_ref().map(Active::away);
        let buf = mem::take(&mut self.rbuf);
        let deadlines = &self.shared.core.deadlines;
        monoio::select! {
            (res, buf) = self.stream.read_append(buf) => {
                self.rbuf = buf;
                match res {
                    Ok(0) => Err(IoFailure::Closed),
                    Ok(n) => {
                        self.reads_fill = n == room;
                        self.bytes_waiting = self.reads_fill;
                        Ok(())
                    }
                    Err(_) => Err(IoFailure::Error),
                }
            }
            // The read is dropped (cancelled) with the buffer it owns; the
            // caller closes the connection, so nothing it read is missed.
            _ = deadlines.wait(self.deadline_key, deadline, false) => Err(IoFailure::Timeout),
        }
    }

    /// Writes everything queued in `wbuf`, bounded by the write timeout: a
    /// client that stops reading is cut.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // A plain send first (see `runtime::send_now`): an answer that
        // fits the socket's buffer leaves without a ring operation and
        // without waking this task again.
        let sent = self.stream.write_now(&self.wbuf)?;
        if sent == self.wbuf.len() {
            self.wbuf.clear();
            return Ok(());
        }
        self.wbuf.advance(sent);
        let _away = self.active.as_ref().map(Active::away);
        let buf = mem::take(&mut self.wbuf);
        let deadlines = &self.shared.core.deadlines;
        let deadline = deadlines.now() + self.shared.settings.write_timeout;
        monoio::select! {
            (res, buf) = self.stream.write_all(buf) => {
                self.wbuf = buf;
                self.wbuf.clear();
                res.map(|_| ())
            }
            _ = deadlines.wait(self.deadline_key, deadline, false) => {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
    }

    /// Queues an error response that closes the connection.
    pub(super) fn queue_error(&mut self, status: StatusCode, message: &str) {
        let body_len = 3 + 1 + status.reason().len() + 2 + message.len() + 1;
        self.encode_head(&ResponseHead {
            status,
            framing: Framing::Length(body_len as u64),
            keep_alive: false,
            http10: false,
            content_type: Some(b"text/plain; charset=utf-8"),
            extra: &[],
        });
        let code = status.0.to_string();
        for part in [code.as_str(), " ", status.reason(), ": ", message, "\n"] {
            self.wbuf.extend_from_slice(part.as_bytes());
        }
    }

    /// Sends what is queued, then closes the write side and drains (briefly)
    /// what the client still sends, so the response is not lost to an RST.
    pub(super) async fn close_gracefully(&mut self) {
        // Closing is no work on a request: it leaves the core's room.
        self.active = None;
        if self.flush().await.is_err() {
            return;
        }
        self.release_buffers();
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = self.now() + LINGER_TIME;
        let mut drained = 0;
        while drained < LINGER_BYTES {
            self.rbuf.clear();
            match self.read_more(deadline).await {
                Ok(()) => drained += self.rbuf.len(),
                Err(_) => return,
            }
        }
    }
}

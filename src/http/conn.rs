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
use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;
use monoio::time::Instant;
use ringside_wire::http::{parse_head, Framing, HttpDate, ResponseHead, StatusCode};

use super::exchange::Exchange;
use super::{HttpCore, HttpSettings, Service};
use crate::runtime::deadlines::{DeadlineKey, DeadlineTable, WaitEnd};
use crate::runtime::{read_append, recv_now};
use std::os::fd::AsRawFd;

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
    stream: &'a mut TcpStream,
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
}

impl<'a> ConnIo<'a> {
    fn new(stream: &'a mut TcpStream, shared: &'a Shared, deadline_key: DeadlineKey) -> Self {
        ConnIo {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_size: shared.buffers.buf_size(),
            reads_fill: false,
            bytes_waiting: true,
            shared,
            deadline_key,
        }
    }
}

impl Drop for ConnIo<'_> {
    fn drop(&mut self) {
        self.release_buffers();
    }
}

/// A connection's deadline slot, given back when the connection ends.
struct SlotGuard<'a>(&'a DeadlineTable, DeadlineKey);

impl<'a> SlotGuard<'a> {
    fn new(table: &'a DeadlineTable) -> Self {
        SlotGuard(table, table.register())
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Most connections per core reading while hot (each holds a buffer).
const MAX_HOT_READS: usize = 1024;

/// What a connection needs from its core, independent of the service type.
pub(super) struct Shared {
    /// Connections in a hot read now.
    pub(super) hot_reads: std::cell::Cell<usize>,
    pub(super) core: Rc<crate::runtime::CoreCtx>,
    pub(super) settings: HttpSettings,
    pub(super) buffers: super::BufPool,
    pub(super) date: std::cell::Cell<HttpDate>,
}

impl ConnIo<'_> {
    pub(super) fn settings(&self) -> &HttpSettings {
        &self.shared.settings
    }

    pub(super) fn date(&self) -> HttpDate {
        self.shared.date.get()
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
        let base = self.shared.buffers.buf_size();
        let wanted = if self.reads_fill {
            self.read_size
        } else {
            base.min(self.read_size)
        };
        if self.rbuf.capacity() - self.rbuf.len() < MIN_READ_SPARE.min(wanted) {
            self.rbuf.reserve(wanted);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        if self.bytes_waiting {
            match recv_now(self.stream.as_raw_fd(), &mut self.rbuf) {
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
        let buf = mem::take(&mut self.rbuf);
        let deadlines = &self.shared.core.deadlines;
        monoio::select! {
            (res, buf) = read_append(&mut *self.stream, buf) => {
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

    /// Reads for the next request while the connection is hot, that is
    /// until the core's next deadline tick. Then the read is cancelled the
    /// safe way: the cancel is submitted and the read still awaited, so
    /// bytes it took before the cancel landed are kept, not lost. The
    /// connection then goes idle holding no buffer.
    async fn hot_read(&mut self) -> HotRead {
        // A hot read lends the kernel a buffer: at most MAX_HOT_READS at a
        // time per core, so a burst of connections that go quiet does not
        // pin a buffer each; the rest wait for readability straight away.
        let hot = &self.shared.hot_reads;
        if self.core_draining() || hot.get() >= MAX_HOT_READS {
            return HotRead::Idle;
        }
        hot.set(hot.get() + 1);
        let result = self.hot_read_inner().await;
        hot.set(hot.get() - 1);
        result
    }

    async fn hot_read_inner(&mut self) -> HotRead {
        if self.rbuf.capacity() == 0 {
            self.rbuf = self.shared.buffers.take();
        }
        if self.rbuf.capacity() == self.rbuf.len() {
            self.rbuf.reserve(self.read_size);
        }
        let canceller = Canceller::new();
        let buf = mem::take(&mut self.rbuf);
        let len = buf.len();
        let read = self
            .stream
            .cancelable_read(buf.slice_mut(len..), canceller.handle());
        let mut read = std::pin::pin!(read);
        let deadlines = &self.shared.core.deadlines;
        let until = deadlines.now() + Duration::from_millis(1);
        let (res, slice) = monoio::select! {
            r = &mut read => r,
            _ = deadlines.wait(self.deadline_key, until, true) => {
                let _ = canceller.cancel();
                (&mut read).await
            }
        };
        self.rbuf = slice.into_inner();
        match res {
            Ok(0) => HotRead::Closed,
            Ok(_) => HotRead::Data,
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => HotRead::Idle,
            Err(_) => HotRead::Closed,
        }
    }

    /// Writes everything queued in `wbuf`, bounded by the write timeout: a
    /// client that stops reading is cut.
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
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
    async fn close_gracefully(&mut self) {
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

/// Serves one connection until it closes.
///
/// This future is allocated once and lives as long as the connection, so
/// it holds only what an idle connection needs: the socket, its deadline
/// slot, and the readability wait. The work on arrived bytes (buffers,
/// parsing, the handler) runs in a boxed future that exists only while
/// there is work.
pub(super) async fn serve<S: Service>(http: Rc<HttpCore<S>>, mut stream: TcpStream) {
    let slot = SlotGuard::new(&http.shared.core.deadlines);
    // The first head must be complete within the head timeout of the accept.
    let mut first_head_by = Some(slot.0.now() + http.shared.settings.head_timeout);
    let mut idle_since = slot.0.now();
    loop {
        let mut in_grace = false;
        let woke = loop {
            let (deadline, ends_on_drain) = match first_head_by {
                // A connection accepted just before the drain gets the same
                // grace for its first request.
                Some(deadline) if in_grace => (deadline.min(idle_since + DRAIN_IDLE_GRACE), false),
                Some(deadline) => (deadline, true),
                None if in_grace => (idle_since + DRAIN_IDLE_GRACE, false),
                None => (idle_since + http.shared.settings.keepalive_timeout, true),
            };
            let woke = wait_readable(&stream, slot.0, slot.1, deadline, ends_on_drain).await;
            if woke == Wake::Drained && !in_grace {
                // Draining: a connection that was busy a moment ago may
                // have its next request on the way, and closing now would
                // race it. Take that request (answered with `Connection:
                // close`), or close once idle for the grace period.
                in_grace = true;
                continue;
            }
            break woke;
        };
        match woke {
            Wake::Readable => {}
            Wake::TimedOut if first_head_by.is_some() && !in_grace => {
                return Box::pin(answer_and_close(
                    &http.shared,
                    &mut stream,
                    slot.1,
                    StatusCode::REQUEST_TIMEOUT,
                    "no request received in time",
                ))
                .await;
            }
            Wake::TimedOut | Wake::Drained | Wake::Closed => return,
        }
        let work = process_input(&http, &mut stream, slot.1, first_head_by.take());
        if !Box::pin(work).await {
            return;
        }
        idle_since = slot.0.now();
    }
}

/// During a drain, how long a connection that just answered a request is
/// given to send its next one before it is closed.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// How a hot read ended.
enum HotRead {
    Data,
    Idle,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Readable,
    TimedOut,
    Drained,
    Closed,
}

/// Waits until the socket has bytes, holding no buffer, until `deadline`
/// (a slot in the core's table, not a runtime timer).
async fn wait_readable(
    stream: &TcpStream,
    table: &DeadlineTable,
    key: DeadlineKey,
    deadline: Instant,
    ends_on_drain: bool,
) -> Wake {
    monoio::select! {
        r = stream.readable(false) => if r.is_ok() { Wake::Readable } else { Wake::Closed },
        end = table.wait(key, deadline, ends_on_drain) => match end {
            WaitEnd::Expired => Wake::TimedOut,
            WaitEnd::Drained => Wake::Drained,
        },
    }
}

async fn answer_and_close(
    shared: &Shared,
    stream: &mut TcpStream,
    key: DeadlineKey,
    status: StatusCode,
    message: &str,
) {
    let mut io = ConnIo::new(stream, shared, key);
    io.queue_error(status, message);
    io.close_gracefully().await;
}

/// Handles the bytes that arrived: every complete request in order, reading
/// more while a head or body is incomplete, until everything read has been
/// answered and sent. Returns false once the connection is closed.
async fn process_input<S: Service>(
    http: &HttpCore<S>,
    stream: &mut TcpStream,
    key: DeadlineKey,
    mut first_head_by: Option<Instant>,
) -> bool {
    let settings = &http.shared.settings;
    let mut io = ConnIo::new(stream, &http.shared, key);
    loop {
        // A head must be complete within the head timeout, counted from the
        // accept for a new connection, from its first byte otherwise.
        let head_deadline = first_head_by
            .take()
            .unwrap_or_else(|| io.now() + settings.head_timeout);
        let head = loop {
            match parse_head(&mut io.rbuf, &settings.limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    // Answers to earlier pipelined requests go out before
                    // waiting on the network for the rest of this one.
                    if io.flush().await.is_err() {
                        return false;
                    }
                    match io.read_more(head_deadline).await {
                        Ok(()) => {}
                        Err(IoFailure::Timeout) => {
                            io.queue_error(StatusCode::REQUEST_TIMEOUT, "request head timed out");
                            io.close_gracefully().await;
                            return false;
                        }
                        // EOF or reset, possibly after half a head: nothing to answer.
                        Err(_) => return false,
                    }
                }
                Err(e) => {
                    io.queue_error(StatusCode(e.status()), e.message());
                    io.close_gracefully().await;
                    return false;
                }
            }
        };

        let mut ex = Exchange::new(&mut io, head, settings.max_body_bytes);
        http.service.call(&mut ex).await;
        ex.complete();
        if ex.keep_alive && !ex.discard_body().await {
            ex.keep_alive = false;
        }
        let (keep_alive, io_failed) = ex.into_parts();
        if io_failed {
            return false;
        }
        if !keep_alive {
            io.close_gracefully().await;
            return false;
        }
        // Pipelining: answers accumulate while complete requests remain
        // buffered, and go out together once none does (or once enough is
        // queued). With nothing left to read, the connection goes idle.
        if io.rbuf.is_empty() {
            if io.flush().await.is_err() {
                return false;
            }
            // A busy connection's next request usually follows soon: read
            // for it directly (one operation) instead of waiting for
            // readability and then reading (two), until the next tick.
            match io.hot_read().await {
                HotRead::Data => continue,
                HotRead::Idle => return true,
                HotRead::Closed => return false,
            }
        }
        if io.wbuf.len() >= settings.write_high_water && io.flush().await.is_err() {
            return false;
        }
    }
}

/// Answers a connection past the core's limit with 503 and closes it.
pub(super) async fn refuse<S: Service>(http: Rc<HttpCore<S>>, mut stream: TcpStream) {
    let slot = SlotGuard::new(&http.shared.core.deadlines);
    let mut io = ConnIo::new(&mut stream, &http.shared, slot.1);
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
    let _ = io.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::config::Config;
    use crate::http::HttpCore;
    use crate::runtime::{CoreCtx, IoDriver};

    /// The connection's future is allocated once and lives as long as the
    /// connection, idle or not: it must stay far below the 1 KiB an idle
    /// connection may cost in all.
    #[test]
    fn connection_future_stays_small() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let core = CoreCtx::standalone(0, IoDriver::Epoll);
            let config = Config::default();
            let app = App::new(
                core.clone(),
                None,
                crate::app::AppSettings::from_config(&config),
                None,
            );
            let http = HttpCore::new(core, &config, app);
            let mut stream2 = TcpStream::connect(addr).await.unwrap();
            let work = process_input(&http, &mut stream2, DeadlineKey::for_tests(), None);
            let work_size = std::mem::size_of_val(&work);
            drop(work);
            println!("work future (boxed while a connection is busy): {work_size} bytes");
            assert!(
                work_size <= 2048,
                "the per-request work future grew to {work_size} bytes"
            );
            let fut = serve(http, stream);
            let size = std::mem::size_of_val(&fut);
            println!("connection future: {size} bytes");
            assert!(size <= 512, "connection future grew to {size} bytes");
        });
    }
}

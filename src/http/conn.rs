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

use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;
use ringside_wire::http::{parse_head_in_place, BodyKind, Framing, ResponseHead, StatusCode};

use super::admission::{take_turn, Active};
use super::exchange::Exchange;
use super::idle::{WatchGuard, WatchId};
use super::io::{ConnIo, IoFailure, Shared};
use super::stream::Stream;
use super::tls::{handshake, HandshakeEnd, TlsStream};
use super::{HttpCore, Service};
use crate::runtime::deadlines::{DeadlineKey, DeadlineTable, WaitEnd};
use crate::runtime::OpenGuard;

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

/// How a connection's task starts.
pub(super) enum Start {
    /// Just accepted: wait for the first request, within the head timeout.
    Accepted,
    /// Woken from the core's idle set, with its watch there: bytes (or the
    /// end) are probably there; it waits for room in its task (a drain).
    Woken(WatchId),
    /// As `Woken`, with a room among the core's requests at work counted
    /// for it, to be claimed (admission.rs): one free when its bytes came,
    /// or one its request waited for, parked.
    Admitted(WatchId),
}

/// What handling the arrived bytes came to.
enum Served {
    /// Everything read was answered. `bytes_waiting`: the last read filled
    /// its room, so more may be in the socket with no event to announce it.
    Idle { bytes_waiting: bool },
    /// The event was stale: nothing was there to read.
    Nothing,
    /// The connection is closed.
    Closed,
}

/// Serves one connection until it closes or parks in the core's idle set.
///
/// The work on arrived bytes (buffers, parsing, the handler) runs in a
/// frame of the core's pool that is held only while there is work. Once
/// everything read has been answered, a TCP connection parks in the idle
/// set (`idle.rs`) and this task ends; a new one starts when bytes arrive.
/// A pipe, or a connection that cannot park, waits here, holding its
/// socket, its deadline slot and the readability wait.
pub(super) async fn serve<S: Service>(
    http: Rc<HttpCore<S>>,
    mut stream: Stream,
    mut open: OpenGuard,
    start: Start,
) {
    let slot = SlotGuard::new(&http.shared.core.deadlines);
    // The first head must be complete within the head timeout of the accept.
    let mut first_head_by =
        matches!(start, Start::Accepted).then(|| slot.0.now() + http.shared.settings.head_timeout);
    // The socket's registration in the idle set's epoll set, made the
    // first time the connection waits there and kept until it closes.
    let (mut has_input, woken_with, mut admitted) = match start {
        Start::Woken(id) => (true, Some(id), false),
        Start::Admitted(id) => (true, Some(id), true),
        Start::Accepted => (false, None, false),
    };
    let mut watch = WatchGuard::new(&http.idle, woken_with);
    let mut idle_since = slot.0.now();
    loop {
        if !has_input {
            let mut in_grace = false;
            let woke = loop {
                let (deadline, ends_on_drain) = match first_head_by {
                    // A connection accepted just before the drain gets the
                    // same grace for its first request.
                    Some(deadline) if in_grace => {
                        (deadline.min(idle_since + DRAIN_IDLE_GRACE), false)
                    }
                    Some(deadline) => (deadline, true),
                    None if in_grace => (idle_since + DRAIN_IDLE_GRACE, false),
                    None => (idle_since + http.shared.settings.keepalive_timeout, true),
                };
                let woke = wait_readable(&stream, slot.0, slot.1, deadline, ends_on_drain).await;
                if woke == Wake::Drained && !in_grace {
                    // Draining: a connection that was busy a moment ago may
                    // have its next request on the way, and closing now
                    // would race it. Take that request (answered with
                    // `Connection: close`), or close once idle for the grace
                    // period.
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
        }
        // Room among the core's requests at work, before anything is read
        // (admission.rs); a wait for it does not count against the head.
        let admission = &http.shared.admission;
        let counted = if std::mem::take(&mut admitted) {
            admission.claim_room()
        } else if admission.may_start() {
            admission.enter()
        } else {
            http.shared.core.note_request_queued();
            let (table, since) = (slot.0, slot.0.now());
            let bound = async {
                // A drain ends the wait too: the request is answered, with
                // `Connection: close`.
                table
                    .wait(slot.1, since + http.shared.settings.admission_wait, true)
                    .await;
            };
            // In a pooled frame: the connection's own future stays small
            // for the connections that never wait.
            let active = http
                .shared
                .core
                .frames
                .boxed_with(|| take_turn(admission, bound))
                .await;
            if let Some(by) = first_head_by.as_mut() {
                *by += table.now().saturating_duration_since(since);
            }
            active
        };
        let (h, s, key) = (&http, &mut stream, slot.1);
        let frames = &http.shared.core.frames;
        match frames
            .boxed_with(move || process_input(h, s, key, first_head_by, Some(counted)))
            .await
        {
            Served::Closed => return,
            // A stale event before the first request: wait for it again.
            Served::Nothing if first_head_by.is_some() => {
                has_input = false;
                continue;
            }
            Served::Nothing => {}
            Served::Idle { bytes_waiting } => {
                first_head_by = None;
                idle_since = slot.0.now();
                if bytes_waiting {
                    continue;
                }
            }
        }
        has_input = false;
        // A busy connection's next request usually follows soon: wait for
        // it in this task, on the core's epoll set, until the next tick;
        // only a connection still quiet then parks (and its task ends).
        // While requests wait for room, the next one would wait too: park
        // at once, and it waits parked, without a task to wake twice
        // (admission.rs); unless an event came that this task has not
        // looked at (bytes may be there, and a parked connection wakes only
        // on the next one): the wait below takes it at once.
        let draining = http.shared.core.draining();
        if let Some(id) = stream
            .epoll_fd()
            .filter(|_| !draining)
            .and_then(|fd| watch.get(fd))
            .filter(|&id| http.shared.admission.may_start() || http.idle.is_ready(id))
        {
            // Biased: the readiness first, and the deadline is not looked
            // at once the bytes are there (no random draw per wake).
            let woke = monoio::select! {
                biased;
                _ = http.idle.readable(id) => true,
                _ = slot.0.wait_next_tick(slot.1) => false,
            };
            if woke {
                has_input = true;
                continue;
            }
        }
        if !draining {
            let keepalive = http.shared.settings.keepalive_timeout;
            match http
                .idle
                .park(&mut watch, stream, open, idle_since, keepalive)
            {
                Ok(()) => return,
                // A pipe, parking is off, or bytes came meanwhile: wait here.
                Err((s, o)) => (stream, open) = (s, o),
            }
        }
    }
}

/// Serves an HTTPS connection: the handshake first, within the handshake
/// timeout and as one of the core's limited handshakes in progress, then
/// requests as on any connection.
pub(super) async fn serve_tls<S: Service>(http: Rc<HttpCore<S>>, tcp: TcpStream, open: OpenGuard) {
    let stream = {
        let Some(tls) = &http.tls else { return };
        let counters = &http.shared.core.tls;
        let bump = |c: &std::cell::Cell<u64>| c.set(c.get() + 1);
        // Past the limit the socket is closed at once: a handshake costs
        // real CPU, and a crowd of them must not starve the core.
        let Some(place) = tls.begin_handshake() else {
            bump(&counters.refused);
            return;
        };
        let mut stream = match TlsStream::new(tcp, tls.server_config(), http.shared.clone()) {
            Ok(s) => Box::new(s),
            Err(e) => {
                bump(&counters.failed);
                tracing::debug!(error = %e, "TLS connection not set up");
                return;
            }
        };
        let table = &http.shared.core.deadlines;
        let slot = SlotGuard::new(table);
        let deadline = table.now() + tls.handshake_timeout;
        let result = handshake(&mut stream, table, slot.1, deadline).await;
        drop(slot);
        drop(place);
        match result {
            Ok(()) => {
                bump(&counters.handshakes);
                if stream.resumed() {
                    bump(&counters.resumed);
                }
            }
            Err(HandshakeEnd::TimedOut) => {
                bump(&counters.timed_out);
                return;
            }
            Err(HandshakeEnd::Closed) => {
                bump(&counters.failed);
                return;
            }
            Err(HandshakeEnd::Failed(e)) => {
                bump(&counters.failed);
                tracing::debug!(error = %e, "TLS handshake failed");
                return;
            }
        }
        stream
    };
    serve(http, Stream::Tls(stream), open, Start::Accepted).await
}

/// During a drain, how long a connection that just answered a request is
/// given to send its next one before it is closed.
pub(super) const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

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
    stream: &Stream,
    table: &DeadlineTable,
    key: DeadlineKey,
    deadline: Instant,
    ends_on_drain: bool,
) -> Wake {
    monoio::select! {
        biased;
        r = stream.readable() => if r.is_ok() { Wake::Readable } else { Wake::Closed },
        end = table.wait(key, deadline, ends_on_drain) => match end {
            WaitEnd::Expired => Wake::TimedOut,
            WaitEnd::Drained => Wake::Drained,
        },
    }
}

async fn answer_and_close(
    shared: &Shared,
    stream: &mut Stream,
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
/// answered and sent. Its first read does not wait: a stale
/// event finds nothing and the connection goes back to waiting.
async fn process_input<S: Service>(
    http: &HttpCore<S>,
    stream: &mut Stream,
    key: DeadlineKey,
    mut first_head_by: Option<Instant>,
    counted: Option<Active>,
) -> Served {
    let settings = &http.shared.settings;
    let mut io = ConnIo::new(stream, &http.shared, key);
    // Woken by an event that may be stale: look before waiting on a read.
    match io.read_if_ready() {
        Ok(true) => {}
        Ok(false) => return Served::Nothing,
        Err(_) => return Served::Closed,
    }
    // The turn taken in `serve` counts from here: a wait for the rest of
    // the head is a wait on the client, which steps away from it.
    io.active = counted;
    loop {
        // A head must be complete within the head timeout, counted from the
        // accept for a new connection, from its first byte otherwise (the
        // turn it starts in: taken when a wait comes, none for a head that
        // is already whole, as pipelined ones are).
        let mut head_deadline = first_head_by.take();
        let head = loop {
            match parse_head_in_place(&mut io.rbuf, &settings.limits) {
                Ok(Some(head)) => break head,
                Ok(None) => {
                    let deadline =
                        *head_deadline.get_or_insert_with(|| io.now() + settings.head_timeout);
                    // Answers to earlier pipelined requests go out before
                    // waiting on the network for the rest of this one.
                    if io.flush().await.is_err() {
                        return Served::Closed;
                    }
                    match io.read_more(deadline).await {
                        Ok(()) => {}
                        Err(IoFailure::Timeout) => {
                            io.queue_error(StatusCode::REQUEST_TIMEOUT, "request head timed out");
                            io.close_gracefully().await;
                            return Served::Closed;
                        }
                        // EOF or reset, possibly after half a head: nothing to answer.
                        Err(_) => return Served::Closed,
                    }
                }
                Err(e) => {
                    io.queue_error(StatusCode(e.status()), e.message());
                    io.close_gracefully().await;
                    return Served::Closed;
                }
            }
        };

        // A head with a body is split off the read buffer, which the body is
        // then read from. One without stays at the buffer's front while it is
        // answered (nothing else is taken from the buffer meanwhile) and is
        // dropped from it afterwards: no reference-counted split per request.
        let head_bytes =
            (head.body_kind() != BodyKind::Empty).then(|| io.rbuf.split_to(head.len()).freeze());
        // Counted among the core's requests at work while its handler runs
        // (a pipelined request after the first: in the same turn).
        if io.active.is_none() {
            io.active = Some(http.shared.admission.enter());
        }
        let mut ex = Exchange::new(&mut io, &head, head_bytes, settings.max_body_bytes);
        http.service.call(&mut ex).await;
        ex.complete();
        if ex.keep_alive && !ex.discard_body().await {
            ex.keep_alive = false;
        }
        let (keep_alive, io_failed) = ex.into_parts();
        io.active = None;
        if io_failed {
            return Served::Closed;
        }
        if !keep_alive {
            io.close_gracefully().await;
            return Served::Closed;
        }
        // Pipelining: answers accumulate while complete requests remain
        // buffered, and go out together once none does (or once enough is
        // queued). With nothing left to read, the connection goes idle.
        if io.rbuf.is_empty() {
            if io.flush().await.is_err() {
                return Served::Closed;
            }
            // Nothing left to read: the connection waits for its next
            // request (in `serve`), holding no buffer.
            return Served::Idle {
                bytes_waiting: io.bytes_waiting(),
            };
        }
        if io.wbuf.len() >= settings.write_high_water && io.flush().await.is_err() {
            return Served::Closed;
        }
    }
}

/// Answers a connection past the core's limit with 503 and closes it.
pub(super) async fn refuse<S: Service>(http: Rc<HttpCore<S>>, mut stream: Stream) {
    let slot = SlotGuard::new(&http.shared.core.deadlines);
    let mut io = ConnIo::new(&mut stream, &http.shared, slot.1);
    let body = b"503 Service Unavailable: too many connections\n";
    io.encode_head(&ResponseHead {
        status: StatusCode::SERVICE_UNAVAILABLE,
        framing: Framing::Length(body.len() as u64),
        keep_alive: false,
        http10: false,
        content_type: Some(b"text/plain; charset=utf-8"),
        extra: &[("Retry-After", b"1")],
    });
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
            let _client = monoio::net::TcpStream::connect(addr).await.unwrap();
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
            let mut stream2 = Stream::Tcp(monoio::net::TcpStream::connect(addr).await.unwrap());
            let work = process_input(&http, &mut stream2, DeadlineKey::for_tests(), None, None);
            let work_size = std::mem::size_of_val(&work);
            drop(work);
            println!("work future (boxed while a connection is busy): {work_size} bytes");
            assert!(
                work_size <= 2048,
                "the per-request work future grew to {work_size} bytes"
            );
            let open = OpenGuard::new(http.core());
            let fut = serve(http, Stream::Tcp(stream), open, Start::Accepted);
            let size = std::mem::size_of_val(&fut);
            println!("connection future: {size} bytes");
            assert!(size <= 512, "connection future grew to {size} bytes");
        });
    }
}

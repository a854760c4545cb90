//! One PostgreSQL connection, pipelined, on one core: a thin driver around
//! the sans-I/O [`Pipeline`] of `ringside_wire::pg`.
//!
//! Callers queue requests through the pipeline, which appends their bytes to
//! the connection's write buffer and tags each with a [`RequestId`]; a writer
//! task sends whatever is queued in one write; a reader task feeds what the
//! server sends to the pipeline and hands each completion to the caller
//! waiting for that id. A caller that goes away abandons its request: the
//! pipeline still reads its response to the end, so the connection stays in
//! step, and keeps nothing of it.

#![allow(
    unsafe_code,
    reason = "a non-blocking send(2) and shutdown(2) on the connection's own socket"
)]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncWriteRentExt, Splitable};
use monoio::net::{TcpStream, UnixStream};
use ringside_wire::pg::pipeline::{self, Event, Pipeline, RequestError, RequestId};
use ringside_wire::pg::{
    frontend, ChannelBindingMode, PgError, Session, Startup, StartupParams, TxStatus,
};

use super::config::{ChannelBinding, PgConfig, PgHost};
use super::QueryError;

mod copy;
mod socket;
mod tls;

pub use tls::preload as preload_tls;

pub use copy::CopyIn;
use socket::{read_loop, write_loop, Reader, Writer};

/// Limits and timeouts a connection works with.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Largest backend message accepted (bounds the read buffer).
    pub max_message_bytes: usize,
    /// Largest result one request may buffer; past it the request fails
    /// (the rest of its response is read and dropped).
    pub max_result_bytes: usize,
    /// Most statements batched under one Sync
    /// ([`PgConn::start_query_batched`]).
    pub max_batch: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            max_message_bytes: 16 << 20,
            max_result_bytes: 16 << 20,
            max_batch: 32,
        }
    }
}

/// A statement the application uses, prepared once per connection.
#[derive(Debug)]
pub struct Statement {
    pub sql: &'static str,
    /// Parameter type OIDs (0 lets the server infer).
    pub param_types: &'static [u32],
    /// The statement only reads: the pool may run it again on another
    /// connection when its connection breaks before the answer arrives.
    /// Never set it on a statement that writes or has side effects.
    pub read_only: bool,
    /// A read that must see the latest commits (read-your-writes): with
    /// replicas (`--db-replica`) it still runs on the primary. Only
    /// meaningful with `read_only`; writes always run on the primary.
    pub fresh: bool,
}

pub use ringside_wire::pg::pipeline::{Param, Rows};

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("process_id", &self.session.process_id)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.broken.borrow())
            .finish()
    }
}

/// Hashes request ids, which are a connection's own sequence numbers: one
/// multiplication spreads them (SipHash, the default, guards against keys
/// an attacker picks, which these are not, and cost 1.5 % of a
/// TechEmpower `/db` request in `perf`).
#[derive(Clone, Copy, Default)]
struct SeqHash;

impl std::hash::BuildHasher for SeqHash {
    type Hasher = SeqHasher;
    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which the table uses, all vary.
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A connected, authenticated connection.
pub struct PgConn {
    pub session: Session,
    /// The protocol state: requests in flight, prepared statements.
    pipeline: RefCell<Pipeline>,
    /// Request bytes not yet handed to the writer.
    wbuf: RefCell<BytesMut>,
    /// Callers waiting for their requests' completions.
    waiting: RefCell<HashMap<RequestId, Waiting, SeqHash>>,
    writer_waker: RefCell<Option<Waker>>,
    /// Bytes queued so far, and bytes written so far: a COPY sender waits
    /// until what it queued was written (back-pressure).
    queued_bytes: Cell<u64>,
    written_bytes: Cell<u64>,
    /// Bytes the writer has taken to send so far: a request whose bytes
    /// are all below it may already run on the server.
    taken_bytes: Cell<u64>,
    /// Requests queued since the writer last took the write buffer.
    pub(super) unsent: Cell<usize>,
    max_batch: usize,
    write_waiters: RefCell<Vec<Waker>>,
    broken: RefCell<Option<String>>,
    /// Set after a panic in the middle of using the pipeline: nothing more
    /// is taken from it (see [`PgConn::break_after_panic`]).
    poisoned: Cell<bool>,
    fd: i32,
    /// Called whenever a request completes or the connection breaks.
    on_idle: RefCell<Option<Box<dyn Fn()>>>,
}

/// What a caller waits for.
#[derive(Default)]
struct Waiting {
    waker: Option<Waker>,
    copy_ready: bool,
    done: Option<Result<Rows, QueryError>>,
}

impl PgConn {
    /// Connects, authenticates and starts the reader and writer tasks.
    pub async fn connect(
        cfg: &PgConfig,
        addrs: &[SocketAddr],
        settings: ConnSettings,
    ) -> Result<Rc<PgConn>, QueryError> {
        match monoio::time::timeout(
            cfg.connect_timeout,
            Self::connect_inner(cfg, addrs, settings),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(QueryError::Unavailable(format!(
                "connecting to {cfg}: timed out after {:?}",
                cfg.connect_timeout
            ))),
        }
    }

    async fn connect_inner(
        cfg: &PgConfig,
        addrs: &[SocketAddr],
        settings: ConnSettings,
    ) -> Result<Rc<PgConn>, QueryError> {
        let unavailable =
            |e: io::Error| QueryError::Unavailable(format!("connecting to {cfg}: {e}"));
        // The TLS session's channel-binding data, when there is one.
        let mut end_point = None;
        let (mut reader, mut writer, fd) = match &cfg.host {
            PgHost::Unix(_) => {
                let path = cfg.socket_path().expect("unix host has a socket path");
                let s = UnixStream::connect(path).await.map_err(unavailable)?;
                let fd = s.as_raw_fd();
                let (r, w) = s.into_split();
                (Reader::Unix(r), Writer::Unix(w), fd)
            }
            PgHost::Tcp(host) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                let mut stream = None;
                for addr in addrs {
                    match TcpStream::connect_addr(*addr).await {
                        Ok(s) => {
                            stream = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let mut s = stream.ok_or_else(|| unavailable(last))?;
                let _ = s.set_nodelay(true);
                let fd = s.as_raw_fd();
                let negotiated = tls::negotiate(&mut s, cfg, host).await?;
                let (r, w) = s.into_split();
                match negotiated {
                    None => (Reader::Tcp(r), Writer::Tcp(w), fd),
                    Some(n) => {
                        end_point = n.server_end_point;
                        (
                            Reader::Tls {
                                half: r,
                                session: n.session.clone(),
                                cipher: n.leftover,
                                closed: false,
                            },
                            Writer::Tls {
                                half: w,
                                session: n.session,
                                cipher: BytesMut::new(),
                            },
                            fd,
                        )
                    }
                }
            }
        };
        let params = StartupParams {
            user: &cfg.user,
            database: Some(&cfg.dbname),
            application_name: Some(&cfg.application_name),
            options: cfg.options.as_deref(),
            password: cfg.password.as_deref().map(str::as_bytes),
            channel_binding: match cfg.tls.channel_binding {
                ChannelBinding::Disable => ChannelBindingMode::Disable,
                ChannelBinding::Prefer => ChannelBindingMode::Prefer,
                ChannelBinding::Require => ChannelBindingMode::Require,
            },
            tls_server_end_point: end_point.as_deref(),
        };
        let mut out = BytesMut::with_capacity(256);
        let mut startup = Startup::try_new(&params, &mut out).map_err(QueryError::Pg)?;
        let mut input = BytesMut::with_capacity(4096);
        let session = loop {
            if !out.is_empty() {
                let (res, b) = writer.write_all(out).await;
                res.map_err(unavailable)?;
                out = b;
                out.clear();
            }
            match startup.feed(&mut input, &mut out).map_err(QueryError::Pg)? {
                Some(session) => break session,
                None if !out.is_empty() => continue,
                None => {}
            }
            input.reserve(4096);
            let (res, b) = reader.read(input).await;
            input = b;
            match res {
                Ok(0) => {
                    return Err(QueryError::Unavailable(format!(
                        "connecting to {cfg}: the server closed the connection during startup"
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(unavailable(e)),
            }
        };
        let limits = pipeline::Limits {
            max_message_bytes: settings.max_message_bytes,
            max_result_bytes: settings.max_result_bytes,
        };
        let conn = Rc::new(PgConn {
            pipeline: RefCell::new(Pipeline::new(limits, session.transaction_status)),
            session,
            wbuf: RefCell::new(BytesMut::with_capacity(4096)),
            waiting: RefCell::new(HashMap::default()),
            writer_waker: RefCell::new(None),
            queued_bytes: Cell::new(0),
            written_bytes: Cell::new(0),
            taken_bytes: Cell::new(0),
            unsent: Cell::new(0),
            max_batch: settings.max_batch.max(1),
            write_waiters: RefCell::new(Vec::new()),
            broken: RefCell::new(None),
            poisoned: Cell::new(false),
            fd,
            on_idle: RefCell::new(None),
        });
        monoio::spawn(contain(
            conn.clone(),
            "writer",
            write_loop(conn.clone(), writer),
        ));
        monoio::spawn(contain(
            conn.clone(),
            "reader",
            read_loop(conn.clone(), reader, input),
        ));
        Ok(conn)
    }

    /// Sets what to call when a request completes or the connection breaks
    /// (the pool uses it to hand the capacity to a waiter).
    pub fn set_on_idle(&self, f: Box<dyn Fn()>) {
        *self.on_idle.borrow_mut() = Some(f);
    }

    pub fn is_broken(&self) -> bool {
        self.broken.borrow().is_some()
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.get()
    }

    /// Whether requests are queued that the writer has not taken yet, fewer
    /// than a batch's worth (`max_batch`), and the writer is not stuck on an
    /// earlier write (a backend not reading): one more joins their write
    /// (one send, one wake-up of the backend) instead of starting another.
    pub fn has_open_write(&self) -> bool {
        (1..self.max_batch).contains(&self.unsent.get())
            && self.taken_bytes.get() == self.written_bytes.get()
    }

    /// Requests sent whose responses have not ended yet.
    pub fn in_flight(&self) -> usize {
        self.pipeline.borrow().in_flight()
    }

    pub fn transaction_status(&self) -> TxStatus {
        self.pipeline.borrow().tx_status()
    }

    /// Queues a request through the pipeline (its bytes into the write
    /// buffer, in one step with its place in the response order) and a
    /// place to wait for it.
    fn enqueue(
        &self,
        queue: impl FnOnce(&mut Pipeline, &mut BytesMut) -> Result<RequestId, PgError>,
    ) -> Result<RequestId, QueryError> {
        if let Some(why) = self.broken.borrow().as_ref() {
            return Err(QueryError::ConnectionLost(why.clone()));
        }
        let (id, appended) = self.encode(queue);
        let id = id.map_err(QueryError::Pg)?;
        self.queued_bytes
            .set(self.queued_bytes.get() + appended as u64);
        self.unsent.set(self.unsent.get() + 1);
        self.waiting.borrow_mut().insert(id, Waiting::default());
        self.wake_writer();
        Ok(id)
    }

    /// Runs `encode` on the pipeline and the write buffer; returns its
    /// result and how many bytes it appended. Should it panic (a bug) in the
    /// middle, the pipeline may have recorded less than the bytes say, and a
    /// request it did not record would take the next one's answer: the bytes
    /// are cut off and the connection closed before the panic goes on.
    fn encode<T>(&self, encode: impl FnOnce(&mut Pipeline, &mut BytesMut) -> T) -> (T, usize) {
        let mut wbuf = self.wbuf.borrow_mut();
        let before = wbuf.len();
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encode(&mut self.pipeline.borrow_mut(), &mut wbuf)
        }));
        match encoded {
            Ok(v) => (v, wbuf.len() - before),
            Err(payload) => {
                wbuf.truncate(before);
                drop(wbuf);
                let why = crate::runtime::panic_message(&*payload);
                self.close_after_panic(format!("internal error while queuing: {why}"));
                std::panic::resume_unwind(payload)
            }
        }
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Runs a prepared statement (Parse and Describe the first time on this
    /// connection) and collects its rows, binary format for every column.
    pub async fn query(
        self: &Rc<Self>,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        self.start_query(stmt, params, "", 0)?.rows().await
    }

    /// Queues a prepared statement without waiting (pipelining); await the
    /// returned response.
    pub fn start_query(
        self: &Rc<Self>,
        stmt: &'static Statement,
        params: &[Param<'_>],
        portal: &str,
        max_rows: i32,
    ) -> Result<Pending, QueryError> {
        let id = self
            .enqueue(|p, out| p.query(stmt.sql, stmt.param_types, params, portal, max_rows, out))?;
        Ok(Pending::new(self, id))
    }

    /// Queues a read-only statement in the connection's open batch: the
    /// statements queued before the writer next runs share one Sync (one
    /// implicit transaction on the server, see
    /// [`Pipeline::query_in_batch`]). Only for single read-only statements
    /// outside a transaction; one skipped because another in its batch
    /// failed ends with [`QueryError::Skipped`] and must be run again.
    pub fn start_query_batched(
        self: &Rc<Self>,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Pending, QueryError> {
        let max_batch = self.max_batch;
        let id = self.enqueue(|p, out| {
            let id = p.query_in_batch(stmt.sql, stmt.param_types, params, out)?;
            if p.open_batch() >= max_batch {
                p.close_batch(out);
            }
            Ok(id)
        })?;
        Ok(Pending::new(self, id))
    }

    /// Ends the open batch with its Sync (the writer does, before it sends).
    fn close_batch(&self) {
        let mut wbuf = self.wbuf.borrow_mut();
        let before = wbuf.len();
        self.pipeline.borrow_mut().close_batch(&mut wbuf);
        self.queued_bytes
            .set(self.queued_bytes.get() + (wbuf.len() - before) as u64);
    }

    /// Fetches up to `max_rows` more rows of a suspended portal (inside a
    /// transaction: portals end with it).
    pub fn continue_portal(
        self: &Rc<Self>,
        stmt: &'static Statement,
        portal: &str,
        max_rows: i32,
    ) -> Result<Pending, QueryError> {
        let id = self.enqueue(|p, out| p.continue_portal(stmt.sql, portal, max_rows, out))?;
        Ok(Pending::new(self, id))
    }

    /// Runs SQL with the simple query protocol (several statements allowed;
    /// rows come in text format).
    pub async fn simple(self: &Rc<Self>, sql: &str) -> Result<Rows, QueryError> {
        let id = self.enqueue(|p, out| p.simple(sql, out))?;
        Pending::new(self, id).rows().await
    }

    /// Starts `COPY ... FROM STDIN`; returns once the server asks for data.
    pub async fn copy_in(self: &Rc<Self>, sql: &str) -> Result<CopyIn, QueryError> {
        let id = self.enqueue(|p, out| p.simple(sql, out))?;
        // Until the CopyIn exists, a caller that goes away abandons it.
        let mut pending = Pending::new(self, id);
        Ready { conn: self, id }.await;
        match self.take_done(id) {
            Some(Err(e)) => return Err(e),
            Some(Ok(_)) => {
                return Err(QueryError::Pg(PgError::Protocol(
                    "COPY ended before it asked for data".into(),
                )))
            }
            None if !self.is_waiting(id) => {
                return Err(QueryError::ConnectionLost("COPY request lost".into()))
            }
            None => {}
        }
        // From here the CopyIn owns the request.
        pending.finished = true;
        Ok(CopyIn {
            conn: self.clone(),
            id,
        })
    }

    fn is_waiting(&self, id: RequestId) -> bool {
        self.waiting.borrow().contains_key(&id)
    }

    fn take_done(&self, id: RequestId) -> Option<Result<Rows, QueryError>> {
        let mut waiting = self.waiting.borrow_mut();
        let done = waiting.get_mut(&id)?.done.take()?;
        waiting.remove(&id);
        Some(done)
    }

    /// The caller of `id` went away.
    fn abandon(&self, id: RequestId) {
        self.waiting.borrow_mut().remove(&id);
        self.pipeline.borrow_mut().abandon(id);
    }

    /// Hands the pipeline's completions to their callers.
    fn deliver(&self) {
        if self.poisoned.get() {
            return;
        }
        let mut any_done = false;
        loop {
            let Some(event) = self.pipeline.borrow_mut().next_event() else {
                break;
            };
            let mut waiting = self.waiting.borrow_mut();
            let (id, entry) = match event {
                Event::CopyReady(id) => match waiting.get_mut(&id) {
                    Some(w) => {
                        w.copy_ready = true;
                        (id, w)
                    }
                    None => continue,
                },
                Event::Done(id, result) => {
                    any_done = true;
                    match waiting.get_mut(&id) {
                        Some(w) => {
                            w.done = Some(result.map_err(request_error));
                            (id, w)
                        }
                        None => continue,
                    }
                }
            };
            let _ = id;
            if let Some(w) = entry.waker.take() {
                w.wake();
            }
        }
        if any_done {
            for w in self.write_waiters.borrow_mut().drain(..) {
                w.wake();
            }
            self.notify_idle();
        }
    }

    /// Closes the socket: the reader and writer stop, requests in flight fail.
    pub fn close(&self, why: &str) {
        self.break_with(why.to_string());
        // SAFETY: shutdown(2) on our own socket; it stays open (the halves
        // own it) until the tasks drop them, so the fd cannot be reused.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// [`PgConn::close`] after a panic in the reader or writer (see
    /// [`PgConn::break_after_panic`]); the other half stops too.
    fn close_after_panic(&self, why: String) {
        self.break_after_panic(why);
        // SAFETY: as in `close`.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// Marks the connection broken and fails every request in flight.
    fn break_with(&self, why: String) {
        self.break_trusting(why, true);
    }

    /// [`PgConn::break_with`] after a panic in the reader or writer: the
    /// pipeline may have been left in mid-update, so nothing more is taken
    /// from it (no result is risked on the wrong request); every request
    /// still waiting fails.
    fn break_after_panic(&self, why: String) {
        self.break_trusting(why, false);
    }

    fn break_trusting(&self, why: String, pipeline_intact: bool) {
        if pipeline_intact {
            if self.broken.borrow().is_some() {
                return;
            }
        } else {
            // Even if broken already (a panic in the middle of breaking it),
            // everyone still waiting must fail now.
            self.poisoned.set(true);
        }
        let why = self.broken.borrow_mut().get_or_insert(why).clone();
        let unanswered = if pipeline_intact {
            // Completions the pipeline already made go to their callers first.
            self.deliver();
            self.pipeline.borrow_mut().take_unanswered(&why)
        } else {
            Vec::new()
        };
        let mut waiting = self.waiting.borrow_mut();
        for id in unanswered {
            if let Some(w) = waiting.get_mut(&id) {
                w.done = Some(Err(QueryError::ConnectionLost(format!(
                    "database connection lost: {why}"
                ))));
                if let Some(waker) = w.waker.take() {
                    waker.wake();
                }
            }
        }
        // A COPY waiting for data, or anyone else still waiting, learns too.
        for w in waiting.values_mut() {
            if w.done.is_none() {
                w.done = Some(Err(QueryError::ConnectionLost(format!(
                    "database connection lost: {why}"
                ))));
            }
            if let Some(waker) = w.waker.take() {
                waker.wake();
            }
        }
        drop(waiting);
        self.wake_writer();
        for w in self.write_waiters.borrow_mut().drain(..) {
            w.wake();
        }
        self.notify_idle();
    }

    fn notify_idle(&self) {
        if let Some(f) = self.on_idle.borrow().as_ref() {
            f();
        }
    }

    /// A CancelRequest for whatever this connection runs, on a fresh
    /// connection, as PostgreSQL requires.
    pub fn cancel(
        &self,
        cfg: &PgConfig,
        addrs: &[SocketAddr],
    ) -> impl Future<Output = ()> + 'static {
        let (pid, key) = (self.session.process_id, self.session.secret_key);
        let cfg = cfg.clone();
        let addrs = addrs.to_vec();
        async move {
            let mut buf = BytesMut::with_capacity(16);
            frontend::cancel_request(pid, key, &mut buf);
            let send = async {
                match &cfg.host {
                    PgHost::Unix(_) => {
                        if let Some(path) = cfg.socket_path() {
                            if let Ok(mut s) = UnixStream::connect(path).await {
                                let _ = s.write_all(buf).await;
                            }
                        }
                    }
                    // Over the same kind of connection as the session's:
                    // TLS first when the settings ask for it.
                    PgHost::Tcp(host) => {
                        if let Some(addr) = addrs.first() {
                            if let Ok(mut s) = TcpStream::connect_addr(*addr).await {
                                match tls::negotiate(&mut s, &cfg, host).await {
                                    Ok(None) => {
                                        let _ = s.write_all(buf).await;
                                    }
                                    Ok(Some(n)) => {
                                        let mut out = BytesMut::new();
                                        if n.session.borrow_mut().seal(&buf, &mut out).is_ok() {
                                            let _ = s.write_all(out).await;
                                        }
                                    }
                                    Err(_) => {}
                                }
                            }
                        }
                    }
                }
            };
            let _ = monoio::time::timeout(Duration::from_secs(5), send).await;
        }
    }
}

fn request_error(e: RequestError) -> QueryError {
    match e {
        RequestError::Pg(e) => QueryError::Pg(e),
        RequestError::TooLarge => QueryError::TooLarge,
        RequestError::Skipped => QueryError::Skipped,
    }
}

/// A queued request's response; dropping it before the end abandons the
/// request (its response is still read, and dropped).
pub struct Pending {
    conn: Rc<PgConn>,
    id: RequestId,
    finished: bool,
    /// Where the request's bytes end in the connection's output.
    end: u64,
}

impl Pending {
    /// Made right after the request was queued: its bytes end where the
    /// output does now.
    fn new(conn: &Rc<PgConn>, id: RequestId) -> Self {
        Pending {
            conn: conn.clone(),
            id,
            finished: false,
            end: conn.queued_bytes.get(),
        }
    }

    /// Tells, as long as it is kept, whether this request has been sent.
    pub fn sent_probe(&self) -> SentProbe {
        SentProbe {
            conn: self.conn.clone(),
            end: self.end,
        }
    }

    pub async fn rows(mut self) -> Result<Rows, QueryError> {
        let r = Done {
            conn: &self.conn,
            id: self.id,
        }
        .await;
        self.finished = true;
        r
    }
}

/// Whether a queued request has left for the server yet. Until it has, the
/// server cannot have taken its snapshot: an answer to it reflects every
/// commit made before now.
pub struct SentProbe {
    conn: Rc<PgConn>,
    end: u64,
}

impl SentProbe {
    pub fn is_sent(&self) -> bool {
        self.conn.taken_bytes.get() >= self.end || self.conn.is_broken()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.abandon(self.id);
        }
    }
}

/// Waits for a request's completion.
struct Done<'a> {
    conn: &'a PgConn,
    id: RequestId,
}

impl Future for Done<'_> {
    type Output = Result<Rows, QueryError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(done) = self.conn.take_done(self.id) {
            return Poll::Ready(done);
        }
        match self.conn.waiting.borrow_mut().get_mut(&self.id) {
            Some(w) => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            None => Poll::Ready(Err(QueryError::ConnectionLost(
                "the request is no longer in flight".into(),
            ))),
        }
    }
}

/// Waits until a COPY request is ready for data, or has ended.
struct Ready<'a> {
    conn: &'a PgConn,
    id: RequestId,
}

impl Future for Ready<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.conn.waiting.borrow_mut().get_mut(&self.id) {
            Some(w) if !w.copy_ready && w.done.is_none() => {
                w.waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

/// Runs one of a connection's two loops. A panic in it (a bug) breaks that
/// connection: its queries fail and the pool connects again, instead of
/// the panic ending the core (see `runtime::panics`).
async fn contain(conn: Rc<PgConn>, half: &'static str, io_loop: impl Future<Output = ()>) {
    if let Err(why) = crate::runtime::catch_panic(io_loop).await {
        tracing::error!(
            "a database connection's {half} panicked (a bug): {why}; connection closed"
        );
        conn.close_after_panic(format!("internal error in its {half}: {why}"));
    }
}

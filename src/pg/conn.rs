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

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::{TcpStream, UnixStream};
use ringside_wire::pg::pipeline::{self, Event, Pipeline, RequestError, RequestId};
use ringside_wire::pg::{frontend, PgError, Session, Startup, StartupParams, TxStatus};

use super::config::{PgConfig, PgHost};
use super::QueryError;
use crate::runtime::read_append;

/// Limits and timeouts a connection works with.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Largest backend message accepted (bounds the read buffer).
    pub max_message_bytes: usize,
    /// Largest result one request may buffer; past it the request fails
    /// (the rest of its response is read and dropped).
    pub max_result_bytes: usize,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            max_message_bytes: 16 << 20,
            max_result_bytes: 16 << 20,
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
}

pub use ringside_wire::pg::pipeline::{Param, Rows};

enum Reader {
    Tcp(OwnedReadHalf<TcpStream>),
    Unix(OwnedReadHalf<UnixStream>),
}

enum Writer {
    Tcp(OwnedWriteHalf<TcpStream>),
    Unix(OwnedWriteHalf<UnixStream>),
}

impl Reader {
    /// Appends what arrives to `buf` (which must have spare capacity).
    async fn read(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Reader::Tcp(r) => read_append(r, buf).await,
            Reader::Unix(r) => read_append(r, buf).await,
        }
    }
}

impl Writer {
    async fn write_all(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Writer::Tcp(w) => w.write_all(buf).await,
            Writer::Unix(w) => w.write_all(buf).await,
        }
    }
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("process_id", &self.session.process_id)
            .field("in_flight", &self.in_flight())
            .field("broken", &self.broken.borrow())
            .finish()
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
    waiting: RefCell<HashMap<RequestId, Waiting>>,
    writer_waker: RefCell<Option<Waker>>,
    /// Bytes queued so far, and bytes written so far: a COPY sender waits
    /// until what it queued was written (back-pressure).
    queued_bytes: Cell<u64>,
    written_bytes: Cell<u64>,
    write_waiters: RefCell<Vec<Waker>>,
    broken: RefCell<Option<String>>,
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
        let (mut reader, mut writer, fd) = match &cfg.host {
            PgHost::Unix(_) => {
                let path = cfg.socket_path().expect("unix host has a socket path");
                let s = UnixStream::connect(path).await.map_err(unavailable)?;
                let fd = s.as_raw_fd();
                let (r, w) = s.into_split();
                (Reader::Unix(r), Writer::Unix(w), fd)
            }
            PgHost::Tcp(_) => {
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
                let s = stream.ok_or_else(|| unavailable(last))?;
                let _ = s.set_nodelay(true);
                let fd = s.as_raw_fd();
                let (r, w) = s.into_split();
                (Reader::Tcp(r), Writer::Tcp(w), fd)
            }
        };
        let params = StartupParams {
            user: &cfg.user,
            database: Some(&cfg.dbname),
            application_name: Some(&cfg.application_name),
            options: None,
            password: cfg.password.as_deref().map(str::as_bytes),
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
            waiting: RefCell::new(HashMap::new()),
            writer_waker: RefCell::new(None),
            queued_bytes: Cell::new(0),
            written_bytes: Cell::new(0),
            write_waiters: RefCell::new(Vec::new()),
            broken: RefCell::new(None),
            fd,
            on_idle: RefCell::new(None),
        });
        monoio::spawn(write_loop(conn.clone(), writer));
        monoio::spawn(read_loop(conn.clone(), reader, input));
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
        let mut wbuf = self.wbuf.borrow_mut();
        let before = wbuf.len();
        let id = queue(&mut self.pipeline.borrow_mut(), &mut wbuf).map_err(QueryError::Pg)?;
        self.queued_bytes
            .set(self.queued_bytes.get() + (wbuf.len() - before) as u64);
        drop(wbuf);
        self.waiting.borrow_mut().insert(id, Waiting::default());
        self.wake_writer();
        Ok(id)
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

    /// Marks the connection broken and fails every request in flight.
    fn break_with(&self, why: String) {
        if self.broken.borrow().is_some() {
            return;
        }
        *self.broken.borrow_mut() = Some(why.clone());
        // Completions the pipeline already made go to their callers first.
        self.deliver();
        let unanswered = self.pipeline.borrow_mut().take_unanswered(&why);
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
                    PgHost::Tcp(_) => {
                        if let Some(addr) = addrs.first() {
                            if let Ok(mut s) = TcpStream::connect_addr(*addr).await {
                                let _ = s.write_all(buf).await;
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
    }
}

/// A queued request's response; dropping it before the end abandons the
/// request (its response is still read, and dropped).
pub struct Pending {
    conn: Rc<PgConn>,
    id: RequestId,
    finished: bool,
}

impl Pending {
    fn new(conn: &Rc<PgConn>, id: RequestId) -> Self {
        Pending {
            conn: conn.clone(),
            id,
            finished: false,
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

/// A COPY FROM STDIN in progress on a connection held exclusively.
pub struct CopyIn {
    conn: Rc<PgConn>,
    id: RequestId,
}

impl CopyIn {
    /// Sends one piece of COPY data and returns once it was written to the
    /// socket: a slow database fills the socket, the write waits, and the
    /// caller does not read more input meanwhile (back-pressure).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), QueryError> {
        self.check()?;
        let target = self.queue(|p, out| p.copy_data(data, out))?;
        Written {
            conn: &self.conn,
            target,
        }
        .await;
        self.check()
    }

    /// Appends COPY messages to the write buffer; returns the byte count
    /// the writer must reach for them to be sent.
    fn queue(
        &self,
        encode: impl FnOnce(&mut Pipeline, &mut BytesMut) -> Result<(), PgError>,
    ) -> Result<u64, QueryError> {
        let mut wbuf = self.conn.wbuf.borrow_mut();
        let before = wbuf.len();
        encode(&mut self.conn.pipeline.borrow_mut(), &mut wbuf).map_err(QueryError::Pg)?;
        let queued = self.conn.queued_bytes.get() + (wbuf.len() - before) as u64;
        self.conn.queued_bytes.set(queued);
        drop(wbuf);
        self.conn.wake_writer();
        Ok(queued)
    }

    /// Whether the COPY's response has ended (the server's error, or done).
    fn ended(&self) -> bool {
        self.conn
            .waiting
            .borrow()
            .get(&self.id)
            .is_none_or(|w| w.done.is_some())
    }

    fn check(&self) -> Result<(), QueryError> {
        if let Some(why) = self.conn.broken.borrow().as_ref() {
            return Err(QueryError::ConnectionLost(why.clone()));
        }
        if self.ended() {
            // The server ended the COPY (an error in the data).
            return Err(match self.conn.take_done(self.id) {
                Some(Err(e)) => e,
                _ => QueryError::Pg(PgError::Protocol("COPY ended early".into())),
            });
        }
        Ok(())
    }

    /// Ends the data; returns the number of rows copied.
    pub async fn finish(self) -> Result<u64, QueryError> {
        self.check()?;
        self.queue(|p, out| {
            p.copy_done(out);
            Ok(())
        })?;
        let rows = Done {
            conn: &self.conn,
            id: self.id,
        }
        .await?;
        Ok(rows.affected().unwrap_or(0))
    }

    /// Aborts the COPY; nothing of it is kept. Waits until the server has
    /// acknowledged, so the connection is in step again afterwards.
    pub async fn abort(self, why: &str) {
        if !self.ended() && !self.conn.is_broken() {
            let _ = self.queue(|p, out| {
                p.copy_fail(why, out);
                Ok(())
            });
        }
        let _ = Done {
            conn: &self.conn,
            id: self.id,
        }
        .await;
    }
}

impl Drop for CopyIn {
    fn drop(&mut self) {
        if self.conn.is_waiting(self.id) {
            self.conn.abandon(self.id);
        }
    }
}

/// Waits until the writer has written up to `target` queued bytes.
struct Written<'a> {
    conn: &'a PgConn,
    target: u64,
}

impl Future for Written<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.conn.written_bytes.get() >= self.target || self.conn.is_broken() {
            return Poll::Ready(());
        }
        self.conn
            .write_waiters
            .borrow_mut()
            .push(cx.waker().clone());
        Poll::Pending
    }
}

/// Waits until there is something to write (or the connection broke).
struct HasWork<'a>(&'a PgConn);

impl Future for HasWork<'_> {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if self.0.is_broken() {
            return Poll::Ready(false);
        }
        if !self.0.wbuf.borrow().is_empty() {
            return Poll::Ready(true);
        }
        *self.0.writer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Sends whatever is queued, all of it in one write, until the connection breaks.
async fn write_loop(conn: Rc<PgConn>, mut writer: Writer) {
    let mut spare = BytesMut::with_capacity(4096);
    while HasWork(&conn).await {
        let mut out = std::mem::replace(&mut *conn.wbuf.borrow_mut(), spare);
        let len = out.len() as u64;
        // A plain non-blocking send first: the socket almost always has
        // room, and this spares the ring a send op whose completion would
        // wake the runtime once more per batch (a round trip costs one
        // io_uring_enter instead of two). What it did not take goes through
        // the ring, which waits for room.
        let res = match send_now(conn.fd, &out) {
            Ok(n) if n == out.len() => Ok(()),
            Ok(n) => {
                out.advance(n);
                let (res, b) = writer.write_all(out).await;
                out = b;
                res.map(drop)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let (res, b) = writer.write_all(out).await;
                out = b;
                res.map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            conn.break_with(format!("write failed: {e}"));
            break;
        }
        conn.written_bytes.set(conn.written_bytes.get() + len);
        for w in conn.write_waiters.borrow_mut().drain(..) {
            w.wake();
        }
        out.clear();
        // Keep a modest buffer; a large COPY batch is not kept around.
        spare = if out.capacity() > 256 << 10 {
            BytesMut::with_capacity(4096)
        } else {
            out
        };
    }
    // Dropping the writer half; the reader half keeps the socket open
    // until it stops too.
    let mut buf = BytesMut::new();
    frontend::terminate(&mut buf);
    let _ = writer.write_all(buf).await;
}

/// One non-blocking send(2) of `buf` on our socket (no SIGPIPE).
fn send_now(fd: i32, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is this
        // connection's socket, kept open by the writer half we hold.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads responses: the pipeline frames them and completes their requests.
/// Room a read is given at least, and how much the read buffer grows by.
const READ_ROOM: usize = 4096;
const READ_GROWTH: usize = 32 << 10;

/// Makes room in the read buffer for the next read. Rows handed out are
/// views of the buffer they were read into (no copy), so a buffer can be
/// reused in place only once their handlers dropped them. Two buffers take
/// turns: when one is full and still pinned by rows, reading goes on in the
/// other, whose rows are long gone by then; a third is allocated only if
/// both are still held.
fn make_read_room(rbuf: &mut BytesMut, spare: &mut BytesMut) {
    if rbuf.try_reclaim(READ_ROOM) {
        return;
    }
    let need = rbuf.len() + READ_ROOM;
    spare.clear();
    if !spare.try_reclaim(need) {
        // Doubling: a large message arriving in many reads is copied along
        // a logarithmic number of times.
        *spare = BytesMut::with_capacity((2 * need).max(READ_GROWTH));
    }
    // The start of a message not yet complete moves along.
    spare.extend_from_slice(rbuf);
    rbuf.clear();
    std::mem::swap(rbuf, spare);
}

async fn read_loop(conn: Rc<PgConn>, mut reader: Reader, mut rbuf: BytesMut) {
    let mut spare = BytesMut::new();
    loop {
        let received = conn.pipeline.borrow_mut().receive(&mut rbuf);
        conn.deliver();
        if let Err(broken) = received {
            conn.break_with(broken.0);
            return;
        }
        if conn.is_broken() {
            return;
        }
        if rbuf.capacity() - rbuf.len() < READ_ROOM {
            make_read_room(&mut rbuf, &mut spare);
        }
        let (res, b) = reader.read(rbuf).await;
        rbuf = b;
        match res {
            Ok(0) => {
                conn.break_with("the server closed the connection".into());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                conn.break_with(format!("read failed: {e}"));
                return;
            }
        }
    }
}

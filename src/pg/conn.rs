//! One PostgreSQL connection, pipelined, on one core.
//!
//! Callers queue requests; a request's bytes and its response slot are
//! queued in the same step (`enqueue`), so responses, which PostgreSQL sends
//! in order and each of which ends at ReadyForQuery, reach the right caller
//! by construction. A writer task sends whatever is queued in one write; a
//! reader task frames the responses (with the sans-I/O codec) and fills the
//! slots. A caller that goes away leaves its slot behind: the reader still
//! consumes that response, so the connection stays in step.

#![allow(
    unsafe_code,
    reason = "a non-blocking send(2) and shutdown(2) on the connection's own socket"
)]

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use monoio::io::{AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::{TcpStream, UnixStream};
use ringside_wire::pg::{
    self, frontend, next_message, Column, Message, PgError, Row, Session, Startup, StartupParams,
    TxStatus,
};

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

/// A parameter value, sent in binary.
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    Text(&'a str),
}

/// A prepared statement on one connection.
struct Prepared {
    name: String,
    /// Why its Parse failed: requests pipelined behind it, which only
    /// Bind to it, report that instead of "statement does not exist".
    failed: RefCell<Option<QueryError>>,
    /// Result columns, known once the first Describe answered (responses
    /// come in order, so any later request completes after that).
    columns: RefCell<Option<Rc<[Column]>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Waiting,
    /// COPY FROM STDIN: the server waits for data.
    CopyIn,
    Done,
}

/// Where the response to one request is collected.
struct Slot {
    state: Cell<SlotState>,
    /// DataRows: each a u32 length, then the body (value count and values).
    rows: RefCell<BytesMut>,
    row_count: Cell<usize>,
    /// Columns of a simple query's result, or of a Describe.
    columns: RefCell<Option<Rc<[Column]>>>,
    /// The statement this request prepared (Parse + Describe), if any.
    describes: Option<Rc<Prepared>>,
    /// The statement this request executes, for its columns.
    statement: Option<Rc<Prepared>>,
    tag: RefCell<Option<String>>,
    suspended: Cell<bool>,
    error: RefCell<Option<QueryError>>,
    waker: RefCell<Option<Waker>>,
    max_bytes: usize,
}

impl Slot {
    fn new(describes: Option<Rc<Prepared>>, statement: Option<Rc<Prepared>>, max: usize) -> Self {
        Slot {
            state: Cell::new(SlotState::Waiting),
            rows: RefCell::new(BytesMut::new()),
            row_count: Cell::new(0),
            columns: RefCell::new(None),
            describes,
            statement,
            tag: RefCell::new(None),
            suspended: Cell::new(false),
            error: RefCell::new(None),
            waker: RefCell::new(None),
            max_bytes: max,
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn fail(&self, e: QueryError) {
        let mut err = self.error.borrow_mut();
        if err.is_none() {
            *err = Some(e);
        }
    }
}

/// The rows of one response, in one buffer.
#[derive(Debug)]
pub struct Rows {
    data: BytesMut,
    count: usize,
    pub columns: Rc<[Column]>,
    /// The CommandComplete tag ("SELECT 200", "COPY 10000").
    pub tag: Option<String>,
    /// The portal has more rows (Execute with a row limit).
    pub suspended: bool,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The rows, in order; each decodes against `self.columns`.
    pub fn iter(&self) -> RowIter<'_> {
        RowIter { rest: &self.data }
    }

    /// The row count of the command tag ("INSERT 0 5" → 5).
    pub fn affected(&self) -> Option<u64> {
        self.tag.as_deref()?.rsplit(' ').next()?.parse().ok()
    }
}

pub struct RowIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RowIter<'a> {
    type Item = Result<Row<'a>, PgError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(self.rest[..4].try_into().ok()?) as usize;
        let body = self.rest.get(4..4 + len)?;
        self.rest = &self.rest[4 + len..];
        Some(Row::new(body))
    }
}

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
    settings: ConnSettings,
    /// Request bytes not yet handed to the writer, and the slots of every
    /// request whose response has not been read to its end.
    wbuf: RefCell<BytesMut>,
    slots: RefCell<VecDeque<Rc<Slot>>>,
    statements: RefCell<HashMap<&'static str, Rc<Prepared>>>,
    next_statement: Cell<u32>,
    writer_waker: RefCell<Option<Waker>>,
    /// Bytes queued so far, and bytes written so far: a COPY sender waits
    /// until what it queued was written (back-pressure).
    queued_bytes: Cell<u64>,
    written_bytes: Cell<u64>,
    write_waiters: RefCell<Vec<Waker>>,
    broken: RefCell<Option<String>>,
    tx_status: Cell<TxStatus>,
    fd: i32,
    /// Called whenever a request completes or the connection breaks.
    on_idle: RefCell<Option<Box<dyn Fn()>>>,
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
        let conn = Rc::new(PgConn {
            tx_status: Cell::new(session.transaction_status),
            session,
            settings,
            wbuf: RefCell::new(BytesMut::with_capacity(4096)),
            slots: RefCell::new(VecDeque::new()),
            statements: RefCell::new(HashMap::new()),
            next_statement: Cell::new(0),
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
        self.slots.borrow().len()
    }

    pub fn transaction_status(&self) -> TxStatus {
        self.tx_status.get()
    }

    /// Queues a request: its bytes, written by `encode`, and its slot, in
    /// one step. If encoding fails nothing is queued.
    fn enqueue(
        &self,
        slot: Slot,
        encode: impl FnOnce(&mut BytesMut) -> Result<(), PgError>,
    ) -> Result<Rc<Slot>, QueryError> {
        if let Some(why) = self.broken.borrow().as_ref() {
            return Err(QueryError::ConnectionLost(why.clone()));
        }
        let mut wbuf = self.wbuf.borrow_mut();
        let before = wbuf.len();
        if let Err(e) = encode(&mut wbuf) {
            wbuf.truncate(before);
            return Err(QueryError::Pg(e));
        }
        self.queued_bytes
            .set(self.queued_bytes.get() + (wbuf.len() - before) as u64);
        let slot = Rc::new(slot);
        self.slots.borrow_mut().push_back(slot.clone());
        drop(wbuf);
        self.wake_writer();
        Ok(slot)
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Runs a prepared statement (Parse and Describe the first time on this
    /// connection) and collects its rows, binary format for every column.
    pub async fn query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        self.start_query(stmt, params, "", 0)?.rows().await
    }

    /// Queues a prepared statement without waiting (pipelining); await the
    /// returned response.
    pub fn start_query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        portal: &str,
        max_rows: i32,
    ) -> Result<Pending, QueryError> {
        let (prepared, is_new) = self.prepared(stmt);
        let slot = Slot::new(
            is_new.then(|| prepared.clone()),
            Some(prepared.clone()),
            self.settings.max_result_bytes,
        );
        let result = self.enqueue(slot, |buf| {
            if is_new {
                frontend::parse(&prepared.name, stmt.sql, stmt.param_types, buf)?;
                frontend::describe_statement(&prepared.name, buf)?;
            }
            encode_bind(buf, portal, &prepared.name, params)?;
            frontend::execute(portal, max_rows, buf)?;
            frontend::sync(buf);
            Ok(())
        });
        if result.is_err() && is_new {
            self.statements.borrow_mut().remove(stmt.sql);
        }
        result.map(|slot| Pending { slot })
    }

    /// Fetches up to `max_rows` more rows of a suspended portal (inside a
    /// transaction: portals end with it).
    pub fn continue_portal(
        &self,
        stmt: &'static Statement,
        portal: &str,
        max_rows: i32,
    ) -> Result<Pending, QueryError> {
        let (prepared, _) = self.prepared(stmt);
        let slot = Slot::new(None, Some(prepared), self.settings.max_result_bytes);
        self.enqueue(slot, |buf| {
            frontend::execute(portal, max_rows, buf)?;
            frontend::sync(buf);
            Ok(())
        })
        .map(|slot| Pending { slot })
    }

    fn prepared(&self, stmt: &'static Statement) -> (Rc<Prepared>, bool) {
        let mut statements = self.statements.borrow_mut();
        if let Some(p) = statements.get(stmt.sql) {
            return (p.clone(), false);
        }
        let p = Rc::new(Prepared {
            name: format!("s{}", self.next_statement.get()),
            failed: RefCell::new(None),
            columns: RefCell::new(None),
        });
        self.next_statement.set(self.next_statement.get() + 1);
        statements.insert(stmt.sql, p.clone());
        (p, true)
    }

    /// Runs SQL with the simple query protocol (several statements allowed;
    /// rows come in text format).
    pub async fn simple(&self, sql: &str) -> Result<Rows, QueryError> {
        let slot = self.enqueue(
            Slot::new(None, None, self.settings.max_result_bytes),
            |buf| frontend::query(sql, buf),
        )?;
        SlotDone(&slot).await;
        finish(&slot)
    }

    /// Starts `COPY ... FROM STDIN`; returns once the server asks for data.
    pub async fn copy_in(self: &Rc<Self>, sql: &str) -> Result<CopyIn, QueryError> {
        let slot = self.enqueue(
            Slot::new(None, None, self.settings.max_result_bytes),
            |buf| frontend::query(sql, buf),
        )?;
        SlotReady(&slot).await;
        if slot.state.get() == SlotState::Done {
            finish(&slot)?;
            return Err(QueryError::Pg(PgError::Protocol(
                "COPY ended before it asked for data".into(),
            )));
        }
        Ok(CopyIn {
            conn: self.clone(),
            slot,
        })
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
        let slots: Vec<Rc<Slot>> = self.slots.borrow_mut().drain(..).collect();
        for slot in slots {
            slot.fail(QueryError::ConnectionLost(format!(
                "database connection lost: {why}"
            )));
            slot.state.set(SlotState::Done);
            slot.wake();
        }
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

fn encode_bind(
    buf: &mut BytesMut,
    portal: &str,
    stmt: &str,
    params: &[Param<'_>],
) -> Result<(), PgError> {
    // Values are encoded into one scratch buffer, then referenced.
    let mut values = BytesMut::with_capacity(params.len() * 8);
    let mut ranges = Vec::with_capacity(params.len());
    for p in params {
        let start = values.len();
        match p {
            Param::Null => {
                ranges.push(None);
                continue;
            }
            Param::Bool(v) => frontend::encode_bool(*v, &mut values),
            Param::I32(v) => frontend::encode_i32(*v, &mut values),
            Param::I64(v) => frontend::encode_i64(*v, &mut values),
            Param::Text(v) => frontend::encode_text(v, &mut values),
        }
        ranges.push(Some(start..values.len()));
    }
    let slices: Vec<Option<&[u8]>> = ranges
        .iter()
        .map(|r| r.as_ref().map(|r| &values[r.clone()]))
        .collect();
    frontend::bind(
        portal,
        stmt,
        &slices,
        &[pg::types::BINARY_FORMAT],
        &[pg::types::BINARY_FORMAT],
        buf,
    )
}

/// Turns a completed slot into rows or its error.
fn finish(slot: &Slot) -> Result<Rows, QueryError> {
    if let Some(e) = slot.error.borrow_mut().take() {
        return Err(e);
    }
    let columns = match &slot.statement {
        Some(p) => p.columns.borrow().clone(),
        None => slot.columns.borrow().clone(),
    }
    .unwrap_or_else(|| Rc::from(Vec::new()));
    Ok(Rows {
        data: std::mem::take(&mut *slot.rows.borrow_mut()),
        count: slot.row_count.get(),
        columns,
        tag: slot.tag.borrow_mut().take(),
        suspended: slot.suspended.get(),
    })
}

/// A queued request's response.
pub struct Pending {
    slot: Rc<Slot>,
}

impl Pending {
    pub async fn rows(self) -> Result<Rows, QueryError> {
        SlotDone(&self.slot).await;
        finish(&self.slot)
    }
}

/// Waits for a slot to be done.
struct SlotDone<'a>(&'a Slot);

impl Future for SlotDone<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.state.get() == SlotState::Done {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Waits for a slot to leave `Waiting` (COPY ready, or done).
struct SlotReady<'a>(&'a Slot);

impl Future for SlotReady<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.state.get() != SlotState::Waiting {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A COPY FROM STDIN in progress on a connection held exclusively.
pub struct CopyIn {
    conn: Rc<PgConn>,
    slot: Rc<Slot>,
}

impl CopyIn {
    /// Sends one piece of COPY data and returns once it was written to the
    /// socket: a slow database fills the socket, the write waits, and the
    /// caller does not read more input meanwhile (back-pressure).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), QueryError> {
        self.check()?;
        let target = {
            let mut wbuf = self.conn.wbuf.borrow_mut();
            let before = wbuf.len();
            frontend::copy_data(data, &mut wbuf).map_err(QueryError::Pg)?;
            let added = (wbuf.len() - before) as u64;
            self.conn
                .queued_bytes
                .set(self.conn.queued_bytes.get() + added);
            self.conn.queued_bytes.get()
        };
        self.conn.wake_writer();
        Written {
            conn: &self.conn,
            target,
        }
        .await;
        self.check()
    }

    fn check(&self) -> Result<(), QueryError> {
        if let Some(why) = self.conn.broken.borrow().as_ref() {
            return Err(QueryError::ConnectionLost(why.clone()));
        }
        if self.slot.state.get() == SlotState::Done {
            // The server ended the COPY (an error in the data).
            return Err(finish(&self.slot)
                .err()
                .unwrap_or_else(|| QueryError::Pg(PgError::Protocol("COPY ended early".into()))));
        }
        Ok(())
    }

    /// Ends the data; returns the number of rows copied.
    pub async fn finish(self) -> Result<u64, QueryError> {
        self.check()?;
        {
            let mut wbuf = self.conn.wbuf.borrow_mut();
            let before = wbuf.len();
            frontend::copy_done(&mut wbuf);
            self.conn
                .queued_bytes
                .set(self.conn.queued_bytes.get() + (wbuf.len() - before) as u64);
        }
        self.conn.wake_writer();
        SlotDone(&self.slot).await;
        let rows = finish(&self.slot)?;
        Ok(rows.affected().unwrap_or(0))
    }

    /// Aborts the COPY; nothing of it is kept. Waits until the server has
    /// acknowledged, so the connection is in step again afterwards.
    pub async fn abort(self, why: &str) {
        if self.slot.state.get() != SlotState::Done && !self.conn.is_broken() {
            {
                let mut wbuf = self.conn.wbuf.borrow_mut();
                let before = wbuf.len();
                if frontend::copy_fail(why, &mut wbuf).is_err() {
                    frontend::copy_done(&mut wbuf);
                }
                self.conn
                    .queued_bytes
                    .set(self.conn.queued_bytes.get() + (wbuf.len() - before) as u64);
            }
            self.conn.wake_writer();
        }
        SlotDone(&self.slot).await;
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

/// Reads responses and routes every message to the oldest slot.
async fn read_loop(conn: Rc<PgConn>, mut reader: Reader, mut rbuf: BytesMut) {
    loop {
        loop {
            match next_message(&mut rbuf, conn.settings.max_message_bytes) {
                Ok(Some(msg)) => {
                    if let Err(why) = route(&conn, msg) {
                        conn.break_with(why);
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    conn.break_with(format!("protocol error: {e}"));
                    return;
                }
            }
        }
        if conn.is_broken() {
            return;
        }
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(16 << 10);
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

/// Applies one backend message to the slot at the front of the queue.
fn route(conn: &PgConn, msg: Message) -> Result<(), String> {
    // Messages that may arrive at any time.
    match &msg {
        Message::ParameterStatus(_)
        | Message::NoticeResponse(_)
        | Message::NotificationResponse(_) => return Ok(()),
        _ => {}
    }
    let slot = match conn.slots.borrow().front() {
        Some(s) => s.clone(),
        None => {
            return Err(match msg {
                Message::ErrorResponse(body) => match pg::DbError::parse(&mut body.fields()) {
                    Ok(e) => format!("the server ended the session: {e}"),
                    Err(_) => "the server ended the session".into(),
                },
                other => format!("unexpected {} with no request", pg::message_name(&other)),
            })
        }
    };
    // A caller that went away still gets its response consumed, not kept.
    let abandoned = Rc::strong_count(&slot) <= 2;
    match msg {
        Message::DataRow(body) => {
            if abandoned || slot.error.borrow().is_some() {
                return Ok(());
            }
            let values = body.buffer();
            let count = Row::from_body(&body).map_err(|e| e.to_string())?.len();
            let mut rows = slot.rows.borrow_mut();
            if rows.len() + values.len() + 6 > slot.max_bytes {
                drop(rows);
                slot.fail(QueryError::TooLarge);
                slot.rows.borrow_mut().clear();
                return Ok(());
            }
            rows.put_u32((values.len() + 2) as u32);
            rows.put_i16(count as i16);
            rows.extend_from_slice(values);
            slot.row_count.set(slot.row_count.get() + 1);
        }
        Message::RowDescription(body) => {
            let mut cols = pg::columns(&body).map_err(|e| e.to_string())?;
            match &slot.describes {
                // A statement's description: every result column is bound
                // in binary.
                Some(prepared) => {
                    for c in &mut cols {
                        c.format = pg::types::BINARY_FORMAT;
                    }
                    *prepared.columns.borrow_mut() = Some(Rc::from(cols));
                }
                None => *slot.columns.borrow_mut() = Some(Rc::from(cols)),
            }
        }
        Message::CommandComplete(body) => {
            *slot.tag.borrow_mut() = body.tag().ok().map(str::to_string);
        }
        Message::PortalSuspended => slot.suspended.set(true),
        Message::ErrorResponse(body) => {
            let e = QueryError::Pg(PgError::Db(Box::new(
                pg::DbError::parse(&mut body.fields()).map_err(|e| e.to_string())?,
            )));
            if let Some(prepared) = &slot.describes {
                // The statement was not prepared: forget it so that the
                // next use prepares it again.
                conn.statements
                    .borrow_mut()
                    .retain(|_, p| !Rc::ptr_eq(p, prepared));
                *prepared.failed.borrow_mut() = Some(e.clone());
            }
            let inherited = match &slot.statement {
                Some(p) if slot.describes.is_none() && e.sqlstate() == Some("26000") => {
                    p.failed.borrow().clone()
                }
                _ => None,
            };
            let fatal = matches!(&e, QueryError::Pg(PgError::Db(db)) if db.severity == "FATAL" || db.severity == "PANIC");
            slot.fail(inherited.unwrap_or(e));
            if fatal {
                // The backend is going away (terminated, shutting down): no
                // ReadyForQuery follows, and its socket closes only once the
                // process has exited. Fail everything queued now rather
                // than when the end of the stream arrives.
                return Err("the server ended the session (FATAL error)".into());
            }
            if slot.state.get() == SlotState::CopyIn {
                // The COPY is over; the sender sees it on its next send.
                slot.wake();
            }
        }
        Message::CopyInResponse(_) => {
            slot.state.set(SlotState::CopyIn);
            slot.wake();
        }
        Message::ReadyForQuery(body) => {
            let status = TxStatus::from_byte(body.status()).map_err(|e| e.to_string())?;
            conn.tx_status.set(status);
            conn.slots.borrow_mut().pop_front();
            slot.state.set(SlotState::Done);
            slot.wake();
            for w in conn.write_waiters.borrow_mut().drain(..) {
                w.wake();
            }
            conn.notify_idle();
        }
        Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {
            return Err("COPY TO STDOUT is not supported".into());
        }
        // ParseComplete, BindComplete, CloseComplete, NoData,
        // ParameterDescription, EmptyQueryResponse, BackendKeyData: nothing to keep.
        _ => {}
    }
    Ok(())
}

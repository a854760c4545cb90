//! A pipelined PostgreSQL connection as a value: requests in, bytes out
//! into the caller's buffer; backend bytes in, completions out.
//!
//! The driver owns the socket. It queues requests here ([`Pipeline::query`],
//! [`Pipeline::simple`], ...), each of which appends its messages to the
//! caller's output buffer and gets a [`RequestId`]; it feeds whatever the
//! server sent to [`Pipeline::receive`] and takes [`Event`]s out with
//! [`Pipeline::next_event`]. A request's response slot is queued in the same
//! step as its bytes, and PostgreSQL answers in order, each response ending at
//! ReadyForQuery: so every message reaches the request it belongs to by
//! construction, and an error in one request never reaches another.
//!
//! A request whose caller went away is [abandoned](Pipeline::abandon): its
//! response is still read to its ReadyForQuery (the connection stays in
//! step), its rows are not kept, and it produces no event.
//!
//! Prepared statements are cached per connection: the first use of a
//! statement sends Parse and Describe with its Bind/Execute/Sync; requests
//! pipelined behind a Parse that fails report that failure rather than
//! "prepared statement does not exist", and the next use prepares again.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use bytes::{BufMut, BytesMut};

use super::backend::{message_name, next_message, Message, TxStatus};
use super::error::{DbError, PgError};
use super::frontend;
use super::row::{columns, Column, Row};
use super::types::BINARY_FORMAT;

/// Identifies a queued request in the events that complete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A parameter value, sent in binary.
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    Text(&'a str),
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestError {
    /// The server's error, or one in the protocol.
    Pg(PgError),
    /// The result passed `max_result_bytes`; the rest of it was read and dropped.
    TooLarge,
}

/// What the pipeline hands out.
#[derive(Debug)]
pub enum Event {
    /// A `COPY ... FROM STDIN` request: the server waits for data now.
    CopyReady(RequestId),
    /// A request's response ended (at its ReadyForQuery).
    Done(RequestId, Result<Rows, RequestError>),
}

/// The server ended the conversation, or broke the protocol: the
/// connection can no longer be used. Requests still queued are in
/// [`Pipeline::take_unanswered`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken(pub String);

/// The rows of one response, in one buffer.
#[derive(Debug)]
pub struct Rows {
    /// DataRows: each a u32 length, then the body (value count and values).
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

/// Bounds of one connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest backend message accepted (bounds the input buffer).
    pub max_message_bytes: usize,
    /// Largest result one request may keep.
    pub max_result_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_result_bytes: 16 << 20,
        }
    }
}

/// A prepared statement on this connection.
#[derive(Debug)]
struct Prepared {
    name: String,
    /// Why its Parse failed, for the requests pipelined behind it.
    failed: RefCell<Option<RequestError>>,
    /// Result columns, known once its Describe answered.
    columns: RefCell<Option<Rc<[Column]>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// COPY FROM STDIN: the server waits for data.
    CopyIn,
}

/// A request whose response has not ended yet.
#[derive(Debug)]
struct InFlight {
    id: RequestId,
    phase: Phase,
    abandoned: bool,
    rows: BytesMut,
    count: usize,
    /// Columns of a simple query's result.
    columns: Option<Rc<[Column]>>,
    /// The statement this request prepares (Parse + Describe), if any.
    describes: Option<Rc<Prepared>>,
    /// The statement it executes, for its columns.
    statement: Option<Rc<Prepared>>,
    tag: Option<String>,
    suspended: bool,
    error: Option<RequestError>,
}

impl InFlight {
    fn new(
        id: RequestId,
        describes: Option<Rc<Prepared>>,
        statement: Option<Rc<Prepared>>,
    ) -> Self {
        InFlight {
            id,
            phase: Phase::Waiting,
            abandoned: false,
            rows: BytesMut::new(),
            count: 0,
            columns: None,
            describes,
            statement,
            tag: None,
            suspended: false,
            error: None,
        }
    }

    fn fail(&mut self, e: RequestError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn into_result(self) -> Result<Rows, RequestError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let columns = match &self.statement {
            Some(p) => p.columns.borrow().clone(),
            None => self.columns,
        }
        .unwrap_or_else(|| Rc::from(Vec::new()));
        Ok(Rows {
            data: self.rows,
            count: self.count,
            columns,
            tag: self.tag,
            suspended: self.suspended,
        })
    }
}

/// One connection's pipeline. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    limits: Limits,
    queue: VecDeque<InFlight>,
    events: VecDeque<Event>,
    statements: HashMap<String, Rc<Prepared>>,
    next_statement: u32,
    next_id: u64,
    tx_status: TxStatus,
    broken: Option<Broken>,
}

impl Pipeline {
    pub fn new(limits: Limits, tx_status: TxStatus) -> Self {
        Pipeline {
            limits,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            statements: HashMap::new(),
            next_statement: 0,
            next_id: 0,
            tx_status,
            broken: None,
        }
    }

    /// Requests whose responses have not ended.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    pub fn tx_status(&self) -> TxStatus {
        self.tx_status
    }

    pub fn broken(&self) -> Option<&Broken> {
        self.broken.as_ref()
    }

    /// Queues a prepared statement (Parse and Describe the first time on
    /// this connection), its Bind with binary parameters and results, an
    /// Execute of up to `max_rows` (0: all) into `portal`, and a Sync. If
    /// encoding fails nothing is queued and `out` is left as it was.
    pub fn query(
        &mut self,
        sql: &str,
        param_types: &[u32],
        params: &[Param<'_>],
        portal: &str,
        max_rows: i32,
        out: &mut BytesMut,
    ) -> Result<RequestId, PgError> {
        self.check_usable()?;
        let (prepared, is_new) = self.prepared(sql);
        let before = out.len();
        let encoded = (|| {
            if is_new {
                frontend::parse(&prepared.name, sql, param_types, out)?;
                frontend::describe_statement(&prepared.name, out)?;
            }
            encode_bind(out, portal, &prepared.name, params)?;
            frontend::execute(portal, max_rows, out)?;
            frontend::sync(out);
            Ok(())
        })();
        if let Err(e) = encoded {
            out.truncate(before);
            if is_new {
                self.statements.remove(sql);
            }
            return Err(e);
        }
        let describes = is_new.then(|| prepared.clone());
        Ok(self.push(describes, Some(prepared)))
    }

    /// Queues an Execute of up to `max_rows` more rows of a suspended
    /// portal of `sql`'s statement, and a Sync (portals live until their
    /// transaction ends).
    pub fn continue_portal(
        &mut self,
        sql: &str,
        portal: &str,
        max_rows: i32,
        out: &mut BytesMut,
    ) -> Result<RequestId, PgError> {
        self.check_usable()?;
        let statement = self.statements.get(sql).cloned();
        let before = out.len();
        if let Err(e) = frontend::execute(portal, max_rows, out) {
            out.truncate(before);
            return Err(e);
        }
        frontend::sync(out);
        Ok(self.push(None, statement))
    }

    /// Queues SQL for the simple query protocol (several statements
    /// allowed; rows in text format). A `COPY ... FROM STDIN` is started
    /// this way: [`Event::CopyReady`] says when the server waits for data.
    pub fn simple(&mut self, sql: &str, out: &mut BytesMut) -> Result<RequestId, PgError> {
        self.check_usable()?;
        frontend::query(sql, out)?;
        Ok(self.push(None, None))
    }

    /// COPY data for the request in COPY state (the caller keeps to one
    /// COPY at a time on a connection it holds alone).
    pub fn copy_data(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        frontend::copy_data(data, out)
    }

    /// Ends the COPY's data.
    pub fn copy_done(&mut self, out: &mut BytesMut) {
        frontend::copy_done(out);
    }

    /// Aborts the COPY; the server answers with an error and nothing of it
    /// is kept.
    pub fn copy_fail(&mut self, why: &str, out: &mut BytesMut) {
        if frontend::copy_fail(why, out).is_err() {
            frontend::copy_done(out);
        }
    }

    /// The caller of `id` went away: its response is still read to its
    /// end, but nothing of it is kept and no event is produced.
    pub fn abandon(&mut self, id: RequestId) {
        if let Some(r) = self.queue.iter_mut().find(|r| r.id == id) {
            r.abandoned = true;
            r.rows = BytesMut::new();
        }
        self.events.retain(|e| match e {
            Event::CopyReady(i) | Event::Done(i, _) => *i != id,
        });
    }

    /// Whether `id` is still waiting for the end of its response.
    pub fn is_pending(&self, id: RequestId) -> bool {
        self.queue.iter().any(|r| r.id == id)
    }

    /// Takes every complete message at the front of `input` and applies it.
    /// Past an `Err` the connection is done: close it, and fail what
    /// [`Pipeline::take_unanswered`] returns.
    pub fn receive(&mut self, input: &mut BytesMut) -> Result<(), Broken> {
        if let Some(b) = &self.broken {
            return Err(b.clone());
        }
        loop {
            let msg = match next_message(input, self.limits.max_message_bytes) {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.mark_broken(format!("protocol error: {e}"))),
            };
            if let Err(why) = self.apply(msg) {
                return Err(self.mark_broken(why));
            }
        }
    }

    /// The next completed event, in order.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Marks the connection unusable (its socket failed) and returns the
    /// requests that will never be answered, abandoned ones left out.
    pub fn take_unanswered(&mut self, why: &str) -> Vec<RequestId> {
        if self.broken.is_none() {
            self.broken = Some(Broken(why.to_string()));
        }
        self.queue
            .drain(..)
            .filter(|r| !r.abandoned)
            .map(|r| r.id)
            .collect()
    }

    fn mark_broken(&mut self, why: String) -> Broken {
        let b = Broken(why);
        self.broken = Some(b.clone());
        b
    }

    fn check_usable(&self) -> Result<(), PgError> {
        match &self.broken {
            Some(b) => Err(PgError::Protocol(format!("connection is broken: {}", b.0))),
            None => Ok(()),
        }
    }

    fn push(
        &mut self,
        describes: Option<Rc<Prepared>>,
        statement: Option<Rc<Prepared>>,
    ) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.queue
            .push_back(InFlight::new(id, describes, statement));
        id
    }

    fn prepared(&mut self, sql: &str) -> (Rc<Prepared>, bool) {
        if let Some(p) = self.statements.get(sql) {
            return (p.clone(), false);
        }
        let p = Rc::new(Prepared {
            name: format!("s{}", self.next_statement),
            failed: RefCell::new(None),
            columns: RefCell::new(None),
        });
        self.next_statement += 1;
        self.statements.insert(sql.to_string(), p.clone());
        (p, true)
    }

    /// Applies one backend message to the request at the front.
    fn apply(&mut self, msg: Message) -> Result<(), String> {
        // Messages that may arrive at any time.
        if matches!(
            msg,
            Message::ParameterStatus(_)
                | Message::NoticeResponse(_)
                | Message::NotificationResponse(_)
        ) {
            return Ok(());
        }
        let max_result = self.limits.max_result_bytes;
        let Some(req) = self.queue.front_mut() else {
            return Err(match msg {
                Message::ErrorResponse(body) => match DbError::parse(&mut body.fields()) {
                    Ok(e) => format!("the server ended the session: {e}"),
                    Err(_) => "the server ended the session".into(),
                },
                other => format!("unexpected {} with no request", message_name(&other)),
            });
        };
        match msg {
            Message::DataRow(body) => {
                if req.abandoned || req.error.is_some() {
                    return Ok(());
                }
                let values = body.buffer();
                let count = Row::from_body(&body).map_err(|e| e.to_string())?.len();
                if req.rows.len() + values.len() + 6 > max_result {
                    req.fail(RequestError::TooLarge);
                    req.rows = BytesMut::new();
                    return Ok(());
                }
                req.rows.put_u32((values.len() + 2) as u32);
                req.rows.put_i16(count as i16);
                req.rows.extend_from_slice(values);
                req.count += 1;
            }
            Message::RowDescription(body) => {
                let mut cols = columns(&body).map_err(|e| e.to_string())?;
                match &req.describes {
                    // A statement's description: every result column is
                    // bound in binary.
                    Some(prepared) => {
                        for c in &mut cols {
                            c.format = BINARY_FORMAT;
                        }
                        *prepared.columns.borrow_mut() = Some(Rc::from(cols));
                    }
                    None => req.columns = Some(Rc::from(cols)),
                }
            }
            Message::CommandComplete(body) => {
                req.tag = body.tag().ok().map(str::to_string);
            }
            Message::PortalSuspended => req.suspended = true,
            Message::ErrorResponse(body) => {
                let db = DbError::parse(&mut body.fields()).map_err(|e| e.to_string())?;
                let fatal = db.severity == "FATAL" || db.severity == "PANIC";
                let e = RequestError::Pg(PgError::Db(Box::new(db)));
                if let Some(prepared) = req.describes.clone() {
                    // Not prepared: the next use prepares it again.
                    self.statements.retain(|_, p| !Rc::ptr_eq(p, &prepared));
                    *prepared.failed.borrow_mut() = Some(e.clone());
                }
                let req = self.queue.front_mut().expect("front exists");
                let inherited = match &req.statement {
                    Some(p) if req.describes.is_none() && sqlstate(&e) == Some("26000") => {
                        p.failed.borrow().clone()
                    }
                    _ => None,
                };
                req.fail(inherited.unwrap_or(e));
                if fatal {
                    // The backend is going away: no ReadyForQuery follows,
                    // and its socket closes only once the process exited.
                    let req = self.queue.pop_front().expect("front exists");
                    if !req.abandoned {
                        let id = req.id;
                        self.events.push_back(Event::Done(id, req.into_result()));
                    }
                    return Err("the server ended the session (FATAL error)".into());
                }
            }
            Message::CopyInResponse(_) => {
                req.phase = Phase::CopyIn;
                if !req.abandoned {
                    self.events.push_back(Event::CopyReady(req.id));
                }
            }
            Message::ReadyForQuery(body) => {
                self.tx_status = TxStatus::from_byte(body.status()).map_err(|e| e.to_string())?;
                let req = self.queue.pop_front().expect("front exists");
                if !req.abandoned {
                    let id = req.id;
                    self.events.push_back(Event::Done(id, req.into_result()));
                }
            }
            Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => {
                return Err("COPY TO STDOUT is not supported".into());
            }
            // ParseComplete, BindComplete, CloseComplete, NoData,
            // ParameterDescription, EmptyQueryResponse, BackendKeyData.
            _ => {}
        }
        Ok(())
    }
}

fn sqlstate(e: &RequestError) -> Option<&str> {
    match e {
        RequestError::Pg(PgError::Db(db)) => Some(&db.code),
        _ => None,
    }
}

/// Bind with every parameter and every result column in binary.
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
        &[BINARY_FORMAT],
        &[BINARY_FORMAT],
        buf,
    )
}

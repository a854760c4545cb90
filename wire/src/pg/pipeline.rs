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

use bytes::{Buf, Bytes, BytesMut};

use super::backend::{declared_len, message_name, next_message, Message, TxStatus};
use super::error::{DbError, PgError};
use super::frontend;
use super::row::{check_text_column, columns, Column, Row};
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
    /// Queued in a batch (see [`Pipeline::query_in_batch`]) behind a
    /// statement that failed: the server skipped it. It did not run; run
    /// it again on its own.
    Skipped,
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

/// The rows of one response, as the server sent them.
///
/// The DataRow messages stay where they were read: views of the
/// connection's read buffer (rows arrive back to back, so one view holds
/// them all, or two when the driver moved on to another buffer in the
/// middle of a result), and a handler renders from there straight into its
/// response. Holding `Rows` keeps that part of the read buffer alive, so
/// drop them once rendered.
#[derive(Debug)]
pub struct Rows {
    /// Whole DataRow messages: tag, length, value count, values.
    data: RowData,
    count: usize,
    pub columns: Rc<[Column]>,
    /// The CommandComplete tag, also a view of the read buffer.
    tag: Option<Bytes>,
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
        RowIter {
            rest: &self.data.first,
            next: &self.data.second,
        }
    }

    /// Text column `i` of every row, in order, as [`Row::req_text`] reads
    /// it, with the column's type checked once for all rows rather than
    /// per row: what a page listing one column needs.
    pub fn req_texts(
        &self,
        i: usize,
    ) -> Result<impl Iterator<Item = Result<&[u8], PgError>> + '_, PgError> {
        check_text_column(&self.columns, i)?;
        Ok(self
            .iter()
            .map(move |row| row?.req_text_of_checked(&self.columns, i)))
    }

    /// The CommandComplete tag ("SELECT 200", "COPY 10000").
    pub fn tag(&self) -> Option<&str> {
        // Checked to be UTF-8 when it arrived.
        std::str::from_utf8(self.tag.as_deref()?).ok()
    }

    /// The row count of the command tag ("INSERT 0 5" → 5).
    pub fn affected(&self) -> Option<u64> {
        self.tag()?.rsplit(' ').next()?.parse().ok()
    }
}

pub struct RowIter<'a> {
    rest: &'a [u8],
    next: &'a [u8],
}

impl<'a> Iterator for RowIter<'a> {
    type Item = Result<Row<'a>, PgError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            self.rest = std::mem::take(&mut self.next);
        }
        // Framed and checked when they arrived (see `Pipeline::take_raw`):
        // not checked again.
        let len = u32::from_be_bytes(self.rest.get(1..5)?.try_into().ok()?) as usize;
        let body = self.rest.get(5..1 + len)?;
        self.rest = &self.rest[1 + len..];
        Some(Ok(Row::checked_before(body)))
    }
}

/// DataRow messages as views of the read buffers they arrived in.
#[derive(Debug, Default)]
struct RowData {
    first: BytesMut,
    /// The rows read into another buffer after the first filled up.
    second: BytesMut,
}

impl RowData {
    fn len(&self) -> usize {
        self.first.len() + self.second.len()
    }

    /// Appends a DataRow taken from the read buffer: O(1) when it follows
    /// the rows before it in memory, as it does within one read buffer.
    fn push(&mut self, msg: BytesMut) {
        let follows = |v: &BytesMut| v.as_ptr().wrapping_add(v.len()) == msg.as_ptr();
        if self.second.is_empty() && (self.first.is_empty() || follows(&self.first)) {
            // `unsplit` itself checks that both are views of one buffer,
            // and copies otherwise.
            self.first.unsplit(msg);
        } else {
            // A new buffer: its rows form the second view (copied on only
            // if the driver switched buffers twice within one result).
            self.second.unsplit(msg);
        }
    }
}

/// The bytes and count of the complete, well-framed DataRow messages at the
/// front of `input`, up to the first other or incomplete message (left to
/// the general path, which also refuses a bad length).
fn data_row_run(input: &[u8], max_message: usize) -> Result<(usize, usize), String> {
    let (mut run, mut rows) = (0, 0);
    let mut rest = input;
    while rest.first() == Some(&b'D') {
        let len = match declared_len(rest) {
            Ok(Some(len)) if len <= max_message && rest.len() > len => len,
            _ => break,
        };
        Row::new(&rest[5..1 + len]).map_err(|e| e.to_string())?;
        run += 1 + len;
        rows += 1;
        rest = &rest[1 + len..];
    }
    Ok((run, rows))
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
    /// A Sync follows this request's messages: its response ends at
    /// ReadyForQuery. Without one (inside a batch) it ends at its
    /// CommandComplete or ErrorResponse.
    synced: bool,
    rows: RowData,
    count: usize,
    /// Columns of a simple query's result.
    columns: Option<Rc<[Column]>>,
    /// The statement this request prepares (Parse + Describe), if any.
    describes: Option<Rc<Prepared>>,
    /// The statement it executes, for its columns.
    statement: Option<Rc<Prepared>>,
    tag: Option<Bytes>,
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
            synced: true,
            rows: RowData::default(),
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

    /// `no_columns` is the result of a statement without any (shared, so
    /// that a BEGIN or COMMIT allocates nothing).
    fn into_result(self, no_columns: &Rc<[Column]>) -> Result<Rows, RequestError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let columns = match &self.statement {
            Some(p) => p.columns.borrow().clone(),
            None => self.columns,
        }
        .unwrap_or_else(|| no_columns.clone());
        Ok(Rows {
            data: self.rows,
            count: self.count,
            columns,
            tag: self.tag,
            suspended: self.suspended,
        })
    }
}

/// Hashes the SQL that keys the prepared-statement cache a word at a time
/// (FxHash's step): every query looks its statement up, and SipHash over a
/// 50-byte statement cost more than the lookup needs. The keys are the
/// application's own SQL, never a client's bytes, so flooding is not a
/// concern here.
#[derive(Debug, Default, Clone, Copy)]
struct SqlHash;

impl std::hash::BuildHasher for SqlHash {
    type Hasher = SqlHasher;
    fn build_hasher(&self) -> SqlHasher {
        SqlHasher(0)
    }
}

struct SqlHasher(u64);

impl SqlHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl std::hash::Hasher for SqlHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let mut tail = [0u8; 8];
        let rest = words.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 59));
    }
}

/// One connection's pipeline. See the module documentation.
#[derive(Debug)]
pub struct Pipeline {
    limits: Limits,
    queue: VecDeque<InFlight>,
    events: VecDeque<Event>,
    statements: HashMap<String, Rc<Prepared>, SqlHash>,
    next_statement: u32,
    next_id: u64,
    tx_status: TxStatus,
    broken: Option<Broken>,
    no_columns: Rc<[Column]>,
    /// Requests queued since the last Sync (an open batch).
    open_batch: usize,
    /// A statement of the current batch failed: the server skips the rest
    /// of it until its ReadyForQuery.
    skipping: bool,
}

impl Pipeline {
    pub fn new(limits: Limits, tx_status: TxStatus) -> Self {
        Pipeline {
            limits,
            queue: VecDeque::new(),
            events: VecDeque::new(),
            statements: HashMap::default(),
            next_statement: 0,
            next_id: 0,
            tx_status,
            broken: None,
            no_columns: Rc::from(Vec::new()),
            open_batch: 0,
            skipping: false,
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
        self.close_batch(out);
        self.encode_query(sql, param_types, params, portal, max_rows, true, out)
    }

    /// Like [`Pipeline::query`] (unnamed portal, all rows), but without a
    /// Sync of its own: statements queued this way one after another share
    /// one Sync, written by [`Pipeline::close_batch`] (or by the next
    /// request that is not batched), and so one implicit transaction on the
    /// server, which saves it a transaction and a ReadyForQuery per
    /// statement. Only for single read-only statements outside a
    /// transaction. If one fails, the server skips the rest of the batch:
    /// they end with [`RequestError::Skipped`], to be run again on their
    /// own, so no request ever sees another's error.
    pub fn query_in_batch(
        &mut self,
        sql: &str,
        param_types: &[u32],
        params: &[Param<'_>],
        out: &mut BytesMut,
    ) -> Result<RequestId, PgError> {
        let id = self.encode_query(sql, param_types, params, "", 0, false, out)?;
        self.open_batch += 1;
        Ok(id)
    }

    /// Ends the open batch, if any, with a Sync.
    pub fn close_batch(&mut self, out: &mut BytesMut) {
        if self.open_batch == 0 {
            return;
        }
        frontend::sync(out);
        if let Some(last) = self.queue.back_mut() {
            last.synced = true;
        }
        self.open_batch = 0;
    }

    /// Requests queued since the last Sync.
    pub fn open_batch(&self) -> usize {
        self.open_batch
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the Bind and Execute fields, and the Sync"
    )]
    fn encode_query(
        &mut self,
        sql: &str,
        param_types: &[u32],
        params: &[Param<'_>],
        portal: &str,
        max_rows: i32,
        sync: bool,
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
            if sync {
                frontend::sync(out);
            }
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
        let id = self.push(describes, Some(prepared));
        if let Some(req) = self.queue.back_mut() {
            req.synced = sync;
        }
        Ok(id)
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
        self.close_batch(out);
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
        self.close_batch(out);
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
            r.rows = RowData::default();
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
            match self.take_raw(input) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(why) => return Err(self.mark_broken(why)),
            }
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

    /// Takes a complete DataRow or CommandComplete at the front of `input`
    /// without decoding it into a message: a DataRow joins its request's
    /// rows as a view of `input`'s memory (rows read back to back merge into
    /// one view, so nothing is copied or allocated per row). Returns false
    /// for anything else, left to [`Pipeline::apply`].
    fn take_raw(&mut self, input: &mut BytesMut) -> Result<bool, String> {
        let tag = match input.first() {
            Some(&t @ (b'D' | b'C')) => t,
            _ => return Ok(false),
        };
        let max_result = self.limits.max_result_bytes;
        let Some(req) = self.queue.front_mut() else {
            return Ok(false);
        };
        let len = match declared_len(input) {
            Ok(Some(len)) if len <= self.limits.max_message_bytes && input.len() > len => len,
            // Incomplete, or refused by the general path.
            _ => return Ok(false),
        };
        if tag == b'C' {
            let mut msg = input.split_to(1 + len);
            msg.advance(5);
            let end = msg
                .iter()
                .position(|&b| b == 0)
                .ok_or("malformed CommandComplete: no terminator")?;
            msg.truncate(end);
            std::str::from_utf8(&msg).map_err(|_| "malformed CommandComplete: not UTF-8")?;
            req.tag = Some(msg.freeze());
            if !req.synced {
                // Inside a batch: this statement's response ends here.
                self.complete_front();
            }
            return Ok(true);
        }
        if req.abandoned || req.error.is_some() {
            input.advance(1 + len);
            return Ok(true);
        }
        // This row and the complete ones right behind it (a page's rows
        // mostly arrive in one read): each checked, all taken in one split,
        // so the buffer's reference count moves once per run, not per row.
        let (run, rows) = data_row_run(input, self.limits.max_message_bytes)?;
        let msg = input.split_to(run);
        if req.rows.len() + msg.len() > max_result {
            req.fail(RequestError::TooLarge);
            req.rows = RowData::default();
            return Ok(true);
        }
        req.rows.push(msg);
        req.count += rows;
        Ok(true)
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
            // Taken by `take_raw` whenever a request is waiting.
            Message::DataRow(_) | Message::CommandComplete(_) => {
                return Err("a row or command tag outside any response".into());
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
            Message::PortalSuspended => req.suspended = true,
            Message::EmptyQueryResponse if !req.synced => self.complete_front(),
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
                        self.events
                            .push_back(Event::Done(id, req.into_result(&self.no_columns)));
                    }
                    return Err("the server ended the session (FATAL error)".into());
                }
                if !req.synced {
                    // Inside a batch: this statement ends here, and the
                    // server skips the rest of the batch.
                    self.complete_front();
                    self.skipping = true;
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
                if self.skipping {
                    // What is left of the failed batch, its last request
                    // included, was skipped.
                    self.skipping = false;
                    while let Some(mut req) = self.queue.pop_front() {
                        let last = req.synced;
                        req.fail(RequestError::Skipped);
                        if !req.abandoned {
                            let id = req.id;
                            self.events
                                .push_back(Event::Done(id, req.into_result(&self.no_columns)));
                        }
                        if last {
                            break;
                        }
                    }
                } else {
                    self.complete_front();
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

impl Pipeline {
    /// The request at the front is answered: hand out its result.
    fn complete_front(&mut self) {
        let Some(req) = self.queue.pop_front() else {
            return;
        };
        if !req.abandoned {
            let id = req.id;
            self.events
                .push_back(Event::Done(id, req.into_result(&self.no_columns)));
        }
    }
}

fn sqlstate(e: &RequestError) -> Option<&str> {
    match e {
        RequestError::Pg(PgError::Db(db)) => Some(&db.code),
        _ => None,
    }
}

/// Bind with every parameter and every result column in binary, each
/// value encoded straight into the message.
fn encode_bind(
    buf: &mut BytesMut,
    portal: &str,
    stmt: &str,
    params: &[Param<'_>],
) -> Result<(), PgError> {
    frontend::bind_values(
        portal,
        stmt,
        params,
        |p, buf| {
            match p {
                Param::Null => return false,
                Param::Bool(v) => frontend::encode_bool(*v, buf),
                Param::I32(v) => frontend::encode_i32(*v, buf),
                Param::I64(v) => frontend::encode_i64(*v, buf),
                Param::Text(v) => frontend::encode_text(v, buf),
            }
            true
        },
        &[BINARY_FORMAT],
        &[BINARY_FORMAT],
        buf,
    )
}

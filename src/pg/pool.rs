//! A core's pool of PostgreSQL connections.
//!
//! Made on its core and never shared: `Rc` connections, `Cell` counters.
//! Queries are pipelined: a connection carries up to `max_in_flight`
//! requests at once, and the pool sends each query to a healthy connection
//! whose next write is still being gathered (up to a batch's worth of
//! statements: one send and one backend wake-up for all of them), else to
//! the least loaded one. When every connection is full, callers wait in a
//! bounded queue for a bounded time, then get `Busy` (503 upstream).
//! A broken connection is replaced by its supervisor with jittered
//! exponential backoff; a connection whose query passed its deadline gets a
//! CancelRequest and no new queries until it answers again.
//!
//! Two kinds of callers, two queues. Pipelined queries share connections;
//! a caller that needs a connection to itself (a transaction, a COPY) takes
//! one of at most `max_exclusive` members, waiting in its own queue, so that
//! the rest of the pool always serves the pipelined reads: a few slow
//! uploads can never hold every connection, and a read never queues behind
//! one. A read-only statement whose connection broke before it was answered
//! is run again on another connection.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

use super::config::PgConfig;
use super::conn::{ConnSettings, Param, PgConn, Rows, SentProbe, Statement};
use super::QueryError;
use crate::runtime::deadlines::{DeadlineKey, DeadlineTable};
use crate::runtime::request_limit::RequestLimit;
use crate::runtime::wait::{WaitQueue, WaitTurn};
use crate::runtime::LogLimit;

mod coalesce;
mod held;
mod supervise;

pub use held::Held;
use supervise::{supervise, watch_suspects};

/// The pool's settings (per core).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub connections: usize,
    pub max_in_flight: usize,
    pub max_waiters: usize,
    pub wait_timeout: Duration,
    pub query_timeout: Duration,
    /// Members that may be held exclusively at once; must be below
    /// `connections`, so that pipelined queries keep members of their own.
    pub max_exclusive: usize,
    /// Callers that may wait for an exclusive member; beyond, `Busy` at once.
    pub max_exclusive_waiters: usize,
    /// Longest wait for an exclusive member (then `Busy`).
    pub exclusive_wait_timeout: Duration,
    /// Whether [`Pool::query_shared`] may answer identical reads with one
    /// execution (`--db-coalesce`).
    pub coalesce: bool,
    /// Whether read-only statements of different requests share a Sync
    /// (`--db-batch`).
    pub batch: bool,
    /// With no member up, fail at once (`Unavailable`) rather than wait
    /// for one: a replica's pool, whose reads the router sends elsewhere.
    pub fail_fast: bool,
    pub conn: ConnSettings,
}

impl PoolSettings {
    pub fn from_config(c: &crate::config::Config) -> Self {
        PoolSettings {
            connections: c.db_pool_size,
            max_in_flight: c.db_pipeline_depth,
            max_waiters: c.db_max_waiters,
            wait_timeout: c.db_wait_timeout,
            query_timeout: c.db_query_timeout,
            max_exclusive: c.max_uploads_per_core,
            max_exclusive_waiters: c.max_upload_waiters,
            exclusive_wait_timeout: c.upload_wait_timeout,
            coalesce: c.db_coalesce,
            batch: c.db_batch,
            fail_fast: false,
            conn: ConnSettings {
                max_batch: c.db_batch_max,
                ..ConnSettings::default()
            },
        }
    }
}

impl Default for PoolSettings {
    /// The server's defaults (`ringside --help` lists them).
    fn default() -> Self {
        PoolSettings {
            connections: 4,
            max_in_flight: 64,
            max_waiters: 16384,
            wait_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            max_exclusive: 1,
            max_exclusive_waiters: 64,
            exclusive_wait_timeout: Duration::from_secs(10),
            coalesce: false,
            batch: true,
            fail_fast: false,
            conn: ConnSettings::default(),
        }
    }
}

/// Counters for metrics.
#[derive(Default, Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: usize,
    pub ready: usize,
    pub in_flight: usize,
    pub waiting: usize,
    pub errors: u64,
    pub reconnects: u64,
    pub timeouts: u64,
    pub busy: u64,
    /// Members held exclusively (or being emptied for an exclusive caller).
    pub exclusive: usize,
    pub exclusive_waiting: usize,
    /// Read-only statements run again after their connection broke.
    pub retries: u64,
    /// Requests answered by an identical one's execution (coalesced).
    pub coalesced: u64,
    /// Batched statements run again alone after another in their batch
    /// failed.
    pub batch_retries: u64,
}

struct Member {
    conn: Option<Rc<PgConn>>,
    /// Held by one caller (a transaction, a COPY), or being emptied of its
    /// pipelined queries for one: no new pipelined queries.
    exclusive: bool,
    /// Set when a query on it passed its deadline; cleared when the
    /// connection answers again.
    suspect_since: Option<Instant>,
}

pub struct Pool {
    cfg: PgConfig,
    addrs: Vec<SocketAddr>,
    settings: PoolSettings,
    members: RefCell<Vec<Member>>,
    /// Callers waiting for room for a pipelined query.
    readers: WaitQueue,
    /// Callers waiting for an exclusive member.
    exclusives: WaitQueue,
    /// Exclusive claims granted and not yet given back.
    exclusive_claims: Cell<usize>,
    /// Exclusive callers waiting for their member to finish the queries it
    /// still carries (at most `max_exclusive`).
    progress_waiters: RefCell<Vec<Waker>>,
    stats: RefCell<PoolStats>,
    closed: Cell<bool>,
    /// The last connection error, for a clear message while none is up.
    last_error: RefCell<Option<String>>,
    timeouts_logged: LogLimit,
    /// Query deadlines: a slot per query in flight, ticked by the pool's
    /// watcher. A runtime timer per query (monoio's `Sleep`: 640 bytes, an
    /// insert and a removal in the timer wheel) cost 1.6 % of a TechEmpower
    /// `/db` request in `perf`; a deadline fires within one tick instead.
    deadlines: Rc<DeadlineTable>,
    /// Executions that identical reads may still join (see `coalesce`).
    flights: coalesce::Flights,
    /// Where round trips go when the core tunes its limit on requests at
    /// work to them (`runtime/limit_tuner.rs`).
    round_trips: std::cell::OnceCell<Rc<RequestLimit>>,
}

impl Pool {
    /// The pool's table of query deadlines, for the core to tick when the
    /// pool's own ticker is late (see `CoreCtx::also_tick`).
    pub fn deadline_table(&self) -> std::rc::Weak<DeadlineTable> {
        Rc::downgrade(&self.deadlines)
    }

    /// Whether identical reads may share an execution (`--db-coalesce`).
    pub fn coalesces(&self) -> bool {
        self.settings.coalesce
    }

    /// Creates the pool on the current core and starts one supervisor per
    /// connection. `addrs` were resolved before the cores started (no DNS
    /// lookup ever runs on a core).
    pub fn new(cfg: PgConfig, addrs: Vec<SocketAddr>, settings: PoolSettings) -> Rc<Pool> {
        let pool = Rc::new(Pool {
            cfg,
            addrs,
            members: RefCell::new(
                (0..settings.connections)
                    .map(|_| Member {
                        conn: None,
                        exclusive: false,
                        suspect_since: None,
                    })
                    .collect(),
            ),
            readers: WaitQueue::new(settings.max_waiters),
            exclusives: WaitQueue::new(settings.max_exclusive_waiters),
            exclusive_claims: Cell::new(0),
            progress_waiters: RefCell::new(Vec::new()),
            settings,
            stats: RefCell::new(PoolStats::default()),
            closed: Cell::new(false),
            last_error: RefCell::new(None),
            timeouts_logged: LogLimit::default(),
            deadlines: Rc::new(DeadlineTable::new()),
            flights: Default::default(),
            round_trips: Default::default(),
        });
        for i in 0..pool.settings.connections {
            monoio::spawn(supervise(Rc::downgrade(&pool), i));
        }
        monoio::spawn(watch_suspects(Rc::downgrade(&pool)));
        pool
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Whether at least one connection is up and not known to be broken.
    pub fn is_up(&self) -> bool {
        self.ready_count() > 0
    }

    /// Whether a connection is up, not broken and not suspect (a query on
    /// it passed its deadline and it has not answered since): whether a
    /// read sent now would find a connection that answers.
    pub fn serves(&self) -> bool {
        self.any_usable(&[])
    }

    pub fn stats(&self) -> PoolStats {
        let mut s = *self.stats.borrow();
        let members = self.members.borrow();
        s.size = members.len();
        s.ready = members.iter().filter(|m| m.conn.is_some()).count();
        s.in_flight = members
            .iter()
            .filter_map(|m| m.conn.as_ref())
            .map(|c| c.in_flight())
            .sum();
        s.waiting = self.readers.waiting.get();
        s.exclusive = members.iter().filter(|m| m.exclusive).count();
        s.exclusive_waiting = self.exclusives.waiting.get();
        s
    }

    /// Stops reconnecting and closes every connection.
    pub fn close(&self) {
        self.closed.set(true);
        for m in self.members.borrow_mut().iter_mut() {
            if let Some(c) = m.conn.take() {
                c.close("pool closed");
            }
        }
        self.wake_all();
    }

    /// Runs a prepared statement on a connection with room, bounded by
    /// the query timeout. A read-only statement whose connection broke
    /// before its answer arrived is run again, each time on a connection it
    /// has not tried yet (so at most once per member; once in the common
    /// case of one broken connection). A restart or an operator's
    /// `pg_terminate_backend` ends every member at once, and a single retry
    /// would often land on another dead member whose reader had not yet
    /// seen its end. Retries share the first attempt's deadline: a caller
    /// waits at most the pool wait plus one query timeout, however many
    /// connections break under it. Anything else fails with its error, and
    /// a statement that writes is never run twice.
    pub async fn query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        self.query_probed(stmt, params, &mut |_| {}, None).await
    }

    /// [`Pool::query`], telling `on_queued` each time the statement is
    /// queued on a connection (again after a retry), with a probe for
    /// whether it has been sent; within `deadline` when the caller's time
    /// started earlier.
    async fn query_probed(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        on_queued: &mut dyn FnMut(SentProbe),
        deadline: Option<Instant>,
    ) -> Result<Rows, QueryError> {
        self.run_statement(stmt, params, on_queued, self.settings.batch, deadline)
            .await
    }

    /// A statement on its own Sync, for one skipped in a batch: within
    /// the batch's deadline.
    async fn query_probed_unbatched(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        deadline: Instant,
    ) -> Result<Rows, QueryError> {
        self.run_statement(stmt, params, &mut |_| {}, false, Some(deadline))
            .await
    }

    /// Reports each statement's round trip to `limit` (while it is tuned).
    pub fn report_round_trips_to(&self, limit: Rc<RequestLimit>) {
        let _ = self.round_trips.set(limit);
    }

    /// When a round trip starts, if anyone wants it.
    fn round_trip_start(&self) -> Option<std::time::Instant> {
        let limit = self.round_trips.get()?;
        limit.is_tuned().then(std::time::Instant::now)
    }

    /// Only an answer is a round trip: a failure may have come at once
    /// (the database down, no slot in time) and would pull the no-load
    /// time down, or the limit up; it only lets a probe past its bound
    /// end. `unqueued`: the statement's backend had nothing else in flight
    /// when it was sent.
    fn round_trip_end<T>(
        &self,
        started: Option<std::time::Instant>,
        unqueued: bool,
        result: &Result<T, QueryError>,
    ) {
        let (Some(started), Some(limit)) = (started, self.round_trips.get()) else {
            return;
        };
        match result {
            Ok(_) => limit.note_round_trip(started, unqueued),
            Err(_) => limit.tick(),
        }
    }

    async fn run_statement(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        on_queued: &mut dyn FnMut(SentProbe),
        batch: bool,
        // Set when the statement is first queued (unless the caller's runs
        // already); every retry runs within it.
        mut deadline: Option<Instant>,
    ) -> Result<Rows, QueryError> {
        let began = self.round_trip_start();
        let mut unqueued = None;
        let mut tried: Vec<Rc<PgConn>> = Vec::new();
        // A single read-only statement may share its Sync with others; one
        // skipped because another of its batch failed runs again alone.
        let mut batched = batch && stmt.read_only;
        let result = loop {
            // A retry waits for a connection within the statement's time.
            let until = deadline.map(|d| (Instant::now() + self.settings.wait_timeout).min(d));
            let (index, conn) = match self.acquire_by(&tried, until).await {
                Ok(found) => found,
                Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    break Err(self.timed_out())
                }
                Err(e) => break Err(e),
            };
            // The statement's deadline: from its first queueing. With none
            // of it left, nothing is queued (a query cancelled at once
            // would mark a sound connection suspect).
            let d = match deadline {
                None => Instant::now() + self.settings.query_timeout,
                Some(d) if Instant::now() >= d => break Err(self.timed_out()),
                Some(d) => d,
            };
            unqueued.get_or_insert_with(|| conn.in_flight() == 0);
            let started = if batched {
                conn.start_query_batched(stmt, params)
            } else {
                conn.start_query(stmt, params, "", 0)
            };
            let result = match started {
                Ok(p) => {
                    on_queued(p.sent_probe());
                    deadline = Some(d);
                    self.within_until(d, index, &conn, p.rows()).await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(QueryError::Skipped) if batched => {
                    batched = false;
                    self.stats.borrow_mut().batch_retries += 1;
                }
                Err(e)
                    if stmt.read_only
                        && e.is_connection_lost()
                        && tried.len() < self.settings.connections =>
                {
                    tried.push(conn);
                    self.stats.borrow_mut().retries += 1;
                    // Let this core's readers notice the other members that
                    // ended with this one before the retry picks one.
                    monoio::time::sleep(RETRY_PAUSE).await;
                }
                r => break r,
            }
        };
        self.note(&result);
        self.round_trip_end(began, unqueued.unwrap_or(false), &result);
        result
    }

    /// Runs the same statement with each parameter set, all pipelined on
    /// one connection (one write, one wait), answers in order.
    pub async fn query_batch(
        &self,
        stmt: &'static Statement,
        params: &[&[Param<'_>]],
    ) -> Result<Vec<Rows>, QueryError> {
        let began = self.round_trip_start();
        let (index, conn) = self.acquire(&[]).await?;
        let unqueued = conn.in_flight() == 0;
        // A read-only statement's executions share Syncs (one implicit
        // transaction for many, see `--db-batch`).
        let batched = self.settings.batch && stmt.read_only;
        let pending = params
            .iter()
            .map(|p| {
                if batched {
                    conn.start_query_batched(stmt, p)
                } else {
                    conn.start_query(stmt, p, "", 0)
                }
            })
            .collect::<Result<Vec<_>, _>>();
        // The whole batch, reruns included, ends by one deadline.
        let deadline = Instant::now() + self.settings.query_timeout;
        let result = match pending {
            Ok(pending) => {
                let all = async {
                    let mut out = Vec::with_capacity(pending.len());
                    for p in pending {
                        out.push(p.rows().await);
                    }
                    out
                };
                match self
                    .within_until(deadline, index, &conn, async { Ok(all.await) })
                    .await
                {
                    Ok(results) => {
                        // Those skipped after another failed run again alone
                        // (then the failure is the first error reported, and
                        // nothing is run once one is known).
                        let mut rows = Vec::with_capacity(results.len());
                        let mut failed = None;
                        for (i, r) in results.into_iter().enumerate() {
                            match r {
                                Ok(r) => rows.push(r),
                                Err(QueryError::Skipped) if failed.is_some() => {}
                                Err(QueryError::Skipped) => {
                                    self.stats.borrow_mut().batch_retries += 1;
                                    let rerun =
                                        self.query_probed_unbatched(stmt, params[i], deadline);
                                    match rerun.await {
                                        Ok(r) => rows.push(r),
                                        Err(e) => {
                                            failed.get_or_insert(e);
                                        }
                                    }
                                }
                                Err(e) => {
                                    failed.get_or_insert(e);
                                }
                            }
                        }
                        match failed {
                            Some(e) => Err(e),
                            None => Ok(rows),
                        }
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        self.note(&result);
        self.round_trip_end(began, unqueued, &result);
        result
    }

    /// Holds one connection for a caller's own sequence of statements
    /// (transactions, COPY). At most `max_exclusive` are held at once; a
    /// caller beyond waits its turn in a queue of its own (bounded in count
    /// and by `exclusive_wait_timeout`, then `Busy`), never in front of the
    /// pipelined queries. The member it gets first finishes the pipelined
    /// queries it carries, taking no new ones.
    pub async fn exclusive(self: &Rc<Self>) -> Result<Held, QueryError> {
        self.exclusive_waiting(true).await
    }

    /// [`Pool::exclusive`] without queueing for a place: `Busy` at once when
    /// every place is taken (a replica's, whose reader goes elsewhere then).
    pub async fn exclusive_now(self: &Rc<Self>) -> Result<Held, QueryError> {
        self.exclusive_waiting(false).await
    }

    async fn exclusive_waiting(self: &Rc<Self>, queue: bool) -> Result<Held, QueryError> {
        if !queue
            && (self.exclusive_claims.get() >= self.settings.max_exclusive
                || !self.exclusives.is_empty())
        {
            self.stats.borrow_mut().busy += 1;
            return Err(QueryError::Busy);
        }
        if self.settings.fail_fast && !self.any_usable(&[]) {
            return Err(QueryError::Unavailable(self.down_reason()));
        }
        let deadline = Instant::now() + self.settings.exclusive_wait_timeout;
        let claim = self.claim_exclusive(deadline).await?;
        let (index, conn) = match self.reserve_member(deadline).await {
            Ok(found) => found,
            Err(e) => {
                self.stats.borrow_mut().busy += 1;
                return Err(e);
            }
        };
        Ok(Held {
            pool: self.clone(),
            index,
            conn,
            clean: Cell::new(false),
            _claim: claim,
        })
    }

    /// A place among the `max_exclusive`, waited for first come, first served.
    async fn claim_exclusive(
        self: &Rc<Self>,
        deadline: Instant,
    ) -> Result<ExclusiveClaim, QueryError> {
        let free = |p: &Pool| p.exclusive_claims.get() < p.settings.max_exclusive;
        if self.exclusives.is_empty() && free(self) {
            return Ok(ExclusiveClaim::new(self));
        }
        if self.exclusives.is_full() || self.settings.max_exclusive == 0 {
            self.stats.borrow_mut().busy += 1;
            return Err(QueryError::Busy);
        }
        let mut front = false;
        loop {
            let woke =
                monoio::time::timeout_at(deadline, WaitTurn::new(&self.exclusives, front)).await;
            if free(self) && !self.closed.get() {
                let claim = ExclusiveClaim::new(self);
                self.exclusives.wake_one();
                return Ok(claim);
            }
            front = true;
            if woke.is_err() || self.closed.get() {
                self.stats.borrow_mut().busy += 1;
                return Err(QueryError::Busy);
            }
        }
    }

    /// Picks the least loaded healthy member, takes it out of the
    /// pipelined rotation, and waits until the queries it carries are done.
    async fn reserve_member(&self, deadline: Instant) -> Result<(usize, Rc<PgConn>), QueryError> {
        let mut reserved: Option<(usize, Rc<PgConn>)> = None;
        loop {
            if reserved.as_ref().is_some_and(|(_, c)| c.is_broken()) {
                let (i, _) = reserved.take().expect("checked");
                self.members.borrow_mut()[i].exclusive = false;
            }
            if reserved.is_none() {
                reserved = self.pick_for_exclusive();
            }
            match &reserved {
                Some((_, c)) if c.in_flight() == 0 => {
                    return Ok(reserved.take().expect("checked"));
                }
                _ => {}
            }
            let woke = monoio::time::timeout_at(deadline, Progress::new(self)).await;
            if woke.is_err() || self.closed.get() {
                if let Some((i, _)) = reserved {
                    self.members.borrow_mut()[i].exclusive = false;
                    self.readers.wake_one();
                }
                return Err(match self.ready_count() {
                    0 => QueryError::Unavailable(self.down_reason()),
                    _ => QueryError::Busy,
                });
            }
        }
    }

    fn pick_for_exclusive(&self) -> Option<(usize, Rc<PgConn>)> {
        let mut members = self.members.borrow_mut();
        let (i, _) = members
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.exclusive && m.suspect_since.is_none())
            .filter_map(|(i, m)| {
                m.conn
                    .as_ref()
                    .filter(|c| !c.is_broken())
                    .map(|c| (i, c.in_flight()))
            })
            .min_by_key(|(_, load)| *load)?;
        members[i].exclusive = true;
        members[i].conn.clone().map(|c| (i, c))
    }

    /// Called whenever a request completes or a connection breaks or comes
    /// up: hands the capacity on.
    fn on_progress(&self) {
        let waiters = std::mem::take(&mut *self.progress_waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
        self.readers.wake_one();
    }

    /// Waits for the response, up to the query timeout; past it the query is
    /// cancelled and the connection marked suspect until it answers.
    async fn with_deadline<T>(
        &self,
        index: usize,
        conn: &Rc<PgConn>,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let deadline = Instant::now() + self.settings.query_timeout;
        self.within_until(deadline, index, conn, fut).await
    }

    /// `with_deadline` for a caller that gives its own deadline.
    async fn within_until<T>(
        &self,
        deadline: Instant,
        index: usize,
        conn: &Rc<PgConn>,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        let slot = DeadlineSlot::new(&self.deadlines);
        let answered = monoio::select! {
            r = fut => Some(r),
            _ = self.deadlines.wait(slot.0, deadline, false) => None,
        };
        drop(slot);
        match answered {
            Some(r) => r,
            None => {
                self.stats.borrow_mut().timeouts += 1;
                if let Some(suppressed) = self.timeouts_logged.admit() {
                    tracing::warn!(
                        backend_pid = conn.session.process_id,
                        in_flight = conn.in_flight(),
                        broken = conn.is_broken(),
                        suppressed,
                        "a query passed its deadline ({:?}); cancelling it",
                        self.settings.query_timeout
                    );
                }
                if let Some(m) = self.members.borrow_mut().get_mut(index) {
                    let same = m.conn.as_ref().is_some_and(|c| Rc::ptr_eq(c, conn));
                    if same && m.suspect_since.is_none() {
                        m.suspect_since = Some(Instant::now());
                    }
                }
                monoio::spawn(conn.cancel(&self.cfg, &self.addrs));
                Err(QueryError::Timeout)
            }
        }
    }

    /// A statement's time ran out between its attempts: counted like a
    /// deadline passed during one.
    fn timed_out(&self) -> QueryError {
        self.stats.borrow_mut().timeouts += 1;
        QueryError::Timeout
    }

    fn note<T>(&self, r: &Result<T, QueryError>) {
        if let Err(e) = r {
            let mut s = self.stats.borrow_mut();
            s.errors += 1;
            if matches!(e, QueryError::Busy) {
                s.busy += 1;
            }
        }
    }

    /// Picks a connection with room (one gathering its next write, else the
    /// least loaded), or waits for one.
    /// First come, first served: while anyone waits, a newcomer queues
    /// behind them rather than taking the slot a waiter was woken for.
    /// Connections in `avoid` are not chosen (a retry's earlier attempts).
    async fn acquire(&self, avoid: &[Rc<PgConn>]) -> Result<(usize, Rc<PgConn>), QueryError> {
        self.acquire_by(avoid, None).await
    }

    /// [`Pool::acquire`], waiting no later than `until` (by default, the
    /// pool wait from when it starts waiting).
    async fn acquire_by(
        &self,
        avoid: &[Rc<PgConn>],
        until: Option<Instant>,
    ) -> Result<(usize, Rc<PgConn>), QueryError> {
        if self.readers.is_empty() {
            if let Some(found) = self.try_acquire(avoid) {
                return Ok(found);
            }
        }
        if self.settings.fail_fast && !self.any_usable(avoid) {
            return Err(QueryError::Unavailable(self.down_reason()));
        }
        if self.readers.is_full() {
            self.stats.borrow_mut().busy += 1;
            return Err(QueryError::Busy);
        }
        let deadline = until.unwrap_or_else(|| Instant::now() + self.settings.wait_timeout);
        let mut front = false;
        loop {
            let woke =
                monoio::time::timeout_at(deadline, WaitTurn::new(&self.readers, front)).await;
            if let Some(found) = self.try_acquire(avoid) {
                // Pass the turn on: there may be more room.
                self.readers.wake_one();
                return Ok(found);
            }
            // Woken but beaten to it (or woken for a broken connection):
            // keep the place at the head of the queue.
            front = true;
            if self.settings.fail_fast && !self.any_usable(avoid) {
                self.readers.wake_one();
                return Err(QueryError::Unavailable(self.down_reason()));
            }
            if woke.is_err() || self.closed.get() {
                self.stats.borrow_mut().busy += 1;
                return Err(match self.ready_count() {
                    0 => QueryError::Unavailable(self.down_reason()),
                    _ => QueryError::Busy,
                });
            }
        }
    }

    fn ready_count(&self) -> usize {
        self.members
            .borrow()
            .iter()
            .filter(|m| m.conn.as_ref().is_some_and(|c| !c.is_broken()))
            .count()
    }

    /// Whether a member outside `avoid` is up and answering (busy or not).
    fn any_usable(&self, avoid: &[Rc<PgConn>]) -> bool {
        self.members.borrow().iter().any(|m| {
            m.suspect_since.is_none()
                && m.conn
                    .as_ref()
                    .is_some_and(|c| !c.is_broken() && !avoid.iter().any(|a| Rc::ptr_eq(a, c)))
        })
    }

    fn down_reason(&self) -> String {
        match self.last_error.borrow().as_ref() {
            Some(e) => format!("database unavailable: {e}"),
            None => "database unavailable".into(),
        }
    }

    fn try_acquire(&self, avoid: &[Rc<PgConn>]) -> Option<(usize, Rc<PgConn>)> {
        let members = self.members.borrow();
        let mut best: Option<(usize, usize)> = None;
        // A no-load probe of the tuned limit wants one statement per
        // connection: its round trip must not include others' executions.
        let may_join = !self.round_trips.get().is_some_and(|l| l.is_probing());
        for (i, m) in members.iter().enumerate() {
            let Some(c) = &m.conn else { continue };
            if m.exclusive
                || m.suspect_since.is_some()
                || c.is_broken()
                || avoid.iter().any(|a| Rc::ptr_eq(a, c))
            {
                continue;
            }
            let load = c.in_flight();
            if load >= self.settings.max_in_flight {
                continue;
            }
            // A write still being gathered takes one more: fewer, fuller
            // writes cost both sides less per statement (sends, backend
            // wake-ups) than one each spread over every connection.
            if may_join && c.has_open_write() {
                best = Some((i, load));
                break;
            }
            if best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        let (i, _) = best?;
        members[i].conn.clone().map(|c| (i, c))
    }

    fn wake_all(&self) {
        self.readers.wake_all();
        self.exclusives.wake_all();
        self.on_progress();
    }

    /// Returns a held connection; a caller that did not finish cleanly
    /// (dropped mid-transaction) gets the connection closed instead, so no
    /// half-done state reaches the next caller.
    fn release(&self, index: usize, conn: &Rc<PgConn>, clean: bool) {
        if !clean || conn.transaction_status() != ringside_wire::pg::TxStatus::Idle {
            conn.close("released mid-transaction");
        }
        if let Some(m) = self.members.borrow_mut().get_mut(index) {
            m.exclusive = false;
        }
        self.on_progress();
    }
}

const RETRY_PAUSE: Duration = Duration::from_millis(2);

/// Waits for the pool's next progress: a request done, a connection
/// broken or up. Spurious wake-ups are fine: the caller looks again.
struct Progress<'a> {
    pool: &'a Pool,
    registered: bool,
}

impl<'a> Progress<'a> {
    fn new(pool: &'a Pool) -> Self {
        Progress {
            pool,
            registered: false,
        }
    }
}

impl Future for Progress<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered {
            return Poll::Ready(());
        }
        self.registered = true;
        self.pool
            .progress_waiters
            .borrow_mut()
            .push(cx.waker().clone());
        Poll::Pending
    }
}

/// One of the `max_exclusive` places, given back (and the next exclusive
/// waiter woken) when dropped.
struct ExclusiveClaim {
    pool: Rc<Pool>,
}

impl ExclusiveClaim {
    fn new(pool: &Rc<Pool>) -> Self {
        pool.exclusive_claims.set(pool.exclusive_claims.get() + 1);
        ExclusiveClaim { pool: pool.clone() }
    }
}

impl Drop for ExclusiveClaim {
    fn drop(&mut self) {
        let claims = &self.pool.exclusive_claims;
        claims.set(claims.get() - 1);
        self.pool.exclusives.wake_one();
    }
}

/// A query's deadline slot, given back however the query ends (its
/// caller may drop it half-way).
struct DeadlineSlot<'a>(DeadlineKey, &'a DeadlineTable);

impl<'a> DeadlineSlot<'a> {
    fn new(table: &'a DeadlineTable) -> Self {
        DeadlineSlot(table.register(), table)
    }
}

impl Drop for DeadlineSlot<'_> {
    fn drop(&mut self) {
        self.1.release(self.0);
    }
}

//! A core's pool of PostgreSQL connections.
//!
//! Made on its core and never shared: `Rc` connections, `Cell` counters.
//! Queries are pipelined: a connection carries up to `max_in_flight`
//! requests at once, and the pool sends each query to the least loaded
//! healthy connection. When every connection is full, callers wait in a
//! bounded queue for a bounded time, then get `Busy` (503 upstream).
//! A broken connection is replaced by its supervisor with exponential
//! backoff; a connection whose query passed its deadline gets a
//! CancelRequest and no new queries until it answers again.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

use super::config::PgConfig;
use super::conn::{ConnSettings, CopyIn, Param, PgConn, Rows, Statement};
use super::QueryError;

/// The pool's settings (per core).
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub connections: usize,
    pub max_in_flight: usize,
    pub max_waiters: usize,
    pub wait_timeout: Duration,
    pub query_timeout: Duration,
    pub conn: ConnSettings,
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
}

struct Member {
    conn: Option<Rc<PgConn>>,
    /// Held by one caller (a transaction, a COPY): no pipelined queries.
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
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters still waiting (the queue may hold ones that gave up).
    waiting: Cell<usize>,
    stats: RefCell<PoolStats>,
    closed: Cell<bool>,
    /// The last connection error, for a clear message while none is up.
    last_error: RefCell<Option<String>>,
}

impl Pool {
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
            settings,
            waiters: RefCell::new(VecDeque::new()),
            waiting: Cell::new(0),
            stats: RefCell::new(PoolStats::default()),
            closed: Cell::new(false),
            last_error: RefCell::new(None),
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
        s.waiting = self.waiting.get();
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
        self.wake_waiters();
    }

    /// Runs a prepared statement on the least loaded connection, bounded by
    /// the query timeout.
    pub async fn query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        let (index, conn) = self.acquire(false).await?;
        let pending = conn.start_query(stmt, params, "", 0);
        let result = match pending {
            Ok(p) => self.with_deadline(index, &conn, p.rows()).await,
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// Runs the same statement with each parameter set, all pipelined on
    /// one connection (one write, one wait), answers in order.
    pub async fn query_batch(
        &self,
        stmt: &'static Statement,
        params: &[&[Param<'_>]],
    ) -> Result<Vec<Rows>, QueryError> {
        let (index, conn) = self.acquire(false).await?;
        let pending = params
            .iter()
            .map(|p| conn.start_query(stmt, p, "", 0))
            .collect::<Result<Vec<_>, _>>();
        let result = match pending {
            Ok(pending) => {
                let all = async {
                    let mut out = Vec::with_capacity(pending.len());
                    for p in pending {
                        out.push(p.rows().await?);
                    }
                    Ok(out)
                };
                self.with_deadline(index, &conn, all).await
            }
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// Holds one connection for a caller's own sequence of statements
    /// (transactions, COPY). Waits like `query` when none is free.
    pub async fn exclusive(self: &Rc<Self>) -> Result<Held, QueryError> {
        let (index, conn) = self.acquire(true).await?;
        Ok(Held {
            pool: self.clone(),
            index,
            conn,
            clean: Cell::new(false),
        })
    }

    /// Waits for the response, up to the query timeout; past it the query is
    /// cancelled and the connection marked suspect until it answers.
    async fn with_deadline<T>(
        &self,
        index: usize,
        conn: &Rc<PgConn>,
        fut: impl Future<Output = Result<T, QueryError>>,
    ) -> Result<T, QueryError> {
        match monoio::time::timeout(self.settings.query_timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.stats.borrow_mut().timeouts += 1;
                if let Some(m) = self.members.borrow_mut().get_mut(index) {
                    if m.suspect_since.is_none() {
                        m.suspect_since = Some(Instant::now());
                    }
                }
                monoio::spawn(conn.cancel(&self.cfg, &self.addrs));
                Err(QueryError::Timeout)
            }
        }
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

    /// Picks a connection with room (the least loaded), or waits for one.
    /// First come, first served: while anyone waits, a newcomer queues
    /// behind them rather than taking the slot a waiter was woken for.
    async fn acquire(&self, exclusive: bool) -> Result<(usize, Rc<PgConn>), QueryError> {
        if self.waiting.get() == 0 {
            if let Some(found) = self.try_acquire(exclusive) {
                return Ok(found);
            }
        }
        if self.waiting.get() >= self.settings.max_waiters {
            self.stats.borrow_mut().busy += 1;
            return Err(QueryError::Busy);
        }
        let deadline = Instant::now() + self.settings.wait_timeout;
        let mut front = false;
        loop {
            let woke = monoio::time::timeout_at(deadline, WaitTurn::new(self, front)).await;
            if let Some(found) = self.try_acquire(exclusive) {
                // Pass the turn on: there may be more room.
                self.wake_one();
                return Ok(found);
            }
            // Woken but beaten to it (or woken for a broken connection):
            // keep the place at the head of the queue.
            front = true;
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

    fn down_reason(&self) -> String {
        match self.last_error.borrow().as_ref() {
            Some(e) => format!("database unavailable: {e}"),
            None => "database unavailable".into(),
        }
    }

    fn try_acquire(&self, exclusive: bool) -> Option<(usize, Rc<PgConn>)> {
        let mut members = self.members.borrow_mut();
        let mut best: Option<(usize, usize)> = None;
        for (i, m) in members.iter().enumerate() {
            let Some(c) = &m.conn else { continue };
            if m.exclusive || m.suspect_since.is_some() || c.is_broken() {
                continue;
            }
            let load = c.in_flight();
            let room = if exclusive {
                load == 0
            } else {
                load < self.settings.max_in_flight
            };
            if room && best.is_none_or(|(_, l)| load < l) {
                best = Some((i, load));
            }
        }
        let (i, _) = best?;
        if exclusive {
            members[i].exclusive = true;
        }
        members[i].conn.clone().map(|c| (i, c))
    }

    fn wake_one(&self) {
        loop {
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                return;
            };
            if w.give_turn() {
                return;
            }
        }
    }

    fn wake_waiters(&self) {
        let all: Vec<Rc<Waiter>> = self.waiters.borrow_mut().drain(..).collect();
        for w in all {
            w.give_turn();
        }
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
        self.wake_one();
    }
}

/// One caller waiting for a slot.
struct Waiter {
    waker: RefCell<Option<Waker>>,
    /// Set when it is its turn; cleared (with the waker) when it gave up.
    turn: Cell<bool>,
    gone: Cell<bool>,
}

impl Waiter {
    /// Wakes it; false if it already gave up (the turn goes to the next).
    fn give_turn(&self) -> bool {
        if self.gone.get() {
            return false;
        }
        self.turn.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
        true
    }
}

/// A place in the pool's queue, held until woken once; dropping it (a
/// timeout, a caller gone) leaves the queue.
struct WaitTurn<'a> {
    pool: &'a Pool,
    front: bool,
    waiter: Option<Rc<Waiter>>,
}

impl<'a> WaitTurn<'a> {
    fn new(pool: &'a Pool, front: bool) -> Self {
        WaitTurn {
            pool,
            front,
            waiter: None,
        }
    }
}

impl Future for WaitTurn<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.waiter {
            Some(w) if w.turn.get() => Poll::Ready(()),
            Some(w) => {
                *w.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
            None => {
                let w = Rc::new(Waiter {
                    waker: RefCell::new(Some(cx.waker().clone())),
                    turn: Cell::new(false),
                    gone: Cell::new(false),
                });
                let mut q = self.pool.waiters.borrow_mut();
                // Places left by waiters that gave up are dropped lazily;
                // bound them here too, so timeouts without any wake-up
                // cannot grow the queue.
                if q.len() >= 2 * self.pool.settings.max_waiters.max(16) {
                    q.retain(|w| !w.gone.get());
                }
                if self.front {
                    q.push_front(w.clone());
                } else {
                    q.push_back(w.clone());
                }
                drop(q);
                self.pool.waiting.set(self.pool.waiting.get() + 1);
                self.waiter = Some(w);
                Poll::Pending
            }
        }
    }
}

impl Drop for WaitTurn<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            self.pool.waiting.set(self.pool.waiting.get() - 1);
            if !w.turn.get() {
                w.gone.set(true);
                w.waker.borrow_mut().take();
            }
        }
    }
}

/// Keeps one member connected: connects, waits until the connection
/// breaks, reconnects with exponential backoff (100 ms doubling to 5 s).
async fn supervise(pool: Weak<Pool>, index: usize) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let Some(p) = pool.upgrade() else { return };
        if p.closed.get() {
            return;
        }
        let attempt = PgConn::connect(&p.cfg, &p.addrs, p.settings.conn.clone()).await;
        match attempt {
            Ok(conn) => {
                backoff = Duration::from_millis(100);
                if !first {
                    p.stats.borrow_mut().reconnects += 1;
                }
                first = false;
                let weak = Rc::downgrade(&p);
                conn.set_on_idle(Box::new(move || {
                    if let Some(pool) = weak.upgrade() {
                        pool.wake_one();
                    }
                }));
                {
                    let mut members = p.members.borrow_mut();
                    members[index] = Member {
                        conn: Some(conn.clone()),
                        exclusive: false,
                        suspect_since: None,
                    };
                }
                p.wake_waiters();
                drop(p);
                // Wait for the connection to break, checking now and then.
                while !conn.is_broken() {
                    monoio::time::sleep(Duration::from_millis(100)).await;
                    if pool.upgrade().is_none_or(|p| p.closed.get()) {
                        conn.close("pool closed");
                        return;
                    }
                }
                if let Some(p) = pool.upgrade() {
                    p.members.borrow_mut()[index].conn = None;
                    p.wake_waiters();
                }
            }
            Err(e) => {
                *p.last_error.borrow_mut() = Some(e.to_string());
                p.wake_waiters();
                drop(p);
                // A little jitter (from the member index) so that cores and
                // members do not reconnect in lockstep.
                let jitter = Duration::from_millis((index as u64 * 37) % 50);
                monoio::time::sleep(backoff + jitter).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Clears suspects that answered again, and closes those that stay stuck
/// (a backend stopped with SIGSTOP never answers its cancel).
async fn watch_suspects(pool: Weak<Pool>) {
    loop {
        monoio::time::sleep(Duration::from_millis(100)).await;
        let Some(p) = pool.upgrade() else { return };
        let limit = p.settings.query_timeout * 2;
        let mut members = p.members.borrow_mut();
        let mut woke = false;
        for m in members.iter_mut() {
            let Some(since) = m.suspect_since else {
                continue;
            };
            match &m.conn {
                Some(c) if c.in_flight() == 0 && !c.is_broken() => {
                    m.suspect_since = None;
                    woke = true;
                }
                Some(c) if since.elapsed() > limit => {
                    c.close("no answer after a cancelled query");
                    m.suspect_since = None;
                }
                None => m.suspect_since = None,
                _ => {}
            }
        }
        drop(members);
        if woke {
            p.wake_waiters();
        }
    }
}

/// A connection held by one caller. Call [`Held::release`] when done; a
/// `Held` dropped without it closes its connection (a transaction left
/// half-done is rolled back by the server when the session ends).
pub struct Held {
    pool: Rc<Pool>,
    index: usize,
    conn: Rc<PgConn>,
    clean: Cell<bool>,
}

impl Held {
    pub fn conn(&self) -> &Rc<PgConn> {
        &self.conn
    }

    /// Simple-protocol SQL on the held connection, bounded by the query timeout.
    pub async fn simple(&self, sql: &str) -> Result<Rows, QueryError> {
        let r = self
            .pool
            .with_deadline(self.index, &self.conn, self.conn.simple(sql))
            .await;
        self.pool.note(&r);
        r
    }

    /// A prepared statement on the held connection.
    pub async fn query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        let pending = self.conn.start_query(stmt, params, "", 0)?;
        let r = self
            .pool
            .with_deadline(self.index, &self.conn, pending.rows())
            .await;
        self.pool.note(&r);
        r
    }

    /// Starts COPY FROM STDIN.
    pub async fn copy_in(&self, sql: &str) -> Result<CopyIn, QueryError> {
        self.pool
            .with_deadline(self.index, &self.conn, self.conn.copy_in(sql))
            .await
    }

    /// Gives the connection back (closing it if a transaction is still open).
    pub fn release(self) {
        self.clean.set(true);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.pool.release(self.index, &self.conn, self.clean.get());
    }
}

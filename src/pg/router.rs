//! Where each statement runs: the primary, or one of PostgreSQL's own
//! streaming replicas (`--db-replica`).
//!
//! A core's router keeps the core's primary pool and one small pool per
//! replica. A read-only statement not marked `fresh` goes to a replica that
//! is up and whose replay lag, sampled on the core's own timer (never per
//! request), is within `--db-max-replica-lag`; the replicas take turns.
//! Everything else (writes, COPY, transactions, fresh reads) runs on the
//! primary. With no replica usable, reads go to the primary, or get 503
//! with `--db-replica-fallback fail`. A read that fails on a replica because
//! the replica went away runs once more, on another replica or the primary,
//! and that replica takes no reads until a new sample says it is back.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::config::PgConfig;
use super::conn::{Param, Rows, Statement};
use super::pool::{Held, Pool, PoolSettings, PoolStats};
use super::QueryError;
use crate::config::ReplicaFallback;

/// A replica as configured: resolved before the cores start (`Send`; each
/// core makes its own pool from it).
#[derive(Clone, Debug)]
pub struct ReplicaTarget {
    /// `host:port`, for logs and metrics (no credentials).
    pub name: String,
    pub config: PgConfig,
    pub addrs: Vec<SocketAddr>,
}

/// How reads are spread (from the configuration).
#[derive(Clone, Debug)]
pub struct RouterSettings {
    pub max_lag: Duration,
    pub check_interval: Duration,
    pub fallback: ReplicaFallback,
    /// The pool settings of each replica's pool.
    pub replica_pool: PoolSettings,
}

/// One pool's figures for `/metrics`.
#[derive(Clone, Debug)]
pub struct PoolReport {
    /// `primary`, or `replica<N>` (1-based, in configuration order).
    pub name: String,
    /// The replica's `host:port`; empty for the primary.
    pub host: String,
    pub stats: PoolStats,
    /// Read-only statements the router sent to this pool.
    pub routed_reads: u64,
    /// The last sampled replay lag; `None` for the primary, and for a
    /// replica not yet sampled or whose last sample failed.
    pub lag: Option<Duration>,
    /// Whether the router would send it a read now.
    pub serving: bool,
    /// Reads run again elsewhere after failing on this replica.
    pub failovers: u64,
}

struct Replica {
    name: String,
    pool: Rc<Pool>,
    /// `None` until the first sample, and after a failed one.
    lag: Cell<Option<Duration>>,
    /// Set when a read failed because the replica went away: no reads
    /// until the next successful sample clears it.
    failed: Cell<bool>,
    routed: Cell<u64>,
    failovers: Cell<u64>,
    /// Whether the last log line said it serves (logs name transitions).
    announced: Cell<bool>,
}

/// A core's primary pool and replica pools.
pub struct Router {
    primary: Rc<Pool>,
    replicas: Vec<Replica>,
    settings: RouterSettings,
    /// Round-robin cursor over the replicas.
    next: Cell<usize>,
    primary_reads: Cell<u64>,
}

/// The replay lag in milliseconds: 0 when everything received has been
/// replayed (an idle primary is not lag), else the age of the last replayed
/// commit. On a server that is not in recovery (a primary named as a
/// replica, or one just promoted) it is 0.
static REPLICA_LAG: Statement = Statement {
    sql: "SELECT CASE \
            WHEN NOT pg_is_in_recovery() THEN 0 \
            WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
            ELSE COALESCE((EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8, 0) \
          END::int8",
    param_types: &[],
    read_only: true,
    fresh: false,
};

impl Router {
    /// Makes the core's router: the primary's pool, one pool per replica,
    /// and one lag sampler per replica on this core's timer.
    pub fn new(
        primary: Rc<Pool>,
        replicas: &[ReplicaTarget],
        settings: RouterSettings,
    ) -> Rc<Router> {
        let replicas = replicas
            .iter()
            .map(|t| Replica {
                name: t.name.clone(),
                pool: Pool::new(
                    t.config.clone(),
                    t.addrs.clone(),
                    settings.replica_pool.clone(),
                ),
                lag: Cell::new(None),
                failed: Cell::new(false),
                routed: Cell::new(0),
                failovers: Cell::new(0),
                announced: Cell::new(false),
            })
            .collect::<Vec<_>>();
        let router = Rc::new(Router {
            primary,
            replicas,
            settings,
            next: Cell::new(0),
            primary_reads: Cell::new(0),
        });
        for i in 0..router.replicas.len() {
            monoio::spawn(sample_lag(Rc::downgrade(&router), i));
        }
        router
    }

    pub fn primary(&self) -> &Rc<Pool> {
        &self.primary
    }

    /// Whether identical reads may share an execution (`--db-coalesce`).
    pub fn coalesces(&self) -> bool {
        self.primary.coalesces()
    }

    /// Runs a statement where it belongs (see the module documentation).
    pub async fn query(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
    ) -> Result<Rows, QueryError> {
        let (pool, replica) = self.pick(stmt, None)?;
        let result = pool.query(stmt, params).await;
        match (replica, &result) {
            (Some(i), Err(e)) if self.replica_failed(i, e) => {
                let (pool, _) = self.pick(stmt, Some(i))?;
                pool.query(stmt, params).await
            }
            _ => result,
        }
    }

    /// [`Pool::query_shared`] on the pool the statement belongs to.
    pub async fn query_shared<T: Clone + 'static>(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        variant: u64,
        render: impl Fn(&Rows) -> Result<T, QueryError>,
    ) -> Result<T, QueryError> {
        let (pool, replica) = self.pick(stmt, None)?;
        let result = pool.query_shared(stmt, params, variant, &render).await;
        match (replica, &result) {
            (Some(i), Err(e)) if self.replica_failed(i, e) => {
                let (pool, _) = self.pick(stmt, Some(i))?;
                pool.query_shared(stmt, params, variant, &render).await
            }
            _ => result,
        }
    }

    /// A connection held for a sequence of reads (a read-only transaction,
    /// a cursor): on a replica when one serves, else on the primary.
    pub async fn exclusive_read(&self) -> Result<Held, QueryError> {
        static READ_TRANSACTION: Statement = Statement {
            sql: "",
            param_types: &[],
            read_only: true,
            fresh: false,
        };
        let (pool, replica) = self.pick(&READ_TRANSACTION, None)?;
        if replica.is_some() && pool.settings().max_exclusive == 0 {
            return self.primary.exclusive().await;
        }
        match (replica, pool.exclusive().await) {
            (Some(i), Err(e)) if self.replica_failed(i, &e) => {
                let (pool, _) = self.pick(&READ_TRANSACTION, Some(i))?;
                pool.exclusive().await
            }
            (_, r) => r,
        }
    }

    /// The pool for `stmt`, and which replica it is (`None`: the primary).
    /// `avoid` is a replica that just failed this statement.
    fn pick(
        &self,
        stmt: &Statement,
        avoid: Option<usize>,
    ) -> Result<(&Rc<Pool>, Option<usize>), QueryError> {
        if !stmt.read_only {
            return Ok((&self.primary, None));
        }
        if stmt.fresh || self.replicas.is_empty() {
            self.primary_reads.set(self.primary_reads.get() + 1);
            return Ok((&self.primary, None));
        }
        let n = self.replicas.len();
        let start = self.next.get();
        for k in 0..n {
            let i = (start + k) % n;
            if Some(i) != avoid && self.serving(&self.replicas[i]) {
                self.next.set((i + 1) % n);
                let r = &self.replicas[i];
                r.routed.set(r.routed.get() + 1);
                return Ok((&r.pool, Some(i)));
            }
        }
        match self.settings.fallback {
            ReplicaFallback::Primary => {
                self.primary_reads.set(self.primary_reads.get() + 1);
                Ok((&self.primary, None))
            }
            ReplicaFallback::Fail => Err(QueryError::Unavailable(
                "no database replica available".into(),
            )),
        }
    }

    fn serving(&self, r: &Replica) -> bool {
        !r.failed.get() && r.lag.get().is_some_and(|l| l <= self.settings.max_lag) && r.pool.is_up()
    }

    /// Whether a read that failed on replica `i` with `e` should run again
    /// elsewhere: the replica went away (down, restarting, its backend
    /// ended) or cancelled the read for a conflict with replay. The replica
    /// then takes no reads until its next good sample.
    fn replica_failed(&self, i: usize, e: &QueryError) -> bool {
        let gone = e.is_connection_lost()
            || matches!(e, QueryError::Unavailable(_))
            // 40001: canceling statement due to conflict with recovery.
            || e.sqlstate() == Some("40001");
        if gone {
            let r = &self.replicas[i];
            r.failovers.set(r.failovers.get() + 1);
            if !r.failed.replace(true) {
                tracing::warn!(replica = %r.name, "a read failed on a replica ({e}); it takes no reads until it answers again");
            }
        }
        gone
    }

    /// Every pool's figures.
    pub fn reports(&self) -> Vec<PoolReport> {
        let mut out = Vec::with_capacity(1 + self.replicas.len());
        out.push(PoolReport {
            name: "primary".into(),
            host: String::new(),
            stats: self.primary.stats(),
            routed_reads: self.primary_reads.get(),
            lag: None,
            serving: self.primary.is_up(),
            failovers: 0,
        });
        for (i, r) in self.replicas.iter().enumerate() {
            out.push(PoolReport {
                name: format!("replica{}", i + 1),
                host: r.name.clone(),
                stats: r.pool.stats(),
                routed_reads: r.routed.get(),
                lag: r.lag.get(),
                serving: self.serving(r),
                failovers: r.failovers.get(),
            });
        }
        out
    }

    /// Stops every pool.
    pub fn close(&self) {
        self.primary.close();
        for r in &self.replicas {
            r.pool.close();
        }
    }
}

/// Samples replica `i`'s replay lag every `check_interval` (sooner while it
/// is unknown), for as long as the router lives.
async fn sample_lag(router: Weak<Router>, i: usize) {
    loop {
        let Some(r) = router.upgrade() else { return };
        let replica = &r.replicas[i];
        let pool = replica.pool.clone();
        let lag = if pool.is_up() {
            match pool.query(&REPLICA_LAG, &[]).await {
                Ok(rows) => rows
                    .iter()
                    .next()
                    .and_then(|row| row.ok()?.req_i64(&rows.columns, 0).ok())
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                Err(_) => None,
            }
        } else {
            None
        };
        replica.lag.set(lag);
        if lag.is_some() {
            replica.failed.set(false);
        }
        let now = r.serving(replica);
        if replica.announced.replace(now) != now {
            match lag {
                Some(l) if now => {
                    tracing::info!(replica = %replica.name, lag_ms = l.as_millis() as u64, "replica serves reads")
                }
                Some(l) => {
                    tracing::warn!(replica = %replica.name, lag_ms = l.as_millis() as u64, max_lag_ms = r.settings.max_lag.as_millis() as u64, "replica lags too far behind; reads leave it")
                }
                None => {
                    tracing::warn!(replica = %replica.name, "replica unreachable; reads leave it")
                }
            }
        }
        let wait = match lag {
            Some(_) => r.settings.check_interval,
            None => r.settings.check_interval.min(Duration::from_millis(200)),
        };
        drop(r);
        monoio::time::sleep(wait).await;
    }
}

//! Where each statement runs: the primary, or one of PostgreSQL's own
//! streaming replicas (`--db-replica`).
//!
//! A core's router keeps the core's primary pool and one small pool per
//! replica. A read-only statement not marked `fresh` goes to a replica that
//! is up and whose lag, sampled on the core's own timer (never per
//! request), is within `--db-max-replica-lag`; the replicas take turns.
//! Everything else (writes, COPY, transactions, fresh reads) runs on the
//! primary. With no replica usable, reads go to the primary, or get 503
//! with `--db-replica-fallback fail`. A read that a replica fails because it
//! went away, stalled, was full or cancelled the read for replay runs once
//! more, on another replica or the primary; a replica that went away or
//! stalled takes no reads until a new sample says it is back.
//!
//! Lag is measured in WAL, not in commit times: each tick the core notes
//! the primary's WAL position, and a replica's lag is the age of the newest
//! such note its replay has reached. A replica whose replication broke
//! falls behind the primary's advancing position (its own "received"
//! position would not move, and comparing against it would call it fresh),
//! an idle primary costs nothing, and a long VACUUM or COPY on the primary
//! is not mistaken for lag. A server that is not in recovery (promoted)
//! gets no reads. While the primary cannot be sampled, the replica's own
//! replay timestamp stands in.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::config::PgConfig;
use super::conn::{Param, Rows, Statement};
use super::pool::{Held, Pool, PoolSettings, PoolStats};
use super::QueryError;
use crate::config::ReplicaFallback;
use monoio::time::Instant;

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
    /// The primary's `host:port`, for metric labels.
    pub primary_name: String,
}

/// One pool's figures for `/metrics`.
#[derive(Clone, Debug)]
pub struct PoolReport {
    /// `primary`, or `replica<N>` (1-based, in configuration order).
    pub name: String,
    /// The server's `host:port`.
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
    /// Set while the server says it is not in recovery (logged once).
    promoted: Cell<bool>,
}

/// A core's primary pool and replica pools.
pub struct Router {
    primary: Rc<Pool>,
    replicas: Vec<Replica>,
    settings: RouterSettings,
    /// Round-robin cursor over the replicas.
    next: Cell<usize>,
    primary_reads: Cell<u64>,
    /// The primary's WAL position as this core sampled it, oldest first,
    /// covering a little more than the lag bound.
    primary_wal: RefCell<VecDeque<(Instant, u64)>>,
}

/// The primary's WAL position, in bytes.
static PRIMARY_WAL: Statement = Statement {
    sql: "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8",
    param_types: &[],
    read_only: true,
    fresh: true,
};

/// A replica's state: in recovery (1) or not, its replay position in bytes,
/// and the age in milliseconds of its last replayed commit (0 when it has
/// replayed all it received; the stand-in while the primary cannot be
/// sampled).
static REPLICA_POSITION: Statement = Statement {
    sql: "SELECT pg_is_in_recovery()::int4, \
            pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::int8, \
            CASE WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 \
            ELSE (EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8 END",
    param_types: &[],
    read_only: true,
    fresh: false,
};

/// Reads a replica had in flight or was asked for, and lost: worth running
/// again elsewhere. `out` says the replica itself is in trouble (no reads
/// until its next good sample), not merely full.
fn worth_moving(e: &QueryError) -> Option<bool> {
    if e.is_connection_lost() || matches!(e, QueryError::Unavailable(_) | QueryError::Timeout) {
        return Some(true);
    }
    match e {
        QueryError::Busy => Some(false),
        // 40001: cancelled for a conflict with recovery; 40P01: a buffer
        // pin deadlock with replay.
        _ if matches!(e.sqlstate(), Some("40001" | "40P01")) => Some(false),
        _ => None,
    }
}

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
                promoted: Cell::new(false),
            })
            .collect::<Vec<_>>();
        let router = Rc::new(Router {
            primary,
            replicas,
            settings,
            next: Cell::new(0),
            primary_reads: Cell::new(0),
            primary_wal: RefCell::new(VecDeque::new()),
        });
        if !router.replicas.is_empty() {
            monoio::spawn(sample_primary(Rc::downgrade(&router)));
        }
        for i in 0..router.replicas.len() {
            monoio::spawn(sample_lag(Rc::downgrade(&router), i));
        }
        router
    }

    /// The primary's pool, then each replica's.
    pub fn pools(&self) -> impl Iterator<Item = &Rc<Pool>> {
        std::iter::once(&self.primary).chain(self.replicas.iter().map(|r| &r.pool))
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

    /// A connection held for a sequence of reads, in a `BEGIN READ ONLY`
    /// transaction (a cursor, an export): on a replica when one serves and
    /// has a held connection free at once, else on the primary. A replica
    /// that fails the `BEGIN` sends it to the primary.
    pub async fn read_transaction(&self) -> Result<Held, QueryError> {
        static READ_TRANSACTION: Statement = Statement {
            sql: "BEGIN READ ONLY",
            param_types: &[],
            read_only: true,
            fresh: false,
        };
        let mut avoid = None;
        loop {
            let (pool, replica) = self.pick(&READ_TRANSACTION, avoid)?;
            let Some(i) = replica else {
                let held = pool.exclusive().await?;
                held.simple(READ_TRANSACTION.sql).await?;
                return Ok(held);
            };
            // A replica's held connections are not queued for: when its
            // few are taken, the primary serves.
            let begun = match pool.exclusive_now().await {
                Ok(held) => held.simple(READ_TRANSACTION.sql).await.map(|_| held),
                Err(e) => Err(e),
            };
            match begun {
                Ok(held) => return Ok(held),
                Err(e) if avoid.is_none() && self.replica_failed(i, &e) => avoid = Some(i),
                Err(e) => return Err(e),
            }
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
        !r.failed.get()
            && r.lag.get().is_some_and(|l| l <= self.settings.max_lag)
            && r.pool.serves()
    }

    /// Whether a read that failed on replica `i` with `e` should run again
    /// elsewhere (see [`worth_moving`]); a replica that went away or
    /// stalled then takes no reads until its next good sample.
    fn replica_failed(&self, i: usize, e: &QueryError) -> bool {
        let Some(out) = worth_moving(e) else {
            return false;
        };
        let r = &self.replicas[i];
        r.failovers.set(r.failovers.get() + 1);
        if out && !r.failed.replace(true) {
            tracing::warn!(replica = %r.name, "a read failed on a replica ({e}); it takes no reads until it answers again");
        }
        true
    }

    fn wal_lag(&self, replay: u64, now: Instant) -> Option<Duration> {
        lag_in_wal(
            &self.primary_wal.borrow(),
            replay,
            now,
            self.settings.max_lag,
        )
    }

    /// Every pool's figures.
    pub fn reports(&self) -> Vec<PoolReport> {
        let mut out = Vec::with_capacity(1 + self.replicas.len());
        out.push(PoolReport {
            name: "primary".into(),
            host: self.settings.primary_name.clone(),
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

/// The lag of a replica at `replay` in the primary's WAL, given the
/// primary's positions sampled at times (oldest first): the age of the
/// newest sample it has replayed, 0 if that is the newest. Behind every
/// sample it is at least as old as the oldest, which tells once the
/// samples span `max_lag`; before that, `None` (unknown).
fn lag_in_wal(
    samples: &VecDeque<(Instant, u64)>,
    replay: u64,
    now: Instant,
    max_lag: Duration,
) -> Option<Duration> {
    let newest_reached = samples.iter().rev().find(|(_, lsn)| *lsn <= replay);
    match (newest_reached, samples.back(), samples.front()) {
        (Some((_, lsn)), Some((_, newest)), _) if lsn == newest => Some(Duration::ZERO),
        (Some((t, _)), _, _) => Some(now.saturating_duration_since(*t)),
        (None, _, Some((t, _))) if now.saturating_duration_since(*t) >= max_lag => {
            Some(now.saturating_duration_since(*t))
        }
        _ => None,
    }
}

/// How long one sample may take: a server that does not answer within it
/// counts as unreachable (a stalled replica loses its reads at once).
fn sample_bound(settings: &RouterSettings) -> Duration {
    settings.check_interval.max(Duration::from_millis(500))
}

/// Notes the primary's WAL position every `check_interval`, keeping a
/// little more than `max_lag` of history.
async fn sample_primary(router: Weak<Router>) {
    loop {
        let Some(r) = router.upgrade() else { return };
        let primary = r.primary.clone();
        let bound = sample_bound(&r.settings);
        let keep = r.settings.max_lag + 2 * r.settings.check_interval;
        let interval = r.settings.check_interval;
        drop(r);
        let taken = Instant::now();
        let position = monoio::time::timeout(bound, primary.query(&PRIMARY_WAL, &[])).await;
        let Some(r) = router.upgrade() else { return };
        if let Ok(Ok(rows)) = position {
            let lsn = rows
                .iter()
                .next()
                .and_then(|row| row.ok()?.req_i64(&rows.columns, 0).ok());
            if let Some(lsn) = lsn {
                let mut samples = r.primary_wal.borrow_mut();
                samples.push_back((taken, lsn.max(0) as u64));
                while samples.len() > 1
                    && samples
                        .front()
                        .is_some_and(|(t, _)| taken.saturating_duration_since(*t) > keep)
                {
                    samples.pop_front();
                }
            }
        } else {
            // Unknown now: the replicas' own replay times stand in.
            r.primary_wal.borrow_mut().clear();
        }
        drop(r);
        monoio::time::sleep(interval).await;
    }
}

/// What one sample of a replica says.
struct Position {
    in_recovery: bool,
    replay: Option<u64>,
    replay_age: Option<Duration>,
}

/// Samples replica `i`'s lag every `check_interval` (sooner while it is
/// unknown), for as long as the router lives.
async fn sample_lag(router: Weak<Router>, i: usize) {
    loop {
        let Some(r) = router.upgrade() else { return };
        let replica = &r.replicas[i];
        let pool = replica.pool.clone();
        let bound = sample_bound(&r.settings);
        let position = if pool.is_up() {
            match monoio::time::timeout(bound, pool.query(&REPLICA_POSITION, &[])).await {
                Ok(Ok(rows)) => rows.iter().next().and_then(|row| {
                    let row = row.ok()?;
                    Some(Position {
                        in_recovery: row.req_i32(&rows.columns, 0).ok()? == 1,
                        replay: row.get_i64(&rows.columns, 1).ok()?.map(|v| v.max(0) as u64),
                        replay_age: row
                            .get_i64(&rows.columns, 2)
                            .ok()?
                            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                    })
                }),
                _ => None,
            }
        } else {
            None
        };
        let lag = match &position {
            Some(p) if !p.in_recovery => {
                if !replica.promoted.replace(true) {
                    tracing::error!(replica = %replica.name, "a configured replica is not in recovery (promoted, or a primary): it gets no reads");
                }
                None
            }
            Some(p) => {
                replica.promoted.set(false);
                let by_wal = p.replay.and_then(|replay| {
                    (!r.primary_wal.borrow().is_empty())
                        .then(|| r.wal_lag(replay, Instant::now()))
                        .flatten()
                });
                match by_wal {
                    Some(l) => Some(l),
                    None if r.primary_wal.borrow().is_empty() => p.replay_age,
                    None => None,
                }
            }
            None => None,
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
                    tracing::warn!(replica = %replica.name, "replica unreachable or its lag unknown; reads leave it")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_newest_primary_position_replayed() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let max = Duration::from_secs(5);
        // The primary at 100, 200, 300 (bytes of WAL), a second apart.
        let samples: VecDeque<_> = [(at(0), 100), (at(1000), 200), (at(2000), 300)].into();
        let now = at(2500);
        assert_eq!(
            lag_in_wal(&samples, 300, now, max),
            Some(Duration::ZERO),
            "caught up"
        );
        assert_eq!(
            lag_in_wal(&samples, 400, now, max),
            Some(Duration::ZERO),
            "ahead"
        );
        assert_eq!(
            lag_in_wal(&samples, 250, now, max),
            Some(Duration::from_millis(1500)),
            "has what the primary had at 1 s"
        );
        // Behind every sample: unknown until the samples span the bound.
        assert_eq!(lag_in_wal(&samples, 50, now, max), None);
        assert_eq!(
            lag_in_wal(&samples, 50, at(6000), max),
            Some(Duration::from_secs(6)),
            "at least as old as the oldest sample: past the bound"
        );
        // An idle primary: every sample at the same position.
        let idle: VecDeque<_> = [(at(0), 100), (at(1000), 100)].into();
        assert_eq!(lag_in_wal(&idle, 100, at(9000), max), Some(Duration::ZERO));
        // A replica whose replication stopped: the primary moves on, and
        // its lag grows with the time since it was last level.
        let moving: VecDeque<_> = [(at(0), 100), (at(3000), 150), (at(6000), 220)].into();
        assert_eq!(
            lag_in_wal(&moving, 150, at(6000), max),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            lag_in_wal(&moving, 100, at(6000), max),
            Some(Duration::from_secs(6))
        );
        assert_eq!(lag_in_wal(&VecDeque::new(), 100, now, max), None);
    }
}

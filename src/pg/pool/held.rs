//! A connection held by one caller alone: a transaction, a COPY, an
//! export's portal. Every wait on it has the query deadline.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use super::{ExclusiveClaim, Pool};
use crate::pg::conn::{CopyIn, Param, Pending, PgConn, Rows, Statement};
use crate::pg::QueryError;

/// A connection held by one caller. Call [`Held::release`] when done; a
/// `Held` dropped without it closes its connection (a transaction left
/// half-done is rolled back by the server when the session ends).
pub struct Held {
    pub(super) pool: Rc<Pool>,
    pub(super) index: usize,
    pub(super) conn: Rc<PgConn>,
    pub(super) clean: Cell<bool>,
    /// Dropped after `Drop for Held` gave the member back.
    pub(super) _claim: ExclusiveClaim,
}

impl Held {
    /// Runs `stmt` into the unnamed portal and fetches its first `batch`
    /// rows (`Rows::suspended` when more remain), bounded by the query
    /// timeout. Portals live until their transaction ends: open one first.
    pub async fn open_portal(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        batch: i32,
    ) -> Result<Rows, QueryError> {
        let pending = self.conn.start_query(stmt, params, "", batch)?;
        self.rows(pending).await
    }

    /// The next `batch` rows of the portal `open_portal` opened, bounded by
    /// the query timeout.
    pub async fn fetch_more(
        &self,
        stmt: &'static Statement,
        batch: i32,
    ) -> Result<Rows, QueryError> {
        let pending = self.conn.continue_portal(stmt, "", batch)?;
        self.rows(pending).await
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

    /// `simple` with a bound of the caller's instead of the query timeout:
    /// for a COMMIT, whose outcome the caller must learn. Cut at the query
    /// timeout while the server is slow, a COMMIT may still succeed, and
    /// the client would be told its import failed although it was kept.
    pub async fn simple_within(&self, sql: &str, timeout: Duration) -> Result<Rows, QueryError> {
        let r = self
            .pool
            .within_until(
                Instant::now() + timeout,
                self.index,
                &self.conn,
                self.conn.simple(sql),
            )
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

    /// Waits for a request queued on the held connection, bounded by the
    /// query timeout like every other wait.
    async fn rows(&self, pending: Pending) -> Result<Rows, QueryError> {
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

//! The PostgreSQL client: connections and a per-core pool over monoio's
//! completion-based sockets, on the sans-I/O protocol in `ringside_wire::pg`.
//! No tokio-postgres, sqlx or libpq underneath.

pub mod config;
pub mod conn;
pub mod pool;
pub mod router;

use std::fmt;

pub use config::{PgConfig, PgHost};
pub use conn::{ConnSettings, CopyIn, Param, Pending, PgConn, Rows, Statement};
pub use pool::{Held, Pool, PoolSettings, PoolStats};
pub use ringside_wire::pg::{Column, PgError, Row};
pub use router::{PoolReport, ReplicaTarget, Router, RouterSettings};

/// Why a database call failed, in the terms the HTTP layer answers with.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryError {
    /// The server answered with an error, or the protocol failed.
    Pg(PgError),
    /// Every connection is busy and the wait queue is full or timed out.
    Busy,
    /// The query passed its deadline (it was cancelled).
    Timeout,
    /// No connection to the database (down, restarting, refused).
    Unavailable(String),
    /// The connection broke before the request's answer arrived (the
    /// backend was terminated, the server restarted, the network failed).
    /// The request may or may not have run.
    ConnectionLost(String),
    /// The result is larger than a request may buffer.
    TooLarge,
    /// The statement was batched behind another that failed, and the
    /// server skipped it: it did not run. The pool runs it again on its
    /// own; a caller sees this only from a connection it drives itself.
    Skipped,
}

impl QueryError {
    /// Whether the caller should answer 503 with Retry-After: a transient
    /// condition of the database or the pool, not of the request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            QueryError::Busy
                | QueryError::Timeout
                | QueryError::Unavailable(_)
                | QueryError::ConnectionLost(_)
                | QueryError::Skipped
        ) || matches!(self, QueryError::Pg(PgError::Db(e)) if e.code.starts_with("57") || e.code.starts_with("08"))
    }

    /// Whether the request failed because its connection ended (rather
    /// than because of the statement): then a read-only statement may be
    /// run again on another connection. A backend that is terminated sends
    /// a FATAL error before it closes, so that counts too.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            QueryError::ConnectionLost(_) => true,
            QueryError::Pg(PgError::Db(e)) => e.severity == "FATAL" || e.severity == "PANIC",
            _ => false,
        }
    }

    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            QueryError::Pg(e) => e.sqlstate(),
            _ => None,
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryError::Pg(e) => write!(f, "{e}"),
            QueryError::Busy => f.write_str("database pool busy"),
            QueryError::Timeout => f.write_str("database query timed out"),
            QueryError::Unavailable(why) | QueryError::ConnectionLost(why) => f.write_str(why),
            QueryError::TooLarge => f.write_str("database result too large"),
            QueryError::Skipped => {
                f.write_str("statement skipped after another in its batch failed")
            }
        }
    }
}

impl std::error::Error for QueryError {}

impl From<PgError> for QueryError {
    fn from(e: PgError) -> Self {
        QueryError::Pg(e)
    }
}

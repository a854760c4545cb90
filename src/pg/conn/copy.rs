//! COPY FROM STDIN on a connection held exclusively, with back-pressure:
//! each piece of data is sent before the next is taken.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use ringside_wire::pg::pipeline::{Pipeline, RequestId};
use ringside_wire::pg::PgError;

use super::{Done, PgConn};
use crate::pg::QueryError;

/// A COPY FROM STDIN in progress on a connection held exclusively.
pub struct CopyIn {
    pub(super) conn: Rc<PgConn>,
    pub(super) id: RequestId,
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
        let (encoded, appended) = self.conn.encode(encode);
        encoded.map_err(QueryError::Pg)?;
        let queued = self.conn.queued_bytes.get() + appended as u64;
        self.conn.queued_bytes.set(queued);
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

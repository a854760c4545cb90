//! Coalesced reads: identical read-only queries that arrive while one like
//! them is still waiting to be sent share its execution and its rendered
//! result.
//!
//! Freshness is kept exactly: a request joins an execution only while that
//! execution's bytes have not left for the server (it waits in the pool's
//! queue, or in its connection's output). The server takes the snapshot
//! when it runs the statement, after the bytes arrive, so every commit made
//! before the joining request arrived is in the answer: read-your-writes
//! holds. An execution already sent is never joined; the request starts its
//! own.
//!
//! If the request leading an execution goes away before the answer (its
//! client hung up), the ones that joined it start over. However many
//! times that happens, a read ends within the bound of one read from its
//! arrival (`--db-wait-timeout` plus `--db-query-timeout`): waits for
//! another's execution stop there, and a turn started over runs within it.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::BytesMut;
use ringside_wire::pg::frontend;

use monoio::time::Instant;

use super::{DeadlineSlot, Pool};
use crate::pg::conn::{Param, Rows, SentProbe, Statement};
use crate::pg::QueryError;
use crate::runtime::event::LocalEvent;

/// What identifies identical reads: the statement, its parameters (as
/// sent), what the caller makes of the rows, and the result's type.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FlightKey {
    sql: &'static str,
    params: Vec<u8>,
    variant: u64,
    result: TypeId,
}

/// One execution that others may join.
struct Flight<T> {
    /// Where its statement was queued, once it was (`None` while it waits
    /// in the pool's queue, which is not sent either).
    probe: RefCell<Option<SentProbe>>,
    /// The shared result; `None` once done means the leader went away.
    result: RefCell<Option<Result<T, QueryError>>>,
    done: LocalEvent,
}

impl<T> Flight<T> {
    fn is_sent(&self) -> bool {
        self.probe.borrow().as_ref().is_some_and(SentProbe::is_sent)
    }
}

/// A core's executions still open to joiners.
#[derive(Default)]
pub(super) struct Flights(RefCell<HashMap<FlightKey, Rc<dyn Any>>>);

/// Ends a flight however its leader ends: joiners are woken, and find a
/// result or (leader gone) start over; the flight leaves the table.
struct Leading<'p, T: 'static> {
    pool: &'p Pool,
    key: FlightKey,
    flight: Rc<Flight<T>>,
}

impl<T: 'static> Drop for Leading<'_, T> {
    fn drop(&mut self) {
        let mut table = self.pool.flights.0.borrow_mut();
        let ours = table.get(&self.key).is_some_and(|f| {
            f.clone()
                .downcast::<Flight<T>>()
                .is_ok_and(|f| Rc::ptr_eq(&f, &self.flight))
        });
        if ours {
            table.remove(&self.key);
        }
        drop(table);
        self.flight.done.fire();
    }
}

impl Pool {
    /// Runs a read-only statement and makes a `T` of its rows with
    /// `render`, sharing both with identical calls (same statement,
    /// parameters and `variant`) that arrive while the execution is still
    /// waiting to be sent, when `--db-coalesce` is on. Each caller gets a
    /// clone of the one `T` (make it cheap to clone: `Bytes`, an `Rc`).
    /// With coalescing off this is `query` followed by `render`.
    ///
    /// The caller opts in per statement by calling this; only statements
    /// that read, outside a transaction, belong here. Every answer reflects
    /// every commit made before its request arrived (see the module
    /// documentation).
    pub async fn query_shared<T: Clone + 'static>(
        &self,
        stmt: &'static Statement,
        params: &[Param<'_>],
        variant: u64,
        render: impl Fn(&Rows) -> Result<T, QueryError>,
    ) -> Result<T, QueryError> {
        if !self.settings.coalesce || !stmt.read_only {
            let rows = self.query(stmt, params).await?;
            return render(&rows);
        }
        let key = FlightKey {
            sql: stmt.sql,
            params: encoded(params),
            variant,
            result: TypeId::of::<T>(),
        };
        // A first turn ends by this on its own (its leader arrived no
        // later); a turn started over gets what is left of it.
        let limit = Instant::now() + self.settings.wait_timeout + self.settings.query_timeout;
        let mut started_over = false;
        loop {
            let open = self.flights.0.borrow().get(&key).cloned();
            if let Some(flight) = open.and_then(|f| f.downcast::<Flight<T>>().ok()) {
                if !flight.is_sent() {
                    let slot = DeadlineSlot::new(&self.deadlines);
                    let ended = monoio::select! {
                        _ = flight.done.wait() => true,
                        _ = self.deadlines.wait(slot.0, limit, false) => false,
                    };
                    drop(slot);
                    if !ended {
                        return Err(self.timed_out());
                    }
                    if let Some(result) = flight.result.borrow().as_ref() {
                        self.stats.borrow_mut().coalesced += 1;
                        return result.clone();
                    }
                    // Its leader went away: start over.
                    started_over = true;
                    continue;
                }
            }
            let flight = Rc::new(Flight {
                probe: RefCell::new(None),
                result: RefCell::new(None),
                done: LocalEvent::new(),
            });
            self.flights
                .0
                .borrow_mut()
                .insert(key.clone(), flight.clone());
            let leading = Leading {
                pool: self,
                key: key.clone(),
                flight,
            };
            let result = self
                .query_probed(
                    stmt,
                    params,
                    &mut |probe| {
                        *leading.flight.probe.borrow_mut() = Some(probe);
                    },
                    started_over.then_some(limit),
                )
                .await
                .and_then(|rows| render(&rows));
            *leading.flight.result.borrow_mut() = Some(result.clone());
            return result;
        }
    }
}

/// The parameters as Bind sends them: identical bytes, identical query.
fn encoded(params: &[Param<'_>]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for p in params {
        let start = buf.len();
        buf.extend_from_slice(&[0; 5]);
        let tag = match p {
            Param::Null => 0,
            Param::Bool(v) => {
                frontend::encode_bool(*v, &mut buf);
                1
            }
            Param::I32(v) => {
                frontend::encode_i32(*v, &mut buf);
                2
            }
            Param::I64(v) => {
                frontend::encode_i64(*v, &mut buf);
                3
            }
            Param::Text(v) => {
                frontend::encode_text(v, &mut buf);
                4
            }
        };
        // A type tag and the value's length keep (I32 1) apart from
        // (I64 1) and from two values that run together.
        let len = (buf.len() - start - 5) as u32;
        buf[start] = tag;
        buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    }
    buf.to_vec()
}

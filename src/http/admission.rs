//! How many requests a core works on at once.
//!
//! A connection with a request to read while the core already works on
//! `--max-active-requests-per-core` requests does not read it yet: its task
//! (the connection's small future, no buffer, no handler frame) waits in a
//! first-come queue, the request in the kernel's socket buffer, until a
//! request ends or starts waiting on its client. It waits at most
//! `--db-wait-timeout` (or the head timeout, if shorter): then it goes on
//! whatever the count, so the wait is bounded in time as well as in number,
//! and a request held up by a busy database gets its 503 from the pool about
//! as soon as it did without this queue.
//!
//! Why: a request being worked on holds its future frames (3.4 KB for the
//! orders page), its rows and its answer. A thousand of them at once outgrow
//! the CPU's caches and every request then costs more: `/orders` at 1,024
//! connections took 26–28 µs of server CPU per request against 16–19 µs at
//! 256, with the same database and the same answers (bench/RESULTS.md). Kept
//! in the kernel instead, waiting requests cost nothing; this is also the
//! article's rule that while the database is busy the server stops reading.
//!
//! What counts is a handler that runs or waits on the database; not one
//! waiting on its client (a body to read, a full socket to write to), so
//! slow clients cannot take the room of the others. Pipelined requests read
//! with the one that took the turn are worked on in the same turn.

use std::cell::Cell;
use std::rc::Rc;

use crate::runtime::wait::{WaitQueue, WaitTurn};

pub(super) struct Admission {
    /// Most requests at work at once (0: no limit).
    limit: usize,
    active: Cell<usize>,
    /// Connections waiting for room, first come, first served.
    waiters: WaitQueue,
}

impl Admission {
    /// `max_waiting`: the most connections that may wait (a core's
    /// connection limit); it only bounds the queue's bookkeeping.
    pub(super) fn new(limit: usize, max_waiting: usize) -> Self {
        Admission {
            limit,
            active: Cell::new(0),
            waiters: WaitQueue::new(max_waiting),
        }
    }

    fn has_room(&self) -> bool {
        self.limit == 0 || self.active.get() < self.limit
    }

    /// Whether a request may start now: there is room and no one waits
    /// before it.
    pub(super) fn may_start(&self) -> bool {
        self.has_room() && self.waiters.is_empty()
    }

    /// Counts a request at work until the guard is dropped.
    pub(super) fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }

    /// A place in the queue (`front`: a waiter woken but beaten to the room
    /// keeps its place at the head).
    fn wait_turn(&self, front: bool) -> WaitTurn<'_> {
        WaitTurn::new(&self.waiters, front)
    }

    fn leave(&self) {
        self.active.set(self.active.get() - 1);
        if !self.waiters.is_empty() && self.has_room() {
            self.waiters.wake_one();
        }
    }
}

/// Waits for room among the core's requests at work, in arrival order,
/// until `bounded_by` completes (the caller's deadline: then it goes on
/// regardless), and counts the request.
pub(super) async fn take_turn(
    admission: &Rc<Admission>,
    bounded_by: impl std::future::Future<Output = ()>,
) -> Active {
    let mut bounded_by = std::pin::pin!(bounded_by);
    let mut front = false;
    loop {
        let turn = monoio::select! {
            () = admission.wait_turn(front) => true,
            () = &mut bounded_by => false,
        };
        if !turn || admission.has_room() {
            return admission.enter();
        }
        front = true;
    }
}

/// A request at work (see [`Admission::enter`]).
pub(super) struct Active(Rc<Admission>);

impl Active {
    /// Stops counting the request while it waits on its client.
    pub(super) fn away(&self) -> Away<'_> {
        self.0.leave();
        Away(&self.0)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A request waiting on its client; counted again when dropped.
pub(super) struct Away<'a>(&'a Admission);

impl Drop for Away<'_> {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll<F: Future>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn turns_come_in_arrival_order_as_requests_end_or_wait_on_their_client() {
        let a = Rc::new(Admission::new(2, 100));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let first = a.enter();
        let second = a.enter();
        assert!(!a.may_start());
        let mut t1 = std::pin::pin!(a.wait_turn(false));
        let mut t2 = std::pin::pin!(a.wait_turn(false));
        assert!(poll(t1.as_mut(), &waker).is_pending());
        assert!(poll(t2.as_mut(), &waker).is_pending());
        // Waiting on its client, a request leaves its room: the first in
        // line gets it, the second still waits.
        let away = first.away();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(poll(t1.as_mut(), &waker).is_ready());
        assert!(poll(t2.as_mut(), &waker).is_pending());
        // Someone still waits: a newcomer may not start, even with room.
        assert!(!a.may_start());
        drop(away);
        assert_eq!(a.active.get(), 2);
        drop(second);
        assert!(poll(t2.as_mut(), &waker).is_ready());
        drop(first);
        assert_eq!(a.active.get(), 0);
    }

    #[test]
    fn no_limit_always_has_room() {
        let a = Rc::new(Admission::new(0, 100));
        let _held: Vec<_> = (0..1000).map(|_| a.enter()).collect();
        assert!(a.may_start());
    }
}

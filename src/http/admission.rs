//! How many requests a core works on at once.
//!
//! A connection with a request to read while the core already works on
//! `--max-active-requests-per-core` requests does not read it yet: its task
//! (the connection's future and a small pooled frame, no buffer, no handler
//! frame) waits in a first-come queue, the request in the kernel's socket
//! buffer, until a request ends or starts waiting on its client and hands
//! its room over. It waits at most `--db-wait-timeout` (or the head timeout,
//! if shorter): then it goes on whatever the count, so the wait is bounded
//! in time as well as in number (docs/connection.md has what that costs).
//!
//! Why: a request being worked on holds its future frames (3.4 KB for the
//! orders page), its rows and its answer. A thousand of them at once outgrow
//! the CPU's caches and every request then costs more: `/orders` at 1,024
//! connections took 25–29 µs of server CPU per request against 16–19 µs at
//! 256, with the same database and the same answers (bench/targets.md). Kept
//! in the kernel instead, waiting requests cost nothing; this is also the
//! article's rule that while the database is busy the server stops reading.
//!
//! What counts is a handler that runs or waits on the database; not one
//! waiting on its client (the rest of a head, a body, a full socket), so
//! slow clients cannot take the room of the others. Pipelined requests read
//! with the one that took the turn are worked on in the same turn: the limit
//! is a target, not a cap.

use std::cell::Cell;
use std::rc::Rc;

use crate::runtime::request_limit::RequestLimit;
use crate::runtime::wait::{WaitQueue, WaitTurn};

pub(super) struct Admission {
    /// Most requests at work at once (0: no limit); the database pools
    /// move it when it is tuned (`runtime/limit_tuner.rs`).
    limit: Rc<RequestLimit>,
    active: Cell<usize>,
    /// Connections waiting for room, first come, first served.
    waiters: WaitQueue,
}

impl Admission {
    /// `max_waiting`: the most connections that may wait (a core's
    /// connection limit); it only bounds the queue's bookkeeping.
    pub(super) fn new(limit: Rc<RequestLimit>, max_waiting: usize) -> Self {
        Admission {
            limit,
            active: Cell::new(0),
            waiters: WaitQueue::new(max_waiting),
        }
    }

    fn has_room(&self) -> bool {
        let limit = self.limit.get();
        limit == 0 || self.active.get() < limit
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

    /// A place at the back of the queue.
    fn wait_turn(&self) -> Turn<'_> {
        Turn {
            wait: WaitTurn::new(&self.waiters, false),
            admission: self,
            taken: false,
        }
    }

    /// A request's room is given back, or handed over as it is to the
    /// first in line: no one can take it in between (a pipelined request,
    /// one back from its client), so the order holds and no wake is wasted.
    fn leave(&self) {
        let limit = self.limit.get();
        let room_after = limit == 0 || self.active.get() - 1 < limit;
        if !(room_after && !self.waiters.is_empty() && self.waiters.wake_one()) {
            self.active.set(self.active.get() - 1);
        }
        // A limit tuned up since makes room for more of those waiting.
        while !self.waiters.is_empty() && self.has_room() && self.waiters.wake_one() {
            self.active.set(self.active.get() + 1);
        }
    }
}

/// A place in the admission queue; a room handed over to it and never
/// taken (the wait dropped first) is given back.
struct Turn<'a> {
    wait: WaitTurn<'a>,
    admission: &'a Admission,
    taken: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.wait.granted() && !self.taken {
            self.admission.leave();
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
    let mut turn = std::pin::pin!(admission.wait_turn());
    let granted = monoio::select! {
        () = &mut turn.wait => true,
        () = bounded_by => turn.wait.granted(),
    };
    if granted {
        turn.taken = true;
        // Counted already, by the request that handed its room over.
        Active(admission.clone())
    } else {
        admission.enter()
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

    fn fixed(limit: usize) -> Rc<RequestLimit> {
        let l = Rc::new(RequestLimit::default());
        l.set_fixed(limit);
        l
    }

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
    fn a_room_is_handed_over_in_arrival_order() {
        let a = Rc::new(Admission::new(fixed(2), 100));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let first = a.enter();
        let second = a.enter();
        assert!(!a.may_start());
        let mut t1 = a.wait_turn();
        let mut t2 = a.wait_turn();
        assert!(poll(std::pin::Pin::new(&mut t1.wait), &waker).is_pending());
        assert!(poll(std::pin::Pin::new(&mut t2.wait), &waker).is_pending());
        // Waiting on its client, a request hands its room to the first in
        // line: still counted, so a request back from its client, or one
        // that comes now, cannot take it.
        let away = first.away();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert_eq!(a.active.get(), 2);
        assert!(t1.wait.granted() && !t2.wait.granted());
        assert!(!a.may_start());
        drop(away);
        assert_eq!(a.active.get(), 3);
        // Over the limit: an end makes no room yet.
        drop(second);
        assert_eq!(a.active.get(), 2);
        assert!(!t2.wait.granted());
        // The next end does, for the second in line.
        drop(first);
        assert!(t2.wait.granted());
        assert_eq!(a.active.get(), 2);
        // A room handed over to a wait that is then dropped is given back.
        drop(t1);
        drop(t2);
        assert_eq!(a.active.get(), 0);
        assert!(a.may_start());
    }

    /// A limit tuned up makes room for those waiting at the next end, in
    /// their order, not for one only.
    #[test]
    fn a_raised_limit_admits_more_of_those_waiting() {
        let limit = fixed(1);
        let a = Rc::new(Admission::new(limit.clone(), 100));
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let first = a.enter();
        let mut turns: Vec<_> = (0..4).map(|_| a.wait_turn()).collect();
        for t in &mut turns {
            assert!(poll(Pin::new(&mut t.wait), &waker).is_pending());
        }
        limit.set_fixed(3);
        drop(first);
        let granted: Vec<_> = turns.iter().map(|t| t.wait.granted()).collect();
        // The first's room and two more: three at work, one waits.
        assert_eq!(granted, [true, true, true, false]);
        assert_eq!(a.active.get(), 3);
    }

    #[test]
    fn no_limit_always_has_room() {
        let a = Rc::new(Admission::new(fixed(0), 100));
        let _held: Vec<_> = (0..1000).map(|_| a.enter()).collect();
        assert!(a.may_start());
    }
}

//! How many requests a core works on at once.
//!
//! A connection with a request to read while the core already works on
//! `--max-active-requests-per-core` requests does not read it yet: it waits
//! in a first-come queue, the request in the kernel's socket buffer, until a
//! request ends or starts waiting on its client and hands its room over. A
//! keep-alive connection waits parked in the idle set (idle.rs), with no
//! task: a task would be woken once to join the queue and once for its
//! turn, each time with its memory gone cold under a thousand connections.
//! The others (a first request, a connection that cannot park) wait in
//! their tasks (the connection's future and a small pooled frame, no
//! buffer, no handler frame). Tickets keep the two kinds in one order. It waits at most `--db-wait-timeout` (or the head timeout,
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

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use monoio::time::Instant;

use super::idle::WatchId;
use crate::runtime::request_limit::RequestLimit;
use crate::runtime::wait::{WaitQueue, WaitTurn};

/// Gives a parked connection whose turn came its task again, which takes
/// the room handed over to it with [`Admission::claim_room`]; false if it is
/// gone (closed meanwhile), and the room goes to the next waiter.
pub(super) type Resume = Rc<dyn Fn(WatchId) -> bool>;

/// A parked connection whose request waits for room, with no task.
struct ParkedWaiter {
    /// Its place among all waiters, parked or in a task.
    ticket: u64,
    id: WatchId,
    since: Instant,
}

pub(super) struct Admission {
    /// Most requests at work at once (0: no limit); the database pools
    /// move it when it is tuned (`runtime/limit_tuner.rs`).
    limit: Rc<RequestLimit>,
    active: Cell<usize>,
    /// Connections waiting for room in their tasks, first come, first
    /// served.
    waiters: WaitQueue,
    /// Parked connections waiting for room (idle.rs): no task until their
    /// turn, served in one order with `waiters` by their tickets.
    parked: RefCell<VecDeque<ParkedWaiter>>,
    /// Set by the HTTP core: how a parked waiter gets its task.
    resume: RefCell<Option<Resume>>,
    /// Rooms counted for parked waiters given their tasks, not yet taken
    /// by them (kept here, not in the task: its future stays small).
    unclaimed: Cell<usize>,
}

impl Admission {
    /// `max_waiting`: the most connections that may wait (a core's
    /// connection limit); it only bounds the queue's bookkeeping.
    pub(super) fn new(limit: Rc<RequestLimit>, max_waiting: usize) -> Self {
        Admission {
            limit,
            active: Cell::new(0),
            waiters: WaitQueue::new(max_waiting),
            parked: RefCell::default(),
            resume: RefCell::default(),
            unclaimed: Cell::new(0),
        }
    }

    pub(super) fn set_resume(&self, resume: Resume) {
        *self.resume.borrow_mut() = Some(resume);
    }

    fn nobody_waits(&self) -> bool {
        self.waiters.is_empty() && self.parked.borrow().is_empty()
    }

    fn has_room(&self) -> bool {
        let limit = self.limit.get();
        limit == 0 || self.active.get() < limit
    }

    /// Whether a request may start now: there is room and no one waits
    /// before it.
    pub(super) fn may_start(&self) -> bool {
        self.has_room() && self.nobody_waits()
    }

    /// Counts a request at work until the guard is dropped.
    pub(super) fn enter(self: &Rc<Self>) -> Active {
        self.active.set(self.active.get() + 1);
        Active(self.clone())
    }

    /// A place at the back of the queue.
    fn wait_turn(self: &Rc<Self>) -> Turn<'_> {
        Turn {
            wait: WaitTurn::new(&self.waiters, false),
            admission: self,
            taken: false,
        }
    }

    /// A request's room is given back, or handed over as it is to the
    /// first in line: no one can take it in between (a pipelined request,
    /// one back from its client), so the order holds and no wake is wasted.
    fn leave(self: &Rc<Self>) {
        if self.nobody_waits() {
            // The common case, checked first: nothing to hand over.
            self.active.set(self.active.get() - 1);
            return;
        }
        let limit = self.limit.get();
        let room_after = limit == 0 || self.active.get() - 1 < limit;
        if !(room_after && self.hand_over()) {
            self.active.set(self.active.get() - 1);
        }
        // A limit tuned up since makes room for more of those waiting.
        while self.has_room() && self.hand_over() {
            self.active.set(self.active.get() + 1);
        }
    }

    /// A parked connection's request came while there was no room: it
    /// waits, still parked, for its turn ([`Admission::set_resume`]).
    pub(super) fn queue_parked(&self, id: WatchId, now: Instant) {
        let ticket = self.waiters.take_ticket();
        self.parked.borrow_mut().push_back(ParkedWaiter {
            ticket,
            id,
            since: now,
        });
    }

    /// A room for a parked connection given its task: one its event found
    /// free, or one past its wait for room, counted whatever the limit; its
    /// task takes it with [`Admission::claim_room`].
    pub(super) fn count_for_resumed(&self) {
        self.active.set(self.active.get() + 1);
        self.unclaimed.set(self.unclaimed.get() + 1);
    }

    /// The room counted for a resumed parked waiter, taken by its task
    /// (one counted now if none was: a bug, but not a wrong count).
    pub(super) fn claim_room(self: &Rc<Self>) -> Active {
        match self.unclaimed.get() {
            0 => {
                debug_assert!(false, "a room claimed that was not counted");
                self.enter()
            }
            n => {
                self.unclaimed.set(n - 1);
                Active(self.clone())
            }
        }
    }

    /// Takes out the parked waiters that came at or before `by` (all of
    /// them when `None`), oldest first: their wait is over, room or not.
    pub(super) fn take_parked_waiting_since(&self, by: Option<Instant>) -> Vec<WatchId> {
        let mut parked = self.parked.borrow_mut();
        let n = match by {
            None => parked.len(),
            Some(by) => parked.iter().take_while(|p| p.since <= by).count(),
        };
        parked.drain(..n).map(|p| p.id).collect()
    }

    /// Gives one room, as it is, to the first waiter, in a task or parked;
    /// false if no one waits.
    fn hand_over(self: &Rc<Self>) -> bool {
        loop {
            let parked_first = match (self.parked.borrow().front(), self.waiters.first_ticket()) {
                (None, None) => return false,
                (Some(p), Some(t)) => p.ticket < t,
                (Some(_), None) => true,
                (None, Some(_)) => false,
            };
            if !parked_first {
                if self.waiters.wake_one() {
                    return true;
                }
                continue;
            }
            let Some(next) = self.parked.borrow_mut().pop_front() else {
                continue;
            };
            let resume = self.resume.borrow().clone();
            let Some(resume) = resume else { continue };
            if resume(next.id) {
                self.unclaimed.set(self.unclaimed.get() + 1);
                return true;
            }
        }
    }
}

/// A place in the admission queue; a room handed over to it and never
/// taken (the wait dropped first) is given back.
struct Turn<'a> {
    wait: WaitTurn<'a>,
    admission: &'a Rc<Admission>,
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

    /// Waiters in tasks and parked ones are served in one arrival order;
    /// a parked one gone meanwhile passes its room on to the next.
    #[test]
    fn parked_waiters_and_task_waiters_share_one_order() {
        let a = Rc::new(Admission::new(fixed(1), 100));
        let resumed = Rc::new(RefCell::new(Vec::new()));
        let gone = WatchId::for_tests(2);
        let log = resumed.clone();
        a.set_resume(Rc::new(move |id: WatchId| {
            if id == gone {
                return false;
            }
            log.borrow_mut().push(id);
            true
        }));
        let waker = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        let now = Instant::now();
        let first = a.enter();
        a.queue_parked(WatchId::for_tests(1), now);
        let mut in_task = a.wait_turn();
        assert!(poll(Pin::new(&mut in_task.wait), &waker).is_pending());
        a.queue_parked(gone, now);
        a.queue_parked(WatchId::for_tests(3), now);
        assert!(!a.may_start());

        // The first parked waiter came first: it gets the room, counted.
        drop(first);
        assert_eq!(*resumed.borrow(), [WatchId::for_tests(1)]);
        assert!(!in_task.wait.granted());
        assert_eq!(a.active.get(), 1);
        // Then the one waiting in its task.
        drop(a.claim_room());
        assert!(in_task.wait.granted());
        assert_eq!(a.active.get(), 1);
        // Then the third: the second is gone, its turn passes on.
        drop(in_task);
        assert_eq!(resumed.borrow()[1..], [WatchId::for_tests(3)]);
        assert_eq!(a.active.get(), 1);
        drop(a.claim_room());
        assert_eq!(a.unclaimed.get(), 0);
        assert_eq!(a.active.get(), 0);
        assert!(a.may_start());
    }

    /// A parked waiter's wait ends by its bound, oldest first, room or not.
    #[test]
    fn parked_waiters_past_their_bound_are_taken_oldest_first() {
        let a = Rc::new(Admission::new(fixed(1), 100));
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_millis(10);
        a.queue_parked(WatchId::for_tests(1), t0);
        a.queue_parked(WatchId::for_tests(2), later);
        assert_eq!(
            a.take_parked_waiting_since(Some(t0)),
            [WatchId::for_tests(1)]
        );
        assert!(!a.may_start());
        assert_eq!(a.take_parked_waiting_since(None), [WatchId::for_tests(2)]);
        assert!(a.may_start());
    }

    #[test]
    fn no_limit_always_has_room() {
        let a = Rc::new(Admission::new(fixed(0), 100));
        let _held: Vec<_> = (0..1000).map(|_| a.enter()).collect();
        assert!(a.may_start());
    }
}

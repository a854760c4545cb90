//! A bounded first-come-first-served queue of callers waiting for capacity
//! (a slot on a pooled connection, a connection of their own, room among a
//! core's requests at work): a place is
//! taken on the first poll, kept at the front when a woken waiter was beaten
//! to the capacity, and left when the wait is dropped (a timeout, a caller
//! gone). Places left behind are dropped lazily and bounded.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// Callers waiting for capacity, first come, first served, bounded in count.
pub(crate) struct WaitQueue {
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters still waiting (the queue may hold ones that gave up).
    pub(crate) waiting: Cell<usize>,
    max: usize,
    /// The next arrival number: another queue's waiters can be put in one
    /// order with these (`Self::take_ticket`).
    next_ticket: Cell<u64>,
}

impl WaitQueue {
    pub(crate) fn new(max: usize) -> Self {
        WaitQueue {
            waiters: RefCell::new(VecDeque::new()),
            waiting: Cell::new(0),
            max,
            next_ticket: Cell::new(0),
        }
    }

    /// An arrival number from this queue's count, for a waiter kept
    /// elsewhere that must be served in one order with these.
    pub(crate) fn take_ticket(&self) -> u64 {
        let t = self.next_ticket.get();
        self.next_ticket.set(t + 1);
        t
    }

    /// The arrival number of the first waiter still waiting.
    pub(crate) fn first_ticket(&self) -> Option<u64> {
        let mut q = self.waiters.borrow_mut();
        while let Some(w) = q.front() {
            if !w.gone.get() {
                return Some(w.ticket);
            }
            q.pop_front();
        }
        None
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.get() == 0
    }

    pub(crate) fn is_full(&self) -> bool {
        self.waiting.get() >= self.max
    }

    /// Gives the turn to the first waiter still waiting; false if none
    /// was.
    pub(crate) fn wake_one(&self) -> bool {
        loop {
            let Some(w) = self.waiters.borrow_mut().pop_front() else {
                return false;
            };
            if w.give_turn() {
                return true;
            }
        }
    }

    pub(crate) fn wake_all(&self) {
        let all: Vec<Rc<Waiter>> = self.waiters.borrow_mut().drain(..).collect();
        for w in all {
            w.give_turn();
        }
    }
}

/// One caller waiting for a slot.
struct Waiter {
    waker: RefCell<Option<Waker>>,
    /// Set when it is its turn; cleared (with the waker) when it gave up.
    turn: Cell<bool>,
    gone: Cell<bool>,
    ticket: u64,
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

/// A place in a queue, held until woken once; dropping it (a timeout, a
/// caller gone) leaves the queue.
pub(crate) struct WaitTurn<'a> {
    queue: &'a WaitQueue,
    front: bool,
    waiter: Option<Rc<Waiter>>,
}

impl<'a> WaitTurn<'a> {
    pub(crate) fn new(queue: &'a WaitQueue, front: bool) -> Self {
        WaitTurn {
            queue,
            front,
            waiter: None,
        }
    }
}

impl WaitTurn<'_> {
    /// Whether it was given its turn (perhaps not yet seen by a poll).
    pub(crate) fn granted(&self) -> bool {
        self.waiter.as_ref().is_some_and(|w| w.turn.get())
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
                    ticket: self.queue.take_ticket(),
                });
                let mut q = self.queue.waiters.borrow_mut();
                // Places left by waiters that gave up are dropped lazily;
                // bound them here too, so timeouts without any wake-up
                // cannot grow the queue.
                if q.len() >= 2 * self.queue.max.max(16) {
                    q.retain(|w| !w.gone.get());
                }
                if self.front {
                    q.push_front(w.clone());
                } else {
                    q.push_back(w.clone());
                }
                drop(q);
                self.queue.waiting.set(self.queue.waiting.get() + 1);
                self.waiter = Some(w);
                Poll::Pending
            }
        }
    }
}

impl Drop for WaitTurn<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            self.queue.waiting.set(self.queue.waiting.get() - 1);
            if !w.turn.get() {
                w.gone.set(true);
                w.waker.borrow_mut().take();
            }
        }
    }
}

//! How many requests a core works on at once.
//!
//! A parked keep-alive connection that turns readable while the core already
//! works on `--max-active-requests-per-core` requests is not read yet: it
//! stays parked, its request in the kernel's socket buffer, in a
//! first-come queue (`idle.rs`), and is taken when a request ends or starts
//! waiting on its client. It waits at most the head timeout: then it is taken
//! whatever the count, so the wait is bounded in time as well as in number.
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
//! slow clients cannot take the room of the others. A new connection's first
//! request and a pipelined one are taken at once: accepting has bounds of
//! its own, and a connection already being served is not interrupted.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

pub(super) struct Admission {
    /// Most requests at work at once (0: no limit).
    limit: usize,
    active: Cell<usize>,
    /// Connections waiting for room (kept by the idle set).
    queued: Cell<usize>,
    /// The idle set's watcher, waiting for room to take queued connections.
    watcher: Cell<Option<Waker>>,
}

impl Admission {
    pub(super) fn new(limit: usize) -> Self {
        Admission {
            limit,
            active: Cell::new(0),
            queued: Cell::new(0),
            watcher: Cell::new(None),
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.limit == 0 || self.active.get() < self.limit
    }

    #[cfg(test)]
    fn active(&self) -> usize {
        self.active.get()
    }

    /// Counts a request at work until the guard is dropped.
    pub(super) fn enter(self: &Rc<Self>) -> Active {
        self.reserve();
        self.adopt()
    }

    /// Counts a request ahead of its guard: a connection taken from the
    /// queue is counted from then, so the room it takes is not given to the
    /// next in line before its task runs. Its task [`Self::adopt`]s it.
    pub(super) fn reserve(&self) {
        self.active.set(self.active.get() + 1);
    }

    /// The guard of a request [`Self::reserve`]d before.
    pub(super) fn adopt(self: &Rc<Self>) -> Active {
        Active(self.clone())
    }

    fn leave(&self) {
        self.active.set(self.active.get() - 1);
        if self.queued.get() > 0 && self.has_room() {
            if let Some(w) = self.watcher.take() {
                w.wake();
            }
        }
    }

    pub(super) fn set_queued(&self, n: usize) {
        self.queued.set(n);
    }

    /// Ready when connections wait and there is room for one.
    pub(super) fn room(&self) -> Room<'_> {
        Room(self)
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

pub(super) struct Room<'a>(&'a Admission);

impl Future for Room<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let a = self.0;
        if a.queued.get() > 0 && a.has_room() {
            return Poll::Ready(());
        }
        a.watcher.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn room_opens_when_a_request_ends_or_waits_on_its_client() {
        let a = Rc::new(Admission::new(2));
        let woken = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let first = a.enter();
        let second = a.enter();
        assert!(!a.has_room());
        a.set_queued(1);
        assert!(Pin::new(&mut a.room()).poll(&mut cx).is_pending());
        // Waiting on its client, a request leaves its room to others.
        let away = first.away();
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut a.room()).poll(&mut cx).is_ready());
        drop(away);
        assert_eq!(a.active(), 2);
        assert!(Pin::new(&mut a.room()).poll(&mut cx).is_pending());
        drop(second);
        assert_eq!(woken.0.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(a.active(), 0);
        // Nothing queued: no room to wait for.
        a.set_queued(0);
        assert!(Pin::new(&mut a.room()).poll(&mut cx).is_pending());
    }

    #[test]
    fn no_limit_always_has_room() {
        let a = Rc::new(Admission::new(0));
        let _held: Vec<_> = (0..1000).map(|_| a.enter()).collect();
        assert!(a.has_room());
    }
}

//! A single-core, one-shot event: many tasks wait, one `fire` wakes them all.
//!
//! Used for the drain signal: idle connections wait on it next to their
//! readability wait, so a shutdown reaches them at once. It is `!Send` on
//! purpose (per-core state, no atomics, no locks).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalEvent {
    fired: Cell<bool>,
    waiters: RefCell<Waiters>,
}

/// A small slab of wakers: waiters keep their slot index, so a future polled
/// many times registers once, and dropping it frees the slot.
#[derive(Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl LocalEvent {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Fires the event and wakes every waiter; later waits complete at once.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = {
            let mut w = self.waiters.borrow_mut();
            w.free.clear();
            w.slots.drain(..).flatten().collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// Completes once the event has fired.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            event: self,
            slot: None,
        }
    }
}

pub struct Wait<'a> {
    event: &'a LocalEvent,
    slot: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.fired.get() {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut w = self.event.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut w.slots[i] {
                Some(existing) if existing.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let i = match w.free.pop() {
                    Some(i) => {
                        w.slots[i] = waker;
                        i
                    }
                    None => {
                        w.slots.push(waker);
                        w.slots.len() - 1
                    }
                };
                drop(w);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            if self.event.fired.get() {
                return;
            }
            let mut w = self.event.waiters.borrow_mut();
            if let Some(slot) = w.slots.get_mut(i) {
                *slot = None;
                w.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWake(AtomicUsize);
    impl Wake for CountWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn fire_wakes_every_waiter_once_and_frees_slots() {
        let ev = LocalEvent::new();
        let counter = Arc::new(CountWake(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(ev.wait());
        let mut b = Box::pin(ev.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(ev.waiters.borrow().slots.len(), 2);
        drop(b);
        assert_eq!(ev.waiters.borrow().free, vec![1]);
        ev.fire();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(ev.wait()).as_mut().poll(&mut cx).is_ready());
    }
}

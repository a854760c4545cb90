//! Connection deadlines, kept by one ticker per core.
//!
//! Connections are what a server holds by the ten thousand, so what a
//! connection's deadline costs matters. A runtime timer is a large object
//! (monoio's `Sleep` is 640 bytes, and each one is an insert and a removal
//! in the timer wheel plus a clock read); here each connection owns one slot
//! of a few dozen bytes in its core's table for its whole life, and the
//! core's ticker scans the table and wakes the waits that have expired.
//!
//! The price is resolution: the clock is the ticker's (read once a tick),
//! so a deadline fires within one tick of its time. The tick is an eighth
//! of the shortest configured timeout, at least 20 ms and at most 100 ms:
//! the deadlines that pass within one tick are handled together, and under
//! a crowd of slow clients (thousands cut a second) a long tick would make
//! each batch of 408s a pause for everyone else.
//!
//! A connection waits on at most one deadline at a time (idle, head, body
//! or write), so one slot is enough. Idle waits also end when the core
//! drains; waits inside a request do not (in-flight requests finish).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The deadline passed.
    Expired,
    /// The core is shutting down (only for waits that end on drain).
    Drained,
}

/// 32 bytes: the table is sized by connections.
#[derive(Default)]
struct Slot {
    /// Milliseconds after the table's epoch, plus one; 0 when not waiting.
    deadline_ms: u64,
    waker: Option<Waker>,
    in_use: bool,
    expired: bool,
}

/// A core's table of connection deadlines.
pub struct DeadlineTable {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    epoch: Instant,
    now: Cell<Instant>,
    /// `now` in the table's milliseconds.
    now_ms: Cell<u64>,
    draining: Cell<bool>,
}

/// A connection's slot; give it back with [`DeadlineTable::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineKey(u32);

impl DeadlineKey {
    /// A key for size measurements in tests (not registered anywhere).
    #[doc(hidden)]
    pub fn for_tests() -> Self {
        DeadlineKey(u32::MAX)
    }
}

impl Default for DeadlineTable {
    fn default() -> Self {
        let now = Instant::now();
        DeadlineTable {
            slots: RefCell::default(),
            free: RefCell::default(),
            epoch: now,
            now: Cell::new(now),
            now_ms: Cell::new(1),
            draining: Cell::new(false),
        }
    }
}

impl DeadlineTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ticker period for these timeouts.
    pub fn tick_for(timeouts: &[Duration]) -> Duration {
        let shortest = timeouts
            .iter()
            .copied()
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 8).clamp(Duration::from_millis(20), Duration::from_millis(100))
    }

    /// The core's coarse clock: the time of the last tick.
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    fn to_ms(&self, t: Instant) -> u64 {
        // Whole milliseconds without `as_millis`' 128-bit arithmetic.
        let d = t.saturating_duration_since(self.epoch);
        d.as_secs() * 1000 + u64::from(d.subsec_millis()) + 1
    }

    pub fn register(&self) -> DeadlineKey {
        let mut slots = self.slots.borrow_mut();
        let slot = Slot {
            in_use: true,
            ..Slot::default()
        };
        match self.free.borrow_mut().pop() {
            Some(i) => {
                slots[i as usize] = slot;
                DeadlineKey(i)
            }
            None => {
                slots.push(slot);
                DeadlineKey((slots.len() - 1) as u32)
            }
        }
    }

    pub fn release(&self, key: DeadlineKey) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key.0 as usize) {
            *slot = Slot::default();
            self.free.borrow_mut().push(key.0);
        }
    }

    /// Completes when `deadline` passes (or, with `ends_on_drain`, when the
    /// core drains). Dropping the future cancels the wait; it holds no
    /// resource but the slot it marks.
    pub fn wait(&self, key: DeadlineKey, deadline: Instant, ends_on_drain: bool) -> Wait<'_> {
        Wait {
            table: self,
            key,
            deadline_ms: self.to_ms(deadline),
            ends_on_drain,
            armed: false,
        }
    }

    /// A wait that ends at the next tick (or on a drain), the deadline taken
    /// from the tick's clock as it is: no clock arithmetic, for the short
    /// wait of every busy connection after each answer.
    pub fn wait_next_tick(&self, key: DeadlineKey) -> Wait<'_> {
        Wait {
            table: self,
            key,
            deadline_ms: self.now_ms.get() + 1,
            ends_on_drain: true,
            armed: false,
        }
    }

    /// Brings the deadline of a wait in progress on `key` forward to
    /// `deadline` (a wait that ends later ends then instead); nothing when
    /// no wait is in progress.
    pub fn hasten(&self, key: DeadlineKey, deadline: Instant) {
        let deadline_ms = self.to_ms(deadline);
        if let Some(slot) = self.slots.borrow_mut().get_mut(key.0 as usize) {
            if slot.deadline_ms > deadline_ms {
                slot.deadline_ms = deadline_ms;
            }
        }
    }

    /// Advances the clock and wakes the waits whose deadline passed.
    pub fn tick(&self, now: Instant) {
        self.now.set(now);
        self.shrink();
        let now_ms = self.to_ms(now);
        self.now_ms.set(now_ms);
        let mut wake = Vec::new();
        for slot in self.slots.borrow_mut().iter_mut() {
            if slot.deadline_ms != 0 && slot.deadline_ms <= now_ms {
                slot.deadline_ms = 0;
                slot.expired = true;
                wake.extend(slot.waker.take());
            }
        }
        wake.into_iter().for_each(Waker::wake);
    }

    /// Gives back the table's tail once the connections that used it are
    /// gone, so a burst of connections does not keep its slots forever.
    fn shrink(&self) {
        let mut slots = self.slots.borrow_mut();
        let mut free = self.free.borrow_mut();
        if slots.capacity() <= 64 || free.len() * 2 < slots.len() {
            return;
        }
        while slots.last().is_some_and(|s| !s.in_use) {
            slots.pop();
        }
        let len = slots.len() as u32;
        free.retain(|&i| i < len);
        if slots.capacity() > 2 * slots.len() {
            slots.shrink_to_fit();
            free.shrink_to_fit();
        }
    }

    /// Ends the waits that end on drain, now and from now on.
    pub fn drain(&self) {
        self.draining.set(true);
        let wake: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(|s| s.waker.take())
            .collect();
        // Waits inside requests are woken too; they re-arm on their poll.
        wake.into_iter().for_each(Waker::wake);
    }

    /// Slots with a pending deadline (for tests and metrics).
    pub fn waiting(&self) -> usize {
        self.slots
            .borrow()
            .iter()
            .filter(|s| s.deadline_ms != 0)
            .count()
    }
}

pub struct Wait<'a> {
    table: &'a DeadlineTable,
    key: DeadlineKey,
    deadline_ms: u64,
    ends_on_drain: bool,
    armed: bool,
}

impl Future for Wait<'_> {
    type Output = WaitEnd;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitEnd> {
        if self.ends_on_drain && self.table.draining.get() {
            return Poll::Ready(WaitEnd::Drained);
        }
        let (armed, deadline_ms) = (self.armed, self.deadline_ms);
        let mut slots = self.table.slots.borrow_mut();
        let Some(slot) = slots.get_mut(self.key.0 as usize) else {
            return Poll::Ready(WaitEnd::Expired);
        };
        if !armed {
            slot.deadline_ms = deadline_ms;
            slot.expired = false;
        } else if slot.expired {
            slot.expired = false;
            return Poll::Ready(WaitEnd::Expired);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        drop(slots);
        self.armed = true;
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(slot) = self.table.slots.borrow_mut().get_mut(self.key.0 as usize) {
            slot.deadline_ms = 0;
            slot.expired = false;
            slot.waker = None;
        }
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
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker that counts its wakes.
    fn counting_waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (count, waker)
    }

    fn poll(w: &mut Pin<Box<Wait<'_>>>, waker: &Waker) -> Poll<WaitEnd> {
        w.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_next_tick_wait_ends_at_the_next_tick() {
        let t = DeadlineTable::new();
        let (count, waker) = counting_waker();
        let key = t.register();
        let start = t.now();
        t.tick(start + Duration::from_millis(40));
        let mut w = Box::pin(t.wait_next_tick(key));
        assert!(poll(&mut w, &waker).is_pending());
        t.tick(start + Duration::from_millis(40));
        assert!(
            poll(&mut w, &waker).is_pending(),
            "not at the tick it was made in"
        );
        t.tick(start + Duration::from_millis(60));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&mut w, &waker), Poll::Ready(WaitEnd::Expired));
    }

    #[test]
    fn expires_at_deadline_and_reuses_slots() {
        let t = DeadlineTable::new();
        let (count, waker) = counting_waker();
        let a = t.register();
        let b = t.register();
        let start = t.now();
        let mut wa = Box::pin(t.wait(a, start + Duration::from_millis(100), true));
        let mut wb = Box::pin(t.wait(b, start + Duration::from_secs(100), true));
        assert!(poll(&mut wa, &waker).is_pending());
        assert!(poll(&mut wb, &waker).is_pending());
        assert_eq!(t.waiting(), 2);
        t.tick(start + Duration::from_millis(50));
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "nothing expired yet");
        t.tick(start + Duration::from_millis(150));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(t.now(), start + Duration::from_millis(150));
        assert_eq!(poll(&mut wa, &waker), Poll::Ready(WaitEnd::Expired));
        assert!(poll(&mut wb, &waker).is_pending());
        drop(wb);
        assert_eq!(t.waiting(), 0, "a dropped wait is no longer scanned");
        drop(wa);
        t.release(a);
        t.release(b);
        assert_eq!(t.register(), b, "slots are reused");
    }

    #[test]
    fn drain_ends_idle_waits_only() {
        let t = DeadlineTable::new();
        let (count, waker) = counting_waker();
        let idle = t.register();
        let busy = t.register();
        let far = t.now() + Duration::from_secs(100);
        let mut wi = Box::pin(t.wait(idle, far, true));
        let mut wb = Box::pin(t.wait(busy, far, false));
        assert!(poll(&mut wi, &waker).is_pending());
        assert!(poll(&mut wb, &waker).is_pending());
        t.drain();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(&mut wi, &waker), Poll::Ready(WaitEnd::Drained));
        assert!(
            poll(&mut wb, &waker).is_pending(),
            "requests in flight go on"
        );
        t.tick(far);
        assert_eq!(poll(&mut wb, &waker), Poll::Ready(WaitEnd::Expired));
        let mut again = Box::pin(t.wait(idle, far, true));
        assert_eq!(poll(&mut again, &waker), Poll::Ready(WaitEnd::Drained));
    }

    #[test]
    fn shrinks_after_a_burst() {
        let t = DeadlineTable::new();
        let keys: Vec<_> = (0..1000).map(|_| t.register()).collect();
        let keep = keys[10];
        for k in keys {
            if k != keep {
                t.release(k);
            }
        }
        t.tick(t.now());
        assert_eq!(
            t.slots.borrow().len(),
            11,
            "trailing free slots are dropped"
        );
        assert!(t.slots.borrow().capacity() < 100);
        let again: Vec<_> = (0..10).map(|_| t.register()).collect();
        assert!(
            again.iter().all(|k| k.0 < 11),
            "free slots below the tail are reused"
        );
        assert_eq!(t.register().0, 11);
    }

    #[test]
    fn tick_period_follows_the_shortest_timeout() {
        let d = DeadlineTable::tick_for(&[Duration::from_secs(10), Duration::from_secs(60)]);
        assert_eq!(d, Duration::from_millis(100), "at most 100 ms");
        let d = DeadlineTable::tick_for(&[Duration::from_millis(400)]);
        assert_eq!(d, Duration::from_millis(50));
    }
}

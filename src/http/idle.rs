//! Idle keep-alive connections, parked without a task.
//!
//! A connection waiting for its next request needs only its socket, its
//! deadline and its open-connection count. Kept as a task, it would also
//! cost its whole future (the largest state it ever passes through) and a
//! pending readability operation: about 700 bytes each, measured. Parked
//! here, it is a ~110-byte entry in the core's table and a registration in
//! the core's epoll set (kernel memory, not the process's); its task ends,
//! and a new one is spawned when the socket turns readable.
//!
//! The epoll set is one descriptor per core, watched by one readability
//! operation of the core's own ring (or its epoll driver), so waking is
//! still part of the core's single event loop: nothing blocks, nothing is
//! shared between cores. Registrations are one-shot, so an event arrives
//! once per park; a socket's registration is re-armed (`EPOLL_CTL_MOD`)
//! when it parks again and vanishes when the socket closes. Each event
//! carries the entry's index and generation, so a late event for an entry
//! that was since closed or reused is ignored.
//!
//! Deadlines: the watcher wakes on each tick of the core's deadline table
//! while anything is parked and closes what has been idle past the
//! keep-alive timeout. On drain, parked connections idle for more than the
//! drain grace close at once; the others get the rest of that grace to send
//! a last request (answered with `Connection: close`), as in-task waits do.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

use super::conn::{self, Start, DRAIN_IDLE_GRACE};
use super::stream::Stream;
use super::{HttpCore, Service};
use crate::runtime::deadlines::{DeadlineKey, WaitEnd};
use crate::runtime::epoll::{EpollSet, ReadyBuf};
use crate::runtime::{CoreCtx, OpenGuard};

/// Events taken per `epoll_wait` call.
const EVENTS_PER_CALL: usize = 128;

/// One parked connection.
struct Parked {
    /// Plain TCP, or HTTPS with no ciphertext pending.
    stream: Stream,
    open: OpenGuard,
    /// Milliseconds since the set's epoch.
    idle_since_ms: u64,
    deadline_ms: u64,
}

struct Entry {
    generation: u32,
    parked: Option<Parked>,
}

/// A core's parked connections.
pub(super) struct IdleSet {
    /// None when parking is off: the set could not be made, or its watcher
    /// ended.
    epoll: RefCell<Option<EpollSet>>,
    entries: RefCell<Vec<Entry>>,
    free: RefCell<Vec<u32>>,
    parked: Cell<usize>,
    epoch: Instant,
    core: Rc<CoreCtx>,
    /// The watcher's deadline slot: the first park brings its wait
    /// forward to the next tick, from which it expires what is parked.
    watcher_key: Cell<Option<DeadlineKey>>,
    /// Busy connections waiting in their own task for their next request
    /// (until the next tick); their events carry `WAITER_TOKEN`.
    waiters: RefCell<Vec<Waiter>>,
    free_waiters: RefCell<Vec<u32>>,
}

/// Marks an event as a waiting task's, not a parked connection's.
const WAITER_TOKEN: u64 = 1 << 63;

#[derive(Default)]
struct Waiter {
    generation: u32,
    in_use: bool,
    ready: bool,
    waker: Option<Waker>,
}

/// Completes when the socket it was made for turns readable.
pub(super) struct Readable<'a> {
    set: &'a IdleSet,
    index: u32,
}

impl Future for Readable<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut waiters = self.set.waiters.borrow_mut();
        let w = &mut waiters[self.index as usize];
        if w.ready {
            return Poll::Ready(());
        }
        match &w.waker {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => w.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Readable<'_> {
    fn drop(&mut self) {
        let mut waiters = self.set.waiters.borrow_mut();
        let w = &mut waiters[self.index as usize];
        w.in_use = false;
        w.ready = false;
        w.waker = None;
        self.set.free_waiters.borrow_mut().push(self.index);
    }
}

impl IdleSet {
    fn new(epoll: Option<EpollSet>, core: Rc<CoreCtx>) -> Self {
        IdleSet {
            epoll: RefCell::new(epoll),
            entries: RefCell::default(),
            free: RefCell::default(),
            parked: Cell::new(0),
            epoch: Instant::now(),
            core,
            watcher_key: Cell::new(None),
            waiters: RefCell::default(),
            free_waiters: RefCell::default(),
        }
    }

    /// Connections parked now.
    pub(super) fn len(&self) -> usize {
        self.parked.get()
    }

    fn set_parked(&self, n: usize) {
        self.parked.set(n);
        self.core.set_parked_connections(n);
    }

    /// Whether the table holds room a burst left behind.
    fn has_slack(&self) -> bool {
        self.entries.borrow().capacity() > 64
    }

    fn to_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Parks an idle TCP connection until its socket is readable or
    /// `keepalive` passes. Gives the stream back when it cannot be parked (a
    /// pipe, parking off, or the registration failed): the caller then
    /// waits in its own task. `registered` says the socket is already in
    /// the epoll set (it parked before), disarmed by its one-shot event.
    pub(super) fn park(
        &self,
        stream: Stream,
        open: OpenGuard,
        registered: bool,
        now: Instant,
        keepalive: Duration,
    ) -> Result<(), (Stream, OpenGuard)> {
        let epoll = self.epoll.borrow();
        let (fd, epoll) = match (&stream, &*epoll) {
            (Stream::Tcp(s), Some(epoll)) => (s.as_raw_fd(), epoll),
            (Stream::Tls(t), Some(epoll)) if t.can_park() => (t.tcp().as_raw_fd(), epoll),
            _ => return Err((stream, open)),
        };
        let (index, generation) = self.vacant_entry();
        let token = (u64::from(generation) << 32) | u64::from(index);
        if let Err(e) = epoll.arm_oneshot(fd, token, registered) {
            self.free.borrow_mut().push(index);
            tracing::debug!(error = %e, "could not park an idle connection; it waits in its task");
            return Err((stream, open));
        }
        let now_ms = self.to_ms(now);
        self.entries.borrow_mut()[index as usize].parked = Some(Parked {
            stream,
            open,
            idle_since_ms: now_ms,
            deadline_ms: now_ms + keepalive.as_millis() as u64,
        });
        self.set_parked(self.parked.get() + 1);
        if self.parked.get() == 1 {
            if let Some(key) = self.watcher_key.get() {
                self.core.deadlines.hasten(key, now);
            }
        }
        Ok(())
    }

    /// Waits, in the caller's task, until `fd` is readable: how a busy
    /// connection waits for its next request. The epoll set delivers the
    /// readiness of many sockets in one call, where a read or poll
    /// operation per connection costs a completion each. `None` when the
    /// socket cannot be registered (the caller parks or waits otherwise).
    pub(super) fn readable(&self, fd: RawFd, registered: bool) -> Option<Readable<'_>> {
        let epoll = self.epoll.borrow();
        let epoll = epoll.as_ref()?;
        let index = {
            let mut waiters = self.waiters.borrow_mut();
            let index = match self.free_waiters.borrow_mut().pop() {
                Some(i) => i,
                None => {
                    waiters.push(Waiter::default());
                    (waiters.len() - 1) as u32
                }
            };
            let w = &mut waiters[index as usize];
            w.generation = w.generation.wrapping_add(1);
            w.in_use = true;
            w.ready = false;
            index
        };
        let generation = self.waiters.borrow()[index as usize].generation;
        let token = WAITER_TOKEN | (u64::from(generation) << 32) | u64::from(index);
        let waiting = Readable { set: self, index };
        epoll.arm_oneshot(fd, token, registered).ok()?;
        Some(waiting)
    }

    /// Marks a waiting task's socket readable and wakes it.
    fn wake_waiter(&self, token: u64) {
        let (index, generation) = (token as u32, ((token & !WAITER_TOKEN) >> 32) as u32);
        let waker = {
            let mut waiters = self.waiters.borrow_mut();
            let Some(w) = waiters.get_mut(index as usize) else {
                return;
            };
            if !w.in_use || w.generation != generation {
                return;
            }
            w.ready = true;
            w.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn vacant_entry(&self) -> (u32, u32) {
        let mut entries = self.entries.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                let e = &mut entries[i as usize];
                e.generation = e.generation.wrapping_add(1);
                (i, e.generation)
            }
            None => {
                entries.push(Entry {
                    generation: 0,
                    parked: None,
                });
                ((entries.len() - 1) as u32, 0)
            }
        }
    }

    /// Takes the connection an event names, if it is still parked.
    fn take(&self, token: u64) -> Option<Parked> {
        let (index, generation) = (token as u32, (token >> 32) as u32);
        let parked = {
            let mut entries = self.entries.borrow_mut();
            let e = entries.get_mut(index as usize)?;
            if e.generation != generation {
                return None;
            }
            e.parked.take()?
        };
        self.free.borrow_mut().push(index);
        self.set_parked(self.parked.get() - 1);
        Some(parked)
    }

    /// Closes what passed its deadline (dropping a socket closes it and
    /// ends its registration), and gives back the table's tail after a
    /// burst.
    fn expire(&self, now: Instant) {
        let now_ms = self.to_ms(now);
        let mut expired = Vec::new();
        {
            let mut entries = self.entries.borrow_mut();
            let mut free = self.free.borrow_mut();
            for (i, e) in entries.iter_mut().enumerate() {
                if e.parked.as_ref().is_some_and(|p| p.deadline_ms <= now_ms) {
                    expired.extend(e.parked.take());
                    free.push(i as u32);
                }
            }
            self.set_parked(self.parked.get() - expired.len());
            // Shrink once most of the table is free, as the deadline table does.
            if entries.capacity() > 64 && free.len() * 2 >= entries.len() {
                while entries.last().is_some_and(|e| e.parked.is_none()) {
                    entries.pop();
                }
                let len = entries.len() as u32;
                free.retain(|&i| i < len);
                if entries.capacity() > 2 * entries.len() {
                    entries.shrink_to_fit();
                    free.shrink_to_fit();
                }
            }
        }
        drop(expired);
    }

    /// On drain: connections idle past the grace close now, the others
    /// within what is left of it.
    fn start_drain(&self) {
        let grace = DRAIN_IDLE_GRACE.as_millis() as u64;
        for e in self.entries.borrow_mut().iter_mut() {
            if let Some(p) = &mut e.parked {
                p.deadline_ms = p.deadline_ms.min(p.idle_since_ms + grace);
            }
        }
    }

    /// Closes every parked connection and stops parking.
    fn close_all(&self) {
        self.epoll.borrow_mut().take();
        let all: Vec<Parked> = self
            .entries
            .borrow_mut()
            .drain(..)
            .filter_map(|e| e.parked)
            .collect();
        self.free.borrow_mut().clear();
        self.set_parked(0);
        drop(all);
    }
}

/// Makes a core's idle set. Parking is off (every idle connection waits in
/// its own task) when the epoll set cannot be made.
pub(super) fn new_set(core: Rc<CoreCtx>) -> IdleSet {
    let epoll = EpollSet::new()
        .inspect_err(|e| {
            tracing::warn!(error = %e, "no epoll set for idle connections; they wait in their tasks");
        })
        .ok();
    IdleSet::new(epoll, core)
}

/// Watches the core's epoll set: spawns a connection's task again when its
/// socket turns readable, closes what passed its deadline. Ends when the
/// core has drained and nothing is parked, or when the HTTP core is gone.
pub(super) async fn watch<S: Service>(http: Weak<HttpCore<S>>, core: Rc<CoreCtx>) {
    let watcher = http
        .upgrade()
        .and_then(|h| h.idle.epoll.borrow().as_ref().map(EpollSet::watcher));
    let epoll = match watcher {
        Some(Ok(s)) => s,
        None => return,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot watch the idle set; idle connections wait in their tasks");
            if let Some(h) = http.upgrade() {
                h.idle.close_all();
            }
            return;
        }
    };
    let table = &core.deadlines;
    let key = table.register();
    if let Some(h) = http.upgrade() {
        h.idle.watcher_key.set(Some(key));
    }
    let mut events = ReadyBuf::new(EVENTS_PER_CALL);
    let mut ready = std::pin::pin!(epoll.readable(false));
    let mut draining = false;
    loop {
        let wake_by = match http.upgrade() {
            Some(h) if draining && h.idle.len() == 0 => break,
            // Every tick while anything is parked, to expire it, and once
            // more after a burst to give its table back.
            Some(h) if h.idle.len() > 0 || h.idle.has_slack() => table.now(),
            Some(_) => table.now() + Duration::from_secs(3600),
            None => break,
        };
        enum Woke {
            Ready(io::Result<()>),
            Tick,
            Drain,
        }
        let woke = monoio::select! {
            r = &mut ready => Woke::Ready(r),
            end = table.wait(key, wake_by, !draining) => match end {
                WaitEnd::Expired => Woke::Tick,
                WaitEnd::Drained => Woke::Drain,
            },
        };
        let Some(h) = http.upgrade() else { break };
        match woke {
            Woke::Ready(Ok(())) => {
                ready.set(epoll.readable(false));
                wake_ready(&h, &mut events);
            }
            Woke::Ready(Err(e)) => {
                tracing::warn!(error = %e, "idle set watch failed; idle connections closed, new ones wait in their tasks");
                h.idle.close_all();
                break;
            }
            Woke::Tick => h.idle.expire(table.now()),
            Woke::Drain => {
                draining = true;
                h.idle.start_drain();
                h.idle.expire(table.now());
            }
        }
    }
    if let Some(h) = http.upgrade() {
        h.idle.watcher_key.set(None);
        h.idle.close_all();
    }
    table.release(key);
}

/// Takes the ready events and gives each named connection a task again.
fn wake_ready<S: Service>(http: &Rc<HttpCore<S>>, events: &mut ReadyBuf) {
    loop {
        let mut taken = 0;
        if let Some(epoll) = &*http.idle.epoll.borrow() {
            for token in epoll.take_ready(events) {
                taken += 1;
                if token & WAITER_TOKEN != 0 {
                    http.idle.wake_waiter(token);
                    continue;
                }
                // The new task first runs after this loop: it cannot reach
                // the set while it is borrowed here.
                if let Some(p) = http.idle.take(token) {
                    monoio::spawn(conn::serve(http.clone(), p.stream, p.open, Start::Woken));
                }
            }
        }
        if taken < events.capacity() {
            return;
        }
    }
}

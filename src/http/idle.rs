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
//! shared between cores. A socket is registered once, edge-triggered, the
//! first time its connection waits, and stays so until it closes: no wait,
//! busy or parked, costs an `epoll_ctl` (docs/connection.md). Each event
//! carries the slot's index and generation, so a late event for a slot
//! that was since freed or reused is ignored.
//!
//! A parked connection whose request comes while the core has no room for
//! it (admission.rs) stays parked, queued for room: its task starts with its
//! turn, or when its wait is over (`--db-wait-timeout`), or at a drain.
//!
//! Deadlines: the watcher wakes on each tick of the core's deadline table
//! while anything is parked and closes what has been idle past the
//! keep-alive timeout. On drain, parked connections idle for more than the
//! drain grace close at once; the others get the rest of that grace to send
//! a last request (answered with `Connection: close`), as in-task waits do.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::Instant;

use super::admission::{Admission, Resume};
use super::conn::{self, Start, DRAIN_IDLE_GRACE};
use super::stream::Stream;
use super::{HttpCore, Service};
use crate::runtime::deadlines::{DeadlineKey, WaitEnd};
use crate::runtime::epoll::{EpollSet, ReadyBuf};
use crate::runtime::{Contained, CoreCtx, OpenGuard};

/// Events taken per `epoll_wait` call.
const EVENTS_PER_CALL: usize = 128;

/// One parked connection.
struct Parked {
    /// Plain TCP, or HTTPS with no ciphertext pending.
    stream: Stream,
    open: OpenGuard,
    /// Milliseconds since the set's epoch.
    idle_since_ms: u64,
    /// [`QUEUED`] once its next request came while the core had no room
    /// for it: it waits in the admission queue (admission.rs), not idle,
    /// and no deadline of the set's applies (a marker, not a field: every
    /// watched connection's entry would grow by a word).
    deadline_ms: u64,
}

/// The deadline of a parked connection queued for room: never.
const QUEUED: u64 = u64::MAX;

impl Parked {
    fn is_queued(&self) -> bool {
        self.deadline_ms == QUEUED
    }
}

/// A connection's place in the set, named by its socket's registration for
/// the connection's whole life, busy or parked: the registration is made
/// once and never changed, so waiting costs no `epoll_ctl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WatchId {
    index: u32,
    /// Never zero, so `Option<WatchId>` takes no more room (the
    /// connection's future holds one).
    generation: NonZeroU32,
}

impl WatchId {
    fn token(self) -> u64 {
        (u64::from(self.generation.get()) << 32) | u64::from(self.index)
    }

    #[cfg(test)]
    pub(super) fn for_tests(index: u32) -> Self {
        WatchId {
            index,
            generation: NonZeroU32::MIN,
        }
    }

    fn from_token(token: u64) -> Option<Self> {
        Some(WatchId {
            index: token as u32,
            generation: NonZeroU32::new((token >> 32) as u32)?,
        })
    }
}

enum Slot {
    Free,
    /// Its connection has a task. `ready`: an event came since the task
    /// last looked (edge-triggered: each arrival of bytes brings one).
    Busy {
        ready: bool,
        waker: Option<Waker>,
    },
    Parked(Parked),
}

struct Watch {
    /// Bumped each time the slot is taken (never zero once used).
    generation: u32,
    slot: Slot,
}

/// A core's watched connections: the parked ones, and the busy ones that
/// wait here for their next request.
pub(super) struct IdleSet {
    /// None when parking is off: the set could not be made, or its watcher
    /// ended.
    epoll: RefCell<Option<EpollSet>>,
    watches: RefCell<Vec<Watch>>,
    free: RefCell<Vec<u32>>,
    parked: Cell<usize>,
    /// Of the parked, those whose request waits for room (not idle).
    queued: Cell<usize>,
    epoch: Instant,
    core: Rc<CoreCtx>,
    /// The watcher's deadline slot: the first park brings its wait
    /// forward to the next tick, from which it expires what is parked.
    watcher_key: Cell<Option<DeadlineKey>>,
}

/// Completes when an event for its connection's socket came.
pub(super) struct Readable<'a> {
    set: &'a IdleSet,
    id: WatchId,
}

impl Future for Readable<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut watches = self.set.watches.borrow_mut();
        let Some(w) = watches
            .get_mut(self.id.index as usize)
            .filter(|w| w.generation == self.id.generation.get())
        else {
            return Poll::Ready(());
        };
        match &mut w.slot {
            Slot::Busy { ready, waker } => {
                if std::mem::take(ready) {
                    *waker = None;
                    return Poll::Ready(());
                }
                match waker {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl Drop for Readable<'_> {
    fn drop(&mut self) {
        if let Some(Watch {
            generation,
            slot: Slot::Busy { waker, .. },
        }) = self
            .set
            .watches
            .borrow_mut()
            .get_mut(self.id.index as usize)
        {
            if *generation == self.id.generation.get() {
                *waker = None;
            }
        }
    }
}

/// A busy connection's watch, given back when its task ends (a parked
/// connection's is the set's to give back).
pub(super) struct WatchGuard<'a> {
    set: &'a IdleSet,
    id: Option<WatchId>,
}

impl<'a> WatchGuard<'a> {
    /// `id`: the watch a connection woken from the set already has.
    pub(super) fn new(set: &'a IdleSet, id: Option<WatchId>) -> Self {
        WatchGuard { set, id }
    }

    /// The connection's watch, registering `fd` on first use. `None` when
    /// the set is off or the registration failed (the caller waits in its
    /// task).
    pub(super) fn get(&mut self, fd: RawFd) -> Option<WatchId> {
        if self.id.is_none() {
            self.id = self.set.register(fd);
        }
        self.id
    }

    /// Gives the watch up to the set, with the connection (parking).
    fn take(&mut self) -> Option<WatchId> {
        self.id.take()
    }
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.set.release(id);
        }
    }
}

impl IdleSet {
    fn new(epoll: Option<EpollSet>, core: Rc<CoreCtx>) -> Self {
        IdleSet {
            epoll: RefCell::new(epoll),
            watches: RefCell::default(),
            free: RefCell::default(),
            parked: Cell::new(0),
            queued: Cell::new(0),
            epoch: Instant::now(),
            core,
            watcher_key: Cell::new(None),
        }
    }

    /// Connections parked now.
    pub(super) fn len(&self) -> usize {
        self.parked.get()
    }

    fn set_parked(&self, n: usize) {
        self.parked.set(n);
        self.core.set_parked_connections(n - self.queued.get());
    }

    fn set_queued(&self, n: usize) {
        self.queued.set(n);
        self.core.set_requests_waiting_parked(n);
        self.core.set_parked_connections(self.parked.get() - n);
    }

    /// Whether the table holds room a burst left behind.
    fn has_slack(&self) -> bool {
        self.watches.borrow().capacity() > 64
    }

    fn to_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A busy watch for `fd`, registered in the epoll set for good.
    fn register(&self, fd: RawFd) -> Option<WatchId> {
        let epoll = self.epoll.borrow();
        let epoll = epoll.as_ref()?;
        let id = {
            let mut watches = self.watches.borrow_mut();
            let index = match self.free.borrow_mut().pop() {
                Some(i) => i,
                None => {
                    watches.push(Watch {
                        generation: 0,
                        slot: Slot::Free,
                    });
                    (watches.len() - 1) as u32
                }
            };
            let w = &mut watches[index as usize];
            let generation =
                NonZeroU32::new(w.generation.wrapping_add(1)).unwrap_or(NonZeroU32::MIN);
            w.generation = generation.get();
            w.slot = Slot::Busy {
                ready: false,
                waker: None,
            };
            WatchId { index, generation }
        };
        match epoll.watch(fd, id.token()) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(error = %e, "could not watch a connection; it waits in its task");
                self.release(id);
                None
            }
        }
    }

    /// Frees a busy connection's watch. Its socket's registration ends
    /// when the socket closes; a late event finds the generation changed.
    fn release(&self, id: WatchId) {
        let mut watches = self.watches.borrow_mut();
        if let Some(w) = watches.get_mut(id.index as usize) {
            if w.generation == id.generation.get() && matches!(w.slot, Slot::Busy { .. }) {
                w.slot = Slot::Free;
                self.free.borrow_mut().push(id.index);
            }
        }
    }

    /// Whether an event came for a busy connection that its task has not
    /// looked at yet.
    pub(super) fn is_ready(&self, id: WatchId) -> bool {
        self.watches
            .borrow()
            .get(id.index as usize)
            .is_some_and(|w| {
                w.generation == id.generation.get()
                    && matches!(w.slot, Slot::Busy { ready: true, .. })
            })
    }

    /// Waits, in the caller's task, for the next event on its socket: how
    /// a busy connection waits for its next request. The epoll set hands
    /// over the readiness of many sockets in one call, where a read or poll
    /// operation per connection costs a completion each. An event may be
    /// stale (its bytes already read): the caller's first read then finds
    /// nothing and it waits again.
    pub(super) fn readable(&self, id: WatchId) -> Readable<'_> {
        Readable { set: self, id }
    }

    /// Parks an idle connection until its socket gets bytes or `keepalive`
    /// passes. Gives the stream back when it cannot be parked (parking
    /// off, or an event came that the connection has not looked at): the
    /// caller then waits in its own task.
    pub(super) fn park(
        &self,
        watch: &mut WatchGuard<'_>,
        stream: Stream,
        open: OpenGuard,
        now: Instant,
        keepalive: Duration,
    ) -> Result<(), (Stream, OpenGuard)> {
        let parkable = match &stream {
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Tls(t) if t.can_park() => Some(t.tcp().as_raw_fd()),
            _ => None,
        };
        let (Some(fd), true) = (parkable, self.epoll.borrow().is_some()) else {
            return Err((stream, open));
        };
        let Some(id) = watch.get(fd) else {
            return Err((stream, open));
        };
        let now_ms = self.to_ms(now);
        {
            let mut watches = self.watches.borrow_mut();
            let w = &mut watches[id.index as usize];
            if !matches!(w.slot, Slot::Busy { ready: false, .. }) {
                return Err((stream, open));
            }
            w.slot = Slot::Parked(Parked {
                stream,
                open,
                idle_since_ms: now_ms,
                deadline_ms: (now_ms + keepalive.as_millis() as u64).min(QUEUED - 1),
            });
        }
        watch.take();
        self.set_parked(self.parked.get() + 1);
        if self.parked.get() == 1 {
            if let Some(key) = self.watcher_key.get() {
                self.core.deadlines.hasten(key, now);
            }
        }
        Ok(())
    }

    /// An event for `token`: a busy connection is marked (and woken if it
    /// waits); a parked one is handed back with its watch and how its task
    /// starts: with a room counted for its request when there is one (so
    /// the next event of the same batch sees it taken), else (draining)
    /// to wait for one in its task. When the core has no room, it is
    /// queued for room still parked: a request waiting its turn costs no
    /// task (admission.rs).
    fn event(&self, token: u64, admission: &Admission) -> Option<(Parked, Start)> {
        enum Outcome {
            Nothing,
            Wake(Waker),
            Queue,
            Resume(Parked),
        }
        let id = WatchId::from_token(token)?;
        let outcome = {
            let mut watches = self.watches.borrow_mut();
            let w = watches.get_mut(id.index as usize)?;
            if w.generation != id.generation.get() {
                return None;
            }
            match &mut w.slot {
                Slot::Free => Outcome::Nothing,
                Slot::Busy { ready, waker } => {
                    *ready = true;
                    waker.take().map_or(Outcome::Nothing, Outcome::Wake)
                }
                // Already waiting for its turn.
                Slot::Parked(p) if p.is_queued() => Outcome::Nothing,
                // While draining, a request is taken at once, as an in-task
                // wait for room ends then.
                Slot::Parked(p) if !admission.may_start() && !self.core.draining() => {
                    p.deadline_ms = QUEUED;
                    Outcome::Queue
                }
                Slot::Parked(_) => {
                    let busy = Slot::Busy {
                        ready: false,
                        waker: None,
                    };
                    match std::mem::replace(&mut w.slot, busy) {
                        Slot::Parked(p) => Outcome::Resume(p),
                        _ => unreachable!("matched as parked"),
                    }
                }
            }
        };
        match outcome {
            Outcome::Nothing => None,
            Outcome::Wake(waker) => {
                waker.wake();
                None
            }
            Outcome::Queue => {
                // Its task comes with its turn, or when its wait is over.
                self.set_queued(self.queued.get() + 1);
                admission.queue_parked(id, self.core.deadlines.now());
                self.core.note_request_queued();
                None
            }
            Outcome::Resume(parked) => {
                self.set_parked(self.parked.get() - 1);
                if admission.may_start() {
                    admission.count_for_resumed();
                    Some((parked, Start::Admitted(id)))
                } else {
                    Some((parked, Start::Woken(id)))
                }
            }
        }
    }

    /// A queued parked connection whose turn came, handed back with its
    /// watch (busy again); `None` if it is no longer there.
    fn take_queued(&self, id: WatchId) -> Option<Parked> {
        let parked = {
            let mut watches = self.watches.borrow_mut();
            let w = watches.get_mut(id.index as usize)?;
            if w.generation != id.generation.get()
                || !matches!(&w.slot, Slot::Parked(p) if p.is_queued())
            {
                return None;
            }
            let busy = Slot::Busy {
                ready: false,
                waker: None,
            };
            match std::mem::replace(&mut w.slot, busy) {
                Slot::Parked(p) => p,
                _ => unreachable!("matched as parked"),
            }
        };
        self.set_queued(self.queued.get() - 1);
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
            let mut watches = self.watches.borrow_mut();
            let mut free = self.free.borrow_mut();
            for (i, w) in watches.iter_mut().enumerate() {
                // A queued one's deadline is never.
                if matches!(&w.slot, Slot::Parked(p) if p.deadline_ms <= now_ms) {
                    if let Slot::Parked(p) = std::mem::replace(&mut w.slot, Slot::Free) {
                        expired.push(p);
                    }
                    free.push(i as u32);
                }
            }
            self.set_parked(self.parked.get() - expired.len());
            // Shrink once most of the table is free, as the deadline table does.
            if watches.capacity() > 64 && free.len() * 2 >= watches.len() {
                while watches.last().is_some_and(|w| matches!(w.slot, Slot::Free)) {
                    watches.pop();
                }
                let len = watches.len() as u32;
                free.retain(|&i| i < len);
                if watches.capacity() > 2 * watches.len() {
                    watches.shrink_to_fit();
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
        for w in self.watches.borrow_mut().iter_mut() {
            // One queued for room is not idle: its request is answered.
            if let Slot::Parked(p) = &mut w.slot {
                if !p.is_queued() {
                    p.deadline_ms = p.deadline_ms.min(p.idle_since_ms + grace);
                }
            }
        }
    }

    /// Closes every parked connection and stops parking. Busy connections
    /// keep their watches until their tasks end; those waiting here are
    /// woken (their wait also ends at the next tick).
    fn close_all(&self) {
        self.epoll.borrow_mut().take();
        let mut closed = Vec::new();
        let mut wakers = Vec::new();
        {
            let mut watches = self.watches.borrow_mut();
            let mut free = self.free.borrow_mut();
            for (i, w) in watches.iter_mut().enumerate() {
                match &mut w.slot {
                    Slot::Parked(_) => {
                        if let Slot::Parked(p) = std::mem::replace(&mut w.slot, Slot::Free) {
                            closed.push(p);
                        }
                        free.push(i as u32);
                    }
                    Slot::Busy { ready, waker } => {
                        *ready = true;
                        wakers.extend(waker.take());
                    }
                    Slot::Free => {}
                }
            }
        }
        self.set_queued(0);
        self.set_parked(0);
        drop(closed);
        wakers.into_iter().for_each(Waker::wake);
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
                resume_waited(&h, None);
                h.idle.close_all();
                break;
            }
            Woke::Tick => {
                let now = table.now();
                if let Some(by) = now.checked_sub(h.shared.settings.admission_wait) {
                    resume_waited(&h, Some(by));
                }
                h.idle.expire(now);
            }
            Woke::Drain => {
                // What waits for room is answered now (with `Connection:
                // close`), as in-task waits are.
                draining = true;
                resume_waited(&h, None);
                h.idle.start_drain();
                h.idle.expire(table.now());
            }
        }
    }
    if let Some(h) = http.upgrade() {
        h.idle.watcher_key.set(None);
        resume_waited(&h, None);
        h.idle.close_all();
    }
    table.release(key);
}

/// Takes the ready events: marks (and wakes) the busy connections they
/// name and gives each parked one a task again.
fn wake_ready<S: Service>(http: &Rc<HttpCore<S>>, events: &mut ReadyBuf) {
    loop {
        let mut taken = 0;
        if let Some(epoll) = &*http.idle.epoll.borrow() {
            for token in epoll.take_ready(events) {
                taken += 1;
                // The new task first runs after this loop: it cannot reach
                // the set while it is borrowed here.
                if let Some((p, start)) = http.idle.event(token, &http.shared.admission) {
                    resume(http, p, start);
                }
            }
        }
        if taken < events.capacity() {
            return;
        }
    }
}

/// Gives a parked connection a task again.
fn resume<S: Service>(http: &Rc<HttpCore<S>>, parked: Parked, start: Start) {
    monoio::spawn(Contained::new(
        &http.shared.core,
        conn::serve(http.clone(), parked.stream, parked.open, start),
    ));
}

/// How a queued parked connection whose turn came gets its task, with the
/// room handed over (installed in the core's admission).
pub(super) fn resume_in_turn<S: Service>(http: &Rc<HttpCore<S>>) -> Resume {
    let weak = Rc::downgrade(http);
    Rc::new(move |id| {
        let Some(http) = weak.upgrade() else {
            return false;
        };
        let Some(parked) = http.idle.take_queued(id) else {
            return false;
        };
        resume(&http, parked, Start::Admitted(id));
        true
    })
}

/// Gives the queued parked connections that came at or before `by` (all
/// of them when `None`) their tasks, room or not: their wait is over, as an
/// in-task wait for room ends by `--db-wait-timeout` (admission.rs).
fn resume_waited<S: Service>(http: &Rc<HttpCore<S>>, by: Option<Instant>) {
    let admission = &http.shared.admission;
    for id in admission.take_parked_waiting_since(by) {
        if let Some(parked) = http.idle.take_queued(id) {
            admission.count_for_resumed();
            resume(http, parked, Start::Admitted(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::request_limit::RequestLimit;
    use crate::runtime::IoDriver;

    /// A parked connection whose request comes while the core has no room
    /// stays parked, queued once, not idle and never expired; it is handed
    /// back in its turn. One that finds room starts with the room counted.
    #[test]
    fn a_request_without_room_waits_parked_and_is_handed_back_in_turn() {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let core = CoreCtx::standalone(0, IoDriver::Epoll);
            let set = IdleSet::new(Some(EpollSet::new().unwrap()), core.clone());
            let limit = Rc::new(RequestLimit::default());
            limit.set_fixed(1);
            let admission = Rc::new(Admission::new(limit, 100));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = listener.accept().unwrap();
            accepted.set_nonblocking(true).unwrap();
            let stream = Stream::Tcp(monoio::net::TcpStream::from_std(accepted).unwrap());
            let mut watch = WatchGuard::new(&set, None);
            let id = watch.get(stream.epoll_fd().unwrap()).unwrap();
            let open = OpenGuard::new(&core);
            let now = Instant::now();
            assert!(set
                .park(&mut watch, stream, open, now, Duration::from_secs(60))
                .is_ok());
            assert_eq!(core.parked_connections(), 1);

            let at_work = admission.enter();
            assert!(set.event(id.token(), &admission).is_none());
            // Queued, not idle; a second event does not queue it again.
            assert!(set.event(id.token(), &admission).is_none());
            assert_eq!(core.requests_waiting_parked(), 1);
            assert_eq!(core.parked_connections(), 0);
            assert_eq!(set.len(), 1);
            assert!(!admission.may_start());
            // Past its keep-alive it is still there: it is not idle.
            set.expire(now + Duration::from_secs(120));
            assert_eq!(set.len(), 1);

            assert_eq!(admission.take_parked_waiting_since(None), [id]);
            let parked = set.take_queued(id).expect("handed back");
            assert!(set.take_queued(id).is_none());
            assert_eq!((core.requests_waiting_parked(), set.len()), (0, 0));
            drop(at_work);

            // Parked again with room free: it starts with its room counted.
            let mut watch = WatchGuard::new(&set, Some(id));
            assert!(set
                .park(
                    &mut watch,
                    parked.stream,
                    parked.open,
                    now,
                    Duration::from_secs(60)
                )
                .is_ok());
            let (_, start) = set.event(id.token(), &admission).expect("resumed");
            assert!(matches!(start, Start::Admitted(i) if i == id));
            assert!(!admission.may_start(), "the one room is counted");
            drop(admission.claim_room());
            assert!(admission.may_start());
        });
    }

    /// A busy connection's event is kept for its task to see.
    #[test]
    fn an_event_for_a_busy_connection_is_kept_until_seen() {
        let core = CoreCtx::standalone(0, IoDriver::Epoll);
        let set = IdleSet::new(Some(EpollSet::new().unwrap()), core);
        let admission = Rc::new(Admission::new(Rc::new(RequestLimit::default()), 100));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let id = set.register(listener.as_raw_fd()).unwrap();
        assert!(!set.is_ready(id));
        assert!(set.event(id.token(), &admission).is_none());
        assert!(set.is_ready(id));
    }
}

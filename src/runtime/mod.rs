//! Threads, pinning, rings, listeners and the shutdown signal.
//!
//! One OS thread per selected CPU, pinned there, each running its own monoio
//! runtime and accepting on its own SO_REUSEPORT listener. Nothing here knows
//! HTTP: a core hands each accepted stream to a [`ConnectionHandler`] made on
//! that core. Cross-core traffic is limited to start-up (ready reports) and
//! shutdown (one message per core).

#![allow(
    unsafe_code,
    reason = "raw accept4 and recv on the core's own sockets, malloc_trim"
)]

mod core_thread;
pub mod deadlines;
pub mod epoll;
pub mod event;
mod fd_reserve;
mod frames;
mod heartbeat;
mod limit_tuner;
mod listener;
mod log_limit;
mod panics;
pub mod request_limit;
mod setup;
pub(crate) mod wait;

pub use core_thread::OpenGuard;
pub use frames::{FramePool, PooledFuture};
pub use log_limit::LogLimit;
pub use panics::{catch_panic, log_panics, panic_message, CatchPanic, Contained};
pub use setup::select_cpus;

use core_thread::CoreStart;
use setup::choose_driver;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::config::Config;
use deadlines::DeadlineTable;
use event::LocalEvent;
use heartbeat::{Heartbeats, Watch};
use panics::{ExitNotice, ListenerId};

/// The io driver a core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    Uring,
    Epoll,
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoDriver::Uring => "io_uring",
            IoDriver::Epoll => "epoll",
        })
    }
}

/// Per-core state shared by the accept loop and that core's connections.
/// `Rc` and `Cell` only: it never leaves its core.
pub struct CoreCtx {
    /// Position of this core in the selected set (0..n).
    pub index: usize,
    /// The CPU id this core's thread is pinned to.
    pub cpu: usize,
    pub driver: IoDriver,
    /// Fired when a graceful shutdown starts: stop taking new requests.
    pub drain: LocalEvent,
    /// Connection deadlines, on the core's coarse clock.
    pub deadlines: DeadlineTable,
    /// Frames for the futures boxed per request, reused.
    pub frames: FramePool,
    /// Counters of the HTTPS listener (handshakes, failures).
    pub tls: crate::tls::TlsCounters,
    open_connections: Cell<usize>,
    /// Open connections parked idle by the HTTP layer, with no task.
    parked_connections: Cell<usize>,
    /// Requests waiting for room among those at work, their connections
    /// parked with no task (`http/admission.rs`).
    requests_waiting_parked: Cell<usize>,
    accepted: Cell<u64>,
    shed: Cell<u64>,
    /// Accepts that failed for lack of file descriptors, and connections
    /// answered 503 for that reason.
    fd_exhausted: Cell<u64>,
    refused_no_fd: Cell<u64>,
    /// Bytes that layers above gave back to the allocator since the last
    /// memory trim (see `housekeeping`).
    released_bytes: Cell<usize>,
    /// Connections whose task panicked (each closed; see `panics`).
    connection_panics: Cell<u64>,
    /// Requests that waited, unread, for room among those at work
    /// (`http/admission.rs`).
    requests_queued: Cell<u64>,
    /// The limit on requests at work (`http/admission.rs`), which the
    /// database pools may tune.
    pub request_limit: std::rc::Rc<request_limit::RequestLimit>,
    /// Where this core shows the supervisor it turns its loop (none for a
    /// standalone runtime).
    heartbeats: Option<Arc<Heartbeats>>,
    /// The deadline ticker's period (zero: no ticker), and task polls
    /// counted towards the next look at the clock (see `note_progress`).
    tick_every: Cell<Duration>,
    polls: Cell<u32>,
    /// Other deadline tables on this core (the database pools' query
    /// deadlines), ticked with the core's when their tickers are late.
    also_ticked: std::cell::RefCell<Vec<std::rc::Weak<DeadlineTable>>>,
    panic_log: LogLimit,
}

/// Free frames of each future layout a core keeps (set from
/// `--pooled-buffers-per-core` by the HTTP layer).
const DEFAULT_FREE_FRAMES: usize = 256;

impl CoreCtx {
    /// A context for a runtime started outside [`Server`] (unit tests, tools).
    pub fn standalone(index: usize, driver: IoDriver) -> Rc<CoreCtx> {
        Rc::new(CoreCtx::new(index, index, driver, None))
    }

    /// A core's context with nothing counted yet.
    fn new(
        index: usize,
        cpu: usize,
        driver: IoDriver,
        heartbeats: Option<Arc<Heartbeats>>,
    ) -> CoreCtx {
        CoreCtx {
            index,
            cpu,
            driver,
            drain: LocalEvent::new(),
            deadlines: DeadlineTable::new(),
            frames: FramePool::new(DEFAULT_FREE_FRAMES),
            tls: Default::default(),
            open_connections: Cell::new(0),
            parked_connections: Cell::new(0),
            requests_waiting_parked: Cell::new(0),
            accepted: Cell::new(0),
            shed: Cell::new(0),
            fd_exhausted: Cell::new(0),
            refused_no_fd: Cell::new(0),
            released_bytes: Cell::new(0),
            connection_panics: Cell::new(0),
            requests_queued: Cell::new(0),
            request_limit: Default::default(),
            heartbeats,
            tick_every: Cell::new(Duration::ZERO),
            polls: Cell::new(0),
            also_ticked: Default::default(),
            panic_log: LogLimit::default(),
        }
    }

    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }
    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }
    pub fn parked_connections(&self) -> usize {
        self.parked_connections.get()
    }
    pub fn set_parked_connections(&self, n: usize) {
        self.parked_connections.set(n);
    }
    pub fn requests_waiting_parked(&self) -> usize {
        self.requests_waiting_parked.get()
    }
    pub fn set_requests_waiting_parked(&self, n: usize) {
        self.requests_waiting_parked.set(n);
    }
    pub fn accepted(&self) -> u64 {
        self.accepted.get()
    }
    pub fn shed(&self) -> u64 {
        self.shed.get()
    }
    pub fn fd_exhausted(&self) -> u64 {
        self.fd_exhausted.get()
    }
    pub fn refused_no_fd(&self) -> u64 {
        self.refused_no_fd.get()
    }
    pub fn connection_panics(&self) -> u64 {
        self.connection_panics.get()
    }
    pub fn requests_queued(&self) -> u64 {
        self.requests_queued.get()
    }
    pub fn note_request_queued(&self) {
        self.requests_queued.set(self.requests_queued.get() + 1);
    }
    /// Counts a poll of a connection's task: a sign of life for the stall
    /// check; and every 64 polls, a look at the clock that ticks the
    /// deadlines if their ticker is late. monoio fires timers only when its
    /// loop parks, which a saturated core may put off for a second or more
    /// (measured: up to 1.4 s beside a CPU hog), and a deadline must not
    /// wait for the load to ease.
    #[inline]
    fn note_progress(&self) {
        if let Some(h) = &self.heartbeats {
            h.progress(self.index);
        }
        let polls = self.polls.get().wrapping_add(1);
        self.polls.set(polls);
        if polls % 64 == 0 {
            self.tick_if_late();
        }
    }

    fn tick_if_late(&self) {
        let every = self.tick_every.get();
        if every.is_zero() {
            return;
        }
        let now = monoio::time::Instant::now();
        if now.saturating_duration_since(self.deadlines.now()) >= every {
            self.tick_deadlines(now);
        }
        for table in self.also_ticked.borrow().iter().filter_map(|t| t.upgrade()) {
            if now.saturating_duration_since(table.now()) >= every {
                table.tick(now);
            }
        }
    }

    /// Advances the core's deadline table to `now` (waking the waits that
    /// expired) and shows the supervisor that this core turns its loop.
    fn tick_deadlines(&self, now: monoio::time::Instant) {
        self.deadlines.tick(now);
        if let Some(h) = &self.heartbeats {
            h.beat(self.index);
        }
    }

    /// Ticks `table` too when its own ticker is late (see `note_progress`):
    /// a table on this core whose ticker is a runtime timer.
    pub fn also_tick(&self, table: std::rc::Weak<DeadlineTable>) {
        let mut tables = self.also_ticked.borrow_mut();
        tables.retain(|t| t.strong_count() > 0);
        tables.push(table);
    }
    /// Records memory given back to the allocator (freed buffers), so that
    /// the core can return it to the kernel when enough has accumulated.
    pub fn note_released(&self, bytes: usize) {
        self.released_bytes.set(self.released_bytes.get() + bytes);
    }
}

/// What a core does with each accepted connection. Made once per core (on
/// that core), so it may hold `Rc` state: buffer pools, caches, DB pools.
pub trait ConnectionHandler: 'static {
    /// Serves one connection until it closes; `open` counts it open (the
    /// handler keeps it as long as it keeps the connection, task or not).
    /// `listener` says where it came in: 0 for `--listen`, 1 for
    /// `--listen-tls`.
    fn serve(
        self: &Rc<Self>,
        stream: TcpStream,
        open: OpenGuard,
        listener: usize,
    ) -> impl Future<Output = ()> + 'static;
    /// Answers a connection beyond the per-core limit (a short 503), then
    /// the runtime closes it.
    fn refuse(
        self: &Rc<Self>,
        stream: TcpStream,
        listener: usize,
    ) -> impl Future<Output = ()> + 'static;
}

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// What each core reported once it was listening.
#[derive(Clone, Debug)]
pub struct CoreReport {
    pub index: usize,
    pub cpu: usize,
    pub driver: IoDriver,
}

/// A running server: its address, its cores, and the handle that stops it.
pub struct Server {
    pub local_addr: SocketAddr,
    /// The `--listen-tls` address, once bound.
    pub local_tls_addr: Option<SocketAddr>,
    pub cores: Vec<CoreReport>,
    /// Why the io driver was chosen, for the start-up log.
    pub driver_note: String,
    stopper: Stopper,
    /// Each core's thread, by index; `None` once it ended.
    threads: Vec<Option<thread::JoinHandle<CoreSummary>>>,
    /// The index of each core whose thread ends, as it ends.
    exits: mpsc::Receiver<usize>,
    /// Each core's listeners, to take a dead core's out of their group.
    listeners: Vec<Vec<ListenerId>>,
    heartbeats: Arc<Heartbeats>,
    /// How long a core may go without turning its loop (`--core-stall-timeout`).
    stall_timeout: Duration,
}

/// What a core did, returned when it stops.
#[derive(Clone, Debug, Default)]
pub struct CoreSummary {
    pub index: usize,
    pub accepted: u64,
    pub shed: u64,
    /// Connections still open when the drain deadline passed (closed hard).
    pub cut_at_deadline: usize,
}

impl Server {
    /// Starts one pinned thread per selected CPU, each listening on `config.listen`.
    /// Returns once every core accepts, or with the first core's start error.
    pub fn start<F, H>(config: &Config, make_handler: F) -> Result<Server, StartError>
    where
        F: Fn(Rc<CoreCtx>, &Config) -> Rc<H> + Send + Sync + 'static,
        H: ConnectionHandler,
    {
        let cpus = select_cpus(&config.cores)?;
        let (driver, driver_note) = choose_driver(config.io)?;
        // Bind every listener here, before any thread starts, so that an
        // address in use fails the start with one clear message. Port 0
        // resolves on the first bind; the others reuse that port.
        let mut addrs = vec![config.listen];
        addrs.extend(config.listen_tls);
        let mut per_core: Vec<Vec<std::net::TcpListener>> =
            cpus.iter().map(|_| Vec::new()).collect();
        for addr in addrs.iter_mut() {
            for listeners in per_core.iter_mut() {
                let l = listener::bind(*addr, config.backlog)
                    .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
                *addr = l
                    .local_addr()
                    .map_err(|e| StartError(format!("listener address: {e}")))?;
                listeners.push(l);
            }
        }
        let listener_ids = per_core
            .iter()
            .map(|ls| ls.iter().filter_map(ListenerId::of).collect())
            .collect();
        let make_handler = Arc::new(make_handler);
        let heartbeats = Arc::new(Heartbeats::new(cpus.len()));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<CoreReport, String>>();
        let (exit_tx, exits) = mpsc::channel();
        let mut server = Server {
            local_addr: addrs[0],
            local_tls_addr: addrs.get(1).copied(),
            cores: Vec::new(),
            driver_note,
            stopper: Stopper(Vec::new()),
            threads: Vec::new(),
            exits,
            listeners: listener_ids,
            heartbeats: heartbeats.clone(),
            // (At least a second, however the config was built.)
            stall_timeout: config.core_stall_timeout.max(Duration::from_secs(1)),
        };
        for (index, (cpu, listeners)) in cpus.iter().copied().zip(per_core).enumerate() {
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            server.stopper.0.push(stop_tx);
            let core = CoreStart {
                index,
                cpu,
                driver,
                config: config.clone(),
                listeners,
                stop: stop_rx,
                ready: ready_tx.clone(),
                heartbeats: heartbeats.clone(),
            };
            let make_handler = make_handler.clone();
            let exit = ExitNotice {
                index,
                to: exit_tx.clone(),
            };
            let spawned = thread::Builder::new()
                .name(format!("ringside-core-{index}"))
                .spawn(move || {
                    let _exit = exit;
                    core.run(move |ctx, cfg| make_handler(ctx, cfg))
                });
            match spawned {
                Ok(t) => server.threads.push(Some(t)),
                Err(e) => {
                    server.stop_now();
                    return Err(StartError(format!("cannot start a core thread: {e}")));
                }
            }
        }
        drop(ready_tx);
        // Each core lets go of its sender once it has reported, so a core
        // that dies before reporting ends this wait instead of hanging it.
        for _ in 0..cpus.len() {
            match ready_rx.recv() {
                Ok(Ok(report)) => server.cores.push(report),
                Ok(Err(e)) => {
                    server.stop_now();
                    return Err(StartError(e));
                }
                Err(_) => {
                    server.stop_now();
                    return Err(StartError("a core thread died while starting".into()));
                }
            }
        }
        server.cores.sort_by_key(|c| c.index);
        Ok(server)
    }

    /// Starts a graceful shutdown on every core (stop accepting, finish
    /// requests in flight, close idle connections). Returns at once.
    pub fn begin_shutdown(&self) {
        self.stopper.stop();
    }

    /// A handle that can start the shutdown from another thread (a signal
    /// watcher).
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits for every core to stop, taking each as it ends. Returns the
    /// per-core summaries, or, if a core's thread panicked or stalled (did
    /// not turn its loop for `--core-stall-timeout`), why, once the other
    /// cores have drained: the server cannot go on without a core (see
    /// `panics`), and its service manager restarts it. A stalled core's
    /// thread is left behind, not joined: ending the process ends it.
    pub fn join(mut self) -> Result<Vec<CoreSummary>, String> {
        let mut summaries = Vec::new();
        let mut failure = None;
        let check_every = (self.stall_timeout / 4).min(Duration::from_secs(1));
        let mut watch = Watch::new(self.heartbeats.clone(), check_every);
        while self.threads.iter().any(Option::is_some) {
            let index = match self.exits.recv_timeout(check_every) {
                Ok(index) => index,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(stalled) = self.abandon_stalled_cores(&mut watch) {
                        failure.get_or_insert(stalled);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let Some(thread) = self.threads[index].take() else {
                continue;
            };
            let payload = match thread.join() {
                Ok(summary) => {
                    summaries.push(summary);
                    continue;
                }
                Err(payload) => payload,
            };
            let why = panic_message(&*payload);
            let cpu = self.cores.get(index).map_or(index, |c| c.cpu);
            for listener in &self.listeners[index] {
                listener.stop_listening();
            }
            tracing::error!(
                "core {index} (CPU {cpu}) panicked and lost its connections: {why}; \
                 draining the other cores, then exiting with an error"
            );
            failure.get_or_insert_with(|| format!("core {index} (CPU {cpu}) panicked: {why}"));
            self.stopper.stop();
        }
        summaries.sort_by_key(|s| s.index);
        match failure {
            Some(e) => Err(e),
            None => Ok(summaries),
        }
    }

    /// Finds the cores that stopped turning their loop: takes their
    /// listeners out of their groups, lets their threads go and starts the
    /// drain of the others. Returns why, if any core stalled.
    fn abandon_stalled_cores(&mut self, watch: &mut Watch) -> Option<String> {
        let mut why = None;
        watch.start_round();
        for index in 0..self.threads.len() {
            let silent = watch.silent_for(index);
            if self.threads[index].is_none() || silent < self.stall_timeout {
                continue;
            }
            self.threads[index] = None;
            for listener in &self.listeners[index] {
                listener.stop_listening();
            }
            let cpu = self.cores.get(index).map_or(index, |c| c.cpu);
            tracing::error!(
                "core {index} (CPU {cpu}) has not turned its event loop for {:.1} s (stuck in \
                 a loop or a blocking call): its connections are lost; draining the other \
                 cores, then exiting with an error",
                silent.as_secs_f64()
            );
            why.get_or_insert(format!(
                "core {index} (CPU {cpu}) stalled for {:.1} s",
                silent.as_secs_f64()
            ));
            self.stopper.stop();
        }
        why
    }

    fn stop_now(&mut self) {
        self.begin_shutdown();
        for t in self.threads.drain(..).flatten() {
            let _ = t.join();
        }
    }
}

/// Starts a graceful shutdown of every core; cheap to clone, `Send`.
#[derive(Clone)]
pub struct Stopper(Vec<flume::Sender<()>>);

impl Stopper {
    pub fn stop(&self) {
        for tx in &self.0 {
            let _ = tx.try_send(());
        }
    }
}

/// One non-blocking `recv(2)` into the spare capacity of `buf`: `Ok(Some(n))`
/// with `n` bytes appended (0 at end of stream), `Ok(None)` when nothing is
/// there yet.
///
/// A connection that was just reported readable almost always has its
/// bytes (or its end of stream) waiting: taking them with one plain call
/// spares the ring a read operation, and above all a buffer lent to the
/// kernel until that operation completes. When 10,000 clients hang up at
/// once, 10,000 pending reads would each hold a buffer; this holds one at
/// a time.
pub fn recv_now(fd: RawFd, buf: &mut bytes::BytesMut) -> io::Result<Option<usize>> {
    let spare = buf.spare_capacity_mut();
    loop {
        // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by
        // `buf`; recvfrom writes at most that many and returns how many it
        // wrote. Through syscall(2), not libc's recv: that one is a thread
        // cancellation point and toggles the cancel state around every call
        // (about 1 % of a core at 100k requests/s), which a thread that is
        // never cancelled does not need.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvfrom,
                fd,
                spare.as_mut_ptr(),
                spare.len(),
                libc::MSG_DONTWAIT,
                std::ptr::null_mut::<libc::sockaddr>(),
                std::ptr::null_mut::<libc::socklen_t>(),
            )
        };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: recvfrom initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(Some(n));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// One non-blocking send(2) of `buf` on a socket of ours (no SIGPIPE):
/// the socket almost always has room, and a plain call spares the ring an
/// operation whose completion would wake the task once more. What it did
/// not take (`WouldBlock`, or a part) goes through the ring, which waits.
pub fn send_now(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for `buf.len()` bytes; `fd` is a socket
        // the caller keeps open for the call. Through syscall(2), as in
        // `recv_now`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                buf.as_ptr(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads into the spare capacity of `buf`, after the bytes it holds.
///
/// monoio's `read` fills a buffer from its start (its `write_ptr` is the
/// buffer's beginning), replacing what was there; this appends instead.
/// The caller reserves spare capacity first: a full buffer would read 0
/// bytes, which looks like end of stream.
pub async fn read_append<R: monoio::io::AsyncReadRent>(
    reader: &mut R,
    buf: bytes::BytesMut,
) -> (io::Result<usize>, bytes::BytesMut) {
    use monoio::buf::IoBufMut;
    debug_assert!(
        buf.capacity() > buf.len(),
        "read_append needs spare capacity"
    );
    let len = buf.len();
    let (res, slice) = reader.read(buf.slice_mut(len..)).await;
    (res, slice.into_inner())
}

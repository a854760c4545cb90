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

pub mod deadlines;
pub mod event;
mod fd_reserve;
mod frames;
mod listener;
mod log_limit;

pub use frames::{FramePool, PooledFuture};
pub use log_limit::LogLimit;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::config::{Config, CoreSelection, IoMode};
use deadlines::DeadlineTable;
use event::LocalEvent;

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
    open_connections: Cell<usize>,
    accepted: Cell<u64>,
    shed: Cell<u64>,
    /// Accepts that failed for lack of file descriptors, and connections
    /// answered 503 for that reason.
    fd_exhausted: Cell<u64>,
    refused_no_fd: Cell<u64>,
    /// Bytes that layers above gave back to the allocator since the last
    /// memory trim (see `housekeeping`).
    released_bytes: Cell<usize>,
}

/// Free frames of each future layout a core keeps (set from
/// `--pooled-buffers-per-core` by the HTTP layer).
const DEFAULT_FREE_FRAMES: usize = 256;

impl CoreCtx {
    /// A context for a runtime started outside [`Server`] (unit tests, tools).
    pub fn standalone(index: usize, driver: IoDriver) -> Rc<CoreCtx> {
        Rc::new(CoreCtx {
            index,
            cpu: index,
            driver,
            drain: LocalEvent::new(),
            deadlines: DeadlineTable::new(),
            frames: FramePool::new(DEFAULT_FREE_FRAMES),
            open_connections: Cell::new(0),
            accepted: Cell::new(0),
            shed: Cell::new(0),
            fd_exhausted: Cell::new(0),
            refused_no_fd: Cell::new(0),
            released_bytes: Cell::new(0),
        })
    }

    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }
    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
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
    /// Records memory given back to the allocator (freed buffers), so that
    /// the core can return it to the kernel when enough has accumulated.
    pub fn note_released(&self, bytes: usize) {
        self.released_bytes.set(self.released_bytes.get() + bytes);
    }
}

/// What a core does with each accepted connection. Made once per core (on
/// that core), so it may hold `Rc` state: buffer pools, caches, DB pools.
pub trait ConnectionHandler: 'static {
    /// Serves one connection until it closes.
    fn serve(self: &Rc<Self>, stream: TcpStream) -> impl Future<Output = ()> + 'static;
    /// Answers a connection beyond the per-core limit (a short 503), then
    /// the runtime closes it.
    fn refuse(self: &Rc<Self>, stream: TcpStream) -> impl Future<Output = ()> + 'static;
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
    pub cores: Vec<CoreReport>,
    /// Why the io driver was chosen, for the start-up log.
    pub driver_note: String,
    shutdown: Vec<flume::Sender<()>>,
    threads: Vec<thread::JoinHandle<CoreSummary>>,
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
        let mut addr = config.listen;
        let mut listeners = Vec::with_capacity(cpus.len());
        for _ in &cpus {
            let l = listener::bind(addr, config.backlog)
                .map_err(|e| StartError(format!("cannot listen on {addr}: {e}")))?;
            addr = l
                .local_addr()
                .map_err(|e| StartError(format!("listener address: {e}")))?;
            listeners.push(l);
        }

        let make_handler = Arc::new(make_handler);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<CoreReport, String>>();
        let mut shutdown = Vec::new();
        let mut threads = Vec::new();
        for (index, (cpu, listener)) in cpus.iter().copied().zip(listeners).enumerate() {
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            shutdown.push(stop_tx);
            let config = config.clone();
            let make_handler = make_handler.clone();
            let ready_tx = ready_tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("ringside-core-{index}"))
                .spawn(move || {
                    let core = CoreStart {
                        index,
                        cpu,
                        driver,
                        config,
                        listener,
                        stop: stop_rx,
                        ready: ready_tx,
                    };
                    core.run(move |ctx, cfg| make_handler(ctx, cfg))
                })
                .map_err(|e| StartError(format!("cannot start a core thread: {e}")))?;
            threads.push(spawned);
        }
        drop(ready_tx);

        let mut server = Server {
            local_addr: addr,
            cores: Vec::new(),
            driver_note,
            shutdown,
            threads,
        };
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
        self.stopper().stop();
    }

    /// A handle that can start the shutdown from another thread (a signal
    /// watcher).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shutdown.clone())
    }

    /// Waits for every core to stop. Returns the per-core summaries, or an
    /// error if a core thread panicked.
    pub fn join(self) -> Result<Vec<CoreSummary>, String> {
        let mut out = Vec::new();
        for t in self.threads {
            match t.join() {
                Ok(s) => out.push(s),
                Err(_) => return Err("a core thread panicked".into()),
            }
        }
        Ok(out)
    }

    fn stop_now(&mut self) {
        self.begin_shutdown();
        for t in self.threads.drain(..) {
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

/// Everything a core thread needs to start.
struct CoreStart {
    index: usize,
    cpu: usize,
    driver: IoDriver,
    config: Config,
    listener: std::net::TcpListener,
    stop: flume::Receiver<()>,
    ready: mpsc::Sender<Result<CoreReport, String>>,
}

impl CoreStart {
    fn run<F, H>(self, make_handler: F) -> CoreSummary
    where
        F: Fn(Rc<CoreCtx>, &Config) -> Rc<H>,
        H: ConnectionHandler,
    {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: self.cpu }) {
            let _ = self
                .ready
                .send(Err(format!("cannot pin a thread to CPU {}", self.cpu)));
            return CoreSummary::default();
        }
        let entries = self.config.ring_entries;
        // The runtime type differs per driver, so each arm builds and runs
        // its own; `accept_loop` is the same generic future in both.
        match self.driver {
            IoDriver::Uring => {
                match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()
                {
                    Ok(mut rt) => rt.block_on(self.accept_loop(make_handler)),
                    Err(e) => {
                        let _ = self.ready.send(Err(format!(
                            "core {}: cannot set up io_uring: {e} (try --io epoll)",
                            self.index
                        )));
                        CoreSummary::default()
                    }
                }
            }
            IoDriver::Epoll => {
                match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .with_entries(entries)
                    .enable_timer()
                    .build()
                {
                    Ok(mut rt) => rt.block_on(self.accept_loop(make_handler)),
                    Err(e) => {
                        let _ = self.ready.send(Err(format!(
                            "core {}: cannot set up epoll: {e}",
                            self.index
                        )));
                        CoreSummary::default()
                    }
                }
            }
        }
    }

    async fn accept_loop<F, H>(self, make_handler: F) -> CoreSummary
    where
        F: Fn(Rc<CoreCtx>, &Config) -> Rc<H>,
        H: ConnectionHandler,
    {
        let ctx = Rc::new(CoreCtx {
            index: self.index,
            cpu: self.cpu,
            driver: self.driver,
            drain: LocalEvent::new(),
            deadlines: DeadlineTable::new(),
            frames: FramePool::new(DEFAULT_FREE_FRAMES),
            open_connections: Cell::new(0),
            accepted: Cell::new(0),
            shed: Cell::new(0),
            fd_exhausted: Cell::new(0),
            refused_no_fd: Cell::new(0),
            released_bytes: Cell::new(0),
        });
        let listener = match monoio::net::TcpListener::from_std(self.listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = self
                    .ready
                    .send(Err(format!("core {}: listener: {e}", self.index)));
                return CoreSummary::default();
            }
        };
        let handler = make_handler(ctx.clone(), &self.config);
        let listener_fd = listener.as_raw_fd();

        // The one cross-core message a core receives: stop. A small task
        // turns it into the core-local drain event.
        let stop = self.stop;
        let drain_ctx = ctx.clone();
        monoio::spawn(async move {
            let _ = stop.recv_async().await;
            drain_ctx.drain.fire();
            drain_ctx.deadlines.drain();
        });
        // The deadline ticker; it runs until the core stops, since requests
        // that finish during the drain still have deadlines.
        let c = &self.config;
        let tick = DeadlineTable::tick_for(&[
            c.head_timeout,
            c.body_timeout,
            c.keepalive_timeout,
            c.write_timeout,
            c.body_rate_grace,
        ]);
        let tick_ctx = ctx.clone();
        monoio::spawn(async move {
            let mut interval = monoio::time::interval(tick);
            interval.set_missed_tick_behavior(monoio::time::MissedTickBehavior::Delay);
            loop {
                let now = interval.tick().await;
                tick_ctx.deadlines.tick(now);
            }
        });

        monoio::spawn(housekeeping(ctx.clone()));

        let _ = self.ready.send(Ok(CoreReport {
            index: self.index,
            cpu: self.cpu,
            driver: self.driver,
        }));

        let max_open = self.config.max_connections_per_core;
        let mut reserve = fd_reserve::FdReserve::new();
        let fd_log = LogLimit::default();
        let mut draining = false;
        while !draining {
            // The accept is cancelled the safe way when the drain starts:
            // the cancel is submitted and the accept still awaited, so a
            // connection the kernel handed over meanwhile is served, not
            // dropped with the cancelled operation.
            let canceller = monoio::io::Canceller::new();
            let accept = listener.cancelable_accept(canceller.handle());
            let mut accept = std::pin::pin!(accept);
            let accepted = monoio::select! {
                r = &mut accept => r,
                _ = ctx.drain.wait() => {
                    draining = true;
                    let _ = canceller.cancel();
                    (&mut accept).await
                }
            };
            let admit = |stream: TcpStream| {
                ctx.accepted.set(ctx.accepted.get() + 1);
                let _ = stream.set_nodelay(true);
                let guard = OpenGuard::new(&ctx);
                if ctx.open_connections.get() > max_open {
                    ctx.shed.set(ctx.shed.get() + 1);
                    monoio::spawn(Guarded {
                        fut: handler.refuse(stream),
                        _guard: guard,
                    });
                } else {
                    monoio::spawn(Guarded {
                        fut: handler.serve(stream),
                        _guard: guard,
                    });
                }
            };
            match accepted {
                Ok((stream, _peer)) => {
                    admit(stream);
                    // One accept operation hands over one connection, and the
                    // next is only submitted on the next turn of a busy loop:
                    // 1,000 clients connecting at once would wait seconds for
                    // their first answer. Take what else the backlog holds now
                    // with plain non-blocking accepts, a bounded burst.
                    if !draining {
                        for _ in 0..ACCEPT_BURST {
                            match accept_ready(listener_fd, ctx.driver) {
                                Some(stream) => admit(stream),
                                None => break,
                            }
                        }
                    }
                }
                Err(e) if draining || e.raw_os_error() == Some(libc::ECANCELED) => {
                    let _ = e;
                }
                Err(e) if is_out_of_descriptors(&e) => {
                    // Waiting connections are answered 503 through the
                    // spare descriptor rather than left hanging in the
                    // backlog; a full burst means more wait, so go on at once.
                    ctx.fd_exhausted.set(ctx.fd_exhausted.get() + 1);
                    let refused = reserve.refuse_waiting(listener_fd, ACCEPT_BURST);
                    ctx.refused_no_fd
                        .set(ctx.refused_no_fd.get() + refused as u64);
                    if let Some(suppressed) = fd_log.admit() {
                        tracing::warn!(
                            core = ctx.index,
                            refused,
                            suppressed,
                            open_connections = ctx.open_connections.get(),
                            spare_held = reserve.is_held(),
                            "out of file descriptors ({e}): answering waiting connections \
                             503; raise the open-files limit (LimitNOFILE=, ulimit -n) or \
                             lower --max-connections-per-core"
                        );
                    }
                    if refused < ACCEPT_BURST {
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(e) if is_resource_exhaustion(&e) => {
                    // Out of memory or buffers: back off instead of spinning
                    // on the error while connections wait in the backlog.
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {}
            }
        }
        drop(listener);
        drop(reserve);

        // Drain: connections see the fired event, finish what they are
        // doing and close. Wait for them up to the shutdown timeout.
        let deadline = Instant::now() + self.config.shutdown_timeout;
        while ctx.open_connections.get() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        CoreSummary {
            index: self.index,
            accepted: ctx.accepted.get(),
            shed: ctx.shed.get(),
            cut_at_deadline: ctx.open_connections.get(),
        }
    }
}

/// Most connections taken from the backlog by plain `accept4` after each
/// accept operation completes (see the accept loop).
const ACCEPT_BURST: usize = 64;

/// Takes one connection already waiting in the listener's backlog, without
/// waiting: the listener is non-blocking (see `listener::bind`), so this
/// returns `None` at once when the backlog is empty, or on any error (the
/// next accept operation sees and handles it).
fn accept_ready(listener_fd: RawFd, driver: IoDriver) -> Option<TcpStream> {
    // Sockets for the epoll driver must be non-blocking; io_uring wants them
    // blocking (it would hand EAGAIN back for a non-blocking one instead of
    // waiting), as its own accept operation makes them.
    let flags = match driver {
        IoDriver::Uring => libc::SOCK_CLOEXEC,
        IoDriver::Epoll => libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
    };
    // SAFETY: a plain accept4 on a listening socket this core owns; null
    // address pointers are allowed.
    let fd = unsafe {
        libc::accept4(
            listener_fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    TcpStream::from_std(std_stream).ok()
}

/// Gives freed memory back to the kernel once a burst is over.
///
/// glibc keeps freed memory in its per-thread arenas; after 10,000
/// connections close, the process would keep their memory for good. Once a
/// second the core looks at how far its open connections fell since the
/// last trim and what its buffer pool released, and past 1 MiB worth it
/// calls `malloc_trim`, which returns free pages of every arena. The call
/// is CPU work of a few hundred microseconds at most, done only after such
/// a fall, never on a busy steady state.
async fn housekeeping(ctx: Rc<CoreCtx>) {
    const TRIM_AFTER_BYTES: usize = 1 << 20;
    // A rough cost of one connection's task and socket state.
    const BYTES_PER_CONNECTION: usize = 1024;
    let mut high_water = 0usize;
    let mut interval = monoio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let open = ctx.open_connections.get();
        high_water = high_water.max(open);
        let fallen = (high_water - open) * BYTES_PER_CONNECTION;
        if fallen + ctx.released_bytes.get() >= TRIM_AFTER_BYTES {
            trim_allocator();
            ctx.released_bytes.set(0);
            high_water = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_allocator() {
    // SAFETY: malloc_trim only walks and releases glibc's free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_allocator() {}

pin_project_lite::pin_project! {
    /// A connection's task: its future and the guard that counts it open.
    /// A plain struct, not an `async` block: an async block that awaits a
    /// captured future keeps two copies of it in its state, which would
    /// double what every connection costs.
    struct Guarded<F> {
        #[pin]
        fut: F,
        _guard: OpenGuard,
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().fut.poll(cx)
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenGuard(Rc<CoreCtx>);

impl OpenGuard {
    fn new(ctx: &Rc<CoreCtx>) -> Self {
        ctx.open_connections.set(ctx.open_connections.get() + 1);
        OpenGuard(ctx.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .open_connections
            .set(self.0.open_connections.get() - 1);
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The CPUs to run on: the process's allowed set (sched_getaffinity, so
/// taskset and systemd's CPUAffinity= are honoured), or a subset of it.
pub fn select_cpus(sel: &CoreSelection) -> Result<Vec<usize>, StartError> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .ok_or_else(|| StartError("cannot read the allowed CPU set".into()))?
        .into_iter()
        .map(|c| c.id)
        .collect();
    match sel {
        CoreSelection::All => Ok(allowed),
        CoreSelection::Count(n) => {
            if *n > allowed.len() {
                return Err(StartError(format!(
                    "--cores {n}: only {} CPUs are allowed ({allowed:?})",
                    allowed.len()
                )));
            }
            Ok(allowed[..*n].to_vec())
        }
        CoreSelection::List(list) => {
            if let Some(bad) = list.iter().find(|c| !allowed.contains(c)) {
                return Err(StartError(format!(
                    "--cores: CPU {bad} is not in the allowed set {allowed:?}"
                )));
            }
            Ok(list.clone())
        }
    }
}

/// Picks the io driver, with a sentence saying why.
fn choose_driver(mode: IoMode) -> Result<(IoDriver, String), StartError> {
    match mode {
        IoMode::Epoll => Ok((IoDriver::Epoll, "epoll (as configured)".into())),
        IoMode::Uring => match probe_uring() {
            Ok(()) => Ok((IoDriver::Uring, "io_uring (as configured)".into())),
            Err(why) => Err(StartError(format!(
                "--io uring: io_uring is not available here: {why}. \
                 Use --io auto to fall back to epoll."
            ))),
        },
        IoMode::Auto => match probe_uring() {
            Ok(()) => Ok((IoDriver::Uring, "io_uring".into())),
            Err(why) => Ok((
                IoDriver::Epoll,
                format!("epoll (fallback: io_uring is not available: {why})"),
            )),
        },
    }
}

/// Checks that this process may create a ring and that the kernel has the
/// operations monoio uses; says why not otherwise.
fn probe_uring() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("kernel.io_uring_disabled = 2".into());
        }
    }
    match io_uring::IoUring::new(2) {
        Ok(_) => {}
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc::ENOSYS) => "io_uring_setup is not implemented or is filtered \
                                       (old kernel, or a seccomp profile such as Docker's)"
                    .into(),
                Some(libc::EPERM) => {
                    "io_uring_setup was denied (EPERM: kernel.io_uring_disabled or a \
                     security policy)"
                        .into()
                }
                _ => format!("io_uring_setup failed: {e}"),
            })
        }
    }
    if !monoio::utils::detect_uring() {
        return Err("the kernel lacks io_uring operations that monoio needs".into());
    }
    Ok(())
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
        // `buf`; recv writes at most that many and returns how many it wrote.
        let n = unsafe {
            libc::recv(
                fd,
                spare.as_mut_ptr().cast(),
                spare.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
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

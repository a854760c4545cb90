//! One core's thread: its runtime, its accept loop (with the connection
//! limit and the descriptor reserve), and its once-a-second housekeeping.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::deadlines::DeadlineTable;
use super::heartbeat::Heartbeats;
use super::LogLimit;
use super::{fd_reserve, ConnectionHandler, Contained, CoreCtx, CoreReport, CoreSummary, IoDriver};
use crate::config::Config;

/// Everything a core thread needs to start.
pub(super) struct CoreStart {
    pub(super) index: usize,
    pub(super) cpu: usize,
    pub(super) driver: IoDriver,
    pub(super) config: Config,
    /// This core's listeners: `--listen`, then `--listen-tls` if set.
    pub(super) listeners: Vec<std::net::TcpListener>,
    pub(super) stop: flume::Receiver<()>,
    pub(super) ready: mpsc::Sender<Result<CoreReport, String>>,
    pub(super) heartbeats: std::sync::Arc<Heartbeats>,
}

impl CoreStart {
    pub(super) fn run<F, H>(self, make_handler: F) -> CoreSummary
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
        let ctx = Rc::new(CoreCtx::new(
            self.index,
            self.cpu,
            self.driver,
            Some(self.heartbeats.clone()),
        ));
        let mut listeners = Vec::new();
        for l in self.listeners {
            match monoio::net::TcpListener::from_std(l) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    let _ = self
                        .ready
                        .send(Err(format!("core {}: listener: {e}", self.index)));
                    return CoreSummary::default();
                }
            }
        }
        let handler = make_handler(ctx.clone(), &self.config);

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
        // It also shows the supervisor that this core turns its loop. Under
        // load, connection tasks tick in its stead when it is late.
        ctx.tick_every.set(tick);
        let tick_ctx = ctx.clone();
        monoio::spawn(async move {
            let mut interval = monoio::time::interval(tick);
            interval.set_missed_tick_behavior(monoio::time::MissedTickBehavior::Delay);
            loop {
                let now = interval.tick().await;
                tick_ctx.tick_deadlines(now);
            }
        });

        monoio::spawn(housekeeping(ctx.clone()));

        let _ = self.ready.send(Ok(CoreReport {
            index: self.index,
            cpu: self.cpu,
            driver: self.driver,
        }));
        // Reported: let go of the channel, so that the wait for the cores'
        // reports sees it closed if another core dies before its own.
        drop(self.ready);

        // One accept loop per listener, the first in this task; each ends
        // when the drain starts.
        let max_open = self.config.max_connections_per_core;
        let mut listeners = listeners.into_iter().enumerate();
        let (_, first) = listeners.next().expect("a core has at least one listener");
        let others: Vec<_> = listeners
            .map(|(i, l)| monoio::spawn(accept_on(ctx.clone(), handler.clone(), l, i, max_open)))
            .collect();
        accept_on(ctx.clone(), handler.clone(), first, 0, max_open).await;
        for other in others {
            other.await;
        }

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

/// Accepts on one listener until the drain starts, handing each connection
/// to the handler (or refusing it past the per-core limit), with the
/// descriptor reserve that answers connections when descriptors run out.
async fn accept_on<H: ConnectionHandler>(
    ctx: Rc<CoreCtx>,
    handler: Rc<H>,
    listener: monoio::net::TcpListener,
    listener_index: usize,
    max_open: usize,
) {
    let listener_fd = listener.as_raw_fd();
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
                monoio::spawn(Contained::new(
                    &ctx,
                    Guarded {
                        fut: handler.refuse(stream, listener_index),
                        _guard: guard,
                    },
                ));
            } else {
                monoio::spawn(Contained::new(
                    &ctx,
                    handler.serve(stream, guard, listener_index),
                ));
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
pub struct OpenGuard(Rc<CoreCtx>);

impl OpenGuard {
    pub fn new(ctx: &Rc<CoreCtx>) -> Self {
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

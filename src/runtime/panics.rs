//! What a panic costs: one connection, or else the process, never a core
//! left half alive.
//!
//! monoio does not catch a task's panic: it unwinds out of the runtime and
//! ends the core's thread. Worse, the descriptors of that core's tasks are
//! not closed: a task waiting on an operation is kept alive by it (task,
//! operation, driver and waker hold one another), so it is never dropped,
//! with either driver. Its connections hang open with nobody reading them,
//! and its listener stays in the SO_REUSEPORT group, where the kernel goes
//! on queueing a share of new connections that nobody will accept.
//!
//! So a connection's task runs inside [`Contained`]: a panic while it is
//! polled ends that connection only (its future is dropped, which closes
//! the socket and gives back what it held), is logged and counted, and the
//! core serves on, as tokio does for a task's panic. A database
//! connection's reader and writer run inside [`catch_panic`] likewise: a
//! panic there breaks that database connection (its queries fail, the
//! pool connects again), and so does one while a request queues a query
//! on it (`PgConn::encode`); one while a database connection is set up
//! fails that attempt. A panic elsewhere (the accept loop, timers, the
//! pool's own bookkeeping tasks) ends the core's thread; the supervisor (`Server::join`, told at once through
//! [`ExitNotice`]) then takes that core's listeners out of the group,
//! drains the other cores and returns an error, so that the process exits
//! 1 and its service manager starts it afresh.

use std::any::Any;
use std::future::Future;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};

use super::CoreCtx;

/// Sends the core's index to the supervisor when dropped, however the
/// core's thread ends: returning, or unwinding from a panic.
pub(super) struct ExitNotice {
    pub(super) index: usize,
    pub(super) to: mpsc::Sender<usize>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        let _ = self.to.send(self.index);
    }
}

pin_project_lite::pin_project! {
    /// A future whose panic, while it is polled, becomes its output
    /// (`Err` with the panic's message) instead of unwinding the core.
    pub struct CatchPanic<F> {
        #[pin]
        fut: F,
    }
}

/// Runs `fut`, turning a panic inside it into `Err(message)`. Unwind
/// safety: what such a future shares with its core (pools, deadline
/// tables, buffers) is built to survive the future being dropped at any
/// await (timeouts, cancelled requests), and RefCell borrows are released
/// by the unwinding; the caller drops the future after a panic.
pub fn catch_panic<F: Future>(fut: F) -> CatchPanic<F> {
    CatchPanic { fut }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(payload) => Poll::Ready(Err(panic_message(&*payload).to_owned())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task: a panic while it is polled ends this future,
    /// which the runtime then drops with the connection's socket and all
    /// it held; it is logged and counted, and the core serves on.
    pub struct Contained<F> {
        #[pin]
        task: CatchPanic<F>,
        core: Rc<CoreCtx>,
    }
}

impl<F: Future<Output = ()>> Contained<F> {
    pub fn new(core: &Rc<CoreCtx>, fut: F) -> Contained<F> {
        Contained {
            task: catch_panic(fut),
            core: core.clone(),
        }
    }
}

impl<F: Future<Output = ()>> Future for Contained<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        this.core.note_progress();
        match this.task.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Ready(Err(why)) => {
                let core = this.core;
                core.connection_panics.set(core.connection_panics.get() + 1);
                if let Some(suppressed) = core.panic_log.admit() {
                    tracing::error!(
                        core = core.index,
                        suppressed,
                        "a connection's task panicked: {why}; that connection is closed, the core serves on"
                    );
                }
                Poll::Ready(())
            }
        }
    }
}

/// One listener of a core as the supervisor knows it: its descriptor, and
/// the socket's identity (device and inode), so that a descriptor number
/// closed and given to another file meanwhile is never touched.
#[derive(Clone, Copy, Debug)]
pub(super) struct ListenerId {
    fd: RawFd,
    dev: u64,
    ino: u64,
}

/// The device and inode of what `fd` names now, if it is open.
fn identity(fd: RawFd) -> Option<(u64, u64)> {
    #![allow(unsafe_code, reason = "fstat(2) on a descriptor number")]
    // SAFETY: an all-zero `stat` is a valid value for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; a closed `fd` makes fstat fail with EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

impl ListenerId {
    pub(super) fn of(listener: &std::net::TcpListener) -> Option<ListenerId> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
        identity(fd).map(|(dev, ino)| ListenerId { fd, dev, ino })
    }

    /// Takes a dead core's listener out of its SO_REUSEPORT group, so that
    /// the kernel stops queueing connections there (those already queued
    /// move to the other listeners when `net.ipv4.tcp_migrate_req` is set,
    /// else they are reset). The descriptor stays open (a dead core's tasks
    /// are never dropped, see above) and is reclaimed when the process
    /// exits; if it was closed after all, nothing is done.
    pub(super) fn stop_listening(self) -> bool {
        #![allow(unsafe_code, reason = "shutdown(2) on a descriptor number")]
        if identity(self.fd) != Some((self.dev, self.ino)) {
            return false;
        }
        // SAFETY: a plain system call on a descriptor number. It still names
        // this very socket (checked just above): a dead core never closes
        // it, and a stalled core would have to wake and close it within the
        // microseconds between the two calls.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) == 0 }
    }
}

/// Reports panics through the log instead of straight to stderr, at most a
/// few a second in the whole process: a panic that a client can trigger
/// must not flood the journal. `RUST_BACKTRACE=1` still adds a backtrace.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let Some(suppressed) = PANIC_LOG.admit() else {
            return;
        };
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        let why = panic_message(info.payload());
        let trace = std::backtrace::Backtrace::capture();
        if trace.status() == std::backtrace::BacktraceStatus::Captured {
            tracing::error!(thread, suppressed, "panicked{at}: {why}\n{trace}");
        } else {
            tracing::error!(thread, suppressed, "panicked{at}: {why}");
        }
    }));
}

/// [`super::LogLimit`] for every thread at once: a few lines a second.
struct SharedLogLimit {
    second: AtomicU64,
    in_second: AtomicU32,
    suppressed: AtomicU64,
}

static PANIC_LOG: SharedLogLimit = SharedLogLimit {
    second: AtomicU64::new(0),
    in_second: AtomicU32::new(0),
    suppressed: AtomicU64::new(0),
};

impl SharedLogLimit {
    const PER_SECOND: u32 = 5;

    /// `Some(lines suppressed since the last one)` when a line may be
    /// logged. Threads racing at a second's turn may let a line or two more
    /// through, which does not matter here.
    fn admit(&self) -> Option<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.in_second.store(0, Ordering::Relaxed);
        }
        if self.in_second.fetch_add(1, Ordering::Relaxed) >= Self::PER_SECOND {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "a panic without a message"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_log_limit_lets_a_few_lines_a_second_through() {
        let limit = SharedLogLimit {
            second: AtomicU64::new(0),
            in_second: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        };
        let admitted = (0..100).filter(|_| limit.admit().is_some()).count();
        // 5 a second; the loop may straddle one turn of the second.
        assert!((5..=10).contains(&admitted), "{admitted}");
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let s: Box<dyn Any + Send> = Box::new("static");
        assert_eq!(panic_message(&*s), "static");
        let s: Box<dyn Any + Send> = Box::new(format!("core {}", 3));
        assert_eq!(panic_message(&*s), "core 3");
        let s: Box<dyn Any + Send> = Box::new(7u8);
        assert_eq!(panic_message(&*s), "a panic without a message");
    }

    #[test]
    fn a_panic_inside_the_future_becomes_its_output() {
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let caught = rt.block_on(catch_panic(async {
            monoio::time::sleep(std::time::Duration::ZERO).await;
            let v: Vec<u8> = Vec::new();
            v[3]
        }));
        assert!(caught.unwrap_err().contains("index out of bounds"));
        assert_eq!(rt.block_on(catch_panic(async { 7 })), Ok(7));
    }

    #[test]
    fn a_listener_stops_listening_and_a_reused_descriptor_is_left_alone() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let id = ListenerId::of(&l).unwrap();
        assert!(std::net::TcpStream::connect(addr).is_ok(), "listening");
        assert!(id.stop_listening());
        assert!(std::net::TcpStream::connect(addr).is_err(), "refused now");

        let closed = ListenerId::of(&std::net::TcpListener::bind("127.0.0.1:0").unwrap()).unwrap();
        // Most likely given the number just freed: another socket.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!closed.stop_listening(), "not the socket it was");
        assert!(std::net::TcpStream::connect(other.local_addr().unwrap()).is_ok());
    }
}

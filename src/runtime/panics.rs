//! What a panic costs: one connection, or else the process, never a core
//! left half alive.
//!
//! monoio does not catch a task's panic: it unwinds out of the runtime and
//! ends the core's thread. Worse, the descriptors that core held are not
//! closed (with io_uring a close is an operation queued on the ring that
//! dies with it): its connections hang open with nobody reading them, and
//! its listener stays in the SO_REUSEPORT group, where the kernel goes on
//! queueing a share of new connections that nobody will accept.
//!
//! So a connection's task runs inside [`Contained`]: a panic while it is
//! polled ends that connection only (its future is dropped, which closes
//! the socket and gives back what it held), is logged and counted, and the
//! core serves on, as tokio does for a task's panic. A database
//! connection's reader and writer run inside [`catch_panic`] likewise: a
//! panic there breaks that database connection (its queries fail, the
//! pool connects again). A panic elsewhere (the accept loop, a timer, the
//! pool's own tasks) ends the core's thread; the supervisor (`Server::join`, told at once through
//! [`ExitNotice`]) then takes that core's listeners out of the group,
//! drains the other cores and returns an error, so that the process exits
//! 1 and its service manager starts it afresh.

use std::any::Any;
use std::future::Future;
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
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

/// Takes a dead core's listener out of its SO_REUSEPORT group, so that the
/// kernel stops queueing connections there (those already queued move to
/// the other listeners when `net.ipv4.tcp_migrate_req` is set, else they
/// are reset). The descriptor itself stays open: it may be named by an
/// operation the dead ring never completed, and is reclaimed when the
/// process exits. Only a socket that still listens on `port` is touched:
/// the descriptor was never closed, so it is still that listener.
pub(super) fn stop_listening(fd: RawFd, port: u16) -> bool {
    #![allow(
        unsafe_code,
        reason = "borrows a descriptor the dead core never closed"
    )]
    // SAFETY: the dead core's thread never closed `fd` (see above), so it
    // is still open for the length of this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let socket = socket2::SockRef::from(&fd);
    socket.is_listener().unwrap_or(false)
        && socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() == port)
        && socket.shutdown(std::net::Shutdown::Both).is_ok()
}

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`).
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> &str {
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
    fn a_listener_stops_listening_and_other_sockets_are_left_alone() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        assert!(
            !stop_listening(client.as_raw_fd(), addr.port()),
            "not a listener"
        );
        assert!(
            !stop_listening(l.as_raw_fd(), addr.port().wrapping_add(1)),
            "another port"
        );
        assert!(
            std::net::TcpStream::connect(addr).is_ok(),
            "still listening"
        );
        assert!(stop_listening(l.as_raw_fd(), addr.port()));
        assert!(std::net::TcpStream::connect(addr).is_err(), "refused now");
    }
}

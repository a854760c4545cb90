//! A small epoll set of a core's own sockets, for readiness with no task
//! behind it (the HTTP layer's idle connections). The set itself is watched
//! through the core's event loop like any socket.

#![allow(unsafe_code, reason = "epoll_create1, epoll_ctl and epoll_wait")]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An epoll set of edge-triggered read registrations, each naming a `u64` token.
pub struct EpollSet {
    fd: OwnedFd,
}

impl EpollSet {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain epoll_create1; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EpollSet { fd })
    }

    /// Registers `fd` for good, edge-triggered: an event carrying `token`
    /// each time bytes arrive (or the peer hangs up), with no call to
    /// re-arm it. Its owner must read until a read comes back short before
    /// it relies on the next event. The registration ends when `fd`
    /// closes.
    pub fn watch(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let ctl = |op| {
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: token,
            };
            // SAFETY: epoll_ctl on descriptors the caller keeps open; `event`
            // is valid for the call's duration.
            if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // A descriptor number still registered under an old token (its
        // socket not yet released) is taken over.
        ctl(libc::EPOLL_CTL_ADD).or_else(|e| match e.raw_os_error() {
            Some(libc::EEXIST) => ctl(libc::EPOLL_CTL_MOD),
            _ => Err(e),
        })
    }

    /// Takes the events ready now, without waiting, into `buf`; returns
    /// their tokens.
    pub fn take_ready<'a>(&self, buf: &'a mut ReadyBuf) -> impl Iterator<Item = u64> + 'a {
        // SAFETY: `buf.0` is valid for `buf.0.len()` entries; a zero timeout
        // never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                buf.0.as_mut_ptr(),
                buf.0.len() as i32,
                0,
            )
        };
        let n = n.max(0) as usize;
        buf.0[..n].iter().map(|e| e.u64)
    }

    /// The set as a stream the core's event loop can wait on for
    /// readability (the set is readable while an event is ready). It owns
    /// a duplicate of the descriptor: the set stays usable on its own.
    pub fn watcher(&self) -> io::Result<monoio::net::UnixStream> {
        let dup = self.fd.try_clone()?;
        // The stream type does not matter for a readability wait; a Unix
        // stream is the one that takes an arbitrary descriptor as is.
        let std_stream = std::os::unix::net::UnixStream::from(dup);
        monoio::net::UnixStream::from_std(std_stream)
    }
}

/// Room for the events of one `take_ready` call.
pub struct ReadyBuf(Vec<libc::epoll_event>);

impl ReadyBuf {
    pub fn new(capacity: usize) -> Self {
        ReadyBuf(vec![
            libc::epoll_event { events: 0, u64: 0 };
            capacity.max(1)
        ])
    }

    pub fn capacity(&self) -> usize {
        self.0.len()
    }
}

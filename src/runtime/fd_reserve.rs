//! Answering clients when the process is out of file descriptors.
//!
//! Past RLIMIT_NOFILE (EMFILE) or the system's file table (ENFILE), accept
//! fails and connections pile up in the listen backlog, where a client
//! waits with no answer until it gives up. Each core keeps one spare
//! descriptor for this: it closes the spare, accepts one waiting
//! connection into the freed slot, answers it 503 with `Retry-After`,
//! closes it and takes the spare again. Clients learn that the server is
//! full instead of hanging.

#![allow(
    unsafe_code,
    reason = "the spare descriptor, accept4, send and recv on raw sockets"
)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The answer a connection gets when no descriptor is left for it.
const NO_DESCRIPTOR_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
    Content-Type: text/plain; charset=utf-8\r\n\
    Content-Length: 49\r\n\
    Retry-After: 1\r\n\
    Connection: close\r\n\r\n\
    503 Service Unavailable: out of file descriptors\n";

/// A core's spare descriptor.
pub struct FdReserve(Option<OwnedFd>);

impl FdReserve {
    /// Takes the spare (an eventfd: no path lookup, no side effect).
    pub fn new() -> Self {
        FdReserve(spare())
    }

    /// Answers up to `max` connections waiting in the backlog of
    /// `listener` with 503 and closes them, each through the spare's slot.
    /// Returns how many were answered.
    pub fn refuse_waiting(&mut self, listener: RawFd, max: usize) -> usize {
        let mut refused = 0;
        while refused < max {
            // Free one slot (the spare's), or go on with what the process
            // may have freed since (a connection closing).
            self.0 = None;
            // SAFETY: a non-blocking accept4 on the core's listening socket;
            // null address pointers are allowed.
            let fd = unsafe {
                libc::accept4(
                    listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            answer_and_close(conn);
            refused += 1;
            self.0 = spare();
        }
        if self.0.is_none() {
            self.0 = spare();
        }
        refused
    }

    /// Whether the spare is held (it may not be, while the process is at
    /// its limit and something else took the freed slot).
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}

fn spare() -> Option<OwnedFd> {
    // SAFETY: eventfd creates a new descriptor that we own from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    // SAFETY: a valid descriptor returned just now, owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One non-blocking send of the 503, a short drain of what the client
/// already sent (closing with unread bytes would reset the connection and
/// could destroy the answer), then close.
fn answer_and_close(conn: OwnedFd) {
    let fd = conn.as_raw_fd();
    // SAFETY: plain socket calls on a descriptor we own, with buffers valid
    // for the lengths given; MSG_DONTWAIT keeps them from blocking.
    unsafe {
        libc::send(
            fd,
            NO_DESCRIPTOR_RESPONSE.as_ptr().cast(),
            NO_DESCRIPTOR_RESPONSE.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
        libc::shutdown(fd, libc::SHUT_WR);
        let mut sink = [0u8; 2048];
        for _ in 0..4 {
            let n = libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT);
            if n <= 0 {
                break;
            }
        }
    }
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::NO_DESCRIPTOR_RESPONSE;

    #[test]
    fn the_answer_has_a_correct_content_length() {
        let text = std::str::from_utf8(NO_DESCRIPTOR_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}

//! The transport under the connection driver: a TCP socket, or an
//! in-memory pipe.
//!
//! The driver reaches its bytes only through [`Stream`], so the same driver,
//! with any [`Service`](super::Service), runs over a [`pipe`] in tests:
//! pipelining, keep-alive, 100-continue and every route are tested without
//! a socket (quinn-proto's `Pair` idea), and the real-socket tests become
//! the smaller second layer. The pipe is a value of this crate's public API
//! so that a user's own service can be tested the same way.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::tls::TlsStream;
use crate::runtime::{read_append, recv_now, send_now};

/// A connection's transport.
pub enum Stream {
    Tcp(TcpStream),
    /// HTTPS (boxed: rustls's state is large, and the other transports
    /// should not pay for it).
    Tls(Box<TlsStream>),
    Memory(PipeEnd),
}

impl Stream {
    /// Waits until bytes (or the end of the stream) can be read, holding no
    /// buffer.
    pub(super) async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable(false).await.map(drop),
            // Records read with the handshake's last flight (a client's
            // first request often is) are already here, not in the socket.
            Stream::Tls(t) if t.has_buffered_input() => Ok(()),
            Stream::Tls(t) => t.tcp().readable(false).await.map(drop),
            Stream::Memory(p) => {
                Readable(p).await;
                Ok(())
            }
        }
    }

    /// The socket to wait on in the core's epoll set, when the connection
    /// can wait there: TCP, or TLS with nothing read and not yet taken.
    pub(super) fn epoll_fd(&self) -> Option<std::os::fd::RawFd> {
        match self {
            Stream::Tcp(s) => Some(s.as_raw_fd()),
            Stream::Tls(t) if t.can_park() => Some(t.tcp().as_raw_fd()),
            _ => None,
        }
    }

    /// Reads onto the end of `buf` (which has spare capacity).
    pub(super) async fn read_append(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Tcp(s) => read_append(s, buf).await,
            Stream::Tls(t) => t.read_plain(buf).await,
            Stream::Memory(p) => {
                let n = Read(p, &mut buf).await;
                (Ok(n), buf)
            }
        }
    }

    /// A read that takes what is there now, without waiting: `Ok(None)`
    /// when nothing is.
    pub(super) fn read_now(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        match self {
            Stream::Tcp(s) => recv_now(s.as_raw_fd(), buf),
            Stream::Tls(t) => t.read_plain_now(buf),
            Stream::Memory(p) => Ok(p.take_into(buf)),
        }
    }

    /// A write of what the socket takes now, without waiting: how many
    /// bytes it took (0 when it has no room). The pipe takes everything.
    pub(super) fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => match send_now(s.as_raw_fd(), buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                r => r,
            },
            // Records are encrypted and sent by `write_all`.
            Stream::Tls(_) => Ok(0),
            Stream::Memory(p) => p.write(buf),
        }
    }

    pub(super) async fn write_all(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Tls(t) => t.write_plain(buf).await,
            Stream::Memory(p) => {
                let n = p.write(&buf);
                (n, buf)
            }
        }
    }

    /// Ends the write side (the peer reads the end of the stream).
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(t) => t.shutdown().await,
            Stream::Memory(p) => {
                p.close_write();
                Ok(())
            }
        }
    }
}

/// One direction of a pipe.
#[derive(Default)]
struct Direction {
    bytes: VecDeque<u8>,
    closed: bool,
    reader: Option<Waker>,
}

#[derive(Default)]
struct PipeState {
    to_server: Direction,
    to_client: Direction,
}

/// An in-memory connection: the server's end goes to the driver (see
/// `HttpCore::serve_stream`), the client's end stays with the test.
pub fn pipe() -> (PipeEnd, PipeEnd) {
    let state = Rc::new(RefCell::new(PipeState::default()));
    (
        PipeEnd {
            state: state.clone(),
            server: true,
        },
        PipeEnd {
            state,
            server: false,
        },
    )
}

/// One end of a [`pipe`].
pub struct PipeEnd {
    state: Rc<RefCell<PipeState>>,
    server: bool,
}

impl PipeEnd {
    fn with<T>(&self, f: impl FnOnce(&mut Direction, &mut Direction) -> T) -> T {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        if self.server {
            f(&mut st.to_server, &mut st.to_client)
        } else {
            f(&mut st.to_client, &mut st.to_server)
        }
    }

    /// Sends bytes to the other end.
    pub fn write(&self, data: &[u8]) -> io::Result<usize> {
        self.with(|_, outgoing| {
            if outgoing.closed {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            outgoing.bytes.extend(data);
            if let Some(w) = outgoing.reader.take() {
                w.wake();
            }
            Ok(data.len())
        })
    }

    /// Ends this end's writing: the other end reads the end of the stream.
    pub fn close_write(&self) {
        self.with(|_, outgoing| {
            outgoing.closed = true;
            if let Some(w) = outgoing.reader.take() {
                w.wake();
            }
        })
    }

    /// Everything that arrived so far.
    pub fn take_all(&self) -> Vec<u8> {
        self.with(|incoming, _| incoming.bytes.drain(..).collect())
    }

    /// Whether the other end closed its writing and everything was read.
    pub fn is_closed(&self) -> bool {
        self.with(|incoming, _| incoming.closed && incoming.bytes.is_empty())
    }

    /// Waits until bytes arrive or the other end closes.
    pub async fn readable(&self) {
        Readable(self).await
    }

    /// Moves what arrived into `buf`'s spare capacity: `None` when nothing
    /// did and the stream is open, `Some(0)` at its end.
    fn take_into(&self, buf: &mut BytesMut) -> Option<usize> {
        self.with(|incoming, _| {
            if incoming.bytes.is_empty() {
                return incoming.closed.then_some(0);
            }
            let room = (buf.capacity() - buf.len()).max(1);
            let n = room.min(incoming.bytes.len());
            buf.extend(incoming.bytes.drain(..n));
            Some(n)
        })
    }
}

struct Readable<'a>(&'a PipeEnd);

impl Future for Readable<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.with(|incoming, _| {
            if !incoming.bytes.is_empty() || incoming.closed {
                Poll::Ready(())
            } else {
                incoming.reader = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

struct Read<'a>(&'a PipeEnd, &'a mut BytesMut);

impl Future for Read<'_> {
    type Output = usize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
        let this = &mut *self;
        match this.0.take_into(this.1) {
            Some(n) => Poll::Ready(n),
            None => {
                this.0
                    .with(|incoming, _| incoming.reader = Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

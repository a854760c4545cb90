//! The connection's reader and writer tasks: the only code that touches its
//! socket. The writer sends whatever requests are queued in one write; the
//! reader feeds what arrives to the pipeline and hands out completions.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf};
use monoio::net::{TcpStream, UnixStream};
use ringside_wire::pg::frontend;

use std::os::fd::RawFd;

use super::tls::SharedTls;
use super::PgConn;
use crate::runtime::{read_append, send_now};

pub(super) enum Reader {
    Tcp(OwnedReadHalf<TcpStream>),
    Unix(OwnedReadHalf<UnixStream>),
    /// TLS: ciphertext is read into `cipher` and decrypted there, its
    /// plaintext appended to the caller's buffer.
    Tls {
        half: OwnedReadHalf<TcpStream>,
        session: SharedTls,
        cipher: BytesMut,
        closed: bool,
    },
}

pub(super) enum Writer {
    Tcp(OwnedWriteHalf<TcpStream>),
    Unix(OwnedWriteHalf<UnixStream>),
    Tls {
        half: OwnedWriteHalf<TcpStream>,
        session: SharedTls,
        cipher: BytesMut,
    },
}

/// Ciphertext taken per read: several records. One 16 KB record per read
/// (a read op and a wake each) cost a tenth of the server's CPU per
/// `/orders` over TLS, measured.
const TLS_READ_ROOM: usize = 64 * 1024;

impl Reader {
    /// Appends what arrives to `buf` (which must have spare capacity).
    pub(super) async fn read(&mut self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Reader::Tcp(r) => read_append(r, buf).await,
            Reader::Unix(r) => read_append(r, buf).await,
            Reader::Tls {
                half,
                session,
                cipher,
                closed,
            } => loop {
                // Complete records already here (read with the handshake's
                // end, or behind the last record taken) come first.
                let start = buf.len();
                if !cipher.is_empty() {
                    match session.borrow_mut().receive(cipher, &mut buf) {
                        Ok(open) => *closed |= !open,
                        Err(e) => return (Err(e), buf),
                    }
                }
                if buf.len() > start {
                    return (Ok(buf.len() - start), buf);
                }
                if *closed {
                    return (Ok(0), buf);
                }
                // What is left is the start of a record: it stays, and the
                // read goes on behind it.
                if cipher.capacity() - cipher.len() < TLS_READ_ROOM / 4 {
                    cipher.reserve(TLS_READ_ROOM);
                }
                let (res, c) = read_append(half, std::mem::take(cipher)).await;
                *cipher = c;
                match res {
                    Ok(0) => return (Ok(0), buf),
                    Ok(_) => {}
                    Err(e) => return (Err(e), buf),
                }
            },
        }
    }
}

impl Writer {
    pub(super) async fn write_all(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        match self {
            Writer::Tcp(w) => w.write_all(buf).await,
            Writer::Unix(w) => w.write_all(buf).await,
            Writer::Tls {
                half,
                session,
                cipher,
            } => {
                let sealed = match seal(session, cipher, &buf) {
                    Ok(sealed) => sealed,
                    Err(e) => return (Err(e), buf),
                };
                let (res, c) = half.write_all(sealed).await;
                *cipher = c;
                (res.map(|_| buf.len()), buf)
            }
        }
    }

    /// Sends all of `out` (encrypted first over TLS): a plain non-blocking
    /// send, the ring for what the socket did not take. The socket almost
    /// always has room, and this spares the ring a send op whose completion
    /// would wake the runtime once more per batch.
    async fn send(&mut self, fd: RawFd, out: BytesMut) -> (io::Result<()>, BytesMut) {
        match self {
            Writer::Tcp(w) => send_rest(fd, w, out).await,
            Writer::Unix(w) => send_rest(fd, w, out).await,
            Writer::Tls {
                half,
                session,
                cipher,
            } => {
                let sealed = match seal(session, cipher, &out) {
                    Ok(sealed) => sealed,
                    Err(e) => return (Err(e), out),
                };
                let (res, c) = send_rest(fd, half, sealed).await;
                *cipher = c;
                (res, out)
            }
        }
    }
}

/// `plain` encrypted into the connection's cipher buffer, taken out for
/// the write (the caller puts it back).
fn seal(session: &SharedTls, cipher: &mut BytesMut, plain: &[u8]) -> io::Result<BytesMut> {
    cipher.clear();
    session.borrow_mut().seal(plain, cipher)?;
    Ok(std::mem::take(cipher))
}

/// A plain non-blocking send, then the ring for the rest.
async fn send_rest<W: AsyncWriteRent>(
    fd: RawFd,
    writer: &mut W,
    mut buf: BytesMut,
) -> (io::Result<()>, BytesMut) {
    match send_now(fd, &buf) {
        Ok(n) if n == buf.len() => (Ok(()), buf),
        Ok(n) => {
            buf.advance(n);
            let (res, b) = writer.write_all(buf).await;
            (res.map(drop), b)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            let (res, b) = writer.write_all(buf).await;
            (res.map(drop), b)
        }
        Err(e) => (Err(e), buf),
    }
}

/// Waits until there is something to write (or the connection broke).
struct HasWork<'a>(&'a PgConn);

impl Future for HasWork<'_> {
    type Output = bool;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        if self.0.is_broken() {
            return Poll::Ready(false);
        }
        if !self.0.wbuf.borrow().is_empty() {
            return Poll::Ready(true);
        }
        *self.0.writer_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Sends whatever is queued, all of it in one write, until the connection breaks.
pub(super) async fn write_loop(conn: Rc<PgConn>, mut writer: Writer) {
    let mut spare = BytesMut::with_capacity(4096);
    while HasWork(&conn).await {
        // Statements batched since the last write end with one Sync.
        conn.close_batch();
        let out = std::mem::replace(&mut *conn.wbuf.borrow_mut(), spare);
        let len = out.len() as u64;
        conn.taken_bytes.set(conn.taken_bytes.get() + len);
        conn.unsent.set(0);
        // (A round trip costs one io_uring_enter instead of two.)
        let (res, mut out) = writer.send(conn.fd, out).await;
        if let Err(e) = res {
            conn.break_with(format!("write failed: {e}"));
            break;
        }
        conn.written_bytes.set(conn.written_bytes.get() + len);
        for w in conn.write_waiters.borrow_mut().drain(..) {
            w.wake();
        }
        out.clear();
        // Keep a modest buffer; a large COPY batch is not kept around.
        spare = if out.capacity() > 256 << 10 {
            BytesMut::with_capacity(4096)
        } else {
            out
        };
    }
    // Dropping the writer half; the reader half keeps the socket open
    // until it stops too.
    let mut buf = BytesMut::new();
    frontend::terminate(&mut buf);
    let _ = writer.write_all(buf).await;
}

/// Reads responses: the pipeline frames them and completes their requests.
/// Room a read is given at least, and how much the read buffer grows by.
/// Growing by 128 KiB (it was 32) lets one read take several pipelined
/// pages: each read is an op and a wake, and at 32 KiB they were a seventh
/// of the server's CPU per `/orders`, measured. The least room stays small:
/// at 16 KiB a buffer pinned by small rows (TechEmpower `/db`) was given up
/// twice as often, and `/db` cost 20 % more CPU per request, measured.
/// A core has few database connections, so this is a few MiB at most.
const READ_ROOM: usize = 4096;
const READ_GROWTH: usize = 128 << 10;

/// Makes room in the read buffer for the next read. Rows handed out are
/// views of the buffer they were read into (no copy), so a buffer can be
/// reused in place only once their handlers dropped them. Two buffers take
/// turns: when one is full and still pinned by rows, reading goes on in the
/// other, whose rows are long gone by then; a third is allocated only if
/// both are still held.
fn make_read_room(rbuf: &mut BytesMut, spare: &mut BytesMut) {
    if rbuf.try_reclaim(READ_ROOM) {
        return;
    }
    let need = rbuf.len() + READ_ROOM;
    spare.clear();
    if !spare.try_reclaim(need) {
        // Doubling: a large message arriving in many reads is copied along
        // a logarithmic number of times.
        *spare = BytesMut::with_capacity((2 * need).max(READ_GROWTH));
    }
    // The start of a message not yet complete moves along.
    spare.extend_from_slice(rbuf);
    rbuf.clear();
    std::mem::swap(rbuf, spare);
}

pub(super) async fn read_loop(conn: Rc<PgConn>, mut reader: Reader, mut rbuf: BytesMut) {
    let mut spare = BytesMut::new();
    loop {
        if conn.is_poisoned() {
            return;
        }
        let received = conn.pipeline.borrow_mut().receive(&mut rbuf);
        conn.deliver();
        if let Err(broken) = received {
            conn.break_with(broken.0);
            return;
        }
        if conn.is_broken() {
            return;
        }
        if rbuf.capacity() - rbuf.len() < READ_ROOM {
            make_read_room(&mut rbuf, &mut spare);
        }
        let (res, b) = reader.read(rbuf).await;
        rbuf = b;
        match res {
            Ok(0) => {
                conn.break_with("the server closed the connection".into());
                return;
            }
            Ok(_) => {}
            Err(e) => {
                conn.break_with(format!("read failed: {e}"));
                return;
            }
        }
    }
}

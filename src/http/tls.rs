//! An HTTPS connection: rustls's unbuffered connection (a sans-I/O state
//! machine) driven over the core's socket.
//!
//! The unbuffered API leaves the I/O buffers to us: ciphertext is read into
//! a buffer borrowed from the core's pool and handed to rustls, and each
//! record's plaintext is copied into the connection's read buffer, where
//! the HTTP parser sees it as it would a plain socket's bytes. (rustls 0.23
//! still decrypts each record into a vector of its own before handing it
//! over; in-place decryption is announced for this API.)
//! Responses are encrypted from the connection's write buffer into a second
//! borrowed buffer and sent. Both go back to the pool as soon as they are
//! empty, so an idle HTTPS connection holds no record buffer, only rustls's
//! connection state (keys and the state machine).
//!
//! [`TlsStream::advance`] never waits: it runs the state machine over what
//! has been read and queues what must be sent. The async parts (sending,
//! reading) are the caller's, always sending what is queued before waiting
//! for the peer, which is all the handshake needs.

use std::io;
use std::mem;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;

use monoio::time::Instant;

use super::io::Shared;
use crate::runtime::deadlines::{DeadlineKey, DeadlineTable};
use crate::runtime::{read_append, recv_now, send_now};

/// Room asked for per read of ciphertext: one full record (16 KiB of
/// plaintext plus its header and tag) fits.
const READ_ROOM: usize = 16 * 1024 + 256;
/// Room per record added to a plaintext's length when encrypting it.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// What [`TlsStream::advance`] reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// More ciphertext is needed from the peer.
    NeedInput,
    /// Handshake complete (and, for a read, plaintext was produced).
    Ready,
    /// The peer closed (close_notify): no more plaintext will come.
    Closed,
}

pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed; no capacity once empty.
    incoming: BytesMut,
    /// Ciphertext to send; no capacity once sent.
    outgoing: BytesMut,
    shared: Rc<Shared>,
    /// The peer sent close_notify: reads see the end.
    read_closed: bool,
    /// rustls holds decrypted application data not taken yet (the
    /// handshake stopped at it: a request sent with the client's Finished).
    plaintext_pending: bool,
    handshake_done: bool,
    /// The last read of ciphertext filled its room: more may be in the
    /// socket, with no new edge-triggered event to say so.
    socket_may_hold_more: bool,
}

impl TlsStream {
    pub(super) fn new(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        shared: Rc<Shared>,
    ) -> Result<TlsStream, rustls::Error> {
        Ok(TlsStream {
            tcp,
            conn: UnbufferedServerConnection::new(config)?,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            shared,
            read_closed: false,
            plaintext_pending: false,
            handshake_done: false,
            socket_may_hold_more: false,
        })
    }

    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether input already read waits to be taken: ciphertext not yet
    /// processed, or plaintext rustls decrypted with the handshake's end.
    pub(super) fn has_buffered_input(&self) -> bool {
        !self.incoming.is_empty() || self.plaintext_pending
    }

    /// Whether the connection can wait for readability alone: no part of a
    /// record read and nothing left to send.
    pub(super) fn can_park(&self) -> bool {
        !self.has_buffered_input()
            && self.outgoing.is_empty()
            && !self.read_closed
            && !self.socket_may_hold_more
    }

    /// Runs the state machine over the ciphertext read so far. Plaintext
    /// goes onto the end of `plain` (none is taken without it: during the
    /// handshake, requests that follow it stay for the first read). What
    /// must be sent is queued in `outgoing` for [`Self::transmit`]. On an
    /// error, the alert rustls made for it is queued too.
    pub(super) fn advance(
        &mut self,
        mut plain: Option<&mut BytesMut>,
    ) -> Result<Progress, rustls::Error> {
        let mut produced = false;
        loop {
            let Self {
                conn,
                incoming,
                outgoing,
                read_closed,
                plaintext_pending,
                handshake_done,
                ..
            } = self;
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut incoming[..]);
            let step: Result<Option<Progress>, rustls::Error> = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    *handshake_done = true;
                    match plain.as_deref_mut() {
                        None => {
                            *plaintext_pending = true;
                            Ok(Some(Progress::Ready))
                        }
                        Some(out) => {
                            *plaintext_pending = false;
                            let mut failed = None;
                            while let Some(record) = traffic.next_record() {
                                match record {
                                    Ok(r) => {
                                        discard += r.discard;
                                        out.extend_from_slice(r.payload);
                                        produced = true;
                                    }
                                    Err(e) => {
                                        failed = Some(e);
                                        break;
                                    }
                                }
                            }
                            failed.map_or(Ok(None), Err)
                        }
                    }
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let mut room = 4096;
                    loop {
                        let len = outgoing.len();
                        outgoing.resize(len + room, 0);
                        match encode.encode(&mut outgoing[len..]) {
                            Ok(n) => {
                                outgoing.truncate(len + n);
                                break Ok(None);
                            }
                            Err(EncodeError::InsufficientSize(s)) => {
                                outgoing.truncate(len);
                                room = s.required_size;
                            }
                            Err(e) => {
                                outgoing.truncate(len);
                                break Err(rustls::Error::General(e.to_string()));
                            }
                        }
                    }
                }
                // What was encoded is sent by `transmit` before any wait
                // for the peer, which is all the protocol asks.
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Progress::NeedInput)),
                Ok(ConnectionState::WriteTraffic(_)) => {
                    *handshake_done = true;
                    Ok(Some(match (&plain, produced) {
                        (None, _) | (Some(_), true) => Progress::Ready,
                        (Some(_), false) => Progress::NeedInput,
                    }))
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                    *read_closed = true;
                    Ok(Some(Progress::Closed))
                }
                // Early data is not accepted (max_early_data_size is 0).
                Ok(_) => Err(rustls::Error::General("unexpected TLS state".into())),
            };
            incoming.advance(discard);
            match step {
                Ok(None) => continue,
                Ok(Some(progress)) => {
                    self.release_incoming_if_empty();
                    return Ok(if produced && progress == Progress::Closed {
                        Progress::Ready
                    } else {
                        progress
                    });
                }
                Err(e) => {
                    self.queue_alert();
                    return Err(e);
                }
            }
        }
    }

    /// After an error rustls keeps the alert it made; this encodes it.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    let len = self.outgoing.len();
                    self.outgoing.resize(len + 512, 0);
                    let n = encode.encode(&mut self.outgoing[len..]).unwrap_or(0);
                    self.outgoing.truncate(len + n);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => return,
            }
        }
    }

    /// Encrypts `data` into `outgoing` (records of at most 16 KiB).
    pub(super) fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_traffic(|w, out| w.encrypt(data, out), data.len())
    }

    /// Queues a close_notify alert.
    pub(super) fn queue_close_notify(&mut self) -> io::Result<()> {
        self.write_traffic(|w, out| w.queue_close_notify(out), 0)
    }

    fn write_traffic(
        &mut self,
        mut write: impl FnMut(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
        plaintext_len: usize,
    ) -> io::Result<()> {
        if self.outgoing.capacity() == 0 {
            self.outgoing = self.shared.buffers.take();
        }
        let records = plaintext_len.div_ceil(MAX_FRAGMENT).max(1);
        let mut room = plaintext_len + records * RECORD_OVERHEAD;
        // A few turns at most: queued handshake messages (a key update)
        // come out before the state that encrypts.
        for _ in 0..8 {
            // No ciphertext is passed: records still to be read stay where
            // they are, for the next read.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => loop {
                    let len = self.outgoing.len();
                    self.outgoing.resize(len + room, 0);
                    match write(&mut w, &mut self.outgoing[len..]) {
                        Ok(n) => {
                            self.outgoing.truncate(len + n);
                            return Ok(());
                        }
                        Err(EncryptError::InsufficientSize(s)) => {
                            self.outgoing.truncate(len);
                            room = s.required_size;
                        }
                        Err(e) => {
                            self.outgoing.truncate(len);
                            return Err(io::Error::other(e.to_string()));
                        }
                    }
                },
                ConnectionState::EncodeTlsData(mut encode) => {
                    let len = self.outgoing.len();
                    self.outgoing.resize(len + 4096, 0);
                    let n = encode
                        .encode(&mut self.outgoing[len..])
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    self.outgoing.truncate(len + n);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::PeerClosed => self.read_closed = true,
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS not writable",
                    ))
                }
            }
        }
        Err(io::Error::other("TLS state did not allow writing"))
    }

    /// Sends what is queued: a plain send first, the ring for the rest.
    pub(super) async fn transmit(&mut self) -> io::Result<()> {
        if self.outgoing.is_empty() {
            self.release_outgoing();
            return Ok(());
        }
        let sent = send_now(self.tcp.as_raw_fd(), &self.outgoing).or_else(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
        self.outgoing.advance(sent);
        if !self.outgoing.is_empty() {
            let buf = mem::take(&mut self.outgoing);
            let (res, buf) = self.tcp.write_all(buf).await;
            self.outgoing = buf;
            res?;
        }
        self.outgoing.clear();
        self.release_outgoing();
        Ok(())
    }

    /// Reads ciphertext through the ring; `Ok(0)` at the end of the stream.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        self.reserve_incoming();
        let room = self.incoming.capacity() - self.incoming.len();
        let buf = mem::take(&mut self.incoming);
        let (res, buf) = read_append(&mut self.tcp, buf).await;
        self.incoming = buf;
        self.socket_may_hold_more = matches!(res, Ok(n) if n == room);
        res
    }

    /// Reads the ciphertext that is there now; `Ok(None)` when none is.
    pub(super) fn fill_now(&mut self) -> io::Result<Option<usize>> {
        self.reserve_incoming();
        let room = self.incoming.capacity() - self.incoming.len();
        let res = recv_now(self.tcp.as_raw_fd(), &mut self.incoming);
        self.socket_may_hold_more = matches!(res, Ok(Some(n)) if n == room);
        self.release_incoming_if_empty();
        res
    }

    /// Reads plaintext onto the end of `plain`; `Ok(0)` at the end.
    pub(super) async fn read_plain(
        &mut self,
        mut plain: BytesMut,
    ) -> (io::Result<usize>, BytesMut) {
        let start = plain.len();
        loop {
            if self.read_closed && plain.len() == start {
                return (Ok(0), plain);
            }
            let progress = self.advance(Some(&mut plain));
            let sent = self.transmit().await;
            match progress {
                Err(e) => return (Err(tls_error(e)), plain),
                Ok(_) if plain.len() > start => return (sent.map(|()| plain.len() - start), plain),
                Ok(Progress::Closed) => return (Ok(0), plain),
                Ok(_) => {}
            }
            if let Err(e) = sent {
                return (Err(e), plain);
            }
            match self.fill().await {
                Ok(0) => return (Ok(0), plain),
                Ok(_) => {}
                Err(e) => return (Err(e), plain),
            }
        }
    }

    /// Takes the plaintext that can be had without waiting; `Ok(None)`
    /// when none can.
    pub(super) fn read_plain_now(&mut self, plain: &mut BytesMut) -> io::Result<Option<usize>> {
        let start = plain.len();
        loop {
            if self.read_closed {
                return Ok(Some(plain.len() - start));
            }
            match self.advance(Some(plain)).map_err(tls_error)? {
                _ if plain.len() > start => return Ok(Some(plain.len() - start)),
                Progress::Closed => return Ok(Some(0)),
                _ => {}
            }
            match self.fill_now()? {
                None => return Ok(None),
                Some(0) => return Ok(Some(0)),
                Some(_) => {}
            }
        }
    }

    /// Encrypts and sends all of `buf`.
    pub(super) async fn write_plain(&mut self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
        if let Err(e) = self.encrypt(&buf) {
            return (Err(e), buf);
        }
        let res = self.transmit().await;
        (res.map(|()| buf.len()), buf)
    }

    /// Sends close_notify, then shuts the socket's write side.
    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        if self.handshake_done {
            let _ = self.queue_close_notify();
            self.transmit().await?;
        }
        self.tcp.shutdown().await
    }

    fn reserve_incoming(&mut self) {
        if self.incoming.capacity() == 0 {
            self.incoming = self.shared.buffers.take();
        }
        if self.incoming.capacity() - self.incoming.len() < READ_ROOM {
            self.incoming.reserve(READ_ROOM);
        }
    }

    fn release_incoming_if_empty(&mut self) {
        if self.incoming.is_empty() && self.incoming.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.incoming));
        }
    }

    fn release_outgoing(&mut self) {
        if self.outgoing.is_empty() && self.outgoing.capacity() != 0 {
            self.shared.buffers.put(mem::take(&mut self.outgoing));
        }
    }
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        self.incoming.clear();
        self.outgoing.clear();
        self.release_incoming_if_empty();
        self.release_outgoing();
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// How a handshake that did not complete ended.
#[derive(Debug)]
pub(super) enum HandshakeEnd {
    TimedOut,
    /// The peer closed or reset the connection.
    Closed,
    /// A protocol error: the alert for it was sent (if the socket took it).
    Failed(rustls::Error),
}

/// Completes the handshake by `deadline` (one slot of the core's deadline
/// table, as every other wait of a connection).
pub(super) async fn handshake(
    tls: &mut TlsStream,
    table: &DeadlineTable,
    key: DeadlineKey,
    deadline: Instant,
) -> Result<(), HandshakeEnd> {
    loop {
        let progress = tls.advance(None);
        let sent = monoio::select! {
            r = tls.transmit() => r.map_err(|_| HandshakeEnd::Closed),
            _ = table.wait(key, deadline, false) => Err(HandshakeEnd::TimedOut),
        };
        match progress {
            Err(e) => return Err(HandshakeEnd::Failed(e)),
            Ok(Progress::Closed) => return Err(HandshakeEnd::Closed),
            Ok(Progress::Ready) => return sent,
            Ok(Progress::NeedInput) => sent?,
        }
        monoio::select! {
            r = tls.tcp.readable(false) => r.map_err(|_| HandshakeEnd::Closed)?,
            _ = table.wait(key, deadline, false) => return Err(HandshakeEnd::TimedOut),
        }
        match tls.fill_now() {
            Ok(Some(0)) | Err(_) => return Err(HandshakeEnd::Closed),
            Ok(_) => {}
        }
    }
}

impl TlsStream {
    /// Whether the handshake resumed an earlier session.
    pub(super) fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }
}

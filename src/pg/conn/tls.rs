//! PostgreSQL over TLS: the SSLRequest exchange (or TLS from the first byte
//! with `sslnegotiation=direct`), the handshake under libpq's `sslmode`
//! rules, and the channel-binding data SCRAM-SHA-256-PLUS needs.
//!
//! The connection's reader and writer tasks share one rustls client
//! connection (`SharedTls`); each borrows it only for the synchronous
//! decrypt or encrypt step, never across an await. It is rustls's
//! unbuffered (sans-I/O) connection, as on the HTTPS side: records are
//! decrypted in place in the reader's buffer and their plaintext copied
//! once, into the pipeline's. The buffered connection read ciphertext into
//! a deframer buffer of its own, 4 KiB at a time, growing it with zero-fill
//! and shrinking it each time it emptied, then copied each record into a
//! vector before ours: copies that were two thirds of what TLS added to
//! ringside's CPU per `/orders` request, measured.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::UnbufferedClientConnection;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};

use crate::pg::config::{PgConfig, SslMode};
use crate::pg::QueryError;
use crate::runtime::read_append;

/// The request code of SSLRequest (PostgreSQL's protocol, 1234.5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Where Debian and most distributions keep the system's CA bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Room for a record's header, padding and tag around its plaintext.
const RECORD_OVERHEAD: usize = 64;
/// Largest plaintext per record.
const MAX_FRAGMENT: usize = 16 * 1024;

/// A TLS session shared by a connection's reader and writer tasks.
pub(crate) struct TlsSession {
    conn: UnbufferedClientConnection,
    /// Records the reader made (replies rustls owes the server after the
    /// handshake, or the alert for an error) for the writer to send before
    /// its own next bytes.
    pending_out: Vec<u8>,
}

pub(crate) type SharedTls = Rc<RefCell<TlsSession>>;

/// The result of negotiating TLS on a new connection.
pub(crate) struct Negotiated {
    pub(crate) session: SharedTls,
    /// Ciphertext read past the handshake's end (the server's session
    /// tickets, say): where the reader's buffer starts.
    pub(crate) leftover: BytesMut,
    /// `tls-server-end-point` channel-binding data: the hash of the
    /// server's certificate (None if its hash cannot be determined).
    pub(crate) server_end_point: Option<Vec<u8>>,
}

fn unavailable(cfg: &PgConfig, what: impl std::fmt::Display) -> QueryError {
    QueryError::Unavailable(format!("connecting to {cfg}: {what}"))
}

/// Negotiates TLS on a new TCP connection as `cfg.tls` says: `Ok(None)`
/// when the connection stays plain (`disable`, or `prefer` and the server
/// refused). Errors say what failed: the server refused TLS while it was
/// required, its certificate is not trusted, it names another host, or
/// our client certificate was refused.
pub(crate) async fn negotiate(
    stream: &mut TcpStream,
    cfg: &PgConfig,
    host: &str,
) -> Result<Option<Negotiated>, QueryError> {
    let tls = &cfg.tls;
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    let config = cached_client_config(cfg).map_err(|e| unavailable(cfg, e))?;
    if !tls.direct {
        let (res, _) = stream.write_all(SSL_REQUEST.to_vec()).await;
        res.map_err(|e| unavailable(cfg, e))?;
        // Exactly one byte: anything the server sent behind it would be
        // plaintext smuggled in front of the handshake (CVE-2021-23222).
        let (res, answer) = read_append(stream, BytesMut::with_capacity(1)).await;
        match res {
            Ok(1) => {}
            Ok(_) => {
                return Err(unavailable(
                    cfg,
                    "the server closed the connection at the SSLRequest",
                ))
            }
            Err(e) => return Err(unavailable(cfg, e)),
        }
        match answer[0] {
            b'S' => {}
            b'N' if tls.mode == SslMode::Prefer => return Ok(None),
            b'N' => {
                return Err(unavailable(
                    cfg,
                    format!(
                        "the server refused SSL, and sslmode={} requires it",
                        mode_name(tls.mode)
                    ),
                ))
            }
            other => {
                return Err(unavailable(
                    cfg,
                    format!("unexpected answer {other:#04x} to the SSLRequest"),
                ))
            }
        }
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| unavailable(cfg, format!("{host} is not a name TLS can check: {e}")))?;
    let mut conn =
        UnbufferedClientConnection::new(config, name).map_err(|e| unavailable(cfg, e))?;
    let leftover = handshake(stream, &mut conn)
        .await
        .map_err(|e| unavailable(cfg, describe(e, tls.mode)))?;
    if tls.direct && conn.alpn_protocol() != Some(b"postgresql") {
        return Err(unavailable(cfg, "the server did not agree to ALPN `postgresql` (sslnegotiation=direct needs PostgreSQL 17 or later)"));
    }
    let server_end_point = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls_server_end_point(c));
    Ok(Some(Negotiated {
        session: Rc::new(RefCell::new(TlsSession {
            conn,
            pending_out: Vec::new(),
        })),
        leftover,
        server_end_point,
    }))
}

/// Why a handshake failed.
enum HandshakeError {
    Io(io::Error),
    Tls(rustls::Error),
}

/// Runs the handshake; returns the ciphertext read past its end.
async fn handshake(
    stream: &mut TcpStream,
    conn: &mut UnbufferedClientConnection,
) -> Result<BytesMut, HandshakeError> {
    let mut incoming = BytesMut::with_capacity(16 * 1024 + 256);
    let mut outgoing = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process_tls_records(&mut incoming[..]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                // Send the alert rustls made for it, then give up.
                let mut alert = Vec::new();
                encode_alert(conn, &mut alert);
                if !alert.is_empty() {
                    let _ = stream.write_all(alert).await;
                }
                return Err(HandshakeError::Tls(e));
            }
        };
        let mut need_input = false;
        let mut done = false;
        match state {
            ConnectionState::EncodeTlsData(mut encode) => {
                encode_into(&mut outgoing, |out| encode.encode(out))
                    .map_err(|e| HandshakeError::Io(io::Error::other(e)))?;
            }
            ConnectionState::TransmitTlsData(transmit) => {
                let (res, buf) = stream.write_all(std::mem::take(&mut outgoing)).await;
                res.map_err(HandshakeError::Io)?;
                outgoing = buf;
                outgoing.clear();
                transmit.done();
            }
            ConnectionState::BlockedHandshake => need_input = true,
            // Application data or nothing to read: the handshake is over.
            ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_) => done = true,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(HandshakeError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the TLS handshake",
                )))
            }
            _ => {
                return Err(HandshakeError::Io(io::Error::other(
                    "unexpected TLS state in the handshake",
                )))
            }
        }
        incoming.advance(discard);
        if done {
            if !outgoing.is_empty() {
                let (res, _) = stream.write_all(outgoing).await;
                res.map_err(HandshakeError::Io)?;
            }
            return Ok(incoming);
        }
        if need_input {
            incoming.reserve(16 * 1024 + 256);
            let (res, buf) = read_append(stream, incoming).await;
            incoming = buf;
            match res {
                Ok(0) => {
                    return Err(HandshakeError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection during the TLS handshake",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
        }
    }
}

/// Appends what `encode` writes to `out`, with as much room as it asks.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), String> {
    let mut room = 4096;
    loop {
        let len = out.len();
        out.resize(len + room, 0);
        match encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(s)) => {
                out.truncate(len);
                room = s.required_size;
            }
            Err(e) => {
                out.truncate(len);
                return Err(e.to_string());
            }
        }
    }
}

/// After an error rustls keeps the alert it made; this encodes it.
fn encode_alert(conn: &mut UnbufferedClientConnection, out: &mut Vec<u8>) {
    for _ in 0..4 {
        let UnbufferedStatus { state, .. } = conn.process_tls_records(&mut []);
        match state {
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                let _ = encode_into(out, |buf| encode.encode(buf));
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return,
        }
    }
}

fn describe(e: HandshakeError, mode: SslMode) -> String {
    match e {
        HandshakeError::Io(e) => format!("TLS handshake: {e}"),
        HandshakeError::Tls(rustls::Error::InvalidCertificate(c)) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "the server's certificate does not name this host (sslmode=verify-full)".into()
            }
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not trusted: no chain to a certificate in sslrootcert (sslmode={})",
                mode_name(mode)
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the server's certificate has expired".into()
            }
            other => format!("the server's certificate was rejected: {other:?}"),
        },
        HandshakeError::Tls(rustls::Error::AlertReceived(alert)) => format!(
            "the server ended the TLS handshake ({alert:?}){}",
            match alert {
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::AccessDenied =>
                    ": it refused our client certificate (sslcert/sslkey)",
                _ => "",
            }
        ),
        HandshakeError::Tls(e) => format!("TLS handshake: {e}"),
    }
}

fn mode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// The client configuration for `cfg.tls`, made once per process: it
/// reads certificate files, which must not happen on a core's event loop,
/// so [`preload`] makes it at start-up and cores only look it up.
fn cached_client_config(cfg: &PgConfig) -> Result<Arc<ClientConfig>, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Cache = Mutex<HashMap<crate::pg::config::PgTls, Result<Arc<ClientConfig>, String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(cfg.tls.clone())
        .or_insert_with(|| client_config(cfg).map(Arc::new))
        .clone()
}

/// Loads the TLS files of `cfg` (start-up, not on a core): a file that does
/// not load fails the start with its reason.
pub fn preload(cfg: &PgConfig) -> Result<(), String> {
    if cfg.tls.mode == SslMode::Disable || cfg.socket_path().is_some() {
        return Ok(());
    }
    cached_client_config(cfg).map(drop)
}

/// The rustls client configuration for `cfg.tls`: what is checked of the
/// server's certificate follows libpq's `sslmode`.
fn client_config(cfg: &PgConfig) -> Result<ClientConfig, String> {
    let tls = &cfg.tls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = if tls.root_cert_is_system {
        Some(load_roots(std::path::Path::new(SYSTEM_ROOTS))?)
    } else {
        tls.root_cert.as_deref().map(load_roots).transpose()?
    };
    // libpq: `require` with a root certificate file present checks the
    // chain as `verify-ca` does.
    let verifier: Arc<dyn ServerCertVerifier> = match (tls.mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?
        }
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )),
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err("sslmode=verify-ca/verify-full needs sslrootcert".into())
        }
        _ => Arc::new(Unchecked(provider.clone())),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    if tls.direct {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    Ok(config)
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        ));
    }
    Ok(roots)
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked (webpki checks the chain first, then the name).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encryption without
/// authentication of the server, as libpq does. The handshake's signature
/// is still checked against the certificate the server sent.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// RFC 5929's `tls-server-end-point`: the certificate hashed with its
/// signature's hash function, SHA-256 when that is MD5 or SHA-1. `None`
/// when the signature has no such hash (Ed25519; PostgreSQL cannot bind
/// those either).
fn tls_server_end_point(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let oid = signature_algorithm_oid(cert)?;
    // sha384WithRSAEncryption, ecdsa-with-SHA384; the SHA-512 ones.
    const SHA384: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
    ];
    const SHA512: [&[u8]; 2] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
    ];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let algorithm = if SHA384.contains(&oid) {
        &ring::digest::SHA384
    } else if SHA512.contains(&oid) {
        &ring::digest::SHA512
    } else if oid == ED25519 {
        return None;
    } else {
        &ring::digest::SHA256
    };
    Some(
        ring::digest::digest(algorithm, cert.as_ref())
            .as_ref()
            .to_vec(),
    )
}

/// The OID of a certificate's outer signatureAlgorithm: Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, ... }.
fn signature_algorithm_oid<'a>(cert: &'a CertificateDer<'_>) -> Option<&'a [u8]> {
    let der: &[u8] = cert.as_ref();
    let (tag, body, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_element(body)?;
    let (tag, alg, _) = der_element(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows it).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

impl TlsSession {
    /// Decrypts the complete records at the front of `ciphertext`, in
    /// place, appending their plaintext to `plain`; what is left of
    /// `ciphertext` is the start of a record still to come. Replies rustls
    /// owes the server go to `pending_out`. `Ok(false)` once the server
    /// closed the TLS session.
    pub(super) fn receive(
        &mut self,
        ciphertext: &mut BytesMut,
        plain: &mut BytesMut,
    ) -> io::Result<bool> {
        loop {
            let Self { conn, pending_out } = self;
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(&mut ciphertext[..]);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    encode_alert(conn, pending_out);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            };
            let mut settled = None;
            match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record =
                            record.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(pending_out, |out| encode.encode(out)).map_err(io::Error::other)?;
                }
                // Sent by the writer ahead of its next bytes.
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                // Nothing complete is left to read.
                ConnectionState::WriteTraffic(_) | ConnectionState::BlockedHandshake => {
                    settled = Some(true);
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => settled = Some(false),
                _ => return Err(io::Error::other("unexpected TLS state")),
            }
            ciphertext.advance(discard);
            if let Some(open) = settled {
                return Ok(open);
            }
        }
    }

    /// Encrypts `plain` onto the end of `out` (after any pending replies).
    pub(super) fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> io::Result<()> {
        out.extend_from_slice(&self.pending_out);
        self.pending_out.clear();
        let records = plain.len().div_ceil(MAX_FRAGMENT).max(1);
        let mut room = plain.len() + records * RECORD_OVERHEAD;
        // A few turns at most: queued handshake messages (a key update)
        // come out before the state that encrypts.
        for _ in 0..8 {
            // No ciphertext is passed: records the reader has not taken yet
            // stay in its buffer.
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))? {
                ConnectionState::WriteTraffic(mut traffic) => loop {
                    let len = out.len();
                    out.resize(len + room, 0);
                    match traffic.encrypt(plain, &mut out[len..]) {
                        Ok(n) => {
                            out.truncate(len + n);
                            return Ok(());
                        }
                        Err(EncryptError::InsufficientSize(s)) => {
                            out.truncate(len);
                            room = s.required_size;
                        }
                        Err(e) => {
                            out.truncate(len);
                            return Err(io::Error::other(e.to_string()));
                        }
                    }
                },
                ConnectionState::EncodeTlsData(mut encode) => {
                    let mut extra = Vec::new();
                    encode_into(&mut extra, |buf| encode.encode(buf)).map_err(io::Error::other)?;
                    out.extend_from_slice(&extra);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS session not writable",
                    ))
                }
            }
        }
        Err(io::Error::other("TLS state did not allow writing"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_signature_algorithm() {
        // A certificate made by rcgen-like shape: SEQUENCE { SEQUENCE {..},
        // SEQUENCE { OID ecdsa-with-SHA256 }, BIT STRING }.
        let cert = [
            0x30, 0x12, // Certificate
            0x30, 0x02, 0x05, 0x00, // tbsCertificate (a NULL inside)
            0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, // alg
            0x03, 0x02, 0x00, 0x00, // signature
        ];
        let der = CertificateDer::from(cert.to_vec());
        assert_eq!(
            signature_algorithm_oid(&der),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
        );
        assert_eq!(tls_server_end_point(&der).unwrap().len(), 32, "SHA-256");
        assert!(der_element(&[0x30, 0x05, 0x00]).is_none(), "truncated");
    }
}

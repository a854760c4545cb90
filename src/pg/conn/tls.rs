//! PostgreSQL over TLS: the SSLRequest exchange (or TLS from the first byte
//! with `sslnegotiation=direct`), the handshake under libpq's `sslmode`
//! rules, and the channel-binding data SCRAM-SHA-256-PLUS needs.
//!
//! The connection's reader and writer tasks share one rustls client
//! connection (`SharedTls`); each borrows it only for the synchronous
//! decrypt or encrypt step, never across an await. A database connection
//! is one of a few per core, so rustls's own buffering is used here (the
//! HTTPS side drives the unbuffered API for its thousands of connections).

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
};

use crate::pg::config::{PgConfig, SslMode};
use crate::pg::QueryError;
use crate::runtime::read_append;

/// The request code of SSLRequest (PostgreSQL's protocol, 1234.5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// Where Debian and most distributions keep the system's CA bundle.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A TLS session shared by a connection's reader and writer tasks.
pub(crate) struct TlsSession {
    pub(super) conn: ClientConnection,
    /// Records the reader made (replies rustls owes the server after the
    /// handshake) for the writer to send before its own next bytes.
    pub(super) pending_out: Vec<u8>,
}

pub(crate) type SharedTls = Rc<RefCell<TlsSession>>;

/// The result of negotiating TLS on a new connection.
pub(crate) struct Negotiated {
    pub(crate) session: SharedTls,
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
    let mut conn = ClientConnection::new(config, name).map_err(|e| unavailable(cfg, e))?;
    conn.set_buffer_limit(None);
    handshake(stream, &mut conn)
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
        server_end_point,
    }))
}

/// Why a handshake failed.
enum HandshakeError {
    Io(io::Error),
    Tls(rustls::Error),
}

async fn handshake(
    stream: &mut TcpStream,
    conn: &mut ClientConnection,
) -> Result<(), HandshakeError> {
    let mut input = BytesMut::with_capacity(16 * 1024 + 256);
    loop {
        if conn.wants_write() {
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).map_err(HandshakeError::Io)?;
            }
            let (res, _) = stream.write_all(out).await;
            res.map_err(HandshakeError::Io)?;
        }
        if !conn.is_handshaking() {
            return Ok(());
        }
        input.clear();
        let (res, buf) = read_append(stream, input).await;
        input = buf;
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
        let mut slice = &input[..];
        while !slice.is_empty() {
            conn.read_tls(&mut slice).map_err(HandshakeError::Io)?;
            if let Err(e) = conn.process_new_packets() {
                // Send the alert rustls made for it, then give up.
                let mut out = Vec::new();
                let _ = conn.write_tls(&mut out);
                let _ = stream.write_all(out).await;
                return Err(HandshakeError::Tls(e));
            }
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
    /// Feeds ciphertext and appends the plaintext it yields to `plain`.
    /// Replies rustls owes the server go to `pending_out`. `Ok(false)` once
    /// the server closed the TLS session.
    pub(super) fn receive(
        &mut self,
        mut ciphertext: &[u8],
        plain: &mut BytesMut,
    ) -> io::Result<bool> {
        let mut open = true;
        while !ciphertext.is_empty() {
            self.conn.read_tls(&mut ciphertext)?;
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            // Copied once from rustls's buffer, without zero-filling room
            // for it first.
            let mut left = state.plaintext_bytes_to_read();
            let mut reader = self.conn.reader();
            while left > 0 {
                let chunk = reader.fill_buf()?;
                let got = chunk.len().min(left);
                if got == 0 {
                    break;
                }
                plain.extend_from_slice(&chunk[..got]);
                reader.consume(got);
                left -= got;
            }
            if state.peer_has_closed() {
                open = false;
            }
        }
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.pending_out)?;
        }
        Ok(open)
    }

    /// Encrypts `plain` onto the end of `out` (after any pending replies).
    pub(super) fn seal(&mut self, plain: &[u8], out: &mut BytesMut) -> io::Result<()> {
        out.extend_from_slice(&self.pending_out);
        self.pending_out.clear();
        self.conn.writer().write_all(plain)?;
        let mut sink = bytes::BufMut::writer(&mut *out);
        while self.conn.wants_write() {
            self.conn.write_tls(&mut sink)?;
        }
        Ok(())
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

//! HTTPS settings: the certificate and key (PEM), rustls configurations
//! made per core, and their reload on `SIGHUP`.
//!
//! The certificate lives in one [`CertStore`], loaded by the main thread at
//! start and again on each reload; a file that does not load (unreadable,
//! no certificate, no key, a key that does not match) is refused with an
//! error that says which, and the certificate in use stays. Each core
//! builds its own rustls `ServerConfig` from it ([`CoreTls`]), with its own
//! session cache, so a handshake touches nothing another core uses: the
//! only shared read is the store's generation number (an atomic load per
//! handshake), and the store's lock is taken once per core after a reload.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::Config;

/// Sessions each core remembers for resumption (a few hundred bytes each).
const SESSIONS_PER_CORE: usize = 4096;

/// The certificate in use, shared by the cores and replaced by a reload.
pub struct CertStore {
    cert_path: String,
    key_path: String,
    provider: Arc<CryptoProvider>,
    current: Mutex<Arc<CertifiedKey>>,
    generation: AtomicU64,
}

impl CertStore {
    /// Loads the certificate chain and key; the error says what is wrong.
    pub fn load(cert_path: &str, key_path: &str) -> Result<Arc<CertStore>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = load_certified_key(&provider, cert_path, key_path)?;
        Ok(Arc::new(CertStore {
            cert_path: cert_path.to_string(),
            key_path: key_path.to_string(),
            provider,
            current: Mutex::new(key),
            generation: AtomicU64::new(1),
        }))
    }

    /// The store for a configuration that asks for HTTPS; `None` without.
    pub fn from_config(config: &Config) -> Result<Option<Arc<CertStore>>, String> {
        match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => CertStore::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// Reads both files again. On success the cores take the new
    /// certificate at their next handshake; on failure nothing changes.
    pub fn reload(&self) -> Result<(), String> {
        let key = load_certified_key(&self.provider, &self.cert_path, &self.key_path)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = key;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// What the certificate names (its subject), for the logs.
    pub fn describe(&self) -> String {
        let key = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        format!(
            "{} ({} certificate(s) in the chain)",
            self.cert_path,
            key.cert.len()
        )
    }

    fn snapshot(&self) -> (u64, Arc<CertifiedKey>) {
        let generation = self.generation.load(Ordering::Acquire);
        let key = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (generation, key)
    }
}

fn load_certified_key(
    provider: &CryptoProvider,
    cert_path: &str,
    key_path: &str,
) -> Result<Arc<CertifiedKey>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read the certificate {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate {cert_path} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_path} holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("cannot read a private key from {key_path}: {e}"))?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("the private key {key_path} is not usable: {e}"))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        format!("the key {key_path} does not match the certificate {cert_path}: {e}")
    })?;
    // The end-entity certificate must parse, or no name would ever match.
    webpki::EndEntityCert::try_from(&certified.cert[0])
        .map_err(|e| format!("the certificate {cert_path} cannot be used: {e}"))?;
    Ok(Arc::new(certified))
}

/// Serves the one certificate to clients that name no server or a name it
/// is valid for; a client asking for another name gets a handshake failure
/// (an alert) rather than a certificate it would reject anyway.
#[derive(Debug)]
struct CertForItsNames(Arc<CertifiedKey>);

impl ResolvesServerCert for CertForItsNames {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.0.clone());
        };
        let name = ServerName::try_from(name).ok()?;
        let cert = webpki::EndEntityCert::try_from(&self.0.cert[0]).ok()?;
        cert.verify_is_valid_for_subject_name(&name).ok()?;
        Some(self.0.clone())
    }
}

/// Per-core counters of the TLS listener, read by `/metrics`.
#[derive(Default)]
pub struct TlsCounters {
    pub handshakes: Cell<u64>,
    pub resumed: Cell<u64>,
    pub failed: Cell<u64>,
    pub timed_out: Cell<u64>,
    /// Connections closed at once because the core had
    /// `--max-tls-handshakes-per-core` handshakes in progress.
    pub refused: Cell<u64>,
}

/// A core's TLS state.
pub struct CoreTls {
    store: Arc<CertStore>,
    sessions: Arc<ServerSessionMemoryCache>,
    config: RefCell<(u64, Arc<ServerConfig>)>,
    pub handshake_timeout: Duration,
    max_handshakes: usize,
    in_progress: Cell<usize>,
}

impl CoreTls {
    pub fn new(store: Arc<CertStore>, config: &Config) -> Result<CoreTls, String> {
        let sessions = ServerSessionMemoryCache::new(SESSIONS_PER_CORE);
        let (generation, key) = store.snapshot();
        let server_config = build_config(&store.provider, key, sessions.clone())?;
        Ok(CoreTls {
            store,
            sessions,
            config: RefCell::new((generation, server_config)),
            handshake_timeout: config.tls_handshake_timeout,
            max_handshakes: config.max_tls_handshakes_per_core,
            in_progress: Cell::new(0),
        })
    }

    /// The configuration for a new connection: rebuilt after a reload, with
    /// the core's session cache kept (sessions survive a certificate change).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let generation = self.store.generation.load(Ordering::Acquire);
        let mut current = self.config.borrow_mut();
        if current.0 != generation {
            let (generation, key) = self.store.snapshot();
            match build_config(&self.store.provider, key, self.sessions.clone()) {
                Ok(config) => *current = (generation, config),
                // Cannot happen with a key that loaded; keep the old one.
                Err(e) => tracing::error!("TLS configuration after reload: {e}"),
            }
        }
        current.1.clone()
    }

    /// A place among the core's handshakes in progress, or `None` when
    /// they are at the limit.
    pub fn begin_handshake(&self) -> Option<HandshakeSlot<'_>> {
        if self.in_progress.get() >= self.max_handshakes {
            return None;
        }
        self.in_progress.set(self.in_progress.get() + 1);
        Some(HandshakeSlot(self))
    }

    pub fn handshakes_in_progress(&self) -> usize {
        self.in_progress.get()
    }
}

/// Holds one of the core's handshake places until dropped.
pub struct HandshakeSlot<'a>(&'a CoreTls);

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.0.in_progress.set(self.0.in_progress.get() - 1);
    }
}

fn build_config(
    provider: &Arc<CryptoProvider>,
    key: Arc<CertifiedKey>,
    sessions: Arc<ServerSessionMemoryCache>,
) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertForItsNames(key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Resumption from the core's own cache: TLS 1.2 session ids and TLS 1.3
    // stateful tickets. (Stateless tickets would need a key shared by the
    // cores; a client that lands on another core does a full handshake.)
    config.session_storage = sessions;
    Ok(Arc::new(config))
}

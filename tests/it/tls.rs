//! HTTPS: the real server with certificates the test makes (rcgen), spoken
//! to over TCP by rustls's client and by raw bytes (bad input).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, HandshakeKind, RootCertStore, StreamOwned};

use crate::harness::{get, Conn, Server};

type TlsConn = Conn<StreamOwned<ClientConnection, TcpStream>>;

/// A CA and a server certificate it signed, written as PEM files.
struct Pki {
    ca: CertificateDer<'static>,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn make_pki(ca_name: &str, ed25519: bool) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf_key = if ed25519 {
        KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap()
    } else {
        KeyPair::generate().unwrap()
    };
    let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca: ca_cert.der().clone(),
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    }
}

/// A directory of its own for a test's files (a key among them), removed
/// when the test is done with it.
struct ScratchDir(PathBuf);

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir(name: &str) -> ScratchDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ringside-tls-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    ScratchDir(dir)
}

/// Writes the PEM files; returns (cert path, key path).
fn write_pki(dir: &std::path::Path, pki: &Pki) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    // Written aside and renamed, as a deploy would: a reload never sees
    // half a file.
    std::fs::write(dir.join("cert.tmp"), &pki.cert_pem).unwrap();
    std::fs::write(dir.join("key.tmp"), &pki.key_pem).unwrap();
    std::fs::rename(dir.join("cert.tmp"), &cert).unwrap();
    std::fs::rename(dir.join("key.tmp"), &key).unwrap();
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

fn client_config(cas: &[&CertificateDer<'static>], tls12_only: bool) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add((*ca).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .unwrap();
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Connects and completes the handshake.
fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &str,
) -> Result<TlsConn, rustls::Error> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), server_name).unwrap();
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            return Err(
                match e.into_inner().map(|i| i.downcast::<rustls::Error>()) {
                    Some(Ok(tls)) => *tls,
                    Some(Err(other)) => rustls::Error::General(other.to_string()),
                    None => rustls::Error::General("connection closed in the handshake".into()),
                },
            );
        }
    }
    Ok(Conn::from_parts(stream, Vec::new()))
}

fn tls_server(pki: &Pki, extra: &[&str]) -> (Server, ScratchDir) {
    let dir = scratch_dir("srv");
    let (cert, key) = write_pki(&dir, pki);
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    args.extend_from_slice(extra);
    (Server::start("auto", &args), dir)
}

trait MetricsOverTls {
    fn connect_metrics_over_tls(&self, config: &Arc<ClientConfig>) -> String;
}

impl MetricsOverTls for Server {
    /// `/metrics`, fetched over a new TLS connection.
    fn connect_metrics_over_tls(&self, config: &Arc<ClientConfig>) -> String {
        let mut c = tls_connect(self.addr, config, "localhost").unwrap();
        c.roundtrip(get("/metrics")).text()
    }
}

/// Sum over cores of a `/metrics` counter, scraped over plain HTTP or TLS.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn https_serves_keepalive_pipelined_and_chunked_requests() {
    let pki = make_pki("ringside test CA", false);
    let (srv, _dir) = tls_server(&pki, &[]);
    assert!(
        srv.start_line.contains("listening on https://"),
        "{}",
        srv.start_line
    );
    for tls12_only in [false, true] {
        let config = client_config(&[&pki.ca], tls12_only);
        let mut c = tls_connect(srv.addr, &config, "localhost").expect("handshake");
        assert_eq!(c.s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        // Keep-alive.
        for _ in 0..3 {
            let r = c.roundtrip(get("/plaintext"));
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), "Hello, World!");
        }
        // Idle, it parks like a plain connection (no task), and wakes.
        thread::sleep(Duration::from_millis(300));
        let text = srv.connect_metrics_over_tls(&config);
        assert!(
            metric(&text, "ringside_idle_parked_connections") >= 1,
            "{text}"
        );
        assert_eq!(c.roundtrip(get("/plaintext")).text(), "Hello, World!");
        // Pipelining: five requests in one write, five answers in order.
        c.send(get("/plaintext").repeat(5));
        for _ in 0..5 {
            assert_eq!(c.read_response().text(), "Hello, World!");
        }
        // A chunked upload of 1 MiB (many TLS records), echoed back.
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        let chunk = "0123456789abcdef".repeat(1024);
        for _ in 0..64 {
            c.send(format!("{:x}\r\n{chunk}\r\n", chunk.len()));
        }
        c.send("0\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.body.len(), 64 * chunk.len());
        // An Ed25519 certificate works the same (see the next test for
        // reloads); this one is ECDSA P-256.
    }
    // Counted in /metrics, which is itself served over HTTPS here.
    let config = client_config(&[&pki.ca], false);
    let mut c = tls_connect(srv.addr, &config, "localhost").unwrap();
    let text = c.roundtrip(get("/metrics")).text();
    assert!(
        metric(&text, "ringside_tls_handshakes_total") >= 3,
        "{text}"
    );
}

/// The first request sent with the handshake's last flight (as wrk and
/// browsers do) is answered at once, not when more bytes come.
#[test]
fn a_request_sent_with_the_clients_finished_is_answered() {
    let pki = make_pki("ringside test CA", false);
    let (srv, _dir) = tls_server(&pki, &[]);
    let config = client_config(&[&pki.ca], false);
    for _ in 0..5 {
        let tcp = TcpStream::connect(srv.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let name = ServerName::try_from("localhost".to_string()).unwrap();
        let mut conn = ClientConnection::new(config.clone(), name).unwrap();
        // Written before the handshake: rustls sends it right behind the
        // client's Finished, in the same write.
        conn.writer()
            .write_all(get("/plaintext").as_bytes())
            .unwrap();
        let mut c: TlsConn = Conn::from_parts(StreamOwned::new(conn, tcp), Vec::new());
        let start = Instant::now();
        let r = c.read_response();
        assert_eq!(r.text(), "Hello, World!");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "answered late: {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn https_listener_beside_plain_http_with_an_ed25519_key() {
    let pki = make_pki("ringside test CA", true);
    let (srv, _dir) = tls_server(&pki, &["--listen-tls", "127.0.0.1:0"]);
    let tls_addr = srv
        .tls_addr
        .expect("the start line names the HTTPS address");
    assert_eq!(srv.connect().roundtrip(get("/plaintext")).status, 200);
    let config = client_config(&[&pki.ca], false);
    let mut c = tls_connect(tls_addr, &config, "localhost").expect("handshake");
    assert_eq!(c.roundtrip(get("/plaintext")).text(), "Hello, World!");
    // A client asking for the IP address by name gets the same certificate.
    assert!(tls_connect(tls_addr, &config, "127.0.0.1").is_ok());
}

#[test]
fn sessions_resume_on_the_same_core() {
    let pki = make_pki("ringside test CA", false);
    let (srv, _dir) = tls_server(&pki, &["--cores", "1"]);
    let config = client_config(&[&pki.ca], false);
    let mut first = tls_connect(srv.addr, &config, "localhost").unwrap();
    assert_eq!(first.roundtrip(get("/plaintext")).status, 200);
    assert_eq!(first.s.conn.handshake_kind(), Some(HandshakeKind::Full));
    let mut second = tls_connect(srv.addr, &config, "localhost").unwrap();
    assert_eq!(second.roundtrip(get("/plaintext")).status, 200);
    assert_eq!(second.s.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    let text = second.roundtrip(get("/metrics")).text();
    assert!(metric(&text, "ringside_tls_resumed_total") >= 1, "{text}");
}

/// Reads what the server sends until it closes; panics if it does not
/// close within `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            // A socket with a receive timeout answers EINTR, not a restart.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("not closed after {:?}: {e}", start.elapsed()),
        }
    }
}

/// A TLS 1.0 ClientHello: no supported_versions extension, version 3.1.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x14, 0x00, 0x2f]); // two suites
    body.extend_from_slice(&[0x01, 0x00]); // no compression
    let mut hs = vec![0x01, 0, 0, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0, hs.len() as u8];
    record.extend_from_slice(&hs);
    record
}

#[test]
fn bad_tls_input_gets_an_alert_or_a_close_and_others_are_served() {
    let pki = make_pki("ringside test CA", false);
    let (srv, _dir) = tls_server(&pki, &["--tls-handshake-timeout", "1s"]);
    let config = client_config(&[&pki.ca], false);
    // Plain HTTP on the TLS port: no HTTP answer, a close (after an alert
    // record, if any).
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(get("/plaintext").as_bytes()).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(
        got.is_empty() || got[0] == 0x15,
        "an alert or nothing: {got:?}"
    );
    // Garbage.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&[0xffu8; 300]).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    // TLS 1.0: refused with a fatal alert (rustls says handshake_failure:
    // nothing in the offer is acceptable), or a close.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&tls10_client_hello()).unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(
        got.is_empty() || (got[0] == 0x15 && got.len() >= 7),
        "{got:?}"
    );
    if !got.is_empty() {
        assert_eq!(got[5], 2, "a fatal alert: {got:?}");
    }
    // A truncated handshake, and a client that sends nothing: closed once
    // the handshake timeout (1 s) passes.
    let mut half = TcpStream::connect(srv.addr).unwrap();
    half.write_all(&tls10_client_hello()[..20]).unwrap();
    let mut silent = TcpStream::connect(srv.addr).unwrap();
    let start = Instant::now();
    read_until_closed(&mut half, Duration::from_secs(10));
    read_until_closed(&mut silent, Duration::from_secs(10));
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "not before the timeout: {waited:?}"
    );
    // A name the certificate is not for: the server refuses (the client
    // sees the server's alert, not a certificate it rejected itself).
    match tls_connect(srv.addr, &config, "other.example") {
        Err(rustls::Error::AlertReceived(_)) => {}
        other => panic!("expected the server's alert, got {:?}", other.err()),
    }
    // Meanwhile everyone else is served.
    let mut c = tls_connect(srv.addr, &config, "localhost").unwrap();
    assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
    let text = c.roundtrip(get("/metrics")).text();
    assert!(
        metric(&text, "ringside_tls_handshake_timeouts_total") >= 2,
        "{text}"
    );
    assert!(
        metric(&text, "ringside_tls_handshake_failures_total") >= 4,
        "{text}"
    );
}

#[test]
fn handshakes_past_the_per_core_limit_are_closed() {
    let pki = make_pki("ringside test CA", false);
    let (srv, _dir) = tls_server(
        &pki,
        &[
            "--cores",
            "1",
            "--max-tls-handshakes-per-core",
            "2",
            "--tls-handshake-timeout",
            "3s",
        ],
    );
    // Two clients that never finish hold both places...
    let _a = TcpStream::connect(srv.addr).unwrap();
    let _b = TcpStream::connect(srv.addr).unwrap();
    thread::sleep(Duration::from_millis(200));
    // ...so a third is closed at once,
    let mut c = TcpStream::connect(srv.addr).unwrap();
    let start = Instant::now();
    read_until_closed(&mut c, Duration::from_secs(2));
    assert!(start.elapsed() < Duration::from_secs(2));
    // and once they time out, handshakes go through again.
    thread::sleep(Duration::from_secs(4));
    let config = client_config(&[&pki.ca], false);
    let mut ok = tls_connect(srv.addr, &config, "localhost").unwrap();
    let text = ok.roundtrip(get("/metrics")).text();
    assert!(metric(&text, "ringside_tls_refused_total") >= 1, "{text}");
}

#[test]
fn sighup_reloads_the_certificate_without_failing_a_request() {
    let old = make_pki("old CA", false);
    let new = make_pki("new CA", false);
    let (srv, dir) = tls_server(&old, &[]);
    let trusts_old = client_config(&[&old.ca], false);
    let trusts_new = client_config(&[&new.ca], false);
    let trusts_both = client_config(&[&old.ca, &new.ca], false);
    let mut kept = tls_connect(srv.addr, &trusts_old, "localhost").unwrap();
    assert_eq!(kept.roundtrip(get("/plaintext")).status, 200);

    // New connections and requests run throughout the reload.
    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, done, failed, addr) = (stop.clone(), done.clone(), failed.clone(), srv.addr);
        let config = trusts_both.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tls_connect(addr, &config, "localhost") {
                    Ok(mut c) => {
                        for _ in 0..5 {
                            if c.roundtrip(get("/plaintext")).status == 200 {
                                done.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    write_pki(&dir, &new);
    srv.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv
        .log_lines()
        .iter()
        .any(|l| l.contains("TLS certificate reloaded"))
    {
        assert!(Instant::now() < deadline, "no reload logged");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during the reload"
    );
    assert!(done.load(Ordering::Relaxed) > 0);

    // New handshakes present the new certificate (a client with no session
    // to resume sees it); the connection made before the reload goes on.
    assert!(tls_connect(srv.addr, &trusts_new, "localhost").is_ok());
    let fresh_trusts_old = client_config(&[&old.ca], false);
    assert!(tls_connect(srv.addr, &fresh_trusts_old, "localhost").is_err());
    assert_eq!(kept.roundtrip(get("/plaintext")).status, 200);

    // A bad new key is refused; the certificate in use stays.
    std::fs::write(
        dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    srv.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log_lines().iter().any(|l| l.contains("not reloaded")) {
        assert!(Instant::now() < deadline, "no refusal logged");
        thread::sleep(Duration::from_millis(50));
    }
    let mut c = tls_connect(srv.addr, &trusts_new, "localhost").unwrap();
    assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
}

#[test]
fn start_fails_clearly_on_a_bad_certificate() {
    let pki = make_pki("ringside test CA", false);
    let other = make_pki("other CA", false);
    let dir = scratch_dir("bad");
    let (cert, _) = write_pki(&dir, &pki);
    let other_key = dir.join("other-key.pem");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
    ]);
    cmd.arg(&other_key);
    let err = Server::spawn(cmd).err().expect("refused");
    assert!(err.contains("does not match"), "{err}");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        "/nonexistent.pem",
        "--tls-key",
        &cert,
    ]);
    let err = Server::spawn(cmd).err().expect("refused");
    assert!(err.contains("/nonexistent.pem"), "{err}");
}

/// The article's application over HTTPS: a chunked upload of 10,000
/// addresses (all rows or none), and `/orders`, through rustls's client and
/// through curl.
#[test]
fn the_application_over_https_upload_and_orders() {
    use crate::app::{contacts_csv, Db};
    let db = Db::new(crate::pgfix::shared(), 300);
    let pki = make_pki("ringside test CA", false);
    let dir = scratch_dir("app");
    let (cert, key) = write_pki(&dir, &pki);
    let srv = db.server(&["--tls-cert", &cert, "--tls-key", &key]);
    let config = client_config(&[&pki.ca], false);
    let mut c = tls_connect(srv.addr, &config, "localhost").unwrap();
    c.send("POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in contacts_csv(10_000, None).chunks(7_000) {
        c.send(format!("{:x}\r\n", piece.len()));
        c.send(piece);
        c.send("\r\n");
    }
    c.send("0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.text().contains("\"rows\":10000"), "{}", r.text());
    assert_eq!(db.count("contacts"), 10_000);
    // A bad record: nothing added.
    let mut c = tls_connect(srv.addr, &config, "localhost").unwrap();
    let bad = contacts_csv(5_000, Some(2_500));
    c.send(format!(
        "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        bad.len()
    ));
    c.send_lossy(&bad);
    assert_eq!(c.read_response().status, 400);
    assert_eq!(db.count("contacts"), 10_000);
    // /orders, keep-alive, through curl with the CA.
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &pki.ca_pem).unwrap();
    let url = format!("https://localhost:{}/orders", srv.addr.port());
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "60", "--cacert"])
        .arg(&ca_path)
        .args([&url, &url])
        .output()
        .expect("curl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        body.matches("<tr><td>").count(),
        400,
        "two pages of 200 orders"
    );
}

//! Starts the real server and speaks raw HTTP/1.1 to it.

#![allow(unsafe_code, reason = "signals to the server under test")]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Generates one test per io driver, so every behaviour is checked on
/// io_uring and on epoll.
#[macro_export]
macro_rules! both_drivers {
    ($(fn $name:ident($server_args:expr, $srv:ident) $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                fn run(io: &str) {
                    let $srv = $crate::harness::Server::start(io, $server_args);
                    $body
                }
                #[test]
                fn uring() { run("uring") }
                #[test]
                fn epoll() { run("epoll") }
            }
        )*
    };
}

/// Sets its flag when dropped. Made first inside a `thread::scope` whose
/// threads loop until the flag: if the test panics before it sets the flag
/// itself, the scope's threads still stop, and the test fails with its
/// message instead of waiting on them forever.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The `--listen-tls` address, when the server has one.
    pub tls_addr: Option<SocketAddr>,
    /// The server's stderr lines, as they arrive.
    log: mpsc::Receiver<String>,
    pub start_line: String,
}

impl Server {
    /// Starts `ringside serve` on 127.0.0.1:0 with the given io driver and
    /// extra flags, and waits for its "listening on" line.
    pub fn start(io: &str, extra: &[&str]) -> Server {
        Self::start_with_env(io, extra, &[])
    }

    /// `start` with environment variables (DATABASE_URL, ...).
    pub fn start_with_env(io: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--io", io]);
        cmd.args(extra);
        cmd.envs(env.iter().copied());
        Self::spawn(cmd).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// The sum over cores of a counter in /metrics.
    pub fn counter(&self, name: &str) -> u64 {
        let page = self.connect().roundtrip(get("/metrics")).text();
        page.lines()
            .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{')))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The server's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Spawns a prepared command and waits for its address; `Err` carries
    /// its stderr if it exits instead.
    pub fn spawn(mut cmd: Command) -> Result<Server, String> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for var in ["RINGSIDE_LISTEN", "RINGSIDE_IO", "RINGSIDE_CORES"] {
            cmd.env_remove(var);
        }
        // The database comes only from what a test sets explicitly, never
        // from the test runner's environment (scripts/test exports PG*).
        for var in [
            "DATABASE_URL",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
        ] {
            if !cmd.get_envs().any(|(k, _)| k == var) {
                cmd.env_remove(var);
            }
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let first = line
                        .split("listening on http://")
                        .nth(1)
                        .or_else(|| line.split("listening on https://").nth(1));
                    if let Some(rest) = first {
                        let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        let tls_addr = line
                            .split(" and https://")
                            .nth(1)
                            .map(|r| r.split_whitespace().next().unwrap().parse().unwrap());
                        return Ok(Server {
                            child: Some(child),
                            addr,
                            tls_addr,
                            log: rx,
                            start_line: line,
                        });
                    }
                    seen.push(line);
                }
                Err(e) => {
                    // Say which: it exited, or it was still silent when
                    // the wait ended (then it is killed here).
                    let why = match e {
                        mpsc::RecvTimeoutError::Timeout => "no \"listening\" line within 20 s",
                        mpsc::RecvTimeoutError::Disconnected => "exited before listening",
                    };
                    let _ = child.kill();
                    let status = child.wait().ok();
                    return Err(format!(
                        "{why}: exit {status:?}, stderr: {}",
                        seen.join("\n")
                    ));
                }
            }
        }
    }

    pub fn connect(&self) -> Conn {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn { s, buf: Vec::new() }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A failing test shows how its server ended and what it logged
            // (captured with the test's output): a server that died says
            // why here.
            if thread::panicking() {
                let status = c.try_wait().ok().flatten();
                let lines: Vec<String> = self.log.try_iter().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "server {}: {}; its last log lines:\n{}",
                    self.addr,
                    status.map_or("still running".to_string(), |s| format!("exited, {s}")),
                    tail.join("\n")
                );
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A client connection that keeps unread bytes between responses: over
/// TCP, or over any other byte stream (a TLS client's).
pub struct Conn<S = TcpStream> {
    pub s: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    /// A connection with bytes already read from it.
    pub fn from_parts(s: S, buf: Vec<u8>) -> Conn<S> {
        Conn { s, buf }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.s.write_all(bytes.as_ref()).expect("send");
    }

    /// Sends, tolerating a server that already closed (for tests that send
    /// a large body after an early error).
    pub fn send_lossy(&mut self, bytes: impl AsRef<[u8]>) {
        let _ = self.s.write_all(bytes.as_ref());
    }

    /// One read, again while it is interrupted: a socket with a receive
    /// timeout answers EINTR instead of restarting the call when the thread
    /// is interrupted (signal(7)), as `read_exact` and `write_all` retry.
    pub fn read_some(&mut self, into: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.s.read(into) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match self.read_some(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads one response; `head_only` for answers to HEAD.
    pub fn read_response_to(&mut self, head_only: bool) -> Response {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf).expect("response head parses") {
                httparse::Status::Complete(n) => {
                    let headers = r
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (r.code.unwrap(), headers, n);
                }
                httparse::Status::Partial => {
                    assert!(
                        self.fill(),
                        "connection closed before a response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
            }
        };
        self.buf.drain(..head_len);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 100 || status == 204 || status == 304 {
            return resp;
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill(), "closed inside a body");
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(), "closed inside chunked body");
                };
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..line_end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                self.buf.drain(..line_end + 2);
                while self.buf.len() < size + 2 {
                    assert!(self.fill(), "closed inside a chunk");
                }
                resp.body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else {
            while self.fill() {}
            resp.body = std::mem::take(&mut self.buf);
        }
        resp
    }

    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// True if the server closed the connection (EOF or reset) with no
    /// further bytes, within the read timeout.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut b = [0u8; 1];
        match self.read_some(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// One request and its response.
    pub fn roundtrip(&mut self, req: impl AsRef<[u8]>) -> Response {
        self.send(req);
        self.read_response()
    }
}

/// `GET path` with a Host header, HTTP/1.1.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

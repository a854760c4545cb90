//! Heap allocations per request, counted by a global allocator of this test
//! binary (not by inspection): the article's `/orders` page,
//! `/orders.json`, `/plaintext` and the CSV export, served by the real
//! application on its own runtime thread (io_uring where the kernel has
//! it) over real TCP, with a real PostgreSQL behind it. The client is the
//! test's thread, on blocking sockets and buffers allocated up front, so it
//! adds nothing to the count. Each figure is an average over many requests
//! on a warm connection (pool connected, statements prepared, buffers and
//! frames pooled): the steady state, where the design asks for zero.
//!
//! `ALLOC_TRACE=1 cargo test --test alloc -- --nocapture` prints where the
//! server allocates during a few requests after the measured ones.

#![allow(unsafe_code, reason = "a counting global allocator")]

#[path = "it/pgfix.rs"]
#[allow(
    dead_code,
    reason = "the test helpers are shared with the other test binary"
)]
mod pgfix;

/// The TechEmpower example, whose service is measured here too.
#[path = "../examples/techempower.rs"]
#[allow(dead_code, reason = "its main() is not used here")]
mod techempower;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ringside::app::{App, AppSettings, Database};
use ringside::config::Config;
use ringside::http::{HttpCore, Service, Stream};
use ringside::pg::{PgConfig, Pool, PoolSettings};
use ringside::runtime::{CoreCtx, IoDriver};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Set while `ALLOC_TRACE` asks where allocations happen.
static TRACING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Capturing a backtrace allocates: not traced again meanwhile.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn trace() {
    if !TRACING.load(Ordering::Relaxed) || IN_TRACE.with(|t| t.replace(true)) {
        return;
    }
    let bt = std::backtrace::Backtrace::force_capture().to_string();
    let frames: Vec<&str> = bt
        .lines()
        .filter(|l| {
            ["ringside", "bytes::", "postgres_protocol", "monoio::"]
                .iter()
                .any(|k| l.contains(k))
        })
        .take(12)
        .collect();
    eprintln!("ALLOC {}", frames.join(" | "));
    IN_TRACE.with(|t| t.set(false));
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a relaxed atomic, and tracing (off unless asked for) guards
// against its own allocations.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace();
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace();
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Reads one response from `stream` into `buf` (cleared first): to its
/// Content-Length, or to the last chunk of a chunked one. Returns the
/// status code.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = stream.read(&mut chunk).expect("an answer within 60 s");
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..head_end]).unwrap();
        let status: u16 = head[9..12].parse().unwrap();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let complete = match length {
            Some(len) => buf.len() >= head_end + 4 + len,
            None => buf.ends_with(b"\r\n0\r\n\r\n"),
        };
        if complete {
            return status;
        }
    }
}

fn run_binary(url: &str, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new database with the application's schema, 300 orders, and the
/// TechEmpower tables.
fn database_url() -> String {
    let cluster = pgfix::shared();
    let (name, url) = cluster.new_database("alloc");
    run_binary(&url, &["migrate"]);
    run_binary(&url, &["seed", "--orders", "300"]);
    cluster.psql_in(
        &name,
        &format!(
            "{}; ALTER TABLE world OWNER TO ringside_md5; \
             ALTER TABLE fortune OWNER TO ringside_md5",
            techempower::SETUP
        ),
    );
    url
}

/// A service on one core of its own thread, as `ringside serve` runs one,
/// accepting on a loopback port it returns. `make` builds the service on
/// that core.
fn start_server<S, F>(url: String, make: F) -> std::net::SocketAddr
where
    S: Service + 'static,
    F: FnOnce(Rc<CoreCtx>, &Config, PgConfig) -> S + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let config = Config::from_args_and_env(
            [
                "--db-pool-size",
                "2",
                "--max-uploads-per-core",
                "1",
                "--export-batch-rows",
                "100",
            ]
            .map(String::from),
            |_| None,
        )
        .unwrap();
        let pg = PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| url.clone())).unwrap();
        let driver = if monoio::utils::detect_uring() {
            IoDriver::Uring
        } else {
            IoDriver::Epoll
        };
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let core = CoreCtx::standalone(0, driver);
            let service = make(core.clone(), &config, pg);
            let http = HttpCore::new(core, &config, service);
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            tx.send((listener.local_addr().unwrap(), driver)).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                monoio::spawn(http.serve_stream(Stream::Tcp(stream)));
            }
        });
    });
    let (addr, driver) = rx.recv().unwrap();
    println!("server on {addr}, I/O driver {driver}");
    addr
}

/// Average allocations per request over `n` requests for `path` on
/// `stream`, after `warm` requests that are not counted.
fn allocations(stream: &mut TcpStream, path: &str, warm: u32, n: u32, buf: &mut Vec<u8>) -> f64 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut exchange = |buf: &mut Vec<u8>| {
        stream.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_response(stream, buf), 200, "{path}");
    };
    for _ in 0..warm {
        exchange(buf);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        exchange(buf);
    }
    let per_request = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / f64::from(n);
    if std::env::var_os("ALLOC_TRACE").is_some() {
        TRACING.store(true, Ordering::Relaxed);
        for _ in 0..4 {
            exchange(buf);
        }
        TRACING.store(false, Ordering::Relaxed);
    }
    per_request
}

#[test]
fn allocations_per_request() {
    let url = database_url();
    let addr = start_server(url.clone(), |core, config, pg| {
        let db = Database::new(pg, config).unwrap();
        App::new(core, Some(&db), AppSettings::from_config(config), None)
    });
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    // A server that stops answering fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut counts = Vec::new();
    // The database routes first: the pool's connections are made in the
    // background, which must not land in another route's count.
    for path in ["/orders", "/orders.json", "/plaintext"] {
        counts.push((path, allocations(&mut stream, path, 50, 500, &mut buf)));
    }
    // An export's allocations per row: the difference between exporting
    // 300 and 3,000 orders, over the 2,700 rows between them.
    let export = "/orders/export.csv";
    let small = allocations(&mut stream, export, 5, 20, &mut buf);
    run_binary(&url, &["seed", "--orders", "3000"]);
    let large = allocations(&mut stream, export, 5, 20, &mut buf);
    let per_row = (large - small) / 2700.0;
    println!("allocations per export: {small:.2} at 300 rows, {large:.2} at 3,000 rows");
    counts.push(("per exported row", per_row));

    // The TechEmpower example's /fortunes (and /db, /json) on its own
    // server over the same database.
    let addr = start_server(url.clone(), |core, config, pg| {
        let addrs = pg.resolve().unwrap();
        let pool = Pool::new(pg, addrs, PoolSettings::from_config(config));
        techempower::Bench::new(pool, core.index as u64 + 1)
    });
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    // A server that stops answering fails the test instead of hanging it.
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    for path in ["/fortunes", "/db", "/json"] {
        let n = allocations(&mut stream, path, 50, 500, &mut buf);
        counts.push((
            if path == "/fortunes" {
                "TechEmpower /fortunes"
            } else {
                path
            },
            n,
        ));
    }

    for (what, n) in &counts {
        println!("allocations per request, {what}: {n:.3}");
    }
    // Zero in the steady state. The ceiling leaves room only for what is
    // not per request: the core's once-a-second chores (Date, pool trims)
    // land in the measured window now and then.
    for (what, n) in counts {
        assert!(n <= 0.05, "{what}: {n:.3} allocations per request");
    }
}

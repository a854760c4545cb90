//! threaded-baseline: the "old-school" comparison server for ringside's
//! GET /orders benchmark.
//!
//! One OS thread per connection with blocking I/O (std::net), HTTP/1.1
//! keep-alive requests parsed with httparse, and the synchronous `postgres`
//! crate behind an r2d2 pool (r2d2_postgres). A request that needs the
//! database blocks its thread until a pooled connection is free (at most 1 s,
//! then 503 with Retry-After: 1) and then for the query's round trip.
//!
//!   GET /plaintext -> 200 "Hello, World!" (text/plain; charset=utf-8)
//!   GET /healthz   -> 200 "ok\n"
//!   GET /orders    -> the same HTML bytes as ringside's page: the prepared
//!                     `SELECT title FROM orders ORDER BY id LIMIT 200`, or
//!                     `... LIMIT $1` (int8) for `?limit=` 1-1000
//!   anything else  -> 404 (405 for other methods on a known path)
//!
//! Flags: --listen ADDR (127.0.0.1:8080), --database-url URL (or DATABASE_URL;
//! without one the database route answers 503), --db-pool-size N (total
//! PostgreSQL connections of the process, 8), --max-threads N (connection
//! threads at once, 10000; a connection beyond gets 503 and is closed).
//! CPU pinning is done by the harness (taskset).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::types::Type;
use postgres::{Client, NoTls, Statement};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

const DEFAULT_LIMIT: i64 = 200;
const MAX_LIMIT: i64 = 1000;
// As in ringside (src/app/orders.rs): the default page's statement has its
// limit written in, so PostgreSQL plans it once; `LIMIT $1` is planned at
// every execution (its plan cache prefers custom plans for it).
const ORDER_TITLES: &str = "SELECT title FROM orders ORDER BY id LIMIT 200";
const ORDER_TITLES_LIMITED: &str = "SELECT title FROM orders ORDER BY id LIMIT $1";

// Byte for byte ringside's page (src/app/orders.rs).
const PAGE_HEAD: &[u8] = b"<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">\
<title>Orders</title></head>\n<body>\n<h1>Orders</h1>\n<table>\n<thead><tr><th>Title</th></tr></thead>\n<tbody>\n";
const PAGE_TAIL: &[u8] = b"</tbody>\n</table>\n</body>\n</html>\n";

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

const MAX_HEAD_BYTES: usize = 16 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_HEADERS: usize = 64;
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const POOL_WAIT: Duration = Duration::from_secs(1);

fn usage() -> ! {
    eprintln!(
        "usage: threaded-baseline [--listen ADDR] [--database-url URL] [--db-pool-size N] [--max-threads N]"
    );
    std::process::exit(2);
}

struct Args {
    listen: SocketAddr,
    database_url: Option<String>,
    pool_size: u32,
    max_threads: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: "127.0.0.1:8080".parse().unwrap(),
        database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
        pool_size: 8,
        max_threads: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .unwrap_or_else(|| usage())
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
            match v.parse() {
                Ok(n) => n,
                Err(_) => {
                    eprintln!("threaded-baseline: bad {flag}: {v:?}");
                    std::process::exit(2)
                }
            }
        }
        match flag.as_str() {
            "--listen" => args.listen = num("--listen", value()),
            "--database-url" => args.database_url = Some(value()),
            "--db-pool-size" => args.pool_size = num("--db-pool-size", value()),
            "--max-threads" => args.max_threads = num("--max-threads", value()),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("threaded-baseline: unknown argument {a:?}");
                usage()
            }
        }
    }
    if args.pool_size == 0 || args.max_threads == 0 {
        usage();
    }
    args
}

// ------------------------------------------------------------------- pool ---

/// r2d2_postgres's manager, plus the statement prepared once per connection
/// (the `postgres` crate has no statement cache of its own).
struct Manager(PostgresConnectionManager<NoTls>);

struct Conn {
    client: Client,
    titles: Statement,
    titles_limited: Statement,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.0.connect()?;
        let titles = client.prepare_typed(ORDER_TITLES, &[])?;
        let titles_limited = client.prepare_typed(ORDER_TITLES_LIMITED, &[Type::INT8])?;
        Ok(Conn {
            client,
            titles,
            titles_limited,
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

type Pool = r2d2::Pool<Manager>;

fn make_pool(url: &str, size: u32) -> Pool {
    let config: postgres::Config = url.parse().unwrap_or_else(|e| {
        eprintln!("threaded-baseline: bad database URL: {e}");
        std::process::exit(2)
    });
    let manager = Manager(PostgresConnectionManager::new(config, NoTls));
    let pool = r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(size))
        // The wait for a free connection: past it, 503.
        .connection_timeout(POOL_WAIT)
        // r2d2's default runs a query (`is_valid`) on every checkout: one more
        // round trip per request. ringside and deadpool (RecyclingMethod::Fast)
        // don't, so neither does this baseline; broken connections are still
        // detected (`has_broken`) and replaced.
        .test_on_check_out(false)
        .build_unchecked(manager);
    // Wait (up to 10 s) for the pool to fill, so the first requests don't pay
    // for connection setup; a database that is down only logs a warning.
    for _ in 0..100 {
        if pool.state().idle_connections >= size {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = pool.state();
    if st.idle_connections < size {
        eprintln!(
            "threaded-baseline: warning: only {} of {size} database connections are up",
            st.idle_connections
        );
    }
    pool
}

// ------------------------------------------------------------------- http ---

/// The Date header value, formatted at most once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

struct Response<'a> {
    status: &'a str,
    ctype: &'a str,
    extra: &'a [(&'a str, &'a str)],
    body: &'a [u8],
}

fn write_response(out: &mut Vec<u8>, r: &Response<'_>, head_only: bool, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(r.status.as_bytes());
    out.extend_from_slice(b"\r\nServer: threaded\r\nDate: ");
    http_date(out);
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(r.ctype.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(r.body.len().to_string().as_bytes());
    for (k, v) in r.extra {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
    }
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(r.body);
    }
}

fn simple(status: &'static str, body: &'static [u8]) -> Response<'static> {
    Response {
        status,
        ctype: TEXT,
        extra: &[],
        body,
    }
}

/// Appends `s` with the five HTML-significant characters escaped, exactly
/// as ringside's `html_escape` (src/app/text.rs).
fn html_escape(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// The value of `name` in a query string (no percent-decoding), as ringside.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

struct Shared {
    pool: Option<Pool>,
    threads: AtomicUsize,
    max_threads: usize,
}

/// Handles one request; appends the response to `out`.
fn handle(
    sh: &Shared,
    method: &str,
    target: &str,
    page: &mut Vec<u8>,
    out: &mut Vec<u8>,
    close: bool,
) {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let head_only = method == "HEAD";
    let get = method == "GET" || head_only;
    let r = match path {
        "/plaintext" if get => simple("200 OK", b"Hello, World!"),
        "/healthz" if get => simple("200 OK", b"ok\n"),
        "/orders" if get => return orders(sh, query, page, out, head_only, close),
        "/plaintext" | "/healthz" | "/orders" => Response {
            status: "405 Method Not Allowed",
            ctype: TEXT,
            extra: &[("Allow", "GET, HEAD")],
            body: b"405 Method Not Allowed\n",
        },
        _ => simple("404 Not Found", b"404 Not Found: no such route\n"),
    };
    write_response(out, &r, head_only, close);
}

fn unavailable(why: &'static [u8]) -> Response<'static> {
    Response {
        status: "503 Service Unavailable",
        ctype: TEXT,
        extra: &[("Retry-After", "1")],
        body: why,
    }
}

fn orders(
    sh: &Shared,
    query: Option<&str>,
    page: &mut Vec<u8>,
    out: &mut Vec<u8>,
    head_only: bool,
    close: bool,
) {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                let r = simple(
                    "400 Bad Request",
                    b"400 Bad Request: limit must be a whole number from 1 to 1000\n",
                );
                return write_response(out, &r, head_only, close);
            }
        },
    };
    let Some(pool) = &sh.pool else {
        let r =
            unavailable(b"503 Service Unavailable: no database configured (set DATABASE_URL)\n");
        return write_response(out, &r, head_only, close);
    };
    // Blocks this thread until a connection is free, at most POOL_WAIT.
    let mut conn = match pool.get() {
        Ok(c) => c,
        Err(_) => {
            let r = unavailable(b"503 Service Unavailable: database busy\n");
            return write_response(out, &r, head_only, close);
        }
    };
    let Conn {
        client,
        titles,
        titles_limited,
    } = &mut *conn;
    let queried = if limit == DEFAULT_LIMIT {
        client.query(&*titles, &[])
    } else {
        client.query(&*titles_limited, &[&limit])
    };
    let rows = match queried {
        Ok(rows) => rows,
        Err(e) => {
            let r = if client.is_closed() {
                unavailable(b"503 Service Unavailable: database unavailable\n")
            } else {
                eprintln!("threaded-baseline: query failed: {e}");
                simple(
                    "500 Internal Server Error",
                    b"500 Internal Server Error: database error\n",
                )
            };
            return write_response(out, &r, head_only, close);
        }
    };
    drop(conn);
    page.clear();
    page.extend_from_slice(PAGE_HEAD);
    for row in &rows {
        let title: &str = match row.try_get(0) {
            Ok(t) => t,
            Err(_) => {
                let r = simple(
                    "500 Internal Server Error",
                    b"500 Internal Server Error: database error\n",
                );
                return write_response(out, &r, head_only, close);
            }
        };
        page.extend_from_slice(b"<tr><td>");
        html_escape(title, page);
        page.extend_from_slice(b"</td></tr>\n");
    }
    page.extend_from_slice(PAGE_TAIL);
    let r = Response {
        status: "200 OK",
        ctype: HTML,
        extra: &[("Vary", "Accept")],
        body: page,
    };
    write_response(out, &r, head_only, close);
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v).is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// One connection's whole life on its own thread: read, parse every complete
/// (possibly pipelined) request in the buffer, answer them in one write, repeat.
fn serve_connection(sh: &Shared, mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(KEEPALIVE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf: Vec<u8> = vec![0; 4096];
    let mut filled = 0usize;
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut page: Vec<u8> = Vec::new();
    loop {
        // Answer every complete request in the buffer.
        let mut start = 0usize;
        let mut close = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            let status = match req.parse(&buf[start..filled]) {
                Ok(s) => s,
                Err(httparse::Error::TooManyHeaders) => {
                    write_response(
                        &mut out,
                        &simple(
                            "431 Request Header Fields Too Large",
                            b"431 Request Header Fields Too Large\n",
                        ),
                        false,
                        true,
                    );
                    close = true;
                    break;
                }
                Err(_) => {
                    write_response(
                        &mut out,
                        &simple("400 Bad Request", b"400 Bad Request\n"),
                        false,
                        true,
                    );
                    close = true;
                    break;
                }
            };
            let httparse::Status::Complete(head_len) = status else {
                if filled - start > MAX_HEAD_BYTES {
                    write_response(
                        &mut out,
                        &simple(
                            "431 Request Header Fields Too Large",
                            b"431 Request Header Fields Too Large\n",
                        ),
                        false,
                        true,
                    );
                    close = true;
                }
                break;
            };
            // Request bodies: only Content-Length (these routes take none; it is skipped).
            if header(req.headers, "transfer-encoding").is_some() {
                write_response(
                    &mut out,
                    &simple(
                        "501 Not Implemented",
                        b"501 Not Implemented: chunked request bodies\n",
                    ),
                    false,
                    true,
                );
                close = true;
                break;
            }
            let body_len = match header(req.headers, "content-length") {
                None => 0,
                Some(v) => match std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                {
                    Some(n) if n <= MAX_BODY_BYTES => n,
                    Some(_) => {
                        write_response(
                            &mut out,
                            &simple("413 Content Too Large", b"413 Content Too Large\n"),
                            false,
                            true,
                        );
                        close = true;
                        break;
                    }
                    None => {
                        write_response(
                            &mut out,
                            &simple("400 Bad Request", b"400 Bad Request: Content-Length\n"),
                            false,
                            true,
                        );
                        close = true;
                        break;
                    }
                },
            };
            if filled - start < head_len + body_len {
                // The body is not all here yet: read more.
                if buf.len() < start + head_len + body_len {
                    buf.resize(start + head_len + body_len, 0);
                }
                break;
            }
            let conn_hdr = header(req.headers, "connection");
            close = match req.version {
                Some(1) => conn_hdr.is_some_and(|v| has_token(v, "close")),
                _ => !conn_hdr.is_some_and(|v| has_token(v, "keep-alive")),
            };
            let method = req.method.unwrap_or("");
            let target = req.path.unwrap_or("/");
            handle(sh, method, target, &mut page, &mut out, close);
            start += head_len + body_len;
            if close {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
            if page.capacity() > 1 << 20 {
                page = Vec::new();
            }
        }
        if close {
            return Ok(());
        }
        // Keep the unparsed rest at the front of the buffer.
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            if buf.len() >= MAX_HEAD_BYTES + MAX_BODY_BYTES + 4096 {
                return Ok(());
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    // Same backlog as ringside and the hyper baseline (capped by net.core.somaxconn).
    sock.listen(4096)?;
    Ok(sock.into())
}

fn main() {
    let args = parse_args();
    let pool = args
        .database_url
        .as_deref()
        .map(|u| make_pool(u, args.pool_size));
    let listener = bind(args.listen).unwrap_or_else(|e| {
        eprintln!("threaded-baseline: cannot listen on {}: {e}", args.listen);
        std::process::exit(1)
    });
    eprintln!(
        "threaded-baseline listening on {}: a thread per connection (at most {}), {}",
        listener.local_addr().unwrap(),
        args.max_threads,
        if pool.is_some() {
            format!("{} pooled database connection(s)", args.pool_size)
        } else {
            "no database".to_string()
        }
    );
    let shared = Arc::new(Shared {
        pool,
        threads: AtomicUsize::new(0),
        max_threads: args.max_threads,
    });
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spinning.
                eprintln!("threaded-baseline: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if shared.threads.fetch_add(1, Ordering::AcqRel) >= shared.max_threads {
            shared.threads.fetch_sub(1, Ordering::AcqRel);
            let mut out = Vec::new();
            write_response(
                &mut out,
                &unavailable(b"503 Service Unavailable: too many connections\n"),
                false,
                true,
            );
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = stream.write_all(&out);
            continue;
        }
        let sh = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                let _ = serve_connection(&sh, stream);
                sh.threads.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure (and with it the stream) is dropped: the connection closes.
            shared.threads.fetch_sub(1, Ordering::AcqRel);
            eprintln!("threaded-baseline: cannot spawn a connection thread: {e}");
        }
    }
}

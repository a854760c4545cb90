//! tokio-baseline: "what most people pick today", the comparison server for
//! ringside's GET /orders benchmark.
//!
//! axum 0.8 on tokio's multi-threaded runtime (`--threads N` workers), with
//! tokio-postgres behind a deadpool-postgres pool (statements cached per
//! connection with `prepare_typed_cached`). A request takes a pooled
//! connection for its query (waiting at most 1 s, then 503 with
//! Retry-After: 1) and gives it back before rendering.
//!
//!   GET /plaintext -> 200 "Hello, World!" (text/plain; charset=utf-8)
//!   GET /healthz   -> 200 "ok\n"
//!   GET /orders    -> the same HTML bytes as ringside's page: the prepared
//!                     `SELECT title FROM orders ORDER BY id LIMIT 200`, or
//!                     `... LIMIT $1` (int8) for `?limit=` 1-1000
//!   anything else  -> 404 (axum's 405 for other methods on a route)
//!
//! Flags: --listen ADDR (127.0.0.1:8080), --threads N (tokio worker threads,
//! 1), --database-url URL (or DATABASE_URL; without one the database route
//! answers 503), --db-pool-size N (PostgreSQL connections, 8).
//! CPU pinning is done by the harness (taskset).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, VARY};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio::net::TcpSocket;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

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
const POOL_WAIT: Duration = Duration::from_secs(1);

fn usage() -> ! {
    eprintln!(
        "usage: tokio-baseline [--listen ADDR] [--threads N] [--database-url URL] [--db-pool-size N]"
    );
    std::process::exit(2);
}

struct Args {
    listen: SocketAddr,
    threads: usize,
    database_url: Option<String>,
    pool_size: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: "127.0.0.1:8080".parse().unwrap(),
        threads: 1,
        database_url: std::env::var("DATABASE_URL").ok().filter(|s| !s.is_empty()),
        pool_size: 8,
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
                    eprintln!("tokio-baseline: bad {flag}: {v:?}");
                    std::process::exit(2)
                }
            }
        }
        match flag.as_str() {
            "--listen" => args.listen = num("--listen", value()),
            "--threads" => args.threads = num("--threads", value()),
            "--database-url" => args.database_url = Some(value()),
            "--db-pool-size" => args.pool_size = num("--db-pool-size", value()),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("tokio-baseline: unknown argument {a:?}");
                usage()
            }
        }
    }
    if args.threads == 0 || args.pool_size == 0 {
        usage();
    }
    args
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

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(CONTENT_TYPE, TEXT)], body).into_response()
}

fn unavailable(body: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(CONTENT_TYPE, TEXT), (RETRY_AFTER, "1")],
        body,
    )
        .into_response()
}

async fn orders(State(pool): State<Option<Pool>>, RawQuery(query): RawQuery) -> Response {
    let limit = match query_param(query.as_deref(), "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: limit must be a whole number from 1 to 1000\n",
                )
            }
        },
    };
    let Some(pool) = pool else {
        return unavailable("503 Service Unavailable: no database configured (set DATABASE_URL)\n");
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(PoolError::Timeout(_)) => {
            return unavailable("503 Service Unavailable: database busy\n")
        }
        Err(_) => return unavailable("503 Service Unavailable: database unavailable\n"),
    };
    let rows = async {
        if limit == DEFAULT_LIMIT {
            let stmt = client.prepare_typed_cached(ORDER_TITLES, &[]).await?;
            client.query(&stmt, &[]).await
        } else {
            let stmt = client
                .prepare_typed_cached(ORDER_TITLES_LIMITED, &[Type::INT8])
                .await?;
            client.query(&stmt, &[&limit]).await
        }
    }
    .await;
    let closed = client.is_closed();
    drop(client);
    let rows = match rows {
        Ok(rows) => rows,
        Err(_) if closed => return unavailable("503 Service Unavailable: database unavailable\n"),
        Err(e) => {
            eprintln!("tokio-baseline: query failed: {e}");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error: database error\n",
            );
        }
    };
    let mut page = Vec::with_capacity(PAGE_HEAD.len() + PAGE_TAIL.len() + rows.len() * 48);
    page.extend_from_slice(PAGE_HEAD);
    for row in &rows {
        let title: &str = match row.try_get(0) {
            Ok(t) => t,
            Err(_) => {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error: database error\n",
                )
            }
        };
        page.extend_from_slice(b"<tr><td>");
        html_escape(title, &mut page);
        page.extend_from_slice(b"</td></tr>\n");
    }
    page.extend_from_slice(PAGE_TAIL);
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HTML), (VARY, "Accept")],
        page,
    )
        .into_response()
}

async fn make_pool(url: &str, size: usize) -> Pool {
    let config: tokio_postgres::Config = url.parse().unwrap_or_else(|e| {
        eprintln!("tokio-baseline: bad database URL: {e}");
        std::process::exit(2)
    });
    let manager = Manager::from_config(
        config,
        NoTls,
        // deadpool's default: only `is_closed()` on recycle, no query.
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .expect("build the database pool");
    // Open every connection (and prepare the statement on each) before
    // serving, so the first requests don't pay for it; a database that is
    // down only logs a warning.
    let mut held = Vec::new();
    for _ in 0..size {
        match tokio::time::timeout(Duration::from_secs(10), pool.get()).await {
            Ok(Ok(c)) => {
                let _ = c.prepare_typed_cached(ORDER_TITLES, &[]).await;
                held.push(c);
            }
            Ok(Err(e)) => {
                eprintln!("tokio-baseline: warning: cannot open a database connection: {e}");
                break;
            }
            Err(_) => {
                eprintln!("tokio-baseline: warning: timed out opening a database connection");
                break;
            }
        }
    }
    drop(held);
    pool
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    rt.block_on(serve(args));
}

async fn serve(args: Args) {
    let pool = match &args.database_url {
        Some(u) => Some(make_pool(u, args.pool_size).await),
        None => None,
    };
    let app = Router::new()
        .route(
            "/plaintext",
            get(|| async { ([(CONTENT_TYPE, TEXT)], "Hello, World!") }),
        )
        .route(
            "/healthz",
            get(|| async { ([(CONTENT_TYPE, TEXT)], "ok\n") }),
        )
        .route("/orders", get(orders))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 Not Found: no such route\n") })
        .with_state(pool);

    let sock = if args.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    sock.set_reuseaddr(true).expect("SO_REUSEADDR");
    if let Err(e) = sock.bind(args.listen) {
        eprintln!("tokio-baseline: cannot bind {}: {e}", args.listen);
        std::process::exit(1);
    }
    // Same backlog as ringside and the other baselines (capped by net.core.somaxconn).
    let listener = sock.listen(4096).expect("listen");
    eprintln!(
        "tokio-baseline listening on {} with {} worker thread(s), {}",
        listener.local_addr().unwrap(),
        args.threads,
        if args.database_url.is_some() {
            format!("{} pooled database connection(s)", args.pool_size)
        } else {
            "no database".to_string()
        }
    );
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}

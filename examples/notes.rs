//! A small service a user would write on ringside's library: its own
//! routes, a query through the core's pool, a streamed response and a
//! streamed upload with back-pressure, and tests that drive it over the
//! in-memory pipe (no socket).
//!
//!   cargo run --release --example notes -- --listen 127.0.0.1:8081
//!   curl localhost:8081/hello
//!   curl localhost:8081/count            # needs DATABASE_URL (ringside's schema)
//!   curl localhost:8081/countdown?from=5 # a streamed response
//!   curl --data-binary @big.file localhost:8081/bytes  # a streamed upload
//!
//!   cargo test --example notes

use std::process::ExitCode;
use std::rc::Rc;

use ringside::config::Config;
use ringside::http::{Exchange, HttpCore, Method, Service, StatusCode};
use ringside::pg::{PgConfig, Pool, PoolSettings, Statement};
use ringside::runtime::Server;

/// A statement is prepared once per connection; `read_only` lets the pool
/// run it again on another connection if its connection dies mid-way.
static COUNT_ORDERS: Statement = Statement {
    sql: "SELECT count(*) FROM orders",
    param_types: &[],
    read_only: true,
    fresh: false,
};

/// One per core: it may hold `Rc` state (here, the core's own pool).
struct Notes {
    pool: Option<Rc<Pool>>,
}

impl Service for Notes {
    async fn call(&self, ex: &mut Exchange<'_, '_>) {
        match (ex.method(), ex.path()) {
            (Method::Get, "/hello") => {
                ex.respond(StatusCode::OK, b"text/plain", b"hello from ringside\n")
            }
            (Method::Get, "/count") => self.count(ex).await,
            (Method::Get, "/countdown") => countdown(ex).await,
            (Method::Post, "/bytes") => count_bytes(ex).await,
            _ => ex.respond_error(StatusCode::NOT_FOUND, "no such route"),
        }
    }
}

impl Notes {
    /// A query: the pool pipelines it with other requests' queries on the
    /// core's connections, under the query deadline.
    async fn count(&self, ex: &mut Exchange<'_, '_>) {
        let Some(pool) = &self.pool else {
            return ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, "no database");
        };
        match pool.query(&COUNT_ORDERS, &[]).await {
            Ok(rows) => {
                let n = rows
                    .iter()
                    .next()
                    .and_then(|r| r.ok()?.req_i64(&rows.columns, 0).ok())
                    .unwrap_or(0);
                ex.respond(StatusCode::OK, b"text/plain", format!("{n}\n").as_bytes());
            }
            Err(e) if e.is_transient() => {
                ex.respond_error(StatusCode::SERVICE_UNAVAILABLE, "database busy")
            }
            Err(_) => ex.respond_error(StatusCode::INTERNAL_ERROR, "database error"),
        }
    }
}

/// A streamed response: chunked, flushed as it goes, so a client that reads
/// slowly slows the handler instead of filling memory.
async fn countdown(ex: &mut Exchange<'_, '_>) {
    let from: u32 = ex
        .head()
        .query()
        .and_then(|q| q.strip_prefix("from="))
        .and_then(|v| v.parse().ok())
        .filter(|n| *n <= 1000)
        .unwrap_or(3);
    ex.start_stream(StatusCode::OK, b"text/plain", &[]);
    for i in (0..=from).rev() {
        if ex.send_chunk(format!("{i}\n").as_bytes()).await.is_err() {
            return; // the client went away
        }
    }
    ex.finish_stream();
}

/// A streamed upload: the body is read a piece at a time, and the next
/// piece only when the handler asks, so memory stays bounded whatever the
/// size (within the route's limit).
async fn count_bytes(ex: &mut Exchange<'_, '_>) {
    ex.set_body_limit(1 << 30);
    let mut total = 0u64;
    loop {
        match ex.body_chunk().await {
            Ok(Some(piece)) => total += piece.len() as u64,
            Ok(None) => break,
            Err(e) => return ex.respond_body_error(e),
        }
    }
    ex.respond(
        StatusCode::OK,
        b"text/plain",
        format!("{total}\n").as_bytes(),
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::from_args_and_env(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("notes: {e}");
            return ExitCode::from(2);
        }
    };
    // Resolved once, before the cores start: no DNS lookup on a core.
    let database = match config.database_url.clone() {
        Some(url) => {
            let pg = match PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| url.clone())) {
                Ok(pg) => pg,
                Err(e) => {
                    eprintln!("notes: {e}");
                    return ExitCode::from(2);
                }
            };
            match pg.resolve() {
                Ok(addrs) => Some((pg, addrs)),
                Err(e) => {
                    eprintln!("notes: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => None,
    };
    let settings = PoolSettings::from_config(&config);
    // Called on each core, on that core's thread.
    let make = move |core: Rc<ringside::runtime::CoreCtx>, cfg: &Config| {
        let pool = database
            .as_ref()
            .map(|(pg, addrs)| Pool::new(pg.clone(), addrs.clone(), settings.clone()));
        HttpCore::new(core, cfg, Notes { pool })
    };
    let server = match Server::start(&config, make) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("notes: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("notes: listening on http://{}", server.local_addr);
    match server.join() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("notes: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringside::http::{pipe, PipeEnd, Stream};
    use ringside::runtime::{CoreCtx, IoDriver};

    /// Serves `Notes` over an in-memory pipe on a runtime of its own and
    /// hands the client's end to `test`.
    fn with_client(test: impl AsyncFnOnce(&PipeEnd)) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async {
            let core = CoreCtx::standalone(0, IoDriver::Epoll);
            let http = HttpCore::new(core, &Config::default(), Notes { pool: None });
            let (server, client) = pipe();
            monoio::spawn(http.serve_stream(Stream::Memory(server)));
            test(&client).await;
        });
    }

    /// Everything the server sent until it had sent `until`.
    async fn read_until(client: &PipeEnd, until: &[u8]) -> String {
        let mut got = Vec::new();
        while !got.windows(until.len()).any(|w| w == until) {
            client.readable().await;
            let more = client.take_all();
            assert!(
                !more.is_empty(),
                "closed early: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend(more);
        }
        String::from_utf8(got).unwrap()
    }

    #[test]
    fn hello_and_not_found() {
        with_client(async |c| {
            c.write(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let text = read_until(c, b"no such route\n").await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("hello from ringside\n"));
            assert!(text.contains("HTTP/1.1 404 Not Found\r\n"));
        });
    }

    #[test]
    fn a_streamed_response_is_chunked() {
        with_client(async |c| {
            c.write(b"GET /countdown?from=2 HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let text = read_until(c, b"0\r\n\r\n").await;
            assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
            assert!(text.contains("2\n") && text.contains("1\n") && text.contains("0\n"));
        });
    }

    #[test]
    fn a_streamed_upload_is_counted_piece_by_piece() {
        with_client(async |c| {
            let body = vec![b'x'; 300_000];
            c.write(
                format!(
                    "POST /bytes HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
            c.write(&body).unwrap();
            let text = read_until(c, b"300000\n").await;
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        });
    }

    #[test]
    fn without_a_database_count_says_so() {
        with_client(async |c| {
            c.write(b"GET /count HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let text = read_until(c, b"no database\n").await;
            assert!(text.starts_with("HTTP/1.1 503"), "{text}");
        });
    }
}

//! hyper-baseline: the comparison server for ringside's HTTP benchmarks.
//!
//! hyper 1.x (HTTP/1.1 only) on tokio's multi-threaded runtime.
//!   GET /plaintext -> 200 "Hello, World!" (text/plain; charset=utf-8, plus hyper's Date header)
//!   GET /healthz   -> 200 "ok"
//!   anything else  -> 404
//!
//! Flags: --listen ADDR (default 127.0.0.1:8080), --threads N (tokio worker threads,
//! i.e. the core budget; default 1). CPU pinning is done by the harness (taskset).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

const HELLO: &[u8] = b"Hello, World!";
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

fn usage() -> ! {
    eprintln!("usage: hyper-baseline [--listen ADDR] [--threads N]");
    std::process::exit(2);
}

struct Args {
    listen: SocketAddr,
    threads: usize,
}

fn parse_args() -> Args {
    let mut listen: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let mut threads = 1usize;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => {
                listen = value().parse().unwrap_or_else(|e| {
                    eprintln!("hyper-baseline: bad --listen: {e}");
                    std::process::exit(2)
                })
            }
            "--threads" => {
                threads = value().parse().unwrap_or_else(|e| {
                    eprintln!("hyper-baseline: bad --threads: {e}");
                    std::process::exit(2)
                });
                if threads == 0 {
                    usage();
                }
            }
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("hyper-baseline: unknown argument {a:?}");
                usage()
            }
        }
    }
    Args { listen, threads }
}

fn text(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    resp
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/plaintext") => text(StatusCode::OK, HELLO),
        (&Method::GET, "/healthz") => text(StatusCode::OK, b"ok"),
        _ => text(StatusCode::NOT_FOUND, b"not found"),
    })
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
    let sock = if args.listen.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .expect("socket");
    sock.set_reuseaddr(true).expect("SO_REUSEADDR");
    if let Err(e) = sock.bind(args.listen) {
        eprintln!("hyper-baseline: cannot bind {}: {e}", args.listen);
        std::process::exit(1);
    }
    // Large backlog (the kernel caps it at net.core.somaxconn) so bursts of connects are not dropped.
    let listener = sock.listen(4096).expect("listen");
    eprintln!(
        "hyper-baseline listening on {} with {} worker thread(s)",
        listener.local_addr().unwrap(),
        args.threads
    );

    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    // Coalesce the responses to a batch of pipelined requests into one write
    // (hyper's default, false, flushes once per response): the baseline at its best.
    builder.pipeline_flush(true);

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (stream, _) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spinning.
                        eprintln!("hyper-baseline: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection(TokioIo::new(stream), service_fn(handle));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
}

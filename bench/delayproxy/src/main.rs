//! delayproxy: a TCP proxy that adds a fixed delay to each direction, for
//! the "far-away database" benchmark on a machine without netem.
//!
//!   delayproxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PGPORT \
//!              --delay-ms 10 --max-seconds 600
//!
//! Every chunk read from one side is stamped on arrival and written to the
//! other side at arrival + delay, in order; so with `--delay-ms 10` each
//! request/response round trip through the proxy takes 20 ms longer. The
//! delay is a latency, not a bandwidth limit: chunks queue up (up to
//! QUEUE_CHUNKS per direction, then the proxy stops reading that side,
//! which is TCP back-pressure) and are released as their time comes, however
//! many are in flight. End of stream (FIN) is delayed like data; a reset or
//! error on either side closes both sockets of that connection.
//!
//! Only data is delayed, not the TCP handshake: a new connection is one
//! round trip cheaper than over a real long link (the benchmark's pools
//! connect before measuring).
//!
//! The proxy exits by itself after --max-seconds (default 600), or on
//! SIGINT/SIGTERM. Two threads: the tokio current-thread runtime that moves
//! the bytes, and a timer thread that wakes it when a chunk is due (tokio's
//! own timers have 1 ms granularity and round up, which added ~1.2 ms per
//! direction; the timer thread sleeps on a futex with a high-resolution
//! timeout, so a release is late by ~0.1-0.3 ms here). Pin the process
//! with taskset.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

const READ_CHUNK: usize = 64 * 1024;
const QUEUE_CHUNKS: usize = 4096;

fn usage() -> ! {
    eprintln!(
        "usage: delayproxy --listen ADDR --upstream ADDR (--delay-ms MS | --delay-us US) [--max-seconds S]\n\
         adds the delay to each direction (so twice it to a round trip); exits after --max-seconds (600)"
    );
    std::process::exit(2);
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    delay: Duration,
    max_seconds: u64,
}

fn parse_args() -> Args {
    let (mut listen, mut upstream, mut delay, mut max_seconds) = (None, None, None, 600u64);
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
            v.parse().unwrap_or_else(|_| {
                eprintln!("delayproxy: bad {flag}: {v:?}");
                std::process::exit(2)
            })
        }
        match flag.as_str() {
            "--listen" => listen = Some(num("--listen", value())),
            "--upstream" => upstream = Some(num("--upstream", value())),
            "--delay-ms" => delay = Some(Duration::from_millis(num("--delay-ms", value()))),
            "--delay-us" => delay = Some(Duration::from_micros(num("--delay-us", value()))),
            "--max-seconds" => max_seconds = num("--max-seconds", value()),
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("delayproxy: unknown argument {a:?}");
                usage()
            }
        }
    }
    let (Some(listen), Some(upstream), Some(delay)) = (listen, upstream, delay) else {
        usage()
    };
    if max_seconds == 0 {
        usage();
    }
    Args {
        listen,
        upstream,
        delay,
        max_seconds,
    }
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build tokio runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let sock = if args.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .expect("socket");
    sock.set_reuseaddr(true).expect("SO_REUSEADDR");
    if let Err(e) = sock.bind(args.listen) {
        eprintln!("delayproxy: cannot bind {}: {e}", args.listen);
        std::process::exit(1);
    }
    let listener: TcpListener = sock.listen(1024).expect("listen");
    eprintln!(
        "delayproxy: {} -> {}, {:?} each way, exits after {} s",
        listener.local_addr().unwrap(),
        args.upstream,
        args.delay,
        args.max_seconds
    );
    let deadline = tokio::time::sleep(Duration::from_secs(args.max_seconds));
    tokio::pin!(deadline);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, _)) => {
                    let (upstream, delay) = (args.upstream, args.delay);
                    tokio::spawn(async move {
                        if let Err(e) = proxy(client, upstream, delay).await {
                            if !matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) {
                                eprintln!("delayproxy: connection ended: {e}");
                            }
                        }
                    });
                }
                Err(e) => {
                    eprintln!("delayproxy: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = &mut deadline => {
                eprintln!("delayproxy: --max-seconds {} reached; exiting", args.max_seconds);
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    // Exiting drops (closes) every proxied connection.
    std::process::exit(0);
}

async fn proxy(client: TcpStream, upstream: SocketAddr, delay: Duration) -> io::Result<()> {
    let server = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect to upstream timed out"))??;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    // Either direction failing drops both sockets.
    tokio::try_join!(pipe(cr, sw, delay), pipe(sr, cw, delay))?;
    Ok(())
}

/// One direction: chunks stamped on arrival, written at arrival + delay.
/// `None` is the end of stream, forwarded as a FIN after the same delay.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = from.read(&mut buf).await?;
            let due = Instant::now() + delay;
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            if tx.send((due, chunk)).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            PreciseSleep { due }.await;
            match chunk {
                Some(c) => to.write_all(&c).await?,
                None => {
                    to.shutdown().await?;
                    break;
                }
            }
        }
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

// ------------------------------------------------------------ timer thread ---

struct Entry {
    due: Instant,
    seq: u64,
    waker: Waker,
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

#[derive(Default)]
struct Timers {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    changed: Condvar,
}

/// The process's timer thread, started on first use.
fn timers() -> &'static Arc<Timers> {
    static T: OnceLock<Arc<Timers>> = OnceLock::new();
    T.get_or_init(|| {
        let t = Arc::new(Timers::default());
        let t2 = t.clone();
        std::thread::Builder::new()
            .name("delay-timer".into())
            .spawn(move || timer_thread(&t2))
            .expect("spawn the timer thread");
        t
    })
}

fn timer_thread(t: &Timers) {
    let mut due_now = Vec::new();
    let mut g = t.heap.lock().unwrap();
    loop {
        let now = Instant::now();
        while g.0.peek().is_some_and(|e| e.0.due <= now) {
            due_now.push(g.0.pop().unwrap().0.waker);
        }
        if !due_now.is_empty() {
            drop(g);
            due_now.drain(..).for_each(Waker::wake);
            g = t.heap.lock().unwrap();
            continue;
        }
        g = match g.0.peek().map(|e| e.0.due) {
            None => t.changed.wait(g).unwrap(),
            Some(due) => t.changed.wait_timeout(g, due - now).unwrap().0,
        };
    }
}

/// Completes at `due`, woken by the timer thread.
struct PreciseSleep {
    due: Instant,
}

impl Future for PreciseSleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.due {
            return Poll::Ready(());
        }
        let t = timers();
        let mut g = t.heap.lock().unwrap();
        let earliest = g.0.peek().is_none_or(|e| self.due < e.0.due);
        g.1 += 1;
        let seq = g.1;
        g.0.push(Reverse(Entry {
            due: self.due,
            seq,
            waker: cx.waker().clone(),
        }));
        drop(g);
        if earliest {
            t.changed.notify_one();
        }
        Poll::Pending
    }
}

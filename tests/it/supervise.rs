//! Panics: a connection's task that panics costs that connection only; a
//! core thread that dies ends the server with an error and leaves nothing
//! listening. The runtime is driven through the library, over real
//! sockets, with a handler that panics on demand.

use std::future::Future;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use ringside::config::{Config, CoreSelection};
use ringside::runtime::{ConnectionHandler, CoreCtx, CoreSummary, OpenGuard, Server, Stopper};

/// Answers `panics=N` (the connections of its core whose task panicked).
/// On a first byte of `!` it panics in the connection's task instead; on
/// `X` it answers `dying` and panics in a task of the core's own, outside
/// any connection (on `X1`, only if it is not the first core); on `S` it
/// blocks its core's thread for 30 s.
struct PanicOnDemand {
    core: Rc<CoreCtx>,
}

impl ConnectionHandler for PanicOnDemand {
    fn serve(
        self: &Rc<Self>,
        mut stream: monoio::net::TcpStream,
        open: OpenGuard,
        _listener: usize,
    ) -> impl Future<Output = ()> + 'static {
        let core = self.core.clone();
        async move {
            let _open = open;
            let (read, buf) = stream.read(vec![0u8; 16]).await;
            let core_bug =
                buf.first() == Some(&b'X') && (buf.get(1) != Some(&b'1') || core.index != 0);
            match read {
                Ok(n) if n > 0 && buf[0] == b'!' => panic!("a handler's bug"),
                Ok(n) if n > 0 && buf[0] == b'S' => {
                    // Blocks the core's thread: its loop stops turning.
                    std::thread::sleep(Duration::from_secs(30));
                }
                Ok(n) if n > 0 && core_bug => {
                    let _ = stream.write_all(b"dying\n".to_vec()).await;
                    monoio::spawn(async { panic!("a core task's bug") });
                    // Keep the connection until the core dies under it.
                    monoio::time::sleep(Duration::from_secs(60)).await;
                }
                Ok(n) if n > 0 => {
                    let answer = format!("panics={}\n", core.connection_panics());
                    let _ = stream.write_all(answer.into_bytes()).await;
                }
                _ => {}
            }
        }
    }

    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would borrow self; the trait wants 'static"
    )]
    fn refuse(
        self: &Rc<Self>,
        _stream: monoio::net::TcpStream,
        _listener: usize,
    ) -> impl Future<Output = ()> + 'static {
        async {}
    }
}

/// Stops the server however the test ends, so that a failing test does
/// not leave one running in this process.
struct StopOnDrop(Stopper);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

type Joined = mpsc::Receiver<Result<Vec<CoreSummary>, String>>;

/// Starts a one-core server and joins it on a thread of its own; the
/// receiver gets what `join` returned.
fn start() -> (SocketAddr, Joined, StopOnDrop) {
    start_on(1).expect("server starts")
}

fn start_on(cores: usize) -> Result<(SocketAddr, Joined, StopOnDrop), String> {
    start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: CoreSelection::Count(cores),
        ..Config::default()
    })
}

fn start_with(config: Config) -> Result<(SocketAddr, Joined, StopOnDrop), String> {
    let server = Server::start(&config, |core, _cfg| Rc::new(PanicOnDemand { core }))
        .map_err(|e| e.to_string())?;
    let addr = server.local_addr;
    let stop = StopOnDrop(server.stopper());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(server.join());
    });
    Ok((addr, rx, stop))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `msg` and reads to the end: the answer, or `None` when the
/// connection was closed or reset without one.
fn exchange_on(mut s: TcpStream, msg: &[u8]) -> Option<String> {
    s.write_all(msg).ok()?;
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Ok(_) if !out.is_empty() => Some(out),
        Ok(_) => None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
        Err(e) => panic!("reading the answer: {e}"),
    }
}

#[test]
fn a_panicking_request_costs_its_own_connection_only() {
    let (addr, joined, stop) = start();
    // Opened before the panic, used after it: the core must still serve it.
    let early = connect(addr);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(exchange_on(connect(addr), b"!"), None, "closed, unanswered");
    assert_eq!(exchange_on(early, b"hi").as_deref(), Some("panics=1\n"));
    assert_eq!(exchange_on(connect(addr), b"!"), None);
    assert_eq!(
        exchange_on(connect(addr), b"hi").as_deref(),
        Some("panics=2\n")
    );
    drop(stop);
    let summaries = joined
        .recv_timeout(Duration::from_secs(60))
        .expect("the server stops")
        .expect("no core died: the server stops cleanly");
    assert_eq!(summaries.len(), 1);
}

/// What `join` returned, which must be a failure, within `limit`.
fn failure_within(joined: &Joined, limit: Duration) -> String {
    joined
        .recv_timeout(limit)
        .expect("the server stops by itself")
        .expect_err("a dead or stuck core is a failure")
}

/// The dead core's listener was taken out of its group: connections are
/// refused, not queued where nobody accepts them.
fn assert_nothing_listens(addr: SocketAddr) {
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
}

#[test]
fn a_core_that_dies_ends_the_server_with_its_message_and_stops_listening() {
    let (addr, joined, _stop) = start();
    let mut doomed = connect(addr);
    doomed.write_all(b"X").unwrap();
    let err = failure_within(&joined, Duration::from_secs(60));
    assert!(err.contains("a core task's bug"), "{err}");
    assert_nothing_listens(addr);
}

/// The core that dies is not the first: the supervisor must not wait for
/// the first core (which would serve on) before it notices.
#[test]
fn a_second_core_that_dies_ends_the_server_while_the_first_lives() {
    let (addr, joined, _stop) = match start_on(2) {
        Ok(started) => started,
        Err(e) => {
            eprintln!("skipped: needs two CPUs ({e})");
            return;
        }
    };
    // SO_REUSEPORT spreads connections by their ports: try until one lands
    // on the second core, which says so before it dies.
    let mut landed = false;
    for _ in 0..200 {
        let mut s = BufReader::new(connect(addr));
        s.get_mut().write_all(b"X1").unwrap();
        let mut line = String::new();
        s.read_line(&mut line)
            .expect("every connection is answered");
        if line == "dying\n" {
            landed = true;
            break;
        }
        assert!(
            line.starts_with("panics="),
            "the first core answers: {line:?}"
        );
    }
    assert!(landed, "no connection reached the second core");
    // Once the first core has drained.
    let err = failure_within(&joined, Duration::from_secs(60));
    assert!(
        err.contains("core 1") && err.contains("a core task's bug"),
        "{err}"
    );
}

#[test]
fn a_core_stuck_in_a_blocking_call_ends_the_server_and_stops_listening() {
    let (addr, joined, _stop) = start_with(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        cores: CoreSelection::Count(1),
        core_stall_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .expect("server starts");
    let mut stuck = connect(addr);
    stuck.write_all(b"S").unwrap();
    // Answered by the supervisor, not the stuck core: before the core's
    // 30 s block ends.
    let err = failure_within(&joined, Duration::from_secs(25));
    assert!(err.contains("core 0") && err.contains("stalled"), "{err}");
    assert_nothing_listens(addr);
}

//! Process-level behaviour: drivers, fallback, cores, graceful shutdown.

#![allow(
    unsafe_code,
    reason = "tests install seccomp filters and signal handlers in child processes"
)]

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::harness::{get, Server};

/// Installs a seccomp filter in the child that fails io_uring_setup with
/// EPERM, as Docker's default profile does.
fn deny_io_uring(cmd: &mut Command) {
    // SAFETY: pre_exec runs in the forked child before exec; prctl is
    // async-signal-safe and the filter program outlives the call.
    unsafe {
        cmd.pre_exec(|| {
            const IO_URING_SETUP: u32 = 425; // same number on x86_64 and aarch64
            let filter = [
                // load the syscall number
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if it is io_uring_setup, fall through to EPERM, else skip
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: IO_URING_SETUP,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x0005_0000 | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x7fff_0000,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut _,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                2,
                &prog as *const _ as libc::c_ulong,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn ringside(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(args);
    cmd
}

#[test]
fn auto_uses_io_uring_where_allowed() {
    let srv = Server::start("auto", &[]);
    assert!(
        srv.start_line.ends_with("using io_uring"),
        "{}",
        srv.start_line
    );
}

#[test]
fn falls_back_to_epoll_when_io_uring_is_denied() {
    let mut cmd = ringside(&["--io", "auto"]);
    deny_io_uring(&mut cmd);
    let srv = Server::spawn(cmd).expect("starts with epoll");
    assert!(
        srv.start_line
            .contains("using epoll (fallback: io_uring is not available"),
        "{}",
        srv.start_line
    );
    let mut c = srv.connect();
    assert_eq!(c.roundtrip(get("/plaintext")).text(), "Hello, World!");
}

#[test]
fn forced_io_uring_fails_clearly_when_denied() {
    let mut cmd = ringside(&["--io", "uring"]);
    deny_io_uring(&mut cmd);
    let err = match Server::spawn(cmd) {
        Ok(_) => panic!("must not start"),
        Err(e) => e,
    };
    assert!(
        err.contains("--io uring: io_uring is not available here"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("exit Some(ExitStatus(unix_wait_status(256)))"),
        "exit code 1: {err}"
    );
}

#[test]
fn cores_flag_and_allowed_set() {
    let srv = Server::start("auto", &["--cores", "1"]);
    assert!(
        srv.start_line.contains("with 1 core(s) on CPU 0"),
        "{}",
        srv.start_line
    );
    if std::path::Path::new("/usr/bin/taskset").exists() && num_cpus() > 1 {
        // The allowed set from taskset is honoured.
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c",
            "1",
            env!("CARGO_BIN_EXE_ringside"),
            "serve",
            "--listen",
            "127.0.0.1:0",
        ]);
        let srv = Server::spawn(cmd).unwrap();
        assert!(
            srv.start_line.contains("with 1 core(s) on CPU 1"),
            "{}",
            srv.start_line
        );
        // And a CPU outside it is refused.
        let mut cmd = Command::new("taskset");
        cmd.args([
            "-c",
            "1",
            env!("CARGO_BIN_EXE_ringside"),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "0-0",
        ]);
        let err = Server::spawn(cmd).err().expect("refused");
        assert!(err.contains("not in the allowed set"), "{err}");
    }
}

fn num_cpus() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

#[test]
fn address_in_use_fails_clearly() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.args(["serve", "--listen", &addr]);
    let err = Server::spawn(cmd).err().expect("refused");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
}

fn graceful_shutdown_finishes_in_flight_request(io: &str) {
    let mut srv = Server::start(io, &[]);
    // An idle keep-alive connection...
    let mut idle = srv.connect();
    assert_eq!(idle.roundtrip(get("/plaintext")).status, 200);
    // ...and a request in flight: head sent, body half sent.
    let mut busy = srv.connect();
    busy.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello");
    thread::sleep(Duration::from_millis(200));
    srv.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));
    // The idle one is closed at once.
    assert!(
        idle.is_closed(),
        "idle keep-alive connection closed by the drain"
    );
    // New connections are refused: the listener is gone.
    assert!(
        std::net::TcpStream::connect(srv.addr).is_err(),
        "no longer accepting"
    );
    // The in-flight request completes, with Connection: close.
    busy.send("world");
    let r = busy.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "helloworld");
    assert!(r.closes());
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "exit 0, got {status:?}");
}

#[test]
fn graceful_shutdown_uring() {
    graceful_shutdown_finishes_in_flight_request("uring");
}

#[test]
fn graceful_shutdown_epoll() {
    graceful_shutdown_finishes_in_flight_request("epoll");
}

/// A parked keep-alive connection (idle past the busy window of one tick, with no
/// task) that sends its next request right after the drain starts is
/// answered, with `Connection: close`; one idle for longer than the drain's
/// grace is closed at once.
fn drain_answers_a_parked_connections_last_request(io: &str) {
    let mut srv = Server::start(io, &["--cores", "1"]);
    let mut old = srv.connect();
    assert_eq!(old.roundtrip(get("/plaintext")).status, 200);
    thread::sleep(Duration::from_millis(1500));
    let mut recent = srv.connect();
    assert_eq!(recent.roundtrip(get("/plaintext")).status, 200);
    thread::sleep(Duration::from_millis(300));
    srv.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(100));
    recent.send(get("/plaintext"));
    let r = recent.read_response();
    assert_eq!(r.status, 200);
    assert!(
        r.closes(),
        "answered with Connection: close during the drain"
    );
    assert!(old.is_closed(), "idle past the grace: closed by the drain");
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the drain");
    assert!(status.success(), "exit 0, got {status:?}");
}

#[test]
fn drain_answers_a_parked_connections_last_request_uring() {
    drain_answers_a_parked_connections_last_request("uring");
}

#[test]
fn drain_answers_a_parked_connections_last_request_epoll() {
    drain_answers_a_parked_connections_last_request("epoll");
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let mut srv = Server::start("auto", &["--shutdown-timeout", "500ms"]);
    let mut stuck = srv.connect();
    stuck.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhel");
    thread::sleep(Duration::from_millis(100));
    srv.signal(libc::SIGINT);
    let status = srv
        .wait_exit(Duration::from_secs(10))
        .expect("exits at the deadline");
    assert!(status.success(), "{status:?}");
    assert!(srv
        .log_lines()
        .iter()
        .any(|l| l.contains("cut at the drain deadline")));
}

//! `--max-active-requests-per-core`: past the limit, a connection's request
//! waits unread, and is served in turn, or after `--db-wait-timeout` at the
//! latest; a request waiting on its client leaves its room to the others.
//! Real server, real PostgreSQL (a lock holds the reads), real TCP.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::Db;
use crate::harness::{get, Conn, Server};
use crate::pgfix::{shared, SpawnedPsql};

/// One core with room for one request at work; a long head timeout (the
/// wait for room is bounded by it and by `--db-wait-timeout`, which each
/// test sets).
const ROOM_FOR_ONE: [&str; 6] = [
    "--cores",
    "1",
    "--max-active-requests-per-core",
    "1",
    "--head-timeout",
    "60s",
];

/// A keep-alive connection that made one request.
fn served_conn(srv: &Server) -> Conn {
    let mut c = srv.connect();
    c.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(c.roundtrip(get("/healthz")).status, 200);
    c
}

/// Nothing arrives on `c` for `wait`.
fn assert_silent(c: &mut Conn, wait: Duration, what: &str) {
    c.s.set_read_timeout(Some(wait)).unwrap();
    let mut b = [0u8; 1];
    match c.read_some(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("{what}: expected no answer yet, got {other:?}"),
    }
    c.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
}

/// Takes an exclusive lock on `orders` in another session (reads of the
/// orders wait behind it) and returns once it is granted.
fn lock_orders(db: &Db) -> SpawnedPsql {
    let holder = shared().psql_spawn_in(
        &db.name,
        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600)",
    );
    wait_for(db, "AccessExclusiveLock' AND granted", "the lock is taken");
    holder
}

fn wait_for(db: &Db, lock_clause: &str, what: &str) {
    let until = Instant::now() + Duration::from_secs(20);
    while db.sql(&format!(
        "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'relation' \
         AND relation = 'orders'::regclass AND mode = '{lock_clause}"
    )) != "t"
    {
        assert!(Instant::now() < until, "{what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn unlock_orders(db: &Db, mut holder: SpawnedPsql) {
    db.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'BEGIN; LOCK TABLE orders%' AND datname = current_database()",
    );
    let _ = holder.wait();
}

/// Starts `GET /orders` on a new connection and returns once PostgreSQL has
/// it waiting behind the lock. The connection comes back open with the
/// status: closed, it would be read (its end) as one more request, which
/// may have to wait for room and be counted as queued.
fn blocked_read(srv: &Server, db: &Db) -> thread::JoinHandle<(u16, Conn)> {
    let addr = srv.addr;
    let reader = thread::spawn(move || {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut c = Conn::from_parts(s, Vec::new());
        (c.roundtrip(get("/orders?limit=5")).status, c)
    });
    wait_for(
        db,
        "AccessShareLock' AND NOT granted",
        "the read waits behind the lock",
    );
    reader
}

/// One core with room for one request, taken by a read held behind a lock;
/// a second connection has sent `GET /healthz`. `db_wait` bounds the wait
/// for room (the read holds its pipeline slot: nothing else waits for one).
struct OneReadAtWork {
    srv: Server,
    db: Db<'static>,
    holder: SpawnedPsql,
    read: thread::JoinHandle<(u16, Conn)>,
    waiting: Conn,
}

impl OneReadAtWork {
    fn start(db_wait: &str) -> Self {
        let db = Db::new(shared(), 10);
        let srv = db.server(
            &[
                &ROOM_FOR_ONE[..],
                &["--db-query-timeout", "60s", "--db-wait-timeout", db_wait],
            ]
            .concat(),
        );
        let mut waiting = served_conn(&srv);
        let holder = lock_orders(&db);
        let read = blocked_read(&srv, &db);
        waiting.send(get("/healthz"));
        OneReadAtWork {
            srv,
            db,
            holder,
            read,
            waiting,
        }
    }

    /// Lets the read finish; it must have been answered 200. Returns the
    /// server, the waiting connection and the read's (open).
    fn release(self) -> (Server, Conn, Conn) {
        unlock_orders(&self.db, self.holder);
        let (status, read) = self.read.join().unwrap();
        assert_eq!(status, 200);
        (self.srv, self.waiting, read)
    }
}

#[test]
fn past_the_limit_a_request_waits_unread_and_is_served_in_turn() {
    let mut scene = OneReadAtWork::start("60s");
    // The one request at work waits on the database: the next one is not
    // read.
    assert_silent(
        &mut scene.waiting,
        Duration::from_millis(1500),
        "queued request",
    );
    let (srv, mut waiting, _read) = scene.release();
    let r = waiting.read_response();
    assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
    // And the connection goes on as any other.
    assert_eq!(waiting.roundtrip(get("/healthz")).status, 200);
    assert_eq!(srv.counter("ringside_requests_queued_total"), 1);
}

#[test]
fn a_queued_request_waits_no_longer_than_for_a_database_slot() {
    let mut scene = OneReadAtWork::start("2s");
    // Answered while the request at work still waits on the lock, well
    // before the 60 s head timeout.
    scene
        .waiting
        .s
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = scene.waiting.read_response();
    assert_eq!(r.status, 200);
    assert!(
        !scene.read.is_finished(),
        "the read is still held by the lock"
    );
    let (srv, _, _read) = scene.release();
    assert_eq!(srv.counter("ringside_requests_queued_total"), 1);
}

#[test]
fn a_drain_answers_a_request_waiting_for_room_at_once() {
    let mut scene = OneReadAtWork::start("60s");
    assert_silent(
        &mut scene.waiting,
        Duration::from_millis(500),
        "queued request",
    );
    scene.srv.signal(libc::SIGTERM);
    // Answered while the request at work still waits on the lock, well
    // before the 60 s bound, and told the connection ends.
    scene
        .waiting
        .s
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let r = scene.waiting.read_response();
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    assert!(
        !scene.read.is_finished(),
        "the read is still held by the lock"
    );
    unlock_orders(&scene.db, scene.holder);
    assert_eq!(scene.read.join().unwrap().0, 200);
}

#[test]
fn a_request_waiting_on_its_client_leaves_its_room_to_others() {
    let srv = Server::start(
        "auto",
        &[&ROOM_FOR_ONE[..], &["--db-wait-timeout", "60s"]].concat(),
    );
    let mut other = served_conn(&srv);
    // Well under the 60 s bound: only the room the slow request left can
    // answer it in time.
    other
        .s
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A body that comes slowly: its handler waits on the client.
    let mut slow = srv.connect();
    slow.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhello");
    thread::sleep(Duration::from_millis(300));
    let r = other.roundtrip(get("/healthz"));
    assert_eq!(r.status, 200);
    slow.send("world");
    let r = slow.read_response();
    assert_eq!((r.status, r.text()), (200, "helloworld".to_string()));
}

#[test]
fn a_client_slow_to_send_its_head_leaves_its_room_to_others() {
    let srv = Server::start(
        "auto",
        &[&ROOM_FOR_ONE[..], &["--db-wait-timeout", "60s"]].concat(),
    );
    // Readable, so it takes the room; then it waits for the rest of its
    // head, on its client.
    let mut slow = srv.connect();
    slow.send("GET /heal");
    thread::sleep(Duration::from_millis(300));
    let mut other = srv.connect();
    // Well under the 60 s bound.
    other
        .s
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(other.roundtrip(get("/healthz")).status, 200);
    slow.send("thz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(slow.read_response().status, 200);
}

const LIMIT: &str = "ringside_active_request_limit";

/// Reads `/orders` one after another on `c` for `span`.
fn quick_reads(c: &mut Conn, span: Duration) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        assert_eq!(c.roundtrip(get("/orders?limit=5")).status, 200);
    }
}

/// With `auto`, the limit follows the database's round trips, as the pool
/// reports them (runtime/limit_tuner.rs): it starts at its floor, 64; quick
/// reads let it up; reads held at the database (behind a lock, far longer
/// than with no load) bring it down to its floor; quick reads let it back
/// up.
#[test]
fn the_auto_limit_falls_while_requests_queue_at_the_database_and_rises_after() {
    let db = Db::new(shared(), 10);
    // Between a floor of 64 and a ceiling of 2 × 128 = 256.
    let srv = db.server(&[
        "--cores",
        "1",
        "--db-pool-size",
        "2",
        "--db-pipeline-depth",
        "128",
        "--db-query-timeout",
        "60s",
        "--db-wait-timeout",
        "60s",
    ]);
    assert_eq!(srv.counter(LIMIT), 64);
    let mut c = served_conn(&srv);
    // The first round trips measure the no-load time, under a pin; those
    // after it, as quick, let the limit grow.
    let until = Instant::now() + Duration::from_secs(20);
    while srv.counter(LIMIT) <= 64 {
        assert!(
            Instant::now() < until,
            "the limit did not grow from its floor"
        );
        quick_reads(&mut c, Duration::from_millis(150));
    }
    let mut seen = vec![srv.counter(LIMIT)];
    while *seen.last().unwrap() != 64 {
        assert!(
            seen.len() <= 20,
            "the limit did not reach its floor: {seen:?}"
        );
        let holder = lock_orders(&db);
        let held: Vec<_> = (0..20)
            .map(|_| {
                let addr = srv.addr;
                thread::spawn(move || {
                    let s = TcpStream::connect(addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    Conn::from_parts(s, Vec::new())
                        .roundtrip(get("/orders?limit=5"))
                        .status
                })
            })
            .collect();
        wait_for(
            &db,
            "AccessShareLock' AND NOT granted",
            "the reads wait behind the lock",
        );
        thread::sleep(Duration::from_millis(200));
        unlock_orders(&db, holder);
        for read in held {
            assert_eq!(read.join().unwrap(), 200);
        }
        // Quick reads close the window that holds the slow ones.
        quick_reads(&mut c, Duration::from_millis(150));
        seen.push(srv.counter(LIMIT));
    }
    let until = Instant::now() + Duration::from_secs(20);
    while srv.counter(LIMIT) <= 64 {
        assert!(Instant::now() < until, "the limit stayed at its floor");
        quick_reads(&mut c, Duration::from_millis(150));
    }
}

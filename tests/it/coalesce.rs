//! Coalesced reads (`--db-coalesce on`): identical `/orders` pages share an
//! execution only while it is still waiting to be sent, so a row committed
//! before a request was made is always in that request's page, under load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::Db;
use crate::harness::{get, Conn, Server};
use crate::pgfix::shared;

/// The server both read-your-writes tests run: coalescing on, two database
/// connections on one core, and a query deadline above any stall seen on a
/// loaded shared cluster (a 503 would say nothing about coalescing).
const COALESCING_SERVER: &[&str] = &[
    "--db-coalesce",
    "on",
    "--db-pool-size",
    "2",
    "--cores",
    "1",
    "--db-query-timeout",
    "60s",
];

/// A connection that waits up to 90 s for an answer. The read-your-writes
/// test is about which rows a page holds, not how fast it comes: on a
/// loaded 2-CPU VM, beside the other tests, single statements that take
/// 50 ms alone were seen to take 2–3 s, and a page behind a pipeline of
/// them longer than the default deadlines. A page never answered still
/// fails it.
fn patient_connect(srv: &Server) -> Conn {
    let s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    Conn::from_parts(s, Vec::new())
}

#[test]
fn a_committed_row_is_in_every_later_page_while_pages_are_coalesced() {
    let cluster = shared();
    let db = Db::new(cluster, 50);
    // Every page takes tens of milliseconds on the server after its
    // snapshot (a nap per row as it is read), so that executions are
    // always running while a row commits: one sent before the commit and
    // joined after it would miss the row. (The table goes behind a view;
    // rows are inserted into the table itself.)
    db.sql(
        "ALTER TABLE orders RENAME TO orders_data; \
         CREATE FUNCTION nap() RETURNS boolean LANGUAGE plpgsql \
           AS $$ BEGIN PERFORM pg_sleep(0.0005); RETURN true; END $$; \
         CREATE VIEW orders AS \
           SELECT id, CASE WHEN nap() THEN title END AS title FROM orders_data; \
         ALTER VIEW orders OWNER TO ringside_md5",
    );
    let srv = db.server(COALESCING_SERVER);
    let page = "/orders?limit=1000";

    // Identical pages, asked for all the time from 16 connections.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..16)
        .map(|_| {
            let (stop, answered) = (stop.clone(), answered.clone());
            let mut c = patient_connect(&srv);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.roundtrip(get(page));
                    assert_eq!(r.status, 200, "{}", r.text());
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Each insert is committed (psql returned) before its request is made:
    // the page must show it, whichever execution answered the request.
    let mut c = patient_connect(&srv);
    for i in 0..60 {
        let title = format!("read-your-writes {i} {}", std::process::id());
        db.sql(&format!(
            "INSERT INTO orders_data (title) VALUES ('{title}')"
        ));
        let r = c.roundtrip(get(page));
        assert_eq!(r.status, 200);
        assert!(
            r.text().contains(&title),
            "order {i} was committed before its request, but the page lacks it"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    // The pages were really shared (else this test would prove nothing).
    let coalesced = srv.counter("ringside_db_coalesced_total");
    println!(
        "{} pages under load, {coalesced} answered by another request's execution",
        answered.load(Ordering::Relaxed)
    );
    assert!(coalesced > 0, "no page was coalesced under load");
}

/// The gauge's value on the (single) core.
fn gauge(srv: &Server, name: &str) -> u64 {
    srv.counter(name)
}

/// Step by step, with a lock that keeps one execution running on the
/// server across a commit: a request made after the commit must not join
/// that execution, though an identical one is still open, and it sees the
/// row.
#[test]
fn a_request_never_joins_an_execution_sent_before_it() {
    let cluster = shared();
    let db = Db::new(cluster, 20);
    // Each page waits, inside PostgreSQL, for advisory lock 42 to be free
    // as it reads its rows (so after its snapshot was taken).
    db.sql(
        "ALTER TABLE orders RENAME TO orders_data; \
         CREATE FUNCTION gate() RETURNS boolean LANGUAGE plpgsql AS $$ BEGIN \
           PERFORM pg_advisory_lock_shared(42); PERFORM pg_advisory_unlock_shared(42); \
           RETURN true; END $$; \
         CREATE VIEW orders AS \
           SELECT id, CASE WHEN gate() THEN title END AS title FROM orders_data; \
         ALTER VIEW orders OWNER TO ringside_md5",
    );
    let srv = db.server(COALESCING_SERVER);
    let page = "/orders?limit=1000";
    let wait_for = |what: &str, sql: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while db.sql(sql) != "t" {
            assert!(Instant::now() < deadline, "{what}");
            thread::sleep(Duration::from_millis(10));
        }
    };

    // Close the gate: a session takes the lock and keeps it.
    let mut holder = cluster.psql_spawn_in(
        &db.name,
        "SELECT pg_advisory_lock(42); SELECT pg_sleep(600)",
    );
    wait_for(
        "the gate closes",
        "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    // A: its execution is sent and runs (snapshot taken), held at the gate.
    let mut a = srv.connect();
    a.send(get(page));
    wait_for(
        "A's execution waits at the gate",
        "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    // A row commits; then B asks for the identical page.
    db.sql("INSERT INTO orders_data (title) VALUES ('committed before B')");
    let mut b = srv.connect();
    b.send(get(page));
    // B starts an execution of its own (two in use), not joining A's.
    let deadline = Instant::now() + Duration::from_secs(5);
    while gauge(&srv, "ringside_db_pool_in_use") < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    // Open the gate.
    db.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'SELECT pg_advisory_lock(42)%' AND datname = current_database()",
    );
    let _ = holder.wait();
    let (ra, rb) = (a.read_response(), b.read_response());
    assert_eq!((ra.status, rb.status), (200, 200));
    assert!(
        !ra.text().contains("committed before B"),
        "A's execution ran before the commit (else this test proves nothing)"
    );
    assert!(
        rb.text().contains("committed before B"),
        "B was made after the commit, but its page lacks the row"
    );
}

#[test]
fn coalesced_pages_are_the_same_bytes_and_off_means_off() {
    let cluster = shared();
    let db = Db::new(cluster, 300);
    let on = db.server(&["--db-coalesce", "on"]);
    let off = db.server(&[]);
    for path in ["/orders", "/orders.json", "/orders?limit=7"] {
        let a = on.connect().roundtrip(get(path));
        let b = off.connect().roundtrip(get(path));
        assert_eq!((a.status, b.status), (200, 200));
        assert_eq!(a.body, b.body, "{path}");
        assert_eq!(a.header("content-type"), b.header("content-type"));
    }
    // Off: never shared, however many identical requests come at once.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = off.connect();
            thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(c.roundtrip(get("/orders")).status, 200);
                }
            })
        })
        .collect();
    for t in clients {
        t.join().unwrap();
    }
    assert_eq!(off.counter("ringside_db_coalesced_total"), 0);
}

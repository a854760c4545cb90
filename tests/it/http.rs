//! HTTP/1.1 behaviour over real sockets, on both io drivers.

use std::thread;
use std::time::{Duration, Instant};

use crate::both_drivers;
use crate::harness::{get, Conn};

/// Asserts an error response with `Connection: close`, then that the
/// server closed the connection.
fn assert_closing_error(c: &mut Conn, status: u16) {
    let r = c.read_response();
    assert_eq!(r.status, status, "body: {}", r.text());
    assert!(
        r.closes(),
        "{status} must carry Connection: close: {:?}",
        r.headers
    );
    assert!(
        r.text().starts_with(&status.to_string()),
        "short message: {}",
        r.text()
    );
    assert!(c.is_closed(), "connection must be closed after {status}");
}

fn refused(srv: &crate::harness::Server, request: &str, status: u16) {
    let mut c = srv.connect();
    c.send(request);
    assert_closing_error(&mut c, status);
}

both_drivers! {
    fn plaintext_and_health(&[], srv) {
        let mut c = srv.connect();
        let r = c.roundtrip(get("/plaintext"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Hello, World!");
        assert_eq!(r.header("content-length"), Some("13"));
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        let date = r.header("date").expect("Date header");
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
        assert!(!r.closes());
        let r = c.roundtrip(get("/healthz"));
        assert_eq!(r.status, 200);
    }

    fn head_has_get_headers_and_no_body(&[], srv) {
        let mut c = srv.connect();
        let g = c.roundtrip(get("/plaintext"));
        c.send("HEAD /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
        let h = c.read_response_to(true);
        assert_eq!(h.status, 200);
        assert_eq!(h.header("content-length"), g.header("content-length"));
        assert_eq!(h.header("content-type"), g.header("content-type"));
        // No body bytes may follow: the next response starts right away.
        let r = c.roundtrip(get("/healthz"));
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok\n");
    }

    fn not_found_and_method_not_allowed(&[], srv) {
        let mut c = srv.connect();
        let r = c.roundtrip(get("/nope"));
        assert_eq!(r.status, 404);
        assert!(r.text().starts_with("404"));
        let r = c.roundtrip("DELETE /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        // Both keep the connection.
        assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
    }

    fn keep_alive_rules(&[], srv) {
        // HTTP/1.1: kept by default.
        let mut c = srv.connect();
        for _ in 0..3 {
            assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
        }
        // Connection: close from the client is honoured.
        let r = c.roundtrip("GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(r.closes());
        assert!(c.is_closed());
        // HTTP/1.0: closed by default...
        let mut c = srv.connect();
        let r = c.roundtrip("GET /plaintext HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(c.is_closed());
        // ...kept with Connection: keep-alive, which the answer confirms.
        let mut c = srv.connect();
        let r = c.roundtrip("GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("keep-alive"));
        let r = c.roundtrip("GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(r.status, 200);
    }

    fn pipelined_requests_answered_in_order(&[], srv) {
        let mut c = srv.connect();
        let mut batch = String::new();
        for path in ["/plaintext", "/healthz", "/nope", "/plaintext"] {
            batch.push_str(&get(path));
        }
        batch.push_str("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        batch.push_str(&get("/healthz"));
        c.send(&batch);
        let statuses: Vec<u16> = (0..6).map(|_| c.read_response().status).collect();
        assert_eq!(statuses, [200, 200, 404, 200, 200, 200]);
        // A request split over several writes still parses.
        c.send("GET /plain");
        thread::sleep(Duration::from_millis(50));
        c.send("text HTTP/1.1\r\nHo");
        thread::sleep(Duration::from_millis(50));
        c.send("st: t\r\n\r\n");
        assert_eq!(c.read_response().text(), "Hello, World!");
    }

    // Sockets wait on the core's epoll set edge-triggered: a batch larger
    // than a read's room must be read to its end without a new event, and
    // the connection must still wake for what comes after it went quiet.
    fn a_batch_larger_than_a_read_is_answered_and_the_connection_wakes_again(&[], srv) {
        let mut c = srv.connect();
        // 64-byte requests: a read of the pool's buffer (4 KiB by default,
        // any power of two) ends exactly between two of them, so the read
        // that filled its room leaves nothing half-parsed and more in the
        // socket, with no new event coming for it.
        let one = "GET /plaintext HTTP/1.1\r\nHost: t\r\nX: 01234567890123456789012\r\n\r\n";
        assert_eq!(one.len(), 64);
        let n = 1_024;
        let batch = one.repeat(n);
        c.send(&batch);
        for i in 0..n {
            let r = c.read_response();
            assert_eq!((i, r.status), (i, 200));
        }
        for pause_ms in [0, 20, 300] {
            thread::sleep(Duration::from_millis(pause_ms));
            let r = c.roundtrip(get("/plaintext"));
            assert_eq!(r.text(), "Hello, World!", "after a {pause_ms} ms pause");
        }
    }

    fn content_length_and_chunked_bodies(&[], srv) {
        let mut c = srv.connect();
        let r = c.roundtrip("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
        assert_eq!(r.text(), "hello world");
        let r = c.roundtrip(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: dropped\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello world");
        assert!(r.header("x-trailer").is_none());
        // A large chunked body, sent in pieces.
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(7919) {
            c.send(format!("{:x}\r\n", piece.len()));
            c.send(piece);
            c.send("\r\n");
        }
        c.send("0\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.body, body);
    }

    fn expect_100_continue(&[], srv) {
        // Reading the body sends 100 Continue first.
        let mut c = srv.connect();
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 100);
        c.send("ping");
        let r = c.read_response();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ping");
        // A handler that answers without reading: the final status alone.
        let mut c = srv.connect();
        c.send("POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 405);
    }

    fn unread_small_body_is_discarded_and_connection_kept(&[], srv) {
        let mut c = srv.connect();
        let r = c.roundtrip("POST /plaintext HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(r.status, 405);
        assert!(!r.closes());
        assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
    }

    fn framing_errors_close_the_connection(&[], srv) {
        let cases: &[(&str, u16)] = &[
            ("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3x\r\n\r\nabc", 400),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: t\r\nX-A : a\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            // Host must be RFC 3986 `host [ ":" port ]`.
            ("GET /plaintext HTTP/1.1\r\nHost: exa mple\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: x@y\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
            ("GET /plaintext HTTP/1.1\r\nHost: h:99999999\r\n\r\n", 400),
            ("GET /plaintext HTTP/2.0\r\nHost: t\r\n\r\n", 505),
            ("GET /plaintext HTTP/3.1\r\nHost: t\r\n\r\n", 505),
            ("GARBAGE\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let mut c = srv.connect();
            c.send(req);
            let r = c.read_response();
            assert_eq!(r.status, *status, "for {req:?}: {}", r.text());
            assert!(r.closes(), "for {req:?}");
            assert!(c.is_closed(), "for {req:?}");
        }
    }

    fn malformed_chunk_sizes(&[], srv) {
        let head = "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
        for chunks in ["\r\nabc\r\n0\r\n\r\n", "zz\r\nabc\r\n0\r\n\r\n", "3\nabc\r\n0\r\n\r\n", "3\r\nabcX\r\n0\r\n\r\n"] {
            let mut c = srv.connect();
            c.send(format!("{head}{chunks}"));
            let r = c.read_response();
            assert_eq!(r.status, 400, "for {chunks:?}: {}", r.text());
            assert!(r.closes());
            assert!(c.is_closed());
        }
    }

    fn chunk_size_overflow(&["--max-body-bytes", "18446744073709551615"], srv) {
        // With no practical body limit, a size past u64 is malformed (400);
        // under a limit it is refused as too large (413) before that.
        refused(&srv, "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n", 400);
    }

    fn limits(&["--max-body-bytes", "1000", "--max-request-line", "1024", "--max-head-bytes", "4096", "--max-headers", "16"], srv) {
        refused(&srv, &format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(2000)), 414);
        // 414 even before the line is complete.
        let mut c = srv.connect();
        c.send(format!("GET /{}", "a".repeat(3000)));
        assert_closing_error(&mut c, 414);
        refused(&srv, &format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(5000)), 431);
        let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
        refused(&srv, &format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n"), 431);
        // Body limit: by Content-Length up front, and by chunked as it grows.
        let mut c = srv.connect();
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
        c.send_lossy(vec![b'x'; 5000]);
        assert_closing_error(&mut c, 413);
        let mut c = srv.connect();
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..3 {
            c.send_lossy(format!("1f4\r\n{}\r\n", "y".repeat(500)));
        }
        assert_closing_error(&mut c, 413);
        // Within the limits everything still works.
        assert_eq!(srv.connect().roundtrip(get("/plaintext")).status, 200);
    }

    fn head_timeout_on_trickled_headers(&["--head-timeout", "600ms"], srv) {
        let mut c = srv.connect();
        let start = Instant::now();
        for piece in ["GET /plain", "text HTTP/1.1\r\n", "Host: t\r\n"] {
            c.send(piece);
            thread::sleep(Duration::from_millis(250));
        }
        assert_closing_error(&mut c, 408);
        assert!(start.elapsed() < Duration::from_secs(5));
        // A connection that sends nothing gets 408 too.
        let mut c = srv.connect();
        assert_closing_error(&mut c, 408);
    }

    fn keepalive_idle_timeout(&["--keepalive-timeout", "500ms"], srv) {
        let mut c = srv.connect();
        assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
        let start = Instant::now();
        assert!(c.is_closed(), "idle keep-alive connection is closed");
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(300), "not before the timeout: {waited:?}");
    }

    fn idle_connections_park_and_wake_for_their_next_requests(&[], srv) {
        let parked = || -> u64 {
            let text = srv.connect().roundtrip(get("/metrics")).text();
            text.lines()
                .filter(|l| l.starts_with("ringside_idle_parked_connections{"))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        let mut conns: Vec<_> = (0..40).map(|_| srv.connect()).collect();
        for c in &mut conns {
            assert_eq!(c.roundtrip(get("/plaintext")).status, 200);
        }
        // Past the busy window (one deadline tick, 100 ms at most) the
        // connections park, with no task.
        thread::sleep(Duration::from_millis(400));
        let n = parked();
        assert!(n >= 40, "{n} connections parked, expected the 40 idle ones");
        // Each wakes for its next requests, pipelined ones included, and
        // parks again.
        for round in 0..2 {
            for c in &mut conns {
                c.send(get("/plaintext").repeat(3));
                for _ in 0..3 {
                    let r = c.read_response();
                    assert_eq!(r.status, 200, "round {round}");
                    assert_eq!(r.text(), "Hello, World!");
                }
            }
            thread::sleep(Duration::from_millis(400));
        }
        assert!(parked() >= 40);
        // Closed by their clients, they wake, read the end and go.
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(5);
        while parked() > 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        let left = parked();
        assert!(left <= 2, "{left} connections still parked after their clients closed");
    }

    fn body_timeout(&["--body-timeout", "500ms"], srv) {
        let mut c = srv.connect();
        c.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
        assert_closing_error(&mut c, 408);
    }

    fn write_timeout_cuts_a_client_that_stops_reading(&["--write-timeout", "500ms", "--max-body-bytes", "64MiB"], srv) {
        let mut c = srv.connect();
        let size = 48 << 20;
        c.send(format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n"));
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..48 {
            c.send(&chunk);
        }
        // Read nothing while the server tries to write 48 MiB, then see
        // that it gave up: the stream ends before the whole body.
        thread::sleep(Duration::from_secs(2));
        let mut total = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match std::io::Read::read(&mut c.s, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        assert!(total < size, "the server cut the response ({total} bytes read)");
    }

    fn connection_limit_sheds_with_503(&["--cores", "1", "--max-connections-per-core", "2"], srv) {
        let mut a = srv.connect();
        let mut b = srv.connect();
        assert_eq!(a.roundtrip(get("/plaintext")).status, 200);
        assert_eq!(b.roundtrip(get("/plaintext")).status, 200);
        let mut c = srv.connect();
        let r = c.read_response();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.closes());
        assert!(c.is_closed());
        // Once one closes, a new connection is served again.
        drop(a);
        thread::sleep(Duration::from_millis(200));
        assert_eq!(srv.connect().roundtrip(get("/plaintext")).status, 200);
        assert_eq!(b.roundtrip(get("/plaintext")).status, 200);
    }
}

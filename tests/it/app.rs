//! The article's application end to end: real HTTP over TCP to the real
//! server, a real PostgreSQL behind it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{get, Server};
use crate::pgfix::{shared, Cluster};

/// A fresh database on a cluster, migrated (and seeded when asked).
pub struct Db<'c> {
    cluster: &'c Cluster,
    pub name: String,
    pub url: String,
}

impl<'c> Db<'c> {
    pub fn new(cluster: &'c Cluster, orders: u64) -> Db<'c> {
        let (name, url) = cluster.new_database("app");
        let db = Db { cluster, name, url };
        db.ringside(&["migrate"]);
        if orders > 0 {
            db.ringside(&["seed", "--orders", &orders.to_string()]);
        }
        db
    }

    fn ringside(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_ringside"))
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ringside {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Slows inserts into contacts down: a 10 ms pause every `every` rows.
    pub fn slow_down_contacts(&self, every: u32) {
        self.sql(&format!(
            "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.id % {every} = 0 THEN PERFORM pg_sleep(0.01); END IF; RETURN NEW; END $$; \
             CREATE TRIGGER slow BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION slow_insert();"
        ));
    }

    /// SQL as the superuser in this database.
    pub fn sql(&self, sql: &str) -> String {
        self.cluster.psql_in(&self.name, sql)
    }

    pub fn count(&self, table: &str) -> u64 {
        self.sql(&format!("SELECT count(*) FROM {table}"))
            .lines()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn server(&self, extra: &[&str]) -> Server {
        Server::start_with_env("auto", extra, &[("DATABASE_URL", &self.url)])
    }
}

pub fn contacts_csv(rows: u64, bad_line: Option<u64>) -> Vec<u8> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringside"));
    cmd.args(["gen-contacts", "--rows", &rows.to_string()]);
    if let Some(l) = bad_line {
        cmd.args(["--bad-line", &l.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn post_csv(srv: &Server, body: &[u8]) -> crate::harness::Response {
    post_csv_to(srv.addr, body)
}

pub fn post_csv_to(addr: std::net::SocketAddr, body: &[u8]) -> crate::harness::Response {
    post_csv_waiting(addr, body, Duration::from_secs(30))
}

/// `post_csv_to`, waiting up to `patience` for the answer once the body is
/// sent (a slowed database may still be taking what the socket buffers hold).
pub fn post_csv_waiting(
    addr: std::net::SocketAddr,
    body: &[u8],
    patience: Duration,
) -> crate::harness::Response {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(patience)).unwrap();
    // A server that stops reading the body without closing fails the
    // test (the read after the lossy send) instead of hanging it.
    s.set_write_timeout(Some(patience)).unwrap();
    let mut c = crate::harness::Conn::from_parts(s, Vec::new());
    c.send(format!(
        "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    c.send_lossy(body);
    c.read_response()
}

fn titles_in(html: &str) -> Vec<&str> {
    html.split("<tr><td>")
        .skip(1)
        .map(|s| s.split("</td>").next().unwrap())
        .collect()
}

#[test]
fn orders_page_rows_order_escaping_limits_and_json() {
    let db = Db::new(shared(), 300);
    let srv = db.server(&[]);
    let mut c = srv.connect();
    let r = c.roundtrip(get("/orders"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.text();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<meta charset=\"utf-8\">"));
    let titles = titles_in(&html);
    assert_eq!(titles.len(), 200, "the article's LIMIT 200");
    for (i, t) in titles.iter().enumerate() {
        assert!(t.ends_with(&format!(" #{}", i + 1)), "ordered by id: {t}");
    }
    assert!(html.contains("&lt;script&gt;alert(&quot;order&quot;)&lt;/script&gt;"));
    assert!(
        !html.contains("<script>"),
        "no title reaches the page unescaped"
    );
    assert!(html.contains("Tom &amp; Jerry&#39;s &quot;anvil&quot;"));
    assert!(html.contains("東京の弁当箱") && html.contains("Crème brûlée set für Zoë"));

    // The default page's statement has its limit written in; `?limit=200`
    // binds it: the same page either way.
    assert_eq!(c.roundtrip(get("/orders?limit=200")).text(), html);
    assert_eq!(
        titles_in(&c.roundtrip(get("/orders?limit=5")).text()).len(),
        5
    );
    assert_eq!(
        titles_in(&c.roundtrip(get("/orders?limit=1000")).text()).len(),
        300
    );
    for bad in ["0", "1001", "-1", "abc"] {
        let r = c.roundtrip(get(&format!("/orders?limit={bad}")));
        assert_eq!(r.status, 400, "limit={bad}");
    }

    let r =
        c.roundtrip("GET /orders?limit=3 HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n\r\n");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    assert!(
        text.starts_with("[\"Espresso") || text.starts_with('['),
        "{text}"
    );
    assert_eq!(text.matches("\",\"").count(), 2, "three strings: {text}");
    let r = c.roundtrip(get("/orders.json"));
    assert!(r.text().contains("\\u003cscript>"), "JSON is safe to embed");
}

#[test]
fn orders_answer_503_while_the_database_is_down_and_recover() {
    let cluster = Cluster::private();
    let db = Db::new(&cluster, 10);
    let srv = db.server(&["--db-query-timeout", "1s", "--db-wait-timeout", "500ms"]);
    let mut c = srv.connect();
    assert_eq!(c.roundtrip(get("/orders")).status, 200);
    cluster.pg_ctl(&["-m", "fast", "stop"]);
    for _ in 0..3 {
        let start = Instant::now();
        let r = c.roundtrip(get("/orders"));
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "quickly, not a hang"
        );
    }
    cluster.pg_ctl(&["start"]);
    let start = Instant::now();
    loop {
        let r = c.roundtrip(get("/orders"));
        if r.status == 200 {
            assert_eq!(titles_in(&r.text()).len(), 10);
            break;
        }
        assert_eq!(r.status, 503);
        assert!(start.elapsed() < Duration::from_secs(15), "recovers");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn upload_of_ten_thousand_addresses() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&[]);
    let r = post_csv(&srv, &contacts_csv(10_000, None));
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.text();
    assert!(body.contains("\"rows\":10000"), "{body}");
    let import_id: u64 = body
        .split("\"import_id\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(db.count("contacts"), 10_000);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM contacts WHERE import_id = {import_id}"
        ))
        .lines()
        .last(),
        Some("10000")
    );
    // Quoted fields arrived intact.
    assert_eq!(
        db.sql("SELECT street FROM contacts WHERE street LIKE 'The \"Old\" Mill%' LIMIT 1")
            .lines()
            .last()
            .map(|s| s.starts_with("The \"Old\" Mill")),
        Some(true)
    );
}

#[test]
fn a_bad_record_on_line_5000_adds_nothing() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&[]);
    let r = post_csv(&srv, &contacts_csv(10_000, Some(5000)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("line 5000"), "{}", r.text());
    assert_eq!(db.count("contacts"), 0);
    assert_eq!(
        db.count("imports"),
        0,
        "the import row went with the rollback"
    );
    // A value the database rejects (an empty name is NULL, and name is NOT
    // NULL): 422, naming the line, nothing kept.
    let csv = b"name,city\nAda,Berlin\n,Lyon\nGrace,Boston\n";
    let r = post_csv(&srv, csv);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("line 3"), "{}", r.text());
    assert_eq!(db.count("contacts"), 0);
    // The pool's connection is clean afterwards.
    let r = post_csv(&srv, b"name\nAda\n");
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn upload_requests_that_are_refused() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&["--max-upload-bytes", "100KiB"]);
    let mut c = srv.connect();
    let r = c.roundtrip("POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    assert_eq!(r.status, 415);
    let r = post_csv(&srv, b"name,phone\nAda,1\n");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("unknown column \"phone\""),
        "{}",
        r.text()
    );
    let r = post_csv(&srv, b"email,city\na@b.c,Lyon\n");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("\"name\" is missing"), "{}", r.text());
    let r = post_csv(&srv, b"");
    assert_eq!(r.status, 400);
    let r = post_csv(&srv, &contacts_csv(5000, None));
    assert_eq!(r.status, 413, "past --max-upload-bytes");
    assert_eq!(db.count("contacts"), 0);
}

#[test]
fn chunked_uploads_columns_in_any_order_and_embedded_newlines() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&[]);
    let mut c = srv.connect();
    c.send("POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n");
    let body = "country,name,street\r\nDE,Ada,\"Line one\r\nLine two\"\r\nFR,\"Zoë, \"\"the\"\" one\",Quai 1\r\n";
    for piece in body.as_bytes().chunks(7) {
        c.send(format!("{:x}\r\n", piece.len()));
        c.send(piece);
        c.send("\r\n");
    }
    c.send("0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.text().contains("\"rows\":2"));
    assert_eq!(
        db.sql("SELECT street FROM contacts WHERE name = 'Ada'")
            .trim_end(),
        db.sql("SELECT E'Line one\\r\\nLine two'").trim_end()
    );
    assert!(db
        .sql("SELECT name FROM contacts WHERE country = 'FR'")
        .contains("Zoë, \"the\" one"));
}

#[test]
fn a_client_that_disconnects_halfway_adds_nothing() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&[]);
    let csv = contacts_csv(50_000, None);
    {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        write!(
            s,
            "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
            csv.len()
        )
        .unwrap();
        s.write_all(&csv[..csv.len() / 2]).unwrap();
        thread::sleep(Duration::from_millis(300));
    }
    // The server notices, rolls back and returns the connection clean.
    thread::sleep(Duration::from_millis(500));
    assert_eq!(db.count("contacts"), 0);
    let r = post_csv(&srv, b"name\nLinus\n");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(db.count("contacts"), 1);
}

#[test]
fn uploads_on_every_core_at_once() {
    let db = Db::new(shared(), 0);
    let srv = db.server(&[]);
    let csv = contacts_csv(3000, None);
    let addr = srv.addr;
    thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post_csv_to(addr, &csv)))
            .collect();
        for h in handles {
            let r = h.join().unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
        }
    });
    assert_eq!(db.count("contacts"), 24_000);
    assert_eq!(db.count("imports"), 8);
}

#[test]
fn a_slow_database_holds_the_client_back_and_memory_stays_flat() {
    let db = Db::new(shared(), 0);
    db.slow_down_contacts(200);
    let srv = db.server(&["--max-upload-bytes", "1GiB"]);
    let rss_before = srv.rss_kib();
    let csv = contacts_csv(1_000_000, None);
    let total = csv.len();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    write!(
        s,
        "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {total}\r\n\r\n"
    )
    .unwrap();
    s.set_nonblocking(true).unwrap();
    // Send as fast as the socket takes it for three seconds.
    let start = Instant::now();
    let mut sent = 0;
    let mut peak_rss = rss_before;
    while start.elapsed() < Duration::from_secs(3) && sent < total {
        match s.write(&csv[sent..(sent + 65536).min(total)]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("send: {e}"),
        }
        peak_rss = peak_rss.max(srv.rss_kib());
    }
    assert!(
        sent < total / 2,
        "the client was held back: {sent} of {total} bytes taken in 3 s"
    );
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(growth < 32 * 1024, "server memory grew by {growth} KiB");
    // Giving up mid-upload keeps nothing.
    drop(s);
    thread::sleep(Duration::from_secs(1));
    assert_eq!(db.count("contacts"), 0);
}

#[test]
fn export_streams_every_order_and_a_slow_reader_keeps_memory_flat() {
    let db = Db::new(shared(), 100_000);
    let srv = db.server(&[]);
    let rss_before = srv.rss_kib();
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(get("/orders/export.csv").as_bytes()).unwrap();
    // Read slowly for two seconds.
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    let mut peak_rss = rss_before;
    while start.elapsed() < Duration::from_secs(2) {
        let n = match s.read(&mut buf) {
            // A socket with a receive timeout answers EINTR, not a restart.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.unwrap(),
        };
        data.extend_from_slice(&buf[..n]);
        thread::sleep(Duration::from_millis(20));
        peak_rss = peak_rss.max(srv.rss_kib());
    }
    let growth = peak_rss.saturating_sub(rss_before);
    assert!(
        growth < 16 * 1024,
        "server memory grew by {growth} KiB for a slow reader"
    );
    // Then read the rest and check it.
    let mut rest = Vec::new();
    let mut conn = crate::harness::Conn::from_parts(s, data);
    let r = conn.read_response();
    rest.extend_from_slice(&r.body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let text = String::from_utf8(rest).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id,title,customer,amount_cents,currency,status,created_at")
    );
    // Titles with commas and quotes are quoted, so count records by the
    // id column rather than by physical lines.
    let ids: Vec<u64> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(ids.len(), 100_000);
    assert!(ids.windows(2).all(|w| w[0] + 1 == w[1]), "in id order");
}

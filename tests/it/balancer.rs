//! Two ringside instances behind a real HAProxy, configured from
//! `deploy/haproxy/haproxy.cfg` (only the addresses changed): one instance
//! is killed with SIGKILL under continuous `/orders` and uploads, then
//! restarted. No `/orders` fails; each upload either answered 201 with all
//! its rows in the database, or failed with none of them there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::app::{contacts_csv, Db};
use crate::harness::{get, Server, StopOnDrop};
use crate::ops::free_port;
use crate::pgfix::shared;

struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _config: tempfile_path::Path,
}

/// A file removed when dropped (no tempfile crate for one path).
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project's HAProxy configuration with the test's addresses: the
/// frontend on a free loopback port, one `server` line per instance.
fn start_haproxy(instances: &[SocketAddr]) -> Haproxy {
    let shipped = include_str!("../../deploy/haproxy/haproxy.cfg");
    let port = free_port();
    let mut cfg = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("server ") {
            continue;
        }
        if trimmed.starts_with("bind ") {
            cfg.push_str(&format!("    bind 127.0.0.1:{port}\n"));
        } else if trimmed.starts_with("maxconn ") && line.starts_with("    maxconn") {
            // The global limit sizes HAProxy's file table; this machine
            // allows fewer open files than production's.
            cfg.push_str("    maxconn 4000\n");
        } else {
            cfg.push_str(line);
            cfg.push('\n');
        }
    }
    for (i, a) in instances.iter().enumerate() {
        cfg.push_str(&format!("    server app{} {a}\n", i + 1));
    }
    let path = std::env::temp_dir().join(format!(
        "ringside-haproxy-{}-{port}.cfg",
        std::process::id()
    ));
    std::fs::write(&path, cfg).unwrap();
    let haproxy = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("haproxy");
    let check = Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("haproxy (scripts/test installs it)");
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not listen");
        thread::sleep(Duration::from_millis(50));
    }
    Haproxy {
        child,
        addr,
        _config: tempfile_path::Path(path),
    }
}

/// POSTs a CSV on its own connection; `None` when no HTTP answer came
/// (the connection broke).
fn upload(addr: SocketAddr, body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let head = format!(
        "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    // The write may fail when the instance dies mid-body; the answer (a
    // 502 from HAProxy) may still be readable.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// `"import_id":N,"rows":M` from a 201's JSON body.
fn import_of(body: &str) -> (u64, u64) {
    let num = |key: &str| -> u64 {
        body.split(&format!("\"{key}\":"))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {body}"))
    };
    (num("import_id"), num("rows"))
}

fn orders_served(srv: &Server) -> u64 {
    let page = srv.connect().roundtrip(get("/metrics")).text();
    page.lines()
        .filter(|l| l.starts_with("ringside_requests_total{") && l.contains("route=\"orders\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn an_instance_killed_and_restarted_behind_haproxy_fails_no_read_and_half_imports_nothing() {
    let db = Db::new(shared(), 200);
    let ports = [free_port(), free_port()];
    let start = |port: u16| db.server(&["--cores", "1", "--listen", &format!("127.0.0.1:{port}")]);
    let mut first = start(ports[0]);
    let second = start(ports[1]);
    let lb = start_haproxy(&[first.addr, second.addr]);

    let csv = contacts_csv(2_000, None);
    let stop = AtomicBool::new(false);
    let (orders_ok, orders_failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let imports: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let uploads_failed = AtomicU64::new(0);

    thread::scope(|scope| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    // A new client connection now and then, as browsers do.
                    let s = TcpStream::connect(lb.addr).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    let mut c = crate::harness::Conn::from_parts(s, Vec::new());
                    for _ in 0..20 {
                        let r = c.roundtrip(get("/orders"));
                        if r.status == 200 && r.text().contains(" #200</td>") {
                            orders_ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            eprintln!("failed /orders: {} {}", r.status, r.text());
                            orders_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match upload(lb.addr, &csv) {
                        Some((201, body)) => imports.lock().unwrap().push(import_of(&body)),
                        _ => {
                            uploads_failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }

        let wait = |what: &str, ok: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !ok() {
                assert!(Instant::now() < deadline, "gave up waiting: {what}");
                thread::sleep(Duration::from_millis(50));
            }
        };
        wait("both instances serve", &|| {
            orders_served(&first) >= 20 && orders_served(&second) >= 20
        });
        wait("uploads land", &|| imports.lock().unwrap().len() >= 2);

        first.signal(libc::SIGKILL);
        assert!(first.wait_exit(Duration::from_secs(10)).is_some());
        // HAProxy sees it down within two checks; meanwhile its requests
        // are retried on the other instance.
        thread::sleep(Duration::from_secs(3));
        let uploads_before = imports.lock().unwrap().len();
        first = start(ports[0]);
        wait("the restarted instance gets traffic again", &|| {
            orders_served(&first) >= 50
        });
        wait("uploads continue", &|| {
            imports.lock().unwrap().len() >= uploads_before + 2
        });
        stop.store(true, Ordering::Relaxed);
    });

    assert_eq!(
        orders_failed.load(Ordering::Relaxed),
        0,
        "no failed /orders"
    );
    assert!(orders_ok.load(Ordering::Relaxed) > 100);
    // Every upload answered 201 has all its rows.
    let imports = imports.into_inner().unwrap();
    for &(id, rows) in &imports {
        assert_eq!(rows, 2_000);
        assert_eq!(
            db.sql(&format!(
                "SELECT count(*) FROM contacts WHERE import_id = {id}"
            )),
            "2000",
            "import {id}"
        );
    }
    // And nothing is half-imported: every import in the database (a kill
    // can land between a COMMIT and its 201, so there may be more than
    // were answered) has all 2,000 rows, and no row lacks its import.
    let partial = db.sql(
        "SELECT count(*) FROM imports i \
         WHERE i.rows IS DISTINCT FROM 2000 \
            OR (SELECT count(*) FROM contacts c WHERE c.import_id = i.id) <> 2000",
    );
    assert_eq!(partial, "0", "an import is incomplete");
    let committed: u64 = db.sql("SELECT count(*) FROM imports").parse().unwrap();
    assert!(committed >= imports.len() as u64);
    assert_eq!(
        db.count("contacts"),
        committed * 2_000,
        "no row outside a complete import"
    );
    eprintln!(
        "{} /orders, {} uploads imported, {} uploads failed (cut by the kill)",
        orders_ok.load(Ordering::Relaxed),
        imports.len(),
        uploads_failed.load(Ordering::Relaxed)
    );
}

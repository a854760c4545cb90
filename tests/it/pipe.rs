//! The connection driver and the application over an in-memory pipe
//! (`ringside::http::pipe`): no socket between the client and the server,
//! a real PostgreSQL behind the routes that need one. The real-socket
//! tests in the other modules are the second layer.

use std::rc::Rc;
use std::time::Duration;

use ringside::app::{App, AppSettings, Database};
use ringside::config::Config;
use ringside::http::{pipe, HttpCore, PipeEnd, Stream};
use ringside::pg::PgConfig;
use ringside::runtime::{CoreCtx, IoDriver};

use crate::app::{contacts_csv, Db};
use crate::pgfix::shared;

/// One response read off the client's end.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The client's end with what it has read and not yet parsed.
struct Client {
    end: PipeEnd,
    buf: Vec<u8>,
}

impl Client {
    fn send(&self, bytes: impl AsRef<[u8]>) {
        self.end.write(bytes.as_ref()).unwrap();
    }

    async fn fill(&mut self) -> bool {
        // A server that stops answering fails the test instead of hanging it.
        monoio::time::timeout(Duration::from_secs(60), self.end.readable())
            .await
            .expect("bytes from the server within 60 s");
        let got = self.end.take_all();
        if got.is_empty() {
            return false; // the server closed its end
        }
        self.buf.extend_from_slice(&got);
        true
    }

    async fn response(&mut self) -> Response {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (r.code.unwrap(), headers, n);
            }
            assert!(self.fill().await, "closed before a response head");
        };
        self.buf.drain(..head_len);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 100 {
            return resp;
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "closed inside a body");
            }
            resp.body = self.buf.drain(..len).collect();
        } else {
            // Chunked.
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "closed inside a chunk size");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.buf[..line_end]).unwrap(), 16)
                        .unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "closed inside a chunk");
                }
                resp.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        }
        resp
    }

    /// A response to HEAD: its head, no body whatever it announces.
    async fn response_head_only(&mut self) -> Response {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let resp = Response {
                    status: r.code.unwrap(),
                    headers: r
                        .headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value).into_owned();
                            (h.name.to_string(), value)
                        })
                        .collect(),
                    body: Vec::new(),
                };
                self.buf.drain(..n);
                return resp;
            }
            assert!(self.fill().await, "closed before a response head");
        }
    }

    /// Whether the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

/// Runs `test` with a core's HTTP state serving the application (with a
/// database when `url` is given) and a way to open connections to it.
fn run<F>(url: Option<&str>, args: &[&str], test: F)
where
    F: AsyncFnOnce(&dyn Fn() -> Client),
{
    let config = Config::from_args_and_env(args.iter().map(|s| s.to_string()), |_| None).unwrap();
    let db = url.map(|u| {
        let pg = PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| u.to_string())).unwrap();
        Database::new(pg, &config).unwrap()
    });
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let core = CoreCtx::standalone(0, IoDriver::Epoll);
        let app = App::new(
            core.clone(),
            db.as_ref(),
            AppSettings::from_config(&config),
            None,
        );
        let http: Rc<HttpCore<App>> = HttpCore::new(core, &config, app);
        if let Some(pool) = http.service.pool() {
            // Let the pool connect before the first request.
            for _ in 0..100 {
                if pool.stats().ready > 0 {
                    break;
                }
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let connect = || {
            let (server, client) = pipe();
            monoio::spawn(http.serve_stream(Stream::Memory(server)));
            Client {
                end: client,
                buf: Vec::new(),
            }
        };
        test(&connect).await;
        if let Some(pool) = http.service.pool() {
            pool.close();
        }
    });
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    run(None, &[], async |connect| {
        let mut c = connect();
        c.send(format!(
            "{}{}{}",
            get("/plaintext"),
            get("/healthz"),
            get("/nope")
        ));
        let a = c.response().await;
        assert_eq!((a.status, a.text().as_str()), (200, "Hello, World!"));
        let b = c.response().await;
        assert_eq!((b.status, b.text().as_str()), (200, "ok\n"));
        let d = c.response().await;
        assert_eq!(d.status, 404);
        // Many at once: the answers pass the write high-water mark and go
        // out in several writes, all of them, in order.
        let many: String = (0..2000).map(|_| get("/plaintext")).collect();
        c.send(many);
        for _ in 0..2000 {
            assert_eq!(c.response().await.status, 200);
        }
    });
}

#[test]
fn keep_alive_and_connection_close() {
    run(None, &[], async |connect| {
        let mut c = connect();
        for _ in 0..3 {
            let r = c.response_to(get("/plaintext")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header("connection"), None, "kept alive");
        }
        c.send("GET /plaintext HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let r = c.response().await;
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed().await, "closed after Connection: close");
        // HTTP/1.0 closes unless asked not to.
        let mut c = connect();
        c.send("GET /plaintext HTTP/1.0\r\n\r\n");
        assert_eq!(c.response().await.status, 200);
        assert!(c.closed().await);
    });
}

#[test]
fn continue_100_is_sent_before_the_body_is_read() {
    run(None, &[], async |connect| {
        let mut c = connect();
        c.send(
            "POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        );
        let interim = c.response().await;
        assert_eq!(interim.status, 100);
        c.send("hello");
        let r = c.response().await;
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));
        // A body the route does not want is not asked for: 405, and the
        // connection closes rather than wait for it.
        c.send("POST /plaintext HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n");
        let r = c.response().await;
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    });
}

#[test]
fn body_decoder_errors_answer_and_close() {
    run(None, &["--max-body-bytes", "16"], async |connect| {
        for (req, status) in [
            ("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n01234567890123456", 413),
            ("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n01234567890123456\r\n0\r\n\r\n", 413),
        ] {
            let mut c = connect();
            c.send(req);
            let r = c.response().await;
            assert_eq!(r.status, status, "{req:?}: {}", r.text());
            assert_eq!(r.header("connection"), Some("close"));
            assert!(c.closed().await, "{req:?}");
        }
    });
}

#[test]
fn routes_without_a_database() {
    run(None, &[], async |connect| {
        let mut c = connect();
        let r = c.response_to(get("/orders")).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("1"));
        let r = c
            .response_to("DELETE /contacts HTTP/1.1\r\nHost: t\r\n\r\n")
            .await;
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
        let r = c.response_to(get("/metrics")).await;
        assert!(r.text().contains("ringside_requests_total"), "{}", r.text());
        let r = c.response_to(get("/readyz")).await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn database_routes_over_the_pipe() {
    let db = Db::new(shared(), 300);
    run(Some(&db.url), &["--db-pool-size", "2"], async |connect| {
        let mut c = connect();
        let r = c.response_to(get("/orders?limit=5")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text().matches("<tr><td>").count(), 5);
        let r = c.response_to(get("/orders.json?limit=3")).await;
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.text().matches("\",\"").count(), 2);
        let r = c.response_to(get("/orders/export.csv")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text().lines().count(), 301, "a header and every order");

        let csv = contacts_csv(500, None);
        c.send(format!(
            "POST /contacts HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\nContent-Length: {}\r\n\r\n",
            csv.len()
        ));
        c.send(&csv);
        let r = c.response().await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert!(r.text().contains("\"rows\":500"));
    });
    assert_eq!(db.count("contacts"), 500);
}

impl Client {
    async fn response_to(&mut self, req: impl AsRef<[u8]>) -> Response {
        self.send(req);
        self.response().await
    }
}

/// A service that renders its bodies straight into the write buffer.
struct Rendering;

impl ringside::http::Service for Rendering {
    async fn call(&self, ex: &mut ringside::http::Exchange<'_, '_>) {
        use ringside::http::{Out, StatusCode};
        use std::convert::Infallible;
        match ex.path() {
            "/page" => {
                let _ = ex.respond_rendered(StatusCode::OK, b"text/plain", &[], |out| {
                    out.put(b"rendered ");
                    out.put_byte(b'!');
                    Ok::<(), Infallible>(())
                });
            }
            "/failing" => {
                let r = ex.respond_rendered(StatusCode::OK, b"text/plain", &[], |_| Err("no"));
                assert_eq!(r, Err("no"));
                ex.respond_error(StatusCode(503), "the renderer said no");
            }
            "/stream" => {
                ex.start_stream(StatusCode::OK, b"text/plain", &[]);
                for part in ["one,", "two"] {
                    let _ = ex.queue_rendered_chunk(|out| {
                        out.put(part.as_bytes());
                        Ok::<(), Infallible>(())
                    });
                    ex.flush().await.unwrap();
                }
                ex.finish_stream();
            }
            _ => ex.respond_error(StatusCode::NOT_FOUND, ""),
        }
    }
}

#[test]
fn rendered_bodies_get_their_head_in_front() {
    let config = Config::default();
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let core = CoreCtx::standalone(0, IoDriver::Epoll);
        let http = HttpCore::new(core, &config, Rendering);
        let (server, end) = pipe();
        monoio::spawn(http.serve_stream(Stream::Memory(server)));
        let mut c = Client {
            end,
            buf: Vec::new(),
        };
        c.send(get("/page"));
        let r = c.response().await;
        assert_eq!((r.status, r.text().as_str()), (200, "rendered !"));
        assert_eq!(r.header("content-length"), Some("10"));

        // HEAD: the same length, no body (the next response parses).
        c.send("HEAD /page HTTP/1.1\r\nHost: t\r\n\r\n");
        c.send(get("/stream"));
        let mut head = c.response_head_only().await;
        assert_eq!(head.header("content-length"), Some("10"));
        head = c.response().await;
        assert_eq!((head.status, head.text().as_str()), (200, "one,two"));

        // A failing renderer writes nothing: the handler answers instead.
        c.send(get("/failing"));
        let r = c.response().await;
        assert_eq!(r.status, 503);

        // Pipelined: three rendered answers in one write, in order.
        c.send(format!(
            "{}{}{}",
            get("/page"),
            get("/stream"),
            get("/page")
        ));
        let texts = [
            c.response().await.text(),
            c.response().await.text(),
            c.response().await.text(),
        ];
        assert_eq!(texts, ["rendered !", "one,two", "rendered !"]);
    });
}

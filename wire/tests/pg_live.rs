//! The codec against a live server, through a tiny blocking driver.
//!
//! Skipped (passing) unless a cluster from scripts/pg-test-cluster is up and
//! its variables are exported:
//!
//!   set -a; eval "$(scripts/pg-test-cluster start /tmp/ringside-pg)"; set +a
//!   cargo test -p ringside-wire --test pg_live
//!   scripts/pg-test-cluster stop /tmp/ringside-pg

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use ringside_wire::pg::frontend;
use ringside_wire::pg::types::{self, BINARY_FORMAT};
use ringside_wire::pg::{
    columns, next_message, Column, DbError, Message, PgError, Row, Session, Startup, StartupParams,
    TxStatus, DEFAULT_MAX_MESSAGE_LEN,
};

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

struct Env {
    socket_dir: String,
    host: String,
    port: u16,
    database: String,
}

fn env() -> Option<Env> {
    let var = |k: &str| std::env::var(k).ok();
    let Some(port) = var("RINGSIDE_PG_PORT") else {
        // scripts/test (and so CI) always provides a cluster: there a missing
        // one is a failure, not a skip.
        assert!(
            var("RINGSIDE_REQUIRE_PG").is_none(),
            "RINGSIDE_PG_PORT is not set although RINGSIDE_REQUIRE_PG is"
        );
        eprintln!("RINGSIDE_PG_PORT not set: skipping the live PostgreSQL tests (see scripts/pg-test-cluster)");
        return None;
    };
    Some(Env {
        socket_dir: var("RINGSIDE_PG_SOCKET_DIR").expect("RINGSIDE_PG_SOCKET_DIR"),
        host: var("RINGSIDE_PG_TCP_HOST").unwrap_or_else(|| "127.0.0.1".into()),
        port: port.parse().expect("RINGSIDE_PG_PORT"),
        database: var("RINGSIDE_PG_DATABASE").unwrap_or_else(|| "ringside_test".into()),
    })
}

const USERS: [(&str, Option<&[u8]>); 4] = [
    ("ringside_trust", None),
    ("ringside_md5", Some(b"md5pass")),
    ("ringside_scram", Some(b"scrampass")),
    ("ringside_clear", Some(b"clearpass")),
];

struct Conn {
    stream: Box<dyn Stream>,
    input: BytesMut,
    session: Session,
}

fn open(env: &Env, tcp: bool) -> Box<dyn Stream> {
    if tcp {
        let s = TcpStream::connect((env.host.as_str(), env.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Box::new(s)
    } else {
        let s = UnixStream::connect(format!("{}/.s.PGSQL.{}", env.socket_dir, env.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Box::new(s)
    }
}

fn read_more(stream: &mut dyn Stream, input: &mut BytesMut) {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).unwrap();
    assert!(n > 0, "server closed the connection");
    input.extend_from_slice(&chunk[..n]);
}

fn connect(env: &Env, tcp: bool, user: &str, password: Option<&[u8]>) -> Result<Conn, PgError> {
    let mut stream = open(env, tcp);
    let mut out = BytesMut::new();
    let params = StartupParams {
        user,
        database: Some(&env.database),
        application_name: Some("ringside-live-test"),
        options: Some("-c TimeZone=UTC"),
        password,
        ..Default::default()
    };
    let mut startup = Startup::new(&params, &mut out);
    let mut input = BytesMut::new();
    loop {
        if !out.is_empty() {
            stream.write_all(&out).unwrap();
            out.clear();
        }
        read_more(&mut *stream, &mut input);
        if let Some(session) = startup.feed(&mut input, &mut out)? {
            return Ok(Conn {
                stream,
                input,
                session,
            });
        }
    }
}

impl Conn {
    fn send(&mut self, out: &[u8]) {
        self.stream.write_all(out).unwrap();
    }

    fn next(&mut self) -> Message {
        loop {
            if let Some(m) = next_message(&mut self.input, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
                return m;
            }
            read_more(&mut *self.stream, &mut self.input);
        }
    }

    /// Reads up to ReadyForQuery: the columns, the rows (raw bodies), the
    /// first error and the command tags.
    fn collect(&mut self) -> Reply {
        let mut r = Reply::default();
        loop {
            match self.next() {
                Message::RowDescription(b) => r.cols = columns(&b).unwrap(),
                Message::DataRow(b) => r.rows.push(b),
                Message::CommandComplete(b) => r.tags.push(b.tag().unwrap().to_owned()),
                Message::ErrorResponse(b) => {
                    r.error = Some(DbError::parse(&mut b.fields()).unwrap())
                }
                Message::ReadyForQuery(b) => {
                    r.status = Some(TxStatus::from_byte(b.status()).unwrap());
                    return r;
                }
                _ => {}
            }
        }
    }
}

#[derive(Default)]
struct Reply {
    cols: Vec<Column>,
    rows: Vec<postgres_protocol::message::backend::DataRowBody>,
    tags: Vec<String>,
    error: Option<DbError>,
    status: Option<TxStatus>,
}

#[test]
fn every_auth_method_over_tcp_and_unix_socket() {
    let Some(env) = env() else { return };
    for tcp in [true, false] {
        for (user, password) in USERS {
            let mut c = connect(&env, tcp, user, password)
                .unwrap_or_else(|e| panic!("{user} tcp={tcp}: {e}"));
            assert_eq!(c.session.parameter("session_authorization"), Some(user));
            assert_eq!(c.session.parameter("TimeZone"), Some("UTC"));
            assert_ne!(c.session.process_id, 0);
            assert_eq!(c.session.transaction_status, TxStatus::Idle);
            let mut out = BytesMut::new();
            frontend::query("SELECT current_user::text", &mut out).unwrap();
            c.send(&out);
            let r = c.collect();
            assert_eq!(
                Row::from_body(&r.rows[0]).unwrap().req_str(&r.cols, 0),
                Ok(user)
            );
            let mut out = BytesMut::new();
            frontend::terminate(&mut out);
            c.send(&out);
        }
    }
}

#[test]
fn wrong_and_missing_passwords() {
    let Some(env) = env() else { return };
    for (user, _) in USERS.into_iter().skip(1) {
        let err = connect(&env, true, user, Some(b"wrong")).err().unwrap();
        assert_eq!(err.sqlstate(), Some("28P01"), "{user}: {err}");
        let err = connect(&env, false, user, None).err().unwrap();
        assert!(matches!(err, PgError::Auth(_)), "{user}: {err}");
    }
}

#[test]
fn extended_protocol_binary_roundtrip_and_error_recovery() {
    let Some(env) = env() else { return };
    let mut c = connect(&env, true, "ringside_scram", Some(b"scrampass")).unwrap();
    let ts = 1_704_164_645_678_901; // 2024-01-02 03:04:05.678901 UTC
    let mut scratch = BytesMut::new();
    frontend::encode_i64(-5_000_000_000, &mut scratch);
    let p1 = scratch.split();
    frontend::encode_text("ringside ☃", &mut scratch);
    let p2 = scratch.split();
    frontend::encode_timestamptz(ts, &mut scratch);
    let p3 = scratch.split();
    frontend::encode_bool(true, &mut scratch);
    let p4 = scratch.split();
    frontend::encode_f64(-2.5, &mut scratch);
    let p5 = scratch.split();
    frontend::encode_i16(-7, &mut scratch);
    let p6 = scratch.split();

    let mut out = BytesMut::new();
    let sql =
        "SELECT $1::int8, $2::text, $3::timestamptz, $4::bool, $5::float8, $6::int2, $7::int4";
    let oids = [
        types::INT8,
        types::TEXT,
        types::TIMESTAMPTZ,
        types::BOOL,
        types::FLOAT8,
        types::INT2,
        types::INT4,
    ];
    frontend::parse("q", sql, &oids, &mut out).unwrap();
    let params = [
        Some(&p1[..]),
        Some(&p2[..]),
        Some(&p3[..]),
        Some(&p4[..]),
        Some(&p5[..]),
        Some(&p6[..]),
        None,
    ];
    frontend::bind(
        "",
        "q",
        &params,
        &[BINARY_FORMAT],
        &[BINARY_FORMAT],
        &mut out,
    )
    .unwrap();
    frontend::describe_portal("", &mut out).unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    // An error mid-pipeline, then the prepared statement again.
    frontend::parse("", "SELECT * FROM no_such_table", &[], &mut out).unwrap();
    frontend::bind("", "", &[], &[], &[], &mut out).unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    frontend::bind("", "q", &params, &[BINARY_FORMAT], &[], &mut out).unwrap();
    frontend::describe_portal("", &mut out).unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::close_statement("q", &mut out).unwrap();
    frontend::sync(&mut out);
    c.send(&out);

    let r = c.collect();
    assert!(r.error.is_none(), "{:?}", r.error);
    let row = Row::from_body(&r.rows[0]).unwrap();
    assert_eq!(row.req_i64(&r.cols, 0), Ok(-5_000_000_000));
    assert_eq!(row.req_str(&r.cols, 1), Ok("ringside ☃"));
    assert_eq!(row.req_timestamptz(&r.cols, 2), Ok(ts));
    assert_eq!(row.req_bool(&r.cols, 3), Ok(true));
    assert_eq!(row.req_f64(&r.cols, 4), Ok(-2.5));
    assert_eq!(row.req_i16(&r.cols, 5), Ok(-7));
    assert_eq!(row.get_i32(&r.cols, 6), Ok(None));

    let r = c.collect();
    assert_eq!(r.error.as_ref().map(|e| e.code.as_str()), Some("42P01"));
    assert_eq!(r.error.unwrap().position, Some(15));

    let r = c.collect();
    assert!(r.error.is_none(), "{:?}", r.error);
    let row = Row::from_body(&r.rows[0]).unwrap();
    assert_eq!(row.req_i64(&r.cols, 0), Ok(-5_000_000_000));
    assert_eq!(row.req_f64(&r.cols, 4), Ok(-2.5));
    assert_eq!(r.status, Some(TxStatus::Idle));
}

#[test]
fn copy_in_and_cancel() {
    let Some(env) = env() else { return };
    let mut c = connect(&env, false, "ringside_md5", Some(b"md5pass")).unwrap();
    let mut out = BytesMut::new();
    frontend::query("CREATE TEMP TABLE big(id int8, body text)", &mut out).unwrap();
    c.send(&out);
    c.collect();

    // A COPY larger than any socket buffer, in one CopyData.
    let mut data = Vec::new();
    for i in 0..50_000 {
        data.extend_from_slice(format!("{i}\tsome text for row {i}\n").as_bytes());
    }
    let mut out = BytesMut::new();
    frontend::query("COPY big FROM STDIN", &mut out).unwrap();
    c.send(&out);
    assert!(matches!(c.next(), Message::CopyInResponse(_)));
    let mut out = BytesMut::new();
    frontend::copy_data(&data, &mut out).unwrap();
    frontend::copy_done(&mut out);
    frontend::query("SELECT count(*), sum(id) FROM big", &mut out).unwrap();
    c.send(&out);
    assert_eq!(c.collect().tags, ["COPY 50000"]);
    let r = c.collect();
    let row = Row::from_body(&r.rows[0]).unwrap();
    assert_eq!(row.req_i64(&r.cols, 0), Ok(50_000));

    // CancelRequest on a second connection interrupts a running query.
    let mut out = BytesMut::new();
    frontend::query("SELECT pg_sleep(30)", &mut out).unwrap();
    c.send(&out);
    std::thread::sleep(Duration::from_millis(200));
    let mut cancel = open(&env, true);
    let mut out = BytesMut::new();
    frontend::cancel_request(c.session.process_id, c.session.secret_key, &mut out);
    cancel.write_all(&out).unwrap();
    let mut rest = Vec::new();
    let _ = cancel.read_to_end(&mut rest); // the server just closes it
    let r = c.collect();
    assert_eq!(r.error.map(|e| e.code), Some("57014".to_owned()));
}

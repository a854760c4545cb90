//! Replays backend transcripts recorded from PostgreSQL 15 (see
//! tests/fixtures/pg/record.py) through the sans-I/O codec: no network.
//!
//! Each fixture NAME has the server's bytes (NAME.bin), the recording
//! client's bytes (NAME.client.bin) and facts the recorder decoded on its own
//! (NAME.expect). The recorder's client sends the same StartupMessage and
//! queries the Rust encoders produce here, so the client bytes double as an
//! independent check of the encoders.

use std::collections::HashMap;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use proptest::prelude::*;
use ringside_wire::pg::frontend;
use ringside_wire::pg::types::{self, PG_EPOCH_UNIX_MICROS};
use ringside_wire::pg::{
    columns, next_message, Column, DbError, Message, PgError, Row, Session, Startup, StartupParams,
    TxStatus,
};

const ALL: [&str; 10] = [
    "startup_trust",
    "startup_md5",
    "startup_md5_bad_password",
    "startup_clear",
    "startup_scram",
    "simple_query",
    "pipeline_error",
    "types",
    "copy_in",
    "notice",
];

// What record.py sends.
const DB: &str = "ringside_test";
const APP: &str = "ringside-record";
const OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/pg/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Expect {
    tags: String,
    facts: HashMap<String, String>,
    params: Vec<(String, String)>,
}

fn expect(name: &str) -> Expect {
    let text = String::from_utf8(fixture(&format!("{name}.expect"))).unwrap();
    let mut e = Expect {
        tags: String::new(),
        facts: HashMap::new(),
        params: Vec::new(),
    };
    for line in text.lines() {
        let (k, v) = line.split_once('=').unwrap();
        if k == "tags" {
            e.tags = v.replace(' ', "");
        } else if let Some(p) = k.strip_prefix("param.") {
            e.params.push((p.to_owned(), v.to_owned()));
        } else {
            e.facts.insert(k.to_owned(), v.to_owned());
        }
    }
    e
}

fn params<'a>(user: &'a str, password: Option<&'a [u8]>) -> StartupParams<'a> {
    StartupParams {
        user,
        database: Some(DB),
        application_name: Some(APP),
        options: Some(OPTIONS),
        password,
        ..Default::default()
    }
}

/// The wire tag of a message, to compare with the recorder's list.
fn tag(m: &Message) -> char {
    match m {
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => 'R',
        Message::ParameterStatus(_) => 'S',
        Message::BackendKeyData(_) => 'K',
        Message::ReadyForQuery(_) => 'Z',
        Message::RowDescription(_) => 'T',
        Message::DataRow(_) => 'D',
        Message::CommandComplete(_) => 'C',
        Message::ErrorResponse(_) => 'E',
        Message::NoticeResponse(_) => 'N',
        Message::ParseComplete => '1',
        Message::BindComplete => '2',
        Message::ParameterDescription(_) => 't',
        Message::NoData => 'n',
        Message::EmptyQueryResponse => 'I',
        Message::CopyInResponse(_) => 'G',
        _ => '?',
    }
}

/// A comparable rendering of a message's content.
fn render(m: &Message) -> String {
    let t = tag(m);
    match m {
        Message::AuthenticationMd5Password(b) => format!("{t} md5 {:?}", b.salt()),
        Message::AuthenticationSasl(b) => {
            format!("{t} sasl {:?}", b.mechanisms().collect::<Vec<_>>().unwrap())
        }
        Message::AuthenticationSaslContinue(b) => format!("{t} cont {:?}", b.data()),
        Message::AuthenticationSaslFinal(b) => format!("{t} final {:?}", b.data()),
        Message::ParameterStatus(b) => format!("{t} {}={}", b.name().unwrap(), b.value().unwrap()),
        Message::BackendKeyData(b) => format!("{t} {} {}", b.process_id(), b.secret_key()),
        Message::ReadyForQuery(b) => format!("{t} {}", b.status()),
        Message::RowDescription(b) => format!("{t} {:?}", columns(b).unwrap()),
        Message::DataRow(b) => format!(
            "{t} {:?}",
            Row::from_body(b).unwrap().iter().collect::<Vec<_>>()
        ),
        Message::CommandComplete(b) => format!("{t} {}", b.tag().unwrap()),
        Message::ErrorResponse(b) => format!("{t} {:?}", DbError::parse(&mut b.fields()).unwrap()),
        Message::NoticeResponse(b) => format!("{t} {:?}", DbError::parse(&mut b.fields()).unwrap()),
        Message::ParameterDescription(b) => {
            format!("{t} {:?}", b.parameters().collect::<Vec<_>>().unwrap())
        }
        _ => t.to_string(),
    }
}

/// Decodes a stream delivered in the given chunks.
fn decode_chunked(stream: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        while let Some(m) = next_message(&mut buf, 1 << 20).unwrap() {
            out.push(render(&m));
        }
    }
    assert!(buf.is_empty(), "trailing partial message");
    out
}

/// Server bytes after startup, read one message at a time.
struct Transcript {
    buf: BytesMut,
}

impl Transcript {
    fn next(&mut self) -> Message {
        next_message(&mut self.buf, 1 << 20)
            .unwrap()
            .expect("transcript ended")
    }

    fn expect_tag(&mut self, t: char) -> Message {
        let m = self.next();
        assert_eq!(tag(&m), t, "got {}", render(&m));
        m
    }

    fn ready(&mut self) -> TxStatus {
        match self.expect_tag('Z') {
            Message::ReadyForQuery(b) => TxStatus::from_byte(b.status()).unwrap(),
            _ => unreachable!(),
        }
    }

    fn complete(&mut self) -> String {
        match self.expect_tag('C') {
            Message::CommandComplete(b) => b.tag().unwrap().to_owned(),
            _ => unreachable!(),
        }
    }

    fn columns(&mut self) -> Vec<Column> {
        match self.expect_tag('T') {
            Message::RowDescription(b) => columns(&b).unwrap(),
            _ => unreachable!(),
        }
    }

    fn error(&mut self, t: char) -> DbError {
        match self.expect_tag(t) {
            Message::ErrorResponse(b) => DbError::parse(&mut b.fields()).unwrap(),
            Message::NoticeResponse(b) => DbError::parse(&mut b.fields()).unwrap(),
            _ => unreachable!(),
        }
    }

    fn assert_end(&mut self) {
        assert!(self.buf.is_empty(), "{} bytes left", self.buf.len());
    }
}

/// Runs startup over a whole fixture, checking the StartupMessage against the
/// recorded one. Returns the session, the replies written, and the rest.
fn startup(
    name: &str,
    user: &str,
    password: Option<&[u8]>,
) -> (Result<Session, PgError>, BytesMut, Transcript) {
    let client = fixture(&format!("{name}.client.bin"));
    let mut out = BytesMut::new();
    let mut s = Startup::new(&params(user, password), &mut out);
    assert_eq!(
        &out[..],
        &client[..out.len()],
        "{name}: StartupMessage differs from the recorded one"
    );
    out.clear();
    let mut input = BytesMut::from(&fixture(&format!("{name}.bin"))[..]);
    let r = s
        .feed(&mut input, &mut out)
        .map(|o| o.expect("startup incomplete"));
    (r, out, Transcript { buf: input })
}

/// The recorded client bytes after the StartupMessage, minus the Terminate.
fn client_after_startup(name: &str) -> Vec<u8> {
    let client = fixture(&format!("{name}.client.bin"));
    let startup_len = u32::from_be_bytes(client[..4].try_into().unwrap()) as usize;
    assert_eq!(&client[client.len() - 5..], b"X\0\0\0\x04");
    client[startup_len..client.len() - 5].to_vec()
}

fn check_session(name: &str, session: &Session) {
    let e = expect(name);
    assert_eq!(
        session.process_id.to_string(),
        e.facts["process_id"],
        "{name}"
    );
    assert_eq!(
        session.secret_key.to_string(),
        e.facts["secret_key"],
        "{name}"
    );
    assert_eq!(session.parameters, e.params, "{name}");
    assert_eq!(session.transaction_status, TxStatus::Idle);
}

// ---------------------------------------------------------------- startup

#[test]
fn startup_trust() {
    let (session, out, mut rest) = startup("startup_trust", "ringside_trust", None);
    let session = session.unwrap();
    check_session("startup_trust", &session);
    assert_eq!(
        session.parameter("session_authorization"),
        Some("ringside_trust")
    );
    assert_eq!(
        session.parameter("TimeZone"),
        Some("UTC"),
        "options reached the server"
    );
    assert_eq!(session.parameter("application_name"), Some(APP));
    assert!(session
        .parameter("server_version")
        .unwrap()
        .starts_with("15."));
    assert!(out.is_empty(), "trust needs no reply");
    rest.assert_end();
}

#[test]
fn startup_md5() {
    let (session, out, mut rest) = startup("startup_md5", "ringside_md5", Some(b"md5pass"));
    check_session("startup_md5", &session.unwrap());
    // Same salt, same hash: the PasswordMessage is byte-identical to the one
    // the server accepted.
    assert_eq!(&out[..], &client_after_startup("startup_md5")[..]);
    assert!(out.starts_with(b"p\0\0\0\x28md5"));
    rest.assert_end();
}

#[test]
fn startup_cleartext() {
    let (session, out, mut rest) = startup("startup_clear", "ringside_clear", Some(b"clearpass"));
    check_session("startup_clear", &session.unwrap());
    assert_eq!(&out[..], &client_after_startup("startup_clear")[..]);
    assert_eq!(&out[..], b"p\0\0\0\x0eclearpass\0");
    rest.assert_end();
}

#[test]
fn startup_md5_bad_password() {
    let (r, out, mut rest) = startup(
        "startup_md5_bad_password",
        "ringside_md5",
        Some(b"wrongpass"),
    );
    let err = r.unwrap_err();
    assert_eq!(err.sqlstate(), Some("28P01"));
    let PgError::Db(db) = &err else {
        panic!("{err}")
    };
    assert_eq!(db.severity, "FATAL");
    assert_eq!(
        db.message,
        "password authentication failed for user \"ringside_md5\""
    );
    assert_eq!(
        err.to_string(),
        "FATAL 28P01: password authentication failed for user \"ringside_md5\""
    );
    assert_eq!(
        &out[..],
        &client_after_startup("startup_md5_bad_password")[..]
    );
    rest.assert_end();
}

#[test]
fn startup_md5_without_password() {
    let (r, out, _) = startup("startup_md5", "ringside_md5", None);
    assert!(
        matches!(r, Err(PgError::Auth(ref m)) if m.contains("md5")),
        "{r:?}"
    );
    assert!(out.is_empty());
}

#[test]
fn startup_scram_until_the_nonce() {
    // The recorded server-first message extends the recorder's nonce, not
    // ours, so replay stops there: after checking the mechanism choice and
    // the client-first message, which must be refused as a nonce mismatch.
    let name = "startup_scram";
    let server = fixture(&format!("{name}.bin"));
    let mut out = BytesMut::new();
    let mut s = Startup::new(&params("ringside_scram", Some(b"scrampass")), &mut out);
    out.clear();
    let first_len = 1 + u32::from_be_bytes(server[1..5].try_into().unwrap()) as usize;
    let mut input = BytesMut::from(&server[..first_len]);
    assert!(s.feed(&mut input, &mut out).unwrap().is_none());
    let recorded = client_after_startup(name);
    // Same mechanism and header as the recorder's SASLInitialResponse.
    let prefix = b"SCRAM-SHA-256\0";
    assert_eq!(&out[5..5 + prefix.len()], prefix);
    assert_eq!(&recorded[5..5 + prefix.len()], prefix);
    assert!(out[5 + prefix.len() + 4..].starts_with(b"n,,n=,r="));
    input.extend_from_slice(&server[first_len..]);
    let err = s.feed(&mut input, &mut out).unwrap_err();
    assert!(
        matches!(err, PgError::Auth(ref m) if m.contains("nonce")),
        "{err}"
    );
}

// ---------------------------------------------------------------- framing

#[test]
fn tags_match_the_recorder() {
    for name in ALL {
        let rendered = decode_chunked(&fixture(&format!("{name}.bin")), &[]);
        let tags: String = rendered.iter().map(|r| r.chars().next().unwrap()).collect();
        assert_eq!(tags, expect(name).tags, "{name}");
    }
}

#[test]
fn every_split_point_decodes_the_same() {
    for name in ALL {
        let stream = fixture(&format!("{name}.bin"));
        let whole = decode_chunked(&stream, &[]);
        for cut in 0..=stream.len() {
            assert_eq!(
                decode_chunked(&stream, &[cut]),
                whole,
                "{name} split at {cut}"
            );
        }
        let bytewise: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(
            decode_chunked(&stream, &bytewise),
            whole,
            "{name} byte by byte"
        );
    }
}

#[test]
fn every_split_point_startup_the_same() {
    for (name, user, pw) in [
        ("startup_trust", "ringside_trust", None),
        ("startup_md5", "ringside_md5", Some(&b"md5pass"[..])),
        ("startup_clear", "ringside_clear", Some(&b"clearpass"[..])),
        ("pipeline_error", "ringside_trust", None),
    ] {
        let stream = fixture(&format!("{name}.bin"));
        let (whole, whole_out, whole_rest) = startup(name, user, pw);
        let whole = whole.unwrap();
        for cut in 0..=stream.len() {
            let mut out = BytesMut::new();
            let mut s = Startup::new(&params(user, pw), &mut out);
            out.clear();
            let mut input = BytesMut::from(&stream[..cut]);
            let mut session = s.feed(&mut input, &mut out).unwrap();
            if session.is_none() {
                input.extend_from_slice(&stream[cut..]);
                session = s.feed(&mut input, &mut out).unwrap();
            } else {
                input.extend_from_slice(&stream[cut..]);
            }
            assert_eq!(session.as_ref(), Some(&whole), "{name} split at {cut}");
            assert_eq!(out, whole_out, "{name} split at {cut}");
            assert_eq!(
                input, whole_rest.buf,
                "{name} split at {cut}: what follows startup"
            );
        }
    }
}

proptest! {
    #[test]
    fn random_chunking_decodes_the_same(which in 0..ALL.len(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let stream = fixture(&format!("{}.bin", ALL[which]));
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.sort_unstable();
        prop_assert_eq!(decode_chunked(&stream, &cuts), decode_chunked(&stream, &[]));
    }

    #[test]
    fn length_limit_holds_for_any_prefix(which in 0..ALL.len(), limit in 5usize..600, cut in any::<prop::sample::Index>()) {
        // Whatever the limit, each message is decoded or refused by its
        // declared length alone, however much of it has arrived.
        let stream = fixture(&format!("{}.bin", ALL[which]));
        let cut = cut.index(stream.len() + 1);
        let mut buf = BytesMut::from(&stream[..cut]);
        loop {
            match next_message(&mut buf, limit) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(PgError::Protocol(m)) => {
                    prop_assert!(m.contains("exceeds"), "{}", m);
                    let len = u32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
                    prop_assert!(len > limit);
                    break;
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}

// ---------------------------------------------------------------- queries

#[test]
fn simple_query() {
    let (session, _, mut t) = startup("simple_query", "ringside_trust", None);
    check_session("simple_query", &session.unwrap());

    let mut sent = BytesMut::new();
    frontend::query(
        "SELECT 1 AS one, 'hello'::text AS greeting; SELECT NULL::int4 AS nothing",
        &mut sent,
    )
    .unwrap();
    frontend::query("SET application_name = 'renamed'", &mut sent).unwrap();
    frontend::query("", &mut sent).unwrap();
    frontend::query("BEGIN", &mut sent).unwrap();
    frontend::query("SELECT 1/0", &mut sent).unwrap();
    frontend::query("ROLLBACK", &mut sent).unwrap();
    assert_eq!(&sent[..], &client_after_startup("simple_query")[..]);

    let cols = t.columns();
    assert_eq!(
        cols.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["one", "greeting"]
    );
    assert_eq!((cols[0].type_oid, cols[0].format), (types::INT4, 0));
    let Message::DataRow(d) = t.next() else {
        panic!()
    };
    let row = Row::from_body(&d).unwrap();
    assert_eq!(
        (row.req_i32(&cols, 0), row.req_str(&cols, 1)),
        (Ok(1), Ok("hello"))
    );
    assert_eq!(t.complete(), "SELECT 1");
    let cols = t.columns();
    // Row::new takes the message body with its value count.
    let Message::DataRow(d) = t.next() else {
        panic!()
    };
    let body = [&1i16.to_be_bytes()[..], d.buffer()].concat();
    let row = Row::new(&body).unwrap();
    assert_eq!(row.get_i32(&cols, 0), Ok(None));
    assert_eq!(row.req_i32(&cols, 0), Err(PgError::Null { column: 0 }));
    assert_eq!(t.complete(), "SELECT 1");
    assert_eq!(t.ready(), TxStatus::Idle);

    assert_eq!(t.complete(), "SET");
    match t.expect_tag('S') {
        Message::ParameterStatus(b) => assert_eq!(
            (b.name().unwrap(), b.value().unwrap()),
            ("application_name", "renamed")
        ),
        _ => unreachable!(),
    }
    assert_eq!(t.ready(), TxStatus::Idle);

    t.expect_tag('I');
    assert_eq!(t.ready(), TxStatus::Idle);

    assert_eq!(t.complete(), "BEGIN");
    assert_eq!(t.ready(), TxStatus::InTransaction);
    let e = t.error('E');
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("22012", "division by zero")
    );
    assert_eq!(t.ready(), TxStatus::Failed);
    assert_eq!(t.complete(), "ROLLBACK");
    assert_eq!(t.ready(), TxStatus::Idle);
    t.assert_end();
}

#[test]
fn pipeline_with_an_error_in_the_middle() {
    let (session, _, mut t) = startup("pipeline_error", "ringside_trust", None);
    check_session("pipeline_error", &session.unwrap());

    // The same pipeline, encoded here, is byte-identical to what the server got.
    let mut sent = BytesMut::new();
    let mut v = BytesMut::new();
    frontend::encode_i32(41, &mut v);
    frontend::parse(
        "s1",
        "SELECT $1::int4 + 1 AS answer",
        &[types::INT4],
        &mut sent,
    )
    .unwrap();
    frontend::bind("", "s1", &[Some(&v[..])], &[1], &[1], &mut sent).unwrap();
    frontend::describe_portal("", &mut sent).unwrap();
    frontend::execute("", 0, &mut sent).unwrap();
    frontend::sync(&mut sent);
    frontend::parse("", "SELEC 1", &[], &mut sent).unwrap();
    frontend::bind("", "", &[], &[], &[], &mut sent).unwrap();
    frontend::describe_portal("", &mut sent).unwrap();
    frontend::execute("", 0, &mut sent).unwrap();
    frontend::sync(&mut sent);
    frontend::parse(
        "",
        "SELECT 'after error'::text AS msg, $1::int8 AS n",
        &[types::INT8],
        &mut sent,
    )
    .unwrap();
    frontend::bind("", "", &[Some(b"7")], &[0], &[0], &mut sent).unwrap();
    frontend::describe_portal("", &mut sent).unwrap();
    frontend::execute("", 0, &mut sent).unwrap();
    frontend::sync(&mut sent);
    frontend::describe_statement("s1", &mut sent).unwrap();
    frontend::sync(&mut sent);
    assert_eq!(&sent[..], &client_after_startup("pipeline_error")[..]);

    // 1: binary result.
    t.expect_tag('1');
    t.expect_tag('2');
    let cols = t.columns();
    assert_eq!(
        cols,
        [Column {
            name: "answer".into(),
            type_oid: types::INT4,
            format: 1
        }]
    );
    let Message::DataRow(d) = t.next() else {
        panic!()
    };
    assert_eq!(Row::from_body(&d).unwrap().req_i32(&cols, 0), Ok(42));
    assert_eq!(t.complete(), "SELECT 1");
    assert_eq!(t.ready(), TxStatus::Idle);

    // 2: the syntax error; Bind/Describe/Execute were skipped up to the Sync.
    let Message::ErrorResponse(b) = t.next() else {
        panic!()
    };
    let e = DbError::parse(&mut b.fields()).unwrap();
    assert_eq!(e.code, "42601");
    assert_eq!(e.severity, "ERROR");
    assert_eq!(e.message, "syntax error at or near \"SELEC\"");
    assert_eq!(e.position, Some(1));
    assert_eq!(
        PgError::Db(Box::new(e)).to_string(),
        "ERROR 42601: syntax error at or near \"SELEC\""
    );
    assert_eq!(t.ready(), TxStatus::Idle);

    // 3: the pipeline carries on; text results.
    t.expect_tag('1');
    t.expect_tag('2');
    let cols = t.columns();
    assert_eq!(
        cols[1],
        Column {
            name: "n".into(),
            type_oid: types::INT8,
            format: 0
        }
    );
    let Message::DataRow(d) = t.next() else {
        panic!()
    };
    let row = Row::from_body(&d).unwrap();
    assert_eq!(row.req_str(&cols, 0), Ok("after error"));
    assert_eq!(row.req_i64(&cols, 1), Ok(7));
    assert_eq!(t.complete(), "SELECT 1");
    assert_eq!(t.ready(), TxStatus::Idle);

    // 4: the named statement survived the error.
    let Message::ParameterDescription(p) = t.next() else {
        panic!()
    };
    assert_eq!(p.parameters().collect::<Vec<_>>().unwrap(), [types::INT4]);
    let cols = t.columns();
    assert_eq!(
        cols[0].format, 0,
        "a statement Describe cannot know the result format"
    );
    assert_eq!(t.ready(), TxStatus::Idle);
    t.assert_end();
}

const TYPES_SQL: &str = "SELECT * FROM (VALUES
  (1::int2, 2::int4, 3::int8, true, 1.5::float8, 'héllo'::text, '2024-01-02 03:04:05.678901+00'::timestamptz,
   'vc'::varchar, 'bp'::char(4), 'nm'::name),
  ((-32768)::int2, (-2147483648)::int4, (-9223372036854775808)::int8, false, (-0.25)::float8, ''::text,
   '1999-12-31 23:59:59.999999+00'::timestamptz, ''::varchar, ''::char(1), ''::name),
  (32767::int2, 2147483647::int4, 9223372036854775807::int8, true, 'NaN'::float8, 'x y'::text,
   '1970-01-01 00:00:00+00'::timestamptz, NULL, NULL, NULL),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
  (0::int2, 0::int4, 0::int8, false, '-Infinity'::float8, 'z'::text, 'infinity'::timestamptz,
   'a'::varchar, 'b'::char(1), 'c'::name)
) AS v(i2, i4, i8, b, f8, t, ts, vc, bp, nm)";

type Typed = (
    Option<i16>,
    Option<i32>,
    Option<i64>,
    Option<bool>,
    Option<f64>,
    Option<String>,
    Option<String>,
);

fn typed(row: &Row<'_>, cols: &[Column]) -> Typed {
    (
        row.get_i16(cols, 0).unwrap(),
        row.get_i32(cols, 1).unwrap(),
        row.get_i64(cols, 2).unwrap(),
        row.get_bool(cols, 3).unwrap(),
        row.get_f64(cols, 4).unwrap(),
        row.get_str(cols, 5).unwrap().map(str::to_owned),
        // varchar, bpchar, name through get_str too.
        [7, 8, 9]
            .iter()
            .map(|&i| row.get_str(cols, i).unwrap())
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join("|")),
    )
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn typed_rows_binary_and_text() {
    let (session, _, mut t) = startup("types", "ringside_trust", None);
    check_session("types", &session.unwrap());

    let mut sent = BytesMut::new();
    frontend::parse("", TYPES_SQL, &[], &mut sent).unwrap();
    frontend::bind("", "", &[], &[], &[1], &mut sent).unwrap();
    frontend::describe_portal("", &mut sent).unwrap();
    frontend::execute("", 0, &mut sent).unwrap();
    frontend::sync(&mut sent);
    frontend::query(TYPES_SQL, &mut sent).unwrap();
    assert_eq!(&sent[..], &client_after_startup("types")[..]);

    let expected: [Typed; 5] = [
        (
            Some(1),
            Some(2),
            Some(3),
            Some(true),
            Some(1.5),
            s("héllo"),
            s("vc|bp  |nm"),
        ),
        (
            Some(i16::MIN),
            Some(i32::MIN),
            Some(i64::MIN),
            Some(false),
            Some(-0.25),
            s(""),
            s("| |"),
        ),
        (
            Some(i16::MAX),
            Some(i32::MAX),
            Some(i64::MAX),
            Some(true),
            Some(f64::NAN),
            s("x y"),
            None,
        ),
        (None, None, None, None, None, None, None),
        (
            Some(0),
            Some(0),
            Some(0),
            Some(false),
            Some(f64::NEG_INFINITY),
            s("z"),
            s("a|b|c"),
        ),
    ];
    let timestamps = [
        Some(1_704_164_645_678_901),
        Some(PG_EPOCH_UNIX_MICROS - 1),
        Some(0),
        None,
        Some(i64::MAX),
    ];
    // NaN != NaN: compare renderings.
    let fmt = |v: &Typed| format!("{v:?}");

    for format in [1i16, 0] {
        if format == 1 {
            t.expect_tag('1');
            t.expect_tag('2');
        }
        let cols = t.columns();
        let oids: Vec<u32> = cols.iter().map(|c| c.type_oid).collect();
        assert_eq!(
            oids,
            [
                types::INT2,
                types::INT4,
                types::INT8,
                types::BOOL,
                types::FLOAT8,
                types::TEXT,
                types::TIMESTAMPTZ,
                types::VARCHAR,
                types::BPCHAR,
                types::NAME
            ]
        );
        assert!(cols.iter().all(|c| c.format == format));
        for (exp, ts) in expected.iter().zip(timestamps) {
            let Message::DataRow(d) = t.next() else {
                panic!()
            };
            let row = Row::from_body(&d).unwrap();
            assert_eq!(row.len(), 10);
            assert_eq!(fmt(&typed(&row, &cols)), fmt(exp), "format {format}");
            if format == 1 {
                assert_eq!(row.get_timestamptz(&cols, 6), Ok(ts));
            } else {
                let err = row.get_timestamptz(&cols, 6).unwrap_err();
                assert!(
                    matches!(
                        err,
                        PgError::Type {
                            column: 6,
                            found_oid: types::TIMESTAMPTZ,
                            ..
                        }
                    ),
                    "{err}"
                );
            }
            if exp.0.is_none() {
                assert_eq!(row.req_i64(&cols, 2), Err(PgError::Null { column: 2 }));
                assert_eq!(row.req_str(&cols, 5), Err(PgError::Null { column: 5 }));
                assert_eq!(row.req_bool(&cols, 3), Err(PgError::Null { column: 3 }));
            }
            // Wrong-type reads name the column and its real type.
            assert_eq!(
                row.get_i32(&cols, 2),
                Err(PgError::Type {
                    column: 2,
                    expected: "int4",
                    found_oid: types::INT8
                })
            );
            assert!(matches!(
                row.get_str(&cols, 1),
                Err(PgError::Type { column: 1, .. })
            ));
        }
        assert_eq!(t.complete(), "SELECT 5");
        assert_eq!(t.ready(), TxStatus::Idle);
    }
    t.assert_end();
}

#[test]
fn copy_from_stdin_and_copy_fail() {
    let (session, _, mut t) = startup("copy_in", "ringside_trust", None);
    check_session("copy_in", &session.unwrap());

    let mut sent = BytesMut::new();
    frontend::query("CREATE TEMP TABLE items(id int4, name text)", &mut sent).unwrap();
    frontend::query("COPY items FROM STDIN", &mut sent).unwrap();
    frontend::copy_data(b"1\tone\n2\ttwo\n", &mut sent).unwrap();
    frontend::copy_data(b"3\tthree\n", &mut sent).unwrap();
    frontend::copy_done(&mut sent);
    frontend::query("COPY items FROM STDIN", &mut sent).unwrap();
    frontend::copy_data(b"4\tfour\n", &mut sent).unwrap();
    frontend::copy_fail("client gave up", &mut sent).unwrap();
    frontend::query("SELECT count(*) FROM items", &mut sent).unwrap();
    assert_eq!(&sent[..], &client_after_startup("copy_in")[..]);

    assert_eq!(t.complete(), "CREATE TABLE");
    assert_eq!(t.ready(), TxStatus::Idle);
    let Message::CopyInResponse(g) = t.expect_tag('G') else {
        unreachable!()
    };
    assert_eq!(g.format(), 0);
    assert_eq!(g.column_formats().collect::<Vec<_>>().unwrap(), [0, 0]);
    assert_eq!(t.complete(), "COPY 3");
    assert_eq!(t.ready(), TxStatus::Idle);

    t.expect_tag('G');
    let e = t.error('E');
    assert_eq!(e.code, "57014");
    assert!(e.message.contains("client gave up"), "{}", e.message);
    assert_eq!(t.ready(), TxStatus::Idle);

    let cols = t.columns();
    assert_eq!(cols[0].type_oid, types::INT8);
    let Message::DataRow(d) = t.next() else {
        panic!()
    };
    assert_eq!(
        Row::from_body(&d).unwrap().req_i64(&cols, 0),
        Ok(3),
        "the failed COPY added nothing"
    );
    assert_eq!(t.complete(), "SELECT 1");
    assert_eq!(t.ready(), TxStatus::Idle);
    t.assert_end();
}

#[test]
fn notices() {
    let (session, _, mut t) = startup("notice", "ringside_trust", None);
    check_session("notice", &session.unwrap());

    let n = t.error('N');
    assert_eq!((n.severity.as_str(), n.code.as_str()), ("NOTICE", "00000"));
    assert_eq!(n.message, "hello from plpgsql 42");
    assert_eq!(n.hint.as_deref(), Some("a hint"));
    assert_eq!(n.to_string(), "NOTICE 00000: hello from plpgsql 42");
    assert_eq!(t.complete(), "DO");
    assert_eq!(t.ready(), TxStatus::Idle);

    let n = t.error('N');
    assert_eq!(
        n.message,
        "table \"no_such_table\" does not exist, skipping"
    );
    assert_eq!(t.complete(), "DROP TABLE");
    assert_eq!(t.ready(), TxStatus::Idle);
    t.assert_end();
}

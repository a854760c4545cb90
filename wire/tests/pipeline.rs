//! The PostgreSQL pipeline value, driven in memory: by a recorded
//! PostgreSQL 15 transcript and by generated backend answers (property
//! tests). No network.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use ringside_wire::pg::pipeline::{
    Broken, Event, Limits, Param, Pipeline, RequestError, RequestId,
};
use ringside_wire::pg::{next_message, Message, PgError, TxStatus};

fn pipeline() -> Pipeline {
    Pipeline::new(Limits::default(), TxStatus::Idle)
}

fn events(p: &mut Pipeline) -> Vec<Event> {
    std::iter::from_fn(|| p.next_event()).collect()
}

// ----------------------------------------------------- backend messages ---

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn row_description(names: &[&str]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(names.len() as i16);
    for n in names {
        b.extend_from_slice(&cstr(n));
        b.put_u32(0); // table oid
        b.put_i16(0); // column
        b.put_u32(20); // int8
        b.put_i16(8);
        b.put_i32(-1);
        b.put_i16(1); // binary
    }
    msg(b'T', &b)
}

fn data_row(values: &[i64]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(values.len() as i16);
    for v in values {
        b.put_i32(8);
        b.put_i64(*v);
    }
    msg(b'D', &b)
}

fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

fn error(severity: &str, code: &str, text: &str) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', text),
    ] {
        b.push(k);
        b.extend_from_slice(&cstr(v));
    }
    b.push(0);
    msg(b'E', &b)
}

fn notice() -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in [
        (b'S', "NOTICE"),
        (b'V', "NOTICE"),
        (b'C', "00000"),
        (b'M', "hello"),
    ] {
        b.push(k);
        b.extend_from_slice(&cstr(v));
    }
    b.push(0);
    msg(b'N', &b)
}

/// What the server answers to one of our prepared queries.
#[derive(Clone, Debug)]
enum Answer {
    Rows(Vec<i64>),
    Error(String),
}

/// The server's bytes for a query that `prepares` (Parse + Describe first).
fn answer_bytes(a: &Answer, prepares: bool, noise: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if noise {
        out.extend(notice());
    }
    match a {
        Answer::Rows(vals) => {
            if prepares {
                out.extend(msg(b'1', &[]));
                out.extend(msg(b't', &[0, 0]));
                out.extend(row_description(&["n"]));
            }
            out.extend(msg(b'2', &[]));
            for v in vals {
                out.extend(data_row(&[*v]));
            }
            out.extend(command_complete(&format!("SELECT {}", vals.len())));
        }
        Answer::Error(code) => out.extend(error("ERROR", code, "boom")),
    }
    out.extend(ready(b'I'));
    out
}

fn rows_of(result: &Result<ringside_wire::pg::Rows, RequestError>) -> Result<Vec<i64>, String> {
    match result {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| r.unwrap().req_i64(&rows.columns, 0).unwrap())
            .collect()),
        Err(RequestError::Pg(PgError::Db(db))) => Err(db.code.clone()),
        Err(e) => Err(format!("{e:?}")),
    }
}

// ------------------------------------------------------------ transcript ---

#[test]
fn the_recorded_pipeline_with_an_error_in_the_middle() {
    // tests/fixtures/pg/record.py's pipeline_error: after startup, four
    // requests each ended by its own Sync: a query (1 2 T D C Z), a syntax
    // error (E Z), another query (1 2 T D C Z), a statement description
    // (t T Z).
    let path = format!(
        "{}/tests/fixtures/pg/pipeline_error.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut input = BytesMut::from(&std::fs::read(path).unwrap()[..]);
    // Skip the startup, up to its ReadyForQuery.
    loop {
        match next_message(&mut input, 1 << 20).unwrap().unwrap() {
            Message::ReadyForQuery(_) => break,
            _ => continue,
        }
    }
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let ids: Vec<RequestId> = (0..4)
        .map(|_| p.simple("recorded", &mut out).unwrap())
        .collect();
    p.receive(&mut input).unwrap();
    assert!(input.is_empty());
    let done: Vec<(RequestId, bool)> = events(&mut p)
        .into_iter()
        .map(|e| match e {
            Event::Done(id, r) => (id, r.is_ok()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        done,
        vec![
            (ids[0], true),
            (ids[1], false),
            (ids[2], true),
            (ids[3], true)
        ],
        "the error stays with the second request"
    );
    assert_eq!(p.in_flight(), 0);
}

// ------------------------------------------------------------- properties ---

fn answers() -> impl Strategy<Value = Vec<(Answer, bool, bool)>> {
    prop::collection::vec(
        (
            prop_oneof![
                3 => prop::collection::vec(any::<i64>(), 0..5).prop_map(Answer::Rows),
                1 => prop::sample::select(vec!["42601", "22012", "23505"]).prop_map(|c| Answer::Error(c.to_string())),
            ],
            any::<bool>(), // abandoned by its caller
            any::<bool>(), // a notice before it
        ),
        1..12,
    )
}

/// Feeds the server's bytes to `p` cut at `cuts`; every message is taken.
fn feed(p: &mut Pipeline, server: &[u8], cuts: &[usize]) {
    let mut input = BytesMut::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&server.len())) {
        let cut = cut.min(server.len()).max(at);
        input.extend_from_slice(&server[at..cut]);
        at = cut;
        p.receive(&mut input).unwrap();
    }
    assert!(input.is_empty(), "every message consumed");
}

/// Queues one prepared query per answer, all with the same statement (the
/// first prepares it), feeds the server's bytes cut at `cuts`, and returns
/// the events.
/// Each completed request with its rows (or its SQLSTATE).
type Completions = Vec<(RequestId, Result<Vec<i64>, String>)>;

fn run(script: &[(Answer, bool, bool)], cuts: &[usize]) -> (Completions, Vec<RequestId>, Pipeline) {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let mut ids = Vec::new();
    let mut server = Vec::new();
    // The first request prepares; if its Parse fails, the server reports the
    // error once and requests behind it bind to a statement that does not
    // exist (26000), which the pipeline reports as the first failure.
    let mut prepared_ok = None;
    for (i, (answer, _, noise)) in script.iter().enumerate() {
        let id = p
            .query(
                "SELECT n FROM t WHERE k = $1",
                &[20],
                &[Param::I64(i as i64)],
                "",
                0,
                &mut out,
            )
            .unwrap();
        ids.push(id);
        let prepares = i == 0;
        let answer = match (prepared_ok, answer) {
            (Some(false), _) => Answer::Error("26000".into()),
            _ => answer.clone(),
        };
        if prepares {
            prepared_ok = Some(matches!(answer, Answer::Rows(_)));
        }
        server.extend(answer_bytes(&answer, prepares, *noise));
    }
    for (i, (_, abandoned, _)) in script.iter().enumerate() {
        if *abandoned {
            p.abandon(ids[i]);
        }
    }
    feed(&mut p, &server, cuts);
    let got = events(&mut p)
        .into_iter()
        .map(|e| match e {
            Event::Done(id, r) => (id, rows_of(&r)),
            other => panic!("{other:?}"),
        })
        .collect();
    (got, ids, p)
}

proptest! {
    #[test]
    fn any_split_of_the_backend_bytes_gives_the_same_completions(
        script in answers(),
        mut cuts in prop::collection::vec(0usize..2000, 0..8),
    ) {
        cuts.sort_unstable();
        let (whole, _, _) = run(&script, &[]);
        let (split, _, _) = run(&script, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn each_request_gets_its_own_answer_and_abandoned_ones_none(script in answers()) {
        let (got, ids, mut p) = run(&script, &[]);
        let first_failed = matches!(script[0].0, Answer::Error(_));
        let mut expected = Vec::new();
        for (i, (answer, abandoned, _)) in script.iter().enumerate() {
            if *abandoned {
                continue;
            }
            let want = match answer {
                _ if first_failed && i > 0 => {
                    // Requests behind a failed Parse report the Parse's error.
                    let Answer::Error(code) = &script[0].0 else { unreachable!() };
                    Err(code.clone())
                }
                Answer::Rows(v) => Ok(v.clone()),
                Answer::Error(code) => Err(code.clone()),
            };
            expected.push((ids[i], want));
        }
        prop_assert_eq!(got, expected);
        // The connection is in step: nothing in flight, and a new request
        // on it completes.
        prop_assert_eq!(p.in_flight(), 0);
        let mut out = BytesMut::new();
        let id = p.query("SELECT n FROM t WHERE k = $1", &[20], &[Param::I64(1)], "", 0, &mut out).unwrap();
        let mut input = BytesMut::from(&answer_bytes(&Answer::Rows(vec![5]), first_failed, false)[..]);
        p.receive(&mut input).unwrap();
        let after = events(&mut p);
        prop_assert_eq!(after.len(), 1);
        match &after[0] {
            Event::Done(done, r) => {
                prop_assert_eq!(*done, id);
                prop_assert_eq!(rows_of(r), Ok(vec![5]));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}

#[test]
fn a_fatal_error_ends_the_connection_and_hands_back_the_rest() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let a = p.simple("SELECT 1", &mut out).unwrap();
    let b = p.simple("SELECT 2", &mut out).unwrap();
    let mut input = BytesMut::from(&error("FATAL", "57P01", "terminating connection")[..]);
    let broken = p.receive(&mut input).unwrap_err();
    assert!(broken.0.contains("FATAL"), "{broken:?}");
    match p.next_event() {
        Some(Event::Done(id, Err(RequestError::Pg(PgError::Db(db))))) => {
            assert_eq!(id, a);
            assert_eq!(db.code, "57P01");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.take_unanswered("closed"), vec![b]);
    assert!(
        p.simple("SELECT 3", &mut out).is_err(),
        "no new request on a broken connection"
    );
    assert_eq!(
        p.receive(&mut BytesMut::new()),
        Err(Broken(broken.0.clone()))
    );
}

#[test]
fn messages_with_no_request_break_the_connection() {
    let mut p = pipeline();
    let mut input = BytesMut::from(&data_row(&[1])[..]);
    assert!(p.receive(&mut input).is_err());
}

#[test]
fn a_result_past_the_limit_fails_only_its_request() {
    let mut p = Pipeline::new(
        Limits {
            max_result_bytes: 64,
            ..Limits::default()
        },
        TxStatus::Idle,
    );
    let mut out = BytesMut::new();
    let big = p.simple("big", &mut out).unwrap();
    let small = p.simple("small", &mut out).unwrap();
    let mut server = row_description(&["n"]);
    for v in 0..10 {
        server.extend(data_row(&[v]));
    }
    server.extend(command_complete("SELECT 10"));
    server.extend(ready(b'I'));
    server.extend(row_description(&["n"]));
    server.extend(data_row(&[7]));
    server.extend(command_complete("SELECT 1"));
    server.extend(ready(b'I'));
    p.receive(&mut BytesMut::from(&server[..])).unwrap();
    let got: Vec<_> = events(&mut p)
        .into_iter()
        .map(|e| match e {
            Event::Done(id, r) => (id, rows_of(&r)),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![(big, Err("TooLarge".into())), (small, Ok(vec![7]))]
    );
}

/// Rows are not copied out of the read buffer: every value of a result
/// that arrived in one read points into that read's memory, and the tag
/// is kept too.
#[test]
fn rows_are_views_of_the_read_buffer() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let id = p.simple("rows", &mut out).unwrap();
    let mut server = row_description(&["n"]);
    for v in 0..100 {
        server.extend(data_row(&[v]));
    }
    server.extend(command_complete("SELECT 100"));
    server.extend(ready(b'I'));
    let mut input = BytesMut::with_capacity(server.len());
    input.extend_from_slice(&server);
    let span = input.as_ptr() as usize..input.as_ptr() as usize + input.len();
    p.receive(&mut input).unwrap();
    let Some(Event::Done(done, Ok(rows))) = p.next_event() else {
        panic!("no rows")
    };
    assert_eq!(done, id);
    assert_eq!(rows.len(), 100);
    assert_eq!(rows.tag(), Some("SELECT 100"));
    assert_eq!(rows.affected(), Some(100));
    for row in rows.iter() {
        let value = row.unwrap().raw(0).unwrap().as_ptr() as usize;
        assert!(
            span.contains(&value),
            "a row was copied out of the read buffer"
        );
    }
}

#[test]
fn copy_in_is_announced_and_ends_at_its_ready_for_query() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let id = p.simple("COPY t FROM STDIN", &mut out).unwrap();
    let mut input = BytesMut::from(&msg(b'G', &[0, 0, 0])[..]);
    p.receive(&mut input).unwrap();
    assert!(matches!(p.next_event(), Some(Event::CopyReady(i)) if i == id));
    out.clear();
    p.copy_data(b"1\n2\n", &mut out).unwrap();
    p.copy_done(&mut out);
    assert_eq!(out[0], b'd');
    let mut server = command_complete("COPY 2");
    server.extend(ready(b'T'));
    p.receive(&mut BytesMut::from(&server[..])).unwrap();
    match p.next_event() {
        Some(Event::Done(done, Ok(rows))) => {
            assert_eq!(done, id);
            assert_eq!(rows.affected(), Some(2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.tx_status(), TxStatus::InTransaction);
}

/// Batches: statements queued with `query_in_batch` share one Sync. Up to
/// the first failure each is answered alone (at its CommandComplete), the
/// failed one gets its own error, and the rest of its batch, which the
/// server skipped, end as `Skipped`: no request sees another's error.
fn run_batches(script: &[(Vec<Answer>, bool)], cuts: &[usize]) -> (Completions, Completions) {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    let mut server = Vec::new();
    let mut expected = Vec::new();
    let mut first = true;
    for (batch, synced_single) in script {
        let mut failed = false;
        for (i, answer) in batch.iter().enumerate() {
            let params = [Param::I64(i as i64)];
            let id = if *synced_single {
                p.query(
                    "SELECT n FROM t WHERE k = $1",
                    &[20],
                    &params,
                    "",
                    0,
                    &mut out,
                )
            } else {
                p.query_in_batch("SELECT n FROM t WHERE k = $1", &[20], &params, &mut out)
            }
            .unwrap();
            // The first statement ever prepares, and always succeeds here
            // (so the statement stays prepared for the others).
            let answer = if first {
                Answer::Rows(vec![7])
            } else {
                answer.clone()
            };
            let prepares = std::mem::take(&mut first);
            if failed {
                expected.push((id, Err("Skipped".to_string())));
                continue;
            }
            let mut bytes = answer_bytes(&answer, prepares, false);
            // Inside a batch there is one ReadyForQuery, at its end.
            if !*synced_single {
                bytes.truncate(bytes.len() - ready(b'I').len());
            }
            server.extend(bytes);
            match &answer {
                Answer::Rows(v) => expected.push((id, Ok(v.clone()))),
                Answer::Error(code) => {
                    expected.push((id, Err(code.clone())));
                    failed = !*synced_single;
                }
            }
        }
        if !*synced_single {
            p.close_batch(&mut out);
            server.extend(ready(b'I'));
        }
    }
    feed(&mut p, &server, cuts);
    assert_eq!(p.in_flight(), 0);
    let got = events(&mut p)
        .into_iter()
        .map(|e| match e {
            Event::Done(id, r) => (id, rows_of(&r)),
            other => panic!("{other:?}"),
        })
        .collect();
    (got, expected)
}

proptest! {
    #[test]
    fn a_failure_in_a_batch_reaches_only_its_own_request(
        script in prop::collection::vec(
            (
                prop::collection::vec(
                    prop_oneof![
                        3 => prop::collection::vec(any::<i64>(), 0..4).prop_map(Answer::Rows),
                        1 => prop::sample::select(vec!["22012", "57014"]).prop_map(|c| Answer::Error(c.to_string())),
                    ],
                    1..8,
                ),
                any::<bool>(), // queued one by one with their own Syncs instead
            ),
            1..6,
        ),
        cuts in prop::collection::vec(0usize..4000, 0..8),
    ) {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (got, expected) = run_batches(&script, &cuts);
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn a_request_that_is_not_batched_closes_the_open_batch_first() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    p.query_in_batch("SELECT 1", &[], &[], &mut out).unwrap();
    p.query_in_batch("SELECT 1", &[], &[], &mut out).unwrap();
    assert_eq!(p.open_batch(), 2);
    p.simple("SELECT 2", &mut out).unwrap();
    assert_eq!(p.open_batch(), 0);
    // Parse, Describe, Bind, Execute, Bind, Execute, Sync, then the Query.
    let tags: Vec<u8> = std::iter::from_fn({
        let mut rest = &out[..];
        move || {
            let (&tag, body) = rest.split_first()?;
            let len = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
            rest = &body[len..];
            Some(tag)
        }
    })
    .collect();
    assert_eq!(tags, b"PDBEBESQ");
}

fn text_description(type_oid: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.extend_from_slice(&cstr("title"));
    b.put_u32(0);
    b.put_i16(0);
    b.put_u32(type_oid);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i16(0); // text format
    msg(b'T', &b)
}

fn text_row(value: Option<&str>) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(1);
    match value {
        Some(v) => {
            b.put_i32(v.len() as i32);
            b.extend_from_slice(v.as_bytes());
        }
        None => b.put_i32(-1),
    }
    msg(b'D', &b)
}

fn one_result(p: &mut Pipeline, server: &[u8]) -> ringside_wire::pg::Rows {
    p.receive(&mut BytesMut::from(server)).unwrap();
    match p.next_event() {
        Some(Event::Done(_, Ok(rows))) => rows,
        other => panic!("{other:?}"),
    }
}

/// A text column read for every row at once: its values in order, a NULL
/// refused where it is, and a column of another type refused up front.
#[test]
fn a_text_column_is_read_row_by_row_with_its_type_checked() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    p.simple("titles", &mut out).unwrap();
    let mut server = text_description(25);
    for v in [Some("a"), Some("Tom & Jerry"), None, Some("東京")] {
        server.extend(text_row(v));
    }
    server.extend(command_complete("SELECT 4"));
    server.extend(ready(b'I'));
    let rows = one_result(&mut p, &server);
    let got: Vec<Result<&[u8], String>> = rows
        .req_texts(0)
        .unwrap()
        .map(|v| v.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(got[0], Ok(&b"a"[..]));
    assert_eq!(got[1], Ok(&b"Tom & Jerry"[..]));
    assert!(got[2].is_err(), "NULL: {:?}", got[2]);
    assert_eq!(got[3], Ok("東京".as_bytes()));
    assert!(rows.req_texts(1).is_err(), "no column 1");

    let mut p = pipeline();
    p.simple("numbers", &mut out).unwrap();
    let mut server = row_description(&["n"]);
    server.extend(data_row(&[1]));
    server.extend(command_complete("SELECT 1"));
    server.extend(ready(b'I'));
    let rows = one_result(&mut p, &server);
    assert!(rows.req_texts(0).is_err(), "int8 is not text");
}

/// Rows arriving back to back are taken as one run, each still checked: a
/// malformed one in the middle of a run breaks the connection as it would
/// alone.
#[test]
fn a_malformed_row_inside_a_run_breaks_the_connection() {
    let mut p = pipeline();
    let mut out = BytesMut::new();
    p.simple("rows", &mut out).unwrap();
    let mut server = row_description(&["n"]);
    server.extend(data_row(&[1]));
    server.extend(data_row(&[2]));
    // One value announced, eight bytes claimed, four present.
    let mut bad = BytesMut::new();
    bad.put_i16(1);
    bad.put_i32(8);
    bad.put_i32(0);
    server.extend(msg(b'D', &bad));
    server.extend(data_row(&[3]));
    server.extend(command_complete("SELECT 4"));
    server.extend(ready(b'I'));
    assert!(p.receive(&mut BytesMut::from(&server[..])).is_err());
}

//! Property tests of the streaming CSV validator: the verdict and the output
//! do not depend on how the input is split into chunks, the output parses
//! back to the generated records, injected errors are reported at the right
//! line, and everything agrees with a naive whole-input reference validator.

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use ringside_wire::csv::{CsvError, CsvErrorKind, CsvValidator, Limits};

// ------------------------------------------------------------- feeding

#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    result: Result<u64, CsvError>,
    out: Vec<u8>,
    header: Option<Vec<String>>,
}

/// Feeds `input` cut at `cuts` (positions, any order, duplicates allowed),
/// then finishes; checks the bookkeeping along the way.
fn feed(limits: Limits, input: &[u8], cuts: &[usize]) -> Outcome {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut v = CsvValidator::new(limits);
    let mut out = BytesMut::new();
    let (mut records, mut bytes, mut header_ready) = (0, 0, 0);
    let mut from = 0;
    let mut result = Ok(());
    for &to in &cuts {
        match v.push(&input[from..to], &mut out) {
            Ok(p) => {
                records += p.records;
                bytes += p.bytes;
                header_ready += usize::from(p.header_ready);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        from = to;
    }
    if result.is_ok() {
        match v.finish(&mut out) {
            Ok(p) => {
                records += p.records;
                bytes += p.bytes;
                header_ready += usize::from(p.header_ready);
            }
            Err(e) => result = Err(e),
        }
    }
    let header = v.header().map(|h| h.columns.clone());
    match &result {
        Ok(()) => {
            assert_eq!(records, v.records());
            assert_eq!(bytes, out.len());
            assert_eq!(header_ready, 1);
            assert!(header.is_some());
        }
        Err(e) => {
            // Sticky, and the records before the bad one are all in `out`.
            assert_eq!(v.push(b"x", &mut out).as_ref(), Err(e));
            assert_eq!(v.finish(&mut out).as_ref(), Err(e));
            assert!(header_ready <= 1);
            assert!(records <= v.records());
        }
    }
    assert_eq!(parse_out(&out).len() as u64, v.records());
    Outcome {
        result: result.map(|()| v.records()),
        out: out.to_vec(),
        header,
    }
}

/// Cut points: random ones, or every byte.
fn cuts() -> impl Strategy<Value = (bool, Vec<Index>)> {
    (
        prop::bool::weighted(0.15),
        prop::collection::vec(any::<Index>(), 0..10),
    )
}

fn resolve((bytewise, idx): &(bool, Vec<Index>), len: usize) -> Vec<usize> {
    if *bytewise {
        (0..len).collect()
    } else {
        idx.iter().map(|i| i.index(len + 1)).collect()
    }
}

// ------------------------------------------------------------- reference

/// Parses validated output (LF-terminated RFC 4180 records) back into values.
fn parse_out(out: &[u8]) -> Vec<Vec<String>> {
    let text = std::str::from_utf8(out).expect("out is UTF-8");
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else {
            match c {
                '"' => in_quotes = true,
                ',' => fields.push(std::mem::take(&mut field)),
                '\n' => {
                    fields.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut fields));
                }
                '\r' => panic!("CR outside quotes in out"),
                c => field.push(c),
            }
        }
    }
    assert!(
        !in_quotes && field.is_empty() && fields.is_empty(),
        "out ends mid-record"
    );
    records
}

/// The validator's rules, naively: whole input, byte by byte.
fn reference(limits: Limits, input: &[u8]) -> Outcome {
    let max = limits.max_record_bytes;
    let max_fields = limits.max_fields.max(1);
    let d = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut out = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut records = 0;
    let (mut pos, mut line) = (0, 1u64);
    let result = 'all: loop {
        if pos == d.len() {
            if header.is_none() {
                break Err(CsvError {
                    line,
                    reason: CsvErrorKind::EmptyHeader,
                });
            }
            break Ok(records);
        }
        let (start, start_line) = (pos, line);
        let fail = |reason| CsvError {
            line: start_line,
            reason,
        };
        let mut fields = vec![Vec::new()];
        let mut data = 0;
        #[derive(PartialEq)]
        enum S {
            Start,
            Unquoted,
            Quoted,
            AfterQuote,
        }
        let mut s = S::Start;
        let end = loop {
            if pos == d.len() {
                if s == S::Quoted {
                    break 'all Err(fail(CsvErrorKind::UnterminatedQuote));
                }
                break pos;
            }
            let c = d[pos];
            if s != S::Quoted && c == b'\n' {
                pos += 1;
                line += 1;
                break pos - 1;
            }
            if s != S::Quoted && c == b'\r' {
                if d.get(pos + 1) == Some(&b'\n') {
                    pos += 2;
                    line += 1;
                    break pos - 2;
                }
                break 'all Err(fail(CsvErrorKind::BareCarriageReturn));
            }
            if data == max {
                break 'all Err(fail(CsvErrorKind::RecordTooLong));
            }
            data += 1;
            pos += 1;
            let comma = match s {
                S::Start if c == b'"' => {
                    s = S::Quoted;
                    false
                }
                S::Start | S::Unquoted if c == b',' => true,
                S::Start | S::Unquoted if c == b'"' => {
                    break 'all Err(fail(CsvErrorKind::QuoteInUnquotedField))
                }
                S::Start | S::Unquoted => {
                    s = S::Unquoted;
                    fields.last_mut().unwrap().push(c);
                    false
                }
                S::Quoted => {
                    if c == b'"' {
                        s = S::AfterQuote;
                    } else {
                        line += u64::from(c == b'\n');
                        fields.last_mut().unwrap().push(c);
                    }
                    false
                }
                S::AfterQuote if c == b'"' => {
                    s = S::Quoted;
                    fields.last_mut().unwrap().push(c);
                    false
                }
                S::AfterQuote if c == b',' => true,
                S::AfterQuote => break 'all Err(fail(CsvErrorKind::TextAfterClosingQuote)),
            };
            if comma {
                fields.push(Vec::new());
                if fields.len() > max_fields {
                    break 'all Err(fail(CsvErrorKind::TooManyFields));
                }
                s = S::Start;
            }
        };
        let rec = &d[start..end];
        if rec.is_empty() {
            if header.is_none() {
                break Err(fail(CsvErrorKind::EmptyHeader));
            }
            continue;
        }
        if std::str::from_utf8(rec).is_err() {
            break Err(fail(CsvErrorKind::InvalidUtf8));
        }
        match &header {
            None => {
                let names: Vec<String> = fields
                    .iter()
                    .map(|f| String::from_utf8(f.clone()).unwrap().trim().to_owned())
                    .collect();
                if names.iter().all(|n| n.is_empty()) {
                    break Err(fail(CsvErrorKind::EmptyHeader));
                }
                if let Some(k) = names.iter().position(|n| n.is_empty()) {
                    break Err(fail(CsvErrorKind::EmptyColumnName { column: k + 1 }));
                }
                for (k, n) in names.iter().enumerate() {
                    if names[..k].contains(n) {
                        break 'all Err(fail(CsvErrorKind::DuplicateColumn(n.clone())));
                    }
                }
                header = Some(names);
            }
            Some(h) => {
                if fields.len() != h.len() {
                    break Err(fail(CsvErrorKind::FieldCount {
                        expected: h.len(),
                        found: fields.len(),
                    }));
                }
                out.extend_from_slice(if rec == b"\\." { b"\"\\.\"" } else { rec });
                out.push(b'\n');
                records += 1;
            }
        }
    };
    Outcome {
        result,
        out,
        header,
    }
}

// ------------------------------------------------------------- documents

/// Field values: separators, quotes, CR/LF, blanks, non-ASCII, `\.`.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::collection::vec(
            select(vec![
                'a', 'b', '7', ' ', ',', '"', '\n', '\r', 'é', '日', '😀', '\\', '.', '\t',
            ]),
            0..8,
        )
        .prop_map(|v| v.into_iter().collect()),
        1 => Just("\\.".to_owned()),
    ]
}

#[derive(Clone, Debug)]
struct Doc {
    bom: bool,
    /// Per header column: (quoted, padded with blanks).
    header: Vec<(bool, bool)>,
    /// Per record: (value, quote even if not needed) per field.
    rows: Vec<Vec<(String, bool)>>,
    /// Per record: CRLF instead of LF, blank lines before it (CRLF or LF).
    layout: Vec<(bool, Vec<bool>)>,
    final_eol: bool,
}

fn doc(max_rows: usize) -> impl Strategy<Value = Doc> {
    (1usize..6).prop_flat_map(move |ncols| {
        (
            any::<bool>(),
            prop::collection::vec((any::<bool>(), any::<bool>()), ncols),
            prop::collection::vec(
                prop::collection::vec((value(), prop::bool::weighted(0.2)), ncols),
                0..max_rows,
            ),
            prop::collection::vec(
                (
                    any::<bool>(),
                    prop::collection::vec(any::<bool>(), 0..3).prop_map(|v| {
                        if v.len() == 2 {
                            vec![]
                        } else {
                            v
                        }
                    }),
                ),
                max_rows + 1,
            ),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(bom, header, rows, layout, final_eol)| Doc {
                bom,
                header,
                rows,
                layout,
                final_eol,
            })
    })
}

fn names(doc: &Doc) -> Vec<String> {
    (0..doc.header.len())
        .map(|i| {
            if i % 2 == 0 {
                format!("c{i}")
            } else {
                format!("列 {i}")
            }
        })
        .collect()
}

fn encode(v: &str, force: bool, alone: bool) -> String {
    if force || (alone && v.is_empty()) || v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

/// Renders a document; also returns the line each data record starts on.
fn render(doc: &Doc) -> (Vec<u8>, Vec<u64>) {
    let mut s = String::new();
    if doc.bom {
        s.push('\u{feff}');
    }
    let header: Vec<String> = names(doc)
        .iter()
        .zip(&doc.header)
        .map(|(n, &(q, pad))| {
            let n = if pad { format!(" {n}\t") } else { n.clone() };
            encode(&n, q, false)
        })
        .collect();
    s += &header.join(",");
    let eol = |crlf| if crlf { "\r\n" } else { "\n" };
    let mut last = eol(doc.layout[0].0);
    s += last;
    let mut starts = Vec::new();
    for (k, row) in doc.rows.iter().enumerate() {
        let (crlf, blanks) = &doc.layout[k + 1];
        for &b in blanks {
            s += eol(b);
        }
        starts.push(1 + s.matches('\n').count() as u64);
        let fields: Vec<String> = row
            .iter()
            .map(|(v, q)| encode(v, *q, row.len() == 1))
            .collect();
        s += &fields.join(",");
        last = eol(*crlf);
        s += last;
    }
    if !doc.final_eol {
        // Blank lines only come before records: this is a record's terminator.
        s.truncate(s.len() - last.len());
    }
    (s.into_bytes(), starts)
}

fn values(doc: &Doc) -> Vec<Vec<String>> {
    doc.rows
        .iter()
        .map(|r| r.iter().map(|(v, _)| v.clone()).collect())
        .collect()
}

fn roomy() -> Limits {
    Limits {
        max_record_bytes: 4096,
        max_fields: 8,
    }
}

// ------------------------------------------------------------- properties

/// 512 cases unless PROPTEST_CASES says otherwise.
fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 512;
    }
    config
}

proptest! {
    #![proptest_config(config())]

    /// (1) Valid CSV: the output and record count do not depend on the split,
    /// and everything is accepted.
    #[test]
    fn valid_csv_split_invariance(doc in doc(30), cuts in cuts()) {
        let (input, _) = render(&doc);
        let once = feed(roomy(), &input, &[]);
        prop_assert_eq!(&once.result, &Ok(doc.rows.len() as u64));
        prop_assert_eq!(once.header.as_ref(), Some(&names(&doc)));
        let split = feed(roomy(), &input, &resolve(&cuts, input.len()));
        prop_assert_eq!(&split, &once);
        prop_assert_eq!(&reference(roomy(), &input), &once);
    }

    /// (3) Round trip: `out` parses back to the generated records.
    #[test]
    fn round_trip(doc in doc(30), cuts in cuts()) {
        let (input, _) = render(&doc);
        let got = feed(roomy(), &input, &resolve(&cuts, input.len()));
        prop_assert_eq!(got.result, Ok(doc.rows.len() as u64));
        prop_assert_eq!(parse_out(&got.out), values(&doc));
    }

    /// (2) Invalid input from mutated valid CSV: the same verdict (line and
    /// kind) and output whatever the split, and the reference's.
    #[test]
    fn mutated_csv_split_invariance(
        doc in doc(12),
        edits in prop::collection::vec(
            (
                any::<Index>(),
                0u8..3,
                select(vec![b'"', b',', b'\n', b'\r', b'x', b' ', 0xFF, 0xC3, 0xEF]),
            ),
            1..4,
        ),
        max_record_bytes in 0usize..40,
        max_fields in 0usize..7,
        cuts in cuts(),
    ) {
        let (mut input, _) = render(&doc);
        for (at, op, byte) in edits {
            let at = at.index(input.len() + 1);
            match op {
                0 => input.insert(at, byte),
                1 if at < input.len() => { input.remove(at); }
                _ if at < input.len() => input[at] = byte,
                _ => input.push(byte),
            }
        }
        let limits = Limits { max_record_bytes, max_fields };
        let once = feed(limits, &input, &[]);
        let split = feed(limits, &input, &resolve(&cuts, input.len()));
        prop_assert_eq!(&split, &once);
        prop_assert_eq!(&reference(limits, &input), &once);
    }

    /// Arbitrary bytes from a CSV-heavy alphabet, tiny limits: agrees with the
    /// reference whatever the split.
    #[test]
    fn arbitrary_bytes_match_reference(
        input in prop::collection::vec(
            select(vec![
                b'a', b'a', b',', b',', b'"', b'"', b'\n', b'\n', b'\r', b' ', b'\\', b'.',
                0xFF, 0xC3, 0xA9, 0xEF, 0xBB, 0xBF,
            ]),
            0..48,
        ),
        max_record_bytes in 0usize..12,
        max_fields in 0usize..5,
        cuts in cuts(),
    ) {
        let limits = Limits { max_record_bytes, max_fields };
        let expected = reference(limits, &input);
        prop_assert_eq!(&feed(limits, &input, &[]), &expected);
        prop_assert_eq!(&feed(limits, &input, &resolve(&cuts, input.len())), &expected);
    }

    /// An error injected into one record is reported at that record's line,
    /// with everything before it forwarded, whatever the split.
    #[test]
    fn injected_error_line_and_kind(
        doc in doc(20).prop_filter("need a record", |d| !d.rows.is_empty()),
        which in any::<Index>(),
        column in any::<Index>(),
        kind in 0usize..8,
        cuts in cuts(),
    ) {
        let mut doc = doc;
        let k = which.index(doc.rows.len());
        let ncols = doc.header.len();
        let limits = Limits { max_record_bytes: 1000, max_fields: 8 };
        // Render the records before k, then k by hand with a bad field at
        // `col` (the fields before it are fine).
        let before = Doc { rows: doc.rows[..k].to_vec(), final_eol: true, ..doc.clone() };
        let (mut input, _) = render(&before);
        let line = 1 + input.iter().filter(|&&b| b == b'\n').count() as u64;
        let good: Vec<String> = doc.rows[k]
            .iter()
            .map(|(v, q)| encode(v, *q, ncols == 1))
            .collect();
        let col = column.index(ncols);
        let pre: String = good[..col].iter().map(|f| format!("{f},")).collect();
        let post: String = good[col + 1..].iter().map(|f| format!(",{f}")).collect();
        let with = |field: &[u8], eol: &[u8]| {
            [pre.as_bytes(), field, post.as_bytes(), eol].concat()
        };
        let (bad, reason) = match kind {
            0 => (
                format!("{},x\n", good.join(",")).into_bytes(),
                CsvErrorKind::FieldCount { expected: ncols, found: ncols + 1 },
            ),
            1 => (with(b"x\"y", b"\n"), CsvErrorKind::QuoteInUnquotedField),
            2 => (with(b"\"x\"y", b"\n"), CsvErrorKind::TextAfterClosingQuote),
            3 => (with(b"x\xFF", b"\r\n"), CsvErrorKind::InvalidUtf8),
            4 => (with(b"x\ry", b"\n"), CsvErrorKind::BareCarriageReturn),
            5 => (
                [pre.as_bytes(), b"\"never, closed\n"].concat(),
                CsvErrorKind::UnterminatedQuote,
            ),
            6 => (with("x".repeat(1001).as_bytes(), b"\n"), CsvErrorKind::RecordTooLong),
            _ => (format!("{}\n", ["1"; 9].join(",")).into_bytes(), CsvErrorKind::TooManyFields),
        };
        input.extend_from_slice(&bad);
        if kind != 5 {
            // Valid records after it change nothing.
            doc.rows.drain(..=k);
            let after = render(&Doc { bom: false, ..doc.clone() }).0;
            let first_eol = after.iter().position(|&b| b == b'\n').unwrap_or(after.len());
            input.extend_from_slice(&after[(first_eol + 1).min(after.len())..]);
        }
        let got = feed(limits, &input, &resolve(&cuts, input.len()));
        prop_assert_eq!(got.result, Err(CsvError { line, reason }));
        let expected_out = feed(limits, &render(&before).0, &[]).out;
        prop_assert_eq!(got.out, expected_out);
    }
}

#[test]
fn reference_sanity() {
    let d = Limits::default();
    let r = reference(d, b"a,b\n1,\"x\ny\"\n\n3,4");
    assert_eq!(r.result, Ok(2));
    assert_eq!(r.out, b"1,\"x\ny\"\n3,4\n");
    assert_eq!(parse_out(&r.out), vec![vec!["1", "x\ny"], vec!["3", "4"]]);
    let r = reference(d, b"a,b\n1,2\n\"\n");
    assert_eq!(
        r.result,
        Err(CsvError {
            line: 3,
            reason: CsvErrorKind::UnterminatedQuote
        })
    );
}

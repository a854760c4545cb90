//! The streaming CSV validator on arbitrary bytes split at a fuzz-chosen
//! point, with small limits: never panics, does not depend on the split,
//! never forwards the header, and forwards exactly the records it counts.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringside_wire::csv::{CsvError, CsvValidator, Limits};

/// Feeds `data` in two pushes cut at `cut`, then finishes:
/// (outcome, out, records, header column count).
fn run(limits: Limits, data: &[u8], cut: usize) -> (Result<(), CsvError>, Vec<u8>, u64, usize) {
    let mut v = CsvValidator::new(limits);
    let mut out = BytesMut::new();
    let mut counted = 0;
    let mut result = Ok(());
    for piece in [&data[..cut], &data[cut..]] {
        match v.push(piece, &mut out) {
            Ok(p) => counted += p.records,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if result.is_ok() {
        match v.finish(&mut out) {
            Ok(p) => counted += p.records,
            Err(e) => result = Err(e),
        }
    }
    if let Err(e) = &result {
        assert!(e.line >= 1 && e.line <= v.line());
        assert_eq!(v.push(b"x", &mut out).as_ref(), Err(e), "errors must stick");
        assert_eq!(v.finish(&mut out).as_ref(), Err(e), "errors must stick");
    } else {
        assert_eq!(counted, v.records());
    }
    let columns = v.header().map_or(0, |h| h.columns.len());
    (result, out.to_vec(), v.records(), columns)
}

/// Splits at LFs outside quotes (a quote toggles; `""` toggles twice). On
/// valid CSV that is the record structure; returns the records without
/// their terminators (a CR before the LF dropped).
fn split_records(data: &[u8]) -> Vec<&[u8]> {
    let mut records = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' if !in_quotes => {
                let rec = &data[start..i];
                records.push(rec.strip_suffix(b"\r").unwrap_or(rec));
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < data.len() {
        records.push(&data[start..]);
    }
    records
}

/// Fields of a record in `out` (commas outside quotes + 1).
fn fields(rec: &[u8]) -> usize {
    let mut in_quotes = false;
    let mut n = 1;
    for &b in rec {
        match b {
            b'"' => in_quotes = !in_quotes,
            b',' if !in_quotes => n += 1,
            _ => {}
        }
    }
    n
}

fuzz_target!(|input: &[u8]| {
    // Header: split point, record limit, field limit; then the CSV.
    let [cut, max_bytes, max_fields, data @ ..] = input else {
        return;
    };
    let cut = usize::from(*cut) * data.len() / 255;
    let limits = Limits {
        max_record_bytes: usize::from(*max_bytes % 64),
        max_fields: usize::from(*max_fields % 8),
    };

    let once = run(limits, data, data.len());
    let split = run(limits, data, cut);
    assert_eq!(once, split, "result depends on the split at {cut}");
    let (result, out, records, columns) = once;

    // `out` holds exactly `records` LF-terminated records, each as wide as
    // the header, and nothing else.
    let forwarded = split_records(&out);
    assert_eq!(forwarded.len() as u64, records);
    assert!(out.is_empty() || out.ends_with(b"\n"));
    assert!(forwarded.iter().all(|r| fields(r) == columns));
    assert!(!out.contains(&b'\r') || out.contains(&b'"'));

    // They are the input's non-empty records after the first (the header,
    // never forwarded), in order: all of them on success, those before the
    // bad one on error.
    let body = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut expected = Vec::new();
    let mut input_records = split_records(body).into_iter().filter(|r| !r.is_empty());
    if records > 0 || result.is_ok() {
        input_records.next(); // the header
    }
    for rec in input_records.take(records as usize) {
        expected.extend_from_slice(if rec == b"\\." { b"\"\\.\"" } else { rec });
        expected.push(b'\n');
    }
    assert_eq!(out, expected);
    if result.is_ok() {
        assert_eq!(
            split_records(body).iter().filter(|r| !r.is_empty()).count() as u64,
            records + 1
        );
    }
});

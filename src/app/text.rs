//! Escaping and formatting straight into an output buffer: no allocation
//! per value.

use ringside_wire::http::date::civil_from_days;
use ringside_wire::http::response::decimal_digits;

pub use crate::http::Out;

/// Appends `s` with the five HTML-significant characters escaped.
pub fn html_escape<O: Out + ?Sized>(s: &str, out: &mut O) {
    html_escape_bytes(s.as_bytes(), out)
}

/// `& < > " '` (ASCII, so a byte-wise scan of UTF-8 finds exactly them).
const HTML_SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'&' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'"' as usize] = true;
    t[b'\'' as usize] = true;
    t
};

/// [`html_escape`] of text bytes. Eight bytes at a time while none is
/// special (most words of a title or a fortune), byte by byte with a table
/// in a word that has one.
pub fn html_escape_bytes<O: Out + ?Sized>(bytes: &[u8], out: &mut O) {
    let mut start = 0;
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in words.by_ref() {
        if has_html_special(u64::from_le_bytes(word.try_into().unwrap_or_default())) {
            escape_from(bytes, at, at + 8, &mut start, out);
        }
        at += 8;
    }
    escape_from(bytes, at, bytes.len(), &mut start, out);
    out.put(&bytes[start..]);
}

/// Escapes the specials in `bytes[from..to]`, putting the plain run before
/// each; `start` is where the pending plain run begins.
fn escape_from<O: Out + ?Sized>(
    bytes: &[u8],
    from: usize,
    to: usize,
    start: &mut usize,
    out: &mut O,
) {
    for (i, &b) in bytes[from..to].iter().enumerate() {
        if HTML_SPECIAL[usize::from(b)] {
            out.put(&bytes[*start..from + i]);
            out.put(match b {
                b'&' => b"&amp;",
                b'<' => b"&lt;",
                b'>' => b"&gt;",
                b'"' => b"&quot;",
                _ => b"&#39;",
            });
            *start = from + i + 1;
        }
    }
}

/// Whether any byte of `word` is one of `& < > " '`. Three zero-byte tests:
/// `&` (0x26) and `'` (0x27) are one test with bit 0 set, `<` (0x3C) and `>`
/// (0x3E) one with bit 1 set. The test may flag bytes above a real match,
/// never without one, so the answer is exact.
fn has_html_special(word: u64) -> bool {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(LOW) & !x & HIGH;
    let amp_apos = zero((word | LOW) ^ (LOW * 0x27));
    let angles = zero((word | (LOW << 1)) ^ (LOW * 0x3E));
    let quote = zero(word ^ (LOW * 0x22));
    amp_apos | angles | quote != 0
}

/// Appends `s` as a JSON string, quotes included.
pub fn json_string<O: Out + ?Sized>(s: &str, out: &mut O) {
    json_string_bytes(s.as_bytes(), out)
}

/// [`json_string`] of text bytes.
pub fn json_string_bytes<O: Out + ?Sized>(bytes: &[u8], out: &mut O) {
    out.put_byte(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            // `<` too, so the JSON is safe inside a <script> element.
            b'<' => b"\\u003c",
            0..=0x1f => {
                out.put(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.put(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.put(&bytes[start..i]);
        out.put(esc);
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put_byte(b'"');
}

/// Appends `s` as one CSV field (RFC 4180): quoted when it holds a comma,
/// quote, CR or LF, with quotes doubled.
pub fn csv_field<O: Out + ?Sized>(s: &str, out: &mut O) {
    if !s.contains([',', '"', '\n', '\r']) {
        out.put(s.as_bytes());
        return;
    }
    out.put_byte(b'"');
    for part in s.split('"').enumerate() {
        if part.0 > 0 {
            out.put(b"\"\"");
        }
        out.put(part.1.as_bytes());
    }
    out.put_byte(b'"');
}

/// Appends microseconds since the Unix epoch as RFC 3339 UTC
/// ("2026-11-26T10:37:09.123456Z"), without formatting machinery or an
/// allocation: it runs for every exported row.
pub fn rfc3339_micros<O: Out + ?Sized>(micros: i64, out: &mut O) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let tod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    if year < 0 {
        out.put_byte(b'-');
    }
    push_padded(out, year.unsigned_abs(), 4);
    out.put_byte(b'-');
    push_padded(out, month as u64, 2);
    out.put_byte(b'-');
    push_padded(out, day as u64, 2);
    out.put_byte(b'T');
    push_padded(out, (tod / 3600) as u64, 2);
    out.put_byte(b':');
    push_padded(out, (tod / 60 % 60) as u64, 2);
    out.put_byte(b':');
    push_padded(out, (tod % 60) as u64, 2);
    out.put_byte(b'.');
    push_padded(out, frac as u64, 6);
    out.put_byte(b'Z');
}

/// Appends the decimal digits of `n`, without formatting machinery or an
/// allocation (it runs for every row of a page or an export).
pub fn push_int<O: Out + ?Sized>(out: &mut O, n: i64) {
    if n < 0 {
        out.put_byte(b'-');
    }
    push_padded(out, n.unsigned_abs(), 1);
}

/// The digits of `n`, zero-padded to at least `width`.
fn push_padded<O: Out + ?Sized>(out: &mut O, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    out.put(decimal_digits(n, width, &mut digits));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut v = Vec::new();
        f(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn html() {
        assert_eq!(
            run(|o| html_escape("<script>alert('x&y')</script>\"", o)),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;&quot;"
        );
        assert_eq!(
            run(|o| html_escape("Crème brûlée 東京", o)),
            "Crème brûlée 東京"
        );
    }

    #[test]
    fn the_word_test_finds_each_special_in_each_position() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                for filler in [b'a', 0x25, 0x3D, 0x3F, 0xFF, 0x00] {
                    let mut word = [filler; 8];
                    word[pos] = b;
                    let want = word.iter().any(|&x| HTML_SPECIAL[usize::from(x)]);
                    assert_eq!(has_html_special(u64::from_le_bytes(word)), want, "{word:?}");
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_word_test_is_exact(word in proptest::num::u64::ANY) {
            let want = word.to_le_bytes().iter().any(|&x| HTML_SPECIAL[usize::from(x)]);
            proptest::prop_assert_eq!(has_html_special(word), want);
        }

        #[test]
        fn html_escape_bytes_replaces_exactly_the_five(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let mut plain = Vec::new();
            for &b in &bytes {
                match b {
                    b'&' => plain.extend_from_slice(b"&amp;"),
                    b'<' => plain.extend_from_slice(b"&lt;"),
                    b'>' => plain.extend_from_slice(b"&gt;"),
                    b'"' => plain.extend_from_slice(b"&quot;"),
                    b'\'' => plain.extend_from_slice(b"&#39;"),
                    _ => plain.push(b),
                }
            }
            let mut out = Vec::new();
            html_escape_bytes(&bytes, &mut out);
            proptest::prop_assert_eq!(out, plain);
        }

        /// The SIMD search escapes exactly what a byte-by-byte one does.
        #[test]
        fn html_escape_is_the_plain_replacement(s in "[a-z&<>\"' éあ]{0,40}") {
            let plain = s
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;");
            proptest::prop_assert_eq!(run(|o| html_escape(&s, o)), plain);
        }
    }

    #[test]
    fn json() {
        assert_eq!(
            run(|o| json_string("a\"b\\c\n<\u{1}é", o)),
            "\"a\\\"b\\\\c\\n\\u003c\\u0001é\""
        );
    }

    #[test]
    fn csv() {
        assert_eq!(run(|o| csv_field("plain", o)), "plain");
        assert_eq!(run(|o| csv_field("a,\"b\"\nc", o)), "\"a,\"\"b\"\"\nc\"");
    }

    #[test]
    fn integers_match_the_standard_formatting() {
        for n in [
            0,
            7,
            -7,
            10,
            99,
            100,
            -100,
            65_535,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(run(|o| push_int(o, n)), n.to_string());
        }
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = x >> (x & 63).unsigned_abs();
            assert_eq!(run(|o| push_int(o, n)), n.to_string());
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(run(|o| rfc3339_micros(0, o)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            run(|o| rfc3339_micros(951_782_400_000_001, o)),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(
            run(|o| rfc3339_micros(-1, o)),
            "1969-12-31T23:59:59.999999Z"
        );
    }
}

//! Escaping and formatting straight into an output buffer: no allocation
//! per value.

/// Appends `s` with the five HTML-significant characters escaped.
pub fn html_escape(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let rep: &[u8] = match b {
            b'&' => b"&amp;",
            b'<' => b"&lt;",
            b'>' => b"&gt;",
            b'"' => b"&quot;",
            b'\'' => b"&#39;",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(rep);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Appends `s` as a JSON string, quotes included.
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
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
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends `s` as one CSV field (RFC 4180): quoted when it holds a comma,
/// quote, CR or LF, with quotes doubled.
pub fn csv_field(s: &str, out: &mut Vec<u8>) {
    if !s.contains([',', '"', '\n', '\r']) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    out.push(b'"');
    for part in s.split('"').enumerate() {
        if part.0 > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part.1.as_bytes());
    }
    out.push(b'"');
}

/// Appends microseconds since the Unix epoch as RFC 3339 UTC
/// ("2026-11-26T10:37:09.123456Z").
pub fn rfc3339_micros(micros: i64, out: &mut Vec<u8>) {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let s = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        tod / 3600,
        tod / 60 % 60,
        tod % 60
    );
    out.extend_from_slice(s.as_bytes());
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

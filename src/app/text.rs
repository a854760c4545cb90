//! Escaping and formatting straight into an output buffer: no allocation
//! per value.

use ringside_wire::http::date::civil_from_days;
use ringside_wire::http::response::decimal_digits;

pub use crate::http::Out;

/// Appends `s` with the five HTML-significant characters escaped.
pub fn html_escape<O: Out + ?Sized>(s: &str, out: &mut O) {
    html_escape_bytes(s.as_bytes(), out)
}

/// [`html_escape`] of text bytes (see [`Staged::put_html_escaped`]). A
/// caller escaping many values into one page stages the page itself
/// instead: each call here starts a small staging buffer of its own.
pub fn html_escape_bytes<O: Out + ?Sized>(bytes: &[u8], out: &mut O) {
    Staged::<O, 256>::new(out).put_html_escaped(bytes);
}

/// A buffer on the stack in front of an [`Out`]: the many short writes of a
/// page (a row's markup, an escaped value) land here and reach `out` as a
/// few large appends, instead of one capacity check and one copy call
/// each. It also lets escaping store whole words past where its output
/// ends, which the slack at the end of the buffer makes room for. What is
/// staged reaches `out` when the buffer fills and when it is dropped.
pub struct Staged<'o, O: Out + ?Sized, const N: usize> {
    buf: [u8; N],
    len: usize,
    out: &'o mut O,
}

impl<'o, O: Out + ?Sized, const N: usize> Staged<'o, O, N> {
    const ROOMY: () = assert!(
        N >= 2 * <u128 as Lane>::ROOM,
        "a staging buffer must hold two escaped blocks"
    );

    pub fn new(out: &'o mut O) -> Self {
        let () = Self::ROOMY;
        Staged {
            buf: [0; N],
            len: 0,
            out,
        }
    }

    fn flush(&mut self) {
        if self.len > 0 {
            self.out.put(&self.buf[..self.len]);
            self.len = 0;
        }
    }

    /// Appends `bytes` with the five HTML-significant characters escaped,
    /// sixteen bytes at a time (eight for text shorter than sixteen): a
    /// block's specials are found all at once as a bit mask, the block is
    /// stored whole, and only a block with specials takes one more step per
    /// special. A tail is the last whole block (or word) shifted down to its
    /// start, tested the same way.
    pub fn put_html_escaped(&mut self, bytes: &[u8]) {
        // Without SSE2 a block's test is two word tests and more: words
        // throughout are faster there.
        const BLOCKS: bool = cfg!(all(target_arch = "x86_64", target_feature = "sse2"));
        if !BLOCKS || bytes.len() < 16 {
            return self.put_html_escaped_words(bytes);
        }
        let mut blocks = bytes.chunks_exact(16);
        for block in blocks.by_ref() {
            self.escape_lane(
                u128::from_le_bytes(block.try_into().unwrap_or_default()),
                16,
            );
        }
        let tail = blocks.remainder().len();
        if tail > 0 {
            let last16 = &bytes[bytes.len() - 16..];
            let block = u128::from_le_bytes(last16.try_into().unwrap_or_default());
            self.escape_lane(block >> (8 * (16 - tail)), tail);
        }
    }

    /// [`Staged::put_html_escaped`] of a short text, a word at a time.
    fn put_html_escaped_words(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            self.escape_lane(u64::from_le_bytes(word.try_into().unwrap_or_default()), 8);
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            // The last eight bytes shifted down to the tail's start (a copy to
            // a padded word stalled on the load after it), or the short text
            // gathered byte by byte; the zeros shifted in are not special.
            let word = match bytes.len().checked_sub(8) {
                Some(last) => {
                    let last8 = u64::from_le_bytes(bytes[last..].try_into().unwrap_or_default());
                    last8 >> (8 * (8 - tail.len()))
                }
                None => tail
                    .iter()
                    .rev()
                    .fold(0u64, |w, &b| (w << 8) | u64::from(b)),
            };
            self.escape_lane(word, tail.len());
        }
    }

    /// Escapes the first `n` bytes of `lane` (a word or a block of text,
    /// little-endian) into the buffer. The lane is stored whole first; at
    /// each special, its entity is stored over it and the rest of the lane
    /// again after the entity. Bytes stored past the output's end are
    /// overwritten by what follows.
    #[inline(always)]
    fn escape_lane<L: Lane>(&mut self, lane: L, n: usize) {
        if self.len + L::ROOM > N {
            self.flush();
        }
        let mut at = self.len;
        lane.store(&mut self.buf[at..]);
        let mut specials = lane.specials();
        let mut done = 0;
        while specials != 0 {
            let i = (specials.trailing_zeros() / L::MARK_STRIDE) as usize;
            specials &= specials - 1;
            at += i - done;
            // A table, not a match: which special comes next is not
            // predictable, and a mispredicted branch costs more than a load.
            let (entity, len) = ENTITIES[lane.low_bits_of_byte(i)];
            self.buf[at..at + 8].copy_from_slice(&entity);
            at += len as usize;
            done = i + 1;
            if done < L::BYTES {
                lane.shifted(done).store(&mut self.buf[at..]);
            }
        }
        self.len = at + n - done;
    }
}

/// Text escaped as one piece: a word (`u64`) or a block (`u128`) of bytes,
/// little-endian.
trait Lane: Copy {
    const BYTES: usize;
    /// The most one lane can store: every byte a six-byte entity, plus
    /// the whole-lane store after the last.
    const ROOM: usize = Self::BYTES * 6 + Self::BYTES;
    /// A special byte `i` sets one bit of `specials`, among bits
    /// `i * MARK_STRIDE .. (i + 1) * MARK_STRIDE`, and no other byte does.
    const MARK_STRIDE: u32;
    fn specials(self) -> u64;
    /// The low five bits of byte `i` (which entity, see `ENTITIES`).
    fn low_bits_of_byte(self, i: usize) -> usize;
    /// The lane moved down by `bytes` bytes (zeros shifted in).
    fn shifted(self, bytes: usize) -> Self;
    /// Stores the whole lane at the start of `out`.
    fn store(self, out: &mut [u8]);
}

impl Lane for u64 {
    const BYTES: usize = 8;
    // `html_specials` marks bit 7 of each special byte.
    const MARK_STRIDE: u32 = 8;
    fn specials(self) -> u64 {
        html_specials(self)
    }
    fn low_bits_of_byte(self, i: usize) -> usize {
        ((self >> (8 * i)) & 0x1F) as usize
    }
    fn shifted(self, bytes: usize) -> Self {
        self >> (8 * bytes)
    }
    fn store(self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.to_le_bytes());
    }
}

impl Lane for u128 {
    const BYTES: usize = 16;
    const MARK_STRIDE: u32 = 1;
    fn specials(self) -> u64 {
        u64::from(html_specials_16(self))
    }
    fn low_bits_of_byte(self, i: usize) -> usize {
        ((self >> (8 * i)) & 0x1F) as usize
    }
    fn shifted(self, bytes: usize) -> Self {
        self >> (8 * bytes)
    }
    fn store(self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.to_le_bytes());
    }
}

impl<O: Out + ?Sized, const N: usize> Out for Staged<'_, O, N> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        if bytes.len() > N - self.len {
            self.flush();
            if bytes.len() > N / 2 {
                self.out.put(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn reserve(&mut self, additional: usize) {
        self.out.reserve(self.len + additional);
    }
}

impl<O: Out + ?Sized, const N: usize> Drop for Staged<'_, O, N> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The five specials' entities, padded to eight bytes, and their lengths,
/// by the low five bits of the special (distinct for the five).
const ENTITIES: [([u8; 8], u8); 32] = {
    let mut t = [([0; 8], 0); 32];
    t[(b'&' & 0x1F) as usize] = (*b"&amp;\0\0\0", 5);
    t[(b'<' & 0x1F) as usize] = (*b"&lt;\0\0\0\0", 4);
    t[(b'>' & 0x1F) as usize] = (*b"&gt;\0\0\0\0", 4);
    t[(b'"' & 0x1F) as usize] = (*b"&quot;\0\0", 6);
    t[(b'\'' & 0x1F) as usize] = (*b"&#39;\0\0\0", 5);
    t
};

/// 0x80 in each byte of `word` that is one of `& < > " '`, 0 elsewhere.
/// `&` (0x26) and `'` (0x27) are one zero-byte test with bit 0 set, `<`
/// (0x3C) and `>` (0x3E) one with bit 1 set. Each test is the exact one (no
/// borrow across bytes), so each mark is a real special; the three share
/// their last steps.
fn html_specials(word: u64) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const SEVEN: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // The high bit set in each byte of `x` that is not zero.
    let nonzero = |x: u64| ((x & SEVEN) + SEVEN) | x;
    let amp_apos = nonzero((word | LOW) ^ (LOW * 0x27));
    let angles = nonzero((word | (LOW << 1)) ^ (LOW * 0x3E));
    let quote = nonzero(word ^ (LOW * 0x22));
    !(amp_apos & angles & quote) & !SEVEN
}

/// Bit `i` set for each byte `i` of `block` (little-endian) that is one of
/// `& < > " '`: five byte compares of all sixteen at once (SSE2, which every
/// x86-64 has).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
#[allow(unsafe_code, reason = "SSE2 intrinsics (no memory access)")]
fn html_specials_16(block: u128) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_set_epi64x,
    };
    // SAFETY: SSE2 is enabled for this build (the cfg above), and these
    // intrinsics touch no memory.
    unsafe {
        let v = _mm_set_epi64x((block >> 64) as u64 as i64, block as u64 as i64);
        let is = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
        let any = _mm_or_si128(
            _mm_or_si128(is(b'&'), is(b'<')),
            _mm_or_si128(_mm_or_si128(is(b'>'), is(b'"')), is(b'\'')),
        );
        _mm_movemask_epi8(any) as u32
    }
}

/// [`html_specials_16`] elsewhere.
#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn html_specials_16(block: u128) -> u32 {
    html_specials_16_by_words(block)
}

/// [`html_specials_16`] from the word test.
#[cfg(any(test, not(all(target_arch = "x86_64", target_feature = "sse2"))))]
fn html_specials_16_by_words(block: u128) -> u32 {
    let half = |w: u64| {
        let marks = html_specials(w);
        (0..8).fold(0u32, |m, i| m | (((marks >> (8 * i + 7)) & 1) as u32) << i)
    };
    half(block as u64) | half((block >> 64) as u64) << 8
}

/// Appends `s` as a JSON string, quotes included.
pub fn json_string<O: Out + ?Sized>(s: &str, out: &mut O) {
    json_string_bytes(s.as_bytes(), out)
}

/// [`json_string`] of text bytes. Runs that need no escape are found with
/// one table lookup per byte and appended whole.
pub fn json_string_bytes<O: Out + ?Sized>(bytes: &[u8], out: &mut O) {
    out.put_byte(b'"');
    let mut start = 0;
    while let Some(run) = bytes[start..]
        .iter()
        .position(|&b| JSON_ESCAPED[usize::from(b)])
    {
        let i = start + run;
        out.put(&bytes[start..i]);
        put_json_escape(bytes[i], out);
        start = i + 1;
    }
    out.put(&bytes[start..]);
    out.put_byte(b'"');
}

/// The bytes a JSON string cannot hold as they are: control characters,
/// `"` and `\`, and `<`, so the JSON is safe inside a <script> element.
const JSON_ESCAPED: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = b < 0x20 || b == b'"' as usize || b == b'\\' as usize || b == b'<' as usize;
        b += 1;
    }
    t
};

fn put_json_escape<O: Out + ?Sized>(b: u8, out: &mut O) {
    let esc: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        b'<' => b"\\u003c",
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.put(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
            return;
        }
    };
    out.put(esc);
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

    /// Escaping byte by byte, the obvious way.
    fn html_escape_reference(bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            match b {
                b'&' => out.extend_from_slice(b"&amp;"),
                b'<' => out.extend_from_slice(b"&lt;"),
                b'>' => out.extend_from_slice(b"&gt;"),
                b'"' => out.extend_from_slice(b"&quot;"),
                b'\'' => out.extend_from_slice(b"&#39;"),
                _ => out.push(b),
            }
        }
    }

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

    /// The widest words (every byte a six-byte `&quot;`, seven of them
    /// and a plain byte, or eight `&#39;`) at every offset of the smallest
    /// staging buffer: its room check must leave space for the most a word
    /// can store.
    #[test]
    fn the_widest_words_fit_at_every_offset() {
        for word in [
            &b"\"\"\"\"\"\"\"\""[..],
            b"\"\"\"\"\"\"\"a",
            b"''''''''",
            b"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"",
            b"\"\"\"\"\"\"\"\"\"\"\"\"\"\"\"a",
            b"''''''''''''''''''''",
        ] {
            for offset in 0..600 {
                let prefix = vec![b'x'; offset];
                let mut plain = prefix.clone();
                html_escape_reference(word, &mut plain);
                html_escape_reference(word, &mut plain);
                let mut out = Vec::new();
                {
                    let mut staged = Staged::<_, 224>::new(&mut out);
                    staged.put(&prefix);
                    staged.put_html_escaped(word);
                    staged.put_html_escaped(word);
                }
                assert_eq!(out, plain, "offset {offset}");
            }
        }
    }

    /// The marks a byte-by-byte test would make.
    fn marks(word: [u8; 8]) -> u64 {
        let mut m = 0;
        for (i, &b) in word.iter().enumerate() {
            if HTML_SPECIAL[usize::from(b)] {
                m |= 0x80 << (8 * i);
            }
        }
        m
    }

    #[test]
    fn the_word_test_marks_each_special_in_each_position() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                for filler in [b'a', b'&', 0x25, 0x3D, 0x3F, 0xFF, 0x00] {
                    let mut word = [filler; 8];
                    word[pos] = b;
                    assert_eq!(
                        html_specials(u64::from_le_bytes(word)),
                        marks(word),
                        "{word:?}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_word_test_is_exact(word in proptest::num::u64::ANY) {
            proptest::prop_assert_eq!(html_specials(word), marks(word.to_le_bytes()));
        }

        #[test]
        fn the_block_test_is_exact(block in proptest::collection::vec(
            proptest::sample::select(b"ab&<>\"'\x00\x80\xA6\xBC\xFF%=".to_vec()), 16)) {
            let bytes: [u8; 16] = block.try_into().unwrap();
            let want = bytes.iter().enumerate().fold(0u32, |m, (i, b)| {
                m | u32::from(b"&<>\"'".contains(b)) << i
            });
            let block = u128::from_le_bytes(bytes);
            proptest::prop_assert_eq!(html_specials_16(block), want);
            proptest::prop_assert_eq!(html_specials_16_by_words(block), want);
        }

        #[test]
        fn html_escape_bytes_replaces_exactly_the_five(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut plain = Vec::new();
            html_escape_reference(&bytes, &mut plain);
            let mut out = Vec::new();
            html_escape_bytes(&bytes, &mut out);
            proptest::prop_assert_eq!(out, plain);
        }

        /// Through the smallest staging buffer, with plain pieces between
        /// escaped ones, so that words land at every offset and the
        /// buffer fills in the middle of a value and of a word's specials.
        #[test]
        fn staged_output_is_the_plain_one_across_flushes(
            pieces in proptest::collection::vec(
                (proptest::bool::ANY, proptest::collection::vec(
                    proptest::sample::select(b"ab&<>\"'\xC3\xA9 ".to_vec()), 0..300)),
                0..12),
        ) {
            let mut plain = Vec::new();
            for (escaped, bytes) in &pieces {
                if *escaped {
                    html_escape_reference(bytes, &mut plain);
                } else {
                    plain.extend_from_slice(bytes);
                }
            }
            let mut out = Vec::new();
            {
                let mut staged = Staged::<_, 224>::new(&mut out);
                for (escaped, bytes) in &pieces {
                    if *escaped {
                        staged.put_html_escaped(bytes);
                    } else {
                        staged.put(bytes);
                    }
                }
            }
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

    proptest::proptest! {
        /// The table-driven escape is the byte-by-byte definition.
        #[test]
        fn json_escape_is_the_byte_by_byte_one(s in "[a-z\"\\\\<>\n\r\t\u{0}-\u{1f}\u{7f} éあ]{0,40}") {
            let mut want = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => want.push_str("\\\""),
                    '\\' => want.push_str("\\\\"),
                    '\n' => want.push_str("\\n"),
                    '\r' => want.push_str("\\r"),
                    '\t' => want.push_str("\\t"),
                    '<' => want.push_str("\\u003c"),
                    c if (c as u32) < 0x20 => want.push_str(&format!("\\u{:04x}", c as u32)),
                    c => want.push(c),
                }
            }
            want.push('"');
            proptest::prop_assert_eq!(run(|o| json_string(&s, o)), want);
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

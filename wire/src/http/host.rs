//! The Host field's grammar: RFC 9112 section 3.2 says a server must answer
//! 400 to a Host value that is not a valid `uri-host [ ":" port ]`, with
//! `uri-host` as RFC 3986 section 3.2.2 defines it. An empty value is allowed
//! (for a target without an authority).

use std::net::Ipv6Addr;

/// Whether `value` (already stripped of surrounding whitespace) is a valid
/// Host field value.
pub fn is_valid_host(value: &[u8]) -> bool {
    // Almost every Host is a plain name or IPv4 address, maybe with a port:
    // eight bytes per step while they are lower-case letters, digits, dots
    // and dashes, then one table lookup per byte up to the colon. The rest is
    // out of line.
    let mut plain = 0;
    for chunk in value.chunks_exact(8) {
        if !common_name_bytes(u64::from_le_bytes(chunk.try_into().unwrap_or_default())) {
            break;
        }
        plain += 8;
    }
    match value[plain..]
        .iter()
        .position(|&b| !PLAIN_REG_NAME[usize::from(b)])
    {
        None => true,
        Some(stop) => is_valid_after_plain(value, plain + stop),
    }
}

/// Whether all eight bytes of `word` are `a`-`z`, `0`-`9`, `.` or `-` (a
/// subset of the plain reg-name bytes). Per byte, for bytes below 0x80:
/// `(b | 0x80) - lo` keeps its top bit iff `b >= lo`, `(hi | 0x80) - b` iff
/// `b <= hi`, and neither borrows from the next byte.
fn common_name_bytes(word: u64) -> bool {
    const TOP: u64 = 0x8080_8080_8080_8080;
    const fn each(b: u8) -> u64 {
        0x0101_0101_0101_0101 * b as u64
    }
    let within = |lo: u8, hi: u8| ((word | TOP) - each(lo)) & ((each(hi) | TOP) - word) & TOP;
    word & TOP == 0 && (within(b'a', b'z') | within(b'0', b'9') | within(b'-', b'.')) == TOP
}

/// `value[stop]` is the first byte outside a plain reg-name.
#[inline(never)]
fn is_valid_after_plain(value: &[u8], stop: usize) -> bool {
    if value[stop] == b':' {
        let port = &value[stop + 1..];
        if port.len() <= 5 && port.iter().all(u8::is_ascii_digit) {
            return parse_port(port) <= 65535;
        }
    }
    matches_grammar(value)
}

/// The full grammar, for what the fast path above does not settle.
fn matches_grammar(value: &[u8]) -> bool {
    let (host, port) = split_port(value);
    let port_ok = match port {
        None => true,
        // An empty port is allowed by the grammar (`port = *DIGIT`).
        Some(p) => p.len() <= 5 && p.iter().all(u8::is_ascii_digit) && parse_port(p) <= 65535,
    };
    port_ok
        && match host.first() {
            Some(b'[') => is_ip_literal(host),
            // IPv4address is a subset of reg-name: one check covers both.
            // Almost every host is plain bytes only: one table lookup each.
            _ => {
                host.iter().all(|&b| PLAIN_REG_NAME[usize::from(b)])
                    || host
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| is_reg_name_byte(host, i, b))
            }
        }
}

/// Splits `host[:port]`; an IP literal's colons are inside its brackets.
fn split_port(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let search_from = if value.first() == Some(&b'[') {
        match memchr::memchr(b']', value) {
            Some(end) => end + 1,
            None => return (value, None),
        }
    } else {
        0
    };
    match memchr::memchr(b':', &value[search_from..]) {
        Some(i) => (
            &value[..search_from + i],
            Some(&value[search_from + i + 1..]),
        ),
        None => (value, None),
    }
}

fn parse_port(digits: &[u8]) -> u32 {
    digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
}

/// The bytes a reg-name may hold as they are (unreserved and sub-delims;
/// not `%`, whose escapes the full check handles).
const PLAIN_REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] =
            c.is_ascii_alphanumeric() || is_sub_delim(c) || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    t
};

/// reg-name = *( unreserved / pct-encoded / sub-delims )
fn is_reg_name_byte(host: &[u8], i: usize, b: u8) -> bool {
    is_unreserved(b)
        || is_sub_delim(b)
        || (b == b'%'
            && host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        // The two hex digits after a '%': checked with the '%' itself.
        || (b.is_ascii_hexdigit() && pct_digit(host, i))
}

/// Whether byte `i` is one of the two digits of a `%XX` escape.
fn pct_digit(host: &[u8], i: usize) -> bool {
    (i >= 1 && host[i - 1] == b'%') || (i >= 2 && host[i - 2] == b'%')
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// IP-literal = "[" ( IPv6address / IPvFuture ) "]"
fn is_ip_literal(host: &[u8]) -> bool {
    let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) else {
        return false;
    };
    if let [b'v' | b'V', rest @ ..] = inner {
        // IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )
        let Some(dot) = memchr::memchr(b'.', rest) else {
            return false;
        };
        let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
        return !version.is_empty()
            && version.iter().all(u8::is_ascii_hexdigit)
            && !tail.is_empty()
            && tail
                .iter()
                .all(|&b| is_unreserved(b) || is_sub_delim(b) || b == b':');
    }
    std::str::from_utf8(inner).is_ok_and(|s| s.parse::<Ipv6Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::{is_valid_host, matches_grammar};
    use proptest::prelude::*;

    proptest! {
        /// The eight-byte test is the byte-by-byte one: seven bytes from the
        /// set and one more, often just outside a range of it.
        #[test]
        fn the_word_test_is_exact(
            base in prop::array::uniform8(prop::sample::select(
                b"abmyz0189.-".to_vec())),
            at in 0..8usize,
            odd in prop::sample::select(
                b"az09.-`{/:,+_AZ@[\x00\x7f\x80\xae\xe1\xfa\xff".to_vec()),
        ) {
            let mut bytes = base;
            bytes[at] = odd;
            let want = bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
            prop_assert_eq!(super::common_name_bytes(u64::from_le_bytes(bytes)), want);
        }

        /// The fast path decides exactly as the full grammar does.
        #[test]
        fn fast_path_agrees_with_the_grammar(
            value in proptest::collection::vec(
                prop::sample::select(b"a0.-:[]%9fv~!@/ \x80`{z,AZ_".to_vec()), 0..24)
        ) {
            prop_assert_eq!(is_valid_host(&value), matches_grammar(&value));
        }
    }

    #[test]
    fn accepts_what_rfc_3986_allows() {
        for ok in [
            "",
            "example.com",
            "example.com:8080",
            "example.com:",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]",
            "[v1.fe80::a+en1]",
            "a-b_c~d.e",
            "xn--bcher-kva.example",
            "caf%C3%A9.example",
            "a!$&'()*+,;=",
            "localhost:0",
        ] {
            assert!(is_valid_host(ok.as_bytes()), "{ok:?} should be valid");
        }
    }

    #[test]
    fn refuses_the_rest() {
        for bad in [
            "exa mple",
            "a/b",
            "x@y",
            "[::1",
            "::1",
            "h:99999999",
            "h:65536",
            "h:8o",
            "h:-1",
            "h:1:2",
            "a\"b",
            "a<b",
            "%zz",
            "%4",
            "a%",
            "[::g]",
            "[]",
            "[v1.]",
            "[v.x]",
            "[::1]x",
            "[::1]:x",
            "a?b",
            "a#b",
            "a\\b",
            "ca\u{fe}",
        ] {
            assert!(!is_valid_host(bad.as_bytes()), "{bad:?} should be refused");
        }
    }
}

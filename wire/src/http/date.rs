//! The IMF-fixdate used in the `Date` header ("Sun, 06 Nov 1994 08:49:37 GMT").

use std::time::{SystemTime, UNIX_EPOCH};

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the years a 4-digit field holds.
const MIN_SECS: i64 = -62_167_219_200;
const MAX_SECS: i64 = 253_402_300_799;

const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// An IMF-fixdate, always 29 ASCII bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpDate([u8; 29]);

impl HttpDate {
    /// Formats `t` (seconds resolution, UTC). Pure arithmetic: no locale, no tz
    /// database, no allocation.
    pub fn from_system_time(t: SystemTime) -> Self {
        let secs = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            // Before 1970 (a badly set clock): round down to the whole second.
            Err(e) => {
                let d = e.duration();
                let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                (-whole).saturating_sub(i64::from(d.subsec_nanos() > 0))
            }
        };
        Self::from_unix_secs(secs)
    }

    /// Formats seconds since the Unix epoch (UTC), clamped to years 0000..=9999.
    pub fn from_unix_secs(secs: i64) -> Self {
        let secs = secs.clamp(MIN_SECS, MAX_SECS);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let weekday = (days + 4).rem_euclid(7) as usize;

        let mut out = *b"Sun, 00 Jan 0000 00:00:00 GMT";
        out[0..3].copy_from_slice(DAYS[weekday]);
        put2(&mut out[5..7], day as u32);
        out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
        put2(&mut out[12..14], (year / 100) as u32);
        put2(&mut out[14..16], (year % 100) as u32);
        put2(&mut out[17..19], (sod / 3600) as u32);
        put2(&mut out[20..22], (sod / 60 % 60) as u32);
        put2(&mut out[23..25], (sod % 60) as u32);
        HttpDate(out)
    }

    /// The date as text (always ASCII).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
    pub fn as_bytes(&self) -> &[u8; 29] {
        &self.0
    }
}

fn put2(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10 % 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// (year, month 1..=12, day 1..=31) of a day count since 1970-01-01, in the
/// proleptic Gregorian calendar (Howard Hinnant's civil_from_days). Also
/// used by the application's RFC 3339 timestamps: one copy of the calendar.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fmt(secs: i64) -> String {
        HttpDate::from_unix_secs(secs).as_str().to_owned()
    }

    #[test]
    fn known_timestamps() {
        assert_eq!(fmt(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(fmt(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(fmt(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(fmt(1_709_164_800 + 86_399), "Thu, 29 Feb 2024 23:59:59 GMT");
        assert_eq!(fmt(1_709_251_200), "Fri, 01 Mar 2024 00:00:00 GMT");
        assert_eq!(fmt(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT"); // 2100 is no leap year
        assert_eq!(fmt(1_735_689_599), "Tue, 31 Dec 2024 23:59:59 GMT");
        assert_eq!(fmt(2_147_483_647), "Tue, 19 Jan 2038 03:14:07 GMT");
        assert_eq!(fmt(-1), "Wed, 31 Dec 1969 23:59:59 GMT");
        assert_eq!(fmt(i64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(fmt(i64::MIN), "Sat, 01 Jan 0000 00:00:00 GMT");
    }

    #[test]
    fn from_system_time() {
        let t = UNIX_EPOCH + Duration::from_millis(784_111_777_999);
        assert_eq!(
            HttpDate::from_system_time(t).as_bytes(),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        let before = UNIX_EPOCH - Duration::from_millis(500);
        assert_eq!(
            HttpDate::from_system_time(before).as_str(),
            "Wed, 31 Dec 1969 23:59:59 GMT"
        );
        assert_eq!(
            HttpDate::from_system_time(SystemTime::now())
                .as_bytes()
                .len(),
            29
        );
    }

    #[test]
    fn every_day_matches_a_naive_calendar() {
        // Walk day by day from 1900 to 2200 with a plain month table.
        let mut days = -25_567i64; // 1900-01-01, a Monday
        let mut weekday = 1;
        for year in 1900..2200i64 {
            let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
            for month in 1..=12i64 {
                let len = match month {
                    2 if leap => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for day in 1..=len {
                    assert_eq!(civil_from_days(days), (year, month, day));
                    let s = fmt(days * 86_400 + 3_723);
                    assert_eq!(&s[..3], std::str::from_utf8(DAYS[weekday]).unwrap());
                    assert_eq!(&s[5..7], format!("{day:02}"));
                    assert_eq!(&s[12..16], format!("{year:04}"));
                    assert_eq!(&s[17..], "01:02:03 GMT");
                    days += 1;
                    weekday = (weekday + 1) % 7;
                }
            }
        }
    }
}

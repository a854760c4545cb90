//! Result columns and rows, with typed getters that check each column's type
//! OID and format instead of trusting the caller's idea of the query.

use std::str;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, RowDescriptionBody};
use postgres_protocol::types as pgtypes;

use super::error::PgError;
use super::types::{self, BINARY_FORMAT, PG_EPOCH_UNIX_MICROS, TEXT_FORMAT};

/// One column of a RowDescription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// [`TEXT_FORMAT`] or [`BINARY_FORMAT`]. In a RowDescription answering a
    /// Describe of a *statement* this is always 0: formats are chosen at Bind.
    pub format: i16,
}

/// The columns of a RowDescription.
pub fn columns(body: &RowDescriptionBody) -> Result<Vec<Column>, PgError> {
    body.fields()
        .map(|f| {
            Ok(Column {
                name: f.name().to_owned(),
                type_oid: f.type_oid(),
                format: f.format(),
            })
        })
        .collect()
        .map_err(|e| PgError::protocol("malformed RowDescription", e))
}

/// One DataRow, borrowed. Construction validates the framing of every value,
/// so the accessors never fail on it; [`Row::raw`] walks the length prefixes
/// (no allocation per row; [`Row::iter`] for sequential access).
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    /// The values, each an i32 length (-1 for NULL) and that many bytes.
    values: &'a [u8],
    len: usize,
}

impl<'a> Row<'a> {
    /// A row from a DataRow message body (starting with the i16 value count).
    pub fn new(data: &'a [u8]) -> Result<Row<'a>, PgError> {
        let (count, values) = match data {
            [a, b, rest @ ..] => (i16::from_be_bytes([*a, *b]), rest),
            _ => return Err(malformed("missing value count")),
        };
        let count = usize::try_from(count).map_err(|_| malformed("negative value count"))?;
        Row::with_count(count, values)
    }

    /// A row from a DataRow body that [`Row::new`] already accepted (the
    /// pipeline checks each row as it arrives): its framing is not walked
    /// again. Were it malformed after all, the accessors would find NULLs
    /// and missing values, never read out of bounds.
    pub(crate) fn checked_before(data: &'a [u8]) -> Row<'a> {
        let (count, values) = match data {
            [a, b, rest @ ..] => (i16::from_be_bytes([*a, *b]), rest),
            _ => (0, data),
        };
        Row {
            values,
            len: usize::try_from(count).unwrap_or(0),
        }
    }

    /// A row from a decoded DataRow.
    pub fn from_body(body: &'a DataRowBody) -> Result<Row<'a>, PgError> {
        // DataRowBody keeps the count apart from the values; the ranges
        // iterator is the only way to it.
        Row::with_count(body.ranges().size_hint().0, body.buffer())
    }

    fn with_count(len: usize, values: &'a [u8]) -> Result<Row<'a>, PgError> {
        let mut rest = values;
        for _ in 0..len {
            split_value(&mut rest)?;
        }
        if !rest.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(Row { values, len })
    }

    /// The number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Value `i` as sent (`None` for NULL, or if `i` is out of range).
    #[inline]
    pub fn raw(&self, i: usize) -> Option<&'a [u8]> {
        if i >= self.len {
            return None;
        }
        // Walked directly, not through `iter`: a page reads one value per
        // row, and this is most of what that costs.
        let mut rest = self.values;
        for _ in 0..i {
            split_value(&mut rest).ok()?;
        }
        split_value(&mut rest).ok().flatten()
    }

    /// The values in order, `None` for NULL.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut rest = self.values;
        // Validated in construction, so split_value cannot fail here.
        (0..self.len).map(move |_| split_value(&mut rest).ok().flatten())
    }

    /// Looks up value `i` and its column, refusing a mismatch between the
    /// row and the description.
    fn value<'c>(
        &self,
        cols: &'c [Column],
        i: usize,
    ) -> Result<(&'c Column, Option<&'a [u8]>), PgError> {
        self.check_width(cols)?;
        let col = cols.get(i).ok_or_else(|| {
            PgError::Protocol(format!("column {i} out of range (row has {})", self.len))
        })?;
        Ok((col, self.raw(i)))
    }

    /// text, varchar, bpchar (with its padding), name, unknown; text or
    /// binary format, which are the same bytes.
    pub fn get_str(&self, cols: &[Column], i: usize) -> Result<Option<&'a str>, PgError> {
        self.get_text(cols, i)?
            .map(|v| str::from_utf8(v).map_err(|_| bad_value(i, "invalid UTF-8")))
            .transpose()
    }

    /// A text value's bytes, as [`Row::get_str`] types them but without
    /// checking that they are UTF-8: for output that copies them through
    /// (escaping works on bytes). The server sends UTF-8, as the startup's
    /// `client_encoding` asks; checking it again per value was a tenth of
    /// the work of rendering a page.
    pub fn get_text(&self, cols: &[Column], i: usize) -> Result<Option<&'a [u8]>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(i, col, TEXT_TYPES, "text", true)?;
        Ok(v)
    }

    /// Value `i` of a text column already checked with
    /// [`check_text_column`] against these columns: NULL refused, the
    /// column's type not checked again.
    pub(crate) fn req_text_of_checked(
        &self,
        cols: &[Column],
        i: usize,
    ) -> Result<&'a [u8], PgError> {
        self.check_width(cols)?;
        self.raw(i).ok_or(PgError::Null { column: i })
    }

    /// Refuses a row whose value count differs from its description's.
    fn check_width(&self, cols: &[Column]) -> Result<(), PgError> {
        if cols.len() == self.len {
            return Ok(());
        }
        Err(PgError::Protocol(format!(
            "row has {} values but the description {} columns",
            self.len,
            cols.len()
        )))
    }

    /// int2.
    pub fn get_i16(&self, cols: &[Column], i: usize) -> Result<Option<i16>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(i, col, &[types::INT2], "int2", true)?;
        v.map(|v| int(i, col, v)).transpose()
    }

    /// int4, or int2 widened.
    pub fn get_i32(&self, cols: &[Column], i: usize) -> Result<Option<i32>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(i, col, &[types::INT2, types::INT4], "int4", true)?;
        v.map(|v| int(i, col, v)).transpose()
    }

    /// int8, or int2/int4 widened.
    pub fn get_i64(&self, cols: &[Column], i: usize) -> Result<Option<i64>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(
            i,
            col,
            &[types::INT2, types::INT4, types::INT8],
            "int8",
            true,
        )?;
        v.map(|v| int(i, col, v)).transpose()
    }

    /// bool (text format `t`/`f`).
    pub fn get_bool(&self, cols: &[Column], i: usize) -> Result<Option<bool>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(i, col, &[types::BOOL], "bool", true)?;
        v.map(|v| match (col.format, v) {
            (BINARY_FORMAT, v) => {
                pgtypes::bool_from_sql(v).map_err(|e| bad_value(i, &e.to_string()))
            }
            (_, b"t") => Ok(true),
            (_, b"f") => Ok(false),
            _ => Err(bad_value(i, "not t or f")),
        })
        .transpose()
    }

    /// float8, or float4 widened. Text format accepts `NaN` and `±Infinity`.
    pub fn get_f64(&self, cols: &[Column], i: usize) -> Result<Option<f64>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(i, col, &[types::FLOAT4, types::FLOAT8], "float8", true)?;
        v.map(|v| {
            if col.format == TEXT_FORMAT {
                return text(i, v)?
                    .parse::<f64>()
                    .map_err(|e| bad_value(i, &e.to_string()));
            }
            let r = if col.type_oid == types::FLOAT4 {
                pgtypes::float4_from_sql(v).map(f64::from)
            } else {
                pgtypes::float8_from_sql(v)
            };
            r.map_err(|e| bad_value(i, &e.to_string()))
        })
        .transpose()
    }

    /// timestamptz in binary format, as microseconds since the Unix epoch.
    /// `infinity`/`-infinity` come out as `i64::MAX`/`i64::MIN`. The text
    /// format depends on the session's DateStyle and TimeZone, so it is
    /// refused with a `Type` error.
    pub fn get_timestamptz(&self, cols: &[Column], i: usize) -> Result<Option<i64>, PgError> {
        let (col, v) = self.value(cols, i)?;
        check(
            i,
            col,
            &[types::TIMESTAMPTZ],
            "timestamptz (binary format)",
            false,
        )?;
        v.map(|v| {
            let pg = pgtypes::timestamp_from_sql(v).map_err(|e| bad_value(i, &e.to_string()))?;
            Ok(match pg {
                i64::MAX | i64::MIN => pg,
                // Saturates only far outside PostgreSQL's range (4713 BC to 294276 AD).
                _ => pg.saturating_add(PG_EPOCH_UNIX_MICROS),
            })
        })
        .transpose()
    }

    /// Like [`Row::get_str`], with NULL an error.
    pub fn req_str(&self, cols: &[Column], i: usize) -> Result<&'a str, PgError> {
        self.get_str(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_text(&self, cols: &[Column], i: usize) -> Result<&'a [u8], PgError> {
        self.get_text(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_i16(&self, cols: &[Column], i: usize) -> Result<i16, PgError> {
        self.get_i16(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_i32(&self, cols: &[Column], i: usize) -> Result<i32, PgError> {
        self.get_i32(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_i64(&self, cols: &[Column], i: usize) -> Result<i64, PgError> {
        self.get_i64(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_bool(&self, cols: &[Column], i: usize) -> Result<bool, PgError> {
        self.get_bool(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_f64(&self, cols: &[Column], i: usize) -> Result<f64, PgError> {
        self.get_f64(cols, i)?.ok_or(PgError::Null { column: i })
    }

    pub fn req_timestamptz(&self, cols: &[Column], i: usize) -> Result<i64, PgError> {
        self.get_timestamptz(cols, i)?
            .ok_or(PgError::Null { column: i })
    }
}

/// Takes one length-prefixed value off the front of `rest`.
fn split_value<'a>(rest: &mut &'a [u8]) -> Result<Option<&'a [u8]>, PgError> {
    let [a, b, c, d, tail @ ..] = *rest else {
        return Err(malformed("truncated value length"));
    };
    let n = i32::from_be_bytes([*a, *b, *c, *d]);
    if n < 0 {
        // Only -1 is NULL; other negatives are tolerated as NULL like libpq does.
        *rest = tail;
        return Ok(None);
    }
    let n = n as usize;
    if tail.len() < n {
        return Err(malformed("value longer than the message"));
    }
    let (v, tail) = tail.split_at(n);
    *rest = tail;
    Ok(Some(v))
}

/// Whether column `i` is one [`Row::get_text`] reads.
pub(crate) fn check_text_column(cols: &[Column], i: usize) -> Result<(), PgError> {
    let col = cols.get(i).ok_or_else(|| {
        PgError::Protocol(format!("column {i} out of range ({} columns)", cols.len()))
    })?;
    check(i, col, TEXT_TYPES, "text", true)
}

const TEXT_TYPES: &[u32] = &[
    types::TEXT,
    types::VARCHAR,
    types::BPCHAR,
    types::NAME,
    types::UNKNOWN,
];

fn check(
    i: usize,
    col: &Column,
    oids: &[u32],
    expected: &'static str,
    text_ok: bool,
) -> Result<(), PgError> {
    let format_ok = col.format == BINARY_FORMAT || (text_ok && col.format == TEXT_FORMAT);
    if oids.contains(&col.type_oid) && format_ok {
        Ok(())
    } else {
        Err(PgError::Type {
            column: i,
            expected,
            found_oid: col.type_oid,
        })
    }
}

/// An integer column of any width, binary or text.
fn int<T: TryFrom<i64> + str::FromStr>(i: usize, col: &Column, v: &[u8]) -> Result<T, PgError> {
    if col.format == TEXT_FORMAT {
        return text(i, v)?
            .parse()
            .map_err(|_| bad_value(i, "not an integer"));
    }
    let wide = match col.type_oid {
        types::INT2 => pgtypes::int2_from_sql(v).map(i64::from),
        types::INT4 => pgtypes::int4_from_sql(v).map(i64::from),
        _ => pgtypes::int8_from_sql(v),
    }
    .map_err(|e| bad_value(i, &e.to_string()))?;
    // `check` admitted only types no wider than T.
    T::try_from(wide).map_err(|_| bad_value(i, "out of range"))
}

fn text(i: usize, v: &[u8]) -> Result<&str, PgError> {
    str::from_utf8(v).map_err(|_| bad_value(i, "invalid UTF-8"))
}

fn bad_value(i: usize, why: &str) -> PgError {
    PgError::Protocol(format!("column {i}: malformed value: {why}"))
}

fn malformed(why: &str) -> PgError {
    PgError::Protocol(format!("malformed DataRow: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::backend::{next_message, Message};
    use bytes::{BufMut, BytesMut};

    fn data_row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = (values.len() as i16).to_be_bytes().to_vec();
        for x in values {
            match x {
                Some(x) => {
                    v.extend_from_slice(&(x.len() as i32).to_be_bytes());
                    v.extend_from_slice(x);
                }
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        v
    }

    fn col(type_oid: u32, format: i16) -> Column {
        Column {
            name: "c".into(),
            type_oid,
            format,
        }
    }

    #[test]
    fn framing() {
        let body = data_row(&[Some(b"ab"), None, Some(b"")]);
        let row = Row::new(&body).unwrap();
        assert_eq!(row.len(), 3);
        assert_eq!(row.raw(0), Some(&b"ab"[..]));
        assert_eq!(row.raw(1), None);
        assert_eq!(row.raw(2), Some(&b""[..]));
        assert_eq!(row.raw(3), None);
        assert_eq!(
            row.iter().collect::<Vec<_>>(),
            vec![Some(&b"ab"[..]), None, Some(&b""[..])]
        );

        // Same row through the message decoder.
        let mut buf = BytesMut::new();
        buf.put_u8(b'D');
        buf.put_i32(body.len() as i32 + 4);
        buf.put_slice(&body);
        let Some(Message::DataRow(d)) = next_message(&mut buf, 1000).unwrap() else {
            panic!()
        };
        let row = Row::from_body(&d).unwrap();
        assert_eq!(
            row.iter().collect::<Vec<_>>(),
            vec![Some(&b"ab"[..]), None, Some(&b""[..])]
        );

        assert!(Row::new(&[]).is_err());
        assert!(Row::new(&[0xff, 0xff]).is_err(), "negative count");
        assert!(Row::new(&body[..body.len() - 1]).is_err(), "truncated");
        let mut long = body.clone();
        long.push(0);
        assert!(Row::new(&long).is_err(), "trailing bytes");
        let mut short = data_row(&[Some(b"abc")]);
        short.pop();
        assert!(Row::new(&short).is_err());
        assert!(Row::new(&[0, 0]).is_ok_and(|r| r.is_empty()));
    }

    #[test]
    fn typed_binary() {
        let cols = [
            col(types::INT2, 1),
            col(types::INT4, 1),
            col(types::INT8, 1),
            col(types::BOOL, 1),
            col(types::FLOAT8, 1),
            col(types::TEXT, 1),
            col(types::TIMESTAMPTZ, 1),
            col(types::FLOAT4, 1),
        ];
        let body = data_row(&[
            Some(&(-2i16).to_be_bytes()),
            Some(&70000i32.to_be_bytes()),
            Some(&i64::MIN.to_be_bytes()),
            Some(&[1]),
            Some(&0.5f64.to_be_bytes()),
            Some("é".as_bytes()),
            Some(&1i64.to_be_bytes()),
            Some(&1.25f32.to_be_bytes()),
        ]);
        let row = Row::new(&body).unwrap();
        assert_eq!(row.req_i16(&cols, 0), Ok(-2));
        assert_eq!(row.req_i32(&cols, 0), Ok(-2), "int2 widens");
        assert_eq!(row.req_i64(&cols, 0), Ok(-2));
        assert_eq!(row.req_i32(&cols, 1), Ok(70000));
        assert_eq!(row.req_i64(&cols, 1), Ok(70000));
        assert_eq!(row.req_i64(&cols, 2), Ok(i64::MIN));
        assert_eq!(row.req_bool(&cols, 3), Ok(true));
        assert_eq!(row.req_f64(&cols, 4), Ok(0.5));
        assert_eq!(row.req_str(&cols, 5), Ok("é"));
        assert_eq!(row.req_timestamptz(&cols, 6), Ok(PG_EPOCH_UNIX_MICROS + 1));
        assert_eq!(row.req_f64(&cols, 7), Ok(1.25));

        // Narrowing and cross-type reads are refused.
        assert_eq!(
            row.get_i16(&cols, 1),
            Err(PgError::Type {
                column: 1,
                expected: "int2",
                found_oid: types::INT4
            })
        );
        assert!(matches!(
            row.get_i32(&cols, 2),
            Err(PgError::Type { column: 2, .. })
        ));
        assert!(matches!(row.get_str(&cols, 0), Err(PgError::Type { .. })));
        assert!(matches!(row.get_bool(&cols, 5), Err(PgError::Type { .. })));
        assert!(matches!(row.get_f64(&cols, 2), Err(PgError::Type { .. })));
        assert!(matches!(
            row.get_timestamptz(&cols, 2),
            Err(PgError::Type { .. })
        ));
        // Index and description mismatches.
        assert!(matches!(row.get_i16(&cols, 8), Err(PgError::Protocol(_))));
        assert!(matches!(
            row.get_i16(&cols[..7], 0),
            Err(PgError::Protocol(_))
        ));
    }

    #[test]
    fn typed_text() {
        let cols = [
            col(types::INT2, 0),
            col(types::INT4, 0),
            col(types::INT8, 0),
            col(types::BOOL, 0),
            col(types::FLOAT8, 0),
            col(types::VARCHAR, 0),
            col(types::TIMESTAMPTZ, 0),
            col(types::BPCHAR, 0),
        ];
        let body = data_row(&[
            Some(b"-32768"),
            Some(b"2147483647"),
            Some(b"-9223372036854775808"),
            Some(b"f"),
            Some(b"-Infinity"),
            Some(b"v"),
            Some(b"2000-01-01 00:00:00+00"),
            Some(b"ab  "),
        ]);
        let row = Row::new(&body).unwrap();
        assert_eq!(row.req_i16(&cols, 0), Ok(i16::MIN));
        assert_eq!(row.req_i64(&cols, 0), Ok(-32768));
        assert_eq!(row.req_i32(&cols, 1), Ok(i32::MAX));
        assert_eq!(row.req_i64(&cols, 2), Ok(i64::MIN));
        assert_eq!(row.req_bool(&cols, 3), Ok(false));
        assert_eq!(row.req_f64(&cols, 4), Ok(f64::NEG_INFINITY));
        assert_eq!(row.req_str(&cols, 5), Ok("v"));
        assert_eq!(
            row.get_timestamptz(&cols, 6),
            Err(PgError::Type {
                column: 6,
                expected: "timestamptz (binary format)",
                found_oid: types::TIMESTAMPTZ
            })
        );
        assert_eq!(row.req_str(&cols, 7), Ok("ab  "));

        for nan in [&b"NaN"[..], b"Infinity"] {
            let body = data_row(&[Some(nan)]);
            assert!(Row::new(&body)
                .unwrap()
                .req_f64(&[col(types::FLOAT8, 0)], 0)
                .is_ok());
        }
    }

    #[test]
    fn nulls_and_bad_values() {
        let cols = [
            col(types::INT4, 1),
            col(types::INT4, 1),
            col(types::TEXT, 0),
            col(types::BOOL, 0),
        ];
        let body = data_row(&[None, Some(&[0, 1]), Some(&[0xff]), Some(b"yes")]);
        let row = Row::new(&body).unwrap();
        assert_eq!(row.get_i32(&cols, 0), Ok(None));
        assert_eq!(row.req_i32(&cols, 0), Err(PgError::Null { column: 0 }));
        assert!(
            matches!(row.get_i32(&cols, 1), Err(PgError::Protocol(_))),
            "wrong binary width"
        );
        assert!(
            matches!(row.get_str(&cols, 2), Err(PgError::Protocol(_))),
            "not UTF-8"
        );
        assert!(matches!(row.get_bool(&cols, 3), Err(PgError::Protocol(_))));
        // Unknown formats are type errors, not guesses.
        let odd = [col(types::INT4, 2)];
        let body = data_row(&[Some(&[0, 0, 0, 1])]);
        assert!(matches!(
            Row::new(&body).unwrap().get_i32(&odd, 0),
            Err(PgError::Type { .. })
        ));
    }

    #[test]
    fn timestamptz_infinities() {
        let cols = [col(types::TIMESTAMPTZ, 1), col(types::TIMESTAMPTZ, 1)];
        let body = data_row(&[Some(&i64::MAX.to_be_bytes()), Some(&i64::MIN.to_be_bytes())]);
        let row = Row::new(&body).unwrap();
        assert_eq!(row.req_timestamptz(&cols, 0), Ok(i64::MAX));
        assert_eq!(row.req_timestamptz(&cols, 1), Ok(i64::MIN));
    }
}

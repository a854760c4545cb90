//! Errors: what the server reported ([`DbError`]) and what went wrong on our
//! side of the protocol ([`PgError`]).

use std::fmt;
use std::io;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

/// The fields of an ErrorResponse or NoticeResponse that callers act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, `NOTICE`, ... (never localized
    /// when the server sends the `V` field, as servers since 9.6 do).
    pub severity: String,
    /// SQLSTATE, e.g. `42601`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// 1-based character (not byte) offset into the query text.
    pub position: Option<u32>,
    pub constraint: Option<String>,
    /// Where it happened (the `W` field), e.g. "COPY contacts, line 5000".
    pub context: Option<String>,
}

impl DbError {
    /// The line number of a COPY error, from the context
    /// ("COPY contacts, line 5000, column zip: ...").
    pub fn copy_line(&self) -> Option<u64> {
        let ctx = self.context.as_deref()?;
        let rest = &ctx[ctx.find(", line ")? + 7..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    }

    /// Decodes the fields; `S`/`V`, `C` and `M` are mandatory.
    pub fn parse(fields: &mut ErrorFields<'_>) -> io::Result<DbError> {
        let mut severity = None;
        let mut severity_nonlocalized = None;
        let mut code = None;
        let mut message = None;
        let mut detail = None;
        let mut hint = None;
        let mut position = None;
        let mut constraint = None;
        let mut context = None;
        while let Some(field) = fields.next()? {
            // Lossy: a value in another encoding must not make the error itself unreadable.
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => severity = Some(value),
                b'V' => severity_nonlocalized = Some(value),
                b'C' => code = Some(value),
                b'M' => message = Some(value),
                b'D' => detail = Some(value),
                b'H' => hint = Some(value),
                b'P' => {
                    let p = value
                        .parse()
                        .map_err(|_| invalid(format!("bad error position {value:?}")))?;
                    position = Some(p);
                }
                b'n' => constraint = Some(value),
                b'W' => context = Some(value),
                _ => {}
            }
        }
        Ok(DbError {
            severity: severity_nonlocalized
                .or(severity)
                .ok_or_else(|| invalid("error response without a severity".into()))?,
            code: code.ok_or_else(|| invalid("error response without a SQLSTATE".into()))?,
            message: message.ok_or_else(|| invalid("error response without a message".into()))?,
            detail,
            hint,
            position,
            constraint,
            context,
        })
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

impl std::error::Error for DbError {}

/// Everything the PostgreSQL codec can fail with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PgError {
    /// The server reported an error (ErrorResponse). Boxed: it is large,
    /// and every `Result` carrying a `PgError` would be that large too.
    Db(Box<DbError>),
    /// We cannot or will not authenticate: unsupported method, no password
    /// configured, a SCRAM exchange that does not verify. A password the
    /// server rejects arrives as `Db` with SQLSTATE 28P01.
    Auth(String),
    /// A malformed or unexpected message, or one we cannot encode.
    Protocol(String),
    /// A typed getter was used on a column of another type or format.
    Type {
        column: usize,
        expected: &'static str,
        found_oid: u32,
    },
    /// A required value was NULL.
    Null { column: usize },
}

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Db(e) => Some(&e.code),
            _ => None,
        }
    }

    pub(crate) fn protocol(what: &str, e: impl fmt::Display) -> PgError {
        PgError::Protocol(format!("{what}: {e}"))
    }
}

impl From<DbError> for PgError {
    fn from(e: DbError) -> PgError {
        PgError::Db(Box::new(e))
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Db(e) => e.fmt(f),
            PgError::Auth(m) => write!(f, "authentication: {m}"),
            PgError::Protocol(m) => write!(f, "protocol error: {m}"),
            PgError::Type {
                column,
                expected,
                found_oid,
            } => {
                write!(f, "column {column}: expected {expected}, found ")?;
                match crate::pg::types::type_name(*found_oid) {
                    Some(name) => write!(f, "{name} (OID {found_oid})"),
                    None => write!(f, "type OID {found_oid}"),
                }
            }
            PgError::Null { column } => write!(f, "column {column}: unexpected NULL"),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgError::Db(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::backend::Message;

    fn error_response(fields: &[(u8, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        for (t, v) in fields {
            body.put_u8(*t);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut buf = BytesMut::new();
        buf.put_u8(b'E');
        buf.put_i32(body.len() as i32 + 4);
        buf.put_slice(&body);
        buf
    }

    fn parse(fields: &[(u8, &str)]) -> io::Result<DbError> {
        match Message::parse(&mut error_response(fields))
            .unwrap()
            .unwrap()
        {
            Message::ErrorResponse(body) => DbError::parse(&mut body.fields()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn all_fields() {
        let e = parse(&[
            (b'S', "FEHLER"),
            (b'V', "ERROR"),
            (b'C', "23505"),
            (
                b'M',
                "duplicate key value violates unique constraint \"t_pkey\"",
            ),
            (b'D', "Key (id)=(1) already exists."),
            (b'H', "try another"),
            (b'P', "17"),
            (b'n', "t_pkey"),
            (b'F', "nbtinsert.c"),
        ])
        .unwrap();
        assert_eq!(e.severity, "ERROR", "the non-localized severity wins");
        assert_eq!(e.code, "23505");
        assert_eq!(e.detail.as_deref(), Some("Key (id)=(1) already exists."));
        assert_eq!(e.hint.as_deref(), Some("try another"));
        assert_eq!(e.position, Some(17));
        assert_eq!(e.constraint.as_deref(), Some("t_pkey"));
        let pg = PgError::Db(Box::new(e));
        assert_eq!(pg.sqlstate(), Some("23505"));
        assert_eq!(
            pg.to_string(),
            "ERROR 23505: duplicate key value violates unique constraint \"t_pkey\""
        );
        assert!(std::error::Error::source(&pg).is_some());
    }

    #[test]
    fn minimal_and_missing() {
        let e = parse(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', "hi")]).unwrap();
        assert_eq!(
            (e.severity.as_str(), e.detail, e.position),
            ("NOTICE", None, None)
        );
        assert!(parse(&[(b'S', "ERROR"), (b'M', "no code")]).is_err());
        assert!(parse(&[(b'C', "XX000"), (b'M', "no severity")]).is_err());
        assert!(parse(&[(b'S', "ERROR"), (b'C', "XX000")]).is_err());
        assert!(parse(&[(b'S', "ERROR"), (b'C', "XX000"), (b'M', "m"), (b'P', "x")]).is_err());
    }

    #[test]
    fn display() {
        let t = PgError::Type {
            column: 2,
            expected: "int4",
            found_oid: 25,
        };
        assert_eq!(
            t.to_string(),
            "column 2: expected int4, found text (OID 25)"
        );
        let t = PgError::Type {
            column: 0,
            expected: "int4",
            found_oid: 99999,
        };
        assert_eq!(
            t.to_string(),
            "column 0: expected int4, found type OID 99999"
        );
        assert_eq!(
            PgError::Null { column: 1 }.to_string(),
            "column 1: unexpected NULL"
        );
        assert_eq!(PgError::Auth("x".into()).sqlstate(), None);
    }
}

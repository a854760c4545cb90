//! Frontend (client to server) message encoders, appending to a `BytesMut`.
//!
//! An encoder that fails (a NUL inside a string, a count or length the
//! protocol cannot express) leaves `buf` exactly as it was, so a caller that
//! pipelines several messages into one buffer never sends half of one.
//!
//! Parameter values for [`bind`] are encoded by the caller; the `encode_*`
//! helpers append one binary-format value to a scratch buffer:
//!
//! ```
//! use bytes::BytesMut;
//! use ringside_wire::pg::frontend;
//!
//! let mut scratch = BytesMut::new();
//! frontend::encode_i64(42, &mut scratch);
//! let id = scratch.split().freeze();
//! frontend::encode_text("ringside", &mut scratch);
//! let name = scratch.split().freeze();
//!
//! let mut out = BytesMut::new();
//! frontend::bind("", "s1", &[Some(&id[..]), Some(&name[..]), None], &[1], &[1], &mut out).unwrap();
//! ```

use std::io;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;
use postgres_protocol::{types, IsNull};

use super::error::PgError;
use super::types::PG_EPOCH_UNIX_MICROS;

/// Runs an encoder, undoing its partial output if it fails.
fn guarded(
    what: &str,
    buf: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> io::Result<()>,
) -> Result<(), PgError> {
    let base = buf.len();
    f(buf).map_err(|e| {
        buf.truncate(base);
        PgError::protocol(&format!("cannot encode {what}"), e)
    })
}

/// Query (simple query protocol). `sql` may hold several statements.
pub fn query(sql: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Query", buf, |buf| frontend::query(sql, buf))
}

/// Parse. `param_oids` may be shorter than the parameter count (or empty):
/// the server infers the rest.
pub fn parse(
    stmt_name: &str,
    sql: &str,
    param_oids: &[u32],
    buf: &mut BytesMut,
) -> Result<(), PgError> {
    guarded("Parse", buf, |buf| {
        frontend::parse(stmt_name, sql, param_oids.iter().copied(), buf)
    })
}

/// Bind. `params` are already encoded (`None` is NULL); `param_formats` and
/// `result_formats` each hold zero codes (all text), one (applies to all) or
/// one per parameter/column.
pub fn bind(
    portal: &str,
    stmt_name: &str,
    params: &[Option<&[u8]>],
    param_formats: &[i16],
    result_formats: &[i16],
    buf: &mut BytesMut,
) -> Result<(), PgError> {
    bind_values(
        portal,
        stmt_name,
        params,
        |v, buf| match v {
            Some(bytes) => {
                buf.put_slice(bytes);
                true
            }
            None => false,
        },
        param_formats,
        result_formats,
        buf,
    )
}

/// Bind with each value encoded by `encode` straight into the message
/// (`encode` returns false for NULL): no scratch buffer, no allocation.
pub fn bind_values<T>(
    portal: &str,
    stmt_name: &str,
    values: &[T],
    mut encode: impl FnMut(&T, &mut BytesMut) -> bool,
    param_formats: &[i16],
    result_formats: &[i16],
    buf: &mut BytesMut,
) -> Result<(), PgError> {
    // The server would reject this too, but only after the whole pipeline
    // was sent; failing here points at the caller's bug.
    if param_formats.len() > 1 && param_formats.len() != values.len() {
        return Err(PgError::Protocol(format!(
            "cannot encode Bind: {} parameter formats for {} parameters",
            param_formats.len(),
            values.len()
        )));
    }
    let base = buf.len();
    let res = frontend::bind(
        portal,
        stmt_name,
        param_formats.iter().copied(),
        values.iter(),
        |v, buf| {
            Ok(if encode(v, buf) {
                IsNull::No
            } else {
                IsNull::Yes
            })
        },
        result_formats.iter().copied(),
        buf,
    );
    res.map_err(|e| {
        buf.truncate(base);
        let msg = match e {
            frontend::BindError::Conversion(e) => e.to_string(),
            frontend::BindError::Serialization(e) => e.to_string(),
        };
        PgError::Protocol(format!("cannot encode Bind: {msg}"))
    })
}

/// Describe of a prepared statement: ParameterDescription, then
/// RowDescription or NoData.
pub fn describe_statement(name: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Describe", buf, |buf| frontend::describe(b'S', name, buf))
}

/// Describe of a portal: RowDescription or NoData.
pub fn describe_portal(name: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Describe", buf, |buf| frontend::describe(b'P', name, buf))
}

/// Execute; `max_rows` 0 means no limit (otherwise PortalSuspended may end it).
pub fn execute(portal: &str, max_rows: i32, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Execute", buf, |buf| {
        frontend::execute(portal, max_rows, buf)
    })
}

pub fn sync(buf: &mut BytesMut) {
    frontend::sync(buf);
}

pub fn flush(buf: &mut BytesMut) {
    frontend::flush(buf);
}

pub fn close_statement(name: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Close", buf, |buf| frontend::close(b'S', name, buf))
}

pub fn close_portal(name: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("Close", buf, |buf| frontend::close(b'P', name, buf))
}

/// CopyData of any size up to the protocol's i32 length (the server caps a
/// message at 1 GiB, so callers should send large copies in pieces).
pub fn copy_data(data: &[u8], buf: &mut BytesMut) -> Result<(), PgError> {
    let msg = frontend::CopyData::new(data)
        .map_err(|e| PgError::protocol("cannot encode CopyData", e))?;
    buf.reserve(5 + data.len());
    msg.write(buf);
    Ok(())
}

pub fn copy_done(buf: &mut BytesMut) {
    frontend::copy_done(buf);
}

/// CopyFail: the server aborts the COPY with an ErrorResponse (57014)
/// quoting `message`.
pub fn copy_fail(message: &str, buf: &mut BytesMut) -> Result<(), PgError> {
    guarded("CopyFail", buf, |buf| frontend::copy_fail(message, buf))
}

pub fn terminate(buf: &mut BytesMut) {
    frontend::terminate(buf);
}

/// CancelRequest: sent on a new connection instead of a StartupMessage, with
/// the key from the target session's BackendKeyData.
pub fn cancel_request(process_id: i32, secret_key: i32, buf: &mut BytesMut) {
    frontend::cancel_request(process_id, secret_key, buf);
}

/// int2, binary format.
pub fn encode_i16(v: i16, buf: &mut BytesMut) {
    types::int2_to_sql(v, buf);
}

/// int4, binary format.
pub fn encode_i32(v: i32, buf: &mut BytesMut) {
    types::int4_to_sql(v, buf);
}

/// int8, binary format.
pub fn encode_i64(v: i64, buf: &mut BytesMut) {
    types::int8_to_sql(v, buf);
}

/// bool, binary format.
pub fn encode_bool(v: bool, buf: &mut BytesMut) {
    types::bool_to_sql(v, buf);
}

/// float8, binary format.
pub fn encode_f64(v: f64, buf: &mut BytesMut) {
    types::float8_to_sql(v, buf);
}

/// text/varchar: the same UTF-8 bytes in text and binary format.
pub fn encode_text(v: &str, buf: &mut BytesMut) {
    types::text_to_sql(v, buf);
}

/// timestamptz, binary format, from microseconds since the Unix epoch.
/// Saturates at the ends of the range (which the server reads as ±infinity).
pub fn encode_timestamptz(unix_micros: i64, buf: &mut BytesMut) {
    types::timestamp_to_sql(unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS), buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        let mut buf = BytesMut::new();
        query("SELECT 1", &mut buf).unwrap();
        assert_eq!(&buf[..], b"Q\0\0\0\x0dSELECT 1\0");

        let mut buf = BytesMut::new();
        parse("s", "SELECT $1", &[23], &mut buf).unwrap();
        assert_eq!(&buf[..], b"P\0\0\0\x16s\0SELECT $1\0\0\x01\0\0\0\x17");

        let mut buf = BytesMut::new();
        bind(
            "p",
            "s",
            &[Some(b"\0\0\0\x2a"), None],
            &[1],
            &[1, 0],
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            &buf[..],
            &b"B\0\0\0\x20p\0s\0\0\x01\0\x01\0\x02\0\0\0\x04\0\0\0\x2a\xff\xff\xff\xff\0\x02\0\x01\0\0"[..]
        );

        let mut buf = BytesMut::new();
        describe_statement("s", &mut buf).unwrap();
        describe_portal("", &mut buf).unwrap();
        execute("", 0, &mut buf).unwrap();
        close_statement("s", &mut buf).unwrap();
        close_portal("", &mut buf).unwrap();
        sync(&mut buf);
        flush(&mut buf);
        assert_eq!(
            &buf[..],
            &b"D\0\0\0\x07Ss\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0C\0\0\0\x07Ss\0C\0\0\0\x06P\0S\0\0\0\x04H\0\0\0\x04"[..]
        );

        let mut buf = BytesMut::new();
        copy_data(b"1\tx\n", &mut buf).unwrap();
        copy_done(&mut buf);
        copy_fail("no", &mut buf).unwrap();
        terminate(&mut buf);
        assert_eq!(
            &buf[..],
            &b"d\0\0\0\x081\tx\nc\0\0\0\x04f\0\0\0\x07no\0X\0\0\0\x04"[..]
        );

        let mut buf = BytesMut::new();
        cancel_request(7, -1, &mut buf);
        assert_eq!(
            &buf[..],
            b"\0\0\0\x10\x04\xd2\x16\x2e\0\0\0\x07\xff\xff\xff\xff"
        );
    }

    #[test]
    fn errors_leave_the_buffer_unchanged() {
        let mut buf = BytesMut::new();
        sync(&mut buf);
        let before = buf.clone();
        assert!(query("SELECT '\0'", &mut buf).is_err());
        assert!(parse("s\0", "SELECT 1", &[], &mut buf).is_err());
        assert!(parse("s", "SELECT \0", &[], &mut buf).is_err());
        assert!(
            parse("s", "SELECT 1", &[0; 70_000], &mut buf).is_err(),
            "count over u16"
        );
        assert!(bind("", "s\0", &[], &[], &[], &mut buf).is_err());
        assert!(bind("", "s", &[None, None], &[0, 0, 0], &[], &mut buf).is_err());
        assert!(
            bind("", "s", &[], &[], &[0; 70_000], &mut buf).is_err(),
            "count over u16"
        );
        assert!(describe_statement("\0", &mut buf).is_err());
        assert!(describe_portal("\0", &mut buf).is_err());
        assert!(execute("\0", 0, &mut buf).is_err());
        assert!(close_statement("\0", &mut buf).is_err());
        assert!(close_portal("\0", &mut buf).is_err());
        let err = copy_fail("a\0b", &mut buf).unwrap_err();
        assert!(
            matches!(err, PgError::Protocol(ref m) if m.contains("CopyFail")),
            "{err}"
        );
        assert_eq!(buf, before);
    }

    #[test]
    fn large_copy_data() {
        let data = vec![b'x'; 3 << 20];
        let mut buf = BytesMut::new();
        copy_data(&data, &mut buf).unwrap();
        assert_eq!(buf.len(), 5 + data.len());
        assert_eq!(&buf[..5], &[b'd', 0, 0x30, 0, 4]);
    }

    #[test]
    fn values() {
        let mut buf = BytesMut::new();
        encode_i16(-2, &mut buf);
        encode_i32(1, &mut buf);
        encode_i64(-1, &mut buf);
        encode_bool(true, &mut buf);
        encode_f64(1.5, &mut buf);
        encode_text("é", &mut buf);
        assert_eq!(
            &buf[..],
            &b"\xff\xfe\0\0\0\x01\xff\xff\xff\xff\xff\xff\xff\xff\x01\x3f\xf8\0\0\0\0\0\0\xc3\xa9"
                [..]
        );
        let mut buf = BytesMut::new();
        encode_timestamptz(PG_EPOCH_UNIX_MICROS + 1, &mut buf);
        encode_timestamptz(i64::MIN, &mut buf);
        assert_eq!(&buf[..8], &1i64.to_be_bytes());
        assert_eq!(&buf[8..], &i64::MIN.to_be_bytes());
    }
}

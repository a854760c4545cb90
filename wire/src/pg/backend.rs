//! Backend (server to client) message framing.

use bytes::BytesMut;

pub use postgres_protocol::message::backend::Message;

use super::error::PgError;

/// A generous default for `max_len`: large rows fit, a corrupt or hostile
/// length cannot make us buffer gigabytes.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 << 20;

/// Frames and decodes one backend message off the front of `buf`.
///
/// `Ok(None)` means the message is not complete yet; more bytes are then
/// reserved in `buf` for it. A declared length over `max_len` (the length
/// field counts itself but not the tag byte) is refused as soon as its 5-byte
/// header arrives, before any of its body is buffered. After an error the
/// connection is unusable: `buf` may be left mid-stream.
pub fn next_message(buf: &mut BytesMut, max_len: usize) -> Result<Option<Message>, PgError> {
    let Some(len) = declared_len(buf)? else {
        return Ok(None);
    };
    if len > max_len {
        return Err(PgError::Protocol(format!(
            "backend message '{}' of {len} bytes exceeds the limit of {max_len}",
            char::from(buf[0]).escape_default()
        )));
    }
    if buf.len() <= len {
        // Incomplete. Left as it is: the parser would reserve room, and
        // the caller's buffer is the caller's to size.
        return Ok(None);
    }
    Message::parse(buf).map_err(|e| PgError::protocol("malformed backend message", e))
}

/// The declared length of the message at the front of `buf`, once its header
/// is there.
pub fn declared_len(buf: &[u8]) -> Result<Option<usize>, PgError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 {
        return Err(PgError::Protocol(format!(
            "backend message length {len} is below 4"
        )));
    }
    Ok(Some(len as usize))
}

/// A transaction status from ReadyForQuery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block; queries are refused until it ends.
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Result<TxStatus, PgError> {
        match b {
            b'I' => Ok(TxStatus::Idle),
            b'T' => Ok(TxStatus::InTransaction),
            b'E' => Ok(TxStatus::Failed),
            _ => Err(PgError::Protocol(format!(
                "unknown transaction status '{}' in ReadyForQuery",
                char::from(b).escape_default()
            ))),
        }
    }
}

/// The protocol name of a message, for "unexpected message" errors
/// (`Message` has no `Debug`).
pub fn message_name(msg: &Message) -> &'static str {
    match msg {
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationGss => "AuthenticationGSS",
        Message::AuthenticationKerberosV5 => "AuthenticationKerberosV5",
        Message::AuthenticationMd5Password(_) => "AuthenticationMD5Password",
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationScmCredential => "AuthenticationSCMCredential",
        Message::AuthenticationSspi => "AuthenticationSSPI",
        Message::AuthenticationGssContinue(_) => "AuthenticationGSSContinue",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "(unknown message)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn incomplete_then_complete() {
        let bytes = frame(b'Z', b"I");
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            assert!(
                next_message(&mut buf, 100).unwrap().is_none(),
                "after {i} bytes"
            );
            buf.extend_from_slice(&[*b]);
        }
        match next_message(&mut buf, 100).unwrap() {
            Some(Message::ReadyForQuery(b)) => {
                assert_eq!(TxStatus::from_byte(b.status()), Ok(TxStatus::Idle))
            }
            _ => panic!("expected ReadyForQuery"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn two_messages_leave_the_rest() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&frame(b'1', b""));
        buf.extend_from_slice(&frame(b'C', b"SELECT 1\0"));
        buf.extend_from_slice(&frame(b'Z', b"T")[..3]);
        assert!(matches!(
            next_message(&mut buf, 100),
            Ok(Some(Message::ParseComplete))
        ));
        match next_message(&mut buf, 100) {
            Ok(Some(Message::CommandComplete(c))) => assert_eq!(c.tag().unwrap(), "SELECT 1"),
            _ => panic!("expected CommandComplete"),
        }
        assert!(matches!(next_message(&mut buf, 100), Ok(None)));
        assert_eq!(buf.len(), 3);
    }

    #[test]
    fn length_limit_checked_on_the_header() {
        // Only the header: the body is never needed to refuse it.
        let mut buf = BytesMut::from(&[b'D', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = next_message(&mut buf, 1 << 20).err().unwrap();
        assert!(
            matches!(err, PgError::Protocol(ref m) if m.contains("exceeds")),
            "{err}"
        );
        assert!(
            buf.capacity() < 1 << 20,
            "nothing reserved for the refused body"
        );
        // The limit is inclusive.
        let mut buf = BytesMut::from(&frame(b'C', b"SELECT 1\0")[..]);
        assert!(next_message(&mut buf, 13).unwrap().is_some());
        let mut buf = BytesMut::from(&frame(b'C', b"SELECT 1\0")[..]);
        assert!(next_message(&mut buf, 12).is_err());
    }

    #[test]
    fn malformed() {
        let mut buf = BytesMut::from(&[b'Z', 0, 0, 0, 3][..]);
        assert!(matches!(
            next_message(&mut buf, 100),
            Err(PgError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&frame(b'?', b"")[..]);
        assert!(matches!(
            next_message(&mut buf, 100),
            Err(PgError::Protocol(_))
        ));
        // CommandComplete without its terminating NUL.
        let mut buf = BytesMut::from(&frame(b'C', b"SELECT")[..]);
        assert!(matches!(
            next_message(&mut buf, 100),
            Err(PgError::Protocol(_))
        ));
        assert!(TxStatus::from_byte(b'x').is_err());
        assert_eq!(TxStatus::from_byte(b'T'), Ok(TxStatus::InTransaction));
        assert_eq!(TxStatus::from_byte(b'E'), Ok(TxStatus::Failed));
    }

    #[test]
    fn names() {
        let mut buf = BytesMut::from(&frame(b'n', b"")[..]);
        assert_eq!(
            message_name(&next_message(&mut buf, 100).unwrap().unwrap()),
            "NoData"
        );
    }
}

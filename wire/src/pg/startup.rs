//! Connection startup: StartupMessage, authentication, and the server's
//! parameters up to the first ReadyForQuery.
//!
//! ```text
//! let mut startup = Startup::new(&params, &mut out);
//! loop {
//!     write all of `out` to the socket, clear it;
//!     read into `input`;                      // EOF here is an error
//!     if let Some(session) = startup.feed(&mut input, &mut out)? { break }
//! }
//! // `input` may already hold the start of the next exchange.
//! ```
//!
//! SCRAM uses postgres-protocol's `ScramSha256`, whose client nonce is drawn
//! from the thread RNG and cannot be injected; so a recorded SCRAM exchange
//! cannot be replayed byte for byte. The tests run SCRAM against an in-process
//! server instead (tests/pg_scram.rs), and against a real one when a test
//! cluster is up (tests/pg_live.rs).

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;

pub use super::backend::TxStatus;
use super::backend::{message_name, next_message, Message};
use super::error::{DbError, PgError};

/// Startup messages are small; a server sending more is broken or hostile.
pub const STARTUP_MAX_MESSAGE_LEN: usize = 64 << 10;

/// What to send in the StartupMessage, and the password if one is needed.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartupParams<'a> {
    pub user: &'a str,
    /// Defaults to the user name on the server side.
    pub database: Option<&'a str>,
    pub application_name: Option<&'a str>,
    /// Command-line options for the backend, e.g. `-c statement_timeout=5s`.
    pub options: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    /// SCRAM channel binding (libpq's `channel_binding`).
    pub channel_binding: ChannelBindingMode,
    /// The TLS session's `tls-server-end-point` data (RFC 5929: the hash
    /// of the server's certificate); `None` without TLS.
    pub tls_server_end_point: Option<&'a [u8]>,
}

/// libpq's `channel_binding`: whether SCRAM binds the authentication to
/// the TLS session (SCRAM-SHA-256-PLUS), so that a man in the middle
/// holding another certificate cannot relay it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind.
    Disable,
    /// Bind when over TLS and the server offers it.
    #[default]
    Prefer,
    /// Bind, or fail: also when the server authenticates without SCRAM.
    Require,
}

/// What startup learned about the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// With `secret_key`, the key for a CancelRequest; 0 if the server sent
    /// no BackendKeyData (some poolers do not).
    pub process_id: i32,
    pub secret_key: i32,
    /// ParameterStatus values in arrival order (server_version, TimeZone, ...).
    pub parameters: Vec<(String, String)>,
    pub transaction_status: TxStatus,
}

impl Session {
    /// The last value reported for a server parameter.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

enum State {
    /// Waiting for the server's authentication request.
    Auth,
    /// Sent a password (cleartext or md5); waiting for AuthenticationOk.
    Password,
    /// Sent SASLInitialResponse; waiting for the server-first message.
    SaslContinue(Box<ScramSha256>),
    /// Sent the client-final message; waiting for the server signature.
    SaslFinal(Box<ScramSha256>),
    /// The server proved it knows the password; waiting for AuthenticationOk.
    SaslVerified,
    /// Authenticated; collecting parameters until ReadyForQuery.
    Params,
    Done,
    Failed(PgError),
}

/// The startup state machine. See the module docs for the driving loop.
pub struct Startup {
    user: String,
    password: Option<Vec<u8>>,
    channel_binding: ChannelBindingMode,
    tls_server_end_point: Option<Vec<u8>>,
    /// SCRAM-SHA-256-PLUS was used (and the server's proof checked).
    bound: bool,
    state: State,
    process_id: i32,
    secret_key: i32,
    parameters: Vec<(String, String)>,
    max_message_len: usize,
}

impl Startup {
    /// Writes the StartupMessage into `out`. A parameter that cannot be
    /// encoded (a NUL byte) leaves `out` unchanged and fails the first
    /// [`Startup::feed`]; [`Startup::try_new`] reports it at once.
    pub fn new(params: &StartupParams<'_>, out: &mut BytesMut) -> Startup {
        let mut s = Startup {
            user: params.user.to_owned(),
            password: params.password.map(<[u8]>::to_vec),
            channel_binding: params.channel_binding,
            tls_server_end_point: params.tls_server_end_point.map(<[u8]>::to_vec),
            bound: false,
            state: State::Auth,
            process_id: 0,
            secret_key: 0,
            parameters: Vec::new(),
            max_message_len: STARTUP_MAX_MESSAGE_LEN,
        };
        if let Err(e) = write_startup(params, out) {
            s.state = State::Failed(e);
        }
        s
    }

    pub fn try_new(params: &StartupParams<'_>, out: &mut BytesMut) -> Result<Startup, PgError> {
        let s = Startup::new(params, out);
        match &s.state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(s),
        }
    }

    /// Overrides [`STARTUP_MAX_MESSAGE_LEN`].
    pub fn with_max_message_len(mut self, max_len: usize) -> Startup {
        self.max_message_len = max_len;
        self
    }

    /// Consumes the complete backend messages at the front of `input`,
    /// appending any replies to `out`. Returns the session at the first
    /// ReadyForQuery, leaving whatever follows it in `input`; `Ok(None)` when
    /// more input is needed (after `out` is sent, if not empty). After an
    /// error every later call fails too.
    pub fn feed(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Session>, PgError> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Done => return Err(PgError::Protocol("startup is already complete".into())),
            _ => {}
        }
        loop {
            let step = match next_message(input, self.max_message_len) {
                Ok(Some(msg)) => self.step(msg, out),
                Ok(None) => return Ok(None),
                Err(e) => Err(e),
            };
            match step {
                Ok(None) => {}
                Ok(Some(session)) => return Ok(Some(session)),
                Err(e) => {
                    self.state = State::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    fn step(&mut self, msg: Message, out: &mut BytesMut) -> Result<Option<Session>, PgError> {
        let state = std::mem::replace(
            &mut self.state,
            State::Failed(PgError::Protocol("startup interrupted".into())),
        );
        let next = match (state, msg) {
            (_, Message::ErrorResponse(body)) => {
                let e = DbError::parse(&mut body.fields())
                    .map_err(|e| PgError::protocol("malformed ErrorResponse", e))?;
                return Err(PgError::Db(Box::new(e)));
            }
            // Nothing acts on startup notices; the server logs them anyway.
            (state, Message::NoticeResponse(_)) => state,

            (State::Auth | State::Password | State::SaslVerified, Message::AuthenticationOk) => {
                if self.channel_binding == ChannelBindingMode::Require && !self.bound {
                    return Err(PgError::Auth(
                        "channel_binding=require, but the server authenticated us without \
                         channel binding (it asked for no SCRAM authentication)"
                            .into(),
                    ));
                }
                State::Params
            }
            (State::Auth, Message::AuthenticationCleartextPassword) => {
                let password = self.password("cleartext password")?;
                guarded(out, |out| frontend::password_message(password, out))
                    .map_err(|e| PgError::Auth(format!("cannot send the password: {e}")))?;
                State::Password
            }
            (State::Auth, Message::AuthenticationMd5Password(body)) => {
                let hash = md5_hash(
                    self.user.as_bytes(),
                    self.password("md5 password")?,
                    body.salt(),
                );
                guarded(out, |out| frontend::password_message(hash.as_bytes(), out))
                    .map_err(|e| PgError::protocol("cannot encode PasswordMessage", e))?;
                State::Password
            }
            (State::Auth, Message::AuthenticationSasl(body)) => {
                let mechanisms: Vec<&str> = body
                    .mechanisms()
                    .collect()
                    .map_err(|e| PgError::protocol("malformed AuthenticationSASL", e))?;
                let plus_offered = mechanisms.contains(&SCRAM_SHA_256_PLUS);
                // The GS2 header tells the server what we did: "p=..." bound,
                // "y,," we could bind but it cannot, "n,," we cannot (no TLS).
                let (mechanism, binding) = match (
                    self.channel_binding,
                    self.tls_server_end_point.as_ref(),
                    plus_offered,
                ) {
                    (ChannelBindingMode::Disable, _, _) => {
                        (SCRAM_SHA_256, ChannelBinding::unsupported())
                    }
                    (_, Some(end_point), true) => (
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(end_point.clone()),
                    ),
                    (ChannelBindingMode::Require, end_point, _) => {
                        return Err(PgError::Auth(if end_point.is_none() {
                            "channel_binding=require needs TLS with a certificate whose hash \
                             is known (not Ed25519)"
                                .into()
                        } else {
                            format!(
                                "channel_binding=require, but the server offers only {mechanisms:?}"
                            )
                        }));
                    }
                    (ChannelBindingMode::Prefer, Some(_), false) => {
                        (SCRAM_SHA_256, ChannelBinding::unrequested())
                    }
                    (ChannelBindingMode::Prefer, None, _) => {
                        (SCRAM_SHA_256, ChannelBinding::unsupported())
                    }
                };
                if !mechanisms.contains(&mechanism) {
                    return Err(PgError::Auth(format!(
                        "the server offers SASL mechanisms {mechanisms:?}, none of them {mechanism}"
                    )));
                }
                self.bound = mechanism == SCRAM_SHA_256_PLUS;
                let scram = ScramSha256::new(self.password(mechanism)?, binding);
                guarded(out, |out| {
                    frontend::sasl_initial_response(mechanism, scram.message(), out)
                })
                .map_err(|e| PgError::protocol("cannot encode SASLInitialResponse", e))?;
                State::SaslContinue(Box::new(scram))
            }
            (State::SaslContinue(mut scram), Message::AuthenticationSaslContinue(body)) => {
                scram
                    .update(body.data())
                    .map_err(|e| PgError::Auth(format!("SCRAM server-first message: {e}")))?;
                guarded(out, |out| frontend::sasl_response(scram.message(), out))
                    .map_err(|e| PgError::protocol("cannot encode SASLResponse", e))?;
                State::SaslFinal(scram)
            }
            (State::SaslFinal(mut scram), Message::AuthenticationSaslFinal(body)) => {
                // The server's proof that it knows the password, not just us.
                scram
                    .finish(body.data())
                    .map_err(|e| PgError::Auth(format!("SCRAM server-final message: {e}")))?;
                State::SaslVerified
            }
            (
                State::Auth,
                msg @ (Message::AuthenticationKerberosV5
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGssContinue(_)),
            ) => {
                return Err(PgError::Auth(format!(
                    "unsupported authentication method ({}); configure trust, password, md5 or scram-sha-256",
                    message_name(&msg)
                )));
            }

            (State::Params, Message::ParameterStatus(body)) => {
                let name = body
                    .name()
                    .map_err(|e| PgError::protocol("malformed ParameterStatus", e))?;
                let value = body
                    .value()
                    .map_err(|e| PgError::protocol("malformed ParameterStatus", e))?;
                self.parameters.push((name.to_owned(), value.to_owned()));
                State::Params
            }
            (State::Params, Message::BackendKeyData(body)) => {
                self.process_id = body.process_id();
                self.secret_key = body.secret_key();
                State::Params
            }
            (State::Params, Message::ReadyForQuery(body)) => {
                let transaction_status = TxStatus::from_byte(body.status())?;
                self.state = State::Done;
                return Ok(Some(Session {
                    process_id: self.process_id,
                    secret_key: self.secret_key,
                    parameters: std::mem::take(&mut self.parameters),
                    transaction_status,
                }));
            }

            (state, msg) => {
                return Err(PgError::Protocol(format!(
                    "unexpected {} during startup ({})",
                    message_name(&msg),
                    state_name(&state)
                )));
            }
        };
        self.state = next;
        Ok(None)
    }

    fn password(&self, method: &str) -> Result<&[u8], PgError> {
        self.password.as_deref().ok_or_else(|| {
            PgError::Auth(format!(
                "the server requires {method} authentication but no password is configured"
            ))
        })
    }
}

fn state_name(state: &State) -> &'static str {
    match state {
        State::Auth => "waiting for an authentication request",
        State::Password => "waiting for the password check",
        State::SaslContinue(_) | State::SaslFinal(_) => "in a SCRAM exchange",
        State::SaslVerified => "waiting for AuthenticationOk after SCRAM",
        State::Params => "authenticated, waiting for ReadyForQuery",
        State::Done => "done",
        State::Failed(_) => "failed",
    }
}

fn write_startup(params: &StartupParams<'_>, out: &mut BytesMut) -> Result<(), PgError> {
    let mut kv: Vec<(&str, &str)> = vec![("user", params.user)];
    kv.extend(params.database.map(|v| ("database", v)));
    kv.extend(params.application_name.map(|v| ("application_name", v)));
    kv.extend(params.options.map(|v| ("options", v)));
    // Text values are decoded as UTF-8 everywhere in this crate.
    kv.push(("client_encoding", "UTF8"));
    guarded(out, |out| frontend::startup_message(kv, out))
        .map_err(|e| PgError::protocol("cannot encode StartupMessage", e))
}

fn guarded(
    out: &mut BytesMut,
    f: impl FnOnce(&mut BytesMut) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let base = out.len();
    f(out).inspect_err(|_| out.truncate(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(extra);
        frame(b'R', &body)
    }

    /// ParameterStatus, BackendKeyData, ReadyForQuery.
    fn tail() -> Vec<u8> {
        let mut v = frame(b'S', b"server_version\x0015.0\0");
        v.extend(frame(b'S', b"TimeZone\0UTC\0"));
        v.extend(frame(b'K', &[0, 0, 0x30, 0x39, 0xff, 0xff, 0xff, 0xfe]));
        v.extend(frame(b'Z', b"I"));
        v
    }

    fn params(password: Option<&'static [u8]>) -> StartupParams<'static> {
        StartupParams {
            user: "md5_user",
            database: Some("db"),
            application_name: Some("app"),
            options: None,
            password,
            ..Default::default()
        }
    }

    fn error_response(code: &str) -> Vec<u8> {
        frame(
            b'E',
            format!("SFATAL\0VFATAL\0C{code}\0Mnope\0\0").as_bytes(),
        )
    }

    #[test]
    fn startup_message_bytes() {
        let mut out = BytesMut::new();
        let _ = Startup::new(&params(None), &mut out);
        let body = b"\0\x03\0\0user\0md5_user\0database\0db\0application_name\0app\0client_encoding\0UTF8\0\0";
        assert_eq!(&out[..4], &(body.len() as u32 + 4).to_be_bytes());
        assert_eq!(&out[4..], body);
    }

    #[test]
    fn bad_startup_param_fails_without_output() {
        let mut out = BytesMut::from(&b"x"[..]);
        let p = StartupParams {
            user: "a\0b",
            ..Default::default()
        };
        assert!(Startup::try_new(&p, &mut out).is_err());
        let mut s = Startup::new(&p, &mut out);
        assert_eq!(&out[..], b"x");
        assert!(matches!(
            s.feed(&mut BytesMut::new(), &mut out),
            Err(PgError::Protocol(_))
        ));
    }

    #[test]
    fn trust() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(None), &mut out);
        out.clear();
        let mut input = BytesMut::from(&auth(0, &[])[..]);
        input.extend_from_slice(&tail());
        input.extend_from_slice(&frame(b'Z', b"I")); // belongs to the caller
        let session = s.feed(&mut input, &mut out).unwrap().unwrap();
        assert_eq!(session.process_id, 12345);
        assert_eq!(session.secret_key, -2);
        assert_eq!(session.parameter("TimeZone"), Some("UTC"));
        assert_eq!(session.parameters.len(), 2);
        assert_eq!(session.transaction_status, TxStatus::Idle);
        assert!(out.is_empty());
        assert_eq!(input.len(), 6, "the message after ReadyForQuery stays");
        assert!(s.feed(&mut input, &mut out).is_err(), "done");
    }

    #[test]
    fn cleartext_byte_at_a_time() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(Some(b"secret")), &mut out);
        out.clear();
        let mut stream = auth(3, &[]);
        stream.extend(auth(0, &[]));
        stream.extend(tail());
        let mut input = BytesMut::new();
        let mut session = None;
        for b in stream {
            assert!(session.is_none());
            input.put_u8(b);
            session = s.feed(&mut input, &mut out).unwrap();
        }
        assert!(session.is_some());
        assert_eq!(&out[..], &frame(b'p', b"secret\0")[..]);
    }

    #[test]
    fn md5() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(Some(b"password")), &mut out);
        out.clear();
        let mut input = BytesMut::from(&auth(5, &[0x2a, 0x3d, 0x8f, 0xe0])[..]);
        assert!(s.feed(&mut input, &mut out).unwrap().is_none());
        // The vector from postgres-protocol's own md5 test.
        assert_eq!(
            &out[..],
            &frame(b'p', b"md562af4dd09bbb41884907a838a3233294\0")[..]
        );
        input.extend_from_slice(&error_response("28P01"));
        let err = s.feed(&mut input, &mut out).unwrap_err();
        assert_eq!(err.sqlstate(), Some("28P01"));
        assert_eq!(
            s.feed(&mut input, &mut out).unwrap_err(),
            err,
            "failure is sticky"
        );
    }

    #[test]
    fn password_required() {
        for (req, method) in [
            (auth(3, &[]), "cleartext"),
            (auth(5, b"salt"), "md5"),
            (auth(10, b"SCRAM-SHA-256\0\0"), "SCRAM"),
        ] {
            let mut out = BytesMut::new();
            let mut s = Startup::new(&params(None), &mut out);
            out.clear();
            let err = s.feed(&mut BytesMut::from(&req[..]), &mut out).unwrap_err();
            assert!(
                matches!(&err, PgError::Auth(m) if m.contains(method) && m.contains("no password")),
                "{err}"
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn unsupported_methods() {
        for code in [2, 6, 7, 9] {
            let mut out = BytesMut::new();
            let mut s = Startup::new(&params(Some(b"pw")), &mut out);
            let err = s
                .feed(&mut BytesMut::from(&auth(code, &[])[..]), &mut out)
                .unwrap_err();
            assert!(
                matches!(&err, PgError::Auth(m) if m.contains("unsupported")),
                "{code}: {err}"
            );
        }
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(Some(b"pw")), &mut out);
        let err = s
            .feed(
                &mut BytesMut::from(&auth(10, b"SCRAM-SHA-256-PLUS\0\0")[..]),
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(&err, PgError::Auth(m) if m.contains("SCRAM-SHA-256-PLUS")),
            "{err}"
        );
    }

    #[test]
    fn scram_up_to_server_first() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(Some(b"pencil")), &mut out);
        out.clear();
        let mut input = BytesMut::from(&auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0")[..]);
        assert!(s.feed(&mut input, &mut out).unwrap().is_none());
        // SASLInitialResponse: mechanism, then the client-first message.
        assert_eq!(out[0], b'p');
        let body = &out[5..];
        assert!(body.starts_with(b"SCRAM-SHA-256\0"));
        let first = &body[14 + 4..];
        assert_eq!(&body[14..18], &(first.len() as u32).to_be_bytes());
        assert!(
            first.starts_with(b"n,,n=,r="),
            "{:?}",
            String::from_utf8_lossy(first)
        );
        // A server nonce that does not extend ours is refused.
        let mut input = BytesMut::from(&auth(11, b"r=notours,s=c2FsdA==,i=4096")[..]);
        let err = s.feed(&mut input, &mut out).unwrap_err();
        assert!(
            matches!(&err, PgError::Auth(m) if m.contains("nonce")),
            "{err}"
        );
    }

    #[test]
    fn out_of_order_messages() {
        let cases: [(Vec<u8>, &str); 4] = [
            (frame(b'Z', b"I"), "ReadyForQuery"),
            (frame(b'S', b"a\0b\0"), "ParameterStatus"),
            (auth(12, b"v=x"), "AuthenticationSASLFinal"),
            (frame(b'C', b"SELECT 1\0"), "CommandComplete"),
        ];
        for (msg, name) in cases {
            let mut out = BytesMut::new();
            let mut s = Startup::new(&params(Some(b"pw")), &mut out);
            let err = s.feed(&mut BytesMut::from(&msg[..]), &mut out).unwrap_err();
            assert!(
                matches!(&err, PgError::Protocol(m) if m.contains(name)),
                "{err}"
            );
        }
        // AuthenticationOk in the middle of SCRAM would skip the server's proof.
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(Some(b"pw")), &mut out);
        let mut input = BytesMut::from(&auth(10, b"SCRAM-SHA-256\0\0")[..]);
        input.extend_from_slice(&auth(0, &[]));
        assert!(matches!(
            s.feed(&mut input, &mut out),
            Err(PgError::Protocol(_))
        ));
    }

    #[test]
    fn notices_are_skipped_and_errors_are_db() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(None), &mut out);
        let mut input = BytesMut::from(&frame(b'N', b"SWARNING\0C01000\0Mhm\0\0")[..]);
        input.extend_from_slice(&error_response("3D000"));
        let err = s.feed(&mut input, &mut out).unwrap_err();
        assert_eq!(err.sqlstate(), Some("3D000"));
        assert!(matches!(err, PgError::Db(ref e) if e.severity == "FATAL"));
    }

    #[test]
    fn oversized_message_refused() {
        let mut out = BytesMut::new();
        let mut s = Startup::new(&params(None), &mut out).with_max_message_len(100);
        let mut input = BytesMut::from(&[b'S', 0, 0, 1, 0][..]);
        assert!(matches!(
            s.feed(&mut input, &mut out),
            Err(PgError::Protocol(_))
        ));
    }
}

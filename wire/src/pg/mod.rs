//! PostgreSQL frontend protocol (v3), sans-I/O.
//!
//! The driver owns the socket and two buffers: bytes read from the server go
//! into an input `BytesMut`, bytes to send are appended to an output one.
//!
//! - [`startup`]: the StartupMessage and authentication (trust, cleartext,
//!   md5, SCRAM-SHA-256 without channel binding) up to the first
//!   ReadyForQuery, yielding a [`Session`].
//! - [`frontend`]: encoders for the simple and extended query protocols,
//!   COPY FROM STDIN, Terminate and CancelRequest. They can be pipelined
//!   freely into one buffer; a failing encoder leaves it untouched.
//! - [`backend`]: [`next_message`] frames one server message at a time with
//!   a length limit checked before the body is buffered.
//! - [`pipeline`]: a pipelined connection as a value: requests in, bytes
//!   out; backend bytes in, completions out, each tagged with its request.
//! - [`row`]: RowDescription columns and DataRow values with getters that
//!   check the column's type OID and format ([`types`]).
//! - [`error`]: server errors ([`DbError`], SQLSTATE and all) and ours
//!   ([`PgError`]).
//!
//! Message encoding and decoding comes from `postgres-protocol`; this module
//! adds the state, the limits and the typed access on top. Text is assumed to
//! be UTF-8: startup sets `client_encoding=UTF8`.

// PgError carries a DbError inline (the driver's contract); errors are rare,
// so the larger Result is cheaper than boxing every server error.

pub mod backend;
pub mod error;
pub mod frontend;
pub mod pipeline;
pub mod row;
pub mod startup;
pub mod types;

pub use backend::{message_name, next_message, Message, TxStatus, DEFAULT_MAX_MESSAGE_LEN};
pub use error::{DbError, PgError};
pub use pipeline::{Event, Param, Pipeline, RequestError, RequestId, Rows};
pub use row::{columns, Column, Row};
pub use startup::{ChannelBindingMode, Session, Startup, StartupParams};

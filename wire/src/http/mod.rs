//! HTTP/1.1 (RFC 9112) server-side codec: request heads, body framing,
//! response heads, the HTTP-date.
//!
//! The driver owns the buffers: it appends what the socket delivered to a
//! `BytesMut` and calls in here; complete items are split off the front of
//! that buffer (zero-copy), incomplete input is `Ok(None)`.

pub mod body;
pub mod date;
pub mod host;
pub mod request;
pub mod response;

pub use body::{BodyDecoder, BodyError, BodyEvent};
pub use date::HttpDate;
pub use request::{
    parse_head, parse_head_in_place, BodyKind, HeadError, HeadMeta, HeadView, Limits, Method,
    RequestHead, Version,
};
pub use response::{Framing, HeadEncoder, ResponseHead, StatusCode};

//! Sans-I/O codecs for ringside.
//!
//! Everything here takes bytes in and hands decisions and bytes out; nothing
//! here may touch a socket, a timer or a thread. The crate's manifest keeps it
//! that way: it depends on no runtime or socket crate (CI checks with
//! `cargo tree -p ringside-wire -e normal`).
#![forbid(unsafe_code)]

pub mod csv;
pub mod http;
pub mod pg;

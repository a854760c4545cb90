//! ringside: a thread-per-core io_uring HTTP/1.1 server.
//!
//! - [`runtime`]: pinned core threads, rings, SO_REUSEPORT listeners, shutdown.
//! - [`http`]: the connection driver over the sans-I/O codec in `ringside_wire`.
//! - [`pg`]: the PostgreSQL client: pipelined connections, a per-core pool.
//! - [`app`]: the routes (one table for the router and `/metrics`), the
//!   metrics, the schema.
//! - [`config`]: settings from flags and environment.

pub mod app;
pub mod config;
pub mod http;
pub mod pg;
pub mod runtime;

//! ringside: a thread-per-core io_uring HTTP/1.1 server that speaks
//! PostgreSQL itself. The `ringside` binary is the article's application;
//! this library is what it is built from, and what a service of your own
//! is built from.
//!
//! - [`runtime`]: pinned core threads, rings, SO_REUSEPORT listeners, shutdown.
//! - [`http`]: the connection driver over the sans-I/O codec in
//!   `ringside_wire`, the [`Service`](http::Service) trait, the
//!   [`Exchange`](http::Exchange) a handler answers through, and the
//!   transport seam (a socket, or an in-memory [`pipe`](http::pipe)).
//! - [`pg`]: the PostgreSQL client: pipelined connections, a per-core pool.
//! - [`app`]: the article's routes (one table for the router and
//!   `/metrics`), the metrics, the schema.
//! - [`config`]: settings from flags, environment and a TOML file.
//!
//! # Building a service
//!
//! A [`Service`](http::Service) is made once per core, on that core, by the
//! closure given to [`Server::start`](runtime::Server::start): it may hold
//! `Rc` state, and shares nothing with the other cores. Its `call` answers
//! one request through the [`Exchange`](http::Exchange): `respond` for a
//! whole body; `start_stream`, `send_chunk` and `finish_stream` for a body
//! produced as it goes (written when enough is queued, so a client that
//! reads slowly slows the handler); `body_chunk` to read a request body a
//! piece at a time (the socket is read only when asked, so a handler that
//! is slow to ask closes the client's TCP window: back-pressure).
//!
//! Rows need not be copied on their way: `respond_rendered` (and
//! `queue_rendered_chunk` in a stream) runs a renderer over the
//! [`Rows`](pg::Rows), which are views of the connection's PostgreSQL read
//! buffer, writing the body straight into the connection's write buffer;
//! the head with its Content-Length goes in front of it afterwards. The helpers in
//! [`app::text`] (HTML, JSON, CSV escaping, numbers, timestamps) write to
//! any [`Out`](http::Out); `/orders`, the CSV export and the TechEmpower
//! example render this way, with no allocation per request
//! (`tests/alloc.rs` counts them).
//!
//! Each core's [`Pool`](pg::Pool) pipelines the queries of all its requests
//! on a few connections: [`Pool::query`](pg::Pool::query) runs a
//! [`Statement`](pg::Statement) (prepared once per connection, under a
//! deadline, retried on another connection if its own dies and it is marked
//! `read_only`); [`Pool::exclusive`](pg::Pool::exclusive) lends a
//! connection for a transaction or a COPY, from the few the pool keeps for
//! that (`max_exclusive`), so the pipelined reads always keep the others.
//!
//! ```no_run
//! use std::rc::Rc;
//! use ringside::config::Config;
//! use ringside::http::{Exchange, HttpCore, Service, StatusCode};
//! use ringside::runtime::{CoreCtx, Server};
//!
//! struct Hello;
//!
//! impl Service for Hello {
//!     async fn call(&self, ex: &mut Exchange<'_, '_>) {
//!         match ex.path() {
//!             "/hello" => ex.respond(StatusCode::OK, b"text/plain", b"hello\n"),
//!             _ => ex.respond_error(StatusCode::NOT_FOUND, "no such route"),
//!         }
//!     }
//! }
//!
//! let config = Config::default();
//! let server = Server::start(&config, |core: Rc<CoreCtx>, cfg: &Config| {
//!     HttpCore::new(core, cfg, Hello)
//! })
//! .expect("listening");
//! server.join().expect("stopped");
//! ```
//!
//! `examples/notes.rs` is a complete small service (its own routes, a
//! query, a streamed response, a streamed upload) with tests that drive it
//! over the in-memory pipe: [`HttpCore::serve_stream`](http::HttpCore::serve_stream)
//! serves one end of a [`pipe`](http::pipe), the test writes requests into
//! the other and reads the answers, with no socket and no port.

pub mod app;
pub mod config;
pub mod http;
pub mod pg;
pub mod runtime;
pub mod tls;

//! The HTTP/1.1 connection driver: the thin I/O layer between a core's
//! sockets and the sans-I/O codec in `ringside_wire::http`.
//!
//! It knows no routes: requests go to a [`Service`] made on each core.

mod admission;
mod bufpool;
mod conn;
mod exchange;
mod idle;
mod io;
pub mod render;
pub mod stream;
mod tls;

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use monoio::net::TcpStream;
use ringside_wire::http::{HeadEncoder, HttpDate, Limits};

pub use bufpool::BufPool;
pub use exchange::{BodyError, Exchange};
pub use render::{BodyOut, Out};
pub use ringside_wire::http::{Method, RequestHead, StatusCode, Version};
pub use stream::{pipe, PipeEnd, Stream};

use crate::config::Config;
use crate::runtime::{ConnectionHandler, CoreCtx, OpenGuard};

/// Answers requests. One is made per core, on that core, so it may hold
/// `Rc` state. `call` writes exactly one response through the exchange.
pub trait Service: 'static {
    fn call<'a>(&'a self, ex: &'a mut Exchange<'_, '_>) -> impl Future<Output = ()> + 'a;
}

/// The HTTP settings a connection needs, copied out of the configuration.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub limits: Limits,
    pub max_body_bytes: u64,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub write_timeout: Duration,
    /// Flush queued responses once they pass this many bytes, even if more
    /// pipelined requests wait: bounds a connection's write buffer.
    pub write_high_water: usize,
    /// Least average rate of a request body, in bytes per second spent
    /// waiting for it, once `body_rate_grace` has passed (0: no check).
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    /// A request body the handler left unread is read and dropped up to this
    /// size to keep the connection; past it the connection is closed.
    pub max_discard_bytes: u64,
    /// Longest wait of a request for room among the core's requests at
    /// work (`admission.rs`); past it, it goes on regardless.
    pub admission_wait: Duration,
}

impl HttpSettings {
    pub fn from_config(c: &Config) -> Self {
        HttpSettings {
            limits: Limits {
                max_request_line: c.max_request_line,
                max_head_bytes: c.max_head_bytes,
                max_headers: c.max_headers,
            },
            max_body_bytes: c.max_body_bytes,
            head_timeout: c.head_timeout,
            body_timeout: c.body_timeout,
            keepalive_timeout: c.keepalive_timeout,
            write_timeout: c.write_timeout,
            min_body_rate: c.min_body_rate,
            body_rate_grace: c.body_rate_grace,
            write_high_water: 64 * 1024,
            max_discard_bytes: 64 * 1024,
            // The room is, by default, the database's: a request waits for
            // it no longer than for a database slot (then the pool answers
            // 503 if it must), and never longer than its head may take.
            admission_wait: c.db_wait_timeout.min(c.head_timeout),
        }
    }
}

/// A core's HTTP state: settings, buffer pool, Date cache, the service.
pub struct HttpCore<S> {
    shared: Rc<io::Shared>,
    /// HTTPS state, when a certificate is configured.
    tls: Option<crate::tls::CoreTls>,
    /// Which of the runtime's listeners (`--listen`, `--listen-tls`) speak TLS.
    tls_listener: [bool; 2],
    /// Idle keep-alive connections, parked without a task.
    idle: idle::IdleSet,
    pub service: S,
}

impl<S: Service> HttpCore<S> {
    /// Builds the core's HTTP state and starts its once-a-second chores on
    /// this core: the Date cache (no clock read per request, no state shared
    /// between cores) and trimming the buffer pool after a burst.
    pub fn new(core: Rc<CoreCtx>, config: &Config, service: S) -> Rc<Self> {
        Self::with_tls(core, config, service, None)
    }

    /// As [`HttpCore::new`], serving HTTPS with `certs` on `--listen-tls`,
    /// or on `--listen` when there is no `--listen-tls`.
    pub fn with_tls(
        core: Rc<CoreCtx>,
        config: &Config,
        service: S,
        certs: Option<Arc<crate::tls::CertStore>>,
    ) -> Rc<Self> {
        let tls = certs.and_then(|store| {
            crate::tls::CoreTls::new(store, config)
                .inspect_err(|e| tracing::error!("TLS off on core {}: {e}", core.index))
                .ok()
        });
        let tls_listener = match (&tls, config.listen_tls) {
            (None, _) => [false, false],
            (Some(_), Some(_)) => [false, true],
            (Some(_), None) => [true, false],
        };
        let settings = HttpSettings::from_config(config);
        core.frames.set_max_free(config.pooled_buffers_per_core);
        let buffers = BufPool::new(config.read_buffer_bytes, config.pooled_buffers_per_core)
            .keep_up_to(settings.write_high_water);
        match config.max_active_requests_per_core {
            Some(limit) => core.request_limit.set_fixed(limit),
            None => core
                .request_limit
                .tune_for_pool(config.db_pool_size, config.db_pipeline_depth),
        }
        let shared = Rc::new(io::Shared {
            core: core.clone(),
            admission: Rc::new(admission::Admission::new(
                core.request_limit.clone(),
                config.max_connections_per_core,
            )),
            settings,
            buffers,
            heads: RefCell::new(HeadEncoder::new(HttpDate::from_system_time(
                SystemTime::now(),
            ))),
        });
        let weak = Rc::downgrade(&shared);
        monoio::spawn(async move {
            let mut tick = monoio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(s) = weak.upgrade() else { break };
                s.heads
                    .borrow_mut()
                    .set_date(HttpDate::from_system_time(SystemTime::now()));
                // A probe of the request limit ends by its bound even when
                // no statement comes back (runtime/limit_tuner.rs).
                s.core.request_limit.tick();
                s.core
                    .note_released(s.buffers.trim() + s.core.frames.trim());
            }
        });
        let http = Rc::new(HttpCore {
            tls,
            tls_listener,
            idle: idle::new_set(shared.core.clone()),
            shared,
            service,
        });
        http.shared
            .admission
            .set_resume(idle::resume_in_turn(&http));
        monoio::spawn(idle::watch(Rc::downgrade(&http), http.shared.core.clone()));
        http
    }

    pub fn core(&self) -> &Rc<CoreCtx> {
        &self.shared.core
    }

    pub fn buffers(&self) -> &BufPool {
        &self.shared.buffers
    }
}

impl<S: Service> HttpCore<S> {
    /// Serves one connection over any transport, an in-memory
    /// [`stream::pipe`] included: how tests drive the connection loop and a
    /// service without a socket.
    pub fn serve_stream(self: &Rc<Self>, stream: Stream) -> impl Future<Output = ()> + 'static {
        let open = OpenGuard::new(self.core());
        conn::serve(self.clone(), stream, open, conn::Start::Accepted)
    }
}

impl<S: Service> ConnectionHandler for HttpCore<S> {
    fn serve(
        self: &Rc<Self>,
        stream: TcpStream,
        open: OpenGuard,
        listener: usize,
    ) -> impl Future<Output = ()> + 'static {
        let http = self.clone();
        let tls = self.tls_listener.get(listener).copied().unwrap_or(false);
        // The two kinds differ in size: an enum of them would make every
        // plain connection's task as large as an HTTPS one's.
        let fut: std::pin::Pin<Box<dyn Future<Output = ()>>> = if tls {
            Box::pin(conn::serve_tls(http, stream, open))
        } else {
            Box::pin(conn::serve(
                http,
                Stream::Tcp(stream),
                open,
                conn::Start::Accepted,
            ))
        };
        fut
    }

    fn refuse(
        self: &Rc<Self>,
        stream: TcpStream,
        listener: usize,
    ) -> impl Future<Output = ()> + 'static {
        // A 503 in plain text means nothing on a TLS port: just close.
        let tls = self.tls_listener.get(listener).copied().unwrap_or(false);
        let http = self.clone();
        async move {
            if !tls {
                conn::refuse(http, Stream::Tcp(stream)).await;
            }
        }
    }
}

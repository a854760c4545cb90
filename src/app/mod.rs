//! The routes. Handlers see requests through an [`Exchange`] and never
//! touch a socket; they reach PostgreSQL through their core's pool.

mod contacts;
pub mod metrics;
mod orders;
pub mod routes;
pub mod schema;
pub mod text;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::http::{Exchange, Service, StatusCode};
use crate::pg::{PgConfig, Pool, PoolSettings, QueryError, ReplicaTarget, Router, RouterSettings};
use crate::runtime::{CoreCtx, LogLimit};
use metrics::{CoreMetrics, ScrapeRequest, Snapshot};
use routes::RouteId;

const TEXT: &[u8] = b"text/plain; charset=utf-8";

/// Where the database is, resolved before the cores start (no DNS lookup
/// ever runs on a core). `Send`: each core makes its own pool from it.
#[derive(Clone, Debug)]
pub struct Database {
    pub config: PgConfig,
    pub addrs: Vec<SocketAddr>,
    pub pool: PoolSettings,
    /// Streaming replicas for read-only statements (`--db-replica`).
    pub replicas: Vec<ReplicaTarget>,
    pub routing: RouterSettings,
}

impl Database {
    /// From `database-url` (flag, DATABASE_URL or the config file) over
    /// the PG* variables, when either is set; `None` without a database.
    pub fn from_config(config: &Config) -> Result<Option<Database>, String> {
        let url = config.database_url.clone();
        let configured = url.is_some()
            || ["PGHOST", "PGDATABASE", "PGUSER"]
                .iter()
                .any(|k| std::env::var_os(k).is_some());
        if !configured {
            if !config.db_replicas.is_empty() {
                return Err(
                    "--db-replica needs a primary: set DATABASE_URL (or the PG* variables)".into(),
                );
            }
            return Ok(None);
        }
        let pg = PgConfig::from_env(|k| match k {
            "DATABASE_URL" => url.clone(),
            _ => std::env::var(k).ok(),
        })?;
        Ok(Some(Database::new(pg, config)?))
    }

    pub fn new(pg: PgConfig, config: &Config) -> Result<Database, String> {
        let addrs = pg.resolve()?;
        // Certificate files are read here, at start-up, never on a core.
        crate::pg::conn::preload_tls(&pg)?;
        let pool = PoolSettings::from_config(config);
        let mut replicas = Vec::with_capacity(config.db_replicas.len());
        for url in &config.db_replicas {
            // Each replica URL over the PG* variables, like DATABASE_URL.
            let replica = PgConfig::from_env(|k| match k {
                "DATABASE_URL" => Some(url.clone()),
                _ => std::env::var(k).ok(),
            })
            .map_err(|e| {
                format!(
                    "--db-replica {}: {e}",
                    crate::config::redact_url_password(url)
                )
            })?;
            let addrs = replica.resolve()?;
            crate::pg::conn::preload_tls(&replica)?;
            replicas.push(ReplicaTarget {
                name: replica.describe_host(),
                config: replica,
                addrs,
            });
        }
        let replica_pool = PoolSettings {
            connections: config.db_replica_pool_size,
            // Exports on a replica hold a connection as on the primary,
            // always leaving one for the pipelined reads.
            max_exclusive: pool
                .max_exclusive
                .min(config.db_replica_pool_size.saturating_sub(1)),
            fail_fast: true,
            ..pool.clone()
        };
        let primary_name = pg.describe_host();
        Ok(Database {
            config: pg,
            addrs,
            routing: RouterSettings {
                max_lag: config.db_max_replica_lag,
                check_interval: config.db_replica_check_interval,
                fallback: config.db_replica_fallback,
                replica_pool,
                primary_name,
            },
            pool,
            replicas,
        })
    }
}

/// Per-route limits, copied from the configuration.
#[derive(Clone, Debug)]
pub struct AppSettings {
    pub max_upload_bytes: u64,
    pub upload_chunk_bytes: usize,
    /// Total time an upload or export may take.
    pub upload_timeout: Duration,
    pub db_query_timeout: Duration,
    pub export_batch_rows: usize,
}

impl AppSettings {
    pub fn from_config(c: &Config) -> Self {
        AppSettings {
            max_upload_bytes: c.max_upload_bytes,
            upload_chunk_bytes: c.upload_chunk_bytes,
            upload_timeout: c.upload_timeout,
            db_query_timeout: c.db_query_timeout,
            export_batch_rows: c.export_batch_rows,
        }
    }
}

/// How the cores reach each other for a metrics scrape.
pub struct Scrape {
    /// This core's inbox.
    pub inbox: flume::Receiver<ScrapeRequest>,
    /// Every core's inbox, this one's included.
    pub cores: Arc<Vec<flume::Sender<ScrapeRequest>>>,
}

/// The application, one per core.
pub struct App {
    core: Rc<CoreCtx>,
    db: Option<Rc<Router>>,
    settings: AppSettings,
    metrics: Rc<CoreMetrics>,
    scrape_cores: Arc<Vec<flume::Sender<ScrapeRequest>>>,
    errors_logged: LogLimit,
}

impl App {
    /// Makes the core's app; with a database, its pool starts connecting.
    /// Also starts the task that answers other cores' metrics scrapes.
    pub fn new(
        core: Rc<CoreCtx>,
        db: Option<&Database>,
        settings: AppSettings,
        scrape: Option<Scrape>,
    ) -> Self {
        let db = db.map(|d| {
            let primary = Pool::new(d.config.clone(), d.addrs.clone(), d.pool.clone());
            let router = Router::new(primary, &d.replicas, d.routing.clone());
            // Query deadlines keep time on a loaded core too.
            for pool in router.pools() {
                core.also_tick(pool.deadline_table());
                // The limit on requests at work may be tuned to them.
                pool.report_round_trips_to(core.request_limit.clone());
            }
            router
        });
        let metrics = Rc::new(CoreMetrics::default());
        let scrape_cores = match scrape {
            Some(s) => {
                let (core, metrics, db) = (core.clone(), metrics.clone(), db.clone());
                monoio::spawn(async move {
                    while let Ok(reply) = s.inbox.recv_async().await {
                        let pools = db.as_ref().map(|d| d.reports()).unwrap_or_default();
                        let _ = reply.try_send(Snapshot::of(&core, &metrics, pools));
                    }
                });
                s.cores
            }
            None => Arc::new(Vec::new()),
        };
        App {
            core,
            db,
            settings,
            metrics,
            scrape_cores,
            errors_logged: LogLimit::default(),
        }
    }

    /// The primary's pool (writes, COPY, transactions).
    pub fn pool(&self) -> Option<&Rc<Pool>> {
        self.db.as_ref().map(|d| d.primary())
    }

    /// The primary and the replicas, for reads that may go to either.
    pub fn router(&self) -> Option<&Rc<Router>> {
        self.db.as_ref()
    }
}

impl Service for App {
    async fn call(&self, ex: &mut Exchange<'_, '_>) {
        let route = routes::find(ex.path_bytes());
        // Most answers are ready on the first poll, without waiting on
        // anything: timing those would cost two clock reads per request (a
        // tenth of a pipelined /plaintext) to fill a bucket known in
        // advance. The clock starts when the handler first has to wait.
        let mut started = None;
        {
            let mut handler = std::pin::pin!(self.route(ex, route));
            std::future::poll_fn(|cx| {
                let poll = std::future::Future::poll(handler.as_mut(), cx);
                if poll.is_pending() {
                    started.get_or_insert_with(Instant::now);
                }
                poll
            })
            .await;
        }
        let elapsed = started.map_or(Duration::ZERO, |s: Instant| s.elapsed());
        if let Some(status) = ex.status() {
            self.metrics.record(route.index(), status.0, elapsed);
        }
    }
}

impl App {
    /// Routes a request. Handlers that wait on the database or the body
    /// run in a frame of the core's pool: their state exists only while
    /// they run, the future a connection keeps between requests stays
    /// small, and no request allocates one.
    async fn route(&self, ex: &mut Exchange<'_, '_>, route: &'static routes::Route) {
        let frames = &self.core.frames;
        if route.id != RouteId::Other && !route.answers(ex.method()) {
            return method_not_allowed(ex, route.allow);
        }
        match route.id {
            RouteId::Plaintext => ex.respond(StatusCode::OK, TEXT, b"Hello, World!"),
            RouteId::Healthz => ex.respond(StatusCode::OK, TEXT, b"ok\n"),
            RouteId::Echo => frames.boxed_with(|| echo(ex)).await,
            RouteId::Orders => frames.boxed_with(|| orders::list(self, ex)).await,
            RouteId::Export => frames.boxed_with(|| orders::export(self, ex)).await,
            RouteId::Contacts => frames.boxed_with(|| contacts::upload(self, ex)).await,
            RouteId::Metrics => frames.boxed_with(|| self.metrics_page(ex)).await,
            RouteId::Readyz => self.readiness(ex),
            RouteId::Other => ex.respond_error(StatusCode::NOT_FOUND, "no such route"),
        }
    }

    /// Every core's counters, gathered now.
    async fn metrics_page(&self, ex: &mut Exchange<'_, '_>) {
        let (mut snaps, missing) = if self.scrape_cores.is_empty() {
            (Vec::new(), 0)
        } else {
            metrics::gather(&self.scrape_cores, Duration::from_secs(1)).await
        };
        if snaps.is_empty() {
            let pools = self.db.as_ref().map(|d| d.reports()).unwrap_or_default();
            snaps.push(Snapshot::of(&self.core, &self.metrics, pools));
        }
        let text = metrics::render(&snaps, missing);
        ex.respond(
            StatusCode::OK,
            b"text/plain; version=0.0.4; charset=utf-8",
            text.as_bytes(),
        );
    }

    /// Ready while this core accepts and the primary answers (whatever the
    /// replicas do: reads fall back to the primary); 503 while draining (so
    /// a load balancer stops sending before we stop).
    fn readiness(&self, ex: &mut Exchange<'_, '_>) {
        if self.core.draining() {
            return unavailable(ex, "draining");
        }
        if let Some(pool) = self.pool() {
            if !pool.is_up() {
                return unavailable(ex, "database unavailable");
            }
        }
        ex.respond(StatusCode::OK, TEXT, b"ready\n");
    }
}

fn method_not_allowed(ex: &mut Exchange<'_, '_>, allow: &[u8]) {
    let body = b"405 Method Not Allowed\n";
    ex.respond_with(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        &[("Allow", allow)],
        body,
    );
}

/// The primary's pool, or a 503 when the server runs without a database.
fn pool_or_503<'a>(app: &'a App, ex: &mut Exchange<'_, '_>) -> Option<&'a Rc<Pool>> {
    router_or_503(app, ex).map(|d| d.primary())
}

/// The router (reads may go to a replica), or a 503 without a database.
fn router_or_503<'a>(app: &'a App, ex: &mut Exchange<'_, '_>) -> Option<&'a Rc<Router>> {
    if app.db.is_none() {
        CoreMetrics::add(&app.metrics.db_shed, 1);
        unavailable(ex, "no database configured (set DATABASE_URL)");
    }
    app.db.as_ref()
}

/// 503 with Retry-After and a short reason.
pub(crate) fn unavailable(ex: &mut Exchange<'_, '_>, why: &str) {
    let body = format!("503 Service Unavailable: {why}\n");
    ex.respond_with(
        StatusCode::SERVICE_UNAVAILABLE,
        TEXT,
        &[("Retry-After", b"1")],
        body.as_bytes(),
    );
}

/// Answers a database failure: transient ones (down, busy, timed out) with
/// 503 and Retry-After, anything else with 500. The message is short and
/// never includes credentials.
fn respond_db_error(app: &App, ex: &mut Exchange<'_, '_>, e: &QueryError) {
    if let Some(suppressed) = app.errors_logged.admit() {
        // `e` names the database by host and user only: no password.
        tracing::warn!(
            core = app.core.index,
            path = ex.path(),
            suppressed,
            "database error: {e}"
        );
    }
    if e.is_transient() {
        CoreMetrics::add(&app.metrics.db_shed, 1);
        let why = match e {
            QueryError::Busy => "database busy",
            QueryError::Timeout => "database timed out",
            _ => "database unavailable",
        };
        unavailable(ex, why);
    } else {
        ex.respond_error(StatusCode::INTERNAL_ERROR, "database error");
    }
}

/// Answers with the request body, which is bounded by the body limit
/// (`--max-body-bytes`). A diagnostic route: it shows what the server
/// decoded (chunked framing, 100-continue) byte for byte.
async fn echo(ex: &mut Exchange<'_, '_>) {
    let mut body = Vec::new();
    loop {
        match ex.body_chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return ex.respond_body_error(e),
        }
    }
    let ctype = ex
        .head()
        .header("content-type")
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| b"application/octet-stream".to_vec());
    ex.respond(StatusCode::OK, &ctype, &body);
}

/// The value of `name` in a query string (no percent-decoding: the values
/// we read are numbers).
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

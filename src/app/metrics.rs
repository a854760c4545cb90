//! Metrics: counted per core in plain `Cell`s (no atomics, no lock on the
//! request path), gathered from every core only when `/metrics` is
//! scraped, and rendered in the Prometheus text format.
//!
//! The scrape is the one cross-core exchange besides start and stop: the
//! core that serves it sends a request to every core (itself included)
//! over a bounded channel and each core answers with a snapshot of its own
//! counters.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::routes::ROUTES;
use crate::pg::{PoolReport, PoolStats};

/// Request latency bucket bounds, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A core's counters. Each is written by its own core only.
#[derive(Default)]
pub struct CoreMetrics {
    /// [route][status class 1xx..5xx]
    requests: [[Cell<u64>; 5]; ROUTES.len()],
    latency_buckets: [Cell<u64>; LATENCY_BUCKETS.len()],
    latency_count: Cell<u64>,
    latency_sum_micros: Cell<u64>,
    /// Requests answered 503 because the database or its pool could not serve them.
    pub db_shed: Cell<u64>,
    pub rows_imported: Cell<u64>,
    pub bytes_imported: Cell<u64>,
    pub imports_failed: Cell<u64>,
}

impl CoreMetrics {
    pub fn record(&self, route: usize, status: u16, elapsed: Duration) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        let c = &self.requests[route.min(ROUTES.len() - 1)][class];
        c.set(c.get() + 1);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            let b = &self.latency_buckets[i];
            b.set(b.get() + 1);
        }
        self.latency_count.set(self.latency_count.get() + 1);
        self.latency_sum_micros
            .set(self.latency_sum_micros.get() + elapsed.as_micros() as u64);
    }

    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }
}

/// What one core reports at a scrape (plain data: it crosses threads).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub core: usize,
    pub cpu: usize,
    pub driver: &'static str,
    pub draining: bool,
    pub open_connections: u64,
    pub parked_connections: u64,
    pub requests_waiting_parked: u64,
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub tls_failed: u64,
    pub tls_timed_out: u64,
    pub tls_refused: u64,
    pub accepted: u64,
    pub shed_connections: u64,
    pub fd_exhausted: u64,
    pub refused_no_fd: u64,
    pub connection_panics: u64,
    pub requests_queued: u64,
    pub active_request_limit: u64,
    pub requests: Vec<[u64; 5]>,
    /// Per bucket, not cumulative.
    pub latency_buckets: Vec<u64>,
    pub latency_count: u64,
    pub latency_sum_micros: u64,
    pub db_shed: u64,
    pub rows_imported: u64,
    pub bytes_imported: u64,
    pub imports_failed: u64,
    /// The primary's pool first, then each replica's (empty without a
    /// database).
    pub pools: Vec<PoolReport>,
}

impl Snapshot {
    pub fn of(core: &crate::runtime::CoreCtx, m: &CoreMetrics, pools: Vec<PoolReport>) -> Snapshot {
        Snapshot {
            core: core.index,
            cpu: core.cpu,
            driver: match core.driver {
                crate::runtime::IoDriver::Uring => "io_uring",
                crate::runtime::IoDriver::Epoll => "epoll",
            },
            draining: core.draining(),
            open_connections: core.open_connections() as u64,
            parked_connections: core.parked_connections() as u64,
            requests_waiting_parked: core.requests_waiting_parked() as u64,
            tls_handshakes: core.tls.handshakes.get(),
            tls_resumed: core.tls.resumed.get(),
            tls_failed: core.tls.failed.get(),
            tls_timed_out: core.tls.timed_out.get(),
            tls_refused: core.tls.refused.get(),
            accepted: core.accepted(),
            shed_connections: core.shed(),
            fd_exhausted: core.fd_exhausted(),
            refused_no_fd: core.refused_no_fd(),
            connection_panics: core.connection_panics(),
            requests_queued: core.requests_queued(),
            active_request_limit: core.request_limit.get() as u64,
            requests: m
                .requests
                .iter()
                .map(|r| std::array::from_fn(|i| r[i].get()))
                .collect(),
            latency_buckets: m.latency_buckets.iter().map(Cell::get).collect(),
            latency_count: m.latency_count.get(),
            latency_sum_micros: m.latency_sum_micros.get(),
            db_shed: m.db_shed.get(),
            rows_imported: m.rows_imported.get(),
            bytes_imported: m.bytes_imported.get(),
            imports_failed: m.imports_failed.get(),
            pools,
        }
    }
}

/// `core="0",pool="replica1",host="10.0.0.21:5432"`: a pool's labels (the
/// host escaped as Prometheus label values need).
fn pool_labels(core: usize, p: &PoolReport) -> String {
    let host = p
        .host
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    format!("core=\"{core}\",pool=\"{}\",host=\"{host}\"", p.name)
}

/// One metric family rendered from a getter: name, type, help, value.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// A scrape request: where to send the snapshot.
pub type ScrapeRequest = flume::Sender<Snapshot>;

/// The channels between cores for scrapes, made before the cores start.
/// Each core takes its own receiver once; every core holds all senders.
pub struct Hub {
    pub senders: Arc<Vec<flume::Sender<ScrapeRequest>>>,
    receivers: Mutex<Vec<Option<flume::Receiver<ScrapeRequest>>>>,
}

impl Hub {
    pub fn new(cores: usize) -> Arc<Hub> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..cores).map(|_| flume::bounded(4)).unzip();
        Arc::new(Hub {
            senders: Arc::new(senders),
            receivers: Mutex::new(receivers.into_iter().map(Some).collect()),
        })
    }

    /// The receiver of core `index` (start-up only).
    pub fn take_receiver(&self, index: usize) -> Option<flume::Receiver<ScrapeRequest>> {
        self.receivers
            .lock()
            .ok()?
            .get_mut(index)
            .and_then(Option::take)
    }
}

/// Asks every core for its snapshot; cores that do not answer within
/// `limit` are left out (the scrape says so in `ringside_scrape_missing_cores`).
pub async fn gather(
    senders: &[flume::Sender<ScrapeRequest>],
    limit: Duration,
) -> (Vec<Snapshot>, usize) {
    let (tx, rx) = flume::bounded(senders.len());
    let mut asked = 0;
    for s in senders {
        if s.try_send(tx.clone()).is_ok() {
            asked += 1;
        }
    }
    drop(tx);
    let mut out = Vec::with_capacity(asked);
    let deadline = monoio::time::Instant::now() + limit;
    while out.len() < asked {
        match monoio::time::timeout_at(deadline, rx.recv_async()).await {
            Ok(Ok(s)) => out.push(s),
            _ => break,
        }
    }
    out.sort_by_key(|s| s.core);
    let missing = senders.len() - out.len();
    (out, missing)
}

/// Renders the snapshots in the Prometheus text exposition format.
pub fn render(snaps: &[Snapshot], missing: usize) -> String {
    let mut o = String::with_capacity(8192);
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };

    family(
        &mut o,
        "ringside_requests_total",
        "counter",
        "Requests answered, by route and status class.",
    );
    for s in snaps {
        for (r, classes) in s.requests.iter().enumerate() {
            for (c, n) in classes.iter().enumerate() {
                if *n > 0 {
                    let _ = writeln!(
                        o,
                        "ringside_requests_total{{core=\"{}\",route=\"{}\",status=\"{}xx\"}} {n}",
                        s.core,
                        ROUTES[r].label,
                        c + 1
                    );
                }
            }
        }
    }

    family(
        &mut o,
        "ringside_request_duration_seconds",
        "histogram",
        "Time from a request's head to its response, all routes.",
    );
    for s in snaps {
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += s.latency_buckets.get(i).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "ringside_request_duration_seconds_bucket{{core=\"{}\",le=\"{b}\"}} {cumulative}",
                s.core
            );
        }
        let _ = writeln!(
            o,
            "ringside_request_duration_seconds_bucket{{core=\"{}\",le=\"+Inf\"}} {}",
            s.core, s.latency_count
        );
        let _ = writeln!(
            o,
            "ringside_request_duration_seconds_sum{{core=\"{}\"}} {}",
            s.core,
            s.latency_sum_micros as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "ringside_request_duration_seconds_count{{core=\"{}\"}} {}",
            s.core, s.latency_count
        );
    }

    let per_core: [Family<Snapshot>; 20] = [
        (
            "ringside_open_connections",
            "gauge",
            "Open client connections.",
            |s| s.open_connections,
        ),
        (
            "ringside_idle_parked_connections",
            "gauge",
            "Open keep-alive connections parked idle, with no task (part of the open ones).",
            |s| s.parked_connections,
        ),
        (
            "ringside_tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            |s| s.tls_handshakes,
        ),
        (
            "ringside_tls_resumed_total",
            "counter",
            "TLS handshakes that resumed a session (part of the completed ones).",
            |s| s.tls_resumed,
        ),
        (
            "ringside_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed: bad input, unsupported version, unknown name, or the client gave up.",
            |s| s.tls_failed,
        ),
        (
            "ringside_tls_handshake_timeouts_total",
            "counter",
            "TLS handshakes cut at --tls-handshake-timeout.",
            |s| s.tls_timed_out,
        ),
        (
            "ringside_tls_refused_total",
            "counter",
            "TLS connections closed at once: the core had --max-tls-handshakes-per-core in progress.",
            |s| s.tls_refused,
        ),
        (
            "ringside_accepted_connections_total",
            "counter",
            "Connections accepted (SO_REUSEPORT spreads them over the cores).",
            |s| s.accepted,
        ),
        (
            "ringside_shed_connections_total",
            "counter",
            "Connections refused with 503 past the per-core limit.",
            |s| s.shed_connections,
        ),
        (
            "ringside_accept_out_of_descriptors_total",
            "counter",
            "Accepts that failed because the process or system ran out of file descriptors.",
            |s| s.fd_exhausted,
        ),
        (
            "ringside_refused_no_descriptor_total",
            "counter",
            "Connections answered 503 and closed because no file descriptor was left for them.",
            |s| s.refused_no_fd,
        ),
        (
            "ringside_connection_panics_total",
            "counter",
            "Connections closed because their task panicked (a bug: the log has the message); the core served on.",
            |s| s.connection_panics,
        ),
        (
            "ringside_requests_queued_total",
            "counter",
            "Requests that waited unread for room among the core's requests at work (--max-active-requests-per-core).",
            |s| s.requests_queued,
        ),
        (
            "ringside_requests_waiting_parked",
            "gauge",
            "Requests waiting unread for room among the core's requests at work, their connections parked with no task (the others wait in their tasks).",
            |s| s.requests_waiting_parked,
        ),
        (
            "ringside_active_request_limit",
            "gauge",
            "Requests the core works on at once before the next wait unread (0: no limit); moves with the database round trips when --max-active-requests-per-core is auto.",
            |s| s.active_request_limit,
        ),
        (
            "ringside_db_shed_requests_total",
            "counter",
            "Requests answered 503 because the database or its pool could not serve them.",
            |s| s.db_shed,
        ),
        (
            "ringside_imported_rows_total",
            "counter",
            "Rows committed by CSV uploads.",
            |s| s.rows_imported,
        ),
        (
            "ringside_imported_bytes_total",
            "counter",
            "Bytes of committed CSV uploads.",
            |s| s.bytes_imported,
        ),
        (
            "ringside_failed_imports_total",
            "counter",
            "CSV uploads rolled back.",
            |s| s.imports_failed,
        ),
        (
            "ringside_draining",
            "gauge",
            "1 while the core drains for shutdown.",
            |s| u64::from(s.draining),
        ),
    ];
    for (name, kind, help, get) in per_core {
        family(&mut o, name, kind, help);
        for s in snaps {
            let _ = writeln!(o, "{name}{{core=\"{}\"}} {}", s.core, get(s));
        }
    }

    family(
        &mut o,
        "ringside_io_driver",
        "gauge",
        "The io driver each core runs (1 for the one in use).",
    );
    for s in snaps {
        let _ = writeln!(
            o,
            "ringside_io_driver{{core=\"{}\",cpu=\"{}\",driver=\"{}\"}} 1",
            s.core, s.cpu, s.driver
        );
    }

    let pool: [Family<PoolStats>; 13] = [
        (
            "ringside_db_pool_size",
            "gauge",
            "Connections the pool keeps.",
            |p| p.size as u64,
        ),
        (
            "ringside_db_pool_ready",
            "gauge",
            "Connections up and usable.",
            |p| p.ready as u64,
        ),
        (
            "ringside_db_pool_in_use",
            "gauge",
            "Queries in flight on the pool's connections.",
            |p| p.in_flight as u64,
        ),
        (
            "ringside_db_pool_waiting",
            "gauge",
            "Requests waiting for a slot.",
            |p| p.waiting as u64,
        ),
        (
            "ringside_db_errors_total",
            "counter",
            "Database calls that failed.",
            |p| p.errors,
        ),
        (
            "ringside_db_coalesced_total",
            "counter",
            "Requests answered by an identical read's execution (--db-coalesce).",
            |p| p.coalesced,
        ),
        (
            "ringside_db_batch_retries_total",
            "counter",
            "Batched statements run again alone after another in their batch failed.",
            |p| p.batch_retries,
        ),
        (
            "ringside_db_reconnects_total",
            "counter",
            "Connections replaced after breaking.",
            |p| p.reconnects,
        ),
        (
            "ringside_db_timeouts_total",
            "counter",
            "Queries cancelled at their deadline.",
            |p| p.timeouts,
        ),
        (
            "ringside_db_pool_exclusive",
            "gauge",
            "Connections held by one caller (uploads, exports), at most --max-uploads-per-core.",
            |p| p.exclusive as u64,
        ),
        (
            "ringside_db_pool_exclusive_waiting",
            "gauge",
            "Uploads and exports waiting for a connection of their own.",
            |p| p.exclusive_waiting as u64,
        ),
        (
            "ringside_db_read_retries_total",
            "counter",
            "Read-only statements run again because their connection broke before the answer.",
            |p| p.retries,
        ),
        (
            "ringside_db_busy_total",
            "counter",
            "Requests refused because the pool was full.",
            |p| p.busy,
        ),
    ];
    if snaps.iter().any(|s| !s.pools.is_empty()) {
        for (name, kind, help, get) in pool {
            family(&mut o, name, kind, help);
            for s in snaps {
                for p in &s.pools {
                    let _ = writeln!(o, "{name}{{{}}} {}", pool_labels(s.core, p), get(&p.stats));
                }
            }
        }
        let routing: [Family<PoolReport>; 3] = [
            (
                "ringside_db_routed_reads_total",
                "counter",
                "Read-only statements sent to each pool (the primary, or a replica).",
                |p| p.routed_reads,
            ),
            (
                "ringside_db_pool_serving",
                "gauge",
                "1 while the pool takes reads (a replica: up, and within --db-max-replica-lag).",
                |p| u64::from(p.serving),
            ),
            (
                "ringside_db_replica_failovers_total",
                "counter",
                "Reads run again elsewhere after the replica failed them.",
                |p| p.failovers,
            ),
        ];
        for (name, kind, help, get) in routing {
            family(&mut o, name, kind, help);
            for s in snaps {
                for p in &s.pools {
                    let _ = writeln!(o, "{name}{{{}}} {}", pool_labels(s.core, p), get(p));
                }
            }
        }
        if snaps.iter().any(|s| s.pools.len() > 1) {
            family(
                &mut o,
                "ringside_db_replica_lag_seconds",
                "gauge",
                "Each replica's last sampled replay lag (absent while unknown).",
            );
            for s in snaps {
                for p in s.pools.iter().skip(1) {
                    if let Some(lag) = p.lag {
                        let _ = writeln!(
                            o,
                            "ringside_db_replica_lag_seconds{{{}}} {:.3}",
                            pool_labels(s.core, p),
                            lag.as_secs_f64()
                        );
                    }
                }
            }
        }
    }

    family(
        &mut o,
        "ringside_scrape_missing_cores",
        "gauge",
        "Cores that did not answer this scrape in time.",
    );
    let _ = writeln!(o, "ringside_scrape_missing_cores {missing}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = CoreMetrics::default();
        m.record(0, 200, Duration::from_micros(300));
        m.record(0, 200, Duration::from_millis(3));
        m.record(3, 503, Duration::from_millis(30));
        let mut s = Snapshot {
            driver: "io_uring",
            requests: m
                .requests
                .iter()
                .map(|r| std::array::from_fn(|i| r[i].get()))
                .collect(),
            latency_buckets: m.latency_buckets.iter().map(Cell::get).collect(),
            latency_count: m.latency_count.get(),
            latency_sum_micros: m.latency_sum_micros.get(),
            ..Snapshot::default()
        };
        s.core = 1;
        let text = render(&[s], 0);
        assert!(text
            .contains("ringside_requests_total{core=\"1\",route=\"plaintext\",status=\"2xx\"} 2"));
        assert!(
            text.contains("ringside_requests_total{core=\"1\",route=\"orders\",status=\"5xx\"} 1")
        );
        assert!(
            text.contains("ringside_request_duration_seconds_bucket{core=\"1\",le=\"0.0005\"} 1")
        );
        assert!(
            text.contains("ringside_request_duration_seconds_bucket{core=\"1\",le=\"0.005\"} 2")
        );
        assert!(text.contains("ringside_request_duration_seconds_bucket{core=\"1\",le=\"+Inf\"} 3"));
        assert!(text.contains("ringside_io_driver{core=\"1\",cpu=\"0\",driver=\"io_uring\"} 1"));
        assert!(
            !text.contains("ringside_db_pool_size"),
            "no pool, no pool metrics"
        );
    }
}

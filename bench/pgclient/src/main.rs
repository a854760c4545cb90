//! pgclient-bench: one PostgreSQL connection, N concurrent workers, each
//! looping query -> check the result, for a fixed time; ringside's client on
//! a monoio runtime or tokio-postgres 0.7 on a tokio current-thread runtime.
//!
//!   pgclient-bench --client ringside|tokio-postgres --concurrency N \
//!       --duration SECS --url URL [--workload int|orders] [--warmup SECS]
//!
//! Prints one CSV line (no header; `--header` prints the header instead):
//!   client,workload,n,queries,seconds,qps,p50_us,p99_us,cpu_pct
//! `cpu_pct` is the client process's CPU time (user + system) over the
//! measured window, in percent of one core.
//!
//! Workloads:
//!   int     `SELECT $1::int4` with a value per query; the answer must echo it
//!   orders  `SELECT title FROM orders ORDER BY id LIMIT $1` with $1 = 20 on
//!           a 1,000-row table created (and filled) if missing; 20 rows must
//!           come back, the first titled "order 1"
//!
//! Latency is measured per query (from just before it is issued to just
//! after its checked result is in hand) and kept as nanoseconds in
//! preallocated per-worker vectors: no histogram library, bounded memory
//! (past the bound, further samples of that worker are dropped; counts are
//! always exact). Only queries issued after the warm-up and finished before
//! the end are counted.

use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringside::pg::{ConnSettings, Param, PgConfig, PgConn, PgHost, Statement};

const SETUP_SQL: &str = "CREATE TABLE IF NOT EXISTS orders (id int4 PRIMARY KEY, title text NOT NULL); \
     INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 1000) g \
     ON CONFLICT DO NOTHING";
const INT_SQL: &str = "SELECT $1::int4";
const ORDERS_SQL: &str = "SELECT title FROM orders ORDER BY id LIMIT $1";
const ORDERS_LIMIT: i64 = 20;

static INT_STMT: Statement = Statement {
    sql: INT_SQL,
    param_types: &[0],
    read_only: true,
    fresh: false,
};
static ORDERS_STMT: Statement = Statement {
    sql: ORDERS_SQL,
    param_types: &[20], // int8, as the server infers for LIMIT
    read_only: true,
    fresh: false,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Ringside,
    TokioPostgres,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Int,
    Orders,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Int => "int",
            Workload::Orders => "orders",
        }
    }
}

struct Args {
    client: Client,
    workload: Workload,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    url: String,
}

const USAGE: &str = "usage: pgclient-bench --client ringside|tokio-postgres --concurrency N \
--duration SECS --url URL [--workload int|orders] [--warmup SECS]\n       pgclient-bench --header";

fn parse_args() -> Result<Args, String> {
    let mut client = None;
    let mut workload = Workload::Int;
    let mut concurrency = None;
    let mut duration = None;
    let mut warmup = Duration::from_secs(1);
    let mut url = None;
    let mut it = std::env::args().skip(1);
    let secs = |v: String| -> Result<Duration, String> {
        let s: f64 = v.parse().map_err(|_| format!("not a number of seconds: {v}"))?;
        if !(0.0..=3600.0).contains(&s) {
            return Err(format!("seconds out of range: {v}"));
        }
        Ok(Duration::from_secs_f64(s))
    };
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--client" => {
                client = Some(match val()?.as_str() {
                    "ringside" => Client::Ringside,
                    "tokio-postgres" => Client::TokioPostgres,
                    other => return Err(format!("unknown client {other}")),
                })
            }
            "--workload" => {
                workload = match val()?.as_str() {
                    "int" => Workload::Int,
                    "orders" => Workload::Orders,
                    other => return Err(format!("unknown workload {other}")),
                }
            }
            "--concurrency" => {
                let v = val()?;
                let n: usize = v.parse().map_err(|_| format!("bad --concurrency {v}"))?;
                if n == 0 || n > 100_000 {
                    return Err(format!("--concurrency out of range: {n}"));
                }
                concurrency = Some(n);
            }
            "--duration" => duration = Some(secs(val()?)?),
            "--warmup" => warmup = secs(val()?)?,
            "--url" => url = Some(val()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let duration = duration.ok_or("--duration is required")?;
    if duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    Ok(Args {
        client: client.ok_or("--client is required")?,
        workload,
        concurrency: concurrency.ok_or("--concurrency is required")?,
        duration,
        warmup,
        url: url.ok_or("--url is required")?,
    })
}

/// When a worker starts measuring and when it stops.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    end: Instant,
}

/// What one worker did in the measured window.
struct WorkerResult {
    queries: u64,
    /// Latencies in nanoseconds (saturating at u32::MAX, ~4.3 s).
    lat_ns: Vec<u32>,
}

/// The worker loop, the same for both clients: `query(i)` issues the i-th
/// query of this worker and checks its answer.
async fn drive<F, Fut>(mut query: F, w: Window, cap: usize) -> Result<WorkerResult, String>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut res = WorkerResult {
        queries: 0,
        lat_ns: Vec::with_capacity(cap),
    };
    let mut i = 0u32;
    loop {
        let t0 = Instant::now();
        query(i).await?;
        let t1 = Instant::now();
        i = i.wrapping_add(1);
        if t1 >= w.end {
            return Ok(res);
        }
        if t0 >= w.measure_from {
            res.queries += 1;
            if res.lat_ns.len() < cap {
                let ns = (t1 - t0).as_nanos();
                res.lat_ns.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
        }
    }
}

/// The value worker `id` sends in its `i`-th int query.
fn int_value(id: usize, i: u32) -> i32 {
    (id as i32).wrapping_mul(1_000_003).wrapping_add(i as i32)
}

/// Samples per worker: enough for ~2M queries/s overall, bounded.
fn sample_cap(args: &Args) -> usize {
    let total = (args.duration.as_secs_f64() * 2.0e6).min(64.0e6) as usize;
    (total / args.concurrency).max(1024)
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Outcome {
    results: Vec<WorkerResult>,
    cpu: Duration,
}

// ------------------------------------------------------------- ringside ---

fn run_ringside(args: &Args) -> Result<Outcome, String> {
    let cfg = PgConfig::from_env(|k| (k == "DATABASE_URL").then(|| args.url.clone()))?;
    let addrs: Vec<SocketAddr> = match &cfg.host {
        PgHost::Tcp(h) => (h.as_str(), cfg.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {h}: {e}"))?
            .collect(),
        PgHost::Unix(_) => Vec::new(),
    };
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("monoio runtime: {e}"))?;
    let cap = sample_cap(args);
    let (n, workload, warmup, duration) = (
        args.concurrency,
        args.workload,
        args.warmup,
        args.duration,
    );
    rt.block_on(async move {
        let conn = PgConn::connect(&cfg, &addrs, ConnSettings::default())
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if workload == Workload::Orders {
            conn.simple(SETUP_SQL)
                .await
                .map_err(|e| format!("setup: {e}"))?;
        }
        let stmt: &'static Statement = match workload {
            Workload::Int => &INT_STMT,
            Workload::Orders => &ORDERS_STMT,
        };
        // Prepare before the clock starts (Parse + Describe on first use).
        let params = match workload {
            Workload::Int => [Param::I32(0)],
            Workload::Orders => [Param::I64(ORDERS_LIMIT)],
        };
        conn.query(stmt, &params)
            .await
            .map_err(|e| format!("prepare: {e}"))?;

        let start = Instant::now();
        let w = Window {
            measure_from: start + warmup,
            end: start + warmup + duration,
        };
        let cpu_probe = monoio::spawn(async move {
            monoio::time::sleep(warmup).await;
            let a = cpu_time();
            monoio::time::sleep(duration).await;
            cpu_time() - a
        });
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let conn = conn.clone();
            handles.push(monoio::spawn(async move {
                drive(
                    |i| {
                        let conn = conn.clone();
                        async move {
                            match workload {
                                Workload::Int => {
                                    let v = int_value(id, i);
                                    let rows = conn
                                        .query(stmt, &[Param::I32(v)])
                                        .await
                                        .map_err(|e| format!("query: {e}"))?;
                                    let row = rows
                                        .iter()
                                        .next()
                                        .ok_or("no row")?
                                        .map_err(|e| e.to_string())?;
                                    let got =
                                        row.req_i32(&rows.columns, 0).map_err(|e| e.to_string())?;
                                    if got != v {
                                        return Err(format!("sent {v}, got {got}"));
                                    }
                                }
                                Workload::Orders => {
                                    let rows = conn
                                        .query(stmt, &[Param::I64(ORDERS_LIMIT)])
                                        .await
                                        .map_err(|e| format!("query: {e}"))?;
                                    if rows.len() != ORDERS_LIMIT as usize {
                                        return Err(format!("{} rows", rows.len()));
                                    }
                                    let row = rows
                                        .iter()
                                        .next()
                                        .ok_or("no row")?
                                        .map_err(|e| e.to_string())?;
                                    let t =
                                        row.req_str(&rows.columns, 0).map_err(|e| e.to_string())?;
                                    if t != "order 1" {
                                        return Err(format!("first title {t:?}"));
                                    }
                                }
                            }
                            Ok(())
                        }
                    },
                    w,
                    cap,
                )
                .await
            }));
        }
        let mut results = Vec::with_capacity(n);
        let mut first_err = None;
        for h in handles {
            match h.await {
                Ok(r) => results.push(r),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let cpu = cpu_probe.await;
        conn.close("benchmark done");
        match first_err {
            Some(e) => Err(e),
            None => Ok(Outcome { results, cpu }),
        }
    })
}

// ------------------------------------------------------- tokio-postgres ---

fn run_tokio(args: &Args) -> Result<Outcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cap = sample_cap(args);
    let (n, workload, warmup, duration) = (
        args.concurrency,
        args.workload,
        args.warmup,
        args.duration,
    );
    let url = args.url.clone();
    rt.block_on(async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("pgclient-bench: tokio-postgres connection: {e}");
            }
        });
        if workload == Workload::Orders {
            client
                .batch_execute(SETUP_SQL)
                .await
                .map_err(|e| format!("setup: {e}"))?;
        }
        let sql = match workload {
            Workload::Int => INT_SQL,
            Workload::Orders => ORDERS_SQL,
        };
        let stmt = client
            .prepare(sql)
            .await
            .map_err(|e| format!("prepare: {e}"))?;
        let client = Arc::new(client);

        let start = Instant::now();
        let w = Window {
            measure_from: start + warmup,
            end: start + warmup + duration,
        };
        let cpu_probe = tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            let a = cpu_time();
            tokio::time::sleep(duration).await;
            cpu_time() - a
        });
        let mut handles = Vec::with_capacity(n);
        for id in 0..n {
            let client = client.clone();
            let stmt = stmt.clone();
            handles.push(tokio::spawn(async move {
                drive(
                    |i| {
                        let client = client.clone();
                        let stmt = stmt.clone();
                        async move {
                            match workload {
                                Workload::Int => {
                                    let v = int_value(id, i);
                                    let rows = client
                                        .query(&stmt, &[&v])
                                        .await
                                        .map_err(|e| format!("query: {e}"))?;
                                    let row = rows.first().ok_or("no row")?;
                                    let got: i32 = row.try_get(0).map_err(|e| e.to_string())?;
                                    if got != v {
                                        return Err(format!("sent {v}, got {got}"));
                                    }
                                }
                                Workload::Orders => {
                                    let rows = client
                                        .query(&stmt, &[&ORDERS_LIMIT])
                                        .await
                                        .map_err(|e| format!("query: {e}"))?;
                                    if rows.len() != ORDERS_LIMIT as usize {
                                        return Err(format!("{} rows", rows.len()));
                                    }
                                    let t: &str = rows[0].try_get(0).map_err(|e| e.to_string())?;
                                    if t != "order 1" {
                                        return Err(format!("first title {t:?}"));
                                    }
                                }
                            }
                            Ok(())
                        }
                    },
                    w,
                    cap,
                )
                .await
            }));
        }
        let mut results = Vec::with_capacity(n);
        let mut first_err = None;
        for h in handles {
            match h.await {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(format!("worker panicked: {e}"));
                }
            }
        }
        let cpu = cpu_probe.await.map_err(|e| e.to_string())?;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), conn_task).await;
        match first_err {
            Some(e) => Err(e),
            None => Ok(Outcome { results, cpu }),
        }
    })
}

// ----------------------------------------------------------------- main ---

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as f64 / 1000.0
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--header") {
        println!("client,workload,n,queries,seconds,qps,p50_us,p99_us,cpu_pct");
        return ExitCode::SUCCESS;
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("pgclient-bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (name, outcome) = match args.client {
        Client::Ringside => ("ringside", run_ringside(&args)),
        Client::TokioPostgres => ("tokio-postgres", run_tokio(&args)),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            eprintln!("pgclient-bench: {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let queries: u64 = outcome.results.iter().map(|r| r.queries).sum();
    let mut lat: Vec<u32> = Vec::with_capacity(outcome.results.iter().map(|r| r.lat_ns.len()).sum());
    for r in &outcome.results {
        lat.extend_from_slice(&r.lat_ns);
    }
    lat.sort_unstable();
    let secs = args.duration.as_secs_f64();
    // Details for the log (stderr): the CSV line keeps the fixed columns.
    let mean = lat.iter().map(|&v| v as f64).sum::<f64>() / lat.len().max(1) as f64 / 1000.0;
    eprintln!(
        "pgclient-bench: {name} {} N={}: {} latency samples; mean {mean:.1} us, p90 {:.1}, \
         p99.9 {:.1}, max {:.1} us; client CPU {:.3} s",
        args.workload.name(),
        args.concurrency,
        lat.len(),
        percentile(&lat, 0.90),
        percentile(&lat, 0.999),
        lat.last().map_or(f64::NAN, |&v| v as f64 / 1000.0),
        outcome.cpu.as_secs_f64(),
    );
    println!(
        "{name},{},{},{queries},{secs:.3},{:.0},{:.1},{:.1},{:.1}",
        args.workload.name(),
        args.concurrency,
        queries as f64 / secs,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        100.0 * outcome.cpu.as_secs_f64() / secs,
    );
    ExitCode::SUCCESS
}

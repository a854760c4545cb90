//! Configuration: one table of settings, read from flags and environment.
//!
//! Every setting has a flag, an environment variable and a safe default; the
//! same table drives parsing, `--help` and the README's flag table, so they
//! cannot drift apart. Precedence: flag > environment > default.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Which io driver the cores run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    /// io_uring or refuse to start.
    Uring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Which CPUs get a core thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoreSelection {
    /// Every CPU in the process's allowed set (sched_getaffinity).
    All,
    /// The first N CPUs of the allowed set.
    Count(usize),
    /// These CPU ids.
    List(Vec<usize>),
}

/// The effective server configuration. Read-only once the cores start.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// An HTTPS listener beside the plain one.
    pub listen_tls: Option<SocketAddr>,
    /// PEM certificate chain and private key: with both, HTTPS is served.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub tls_handshake_timeout: Duration,
    pub max_tls_handshakes_per_core: usize,
    pub cores: CoreSelection,
    pub io: IoMode,
    pub backlog: u32,
    pub ring_entries: u32,
    pub max_connections_per_core: usize,
    /// None: tuned to the database round trips, between a floor and all the
    /// queries the pool can have in flight (`src/runtime/limit_tuner.rs`).
    pub max_active_requests_per_core: Option<usize>,
    pub max_request_line: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub read_buffer_bytes: usize,
    pub pooled_buffers_per_core: usize,
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub core_stall_timeout: Duration,
    pub db_pool_size: usize,
    pub db_pipeline_depth: usize,
    pub db_coalesce: bool,
    pub db_batch: bool,
    pub db_batch_max: usize,
    pub db_max_waiters: usize,
    pub db_wait_timeout: Duration,
    pub db_query_timeout: Duration,
    pub max_upload_bytes: u64,
    pub upload_chunk_bytes: usize,
    pub max_uploads_per_core: usize,
    pub max_upload_waiters: usize,
    pub upload_wait_timeout: Duration,
    pub upload_timeout: Duration,
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    pub export_batch_rows: usize,
    pub database_url: Option<String>,
    /// Streaming replicas that serve read-only statements (libpq URLs).
    pub db_replicas: Vec<String>,
    pub db_replica_pool_size: usize,
    pub db_max_replica_lag: Duration,
    pub db_replica_check_interval: Duration,
    pub db_replica_fallback: ReplicaFallback,
    pub log_format: LogFormat,
    /// Where each non-default value came from (for `check-config`).
    pub sources: Vec<(&'static str, String, Source)>,
    pub config_file: Option<String>,
}

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Env(&'static str),
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File => f.write_str("config file"),
            Source::Env(v) => write!(f, "environment {v}"),
            Source::Flag => f.write_str("flag"),
        }
    }
}

/// Where reads go when no replica may take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaFallback {
    /// To the primary (the default: a dead replica costs no request).
    Primary,
    /// Nowhere: 503, so the primary is kept for writes.
    Fail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `postgres://user:secret@host/db` → `postgres://user:<redacted>@host/db`
/// (and a `password=` parameter likewise).
pub fn redact_url_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                out.replace_range(start..end, "<redacted>");
            }
        }
    }
    if let Some(p) = out.find("password=") {
        let start = p + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "<redacted>");
    }
    out
}

impl Default for Config {
    fn default() -> Self {
        let mut cfg = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            listen_tls: None,
            tls_cert: None,
            tls_key: None,
            tls_handshake_timeout: Duration::ZERO,
            max_tls_handshakes_per_core: 0,
            cores: CoreSelection::All,
            io: IoMode::Auto,
            backlog: 0,
            ring_entries: 0,
            max_connections_per_core: 0,
            max_active_requests_per_core: None,
            max_request_line: 0,
            max_head_bytes: 0,
            max_headers: 0,
            max_body_bytes: 0,
            read_buffer_bytes: 0,
            pooled_buffers_per_core: 0,
            head_timeout: Duration::ZERO,
            body_timeout: Duration::ZERO,
            keepalive_timeout: Duration::ZERO,
            write_timeout: Duration::ZERO,
            shutdown_timeout: Duration::ZERO,
            core_stall_timeout: Duration::ZERO,
            db_pool_size: 0,
            db_pipeline_depth: 0,
            db_coalesce: false,
            db_batch: false,
            db_batch_max: 0,
            db_max_waiters: 0,
            db_wait_timeout: Duration::ZERO,
            db_query_timeout: Duration::ZERO,
            max_upload_bytes: 0,
            upload_chunk_bytes: 0,
            max_uploads_per_core: 0,
            max_upload_waiters: 0,
            upload_wait_timeout: Duration::ZERO,
            upload_timeout: Duration::ZERO,
            min_body_rate: 0,
            body_rate_grace: Duration::ZERO,
            export_batch_rows: 0,
            database_url: None,
            db_replicas: Vec::new(),
            db_replica_pool_size: 0,
            db_max_replica_lag: Duration::ZERO,
            db_replica_check_interval: Duration::ZERO,
            db_replica_fallback: ReplicaFallback::Primary,
            log_format: LogFormat::Text,
            sources: Vec::new(),
            config_file: None,
        };
        for setting in SETTINGS {
            (setting.apply)(&mut cfg, setting.default).expect("built-in default parses");
        }
        cfg
    }
}

/// A configuration error that names the offending setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One setting: its flag, environment variable, default and parser.
pub struct Setting {
    pub flag: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    apply: fn(&mut Config, &str) -> Result<(), String>,
}

macro_rules! setting {
    ($flag:literal, $env:literal, $default:literal, $help:literal, |$cfg:ident, $v:ident| $body:expr) => {
        Setting {
            flag: $flag,
            env: $env,
            default: $default,
            help: $help,
            apply: |$cfg: &mut Config, $v: &str| -> Result<(), String> {
                $body;
                Ok(())
            },
        }
    };
}

/// Flags that may be given more than once; their values gather.
const REPEATABLE: &[&str] = &["db-replica"];

/// Every setting the server knows.
pub static SETTINGS: &[Setting] = &[
    setting!("listen", "RINGSIDE_LISTEN", "127.0.0.1:8080",
        "address every core listens on (SO_REUSEPORT)",
        |c, v| c.listen = v.parse().map_err(|_| format!("not an IP:port address: {v:?}"))?),
    setting!("listen-tls", "RINGSIDE_LISTEN_TLS", "",
        "HTTPS address every core also listens on, beside --listen (needs --tls-cert and --tls-key)",
        |c, v| c.listen_tls = match v {
            "" => None,
            _ => Some(v.parse().map_err(|_| format!("not an IP:port address: {v:?}"))?),
        }),
    setting!("tls-cert", "RINGSIDE_TLS_CERT", "",
        "PEM certificate chain (RSA, ECDSA or Ed25519); with --tls-key, HTTPS is served on --listen-tls, or on --listen without it; SIGHUP reloads both files",
        |c, v| c.tls_cert = Some(v.to_string()).filter(|s| !s.is_empty())),
    setting!("tls-key", "RINGSIDE_TLS_KEY", "",
        "PEM private key of --tls-cert",
        |c, v| c.tls_key = Some(v.to_string()).filter(|s| !s.is_empty())),
    setting!("tls-handshake-timeout", "RINGSIDE_TLS_HANDSHAKE_TIMEOUT", "10s",
        "time a TLS handshake may take from the accept; past it the connection is closed",
        |c, v| c.tls_handshake_timeout = parse_duration(v)?),
    setting!("max-tls-handshakes-per-core", "RINGSIDE_MAX_TLS_HANDSHAKES_PER_CORE", "256",
        "TLS handshakes in progress per core; connections past it are closed at once",
        |c, v| c.max_tls_handshakes_per_core = parse_int(v, 1, 1 << 20)? as usize),
    setting!("cores", "RINGSIDE_CORES", "all",
        "CPUs to run on: `all` (the allowed set), a count `4`, or a list `0,2-3`",
        |c, v| c.cores = parse_cores(v)?),
    setting!("io", "RINGSIDE_IO", "auto",
        "io driver: `auto` (io_uring, else epoll), `uring` (or fail), `epoll`",
        |c, v| c.io = match v {
            "auto" => IoMode::Auto,
            "uring" | "io_uring" | "io-uring" => IoMode::Uring,
            "epoll" | "legacy" => IoMode::Epoll,
            _ => return Err(format!("expected auto, uring or epoll, got {v:?}")),
        }),
    setting!("backlog", "RINGSIDE_BACKLOG", "4096",
        "listen backlog of each core's socket (capped by net.core.somaxconn)",
        |c, v| c.backlog = parse_int(v, 1, i32::MAX as u64)? as u32),
    // The kernel sizes its table of pending polls (walked on every cancel,
    // e.g. a slow client cut at its deadline) from the ring: with 10,000
    // connections waiting, 1024 entries gave chains of ~150 and
    // io_poll_find was a tenth of the server's time under a slowloris crowd.
    setting!("ring-entries", "RINGSIDE_RING_ENTRIES", "4096",
        "io_uring submission queue entries per core",
        |c, v| c.ring_entries = parse_int(v, 256, 32768)? as u32),
    setting!("max-connections-per-core", "RINGSIDE_MAX_CONNECTIONS_PER_CORE", "16384",
        "open connections per core; beyond it new connections get 503 and are closed",
        |c, v| c.max_connections_per_core = parse_int(v, 1, 10_000_000)? as usize),
    // Requests worked on at once hold their futures, rows and answers: past a
    // few hundred they outgrow the CPU's caches and each costs more
    // (src/http/admission.rs); the rest wait unread, in the kernel. By
    // default tuned: few when they only queue at a near database, up to all
    // the pool can have in flight when a far one needs them.
    setting!("max-active-requests-per-core", "RINGSIDE_MAX_ACTIVE_REQUESTS_PER_CORE", "auto",
        "requests per core worked on at once (not counting those waiting on their client); past it, a connection's next request waits unread, in arrival order, at most --db-wait-timeout (or the head timeout if shorter), then goes on (auto: tuned to the database round trips, from max(64, 8 × --db-pool-size) up to --db-pool-size × --db-pipeline-depth; 0: no limit)",
        |c, v| c.max_active_requests_per_core = match v {
            "auto" => None,
            _ => Some(parse_int(v, 0, 10_000_000)? as usize),
        }),
    setting!("max-request-line", "RINGSIDE_MAX_REQUEST_LINE", "8KiB",
        "longest request line (414 past it)",
        |c, v| c.max_request_line = parse_bytes(v, 64, 1 << 20)? as usize),
    setting!("max-head-bytes", "RINGSIDE_MAX_HEAD_BYTES", "16KiB",
        "longest request head (431 past it)",
        |c, v| c.max_head_bytes = parse_bytes(v, 256, 1 << 20)? as usize),
    setting!("max-headers", "RINGSIDE_MAX_HEADERS", "64",
        "most header fields in a request (431 past it)",
        |c, v| c.max_headers = parse_int(v, 1, 1024)? as usize),
    setting!("max-body-bytes", "RINGSIDE_MAX_BODY_BYTES", "1MiB",
        "default request body limit of routes that read a body (413 past it)",
        |c, v| c.max_body_bytes = parse_bytes(v, 0, u64::MAX)?),
    setting!("read-buffer-bytes", "RINGSIDE_READ_BUFFER_BYTES", "4KiB",
        "I/O buffer lent from the core's pool while a request is handled; grows up to the head limit",
        |c, v| c.read_buffer_bytes = parse_bytes(v, 1024, 16 << 20)? as usize),
    setting!("pooled-buffers-per-core", "RINGSIDE_POOLED_BUFFERS_PER_CORE", "256",
        "free buffers a core keeps for reuse; more are given back to the allocator",
        |c, v| c.pooled_buffers_per_core = parse_int(v, 0, 1 << 20)? as usize),
    setting!("head-timeout", "RINGSIDE_HEAD_TIMEOUT", "10s",
        "time to receive a complete request head, from its first byte or the accept (408)",
        |c, v| c.head_timeout = parse_duration(v)?),
    setting!("body-timeout", "RINGSIDE_BODY_TIMEOUT", "30s",
        "longest wait between two reads of a request body (408)",
        |c, v| c.body_timeout = parse_duration(v)?),
    setting!("keepalive-timeout", "RINGSIDE_KEEPALIVE_TIMEOUT", "60s",
        "how long an idle keep-alive connection is kept",
        |c, v| c.keepalive_timeout = parse_duration(v)?),
    setting!("write-timeout", "RINGSIDE_WRITE_TIMEOUT", "30s",
        "time a client has to take a response; a client that stops reading is cut",
        |c, v| c.write_timeout = parse_duration(v)?),
    setting!("shutdown-timeout", "RINGSIDE_SHUTDOWN_TIMEOUT", "30s",
        "on SIGTERM/SIGINT, how long requests in flight may take to finish",
        |c, v| c.shutdown_timeout = parse_duration(v)?),
    setting!("core-stall-timeout", "RINGSIDE_CORE_STALL_TIMEOUT", "30s",
        "a core that does not turn its event loop this long (stuck: a bug) loses its listeners; the other cores drain and the process exits 1",
        |c, v| c.core_stall_timeout = match parse_duration(v)? {
            d if d >= Duration::from_secs(1) => d,
            _ => return Err(format!("expected at least 1s, got {v:?}")),
        }),
    setting!("db-pool-size", "RINGSIDE_DB_POOL_SIZE", "4",
        "PostgreSQL connections per core (DATABASE_URL or the PG* variables say where)",
        |c, v| c.db_pool_size = parse_int(v, 1, 1024)? as usize),
    setting!("db-pipeline-depth", "RINGSIDE_DB_PIPELINE_DEPTH", "64",
        "queries in flight at once on one connection (pipelining)",
        |c, v| c.db_pipeline_depth = parse_int(v, 1, 100_000)? as usize),
    setting!("db-batch", "RINGSIDE_DB_BATCH", "on",
        "on: single read-only statements of different requests queued together share one Sync (one implicit transaction: less work for PostgreSQL); one skipped because another failed runs again alone",
        |c, v| c.db_batch = parse_on_off(v)?),
    setting!("db-batch-max", "RINGSIDE_DB_BATCH_MAX", "32",
        "most statements under one Sync, and most statements of one loop turn gathered into one connection's write before the next write starts on the least loaded connection (fewer sends and backend wake-ups; lower it to spread a turn's statements over more backends)",
        |c, v| c.db_batch_max = parse_int(v, 1, 10_000)? as usize),
    setting!("db-coalesce", "RINGSIDE_DB_COALESCE", "off",
        "on: identical reads that opt in (the /orders page) and are not sent yet share one execution and one rendered body; each still sees every commit made before it arrived",
        |c, v| c.db_coalesce = parse_on_off(v)?),
    // As many as a core's connections by default: the wait timeout is what
    // sheds load (a client told 503 only after waiting is paced by it), while
    // an early 503 invites an instant retry; lower it to shed sooner.
    setting!("db-max-waiters", "RINGSIDE_DB_MAX_WAITERS", "16384",
        "requests per core that may wait for a database slot; beyond, 503 at once",
        |c, v| c.db_max_waiters = parse_int(v, 0, 10_000_000)? as usize),
    setting!("db-wait-timeout", "RINGSIDE_DB_WAIT_TIMEOUT", "1s",
        "longest wait for a database slot (503 with Retry-After past it)",
        |c, v| c.db_wait_timeout = parse_duration(v)?),
    setting!("db-query-timeout", "RINGSIDE_DB_QUERY_TIMEOUT", "5s",
        "deadline of one query; past it the query is cancelled and the request gets 503",
        |c, v| c.db_query_timeout = parse_duration(v)?),
    setting!("max-upload-bytes", "RINGSIDE_MAX_UPLOAD_BYTES", "256MiB",
        "largest CSV upload to POST /contacts (413 past it)",
        |c, v| c.max_upload_bytes = parse_bytes(v, 0, u64::MAX)?),
    setting!("upload-chunk-bytes", "RINGSIDE_UPLOAD_CHUNK_BYTES", "64KiB",
        "how much of an upload is read and sent to PostgreSQL at a time (bounds its memory)",
        |c, v| c.upload_chunk_bytes = parse_bytes(v, 4096, 16 << 20)? as usize),
    // A database connection is what a slow client must never hold for
    // long: uploads (and exports) get a few of a core's connections, the
    // rest always serve the pipelined reads.
    setting!("max-uploads-per-core", "RINGSIDE_MAX_UPLOADS_PER_CORE", "1",
        "uploads (and CSV exports) per core holding a database connection at once; below --db-pool-size, so reads keep connections of their own (0: none, they answer 503)",
        |c, v| c.max_uploads_per_core = parse_int(v, 0, 1023)? as usize),
    setting!("max-upload-waiters", "RINGSIDE_MAX_UPLOAD_WAITERS", "64",
        "uploads per core that may wait for one of those connections (each holds its first chunk); beyond, 503 at once",
        |c, v| c.max_upload_waiters = parse_int(v, 0, 1_000_000)? as usize),
    setting!("upload-wait-timeout", "RINGSIDE_UPLOAD_WAIT_TIMEOUT", "10s",
        "longest wait of an upload for a database connection (503 with Retry-After past it)",
        |c, v| c.upload_wait_timeout = parse_duration(v)?),
    setting!("upload-timeout", "RINGSIDE_UPLOAD_TIMEOUT", "10m",
        "total time an upload or export may take, from its first byte (408 for an upload past it)",
        |c, v| c.upload_timeout = parse_duration(v)?),
    // Kestrel's MinRequestBodyDataRate, in spirit: the time the server is
    // not reading (a busy database) does not count against the client.
    setting!("min-body-rate", "RINGSIDE_MIN_BODY_RATE", "1KiB",
        "least average rate, in bytes per second of waiting for the client, at which a request body must arrive after the grace period (408 below it); 0 turns the check off",
        |c, v| c.min_body_rate = parse_bytes(v, 0, u64::MAX)?),
    setting!("body-rate-grace", "RINGSIDE_BODY_RATE_GRACE", "5s",
        "how long a body may arrive slower than --min-body-rate before the rate is enforced",
        |c, v| c.body_rate_grace = parse_duration(v)?),
    setting!("database-url", "DATABASE_URL", "",
        "PostgreSQL to use (libpq URI); empty: the PG* variables, or no database",
        |c, v| c.database_url = Some(v.to_string()).filter(|s| !s.is_empty())),
    setting!("db-replica", "RINGSIDE_DB_REPLICAS", "",
        "a PostgreSQL streaming replica (libpq URL) for read-only statements; repeat the flag for several (the variable takes them separated by spaces, the file an array); writes, COPY and transactions stay on the primary",
        |c, v| c.db_replicas = v.split_whitespace().map(str::to_string).collect()),
    setting!("db-replica-pool-size", "RINGSIDE_DB_REPLICA_POOL_SIZE", "2",
        "PostgreSQL connections per core to each replica",
        |c, v| c.db_replica_pool_size = parse_int(v, 1, 1024)? as usize),
    setting!("db-max-replica-lag", "RINGSIDE_DB_MAX_REPLICA_LAG", "5s",
        "replay lag past which a replica gets no reads until it catches up",
        |c, v| c.db_max_replica_lag = parse_duration(v)?),
    setting!("db-replica-check-interval", "RINGSIDE_DB_REPLICA_CHECK_INTERVAL", "1s",
        "how often each core samples each replica's replay lag (on its own timer, never per request)",
        |c, v| c.db_replica_check_interval = parse_duration(v)?),
    setting!("db-replica-fallback", "RINGSIDE_DB_REPLICA_FALLBACK", "primary",
        "where reads go while no replica may take them: `primary`, or `fail` (503)",
        |c, v| c.db_replica_fallback = match v {
            "primary" => ReplicaFallback::Primary,
            "fail" => ReplicaFallback::Fail,
            _ => return Err(format!("expected primary or fail, got {v:?}")),
        }),
    setting!("log-format", "RINGSIDE_LOG_FORMAT", "text",
        "log lines as `text` or `json`",
        |c, v| c.log_format = match v {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(format!("expected text or json, got {v:?}")),
        }),
    setting!("export-batch-rows", "RINGSIDE_EXPORT_BATCH_ROWS", "1000",
        "rows fetched per batch by GET /orders/export.csv",
        |c, v| c.export_batch_rows = parse_int(v, 1, 1_000_000)? as usize),
];

impl Config {
    /// Builds the configuration from command-line flags (`--name value` or
    /// `--name=value`) over environment variables over defaults.
    pub fn from_args_and_env<I, E>(args: I, env: E) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
    {
        Self::load(args, env, |path| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
        })
    }

    /// Flags over environment over the TOML file (`--config` or
    /// RINGSIDE_CONFIG) over defaults. `read` reads the file (injected for tests).
    pub fn load<I, E>(
        args: I,
        env: E,
        read: impl Fn(&str) -> Result<String, String>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = String>,
        E: Fn(&str) -> Option<String>,
    {
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut file = env("RINGSIDE_CONFIG").filter(|f| !f.is_empty());
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(stripped) = arg.strip_prefix("--") else {
                return Err(ConfigError(format!("unexpected argument {arg:?}")));
            };
            let (name, inline) = match stripped.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (stripped.to_string(), None),
            };
            let value = match inline {
                Some(v) => v,
                None => args
                    .next()
                    .ok_or_else(|| ConfigError(format!("--{name} needs a value")))?,
            };
            if name == "config" {
                file = Some(value);
            } else if let Some((_, earlier)) = flags
                .iter_mut()
                .find(|(n, _)| *n == name && REPEATABLE.contains(&n.as_str()))
            {
                // A repeatable flag (`--db-replica A --db-replica B`) gathers
                // its values.
                earlier.push(' ');
                earlier.push_str(&value);
            } else {
                flags.push((name, value));
            }
        }

        let mut cfg = Config::default();
        if let Some(path) = &file {
            let text = read(path).map_err(ConfigError)?;
            cfg.apply_toml(&text)
                .map_err(|e| ConfigError(format!("{path}: {e}")))?;
            cfg.config_file = Some(path.clone());
        }
        for setting in SETTINGS {
            if let Some(value) = env(setting.env) {
                (setting.apply)(&mut cfg, value.trim())
                    .map_err(|e| ConfigError(format!("{}: {e}", setting.env)))?;
                cfg.note(setting.flag, value.trim(), Source::Env(setting.env));
            }
        }
        for (name, value) in flags {
            let setting = SETTINGS
                .iter()
                .find(|s| s.flag == name)
                .ok_or_else(|| ConfigError(format!("unknown flag --{name} (see --help)")))?;
            (setting.apply)(&mut cfg, value.trim())
                .map_err(|e| ConfigError(format!("--{name}: {e}")))?;
            cfg.note(setting.flag, value.trim(), Source::Flag);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies a TOML file whose keys are the flag names
    /// (`listen = "0.0.0.0:80"`, `head-timeout = "10s"`,
    /// `max-connections-per-core = 20000`). Unknown keys are refused.
    fn apply_toml(&mut self, text: &str) -> Result<(), String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        for (key, value) in table {
            let setting = SETTINGS
                .iter()
                .find(|s| s.flag == key)
                .ok_or_else(|| format!("unknown key {key:?}"))?;
            let v = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) if REPEATABLE.contains(&key.as_str()) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| format!("{key}: expected an array of strings"))?
                    .join(" "),
                other => {
                    return Err(format!(
                        "{key}: expected a string or a number, got a {}",
                        other.type_str()
                    ))
                }
            };
            (setting.apply)(self, v.trim()).map_err(|e| format!("{key}: {e}"))?;
            self.note(setting.flag, v.trim(), Source::File);
        }
        Ok(())
    }

    fn note(&mut self, flag: &'static str, value: &str, source: Source) {
        self.sources.retain(|(f, _, _)| *f != flag);
        self.sources.push((flag, value.to_string(), source));
    }

    /// The effective configuration, one `key = value` line per setting with
    /// where it came from; the database password is redacted.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(f) = &self.config_file {
            out.push_str(&format!("# config file: {f}\n"));
        }
        for s in SETTINGS {
            let (value, source) = match self.sources.iter().find(|(f, _, _)| *f == s.flag) {
                Some((_, v, src)) => (v.clone(), src.to_string()),
                None => (s.default.to_string(), "default".to_string()),
            };
            let value = if s.flag == "database-url" {
                redact_url_password(&value)
            } else if s.flag == "db-replica" {
                value
                    .split_whitespace()
                    .map(redact_url_password)
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                value
            };
            out.push_str(&format!("{} = {:?}  # {}\n", s.flag, value, source));
        }
        out
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_line > self.max_head_bytes {
            return Err(ConfigError(
                "--max-request-line must not exceed --max-head-bytes".into(),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(ConfigError("--tls-cert needs --tls-key".into())),
            (None, Some(_)) => return Err(ConfigError("--tls-key needs --tls-cert".into())),
            (None, None) if self.listen_tls.is_some() => {
                return Err(ConfigError(
                    "--listen-tls needs --tls-cert and --tls-key".into(),
                ))
            }
            _ => {}
        }
        if self.listen_tls == Some(self.listen) && self.listen.port() != 0 {
            return Err(ConfigError("--listen-tls must differ from --listen".into()));
        }
        for (name, d) in [
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
            ("--head-timeout", self.head_timeout),
            ("--body-timeout", self.body_timeout),
            ("--keepalive-timeout", self.keepalive_timeout),
            ("--write-timeout", self.write_timeout),
            ("--db-wait-timeout", self.db_wait_timeout),
            ("--db-query-timeout", self.db_query_timeout),
            ("--db-max-replica-lag", self.db_max_replica_lag),
            (
                "--db-replica-check-interval",
                self.db_replica_check_interval,
            ),
            ("--upload-wait-timeout", self.upload_wait_timeout),
            ("--upload-timeout", self.upload_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("{name} must be greater than zero")));
            }
        }
        if self.max_uploads_per_core >= self.db_pool_size {
            return Err(ConfigError(format!(
                "--max-uploads-per-core ({}) must be below --db-pool-size ({}): reads need \
                 database connections of their own (raise the pool, or lower the uploads, \
                 0 turning uploads and exports off)",
                self.max_uploads_per_core, self.db_pool_size
            )));
        }
        Ok(())
    }

    /// The help text listing every setting.
    pub fn help() -> String {
        let mut s = String::from(
            "ringside: a thread-per-core io_uring HTTP/1.1 server\n\n\
             usage: ringside [COMMAND] [--config FILE] [--flag value]...\n\n\
             Commands:\n\
             \x20 serve          serve HTTP on every core (the default)\n\
             \x20 check-config   print the settings in effect and where each came from; exit 2 if one is invalid\n\
             \x20 migrate        create or upgrade the database schema (idempotent)\n\
             \x20 seed --orders N\n\
             \x20                fill demo orders up to N\n\
             \x20 gen-contacts --rows N [--bad-line L]\n\
             \x20                write an address CSV for POST /contacts to stdout (a bad record on line L)\n\
             \x20 help, version\n\n\
             The database comes from --database-url (DATABASE_URL) or the libpq variables\n\
             PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE. Sizes take KiB, MiB, GiB; durations\n\
             ms, s, m, h (a plain number is seconds).\n\n\
             Flags (each also read from its environment variable, and from the TOML file\n\
             given by --config or RINGSIDE_CONFIG, with the flag name as key):\n",
        );
        for set in SETTINGS {
            s.push_str(&format!(
                "  --{:<26} {:<36} default {}\n      {}\n",
                set.flag, set.env, set.default, set.help
            ));
        }
        s
    }
}

fn parse_on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("expected on or off, not {v:?}")),
    }
}

fn parse_int(v: &str, min: u64, max: u64) -> Result<u64, String> {
    let n: u64 = v
        .replace('_', "")
        .parse()
        .map_err(|_| format!("not a whole number: {v:?}"))?;
    if n < min || n > max {
        return Err(format!("{n} is outside {min}..={max}"));
    }
    Ok(n)
}

/// Parses a byte size: `16384`, `16KiB`, `1MiB`, `2GiB` (also `k`, `KB`,
/// `M`, `MB`; all binary multiples).
fn parse_bytes(v: &str, min: u64, max: u64) -> Result<u64, String> {
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {v:?} (use KiB, MiB, GiB)")),
    };
    let n = parse_int(num, 0, u64::MAX)?
        .checked_mul(mult)
        .ok_or_else(|| format!("{v:?} is too large"))?;
    if n < min || n > max {
        return Err(format!("{v} is outside {min}..={max} bytes"));
    }
    Ok(n)
}

/// Parses a duration: `250ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("not a duration: {v:?} (use e.g. 500ms, 10s, 2m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("unknown duration unit in {v:?} (use ms, s, m, h)")),
    };
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("{v:?} is longer than a week"));
    }
    Ok(d)
}

/// Parses `all`, a count `4`, or a CPU list `0,2-3`.
fn parse_cores(v: &str) -> Result<CoreSelection, String> {
    if v == "all" {
        return Ok(CoreSelection::All);
    }
    if !v.contains([',', '-']) {
        let n = parse_int(v, 1, 4096).map_err(|e| {
            if v.bytes().all(|b| b.is_ascii_digit()) {
                format!("{e} (a single number is a count of cores; to name CPU {v} write {v}-{v})")
            } else {
                format!("{e}: expected all, a count of cores (4) or a list of CPUs (0,2-3)")
            }
        })?;
        return Ok(CoreSelection::Count(n as usize));
    }
    let mut cpus = Vec::new();
    for part in v.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_int(a, 0, 4095)?, parse_int(b, 0, 4095)?);
                if a > b {
                    return Err(format!("empty CPU range {part:?}"));
                }
                cpus.extend((a..=b).map(|c| c as usize));
            }
            None => cpus.push(parse_int(part, 0, 4095)? as usize),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CoreSelection::List(cpus))
}

#[cfg(test)]
mod tests {
    /// The README's table names every setting with its environment
    /// variable and default, so that it cannot fall behind `--help`.
    #[test]
    fn readme_lists_every_setting() {
        let readme = include_str!("../README.md");
        for set in super::SETTINGS {
            let default = if set.default.is_empty() {
                "(none)"
            } else {
                set.default
            };
            let row = format!("| `--{}` | `{}` | `{}` |", set.flag, set.env, default);
            let row_none = format!("| `--{}` | `{}` | {} |", set.flag, set.env, default);
            assert!(
                readme.contains(&row) || readme.contains(&row_none),
                "README.md lacks the row for --{} (expected it to start with {row:?})",
                set.flag
            );
        }
    }

    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_args_and_env(args.iter().map(|s| s.to_string()), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn defaults_are_safe() {
        let c = parse(&[], &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.max_head_bytes, 16 * 1024);
        assert_eq!(c.max_headers, 64);
        assert_eq!(c.head_timeout, Duration::from_secs(10));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(60));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.io, IoMode::Auto);
    }

    #[test]
    fn flag_beats_environment() {
        let c = parse(
            &["--listen", "0.0.0.0:9000"],
            &[("RINGSIDE_LISTEN", "127.0.0.1:1")],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        let c = parse(&[], &[("RINGSIDE_LISTEN", "127.0.0.1:1")]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
        let c = parse(&["--head-timeout=250ms"], &[]).unwrap();
        assert_eq!(c.head_timeout, Duration::from_millis(250));
    }

    #[test]
    fn cores_forms() {
        assert_eq!(parse_cores("all").unwrap(), CoreSelection::All);
        assert_eq!(parse_cores("4").unwrap(), CoreSelection::Count(4));
        assert_eq!(
            parse_cores("0,2-3").unwrap(),
            CoreSelection::List(vec![0, 2, 3])
        );
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("0").is_err(), "a count of zero");
        assert_eq!(parse_cores("1-1").unwrap(), CoreSelection::List(vec![1]));
    }

    #[test]
    fn errors_name_the_setting() {
        let e = parse(&["--io", "kqueue"], &[]).unwrap_err();
        assert!(e.0.starts_with("--io:"), "{e}");
        let e = parse(&[], &[("RINGSIDE_MAX_HEAD_BYTES", "lots")]).unwrap_err();
        assert!(e.0.starts_with("RINGSIDE_MAX_HEAD_BYTES:"), "{e}");
        let e = parse(&["--nope", "1"], &[]).unwrap_err();
        assert!(e.0.contains("unknown flag --nope"), "{e}");
        assert!(parse(&["--listen"], &[]).is_err());
    }

    fn load(args: &[&str], env: &[(&str, &str)], file: &str) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let file = file.to_string();
        Config::load(
            args.iter().map(|s| s.to_string()),
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            |_| Ok(file.clone()),
        )
    }

    #[test]
    fn file_under_environment_under_flags() {
        let file =
            "listen = \"0.0.0.0:9\"\nhead-timeout = \"3s\"\nmax-headers = 10\nbacklog = 100\n";
        let c = load(
            &["--config", "x.toml", "--backlog", "200"],
            &[("RINGSIDE_HEAD_TIMEOUT", "4s")],
            file,
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9", "from the file");
        assert_eq!(
            c.head_timeout,
            Duration::from_secs(4),
            "environment over file"
        );
        assert_eq!(c.backlog, 200, "flag over file");
        assert_eq!(c.max_headers, 10);
        let text = c.describe();
        assert!(
            text.contains("listen = \"0.0.0.0:9\"  # config file"),
            "{text}"
        );
        assert!(
            text.contains("head-timeout = \"4s\"  # environment RINGSIDE_HEAD_TIMEOUT"),
            "{text}"
        );
        assert!(text.contains("backlog = \"200\"  # flag"), "{text}");
        assert!(
            text.contains("keepalive-timeout = \"60s\"  # default"),
            "{text}"
        );
    }

    #[test]
    fn replicas_gather_from_repeated_flags_the_environment_and_the_file() {
        let c = parse(
            &[
                "--db-replica",
                "postgres://r1/db",
                "--db-replica=postgres://u:pw@r2/db",
            ],
            &[("RINGSIDE_DB_REPLICAS", "postgres://env/db")],
        )
        .unwrap();
        assert_eq!(c.db_replicas, ["postgres://r1/db", "postgres://u:pw@r2/db"]);
        assert!(c.describe().contains("postgres://u:<redacted>@r2/db"));
        assert!(!c.describe().contains("pw@"));
        let c = parse(
            &[],
            &[("RINGSIDE_DB_REPLICAS", "postgres://a/db  postgres://b/db")],
        )
        .unwrap();
        assert_eq!(c.db_replicas, ["postgres://a/db", "postgres://b/db"]);
        let c = load(
            &["--config", "x.toml"],
            &[],
            "db-replica = [\"postgres://f1/db\", \"postgres://f2/db\"]\n",
        )
        .unwrap();
        assert_eq!(c.db_replicas, ["postgres://f1/db", "postgres://f2/db"]);
        assert!(Config::default().db_replicas.is_empty());
        assert_eq!(
            Config::default().db_replica_fallback,
            ReplicaFallback::Primary
        );
        assert!(parse(&["--db-replica-fallback", "maybe"], &[]).is_err());
    }

    #[test]
    fn file_errors_name_the_key() {
        let e = load(&["--config", "x.toml"], &[], "lisen = \"x\"\n").unwrap_err();
        assert!(e.0.contains("unknown key \"lisen\""), "{e}");
        let e = load(&["--config", "x.toml"], &[], "head-timeout = \"soon\"\n").unwrap_err();
        assert!(e.0.contains("head-timeout:"), "{e}");
        let e = load(&["--config", "x.toml"], &[], "listen = [1]\n").unwrap_err();
        assert!(e.0.contains("listen"), "{e}");
        assert!(load(&["--config", "x.toml"], &[], "not toml at all = =").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        let c = load(
            &[],
            &[("DATABASE_URL", "postgres://u:s3cret@h:5/db?password=x2")],
            "",
        )
        .unwrap();
        let text = c.describe();
        assert!(!text.contains("s3cret") && !text.contains("x2"), "{text}");
        assert!(
            text.contains("postgres://u:<redacted>@h:5/db?password=<redacted>"),
            "{text}"
        );
        assert_eq!(
            redact_url_password("postgres://u@h/db"),
            "postgres://u@h/db"
        );
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("16KiB", 0, u64::MAX).unwrap(), 16384);
        assert_eq!(parse_bytes("2m", 0, u64::MAX).unwrap(), 2 << 20);
        assert!(parse_bytes("3 parsecs", 0, u64::MAX).is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
    }
}

//! The `ringside` command.

use std::process::ExitCode;
use std::thread;

use ringside::app::metrics;
use ringside::app::schema;
use ringside::app::{App, AppSettings, Database, Scrape};
use ringside::config::{Config, LogFormat};
use ringside::http::HttpCore;
use ringside::pg::{ConnSettings, PgConfig, PgConn};
use ringside::runtime::Server;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first().map(String::as_str) {
        Some("serve") => {
            args.remove(0);
            "serve"
        }
        Some("migrate") => return migrate(),
        Some("check-config") => return check_config(args.split_off(1)),
        Some("seed") => return seed(&args[1..]),
        Some("gen-contacts") => return gen_contacts(&args[1..]),
        Some("help" | "--help" | "-h") => {
            print!("{}", Config::help());
            return ExitCode::SUCCESS;
        }
        Some("version" | "--version" | "-V") => {
            println!("ringside {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) if !other.starts_with('-') => {
            eprintln!("ringside: unknown command {other:?} (see ringside --help)");
            return ExitCode::from(2);
        }
        _ => "serve",
    };
    debug_assert_eq!(command, "serve");
    let config = match Config::from_args_and_env(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringside: {e} (see ringside --help)");
            return ExitCode::from(2);
        }
    };
    serve(config)
}

/// Logs through a writer thread: a core that logs hands the line over and
/// goes on; a slow stderr or journal never stalls it (lines are dropped
/// when the buffer is full, and the count of dropped lines is reported).
fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .lossy(true)
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

fn serve(config: Config) -> ExitCode {
    let _log_guard = init_logging(config.log_format);
    ringside::runtime::log_panics();
    // Signals are taken by a watcher thread (never by a core): the first
    // SIGTERM/SIGINT starts the drain, a second one exits at once; SIGHUP
    // reloads the TLS certificate and key.
    let mut signals = match Signals::new([SIGTERM, SIGINT, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let database = match Database::from_config(&config) {
        Ok(db) => db,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    match &database {
        Some(db) => {
            info!("database {}", db.config);
            for r in &db.replicas {
                info!("read replica {}", r.config);
            }
        }
        None => info!("no database configured (set DATABASE_URL); database routes answer 503"),
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0")
    {
        warn!(
            "net.ipv4.tcp_migrate_req is 0: during a restart, connections still queued on \
             this instance's listeners are reset when it stops (see deploy/sysctl.d)"
        );
    }
    let certs = match ringside::tls::CertStore::from_config(&config) {
        Ok(c) => c,
        Err(e) => {
            error!("TLS: {e}");
            return ExitCode::from(2);
        }
    };
    let app_settings = AppSettings::from_config(&config);
    let core_certs = certs.clone();
    let hub = metrics::Hub::new(cores_wanted(&config));
    let make = move |core: std::rc::Rc<ringside::runtime::CoreCtx>, cfg: &Config| {
        let scrape = hub.take_receiver(core.index).map(|inbox| Scrape {
            inbox,
            cores: hub.senders.clone(),
        });
        let app = App::new(
            core.clone(),
            database.as_ref(),
            app_settings.clone(),
            scrape,
        );
        HttpCore::with_tls(core, cfg, app, core_certs.clone())
    };
    let server = match Server::start(&config, make) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let cpus: Vec<String> = server.cores.iter().map(|c| c.cpu.to_string()).collect();
    let (plain_scheme, tls_line) = match (&certs, server.local_tls_addr) {
        (Some(c), Some(addr)) => ("http", format!(" and https://{addr} ({})", c.describe())),
        (Some(c), None) => ("https", format!(" ({})", c.describe())),
        (None, _) => ("http", String::new()),
    };
    info!(
        "listening on {plain_scheme}://{}{tls_line} with {} core(s) on CPU {} using {}",
        server.local_addr,
        server.cores.len(),
        cpus.join(","),
        server.driver_note
    );
    // Every core listens now: tell systemd (Type=notify), if it asked.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let stopper = server.stopper();
    let shutdown_timeout = config.shutdown_timeout;
    thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            if sig == SIGHUP {
                match &certs {
                    None => info!("SIGHUP: no TLS certificate configured; nothing to reload"),
                    Some(store) => match store.reload() {
                        Ok(()) => info!("SIGHUP: TLS certificate reloaded: {}", store.describe()),
                        Err(e) => error!(
                            "SIGHUP: TLS certificate not reloaded, the old one stays in use: {e}"
                        ),
                    },
                }
                continue;
            }
            seen += 1;
            if seen == 1 {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
                info!(
                    "signal {sig}: draining (up to {}s)",
                    shutdown_timeout.as_secs_f64()
                );
                stopper.stop();
            } else {
                warn!("second signal: exiting now");
                std::process::exit(1);
            }
        }
    });

    match server.join() {
        Ok(summaries) => {
            let accepted: Vec<String> = summaries.iter().map(|s| s.accepted.to_string()).collect();
            let cut: usize = summaries.iter().map(|s| s.cut_at_deadline).sum();
            info!(
                "stopped; connections accepted per core: [{}]{}",
                accepted.join(", "),
                if cut > 0 {
                    format!("; {cut} cut at the drain deadline")
                } else {
                    String::new()
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command-line database task on a runtime of its own.
fn with_db<T>(
    task: impl AsyncFnOnce(&std::rc::Rc<PgConn>) -> Result<T, String>,
) -> Result<T, String> {
    let cfg = PgConfig::from_env(|k| std::env::var(k).ok())?;
    let addrs = cfg.resolve()?;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let conn = PgConn::connect(&cfg, &addrs, ConnSettings::default())
            .await
            .map_err(|e| e.to_string())?;
        task(&conn).await
    })
}

fn migrate() -> ExitCode {
    match with_db(async |conn| schema::migrate(conn).await.map_err(|e| e.to_string())) {
        Ok(v) if v.is_empty() => {
            eprintln!("ringside: schema is up to date");
            ExitCode::SUCCESS
        }
        Ok(v) => {
            eprintln!("ringside: applied migrations {v:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringside migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads `--name value` pairs of a subcommand.
fn flag(args: &[String], name: &str) -> Result<Option<u64>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a whole number")),
    }
}

fn seed(args: &[String]) -> ExitCode {
    let orders = match flag(args, "--orders") {
        Ok(n) => n.unwrap_or(1000),
        Err(e) => {
            eprintln!("ringside seed: {e}");
            return ExitCode::from(2);
        }
    };
    match with_db(async |conn| {
        schema::seed_orders(conn, orders)
            .await
            .map_err(|e| e.to_string())
    }) {
        Ok(added) => {
            eprintln!("ringside: orders: {added} added ({orders} wanted)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringside seed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn gen_contacts(args: &[String]) -> ExitCode {
    let (rows, bad) = match (flag(args, "--rows"), flag(args, "--bad-line")) {
        (Ok(r), Ok(b)) => (r.unwrap_or(10_000), b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ringside gen-contacts: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    match schema::write_contacts(&mut out, rows, bad).and_then(|_| std::io::Write::flush(&mut out))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringside gen-contacts: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How many cores the server will run (for the scrape channels); a bad
/// selection is reported by the server's start.
fn cores_wanted(config: &Config) -> usize {
    ringside::runtime::select_cpus(&config.cores).map_or(1, |c| c.len())
}

/// Prints the effective configuration (password redacted) and exits
/// non-zero, naming the setting, when a value is invalid.
fn check_config(args: Vec<String>) -> ExitCode {
    let config = match Config::from_args_and_env(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringside check-config: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", config.describe());
    if let Err(e) = ringside::runtime::select_cpus(&config.cores) {
        eprintln!("ringside check-config: cores: {e}");
        return ExitCode::from(2);
    }
    match Database::from_config(&config) {
        Ok(Some(db)) => println!("# database: {}", db.config),
        Ok(None) => println!("# database: none configured"),
        Err(e) => {
            eprintln!("ringside check-config: database-url: {e}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

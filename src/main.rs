//! The `ringside` command.

use std::process::ExitCode;
use std::thread;

use ringside::app::schema;
use ringside::app::{App, AppSettings, Database};
use ringside::config::Config;
use ringside::http::HttpCore;
use ringside::pg::{ConnSettings, PgConfig, PgConn};
use ringside::runtime::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first().map(String::as_str) {
        Some("serve") => {
            args.remove(0);
            "serve"
        }
        Some("migrate") => return migrate(),
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
        _ => "serve",
    };
    debug_assert_eq!(command, "serve");
    let config = match Config::from_args_and_env(args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringside: {e}");
            return ExitCode::from(2);
        }
    };
    serve(config)
}

fn serve(config: Config) -> ExitCode {
    // Signals are taken by a watcher thread (never by a core): the first
    // SIGTERM/SIGINT starts the drain, a second one exits at once.
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let database = match Database::from_env(&config) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("ringside: {e}");
            return ExitCode::from(2);
        }
    };
    match &database {
        Some(db) => eprintln!("ringside: database {}", db.config),
        None => {
            eprintln!("ringside: no database configured (set DATABASE_URL); /orders answers 503")
        }
    }
    let app_settings = AppSettings::from_config(&config);
    let make = move |core, cfg: &Config| {
        HttpCore::new(core, cfg, App::new(database.as_ref(), app_settings.clone()))
    };
    let server = match Server::start(&config, make) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringside: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpus: Vec<String> = server.cores.iter().map(|c| c.cpu.to_string()).collect();
    eprintln!(
        "ringside: listening on http://{} with {} core(s) on CPU {} using {}",
        server.local_addr,
        server.cores.len(),
        cpus.join(","),
        server.driver_note
    );

    let stopper = server.stopper();
    let shutdown_timeout = config.shutdown_timeout;
    thread::spawn(move || {
        let mut seen = 0;
        for sig in signals.forever() {
            seen += 1;
            if seen == 1 {
                eprintln!(
                    "ringside: signal {sig}: draining (up to {}s)",
                    shutdown_timeout.as_secs_f64()
                );
                stopper.stop();
            } else {
                eprintln!("ringside: second signal: exiting now");
                std::process::exit(1);
            }
        }
    });

    match server.join() {
        Ok(summaries) => {
            let accepted: Vec<String> = summaries.iter().map(|s| s.accepted.to_string()).collect();
            let cut: usize = summaries.iter().map(|s| s.cut_at_deadline).sum();
            eprintln!(
                "ringside: stopped; connections accepted per core: [{}]{}",
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
            eprintln!("ringside: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command-line database task on a runtime of its own.
fn with_db<T>(task: impl AsyncFnOnce(&PgConn) -> Result<T, String>) -> Result<T, String> {
    let cfg = PgConfig::from_env(|k| std::env::var(k).ok())?;
    let addrs = match &cfg.host {
        ringside::pg::PgHost::Tcp(h) => {
            use std::net::ToSocketAddrs;
            (h.as_str(), cfg.port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {h}: {e}"))?
                .collect()
        }
        ringside::pg::PgHost::Unix(_) => Vec::new(),
    };
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

//! The `ringside` command.

use std::process::ExitCode;
use std::thread;

use ringside::app::App;
use ringside::config::Config;
use ringside::http::HttpCore;
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
    let server = match Server::start(&config, |core, cfg| HttpCore::new(core, cfg, App::new())) {
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

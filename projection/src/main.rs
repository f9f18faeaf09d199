//! The projection binary: configuration from the environment, signal handling, then
//! [`projection::run`]. Exit 0 after a graceful stop (SIGTERM/SIGINT: the batch in flight is
//! committed), 2 on bad configuration, 1 when start-up fails; never a panic backtrace.
//! With arguments it runs an operator subcommand instead (`rebuild`, `check-sync`: see
//! `projection::cli`).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use projection::cli::{self, Subcommand};
use projection::config::{Config, INSTANCE_ID, INSTANCE_ID_DEFAULT};
use signal_hook::consts::{SIGINT, SIGTERM};

fn main() {
    shared::log::init(&shared::config::string(INSTANCE_ID, INSTANCE_ID_DEFAULT));
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    match args
        .map_err(|a| format!("argument {a:?} is not UTF-8"))
        .and_then(cli::parse)
    {
        Ok(Subcommand::Serve) => {}
        Ok(sub) => std::process::exit(cli::run(sub)),
        Err(e) => {
            shared::error!("{e}");
            eprint!("{}", cli::USAGE);
            std::process::exit(cli::EXIT_USAGE);
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            shared::error!("configuration: {e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // A second signal while stopping exits at once (code 1); the first sets the flag.
        let registered =
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop)));
        if let Err(e) = registered {
            shared::error!("cannot install signal handler: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = projection::run(config, stop) {
        shared::error!("{e}");
        std::process::exit(1);
    }
}

//! The query service binary: configuration → pools and probes → HTTP server, then waits for
//! SIGTERM/SIGINT. Everything else lives in the library, so tests start this same binary.

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let config = match query::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            shared::log::init(&shared::config::string(
                query::config::INSTANCE_ID.0,
                query::config::INSTANCE_ID.1,
            ));
            shared::error!("configuration: {e}");
            return ExitCode::from(2);
        }
    };
    shared::log::init(&config.instance_id);
    config.log();
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => {
            shared::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _running = match query::server::run(&config) {
        Ok(r) => r,
        Err(e) => {
            shared::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(sig) = signals.forever().next() {
        shared::info!("signal {sig}: stopping");
    }
    // Exiting ends the server coroutines; the probe threads are stopped by `Running`'s drop.
    ExitCode::SUCCESS
}

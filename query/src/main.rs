//! The query service binary: the shared start-up path (logger, configuration, signals)
//! around [`query::server::run`], which serves until SIGTERM/SIGINT. Exit 0 after a stop, 2 on
//! bad configuration, 1 when start-up fails; never a panic backtrace.

use std::process::ExitCode;

fn main() -> ExitCode {
    shared::startup::main(query::server::run)
}

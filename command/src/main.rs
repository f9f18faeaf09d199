//! The command service binary: the shared start-up path (logger, configuration, signals)
//! around [`command::run`], which serves until SIGTERM/SIGINT and then finishes the relay
//! batch in flight. Exit 0 after a graceful stop, 2 on bad configuration, 1 when start-up
//! fails; never a panic backtrace.

use std::process::ExitCode;

fn main() -> ExitCode {
    shared::startup::main(command::run)
}

//! The projection binary: the shared start-up path (logger, configuration, signals) around
//! [`projection::run`]. Exit 0 after a graceful stop (SIGTERM/SIGINT: the batch in flight is
//! committed; a second signal exits 1 at once), 2 on bad configuration, 1 when start-up
//! fails; never a panic backtrace.

use std::process::ExitCode;

fn main() -> ExitCode {
    shared::startup::main(projection::run)
}

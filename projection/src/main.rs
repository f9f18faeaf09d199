//! The projection binary: the shared start-up path (logger, configuration, signals) around
//! [`projection::run`]. Exit 0 after a graceful stop (SIGTERM/SIGINT: the batch in flight is
//! committed; a second signal exits 1 at once), 2 on bad configuration, 1 when start-up
//! fails; never a panic backtrace. With arguments it runs an operator subcommand instead
//! (`rebuild`, `check-sync`: see `projection::cli`), with the service's own environment.

use std::process::ExitCode;

use projection::cli::{self, Subcommand};
use projection::config::{INSTANCE_ID, INSTANCE_ID_DEFAULT};

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect();
    let sub = args
        .map_err(|a| format!("argument {a:?} is not UTF-8"))
        .and_then(cli::parse);
    if !matches!(sub, Ok(Subcommand::Serve)) {
        shared::log::init(&shared::config::string(INSTANCE_ID, INSTANCE_ID_DEFAULT));
    }
    match sub {
        Ok(Subcommand::Serve) => shared::startup::main(projection::run),
        Ok(sub) => exit_code(cli::run(sub)),
        Err(e) => {
            shared::error!("{e}");
            eprint!("{}", cli::USAGE);
            exit_code(cli::EXIT_USAGE)
        }
    }
}

/// A subcommand's exit code (0–3, see `projection::cli`) as the process's.
fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

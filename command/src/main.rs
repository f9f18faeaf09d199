//! `command`: the write side. Wires config → `command::run`; errors are printed, never a
//! panic backtrace.

fn main() {
    let config = match command::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("command: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = command::run(config) {
        shared::error!("{e}");
        std::process::exit(1);
    }
}

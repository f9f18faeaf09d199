//! The one start-up path of the three service binaries. Each `main.rs` is
//! `shared::startup::main(<crate>::run)`; this module does, in this order:
//!
//! 1. the logger ([`crate::log::init`]) with the instance id from the environment, so even a
//!    configuration error is a normal line carrying it, and dependencies' `log` lines too;
//! 2. the configuration ([`ServiceConfig::from_env`]): a bad variable exits 2, naming it;
//! 3. one `config: …` line with the effective configuration, secrets redacted;
//! 4. SIGTERM/SIGINT handling ([`Shutdown`]): the first signal sets the stop flag the service
//!    watches, a second one while stopping exits 1 at once;
//! 5. the service's `run(config, stop)`, which returns after a graceful stop (exit 0) or with
//!    a start-up error (logged, exit 1). Never a panic backtrace.
//!
//! It also owns the one may scheduler setting ([`configure_may`]), because may counts its
//! stack size in machine words while our configuration speaks bytes.

use std::fmt::Display;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::config::{self, ConfigError};

/// The signals that ask a service to stop: SIGTERM from an orchestrator, SIGINT from a terminal.
const STOP_SIGNALS: [i32; 2] = [SIGTERM, SIGINT];

/// Exit code for a configuration the service cannot use.
const EXIT_CONFIG: u8 = 2;

/// How often [`wait`] looks at the stop flag. A signal reaches a service only as a flag (its
/// threads poll it between batches), and 50 ms is invisible next to a graceful stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What a service's configuration offers the start-up path.
pub trait ServiceConfig: Sized {
    /// The variable naming this instance, read on its own before the rest so that every line,
    /// a configuration error's included, carries the instance id.
    const INSTANCE_ID: &'static str;
    const INSTANCE_ID_DEFAULT: &'static str;

    /// Every variable, defaults for the unset ones; the first bad one is the error.
    fn from_env() -> Result<Self, ConfigError>;

    /// The effective configuration on one line, passwords redacted.
    fn summary(&self) -> String;
}

/// The whole life of a service binary (see the module docs). `run` gets the stop flag, serves
/// until it is set, and returns once the work in flight is finished.
pub fn main<C, E>(run: impl FnOnce(C, Arc<AtomicBool>) -> Result<(), E>) -> ExitCode
where
    C: ServiceConfig,
    E: Display,
{
    crate::log::init(&config::string(C::INSTANCE_ID, C::INSTANCE_ID_DEFAULT));
    let config = match C::from_env() {
        Ok(c) => c,
        Err(e) => {
            crate::error!("configuration: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::info!("config: {}", config.summary());
    let shutdown = match Shutdown::install() {
        Ok(s) => s,
        Err(e) => {
            crate::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, shutdown.flag()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            crate::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM/SIGINT turned into a stop flag by a named thread, which also logs the signal.
/// A second signal after the flag is set exits the process at once with code 1 (an operator
/// who insists). Dropping it ends the thread.
#[derive(Debug)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl Shutdown {
    pub fn install() -> io::Result<Shutdown> {
        let flag = Arc::new(AtomicBool::new(false));
        // Registered before the iterator: on the first signal it finds the flag still clear
        // and does nothing; on any later one the thread below has set it, and it exits.
        for sig in STOP_SIGNALS {
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&flag))?;
        }
        let mut signals = Signals::new(STOP_SIGNALS)?;
        let handle = signals.handle();
        let set = Arc::clone(&flag);
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                // `None` only once the handle is closed (drop): then no stop was asked for.
                if let Some(sig) = signals.forever().next() {
                    let name = signal_hook::low_level::signal_name(sig).unwrap_or("?");
                    crate::info!("signal {name}: stopping");
                    set.store(true, Ordering::SeqCst);
                }
            })?;
        Ok(Shutdown {
            flag,
            handle,
            thread: Some(thread),
        })
    }

    /// The flag the service's threads watch; set once a stop signal arrived.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Blocks until `stop` is set: the main thread of a service whose work runs elsewhere.
pub fn wait(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(STOP_POLL);
    }
}

/// Configures may's scheduler before the first coroutine: `workers` threads, and coroutine
/// stacks of `stack_bytes` bytes. Call it, never `may::config()` directly, so that the unit
/// is converted in exactly one place.
pub fn configure_may(workers: usize, stack_bytes: usize) {
    may::config()
        .set_workers(workers)
        .set_stack_size(stack_words(stack_bytes))
        .set_pool_capacity(COROUTINE_POOL);
}

/// Finished coroutines may keeps, stack and all, for the next spawn. may's default is 1 000,
/// created up front, and its pool is first in, first out: every new connection takes the
/// oldest, so over a service's life all 1 000 stacks get touched as deep as requests go and
/// stay resident. Measured on command-1: RSS 13.8 MiB at start, 25 MiB after six 4 s loops of
/// 64 fresh POST connections, 32 MiB after nine `bench --throughput` runs (issue 13 point 8).
/// Twice nginx's keep-alive connections to one instance (64 per worker, 2 workers) covers a
/// service's steady concurrency; beyond it a spawn maps a fresh stack, which is cheap.
pub const COROUTINE_POOL: usize = 256;

/// `may::config().set_stack_size(n)` counts `usize` words, not bytes (the generator crate's
/// `new_opt` allocates `n` words): the word count for a stack of `bytes` bytes. Truncating on
/// purpose: an odd word count such as 65544 bytes = 8193 words is may's switch to print each
/// coroutine's peak stack use on exit, which is how the stack sizes were measured.
pub fn stack_words(bytes: usize) -> usize {
    bytes / std::mem::size_of::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: usize, expect_words: usize) {
        assert_eq!(stack_words(bytes), expect_words, "{bytes} bytes");
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn stack_size_is_converted_to_words() {
        check(32 * 1024, 4 * 1024);
        check(64 * 1024, 8 * 1024);
        check(128 * 1024, 16 * 1024);
        check(65_544, 8_193);
        check(7, 0);
    }

    #[test]
    fn may_gets_words() {
        configure_may(2, 64 * 1024);
        let words = may::config().get_stack_size();
        assert_eq!(words * std::mem::size_of::<usize>(), 64 * 1024);
        assert_eq!(may::config().get_workers(), 2);
    }
}

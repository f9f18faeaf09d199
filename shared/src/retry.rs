//! Start-up retry with exponential backoff (SPEC §5): a service that cannot reach a dependency
//! says so in its log and tries again, instead of exiting with a backtrace.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// First wait between attempts.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between attempts: long enough not to hammer a recovering dependency, short
/// enough that a service is back within seconds of it.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds or `give_up_after` has passed (`None`: forever), logging
/// each failure with `what`.
pub fn with_backoff<T, E: Display>(
    what: &str,
    give_up_after: Option<Duration>,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    let mut wait = FIRST_BACKOFF;
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt() {
            Ok(v) => {
                if tries > 1 {
                    crate::info!("{what}: succeeded after {tries} attempts");
                }
                return Ok(v);
            }
            Err(e) => {
                if give_up_after.is_some_and(|limit| start.elapsed() + wait > limit) {
                    crate::error!("{what}: giving up after {tries} attempts: {e}");
                    return Err(e);
                }
                crate::warn!("{what}: attempt {tries} failed: {e}; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
    }
}

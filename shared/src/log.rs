//! One line per event, with a UTC timestamp, a level and the instance id:
//! `2026-11-25T13:00:00.123Z INFO command-1 relay: published 12 events`.
//! Never log secrets: URLs go through [`crate::config::redact_url`].

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

static INSTANCE: OnceLock<String> = OnceLock::new();

/// Sets the instance id every line carries; the first call wins.
pub fn init(instance: &str) {
    let _ = INSTANCE.set(instance.to_owned());
}

#[derive(Debug, Clone, Copy)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// Writes one line to stderr. Use the [`info!`](crate::info), [`warn!`](crate::warn) and
/// [`error!`](crate::error) macros.
pub fn line(level: Level, args: fmt::Arguments<'_>) {
    let now = time::OffsetDateTime::now_utc();
    let level = match level {
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    let instance = INSTANCE.get().map_or("-", String::as_str);
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z {level} {instance} {}\n",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond(),
        // Keep one event on one line even when a message carries a newline.
        args.to_string().replace('\n', " ")
    );
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Info, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Warn, format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::line($crate::log::Level::Error, format_args!($($arg)*)) };
}

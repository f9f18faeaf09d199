//! One line per event, with a UTC timestamp, a level and the instance id:
//! `2026-11-25T13:00:00.123Z INFO command-1 relay: published 12 events`.
//!
//! Our own code logs through the [`info!`](crate::info), [`warn!`](crate::warn) and
//! [`error!`](crate::error) macros. [`init`] also installs this logger as the `log` crate's
//! backend, so what our dependencies log (may_minihttp's `error!` on a failed connection,
//! may's warnings) lands in the same format with the same instance id, target first:
//! `… ERROR command-1 may_minihttp::http_server: service err = …`.
//! Never log secrets: URLs go through [`crate::config::redact_url`].

use std::fmt;
use std::io::Write;
use std::sync::OnceLock;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

static INSTANCE: OnceLock<String> = OnceLock::new();

/// The timestamp every line starts with: RFC 3339 UTC with milliseconds, fixed width so lines
/// line up and sort as text.
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The most detailed dependency lines we keep. Below `Warn` the `log` crate carries library
/// chatter (tokio-postgres logs every server NOTICE at info, e.g. each `IF NOT EXISTS` of a
/// migration), which would drown our own lines; our macros do not go through this filter.
const DEPENDENCY_LEVEL: ::log::LevelFilter = ::log::LevelFilter::Warn;

/// Sets the instance id every line carries and makes this logger the `log` backend; the first
/// call wins (later calls, e.g. a second service started in a test process, change nothing).
pub fn init(instance: &str) {
    let _ = INSTANCE.set(instance.to_owned());
    if ::log::set_logger(&Backend).is_ok() {
        ::log::set_max_level(DEPENDENCY_LEVEL);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// Writes one line to stderr. Use the [`info!`](crate::info), [`warn!`](crate::warn) and
/// [`error!`](crate::error) macros.
pub fn line(level: Level, args: fmt::Arguments<'_>) {
    let instance = INSTANCE.get().map_or("-", String::as_str);
    let text = format_line(OffsetDateTime::now_utc(), level, instance, args);
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// The whole line, newline included. One event stays on one line even when its message
/// carries newlines (a postgres error's DETAIL, a multi-line panic text).
fn format_line(
    now: OffsetDateTime,
    level: Level,
    instance: &str,
    args: fmt::Arguments<'_>,
) -> String {
    // Formatting a UTC time with this description cannot fail (no offset or name to look up);
    // an empty timestamp would still leave a readable line.
    let stamp = now.format(TIMESTAMP).unwrap_or_default();
    let message = args.to_string().replace('\n', " ");
    format!("{stamp} {} {instance} {message}\n", level.as_str())
}

/// The `log` crate's backend: every record becomes one of our lines, named by its target.
struct Backend;

impl ::log::Log for Backend {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        metadata.level() <= DEPENDENCY_LEVEL
    }

    fn log(&self, record: &::log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            ::log::Level::Error => Level::Error,
            ::log::Level::Warn => Level::Warn,
            _ => Level::Info,
        };
        line(
            level,
            format_args!("{}: {}", record.target(), record.args()),
        );
    }

    fn flush(&self) {}
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(unix_nanos: i128, level: Level, message: &str, expect: &str) {
        let now = OffsetDateTime::from_unix_timestamp_nanos(unix_nanos).expect("valid time");
        let got = format_line(now, level, "command-1", format_args!("{message}"));
        assert_eq!(got, expect, "message {message:?}");
    }

    #[test]
    fn lines() {
        // 2023-11-14T22:13:20Z
        let t = 1_700_000_000_000_000_000;
        check(
            t,
            Level::Info,
            "relay: published 12 events",
            "2023-11-14T22:13:20.000Z INFO command-1 relay: published 12 events\n",
        );
        // milliseconds are truncated, not rounded, and zero-padded
        check(
            t + 7_999_999,
            Level::Warn,
            "x",
            "2023-11-14T22:13:20.007Z WARN command-1 x\n",
        );
        check(
            t + 999_000_000,
            Level::Error,
            "a\nb",
            "2023-11-14T22:13:20.999Z ERROR command-1 a b\n",
        );
        // single-digit fields are zero-padded
        check(
            0,
            Level::Info,
            "",
            "1970-01-01T00:00:00.000Z INFO command-1 \n",
        );
    }

    /// Set in the child process of [`dependency_lines_reach_our_format`].
    const CHILD: &str = "SHARED_LOG_BACKEND_CHILD";

    /// A real may_minihttp `error!` (a service call that fails becomes a 500, logged by
    /// may_minihttp through `log`) ends up on our stderr as one of our lines. Run in a child
    /// process: the `log` backend is global, and stderr has to be read from outside.
    #[test]
    fn dependency_lines_reach_our_format() {
        if std::env::var_os(CHILD).is_some() {
            return failing_service_call();
        }
        let exe = std::env::current_exe().expect("test binary path");
        let out = std::process::Command::new(exe)
            .args(["--exact", "log::tests::dependency_lines_reach_our_format"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("may_minihttp"))
            .unwrap_or_else(|| panic!("no may_minihttp line in:\n{stderr}"));
        let expect = " ERROR child-7 may_minihttp::response: error in service: err = ";
        assert!(
            line.len() > 24 && line[24..].starts_with(expect) && line.contains("deliberate"),
            "expected <timestamp>{expect}…deliberate…, got {line:?}"
        );
    }

    fn failing_service_call() {
        use std::io::{Read, Write as _};

        #[derive(Clone)]
        struct Failing;
        impl may_minihttp::HttpService for Failing {
            fn call(
                &mut self,
                _req: may_minihttp::Request,
                _rsp: &mut may_minihttp::Response,
            ) -> std::io::Result<()> {
                Err(std::io::Error::other("deliberate"))
            }
        }

        init("child-7");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let _server = may_minihttp::HttpServer(Failing)
            .start(("127.0.0.1", port))
            .expect("start");
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send");
        let mut head = [0u8; 64];
        let n = conn.read(&mut head).expect("answer");
        assert!(head[..n].starts_with(b"HTTP/1.1 500"), "{:?}", &head[..n]);
    }

    #[test]
    fn dependency_filter() {
        let enabled = |level| {
            ::log::Log::enabled(
                &Backend,
                &::log::Metadata::builder()
                    .level(level)
                    .target("dep")
                    .build(),
            )
        };
        assert!(enabled(::log::Level::Error));
        assert!(enabled(::log::Level::Warn));
        assert!(!enabled(::log::Level::Info));
        assert!(!enabled(::log::Level::Debug));
    }
}

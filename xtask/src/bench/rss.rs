//! Memory of every service of the local cluster at the end of a bench: `VmRSS` (resident now)
//! and `VmHWM` (the peak since the process started) from `/proc/<pid>/status`, for the pids in
//! `state.json`.
//!
//! Each figure is one process: for PostgreSQL that is the postmaster (its backends are
//! separate processes) and for nginx the master (its workers are separate), so the figures
//! that answer "how much does a service of ours use" are those of `command-*`, `query-*` and
//! `projection`, which are one process each.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::cluster::Layout;

/// One service's memory, in KiB.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRss {
    pub name: String,
    pub pid: Option<u32>,
    /// Resident set now.
    pub rss_kib: Option<u64>,
    /// Peak resident set since the process started (a restart resets it).
    pub peak_kib: Option<u64>,
    /// `RssAnon`: the resident memory that is this process's alone (no mapped files, no
    /// shared memory). For the postmaster the rest of its RSS is the binary and the shared
    /// buffers it touched, which every backend shares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_kib: Option<u64>,
}

/// Whether `name` is one of our own services (command, query, projection) — the processes the
/// memory target is about — rather than PostgreSQL, Redis, PgBouncer or nginx.
pub fn is_ours(name: &str) -> bool {
    let db = name == "command-db" || name.starts_with("query-db");
    !db && (name == "projection" || name.starts_with("command-") || name.starts_with("query-"))
}

/// The largest resident set among our own services, in KiB.
pub fn max_of_ours(rows: &[ServiceRss]) -> Option<u64> {
    rows.iter()
        .filter(|r| is_ours(&r.name))
        .filter_map(|r| r.rss_kib)
        .max()
}

/// One field of `/proc/<pid>/status` in KiB (`VmRSS:    12345 kB`).
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Every service in `state.json` with its memory now; empty when there is no cluster state.
pub fn sample(sh: &Shell) -> Vec<ServiceRss> {
    let Ok(state) = Layout::new(sh).read_state() else {
        return Vec::new();
    };
    state
        .services
        .iter()
        .map(|svc| {
            let status = svc
                .pid
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
            ServiceRss {
                name: svc.name.clone(),
                pid: svc.pid,
                rss_kib: status.as_deref().and_then(|s| status_kib(s, "VmRSS")),
                peak_kib: status.as_deref().and_then(|s| status_kib(s, "VmHWM")),
                anon_kib: status.as_deref().and_then(|s| status_kib(s, "RssAnon")),
            }
        })
        .collect()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// The on-screen table: one line per service.
pub fn table(rows: &[ServiceRss]) -> String {
    let mut t = String::new();
    if rows.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "memory at the end of the run (one process each; postgres = postmaster, nginx = master):"
    );
    let _ = writeln!(
        t,
        "  {:<20} {:>8} {:>10} {:>10} {:>10}",
        "SERVICE", "PID", "RSS MiB", "PEAK MiB", "ANON MiB"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "  {:<20} {:>8} {:>10} {:>10} {:>10}",
            r.name,
            r.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            mib(r.rss_kib),
            mib(r.peak_kib),
            mib(r.anon_kib)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let s = "Name:\tquery\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nThreads:\t10\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(20480));
        assert_eq!(status_kib(s, "VmHWM"), Some(40960));
        assert_eq!(status_kib(s, "VmSwap"), None);
    }

    fn check(names_rss: &[(&str, u64)], expect: Option<u64>) {
        let rows: Vec<ServiceRss> = names_rss
            .iter()
            .map(|(n, k)| ServiceRss {
                name: (*n).to_string(),
                rss_kib: Some(*k),
                ..ServiceRss::default()
            })
            .collect();
        assert_eq!(max_of_ours(&rows), expect, "{names_rss:?}");
    }

    #[test]
    fn the_memory_target_counts_only_our_services() {
        check(
            &[("query-db-primary", 36_000), ("command-1", 17_000)],
            Some(17_000),
        );
        check(
            &[
                ("query-2", 21_000),
                ("projection", 9_000),
                ("redis", 40_000),
            ],
            Some(21_000),
        );
        check(
            &[
                ("nginx", 7_000),
                ("pgbouncer", 8_000),
                ("command-db", 35_000),
            ],
            None,
        );
    }

    #[test]
    fn own_process_has_a_resident_set() {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status_kib(&s, "VmRSS").is_some_and(|k| k > 0));
    }
}

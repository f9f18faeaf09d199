//! The shared start-up path as the query binary runs it: SIGTERM → exit 0, with the signal
//! and the config in the log under the instance id.

use crate::support::{fresh_db, start_query};

/// Given a running query service, when it gets SIGTERM, then it logs the signal and exits 0.
#[test]
fn sigterm_stops_with_exit_zero() {
    let db = fresh_db("startup_sigterm");
    let svc = start_query(&format!("primary={db}"), &[]);
    let code = svc.terminate();
    let log = svc.log();
    assert_eq!(code, Some(0), "log:\n{log}");
    for expect in [
        " INFO query-test config: port=",
        " INFO query-test signal SIGTERM: stopping",
        " INFO query-test stopped",
    ] {
        assert!(log.contains(expect), "missing {expect:?} in\n{log}");
    }
}

/// Given a `QUERY_DIRECT_URLS` entry for a DB that `QUERY_DATABASE_URLS` does not name, or
/// one that is no URL, the binary exits 2 before listening, naming the variable.
#[test]
fn a_direct_url_for_no_query_db_exits_two_naming_it() {
    for (direct, expect) in [
        (
            "other=postgres://h/db",
            "bad value \"other\" for QUERY_DIRECT_URLS: names no database of QUERY_DATABASE_URLS",
        ),
        (
            "main=mysql://h/db",
            "for QUERY_DIRECT_URLS: expected postgres://",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_query"))
            .env("INSTANCE_ID", "query-bad")
            .env("QUERY_DATABASE_URLS", "main=postgres://127.0.0.1:1/db")
            .env("QUERY_DIRECT_URLS", direct)
            .output()
            .expect("run the query binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
        assert!(
            stderr.contains(" ERROR query-bad configuration: ") && stderr.contains(expect),
            "missing {expect:?} in\n{stderr}"
        );
    }
}

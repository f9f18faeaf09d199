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

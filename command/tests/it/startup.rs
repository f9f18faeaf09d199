//! The shared start-up path as the binary runs it: the config line, SIGTERM → graceful stop
//! with exit 0, and a bad variable → exit 2 with a line naming it and the instance id.

use std::process::Command;

use crate::Stack;

/// Given a running command service, when it gets SIGTERM, then it logs the signal, finishes
/// the relay batch, and exits 0; every line carries its instance id.
#[test]
fn sigterm_stops_with_exit_zero() {
    let stack = Stack::new("startup_sigterm");
    let code = stack.svc.terminate();
    let log = stack.svc.log();
    assert_eq!(code, Some(0), "log:\n{log}");
    for expect in [
        " INFO command-1 config: port=",
        " INFO command-1 signal SIGTERM: stopping",
        " INFO command-1 stopped",
    ] {
        assert!(log.contains(expect), "missing {expect:?} in\n{log}");
    }
}

/// Given a bad MAY_WORKERS, the binary exits 2 before listening, naming the variable.
#[test]
fn bad_variable_exits_two_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_command"))
        .env("INSTANCE_ID", "command-bad")
        .env("MAY_WORKERS", "many")
        .output()
        .expect("run the command binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let expect = " ERROR command-bad configuration: bad value \"many\" for MAY_WORKERS";
    assert!(stderr.contains(expect), "missing {expect:?} in\n{stderr}");
}

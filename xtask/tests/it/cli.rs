//! The command line as a user meets it: the real binary prints the help from the one
//! declaration, and a bad value is one `error:` line naming the flag, exit code 1, no panic
//! and no backtrace (even with RUST_BACKTRACE set). Nothing here starts a cluster.

use std::process::{Command, Output};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str]) -> Output {
    Command::new(XTASK)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap_or_else(|e| panic!("run xtask {args:?}: {e}"))
}

#[test]
fn help_comes_from_the_declaration() {
    let out = xtask(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "up --commands N --queries M",
        "bench [--level LEVEL]",
        "drill [--short]",
    ] {
        assert!(text.contains(word), "{word:?} missing from:\n{text}");
    }
    let out = xtask(&["bench", "--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cargo xtask bench"), "{text}");
    assert!(text.contains("--connections N"), "{text}");
}

#[test]
fn a_bad_value_is_one_error_line_and_exit_code_1() {
    for (args, expect) in [
        (
            &["up", "--commands", "x", "--queries", "1"][..],
            "error: --commands expects a positive integer, got \"x\"\n",
        ),
        (
            &["bench", "--duration", "-3"][..],
            "error: --duration expects seconds above 0 and at most 86400, got \"-3\"\n",
        ),
        (
            &["drill", "--base-port", "http"][..],
            "error: --base-port expects a port number from 1 to 65535, got \"http\"\n",
        ),
    ] {
        let out = xtask(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr, expect, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

//! `cargo xtask test`: the whole gate, as CI runs it.
//!
//! Installs missing system packages first (the integration tests start real PostgreSQL, Redis,
//! nginx and PgBouncer), then formatting, clippy with warnings denied, the debug service
//! binaries (the cluster test runs them), every test of the workspace and the short fault
//! drills (`cargo xtask drill --short`). Each step prints a
//! header so a failure in CI output is easy to find.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::packages;

pub struct Test;

/// Seconds each time-boxed fuzz target runs (read by `shared::testkit::fuzz::budget`).
const FUZZ_SECONDS: &str = "FUZZ_SECONDS";

impl Test {
    pub fn run(self, sh: &Shell) -> Result<()> {
        header("system packages");
        packages::ensure_installed(sh)?;

        header("cargo fmt --all -- --check");
        cmd!(sh, "cargo fmt --all -- --check")
            .run()
            .context("formatting differs; run `cargo fmt --all`")?;

        header("cargo clippy --workspace --all-targets -- -D warnings");
        cmd!(sh, "cargo clippy --workspace --all-targets -- -D warnings")
            .run()
            .context("clippy found problems")?;

        // The cluster test in xtask/tests runs these debug binaries (`XTASK_BIN_DIR`); `cargo
        // test` alone builds a package's binaries only for that package's own tests.
        header("cargo build --workspace --bins");
        cmd!(sh, "cargo build --workspace --bins")
            .run()
            .context("build of the service binaries failed")?;

        // The fuzz targets run FUZZ_SECONDS each (CI's short form: 60 s); a caller may lower it.
        let fuzz_seconds = std::env::var(FUZZ_SECONDS).unwrap_or_else(|_| "60".to_owned());
        header(&format!(
            "cargo test --workspace (fuzz targets {fuzz_seconds} s each)"
        ));
        cmd!(sh, "cargo test --workspace --no-fail-fast")
            .env(FUZZ_SECONDS, &fuzz_seconds)
            .run()
            .context("tests failed")?;

        // The fault drills in their short form: a separate cluster of the debug binaries
        // under load, every fault once, 0 writes lost or the gate fails.
        // Through cargo, not this process's own executable: `cargo test` has just rebuilt
        // target/debug/xtask (with the test features), so our own file is gone.
        header("cargo xtask drill --short");
        cmd!(sh, "cargo run --quiet --package xtask -- drill --short")
            .run()
            .context("fault drills failed")?;

        header("all checks passed");
        Ok(())
    }
}

fn header(title: &str) {
    println!("\n==== {title} ====");
}

//! What the cluster-level tests share: the binaries under test, the port set of a 3/3/2
//! topology, running `xtask` against a state dir of their own, and a database's model (rows
//! and statistics) to compare the command DB with each query DB.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use postgres::{Client, NoTls};

/// The xtask binary under test.
pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// Where `cargo build` put the service binaries: next to the xtask binary under test.
pub fn bin_dir() -> PathBuf {
    Path::new(XTASK)
        .parent()
        .expect("xtask binary has a directory")
        .to_path_buf()
}

/// Every host port of `up --base-port base` for 3/3/2 (see `topology::Ports`).
pub fn ports_of(base: u16) -> Vec<u16> {
    let b = i32::from(base);
    let mut p = vec![b, b + 10, b - 10, b - 2640, b - 1690, b - 1640];
    p.extend((1..=3).map(|k| b + 20 + k));
    p.extend((1..=3).map(|k| b + 120 + k));
    p.extend((0..=2).map(|r| b - 2639 + r));
    p.into_iter().map(|p| p as u16).collect()
}

/// Runs `xtask args` with its state in `state` and the binaries under test, printing what
/// it said (the test's output shows every step when it fails).
pub fn run_xtask(state: &Path, args: &[&str]) -> Output {
    let out = Command::new(XTASK)
        .args(args)
        .env("XTASK_STATE_DIR", state)
        .env("XTASK_BIN_DIR", bin_dir())
        .output()
        .unwrap_or_else(|e| panic!("run xtask {args:?}: {e}"));
    println!(
        "$ xtask {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn pg(port: u16, db: &str) -> Client {
    Client::connect(&format!("postgres://postgres@127.0.0.1:{port}/{db}"), NoTls)
        .unwrap_or_else(|e| panic!("connect to {db} on {port}: {e}"))
}

/// (version, deleted) per report, and statistics (non-zero counts) of one database.
pub type Model = (
    BTreeMap<String, (i64, bool)>,
    BTreeMap<(String, String), i64>,
);

pub fn command_model(c: &mut Client) -> Model {
    model(
        c,
        "SELECT id::text, version, deleted_at IS NOT NULL FROM reports",
        "SELECT category, status, count(*) FROM reports WHERE deleted_at IS NULL GROUP BY 1, 2",
    )
}

pub fn query_model(c: &mut Client) -> Model {
    model(
        c,
        "SELECT id::text, version, deleted_at IS NOT NULL FROM read_reports",
        "SELECT category, status, count FROM statistics WHERE count <> 0",
    )
}

fn model(c: &mut Client, rows: &str, stats: &str) -> Model {
    let rows = c
        .query(rows, &[])
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let stats = c
        .query(stats, &[])
        .expect("statistics")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    (rows, stats)
}

//! The test harness (feature `testkit`): real throwaway PostgreSQL clusters and Redis servers
//! on free ports with their data in temp dirs, the services themselves as child processes, and
//! a tiny blocking HTTP client. Everything stops and cleans up on `Drop`.
//!
//! No mocks: a test that kills the database kills a real `postgres`.

pub mod client;
pub mod fuzz;
pub mod hostile;
mod postgres;
mod redis;
mod service;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use client::{http, raw, HttpResponse};
pub use postgres::PgCluster;
pub use redis::RedisServer;
pub use service::Service;

/// A port that was free a moment ago (the OS picks it; we release it for the child).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// True when process `pid` holds the listening TCP socket on `port` (from `/proc/net/tcp*`
/// and the process's fds). `free_port` can hand the same port to two tests that start at once;
/// this tells our own child from someone else's server answering on "our" port.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let port_hex = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (0A = LISTEN), …, inode
            if f.len() > 9 && f[1].ends_with(&port_hex) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when this process runs as root (PostgreSQL refuses to, so we switch user).
pub(crate) fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Starts a watchdog shell that runs `script` (with `$1..` = `args`) once this test process
/// has exited, however it exited. Statics shared by the tests of one binary are never dropped,
/// and a killed test run never drops anything: the watchdog stops its servers all the same.
pub(crate) fn on_process_exit(script: &str, args: &[&str]) {
    let watcher = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {script}",
        std::process::id()
    );
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(watcher)
        .arg("sh")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Sends a signal to a pid with the `kill` command (we forbid `unsafe`, so no libc).
pub fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

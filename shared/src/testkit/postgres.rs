//! A throwaway PostgreSQL 15 cluster: `initdb` into a temp dir, `pg_ctl` on a free port, run
//! as the unprivileged `postgres` user when the tests run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, is_root, signal, wait_until};

/// A running cluster; stopped (immediately) and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    _dir: tempfile::TempDir,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    pub port: u16,
}

fn bin(name: &str) -> String {
    match crate::db::server_bin_dir() {
        Some(dir) if dir.join(name).exists() => dir.join(name).display().to_string(),
        _ => name.to_owned(),
    }
}

/// Runs a PostgreSQL tool, as `postgres` when we are root.
fn pg_command(tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &bin(tool)]);
        c
    } else {
        Command::new(bin(tool))
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Creates and starts a cluster with database `postgres` and trust auth on 127.0.0.1.
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("reports-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown temp dir to postgres",
            );
        }
        let mut initdb = pg_command("initdb");
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data);
        run(initdb, "initdb");
        let mut cluster = PgCluster {
            log: dir.path().join("postgres.log"),
            _dir: dir,
            data,
            socket_dir,
            port: free_port(),
        };
        // Another test may have been handed the same free port a moment earlier.
        let mut tries = 0;
        while let Err(why) = cluster.try_start() {
            tries += 1;
            assert!(tries < 5, "postgres: no free port after 5 tries: {why}");
            cluster.port = free_port();
        }
        let pg_ctl = bin("pg_ctl");
        let data = cluster.data.display().to_string();
        let dir = cluster._dir.path().display().to_string();
        if is_root() {
            super::on_process_exit(
                "runuser -u postgres -- \"$1\" -D \"$2\" -m immediate stop; rm -rf \"$3\"",
                &[&pg_ctl, &data, &dir],
            );
        } else {
            super::on_process_exit(
                "\"$1\" -D \"$2\" -m immediate stop; rm -rf \"$3\"",
                &[&pg_ctl, &data, &dir],
            );
        }
        cluster
    }

    /// Starts the (stopped) cluster again on the same port and data.
    pub fn start_again(&self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let opts = format!(
            // fsync=off survives a killed postgres (the OS keeps the page cache), which is the
            // fault our tests inject; synchronous_commit stays on, because with it off a
            // killed server loses commits it already acknowledged.
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c max_connections=300",
            self.port,
            self.socket_dir.display()
        );
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &opts, "-w", "-t", "30", "start"]);
        let out = c.output().expect("run pg_ctl");
        if !out.status.success() {
            return Err(format!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.log_tail()
            ));
        }
        wait_until(
            "postgres accepts connections",
            Duration::from_secs(20),
            || ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls).is_ok(),
        );
        Ok(())
    }

    /// Clean shutdown (`pg_ctl stop -m fast`): open connections are closed.
    pub fn stop(&self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        let _ = c.output();
    }

    /// SIGKILL of the postmaster and every backend: a crash, not a shutdown.
    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            // Freeze the postmaster so it forks nothing new, kill its children (they would
            // hold the shared memory and block a restart), then the postmaster itself.
            signal(pid, "STOP");
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &pid.to_string()])
                .status();
            signal(pid, "KILL");
            wait_until("postgres to die", Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
                    && !Path::new(&format!("/proc/{pid}")).exists()
            });
        }
    }

    /// SIGSTOP (`true`) / SIGCONT (`false`) of the postmaster and its backends: a hung
    /// database, not a dead one.
    pub fn pause(&self, stop: bool) {
        let sig = if stop { "STOP" } else { "CONT" };
        if let Some(pid) = self.pid() {
            let _ = Command::new("pkill")
                .args([&format!("-{sig}"), "-P", &pid.to_string()])
                .status();
            signal(pid, sig);
        }
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// `postgres://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh database and returns its URL.
    pub fn create_db(&self, name: &str) -> String {
        let mut c = self.client("postgres");
        // CREATE DATABASE cannot run inside a (multi-statement) transaction: two calls.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .and_then(|()| c.batch_execute(&format!("CREATE DATABASE \"{name}\"")))
            .unwrap_or_else(|e| panic!("create database {name}: {e:?}"));
        self.url(name)
    }

    /// A plain client to `db`.
    pub fn client(&self, db: &str) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url(db), ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.url(db)))
    }

    /// The server log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text[text.floor_char_boundary(start)..].to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let mut c = pg_command("pg_ctl");
        c.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = c.output();
    }
}

//! A throwaway `redis-server` with AOF in a temp dir, on a free port; it can be stopped and
//! started again on the same port and data, as a Redis outage would look.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{free_port, wait_until};

#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    child: Mutex<Option<Child>>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("reports-redis-")
            .tempdir()
            .expect("temp dir");
        let server = RedisServer {
            dir,
            child: Mutex::new(None),
            port: free_port(),
        };
        server.start_again();
        let dir = server.dir.path().display().to_string();
        super::on_process_exit("sleep 1; rm -rf \"$1\"", &[&dir]);
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the server (again) on the same port and data dir.
    pub fn start_again(&self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--logfile")
            .arg(self.log_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed? `cargo xtask test` installs it)");
        super::on_process_exit("kill -9 \"$1\"", &[&child.id().to_string()]);
        *self.child.lock().expect("redis child lock") = Some(child);
        wait_until(
            "redis to accept connections",
            Duration::from_secs(10),
            || self.connection().is_some(),
        );
    }

    /// SIGKILL: everything not yet in the AOF is gone, as in a crash.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("redis child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A connection, or None while the server is down.
    pub fn connection(&self) -> Option<::redis::Connection> {
        let client = ::redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        ::redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

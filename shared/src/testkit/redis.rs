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
        let mut server = RedisServer {
            dir,
            child: Mutex::new(None),
            port: free_port(),
        };
        // Another test may have been handed the same free port a moment earlier: then our
        // redis-server exits on the failed bind and we try another port.
        let mut tries = 0;
        while !server.try_start() {
            tries += 1;
            assert!(tries < 5, "redis-server: no free port after 5 tries");
            server.port = free_port();
        }
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
        assert!(
            self.try_start(),
            "redis-server could not listen on {} again",
            self.port
        );
    }

    /// Spawns redis-server and waits until it answers on its port; false when it exited first.
    fn try_start(&self) -> bool {
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
        let pid = child.id();
        super::on_process_exit("kill -9 \"$1\"", &[&pid.to_string()]);
        *self.child.lock().expect("redis child lock") = Some(child);
        let mut exited = false;
        wait_until(
            "redis to accept connections",
            Duration::from_secs(10),
            || {
                let running = self
                    .child
                    .lock()
                    .ok()
                    .and_then(|mut c| c.as_mut().map(|c| matches!(c.try_wait(), Ok(None))))
                    .unwrap_or(false);
                if !running {
                    exited = true;
                    return true;
                }
                // Our own process must hold the port, not another test's Redis.
                super::listens_on(pid, self.port) && self.connection().is_some()
            },
        );
        if exited {
            self.stop();
        }
        !exited
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

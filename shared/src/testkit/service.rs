//! One of our service binaries as a child process on a free port, health-checked before the
//! test goes on; killed on drop. Its stderr goes to a log file the test can print on failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::{free_port, http, signal, wait_until};

#[derive(Debug)]
pub struct Service {
    bin: PathBuf,
    env: Vec<(String, String)>,
    child: Mutex<Option<Child>>,
    log: tempfile::NamedTempFile,
    pub port: u16,
}

impl Service {
    /// Starts `bin` with `env` (PORT is added) and waits until GET /health answers 200 from
    /// this very process. If another test grabbed the same free port first (our child then
    /// exits on the failed bind), it starts again on another port.
    pub fn start(bin: &str, env: &[(&str, String)]) -> Service {
        let mut service = Service {
            bin: PathBuf::from(bin),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            child: Mutex::new(None),
            log: tempfile::Builder::new()
                .prefix("reports-service-")
                .suffix(".log")
                .tempfile()
                .expect("log file"),
            port: free_port(),
        };
        for _ in 0..5 {
            if service.try_start() {
                return service;
            }
            service.port = free_port();
        }
        panic!("{}: no free port after 5 tries\n{}", bin, service.log());
    }

    /// Starts the process (again) on the same port.
    pub fn start_again(&self) {
        assert!(
            self.try_start(),
            "{} could not listen on port {} again:\n{}",
            self.bin.display(),
            self.port,
            self.log()
        );
    }

    /// Spawns the child and waits until it answers /health on its port; false when it exited
    /// first (the port was taken).
    fn try_start(&self) -> bool {
        let log = self.log.reopen().expect("log file");
        let child = Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", self.port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        let pid = child.id();
        super::on_process_exit("kill -9 \"$1\"", &[&pid.to_string()]);
        *self.child.lock().expect("child lock") = Some(child);
        let port = self.port;
        let mut exited = false;
        wait_until(
            &format!("{} /health on port {port}", self.bin.display()),
            Duration::from_secs(30),
            || {
                if !self.is_running() {
                    exited = true;
                    return true;
                }
                super::listens_on(pid, port)
                    && http(port, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200)
            },
        );
        if exited {
            self.kill();
        }
        !exited
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok()?.as_ref().map(Child::id)
    }

    /// SIGKILL and reap.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("child lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit; returns its exit code.
    pub fn terminate(&self) -> Option<i32> {
        let mut child = self.child.lock().expect("child lock").take()?;
        signal(child.id(), "TERM");
        let status = child.wait().ok()?;
        status.code()
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        match self.child.lock().expect("child lock").as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The service's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

//! `cargo xtask stop|start|restart SERVICE`: one service of the running local cluster, by its
//! seed name, for operations and fault drills.
//!
//! The supervisor owns the processes, so this only drops a request file into
//! `.cluster/control/` and waits until `state.json` shows the result (and, for start/restart,
//! until the service is healthy again).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::cluster::{wait_until, Layout};
use crate::health;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceAction {
    Stop,
    Start,
    Restart,
}

pub struct ServiceOp {
    pub action: ServiceAction,
    pub service: String,
}

/// Upper bound for a stop (the supervisor's grace period plus margin) or a start to health.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

impl ServiceOp {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let layout = Layout::new(sh);
        let state = layout.running_state()?;
        let Some(svc) = state.topology.service(&self.service) else {
            let names: Vec<String> = state
                .topology
                .services()
                .into_iter()
                .map(|s| s.name)
                .collect();
            bail!(
                "no service `{}`; services are: {}",
                self.service,
                names.join(" ")
            );
        };
        let old_pid = state
            .services
            .iter()
            .find(|s| s.name == svc.name)
            .and_then(|s| s.pid);
        let action = match self.action {
            ServiceAction::Stop => "stop",
            ServiceAction::Start => "start",
            ServiceAction::Restart => "restart",
        };
        let request = layout.control().join(format!("{}.{action}", svc.name));
        std::fs::write(&request, b"").with_context(|| format!("write {}", request.display()))?;
        let pid_now = || {
            layout
                .read_state()
                .ok()
                .and_then(|s| s.services.into_iter().find(|x| x.name == svc.name))
                .and_then(|s| s.pid)
        };
        match self.action {
            ServiceAction::Stop => {
                if !wait_until(OP_TIMEOUT, || !request.exists() && pid_now().is_none()) {
                    bail!("{} did not stop within {}s", svc.name, OP_TIMEOUT.as_secs());
                }
                println!("{} stopped", svc.name);
            }
            ServiceAction::Start | ServiceAction::Restart => {
                let started = wait_until(OP_TIMEOUT, || {
                    !request.exists()
                        && matches!(pid_now(), Some(p) if self.action == ServiceAction::Start || Some(p) != old_pid)
                });
                if !started {
                    bail!(
                        "{} did not start within {}s",
                        svc.name,
                        OP_TIMEOUT.as_secs()
                    );
                }
                if !wait_until(OP_TIMEOUT, || health::check(sh, &svc).is_ok()) {
                    bail!(
                        "{} started but is not healthy; see {}",
                        svc.name,
                        layout.log(&svc.name).display()
                    );
                }
                println!("{} {}ed (pid {})", svc.name, action, pid_now().unwrap_or(0));
            }
        }
        Ok(())
    }
}

//! `cargo xtask status [--json]`: every service of the local cluster with its pid, address and
//! health (probed now, not remembered), and each query DB's checkpoint and lag behind the
//! stream as the projection's `/metrics` reports them (and whether it is stale: beyond the
//! retention bound, not served, being rebuilt), and whether writes need a token (never
//! the token itself).

use anyhow::Result;
use serde::Serialize;
use xshell::Shell;

use crate::cluster::health::{self, DbProgress};
use crate::cluster::{alive, Layout};

pub struct Status {
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    name: String,
    pid: Option<u32>,
    address: String,
    status: String,
    restarts: u32,
    healthy: bool,
    health: String,
}

#[derive(Serialize)]
struct Report {
    phase: String,
    mode: String,
    supervisor_pid: Option<u32>,
    supervisor_alive: bool,
    /// Writes need a bearer token (`up --auth`); the token is never shown here.
    auth: bool,
    services: Vec<Row>,
    query_dbs: Vec<DbProgress>,
    query_dbs_error: Option<String>,
}

impl Status {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if let Some(deployment) = crate::deploy::compose::Deployment::find(sh) {
            return deployment.status(sh, self.json);
        }
        let layout = Layout::new(sh);
        let state = layout.read_state()?;
        let supervisor_alive = state.supervisor_pid.is_some_and(alive);
        let mut rows = Vec::new();
        for svc in state.topology.services() {
            let saved = state.services.iter().find(|s| s.name == svc.name);
            let pid = saved.and_then(|s| s.pid).filter(|p| alive(*p));
            let (healthy, health) = match health::check(sh, &svc) {
                Ok(detail) => (true, detail),
                // The outermost context names the problem; the chain is noise in a table.
                Err(err) => (false, err.to_string()),
            };
            rows.push(Row {
                name: svc.name.clone(),
                pid,
                address: svc
                    .ports
                    .iter()
                    .map(|p| format!("127.0.0.1:{}", p.0))
                    .collect::<Vec<_>>()
                    .join(","),
                status: match (supervisor_alive, saved) {
                    (false, _) => "down".into(),
                    (true, Some(s)) => s.status.clone(),
                    (true, None) => "unknown".into(),
                },
                restarts: saved.map_or(0, |s| s.restarts),
                healthy,
                health,
            });
        }
        let (query_dbs, query_dbs_error) =
            match health::http_get(state.topology.ports.projection, "/metrics") {
                Ok((200, body)) => (health::parse_projection_metrics(&body), None),
                Ok((code, _)) => (
                    Vec::new(),
                    Some(format!("projection /metrics answered {code}")),
                ),
                Err(err) => (Vec::new(), Some(format!("projection /metrics: {err:#}"))),
            };
        let report = Report {
            phase: if supervisor_alive {
                state.phase.clone()
            } else {
                "down".into()
            },
            mode: state.mode.clone(),
            supervisor_pid: state.supervisor_pid,
            supervisor_alive,
            auth: state.auth,
            services: rows,
            query_dbs,
            query_dbs_error,
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(());
        }
        println!(
            "cluster: {} ({}, supervisor pid {})",
            report.phase,
            report.mode,
            report.supervisor_pid.map_or("-".into(), |p| p.to_string())
        );
        if report.auth {
            println!(
                "auth: on (writes need `Authorization: Bearer <token>`; token in {})",
                layout.auth_token_file().display()
            );
        } else {
            println!("auth: off (writes are open: no auth — use `up --auth`)");
        }
        println!(
            "{:<20} {:>8} {:<30} {:<11} {:>8}  health",
            "SERVICE", "PID", "ADDRESS", "STATUS", "RESTARTS"
        );
        for r in &report.services {
            let mark = if r.healthy { "ok" } else { "FAIL" };
            println!(
                "{:<20} {:>8} {:<30} {:<11} {:>8}  {mark}: {}",
                r.name,
                r.pid.map_or("-".into(), |p| p.to_string()),
                r.address,
                r.status,
                r.restarts,
                r.health.lines().next().unwrap_or("")
            );
        }
        println!();
        println!(
            "{:<20} {:>14} {:>10}  STATE",
            "QUERY DB", "CHECKPOINT", "LAG"
        );
        for db in &report.query_dbs {
            let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v}"));
            // A stale DB is not served and is being rebuilt from the command DB (SPEC §7.4).
            let state = if db.stale {
                "STALE (not served; rebuilding)"
            } else {
                "current"
            };
            println!(
                "{:<20} {:>14} {:>10}  {state}",
                db.db,
                f(db.checkpoint),
                f(db.lag)
            );
        }
        if let Some(err) = &report.query_dbs_error {
            println!("(checkpoints unavailable: {err})");
        }
        Ok(())
    }
}

//! Health probes for every kind of service of the local cluster: `GET /health` for HTTP
//! services (through `crate::http`, xtask's one HTTP client), `pg_isready` for
//! PostgreSQL, `redis-cli ping` for Redis, a TCP connect for PgBouncer; plus a reader for the
//! projection's Prometheus `/metrics`.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cluster::packages::pg_tool;
use crate::cluster::topology::{Kind, Service};

/// How long one probe may take; a stuck service must not stall the supervisor's loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes one service on its local port(s); `Ok` carries a short description.
pub fn check(sh: &Shell, svc: &Service) -> Result<String> {
    let port = svc.port();
    match svc.kind {
        Kind::Postgres => {
            let port = port.to_string();
            let pg_isready = pg_tool("pg_isready");
            cmd!(sh, "{pg_isready} -q -h 127.0.0.1 -p {port} -t 2")
                .quiet()
                .ignore_stdout()
                .ignore_stderr()
                .run()
                .with_context(|| format!("{} not accepting connections on {port}", svc.name))?;
            Ok("accepting connections".into())
        }
        Kind::Redis => {
            let port = port.to_string();
            let out = cmd!(sh, "redis-cli -h 127.0.0.1 -p {port} ping")
                .quiet()
                .ignore_stderr()
                .read()
                .with_context(|| format!("redis-cli ping on {port} failed"))?;
            if out.trim() != "PONG" {
                bail!("redis answered `{}` to PING", out.trim());
            }
            Ok("PONG".into())
        }
        Kind::Pgbouncer => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
                .with_context(|| format!("pgbouncer not listening on {port}"))?;
            Ok("listening".into())
        }
        Kind::Nginx => {
            let mut parts = Vec::new();
            for (p, _) in &svc.ports {
                let (status, body) = http_get(*p, "/health")?;
                if status != 200 {
                    bail!("nginx :{p} /health answered {status}");
                }
                parts.push(format!(":{p} -> {}", instance_of(&body).unwrap_or("?")));
            }
            Ok(parts.join(", "))
        }
        Kind::Command | Kind::Query | Kind::Projection => {
            let (status, body) = http_get(port, "/health")?;
            if status != 200 {
                bail!("/health answered {status}");
            }
            Ok(format!("healthy ({})", instance_of(&body).unwrap_or("?")))
        }
    }
}

/// `GET path` on 127.0.0.1:port through xtask's one HTTP client; status code and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    crate::http::get(port, path, PROBE_TIMEOUT)
}

/// The `instance` field of a JSON health body, if any.
fn instance_of(body: &str) -> Option<&str> {
    let rest = &body[body.find("\"instance\"")? + "\"instance\"".len()..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    rest.split('"').next()
}

/// One query DB's progress as the projection reports it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DbProgress {
    pub db: String,
    pub checkpoint: Option<f64>,
    pub lag: Option<f64>,
    /// Beyond the retention bound or behind the trimmed stream: not served, being rebuilt.
    pub stale: bool,
}

/// Reads `projection_checkpoint_position{db=..}`, `projection_lag_entries{db=..}` and
/// `projection_db_stale{db=..}`.
pub fn parse_projection_metrics(text: &str) -> Vec<DbProgress> {
    let mut out: Vec<DbProgress> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let Some(db) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("db="))
            .map(|v| v.trim_matches('"').to_string())
        else {
            continue;
        };
        let Ok(value) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        let idx = match out.iter().position(|p| p.db == db) {
            Some(i) => i,
            None => {
                out.push(DbProgress {
                    db,
                    ..DbProgress::default()
                });
                out.len() - 1
            }
        };
        match name.trim() {
            "projection_checkpoint_position" => out[idx].checkpoint = Some(value),
            "projection_lag_entries" => out[idx].lag = Some(value),
            "projection_db_stale" => out[idx].stale = value == 1.0,
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_per_db() {
        let text = "# HELP x\nprojection_checkpoint_position{db=\"query-db-primary\"} 123\n\
                    projection_lag_entries{db=\"query-db-primary\"} 0\n\
                    projection_checkpoint_position{db=\"query-db-replica1\"} 120\n\
                    projection_lag_entries{db=\"query-db-replica1\"} 3\n\
                    projection_db_stale{db=\"query-db-replica1\"} 1\nother 1\n";
        let got = parse_projection_metrics(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].checkpoint, Some(123.0));
        assert_eq!(got[1].lag, Some(3.0));
        assert!(got[1].stale && !got[0].stale);
    }

    #[test]
    fn instance_is_found() {
        let body = r#"{"status":"healthy","instance": "command-2"}"#;
        assert_eq!(instance_of(body), Some("command-2"));
    }
}

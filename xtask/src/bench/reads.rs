//! The read figures of `bench --throughput` (issue 13 points 1 and 2), each as a ratio to
//! `GET /health` through nginx (nginx + HTTP alone: the most any answer can reach) and to
//! the `pgbench -S` ceiling of the same run.
//!
//! In order, each a `wrk` run of the suite's length:
//! 1. `GET /health` via nginx's read port: the HTTP ceiling;
//! 2. the hot reads via nginx: `/statistics`, and page 1 of `/reports` without a filter, by
//!    category, and by category and status (answered from the response cache while their DB
//!    is unchanged, SPEC §7.3);
//! 3. `GET /reports/{id}` for ids drawn at random from [`ID_SAMPLE`] live reports (a wrk Lua
//!    script; never one hot id), via nginx and straight to query-1, while a background writer
//!    creates [`BACKGROUND_WRITES_PER_S`] reports a second through the write port, so the read
//!    models change under the reads.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::throughput::{ratio, wrk_figure, Figure};
use crate::http::{Conn, Target};
use crate::rng::Rng;

/// Live report ids the by-id figures draw from: enough that the reads spread over the table
/// (and over PostgreSQL's buffers) like real traffic, few enough for a Lua table.
pub const ID_SAMPLE: u64 = 1000;

/// Reports created per second while the by-id figures run: a light, steady write load (the
/// projection applies it to every query DB) that keeps the read models moving.
pub const BACKGROUND_WRITES_PER_S: u64 = 50;

/// The filters of the hot list figures (a common category, and it with a status).
const HOT_CATEGORY: &str = "kebersihan";
const HOT_STATUS: &str = "pending";

/// Where the read figures go and what they are compared with.
pub struct ReadTargets<'a> {
    pub wrk: &'a Path,
    /// nginx's read port, `http://127.0.0.1:P`.
    pub read_url: &'a str,
    /// query-1 directly.
    pub query_1: &'a str,
    /// nginx's write port, for the background writer.
    pub write_url: &'a str,
    pub token: Option<&'a str>,
    pub secs: u64,
    /// `pgbench -S` tps of this run.
    pub ceiling_tps: f64,
}

/// Every read figure, in the order of the module doc.
pub fn figures(sh: &Shell, t: &ReadTargets<'_>) -> Result<Vec<Figure>> {
    let run = |name: &str, url: &str, script: Option<&Path>| -> Result<Figure> {
        eprintln!("throughput: {name} ({url})");
        let mut f = wrk_figure(sh, t.wrk, name, url, t.secs, script)?;
        f.ratio_to_ceiling = ratio(f.per_s, t.ceiling_tps);
        // Shown at once too: the table comes only after the slow write figures.
        eprintln!(
            "throughput:   {:.0} req/s, {:.3} of pgbench -S, p99 {} ms, {} errors",
            f.per_s,
            f.ratio_to_ceiling,
            f.p99_ms.map_or_else(|| "-".into(), |v| format!("{v:.1}")),
            f.errors
        );
        Ok(f)
    };
    let health = run(
        "GET /health → nginx (HTTP ceiling)",
        &format!("{}/health", t.read_url),
        None,
    )?;
    let http = health.per_s;
    let mut out = vec![health];
    let hot = [
        ("GET /statistics → nginx", "/statistics".to_owned()),
        ("GET /reports page 1 → nginx", "/reports?page=1".to_owned()),
        (
            "GET /reports page 1, category → nginx",
            format!("/reports?page=1&category={HOT_CATEGORY}"),
        ),
        (
            "GET /reports page 1, category+status → nginx",
            format!("/reports?page=1&category={HOT_CATEGORY}&status={HOT_STATUS}"),
        ),
    ];
    for (name, path) in hot {
        out.push(run(name, &format!("{}{path}", t.read_url), None)?);
    }

    let ids = live_ids(t.query_1, ID_SAMPLE)?;
    let scratch = std::env::temp_dir().join(format!("xtask-reads-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    let script = scratch.join("random-id.lua");
    std::fs::write(&script, random_id_script(&ids))
        .with_context(|| format!("write {}", script.display()))?;
    let writer = Writer::start(t.write_url, t.token)?;
    let by_id = (|| -> Result<Vec<Figure>> {
        Ok(vec![
            run(
                "GET /reports/{random id} → nginx, writes flowing",
                t.read_url,
                Some(&script),
            )?,
            run(
                "GET /reports/{random id} → query-1, writes flowing",
                t.query_1,
                Some(&script),
            )?,
        ])
    })();
    let (written, failed) = writer.stop();
    let _ = std::fs::remove_dir_all(&scratch);
    let mut by_id = by_id?;
    eprintln!(
        "throughput: background writer created {written} reports during the by-id figures \
         ({failed} failed)"
    );
    if written == 0 {
        bail!("the background writer created no report ({failed} failed): no writes flowed");
    }
    for f in &mut by_id {
        f.target = format!(
            "{} ({} random ids; {written} reports created meanwhile)",
            f.target,
            ids.len()
        );
    }
    out.extend(by_id);
    for f in &mut out {
        f.ratio_to_health = Some(ratio(f.per_s, http));
    }
    Ok(out)
}

/// Up to `n` ids of live reports, newest first, read from query-1's list.
fn live_ids(query_1: &str, n: u64) -> Result<Vec<String>> {
    let mut conn = Conn::new(Target::parse(query_1)?, Duration::from_secs(10));
    let mut ids = Vec::new();
    for page in 1..=n.div_ceil(100) {
        let resp = conn
            .request("GET", &format!("/reports?per_page=100&page={page}"), None)
            .with_context(|| format!("list page {page} of {query_1}"))?;
        let json: serde_json::Value =
            serde_json::from_slice(&resp.body).context("the list is not JSON")?;
        let items = json["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        ids.extend(
            items
                .iter()
                .filter_map(|r| r["id"].as_str())
                .map(str::to_owned),
        );
        if items.len() < 100 {
            break;
        }
    }
    ids.truncate(n as usize);
    if ids.is_empty() {
        bail!("{query_1} lists no report to read by id");
    }
    Ok(ids)
}

/// wrk's Lua script: every request reads one of `ids`, drawn at random (fixed seed).
pub fn random_id_script(ids: &[String]) -> String {
    let mut s = String::from("local ids = {\n");
    for id in ids {
        // Ids come from the service's JSON; only a UUID's characters are let through.
        if id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let _ = writeln!(s, "  \"{id}\",");
        }
    }
    s.push_str(
        "}\nmath.randomseed(13)\nrequest = function()\n  \
         return wrk.format(\"GET\", \"/reports/\" .. ids[math.random(#ids)])\nend\n",
    );
    s
}

/// The background writer: creates reports at [`BACKGROUND_WRITES_PER_S`] until stopped.
struct Writer {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(write_url: &str, token: Option<&str>) -> Result<Writer> {
        let target = Target::parse(write_url)?;
        let token = token.map(str::to_owned);
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("bench-writer".into())
            .spawn({
                let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
                move || {
                    let mut conn =
                        Conn::new(target, Duration::from_secs(10)).with_token(token.as_deref());
                    let mut rng = Rng::from_time(13);
                    let every = Duration::from_secs(1) / BACKGROUND_WRITES_PER_S as u32;
                    let mut next = Instant::now();
                    let mut written = 0;
                    while !stop.load(Ordering::Acquire) {
                        let (body, _) = crate::ops::seed::report_body(&mut rng);
                        match conn.request("POST", "/reports", Some(&body)) {
                            Ok(r) if r.ok() => written += 1,
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        next += every;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    written
                }
            })
            .context("start the background writer")?;
        Ok(Writer {
            stop,
            failed,
            thread,
        })
    }

    /// Stops it; `(created, failed)`.
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Release);
        let written = self.thread.join().unwrap_or(0);
        (written, self.failed.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_id_script_lists_only_uuids() {
        let check = |ids: &[&str], expect_ids: usize| {
            let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
            let s = random_id_script(&ids);
            assert_eq!(s.matches("\",\n").count(), expect_ids, "{s}");
            assert!(s.contains("ids[math.random(#ids)]"), "{s}");
        };
        check(&["0b6f7a52-6c1e-4a43-9d3e-0c6a7f2b1e11"], 1);
        check(
            &[
                "0b6f7a52-6c1e-4a43-9d3e-0c6a7f2b1e11",
                "\"); os.exit() --",
                "a1",
            ],
            2,
        );
    }
}

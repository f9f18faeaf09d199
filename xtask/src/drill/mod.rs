//! `cargo xtask drill [--short] [--keep] [--base-port P]`: fault drills. Starts its own local
//! cluster (2 command, 2 query, 1 replica) in a separate state dir on its own ports, runs load
//! at the `medium` level (20 writes/s + 80 reads/s through nginx), and injects one fault at a
//! time: SIGKILL of a command instance, a query instance, the projection, a query replica,
//! Redis (AOF) and the command DB; SIGSTOP/SIGCONT of a replica (hung, not dead); a PgBouncer
//! restart; the relay-leader faults: SIGSTOP of the command instance that leads the relay
//! (30 s; 8 s in `--short`), and cutting only that instance's Redis connection for as long (a
//! `CLIENT KILL` loop on its client name), each with the propagation p99 of the writes
//! acknowledged during the fault and a check that no report's versions went backwards in the
//! stream; then the retention drills of `retention.rs` (a long replica outage with a bounded
//! backlog, a replica restored from an old copy, a poison entry that decodes). After each it
//! checks that every acknowledged write is in the command DB with its
//! last version and in every query DB (check-sync, statistics included), that nothing exists
//! that nobody was told about, and how long the system took to serve again — without any
//! manual step. Prints a table, writes JSON to `target/drill/`, exits non-zero on any loss.
//!
//! `--short` (what `cargo xtask test` runs) uses the debug binaries and shorter phases.

mod leader;
mod load;
mod retention;
mod verify;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::bench::lag::Sampler;
use crate::cluster::health;
use crate::cluster::local::LocalCluster;
use crate::cluster::topology::Target;
use crate::cluster::{State, STATE_DIR_ENV};
use crate::ops::read_model::ProjectionEnv;
use load::Load;
use verify::Verdict;

/// The faults, in the order they run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill(&'static str),
    KillPostgres(&'static str),
    Hang(&'static str),
    Restart(&'static str),
    /// SIGSTOP the command instance leading the relay, SIGCONT after the leader-fault time.
    FreezeLeader,
    /// Kill the leading relay's Redis connection over and over for the leader-fault time.
    CutLeaderFromRedis,
    /// `query-db-replica1` away while far more than the retention bound flows (`retention.rs`).
    LongOutage,
    /// `query-db-replica1` restored from an old copy of its data directory.
    RestoredOld,
    /// An entry that decodes but that every query DB refuses.
    Poison,
}

const FAULTS: [Fault; 13] = [
    Fault::Kill("command-1"),
    Fault::Kill("query-1"),
    Fault::Kill("projection"),
    Fault::KillPostgres("query-db-replica1"),
    Fault::Kill("redis"),
    Fault::KillPostgres("command-db"),
    Fault::Hang("query-db-replica1"),
    Fault::Restart("pgbouncer"),
    Fault::FreezeLeader,
    Fault::CutLeaderFromRedis,
    Fault::LongOutage,
    Fault::RestoredOld,
    Fault::Poison,
];

/// How long the relay-leader faults last: long enough to show the takeover (the lease runs out
/// within ~3.5 s) and the frozen leader's wake-up; the short form keeps `cargo xtask test` quick.
const LEADER_FAULT: Duration = Duration::from_secs(30);
const LEADER_FAULT_SHORT: Duration = Duration::from_secs(8);

impl Fault {
    fn service(self) -> &'static str {
        match self {
            Fault::Kill(s) | Fault::KillPostgres(s) | Fault::Hang(s) | Fault::Restart(s) => s,
            // Which instance leads is known only when the fault is injected.
            Fault::FreezeLeader | Fault::CutLeaderFromRedis => "relay-leader",
            Fault::LongOutage | Fault::RestoredOld => "query-db-replica1",
            Fault::Poison => "projection",
        }
    }

    fn describe(self) -> String {
        match self {
            Fault::Kill(s) | Fault::KillPostgres(s) => format!("SIGKILL {s}"),
            Fault::Hang(s) => format!("SIGSTOP/SIGCONT {s}"),
            Fault::Restart(s) => format!("restart {s}"),
            Fault::FreezeLeader => "SIGSTOP relay leader".to_owned(),
            Fault::CutLeaderFromRedis => "cut relay leader from redis".to_owned(),
            Fault::LongOutage => "long outage of query-db-replica1 (bounded backlog)".into(),
            Fault::RestoredOld => "query-db-replica1 restored from an old copy".into(),
            Fault::Poison => "poison entry that decodes".into(),
        }
    }

    fn on_leader(self) -> bool {
        matches!(self, Fault::FreezeLeader | Fault::CutLeaderFromRedis)
    }
}

/// One line of the result table.
#[derive(Debug, serde::Serialize)]
struct Row {
    fault: String,
    writes_acknowledged: u64,
    writes_lost: u64,
    phantom_writes: u64,
    unanswered_writes: u64,
    recovery_ms: u64,
    client_errors_writes: u64,
    client_errors_reads: u64,
    reads_ok: u64,
    converged: bool,
    /// p99 of write → visible on every query DB, for writes acknowledged during a relay-leader
    /// fault (other faults: not measured).
    #[serde(skip_serializing_if = "Option::is_none")]
    propagation_p99_ms: Option<f64>,
    problems: Vec<String>,
    ok: bool,
    /// Fault-specific measurements (Redis memory, time to rebuild/rejoin …), when any.
    figures: String,
}

/// `cargo xtask drill` as parsed from the command line (`crate::flags` declares the flags and
/// the default base port).
pub struct Drill {
    pub short: bool,
    pub keep: bool,
    pub base_port: u16,
}

impl Drill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let root = sh.current_dir();
        let exe = std::env::current_exe().context("path of the xtask binary")?;
        let bins = if self.short {
            root.join("target/debug")
        } else {
            println!("building release binaries (cargo build --release --bins)");
            cmd!(sh, "cargo build --release --bins").run()?;
            root.join("target/release")
        };
        // Under the temp dir, not the repository: PostgreSQL runs as `postgres`, which may not
        // be able to traverse the checkout's parents (a clone under /root, say).
        let state_dir = std::env::temp_dir().join(format!("reports-drill-{}", std::process::id()));
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("create {}", state_dir.display()))?;
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", state_dir.display()))?;
        let cluster = DrillCluster {
            exe,
            root: root.clone(),
            state_dir: state_dir.clone(),
            bins,
            leader_fault: if self.short {
                LEADER_FAULT_SHORT
            } else {
                LEADER_FAULT
            },
            short: self.short,
            figures: std::cell::RefCell::new(String::new()),
        };
        cluster.xtask(&["down", "--volumes"]).ok();
        let base = self.base_port.to_string();
        cluster
            .xtask(&[
                "up",
                "--commands",
                "2",
                "--queries",
                "2",
                "--replicas",
                "1",
                "--detach",
                "--no-build",
                "--no-install",
                // The drills test faults, not nginx's per-client limits: the long-outage flood
                // (100 000 writes in the full form) would be refused with 429s.
                "--no-rate-limit",
                "--base-port",
                &base,
            ])
            .context("start the drill cluster")?;
        let result = self.drill(&cluster);
        if self.keep {
            println!(
                "cluster kept running (XTASK_STATE_DIR={})",
                state_dir.display()
            );
        } else {
            cluster.xtask(&["down", "--volumes"]).ok();
        }
        result
    }

    fn drill(&self, cluster: &DrillCluster) -> Result<()> {
        let state = cluster.state()?;
        let local = LocalCluster::of(&state.topology);
        let redis_url = state.topology.redis_url(Target::Local);
        let (pre, post) = if self.short {
            (Duration::from_secs(2), Duration::from_secs(2))
        } else {
            (Duration::from_secs(5), Duration::from_secs(5))
        };
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut rows = Vec::new();
        for fault in FAULTS {
            println!("\n== drill: {} ==", fault.describe());
            let tag = format!("{}-{}-{stamp}", fault.service(), rows.len());
            let load = Load::start(&local.write_url, &local.read_url, None, 20.0, 80.0, &tag)?;
            std::thread::sleep(pre);
            let injected_at = load.now_ms();
            let injected = Instant::now();
            let sampling = if fault.on_leader() {
                let tail = leader::stream_tail(&redis_url)?;
                let watch = leader::Watch::start(&redis_url, tail)?;
                let (feed, sampler) = Sampler::start(&local.query_dbs)?;
                load.sample_propagation(feed);
                Some((watch, sampler))
            } else {
                None
            };
            cluster.figures.borrow_mut().clear();
            let faulted = cluster.inject(fault)?;
            // The window is the fault itself: writes acknowledged after it are not sampled.
            let window = sampling.map(|(watch, sampler)| (watch, sampler, load.stop_sampling()));
            let recovered_at = cluster.wait_recovered(&faulted, &load, injected_at)?;
            let propagation =
                window.map(|(watch, sampler, sampled)| (watch, sampler.finish(sampled)));
            let recovery_ms = recovered_at.saturating_sub(injected_at);
            println!(
                "recovered after {recovery_ms} ms (injected {:?} ago)",
                injected.elapsed()
            );
            std::thread::sleep(post);
            let ledger = load.finish();
            let mut verdict: Verdict = verify::verify(
                &ledger,
                &tag,
                &cluster.bins.join("projection"),
                &ProjectionEnv::of(&state.topology),
                Duration::from_secs(60),
            )?;
            let mut propagation_p99_ms = None;
            let mut in_order = true;
            if let Some((watch, p)) = propagation {
                // The watcher ran until every sampled write was visible (or timed out), so it
                // has seen what the fault's writes put in the stream.
                let order = watch.finish()?;
                println!(
                    "propagation during the fault: p99 {:.0} ms, max {:.0} ms over {} writes \
                     ({} not visible within 15 s); stream: {} entries, {} repeated, {} out of order",
                    p.all.p99_ms,
                    p.all.max_ms,
                    p.sampled,
                    p.all.not_visible,
                    order.entries,
                    order.repeated,
                    order.out_of_order.len()
                );
                in_order = order.out_of_order.is_empty();
                verdict
                    .problems
                    .extend(order.out_of_order.into_iter().take(5));
                propagation_p99_ms = Some(p.all.p99_ms);
            }
            for p in &verdict.problems {
                println!("  problem: {p}");
            }
            let ok = verdict.ok() && in_order;
            rows.push(Row {
                fault: fault.describe(),
                writes_acknowledged: ledger.writes_acked,
                writes_lost: verdict.lost,
                phantom_writes: verdict.phantom,
                unanswered_writes: ledger.uncertain_creates
                    + ledger
                        .uncertain
                        .values()
                        .map(|n| u64::from(*n))
                        .sum::<u64>(),
                recovery_ms,
                client_errors_writes: ledger.write_errors,
                client_errors_reads: ledger.read_errors,
                reads_ok: ledger.reads_ok,
                converged: verdict.not_converged.is_empty(),
                propagation_p99_ms,
                problems: verdict.problems.clone(),
                ok,
                figures: cluster.figures.borrow().clone(),
            });
        }
        print_table(&rows);
        let out = cluster.root.join("target/drill");
        std::fs::create_dir_all(&out)?;
        let file = out.join(format!("{stamp}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(&rows)?)?;
        println!("results: {}", file.display());
        let failed: Vec<&Row> = rows.iter().filter(|r| !r.ok).collect();
        if !failed.is_empty() {
            let names: Vec<&str> = failed.iter().map(|r| r.fault.as_str()).collect();
            bail!("drill failed for: {}", names.join(", "));
        }
        println!("drill passed: 0 writes lost under every fault");
        Ok(())
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| fault | writes acknowledged | writes lost | phantom | unanswered | time to recover | client errors (writes/reads) | converged | propagation p99 during fault |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {:.1} s | {} / {} | {} | {} |",
            r.fault,
            r.writes_acknowledged,
            r.writes_lost,
            r.phantom_writes,
            r.unanswered_writes,
            r.recovery_ms as f64 / 1000.0,
            r.client_errors_writes,
            r.client_errors_reads,
            if r.converged { "yes" } else { "NO" },
            r.propagation_p99_ms
                .map_or_else(|| "–".to_owned(), |ms| format!("{:.2} s", ms / 1000.0))
        );
    }
    for r in rows.iter().filter(|r| !r.figures.is_empty()) {
        println!("- {}: {}", r.fault, r.figures);
    }
}

/// The drill's own cluster, driven through the xtask binary with its own state dir.
struct DrillCluster {
    exe: PathBuf,
    root: PathBuf,
    state_dir: PathBuf,
    bins: PathBuf,
    /// How long a relay-leader fault lasts.
    leader_fault: Duration,
    short: bool,
    /// What the last fault measured, for its row.
    figures: std::cell::RefCell<String>,
}

impl DrillCluster {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args)
            .current_dir(&self.root)
            .env(STATE_DIR_ENV, &self.state_dir)
            .env("XTASK_BIN_DIR", &self.bins)
            // Inherited by the projection through `up` and its supervisor: the retention bound
            // the retention drills outgrow.
            .env(
                "STREAM_MAX_ENTRIES",
                retention::bound(self.short).to_string(),
            );
        c
    }

    fn xtask(&self, args: &[&str]) -> Result<()> {
        let status = self
            .command(args)
            .status()
            .with_context(|| format!("run xtask {}", args.join(" ")))?;
        if !status.success() {
            bail!("xtask {} failed ({status})", args.join(" "));
        }
        Ok(())
    }

    fn state(&self) -> Result<State> {
        let path = self.state_dir.join("state.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    fn pid(&self, service: &str) -> Result<u32> {
        self.state()?
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.pid)
            .with_context(|| format!("{service} has no pid in the drill cluster's state"))
    }

    /// Injects `fault`; returns the service it hit (for the relay-leader faults, the leader).
    fn inject(&self, fault: Fault) -> Result<String> {
        let sh = Shell::new()?;
        match fault {
            Fault::Kill(service) => {
                let pid = self.pid(service)?.to_string();
                cmd!(sh, "kill -KILL {pid}").quiet().run()?;
            }
            Fault::KillPostgres(service) => {
                // The whole server dies, as in a crash: freeze the postmaster so it forks
                // nothing new, kill its backends, then the postmaster.
                let pid = self.pid(service)?.to_string();
                cmd!(sh, "kill -STOP {pid}").quiet().run()?;
                let _ = cmd!(sh, "pkill -KILL -P {pid}").quiet().run();
                cmd!(sh, "kill -KILL {pid}").quiet().run()?;
            }
            Fault::Hang(service) => {
                let pid = self.pid(service)?.to_string();
                cmd!(sh, "kill -STOP {pid}").quiet().run()?;
                let _ = cmd!(sh, "pkill -STOP -P {pid}").quiet().run();
                std::thread::sleep(Duration::from_secs(3));
                let _ = cmd!(sh, "pkill -CONT -P {pid}").quiet().run();
                cmd!(sh, "kill -CONT {pid}").quiet().run()?;
            }
            Fault::Restart(service) => self.xtask(&["restart", service])?,
            Fault::FreezeLeader => {
                let leader = leader::leader(&self.local()?.command_db)?;
                let pid = self.pid(&leader)?.to_string();
                println!("freezing {leader} (pid {pid}) for {:?}", self.leader_fault);
                cmd!(sh, "kill -STOP {pid}").quiet().run()?;
                std::thread::sleep(self.leader_fault);
                cmd!(sh, "kill -CONT {pid}").quiet().run()?;
                return Ok(leader);
            }
            Fault::CutLeaderFromRedis => {
                let local = self.local()?;
                let leader = leader::leader(&local.command_db)?;
                println!(
                    "cutting {leader}'s relay from redis for {:?}",
                    self.leader_fault
                );
                let kills = leader::cut(&local.redis, &leader, self.leader_fault)?;
                let now = leader::leader(&local.command_db)?;
                println!("{kills} connections of {leader} killed; the relay leader is now {now}");
                return Ok(leader);
            }
            Fault::LongOutage | Fault::RestoredOld | Fault::Poison => {
                let state = self.state()?;
                let local = LocalCluster::of(&state.topology);
                let xtask = |args: &[&str]| self.xtask(args);
                let ctx = retention::Ctx {
                    state: &state,
                    state_dir: &self.state_dir,
                    write_url: &local.write_url,
                    short: self.short,
                    xtask: &xtask,
                };
                let figures = match fault {
                    Fault::LongOutage => retention::long_outage(&ctx)?,
                    Fault::RestoredOld => retention::restored_old(&ctx)?,
                    _ => retention::poison(&ctx)?,
                };
                println!("{figures}");
                *self.figures.borrow_mut() = figures;
            }
        }
        Ok(fault.service().to_owned())
    }

    fn local(&self) -> Result<LeaderView> {
        let topology = self.state()?.topology;
        Ok(LeaderView {
            command_db: topology.command_db_url(Target::Local),
            redis: topology.redis_url(Target::Local),
        })
    }

    /// Waits until the faulted service is healthy again and a write and a read both succeeded
    /// after that; returns the load clock (ms) at that moment.
    fn wait_recovered(&self, service: &str, load: &Load, injected_at: u64) -> Result<u64> {
        let sh = Shell::new()?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let state = self.state()?;
        let svc = state
            .topology
            .service(service)
            .with_context(|| format!("no service {service}"))?;
        loop {
            if health::check(&sh, &svc).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{service} did not come back within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let healthy_at = load.now_ms().max(injected_at);
        loop {
            let w = load
                .last_write_ok
                .load(std::sync::atomic::Ordering::Relaxed);
            let r = load.last_read_ok.load(std::sync::atomic::Ordering::Relaxed);
            if w > healthy_at && r > healthy_at {
                return Ok(w.max(r));
            }
            if Instant::now() > deadline {
                bail!("no successful write and read after {service} recovered");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where the relay-leader faults look: the lease row and Redis.
struct LeaderView {
    command_db: String,
    redis: String,
}

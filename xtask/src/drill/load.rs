//! The drill's load: writers and readers at fixed rates through nginx, keeping a ledger of
//! every write's outcome so the verifier can tell an acknowledged write from one whose answer
//! was lost.
//!
//! Each writer thread owns the reports it created, so no two requests ever race on one report
//! and every version a 2xx names is exactly the report's version after that write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::http::{Conn, Target};
use crate::ops::seed::{CATEGORIES, STATUSES};

/// The last acknowledged state of one report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    pub version: i64,
    pub deleted: bool,
}

/// Everything the load saw.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Reports with at least one 2xx write, and their last acknowledged state.
    pub acked: HashMap<String, Acked>,
    /// Reports whose latest write got no clear answer (5xx, timeout, reset): their state may be
    /// one step ahead of `acked`.
    pub uncertain: HashMap<String, u32>,
    /// Creates whose answer was lost: a report may exist that we never heard of.
    pub uncertain_creates: u64,
    pub writes_acked: u64,
    pub write_errors: u64,
    pub reads_ok: u64,
    pub read_errors: u64,
}

/// Running load; [`Load::finish`] stops it and returns the ledger.
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ledger: Arc<Mutex<Ledger>>,
    /// Last time (ms since start) a write and a read succeeded, for recovery timing.
    pub last_write_ok: Arc<AtomicU64>,
    pub last_read_ok: Arc<AtomicU64>,
    pub started: Instant,
}

/// Request timeout: nginx's upstream timeouts are shorter, so a hung upstream shows up as a
/// 5xx from nginx, not as a client timeout.
const TIMEOUT: Duration = Duration::from_secs(15);

impl Load {
    /// Starts `writers` threads sharing `write_rps` and `readers` sharing `read_rps`.
    pub fn start(
        write_url: &str,
        read_url: &str,
        token: Option<String>,
        write_rps: f64,
        read_rps: f64,
        tag: &str,
    ) -> anyhow::Result<Load> {
        let write = Target::parse(write_url)?;
        let read = Target::parse(read_url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let started = Instant::now();
        let last_write_ok = Arc::new(AtomicU64::new(0));
        let last_read_ok = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        const WRITERS: usize = 4;
        const READERS: usize = 4;
        for w in 0..WRITERS {
            let (stop, ledger, last) = (stop.clone(), ledger.clone(), last_write_ok.clone());
            let conn = Conn::new(write.clone(), TIMEOUT).with_token(token.as_deref());
            let period = Duration::from_secs_f64(WRITERS as f64 / write_rps.max(0.1));
            let tag = format!("{tag}-w{w}");
            threads.push(
                std::thread::Builder::new()
                    .name(format!("drill-writer-{w}"))
                    .spawn(move || writer(conn, period, &tag, &stop, &ledger, &last, started))?,
            );
        }
        for r in 0..READERS {
            let (stop, ledger, last) = (stop.clone(), ledger.clone(), last_read_ok.clone());
            let conn = Conn::new(read.clone(), TIMEOUT);
            let period = Duration::from_secs_f64(READERS as f64 / read_rps.max(0.1));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("drill-reader-{r}"))
                    .spawn(move || reader(conn, period, r, &stop, &ledger, &last, started))?,
            );
        }
        Ok(Load {
            stop,
            threads,
            ledger,
            last_write_ok,
            last_read_ok,
            started,
        })
    }

    /// Milliseconds since the load started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
        match Arc::try_unwrap(self.ledger) {
            Ok(m) => m.into_inner().unwrap_or_default(),
            Err(shared) => std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }
}

fn writer(
    mut conn: Conn,
    period: Duration,
    tag: &str,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    last_ok: &AtomicU64,
    started: Instant,
) {
    // Reports this thread created and has not deleted: (id, acked version).
    let mut mine: Vec<(String, i64)> = Vec::new();
    let mut next = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let roll = i % 10;
        if mine.len() < 3 || roll < 6 {
            let body = json!({
                "title": format!("Laporan {tag} #{i}"),
                "description": "Laporan uji ketahanan: jalan rusak dan sampah menumpuk",
                "category": CATEGORIES[(i as usize) % CATEGORIES.len()],
            })
            .to_string();
            let r = conn.request("POST", "/reports", Some(body.as_bytes()));
            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(resp) if resp.status == 201 => {
                    let id = json_id(&resp.body);
                    if let (Some(id), Some(v)) = (id, resp.version()) {
                        l.acked.insert(
                            id.clone(),
                            Acked {
                                version: v,
                                deleted: false,
                            },
                        );
                        l.writes_acked += 1;
                        mine.push((id, v));
                        last_ok.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                }
                Ok(resp) if (400..500).contains(&resp.status) => l.write_errors += 1,
                _ => {
                    l.write_errors += 1;
                    l.uncertain_creates += 1;
                }
            }
        } else {
            let k = (i as usize * 7) % mine.len();
            let (id, _) = mine[k].clone();
            let delete = roll == 9;
            let r = if delete {
                conn.request("DELETE", &format!("/reports/{id}"), None)
            } else {
                let body = json!({
                    "status": STATUSES[(i as usize) % STATUSES.len()],
                    "category": CATEGORIES[(i as usize / 3) % CATEGORIES.len()],
                })
                .to_string();
                conn.request("PUT", &format!("/reports/{id}"), Some(body.as_bytes()))
            };
            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            match r {
                Ok(resp) if resp.ok() => {
                    if let Some(v) = resp.version() {
                        l.acked.insert(
                            id.clone(),
                            Acked {
                                version: v,
                                deleted: delete,
                            },
                        );
                        l.uncertain.remove(&id);
                        l.writes_acked += 1;
                        last_ok.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        if delete {
                            mine.swap_remove(k);
                        } else {
                            mine[k].1 = v;
                        }
                    }
                }
                Ok(resp) if (400..500).contains(&resp.status) => l.write_errors += 1,
                _ => {
                    // The change may or may not have committed: leave this report alone from
                    // now on, so "one step ahead" is the only possible surprise.
                    l.write_errors += 1;
                    *l.uncertain.entry(id.clone()).or_default() += 1;
                    mine.swap_remove(k);
                }
            }
        }
        pace(&mut next, period, stop);
    }
}

fn reader(
    mut conn: Conn,
    period: Duration,
    r: usize,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    last_ok: &AtomicU64,
    started: Instant,
) {
    let mut next = Instant::now();
    let mut i = r;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let path = match i % 4 {
            0 => "/statistics".to_owned(),
            1 => format!("/reports?category={}", CATEGORIES[i % CATEGORIES.len()]),
            _ => format!("/reports?page={}", 1 + i % 3),
        };
        let ok = matches!(conn.request("GET", &path, None), Ok(resp) if resp.ok());
        {
            let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                l.reads_ok += 1;
                last_ok.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            } else {
                l.read_errors += 1;
            }
        }
        pace(&mut next, period, stop);
    }
}

/// Sleeps until the next slot of a fixed schedule; a late request does not shift the schedule.
fn pace(next: &mut Instant, period: Duration, stop: &AtomicBool) {
    *next += period;
    let now = Instant::now();
    if *next > now {
        let wait = *next - now;
        // Sleep in small steps so a stop is noticed quickly.
        let end = now + wait;
        while Instant::now() < end && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
    } else if now - *next > Duration::from_secs(1) {
        // Far behind (a long outage): restart the schedule instead of bursting to catch up.
        *next = now;
    }
}

fn json_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some(v.get("data")?.get("id")?.as_str()?.to_owned())
}

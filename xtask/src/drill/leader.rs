//! The relay-leader faults of the drill: find which command instance leads the relay (the
//! lease row in the command DB), freeze it (SIGSTOP … SIGCONT), or cut only its Redis
//! connection (a `CLIENT KILL` loop on its client name), and afterwards check that the stream
//! kept every report's versions in order across the takeover.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::{Client, NoTls};
use shared::event::{Event, STREAM};

/// How often the cut loop looks for the leader's connection. The relay reconnects after a
/// backoff of at least 100 ms, so a fresh connection lives a few ms — as if its packets were
/// dropped by a firewall rule, which we cannot install without root.
const CUT_EVERY: Duration = Duration::from_millis(10);

/// The Redis client name of an instance's relay connection; the command service sets it
/// (`command::relay::client_name`).
fn client_name(instance: &str) -> String {
    format!("relay-{instance}")
}

/// The instance holding an unexpired relay lease (waits up to 30 s for one).
pub fn leader(command_db: &str) -> Result<String> {
    let mut db = Client::connect(command_db, NoTls)
        .with_context(|| format!("connect to command-db at {command_db}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = db
            .query(
                "SELECT split_part(holder, '/', 1) FROM relay_lease WHERE expires_at > now()",
                &[],
            )
            .context("read relay_lease")?;
        if let Some(row) = rows.first() {
            return Ok(row.try_get(0)?);
        }
        if Instant::now() > deadline {
            bail!("no relay holds the lease");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills every Redis connection named after `instance`'s relay, for `duration`; returns how
/// many it killed.
pub fn cut(redis_url: &str, instance: &str, duration: Duration) -> Result<u64> {
    let mut conn = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .with_context(|| format!("connect to redis at {redis_url}"))?;
    let name = format!("name={}", client_name(instance));
    let deadline = Instant::now() + duration;
    let mut kills = 0;
    while Instant::now() < deadline {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut conn)
            .context("CLIENT LIST")?;
        for line in list.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if !fields.contains(&name.as_str()) {
                continue;
            }
            if let Some(id) = fields.iter().find_map(|f| f.strip_prefix("id=")) {
                // Gone already is fine: the relay reconnects and we find it again.
                let killed: redis::RedisResult<i64> = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query(&mut conn);
                kills += u64::from(killed.unwrap_or(0) > 0);
            }
        }
        std::thread::sleep(CUT_EVERY);
    }
    Ok(kills)
}

/// The id of the stream's last entry (`0-0` when empty): where a fault's window starts.
pub fn stream_tail(redis_url: &str) -> Result<String> {
    let mut conn = redis::Client::open(redis_url)
        .and_then(|c| c.get_connection())
        .with_context(|| format!("connect to redis at {redis_url}"))?;
    let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(STREAM)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(&mut conn)
        .context("XREVRANGE")?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
}

/// What the stream held during a fault.
#[derive(Debug, Default)]
pub struct Order {
    pub entries: usize,
    /// Entries repeating a version the stream already had for that report (at-least-once).
    pub repeated: usize,
    /// Reports whose versions went backwards in stream order (must be none).
    pub out_of_order: Vec<String>,
}

/// Follows the stream from entry `since` while a fault runs (the projection trims what every
/// query DB has applied, so reading afterwards would miss most of it); [`Watch::finish`] stops
/// and checks that no report's version ever goes down.
pub struct Watch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Order>>,
}

impl Watch {
    pub fn start(redis_url: &str, since: String) -> Result<Watch> {
        let mut conn = redis::Client::open(redis_url)
            .and_then(|c| c.get_connection())
            .with_context(|| format!("connect to redis at {redis_url}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("drill-stream-watch".into())
            .spawn(move || follow(&mut conn, since, &flag))
            .context("spawn the stream watcher")?;
        Ok(Watch { stop, handle })
    }

    pub fn finish(self) -> Result<Order> {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.join() {
            Ok(order) => order,
            Err(_) => bail!("the stream watcher panicked"),
        }
    }
}

fn follow(conn: &mut redis::Connection, mut since: String, stop: &AtomicBool) -> Result<Order> {
    let mut order = Order::default();
    let mut last: HashMap<uuid::Uuid, i64> = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        // Nil when BLOCK times out with nothing new.
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(200)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(&since)
            .query(conn)
            .context("XREAD")?;
        let Some(reply) = reply else { continue };
        for entry in reply.keys.iter().flat_map(|k| k.ids.iter()) {
            since.clone_from(&entry.id);
            let fields: Vec<(&str, Vec<u8>)> = entry
                .map
                .iter()
                .filter_map(|(k, v)| match v {
                    redis::Value::BulkString(b) => Some((k.as_str(), b.clone())),
                    _ => None,
                })
                .collect();
            // An entry this version cannot decode is the projection's business (DLQ).
            let Ok(event) = Event::from_fields(fields.iter().map(|(k, v)| (*k, v.as_slice())))
            else {
                continue;
            };
            order.entries += 1;
            match last.insert(event.report_id, event.version) {
                Some(prev) if event.version < prev => {
                    order.out_of_order.push(format!(
                        "report {}: version {} after {prev} in the stream",
                        event.report_id, event.version
                    ));
                    last.insert(event.report_id, prev);
                }
                Some(prev) if event.version == prev => order.repeated += 1,
                _ => {}
            }
        }
    }
    Ok(order)
}

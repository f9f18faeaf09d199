//! Shared helpers: one PostgreSQL cluster for the binary, a simulated command side that
//! generates versioned events, publishing to the stream, starting the projection, and reading
//! back every query DB for comparison.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shared::event::{Event, EventType, GROUP, STREAM};
use shared::model::{Category, Report, Status, Tombstone};
use shared::testkit::{http, PgCluster, RedisServer, Service};
use uuid::Uuid;

/// One cluster for the whole binary; tests take a fresh database each.
pub fn pg() -> &'static PgCluster {
    static PG: OnceLock<PgCluster> = OnceLock::new();
    PG.get_or_init(PgCluster::start)
}

/// Starts the projection over `dbs` (`(name, url)`) and `redis`.
pub fn start_projection(instance: &str, redis: &RedisServer, dbs: &[(&str, String)]) -> Service {
    start_projection_with(instance, redis, dbs, &[])
}

/// [`start_projection`] with more environment (a retention bound, a command DB).
pub fn start_projection_with(
    instance: &str,
    redis: &RedisServer,
    dbs: &[(&str, String)],
    extra: &[(&str, String)],
) -> Service {
    let urls: Vec<String> = dbs.iter().map(|(n, u)| format!("{n}={u}")).collect();
    let mut env = vec![
        ("INSTANCE_ID", instance.to_owned()),
        ("REDIS_URL", redis.url()),
        ("QUERY_DATABASE_URLS", urls.join(",")),
    ];
    env.extend(extra.iter().cloned());
    Service::start(env!("CARGO_BIN_EXE_projection"), &env)
}

/// The stale mark in a query DB's checkpoint row (false when there is no row).
pub fn stale_mark(url: &str) -> bool {
    postgres::Client::connect(url, postgres::NoTls)
        .ok()
        .and_then(|mut c| {
            c.query_opt("SELECT stale FROM checkpoint", &[])
                .ok()
                .flatten()
        })
        .is_some_and(|r| r.get::<_, bool>(0))
}

/// XLEN of the stream.
pub fn stream_len(conn: &mut redis::Connection) -> i64 {
    redis::cmd("XLEN").arg(STREAM).query(conn).expect("xlen")
}

/// A tiny deterministic PRNG (xorshift64*): reproducible runs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// A simulated command side: reports with versions, an event log with positions, and the
/// expected read model.
pub struct CommandSide {
    rng: Rng,
    reports: Vec<(Report, bool)>,
    position: i64,
    pub log: Vec<Event>,
}

impl CommandSide {
    pub fn new(seed: u64) -> CommandSide {
        CommandSide {
            rng: Rng::new(seed),
            reports: Vec::new(),
            position: 0,
            log: Vec::new(),
        }
    }

    fn pick<T: Copy>(&mut self, all: &[T]) -> T {
        all[self.rng.below(all.len() as u64) as usize]
    }

    /// The next change: ~35 % creates, ~50 % updates (category and/or status), ~15 % deletes.
    pub fn next_event(&mut self) -> Event {
        let roll = self.rng.below(100);
        let idx = if self.reports.is_empty() {
            None
        } else {
            Some(self.rng.below(self.reports.len() as u64) as usize)
        };
        let now = shared::model::now_micros();
        self.position += 1;
        let (event_type, report_id, version, payload) = match idx {
            Some(i) if roll >= 35 && !self.reports[i].1 => {
                let category = self.pick(Category::ALL);
                let status = self.pick(Status::ALL);
                let change = self.rng.below(3);
                let (r, deleted) = &mut self.reports[i];
                r.version += 1;
                r.updated_at = now;
                if roll >= 85 {
                    *deleted = true;
                    let t = Tombstone {
                        id: r.id,
                        version: r.version,
                        deleted_at: now,
                    };
                    (EventType::ReportDeleted, r.id, r.version, json(&t))
                } else {
                    match change {
                        0 => r.category = category,
                        1 => r.status = status,
                        _ => {
                            r.title = format!("{} (edited)", r.title);
                            r.address = Some(format!("Jl. Merdeka No. {}", self.position));
                        }
                    }
                    (EventType::ReportUpdated, r.id, r.version, json(&*r))
                }
            }
            _ => {
                let r = Report {
                    id: Uuid::new_v4(),
                    title: format!("Laporan {}", self.position),
                    description: "Jalan berlubang di depan sekolah".into(),
                    category: self.pick(Category::ALL),
                    status: Status::Pending,
                    version: 1,
                    created_at: now,
                    updated_at: now,
                    // Every other report has a place, so the place columns are exercised.
                    location: (self.position % 2 == 0).then(|| shared::model::Location {
                        lat: -6.2 + self.position as f64 * 1e-4,
                        lng: 106.8,
                    }),
                    address: (self.position % 2 == 0)
                        .then(|| format!("Jl. Sudirman {}", self.position)),
                    media_url: None,
                };
                let payload = json(&r);
                let id = r.id;
                self.reports.push((r, false));
                (EventType::ReportCreated, id, 1, payload)
            }
        };
        let e = Event {
            event_id: Uuid::new_v4(),
            event_type,
            report_id,
            version,
            position: self.position,
            payload,
            timestamp: now,
        };
        self.log.push(e.clone());
        e
    }

    /// `n` events, with an at-least-once relay's duplicates of earlier events mixed in
    /// (every 25th is a re-publication of a random older event).
    pub fn batch(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(self.next_event());
            if i % 25 == 24 {
                let j = self.rng.below(self.log.len() as u64) as usize;
                out.push(self.log[j].clone());
            }
        }
        out
    }

    /// Makes `client`'s command DB hold exactly this command side: every report's current row
    /// and every event of the log at its position (what the command service commits before
    /// the relay publishes). Call it before publishing the events it added.
    pub fn write_command_db(&self, client: &mut postgres::Client) {
        let mut tx = client.transaction().expect("begin");
        tx.batch_execute("DELETE FROM event_log; DELETE FROM reports;")
            .expect("clear");
        for (r, deleted) in &self.reports {
            let deleted_at = deleted.then_some(r.updated_at);
            tx.execute(
                "INSERT INTO reports (id, title, description, category, status, version, \
                 created_at, updated_at, deleted_at, lat, lng, address) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                &[
                    &r.id,
                    &r.title,
                    &r.description,
                    &r.category.as_str(),
                    &r.status.as_str(),
                    &r.version,
                    &r.created_at,
                    &r.updated_at,
                    &deleted_at,
                    &r.location.map(|l| l.lat),
                    &r.location.map(|l| l.lng),
                    &r.address,
                ],
            )
            .expect("insert report");
        }
        for e in &self.log {
            tx.execute(
                "INSERT INTO event_log (position, event_id, event_type, report_id, version, \
                 payload, created_at, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
                &[
                    &e.position,
                    &e.event_id,
                    &e.event_type.as_str(),
                    &e.report_id,
                    &e.version,
                    &e.payload,
                    &e.timestamp,
                ],
            )
            .expect("insert event");
        }
        tx.commit().expect("commit");
    }

    /// The read model every query DB must hold.
    pub fn expected(&self) -> Vec<RowView> {
        let mut rows: Vec<RowView> = self
            .reports
            .iter()
            .map(|(r, deleted)| RowView {
                id: r.id,
                version: r.version,
                deleted: *deleted,
                live: (!deleted).then(|| (r.category.to_string(), r.status.to_string(), r.clone())),
            })
            .collect();
        rows.sort_by_key(|r| r.id);
        rows
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serialise")
}

/// XADDs `events` to the stream in one pipeline.
pub fn publish(conn: &mut redis::Connection, events: &[Event]) {
    for chunk in events.chunks(500) {
        let mut pipe = redis::pipe();
        for e in chunk {
            let cmd = pipe.cmd("XADD").arg(STREAM).arg("*");
            for (k, v) in e.to_fields() {
                cmd.arg(k).arg(v);
            }
        }
        let _: redis::Value = pipe.query(conn).expect("xadd");
    }
}

/// One row as a test compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    pub id: Uuid,
    pub version: i64,
    pub deleted: bool,
    /// For live rows: category and status columns and the `doc` parsed back.
    pub live: Option<(String, String, Report)>,
}

/// How many rows' `lat`, `lng`, `address` or `search` disagree with their `doc` (every
/// writer fills them from what it decoded, no longer the DB from `doc`), and how many rows
/// are located, so a caller can tell the check saw places at all.
pub fn place_mismatches(client: &mut postgres::Client) -> (i64, i64) {
    let r = client
        .query_one(
            "SELECT count(*) FILTER (WHERE \
                 lat IS DISTINCT FROM (doc::jsonb #>> '{location,lat}')::float8 \
                 OR lng IS DISTINCT FROM (doc::jsonb #>> '{location,lng}')::float8 \
                 OR address IS DISTINCT FROM doc::jsonb ->> 'address' \
                 OR search IS DISTINCT FROM \
                    report_search(title, description, doc::jsonb ->> 'address')), \
               count(*) FILTER (WHERE lat IS NOT NULL) \
             FROM read_reports",
            &[],
        )
        .expect("place columns");
    (r.get(0), r.get(1))
}

/// The read model, or the error while it is not there yet (schema still being applied).
pub fn rows(client: &mut postgres::Client) -> Result<Vec<RowView>, postgres::Error> {
    Ok(client
        .query(
            "SELECT id, version, deleted_at IS NOT NULL, category, status, doc \
             FROM read_reports ORDER BY id",
            &[],
        )?
        .iter()
        .map(|r| {
            let deleted: bool = r.get(2);
            let doc: String = r.get(5);
            RowView {
                id: r.get(0),
                version: r.get(1),
                deleted,
                live: (!deleted).then(|| {
                    (
                        r.get(3),
                        r.get(4),
                        serde_json::from_str(&doc).expect("doc is a report"),
                    )
                }),
            }
        })
        .collect())
}

/// `statistics` (non-zero counters) and the GROUP BY over live rows, for comparison.
pub fn stats_and_group_by(client: &mut postgres::Client) -> (Stats, Stats) {
    let read = |client: &mut postgres::Client, sql: &str| -> Stats {
        client
            .query(sql, &[])
            .expect("stats")
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect()
    };
    (
        read(
            client,
            "SELECT category, status, count FROM statistics WHERE count <> 0",
        ),
        read(
            client,
            "SELECT category, status, count(*) FROM read_reports WHERE deleted_at IS NULL \
             GROUP BY 1, 2",
        ),
    )
}

pub type Stats = BTreeMap<(String, String), i64>;

/// Polls until `url`'s read model equals `expected`; panics with expected vs got.
pub fn wait_converged(url: &str, expected: &[RowView], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut last = Vec::new();
    loop {
        if let Ok(mut c) = postgres::Client::connect(url, postgres::NoTls) {
            last = rows(&mut c).unwrap_or_default();
            if last == expected {
                let (stats, group_by) = stats_and_group_by(&mut c);
                assert_eq!(stats, group_by, "statistics vs GROUP BY in {url}");
                return;
            }
        }
        if Instant::now() > deadline {
            let diff: Vec<_> = expected
                .iter()
                .filter(|e| !last.contains(e))
                .take(3)
                .collect();
            panic!(
                "{url} did not converge in {timeout:?}: expected {} rows, got {}; first missing/different: {diff:#?}",
                expected.len(),
                last.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Entries pending in the projection's group (read, not acked).
pub fn pending(conn: &mut redis::Connection) -> i64 {
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query(conn)
        .expect("xpending");
    match v {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("xpending count: {other:?}"),
        },
        other => panic!("xpending: {other:?}"),
    }
}

/// One metric line's value, e.g. `metric(port, "projection_lag_seconds", Some("a"))`.
/// The writer's time in `stage` for `db` (`projection_writer_seconds_total`).
pub fn stage_seconds(port: u16, db: &str, stage: &str) -> Option<f64> {
    let r = http(port, "GET", "/metrics", &[], b"").ok()?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let key = format!("projection_writer_seconds_total{{db=\"{db}\",stage=\"{stage}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

pub fn metric(port: u16, name: &str, db: Option<&str>) -> Option<f64> {
    let r = http(port, "GET", "/metrics", &[], b"").ok()?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    let key = match db {
        Some(db) => format!("{name}{{db=\"{db}\"}} "),
        None => format!("{name} "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

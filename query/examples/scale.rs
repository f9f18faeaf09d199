//! `cargo run --release -p query --example scale -- N POSTGRES_URL` (what `cargo xtask bench
//! --scale N` runs): the read path at N reports. Fills a scratch database next to the given
//! query DB (the local cluster's query-db-primary) with N rows and their exact
//! statistics, then runs the query service's own statements (`query::store`, the same text
//! the service sends) with the parameters a client would cause: `EXPLAIN` must show index use
//! and no sequential scan of `read_reports`, and each statement's latency is measured.
//!
//! Totals come from the `statistics` table, so counting is O(1) at any size; deep pages pay
//! for their OFFSET (an index walk), which the table shows honestly.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};

/// The scratch database, dropped afterwards.
const SCRATCH_DB: &str = "scale_bench";
/// Timed runs per statement (after one warm-up).
const RUNS: usize = 30;

/// Typed parameters of one statement, as `query_typed` takes them.
type Params<'a> = Vec<(&'a (dyn ToSql + Sync), Type)>;

/// One measured statement.
#[derive(Debug)]
struct ScaleRow {
    what: String,
    /// The plan's access path on `read_reports` (index name), from EXPLAIN.
    plan: String,
    p50_ms: f64,
    max_ms: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [rows, url] => rows
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("N expects a positive number, got `{rows}`"))
            .and_then(|rows| Ok(table(rows, &run(url, rows)?))),
        _ => Err(anyhow::anyhow!("usage: scale N POSTGRES_URL")),
    };
    match result {
        Ok(text) => print!("{text}"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Fills `SCRATCH_DB` next to `primary_url` with `rows` reports and measures the read path.
fn run(primary_url: &str, rows: u64) -> Result<Vec<ScaleRow>> {
    let admin_url = replace_db(primary_url, "postgres");
    let mut admin = Client::connect(&admin_url, NoTls)
        .with_context(|| format!("connect to {admin_url} (is the local cluster up?)"))?;
    admin.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)"
    ))?;
    admin.batch_execute(&format!("CREATE DATABASE {SCRATCH_DB}"))?;
    let result = measure(&replace_db(primary_url, SCRATCH_DB), rows);
    admin.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)"
    ))?;
    result
}

fn measure(url: &str, rows: u64) -> Result<Vec<ScaleRow>> {
    let mut c = Client::connect(url, NoTls).with_context(|| format!("connect to {url}"))?;
    shared::migrate::query_db(&mut c)?;
    let started = Instant::now();
    println!("filling {rows} reports …");
    let n = i64::try_from(rows).context("row count")?;
    // Six categories and four statuses spread evenly, 2 % tombstones, one report a second.
    c.execute(
        "INSERT INTO read_reports (id, title, description, category, status, version, \
         created_at, updated_at, deleted_at, doc) \
         SELECT md5(i::text)::uuid, 'Laporan ' || i, 'Deskripsi laporan nomor ' || i, \
                (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + i % 6], \
                (ARRAY['pending','in_progress','resolved','rejected'])[1 + (i / 6) % 4], \
                1, t, t, CASE WHEN i % 50 = 0 THEN t END, \
                json_build_object('id', md5(i::text)::uuid, 'title', 'Laporan ' || i, \
                    'description', 'Deskripsi laporan nomor ' || i, 'version', 1)::text \
         FROM generate_series(1, $1::int8) AS i, \
              LATERAL (SELECT timestamptz '2026-01-01' + i * interval '1 second' AS t) ts",
        &[&n],
    )?;
    c.batch_execute(
        "INSERT INTO statistics (category, status, count, last_updated) \
         SELECT category, status, count(*), now() FROM read_reports WHERE deleted_at IS NULL \
         GROUP BY 1, 2; ANALYZE read_reports; ANALYZE statistics;",
    )?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    let some_id: uuid::Uuid = c
        .query_one(
            "SELECT id FROM read_reports WHERE deleted_at IS NULL LIMIT 1",
            &[],
        )?
        .get(0);

    let cat = "kesehatan";
    let status = "resolved";
    let cases: Vec<(String, &str, Params)> = vec![
        (
            "list, page 1".into(),
            query::store::LIST_ALL,
            vec![(&20i64, Type::INT8), (&0i64, Type::INT8)],
        ),
        (
            "list, page 50".into(),
            query::store::LIST_ALL,
            vec![(&20i64, Type::INT8), (&980i64, Type::INT8)],
        ),
        (
            "list, page 5000".into(),
            query::store::LIST_ALL,
            vec![(&20i64, Type::INT8), (&99_980i64, Type::INT8)],
        ),
        (
            "by category, page 1".into(),
            query::store::LIST_CATEGORY,
            vec![
                (&20i64, Type::INT8),
                (&0i64, Type::INT8),
                (&cat, Type::TEXT),
            ],
        ),
        (
            "by status, page 1".into(),
            query::store::LIST_STATUS,
            vec![
                (&20i64, Type::INT8),
                (&0i64, Type::INT8),
                (&status, Type::TEXT),
            ],
        ),
        (
            "by category + status, page 1 (100 per page)".into(),
            query::store::LIST_CATEGORY_STATUS,
            vec![
                (&100i64, Type::INT8),
                (&0i64, Type::INT8),
                (&cat, Type::TEXT),
                (&status, Type::TEXT),
            ],
        ),
        (
            "by id".into(),
            query::store::REPORT_BY_ID,
            vec![(&some_id, Type::UUID)],
        ),
        (
            "statistics".into(),
            query::store::STATISTICS,
            vec![(&None::<String>, Type::TEXT)],
        ),
    ];
    let mut out = Vec::new();
    for (what, sql, params) in &cases {
        let plan_params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(p, _)| *p).collect();
        let plan: Vec<String> = c
            .query(&format!("EXPLAIN {sql}"), &plan_params)?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect();
        let plan_text = plan.join("\n");
        if plan_text.contains("Seq Scan on read_reports") {
            bail!("{what}: sequential scan of read_reports at {rows} rows:\n{plan_text}");
        }
        let access = plan
            .iter()
            .filter_map(|l| {
                let l = l.trim().trim_start_matches("->").trim();
                l.split_once(" using ")
                    .map(|(_, rest)| rest.split(' ').next().unwrap_or(rest).to_owned())
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut times = Vec::with_capacity(RUNS);
        c.query_typed(sql, params)?;
        for _ in 0..RUNS {
            let t = Instant::now();
            c.query_typed(sql, params)?;
            times.push(t.elapsed());
        }
        times.sort();
        out.push(ScaleRow {
            what: what.clone(),
            plan: access,
            p50_ms: ms(times[RUNS / 2]),
            max_ms: ms(times[RUNS - 1]),
        });
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// The same URL with another database name.
fn replace_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => url.to_owned(),
    }
}

/// The table printed on screen.
fn table(rows: u64, results: &[ScaleRow]) -> String {
    let mut t = format!("read path at {rows} reports (no sequential scan of read_reports)\n");
    t.push_str("| statement | index used | p50 ms | max ms |\n|---|---|---|---|\n");
    for r in results {
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} |\n",
            r.what, r.plan, r.p50_ms, r.max_ms
        ));
    }
    t
}

//! `cargo run --release -p query --example scale -- N POSTGRES_URL` (what `cargo xtask bench
//! --scale N` runs): the read path at N reports. Fills a scratch database next to the given
//! query DB (the local cluster's query-db-primary) with N rows and their exact
//! statistics, then runs the query service's own statements (`query::store`, the same text
//! the service sends) with the parameters a client would cause: `EXPLAIN` must show index use
//! and no sequential scan of `read_reports` or `report_history`, and each statement's latency
//! is measured (p50, p99, max over [`RUNS`] runs).
//!
//! The SPEC §7.1 reads — `near=`, `bbox=`, `q=`, cursor pages and a report's history — are
//! built by `query::search::Statement::build` from a `ListQuery` parsed out of the very query
//! parameters a client sends, and `query::history::SELECT_HISTORY`, so what is measured is
//! what the service runs. The rows are located around four real city centres (90 % of them,
//! within ~5 km), with Indonesian titles, and one history row per version.
//!
//! Totals of plain lists come from the `statistics` table, so counting is O(1) at any size;
//! those of `near`/`bbox`/`q` are counted up to `query::search::TOTAL_CAP`. Deep numbered pages
//! of plain lists skip whole buckets of `list_counts`, which the fill produces through the
//! schema's own triggers (one bulk INSERT, one walk to cut the buckets); deep `near` pages
//! still walk the nearer rows. `SCALE_KEEP_DB`, `SCALE_EXPLAIN_ANALYZE`, `SCALE_RUNS` and
//! `SCALE_ONLY` (below) are for working on a statement.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls};
use query::search::{ListQuery, NearSource, Statement};

/// The scratch database, dropped afterwards.
const SCRATCH_DB: &str = "scale_bench";
/// Timed runs per statement (after one warm-up): enough for a p99 that is not just the max.
const RUNS: usize = 200;
/// Set (to anything) to keep `SCRATCH_DB` afterwards and reuse it when it already holds the
/// asked number of reports: the fill of a million takes minutes, a plan change seconds.
const KEEP_ENV: &str = "SCALE_KEEP_DB";
/// Set (to anything) to print each statement's `EXPLAIN (ANALYZE, BUFFERS)` before timing it:
/// the plan that was measured, not only its index names.
const ANALYZE_ENV: &str = "SCALE_EXPLAIN_ANALYZE";
/// Overrides [`RUNS`] (a quick look while changing a statement; the figures use the default).
const RUNS_ENV: &str = "SCALE_RUNS";
/// Set to a piece of a statement's name to measure only the statements whose name contains it
/// (working on one shape without waiting for all of them); the figures measure every one.
const ONLY_ENV: &str = "SCALE_ONLY";

/// Typed parameters of one statement, as `query_typed` takes them.
type Params<'a> = Vec<(&'a (dyn ToSql + Sync), Type)>;

/// One measured statement.
#[derive(Debug)]
struct ScaleRow {
    what: String,
    /// The plan's access path on `read_reports` (index name), from EXPLAIN.
    plan: String,
    p50_ms: f64,
    p99_ms: f64,
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
    let keep = std::env::var_os(KEEP_ENV).is_some();
    let url = replace_db(primary_url, SCRATCH_DB);
    let reuse = keep && filled(&mut admin, &url, rows);
    if !reuse {
        admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)"
        ))?;
        admin.batch_execute(&format!("CREATE DATABASE {SCRATCH_DB}"))?;
    }
    let result = measure(&url, rows, !reuse);
    if !keep {
        admin.batch_execute(&format!(
            "DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)"
        ))?;
    }
    result
}

/// Whether `SCRATCH_DB` exists and holds exactly `rows` reports (a kept fill to reuse).
fn filled(admin: &mut Client, url: &str, rows: u64) -> bool {
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&SCRATCH_DB],
        )
        .map(|r| r.is_some())
        .unwrap_or(false);
    let count = || -> Result<i64> {
        let mut c = Client::connect(url, NoTls)?;
        Ok(c.query_one("SELECT count(*) FROM read_reports", &[])?
            .get(0))
    };
    exists && matches!(count(), Ok(n) if u64::try_from(n).ok() == Some(rows))
}

fn measure(url: &str, rows: u64, fill: bool) -> Result<Vec<ScaleRow>> {
    let mut c = Client::connect(url, NoTls).with_context(|| format!("connect to {url}"))?;
    shared::migrate::query_db(&mut c)?;
    if fill {
        fill_reports(&mut c, rows)?;
    } else {
        println!("reusing the {rows} reports kept in {SCRATCH_DB} ({KEEP_ENV})");
    }
    statements(&mut c, rows)
}

/// Fills the scratch database with `rows` reports, their history and exact statistics.
fn fill_reports(c: &mut Client, rows: u64) -> Result<()> {
    let started = Instant::now();
    println!("filling {rows} reports …");
    let n = i64::try_from(rows).context("row count")?;
    // Six categories and four statuses spread evenly, 2 % tombstones, one report a second,
    // every third at version 2; 90 % located within ~5 km of one of four city centres (the
    // ones `seed` uses), with an address on one of the city's streets and a title from ten.
    c.batch_execute("SELECT setseed(0.42)")?;
    c.execute(
        "WITH s (id, title, description, category, status, version, created_at, updated_at, \
             deleted_at, doc) AS (SELECT id, title, descr, cat, st, v, t, t, CASE WHEN i % 50 = 0 THEN t END, \
                json_build_object('id', id, 'title', title, 'description', descr, \
                    'category', cat, 'status', st, 'version', v, \
                    'location', CASE WHEN i % 10 <> 0 THEN json_build_object( \
                        'lat', (ARRAY[-6.1754, -6.9218, -7.2458, -7.7956])[1 + city] \
                               + (random() - 0.5) * 0.09, \
                        'lng', (ARRAY[106.8272, 107.6071, 112.7378, 110.3653])[1 + city] \
                               + (random() - 0.5) * 0.09) END, \
                    'address', street || ' No. ' || (1 + i % 150))::text \
         FROM generate_series(1, $1::int8) AS i, \
         LATERAL (SELECT md5(i::text)::uuid AS id, (i % 4)::int AS city, \
                  timestamptz '2026-01-01' + i * interval '1 second' AS t, \
                  1 + (i % 3 = 0)::int AS v, \
                  (ARRAY['kebersihan','kriminalitas','infrastruktur','kesehatan','keamanan','lainnya'])[1 + i % 6] AS cat, \
                  (ARRAY['pending','in_progress','resolved','rejected'])[1 + (i / 6) % 4] AS st) a, \
         LATERAL (SELECT (ARRAY['Jl. M.H. Thamrin','Jl. Kebon Sirih','Jl. Cikini Raya', \
                  'Jl. Asia Afrika','Jl. Braga','Jl. Cihampelas', \
                  'Jl. Tunjungan','Jl. Pemuda','Jl. Raya Darmo', \
                  'Jl. Malioboro','Jl. Mataram','Jl. Prawirotaman'])[1 + city * 3 + (i / 4) % 3] AS street) s, \
         LATERAL (SELECT (ARRAY['Sampah menumpuk di ','Jalan berlubang di ', \
                  'Lampu penerangan jalan mati di ','Selokan tersumbat sampah plastik di ', \
                  'Pohon tumbang menghalangi ','Balap liar setiap malam minggu di ', \
                  'Genangan air sarang nyamuk di ','Trotoar penuh pedagang kaki lima di ', \
                  'Pencurian sepeda motor di ','Jembatan penyeberangan rusak dekat '])[1 + (i / 7) % 10] \
                  || street AS title, \
                  'Laporan warga nomor ' || i || ' di ' || street \
                  || ', mohon segera ditindaklanjuti oleh dinas terkait.' AS descr) x) \
         INSERT INTO read_reports (id, title, description, category, status, version, \
             created_at, updated_at, deleted_at, doc, lat, lng, address, search) \
         SELECT *, (doc::jsonb #>> '{location,lat}')::float8, \
             (doc::jsonb #>> '{location,lng}')::float8, doc::jsonb ->> 'address', \
             report_search(title, description, doc::jsonb ->> 'address') FROM s",
        &[&n],
    )?;
    // History: a create for every report, an update for those at version 2, a delete row for
    // the tombstones (their last version), payload = the snapshot, as the projection keeps it.
    c.batch_execute(
        "INSERT INTO report_history (report_id, version, event_type, at, payload) \
         SELECT id, 1, 'ReportCreated', created_at, doc FROM read_reports; \
         INSERT INTO report_history (report_id, version, event_type, at, payload) \
         SELECT id, 2, 'ReportUpdated', updated_at, doc FROM read_reports WHERE version = 2; \
         INSERT INTO report_history (report_id, version, event_type, at, payload) \
         SELECT id, version + 1, 'ReportDeleted', deleted_at, \
                json_build_object('id', id, 'version', version + 1, 'deleted_at', deleted_at)::text \
         FROM read_reports WHERE deleted_at IS NOT NULL; \
         ANALYZE report_history;",
    )?;
    c.batch_execute(
        "INSERT INTO statistics (category, status, count, last_updated) \
         SELECT category, status, count(*), now() FROM read_reports WHERE deleted_at IS NULL \
         GROUP BY 1, 2; ANALYZE statistics;",
    )?;
    // What autovacuum does on a live system soon after such a fill: the visibility map lets
    // a small box be counted index-only (`read_reports_box`); measured before it runs, that
    // count would read table rows a live system does not. Alone: VACUUM refuses to run inside
    // a multi-statement string.
    c.batch_execute("VACUUM ANALYZE read_reports")?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// EXPLAINs and times every statement of the read path.
fn statements(c: &mut Client, rows: u64) -> Result<Vec<ScaleRow>> {
    let some_id: uuid::Uuid = c
        .query_one(
            "SELECT id FROM read_reports WHERE deleted_at IS NULL LIMIT 1",
            &[],
        )?
        .get(0);

    let cases: Vec<(String, &str, Params)> = vec![
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
        out.extend(time_statement(c, rows, what, sql, params)?);
    }

    // Plain lists (SPEC §2) and the SPEC §7.1 reads: the statements the service builds for
    // these query strings. Deep numbered pages skip whole `list_counts` buckets.
    let searches: &[(&str, &str)] = &[
        ("list, page 1 (+ total)", "page=1"),
        ("list, page 50", "page=50"),
        ("list, page 5 000", "page=5000"),
        ("by category, page 1", "category=kesehatan"),
        ("by category, page 5 000", "category=kesehatan&page=5000"),
        ("by status, page 1", "status=resolved"),
        (
            "by category + status, 100 per page",
            "category=kesehatan&status=resolved&per_page=100",
        ),
        (
            "by category + status, page 2 000 (of 2 042)",
            "category=kesehatan&status=resolved&page=2000",
        ),
        (
            "near, 1 km, Jakarta centre",
            "near=-6.1754,106.8272&radius_m=1000",
        ),
        (
            "near, 50 km (max), Bandung",
            "near=-6.9218,107.6071&radius_m=50000",
        ),
        (
            "near + category",
            "near=-7.2458,112.7378&category=kesehatan",
        ),
        (
            "near 1 km + category + status (none within match)",
            "near=-6.1754,106.8272&category=keamanan&status=in_progress",
        ),
        (
            "near 1 km + status",
            "near=-6.1754,106.8272&status=rejected",
        ),
        (
            "near 1 km + category + status",
            "near=-6.1754,106.8272&category=keamanan&status=pending",
        ),
        ("near, page 5", "near=-7.7956,110.3653&page=5"),
        (
            "near + category, page 5",
            "near=-7.7956,110.3653&category=lainnya&page=5",
        ),
        (
            "bbox ~1 km², Braga",
            "bbox=107.6046,-6.9223,107.6136,-6.9133",
        ),
        (
            "bbox ~1 km² + category",
            "bbox=107.6046,-6.9223,107.6136,-6.9133&category=kesehatan",
        ),
        (
            "bbox + category (none in the box match)",
            "bbox=106.80,-6.20,106.85,-6.15&category=kesehatan",
        ),
        (
            "bbox + status",
            "bbox=106.80,-6.20,106.85,-6.15&status=resolved",
        ),
        ("q, common word", "q=sampah"),
        ("q, two words", "q=pohon%20tumbang"),
        ("q, rare (one report)", "q=nomor%20424242"),
        ("q + category", "q=jalan&category=infrastruktur"),
        ("q + near", "q=sampah&near=-6.1754,106.8272"),
        (
            "q + bbox 30 km², common word",
            "q=sampah&bbox=106.80,-6.20,106.85,-6.15",
        ),
        (
            "q + bbox ~1 km², common word",
            "q=sampah&bbox=107.6046,-6.9223,107.6136,-6.9133",
        ),
        (
            "q + bbox 2° wide, rare word",
            "q=nomor%20424242&bbox=106.0,-7.0,108.0,-5.0",
        ),
        (
            "q + bbox 30 km², word of another city",
            "q=malioboro&bbox=106.80,-6.20,106.85,-6.15",
        ),
        (
            "q + bbox ~4 km², a word near the crossover",
            "q=sampah&bbox=106.8182,-6.1844,106.8362,-6.1664",
        ),
        (
            "q + bbox ~7 km², a word at the crossover",
            "q=sampah&bbox=106.8152,-6.1874,106.8392,-6.1634",
        ),
        (
            "q + near 50 km, word of 0.7 %",
            "q=15&near=-6.1754,106.8272&radius_m=50000",
        ),
        (
            "q + bbox 2° wide, common word",
            "q=nomor&bbox=106.0,-7.0,108.0,-5.0",
        ),
        (
            "q + bbox of the whole world, rare word",
            "q=nomor%20424242&bbox=-180,-90,180,90",
        ),
        (
            "q + near 50 km, rare word",
            "q=nomor%20424242&near=-6.1754,106.8272&radius_m=50000",
        ),
    ];
    for (what, query) in searches {
        let q = list_query(query)?;
        // `near=` with `q=` first asks whether the words are rare nearby (its own round
        // trip, measured as its own row), then reads from the source that says.
        let source = match query::search::near_probe(&q) {
            Some(probe) => {
                let source = probe.choose(c)?;
                let what = format!("{what}: probe ({source:?} chosen)");
                out.extend(time_statement(c, rows, &what, &probe.sql, &probe.params())?);
                source
            }
            None => NearSource::Knn,
        };
        let st = Statement::build_from(&q, source);
        out.extend(time_statement(c, rows, what, &st.sql, &st.params())?);
    }
    // Cursor pages: the second page of each order, from the cursor page 1 answered.
    for (what, query) in [
        ("list, cursor page 2", "per_page=20"),
        ("category, cursor page 2", "category=keamanan"),
        ("near, cursor page 2", "near=-6.9218,107.6071"),
        ("bbox, cursor page 2", "bbox=106.80,-6.20,106.85,-6.15"),
        ("q, cursor page 2", "q=lampu"),
    ] {
        let first = list_query(query)?;
        let listed = query::search::list(c, &first, &mut Vec::new())?;
        let next = listed
            .next
            .with_context(|| format!("{what}: page 1 of {query} has no next cursor"))?;
        let q = list_query(&format!("{query}&cursor={}", next.encode()))?;
        let st = Statement::build(&q);
        out.extend(time_statement(c, rows, what, &st.sql, &st.params())?);
    }
    // A report's history: one that was updated, then a deleted one.
    for (what, cond) in [
        ("history (2 versions)", "version = 2 AND deleted_at IS NULL"),
        ("history of a deleted report", "deleted_at IS NOT NULL"),
    ] {
        let id: uuid::Uuid = c
            .query_one(
                format!("SELECT id FROM read_reports WHERE {cond} LIMIT 1").as_str(),
                &[],
            )?
            .get(0);
        let params: Params = vec![
            (&id, Type::UUID),
            (&query::history::MAX_VERSIONS, Type::INT8),
        ];
        out.extend(time_statement(
            c,
            rows,
            what,
            query::history::SELECT_HISTORY,
            &params,
        )?);
    }
    Ok(out)
}

/// The `ListQuery` the service parses out of this query string.
fn list_query(query: &str) -> Result<ListQuery> {
    let params = shared::http::parse_query(query).map_err(|e| anyhow::anyhow!("{query}: {e:?}"))?;
    ListQuery::parse(&params).map_err(|e| anyhow::anyhow!("{query}: {e:?}"))
}

/// EXPLAINs `sql` (failing on a sequential scan of a report table) and times [`RUNS`] runs.
fn time_statement(
    c: &mut Client,
    rows: u64,
    what: &str,
    sql: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> Result<Option<ScaleRow>> {
    if let Ok(only) = std::env::var(ONLY_ENV) {
        if !what.contains(only.as_str()) {
            return Ok(None);
        }
    }
    let plan: Vec<String> = c
        .query_typed(&format!("EXPLAIN {sql}"), params)
        .with_context(|| format!("EXPLAIN {what}"))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let plan_text = plan.join("\n");
    for table in ["read_reports", "report_history"] {
        if plan_text.contains(&format!("Seq Scan on {table}")) {
            bail!("{what}: sequential scan of {table} at {rows} rows:\n{plan_text}");
        }
    }
    let mut access: Vec<String> = plan
        .iter()
        .filter_map(|l| {
            let l = l.trim().trim_start_matches("->").trim();
            l.split_once(" using ")
                .or_else(|| l.split_once(" on "))
                .filter(|(kind, _)| kind.contains("Index") || kind.contains("Bitmap"))
                .map(|(_, rest)| rest.split(' ').next().unwrap_or(rest).to_owned())
        })
        .collect();
    access.dedup();
    if std::env::var_os(ANALYZE_ENV).is_some() {
        let analyzed = c
            .query_typed(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), params)
            .with_context(|| format!("EXPLAIN ANALYZE {what}"))?;
        println!("--- {what}");
        for r in analyzed {
            println!("{}", r.get::<_, String>(0));
        }
    }
    let runs = std::env::var(RUNS_ENV)
        .ok()
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|r| *r > 0)
        .unwrap_or(RUNS);
    let mut times = Vec::with_capacity(runs);
    c.query_typed(sql, params)?;
    for _ in 0..runs {
        let t = Instant::now();
        c.query_typed(sql, params)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(Some(ScaleRow {
        what: what.to_owned(),
        plan: access.join(", "),
        p50_ms: ms(times[runs / 2]),
        p99_ms: ms(times[runs * 99 / 100]),
        max_ms: ms(times[runs - 1]),
    }))
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
    let mut t = format!(
        "read path at {rows} reports (no sequential scan of read_reports or report_history)\n"
    );
    t.push_str("| statement | index used | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n");
    for r in results {
        t.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.2} |\n",
            r.what, r.plan, r.p50_ms, r.p99_ms, r.max_ms
        ));
    }
    t
}

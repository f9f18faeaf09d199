//! The read API (SPEC §2 "Query service"): one `match (method, route)`, one handler per arm.
//!
//! Every handler is `fn(&Ctx, &Incoming, …) -> Result<Reply, ApiError>`; errors become
//! answers only in `ApiError::into_reply`. A known path with another method is a 405 whose
//! `Allow` comes from [`Route::allow`], the table the path is parsed by, so the two cannot
//! disagree.
//! `/health` never touches a database; every DB-backed answer names the DB that served it in
//! `X-Query-DB`.

use std::time::{Duration, Instant};

use serde::Serialize;
use shared::http::{etag_header, ok_body, ApiError, Incoming, Reply};
use shared::model::{Category, Status};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cache::{self, Hit};
use crate::failover::Db;
use crate::history;
use crate::metrics::DbReport;
use crate::open311;
use crate::paging;
use crate::render::{Frame, Meta};
use crate::rounds::Point;
use crate::route::Route;
use crate::search::{self, ListQuery};
use crate::store::{self, Lookup};
use crate::Ctx;

/// How often a `min_version` read looks again. 15 ms: a version that lands is served within
/// about one projection commit plus 15 ms, for at most ~130 cheap pk lookups per waiting
/// request over the default 2 s bound. The DB connection is released between polls.
pub const MIN_VERSION_POLL: Duration = Duration::from_millis(15);

/// Routes and answers one request.
pub fn handle(ctx: &Ctx, req: &Incoming) -> (Route, Result<Reply, ApiError>) {
    let (route, id) = Route::of(&req.path);
    let result = match (req.method.as_str(), route) {
        (_, Route::Unmatched | Route::Malformed) => {
            Err(ApiError::NotFound(format!("no such path {:?}", req.path)))
        }
        ("GET", Route::Health) => Ok(health(ctx)),
        ("GET", Route::Ready) => ready(ctx),
        ("GET", Route::Reports) => list_reports(ctx, req),
        ("GET", Route::Report) => get_report(ctx, req, id),
        ("GET", Route::Statistics) => statistics(ctx, req),
        ("GET", Route::Metrics) => Ok(metrics(ctx)),
        ("GET", Route::History) => report_history(ctx, id),
        ("GET", Route::Open311Services) => Ok(open311::services()),
        ("GET", Route::Open311Requests) => open311::list(ctx, req),
        ("GET", Route::Open311Request) => open311::one(ctx, id),
        (_, route) => Err(ApiError::MethodNotAllowed {
            allow: route.allow(),
        }),
    };
    (route, result)
}

/// Liveness: no dependency calls. The body is built once at start-up.
fn health(ctx: &Ctx) -> Reply {
    Reply::new(200, ctx.health_body.clone())
}

/// The `/health` body for an instance, exactly as SPEC §2 shows it (the same shape as the
/// command service's, so one probe reads both).
pub fn health_body(instance: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "status": "healthy",
        "service": "reporting-query",
        "instance": instance,
    }))
    .unwrap_or_default()
}

/// Readiness: at least one query DB answers its probe and is not stale (a stale read model is
/// never served, SPEC §7.4); each DB's state is listed, stale ones named as such.
fn ready(ctx: &Ctx) -> Result<Reply, ApiError> {
    let states = ctx.dbs.states();
    if !states.iter().any(|s| s.up && !s.stale) {
        let names: Vec<String> = states
            .iter()
            .map(|s| match (s.up, s.stale) {
                (true, true) => format!("{} (stale)", s.name),
                (true, false) => s.name.clone(),
                (false, _) => format!("{} (unreachable)", s.name),
            })
            .collect();
        return Err(ApiError::Unavailable(format!(
            "no query database is reachable and current (tried {})",
            names.join(", ")
        )));
    }
    #[derive(Serialize)]
    struct Db<'a> {
        name: &'a str,
        up: bool,
        stale: bool,
        serving: bool,
    }
    let dbs: Vec<Db<'_>> = states
        .iter()
        .map(|s| Db {
            name: &s.name,
            up: s.up,
            stale: s.stale,
            serving: s.serving,
        })
        .collect();
    Ok(Reply::new(
        200,
        ok_body(
            &ctx.instance,
            None,
            serde_json::json!({ "status": "ready", "databases": dbs }),
        ),
    ))
}

/// `GET /reports`: one page (newest first, or nearest first with `near=`), its total, and
/// the cursor of the next page (`search.rs`).
fn list_reports(ctx: &Ctx, req: &Incoming) -> Result<Reply, ApiError> {
    let params = ListQuery::parse(&req.params()?)?;
    cached(ctx, req, || list_page(ctx, &params))
}

/// One page of `GET /reports` read from the DB.
fn list_page<'a>(ctx: &'a Ctx, params: &ListQuery) -> Result<(Vec<u8>, &'a Db), ApiError> {
    let ((listed, mut body), db) = ctx.dbs.run(|conn| {
        // A typical document is ~300-600 bytes.
        let mut body = Frame::open(256 + 512 * params.per_page as usize);
        body.push(b'[');
        let listed = search::list(&mut **conn, params, &mut body)?;
        Ok((listed, body))
    })?;
    body.push(b']');
    let meta = Meta {
        total: listed.total,
        page: params.page,
        per_page: params.per_page,
        total_pages: params
            .page
            .map(|_| paging::total_pages(listed.total, params.per_page)),
        next_cursor: listed.next.map(|c| c.encode()),
        total_capped: listed.capped,
    };
    ctx.frame.close(&mut body, Some(&meta));
    Ok((body, db))
}

/// A list or statistics answer (SPEC §7.3): from memory while the DB it would be read from
/// is unchanged since it was kept (`cache.rs`), a 304 when `If-None-Match` names that DB's
/// current position, else `read` from the DB and kept. Either way without a DB call when
/// memory can answer. The `ETag` is the position taken before the read, so it never names
/// a state older than the answer.
fn cached<'a>(
    ctx: &'a Ctx,
    req: &Incoming,
    read: impl FnOnce() -> Result<(Vec<u8>, &'a Db), ApiError>,
) -> Result<Reply, ApiError> {
    // The raw query string: two spellings of one request are two entries, never a wrong one.
    let key = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let hit = ctx.dbs.first_choice().and_then(|first| {
        let (hit, position) = ctx.cache.lookup(first, &key, req.header("if-none-match"))?;
        Some((first, hit, position))
    });
    if let Some((first, hit, position)) = hit {
        let header = ctx.dbs.dbs[first].header;
        let reply = match hit {
            Hit::NotModified => Reply::new(304, Vec::new()),
            Hit::Body(body) => Reply::new(200, body),
        };
        return Ok(reply
            .with_header(header)
            .with_header(cache::etag_header(&position)));
    }
    // Every DB's position before the read: the read may fail over to any of them.
    let before: Vec<_> = (0..ctx.dbs.dbs.len())
        .map(|i| ctx.cache.position(i))
        .collect();
    let (body, db) = read()?;
    let served = ctx
        .dbs
        .dbs
        .iter()
        .position(|d| std::ptr::eq(d, db))
        .unwrap_or(usize::MAX);
    match before.get(served).cloned().flatten() {
        Some(position) => {
            ctx.cache.store(served, &key, &position, &body);
            Ok(Reply::new(200, body)
                .with_header(db.header)
                .with_header(cache::etag_header(&position)))
        }
        None => Ok(Reply::new(200, body).with_header(db.header)),
    }
}

/// `GET /reports/{id}`, optionally waiting (bounded) for `min_version`.
fn get_report(ctx: &Ctx, req: &Incoming, id_text: &str) -> Result<Reply, ApiError> {
    let id = Uuid::try_parse(id_text)
        .map_err(|_| ApiError::BadRequest(format!("report id {id_text:?} is not a UUID")))?;
    let min_version = paging::min_version(&req.params()?, req.header("x-min-version"))?;
    let deadline = Instant::now() + ctx.min_version_wait;
    let not_found = || ApiError::NotFound(format!("report {id} not found"));
    loop {
        let ((lookup, mut body), db) = point_read(ctx, &id)?;
        // The pooled connection is back in the pool here: sleeping below holds none.
        match lookup {
            Lookup::Live { version } if version >= min_version.unwrap_or(0) => {
                ctx.frame.close(&mut body, None);
                return Ok(Reply::new(200, body)
                    .with_header(db.header)
                    .with_header(etag_header(version)));
            }
            // Deleted is final: no later version of this report can ever exist.
            Lookup::Deleted { .. } => return Err(not_found()),
            Lookup::Missing if !may_be_in_flight(min_version) => return Err(not_found()),
            Lookup::Live { .. } | Lookup::Missing => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::Unavailable(format!(
                "report {id} has not reached version {} in query db {} within {} ms; retry",
                min_version.unwrap_or(0),
                db.name,
                ctx.min_version_wait.as_millis()
            )));
        }
        // Yields the coroutine, not the worker thread.
        may::coroutine::sleep(MIN_VERSION_POLL.min(deadline - now));
    }
}

/// Report `id` and the DB that answered: from a round of the DB a read would go to first
/// (`points.rs`: coalesced with every concurrent point read into one statement, as fresh as a
/// read of its own), else, when that DB has no round to offer, read on a pooled connection
/// with failover.
fn point_read<'a>(ctx: &'a Ctx, id: &Uuid) -> Result<((Lookup, Vec<u8>), &'a Db), ApiError> {
    if let Some(first) = ctx.dbs.first_choice() {
        // From memory while the report is unchanged (`cache.rs`), else by a sync round, kept
        // under the position taken before it.
        let found = ctx.cache.point(first, id).or_else(|| {
            let position = ctx.cache.position(first);
            let point = ctx.points.read(first, id)?;
            if let Some(position) = position {
                ctx.cache.store_point(first, *id, &position, &point);
            }
            Some(point)
        });
        if let Some(point) = found {
            let mut body = Frame::open(1024);
            let lookup = match point {
                Point::Missing => Lookup::Missing,
                Point::Deleted { version } => Lookup::Deleted { version },
                Point::Live { version, doc } => {
                    body.extend_from_slice(doc.as_bytes());
                    Lookup::Live { version }
                }
            };
            return Ok(((lookup, body), &ctx.dbs.dbs[first]));
        }
    }
    Ok(ctx.dbs.run(|conn| {
        let mut body = Frame::open(1024);
        let lookup = store::report(&mut **conn, id, &mut body)?;
        Ok((lookup, body))
    })?)
}

/// Whether a report this DB has never seen is worth waiting for. Only a create can be in
/// flight for an unknown id, and a create answers version 1: `min_version=1` (read your own
/// create) waits for it. Without `min_version`, or asking for version 2 or later of a report
/// this DB has no trace of, the answer is 404 at once: waiting the whole bound for an id
/// that does not exist would only hold the request (and, behind a proxy, its connection).
/// A DB lagging behind both a report's create and its update answers such a read 404 where
/// it would have waited; the client's retry after its own write sees the report.
fn may_be_in_flight(min_version: Option<i64>) -> bool {
    min_version == Some(1)
}

/// `GET /reports/{id}/history`: every version, oldest first; a deleted report's too.
fn report_history(ctx: &Ctx, id_text: &str) -> Result<Reply, ApiError> {
    let id = Uuid::try_parse(id_text)
        .map_err(|_| ApiError::BadRequest(format!("report id {id_text:?} is not a UUID")))?;
    let (stored, db) = ctx.dbs.run(|conn| history::load(&mut **conn, &id))?;
    if stored.is_empty() {
        return Err(ApiError::NotFound(format!("report {id} not found")));
    }
    let entries = history::entries(&stored);
    Ok(Reply::new(200, ok_body(&ctx.instance, None, entries)).with_header(db.header))
}

/// One entry of `GET /statistics` (SPEC §2).
#[derive(Debug, Serialize, PartialEq, Eq)]
struct CategoryStats {
    category: &'static str,
    total_count: i64,
    pending_count: i64,
    in_progress_count: i64,
    resolved_count: i64,
    rejected_count: i64,
    /// The latest change to this category's counts; `null` if it never had a report.
    last_updated: Option<String>,
}

/// `GET /statistics`: one entry per category, zero counts included, in the documented
/// category order, so clients always see the same shape; with `category`, just that one.
fn statistics(ctx: &Ctx, req: &Incoming) -> Result<Reply, ApiError> {
    let filter = paging::category(&req.params()?)?;
    cached(ctx, req, || statistics_body(ctx, filter))
}

/// The `GET /statistics` body read from the DB.
fn statistics_body(ctx: &Ctx, filter: Option<Category>) -> Result<(Vec<u8>, &Db), ApiError> {
    let (rows, db) = ctx
        .dbs
        .run(|conn| store::statistics(&mut **conn, filter.map(Category::as_str)))?;
    let entries: Vec<CategoryStats> = Category::ALL
        .iter()
        .filter(|c| filter.is_none() || filter == Some(**c))
        .map(|c| category_stats(*c, &rows))
        .collect();
    Ok((ok_body(&ctx.instance, None, entries), db))
}

fn category_stats(category: Category, rows: &[store::StatRow]) -> CategoryStats {
    let mut entry = CategoryStats {
        category: category.as_str(),
        total_count: 0,
        pending_count: 0,
        in_progress_count: 0,
        resolved_count: 0,
        rejected_count: 0,
        last_updated: None,
    };
    let mut last: Option<OffsetDateTime> = None;
    for row in rows.iter().filter(|r| r.category == category.as_str()) {
        // A status this build does not know is still counted in the total.
        entry.total_count += row.count;
        match row.status.parse::<Status>() {
            Ok(Status::Pending) => entry.pending_count += row.count,
            Ok(Status::InProgress) => entry.in_progress_count += row.count,
            Ok(Status::Resolved) => entry.resolved_count += row.count,
            Ok(Status::Rejected) => entry.rejected_count += row.count,
            Err(_) => {}
        }
        last = last.max(Some(row.last_updated));
    }
    entry.last_updated = last.and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok());
    entry
}

/// `GET /metrics`: Prometheus text (see `server` for its content type).
fn metrics(ctx: &Ctx) -> Reply {
    let checkpoint = ctx
        .dbs
        .run(|conn| store::checkpoint(&mut **conn))
        .ok()
        .map(|(cp, db)| (db.name.clone(), cp));
    let report = DbReport {
        states: ctx.dbs.states(),
        failovers: ctx.dbs.failovers(),
        failbacks: ctx.dbs.failbacks(),
        checkpoint,
    };
    Reply::new(200, ctx.metrics.render(&ctx.instance, &report).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_reports_waited_for() {
        let check = |min_version: Option<i64>, expect: bool| {
            assert_eq!(may_be_in_flight(min_version), expect, "{min_version:?}");
        };
        check(None, false);
        check(Some(0), false);
        check(Some(1), true);
        check(Some(2), false);
        check(Some(999), false);
        check(Some(i64::MAX), false);
    }

    #[test]
    fn statistics_fold() {
        let at = |s: i64| OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).unwrap();
        let row = |c: &str, s: &str, n, t| store::StatRow {
            category: c.into(),
            status: s.into(),
            count: n,
            last_updated: at(t),
        };
        let rows = vec![
            row("kebersihan", "pending", 3, 5),
            row("kebersihan", "resolved", 2, 9),
            row("kebersihan", "rejected", 0, 1),
            row("keamanan", "in_progress", 4, 2),
        ];
        let k = category_stats(Category::Kebersihan, &rows);
        assert_eq!(
            (
                k.total_count,
                k.pending_count,
                k.resolved_count,
                k.rejected_count
            ),
            (5, 3, 2, 0)
        );
        assert_eq!(k.last_updated.as_deref(), Some("2023-11-14T22:13:29Z"));
        let l = category_stats(Category::Lainnya, &rows);
        assert_eq!((l.total_count, l.last_updated), (0, None));
    }
}

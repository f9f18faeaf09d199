//! The command service's routing table: one `match (method, path)`, each arm a handler
//! `fn(&Ctx, Incoming) -> Result<Reply, ApiError>`. 405 and its `Allow` come from the same
//! table, so they can never disagree with the handlers. Each arm also names its counted
//! [`Route`], so the metrics label is decided here, next to the handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;
use shared::db::Pool;
use shared::http::{etag_header, ok_body, ApiError, Incoming, Reply};
use uuid::Uuid;

use crate::auth::Tokens;
use crate::metrics::Metrics;
use crate::route::Route;
use crate::wake::Waker;
use crate::{open311, store, validate};

/// What every request handler may use.
pub struct Ctx {
    pub instance: String,
    pub instance_header: &'static str,
    pub health_body: Vec<u8>,
    pub pool: Pool,
    /// Set once the migrations are applied; writes answer 503 before that.
    pub schema_ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    /// Asks for the relay's wake-up after a write committed (`wake.rs`).
    pub waker: Waker,
    pub tokens: Tokens,
}

/// A known path and the methods it allows.
enum Path<'a> {
    Health,
    Ready,
    Metrics,
    Reports,
    Report(&'a str),
    /// `/open311/v2/services.json` (SPEC §7.2).
    Open311Services,
    /// `/open311/v2/requests.json` (SPEC §7.2).
    Open311Requests,
}

impl Path<'_> {
    fn parse(path: &str) -> Option<Path<'_>> {
        match path {
            "/health" => Some(Path::Health),
            "/ready" => Some(Path::Ready),
            "/metrics" => Some(Path::Metrics),
            "/reports" | "/reports/" => Some(Path::Reports),
            "/open311/v2/services.json" => Some(Path::Open311Services),
            "/open311/v2/requests.json" => Some(Path::Open311Requests),
            _ => {
                let id = path.strip_prefix("/reports/")?;
                (!id.contains('/')).then_some(Path::Report(id))
            }
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Path::Health | Path::Ready | Path::Metrics | Path::Open311Services => "GET",
            Path::Reports | Path::Open311Requests => "POST",
            Path::Report(_) => "PUT, DELETE",
        }
    }
}

/// Dispatches a request; returns the route it was counted as and the outcome.
pub fn dispatch(ctx: &Ctx, req: Incoming) -> (Route, Result<Reply, ApiError>) {
    let Some(path) = Path::parse(&req.path) else {
        return (
            Route::Other,
            Err(ApiError::NotFound(format!("no such path {}", req.path))),
        );
    };
    match (req.method.as_str(), path) {
        ("GET", Path::Health) => (Route::Health, Ok(health(ctx))),
        ("GET", Path::Ready) => (Route::Ready, Ok(ready(ctx))),
        ("GET", Path::Metrics) => (Route::Metrics, Ok(metrics(ctx))),
        ("POST", Path::Reports) => (Route::CreateReport, create(ctx, &req)),
        ("PUT", Path::Report(id)) => (Route::UpdateReport, update(ctx, id, &req)),
        ("DELETE", Path::Report(id)) => (Route::DeleteReport, delete(ctx, id, &req)),
        ("GET", Path::Open311Services) => (Route::Open311Services, Ok(open311::services())),
        ("POST", Path::Open311Requests) => {
            (Route::Open311CreateRequest, open311::create(ctx, &req))
        }
        (_, path) => (
            Route::Other,
            Err(ApiError::MethodNotAllowed {
                allow: path.allow(),
            }),
        ),
    }
}

fn health(ctx: &Ctx) -> Reply {
    Reply::new(200, ctx.health_body.clone())
}

fn ready(ctx: &Ctx) -> Reply {
    let db = ctx.schema_ready.load(Ordering::SeqCst) && store::ping(&ctx.pool).is_ok();
    let redis = ctx.metrics.redis_up.load(Ordering::Relaxed);
    let data = json!({ "command_db": db, "redis": redis, "schema_ready": ctx.schema_ready.load(Ordering::SeqCst) });
    if db {
        let message = if redis {
            "ready"
        } else {
            "ready; redis unreachable: writes are kept in the event log until it returns"
        };
        Reply::new(200, ok_body(&ctx.instance, Some(message), data))
    } else {
        let body = shared::http::Envelope {
            success: false,
            message: None,
            data: Some(data),
            error: Some("command database unreachable"),
            instance: &ctx.instance,
            meta: None::<()>,
        }
        .to_vec();
        Reply::new(503, body).with_header("Retry-After: 1")
    }
}

fn metrics(ctx: &Ctx) -> Reply {
    let backlog = ctx.pool.get().ok().and_then(|mut c| {
        c.query_typed(
            "SELECT count(*) FROM event_log WHERE published_at IS NULL",
            &[],
        )
        .ok()?
        .first()?
        .try_get::<_, i64>(0)
        .ok()
    });
    Reply::text(200, ctx.metrics.render(&ctx.instance, backlog))
}

pub(crate) fn require_schema(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.schema_ready.load(Ordering::SeqCst) {
        Ok(())
    } else {
        Err(ApiError::Unavailable(
            "command database not reachable yet (schema not applied)".into(),
        ))
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest(format!("{raw:?} is not a valid UUID")))
}

fn create(ctx: &Ctx, req: &Incoming) -> Result<Reply, ApiError> {
    ctx.tokens.check(req.header("authorization"))?;
    let cmd = validate::create(&req.body)?;
    require_schema(ctx)?;
    let report = store::create(&ctx.pool, cmd).map_err(store::StoreError::into_api)?;
    ctx.waker.wake();
    let etag = etag_header(report.version);
    Ok(Reply::new(201, ok_body(&ctx.instance, Some("report created"), &report)).with_header(etag))
}

fn update(ctx: &Ctx, id: &str, req: &Incoming) -> Result<Reply, ApiError> {
    ctx.tokens.check(req.header("authorization"))?;
    let id = parse_id(id)?;
    let cmd = validate::update(&req.body)?;
    let if_match = validate::if_match(req.header("if-match"))?;
    require_schema(ctx)?;
    let report =
        store::update(&ctx.pool, id, cmd, if_match).map_err(store::StoreError::into_api)?;
    ctx.waker.wake();
    let etag = etag_header(report.version);
    Ok(Reply::new(200, ok_body(&ctx.instance, Some("report updated"), &report)).with_header(etag))
}

fn delete(ctx: &Ctx, id: &str, req: &Incoming) -> Result<Reply, ApiError> {
    ctx.tokens.check(req.header("authorization"))?;
    let id = parse_id(id)?;
    let if_match = validate::if_match(req.header("if-match"))?;
    require_schema(ctx)?;
    let tomb = store::delete(&ctx.pool, id, if_match).map_err(store::StoreError::into_api)?;
    ctx.waker.wake();
    let etag = etag_header(tomb.version);
    Ok(Reply::new(200, ok_body(&ctx.instance, Some("report deleted"), &tomb)).with_header(etag))
}

//! The `may_minihttp` edge: [`run`] is what `main.rs` hands to `shared::startup::main`
//! (logger, config, signals); [`start`] configures the may scheduler, starts the probes and
//! the server, and for each request reads it safely (`Incoming::read`: body limits, bad framing), routes
//! it, counts it and writes the answer with `X-Instance-ID`.
//!
//! `call` returns `Err` only for socket I/O, never for bad input: may_minihttp would turn an
//! `Err` into a 500 with raw error text.

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};
use shared::http::{instance_header, Incoming, Reply};

use crate::cache::Cache;
use crate::failover::{Dbs, Prober};
use crate::metrics::Metrics;
use crate::points::PointReaders;
use crate::render::Frame;
use crate::route::Route;
use crate::routes;
use crate::{Config, Ctx, Running};

/// Why the service could not start.
#[derive(Debug)]
pub enum StartError {
    /// A database URL that cannot be used.
    Db(crate::store::StoreError),
    /// Threads or the listening socket.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Db(e) => write!(f, "query databases: {e}"),
            StartError::Io(e) => write!(f, "start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Serves until `stop` is set (SIGTERM/SIGINT in the binary). Exiting the process then ends
/// the server coroutines; the probe threads are stopped by `Running`'s drop.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), StartError> {
    let running = start(&config)?;
    shared::startup::wait(&stop);
    drop(running);
    shared::info!("stopped");
    Ok(())
}

/// Configures may, builds the pools, probes every DB once (bounded), then serves on
/// `0.0.0.0:<port>`. Databases that are down do not stop the start: requests answer 503 until
/// one is back.
pub fn start(config: &Config) -> Result<Running, StartError> {
    shared::startup::configure_may(config.workers, config.stack_size);
    let dbs = Arc::new(Dbs::new(config).map_err(StartError::Db)?);
    let prober = Prober::start(&dbs).map_err(StartError::Io)?;
    let cache = Arc::new(Cache::new(&config.dbs, &config.listen));
    let chosen = Arc::clone(&dbs);
    let listeners = cache
        .listen(Arc::new(move || chosen.first_choice()))
        .map_err(StartError::Io)?;
    let points = Arc::new(PointReaders::new(&config.dbs, &config.listen));
    let point_threads = points.start().map_err(StartError::Io)?;
    let ctx = Arc::new(Ctx {
        instance: config.instance_id.clone(),
        instance_header: instance_header(&config.instance_id),
        frame: Frame::new(&config.instance_id),
        health_body: routes::health_body(&config.instance_id),
        dbs,
        metrics: Metrics::default(),
        min_version_wait: config.min_version_wait,
        cache,
        points,
    });
    let server = Factory(Arc::clone(&ctx))
        .start(("0.0.0.0", config.port))
        .map_err(StartError::Io)?;
    shared::info!("listening on 0.0.0.0:{}", config.port);
    Ok(Running {
        server,
        ctx,
        _prober: prober,
        _listeners: listeners,
        _points: point_threads,
    })
}

struct Factory(Arc<Ctx>);

impl HttpServiceFactory for Factory {
    type Service = Service;

    fn new_service(&self, _id: usize) -> Service {
        Service(Arc::clone(&self.0))
    }
}

/// One connection's service.
pub struct Service(Arc<Ctx>);

impl HttpService for Service {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        let ctx = &*self.0;
        let started = Instant::now();
        // Known before the body is read, so even a 413 under /open311/ has the standard's shape.
        let open311 = shared::open311::is_open311(req.path());
        let (route, result) = match Incoming::read(req) {
            Ok(incoming) => routes::handle(ctx, &incoming),
            Err(e) => (Route::Malformed, Err(e)),
        };
        let reply = result.unwrap_or_else(|e| {
            if open311 {
                shared::open311::error_reply(e, &ctx.instance)
            } else {
                e.into_reply(&ctx.instance)
            }
        });
        ctx.metrics.record(route, reply.status, started.elapsed());
        if route == Route::Metrics && reply.status == 200 {
            write_text(reply, ctx.instance_header, rsp);
        } else {
            reply.write(ctx.instance_header, rsp);
        }
        Ok(())
    }
}

/// `/metrics` is the one answer that is not JSON: Prometheus needs its text content type.
fn write_text(reply: Reply, instance_header: &'static str, rsp: &mut Response) {
    rsp.status_code(200, "OK");
    rsp.header(shared::prometheus::CONTENT_TYPE_HEADER);
    rsp.header(instance_header);
    rsp.body_vec(reply.body);
}

//! Wiring: pool → migrations (retried in the background) → relay thread → wake-up notifier →
//! HTTP server, then
//! wait for the stop flag. `main.rs` hands [`run`] to `shared::startup::main` (logger, config,
//! signals); tests that need the command side in their own process call [`start`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use may_minihttp::{HttpServer, HttpService, Request, Response};
use shared::db::{self, Pool, PoolSettings};
use shared::http::{instance_header, Incoming};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::relay::{Relay, RelayConfig};
use crate::route::Route;
use crate::routes::{self, Ctx};
use crate::wake::{Notifier, Waker};

#[derive(Clone)]
struct Service(Arc<Ctx>);

impl HttpService for Service {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        let ctx = &*self.0;
        // Known before the body is read, so even a 413 under /open311/ has the standard's shape.
        let open311 = shared::open311::is_open311(req.path());
        let (route, result) = match Incoming::read(req) {
            Ok(incoming) => routes::dispatch(ctx, incoming),
            Err(e) => (Route::Other, Err(e)),
        };
        let reply = result.unwrap_or_else(|e| {
            if open311 {
                shared::open311::error_reply(e, &ctx.instance)
            } else {
                e.into_reply(&ctx.instance)
            }
        });
        ctx.metrics.record(route, reply.status);
        reply.write(ctx.instance_header, rsp);
        Ok(())
    }
}

/// Errors that stop the service from starting at all (bad config, port taken).
#[derive(Debug)]
pub enum StartError {
    Pool(postgres::Error),
    Bind(io::Error),
    Thread(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Pool(e) => write!(f, "bad COMMAND_DATABASE_URL: {e}"),
            StartError::Bind(e) => write!(f, "cannot listen: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Runs the service until `stop` is set (SIGTERM/SIGINT in the binary); returns after the
/// relay finished its batch.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), StartError> {
    let running = start(config)?;
    shared::startup::wait(&stop);
    shared::info!("shutting down: finishing the relay batch in flight");
    running.stop();
    shared::info!("stopped");
    Ok(())
}

/// A started service: the HTTP listener, the relay thread and the wake-up notifier.
pub struct Running {
    relay: Relay,
    notifier: Notifier,
    pub port: u16,
}

impl Running {
    /// Stops the relay after its batch in flight. The HTTP listener lives until the process
    /// exits (may_minihttp has no graceful stop); the binary exits right after this.
    pub fn stop(self) {
        self.notifier.stop();
        self.relay.stop();
    }
}

/// Starts the pool, the migrator, the relay and the HTTP server, and returns at once. Tests
/// that need the command side inside their own process use this.
pub fn start(config: Config) -> Result<Running, StartError> {
    shared::startup::configure_may(config.workers, config.stack_size);

    let settings = PoolSettings {
        size: config.pool_size,
        statement_timeout: config.statement_timeout,
        checkout_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(1),
        startup_options: true,
    };
    let pool = db::pool(&config.database_url, &settings).map_err(StartError::Pool)?;
    let schema_ready = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(Metrics::default());

    spawn_migrator(pool.clone(), schema_ready.clone()).map_err(StartError::Thread)?;
    let relay = Relay::start(
        RelayConfig {
            database_url: config.database_url.clone(),
            redis_url: config.redis_url.clone(),
            batch: config.relay_batch,
            poll: config.relay_poll,
            instance: config.instance.clone(),
        },
        metrics.clone(),
        schema_ready.clone(),
    )
    .map_err(StartError::Thread)?;
    let waker = Waker::default();
    let notifier = Notifier::start(
        config.database_url.clone(),
        &config.instance,
        waker.clone(),
        metrics.clone(),
    )
    .map_err(StartError::Thread)?;

    let ctx = Arc::new(Ctx {
        health_body: serde_json::to_vec(&serde_json::json!({
            "status": "healthy",
            "service": "reporting-command",
            "instance": config.instance,
        }))
        .unwrap_or_default(),
        instance_header: instance_header(&config.instance),
        instance: config.instance.clone(),
        pool,
        schema_ready,
        metrics,
        waker,
        tokens: config.tokens.clone(),
    });
    // The listener coroutine runs until the process exits; its handle is not needed.
    drop(
        HttpServer(Service(ctx))
            .start(("0.0.0.0", config.port))
            .map_err(StartError::Bind)?,
    );
    shared::info!("listening on 0.0.0.0:{}", config.port);
    Ok(Running {
        relay,
        notifier,
        port: config.port,
    })
}

/// Applies the schema, retrying with backoff for as long as it takes: the service answers
/// /health (and 503 for writes) meanwhile, and recovers by itself when the DB appears.
fn spawn_migrator(pool: Pool, ready: Arc<AtomicBool>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("migrate".into())
        .spawn(move || {
            let applied = shared::retry::with_backoff("apply command-db migrations", None, || {
                let mut conn = pool.get().map_err(|e| e.to_string())?;
                shared::migrate::command_db(&mut *conn).map_err(|e| format!("{e:?}"))
            });
            if applied.is_ok() {
                ready.store(true, Ordering::SeqCst);
                shared::info!("command-db schema ready");
            }
        })?;
    Ok(())
}

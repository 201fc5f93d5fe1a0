//! Builds the application: opens the database, applies migrations, binds
//! the listener and assembles the HTTP server.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_cors::Cors;
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use tracing_actix_web::TracingLogger;

use crate::config::Settings;
use crate::http::auth::Limits;
use crate::http::metrics::Metrics;
use crate::http::{self, AppState};
use crate::push::Hub;
use crate::storage::{Database, StorageError, migrations};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database {url}")]
    Database {
        url: String,
        #[source]
        source: StorageError,
    },
    #[error("refusing to listen on {bind} without authentication; configure [auth] tokens or a JWT key, or bind to a loopback address such as 127.0.0.1")]
    InsecureBind { bind: String },
    #[error("cannot create the metrics: {0}")]
    Metrics(String),
    #[error("cannot start the change feed reader")]
    Push(#[source] crate::service::ServiceError),
    #[error("cannot listen on {bind}")]
    Bind {
        bind: String,
        #[source]
        source: std::io::Error,
    },
}

/// A built server, bound but not yet running.
pub struct Application {
    address: SocketAddr,
    server: Server,
    hub: Arc<Hub>,
    database: String,
}

impl Application {
    /// Connects, migrates and binds. With `bind` port 0 the system picks a
    /// free port; [`Application::address`] returns it.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = open_database(&settings).await?;

        let bind = settings.server.bind.clone();
        if !settings.auth.is_enabled() {
            if !is_loopback(&bind) {
                return Err(StartupError::InsecureBind { bind });
            }
            tracing::warn!(%bind, "authentication is off: every request is anonymous, so the server listens on loopback only; configure [auth] to serve others");
        }

        let listener = TcpListener::bind(&bind).map_err(|source| StartupError::Bind { bind: bind.clone(), source })?;
        let address = listener.local_addr().map_err(|source| StartupError::Bind { bind: bind.clone(), source })?;

        let hub = Hub::start(db.clone(), settings.server.push_buffer).await.map_err(StartupError::Push)?;
        let state = web::Data::new(AppState {
            db: db.clone(),
            settings: Arc::new(settings.server.clone()),
            collections: Arc::new(settings.collections.clone()),
            hub: hub.clone(),
            metrics: Arc::new(Metrics::new(hub.lag_gauge()).map_err(|error| StartupError::Metrics(error.to_string()))?),
            auth: Arc::new(settings.auth.clone()),
            limits: Arc::new(Limits::new(settings.server.rate_limit_per_second, settings.server.rate_limit_burst)),
        });
        let cors_origins = settings.server.cors_origins.clone();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(http::configure)
                .default_service(web::to(http::fallback))
                .wrap(from_fn(http::auth::authenticate))
                .wrap(Condition::new(!cors_origins.is_empty(), cors(&cors_origins)))
                .wrap(from_fn(http::metrics::record))
                .wrap(from_fn(http::add_request_id))
                .wrap(TracingLogger::default())
        })
        .shutdown_timeout(settings.server.shutdown_timeout.as_secs())
        // Signals are handled in `run_until_stopped`, which closes push
        // streams before the drain; otherwise they would hold it open.
        .disable_signals();
        if let Some(workers) = settings.server.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener).map_err(|source| StartupError::Bind { bind, source })?.run();

        tokio::spawn(prune_changes(db.clone(), settings.database.change_retention));
        tokio::spawn(announce_expired_leases(db.clone()));

        Ok(Self { address, server, hub, database: db.url().to_string() })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Serves until SIGTERM or Ctrl-C. Then it sends push subscribers a
    /// final message, ends long-polls, and drains in-flight requests for up
    /// to `server.shutdown_timeout`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        // The handlers are installed before `run` logs that the server is
        // listening, so a signal sent after that line stops it gracefully.
        let stop = stop_signal();
        let handle = self.server.handle();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            stop.await;
            tracing::info!("shutting down: closing push streams and draining requests");
            hub.shutdown();
            handle.stop(true).await;
        });

        self.run().await
    }

    /// Serves without listening for signals, for embedding the server (as
    /// the tests do); it stops when its runtime ends.
    pub async fn run(self) -> std::io::Result<()> {
        tracing::info!(address = %self.address, database = %self.database, "listening");
        let result = self.server.await;
        tracing::info!(address = %self.address, "server stopped");
        result
    }
}

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers now and returns a
/// future that completes when either signal arrives.
#[cfg(unix)]
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};

    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (terminate, interrupt) {
            (Ok(mut terminate), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(error = %error, "cannot install signal handlers; stop the server by killing it");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Returns a future that completes on Ctrl-C.
#[cfg(not(unix))]
fn stop_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `true` when every address `bind` resolves to is a loopback address.
fn is_loopback(bind: &str) -> bool {
    match bind.to_socket_addrs() {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            !addresses.is_empty() && addresses.iter().all(|address| address.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// The CORS rules for browser frontends on `origins`: the headers a
/// versioned client sends and the ones it must read.
fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
        .allowed_headers([
            "authorization",
            "content-type",
            "if-match",
            "if-none-match",
            "idempotency-key",
            "lease-token",
            "last-event-id",
        ])
        .expose_headers(["etag", "location", "versa-merged", "versa-lease", "x-request-id", "retry-after", "idempotent-replayed"])
        .max_age(3600);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// Opens the pools and applies pending migrations, off the async threads.
pub async fn open_database(settings: &Settings) -> Result<Database, StartupError> {
    let database = settings.database.clone();
    let url = database.url.to_string();
    let opened = web::block(move || {
        let db = Database::connect(&database.url, database.pool_size, database.connect_timeout)?;
        let applied = db.with_writer_blocking(migrations::run_pending)?;
        if applied > 0 {
            tracing::info!(applied, "applied database migrations");
        }
        Ok::<_, StorageError>(db)
    })
    .await
    .map_err(StorageError::from)
    .and_then(|result| result);
    opened.map_err(|source| StartupError::Database { url, source })
}


/// Announces expired leases on the feed every second. Expiry does not wait
/// for this: an expired lease is free at once; this only tells subscribers.
async fn announce_expired_leases(db: Database) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Err(error) = crate::service::leases::announce_expired(&db).await {
            tracing::warn!(error = %error, "failed to announce expired leases; retrying");
        }
    }
}

/// Deletes expired changes now and then, for as long as the server runs.
/// Several instances may prune the same database; each run deletes what is
/// expired at that moment, so they do not conflict.
async fn prune_changes(db: Database, retention: Duration) {
    let interval = (retention / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        match crate::service::changes::prune(&db, retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned expired changes"),
            Err(error) => tracing::warn!(error = %error, "failed to prune expired changes; retrying later"),
        }
        tokio::time::sleep(interval).await;
    }
}

//! Prometheus metrics: request counts and latencies, push subscribers, and
//! how far the change feed runs behind commits.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use super::AppState;
use super::error::ApiError;
use crate::service::ServiceError;
use crate::storage::feed;

/// One instance's metrics, in a registry of its own.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    subscribers: IntGauge,
    oldest_transaction: Gauge,
    /// Copies of the SQLite writer's counts, brought up to date at each
    /// scrape under the lock, so that concurrent scrapes add once.
    sqlite_counts: std::sync::Mutex<(IntCounter, IntCounter)>,
}

impl Metrics {
    /// Creates the metrics.
    ///
    /// # Errors
    ///
    /// A metric that cannot be registered, which only a programming error
    /// (a duplicate name) causes.
    pub fn new(feed_lag: Gauge) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("versa_http_requests_total", "HTTP requests answered, by method, route template and status."),
            &["method", "route", "status"],
        )?;
        let durations = HistogramVec::new(
            HistogramOpts::new("versa_http_request_duration_seconds", "Time to answer an HTTP request, by method and route template."),
            &["method", "route"],
        )?;
        let subscribers = IntGauge::new("versa_push_subscribers", "Open push subscriptions (SSE streams and WebSocket subscriptions).")?;
        let oldest_transaction = Gauge::new(
            "versa_feed_oldest_transaction_seconds",
            "Age of the oldest running transaction in the PostgreSQL cluster; the change feed cannot pass it. Always 0 on SQLite.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(durations.clone()))?;
        registry.register(Box::new(subscribers.clone()))?;
        registry.register(Box::new(oldest_transaction.clone()))?;
        let sqlite_transactions = IntCounter::new(
            "versa_sqlite_write_transactions_total",
            "Transactions run by the SQLite writer; each carries one or more waiting writes. Always 0 on PostgreSQL.",
        )?;
        let sqlite_writes = IntCounter::new("versa_sqlite_writes_total", "Writes carried by the SQLite writer's transactions. Always 0 on PostgreSQL.")?;
        registry.register(Box::new(feed_lag))?;
        registry.register(Box::new(sqlite_transactions.clone()))?;
        registry.register(Box::new(sqlite_writes.clone()))?;
        Ok(Self { registry, requests, durations, subscribers, oldest_transaction, sqlite_counts: std::sync::Mutex::new((sqlite_transactions, sqlite_writes)) })
    }
}

/// Moves a counter up to a count kept elsewhere.
fn catch_up(counter: &IntCounter, count: u64) {
    counter.inc_by(count.saturating_sub(counter.get()));
}

/// Counts and times every request.
pub async fn record(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let state = req.app_data::<web::Data<AppState>>().cloned();

    let response = next.call(req).await?;

    if let Some(state) = state {
        let status = response.status().as_u16().to_string();
        state.metrics.requests.with_label_values(&[method.as_str(), route.as_str(), status.as_str()]).inc();
        state.metrics.durations.with_label_values(&[method.as_str(), route.as_str()]).observe(started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// `GET /metrics` in the Prometheus text format. Open to loopback clients
/// only, unless `server.metrics_public` is set.
pub async fn scrape(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let loopback = req.peer_addr().map(|address| address.ip()).is_some_and(|ip: IpAddr| ip.is_loopback());
    if !loopback && !state.settings.metrics_public {
        return Err(ApiError::Forbidden {
            detail: "Metrics are served to loopback clients only; set server.metrics_public = true to serve them to others.".to_owned(),
        });
    }

    let metrics = &state.metrics;
    metrics.subscribers.set(state.hub.subscriber_count() as i64);
    let oldest = state.db.read(|conn| feed::oldest_transaction_seconds(conn).map_err(ServiceError::from)).await?;
    metrics.oldest_transaction.set(oldest);
    if let (Some(counts), Ok(counters)) = (state.db.group_counts(), metrics.sqlite_counts.lock()) {
        catch_up(&counters.0, counts.transactions.load(Ordering::Relaxed));
        catch_up(&counters.1, counts.writes.load(Ordering::Relaxed));
    }

    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&metrics.registry.gather(), &mut body)
        .map_err(|error| ApiError::Internal { detail: format!("metrics encoding failed: {error}") })?;
    Ok(HttpResponse::build(StatusCode::OK).content_type("text/plain; version=0.0.4").body(body))
}

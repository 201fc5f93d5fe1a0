//! Authentication and rate limiting at the edge of the application, and
//! the [`Principal`] extractor that handlers use.

use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::BoxBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::{FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;

/// Paths served without authentication: probes, metrics (which have their
/// own loopback rule) and the API description.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/metrics", "/openapi.yaml"];

/// Authentication failures logged per second; more are counted, not logged.
const FAILURE_LOGS_PER_SECOND: u32 = 5;

/// Per-principal request limits and the limiter of failure logs.
pub struct Limits {
    requests: Option<DefaultKeyedRateLimiter<String>>,
    failure_logs: DefaultDirectRateLimiter,
}

impl Limits {
    /// `per_second` requests per principal, with bursts up to `burst`;
    /// `None` sets no limit.
    pub fn new(per_second: Option<u32>, burst: Option<u32>) -> Self {
        let requests = per_second.and_then(NonZeroU32::new).map(|rate| {
            let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        let logs = NonZeroU32::new(FAILURE_LOGS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Self { requests, failure_logs: DefaultDirectRateLimiter::direct(Quota::per_second(logs)) }
    }

    /// Takes one request from the principal's bucket; on refusal returns
    /// how long until the next request would be accepted.
    fn check(&self, principal: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.requests else { return Ok(()) };
        limiter.check_key(&principal.to_owned()).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Authenticates every request outside [`OPEN_PATHS`] and applies the
/// per-principal rate limit. The principal is stored for the extractor.
pub async fn authenticate(req: ServiceRequest, next: actix_web::middleware::Next<BoxBody>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await;
    };
    if OPEN_PATHS.contains(&req.path()) || req.method() == Method::OPTIONS {
        return next.call(req).await;
    }

    let principal = if state.auth.is_enabled() {
        let header = req.headers().get(actix_web::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        match state.auth.authenticate(header) {
            Ok(principal) => principal,
            Err(error) => {
                if state.limits.failure_logs.check().is_ok() {
                    let client = req.peer_addr().map(|address| address.ip().to_string()).unwrap_or_default();
                    tracing::info!(reason = %error, %client, path = req.path(), "authentication failed");
                }
                return Ok(reject(req, ApiError::Unauthenticated(error)));
            }
        }
    } else {
        Principal::anonymous()
    };

    if let Err(wait) = state.limits.check(&principal.name) {
        return Ok(reject(req, ApiError::RateLimited { retry_after: wait.as_secs().max(1) }));
    }

    req.extensions_mut().insert(Arc::new(principal));
    next.call(req).await
}

fn reject(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    let response = error.error_response().map_into_boxed_body();
    req.into_response(response)
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let principal = req.extensions().get::<Arc<Principal>>().map(|principal| (**principal).clone());
        ready(Ok(principal.unwrap_or_else(Principal::anonymous)))
    }
}

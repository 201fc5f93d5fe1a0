//! The HTTP layer: routes, extractors, responses, and the mapping from
//! errors to problem bodies. Handlers are thin: extract, call one service
//! function, build the response.

pub mod auth;
pub mod batch;
pub mod changes;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod leases;
pub mod metrics;
pub mod records;
pub mod response;
pub mod socket;
pub mod versions;

use std::sync::Arc;

use actix_router::ResourceDef;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tracing_actix_web::RequestId;

use crate::config::ServerSettings;
use crate::domain::{CollectionName, RecordId};
use crate::push::Hub;
use crate::storage::feed::FeedFilter;
use crate::auth::{Authenticator, Principal};
use crate::domain::collection::{Access, Collections};
use crate::service::ServiceError;
use crate::storage::Database;
use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub settings: Arc<ServerSettings>,
    pub collections: Arc<Collections>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<metrics::Metrics>,
    pub auth: Arc<Authenticator>,
    pub limits: Arc<auth::Limits>,
}

impl AppState {
    /// Adds a comma-separated `collections` or `ids` parameter to a feed
    /// filter. Collections must exist, and the principal must be allowed
    /// to read them; ids must be UUIDs.
    pub fn add_to_filter(&self, principal: &Principal, filter: &mut FeedFilter, name: &str, value: &str) -> Result<(), ApiError> {
        for raw in value.split(',').filter(|raw| !raw.is_empty()) {
            if name == "ids" {
                let id = RecordId::parse(raw)
                    .map_err(|_| ApiError::bad_request("invalid-query", format!("Invalid record id {raw:?} in ids: record ids are UUIDs.")))?;
                filter.ids.push(id.to_key());
                continue;
            }
            let collection = CollectionName::parse(raw).map_err(|error| {
                ApiError::bad_request("invalid-query", format!("Invalid collection name {raw:?} in collections: {error}."))
            })?;
            let policy = self.collections.get(&collection).ok_or_else(|| ServiceError::CollectionNotFound { name: collection.to_string() })?;
            if !policy.allows(principal, Access::Read) {
                return Err(ServiceError::Forbidden { name: collection.to_string(), access: "read" }.into());
            }
            filter.collections.push(collection.to_string());
        }
        Ok(())
    }

    /// Restricts a feed filter that names no collection to the collections
    /// the principal may read, so that a feed never shows changes of others.
    ///
    /// # Errors
    ///
    /// 403 when the principal may read no collection at all.
    pub fn restrict_to_readable(&self, principal: &Principal, filter: &mut FeedFilter) -> Result<(), ApiError> {
        if !filter.collections.is_empty() || !principal.authenticated {
            return Ok(());
        }
        let declared: Vec<_> = self.collections.declared().collect();
        if declared.is_empty() {
            // Undeclared collections admit every authenticated principal.
            return Ok(());
        }
        let readable: Vec<String> = declared
            .iter()
            .filter(|(_, policy)| policy.allows(principal, Access::Read))
            .map(|(name, _)| name.to_string())
            .collect();
        if readable.is_empty() {
            return Err(ApiError::Forbidden { detail: "You may read no collection, so there is no change feed for you.".to_owned() });
        }
        if readable.len() < declared.len() {
            filter.collections = readable;
        }
        Ok(())
    }

    /// Converts a service error for the client. A stale write gets the
    /// status of `server.conflict_status` (409 by default, 412 for clients
    /// that follow RFC 9110 to the letter).
    pub fn api_error(&self, error: ServiceError) -> ApiError {
        match error {
            ServiceError::Conflict(report) => {
                let status = StatusCode::from_u16(self.settings.conflict_status).unwrap_or(StatusCode::CONFLICT);
                ApiError::StaleVersion { report, status }
            }
            other => ApiError::Service(other),
        }
    }
}

/// Declares each route once, producing both [`ROUTES`] (which the OpenAPI
/// test compares with `openapi.yaml`) and [`configure`].
macro_rules! routes {
    ($($method:ident $path:literal => $handler:path),* $(,)?) => {
        /// Every served route as `(method, path template)`.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),*];

        /// Registers every route.
        pub fn configure(config: &mut web::ServiceConfig) {
            $(config.route($path, method_route(stringify!($method)).to($handler));)*
        }
    };
}

/// Builds a route for one method. GET routes also accept HEAD, as RFC 9110
/// requires, and actix sends HEAD responses without their body.
fn method_route(method: &str) -> actix_web::Route {
    match method {
        "get" => web::route().guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head())),
        "post" => web::post(),
        "put" => web::put(),
        "patch" => web::patch(),
        _ => web::delete(),
    }
}

routes! {
    get "/healthz" => health::healthz,
    get "/readyz" => health::readyz,
    get "/openapi.yaml" => health::openapi,
    get "/metrics" => metrics::scrape,
    get "/v1/_changes" => changes::list,
    post "/v1/_batch" => batch::run,
    get "/v1/_events" => events::stream,
    get "/v1/_ws" => socket::connect,
    get "/v1/{collection}" => records::list,
    post "/v1/{collection}" => records::create,
    get "/v1/{collection}/{id}" => records::get,
    put "/v1/{collection}/{id}" => records::replace,
    patch "/v1/{collection}/{id}" => records::patch,
    delete "/v1/{collection}/{id}" => records::delete,
    get "/v1/{collection}/{id}/versions" => versions::history,
    get "/v1/{collection}/{id}/versions/{version}" => versions::revision,
    post "/v1/{collection}/{id}/versions/{version}/restore" => versions::restore,
    post "/v1/{collection}/{id}/lease" => leases::acquire,
    put "/v1/{collection}/{id}/lease" => leases::renew,
    delete "/v1/{collection}/{id}/lease" => leases::release,
    get "/v1/{collection}/{id}/lease" => leases::show,
}

/// Returns the error for a request that no route matched.
pub async fn fallback(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(route_error(&req))
}

/// Returns 405 with the allowed methods when some route serves this path,
/// else 404.
pub fn route_error(req: &HttpRequest) -> ApiError {
    // System paths such as /v1/_changes also match /v1/{collection}, so for
    // them only the exact template counts.
    let system_path = req.path().starts_with("/v1/_");
    let serves = |template: &str| {
        if system_path { template == req.path() } else { ResourceDef::new(template).is_match(req.path()) }
    };

    let mut allowed: Vec<String> = ROUTES.iter().filter(|(_, template)| serves(template)).map(|(method, _)| method.to_uppercase()).collect();
    allowed.dedup();

    if allowed.is_empty() {
        ApiError::RouteNotFound
    } else {
        ApiError::MethodNotAllowed { allow: allowed.join(", ") }
    }
}

/// Copies the request id that the tracing middleware assigned into an
/// `X-Request-Id` response header, so a client can quote it.
pub async fn add_request_id(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let request_id = req.extensions().get::<RequestId>().copied();
    let mut response = next.call(req).await?;
    if let Some(id) = request_id
        && let Ok(value) = HeaderValue::from_str(&id.to_string())
    {
        response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(response)
}

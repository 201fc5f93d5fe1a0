//! The HTTP layer: routes, extractors, responses, and the mapping from
//! errors to problem bodies. Handlers are thin: extract, call one service
//! function, build the response.

pub mod changes;
pub mod error;
pub mod extract;
pub mod health;
pub mod records;
pub mod response;
pub mod versions;

use std::sync::Arc;

use actix_router::ResourceDef;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use tracing_actix_web::RequestId;

use crate::config::ServerSettings;
use crate::storage::Database;
use error::{ApiError, StaleVersionMarker};

/// The principal of every request until authentication exists.
pub const ANONYMOUS: &str = "anonymous";

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub settings: Arc<ServerSettings>,
}

impl AppState {
    pub fn principal(&self) -> &str {
        ANONYMOUS
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

/// Builds a route for one method; GET routes also answer HEAD, as RFC 9110
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
    get "/v1/_changes" => changes::list,
    get "/v1/{collection}" => records::list,
    post "/v1/{collection}" => records::create,
    get "/v1/{collection}/{id}" => records::get,
    put "/v1/{collection}/{id}" => records::replace,
    patch "/v1/{collection}/{id}" => records::patch,
    delete "/v1/{collection}/{id}" => records::delete,
    get "/v1/{collection}/{id}/versions" => versions::history,
    get "/v1/{collection}/{id}/versions/{version}" => versions::revision,
}

/// Returns the error for a request that no route matched.
pub async fn fallback(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(route_error(&req))
}

/// 405 with the allowed methods when some route serves this path, else 404.
pub fn route_error(req: &HttpRequest) -> ApiError {
    let mut allowed: Vec<String> = ROUTES
        .iter()
        .filter(|(_, path)| ResourceDef::new(*path).is_match(req.path()))
        .map(|(method, _)| method.to_uppercase())
        .collect();
    // System paths such as /v1/_changes also match /v1/{collection}; only the
    // most specific template's methods count.
    if req.path().starts_with("/v1/_") {
        let specific: Vec<_> = ROUTES.iter().filter(|(_, path)| *path == req.path()).map(|(m, _)| m.to_uppercase()).collect();
        allowed = specific;
    }
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

/// Applies `server.conflict_status = 412` to stale-version responses.
pub async fn apply_conflict_status(
    req: ServiceRequest,
    next: actix_web::middleware::Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let status = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.settings.conflict_status)
        .unwrap_or(409);
    let response = next.call(req).await?;
    if status != 412 || response.response().extensions().get::<StaleVersionMarker>().is_none() {
        return Ok(response);
    }

    let (request, response) = response.into_parts();
    let headers = response.headers().clone();
    let body = actix_web::body::to_bytes(response.into_body()).await.unwrap_or_default();
    let body = error::restatus_problem(&body, StatusCode::PRECONDITION_FAILED).unwrap_or_else(|| body.to_vec());
    let mut rebuilt = HttpResponse::with_body(StatusCode::PRECONDITION_FAILED, BoxBody::new(body));
    *rebuilt.headers_mut() = headers;
    Ok(ServiceResponse::new(request, rebuilt))
}

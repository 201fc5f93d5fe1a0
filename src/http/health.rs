//! Liveness, readiness and the served OpenAPI document.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::service::ServiceError;
use crate::storage::migrations;

/// The repository's `openapi.yaml`, compiled in.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// `GET /healthz`: the process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database is reachable and its schema is current.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let current = state.db.read(|conn| migrations::is_current(conn).map_err(ServiceError::from)).await;
    match current {
        Ok(true) => Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": state.db.backend().to_string()}))),
        Ok(false) => Err(ApiError::NotReady { detail: "The database schema has pending migrations; run `versa migrate`.".to_owned() }),
        Err(_) => Err(ApiError::NotReady { detail: "The database cannot be reached.".to_owned() }),
    }
}

/// `GET /openapi.yaml`
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/yaml").body(OPENAPI_YAML)
}

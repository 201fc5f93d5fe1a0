//! `/v1/{collection}/{id}/lease`: acquire, renew, release, break and show
//! edit leases.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::{BodyType, OptionalJsonBody, QueryPairs, RecordPath, unknown_parameter};
use super::response::{json_response, to_json};
use crate::domain::collection::{Access, LeaseMode};
use crate::service::ServiceError;
use crate::service::leases;

/// `POST`: acquires the lease, with an optional body `{"ttl_seconds": n}`.
pub async fn acquire(state: web::Data<AppState>, path: RecordPath, body: OptionalJsonBody) -> Result<HttpResponse, ApiError> {
    require_leases(&path)?;
    let ttl = leases::lifetime(&path.policy, requested_ttl(body)?)?;

    let (token, lease) = leases::acquire(&state.db, &path.collection, path.id, &path.principal.name, ttl).await?;

    let mut body = lease.to_json();
    body["token"] = Value::String(token);
    Ok(json_response(StatusCode::CREATED, to_json(&body)?, None))
}

/// `PUT` with `Lease-Token`: renews the lease.
pub async fn renew(state: web::Data<AppState>, path: RecordPath, body: OptionalJsonBody) -> Result<HttpResponse, ApiError> {
    require_leases(&path)?;
    let token = required_token(&path)?;
    let ttl = leases::lifetime(&path.policy, requested_ttl(body)?)?;

    let lease = leases::renew(&state.db, &path.collection, path.id, &token, ttl).await?;

    Ok(json_response(StatusCode::OK, to_json(&lease.to_json())?, None))
}

/// `DELETE` with `Lease-Token` releases the lease; `DELETE ?force=true`
/// breaks it, for principals with the collection's `break_leases` role.
pub async fn release(state: web::Data<AppState>, path: RecordPath, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    require_leases(&path)?;
    let mut force = false;
    for (name, value) in query.0 {
        match (name.as_str(), value.as_str()) {
            ("force", "true") => force = true,
            ("force", "false") => force = false,
            ("force", other) => return Err(ApiError::bad_request("invalid-query", format!("force must be true or false, got {other:?}."))),
            (other, _) => return Err(unknown_parameter(other, "force")),
        }
    }

    if force {
        if !path.policy.allows(&path.principal, Access::BreakLeases) {
            return Err(ServiceError::Forbidden { name: path.collection.to_string(), access: "break leases in" }.into());
        }
        leases::force_break(&state.db, &path.collection, path.id, &path.principal.name).await?;
    } else {
        let token = required_token(&path)?;
        leases::release(&state.db, &path.collection, path.id, &token).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

/// `GET`: the holder and expiry of the active lease, never its token.
pub async fn show(state: web::Data<AppState>, path: RecordPath) -> Result<HttpResponse, ApiError> {
    require_leases(&path)?;

    let lease = leases::active(&state.db, &path.collection, path.id).await?.ok_or(ServiceError::LeaseNotFound)?;

    Ok(json_response(StatusCode::OK, to_json(&lease.to_json())?, None))
}

fn require_leases(path: &RecordPath) -> Result<(), ApiError> {
    if path.policy.leases == LeaseMode::Off {
        return Err(ApiError::LeasesOff { collection: path.collection.to_string() });
    }
    Ok(())
}

fn required_token(path: &RecordPath) -> Result<String, ApiError> {
    path.lease_token
        .clone()
        .filter(|token| !token.is_empty())
        .ok_or_else(|| ApiError::bad_request("invalid-lease", "Send the lease's token in the Lease-Token header (or ?force=true to break a lease)."))
}

fn requested_ttl(body: OptionalJsonBody) -> Result<Option<u64>, ApiError> {
    let Some(body) = body.0 else { return Ok(None) };
    body.require(&[BodyType::Json])?;
    match body.value {
        Value::Object(mut members) => {
            let ttl = match members.remove("ttl_seconds") {
                None | Some(Value::Null) => None,
                Some(value) => Some(value.as_u64().ok_or_else(|| {
                    ApiError::bad_request("invalid-lease", "ttl_seconds must be a whole number of seconds.")
                })?),
            };
            if let Some(unknown) = members.keys().next() {
                return Err(ApiError::bad_request("invalid-lease", format!("Unknown member {unknown:?}; a lease request has only ttl_seconds.")));
            }
            Ok(ttl)
        }
        _ => Err(ApiError::bad_request("invalid-lease", "The body must be an object such as {\"ttl_seconds\": 60}.")),
    }
}

//! Response builders shared by the handlers.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::domain::{CollectionName, EntityTag};
use crate::service::RecordSnapshot;
use crate::service::records::Written;

/// Records are revalidated on every use: a client keeps its copy and sends
/// If-None-Match, which costs a 304 when nothing changed.
const CACHE_CONTROL: &str = "no-cache";

/// Serializes a response body.
///
/// # Errors
///
/// [`ApiError::Internal`] if serialization fails, which for the types sent
/// here (JSON values and plain structs) does not happen.
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|error| ApiError::Internal { detail: format!("response serialization failed: {error}") })
}

pub fn json_response(status: StatusCode, body: Vec<u8>, etag: Option<&EntityTag>) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.content_type("application/json").insert_header((header::CACHE_CONTROL, CACHE_CONTROL));
    if let Some(etag) = etag {
        response.insert_header((header::ETAG, etag.to_string()));
    }
    response.body(body)
}

pub fn record_response(status: StatusCode, record: &RecordSnapshot) -> HttpResponse {
    let etag = EntityTag::for_version(record.meta.version);
    json_response(status, record.to_wire().to_string().into_bytes(), Some(&etag))
}

/// Builds the 200 of a committed write, with `Versa-Merged: true` when a
/// stale write was merged into the current version.
pub fn written_response(written: &Written) -> HttpResponse {
    let mut response = record_response(StatusCode::OK, &written.record);
    if written.merged {
        response.headers_mut().insert(header::HeaderName::from_static("versa-merged"), header::HeaderValue::from_static("true"));
    }
    response
}

/// Builds a 201 for a record given in wire form, with `Location` and `ETag`.
pub fn created(collection: &CollectionName, record: &Value, replayed: bool) -> HttpResponse {
    let mut response = json_response(StatusCode::CREATED, record.to_string().into_bytes(), None);
    let headers = response.headers_mut();
    if let Some(id) = record.get("id").and_then(Value::as_str)
        && let Ok(location) = header::HeaderValue::from_str(&format!("/v1/{collection}/{id}"))
    {
        headers.insert(header::LOCATION, location);
    }
    if let Some(version) = record.get("version").and_then(Value::as_i64)
        && let Ok(etag) = header::HeaderValue::from_str(&EntityTag::for_version(version).to_string())
    {
        headers.insert(header::ETAG, etag);
    }
    if replayed {
        headers.insert(header::HeaderName::from_static("idempotent-replayed"), header::HeaderValue::from_static("true"));
    }
    response
}

pub fn not_modified(etag: &EntityTag) -> HttpResponse {
    HttpResponse::NotModified()
        .insert_header((header::ETAG, etag.to_string()))
        .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
        .finish()
}

/// Computes the entity tag of a list page: a hash of the page as sent, so it changes
/// whenever any record on the page, the page's membership or its cursor
/// changes.
pub fn list_etag(body: &[u8]) -> EntityTag {
    let digest = Sha256::digest(body);
    EntityTag::strong(format!("l-{}", hex::encode(&digest[..12])))
}

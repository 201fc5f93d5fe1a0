//! `/v1/{collection}` and `/v1/{collection}/{id}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use json_patch::Patch;

use super::error::ApiError;
use super::extract::{BodyType, CollectionPath, IdempotencyKeyHeader, JsonBody, Preconditions, QueryPairs, RecordPath};
use super::response::{json_response, list_etag, not_modified, to_json, written_response};
use super::AppState;
use crate::domain::record::split_body;
use crate::domain::{EntityTag, ExpectedVersion, IfNoneMatch};
use actix_web::http::header::{HeaderName, HeaderValue};

use crate::domain::collection::LeaseMode;
use crate::domain::record::format_timestamp;
use crate::service::leases;
use crate::service::list::{self, ListParams};
use crate::service::records::{self, Change, Created, IdempotencyKey};
use crate::service::ServiceError;
use crate::domain::precondition::PreconditionError;

/// `POST /v1/{collection}`
pub async fn create(
    state: web::Data<AppState>,
    collection: CollectionPath,
    idempotency_key: IdempotencyKeyHeader,
    body: JsonBody,
) -> Result<HttpResponse, ApiError> {
    body.require(&[BodyType::Json])?;
    let key = idempotency_key.0.map(|key| IdempotencyKey::new(key, &collection.name, &body.value));

    let context = collection.write_context();
    let created = records::create(&state.db, &collection.name, body.value, &context, key).await?;

    let collection = collection.name;
    Ok(match created {
        Created::New(record) => super::response::created(&collection, &record.to_wire(), false),
        Created::Replayed(body) => super::response::created(&collection, &body, true),
    })
}

/// `GET /v1/{collection}/{id}`
pub async fn get(state: web::Data<AppState>, path: RecordPath, preconditions: Preconditions) -> Result<HttpResponse, ApiError> {
    let with_lease = path.policy.leases != LeaseMode::Off;
    let record = records::read_for_get(&state.db, &path.collection, path.id, with_lease).await?;

    let etag = EntityTag::for_version(record.version);
    if preconditions.if_none_match.is_some_and(|header| header.matches(&etag)) {
        return Ok(not_modified(&etag));
    }
    let mut response = json_response(StatusCode::OK, record.wire.into_bytes(), Some(&etag));
    if let Some(lease) = &record.lease
        && let Ok(value) = HeaderValue::from_str(&lease_header(lease))
    {
        response.headers_mut().insert(HeaderName::from_static("versa-lease"), value);
    }
    Ok(response)
}

/// Formats the active lease for the `Versa-Lease` header:
/// `holder="alice", expires_at="2026-12-04T20:00:00.000000Z"`. A holder's
/// name outside visible ASCII cannot be quoted in a header, so it is sent
/// as an RFC 8187 extended value: `holder*=UTF-8''%C3%89lise`.
fn lease_header(lease: &leases::Lease) -> String {
    let holder = if lease.holder.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ') {
        format!("holder=\"{}\"", lease.holder.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        format!("holder*=UTF-8''{}", percent_encoding::utf8_percent_encode(&lease.holder, ATTR_CHAR))
    };
    format!("{holder}, expires_at=\"{}\"", format_timestamp(lease.expires_at))
}

/// The characters RFC 8187 leaves unencoded in an extended value.
const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `PUT /v1/{collection}/{id}`: replaces the record, or with
/// `If-None-Match: *` creates it at this id.
pub async fn replace(state: web::Data<AppState>, path: RecordPath, preconditions: Preconditions, body: JsonBody) -> Result<HttpResponse, ApiError> {
    body.require(&[BodyType::Json])?;
    let split = split_body(body.value, Some(&path.id)).map_err(ServiceError::from)?;

    match preconditions.if_none_match {
        Some(IfNoneMatch::Any) => {
            if preconditions.if_match.is_some() || split.version.is_some() {
                return Err(ApiError::bad_request(
                    "invalid-precondition",
                    "If-None-Match: * creates a new record, so the request must not also state an expected version.",
                ));
            }
            let record = records::insert_new(&state.db, &path.collection, path.id, split.fields, &path.write_context()).await?;
            return Ok(super::response::created(&path.collection, &record.to_wire(), false));
        }
        Some(IfNoneMatch::Tags(_)) => return Err(ServiceError::Precondition(PreconditionError::UnsupportedIfNoneMatch).into()),
        None => {}
    }

    let expected = ExpectedVersion::resolve(preconditions.if_match.as_ref(), split.version).map_err(ServiceError::from)?;
    let written = records::write(&state.db, &path.collection, path.id, expected, Change::Replace(split.fields), &path.write_context())
        .await
        .map_err(|error| state.api_error(error))?;
    Ok(written_response(&written))
}

/// `PATCH /v1/{collection}/{id}`: JSON Merge Patch or JSON Patch, chosen by
/// the Content-Type.
pub async fn patch(state: web::Data<AppState>, path: RecordPath, preconditions: Preconditions, body: JsonBody) -> Result<HttpResponse, ApiError> {
    body.require(&[BodyType::MergePatch, BodyType::Json, BodyType::JsonPatch])?;

    let (expected, change) = match body.body_type {
        BodyType::JsonPatch => {
            let patch: Patch = serde_json::from_value(body.value).map_err(|error| {
                ApiError::bad_request("invalid-body", format!("The body is not a JSON Patch document (RFC 6902): {error}."))
            })?;
            let expected = ExpectedVersion::resolve(preconditions.if_match.as_ref(), None).map_err(ServiceError::from)?;
            (expected, Change::JsonPatch(patch))
        }
        BodyType::MergePatch | BodyType::Json => {
            let split = split_body(body.value, Some(&path.id)).map_err(ServiceError::from)?;
            let expected = ExpectedVersion::resolve(preconditions.if_match.as_ref(), split.version).map_err(ServiceError::from)?;
            (expected, Change::MergePatch(split.fields))
        }
    };

    let written = records::write(&state.db, &path.collection, path.id, expected, change, &path.write_context())
        .await
        .map_err(|error| state.api_error(error))?;
    Ok(written_response(&written))
}

/// `DELETE /v1/{collection}/{id}`: the expected version comes from
/// `If-Match` or `?version=`.
pub async fn delete(state: web::Data<AppState>, path: RecordPath, preconditions: Preconditions, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    let mut version = None;
    for (name, value) in query.0 {
        match name.as_str() {
            "version" => {
                let parsed = value.parse::<i64>().ok().filter(|v| *v >= 1).ok_or_else(|| {
                    ApiError::bad_request("invalid-query", format!("version must be an integer from 1, got {value:?}."))
                })?;
                version = Some(parsed);
            }
            other => return Err(ApiError::bad_request("invalid-query", format!("Unknown query parameter {other:?}; DELETE accepts only version."))),
        }
    }
    let expected = ExpectedVersion::resolve(preconditions.if_match.as_ref(), version).map_err(ServiceError::from)?;

    records::write(&state.db, &path.collection, path.id, expected, Change::Delete, &path.write_context())
        .await
        .map_err(|error| state.api_error(error))?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/{collection}`
pub async fn list(
    state: web::Data<AppState>,
    collection: CollectionPath,
    preconditions: Preconditions,
    query: QueryPairs,
) -> Result<HttpResponse, ApiError> {
    let mut params = ListParams::parse(query.0)?;
    if collection.policy.leases == LeaseMode::Off {
        params.include_leases = false;
    }

    let page = list::list(&state.db, &collection.name, params).await?;

    let body = to_json(&page)?;
    let etag = list_etag(&body);
    if preconditions.if_none_match.is_some_and(|header| header.matches(&etag)) {
        return Ok(not_modified(&etag));
    }
    Ok(json_response(StatusCode::OK, body, Some(&etag)))
}

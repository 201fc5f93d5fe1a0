//! `/v1/{collection}/{id}/versions`

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{BodyType, OptionalJsonBody, Preconditions, QueryPairs, RecordPath, VersionPath, unknown_parameter};
use super::response::{json_response, to_json, written_response};
use crate::domain::record::split_body;
use crate::domain::{EntityTag, ExpectedVersion};
use crate::service::ServiceError;
use crate::service::records::{self, Change};
use crate::service::list::{DEFAULT_LIMIT, parse_limit};
use crate::service::versions;

/// `GET /v1/{collection}/{id}/versions`: history, newest first.
pub async fn history(state: web::Data<AppState>, path: RecordPath, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    let mut limit = DEFAULT_LIMIT;
    let mut cursor = None;
    for (name, value) in query.0 {
        match name.as_str() {
            "limit" => limit = parse_limit(&value)?,
            "cursor" => cursor = Some(value),
            other => return Err(unknown_parameter(other, "limit and cursor")),
        }
    }

    let page = versions::history(&state.db, &path.collection, path.id, limit, cursor.as_deref()).await?;

    Ok(json_response(StatusCode::OK, to_json(&page)?, None))
}

/// `GET /v1/{collection}/{id}/versions/{version}`: one revision's snapshot.
/// Its entity tag is the version's, and it never changes.
pub async fn revision(state: web::Data<AppState>, path: RecordPath, version: VersionPath) -> Result<HttpResponse, ApiError> {
    let record = versions::revision(&state.db, &path.collection, path.id, version.0).await?;

    let etag = EntityTag::for_version(record.meta.version);
    Ok(json_response(StatusCode::OK, record.to_wire().to_string().into_bytes(), Some(&etag)))
}

/// `POST /v1/{collection}/{id}/versions/{version}/restore`: writes that
/// revision's fields as a new version, undeleting a deleted record. The
/// expected version comes from `If-Match` or a body `{"version": n}`.
pub async fn restore(
    state: web::Data<AppState>,
    path: RecordPath,
    version: VersionPath,
    preconditions: Preconditions,
    body: OptionalJsonBody,
) -> Result<HttpResponse, ApiError> {
    let body_version = match body.0 {
        None => None,
        Some(body) => {
            body.require(&[BodyType::Json])?;
            split_body(body.value, Some(&path.id)).map_err(ServiceError::from)?.version
        }
    };
    let expected = ExpectedVersion::resolve(preconditions.if_match.as_ref(), body_version).map_err(ServiceError::from)?;

    let written = records::write(&state.db, &path.collection, path.id, expected, Change::Restore(version.0), &path.write_context())
        .await
        .map_err(|error| state.api_error(error))?;
    Ok(written_response(&written))
}

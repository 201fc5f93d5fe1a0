//! Extractors that parse and check path, headers, query and body once, so
//! handlers see typed values. Every rejection is an [`ApiError`], so it gets
//! the same problem body as any other error.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;
use crate::domain::collection::{Access, CollectionPolicy};
use crate::service::ServiceError;
use crate::service::records::WriteContext;
use crate::domain::{CollectionName, IfMatch, IfNoneMatch, RecordId};

/// `{collection}` from the URL, with the collection's rules and the
/// principal, who has been checked against them: GET and HEAD need read
/// permission, every other method write permission.
#[derive(Debug, Clone)]
pub struct CollectionPath {
    pub name: CollectionName,
    pub policy: Arc<CollectionPolicy>,
    pub principal: Principal,
    /// The `Lease-Token` header, for collections that require leases.
    pub lease_token: Option<String>,
}

impl CollectionPath {
    /// Returns who writes and under which collection rules.
    pub fn write_context(&self) -> WriteContext {
        WriteContext { principal: self.principal.name.clone(), policy: self.policy.clone(), lease_token: self.lease_token.clone() }
    }
}

impl FromRequest for CollectionPath {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(collection_from(req))
    }
}

fn collection_from(req: &HttpRequest) -> Result<CollectionPath, ApiError> {
    let raw = req.match_info().get("collection").unwrap_or_default();
    if raw.starts_with('_') {
        // A system path such as /v1/_changes with a method it does not have.
        return Err(super::route_error(req));
    }
    let name = CollectionName::parse(raw).map_err(|error| {
        ApiError::bad_request("invalid-collection-name", format!("Invalid collection name {raw:?}: {error}."))
    })?;

    let policy = match req.app_data::<web::Data<AppState>>() {
        Some(state) => state
            .collections
            .get(&name)
            .ok_or_else(|| ApiError::Service(ServiceError::CollectionNotFound { name: name.to_string() }))?,
        None => Arc::default(),
    };

    // Checked before any record is looked up, so that a principal who may
    // not read a collection cannot learn which records exist in it.
    let principal = req.extensions().get::<Arc<Principal>>().map(|principal| (**principal).clone()).unwrap_or_else(Principal::anonymous);
    let (access, verb) = match *req.method() {
        Method::GET | Method::HEAD => (Access::Read, "read"),
        _ => (Access::Write, "write"),
    };
    if !policy.allows(&principal, access) {
        return Err(ServiceError::Forbidden { name: name.to_string(), access: verb }.into());
    }
    let lease_token = req.headers().get("lease-token").and_then(|value| value.to_str().ok()).map(|token| token.trim().to_owned());
    Ok(CollectionPath { name, policy, principal, lease_token })
}

/// `{collection}/{id}` from the URL, checked like [`CollectionPath`].
#[derive(Debug, Clone)]
pub struct RecordPath {
    pub collection: CollectionName,
    pub policy: Arc<CollectionPolicy>,
    pub principal: Principal,
    pub lease_token: Option<String>,
    pub id: RecordId,
}

impl RecordPath {
    /// Returns who writes and under which collection rules.
    pub fn write_context(&self) -> WriteContext {
        WriteContext { principal: self.principal.name.clone(), policy: self.policy.clone(), lease_token: self.lease_token.clone() }
    }
}

impl FromRequest for RecordPath {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(record_path_from(req))
    }
}

fn record_path_from(req: &HttpRequest) -> Result<RecordPath, ApiError> {
    let collection = collection_from(req)?;
    let raw = req.match_info().get("id").unwrap_or_default();
    let id = RecordId::parse(raw)
        .map_err(|_| ApiError::bad_request("invalid-record-id", format!("Invalid record id {raw:?}: record ids are UUIDs.")))?;
    Ok(RecordPath {
        collection: collection.name,
        policy: collection.policy,
        principal: collection.principal,
        lease_token: collection.lease_token,
        id,
    })
}

/// `{version}` from a revision URL.
#[derive(Debug, Clone, Copy)]
pub struct VersionPath(pub i64);

impl FromRequest for VersionPath {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let raw = req.match_info().get("version").unwrap_or_default();
        ready(
            raw.parse::<i64>()
                .ok()
                .filter(|version| *version >= 1)
                .map(Self)
                .ok_or_else(|| ApiError::bad_request("invalid-version", format!("Invalid version {raw:?}: versions are integers from 1."))),
        )
    }
}

/// The conditional request headers.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub if_match: Option<IfMatch>,
    pub if_none_match: Option<IfNoneMatch>,
}

impl FromRequest for Preconditions {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(preconditions_from(req.headers()))
    }
}

fn preconditions_from(headers: &HeaderMap) -> Result<Preconditions, ApiError> {
    let invalid = |error: crate::domain::precondition::PreconditionError| {
        ApiError::Service(crate::service::ServiceError::Precondition(error))
    };
    Ok(Preconditions {
        if_match: joined_header(headers, header::IF_MATCH)?.map(|value| IfMatch::parse(&value)).transpose().map_err(invalid)?,
        if_none_match: joined_header(headers, header::IF_NONE_MATCH)?
            .map(|value| IfNoneMatch::parse(&value))
            .transpose()
            .map_err(invalid)?,
    })
}

/// Joins repeated header lines into one list, as RFC 9110 allows.
fn joined_header(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, ApiError> {
    let mut values = Vec::new();
    for value in headers.get_all(&name) {
        let text = value
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid-header", format!("The {name} header is not visible ASCII.")))?;
        values.push(text.to_owned());
    }
    Ok(if values.is_empty() { None } else { Some(values.join(", ")) })
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyKeyHeader(pub Option<String>);

pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

impl FromRequest for IdempotencyKeyHeader {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(value) = req.headers().get("idempotency-key") else {
            return ready(Ok(Self(None)));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned);
        ready(key.map(|key| Self(Some(key))).ok_or_else(|| {
            ApiError::bad_request(
                "invalid-idempotency-key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters without spaces."),
            )
        }))
    }
}

/// The query string as name and value pairs, in order.
#[derive(Debug, Clone)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl FromRequest for QueryPairs {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
                .map(Self)
                .map_err(|error| ApiError::bad_request("invalid-query", format!("The query string cannot be decoded: {error}."))),
        )
    }
}

/// Returns the 400 for a query parameter that the endpoint does not take.
pub fn unknown_parameter(name: &str, accepted: &str) -> ApiError {
    ApiError::bad_request("invalid-query", format!("Unknown query parameter {name:?}; this endpoint accepts {accepted}."))
}

/// The media types a JSON body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    Json,
    MergePatch,
    JsonPatch,
}

impl BodyType {
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::MergePatch => "application/merge-patch+json",
            Self::JsonPatch => "application/json-patch+json",
        }
    }
}

/// A JSON request body, read up to `server.max_body_bytes` and checked
/// against `server.max_json_depth`.
#[derive(Debug, Clone)]
pub struct JsonBody {
    pub body_type: BodyType,
    pub value: Value,
}

impl JsonBody {
    /// Rejects a media type the endpoint does not accept.
    pub fn require(&self, accepted: &[BodyType]) -> Result<(), ApiError> {
        if accepted.contains(&self.body_type) {
            return Ok(());
        }
        Err(unsupported(accepted))
    }
}

fn unsupported(accepted: &[BodyType]) -> ApiError {
    let names = accepted.iter().map(|body_type| body_type.media_type()).collect::<Vec<_>>().join(", ");
    ApiError::UnsupportedMediaType { detail: format!("This endpoint accepts a body of type {names}.") }
}

impl FromRequest for JsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let (limit, max_depth) = match req.app_data::<web::Data<AppState>>() {
            Some(state) => (state.settings.max_body_bytes, state.settings.max_json_depth),
            None => {
                let defaults = crate::config::Settings::default().server;
                (defaults.max_body_bytes, defaults.max_json_depth)
            }
        };
        let body_type = body_type_of(req);
        let declared_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<usize>().ok());
        let mut payload = payload.take();

        Box::pin(async move {
            let body_type = body_type?;
            if declared_length.is_some_and(|length| length > limit) {
                return Err(ApiError::PayloadTooLarge { limit });
            }

            let mut bytes = BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|error| ApiError::bad_request("invalid-body", format!("The request body could not be read: {error}.")))?;
                if bytes.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                bytes.extend_from_slice(&chunk);
            }
            if bytes.is_empty() {
                return Err(ApiError::bad_request("invalid-body", "The request body is empty; send a JSON document."));
            }

            // TODO: integers beyond 64 bits parse as floats and are stored
            // rounded. serde_json's arbitrary_precision feature, or a check
            // that rejects them with 400, would keep client data exact.
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|error| ApiError::bad_request("invalid-json", format!("The request body is not valid JSON: {error}.")))?;
            if depth(&value) > max_depth {
                return Err(ApiError::bad_request(
                    "json-too-deep",
                    format!("The request body nests arrays and objects deeper than {max_depth} levels."),
                ));
            }
            Ok(Self { body_type, value })
        })
    }
}

/// A JSON body that may be absent: a request without `Content-Type` and
/// without content is `None`; anything else must be a valid [`JsonBody`].
#[derive(Debug, Clone)]
pub struct OptionalJsonBody(pub Option<JsonBody>);

impl FromRequest for OptionalJsonBody {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let headers = req.headers();
        let empty = !headers.contains_key(header::CONTENT_TYPE)
            && headers.get(header::CONTENT_LENGTH).is_none_or(|length| length.as_bytes() == b"0")
            && !headers.contains_key(header::TRANSFER_ENCODING);
        if empty {
            return Box::pin(async { Ok(Self(None)) });
        }
        let body = JsonBody::from_request(req, payload);
        Box::pin(async move { body.await.map(|body| Self(Some(body))) })
    }
}

fn body_type_of(req: &HttpRequest) -> Result<BodyType, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType { detail: "The request has no Content-Type; send application/json.".to_owned() });
    };
    let not_supported = || ApiError::UnsupportedMediaType {
        detail: format!(
            "Content-Type {value:?} is not supported: POST and PUT take application/json, and PATCH also takes application/merge-patch+json and application/json-patch+json."
        ),
    };
    let media: mime::Mime = value.to_str().ok().and_then(|text| text.parse().ok()).ok_or_else(not_supported)?;
    if media.get_param(mime::CHARSET).is_some_and(|charset| charset != mime::UTF_8) {
        return Err(ApiError::UnsupportedMediaType { detail: "Request bodies must be UTF-8.".to_owned() });
    }
    match media.essence_str() {
        "application/json" => Ok(BodyType::Json),
        "application/merge-patch+json" => Ok(BodyType::MergePatch),
        "application/json-patch+json" => Ok(BodyType::JsonPatch),
        _ => Err(not_supported()),
    }
}

/// Nesting depth of arrays and objects; a scalar is depth 0. Iterative, so
/// a deep document cannot overflow the stack here.
fn depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(members) => Box::new(members.values()),
            _ => continue,
        };
        deepest = deepest.max(level + 1);
        stack.extend(children.map(|child| (child, level + 1)));
    }
    deepest
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::depth;

    #[test]
    fn depth_counts_containers() {
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({})), 1);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
    }
}

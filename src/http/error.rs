//! The HTTP layer's error type and the one place that maps every error to a
//! status code and an RFC 9457 problem body.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::{Map, Value, json};

use crate::domain::EntityTag;
use crate::domain::record::format_timestamp;
use crate::service::{ConflictReport, ServiceError};
use crate::storage::StorageError;

/// Prefix of every problem `type`. The URIs identify kinds of error; they
/// are stable across releases and need not resolve.
pub const PROBLEM_BASE: &str = "https://versa.dev/problems/";

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An error as the client sees it.
///
/// `Debug` prints only the status and problem type: the request logger
/// prints errors with it, and a conflict report carries whole records.
#[derive(thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A malformed request: bad header, query, path or body.
    #[error("{detail}")]
    BadRequest { kind: &'static str, detail: String },
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("batch has {count} operations, more than {limit}")]
    BatchTooLarge { limit: usize, count: usize },
    #[error("{detail}")]
    UnsupportedMediaType { detail: String },
    #[error("no route for this path")]
    RouteNotFound,
    #[error("{detail}")]
    Forbidden { detail: String },
    #[error("leases are off in {collection}")]
    LeasesOff { collection: String },
    #[error("authentication failed: {0}")]
    Unauthenticated(crate::auth::AuthError),
    #[error("rate limited")]
    RateLimited { retry_after: u64 },
    #[error("method not allowed")]
    MethodNotAllowed { allow: String },
    #[error("database not ready: {detail}")]
    NotReady { detail: String },
    /// A stale write, returned with the status the server is configured
    /// for (409 or 412). See [`crate::http::AppState::api_error`].
    #[error("stale expected version")]
    StaleVersion { report: Box<ConflictReport>, status: StatusCode },
    /// An atomic batch that wrote nothing because some operations failed.
    #[error("batch not applied")]
    BatchFailed { status: StatusCode, failures: Vec<Value>, total: usize },
    /// A server fault outside the service layer; the client gets a generic
    /// 500 and the detail goes to the log.
    #[error("{detail}")]
    Internal { detail: String },
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let problem = self.problem();
        write!(f, "{} {}", problem.status.as_u16(), problem.kind)
    }
}

impl ApiError {
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest { kind, detail: detail.into() }
    }
}

/// A problem body under construction.
struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    extensions: Map<String, Value>,
}

impl Problem {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        Self { status, kind, title, detail: detail.into(), extensions: Map::new() }
    }

    fn with(mut self, name: &str, value: Value) -> Self {
        self.extensions.insert(name.to_owned(), value);
        self
    }

    fn into_body(self) -> Value {
        let mut body = Map::new();
        body.insert("type".into(), Value::String(format!("{PROBLEM_BASE}{}", self.kind)));
        body.insert("title".into(), Value::String(self.title.to_owned()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail));
        body.extend(self.extensions);
        Value::Object(body)
    }
}

impl ApiError {
    fn problem(&self) -> Problem {
        use StatusCode as S;
        match self {
            Self::BadRequest { kind, detail } => Problem::new(S::BAD_REQUEST, kind, "Invalid request", detail.clone()),
            Self::PayloadTooLarge { limit } => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                format!("The request body is larger than the limit of {limit} bytes; send a smaller body."),
            )
            .with("max_body_bytes", Value::from(*limit)),
            Self::BatchTooLarge { limit, count } => Problem::new(
                S::PAYLOAD_TOO_LARGE,
                "batch-too-large",
                "Too many batch operations",
                format!("The batch has {count} operations and the limit is {limit}; split it into several batches."),
            )
            .with("max_batch_operations", Value::from(*limit)),
            Self::UnsupportedMediaType { detail } => {
                Problem::new(S::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", detail.clone())
            }
            Self::RouteNotFound => Problem::new(S::NOT_FOUND, "not-found", "Not found", "No endpoint exists at this path."),
            Self::Forbidden { detail } => Problem::new(S::FORBIDDEN, "forbidden", "Forbidden", detail.clone()),
            Self::LeasesOff { collection } => Problem::new(
                S::NOT_FOUND,
                "leases-off",
                "Leases are off",
                format!("The collection {collection:?} does not use edit leases (leases = \"off\")."),
            ),
            Self::Unauthenticated(error) => {
                let detail = match error {
                    crate::auth::AuthError::Missing => "This endpoint needs credentials: send Authorization: Bearer <token>.".to_owned(),
                    crate::auth::AuthError::Malformed => "The Authorization header must be \"Bearer <token>\".".to_owned(),
                    crate::auth::AuthError::InvalidToken(reason) => format!("The bearer token was rejected: {reason}."),
                };
                Problem::new(S::UNAUTHORIZED, "unauthenticated", "Authentication required", detail)
            }
            Self::RateLimited { retry_after } => Problem::new(
                S::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                format!("This principal sent more requests than its limit allows; retry after {retry_after} seconds."),
            ),
            Self::MethodNotAllowed { allow } => Problem::new(
                S::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                format!("This endpoint accepts {allow}."),
            ),
            Self::NotReady { detail } => Problem::new(S::SERVICE_UNAVAILABLE, "not-ready", "Not ready", detail.clone()),
            Self::StaleVersion { report, status } => conflict_problem(report, *status),
            Self::Internal { .. } => internal_problem(),
            Self::BatchFailed { status, failures, total } => Problem::new(
                *status,
                "batch-failed",
                "Batch not applied",
                format!("{} of {total} operations failed, so nothing was written; see failures.", failures.len()),
            )
            .with("failures", Value::Array(failures.clone())),
            Self::Service(error) => service_problem(error),
        }
    }
}

fn service_problem(error: &ServiceError) -> Problem {
    use StatusCode as S;
    match error {
        ServiceError::Forbidden { name, access } => Problem::new(
            S::FORBIDDEN,
            "forbidden",
            "Forbidden",
            format!("You may not {access} the collection {name:?}; ask for a role that its configuration allows."),
        ),
        ServiceError::Locked { holder, expires_at } => Problem::new(
            S::LOCKED,
            "locked",
            "Record leased",
            format!("{holder} holds an edit lease on this record until {}; wait, or ask them to release it.", format_timestamp(*expires_at)),
        )
        .with("holder", Value::String(holder.clone()))
        .with("expires_at", Value::String(format_timestamp(*expires_at))),
        ServiceError::LeaseGone => Problem::new(
            S::GONE,
            "lease-gone",
            "Lease gone",
            "This lease token no longer holds the lease: it expired, was released, broken or replaced. Acquire a new lease.",
        ),
        ServiceError::LeaseNotFound => Problem::new(S::NOT_FOUND, "lease-not-found", "No lease", "No edit lease is active on this record."),
        ServiceError::InvalidLease(reason) => Problem::new(S::BAD_REQUEST, "invalid-lease", "Invalid lease request", sentence(reason)),
        ServiceError::CollectionNotFound { name } => Problem::new(
            S::NOT_FOUND,
            "collection-not-found",
            "Collection not found",
            format!("The collection {name:?} is not declared in the server configuration."),
        ),
        ServiceError::NotFound => Problem::new(S::NOT_FOUND, "record-not-found", "Record not found", "No record with this id exists in this collection."),
        ServiceError::Deleted { version, deleted_at, deleted_by } => Problem::new(
            S::NOT_FOUND,
            "record-deleted",
            "Record deleted",
            format!("The record was deleted by {deleted_by} at version {version}; its history is still readable."),
        )
        .with("deleted", Value::Bool(true))
        .with("version", Value::from(*version))
        .with("deleted_at", Value::String(format_timestamp(*deleted_at)))
        .with("deleted_by", Value::String(deleted_by.clone())),
        ServiceError::AlreadyExists { current } => Problem::new(
            S::CONFLICT,
            "record-exists",
            "Record already exists",
            "A record with this id already exists in this collection (a deleted record keeps its id); choose another id or update the existing record.",
        )
        .with("current", (**current).clone()),
        ServiceError::PreconditionRequired => Problem::new(
            S::PRECONDITION_REQUIRED,
            "precondition-required",
            "Expected version required",
            "A write to an existing record must state the version it is based on: send If-Match: \"<version>\" or a \"version\" member in the body (for DELETE, If-Match or ?version=).",
        ),
        ServiceError::UnconditionalWriteNotAllowed => Problem::new(
            S::PRECONDITION_REQUIRED,
            "unconditional-write-not-allowed",
            "Unconditional write not allowed",
            "If-Match: * would overwrite changes you have not seen, and this collection does not allow unconditional writes; send the version you read instead.",
        ),
        ServiceError::Conflict(report) => conflict_problem(report, S::CONFLICT),
        ServiceError::Body(error) => Problem::new(S::BAD_REQUEST, "invalid-body", "Invalid request body", sentence(&error.to_string())),
        ServiceError::Precondition(error) => {
            Problem::new(S::BAD_REQUEST, "invalid-precondition", "Invalid precondition", sentence(&error.to_string()))
        }
        ServiceError::Patch(error) => {
            let path = match error {
                crate::domain::patch::PatchError::ReservedMember { path, .. } | crate::domain::patch::PatchError::Failed { path, .. } => {
                    path.clone()
                }
                crate::domain::patch::PatchError::NotAnObject => String::new(),
            };
            let status = match error {
                crate::domain::patch::PatchError::ReservedMember { .. } => S::BAD_REQUEST,
                _ => S::UNPROCESSABLE_ENTITY,
            };
            Problem::new(status, "patch-failed", "Patch cannot be applied", sentence(&error.to_string()))
                .with("errors", json!([{"path": path, "message": error.to_string()}]))
        }
        ServiceError::RevisionNotFound { version } => Problem::new(
            S::NOT_FOUND,
            "revision-not-found",
            "Revision not found",
            format!("The record has no revision {version}."),
        ),
        ServiceError::RestoreOfDeletion { version } => Problem::new(
            S::UNPROCESSABLE_ENTITY,
            "restore-of-deletion",
            "Cannot restore a deletion",
            format!("Revision {version} is the record's deletion; restore a version from before it."),
        ),
        ServiceError::Validation(errors) => Problem::new(
            S::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Record fails the collection's schema",
            format!("The record does not match the collection's JSON Schema ({} errors); nothing was written.", errors.len()),
        )
        .with("errors", serde_json::to_value(errors).unwrap_or(Value::Array(Vec::new()))),
        ServiceError::IdempotencyKeyReused => Problem::new(
            S::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency key reused",
            "This Idempotency-Key was used with a different request body or collection; use a new key for a new request.",
        ),
        ServiceError::IdempotencyKeyInFlight => Problem::new(
            S::CONFLICT,
            "idempotency-key-in-use",
            "Idempotency key in use",
            "A request with this Idempotency-Key is still running; retry after it finishes to get its response.",
        ),
        ServiceError::CursorExpired => Problem::new(
            S::GONE,
            "cursor-expired",
            "Cursor expired",
            "Changes after this cursor have been deleted by the change feed's retention; reload the data you follow and start again without a cursor.",
        ),
        ServiceError::InvalidCursor(reason) => Problem::new(S::BAD_REQUEST, "invalid-cursor", "Invalid cursor", sentence(reason)),
        ServiceError::InvalidOperation(reason) => {
            Problem::new(S::BAD_REQUEST, "invalid-operation", "Invalid batch operation", sentence(reason))
        }
        ServiceError::InvalidQuery(reason) => Problem::new(S::BAD_REQUEST, "invalid-query", "Invalid query parameter", sentence(reason)),
        ServiceError::Storage(StorageError::Unavailable(_)) => Problem::new(
            S::SERVICE_UNAVAILABLE,
            "database-unavailable",
            "Database unavailable",
            "The database cannot be reached right now; retry later.",
        ),
        ServiceError::Storage(_) => internal_problem(),
    }
}

fn internal_problem() -> Problem {
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "Internal server error",
        "The server failed to handle this request; the X-Request-Id response header identifies it in the server log.",
    )
}

fn conflict_problem(report: &ConflictReport, status: StatusCode) -> Problem {
    let current = report.current_version;
    let detail = if report.deleted {
        format!("The record was deleted at version {current}; nothing was written.")
    } else if report.weak_tags_only {
        format!(
            "If-Match named only weak entity tags, which never match a write; the record is at version {current}. Nothing was written. Send If-Match: \"{current}\" once your copy is current."
        )
    } else {
        match report.expected_version {
            Some(expected) if !report.base_available => format!(
                "The write expected version {expected}, but the record is at version {current} and revision {expected} is not available, so no field comparison was possible. Nothing was written; read the record again and retry."
            ),
            Some(expected) => format!(
                "The write expected version {expected}, but the record is at version {current}; nothing was written. Merge the changes listed in conflicts and retry with version {current}."
            ),
            None => format!("The record is at version {current}; nothing was written."),
        }
    };

    Problem::new(status, "version-conflict", "Version conflict", detail)
        .with("current", report.current.clone())
        .with("expected_version", report.expected_version.map(Value::from).unwrap_or(Value::Null))
        .with("current_version", Value::from(report.current_version))
        .with("revisions_since", serde_json::to_value(&report.revisions_since).unwrap_or(Value::Array(Vec::new())))
        .with("conflicts", serde_json::to_value(&report.conflicts).unwrap_or(Value::Array(Vec::new())))
        .with("base_available", Value::Bool(report.base_available))
}

/// Turns an internal lowercase message into a sentence for a client.
fn sentence(message: &str) -> String {
    let mut chars = message.chars();
    let mut text = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
        None => String::new(),
    };
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

impl ApiError {
    /// Returns the status and problem body, for errors reported inside
    /// another response such as a batch result.
    pub fn to_problem(&self) -> (StatusCode, Value) {
        let problem = self.problem();
        (problem.status, problem.into_body())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.problem().status
    }

    fn error_response(&self) -> HttpResponse {
        let problem = self.problem();
        if problem.status.is_server_error() {
            // Logged once here, with the span's request id.
            tracing::error!(error = %self, source = ?std::error::Error::source(self), "request failed");
        }

        let mut response = HttpResponse::build(problem.status);
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE)));
        match self {
            Self::Service(ServiceError::Conflict(report)) | Self::StaleVersion { report, .. } => {
                response.insert_header((header::ETAG, EntityTag::for_version(report.current_version).to_string()));
            }
            Self::Service(ServiceError::AlreadyExists { current }) => {
                if let Some(version) = current.get("version").and_then(Value::as_i64) {
                    response.insert_header((header::ETAG, EntityTag::for_version(version).to_string()));
                }
            }
            Self::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, allow.clone()));
            }
            Self::Unauthenticated(error) => {
                let challenge = match error {
                    crate::auth::AuthError::InvalidToken(_) => "Bearer realm=\"versa\", error=\"invalid_token\"",
                    _ => "Bearer realm=\"versa\"",
                };
                response.insert_header((header::WWW_AUTHENTICATE, challenge));
            }
            Self::RateLimited { retry_after } => {
                response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
            }
            Self::Service(ServiceError::Storage(StorageError::Unavailable(_))) | Self::NotReady { .. } => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        response.body(problem.into_body().to_string())
    }
}

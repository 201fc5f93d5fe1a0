//! Operations: each public function is one request's work, run as one
//! transaction on the blocking pool, built from domain rules and storage
//! queries. Handlers call exactly one of them.

pub mod batch;
pub mod changes;
pub mod conflict;
pub mod cursor;
pub mod leases;
pub mod list;
pub mod records;
pub mod versions;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::patch::PatchError;
use crate::domain::precondition::PreconditionError;
use crate::domain::record::{BodyError, Fields, to_wire};
use crate::domain::RecordMeta;
use crate::storage::StorageError;
pub use conflict::ConflictReport;

/// A record as of one version.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSnapshot {
    pub meta: RecordMeta,
    pub fields: Fields,
}

impl RecordSnapshot {
    pub fn to_wire(&self) -> Value {
        to_wire(&self.meta, &self.fields)
    }
}

/// An operation that did not happen. Each variant maps to one HTTP status
/// and problem type in [`crate::http::error`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("no permission to {access} collection {name}")]
    Forbidden { name: String, access: &'static str },
    #[error("record leased by someone else")]
    Locked { holder: String, expires_at: DateTime<Utc> },
    #[error("lease token no longer holds the lease")]
    LeaseGone,
    #[error("no active lease")]
    LeaseNotFound,
    #[error("invalid lease request: {0}")]
    InvalidLease(String),
    #[error("collection {name} is not declared")]
    CollectionNotFound { name: String },
    #[error("record not found")]
    NotFound,
    #[error("record deleted")]
    Deleted { version: i64, deleted_at: DateTime<Utc>, deleted_by: String },
    #[error("record id already taken")]
    AlreadyExists { current: Box<Value> },
    #[error("expected version missing")]
    PreconditionRequired,
    #[error("unconditional write not allowed")]
    UnconditionalWriteNotAllowed,
    #[error("stale expected version")]
    Conflict(Box<ConflictReport>),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Precondition(#[from] PreconditionError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error("revision not found")]
    RevisionNotFound { version: i64 },
    #[error("restore of a deletion")]
    RestoreOfDeletion { version: i64 },
    #[error("record fails the collection's schema")]
    Validation(Vec<crate::domain::collection::SchemaError>),
    #[error("idempotency key reused for a different request")]
    IdempotencyKeyReused,
    #[error("idempotency key in use by a request still running")]
    IdempotencyKeyInFlight,
    #[error("cursor older than the retained change history")]
    CursorExpired,
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),
    #[error("invalid batch operation: {0}")]
    InvalidOperation(String),
    #[error("invalid query parameter: {0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<diesel::result::Error> for ServiceError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Storage(StorageError::from(error))
    }
}

//! The storage layer's error type.

use std::sync::Arc;

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// A failed storage operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No connection could be had: the database is down or the pool is
    /// exhausted.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A unique constraint rejected an insert.
    #[error("unique constraint violated")]
    UniqueViolation,
    /// A stored value could not be decoded; the database contains something this
    /// version of Versa did not write.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("database query failed")]
    Query(#[source] DieselError),
    /// The shared transaction of a group of SQLite writes failed to commit;
    /// every write of the group reports the same error.
    #[error("commit failed")]
    CommitFailed(#[source] Arc<DieselError>),
    #[error("migrations failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("blocking task failed")]
    Blocking(#[source] actix_web::error::BlockingError),
}

impl From<DieselError> for StorageError {
    fn from(error: DieselError) -> Self {
        match error {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => Self::UniqueViolation,
            // A connection that the server closed fails with one or the
            // other, depending on where the query was when it noticed.
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _) => {
                Self::Unavailable(Box::new(error))
            }
            other => Self::Query(other),
        }
    }
}

impl From<diesel::r2d2::PoolError> for StorageError {
    fn from(error: diesel::r2d2::PoolError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

impl From<actix_web::error::BlockingError> for StorageError {
    fn from(error: actix_web::error::BlockingError) -> Self {
        Self::Blocking(error)
    }
}

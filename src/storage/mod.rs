//! Storage: the diesel schema, connections and pools for SQLite and
//! PostgreSQL, embedded migrations, and one function per query.
//!
//! Every function here is synchronous and takes a connection. Callers run
//! them on the blocking pool through [`Database::read`] and
//! [`Database::write`], never on an actix worker thread.

pub mod connection;
pub mod error;
pub mod feed;
pub mod idempotency;
pub mod leases;
pub mod migrations;
pub mod models;
#[cfg(test)]
pub(crate) mod probe;
pub mod recent;
pub mod records;
pub mod schema;
mod statements;

pub use connection::{Backend, Database, DatabaseUrl, DbConnection};
pub use error::StorageError;

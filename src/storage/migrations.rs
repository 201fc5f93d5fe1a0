//! Migrations, one folder per back end, embedded in the binary.

use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::{DbConnection, StorageError};

const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Applies every pending migration and returns how many ran.
pub fn run_pending(conn: &mut DbConnection) -> Result<usize, StorageError> {
    let applied = match conn {
        DbConnection::Sqlite(conn) => conn.run_pending_migrations(SQLITE).map(|done| done.len()),
        DbConnection::Postgresql(conn) => conn.run_pending_migrations(POSTGRES).map(|done| done.len()),
    };
    applied.map_err(StorageError::Migration)
}

/// `true` when the schema is up to date.
pub fn is_current(conn: &mut DbConnection) -> Result<bool, StorageError> {
    let pending = match conn {
        DbConnection::Sqlite(conn) => conn.has_pending_migration(SQLITE),
        DbConnection::Postgresql(conn) => conn.has_pending_migration(POSTGRES),
    };
    pending.map(|pending| !pending).map_err(StorageError::Migration)
}

/// Reverts every migration, newest first. Used by the test that checks each
/// `down.sql` undoes its `up.sql`.
pub fn revert_all(conn: &mut DbConnection) -> Result<usize, StorageError> {
    let reverted = match conn {
        DbConnection::Sqlite(conn) => conn.revert_all_migrations(SQLITE).map(|done| done.len()),
        DbConnection::Postgresql(conn) => conn.revert_all_migrations(POSTGRES).map(|done| done.len()),
    };
    reverted.map_err(StorageError::Migration)
}

/// Opens a SQLite database named `file` in `dir` with every migration run,
/// for tests.
#[cfg(test)]
pub(crate) fn migrated_sqlite(dir: &std::path::Path, file: &str) -> DbConnection {
    use diesel::r2d2::ManageConnection;

    let url = super::DatabaseUrl::parse(&dir.join(file).display().to_string()).expect("SQLite path");
    let mut conn = super::connection::Manager::new(url).connect().expect("open SQLite");
    run_pending(&mut conn).expect("run migrations");
    conn
}

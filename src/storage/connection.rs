//! Connections and pools for both back ends, chosen by the database URL.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, ConnectionError};

use super::StorageError;

/// One connection to either back end. Queries written against this type
/// run on both.
#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

impl DbConnection {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgresql(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        })
    }
}

/// A database URL with its back end decided by the scheme: `postgres://` or
/// `postgresql://` is PostgreSQL; `sqlite://PATH`, `sqlite:PATH` or a bare
/// path is a SQLite file.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    backend: Backend,
    target: String,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("the database URL is empty".to_owned());
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self { backend: Backend::Postgres, target: url.to_owned() });
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.is_empty() {
            return Err(format!("the SQLite URL {url:?} names no file"));
        }
        if path.contains("://") {
            return Err(format!("unsupported database URL scheme in {url:?}; use sqlite:// or postgres://"));
        }
        Ok(Self { backend: Backend::Sqlite, target: path.to_owned() })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection string, for PostgreSQL clients other than diesel.
    pub fn postgres_url(&self) -> Option<&str> {
        (self.backend == Backend::Postgres).then_some(self.target.as_str())
    }
}

/// Shows the URL without its password, so that it can be logged.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            Backend::Sqlite => write!(f, "sqlite://{}", self.target),
            Backend::Postgres => f.write_str(&redact_password(&self.target)),
        }
    }
}

fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// How long a SQLite connection waits for a lock before reporting busy.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// An r2d2 manager that opens the back end named by the URL. diesel's own
/// manager for a multi-backend connection would try each back end in turn
/// and open an unreachable PostgreSQL URL as a SQLite file.
#[derive(Debug, Clone)]
pub struct Manager {
    url: DatabaseUrl,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConnection, Self::Error> {
        match self.url.backend {
            Backend::Postgres => Ok(DbConnection::Postgresql(
                PgConnection::establish(&self.url.target).map_err(diesel::r2d2::Error::ConnectionError)?,
            )),
            Backend::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url.target).map_err(diesel::r2d2::Error::ConnectionError)?;
                conn.batch_execute(&format!(
                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
                ))
                .map_err(diesel::r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), Self::Error> {
        conn.ping().map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken()
    }
}

pub type DbPool = Pool<Manager>;
pub type PooledDb = PooledConnection<Manager>;

/// The connection pools of one database.
///
/// SQLite allows one writer at a time, and in WAL mode a transaction that
/// reads and then writes fails at once with `SQLITE_BUSY` when another
/// connection wrote in between, whatever the busy timeout. So writes go
/// through a pool of exactly one connection and reads through a separate
/// pool. On PostgreSQL both are the same pool.
#[derive(Clone)]
pub struct Database {
    url: DatabaseUrl,
    reader: DbPool,
    writer: DbPool,
    /// Signalled after every committed write transaction, so that this
    /// instance's change feed reader looks for new changes at once.
    committed: Arc<Notify>,
}

impl Database {
    /// Opens the pools. Blocking: call it outside the async runtime's
    /// worker threads.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] when no connection can be opened within
    /// `connect_timeout`.
    pub fn connect(url: &DatabaseUrl, pool_size: u32, connect_timeout: Duration) -> Result<Self, StorageError> {
        let manager = Manager { url: url.clone() };
        let build = |size: u32| {
            Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(connect_timeout)
                .build(manager.clone())
                .map_err(|error| StorageError::Unavailable(Box::new(error)))
        };

        match url.backend {
            Backend::Postgres => {
                let pool = build(pool_size.max(1))?;
                Ok(Self { url: url.clone(), reader: pool.clone(), writer: pool, committed: Arc::default() })
            }
            Backend::Sqlite => {
                let writer = build(1)?;
                writer.get()?.batch_execute("PRAGMA journal_mode = WAL;")?;
                let reader = build(pool_size.max(1))?;
                Ok(Self { url: url.clone(), reader, writer, committed: Arc::default() })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.url.backend
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Returns the signal raised after each committed write transaction.
    pub fn commit_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Runs `task` on the blocking pool with a read connection.
    pub async fn read<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        let pool = self.reader.clone();
        actix_web::web::block(move || {
            let mut conn = pool.get().map_err(StorageError::from)?;
            task(&mut conn)
        })
        .await
        .map_err(StorageError::from)?
    }

    /// Runs `task` on the blocking pool inside one transaction on the write
    /// connection. An `Err` rolls the transaction back.
    pub async fn write<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + From<diesel::result::Error> + Send + 'static,
    {
        let pool = self.writer.clone();
        let result = actix_web::web::block(move || {
            let mut conn = pool.get().map_err(StorageError::from)?;
            let conn: &mut DbConnection = &mut conn;
            conn.transaction(task)
        })
        .await
        .map_err(StorageError::from)?;
        if result.is_ok() {
            self.committed.notify_one();
        }
        result
    }

    /// Runs `task` with a write connection outside any transaction, for
    /// start-up work such as migrations.
    pub fn with_writer_blocking<T>(&self, task: impl FnOnce(&mut DbConnection) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let mut conn = self.writer.get()?;
        task(&mut conn)
    }
}

impl From<ConnectionError> for StorageError {
    fn from(error: ConnectionError) -> Self {
        Self::Unavailable(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_scheme_selects_backend() {
        assert_eq!(DatabaseUrl::parse("postgres://u:p@h/db").unwrap().backend(), Backend::Postgres);
        assert_eq!(DatabaseUrl::parse("postgresql://h/db").unwrap().backend(), Backend::Postgres);
        let sqlite = DatabaseUrl::parse("sqlite://versa.db").unwrap();
        assert_eq!((sqlite.backend(), sqlite.target.as_str()), (Backend::Sqlite, "versa.db"));
        assert_eq!(DatabaseUrl::parse("sqlite:///var/lib/versa.db").unwrap().target, "/var/lib/versa.db");
        assert_eq!(DatabaseUrl::parse("data/x.db").unwrap().target, "data/x.db");
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn display_hides_password() {
        let url = DatabaseUrl::parse("postgres://versa:secret@db:5432/versa").unwrap();
        assert_eq!(url.to_string(), "postgres://versa:***@db:5432/versa");
    }
}

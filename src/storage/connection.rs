//! Connections and pools for both back ends, chosen by the database URL.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection, R2D2Connection};
use diesel::sqlite::SqliteConnection;
use diesel::{Connection, ConnectionError};

use super::StorageError;
use super::recent::RecentVersions;

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

impl Manager {
    pub fn new(url: DatabaseUrl) -> Self {
        Self { url }
    }
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
                keep_query_plans(&mut conn);
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

    /// Asked as a connection goes back to the pool. Since the pool does not
    /// test connections at checkout, a PostgreSQL connection that the
    /// server closed (a restart, a terminated backend) must be found here,
    /// or it would fail every query it is given. `PgConnection::version`
    /// fails without a round trip once the connection is lost.
    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        conn.is_broken() || matches!(conn, DbConnection::Postgresql(pg) if pg.version().is_err())
    }
}

/// Turns on SQLite's query planner stability guarantee for `conn`. Without
/// it SQLite compiles a cached statement again whenever a bound value that
/// the planner looked at changes, which profiling showed on every read.
/// Versa's queries have one good plan each, so planning once is enough.
fn keep_query_plans(conn: &mut SqliteConnection) {
    // SAFETY: the handle belongs to `conn`, which outlives the call, and
    // ENABLE_QPSG takes an int and a nullable int pointer.
    let status = unsafe {
        conn.with_raw_connection(|handle| {
            libsqlite3_sys::sqlite3_db_config(handle, libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG, 1, std::ptr::null_mut::<std::ffi::c_int>())
        })
    };
    if status != libsqlite3_sys::SQLITE_OK {
        tracing::warn!(status, "SQLite did not enable the query planner stability guarantee; reads may be slower");
    }
}

pub type DbPool = Pool<Manager>;
pub type PooledDb = PooledConnection<Manager>;

/// The connections of one database.
///
/// SQLite allows one writer at a time, and in WAL mode a transaction that
/// reads and then writes fails at once with `SQLITE_BUSY` when another
/// connection wrote in between, whatever the busy timeout. So SQLite writes
/// go to one writer thread with its own connection (see [`GroupCommit`])
/// and reads through a pool. On PostgreSQL reads and writes share one pool.
#[derive(Clone)]
pub struct Database {
    url: DatabaseUrl,
    reader: DbPool,
    writer: Writer,
    /// Signalled after every committed write transaction, so that this
    /// instance's change feed reader looks for new changes at once.
    committed: Arc<Notify>,
    /// Signalled with `committed` on PostgreSQL, so that the commit is
    /// announced to other instances (see [`Database::announce_commits`]).
    to_announce: Arc<Notify>,
    recent: Arc<RecentVersions>,
}

#[derive(Clone)]
enum Writer {
    Pool(DbPool),
    Group(GroupCommit),
}

impl Database {
    /// Opens the pools and, on SQLite, starts the writer thread. Blocking:
    /// call it outside the async runtime's worker threads.
    ///
    /// # Errors
    ///
    /// [`StorageError::Unavailable`] when no connection can be opened within
    /// `connect_timeout`.
    pub fn connect(url: &DatabaseUrl, pool_size: u32, connect_timeout: Duration) -> Result<Self, StorageError> {
        let manager = Manager { url: url.clone() };
        let build = |size: u32| {
            // Testing each connection at checkout cost a `SELECT 1` round
            // trip before every query. A connection that breaks fails its
            // next query instead, and the pool drops it on its return.
            Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .test_on_check_out(false)
                .connection_timeout(connect_timeout)
                .build(manager.clone())
                .map_err(|error| StorageError::Unavailable(Box::new(error)))
        };
        let committed = Arc::<Notify>::default();

        match url.backend {
            Backend::Postgres => {
                let pool = build(pool_size.max(1))?;
                Ok(Self {
                    url: url.clone(),
                    reader: pool.clone(),
                    writer: Writer::Pool(pool),
                    committed,
                    to_announce: Arc::default(),
                    recent: Arc::default(),
                })
            }
            Backend::Sqlite => {
                let mut conn = manager.connect().map_err(|error| StorageError::Unavailable(Box::new(error)))?;
                conn.batch_execute("PRAGMA journal_mode = WAL;")?;
                let writer = GroupCommit::start(conn, manager.clone(), committed.clone())?;
                let reader = build(pool_size.max(1))?;
                Ok(Self { url: url.clone(), reader, writer: Writer::Group(writer), committed, to_announce: Arc::default(), recent: Arc::default() })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        self.url.backend
    }

    pub fn url(&self) -> &DatabaseUrl {
        &self.url
    }

    /// Returns the records kept as of versions this instance committed or
    /// read.
    pub fn recent(&self) -> &Arc<RecentVersions> {
        &self.recent
    }

    /// Returns the signal raised after each committed write transaction.
    pub fn commit_signal(&self) -> Arc<Notify> {
        self.committed.clone()
    }

    /// Returns the signal raised after each committed write transaction on
    /// PostgreSQL, for the task that announces commits to other instances.
    pub fn announce_signal(&self) -> Arc<Notify> {
        self.to_announce.clone()
    }

    fn signal_commit(&self) {
        self.committed.notify_one();
        self.to_announce.notify_one();
    }

    /// Tells the other instances on this PostgreSQL database that changes
    /// were committed, outside any write, with this instance's `sender`
    /// tag. Does nothing on SQLite.
    pub async fn announce_commits(&self, sender: Arc<str>) -> Result<(), StorageError> {
        if self.backend() != Backend::Postgres {
            return Ok(());
        }
        on_pool(&self.reader, move |conn| super::records::announce_changes(conn, &sender)).await
    }

    /// Runs `task` on the blocking pool with a read connection.
    pub async fn read<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + Send + 'static,
    {
        on_pool(&self.reader, task).await
    }

    /// Runs `task` inside one transaction on a write connection, and an
    /// `Err` rolls the transaction back. On SQLite that transaction is a
    /// savepoint in a transaction shared with the other waiting writes, and
    /// the result is returned once the shared transaction commits.
    pub async fn write<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + From<diesel::result::Error> + Send + 'static,
    {
        let result = match &self.writer {
            Writer::Group(group) => return group.write(task).await,
            Writer::Pool(pool) => on_pool(pool, |conn| conn.transaction(task)).await,
        };
        if result.is_ok() {
            self.signal_commit();
        }
        result
    }

    /// Runs `task` on a write connection outside any transaction, so each
    /// of its statements commits on its own: for work whose only write is
    /// one statement. On SQLite it is the same as [`Database::write`].
    pub async fn write_autocommit<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + From<diesel::result::Error> + Send + 'static,
    {
        let Writer::Pool(pool) = &self.writer else { return self.write(task).await };
        let result = on_pool(pool, task).await;
        if result.is_ok() {
            self.signal_commit();
        }
        result
    }

    /// Returns the SQLite writer's counts, or `None` on PostgreSQL, which
    /// groups commits itself.
    pub fn group_counts(&self) -> Option<&GroupCounts> {
        match &self.writer {
            Writer::Group(group) => Some(&group.counts),
            Writer::Pool(_) => None,
        }
    }

    /// Runs `task` with a new write connection outside any transaction, for
    /// start-up work such as migrations.
    pub fn with_writer_blocking<T>(&self, task: impl FnOnce(&mut DbConnection) -> Result<T, StorageError>) -> Result<T, StorageError> {
        let mut conn = match &self.writer {
            Writer::Pool(pool) => return task(&mut *pool.get()?),
            Writer::Group(group) => group.manager.connect().map_err(|error| StorageError::Unavailable(Box::new(error)))?,
        };
        task(&mut conn)
    }
}

/// Runs `task` on the blocking thread pool with a connection from `pool`.
async fn on_pool<T, E, F>(pool: &DbPool, task: F) -> Result<T, E>
where
    F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<StorageError> + Send + 'static,
{
    let pool = pool.clone();
    actix_web::web::block(move || {
        let mut conn = pool.get().map_err(StorageError::from)?;
        task(&mut conn)
    })
    .await
    .map_err(StorageError::from)?
}

/// The maximum number of queued writes in one SQLite transaction.
const MAX_GROUP: usize = 64;

/// A write waiting for the writer thread. Running it in a savepoint returns
/// what to do once the enclosing transaction has ended.
type QueuedWrite = Box<dyn FnOnce(&mut DbConnection) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Group commit for SQLite: one thread owns the write connection and runs
/// every write that is waiting when it gets to them in one transaction,
/// each in its own savepoint.
///
/// Each write reads the writes queued before it, so its own precondition
/// decides its fate. A write that fails rolls back only its savepoint. No caller hears
/// of success before the transaction commits, so every acknowledged write
/// is as durable as a transaction of its own. While one transaction
/// commits, the next writes queue up, so the group grows with the load and
/// a lone write waits for no one.
#[derive(Clone)]
struct GroupCommit {
    queue: std::sync::mpsc::Sender<QueuedWrite>,
    manager: Manager,
    counts: Arc<GroupCounts>,
}

/// How many transactions the SQLite writer ran, and how many writes they
/// carried; their ratio is the mean group size.
#[derive(Debug, Default)]
pub struct GroupCounts {
    pub transactions: AtomicU64,
    pub writes: AtomicU64,
}

impl GroupCommit {
    fn start(conn: DbConnection, manager: Manager, committed: Arc<Notify>) -> Result<Self, StorageError> {
        let (queue, receiver) = std::sync::mpsc::channel::<QueuedWrite>();
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let counts = Arc::<GroupCounts>::default();

        let checkpoints = manager.connect().map_err(|error| StorageError::Unavailable(Box::new(error)))?;
        std::thread::Builder::new()
            .name("versa-sqlite-checkpoint".to_owned())
            .spawn(move || run_checkpoints(checkpoints, &nudged))
            .map_err(|error| StorageError::Unavailable(Box::new(error)))?;

        let (reconnect, counted) = (manager.clone(), counts.clone());
        std::thread::Builder::new()
            .name("versa-sqlite-writer".to_owned())
            .spawn(move || run_writer(conn, &reconnect, &receiver, &committed, &nudge, &counted))
            .map_err(|error| StorageError::Unavailable(Box::new(error)))?;
        Ok(Self { queue, manager, counts })
    }

    async fn write<T, E, F>(&self, task: F) -> Result<T, E>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<StorageError> + From<diesel::result::Error> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<Result<T, E>>();
        let queued: QueuedWrite = Box::new(move |conn: &mut DbConnection| {
            let result = conn.transaction(task);
            Box::new(move |commit: Result<(), StorageError>| {
                let result = match (result, commit) {
                    (Ok(_), Err(error)) => Err(E::from(error)),
                    (result, _) => result,
                };
                // The caller may have gone away, and its write is kept.
                let _ = reply.send(result);
            })
        });
        self.queue.send(queued).map_err(|_| writer_stopped())?;
        answer.await.map_err(|_| writer_stopped())?
    }
}

fn writer_stopped() -> StorageError {
    StorageError::Unavailable("the SQLite writer thread has stopped".into())
}

fn run_writer(
    mut conn: DbConnection,
    manager: &Manager,
    queue: &std::sync::mpsc::Receiver<QueuedWrite>,
    committed: &Notify,
    checkpoint: &std::sync::mpsc::SyncSender<()>,
    counts: &GroupCounts,
) {
    let mut carried = Vec::new();
    loop {
        let mut group: Vec<QueuedWrite> = std::mem::take(&mut carried);
        if group.is_empty() {
            match queue.recv() {
                Ok(first) => group.push(first),
                Err(_) => return,
            }
        }
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        counts.transactions.fetch_add(1, Ordering::Relaxed);
        counts.writes.fetch_add(group.len() as u64, Ordering::Relaxed);

        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_group(&mut conn, group))) {
            Ok(left_over) => {
                committed.notify_one();
                // A full channel already has a wake-up waiting.
                let _ = checkpoint.try_send(());
                carried = left_over;
                if !conn.is_broken() {
                    continue;
                }
                tracing::error!("the SQLite write connection broke; reconnecting");
            }
            // Dropping the connection rolls the transaction back, and the
            // callers learn that the database is unavailable when their
            // replies are dropped.
            Err(_) => tracing::error!("a write panicked; its transaction was rolled back"),
        }
        conn = reconnect(manager);
    }
}

/// Opens a new write connection, trying again every second until it
/// succeeds. Queued writes wait meanwhile.
fn reconnect(manager: &Manager) -> DbConnection {
    let mut failures = 0u32;
    loop {
        match manager.connect() {
            Ok(conn) => return conn,
            Err(error) => {
                failures += 1;
                if failures % 60 == 1 {
                    tracing::error!(%error, failures, "the SQLite writer cannot reconnect; retrying every second");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Shortest time between two checkpoints. Each one copies the pages
/// written since the last, so a hot page written by many commits is
/// copied once per checkpoint, not once per commit.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

/// Copies the WAL back into the database file after commits, on its own
/// connection and thread, so that writes go on meanwhile. Profiling put
/// the checkpoint at a seventh of the writer's time when the writer ran
/// it alone. A passive checkpoint waits for no reader or writer; frames
/// that a reader still needs are copied by a later one. Ends when the
/// writer thread does.
///
/// The writer keeps SQLite's own checkpoint at 1,000 pages all the same.
/// SQLite starts the WAL over only at a write that follows a checkpoint
/// that copied every frame, and under steady load this thread never
/// catches up with the writer, so without it the WAL grew by gigabytes.
/// Run by the writer, that checkpoint finds most pages copied already.
fn run_checkpoints(mut conn: DbConnection, nudged: &std::sync::mpsc::Receiver<()>) {
    while nudged.recv().is_ok() {
        if let Err(error) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(%error, "SQLite WAL checkpoint failed, retrying after the next commit");
        }
        std::thread::sleep(CHECKPOINT_INTERVAL);
    }
}

/// Runs `group` in one transaction and replies to each write's caller once it
/// ends. Some errors (a full disk, an I/O error, `OR ROLLBACK`) make SQLite
/// roll back the whole transaction. Then the writes already run fail with
/// it, and the writes not yet run are returned, for the next transaction,
/// so that none of them commits on its own behind its caller's back.
// NOTE: a write refused with 409 may report an earlier write of its group
// as the current version. If the group then fails to commit, that version
// never existed, but the caller still gets that 409.
fn run_group(conn: &mut DbConnection, group: Vec<QueuedWrite>) -> Vec<QueuedWrite> {
    let mut completions = Vec::with_capacity(group.len());
    let mut writes = group.into_iter();
    let committed = conn.transaction::<_, diesel::result::Error, _>(|conn| {
        for write in writes.by_ref() {
            completions.push(write(conn));
            if !in_transaction(conn) {
                break;
            }
        }
        Ok(())
    });

    let outcome = committed.map_err(Arc::new);
    for complete in completions {
        complete(outcome.clone().map_err(StorageError::CommitFailed));
    }
    writes.collect()
}

/// Tells whether SQLite still has the connection's transaction open.
fn in_transaction(conn: &mut DbConnection) -> bool {
    match conn {
        // SAFETY: the handle belongs to `conn`, which outlives the call.
        DbConnection::Sqlite(sqlite) => unsafe { sqlite.with_raw_connection(|handle| libsqlite3_sys::sqlite3_get_autocommit(handle) == 0) },
        DbConnection::Postgresql(_) => true,
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
    use diesel::RunQueryDsl;

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

    /// Opens a fresh SQLite database in a temporary directory and runs
    /// `schema` on it.
    fn sqlite_database(schema: &str) -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&dir.path().join("test.db").display().to_string()).unwrap();
        let db = Database::connect(&url, 2, Duration::from_secs(5)).unwrap();
        db.with_writer_blocking(|conn| Ok(conn.batch_execute(schema)?)).unwrap();
        (dir, db)
    }

    /// Writes queued while the writer is busy share one transaction, and
    /// each keeps its own outcome: the failed one leaves nothing, the
    /// others commit.
    #[tokio::test]
    async fn group_commit_keeps_outcomes() {
        let (_dir, db) = sqlite_database("CREATE TABLE t (k INTEGER PRIMARY KEY)");
        let insert = |k: i32| {
            move |conn: &mut DbConnection| -> Result<usize, StorageError> {
                Ok(diesel::sql_query(format!("INSERT INTO t (k) VALUES ({k})")).execute(conn)?)
            }
        };

        // The first write blocks the writer until every other write is queued.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = db.write(move |_conn| held.recv().map_err(|_| StorageError::Corrupt("release dropped".to_owned())));
        let queued = async { tokio::join!(db.write(insert(1)), db.write(insert(2)), db.write(insert(1)), db.write(insert(3))) };
        let open = async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        };
        let (held, (one, two, duplicate, three), ()) = tokio::join!(hold, queued, open);

        assert!(held.is_ok());
        assert_eq!((one.unwrap(), two.unwrap(), three.unwrap()), (1, 1, 1));
        assert!(matches!(duplicate, Err(StorageError::UniqueViolation)), "{duplicate:?}");
        let counts = db.group_counts().unwrap();
        assert_eq!(counts.writes.load(Ordering::Relaxed), 5);
        assert!(counts.transactions.load(Ordering::Relaxed) <= 2, "{counts:?}");
        let rows = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Count {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    n: i64,
                }
                Ok::<_, StorageError>(diesel::sql_query("SELECT COUNT(*) AS n FROM t").get_result::<Count>(conn)?.n)
            })
            .await
            .unwrap();
        assert_eq!(rows, 3);
    }

    /// A write whose error makes SQLite roll back the whole shared
    /// transaction takes the writes before it along, and the writes after
    /// it commit in the next transaction.
    #[tokio::test]
    async fn group_rollback_fails_earlier_writes() {
        let (_dir, db) = sqlite_database("CREATE TABLE t (k INTEGER PRIMARY KEY); INSERT INTO t (k) VALUES (9);");
        let insert = |statement: &'static str| move |conn: &mut DbConnection| -> Result<usize, StorageError> { Ok(diesel::sql_query(statement).execute(conn)?) };

        let (release, held) = std::sync::mpsc::channel::<()>();
        let hold = db.write(move |_conn| held.recv().map_err(|_| StorageError::Corrupt("release dropped".to_owned())));
        let queued = async {
            tokio::join!(
                db.write(insert("INSERT INTO t (k) VALUES (1)")),
                db.write(insert("INSERT OR ROLLBACK INTO t (k) VALUES (9)")),
                db.write(insert("INSERT INTO t (k) VALUES (3)")),
            )
        };
        let open = async {
            tokio::task::yield_now().await;
            release.send(()).unwrap();
        };
        let (_, (before, failing, after), ()) = tokio::join!(hold, queued, open);

        assert!(matches!(before, Err(StorageError::CommitFailed(_))), "{before:?}");
        assert!(failing.is_err());
        assert_eq!(after.unwrap(), 1);
        let keys = db
            .read(|conn| {
                #[derive(diesel::QueryableByName)]
                struct Key {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    k: i64,
                }
                Ok::<_, StorageError>(diesel::sql_query("SELECT k FROM t ORDER BY k").load::<Key>(conn)?.into_iter().map(|key| key.k).collect::<Vec<_>>())
            })
            .await
            .unwrap();
        assert_eq!(keys, vec![3, 9]);
    }

    /// A write that panics reports the database unavailable, and the writer
    /// goes on with a new connection.
    #[tokio::test]
    async fn writer_survives_panicking_write() {
        let (_dir, db) = sqlite_database("CREATE TABLE t (k INTEGER PRIMARY KEY)");

        let panicked = db.write(|_conn| -> Result<(), StorageError> { panic!("a write that panics") }).await;
        let next = db.write(|conn| Ok::<_, StorageError>(diesel::sql_query("INSERT INTO t (k) VALUES (1)").execute(conn)?)).await;

        assert!(matches!(panicked, Err(StorageError::Unavailable(_))), "{panicked:?}");
        assert_eq!(next.unwrap(), 1);
    }

    /// Under a steady stream of commits the WAL still starts over, so its
    /// file stays near the 1,000-page checkpoint threshold instead of
    /// growing with every write.
    #[tokio::test]
    async fn wal_stays_bounded_under_steady_writes() {
        let (dir, db) = sqlite_database("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)");
        let wal = dir.path().join("test.db-wal");

        let mut largest = 0;
        for k in 0..3_000 {
            let insert = format!("INSERT INTO t (k, v) VALUES ({k}, '{}')", "x".repeat(4000));
            db.write(move |conn| Ok::<_, StorageError>(diesel::sql_query(insert).execute(conn)?)).await.unwrap();
            largest = largest.max(std::fs::metadata(&wal).map(|meta| meta.len()).unwrap_or(0));
        }

        // 3,000 rows of 4 KB are 12 MB of pages, and 1,000 pages are 4 MB.
        assert!(largest < 8_000_000, "the WAL reached {largest} bytes");
    }

    /// The checkpoint thread copies commits into the database file, though
    /// the WAL stays far below the 1,000 pages at which the writer would
    /// checkpoint on its own.
    #[tokio::test]
    async fn checkpoint_thread_fills_database_file() {
        let (dir, db) = sqlite_database("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)");
        let file = dir.path().join("test.db");
        let before = std::fs::metadata(&file).unwrap().len();

        for k in 0..50 {
            let insert = format!("INSERT INTO t (k, v) VALUES ({k}, '{}')", "x".repeat(4000));
            db.write(move |conn| Ok::<_, StorageError>(diesel::sql_query(insert).execute(conn)?)).await.unwrap();
        }

        // 50 rows of 4 KB are 200 KB. The file grows once they are copied.
        let mut size = before;
        for _ in 0..100 {
            size = std::fs::metadata(&file).unwrap().len();
            if size >= before + 200_000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(size >= before + 200_000, "database file is {size} bytes, was {before}");
    }

    /// Taking a connection from the pool sends nothing to the database: a
    /// test query at each checkout would add a round trip to every query.
    #[tokio::test]
    async fn pool_checkout_sends_no_test_query() {
        crate::storage::probe::install();
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&dir.path().join("probe-checkout.db").display().to_string()).unwrap();
        let db = Database::connect(&url, 2, Duration::from_secs(5)).unwrap();

        for _ in 0..5 {
            db.read(|conn| Ok::<_, StorageError>(diesel::sql_query("SELECT 2").execute(conn)?)).await.unwrap();
        }

        let statements = crate::storage::probe::statements("checkout");
        assert_eq!(statements.iter().filter(|statement| statement.starts_with("SELECT 2")).count(), 5, "{statements:?}");
        assert!(!statements.iter().any(|statement| statement.starts_with("SELECT 1")), "{statements:?}");
    }

    #[test]
    fn sqlite_connections_keep_query_plans() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager { url: DatabaseUrl::parse(&dir.path().join("plans.db").display().to_string()).unwrap() };
        let DbConnection::Sqlite(mut conn) = manager.connect().unwrap() else { panic!("not a SQLite connection") };

        let mut enabled: std::ffi::c_int = -1;
        // SAFETY: the handle belongs to `conn`, and the pointer is to a live int.
        let status = unsafe {
            conn.with_raw_connection(|handle| libsqlite3_sys::sqlite3_db_config(handle, libsqlite3_sys::SQLITE_DBCONFIG_ENABLE_QPSG, -1, &mut enabled))
        };

        assert_eq!(status, libsqlite3_sys::SQLITE_OK);
        assert_eq!(enabled, 1);
    }
}

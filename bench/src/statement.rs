//! The db-statement scenario: the database's own limit for the rows one
//! Versa update writes (the conditional record update, its revision and its
//! change), issued through diesel without Versa's write path.
//!
//! On PostgreSQL each write is one prepared data-modifying CTE in autocommit, on one
//! connection per client. SQLite has no data-modifying CTE, so each write is
//! the three statements in one `BEGIN IMMEDIATE` transaction on a single
//! connection shared by all clients, as SQLite allows one writer at a time.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use diesel::pg::{Pg, PgConnection};
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel::sqlite::SqliteConnection;
use rand::Rng;
use serde_json::{Map, Value, json};
use versa::storage::{Backend, Database, DatabaseUrl, DbConnection};

use crate::load::{Outcome, Scenario, Tally};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The PostgreSQL write as a query type of its own, so that diesel
/// prepares it once per connection as Versa does with its own statement,
/// where `sql_query` text would be parsed and planned again on every write.
///
/// Versa's own write also reads the record first, which this statement
/// does not, so the figure is the limit for the rows written, not for
/// everything a Versa write does.
struct PostgresWrite<'a> {
    id: &'a str,
    version: i64,
    data: &'a str,
    at: NaiveDateTime,
}

impl QueryId for PostgresWrite<'_> {
    type QueryId = PostgresWrite<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for PostgresWrite<'_> {
    type SqlType = BigInt;
}

impl<Conn> RunQueryDsl<Conn> for PostgresWrite<'_> {}

impl QueryFragment<Pg> for PostgresWrite<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH updated AS (UPDATE records SET version = version + 1, data = ");
        out.push_bind_param::<Text, _>(&self.data)?;
        out.push_sql(", updated_at = ");
        out.push_bind_param::<Timestamp, _>(&self.at)?;
        out.push_sql(", updated_by = 'bench' WHERE collection = 'bench' AND id = ");
        out.push_bind_param::<Text, _>(&self.id)?;
        out.push_sql(" AND version = ");
        out.push_bind_param::<BigInt, _>(&self.version)?;
        out.push_sql(
            " RETURNING collection, id, version, data, updated_at, updated_by), \
             revision AS (INSERT INTO revisions (collection, record_id, version, operation, data, changed_fields, principal, created_at) \
             SELECT collection, id, version, 'updated', data, '[\"/count\"]', updated_by, updated_at FROM updated), \
             change AS (INSERT INTO changes (collection, record_id, version, operation, principal, changed_at) \
             SELECT collection, id, version, 'updated', updated_by, updated_at FROM updated) \
             SELECT version FROM updated",
        );
        Ok(())
    }
}

// The SQLite statements number their parameters so that all three take the
// same binds in the same order as the PostgreSQL statement: the record id,
// a version, the new data and the time of the write.
const SQLITE_UPDATE: &str = "\
UPDATE records SET version = version + 1, data = ?3, updated_at = ?4, updated_by = 'bench'
WHERE collection = 'bench' AND id = ?1 AND version = ?2
RETURNING version";

const SQLITE_INSERT_REVISION: &str = "\
INSERT INTO revisions (collection, record_id, version, operation, data, changed_fields, principal, created_at)
VALUES ('bench', ?1, ?2, 'updated', ?3, '[\"/count\"]', 'bench', ?4)";

const SQLITE_INSERT_CHANGE: &str = "\
INSERT INTO changes (collection, record_id, version, operation, principal, changed_at)
VALUES ('bench', ?1, ?2, 'updated', 'bench', ?4)";

const POSTGRES_READ_ALL: &str = "SELECT id, version, data FROM records WHERE collection = 'bench'";
const POSTGRES_READ_ONE: &str = "SELECT id, version, data FROM records WHERE collection = 'bench' AND id = $1";
const SQLITE_READ_ALL: &str = "SELECT id, version, data FROM records WHERE collection = 'bench'";
const SQLITE_READ_ONE: &str = "SELECT id, version, data FROM records WHERE collection = 'bench' AND id = ?1";

#[derive(QueryableByName)]
struct WrittenVersion {
    #[diesel(sql_type = BigInt)]
    version: i64,
}

#[derive(QueryableByName)]
struct StoredRecord {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Text)]
    data: String,
}

/// A connection that runs the scenario's statements on one back end.
trait Target {
    /// Writes `data` as the version after `version`. Returns the new
    /// version, or `None` when the record is no longer at `version`.
    fn write(&mut self, id: &str, version: i64, data: &str, at: NaiveDateTime) -> QueryResult<Option<i64>>;

    fn read_all(&mut self) -> QueryResult<Vec<StoredRecord>>;

    fn read_one(&mut self, id: &str) -> QueryResult<Option<StoredRecord>>;
}

struct PostgresTarget<'a>(&'a mut PgConnection);

impl Target for PostgresTarget<'_> {
    fn write(&mut self, id: &str, version: i64, data: &str, at: NaiveDateTime) -> QueryResult<Option<i64>> {
        let written = PostgresWrite { id, version, data, at }.get_result::<i64>(&mut *self.0).optional()?;
        Ok(written)
    }

    fn read_all(&mut self) -> QueryResult<Vec<StoredRecord>> {
        diesel::sql_query(POSTGRES_READ_ALL).load(&mut *self.0)
    }

    fn read_one(&mut self, id: &str) -> QueryResult<Option<StoredRecord>> {
        diesel::sql_query(POSTGRES_READ_ONE).bind::<Text, _>(id).get_result(&mut *self.0).optional()
    }
}

/// The one SQLite connection, shared by all client threads.
struct SqliteTarget<'a, 'c>(&'a Mutex<&'c mut SqliteConnection>);

impl<'a, 'c> SqliteTarget<'a, 'c> {
    fn lock(&self) -> std::sync::MutexGuard<'a, &'c mut SqliteConnection> {
        // A poisoned lock means that a client thread panicked, and joining
        // that thread reports the panic.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Target for SqliteTarget<'_, '_> {
    fn write(&mut self, id: &str, version: i64, data: &str, at: NaiveDateTime) -> QueryResult<Option<i64>> {
        let mut conn = self.lock();
        conn.immediate_transaction(|conn| {
            let written = diesel::sql_query(SQLITE_UPDATE)
                .bind::<Text, _>(id)
                .bind::<BigInt, _>(version)
                .bind::<Text, _>(data)
                .bind::<Timestamp, _>(at)
                .get_result::<WrittenVersion>(conn)
                .optional()?;
            let Some(WrittenVersion { version: new_version }) = written else {
                return Ok(None);
            };
            for statement in [SQLITE_INSERT_REVISION, SQLITE_INSERT_CHANGE] {
                diesel::sql_query(statement)
                    .bind::<Text, _>(id)
                    .bind::<BigInt, _>(new_version)
                    .bind::<Text, _>(data)
                    .bind::<Timestamp, _>(at)
                    .execute(conn)?;
            }
            Ok(Some(new_version))
        })
    }

    fn read_all(&mut self) -> QueryResult<Vec<StoredRecord>> {
        diesel::sql_query(SQLITE_READ_ALL).load(&mut **self.lock())
    }

    fn read_one(&mut self, id: &str) -> QueryResult<Option<StoredRecord>> {
        diesel::sql_query(SQLITE_READ_ONE).bind::<Text, _>(id).get_result(&mut **self.lock()).optional()
    }
}

/// The newest known version and fields of each seeded record, shared by
/// all clients.
struct Records {
    ids: Vec<String>,
    known: Vec<Mutex<(i64, Map<String, Value>)>>,
}

impl Records {
    /// Reads the current version and fields of every record in `ids`.
    fn read(target: &mut impl Target, ids: &[String]) -> Result<Self, BoxError> {
        if ids.is_empty() {
            return Err("db-statement has no seeded records to write. Set --records to 1 or more.".into());
        }
        let mut stored: HashMap<String, StoredRecord> = target.read_all()?.into_iter().map(|record| (record.id.clone(), record)).collect();
        let mut known = Vec::with_capacity(ids.len());
        for id in ids {
            let record = stored.remove(id).ok_or_else(|| format!("seeded record {id} not found in collection bench"))?;
            known.push(Mutex::new((record.version, parse_fields(&record.data)?)));
        }
        Ok(Self { ids: ids.to_vec(), known })
    }

    fn known(&self, index: usize) -> (i64, Map<String, Value>) {
        self.known[index].lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records a newer state of a record and ignores older ones, which
    /// other clients can report late.
    fn learn(&self, index: usize, version: i64, fields: Map<String, Value>) {
        let mut known = self.known[index].lock().unwrap_or_else(PoisonError::into_inner);
        if version > known.0 {
            *known = (version, fields);
        }
    }
}

fn parse_fields(data: &str) -> Result<Map<String, Value>, BoxError> {
    match serde_json::from_str(data)? {
        Value::Object(fields) => Ok(fields),
        other => Err(format!("stored record data is not a JSON object: {other}").into()),
    }
}

/// Runs the db-statement scenario with `clients` concurrent clients on the
/// seeded records `ids`.
pub async fn run(database_url: &str, ids: &[String], clients: usize, duration: Duration) -> Result<Outcome, BoxError> {
    let url = DatabaseUrl::parse(database_url)?;
    let ids = ids.to_vec();
    let clients = clients.max(1);
    tokio::task::spawn_blocking(move || match url.backend() {
        Backend::Postgres => run_postgres(&url, &ids, clients, duration),
        Backend::Sqlite => run_sqlite(&url, &ids, clients, duration),
    })
    .await?
}

fn run_postgres(url: &DatabaseUrl, ids: &[String], clients: usize, duration: Duration) -> Result<Outcome, BoxError> {
    let target = url.postgres_url().ok_or("db-statement expected a PostgreSQL URL")?;
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        connections.push(PgConnection::establish(target)?);
    }
    let records = Records::read(&mut PostgresTarget(&mut connections[0]), ids)?;

    let started = Instant::now();
    let deadline = started + duration;
    let tally = std::thread::scope(|scope| {
        let threads: Vec<_> = connections
            .iter_mut()
            .map(|conn| {
                let records = &records;
                scope.spawn(move || client_loop(&mut PostgresTarget(conn), records, deadline))
            })
            .collect();
        join_clients(threads)
    })?;
    Ok(tally.into_outcome(Scenario::DbStatement, started.elapsed()))
}

fn run_sqlite(url: &DatabaseUrl, ids: &[String], clients: usize, duration: Duration) -> Result<Outcome, BoxError> {
    // Versa's own pool opens the connection, so it gets the same pragmas
    // (WAL, synchronous = NORMAL, foreign keys, busy timeout) as the server.
    let db = Database::connect(url, 1, Duration::from_secs(5))?;
    db.with_writer_blocking(|conn| {
        let DbConnection::Sqlite(sqlite) = conn else {
            return Ok(Err("db-statement expected a SQLite connection".into()));
        };
        let shared = Mutex::new(sqlite);
        let records = match Records::read(&mut SqliteTarget(&shared), ids) {
            Ok(records) => records,
            Err(error) => return Ok(Err(error)),
        };

        let started = Instant::now();
        let deadline = started + duration;
        let tally = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..clients)
                .map(|_| {
                    let (records, shared) = (&records, &shared);
                    scope.spawn(move || client_loop(&mut SqliteTarget(shared), records, deadline))
                })
                .collect();
            join_clients(threads)
        });
        Ok(tally.map(|tally| tally.into_outcome(Scenario::DbStatement, started.elapsed())))
    })?
}

fn join_clients(threads: Vec<std::thread::ScopedJoinHandle<'_, Tally>>) -> Result<Tally, BoxError> {
    let mut tally = Tally::default();
    for thread in threads {
        tally.add(thread.join().map_err(|_| "a db-statement client thread panicked")?);
    }
    Ok(tally)
}

/// Writes random records until `deadline`, one statement (PostgreSQL) or
/// one transaction (SQLite) per write, and times each write.
fn client_loop(target: &mut impl Target, records: &Records, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut reported = false;
    let mut report = |step: &str, error: &dyn std::fmt::Display| {
        // One message per client is enough to see why errors are counted.
        if !reported {
            reported = true;
            eprintln!("db-statement: {step} failed: {error} (later failures of this client are not printed)");
        }
    };
    let mut rng = rand::rng();
    while Instant::now() < deadline {
        let index = rng.random_range(0..records.ids.len());
        let id = &records.ids[index];
        let (version, mut fields) = records.known(index);
        let count = fields.get("count").and_then(Value::as_i64).unwrap_or(0);
        fields.insert("count".into(), json!(count + 1));
        let data = match serde_json::to_string(&fields) {
            Ok(data) => data,
            Err(error) => {
                report("serializing the record data", &error);
                tally.errors += 1;
                continue;
            }
        };

        let begun = Instant::now();
        let result = target.write(id, version, &data, Utc::now().naive_utc());
        tally.latencies.push(begun.elapsed().as_micros() as u64);

        match result {
            Ok(Some(new_version)) => {
                records.learn(index, new_version, fields);
                tally.ok += 1;
            }
            Ok(None) => {
                // Another client wrote the record first. The read that
                // learns its new version is not timed.
                tally.conflicts += 1;
                match target.read_one(id) {
                    Ok(Some(stored)) => match parse_fields(&stored.data) {
                        Ok(fields) => records.learn(index, stored.version, fields),
                        Err(error) => report("reading a record after a conflict", &error),
                    },
                    Ok(None) => report("reading a record after a conflict", &format!("record {id} not found")),
                    Err(error) => report("reading a record after a conflict", &error),
                }
            }
            Err(error) => {
                report("a write", &error);
                tally.errors += 1;
            }
        }
    }
    tally
}

//! The statements that run on every read or write of a record, as query
//! types of their own.
//!
//! Built with the query DSL, these statements cost more than the database's
//! own work on them. Diesel never caches an UPDATE. A query through the
//! multi-backend connection is written out as SQL text on every run, to
//! find its cached statement. Profiling put that at a seventh of the
//! server's time for a GET. A query type with a static query id is
//! prepared once per connection and found by its type, so a run only binds
//! and steps. On SQLite this matters most for writes, which all run on one
//! thread.

use diesel::backend::Backend;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamp};

use super::DbConnection;
use super::models::{LeaseRow, RecordRow};
use super::records::{NewVersion, push_version_update};

/// Declares a statement type whose SQL never changes, so that diesel may
/// keep it prepared.
macro_rules! static_statement {
    ($name:ident) => {
        impl QueryId for $name<'_> {
            type QueryId = $name<'static>;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<Conn> RunQueryDsl<Conn> for $name<'_> {}
    };
}

/// Runs `$run` on the inner connection of `$conn`, whichever back end it is.
macro_rules! on_either_backend {
    ($conn:expr, |$inner:ident| $run:expr) => {
        match $conn {
            DbConnection::Sqlite($inner) => $run,
            DbConnection::Postgresql($inner) => $run,
        }
    };
}

type RecordColumns = (Text, Text, BigInt, Text, Bool, Timestamp, Timestamp, Text, Text);
type LeaseColumns = (Text, Text, Text, Text, Timestamp, Timestamp);

const RECORD_COLUMNS: &str = "records.collection, records.id, records.version, records.data, records.deleted, \
     records.created_at, records.updated_at, records.created_by, records.updated_by";

/// Reads one record, deleted or not.
struct FindRecord<'a> {
    collection: &'a str,
    id: &'a str,
}

static_statement!(FindRecord);

impl Query for FindRecord<'_> {
    type SqlType = RecordColumns;
}

impl<DB: Backend> QueryFragment<DB> for FindRecord<'_>
where
    str: ToSql<Text, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        out.push_sql(RECORD_COLUMNS);
        out.push_sql(" FROM records WHERE records.collection = ");
        out.push_bind_param::<Text, _>(self.collection)?;
        out.push_sql(" AND records.id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        Ok(())
    }
}

pub fn find(conn: &mut DbConnection, collection: &str, id: &str) -> QueryResult<Option<RecordRow>> {
    let query = FindRecord { collection, id };
    on_either_backend!(conn, |inner| query.get_result(inner).optional())
}

/// Reads one record and the lease on it that is active at `now`.
struct FindWithLease<'a> {
    collection: &'a str,
    id: &'a str,
    now: &'a chrono::NaiveDateTime,
}

static_statement!(FindWithLease);

impl Query for FindWithLease<'_> {
    type SqlType = (RecordColumns, Nullable<LeaseColumns>);
}

impl<DB: Backend> QueryFragment<DB> for FindWithLease<'_>
where
    str: ToSql<Text, DB>,
    chrono::NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        out.push_sql("SELECT ");
        out.push_sql(RECORD_COLUMNS);
        out.push_sql(
            ", leases.collection, leases.record_id, leases.token_sha256, leases.holder, leases.acquired_at, leases.expires_at \
             FROM records LEFT JOIN leases ON leases.collection = records.collection AND leases.record_id = records.id \
             AND leases.expires_at > ",
        );
        out.push_bind_param::<Timestamp, _>(self.now)?;
        out.push_sql(" WHERE records.collection = ");
        out.push_bind_param::<Text, _>(self.collection)?;
        out.push_sql(" AND records.id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        Ok(())
    }
}

pub fn find_with_lease(
    conn: &mut DbConnection,
    collection: &str,
    id: &str,
    now: chrono::NaiveDateTime,
) -> QueryResult<Option<(RecordRow, Option<LeaseRow>)>> {
    let query = FindWithLease { collection, id, now: &now };
    on_either_backend!(conn, |inner| query.get_result(inner).optional())
}

/// Moves a record to its new version while it still has the previous one.
struct UpdateVersion<'a> {
    new: &'a NewVersion<'a>,
}

static_statement!(UpdateVersion);

impl<DB: Backend + HasSqlType<Bool>> QueryFragment<DB> for UpdateVersion<'_>
where
    String: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    bool: ToSql<Bool, DB>,
    chrono::NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        push_version_update(&mut out, self.new)
    }
}

/// Returns whether the record still had the previous version and moved on.
pub fn update_version(conn: &mut DbConnection, new: &NewVersion<'_>) -> QueryResult<bool> {
    let update = UpdateVersion { new };
    Ok(on_either_backend!(conn, |inner| update.execute(inner))? == 1)
}

/// Writes the values that begin both history rows of a version: the
/// record, the version and the operation that made it.
fn push_version_key<'b, DB: Backend>(out: &mut AstPass<'_, 'b, DB>, row: &'b RecordRow, operation: &'b str) -> QueryResult<()>
where
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
{
    out.push_bind_param::<Text, _>(row.collection.as_str())?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(row.id.as_str())?;
    out.push_sql(", ");
    out.push_bind_param::<BigInt, _>(&row.version)?;
    out.push_sql(", ");
    out.push_bind_param::<Text, _>(operation)
}

/// Appends the revision of a version.
struct InsertRevision<'a> {
    row: &'a RecordRow,
    operation: &'a str,
    changed_fields: &'a str,
}

static_statement!(InsertRevision);

impl<DB: Backend> QueryFragment<DB> for InsertRevision<'_>
where
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    chrono::NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql("INSERT INTO revisions (collection, record_id, version, operation, data, changed_fields, principal, created_at) VALUES (");
        push_version_key(&mut out, row, self.operation)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.data.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.changed_fields)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.updated_by.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&row.updated_at)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Appends the change-feed entry of a version. `txid` is left to its
/// default: the current transaction's id on PostgreSQL, 0 on SQLite, which
/// orders the feed by `seq` alone.
struct InsertChange<'a> {
    row: &'a RecordRow,
    operation: &'a str,
}

static_statement!(InsertChange);

impl<DB: Backend> QueryFragment<DB> for InsertChange<'_>
where
    str: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    chrono::NaiveDateTime: ToSql<Timestamp, DB>,
{
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql("INSERT INTO changes (collection, record_id, version, operation, principal, changed_at) VALUES (");
        push_version_key(&mut out, row, self.operation)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(row.updated_by.as_str())?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&row.updated_at)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Appends the revision and the change of a version written in this
/// transaction.
pub fn append_history(conn: &mut DbConnection, row: &RecordRow, operation: &str, changed_fields: &str) -> QueryResult<()> {
    let revision = InsertRevision { row, operation, changed_fields };
    let change = InsertChange { row, operation };
    on_either_backend!(conn, |inner| {
        revision.execute(inner)?;
        change.execute(inner)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::connection::InstrumentationEvent;

    use super::*;
    use crate::storage::records;
    use crate::storage::{DbConnection, migrations};

    /// Counts, from the moment it is installed, the statements a
    /// connection runs and the ones it prepares to keep.
    #[derive(Clone, Default)]
    struct Counts(Arc<Mutex<(usize, usize)>>);

    impl Counts {
        fn watch(&self, sqlite: &mut SqliteConnection) {
            let counts = self.0.clone();
            sqlite.set_instrumentation(move |event: InstrumentationEvent<'_>| {
                let mut counts = counts.lock().unwrap();
                match event {
                    InstrumentationEvent::StartQuery { .. } => counts.0 += 1,
                    InstrumentationEvent::CacheQuery { .. } => counts.1 += 1,
                    _ => {}
                }
            });
        }

        fn take(&self) -> (usize, usize) {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Reads and writes of a record run the same statements every time,
    /// so each must be prepared once and kept: the first run keeps every
    /// statement it runs, and the next one prepares none.
    #[test]
    fn record_statements_stay_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrations::migrated_sqlite(dir.path(), "writes.db");

        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap().naive_utc();
        let mut row = RecordRow {
            collection: "notes".to_owned(),
            id: "a".to_owned(),
            version: 1,
            data: "{}".to_owned(),
            deleted: false,
            created_at: at,
            updated_at: at,
            created_by: "ana".to_owned(),
            updated_by: "ana".to_owned(),
        };
        diesel::insert_into(crate::storage::schema::records::table).values(&row).execute(&mut conn).unwrap();

        let counts = Counts::default();
        let DbConnection::Sqlite(sqlite) = &mut conn else { unreachable!("a SQLite URL opens SQLite") };
        counts.watch(sqlite);
        for (version, expected) in [(2, "first"), (3, "second")] {
            let current = records::find(&mut conn, "notes", "a").unwrap().unwrap();
            assert_eq!(current.version, version - 1);
            row.version = version;
            row.data = format!(r#"{{"title":"{expected}"}}"#);
            let new = NewVersion { row: &row, previous: version - 1, operation: "updated", changed_fields: r#"["title"]"#, keep_from: None };
            assert!(records::write_version(&mut conn, &new).unwrap());

            let (ran, kept) = counts.take();
            assert_eq!(ran, 4, "{expected} write: a read, an update, a revision and a change");
            let expected_kept = if version == 2 { 4 } else { 0 };
            assert_eq!(kept, expected_kept, "{expected} write");
        }

        for (expected_kept, expected) in [(1, "first"), (0, "second")] {
            let (record, lease) = records::find_with_lease(&mut conn, "notes", "a", at).unwrap().unwrap();
            assert_eq!(record.version, 3);
            assert!(lease.is_none());
            assert_eq!(counts.take(), (1, expected_kept), "{expected} read with its lease");
        }
    }
}

//! The statements of a SQLite record write, as query types of their own.
//!
//! Every write runs on the one SQLite writer thread, so each microsecond
//! here caps the write rate. Built with the query DSL, these statements
//! cost more than SQLite's own work on them. Diesel never caches an UPDATE.
//! A query through the multi-backend connection is written out as SQL text
//! on every run, to find its cached statement. A query type with a static
//! query id is prepared once per connection and found by its type, so a
//! write only binds and steps.

use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Text, Timestamp};
use diesel::sqlite::{Sqlite, SqliteConnection};

use super::models::RecordRow;
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

/// Reads one record, deleted or not.
struct FindRecord<'a> {
    collection: &'a str,
    id: &'a str,
}

static_statement!(FindRecord);

impl Query for FindRecord<'_> {
    type SqlType = (Text, Text, BigInt, Text, Bool, Timestamp, Timestamp, Text, Text);
}

impl QueryFragment<Sqlite> for FindRecord<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "SELECT collection, id, version, data, deleted, created_at, updated_at, created_by, updated_by \
             FROM records WHERE collection = ",
        );
        out.push_bind_param::<Text, _>(self.collection)?;
        out.push_sql(" AND id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        Ok(())
    }
}

pub fn find(conn: &mut SqliteConnection, collection: &str, id: &str) -> QueryResult<Option<RecordRow>> {
    FindRecord { collection, id }.get_result(conn).optional()
}

/// Moves a record to its new version while it still has the previous one.
struct UpdateVersion<'a> {
    new: &'a NewVersion<'a>,
}

static_statement!(UpdateVersion);

impl QueryFragment<Sqlite> for UpdateVersion<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        push_version_update(&mut out, self.new)
    }
}

/// Returns whether the record still had the previous version and moved on.
pub fn update_version(conn: &mut SqliteConnection, new: &NewVersion<'_>) -> QueryResult<bool> {
    Ok(UpdateVersion { new }.execute(conn)? == 1)
}

/// Appends the revision of a version.
struct InsertRevision<'a> {
    row: &'a RecordRow,
    operation: &'a str,
    changed_fields: &'a str,
}

static_statement!(InsertRevision);

impl QueryFragment<Sqlite> for InsertRevision<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql("INSERT INTO revisions (collection, record_id, version, operation, data, changed_fields, principal, created_at) VALUES (");
        out.push_bind_param::<Text, _>(&row.collection)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&row.id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.version)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.operation)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&row.data)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.changed_fields)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&row.updated_by)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&row.updated_at)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Appends the change-feed entry of a version. `txid` keeps its default
/// of 0: SQLite orders the feed by `seq` alone.
struct InsertChange<'a> {
    row: &'a RecordRow,
    operation: &'a str,
}

static_statement!(InsertChange);

impl QueryFragment<Sqlite> for InsertChange<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let row = self.row;
        out.push_sql("INSERT INTO changes (collection, record_id, version, operation, principal, changed_at) VALUES (");
        out.push_bind_param::<Text, _>(&row.collection)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&row.id)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&row.version)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.operation)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&row.updated_by)?;
        out.push_sql(", ");
        out.push_bind_param::<Timestamp, _>(&row.updated_at)?;
        out.push_sql(")");
        Ok(())
    }
}

/// Appends the revision and the change of a version written in this
/// transaction.
pub fn append_history(conn: &mut SqliteConnection, row: &RecordRow, operation: &str, changed_fields: &str) -> QueryResult<()> {
    InsertRevision { row, operation, changed_fields }.execute(conn)?;
    InsertChange { row, operation }.execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::connection::InstrumentationEvent;
    use diesel::r2d2::ManageConnection;

    use super::*;
    use crate::storage::connection::Manager;
    use crate::storage::records;
    use crate::storage::{DatabaseUrl, DbConnection, migrations};

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

    /// The writer thread runs a write's statements on every write, so each
    /// must be prepared once and kept: the first write keeps every
    /// statement it runs, and the next one prepares none.
    #[test]
    fn record_write_keeps_its_statements_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&dir.path().join("writes.db").display().to_string()).unwrap();
        let mut conn = Manager::new(url).connect().unwrap();
        migrations::run_pending(&mut conn).unwrap();

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
    }
}

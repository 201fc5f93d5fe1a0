//! Queries on records and their revisions.

use diesel::connection::SimpleConnection;
use diesel::pg::{Pg, PgConnection};
use diesel::backend::Backend;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::HasSqlType;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text, Timestamp};

use super::connection::MultiBackend;
use super::statements;
use super::models::{LeaseRow, NewChange, RecordRow, RevisionRow};
use super::schema::{changes, records, revisions};
use super::{DbConnection, StorageError};

/// Serializes writers of one record on PostgreSQL until the transaction
/// ends. Taken before a transaction's first write, it makes every writer of
/// a record get its transaction id after the previous writer committed, so
/// the change feed's `(txid, seq)` order keeps each record's versions in
/// order. SQLite has one writer at a time and needs nothing.
pub fn lock_record(conn: &mut DbConnection, collection: &str, id: &str) -> Result<(), StorageError> {
    if let DbConnection::Postgresql(pg) = conn {
        // The write statement computes the same key in SQL (see
        // `WriteVersionStatement`), so the two lock the same record.
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind::<Text, _>(collection)
            .bind::<Text, _>(id)
            .execute(pg)?;
    }
    Ok(())
}

/// The channel on which PostgreSQL writers announce new changes.
pub const CHANGES_CHANNEL: &str = "versa_changes";

/// Tells every instance listening on PostgreSQL that changes were
/// committed. The notification is only a wake-up: listeners read the change
/// table for the changes themselves. Its payload is the sending instance's
/// `sender` tag, so that an instance can skip its own notifications: its
/// feed reader is woken by its own commits directly.
///
/// It is sent after the writes commit, in a transaction of its own. A
/// transaction that notifies takes a cluster-wide lock before it commits
/// and keeps it until it ends (`PreCommit_Notify` in PostgreSQL's
/// `async.c`). So notifying inside every write would make concurrent
/// writes flush their commits one at a time.
///
/// A notification is delivered at commit whether or not the commit record
/// has reached the disk, and losing one in a crash costs only a poll, so
/// the transaction does not wait for the flush and keeps the lock briefly.
pub fn announce_changes(conn: &mut DbConnection, sender: &str) -> Result<(), StorageError> {
    if let DbConnection::Postgresql(pg) = conn {
        // The tag is a UUID in simple form, so it needs no quoting.
        let sent = pg.batch_execute(&format!("BEGIN; SET LOCAL synchronous_commit = off; NOTIFY {CHANGES_CHANNEL}, '{sender}'; COMMIT;"));
        if sent.is_err() {
            // A failure inside the batch leaves its transaction open and
            // aborted, which the pool would not notice.
            let _ = pg.batch_execute("ROLLBACK;");
        }
        sent?;
    }
    Ok(())
}

pub fn find(conn: &mut DbConnection, collection: &str, id: &str) -> Result<Option<RecordRow>, StorageError> {
    Ok(statements::find(conn, collection, id)?)
}

/// Returns a record with the lease on it that is active at `now`, in one
/// query, for reads that show both.
pub fn find_with_lease(
    conn: &mut DbConnection,
    collection: &str,
    id: &str,
    now: chrono::NaiveDateTime,
) -> Result<Option<(RecordRow, Option<LeaseRow>)>, StorageError> {
    Ok(statements::find_with_lease(conn, collection, id, now)?)
}

/// Inserts a new record.
///
/// # Errors
///
/// [`StorageError::UniqueViolation`] when the id is taken in the collection.
pub fn insert(conn: &mut DbConnection, row: &RecordRow) -> Result<(), StorageError> {
    diesel::insert_into(records::table).values(row.clone()).execute(conn)?;
    Ok(())
}

/// A new version of a record and what its history keeps of it.
pub struct NewVersion<'a> {
    /// The record as the write leaves it.
    pub row: &'a RecordRow,
    /// The version the write was computed from; the update happens only
    /// while the record still has it.
    pub previous: i64,
    pub operation: &'a str,
    /// The changed field paths as a JSON array.
    pub changed_fields: &'a str,
    /// Revisions older than this version are deleted with the write.
    pub keep_from: Option<i64>,
}

/// The conditional write: stores `new` as the record's latest version with
/// its revision and its change, only while the record's version is still
/// `new.previous`. Returns `false`, having changed nothing, when another
/// writer got there first.
///
/// On PostgreSQL this is one statement, so a write outside a transaction
/// is still atomic and costs one round trip. On SQLite the statements run in
/// the caller's transaction.
pub fn write_version(conn: &mut DbConnection, new: &NewVersion<'_>) -> Result<bool, StorageError> {
    match conn {
        DbConnection::Postgresql(pg) => write_version_postgres(pg, new),
        DbConnection::Sqlite(_) => write_version_in_steps(conn, new),
    }
}

/// Update, revision, change and pruning in one PostgreSQL statement. Each
/// data-modifying step reads the rows the update returned, so nothing
/// happens when the version moved. Keeping every revision passes a cutoff
/// of 0, which matches none.
///
/// The update first takes the record lock of [`lock_record`], so it waits
/// for a batch that holds the record and never gets between a batch's read
/// and its write. The row it then updates is the latest committed version,
/// so a version that moved meanwhile fails the version check.
///
/// It is a query type of its own, not `sql_query` text, because diesel
/// prepares a query type once per connection and reuses the plan, while
/// `sql_query` text is parsed and planned again on every write.
struct WriteVersionStatement<'a> {
    new: &'a NewVersion<'a>,
    keep_from: i64,
}

impl QueryId for WriteVersionStatement<'_> {
    type QueryId = WriteVersionStatement<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for WriteVersionStatement<'_> {
    type SqlType = BigInt;
}

impl<Conn> RunQueryDsl<Conn> for WriteVersionStatement<'_> {}

impl QueryFragment<Pg> for WriteVersionStatement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let (new, row) = (self.new, self.new.row);
        out.push_sql("WITH locked AS (SELECT pg_advisory_xact_lock(hashtextextended(");
        out.push_bind_param::<Text, _>(&row.collection)?;
        out.push_sql(" || '/' || ");
        out.push_bind_param::<Text, _>(&row.id)?;
        out.push_sql(", 0)))");

        out.push_sql(", updated AS (");
        push_version_update(&mut out, new)?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM locked) RETURNING collection, id, version, data, updated_at, updated_by)");

        out.push_sql(", revision AS (INSERT INTO revisions (collection, record_id, version, operation, data, changed_fields, principal, created_at) ");
        out.push_sql("SELECT collection, id, version, ");
        out.push_bind_param::<Text, _>(&new.operation)?;
        out.push_sql(", data, ");
        out.push_bind_param::<Text, _>(&new.changed_fields)?;
        out.push_sql(", updated_by, updated_at FROM updated)");

        out.push_sql(", change AS (INSERT INTO changes (collection, record_id, version, operation, principal, changed_at) ");
        out.push_sql("SELECT collection, id, version, ");
        out.push_bind_param::<Text, _>(&new.operation)?;
        out.push_sql(", updated_by, updated_at FROM updated)");

        out.push_sql(", pruned AS (DELETE FROM revisions WHERE collection = ");
        out.push_bind_param::<Text, _>(&row.collection)?;
        out.push_sql(" AND record_id = ");
        out.push_bind_param::<Text, _>(&row.id)?;
        out.push_sql(" AND version < ");
        out.push_bind_param::<BigInt, _>(&self.keep_from)?;
        out.push_sql(" AND EXISTS (SELECT 1 FROM updated)) SELECT version FROM updated");
        Ok(())
    }
}

/// Writes the conditional UPDATE that moves a record from `new.previous` to
/// its new version, the same on both back ends.
pub(super) fn push_version_update<'b, DB>(out: &mut AstPass<'_, 'b, DB>, new: &'b NewVersion<'_>) -> QueryResult<()>
where
    DB: Backend + HasSqlType<Text> + HasSqlType<BigInt> + HasSqlType<Bool> + HasSqlType<Timestamp>,
    String: ToSql<Text, DB>,
    i64: ToSql<BigInt, DB>,
    bool: ToSql<Bool, DB>,
    chrono::NaiveDateTime: ToSql<Timestamp, DB>,
{
    let row = new.row;
    out.push_sql("UPDATE records SET version = ");
    out.push_bind_param::<BigInt, _>(&row.version)?;
    out.push_sql(", data = ");
    out.push_bind_param::<Text, _>(&row.data)?;
    out.push_sql(", deleted = ");
    out.push_bind_param::<Bool, _>(&row.deleted)?;
    out.push_sql(", updated_at = ");
    out.push_bind_param::<Timestamp, _>(&row.updated_at)?;
    out.push_sql(", updated_by = ");
    out.push_bind_param::<Text, _>(&row.updated_by)?;
    out.push_sql(" WHERE collection = ");
    out.push_bind_param::<Text, _>(&row.collection)?;
    out.push_sql(" AND id = ");
    out.push_bind_param::<Text, _>(&row.id)?;
    out.push_sql(" AND version = ");
    out.push_bind_param::<BigInt, _>(&new.previous)?;
    Ok(())
}

fn write_version_postgres(pg: &mut PgConnection, new: &NewVersion<'_>) -> Result<bool, StorageError> {
    let statement = WriteVersionStatement { new, keep_from: new.keep_from.unwrap_or(0) };
    let written: Vec<i64> = statement.load(pg)?;
    Ok(written.contains(&new.row.version))
}

fn write_version_in_steps(conn: &mut DbConnection, new: &NewVersion<'_>) -> Result<bool, StorageError> {
    if !statements::update_version(conn, new)? {
        return Ok(false);
    }

    append_history(conn, new.row, new.operation, new.changed_fields)?;
    if let Some(keep_from) = new.keep_from {
        delete_revisions_before(conn, &new.row.collection, &new.row.id, keep_from)?;
    }
    Ok(true)
}

/// Appends the revision and the change of a version written in this
/// transaction.
pub fn append_history(conn: &mut DbConnection, row: &RecordRow, operation: &str, changed_fields: &str) -> Result<(), StorageError> {
    Ok(statements::append_history(conn, row, operation, changed_fields)?)
}

pub fn insert_revision(conn: &mut DbConnection, row: &RevisionRow) -> Result<(), StorageError> {
    diesel::insert_into(revisions::table).values(row.clone()).execute(conn)?;
    Ok(())
}

pub fn insert_change(conn: &mut DbConnection, change: &NewChange) -> Result<(), StorageError> {
    diesel::insert_into(changes::table).values(change.clone()).execute(conn)?;
    Ok(())
}

pub fn find_revision(conn: &mut DbConnection, collection: &str, id: &str, version: i64) -> Result<Option<RevisionRow>, StorageError> {
    Ok(revisions::table
        .find((collection, id, version))
        .select(RevisionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Deletes a record's revisions older than `version`.
pub fn delete_revisions_before(conn: &mut DbConnection, collection: &str, id: &str, version: i64) -> Result<usize, StorageError> {
    Ok(diesel::delete(
        revisions::table
            .filter(revisions::collection.eq(collection))
            .filter(revisions::record_id.eq(id))
            .filter(revisions::version.lt(version)),
    )
    .execute(conn)?)
}

/// Revisions newer than `after`, oldest first.
pub fn revisions_after(conn: &mut DbConnection, collection: &str, id: &str, after: i64) -> Result<Vec<RevisionRow>, StorageError> {
    Ok(revisions::table
        .filter(revisions::collection.eq(collection))
        .filter(revisions::record_id.eq(id))
        .filter(revisions::version.gt(after))
        .order(revisions::version.asc())
        .select(RevisionRow::as_select())
        .load(conn)?)
}

/// Returns a page of revisions older than `before`, newest first.
pub fn revisions_page(
    conn: &mut DbConnection,
    collection: &str,
    id: &str,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<RevisionRow>, StorageError> {
    let mut query = revisions::table
        .filter(revisions::collection.eq(collection))
        .filter(revisions::record_id.eq(id))
        .order(revisions::version.desc())
        .limit(limit)
        .select(RevisionRow::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(revisions::version.lt(before));
    }
    Ok(query.load(conn)?)
}

/// A field compared by list filters and sorts: a server-managed column or a
/// top-level member of the record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListField {
    Id,
    Version,
    CreatedAt,
    UpdatedAt,
    CreatedBy,
    UpdatedBy,
    Data(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub field: ListField,
    /// The field matches when it equals any of these JSON values, given as
    /// their JSON text.
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListPosition {
    /// The first page.
    Start,
    /// The page after this record id, in id order.
    AfterId(String),
    /// Skip this many rows of a sorted listing.
    Offset(i64),
}

#[derive(Debug, Clone)]
pub struct ListQuery {
    pub collection: String,
    pub filters: Vec<ListFilter>,
    pub sort: Option<(ListField, bool)>,
    pub position: ListPosition,
    pub limit: i64,
}

type BoxedCondition = Box<dyn BoxableExpression<records::table, MultiBackend, SqlType = Bool>>;

/// Lists live records. Without `sort`, records come in id order, which for
/// server-made UUIDv7 ids is creation order.
pub fn list(conn: &mut DbConnection, query: &ListQuery) -> Result<Vec<RecordRow>, StorageError> {
    let backend = conn.backend();
    let mut statement = records::table
        .filter(records::collection.eq(query.collection.clone()))
        .filter(records::deleted.eq(false))
        .select(RecordRow::as_select())
        .into_boxed();

    for filter in &query.filters {
        let mut condition: Option<BoxedCondition> = None;
        for value in &filter.any_of {
            let candidate = field_equals(backend, &filter.field, value);
            condition = Some(match condition {
                None => candidate,
                Some(previous) => Box::new(previous.or(candidate)),
            });
        }
        if let Some(condition) = condition {
            statement = statement.filter(condition);
        }
    }

    statement = match &query.sort {
        None => statement.order(records::id.asc()),
        Some((field, descending)) => {
            let key = sort_key(backend, field, *descending);
            statement.order(key).then_order_by(records::id.asc())
        }
    };
    statement = match &query.position {
        ListPosition::Start => statement,
        ListPosition::AfterId(id) => statement.filter(records::id.gt(id.clone())),
        ListPosition::Offset(offset) => statement.offset(*offset),
    };

    Ok(statement.limit(query.limit).load(conn)?)
}

/// `field = value` for one JSON value given as JSON text. Data members are
/// compared as JSON, so `3` matches the number 3 and `"3"` the string.
fn field_equals(backend: super::Backend, field: &ListField, json_value: &str) -> BoxedCondition {
    let text = serde_json::from_str::<String>(json_value).ok();
    match (field, text) {
        (ListField::CreatedBy, Some(value)) => Box::new(records::created_by.eq(value)),
        (ListField::UpdatedBy, Some(value)) => Box::new(records::updated_by.eq(value)),
        (ListField::Id, Some(value)) => Box::new(records::id.eq(value)),
        (ListField::Version, _) => match json_value.parse::<i64>() {
            Ok(version) => Box::new(records::version.eq(version)),
            Err(_) => Box::new(sql::<Bool>("1 = 0")),
        },
        (ListField::Data(name), _) => match backend {
            super::Backend::Sqlite => Box::new(
                sql::<Bool>("(data -> ")
                    .bind::<Text, _>(format!("$.{name}"))
                    .sql(") = ")
                    .bind::<Text, _>(json_value.to_owned()),
            ),
            super::Backend::Postgres => Box::new(
                sql::<Bool>("(CAST(data AS jsonb) -> ")
                    .bind::<Text, _>(name.clone())
                    .sql(") = CAST(")
                    .bind::<Text, _>(json_value.to_owned())
                    .sql(" AS jsonb)"),
            ),
        },
        // The other candidates cannot equal the column: a number for a text
        // column, a string for `version`. Timestamp filters are rejected
        // before a query is built.
        _ => Box::new(sql::<Bool>("1 = 0")),
    }
}

type BoxedOrder = Box<dyn BoxableExpression<records::table, MultiBackend, SqlType = diesel::sql_types::Untyped>>;

fn sort_key(backend: super::Backend, field: &ListField, descending: bool) -> BoxedOrder {
    let direction = if descending { " DESC" } else { " ASC" };
    let column = match field {
        ListField::Id => "id",
        ListField::Version => "version",
        ListField::CreatedAt => "created_at",
        ListField::UpdatedAt => "updated_at",
        ListField::CreatedBy => "created_by",
        ListField::UpdatedBy => "updated_by",
        ListField::Data(name) => {
            // SQLite's `->>` yields SQL values, so numbers sort as numbers;
            // PostgreSQL orders jsonb values by type, then by value.
            let extract = match backend {
                super::Backend::Sqlite => "(data ->> ",
                super::Backend::Postgres => "(CAST(data AS jsonb) -> ",
            };
            let path = match backend {
                super::Backend::Sqlite => format!("$.{name}"),
                super::Backend::Postgres => name.clone(),
            };
            return Box::new(sql::<diesel::sql_types::Untyped>(extract).bind::<Text, _>(path).sql(")").sql(direction));
        }
    };
    Box::new(sql::<diesel::sql_types::Untyped>(column).sql(direction))
}

//! Queries on records and their revisions.

use chrono::NaiveDateTime;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

use super::connection::MultiBackend;
use super::models::{NewChange, RecordRow, RevisionRow};
use super::schema::{changes, records, revisions};
use super::{DbConnection, StorageError};

/// Serializes writers of one record on PostgreSQL until the transaction
/// ends. Taken before a transaction's first write, it makes every writer of
/// a record get its transaction id after the previous writer committed, so
/// the change feed's `(txid, seq)` order keeps each record's versions in
/// order. SQLite has one writer at a time and needs nothing.
pub fn lock_record(conn: &mut DbConnection, collection: &str, id: &str) -> Result<(), StorageError> {
    if let DbConnection::Postgresql(pg) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind::<Text, _>(format!("{collection}/{id}"))
            .execute(pg)?;
    }
    Ok(())
}

/// The channel on which PostgreSQL writers announce new changes.
pub const CHANGES_CHANNEL: &str = "versa_changes";

/// Announces a new change to every instance listening on PostgreSQL. The
/// notification is delivered when the transaction commits and is only a
/// wake-up: listeners read the change table for the changes themselves.
/// PostgreSQL merges identical notifications of one transaction.
pub fn notify_change(conn: &mut DbConnection) -> Result<(), StorageError> {
    if let DbConnection::Postgresql(pg) = conn {
        diesel::sql_query("SELECT pg_notify($1, '')").bind::<Text, _>(CHANGES_CHANNEL).execute(pg)?;
    }
    Ok(())
}

pub fn find(conn: &mut DbConnection, collection: &str, id: &str) -> Result<Option<RecordRow>, StorageError> {
    Ok(records::table
        .find((collection, id))
        .select(RecordRow::as_select())
        .first(conn)
        .optional()?)
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

/// The new state of a record for [`update_if_version`].
pub struct RecordUpdate<'a> {
    pub version: i64,
    pub data: &'a str,
    pub deleted: bool,
    pub updated_at: NaiveDateTime,
    pub updated_by: &'a str,
}

/// The conditional write: updates the record only while its version is
/// still `expected`. Returns `false`, having changed nothing, when another
/// writer got there first.
pub fn update_if_version(
    conn: &mut DbConnection,
    collection: &str,
    id: &str,
    expected: i64,
    update: &RecordUpdate<'_>,
) -> Result<bool, StorageError> {
    let updated = diesel::update(records::table.find((collection, id)).filter(records::version.eq(expected)))
        .set((
            records::version.eq(update.version),
            records::data.eq(update.data),
            records::deleted.eq(update.deleted),
            records::updated_at.eq(update.updated_at),
            records::updated_by.eq(update.updated_by),
        ))
        .execute(conn)?;
    Ok(updated == 1)
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

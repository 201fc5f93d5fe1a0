//! Reading the change feed.
//!
//! Rows are ordered by `(txid, seq)`. On PostgreSQL a sequence value is
//! taken before commit, so a row with a lower `seq` can become visible after
//! a higher one was read. Reading only rows whose transaction id is below
//! the oldest transaction still running (`pg_snapshot_xmin`) means no row
//! can ever appear below a cursor once it has been handed out. On SQLite
//! writes are serialized, `txid` is always 0, and `seq` order is commit
//! order.

use chrono::NaiveDateTime;
use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

use super::models::ChangeRow;
use super::schema::{changes, feed_horizon};
use super::{DbConnection, StorageError};

/// Restricts PostgreSQL reads to transactions older than every running one.
const VISIBLE_ON_POSTGRES: &str = "txid < CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)";

/// A position in the feed: the `(txid, seq)` of the last change read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedPosition {
    pub txid: i64,
    pub seq: i64,
}

/// Restricts a feed read to some collections and record ids; an empty list
/// means no restriction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedFilter {
    pub collections: Vec<String>,
    pub ids: Vec<String>,
}

impl FeedFilter {
    pub fn matches(&self, collection: &str, id: &str) -> bool {
        (self.collections.is_empty() || self.collections.iter().any(|name| name == collection))
            && (self.ids.is_empty() || self.ids.iter().any(|wanted| wanted == id))
    }
}

/// Changes after `after`, in feed order, that match `filter`.
pub fn changes_after(conn: &mut DbConnection, after: FeedPosition, filter: &FeedFilter, limit: i64) -> Result<Vec<ChangeRow>, StorageError> {
    let mut query = changes::table
        .order((changes::txid.asc(), changes::seq.asc()))
        .limit(limit)
        .select(ChangeRow::as_select())
        .into_boxed();

    // The cursor condition must be an index range, or every read scans the
    // feed from its start. SQLite plans `txid > ? OR (txid = ? AND seq > ?)`
    // and the row value `(txid, seq) > (?, ?)` alike as a scan. There `txid`
    // is always 0, and `txid = ? AND seq > ?` is a range. PostgreSQL uses
    // the row comparison as an index bound.
    query = match conn {
        DbConnection::Sqlite(_) => query.filter(changes::txid.eq(after.txid).and(changes::seq.gt(after.seq))),
        DbConnection::Postgresql(_) => query.filter(
            sql::<Bool>("(txid, seq) > (")
                .bind::<BigInt, _>(after.txid)
                .sql(", ")
                .bind::<BigInt, _>(after.seq)
                .sql(")"),
        ),
    };

    if !filter.collections.is_empty() {
        query = query.filter(changes::collection.eq_any(filter.collections.clone()));
    }
    if !filter.ids.is_empty() {
        query = query.filter(changes::record_id.eq_any(filter.ids.clone()));
    }
    if let DbConnection::Postgresql(_) = conn {
        query = query.filter(sql::<Bool>(VISIBLE_ON_POSTGRES));
    }

    Ok(query.load(conn)?)
}

/// Returns the position of the newest change readers can see, or the
/// retention horizon when the feed is empty.
pub fn end(conn: &mut DbConnection) -> Result<FeedPosition, StorageError> {
    match newest(conn)? {
        Some((position, _)) => Ok(position),
        None => horizon(conn),
    }
}

/// Returns the position and time of the newest change readers can see.
pub fn newest(conn: &mut DbConnection) -> Result<Option<(FeedPosition, NaiveDateTime)>, StorageError> {
    let mut newest = changes::table
        .order((changes::txid.desc(), changes::seq.desc()))
        .select((changes::txid, changes::seq, changes::changed_at))
        .into_boxed();
    if let DbConnection::Postgresql(_) = conn {
        newest = newest.filter(sql::<Bool>(VISIBLE_ON_POSTGRES));
    }
    let row = newest.first::<(i64, i64, NaiveDateTime)>(conn).optional()?;
    Ok(row.map(|(txid, seq, changed_at)| (FeedPosition { txid, seq }, changed_at)))
}

/// Returns the position of the newest change removed by retention; a cursor
/// below it has missed changes.
pub fn horizon(conn: &mut DbConnection) -> Result<FeedPosition, StorageError> {
    let (txid, seq) = feed_horizon::table.find(1).select((feed_horizon::txid, feed_horizon::seq)).first::<(i64, i64)>(conn)?;
    Ok(FeedPosition { txid, seq })
}

/// Deletes the changes made before `cutoff`, oldest first, and moves the
/// horizon to the newest one deleted. Only changes that readers can already
/// see are deleted, so the horizon never passes a change still to come.
/// Returns how many were deleted.
pub fn prune_before(conn: &mut DbConnection, cutoff: NaiveDateTime) -> Result<usize, StorageError> {
    let mut newest = changes::table
        .filter(changes::changed_at.lt(cutoff))
        .order((changes::txid.desc(), changes::seq.desc()))
        .select((changes::txid, changes::seq))
        .into_boxed();
    if let DbConnection::Postgresql(_) = conn {
        newest = newest.filter(sql::<Bool>(VISIBLE_ON_POSTGRES));
    }
    let Some((txid, seq)) = newest.first::<(i64, i64)>(conn).optional()? else {
        return Ok(0);
    };

    let deleted = diesel::delete(changes::table.filter(changes::txid.lt(txid).or(changes::txid.eq(txid).and(changes::seq.le(seq)))))
        .execute(conn)?;
    diesel::update(feed_horizon::table.find(1)).set((feed_horizon::txid.eq(txid), feed_horizon::seq.eq(seq))).execute(conn)?;
    Ok(deleted)
}

#[derive(diesel::QueryableByName)]
struct Seconds {
    #[diesel(sql_type = diesel::sql_types::Double)]
    seconds: f64,
}

/// Returns the age in seconds of the oldest transaction that holds back the
/// feed on PostgreSQL: any transaction with an id or a snapshot, in every
/// database of the cluster. Always 0 on SQLite.
pub fn oldest_transaction_seconds(conn: &mut DbConnection) -> Result<f64, StorageError> {
    let DbConnection::Postgresql(pg) = conn else {
        return Ok(0.0);
    };
    let row: Seconds = diesel::sql_query(
        "SELECT CAST(COALESCE(EXTRACT(EPOCH FROM max(clock_timestamp() - xact_start)), 0) AS double precision) AS seconds \
         FROM pg_stat_activity WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_backend_pid()",
    )
    .get_result(pg)?;
    Ok(row.seconds)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::connection::{Instrumentation, InstrumentationEvent};

    use super::*;
    use crate::storage::migrations;

    /// The feed is read on every commit, so a cursor read that scans the
    /// feed from its start grows slower with every change kept.
    #[test]
    fn cursor_read_is_index_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = migrations::migrated_sqlite(dir.path(), "feed.db");

        let unfiltered = FeedFilter::default();
        let two_collections = FeedFilter { collections: vec!["notes".to_owned(), "tasks".to_owned()], ids: Vec::new() };
        let one_record = FeedFilter { collections: vec!["notes".to_owned()], ids: vec!["a".to_owned()] };
        for filter in [unfiltered, two_collections, one_record] {
            let plan = cursor_read_plan(&mut conn, &filter);
            assert!(plan.iter().any(|step| step.contains("seq>?")), "{filter:?}: {plan:?}");
        }
    }

    /// Reads the feed with `filter` and returns SQLite's plan for the query.
    fn cursor_read_plan(conn: &mut DbConnection, filter: &FeedFilter) -> Vec<String> {
        let statements = Arc::new(Mutex::new(Vec::new()));
        let seen = statements.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                seen.lock().unwrap().push(query.to_string());
            }
        });
        changes_after(conn, FeedPosition { txid: 0, seq: 10 }, filter, 100).unwrap();
        conn.set_instrumentation(None::<Box<dyn Instrumentation>>);

        let read = statements.lock().unwrap().iter().find(|sql| sql.contains("FROM `changes`")).cloned().unwrap();
        // The plan is the same for any value, and diesel checks that every
        // parameter is bound, so each becomes a literal.
        let sql = read.split(" -- binds").next().unwrap().replace('?', "0");
        let DbConnection::Sqlite(sqlite) = conn else { panic!("not a SQLite connection") };
        let plan: Vec<PlanRow> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}")).load(sqlite).unwrap();
        plan.into_iter().map(|row| row.detail).collect()
    }

    #[derive(diesel::QueryableByName)]
    struct PlanRow {
        #[diesel(sql_type = diesel::sql_types::Text)]
        detail: String,
    }
}

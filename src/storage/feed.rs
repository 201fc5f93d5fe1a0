//! Reading the change feed.
//!
//! Rows are ordered by `(txid, seq)`. On PostgreSQL a sequence value is
//! taken before commit, so a row with a lower `seq` can become visible after
//! a higher one was read. Reading only rows whose transaction id is below
//! the oldest transaction still running (`pg_snapshot_xmin`) means no row
//! can ever appear below a cursor once it has been handed out. On SQLite
//! writes are serialized, `txid` is always 0, and `seq` order is commit
//! order.

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::Bool;

use super::models::ChangeRow;
use super::schema::changes;
use super::{DbConnection, StorageError};

/// A position in the feed: the `(txid, seq)` of the last change read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct FeedPosition {
    pub txid: i64,
    pub seq: i64,
}

/// Changes after `after`, in feed order, restricted to `collections` when it
/// is not empty.
pub fn changes_after(
    conn: &mut DbConnection,
    after: FeedPosition,
    collections: &[String],
    limit: i64,
) -> Result<Vec<ChangeRow>, StorageError> {
    let mut query = changes::table
        .filter(
            changes::txid
                .gt(after.txid)
                .or(changes::txid.eq(after.txid).and(changes::seq.gt(after.seq))),
        )
        .order((changes::txid.asc(), changes::seq.asc()))
        .limit(limit)
        .select(ChangeRow::as_select())
        .into_boxed();

    if !collections.is_empty() {
        query = query.filter(changes::collection.eq_any(collections.to_vec()));
    }
    if let DbConnection::Postgresql(_) = conn {
        query = query.filter(sql::<Bool>("txid < CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text) AS bigint)"));
    }

    Ok(query.load(conn)?)
}

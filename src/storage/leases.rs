//! Edit lease queries. A lease row whose `expires_at` has passed is free:
//! every query compares with the time it is given, so expiry needs no
//! sweeper.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamp};

use super::models::LeaseRow;
use super::schema::leases;
use super::{DbConnection, StorageError};

const TAKE_OVER_SQLITE: &str = "INSERT INTO leases (collection, record_id, token_sha256, holder, acquired_at, expires_at) \
     VALUES (?, ?, ?, ?, ?, ?) \
     ON CONFLICT (collection, record_id) DO UPDATE SET token_sha256 = excluded.token_sha256, holder = excluded.holder, \
     acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
     WHERE leases.expires_at <= excluded.acquired_at";
const TAKE_OVER_POSTGRES: &str = "INSERT INTO leases (collection, record_id, token_sha256, holder, acquired_at, expires_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (collection, record_id) DO UPDATE SET token_sha256 = excluded.token_sha256, holder = excluded.holder, \
     acquired_at = excluded.acquired_at, expires_at = excluded.expires_at \
     WHERE leases.expires_at <= excluded.acquired_at";

/// Acquires a lease in one statement: inserts it, or takes over a lease that
/// expired by `lease.acquired_at`. Returns `false`, changing nothing, while
/// another lease is active; two concurrent acquirers can never both win.
pub fn acquire(conn: &mut DbConnection, lease: &LeaseRow) -> Result<bool, StorageError> {
    macro_rules! run {
        ($conn:expr, $sql:expr) => {
            diesel::sql_query($sql)
                .bind::<Text, _>(&lease.collection)
                .bind::<Text, _>(&lease.record_id)
                .bind::<Text, _>(&lease.token_sha256)
                .bind::<Text, _>(&lease.holder)
                .bind::<Timestamp, _>(lease.acquired_at)
                .bind::<Timestamp, _>(lease.expires_at)
                .execute($conn)?
        };
    }
    // `ON CONFLICT` is not available through the multi-backend connection,
    // so the statement is written once per back end.
    let inserted = match conn {
        DbConnection::Sqlite(sqlite) => run!(sqlite, TAKE_OVER_SQLITE),
        DbConnection::Postgresql(pg) => run!(pg, TAKE_OVER_POSTGRES),
    };
    Ok(inserted == 1)
}

/// Returns the lease row of a record, active or expired.
pub fn find(conn: &mut DbConnection, collection: &str, id: &str) -> Result<Option<LeaseRow>, StorageError> {
    Ok(leases::table.find((collection, id)).select(LeaseRow::as_select()).first(conn).optional()?)
}

/// Returns the lease on a record that is active at `now`.
pub fn find_active(conn: &mut DbConnection, collection: &str, id: &str, now: NaiveDateTime) -> Result<Option<LeaseRow>, StorageError> {
    Ok(leases::table
        .find((collection, id))
        .filter(leases::expires_at.gt(now))
        .select(LeaseRow::as_select())
        .first(conn)
        .optional()?)
}

/// Returns the leases active at `now` on any of the records `ids`.
pub fn find_active_many(conn: &mut DbConnection, collection: &str, ids: &[String], now: NaiveDateTime) -> Result<Vec<LeaseRow>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(leases::table
        .filter(leases::collection.eq(collection))
        .filter(leases::record_id.eq_any(ids.to_vec()))
        .filter(leases::expires_at.gt(now))
        .select(LeaseRow::as_select())
        .load(conn)?)
}

/// Extends the active lease whose token hash is `token_sha256`; `false`
/// when that token no longer holds an active lease.
pub fn renew(conn: &mut DbConnection, collection: &str, id: &str, token_sha256: &str, now: NaiveDateTime, expires_at: NaiveDateTime) -> Result<bool, StorageError> {
    let updated = diesel::update(
        leases::table
            .find((collection, id))
            .filter(leases::token_sha256.eq(token_sha256))
            .filter(leases::expires_at.gt(now)),
    )
    .set(leases::expires_at.eq(expires_at))
    .execute(conn)?;
    Ok(updated == 1)
}

/// Deletes the lease if it is the given one and still active at `now`
/// (`token_sha256`), or any active lease (`None`, for a forced break).
/// Returns whether one was deleted.
pub fn delete_active(conn: &mut DbConnection, collection: &str, id: &str, token_sha256: Option<&str>, now: NaiveDateTime) -> Result<bool, StorageError> {
    let mut query = diesel::delete(leases::table.find((collection, id)).filter(leases::expires_at.gt(now))).into_boxed();
    if let Some(token) = token_sha256 {
        query = query.filter(leases::token_sha256.eq(token.to_owned()));
    }
    Ok(query.execute(conn)? == 1)
}

/// Leases that expired before `now`, oldest first.
pub fn expired(conn: &mut DbConnection, now: NaiveDateTime, limit: i64) -> Result<Vec<LeaseRow>, StorageError> {
    Ok(leases::table
        .filter(leases::expires_at.le(now))
        .order(leases::expires_at.asc())
        .limit(limit)
        .select(LeaseRow::as_select())
        .load(conn)?)
}

/// Deletes an expired lease row, if it is still that row; returns whether
/// this call deleted it, so that only one instance announces the expiry.
pub fn delete_expired(conn: &mut DbConnection, lease: &LeaseRow) -> Result<bool, StorageError> {
    let deleted = diesel::delete(
        leases::table
            .find((&lease.collection, &lease.record_id))
            .filter(leases::token_sha256.eq(&lease.token_sha256))
            .filter(leases::expires_at.eq(lease.expires_at)),
    )
    .execute(conn)?;
    Ok(deleted == 1)
}

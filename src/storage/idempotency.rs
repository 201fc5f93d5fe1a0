//! Idempotency keys for creates.
//!
//! A key is claimed by inserting a row. The primary key on
//! `(principal, idempotency_key)` decides between concurrent repeats, so two
//! requests can never both run the create.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::models::IdempotencyRow;
use super::schema::idempotency_keys;
use super::{DbConnection, StorageError};

pub fn find(conn: &mut DbConnection, principal: &str, key: &str) -> Result<Option<IdempotencyRow>, StorageError> {
    Ok(idempotency_keys::table
        .find((principal, key))
        .select(IdempotencyRow::as_select())
        .first(conn)
        .optional()?)
}

/// Claims a key for a request that is about to run.
///
/// # Errors
///
/// [`StorageError::UniqueViolation`] when another request has claimed the key.
pub fn claim(conn: &mut DbConnection, row: &IdempotencyRow) -> Result<(), StorageError> {
    diesel::insert_into(idempotency_keys::table).values(row.clone()).execute(conn)?;
    Ok(())
}

/// Stores the response of the request that claimed the key.
pub fn complete(conn: &mut DbConnection, principal: &str, key: &str, record_id: &str, response_body: &str) -> Result<(), StorageError> {
    diesel::update(idempotency_keys::table.find((principal, key)))
        .set((
            idempotency_keys::completed.eq(true),
            idempotency_keys::record_id.eq(Some(record_id)),
            idempotency_keys::response_body.eq(Some(response_body)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Releases a key whose request failed, so that a retry runs again.
pub fn release(conn: &mut DbConnection, principal: &str, key: &str) -> Result<(), StorageError> {
    diesel::delete(idempotency_keys::table.find((principal, key))).execute(conn)?;
    Ok(())
}

/// Deletes a key claimed before `cutoff`; returns whether one was deleted.
pub fn delete_if_older(conn: &mut DbConnection, principal: &str, key: &str, cutoff: NaiveDateTime) -> Result<bool, StorageError> {
    let deleted = diesel::delete(idempotency_keys::table.find((principal, key)).filter(idempotency_keys::created_at.lt(cutoff)))
        .execute(conn)?;
    Ok(deleted == 1)
}

//! Edit leases: locks that expire on their own, show who holds them, and
//! can be broken. Every transition is a feed entry, so it is pushed like a
//! record change, to every instance.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::ServiceError;
use crate::domain::record::format_timestamp;
use crate::domain::{CollectionName, RecordId};
use crate::domain::collection::CollectionPolicy;
use crate::storage::models::{LeaseRow, NewChange, now};
use crate::storage::{Database, DbConnection, leases, records};

/// An active lease as clients see it; the token is shown only to the
/// acquirer.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub holder: String,
    pub acquired_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    pub(crate) fn from_row(row: &LeaseRow) -> Self {
        Self { holder: row.holder.clone(), acquired_at: row.acquired_at.and_utc(), expires_at: row.expires_at.and_utc() }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "holder": self.holder,
            "acquired_at": format_timestamp(self.acquired_at),
            "expires_at": format_timestamp(self.expires_at),
        })
    }
}

/// Hashes a lease token for storage; the database never holds the token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Returns a new unguessable token (244 random bits from two UUIDv4).
fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Chooses a lease's lifetime: the client's request within 1 s and ten times
/// the collection's default, else the default.
///
/// # Errors
///
/// [`ServiceError::InvalidLease`] for a request outside those bounds.
pub fn lifetime(policy: &CollectionPolicy, requested: Option<u64>) -> Result<Duration, ServiceError> {
    let max = policy.lease_ttl_seconds.saturating_mul(10);
    let seconds = match requested {
        None => policy.lease_ttl_seconds,
        Some(seconds) if (1..=max).contains(&seconds) => seconds,
        Some(seconds) => {
            return Err(ServiceError::InvalidLease(format!("ttl_seconds must be from 1 to {max}, got {seconds}")));
        }
    };
    Ok(Duration::seconds(seconds as i64))
}

/// Acquires the lease on a live record; returns the token and the lease.
///
/// # Errors
///
/// [`ServiceError::Locked`] while another lease is active, also one held by
/// the same principal; [`ServiceError::NotFound`] for a missing or deleted
/// record.
pub async fn acquire(db: &Database, collection: &CollectionName, id: RecordId, holder: &str, ttl: Duration) -> Result<(String, Lease), ServiceError> {
    let token = new_token();
    let at = now().naive_utc();
    let row = LeaseRow {
        collection: collection.to_string(),
        record_id: id.to_key(),
        token_sha256: token_hash(&token),
        holder: holder.to_owned(),
        acquired_at: at,
        expires_at: at + ttl,
    };

    let lease = db
        .write(move |conn| {
            let record = live_record_version(conn, &row.collection, &row.record_id)?;
            // An expired lease that this acquire takes over is announced
            // here, since the announcing task will no longer find it.
            let previous = leases::find(conn, &row.collection, &row.record_id)?.filter(|previous| previous.expires_at <= at);
            // Another lease can end between a refused acquire and the look-up
            // of its holder; then the acquire is tried again.
            for _ in 0..3 {
                if leases::acquire(conn, &row)? {
                    if let Some(previous) = &previous {
                        announce(conn, previous, record, "lease.expired", None)?;
                    }
                    announce(conn, &row, record, "lease.acquired", None)?;
                    return Ok(Lease::from_row(&row));
                }
                if let Some(active) = leases::find_active(conn, &row.collection, &row.record_id, at)? {
                    return Err(locked(&active));
                }
            }
            Err(ServiceError::LeaseNotFound)
        })
        .await?;
    Ok((token, lease))
}

/// Extends the lease held with `token` by `ttl` from now.
///
/// # Errors
///
/// [`ServiceError::LeaseGone`] when the token no longer holds the active
/// lease (expired, released, broken or replaced); the current lease stays.
pub async fn renew(db: &Database, collection: &CollectionName, id: RecordId, token: &str, ttl: Duration) -> Result<Lease, ServiceError> {
    let (collection, key, hash) = (collection.to_string(), id.to_key(), token_hash(token));
    db.write(move |conn| {
        let at = now().naive_utc();
        if !leases::renew(conn, &collection, &key, &hash, at, at + ttl)? {
            return Err(ServiceError::LeaseGone);
        }
        let row = leases::find_active(conn, &collection, &key, at)?.ok_or(ServiceError::LeaseGone)?;
        let version = live_record_version(conn, &collection, &key).unwrap_or(0);
        announce(conn, &row, version, "lease.renewed", None)?;
        Ok(Lease::from_row(&row))
    })
    .await
}

/// Releases the lease held with `token`.
///
/// # Errors
///
/// [`ServiceError::LeaseGone`] as for [`renew`].
pub async fn release(db: &Database, collection: &CollectionName, id: RecordId, token: &str) -> Result<(), ServiceError> {
    let (collection, key, hash) = (collection.to_string(), id.to_key(), token_hash(token));
    db.write(move |conn| {
        let at = now().naive_utc();
        let row = leases::find_active(conn, &collection, &key, at)?.filter(|row| row.token_sha256 == hash).ok_or(ServiceError::LeaseGone)?;
        if !leases::delete_active(conn, &collection, &key, Some(&hash), at)? {
            return Err(ServiceError::LeaseGone);
        }
        let version = live_record_version(conn, &collection, &key).unwrap_or(0);
        announce(conn, &row, version, "lease.released", None)
    })
    .await
}

/// Breaks the active lease. The `lease.broken` event names who broke it,
/// which is how the holder learns of it.
///
/// # Errors
///
/// [`ServiceError::LeaseNotFound`] when no lease is active.
pub async fn force_break(db: &Database, collection: &CollectionName, id: RecordId, breaker: &str) -> Result<(), ServiceError> {
    let (collection, key, breaker) = (collection.to_string(), id.to_key(), breaker.to_owned());
    db.write(move |conn| {
        let at = now().naive_utc();
        let row = leases::find_active(conn, &collection, &key, at)?.ok_or(ServiceError::LeaseNotFound)?;
        if !leases::delete_active(conn, &collection, &key, None, at)? {
            return Err(ServiceError::LeaseNotFound);
        }
        let version = live_record_version(conn, &collection, &key).unwrap_or(0);
        tracing::info!(%collection, record.id = %key, holder = %row.holder, broken_by = %breaker, "lease broken");
        announce(conn, &row, version, "lease.broken", Some(&breaker))
    })
    .await
}

/// Returns the active lease on a record, if any.
pub async fn active(db: &Database, collection: &CollectionName, id: RecordId) -> Result<Option<Lease>, ServiceError> {
    let (collection, key) = (collection.to_string(), id.to_key());
    db.read(move |conn| Ok::<_, ServiceError>(leases::find_active(conn, &collection, &key, now().naive_utc())?.map(|row| Lease::from_row(&row))))
        .await
}

/// Checks the `required` lease mode for a write inside its transaction.
///
/// # Errors
///
/// [`ServiceError::Locked`] when another lease is active and `token` is not
/// its token.
pub fn check_write(conn: &mut DbConnection, collection: &str, id: &str, token: Option<&str>) -> Result<(), ServiceError> {
    let Some(active) = leases::find_active(conn, collection, id, now().naive_utc())? else {
        return Ok(());
    };
    match token {
        Some(token) if token_hash(token) == active.token_sha256 => Ok(()),
        _ => Err(locked(&active)),
    }
}

/// Announces leases that expired, once each even with several instances,
/// and removes their rows. Expiry itself needs none of this: an expired
/// lease is free the moment it expires.
pub async fn announce_expired(db: &Database) -> Result<usize, ServiceError> {
    db.write(|conn| {
        let at = now().naive_utc();
        let mut announced = 0;
        for row in leases::expired(conn, at, 100)? {
            if leases::delete_expired(conn, &row)? {
                let version = live_record_version(conn, &row.collection, &row.record_id).unwrap_or(0);
                announce(conn, &row, version, "lease.expired", None)?;
                announced += 1;
            }
        }
        Ok(announced)
    })
    .await
}

fn locked(active: &LeaseRow) -> ServiceError {
    ServiceError::Locked { holder: active.holder.clone(), expires_at: active.expires_at.and_utc() }
}

fn live_record_version(conn: &mut DbConnection, collection: &str, id: &str) -> Result<i64, ServiceError> {
    match records::find(conn, collection, id)? {
        Some(record) if !record.deleted => Ok(record.version),
        _ => Err(ServiceError::NotFound),
    }
}

/// Appends the lease event to the feed, in the caller's transaction.
fn announce(conn: &mut DbConnection, row: &LeaseRow, version: i64, operation: &str, broken_by: Option<&str>) -> Result<(), ServiceError> {
    let mut detail = json!({
        "collection": row.collection,
        "id": row.record_id,
        "holder": row.holder,
        "expires_at": format_timestamp(row.expires_at.and_utc()),
    });
    if let Some(breaker) = broken_by {
        detail["broken_by"] = Value::String(breaker.to_owned());
    }
    records::insert_change(
        conn,
        &NewChange {
            collection: row.collection.clone(),
            record_id: row.record_id.clone(),
            version,
            operation: operation.to_owned(),
            principal: broken_by.unwrap_or(&row.holder).to_owned(),
            changed_at: now().naive_utc(),
            detail: Some(detail.to_string()),
        },
    )?;
    Ok(())
}


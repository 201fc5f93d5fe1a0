//! Record operations: read, create, replace, patch and delete.

use chrono::Duration;
use diesel::Connection;
use json_patch::Patch;
use serde_json::Value;
use sha2::{Digest, Sha256};

use std::sync::Arc;

use super::conflict::{self, Resolution};
use super::{RecordSnapshot, ServiceError};
use crate::domain::collection::{CollectionPolicy, LeaseMode};
use crate::domain::diff::changed_paths;
use crate::domain::patch::{apply_json_patch, apply_merge_patch, check_written_paths};
use crate::domain::record::{Fields, to_wire};
use crate::domain::{CollectionName, ExpectedVersion, Operation, RecordId};
use crate::storage::models::{IdempotencyRow, RecordRow, encode_fields, now};
use crate::storage::records::NewVersion;
use crate::storage::{Backend, Database, DbConnection, StorageError, idempotency, records};

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_KEY_LIFETIME_HOURS: i64 = 24;

/// A write's effect on an existing record.
#[derive(Debug, Clone)]
pub enum Change {
    /// PUT: the new fields.
    Replace(Fields),
    /// JSON Merge Patch (RFC 7396).
    MergePatch(Fields),
    /// JSON Patch (RFC 6902).
    JsonPatch(Patch),
    /// DELETE: leaves a tombstone.
    Delete,
    /// Writes this revision's fields as a new version; also undeletes.
    Restore(i64),
}

/// The writer and the collection's write rules.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub principal: String,
    pub policy: Arc<CollectionPolicy>,
    /// The `Lease-Token` the request carried, for `leases = "required"`.
    pub lease_token: Option<String>,
}

/// A record read for `GET`: its version, its wire form as JSON text, and the
/// active lease when asked for.
pub struct RecordRead {
    pub version: i64,
    pub wire: String,
    pub lease: Option<super::leases::Lease>,
}

/// Reads a record for `GET` in one trip to the database: the record as JSON
/// text built without parsing the stored fields, and its active lease when
/// `with_lease`.
///
/// # Errors
///
/// [`ServiceError::NotFound`] when it never existed, [`ServiceError::Deleted`]
/// when its current version is a tombstone.
pub async fn read_for_get(db: &Database, collection: &CollectionName, id: RecordId, with_lease: bool) -> Result<RecordRead, ServiceError> {
    let collection = collection.to_string();
    let recent = db.recent().clone();
    db.read(move |conn| {
        let key = id.to_key();
        let (row, lease) = if with_lease {
            records::find_with_lease(conn, &collection, &key, now().naive_utc())?.ok_or(ServiceError::NotFound)?
        } else {
            (records::find(conn, &collection, &key)?.ok_or(ServiceError::NotFound)?, None)
        };
        if row.deleted {
            return Err(ServiceError::Deleted { version: row.version, deleted_at: row.updated_at.and_utc(), deleted_by: row.updated_by });
        }
        // A client that read this version is likely to write based on it.
        recent.remember(&row);
        Ok(RecordRead { version: row.version, wire: row.wire_text()?, lease: lease.as_ref().map(super::leases::Lease::from_row) })
    })
    .await
}

/// An `Idempotency-Key` with the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

impl IdempotencyKey {
    /// Fingerprints a create by its collection and its body as parsed JSON,
    /// so that whitespace and member order do not matter.
    pub fn new(key: String, collection: &CollectionName, body: &Value) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(collection.as_str().as_bytes());
        hasher.update([0]);
        hasher.update(body.to_string().as_bytes());
        Self { key, request_hash: hex::encode(hasher.finalize()) }
    }
}

/// The result of a create.
#[derive(Debug, Clone)]
pub enum Created {
    New(RecordSnapshot),
    /// A repeat of an earlier request with the same idempotency key: the
    /// stored response body.
    Replayed(Value),
}

/// Creates a record with a server-made UUIDv7 id, or the body's `id`.
///
/// # Errors
///
/// [`ServiceError::AlreadyExists`] when the id is taken (a tombstone counts),
/// [`ServiceError::IdempotencyKeyReused`] and
/// [`ServiceError::IdempotencyKeyInFlight`] for key misuse,
/// [`ServiceError::Validation`] when the record fails the collection's
/// schema, and body errors.
pub async fn create(
    db: &Database,
    collection: &CollectionName,
    body: Value,
    context: &WriteContext,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<Created, ServiceError> {
    let split = crate::domain::record::split_body(body, None)?;
    let id = split.id.unwrap_or_else(RecordId::generate);
    let principal = context.principal.as_str();

    let Some(key) = idempotency_key else {
        return insert_new(db, collection, id, split.fields, context).await.map(Created::New);
    };
    context.policy.validate(&split.fields).map_err(ServiceError::Validation)?;

    if let Some(stored) = claim_key(db, collection, principal, &key).await? {
        return Ok(Created::Replayed(stored));
    }

    let result = {
        let collection = collection.to_string();
        let principal = principal.to_owned();
        let key = key.key.clone();
        let fields = split.fields;
        db.write(move |conn| {
            let created = insert_in_transaction(conn, &collection, id, fields, &principal)?;
            let body = created.to_wire().to_string();
            idempotency::complete(conn, &principal, &key, &id.to_key(), &body)?;
            Ok(created)
        })
        .await
    };

    match result {
        Ok(created) => Ok(Created::New(created)),
        Err(error) => {
            // A failed create leaves nothing to replay, so the key is freed
            // and a retry runs the request again.
            let principal = principal.to_owned();
            let release = db.write(move |conn| idempotency::release(conn, &principal, &key.key)).await;
            if let Err(release_error) = release {
                tracing::warn!(error = %release_error, %collection, %id, "failed to release an idempotency key after a failed create");
            }
            Err(already_exists_with_current(db, collection, id, error).await)
        }
    }
}

/// Claims the key, or returns the stored response of the request that used
/// it before.
// TODO: a process that dies between the claim and the create leaves the key
// claimed, so retries get 409 until it expires after 24 hours. Letting a
// request take over a claim older than a request timeout would fix that.
async fn claim_key(db: &Database, collection: &CollectionName, principal: &str, key: &IdempotencyKey) -> Result<Option<Value>, ServiceError> {
    let row = IdempotencyRow {
        principal: principal.to_owned(),
        idempotency_key: key.key.clone(),
        request_hash: key.request_hash.clone(),
        completed: false,
        collection: collection.to_string(),
        record_id: None,
        response_body: None,
        created_at: now().naive_utc(),
    };

    db.write(move |conn| {
        let cutoff = row.created_at - Duration::hours(IDEMPOTENCY_KEY_LIFETIME_HOURS);
        idempotency::delete_if_older(conn, &row.principal, &row.idempotency_key, cutoff)?;

        match idempotency::find(conn, &row.principal, &row.idempotency_key)? {
            None => {
                // On PostgreSQL a concurrent repeat can insert between the
                // look-up and this insert; the primary key rejects one of
                // them. The savepoint keeps the transaction usable so the
                // loser can read what the winner stored.
                match conn.transaction(|conn| idempotency::claim(conn, &row)) {
                    Ok(()) => Ok(None),
                    Err(StorageError::UniqueViolation) => match idempotency::find(conn, &row.principal, &row.idempotency_key)? {
                        Some(existing) => stored_response(existing, &row.request_hash),
                        None => Err(ServiceError::IdempotencyKeyInFlight),
                    },
                    Err(other) => Err(other.into()),
                }
            }
            Some(existing) => stored_response(existing, &row.request_hash),
        }
    })
    .await
}

/// Decides what a request gets for a key that is already claimed.
fn stored_response(existing: IdempotencyRow, request_hash: &str) -> Result<Option<Value>, ServiceError> {
    if existing.request_hash != request_hash {
        return Err(ServiceError::IdempotencyKeyReused);
    }
    match (existing.completed, existing.response_body) {
        (true, Some(body)) => {
            let body = serde_json::from_str(&body).map_err(|_| StorageError::Corrupt("stored idempotent response".to_owned()))?;
            Ok(Some(body))
        }
        _ => Err(ServiceError::IdempotencyKeyInFlight),
    }
}

/// Creates a record at a given id (POST, or PUT with `If-None-Match: *`).
pub async fn insert_new(db: &Database, collection: &CollectionName, id: RecordId, fields: Fields, context: &WriteContext) -> Result<RecordSnapshot, ServiceError> {
    context.policy.validate(&fields).map_err(ServiceError::Validation)?;

    let result = {
        let collection = collection.to_string();
        let principal = context.principal.clone();
        db.write(move |conn| insert_in_transaction(conn, &collection, id, fields, &principal)).await
    };
    match result {
        Ok(created) => Ok(created),
        Err(error) => Err(already_exists_with_current(db, collection, id, error).await),
    }
}

/// Turns a unique violation into [`ServiceError::AlreadyExists`] carrying the
/// record that has the id, read after the failed transaction ended.
async fn already_exists_with_current(db: &Database, collection: &CollectionName, id: RecordId, error: ServiceError) -> ServiceError {
    if !matches!(error, ServiceError::Storage(StorageError::UniqueViolation)) {
        return error;
    }
    let collection = collection.to_string();
    let current = db
        .read(move |conn| {
            let row = records::find(conn, &collection, &id.to_key())?.ok_or(ServiceError::NotFound)?;
            Ok::<_, ServiceError>(snapshot(&row)?.to_wire())
        })
        .await;
    match current {
        Ok(current) => ServiceError::AlreadyExists { current: Box::new(current) },
        Err(other) => other,
    }
}

pub(crate) fn insert_in_transaction(conn: &mut DbConnection, collection: &str, id: RecordId, fields: Fields, principal: &str) -> Result<RecordSnapshot, ServiceError> {
    let key = id.to_key();
    records::lock_record(conn, collection, &key)?;

    if let Some(existing) = records::find(conn, collection, &key)? {
        return Err(ServiceError::AlreadyExists { current: Box::new(snapshot(&existing)?.to_wire()) });
    }

    let at = now().naive_utc();
    let data = encode_fields(&fields)?;
    let row = RecordRow {
        collection: collection.to_owned(),
        id: key.clone(),
        version: 1,
        data: data.clone(),
        deleted: false,
        created_at: at,
        updated_at: at,
        created_by: principal.to_owned(),
        updated_by: principal.to_owned(),
    };
    records::insert(conn, &row)?;
    records::append_history(conn, &row, Operation::Created.as_str(), &encode_changed_fields(&[String::new()])?)?;

    Ok(RecordSnapshot { meta: row.meta()?, fields })
}

/// A committed write.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: RecordSnapshot,
    /// `true` when a stale write was merged into the current version
    /// (collections with `merge = "fields"`).
    pub merged: bool,
    /// The row as written, kept once committed so that the next write
    /// based on it need not read it.
    pub(crate) row: RecordRow,
}

/// Applies `change` to an existing record if `expected` matches its current
/// version, or, in a `merge = "fields"` collection, if the stale write
/// touches no field that others changed since its base.
///
/// # Errors
///
/// [`ServiceError::PreconditionRequired`] without an expected version,
/// [`ServiceError::NotFound`] for a record that never existed,
/// [`ServiceError::Conflict`] when the version is stale or the record was
/// deleted, and [`ServiceError::Validation`] when the result fails the
/// collection's schema. A refused write changes nothing. A client that gets
/// a conflict must read the record again, merge, and retry with the new
/// version.
pub async fn write(
    db: &Database,
    collection: &CollectionName,
    id: RecordId,
    expected: Option<ExpectedVersion>,
    change: Change,
    context: &WriteContext,
) -> Result<Written, ServiceError> {
    let expected = require_expected(expected, context)?;
    if let Change::JsonPatch(patch) = &change {
        check_written_paths(patch)?;
    }

    let write = Arc::new(RecordWrite { collection: collection.to_string(), id, expected, change, context: context.clone() });
    let written = write_committed(db, write).await?;
    db.recent().remember(&written.row);
    Ok(written)
}

/// Runs a write to an existing record until it commits or fails.
///
/// A write based on a version this instance committed or read starts from
/// that row instead of reading the record. Its conditional update still
/// decides whether the version is current. A live record only: a write to
/// a tombstone is a conflict, and the conflict report needs the current
/// row.
async fn write_committed(db: &Database, write: Arc<RecordWrite>) -> Result<Written, ServiceError> {
    let base = match write.expected {
        ExpectedVersion::Exactly(version) => db.recent().recall(&write.collection, &write.id.to_key(), version).filter(|row| !row.deleted),
        _ => None,
    };
    if db.backend() == Backend::Sqlite {
        return db
            .write(move |conn| {
                if let Some(base) = base
                    && let Some(written) = attempt_from(conn, &write, base)?
                {
                    return Ok(written);
                }
                write_in_transaction(conn, &write)
            })
            .await;
    }

    // On PostgreSQL each attempt is a read and a one-statement conditional
    // write outside a transaction, and the statement takes the record lock
    // only for itself. The write's first change is the record's own row, so
    // the feed keeps the record's versions in order. An attempt that loses
    // a race to another writer starts again from the newer version, where
    // the version check (and a merge, where the collection allows one)
    // decides afresh.
    if let Some(base) = base {
        let write = write.clone();
        if let Some(written) = db.write_autocommit(move |conn| attempt_from(conn, &write, base)).await? {
            return Ok(written);
        }
    }
    for _ in 0..OPTIMISTIC_ATTEMPTS {
        let write = write.clone();
        if let Some(written) = db.write_autocommit(move |conn| attempt_write(conn, &write, None)).await? {
            return Ok(written);
        }
    }

    // A record this contended is written in a transaction that holds the
    // record lock from before its read, which no other write can pass.
    db.write(move |conn| write_in_transaction(conn, &write)).await
}

/// Attempts a write from a kept row. Returns `None` when that row is no
/// longer current, and also when the write fails on it, because a failure
/// computed from a stale row (a schema violation, a failed JSON Patch
/// test) might not be the write's fate. The current version decides that.
/// A storage error ends the write, since it may have ended the transaction.
fn attempt_from(conn: &mut DbConnection, write: &RecordWrite, base: RecordRow) -> Result<Option<Written>, ServiceError> {
    match attempt_write(conn, write, Some(base)) {
        Err(error @ ServiceError::Storage(_)) => Err(error),
        Err(_) => Ok(None),
        Ok(written) => Ok(written),
    }
}

/// How often a PostgreSQL write tries without holding the record lock
/// before it takes it. Each lost race means another write committed.
const OPTIMISTIC_ATTEMPTS: usize = 4;

/// A write to an existing record, ready to be attempted.
pub(crate) struct RecordWrite {
    pub collection: String,
    pub id: RecordId,
    pub expected: ExpectedVersion,
    pub change: Change,
    pub context: WriteContext,
}

/// Checks that a write to an existing record states a version it may use.
pub(crate) fn require_expected(expected: Option<ExpectedVersion>, context: &WriteContext) -> Result<ExpectedVersion, ServiceError> {
    let expected = expected.ok_or(ServiceError::PreconditionRequired)?;
    if expected == ExpectedVersion::Any && !context.policy.allow_unconditional_writes {
        return Err(ServiceError::UnconditionalWriteNotAllowed);
    }
    Ok(expected)
}

/// Writes an existing record in the caller's transaction: every write on
/// SQLite, and batch operations on PostgreSQL, where the record lock keeps
/// the feed in order for a transaction that writes several records.
pub(crate) fn write_in_transaction(conn: &mut DbConnection, write: &RecordWrite) -> Result<Written, ServiceError> {
    records::lock_record(conn, &write.collection, &write.id.to_key())?;
    match attempt_write(conn, write, None)? {
        Some(written) => Ok(written),
        // Neither back end gets here: SQLite has one writer, and on
        // PostgreSQL every write takes the record lock held here. Should it
        // happen, this transaction may already have its id, so a retry here
        // could put the record's versions out of order in the feed.
        None => Err(latest_conflict(conn, write)?),
    }
}

/// The conflict of a write that lost its race, against the latest version.
fn latest_conflict(conn: &mut DbConnection, write: &RecordWrite) -> Result<ServiceError, ServiceError> {
    let latest = records::find(conn, &write.collection, &write.id.to_key())?.ok_or(ServiceError::NotFound)?;
    Ok(ServiceError::Conflict(Box::new(conflict::build(conn, &latest, &write.expected, &write.change, &write.context.policy)?)))
}

/// Reads the record, or takes `base` as it, decides the write's fate from
/// its expected version, and writes the new version only if the record
/// still has the version read. Returns `None`, having written nothing, when
/// another writer committed between the read and the write, or after
/// `base`.
fn attempt_write(conn: &mut DbConnection, write: &RecordWrite, base: Option<RecordRow>) -> Result<Option<Written>, ServiceError> {
    let RecordWrite { collection, id, expected, change, context } = write;
    let key = id.to_key();
    if context.policy.leases == LeaseMode::Required {
        super::leases::check_write(conn, collection, &key, context.lease_token.as_deref())?;
    }

    // A restore may write over a tombstone; every other write to a deleted
    // record is a conflict.
    let current = match base {
        Some(base) => base,
        None => records::find(conn, collection, &key)?.ok_or(ServiceError::NotFound)?,
    };
    let applies = expected.matches(current.version) && (!current.deleted || matches!(change, Change::Restore(_)));

    let old_fields = current.fields()?;
    let (new_fields, operation, merged) = if applies {
        let (fields, operation) = apply_change(conn, &current, &old_fields, change)?;
        (fields, operation, false)
    } else {
        match conflict::resolve(conn, &current, expected, change, &context.policy)? {
            Resolution::Merged(fields) => (fields, Operation::Updated, true),
            Resolution::Conflict(report) => return Err(ServiceError::Conflict(report)),
        }
    };
    if operation != Operation::Deleted {
        context.policy.validate(&new_fields).map_err(ServiceError::Validation)?;
    }
    let changed = match operation {
        Operation::Deleted => vec![String::new()],
        _ => changed_paths(&Value::Object(old_fields), &Value::Object(new_fields.clone())),
    };

    let previous = current.version;
    let row = RecordRow {
        version: previous + 1,
        data: encode_fields(&new_fields)?,
        deleted: operation == Operation::Deleted,
        updated_at: now().naive_utc(),
        updated_by: context.principal.clone(),
        ..current
    };
    let new_version = NewVersion {
        row: &row,
        previous,
        operation: operation.as_str(),
        changed_fields: &encode_changed_fields(&changed)?,
        keep_from: context.policy.keep_revisions.map(|keep| row.version - keep + 1),
    };
    if !records::write_version(conn, &new_version)? {
        return Ok(None);
    }
    Ok(Some(Written { record: RecordSnapshot { meta: row.meta()?, fields: new_fields }, merged, row }))
}

/// Computes the fields a write leaves, for a write whose version matched.
fn apply_change(conn: &mut DbConnection, current: &RecordRow, old_fields: &Fields, change: &Change) -> Result<(Fields, Operation), ServiceError> {
    Ok(match change {
        Change::Replace(fields) => (fields.clone(), Operation::Updated),
        Change::MergePatch(patch) => (apply_merge_patch(old_fields, patch), Operation::Updated),
        Change::JsonPatch(patch) => (apply_json_patch(&to_wire(&current.meta()?, old_fields), patch)?, Operation::Updated),
        Change::Delete => (Fields::new(), Operation::Deleted),
        Change::Restore(version) => {
            let revision = records::find_revision(conn, &current.collection, &current.id, *version)?
                .ok_or(ServiceError::RevisionNotFound { version: *version })?;
            if revision.operation == Operation::Deleted.as_str() {
                return Err(ServiceError::RestoreOfDeletion { version: *version });
            }
            (revision.fields()?, Operation::Restored)
        }
    })
}

fn encode_changed_fields(paths: &[String]) -> Result<String, ServiceError> {
    Ok(serde_json::to_string(paths).map_err(|_| StorageError::Corrupt("changed fields".to_owned()))?)
}

pub(crate) fn snapshot(row: &RecordRow) -> Result<RecordSnapshot, ServiceError> {
    Ok(RecordSnapshot { meta: row.meta()?, fields: row.fields()? })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::storage::{DatabaseUrl, migrations, probe};

    /// A write based on the version this instance just read or wrote starts
    /// from the row it kept, so it costs the update and the history rows
    /// only: no read of the record first.
    #[tokio::test]
    async fn write_from_kept_version_skips_record_read() {
        probe::install();
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::parse(&dir.path().join("probe-recall.db").display().to_string()).unwrap();
        let db = Database::connect(&url, 2, Duration::from_secs(5)).unwrap();
        db.write(|conn| migrations::run_pending(conn).map_err(ServiceError::from)).await.unwrap();

        let notes = CollectionName::parse("notes").unwrap();
        let context = WriteContext { principal: "ana".to_owned(), policy: Arc::default(), lease_token: None };
        let created = insert_new(&db, &notes, RecordId::generate(), Fields::new(), &context).await.unwrap();
        let id = RecordId::parse(&created.meta.id.to_string()).unwrap();
        let record_reads = || probe::statements("recall").iter().filter(|statement| statement.starts_with("SELECT records.collection")).count();

        read_for_get(&db, &notes, id, true).await.unwrap();
        let before = record_reads();
        let first = Change::MergePatch(json!({"n": 1}).as_object().unwrap().clone());
        let written = write(&db, &notes, id, Some(ExpectedVersion::Exactly(1)), first, &context).await.unwrap();
        let second = Change::MergePatch(json!({"n": 2}).as_object().unwrap().clone());
        let rewritten = write(&db, &notes, id, Some(ExpectedVersion::Exactly(written.record.meta.version)), second, &context).await.unwrap();

        assert_eq!(rewritten.record.meta.version, 3);
        assert_eq!(record_reads(), before);
    }
}

//! Several writes in one request, each with its own expected version:
//! atomically in one transaction, or one by one.

use std::sync::Arc;

use super::records::{Change, RecordWrite, WriteContext, Written, insert_in_transaction, require_expected, write_in_transaction};
use super::{RecordSnapshot, ServiceError};
use crate::domain::collection::CollectionPolicy;
use crate::domain::record::Fields;
use crate::domain::{CollectionName, ExpectedVersion, RecordId};
use diesel::Connection;

use crate::storage::{Database, DbConnection, StorageError, records};

/// One parsed batch operation.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub collection: CollectionName,
    pub policy: Arc<CollectionPolicy>,
    pub operation: BatchOperation,
}

#[derive(Debug, Clone)]
pub enum BatchOperation {
    Create { id: Option<RecordId>, fields: Fields },
    Write { id: RecordId, expected: Option<ExpectedVersion>, change: Change, lease_token: Option<String> },
}

/// The effect of one operation.
#[derive(Debug, Clone)]
pub enum ItemOutcome {
    Created(RecordSnapshot),
    Written(Written),
    Deleted,
}

/// Each operation's result, in request order. Operations that could not be
/// parsed arrive here as errors already.
pub type ItemResults = Vec<Result<ItemOutcome, ServiceError>>;

/// The result of an atomic batch.
pub enum AtomicOutcome {
    Committed(Vec<ItemOutcome>),
    /// Nothing was written; these operations, by index, failed.
    RolledBack(Vec<(usize, ServiceError)>),
}

/// Runs every operation in one transaction. Before the first write it locks
/// every record the batch names, in sorted order, so two batches that name
/// the same records wait for each other instead of deadlocking.
// NOTE: on PostgreSQL these locks also keep each record's changes in
// version order in the feed; no test covers that under concurrent batches.
pub async fn run_atomic(db: &Database, items: Vec<Result<BatchItem, ServiceError>>, principal: &str) -> Result<AtomicOutcome, ServiceError> {
    // Operations that parsed still run, so that the answer lists every
    // failing operation, malformed and stale alike; nothing is committed
    // unless all of them succeed.
    let mut parsed = Vec::with_capacity(items.len());
    let mut parse_failures = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Ok(item) => parsed.push((index, item)),
            Err(error) => parse_failures.push((index, error)),
        }
    }
    let principal = principal.to_owned();

    let outcome = db
        .write(move |conn| {
            let mut keys: Vec<(String, String)> = parsed
                .iter()
                .filter_map(|(_, item)| match &item.operation {
                    BatchOperation::Create { id: Some(id), .. } | BatchOperation::Write { id, .. } => {
                        Some((item.collection.to_string(), id.to_key()))
                    }
                    BatchOperation::Create { id: None, .. } => None,
                })
                .collect();
            keys.sort();
            keys.dedup();
            for (collection, id) in &keys {
                records::lock_record(conn, collection, id)?;
            }

            // Each operation runs in a savepoint, so one that fails leaves
            // the transaction usable and the others are still checked.
            let mut outcomes = Vec::with_capacity(parsed.len());
            let mut failures = parse_failures;
            for (index, item) in &parsed {
                match conn.transaction(|conn| run_item(conn, item, &principal)) {
                    Ok(outcome) => outcomes.push(outcome),
                    Err(error) => failures.push((*index, error)),
                }
            }

            if failures.is_empty() {
                Ok(outcomes)
            } else {
                failures.sort_by_key(|(index, _)| *index);
                Err(BatchError::RolledBack(failures))
            }
        })
        .await;

    match outcome {
        Ok(outcomes) => Ok(AtomicOutcome::Committed(outcomes)),
        Err(BatchError::RolledBack(failures)) => Ok(AtomicOutcome::RolledBack(failures)),
        Err(BatchError::Service(error)) => Err(error),
    }
}

/// Runs each operation in its own transaction, in order.
pub async fn run_each(db: &Database, items: Vec<Result<BatchItem, ServiceError>>, principal: &str) -> ItemResults {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let result = match item {
            Err(error) => Err(error),
            Ok(item) => {
                let principal = principal.to_owned();
                db.write(move |conn| run_item(conn, &item, &principal)).await
            }
        };
        results.push(result);
    }
    results
}

fn run_item(conn: &mut DbConnection, item: &BatchItem, principal: &str) -> Result<ItemOutcome, ServiceError> {
    let lease_token = match &item.operation {
        BatchOperation::Write { lease_token, .. } => lease_token.clone(),
        BatchOperation::Create { .. } => None,
    };
    let context = WriteContext { principal: principal.to_owned(), policy: item.policy.clone(), lease_token };
    let collection = item.collection.as_str();

    match &item.operation {
        BatchOperation::Create { id, fields } => {
            context.policy.validate(fields).map_err(ServiceError::Validation)?;
            let id = id.unwrap_or_else(RecordId::generate);
            insert_in_transaction(conn, collection, id, fields.clone(), principal).map(ItemOutcome::Created)
        }
        BatchOperation::Write { id, expected, change, .. } => {
            let expected = require_expected(expected.clone(), &context)?;
            let write = RecordWrite { collection: collection.to_owned(), id: *id, expected, change: change.clone(), context };
            let written = write_in_transaction(conn, &write)?;
            Ok(match change {
                Change::Delete => ItemOutcome::Deleted,
                _ => ItemOutcome::Written(written),
            })
        }
    }
}

/// The end of an atomic batch's transaction that did not commit.
enum BatchError {
    RolledBack(Vec<(usize, ServiceError)>),
    Service(ServiceError),
}

impl From<StorageError> for BatchError {
    fn from(error: StorageError) -> Self {
        Self::Service(error.into())
    }
}

impl From<diesel::result::Error> for BatchError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Service(error.into())
    }
}

impl From<ServiceError> for BatchError {
    fn from(error: ServiceError) -> Self {
        Self::Service(error)
    }
}

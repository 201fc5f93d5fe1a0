//! Push messages built from change rows: `{type, payload, cursor}` where
//! the payload is the record as `GET` returns it, or its tombstone.

use serde_json::{Value, json};

use crate::domain::record::to_wire;
use crate::service::changes::encode_position;
use crate::storage::feed::{self, FeedFilter, FeedPosition};
use crate::storage::models::ChangeRow;
use crate::storage::{DbConnection, StorageError, records};

/// One committed change, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PushEvent {
    pub position: FeedPosition,
    pub collection: String,
    pub id: String,
    /// `<collection>.<operation>`, such as `notes.updated`.
    pub event_type: String,
    pub cursor: String,
    /// The message as JSON text: `{"type", "payload", "cursor"}`.
    pub message: String,
    /// The message as one Server-Sent Events frame. It is formatted here,
    /// once, because every stream that receives the event sends the same
    /// bytes.
    pub sse_frame: bytes::Bytes,
    /// When the change was written.
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

/// Reads up to `limit` changes after `after` that match `filter`, with
/// their records.
pub fn load(conn: &mut DbConnection, after: FeedPosition, filter: &FeedFilter, limit: i64) -> Result<Vec<PushEvent>, StorageError> {
    let rows = feed::changes_after(conn, after, filter, limit)?;
    rows.iter().map(|row| build(conn, row)).collect()
}

fn build(conn: &mut DbConnection, row: &ChangeRow) -> Result<PushEvent, StorageError> {
    let position = FeedPosition { txid: row.txid, seq: row.seq };
    let cursor = encode_position(position);
    let event_type = format!("{}.{}", row.collection, row.operation);

    // Lease events carry their own facts; record events carry the record.
    let (event_type, payload) = match &row.detail {
        Some(detail) if row.operation.starts_with("lease.") => {
            (row.operation.clone(), serde_json::from_str(detail).unwrap_or(Value::Null))
        }
        _ => (event_type, payload(conn, row)?),
    };
    let message = json!({"type": event_type, "payload": payload, "cursor": cursor}).to_string();
    let sse_frame = bytes::Bytes::from(format!("event: {event_type}\nid: {cursor}\ndata: {message}\n\n"));
    Ok(PushEvent {
        position,
        collection: row.collection.clone(),
        id: row.record_id.clone(),
        event_type,
        cursor,
        message,
        sse_frame,
        changed_at: row.changed_at.and_utc(),
    })
}

/// Returns the record as of the change's version. A revision pruned by
/// `keep_revisions` before it was sent leaves only the change's own facts.
fn payload(conn: &mut DbConnection, row: &ChangeRow) -> Result<Value, StorageError> {
    let record = records::find(conn, &row.collection, &row.record_id)?;
    let revision = records::find_revision(conn, &row.collection, &row.record_id, row.version)?;
    let (Some(record), Some(revision)) = (record, revision) else {
        return Ok(json!({"id": row.record_id, "version": row.version, "updated_by": row.principal}));
    };
    let meta = revision.meta(&record)?;
    Ok(to_wire(&meta, &revision.fields()?))
}

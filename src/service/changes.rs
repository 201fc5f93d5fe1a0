//! The change feed as clients page through it.

use serde::Serialize;

use super::{ServiceError, cursor};
use crate::domain::record::format_timestamp;
use crate::storage::Database;
use crate::storage::feed::{self, FeedFilter, FeedPosition};
use crate::storage::models::{ChangeRow, now};

/// One committed change as the feed shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeView {
    pub cursor: String,
    pub collection: String,
    pub id: String,
    pub version: i64,
    pub operation: String,
    pub principal: String,
    pub changed_at: String,
}

impl From<&ChangeRow> for ChangeView {
    fn from(row: &ChangeRow) -> Self {
        Self {
            cursor: encode_position(FeedPosition { txid: row.txid, seq: row.seq }),
            collection: row.collection.clone(),
            id: row.record_id.clone(),
            version: row.version,
            operation: row.operation.clone(),
            principal: row.principal.clone(),
            changed_at: format_timestamp(row.changed_at.and_utc()),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangesPage {
    pub changes: Vec<ChangeView>,
    /// Cursor to continue from, present even when `changes` is empty.
    pub next_cursor: String,
}

pub fn encode_position(position: FeedPosition) -> String {
    cursor::encode(&format!("c:{}:{}", position.txid, position.seq))
}

/// Decodes a feed cursor.
///
/// # Errors
///
/// [`ServiceError::InvalidCursor`] for anything [`encode_position`] did not
/// make.
pub fn decode_position(text: &str) -> Result<FeedPosition, ServiceError> {
    let invalid = || ServiceError::InvalidCursor("the cursor was not issued by the change feed".to_owned());
    let decoded = cursor::decode(text).ok_or_else(invalid)?;
    let mut parts = decoded.strip_prefix("c:").ok_or_else(invalid)?.splitn(2, ':');
    let txid = parts.next().and_then(|part| part.parse().ok()).ok_or_else(invalid)?;
    let seq = parts.next().and_then(|part| part.parse().ok()).ok_or_else(invalid)?;
    if txid < 0 || seq < 0 {
        return Err(invalid());
    }
    Ok(FeedPosition { txid, seq })
}

/// Every cursor the server hands out is at or before the end of the feed
/// that readers can see, so one past it was not issued by the server; it
/// would otherwise wait for changes that never sort after it.
fn past_the_end() -> ServiceError {
    ServiceError::InvalidCursor("the cursor is past the end of the change feed, so this server did not issue it".to_owned())
}

/// Checks that a cursor a subscription resumes from is not past the end of
/// the feed.
///
/// # Errors
///
/// [`ServiceError::InvalidCursor`] for a cursor past the end.
pub async fn check_resumable(db: &Database, since: FeedPosition) -> Result<(), ServiceError> {
    let end = db.read(|conn| feed::end(conn).map_err(ServiceError::from)).await?;
    if since > end { Err(past_the_end()) } else { Ok(()) }
}

/// Reads up to `limit` changes after `since`, or from the start of the
/// retained history when `since` is absent.
///
/// # Errors
///
/// [`ServiceError::CursorExpired`] when retention has deleted changes after
/// `since`.
pub async fn read(db: &Database, since: Option<FeedPosition>, filter: FeedFilter, limit: i64) -> Result<ChangesPage, ServiceError> {
    let (rows, start) = db
        .read(move |conn| {
            let start = since.unwrap_or_default();
            let rows = feed::changes_after(conn, start, &filter, limit)?;

            // The horizon is read after the changes: if retention deleted
            // anything after the cursor in between, the horizon shows it.
            let horizon = feed::horizon(conn)?;
            match since {
                Some(since) if since < horizon => Err(ServiceError::CursorExpired),
                Some(since) if rows.is_empty() && since > feed::end(conn)? => Err(past_the_end()),
                _ => Ok((rows, start.max(horizon))),
            }
        })
        .await?;

    let next = rows.last().map(|row| FeedPosition { txid: row.txid, seq: row.seq }).unwrap_or(start);
    Ok(ChangesPage { changes: rows.iter().map(ChangeView::from).collect(), next_cursor: encode_position(next) })
}

/// Deletes changes older than `retention`; returns how many.
pub async fn prune(db: &Database, retention: std::time::Duration) -> Result<usize, ServiceError> {
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let cutoff = now().naive_utc().checked_sub_signed(retention).unwrap_or(chrono::NaiveDateTime::MIN);
    db.write(move |conn| feed::prune_before(conn, cutoff).map_err(ServiceError::from)).await
}

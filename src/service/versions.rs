//! Revision history of one record.

use serde::Serialize;

use super::conflict::summarize;
use super::{RecordSnapshot, ServiceError, cursor};
use crate::domain::diff::RevisionSummary;
use crate::domain::{CollectionName, RecordId};
use crate::storage::{Database, records};

/// One page of history, newest first.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPage {
    pub items: Vec<RevisionSummary>,
    pub next_cursor: Option<String>,
}

/// Lists a record's revisions, newest first. A deleted record keeps its
/// history; a record that never existed is [`ServiceError::NotFound`].
pub async fn history(db: &Database, collection: &CollectionName, id: RecordId, limit: i64, cursor: Option<&str>) -> Result<HistoryPage, ServiceError> {
    let before = cursor.map(decode_cursor).transpose()?;
    let collection = collection.to_string();

    db.read(move |conn| {
        let key = id.to_key();
        if records::find(conn, &collection, &key)?.is_none() {
            return Err(ServiceError::NotFound);
        }

        let rows = records::revisions_page(conn, &collection, &key, before, limit + 1)?;
        let has_more = rows.len() as i64 > limit;
        let items = rows.iter().take(limit as usize).map(summarize).collect::<Result<Vec<_>, _>>()?;
        let next_cursor = match items.last() {
            Some(last) if has_more => Some(cursor::encode(&format!("v:{}", last.version))),
            _ => None,
        };
        Ok(HistoryPage { items, next_cursor })
    })
    .await
}

fn decode_cursor(text: &str) -> Result<i64, ServiceError> {
    cursor::decode(text)
        .and_then(|decoded| decoded.strip_prefix("v:").and_then(|version| version.parse().ok()))
        .ok_or_else(|| ServiceError::InvalidCursor("the cursor was not issued by this history listing".to_owned()))
}

/// Reads the record as it was at `version`.
pub async fn revision(db: &Database, collection: &CollectionName, id: RecordId, version: i64) -> Result<RecordSnapshot, ServiceError> {
    let collection = collection.to_string();
    db.read(move |conn| {
        let key = id.to_key();
        let record = records::find(conn, &collection, &key)?.ok_or(ServiceError::NotFound)?;
        let revision = records::find_revision(conn, &collection, &key, version)?.ok_or(ServiceError::RevisionNotFound { version })?;

        let meta = revision.meta(&record)?;
        Ok(RecordSnapshot { meta, fields: revision.fields()? })
    })
    .await
}

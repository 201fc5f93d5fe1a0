//! Row types. Timestamps are stored as UTC without a zone; JSON as text.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use serde_json::Value;

use super::StorageError;
use super::schema::{changes, idempotency_keys, leases, records, revisions};
use crate::domain::record::{Fields, to_wire};
use crate::domain::{RecordId, RecordMeta};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = records)]
pub struct RecordRow {
    pub collection: String,
    pub id: String,
    pub version: i64,
    pub data: String,
    pub deleted: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    pub created_by: String,
    pub updated_by: String,
}

impl RecordRow {
    /// Decodes the server-managed members.
    ///
    /// # Errors
    ///
    /// [`StorageError::Corrupt`] when the stored id is not a UUID.
    pub fn meta(&self) -> Result<RecordMeta, StorageError> {
        Ok(RecordMeta {
            id: RecordId::parse(&self.id).map_err(|_| StorageError::Corrupt(format!("record id {:?}", self.id)))?,
            version: self.version,
            created_at: self.created_at.and_utc(),
            updated_at: self.updated_at.and_utc(),
            created_by: self.created_by.clone(),
            updated_by: self.updated_by.clone(),
            deleted: self.deleted,
        })
    }

    pub fn fields(&self) -> Result<Fields, StorageError> {
        decode_fields(&self.data)
    }

    /// Returns the wire form as JSON text, built from the stored text
    /// without parsing it: the stored object never holds a server-managed
    /// member, so these are appended. A tombstone is built in full.
    pub fn wire_text(&self) -> Result<String, StorageError> {
        let meta = self.meta()?;
        if meta.deleted {
            return Ok(to_wire(&meta, &Fields::new()).to_string());
        }
        let Value::Object(members) = to_wire(&meta, &Fields::new()) else {
            return Err(StorageError::Corrupt("record metadata".to_owned()));
        };
        let members = Value::Object(members).to_string();
        let data = self.data.trim();
        let body = data.strip_suffix('}').filter(|_| data.starts_with('{')).ok_or_else(|| StorageError::Corrupt("record data is not a JSON object".to_owned()))?;
        let separator = if body.trim_end() == "{" { "" } else { "," };
        Ok(format!("{}{separator}{}", body, &members[1..]))
    }
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = revisions)]
pub struct RevisionRow {
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub operation: String,
    pub data: String,
    pub changed_fields: String,
    pub principal: String,
    pub created_at: NaiveDateTime,
}

impl RevisionRow {
    pub fn fields(&self) -> Result<Fields, StorageError> {
        decode_fields(&self.data)
    }

    /// Decodes the server-managed members of the record as of this
    /// revision; creation facts come from the live `record`.
    pub fn meta(&self, record: &RecordRow) -> Result<RecordMeta, StorageError> {
        Ok(RecordMeta {
            version: self.version,
            updated_at: self.created_at.and_utc(),
            updated_by: self.principal.clone(),
            deleted: self.operation == crate::domain::Operation::Deleted.as_str(),
            ..record.meta()?
        })
    }

    pub fn changed_fields(&self) -> Result<Vec<String>, StorageError> {
        serde_json::from_str(&self.changed_fields)
            .map_err(|_| StorageError::Corrupt(format!("changed fields of revision {}", self.version)))
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = changes)]
pub struct ChangeRow {
    pub seq: i64,
    pub txid: i64,
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub operation: String,
    pub principal: String,
    pub changed_at: NaiveDateTime,
    pub detail: Option<String>,
}

/// A change to append; `seq` and `txid` come from the database.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = changes)]
pub struct NewChange {
    pub collection: String,
    pub record_id: String,
    pub version: i64,
    pub operation: String,
    pub principal: String,
    pub changed_at: NaiveDateTime,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = leases)]
pub struct LeaseRow {
    pub collection: String,
    pub record_id: String,
    pub token_sha256: String,
    pub holder: String,
    pub acquired_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub struct IdempotencyRow {
    pub principal: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub completed: bool,
    pub collection: String,
    pub record_id: Option<String>,
    pub response_body: Option<String>,
    pub created_at: NaiveDateTime,
}

/// Returns the current time truncated to microseconds, the precision both
/// back ends store, so that a value read back equals the value written.
pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Serializes record fields for the `data` column.
///
/// # Errors
///
/// [`StorageError::Corrupt`] if serialization fails, which a map of JSON
/// values with string keys does not do.
pub fn encode_fields(fields: &Fields) -> Result<String, StorageError> {
    serde_json::to_string(fields).map_err(|error| StorageError::Corrupt(format!("record data cannot be serialized: {error}")))
}

fn decode_fields(text: &str) -> Result<Fields, StorageError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(StorageError::Corrupt("record data is not a JSON object".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(data: &str, deleted: bool) -> RecordRow {
        let at = DateTime::from_timestamp(1_700_000_000, 123_000).unwrap().naive_utc();
        RecordRow {
            collection: "notes".into(),
            id: "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b".into(),
            version: 3,
            data: data.into(),
            deleted,
            created_at: at,
            updated_at: at,
            created_by: "alice".into(),
            updated_by: "bob".into(),
        }
    }

    #[test]
    fn wire_text_equals_the_parsed_wire_form() {
        for data in [r#"{"title":"a","nested":{"x":[1,2]}}"#, "{}", r#"{"text":"a } b"}"#] {
            let row = row(data, false);
            let spliced: Value = serde_json::from_str(&row.wire_text().unwrap()).unwrap();
            assert_eq!(spliced, to_wire(&row.meta().unwrap(), &row.fields().unwrap()), "{data}");
        }
    }

    #[test]
    fn wire_text_of_tombstone_has_no_fields() {
        let spliced: Value = serde_json::from_str(&row(r#"{"title":"a"}"#, true).wire_text().unwrap()).unwrap();
        assert_eq!(spliced["deleted"], json!(true));
        assert_eq!(spliced.get("title"), None);
    }
}

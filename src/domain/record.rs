//! The record wire form: the record's own fields plus the server-managed
//! members, and the rules for reading those members out of a request body.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::RecordId;

/// Server-managed members. In a request body they are ignored, except
/// `version` (the expected version) and `id` (must equal the URL's id).
/// `deleted` marks a tombstone, so a live record must never carry it.
pub const RESERVED_MEMBERS: [&str; 7] = ["id", "version", "created_at", "updated_at", "created_by", "updated_by", "deleted"];

/// A record's user fields: the JSON object without reserved members.
pub type Fields = Map<String, Value>;

/// The kind of a committed write, as stored in revisions and the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Created,
    Updated,
    Deleted,
    Restored,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Restored => "restored",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "created" => Some(Self::Created),
            "updated" => Some(Self::Updated),
            "deleted" => Some(Self::Deleted),
            "restored" => Some(Self::Restored),
            _ => None,
        }
    }
}

/// The server-managed part of a record or revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordMeta {
    pub id: RecordId,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
    pub updated_by: String,
    pub deleted: bool,
}

/// Formats a timestamp the way every response shows it: RFC 3339, UTC,
/// microseconds.
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Builds the wire form. A tombstone carries only the server-managed members
/// and `deleted: true`.
pub fn to_wire(meta: &RecordMeta, fields: &Fields) -> Value {
    let mut object = if meta.deleted { Map::new() } else { fields.clone() };
    object.insert("id".into(), Value::String(meta.id.to_string()));
    object.insert("version".into(), Value::from(meta.version));
    object.insert("created_at".into(), Value::String(format_timestamp(meta.created_at)));
    object.insert("updated_at".into(), Value::String(format_timestamp(meta.updated_at)));
    object.insert("created_by".into(), Value::String(meta.created_by.clone()));
    object.insert("updated_by".into(), Value::String(meta.updated_by.clone()));
    if meta.deleted {
        object.insert("deleted".into(), Value::Bool(true));
    }
    Value::Object(object)
}

/// A request body that cannot be read as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("the body's id must be a UUID string")]
    InvalidId,
    #[error("the body's id {body} does not match the id {url} in the URL")]
    IdMismatch { body: String, url: String },
    #[error("the body's version must be an integer from 1 to 9223372036854775807")]
    InvalidVersion,
}

/// A request body split into user fields and the members that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordBody {
    pub fields: Fields,
    pub id: Option<RecordId>,
    pub version: Option<i64>,
}

/// Splits a body into fields, `id` and `version`, dropping the other
/// server-managed members. `url_id` is the id from the URL, when there is one.
///
/// # Errors
///
/// A body that is not an object, an id that is not a UUID or differs from the
/// URL's, or a version that is not a positive 64-bit integer. `version: null`
/// counts as absent.
pub fn split_body(body: Value, url_id: Option<&RecordId>) -> Result<RecordBody, BodyError> {
    let Value::Object(mut fields) = body else {
        return Err(BodyError::NotAnObject);
    };

    let id = match fields.remove("id") {
        None => None,
        Some(Value::String(text)) => Some(RecordId::parse(&text).map_err(|_| BodyError::InvalidId)?),
        Some(_) => return Err(BodyError::InvalidId),
    };
    if let (Some(body_id), Some(url_id)) = (id, url_id)
        && body_id != *url_id
    {
        return Err(BodyError::IdMismatch { body: body_id.to_string(), url: url_id.to_string() });
    }

    let version = match fields.remove("version") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().filter(|v| *v >= 1).ok_or(BodyError::InvalidVersion)?),
    };

    strip_reserved(&mut fields);
    Ok(RecordBody { fields, id, version })
}

/// Removes every server-managed member.
pub fn strip_reserved(fields: &mut Fields) {
    for member in RESERVED_MEMBERS {
        fields.remove(member);
    }
}

/// Unwraps a JSON object literal into fields, for tests.
#[cfg(test)]
pub(crate) fn test_fields(value: Value) -> Fields {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn split_body_drops_server_members() {
        let body = json!({"title": "a", "version": 3, "created_at": "x", "updated_by": "y"});
        let split = split_body(body, None).unwrap();
        assert_eq!(Value::Object(split.fields), json!({"title": "a"}));
        assert_eq!(split.version, Some(3));
        assert_eq!(split.id, None);
    }

    #[test]
    fn split_body_checks_id_against_url() {
        let url_id = RecordId::generate();
        let other = RecordId::generate();
        let same = split_body(json!({"id": url_id.to_string()}), Some(&url_id)).unwrap();
        assert_eq!(same.id, Some(url_id));
        assert!(matches!(split_body(json!({"id": other.to_string()}), Some(&url_id)), Err(BodyError::IdMismatch { .. })));
        assert_eq!(split_body(json!({"id": 5}), None), Err(BodyError::InvalidId));
    }

    #[test]
    fn split_body_validates_version() {
        for bad in [json!(0), json!(-1), json!(1.5), json!("3"), json!(true)] {
            assert_eq!(split_body(json!({"version": bad}), None), Err(BodyError::InvalidVersion));
        }
        assert_eq!(split_body(json!({"version": null}), None).unwrap().version, None);
        assert_eq!(split_body(json!([]), None), Err(BodyError::NotAnObject));
    }
}

//! Validated collection names and record ids.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use uuid::Uuid;

/// Maximum length of a collection name, in bytes.
pub const MAX_COLLECTION_NAME_LEN: usize = 63;

/// A user collection name: `^[a-z][a-z0-9_-]{0,62}$`.
///
/// Names that start with `_` belong to system endpoints and never parse.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CollectionName(String);

/// The reason a string is not a valid collection name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCollectionName {
    #[error("collection name is empty")]
    Empty,
    #[error("collection name is longer than {MAX_COLLECTION_NAME_LEN} bytes")]
    TooLong,
    #[error("collection name must start with a lowercase letter")]
    BadStart,
    #[error("collection name may contain only lowercase letters, digits, '_' and '-'")]
    BadCharacter,
}

impl CollectionName {
    pub fn parse(name: &str) -> Result<Self, InvalidCollectionName> {
        let first = name.chars().next().ok_or(InvalidCollectionName::Empty)?;
        if name.len() > MAX_COLLECTION_NAME_LEN {
            return Err(InvalidCollectionName::TooLong);
        }
        if !first.is_ascii_lowercase() {
            return Err(InvalidCollectionName::BadStart);
        }
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if !name.chars().all(valid) {
            return Err(InvalidCollectionName::BadCharacter);
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CollectionName {
    type Err = InvalidCollectionName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A record id: a UUID, kept in its canonical lowercase hyphenated form so
/// that the same id always maps to the same stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(Uuid);

impl RecordId {
    /// Returns a new time-ordered id (UUIDv7), so ids sort by creation time.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(Self)
    }

    pub fn to_key(&self) -> String {
        self.0.hyphenated().to_string()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.hyphenated())
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_name_accepts_valid_names() {
        for name in ["a", "notes", "order-items", "x_1", &"a".repeat(63)] {
            assert!(CollectionName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn collection_name_rejects_invalid_names() {
        assert_eq!(CollectionName::parse(""), Err(InvalidCollectionName::Empty));
        assert_eq!(CollectionName::parse("_changes"), Err(InvalidCollectionName::BadStart));
        assert_eq!(CollectionName::parse("1abc"), Err(InvalidCollectionName::BadStart));
        assert_eq!(CollectionName::parse("Notes"), Err(InvalidCollectionName::BadStart));
        assert_eq!(CollectionName::parse("no tes"), Err(InvalidCollectionName::BadCharacter));
        assert_eq!(CollectionName::parse("notÉs"), Err(InvalidCollectionName::BadCharacter));
        assert_eq!(CollectionName::parse(&"a".repeat(64)), Err(InvalidCollectionName::TooLong));
    }

    #[test]
    fn record_id_is_canonical_lowercase() {
        let id = RecordId::parse("0190A0B2-7C3D-7E4F-8A9B-0C1D2E3F4A5B").unwrap();
        assert_eq!(id.to_key(), "0190a0b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b");
    }
}

//! Records as of versions this instance has committed or read, so that a
//! write based on one of them can skip reading the record first.
//!
//! A version of a record never changes once committed: every write moves
//! the record to a new version, and a row is never removed. So a row found
//! here for the version a write is based on is exactly what a read would
//! return while that version is current, and the write's conditional
//! update still checks that it is. Only committed rows may go in: a version
//! from a transaction that rolled back could be committed later with other
//! content.

use std::collections::HashMap;
use std::sync::Mutex;

use super::models::RecordRow;

/// Number of records kept. Past it, each new record evicts an arbitrary
/// one. A row contains the record's JSON text, so this bounds the memory
/// to that many records.
const CAPACITY: usize = 16_384;

#[derive(Default)]
pub struct RecentVersions {
    rows: Mutex<HashMap<(String, String), RecordRow>>,
}

impl RecentVersions {
    /// Keeps `row` unless a newer version of its record is kept already.
    pub fn remember(&self, row: &RecordRow) {
        let Ok(mut rows) = self.rows.lock() else { return };
        let key = (row.collection.clone(), row.id.clone());
        if rows.get(&key).is_some_and(|kept| kept.version >= row.version) {
            return;
        }
        if rows.len() >= CAPACITY && !rows.contains_key(&key) {
            let evicted = rows.keys().next().cloned();
            if let Some(evicted) = evicted {
                rows.remove(&evicted);
            }
        }
        rows.insert(key, row.clone());
    }

    /// Returns the record as of `version`, if that is the version kept.
    pub fn recall(&self, collection: &str, id: &str, version: i64) -> Option<RecordRow> {
        let rows = self.rows.lock().ok()?;
        rows.get(&(collection.to_owned(), id.to_owned())).filter(|row| row.version == version).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, version: i64) -> RecordRow {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap().naive_utc();
        RecordRow {
            collection: "notes".to_owned(),
            id: id.to_owned(),
            version,
            data: format!(r#"{{"v":{version}}}"#),
            deleted: false,
            created_at: at,
            updated_at: at,
            created_by: "ana".to_owned(),
            updated_by: "ana".to_owned(),
        }
    }

    #[test]
    fn recalls_only_the_newest_version_kept() {
        let recent = RecentVersions::default();
        recent.remember(&row("a", 3));
        recent.remember(&row("a", 2));

        assert_eq!(recent.recall("notes", "a", 3).map(|kept| kept.data), Some(r#"{"v":3}"#.to_owned()));
        assert!(recent.recall("notes", "a", 2).is_none());
        assert!(recent.recall("notes", "b", 3).is_none());
        assert!(recent.recall("tasks", "a", 3).is_none());
    }

    #[test]
    fn stays_within_its_capacity() {
        let recent = RecentVersions::default();
        for n in 0..CAPACITY + 10 {
            recent.remember(&row(&n.to_string(), 1));
        }

        assert_eq!(recent.rows.lock().unwrap().len(), CAPACITY);
        assert!(recent.recall("notes", &(CAPACITY + 9).to_string(), 1).is_some());
    }
}

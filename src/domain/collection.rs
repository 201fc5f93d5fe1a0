//! Per-collection rules: the JSON Schema records must satisfy, how stale
//! writes are handled, and how much history is kept.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::CollectionName;
use crate::auth::Principal;
use super::record::Fields;

/// The handling of a write based on a version that is no longer current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergePolicy {
    /// Every stale write is a conflict.
    #[default]
    Strict,
    /// A stale write is committed when the fields it changed and the fields
    /// changed by others since its base do not overlap.
    Fields,
}

/// How a collection uses edit leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// No leases: the lease endpoints answer 404.
    Off,
    /// Leases are shown and pushed; writes are guarded by versions only.
    #[default]
    Advisory,
    /// A write to a record with an active lease needs the holder's
    /// `Lease-Token`.
    Required,
}

/// Default time a lease lasts when the client asks for no other.
pub const DEFAULT_LEASE_TTL_SECONDS: u64 = 60;

/// What a request does with a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    BreakLeases,
}

/// One schema violation: where in the record and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchemaError {
    /// JSON Pointer into the record's fields; empty for the record itself.
    pub path: String,
    pub message: String,
}

/// The rules of one collection. Collections that are not declared in the
/// configuration get [`CollectionPolicy::default`].
#[derive(Clone)]
pub struct CollectionPolicy {
    pub merge: MergePolicy,
    /// JSON Pointers whose changes never conflict; the latest write wins.
    pub last_writer_wins: Vec<String>,
    /// Revisions kept per record, the newest ones; `None` keeps all.
    pub keep_revisions: Option<i64>,
    /// Whether `If-Match: *` may overwrite whatever version is current.
    pub allow_unconditional_writes: bool,
    /// The compiled schema, when the collection has one.
    pub schema: Option<Arc<jsonschema::Validator>>,
    /// Roles that may read, write and break leases; `None` admits every
    /// authenticated principal, and `"*"` in a list does too. They apply
    /// only when authentication is configured.
    pub read: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub break_leases: Option<Vec<String>>,
    pub leases: LeaseMode,
    /// Seconds a lease lasts unless the client asks for less; clients may
    /// ask for up to ten times as long.
    pub lease_ttl_seconds: u64,
}

impl Default for CollectionPolicy {
    fn default() -> Self {
        Self {
            merge: MergePolicy::default(),
            last_writer_wins: Vec::new(),
            keep_revisions: None,
            allow_unconditional_writes: false,
            schema: None,
            read: None,
            write: None,
            break_leases: None,
            leases: LeaseMode::default(),
            lease_ttl_seconds: DEFAULT_LEASE_TTL_SECONDS,
        }
    }
}

impl std::fmt::Debug for CollectionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionPolicy")
            .field("merge", &self.merge)
            .field("last_writer_wins", &self.last_writer_wins)
            .field("keep_revisions", &self.keep_revisions)
            .field("allow_unconditional_writes", &self.allow_unconditional_writes)
            .field("schema", &self.schema.is_some())
            .field("read", &self.read)
            .field("write", &self.write)
            .field("break_leases", &self.break_leases)
            .field("leases", &self.leases)
            .field("lease_ttl_seconds", &self.lease_ttl_seconds)
            .finish()
    }
}

impl CollectionPolicy {
    /// Checks a record's fields against the collection's schema.
    ///
    /// # Errors
    ///
    /// Every violation the validator reports, with JSON Pointer paths.
    pub fn validate(&self, fields: &Fields) -> Result<(), Vec<SchemaError>> {
        let Some(schema) = &self.schema else {
            return Ok(());
        };
        let instance = Value::Object(fields.clone());
        let mut errors: Vec<SchemaError> = schema
            .iter_errors(&instance)
            .map(|error| SchemaError { path: error.instance_path().as_str().to_owned(), message: error.to_string() })
            .collect();
        // Sorted so that the same record always gets the same report.
        errors.sort_by(|a, b| a.path.cmp(&b.path).then_with(|| a.message.cmp(&b.message)));
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// `true` when `principal` may use the collection for `access`. With
    /// authentication off everything is allowed.
    pub fn allows(&self, principal: &Principal, access: Access) -> bool {
        if !principal.authenticated {
            return true;
        }
        // Without its own list, breaking leases is open to writers.
        let roles = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
            Access::BreakLeases if self.break_leases.is_some() => &self.break_leases,
            Access::BreakLeases => &self.write,
        };
        principal.has_any_role(roles.as_deref())
    }

    /// `true` when changes at `path` never conflict.
    pub fn is_last_writer_wins(&self, path: &str) -> bool {
        self.last_writer_wins.iter().any(|lww| path == lww || (path.starts_with(lww.as_str()) && path.as_bytes().get(lww.len()) == Some(&b'/')))
    }
}

/// The configured collections. When none is declared, every valid name is
/// a schemaless collection with the default rules; once one is declared,
/// the others do not exist.
#[derive(Debug, Clone, Default)]
pub struct Collections {
    declared: BTreeMap<CollectionName, Arc<CollectionPolicy>>,
    default: Arc<CollectionPolicy>,
}

impl Collections {
    pub fn new(declared: BTreeMap<CollectionName, CollectionPolicy>) -> Self {
        Self {
            declared: declared.into_iter().map(|(name, policy)| (name, Arc::new(policy))).collect(),
            default: Arc::new(CollectionPolicy::default()),
        }
    }

    /// Returns the rules of `name`, or `None` when the collection does not
    /// exist.
    pub fn get(&self, name: &CollectionName) -> Option<Arc<CollectionPolicy>> {
        if self.declared.is_empty() {
            return Some(self.default.clone());
        }
        self.declared.get(name).cloned()
    }

    pub fn declared(&self) -> impl Iterator<Item = (&CollectionName, &Arc<CollectionPolicy>)> {
        self.declared.iter()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::record::test_fields as fields;

    #[test]
    fn undeclared_collections_exist_only_without_declarations() {
        let notes = CollectionName::parse("notes").unwrap();
        let tasks = CollectionName::parse("tasks").unwrap();
        assert!(Collections::default().get(&notes).is_some());

        let declared = Collections::new(BTreeMap::from([(notes.clone(), CollectionPolicy::default())]));
        assert!(declared.get(&notes).is_some());
        assert!(declared.get(&tasks).is_none());
    }

    #[test]
    fn validate_reports_pointer_paths() {
        let schema = json!({"type": "object", "properties": {"title": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["title"]});
        let policy = CollectionPolicy { schema: Some(Arc::new(jsonschema::validator_for(&schema).unwrap())), ..Default::default() };

        assert!(policy.validate(&fields(json!({"title": "a"}))).is_ok());
        let errors = policy.validate(&fields(json!({"title": 5, "tags": ["x", 1]}))).unwrap_err();
        let paths: Vec<_> = errors.iter().map(|error| error.path.as_str()).collect();
        assert_eq!(paths, vec!["/tags/1", "/title"]);
        let missing = policy.validate(&fields(json!({}))).unwrap_err();
        assert_eq!(missing[0].path, "");
    }

    #[test]
    fn last_writer_wins_covers_nested_paths() {
        let policy = CollectionPolicy { last_writer_wins: vec!["/viewed_at".into(), "/stats".into()], ..Default::default() };
        assert!(policy.is_last_writer_wins("/viewed_at"));
        assert!(policy.is_last_writer_wins("/stats/count"));
        assert!(!policy.is_last_writer_wins("/viewed_at_by"));
        assert!(!policy.is_last_writer_wins("/title"));
    }
}

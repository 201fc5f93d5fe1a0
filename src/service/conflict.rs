//! The body of a stale write's 409: the current record, what changed since
//! the writer's base version, and which fields both sides changed.

use serde_json::Value;

use super::ServiceError;
use super::records::Change;
use crate::domain::diff::{FieldConflict, RevisionSummary, three_way};
use crate::domain::patch::{apply_json_patch, apply_merge_patch};
use crate::domain::record::{Fields, to_wire};
use crate::domain::{ExpectedVersion, RecordMeta};
use crate::storage::models::{RecordRow, RevisionRow};
use crate::storage::{DbConnection, records};

#[derive(Debug, Clone, PartialEq)]
pub struct ConflictReport {
    /// The current record in wire form (a tombstone when deleted).
    pub current: Value,
    pub current_version: i64,
    pub expected_version: Option<i64>,
    /// Revisions after the expected version, oldest first.
    pub revisions_since: Vec<RevisionSummary>,
    pub conflicts: Vec<FieldConflict>,
    /// `false` when the base revision does not exist (a version that never
    /// was), so no field comparison was possible.
    pub base_available: bool,
    pub deleted: bool,
    /// `true` when `If-Match` named only weak tags, which never match.
    pub weak_tags_only: bool,
}

/// Builds the report for a write based on `expected` that found `current`.
pub fn build(conn: &mut DbConnection, current: &RecordRow, expected: &ExpectedVersion, change: &Change) -> Result<ConflictReport, ServiceError> {
    let meta = current.meta()?;
    let current_fields = current.fields()?;
    let base_version = expected.base_version().filter(|version| *version < current.version);

    let base = match base_version {
        Some(version) => records::find_revision(conn, &current.collection, &current.id, version)?,
        None => None,
    };
    let history = match base_version {
        Some(version) => records::revisions_after(conn, &current.collection, &current.id, version)?
            .iter()
            .map(summarize)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };

    let mut conflicts = Vec::new();
    if let Some(base) = base.as_ref().filter(|base| base.operation != "deleted")
        && !current.deleted
    {
        let base_fields = base.fields()?;
        let base_meta = RecordMeta { version: base.version, deleted: false, ..meta.clone() };
        if let Some(yours) = yours_from_base(&base_meta, &base_fields, change) {
            conflicts = three_way(
                &Value::Object(base_fields),
                &Value::Object(yours),
                &Value::Object(current_fields.clone()),
                &history,
            );
        }
    }

    Ok(ConflictReport {
        current: to_wire(&meta, &current_fields),
        current_version: current.version,
        expected_version: expected.base_version(),
        revisions_since: history,
        conflicts,
        base_available: base.is_some(),
        deleted: current.deleted,
        weak_tags_only: matches!(expected, ExpectedVersion::Never { .. }),
    })
}

/// Rebuilds the writer's record as if its change had been applied to its
/// base. A patch that does not apply to the base gives no comparison.
fn yours_from_base(base_meta: &RecordMeta, base: &Fields, change: &Change) -> Option<Fields> {
    match change {
        Change::Replace(fields) => Some(fields.clone()),
        Change::MergePatch(patch) => Some(apply_merge_patch(base, patch)),
        Change::JsonPatch(patch) => apply_json_patch(&to_wire(base_meta, base), patch).ok(),
        Change::Delete => None,
    }
}

pub fn summarize(revision: &RevisionRow) -> Result<RevisionSummary, ServiceError> {
    Ok(RevisionSummary {
        version: revision.version,
        operation: revision.operation.clone(),
        changed_by: revision.principal.clone(),
        changed_at: revision.created_at.and_utc(),
        changed_fields: revision.changed_fields()?,
    })
}

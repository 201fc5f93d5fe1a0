//! The body of a stale write's 409: the current record, what changed since
//! the writer's base version, and which fields both sides changed.

use serde_json::Value;

use super::ServiceError;
use super::records::Change;
use crate::domain::collection::{CollectionPolicy, MergePolicy};
use crate::domain::diff::{FieldConflict, RevisionSummary, apply_changes, three_way};
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

/// The outcome of a stale write.
pub enum Resolution {
    /// The write's changes, applied onto the current fields.
    Merged(Fields),
    Conflict(Box<ConflictReport>),
}

/// Decides a stale write. In a `merge = "fields"` collection a write whose
/// changes overlap no change made since its base is merged into the
/// current version. Any other stale write is a conflict.
pub fn resolve(
    conn: &mut DbConnection,
    current: &RecordRow,
    expected: &ExpectedVersion,
    change: &Change,
    policy: &CollectionPolicy,
) -> Result<Resolution, ServiceError> {
    let comparison = compare(conn, current, expected, change, policy)?;

    // Weak tags never match, so a write that named only weak tags is never
    // merged either.
    if policy.merge == MergePolicy::Fields
        && !current.deleted
        && !matches!(expected, ExpectedVersion::Never { .. })
        && comparison.conflicts.is_empty()
        && let (Some(base), Some(yours)) = (&comparison.base_fields, &comparison.yours)
        && let Some(Value::Object(merged)) =
            apply_changes(&Value::Object(base.clone()), &Value::Object(yours.clone()), &Value::Object(current.fields()?))
    {
        return Ok(Resolution::Merged(merged));
    }

    Ok(Resolution::Conflict(Box::new(comparison.into_report(current)?)))
}

/// Builds the report for a write based on `expected` that found `current`.
pub fn build(
    conn: &mut DbConnection,
    current: &RecordRow,
    expected: &ExpectedVersion,
    change: &Change,
    policy: &CollectionPolicy,
) -> Result<ConflictReport, ServiceError> {
    compare(conn, current, expected, change, policy)?.into_report(current)
}

/// The three-way comparison of a stale write, before it becomes a merge or
/// a report.
struct Comparison {
    expected: ExpectedVersion,
    base_fields: Option<Fields>,
    yours: Option<Fields>,
    history: Vec<RevisionSummary>,
    conflicts: Vec<FieldConflict>,
    base_available: bool,
}

fn compare(
    conn: &mut DbConnection,
    current: &RecordRow,
    expected: &ExpectedVersion,
    change: &Change,
    policy: &CollectionPolicy,
) -> Result<Comparison, ServiceError> {
    let meta = current.meta()?;
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

    let mut comparison = Comparison {
        expected: expected.clone(),
        base_fields: None,
        yours: None,
        history,
        conflicts: Vec::new(),
        base_available: base.is_some(),
    };
    let Some(base) = base.filter(|base| base.operation != "deleted") else {
        return Ok(comparison);
    };
    if current.deleted {
        return Ok(comparison);
    }

    let base_fields = base.fields()?;
    let base_meta = RecordMeta { version: base.version, deleted: false, ..meta };
    if let Some(yours) = yours_from_base(&base_meta, &base_fields, change)? {
        comparison.conflicts = three_way(
            &Value::Object(base_fields.clone()),
            &Value::Object(yours.clone()),
            &Value::Object(current.fields()?),
            &comparison.history,
        )
        .into_iter()
        .filter(|conflict| !policy.is_last_writer_wins(&conflict.path))
        .collect();
        comparison.yours = Some(yours);
    }
    comparison.base_fields = Some(base_fields);
    Ok(comparison)
}

impl Comparison {
    fn into_report(self, current: &RecordRow) -> Result<ConflictReport, ServiceError> {
        Ok(ConflictReport {
            current: to_wire(&current.meta()?, &current.fields()?),
            current_version: current.version,
            expected_version: self.expected.base_version(),
            revisions_since: self.history,
            conflicts: self.conflicts,
            base_available: self.base_available,
            deleted: current.deleted,
            weak_tags_only: matches!(self.expected, ExpectedVersion::Never { .. }),
        })
    }
}

/// Rebuilds the writer's record as if its change had been applied to its
/// base. A JSON Patch with `test` operations is not rebuilt: its tests
/// assert the current state, which has moved on, so it is never merged.
fn yours_from_base(base_meta: &RecordMeta, base: &Fields, change: &Change) -> Result<Option<Fields>, ServiceError> {
    Ok(match change {
        Change::Replace(fields) => Some(fields.clone()),
        Change::MergePatch(patch) => Some(apply_merge_patch(base, patch)),
        Change::JsonPatch(patch) if patch.0.iter().any(|operation| matches!(operation, json_patch::PatchOperation::Test(_))) => None,
        Change::JsonPatch(patch) => apply_json_patch(&to_wire(base_meta, base), patch).ok(),
        Change::Delete | Change::Restore(_) => None,
    })
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

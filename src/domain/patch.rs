//! Patch application: JSON Merge Patch (RFC 7396) and JSON Patch (RFC 6902).
//!
//! Both produce the record's new fields from its current fields. Neither
//! touches the input on failure, so a failed patch changes nothing.

use json_patch::{Patch, PatchOperation};
use serde_json::Value;

use super::record::{Fields, RESERVED_MEMBERS, strip_reserved};

/// A JSON Patch document that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("JSON Patch operation {index} changes the server-managed member or whole document at {path:?}; only \"test\" may refer to it")]
    ReservedMember { index: usize, path: String },
    #[error("JSON Patch operation {index} failed at {path}: {reason}")]
    Failed { index: usize, path: String, reason: String },
    #[error("the patched record is not a JSON object")]
    NotAnObject,
}

/// Applies a merge patch: members set to `null` are removed, nested objects
/// are merged member by member, and every other value (arrays included)
/// replaces the old one whole.
pub fn apply_merge_patch(current: &Fields, patch: &Fields) -> Fields {
    let mut target = Value::Object(current.clone());
    let mut patch = patch.clone();
    strip_reserved(&mut patch);

    json_patch::merge(&mut target, &Value::Object(patch));

    match target {
        Value::Object(fields) => fields,
        // Merging an object patch into an object always yields an object.
        _ => Fields::new(),
    }
}

/// Applies a JSON Patch to the record's wire form, so that `test` can check
/// server-managed members such as `/version`. Other operations on those
/// members are rejected; the server-managed members are dropped from the
/// result.
///
/// # Errors
///
/// An operation on a server-managed member, any failing operation (the patch
/// is all or nothing), or a result that is not an object.
pub fn apply_json_patch(wire: &Value, patch: &Patch) -> Result<Fields, PatchError> {
    check_written_paths(patch)?;

    // The patch runs on a copy, which is dropped on failure; that makes the
    // whole patch atomic without the library's undo step.
    let mut document = wire.clone();
    json_patch::patch_unsafe(&mut document, &patch.0).map_err(|error| PatchError::Failed {
        index: error.operation,
        path: error.path.as_str().to_owned(),
        reason: error.kind.to_string(),
    })?;

    match document {
        Value::Object(mut fields) => {
            strip_reserved(&mut fields);
            Ok(fields)
        }
        _ => Err(PatchError::NotAnObject),
    }
}

/// Rejects a patch that writes to a server-managed member or to the whole
/// document, whatever the record it is applied to.
///
/// # Errors
///
/// [`PatchError::ReservedMember`] naming the first such operation.
pub fn check_written_paths(patch: &Patch) -> Result<(), PatchError> {
    for (index, operation) in patch.0.iter().enumerate() {
        for path in written_paths(operation) {
            // An operation on the root ("") would replace the managed
            // members along with everything else.
            let top = path.split('/').nth(1).unwrap_or("");
            if path.is_empty() || RESERVED_MEMBERS.contains(&top) {
                return Err(PatchError::ReservedMember { index, path: path.to_owned() });
            }
        }
    }
    Ok(())
}

/// Returns the pointers an operation writes to or moves from.
fn written_paths(operation: &PatchOperation) -> Vec<&str> {
    match operation {
        PatchOperation::Add(op) => vec![op.path.as_str()],
        PatchOperation::Remove(op) => vec![op.path.as_str()],
        PatchOperation::Replace(op) => vec![op.path.as_str()],
        PatchOperation::Move(op) => vec![op.from.as_str(), op.path.as_str()],
        PatchOperation::Copy(op) => vec![op.path.as_str()],
        PatchOperation::Test(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::record::test_fields as fields;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let current = fields(json!({"a": "b", "c": {"d": "e", "f": "g"}, "list": [1, 2], "keep": 1}));
        let patch = fields(json!({"a": "z", "c": {"f": null, "h": 1}, "list": [3], "new": {"x": null}}));
        let result = apply_merge_patch(&current, &patch);
        assert_eq!(
            Value::Object(result),
            json!({"a": "z", "c": {"d": "e", "h": 1}, "list": [3], "keep": 1, "new": {}})
        );
    }

    #[test]
    fn merge_patch_null_removes_and_ignores_missing() {
        let current = fields(json!({"a": 1}));
        let result = apply_merge_patch(&current, &fields(json!({"a": null, "b": null})));
        assert_eq!(Value::Object(result), json!({}));
    }

    #[test]
    fn merge_patch_ignores_server_members() {
        let current = fields(json!({"a": 1}));
        let result = apply_merge_patch(&current, &fields(json!({"created_by": "mallory", "b": 2})));
        assert_eq!(Value::Object(result), json!({"a": 1, "b": 2}));
    }

    fn patch(value: Value) -> Patch {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn json_patch_applies_and_drops_server_members() {
        let wire = json!({"id": "x", "version": 3, "tags": ["a"], "title": "t"});
        let ops = patch(json!([
            {"op": "test", "path": "/version", "value": 3},
            {"op": "add", "path": "/tags/-", "value": "b"},
            {"op": "remove", "path": "/title"}
        ]));
        assert_eq!(Value::Object(apply_json_patch(&wire, &ops).unwrap()), json!({"tags": ["a", "b"]}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let wire = json!({"a": 1});
        let ops = patch(json!([
            {"op": "replace", "path": "/a", "value": 2},
            {"op": "remove", "path": "/missing"}
        ]));
        assert_eq!(
            apply_json_patch(&wire, &ops),
            Err(PatchError::Failed { index: 1, path: "/missing".into(), reason: "path is invalid".into() })
        );
        assert_eq!(wire, json!({"a": 1}));
    }

    #[test]
    fn json_patch_rejects_writes_to_server_members() {
        let wire = json!({"version": 1});
        let ops = patch(json!([{"op": "replace", "path": "/version", "value": 9}]));
        assert_eq!(apply_json_patch(&wire, &ops), Err(PatchError::ReservedMember { index: 0, path: "/version".into() }));
    }

    #[test]
    fn json_patch_test_failure_is_reported() {
        let ops = patch(json!([{"op": "test", "path": "/a", "value": 2}]));
        assert!(matches!(apply_json_patch(&json!({"a": 1}), &ops), Err(PatchError::Failed { index: 0, .. })));
    }

    #[test]
    fn json_patch_rejects_whole_document_writes() {
        let ops = patch(json!([{"op": "replace", "path": "", "value": {"version": 9}}]));
        assert_eq!(apply_json_patch(&json!({"a": 1}), &ops), Err(PatchError::ReservedMember { index: 0, path: String::new() }));
    }

    #[test]
    fn json_patch_result_must_be_object() {
        let ops = patch(json!([{"op": "copy", "from": "/a", "path": ""}]));
        assert!(apply_json_patch(&json!({"a": [1]}), &ops).is_err());
    }
}

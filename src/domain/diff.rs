//! Leaf-level comparison of record fields and the three-way comparison that
//! a 409 reports.
//!
//! Paths are JSON Pointers. Objects are compared member by member; any other
//! value, arrays included, is one leaf. A member added or removed counts at
//! its own path.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Returns the pointers at which `after` differs from `before`, sorted.
pub fn changed_paths(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_changes(&mut String::new(), Some(before), Some(after), &mut out);
    out
}

fn collect_changes(prefix: &mut String, before: Option<&Value>, after: Option<&Value>, out: &mut Vec<String>) {
    match (before, after) {
        (Some(Value::Object(old)), Some(Value::Object(new))) => {
            let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
            for key in keys {
                let length = prefix.len();
                prefix.push('/');
                prefix.push_str(&escape_token(key));
                collect_changes(prefix, old.get(key), new.get(key), out);
                prefix.truncate(length);
            }
        }
        (old, new) if old != new => out.push(prefix.clone()),
        _ => {}
    }
}

/// Escapes one reference token of a JSON Pointer (RFC 6901).
pub fn escape_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// `true` when one path equals the other or contains it.
pub fn overlaps(a: &str, b: &str) -> bool {
    let nested = |outer: &str, inner: &str| inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/';
    a == b || nested(a, b) || nested(b, a)
}

/// Applies the changes `yours` made relative to `base` onto `current`: each
/// changed path takes your value, or is removed where you removed it.
/// Returns `None` when a change cannot be placed because a parent in
/// `current` is no longer an object.
pub fn apply_changes(base: &Value, yours: &Value, current: &Value) -> Option<Value> {
    let mut result = current.clone();
    for path in changed_paths(base, yours) {
        match yours.pointer(&path) {
            Some(value) => set_at(&mut result, &path, value.clone())?,
            None => remove_at(&mut result, &path),
        }
    }
    Some(result)
}

fn tokens(path: &str) -> Vec<String> {
    path.split('/').skip(1).map(|token| token.replace("~1", "/").replace("~0", "~")).collect()
}

/// Sets the member at `path`, creating missing parent objects.
fn set_at(target: &mut Value, path: &str, value: Value) -> Option<()> {
    let tokens = tokens(path);
    let (last, parents) = tokens.split_last()?;
    let mut node = target;
    for token in parents {
        node = node.as_object_mut()?.entry(token.clone()).or_insert_with(|| Value::Object(Default::default()));
    }
    node.as_object_mut()?.insert(last.clone(), value);
    Some(())
}

/// Removes the member at `path`; a path that is already gone is fine.
fn remove_at(target: &mut Value, path: &str) {
    let tokens = tokens(path);
    let Some((last, parents)) = tokens.split_last() else { return };
    let mut node = target;
    for token in parents {
        match node.get_mut(token.as_str()) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(object) = node.as_object_mut() {
        object.remove(last.as_str());
    }
}

/// The changes of one committed revision, for conflict reports.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RevisionSummary {
    pub version: i64,
    pub operation: String,
    pub changed_by: String,
    #[serde(serialize_with = "serialize_timestamp")]
    pub changed_at: DateTime<Utc>,
    pub changed_fields: Vec<String>,
}

/// One field changed both by the writer and by someone else since the base.
/// A value that is absent on one side is omitted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldConflict {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yours: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub theirs: Option<Value>,
    pub changed_by: Option<String>,
    #[serde(serialize_with = "serialize_optional_timestamp")]
    pub changed_at: Option<DateTime<Utc>>,
}

/// Compares base, yours and theirs (the current record). A path is in
/// conflict when both sides changed it, or one changed a member inside what
/// the other changed, and the two results differ. `history` lists the
/// revisions after the base, oldest first, and names who last touched each
/// conflicting path.
pub fn three_way(base: &Value, yours: &Value, theirs: &Value, history: &[RevisionSummary]) -> Vec<FieldConflict> {
    let mine = changed_paths(base, yours);
    let others = changed_paths(base, theirs);

    let mut paths = BTreeSet::new();
    for p in &mine {
        for q in others.iter().filter(|q| overlaps(p, q)) {
            let path = if p.len() <= q.len() { p } else { q };
            if yours.pointer(path) != theirs.pointer(path) {
                paths.insert(path.clone());
            }
        }
    }

    paths
        .into_iter()
        .map(|path| {
            let last_change = history
                .iter()
                .rev()
                .find(|revision| revision.changed_fields.iter().any(|changed| overlaps(changed, &path)));
            FieldConflict {
                base: base.pointer(&path).cloned(),
                yours: yours.pointer(&path).cloned(),
                theirs: theirs.pointer(&path).cloned(),
                changed_by: last_change.map(|revision| revision.changed_by.clone()),
                changed_at: last_change.map(|revision| revision.changed_at),
                path,
            }
        })
        .collect()
}

fn serialize_timestamp<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&super::record::format_timestamp(*at))
}

fn serialize_optional_timestamp<S: serde::Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize_timestamp(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn changed_paths_reports_leaves_and_members() {
        let before = json!({"a": 1, "b": {"c": 2, "d": 3}, "list": [1], "gone": {"x": 1}, "same": "s"});
        let after = json!({"a": 2, "b": {"c": 2, "d": 4, "e": 5}, "list": [1, 2], "same": "s", "new": null});
        assert_eq!(changed_paths(&before, &after), vec!["/a", "/b/d", "/b/e", "/gone", "/list", "/new"]);
    }

    #[test]
    fn changed_paths_escapes_tokens() {
        assert_eq!(changed_paths(&json!({}), &json!({"a/b~c": 1})), vec!["/a~1b~0c"]);
    }

    #[test]
    fn overlap_respects_segment_boundaries() {
        assert!(overlaps("/a", "/a"));
        assert!(overlaps("/a", "/a/b"));
        assert!(overlaps("/a/b", "/a"));
        assert!(!overlaps("/a", "/ab"));
        assert!(!overlaps("/a/b", "/a/c"));
    }

    fn revision(version: i64, by: &str, fields: &[&str]) -> RevisionSummary {
        RevisionSummary {
            version,
            operation: "updated".into(),
            changed_by: by.into(),
            changed_at: DateTime::from_timestamp(1_700_000_000 + version, 0).unwrap(),
            changed_fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn three_way_reports_only_overlapping_different_changes() {
        let base = json!({"title": "a", "body": "b", "tags": ["x"], "n": 1});
        let yours = json!({"title": "mine", "body": "b", "tags": ["x", "y"], "n": 2});
        let theirs = json!({"title": "theirs", "body": "changed", "tags": ["x", "y"], "n": 1});
        let history = [revision(2, "bob", &["/body"]), revision(3, "carol", &["/tags", "/title"])];

        let conflicts = three_way(&base, &yours, &theirs, &history);

        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(conflicts[0].path, "/title");
        assert_eq!(conflicts[0].base, Some(json!("a")));
        assert_eq!(conflicts[0].yours, Some(json!("mine")));
        assert_eq!(conflicts[0].theirs, Some(json!("theirs")));
        assert_eq!(conflicts[0].changed_by.as_deref(), Some("carol"));
    }

    #[test]
    fn three_way_reports_nested_against_removed_parent() {
        let base = json!({"address": {"city": "A", "zip": "1"}});
        let yours = json!({"address": {"city": "B", "zip": "1"}});
        let theirs = json!({});
        let conflicts = three_way(&base, &yours, &theirs, &[revision(2, "bob", &["/address"])]);

        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].path, "/address");
        assert_eq!(conflicts[0].theirs, None);
        assert_eq!(conflicts[0].yours, Some(json!({"city": "B", "zip": "1"})));
        assert_eq!(conflicts[0].changed_by.as_deref(), Some("bob"));
    }

    #[test]
    fn three_way_without_changes_has_no_conflicts() {
        let base = json!({"a": 1});
        assert!(three_way(&base, &base, &json!({"a": 2}), &[]).is_empty());
        assert!(three_way(&base, &json!({"a": 2}), &base, &[]).is_empty());
    }

    #[test]
    fn apply_changes_merges_disjoint_edits() {
        let base = json!({"title": "a", "address": {"city": "A", "zip": "1"}, "gone": 1, "tags": ["x"]});
        let yours = json!({"title": "a", "address": {"city": "B", "zip": "1"}, "tags": ["x"], "new": {"k": 1}});
        let current = json!({"title": "theirs", "address": {"city": "A", "zip": "2"}, "gone": 1, "tags": ["x", "y"]});

        let merged = apply_changes(&base, &yours, &current).unwrap();

        assert_eq!(merged, json!({"title": "theirs", "address": {"city": "B", "zip": "2"}, "tags": ["x", "y"], "new": {"k": 1}}));
    }

    #[test]
    fn apply_changes_creates_and_rejects_parents() {
        let base = json!({"a": {"b": 1}});
        let yours = json!({"a": {"b": 2}});
        assert_eq!(apply_changes(&base, &yours, &json!({})), Some(json!({"a": {"b": 2}})));
        assert_eq!(apply_changes(&base, &yours, &json!({"a": 5})), None);
    }

    proptest::proptest! {
        #[test]
        fn changed_paths_is_empty_only_for_equal_values(a in json_value(), b in json_value()) {
            let before = json!({"v": a});
            let after = json!({"v": b});
            proptest::prop_assert_eq!(changed_paths(&before, &after).is_empty(), before == after);
        }

        #[test]
        fn conflicts_are_symmetric_in_paths(a in json_value(), b in json_value(), c in json_value()) {
            let (base, yours, theirs) = (json!({"v": a}), json!({"v": b}), json!({"v": c}));
            let forward: Vec<String> = three_way(&base, &yours, &theirs, &[]).into_iter().map(|c| c.path).collect();
            let backward: Vec<String> = three_way(&base, &theirs, &yours, &[]).into_iter().map(|c| c.path).collect();
            proptest::prop_assert_eq!(forward, backward);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from), (0i64..4).prop_map(Value::from)];
        leaf.prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[ab]", inner, 0..3)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }
}

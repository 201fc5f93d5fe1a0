//! The `[collections.NAME]` sections: each becomes a compiled
//! [`CollectionPolicy`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::ConfigError;
use crate::domain::CollectionName;
use crate::domain::collection::{CollectionPolicy, Collections, DEFAULT_LEASE_TTL_SECONDS, LeaseMode, MergePolicy};
use crate::domain::record::RESERVED_MEMBERS;

/// One `[collections.NAME]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionFile {
    schema: Option<toml::Table>,
    schema_file: Option<PathBuf>,
    merge: Option<MergePolicy>,
    last_writer_wins: Option<Vec<String>>,
    keep_revisions: Option<i64>,
    allow_unconditional_writes: Option<bool>,
    read: Option<Vec<String>>,
    write: Option<Vec<String>>,
    break_leases: Option<Vec<String>>,
    leases: Option<LeaseMode>,
    lease_ttl_seconds: Option<u64>,
}

/// Builds the collections, compiling each schema once. `base_dir` is the
/// configuration file's folder, against which `schema_file` is resolved.
pub fn build(files: BTreeMap<String, CollectionFile>, base_dir: &Path) -> Result<Collections, ConfigError> {
    let mut declared = BTreeMap::new();
    for (raw_name, file) in files {
        let key = |member: &str| format!("collections.{raw_name}.{member}");
        let name = CollectionName::parse(&raw_name)
            .map_err(|error| ConfigError::Invalid { key: format!("collections.{raw_name}"), message: error.to_string() })?;

        let schema = match (file.schema, file.schema_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid { key: key("schema"), message: "set either schema or schema_file, not both".to_owned() });
            }
            (Some(table), None) => Some(compile_schema(table_to_json(table), &key("schema"))?),
            (None, Some(relative)) => {
                let path = base_dir.join(&relative);
                let text = std::fs::read_to_string(&path).map_err(|error| ConfigError::Invalid {
                    key: key("schema_file"),
                    message: format!("cannot read {}: {error}", path.display()),
                })?;
                let schema: Value = serde_json::from_str(&text).map_err(|error| ConfigError::Invalid {
                    key: key("schema_file"),
                    message: format!("{} is not valid JSON: {error}", path.display()),
                })?;
                Some(compile_schema(schema, &key("schema_file"))?)
            }
            (None, None) => None,
        };

        let last_writer_wins = file.last_writer_wins.unwrap_or_default();
        if let Some(bad) = last_writer_wins.iter().find(|pointer| !pointer.starts_with('/')) {
            return Err(ConfigError::Invalid {
                key: key("last_writer_wins"),
                message: format!("{bad:?} is not a JSON Pointer; write it as \"/field\""),
            });
        }
        if let Some(keep) = file.keep_revisions
            && keep < 1
        {
            return Err(ConfigError::Invalid { key: key("keep_revisions"), message: format!("must be at least 1, got {keep}") });
        }
        if file.lease_ttl_seconds == Some(0) {
            return Err(ConfigError::Invalid { key: key("lease_ttl_seconds"), message: "must be greater than 0".to_owned() });
        }

        let policy = CollectionPolicy {
            merge: file.merge.unwrap_or_default(),
            last_writer_wins,
            keep_revisions: file.keep_revisions,
            allow_unconditional_writes: file.allow_unconditional_writes.unwrap_or(false),
            schema,
            read: file.read,
            write: file.write,
            break_leases: file.break_leases,
            leases: file.leases.unwrap_or_default(),
            lease_ttl_seconds: file.lease_ttl_seconds.unwrap_or(DEFAULT_LEASE_TTL_SECONDS),
        };
        declared.insert(name, policy);
    }
    Ok(Collections::new(declared))
}

fn table_to_json(table: toml::Table) -> Value {
    serde_json::to_value(table).unwrap_or(Value::Null)
}

/// Compiles a schema after checking it declares no server-managed member.
fn compile_schema(schema: Value, key: &str) -> Result<Arc<jsonschema::Validator>, ConfigError> {
    let declared_members = ["properties", "required"].iter().flat_map(|keyword| match schema.get(keyword) {
        Some(Value::Object(properties)) => properties.keys().cloned().collect::<Vec<_>>(),
        Some(Value::Array(names)) => names.iter().filter_map(|name| name.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    });
    for member in declared_members {
        if RESERVED_MEMBERS.contains(&member.as_str()) {
            return Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: format!("the schema declares {member:?}, a member the server manages; remove it from the schema"),
            });
        }
    }

    let validator = jsonschema::validator_for(&schema)
        .map_err(|error| ConfigError::Invalid { key: key.to_owned(), message: format!("not a valid JSON Schema: {error}") })?;
    Ok(Arc::new(validator))
}

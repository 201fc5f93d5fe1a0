//! `POST /v1/_batch`: several writes, atomically or one by one.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{BodyType, JsonBody};
use super::response::{json_response, to_json};
use crate::auth::Principal;
use crate::domain::collection::Access;
use crate::domain::record::split_body;
use crate::domain::{CollectionName, ExpectedVersion, RecordId};
use crate::service::ServiceError;
use crate::service::batch::{self, AtomicOutcome, BatchItem, BatchOperation, ItemOutcome};
use crate::service::records::Change;

pub async fn run(state: web::Data<AppState>, principal: Principal, body: JsonBody) -> Result<HttpResponse, ApiError> {
    body.require(&[BodyType::Json])?;
    let (atomic, operations) = parse_envelope(body.value, state.settings.max_batch_operations)?;
    let items: Vec<_> = operations.into_iter().map(|operation| parse_operation(&state, &principal, operation)).collect();
    let total = items.len();

    if !atomic {
        let results = batch::run_each(&state.db, items, &principal.name).await;
        let results: Vec<Value> = results.into_iter().enumerate().map(|(index, result)| item_json(&state, index, result)).collect();
        return Ok(json_response(StatusCode::OK, to_json(&json!({"atomic": false, "results": results}))?, None));
    }

    match batch::run_atomic(&state.db, items, &principal.name).await? {
        AtomicOutcome::Committed(outcomes) => {
            let results: Vec<Value> = outcomes.into_iter().enumerate().map(|(index, outcome)| item_json(&state, index, Ok(outcome))).collect();
            Ok(json_response(StatusCode::OK, to_json(&json!({"atomic": true, "results": results}))?, None))
        }
        AtomicOutcome::RolledBack(failures) => {
            let failures: Vec<(StatusCode, Value)> =
                failures.into_iter().map(|(index, error)| failure_json(&state, index, error)).collect();
            let conflict = StatusCode::from_u16(state.settings.conflict_status).unwrap_or(StatusCode::CONFLICT);
            Err(ApiError::BatchFailed { status: batch_status(&failures, conflict), failures: failures.into_iter().map(|(_, body)| body).collect(), total })
        }
    }
}

/// Chooses the status of a failed atomic batch: the failures' common
/// status, or the conflict status (409, or 412 when configured) when they
/// differ and one is a version conflict, else the first one's.
fn batch_status(failures: &[(StatusCode, Value)], conflict: StatusCode) -> StatusCode {
    let first = failures.first().map(|(status, _)| *status).unwrap_or(conflict);
    if failures.iter().all(|(status, _)| *status == first) {
        return first;
    }
    if failures.iter().any(|(status, _)| *status == conflict) {
        return conflict;
    }
    first
}

fn parse_envelope(body: Value, max_operations: usize) -> Result<(bool, Vec<Value>), ApiError> {
    let invalid = |detail: String| ApiError::bad_request("invalid-body", detail);
    let Value::Object(mut envelope) = body else {
        return Err(invalid("The batch body must be an object with \"operations\" and optionally \"atomic\".".to_owned()));
    };

    let atomic = match envelope.remove("atomic") {
        None => false,
        Some(Value::Bool(atomic)) => atomic,
        Some(_) => return Err(invalid("\"atomic\" must be true or false.".to_owned())),
    };
    let operations = match envelope.remove("operations") {
        Some(Value::Array(operations)) if !operations.is_empty() => operations,
        _ => return Err(invalid("\"operations\" must be a non-empty array of operations.".to_owned())),
    };
    if let Some(unknown) = envelope.keys().next() {
        return Err(invalid(format!("Unknown batch member {unknown:?}; a batch has \"atomic\" and \"operations\".")));
    }
    if operations.len() > max_operations {
        return Err(ApiError::BatchTooLarge { limit: max_operations, count: operations.len() });
    }
    Ok((atomic, operations))
}

/// Parses one operation; its errors become that operation's result.
fn parse_operation(state: &AppState, principal: &Principal, operation: Value) -> Result<BatchItem, ServiceError> {
    let invalid = |detail: String| ServiceError::InvalidOperation(detail);
    let Value::Object(mut members) = operation else {
        return Err(invalid("an operation must be a JSON object".to_owned()));
    };

    let op = take_string(&mut members, "op")?;
    let raw_collection = take_string(&mut members, "collection")?;
    let collection = CollectionName::parse(&raw_collection).map_err(|error| invalid(format!("collection {raw_collection:?}: {error}")))?;
    let policy = state.collections.get(&collection).ok_or_else(|| ServiceError::CollectionNotFound { name: collection.to_string() })?;
    if !policy.allows(principal, Access::Write) {
        return Err(ServiceError::Forbidden { name: collection.to_string(), access: "write" });
    }
    let id = match members.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(RecordId::parse(&text).map_err(|_| invalid(format!("id {text:?} is not a UUID")))?),
        Some(_) => return Err(invalid("id must be a UUID string".to_owned())),
    };
    let version = match members.remove("version") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().filter(|v| *v >= 1).ok_or_else(|| invalid("version must be an integer from 1".to_owned()))?),
    };
    let required_id = || id.ok_or_else(|| invalid(format!("a {op} operation needs an id")));
    let lease_token = match members.remove("lease_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token),
        Some(_) => return Err(invalid("lease_token must be a string".to_owned())),
    };

    let operation = match op.as_str() {
        "create" => {
            if version.is_some() {
                return Err(invalid("a create operation takes no version".to_owned()));
            }
            let split = split_body(take_object(&mut members, "data")?, id.as_ref())?;
            BatchOperation::Create { id: id.or(split.id), fields: split.fields }
        }
        "update" | "replace" => {
            let id = required_id()?;
            let member = if op == "update" { "patch" } else { "data" };
            let split = split_body(take_object(&mut members, member)?, Some(&id))?;
            let expected = match (version, split.version) {
                (Some(a), Some(b)) if a != b => {
                    return Err(invalid(format!("the operation's version {a} and its {member}'s version {b} disagree")));
                }
                (Some(version), _) | (None, Some(version)) => Some(ExpectedVersion::Exactly(version)),
                (None, None) => None,
            };
            let change = if op == "update" { Change::MergePatch(split.fields) } else { Change::Replace(split.fields) };
            BatchOperation::Write { id, expected, change, lease_token }
        }
        "delete" => BatchOperation::Write { id: required_id()?, expected: version.map(ExpectedVersion::Exactly), change: Change::Delete, lease_token },
        other => return Err(invalid(format!("unknown op {other:?}; use create, update, replace or delete"))),
    };
    if let Some(unknown) = members.keys().next() {
        return Err(invalid(format!("unknown member {unknown:?} in a {op} operation")));
    }
    Ok(BatchItem { collection, policy, operation })
}

fn take_string(members: &mut Map<String, Value>, name: &str) -> Result<String, ServiceError> {
    match members.remove(name) {
        Some(Value::String(text)) => Ok(text),
        _ => Err(ServiceError::InvalidOperation(format!("{name} must be a string"))),
    }
}

fn take_object(members: &mut Map<String, Value>, name: &str) -> Result<Value, ServiceError> {
    match members.remove(name) {
        Some(value @ Value::Object(_)) => Ok(value),
        _ => Err(ServiceError::InvalidOperation(format!("{name} must be a JSON object"))),
    }
}

fn item_json(state: &AppState, index: usize, result: Result<ItemOutcome, ServiceError>) -> Value {
    match result {
        Ok(ItemOutcome::Created(record)) => json!({"index": index, "status": 201, "record": record.to_wire()}),
        Ok(ItemOutcome::Written(written)) if written.merged => {
            json!({"index": index, "status": 200, "record": written.record.to_wire(), "merged": true})
        }
        Ok(ItemOutcome::Written(written)) => json!({"index": index, "status": 200, "record": written.record.to_wire()}),
        Ok(ItemOutcome::Deleted) => json!({"index": index, "status": 204}),
        Err(error) => failure_json(state, index, error).1,
    }
}

fn failure_json(state: &AppState, index: usize, error: ServiceError) -> (StatusCode, Value) {
    let error = state.api_error(error);
    let (status, problem) = error.to_problem();
    if status.is_server_error() {
        tracing::error!(error = %error, source = ?std::error::Error::source(&error), index, "batch operation failed");
    }
    (status, json!({"index": index, "status": status.as_u16(), "problem": problem}))
}


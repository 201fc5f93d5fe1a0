//! Listing live records with filters, a sort and keyset or offset paging.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::records::snapshot;
use super::{ServiceError, cursor};
use crate::domain::CollectionName;
use crate::storage::records::{ListField, ListFilter, ListPosition, ListQuery};
use crate::storage::{Database, records};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 1000;
/// Maximum length of a field name in a filter or sort.
const MAX_FIELD_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub next_cursor: Option<String>,
    /// With `include=leases`: the active lease of each record on the page
    /// that has one, by record id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<serde_json::Map<String, Value>>,
}

/// A list request as parsed from the query string.
#[derive(Debug, Clone)]
pub struct ListParams {
    /// `include=leases`: add the active leases of the page's records.
    pub include_leases: bool,
    pub limit: i64,
    pub cursor: Option<String>,
    pub sort: Option<(ListField, bool)>,
    pub filters: Vec<ListFilter>,
}

impl ListParams {
    /// Parses query parameters: `limit`, `cursor`, `sort`, and every other
    /// parameter as an equality filter. A parameter repeated for the same
    /// field matches any of its values.
    ///
    /// # Errors
    ///
    /// [`ServiceError::InvalidQuery`] naming the parameter at fault.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, ServiceError> {
        let mut params = Self { include_leases: false, limit: DEFAULT_LIMIT, cursor: None, sort: None, filters: Vec::new() };
        for (name, value) in pairs {
            match name.as_str() {
                "limit" => params.limit = parse_limit(&value)?,
                "cursor" => params.cursor = Some(value),
                "include" => match value.as_str() {
                    "leases" => params.include_leases = true,
                    other => return Err(ServiceError::InvalidQuery(format!("include accepts only \"leases\", got {other:?}"))),
                },
                "sort" => {
                    let (descending, name) = match value.strip_prefix('-') {
                        Some(name) => (true, name),
                        None => (false, value.as_str()),
                    };
                    params.sort = Some((parse_field(name, "sort")?, descending));
                }
                _ => {
                    let field = parse_field(&name, "filter")?;
                    if matches!(field, ListField::CreatedAt | ListField::UpdatedAt) {
                        return Err(ServiceError::InvalidQuery(format!("{name} can be sorted on but not filtered by equality")));
                    }
                    if field == ListField::Version && value.parse::<i64>().is_err() {
                        return Err(ServiceError::InvalidQuery(format!("version filter must be an integer, got {value:?}")));
                    }
                    let candidates = filter_candidates(&value);
                    match params.filters.iter_mut().find(|filter| filter.field == field) {
                        Some(filter) => filter.any_of.extend(candidates),
                        None => params.filters.push(ListFilter { field, any_of: candidates }),
                    }
                }
            }
        }
        Ok(params)
    }

    /// Hashes the sort and filters into a short tag, kept in cursors so that a
    /// cursor cannot be used with a different query.
    fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(format!("{:?}|{:?}", self.sort, self.filters).as_bytes());
        hex::encode(&hasher.finalize()[..6])
    }
}

/// Parses a page size from 1 to [`MAX_LIMIT`]; every paged endpoint uses it.
pub fn parse_limit(value: &str) -> Result<i64, ServiceError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| ServiceError::InvalidQuery(format!("limit must be an integer from 1 to {MAX_LIMIT}, got {value:?}")))
}

fn parse_field(name: &str, parameter: &str) -> Result<ListField, ServiceError> {
    Ok(match name {
        "id" => ListField::Id,
        "version" => ListField::Version,
        "created_at" => ListField::CreatedAt,
        "updated_at" => ListField::UpdatedAt,
        "created_by" => ListField::CreatedBy,
        "updated_by" => ListField::UpdatedBy,
        _ => {
            let mut chars = name.chars();
            let valid_start = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !valid_start || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > MAX_FIELD_NAME_LEN {
                return Err(ServiceError::InvalidQuery(format!(
                    "{parameter} field {name:?} is not a top-level field name; use letters, digits and '_', starting with a letter or '_', at most {MAX_FIELD_NAME_LEN} characters"
                )));
            }
            ListField::Data(name.to_owned())
        }
    })
}

/// Returns the JSON values a query-string value matches: always the string,
/// and also the number, boolean or null it spells, so `?count=3` matches both
/// `3` and `"3"`.
fn filter_candidates(value: &str) -> Vec<String> {
    let mut candidates = vec![Value::String(value.to_owned()).to_string()];
    if let Ok(parsed @ (Value::Number(_) | Value::Bool(_) | Value::Null)) = serde_json::from_str::<Value>(value) {
        candidates.push(parsed.to_string());
    }
    candidates
}

/// Lists one page of live records.
pub async fn list(db: &Database, collection: &CollectionName, params: ListParams) -> Result<ListPage, ServiceError> {
    let fingerprint = params.fingerprint();
    let position = match &params.cursor {
        None => ListPosition::Start,
        Some(text) => decode_cursor(text, &fingerprint)?,
    };
    let id_ordered = params.sort.is_none();
    let include_leases = params.include_leases;
    let offset = match position {
        ListPosition::Offset(offset) => offset,
        _ => 0,
    };
    let query = ListQuery {
        collection: collection.to_string(),
        filters: params.filters,
        sort: params.sort,
        position,
        limit: params.limit + 1,
    };
    let limit = params.limit;

    let (rows, leases) = db
        .read(move |conn| {
            let rows = records::list(conn, &query)?;
            let leases = if include_leases {
                let ids: Vec<String> = rows.iter().take(query.limit as usize - 1).map(|row| row.id.clone()).collect();
                Some(crate::storage::leases::find_active_many(conn, &query.collection, &ids, crate::storage::models::now().naive_utc())?)
            } else {
                None
            };
            Ok::<_, ServiceError>((rows, leases))
        })
        .await?;
    let leases = leases.map(|rows| {
        rows.iter()
            .map(|row| (row.record_id.clone(), super::leases::Lease::from_row(row).to_json()))
            .collect::<serde_json::Map<String, Value>>()
    });

    // Id order pages by keyset; other sorts page by offset, so a record
    // written between two requests can shift a sorted listing by one.
    // TODO: keyset paging on the sort value would remove that shift.
    let has_more = rows.len() as i64 > limit;
    let page: Vec<_> = rows.into_iter().take(limit as usize).collect();
    let next_cursor = match page.last() {
        Some(last) if has_more && id_ordered => Some(cursor::encode(&format!("l:{fingerprint}:a:{}", last.id))),
        Some(_) if has_more => Some(cursor::encode(&format!("l:{fingerprint}:o:{}", offset + limit))),
        _ => None,
    };

    let items = page.iter().map(|row| snapshot(row).map(|record| record.to_wire())).collect::<Result<Vec<_>, _>>()?;
    Ok(ListPage { items, next_cursor, leases })
}

fn decode_cursor(text: &str, fingerprint: &str) -> Result<ListPosition, ServiceError> {
    let invalid = |reason: &str| ServiceError::InvalidCursor(reason.to_owned());
    let decoded = cursor::decode(text).ok_or_else(|| invalid("the cursor was not issued by this listing"))?;
    let mut parts = decoded.splitn(4, ':');
    if parts.next() != Some("l") {
        return Err(invalid("the cursor was not issued by this listing"));
    }
    if parts.next() != Some(fingerprint) {
        return Err(invalid("the cursor belongs to a listing with other filters or another sort; start again without a cursor"));
    }
    match (parts.next(), parts.next()) {
        (Some("a"), Some(id)) => crate::domain::RecordId::parse(id)
            .map(|id| ListPosition::AfterId(id.to_key()))
            .map_err(|_| invalid("the cursor was not issued by this listing")),
        (Some("o"), Some(offset)) => offset
            .parse::<i64>()
            .ok()
            .filter(|offset| *offset >= 0)
            .map(ListPosition::Offset)
            .ok_or_else(|| invalid("the cursor was not issued by this listing")),
        _ => Err(invalid("the cursor was not issued by this listing")),
    }
}

//! `GET /v1/_changes`: the change feed, with optional long-poll.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{QueryPairs, unknown_parameter};
use super::response::{json_response, to_json};
use crate::service::list::parse_limit;
use crate::domain::CollectionName;
use crate::service::ServiceError;
use crate::service::changes::{self, decode_position};

/// Maximum long-poll wait, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// How often a long-poll looks for new changes.
// TODO: polling replaces a commit notification; an in-process
// wake-up (SQLite) and LISTEN/NOTIFY (PostgreSQL) would return sooner and
// read the table less.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_LIMIT: i64 = 100;

pub async fn list(state: web::Data<AppState>, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    let mut since = None;
    let mut collections = Vec::new();
    let mut limit = DEFAULT_LIMIT;
    let mut wait = Duration::ZERO;
    for (name, value) in query.0 {
        match name.as_str() {
            "since" => since = Some(decode_position(&value)?),
            "collections" => {
                for raw in value.split(',').filter(|raw| !raw.is_empty()) {
                    let collection = CollectionName::parse(raw).map_err(|error| {
                        ApiError::bad_request("invalid-query", format!("Invalid collection name {raw:?} in collections: {error}."))
                    })?;
                    if state.collections.get(&collection).is_none() {
                        return Err(ServiceError::CollectionNotFound { name: collection.to_string() }.into());
                    }
                    collections.push(collection.to_string());
                }
            }
            "limit" => limit = parse_limit(&value)?,
            "wait" => {
                let seconds = value.parse::<u64>().ok().filter(|seconds| *seconds <= MAX_WAIT_SECONDS).ok_or_else(|| {
                    ApiError::bad_request("invalid-query", format!("wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}, got {value:?}."))
                })?;
                wait = Duration::from_secs(seconds);
            }
            other => return Err(unknown_parameter(other, "since, collections, limit and wait")),
        }
    }

    let deadline = tokio::time::Instant::now() + wait;
    let page = loop {
        let page = changes::read(&state.db, since, collections.clone(), limit).await?;
        if !page.changes.is_empty() || tokio::time::Instant::now() >= deadline {
            break page;
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(tokio::time::Instant::now()))).await;
    };

    Ok(json_response(StatusCode::OK, to_json(&page)?, None))
}

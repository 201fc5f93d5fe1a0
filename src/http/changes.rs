//! `GET /v1/_changes`: the change feed, with optional long-poll.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::AppState;
use super::error::ApiError;
use super::extract::{QueryPairs, unknown_parameter};
use super::response::{json_response, to_json};
use crate::auth::Principal;
use crate::service::changes::{self, decode_position};
use crate::storage::feed::FeedFilter;
use crate::service::list::parse_limit;

/// Maximum long-poll wait, in seconds.
pub const MAX_WAIT_SECONDS: u64 = 60;
const DEFAULT_LIMIT: i64 = 100;

pub async fn list(state: web::Data<AppState>, principal: Principal, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    let mut since = None;
    let mut filter = FeedFilter::default();
    let mut limit = DEFAULT_LIMIT;
    let mut wait = Duration::ZERO;
    for (name, value) in query.0 {
        match name.as_str() {
            "since" => since = Some(decode_position(&value)?),
            "collections" | "ids" => state.add_to_filter(&principal, &mut filter, &name, &value)?,
            "limit" => limit = parse_limit(&value)?,
            "wait" => {
                let seconds = value.parse::<u64>().ok().filter(|seconds| *seconds <= MAX_WAIT_SECONDS).ok_or_else(|| {
                    ApiError::bad_request("invalid-query", format!("wait must be a whole number of seconds from 0 to {MAX_WAIT_SECONDS}, got {value:?}."))
                })?;
                wait = Duration::from_secs(seconds);
            }
            other => return Err(unknown_parameter(other, "since, collections, ids, limit and wait")),
        }
    }

    state.restrict_to_readable(&principal, &mut filter)?;

    // The feed reader's position moves whenever a change becomes readable,
    // on this instance or, through the database, on another one.
    let deadline = tokio::time::Instant::now() + wait;
    let mut head = state.hub.watch_head();
    let mut shutdown = state.hub.shutdown_signal();
    let page = loop {
        head.borrow_and_update();
        let page = changes::read(&state.db, since, filter.clone(), limit).await?;
        if !page.changes.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            break page;
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    };

    Ok(json_response(StatusCode::OK, to_json(&page)?, None))
}

//! `GET /v1/_events`: the change feed as Server-Sent Events.

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::stream;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{QueryPairs, unknown_parameter};
use crate::auth::Principal;
use crate::push::{self, PushMessage};
use crate::storage::feed::FeedFilter;
use crate::service::changes::{self, decode_position};

/// Streams changes that match `collections` and `ids`, from `Last-Event-ID`
/// or `since` when given, else from the current end of the feed.
pub async fn stream(state: web::Data<AppState>, principal: Principal, req: HttpRequest, query: QueryPairs) -> Result<HttpResponse, ApiError> {
    let mut since = None;
    let mut filter = FeedFilter::default();
    for (name, value) in query.0 {
        match name.as_str() {
            "since" => since = Some(decode_position(&value)?),
            "collections" | "ids" => state.add_to_filter(&principal, &mut filter, &name, &value)?,
            other => return Err(unknown_parameter(other, "since, collections and ids")),
        }
    }
    // A reconnecting browser sends the id of the last event it received.
    if let Some(last_event_id) = req.headers().get("last-event-id") {
        let text = last_event_id
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid-cursor", "Last-Event-ID is not visible ASCII."))?;
        since = Some(decode_position(text)?);
    }

    state.restrict_to_readable(&principal, &mut filter)?;
    if let Some(since) = since {
        changes::check_resumable(&state.db, since).await?;
    }

    let messages = push::subscribe(state.hub.clone(), filter, since, state.settings.heartbeat);

    let body = stream::unfold((messages, false), |(mut messages, finished)| async move {
        if finished {
            return None;
        }
        let message = messages.recv().await?;
        let last = matches!(message, PushMessage::Reset { .. } | PushMessage::Shutdown);
        Some((Ok::<_, actix_web::Error>(frame(&message)), (messages, last)))
    });

    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Returns one message as an SSE frame.
fn frame(message: &PushMessage) -> Bytes {
    match message {
        PushMessage::Ready => Bytes::from_static(b": ready\n\n"),
        PushMessage::Heartbeat => Bytes::from_static(b": heartbeat\n\n"),
        PushMessage::Event(event) => event.sse_frame.clone(),
        PushMessage::Reset { reason, .. } => Bytes::from(format!(
            "event: reset\ndata: {}\n\n",
            json!({"type": "reset", "payload": {"reason": reason}, "cursor": null})
        )),
        PushMessage::Shutdown => Bytes::from(format!(
            "event: shutdown\ndata: {}\n\n",
            json!({"type": "shutdown", "payload": {"reason": "the server is stopping; reconnect with the last cursor"}, "cursor": null})
        )),
    }
}

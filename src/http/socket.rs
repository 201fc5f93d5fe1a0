//! `GET /v1/_ws`: the change feed over WebSocket, several subscriptions
//! per socket. The protocol is described in `docs/realtime.md`.

use std::collections::HashMap;
use std::sync::Arc;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;
use crate::push::{self, PushMessage};
use crate::service::changes::decode_position;
use crate::storage::feed::FeedFilter;

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        id: String,
        #[serde(default)]
        collections: Vec<String>,
        #[serde(default)]
        ids: Vec<String>,
        since: Option<String>,
    },
    Unsubscribe {
        id: String,
    },
    Ping {
        payload: Option<Value>,
    },
}

/// The socket's live subscriptions, each with the number that tags its
/// messages. Dropping it, however the socket ends, stops every subscription
/// task.
#[derive(Default)]
struct Subscriptions {
    active: HashMap<String, (u64, AbortHandle)>,
    next_number: u64,
}

impl Subscriptions {
    /// `true` when a message tagged `number` belongs to the live
    /// subscription `id`. Aborting a task is not immediate, so messages of
    /// an ended subscription can still arrive and are dropped.
    fn is_current(&self, id: &str, number: u64) -> bool {
        self.active.get(id).is_some_and(|(current, _)| *current == number)
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.active.remove(id) {
            Some((_, handle)) => {
                handle.abort();
                true
            }
            None => false,
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for (_, handle) in self.active.values() {
            handle.abort();
        }
    }
}

/// A push message with the subscription it belongs to.
type Tagged = (String, u64, PushMessage);

pub async fn connect(state: web::Data<AppState>, principal: Principal, req: HttpRequest, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let (response, session, stream) = actix_ws::handle(&req, body).map_err(|error| {
        ApiError::bad_request("invalid-websocket-handshake", format!("The WebSocket handshake failed: {error}."))
    })?;
    let limit = state.settings.max_ws_message_bytes;
    let stream = stream.max_frame_size(limit).aggregate_continuations().max_continuation_size(limit);

    actix_web::rt::spawn(serve(state.into_inner(), principal, session, stream));
    Ok(response)
}

async fn serve(state: Arc<AppState>, principal: Principal, mut session: Session, mut stream: actix_ws::AggregatedMessageStream) {
    let (sink, mut messages) = mpsc::channel::<Tagged>(64);
    let mut subscriptions = Subscriptions::default();
    let mut shutdown = state.hub.shutdown_signal();
    let heartbeat = state.settings.heartbeat;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);

    let close = loop {
        tokio::select! {
            received = stream.recv() => match received {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    let reply = handle_text(&state, &principal, &text, &mut subscriptions, &sink);
                    if let Some(reply) = reply
                        && session.text(reply.to_string()).await.is_err()
                    {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    let reply = error_message(None, "unsupported-message", "Send JSON text messages; binary messages are not supported.");
                    if session.text(reply.to_string()).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => {}
                Some(Ok(AggregatedMessage::Close(_))) | None => break None,
                Some(Err(error)) => {
                    tracing::info!(error = %error, "closing a WebSocket after a protocol error");
                    let code = match error {
                        actix_ws::ProtocolError::Overflow => CloseCode::Size,
                        _ => CloseCode::Protocol,
                    };
                    break Some(CloseReason { code, description: Some(error.to_string()) });
                }
            },
            Some((subscription, number, message)) = messages.recv() => {
                if !subscriptions.is_current(&subscription, number) {
                    continue;
                }
                if let PushMessage::Reset { .. } = message {
                    subscriptions.remove(&subscription);
                }
                let Some(reply) = push_json(&subscription, &message) else { continue };
                if session.text(reply.to_string()).await.is_err() {
                    break None;
                }
                // A socket whose reader falls behind is closed, not only the
                // subscription: its other subscriptions are just as far behind.
                if let PushMessage::Reset { lagged: true, .. } = message {
                    break Some(CloseReason { code: CloseCode::Again, description: Some("the client fell too far behind".to_owned()) });
                }
            }
            _ = ticks.tick() => {
                if session.ping(b"").await.is_err() {
                    break None;
                }
            }
            _ = shutdown.changed() => {
                let reply = json!({"type": "shutdown", "payload": {"reason": "the server is stopping; reconnect and resubscribe with your last cursors"}});
                let _ = session.text(reply.to_string()).await;
                break Some(CloseReason { code: CloseCode::Restart, description: None });
            }
        }
    };

    drop(subscriptions);
    let _ = session.close(close).await;
}

/// Handles one client message; returns the immediate reply, if any.
fn handle_text(state: &Arc<AppState>, principal: &Principal, text: &str, subscriptions: &mut Subscriptions, sink: &mpsc::Sender<Tagged>) -> Option<Value> {
    let message: ClientMessage = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(error) => return Some(error_message(None, "invalid-message", &format!("The message is not a valid client message: {error}."))),
    };

    match message {
        ClientMessage::Ping { payload } => Some(json!({"type": "pong", "payload": payload})),
        ClientMessage::Unsubscribe { id } => {
            if subscriptions.remove(&id) {
                Some(json!({"type": "unsubscribed", "subscription": id}))
            } else {
                Some(error_message(Some(&id), "unknown-subscription", "No subscription with this id is active on this socket."))
            }
        }
        ClientMessage::Subscribe { id, collections, ids, since } => {
            if id.is_empty() || id.chars().count() > 64 {
                return Some(error_message(None, "invalid-message", "A subscription id must be 1 to 64 characters."));
            }
            if subscriptions.active.contains_key(&id) {
                return Some(error_message(Some(&id), "duplicate-subscription", "A subscription with this id is already active; unsubscribe first or choose another id."));
            }
            let limit = state.settings.max_subscriptions;
            if subscriptions.active.len() >= limit {
                return Some(error_message(Some(&id), "too-many-subscriptions", &format!("A socket may hold at most {limit} subscriptions; unsubscribe from one first.")));
            }

            let mut filter = FeedFilter::default();
            let parsed = state
                .add_to_filter(principal, &mut filter, "collections", &collections.join(","))
                .and_then(|()| state.add_to_filter(principal, &mut filter, "ids", &ids.join(",")))
                .and_then(|()| state.restrict_to_readable(principal, &mut filter))
                .and_then(|()| since.as_deref().map(decode_position).transpose().map_err(ApiError::from));
            let since = match parsed {
                Ok(since) => since,
                Err(error) => {
                    let (_, problem) = error.to_problem();
                    let detail = problem["detail"].as_str().unwrap_or("The subscription is invalid.").to_owned();
                    return Some(error_message(Some(&id), "invalid-subscription", &detail));
                }
            };

            let mut receiver = push::subscribe(state.hub.clone(), filter, since, state.settings.heartbeat);
            let sink = sink.clone();
            let subscription = id.clone();
            let number = subscriptions.next_number;
            subscriptions.next_number += 1;
            let forwarder = tokio::spawn(async move {
                while let Some(message) = receiver.recv().await {
                    if sink.send((subscription.clone(), number, message)).await.is_err() {
                        return;
                    }
                }
            });
            subscriptions.active.insert(id, (number, forwarder.abort_handle()));
            None
        }
    }
}

/// The server message for a push message, tagged with its subscription;
/// heartbeats are sent as WebSocket pings instead.
fn push_json(subscription: &str, message: &PushMessage) -> Option<Value> {
    match message {
        PushMessage::Ready => Some(json!({"type": "subscribed", "subscription": subscription})),
        PushMessage::Event(event) => {
            let mut value: Value = serde_json::from_str(&event.message).ok()?;
            value.as_object_mut()?.insert("subscription".into(), Value::String(subscription.to_owned()));
            Some(value)
        }
        PushMessage::Reset { reason, .. } => Some(json!({"type": "reset", "subscription": subscription, "payload": {"reason": reason}})),
        PushMessage::Heartbeat | PushMessage::Shutdown => None,
    }
}

fn error_message(subscription: Option<&str>, code: &str, message: &str) -> Value {
    json!({"type": "error", "subscription": subscription, "payload": {"code": code, "message": message}})
}

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
use crate::domain::collection::{Access, LeaseMode};
use crate::domain::{CollectionName, RecordId};
use crate::push::{self, PushMessage};
use crate::service::ServiceError;
use crate::service::leases;
use crate::storage::Database;
use crate::service::changes::{self, decode_position};
use crate::storage::feed::FeedFilter;

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
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
    /// Acquires an edit lease held by this socket: renewed while the client
    /// responds, released when the socket closes.
    AcquireLease {
        collection: String,
        id: String,
        ttl_seconds: Option<u64>,
    },
    ReleaseLease {
        collection: String,
        id: String,
    },
}

/// One lease held by a socket.
struct HeldLease {
    collection: CollectionName,
    id: RecordId,
    token: String,
    ttl: chrono::Duration,
    renew_at: tokio::time::Instant,
}

/// The leases a socket holds. Dropping it, however the socket ends,
/// releases them.
struct HeldLeases {
    db: Database,
    held: HashMap<(String, String), HeldLease>,
}

impl Drop for HeldLeases {
    fn drop(&mut self) {
        for (_, lease) in self.held.drain() {
            let db = self.db.clone();
            tokio::spawn(async move {
                if let Err(error) = leases::release(&db, &lease.collection, lease.id, &lease.token).await
                    && !matches!(error, ServiceError::LeaseGone)
                {
                    tracing::warn!(error = %error, collection = %lease.collection, record.id = %lease.id, "failed to release a WebSocket lease");
                }
            });
        }
    }
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

    let mut held = HeldLeases { db: state.db.clone(), held: HashMap::new() };
    let mut last_seen = tokio::time::Instant::now();
    let mut renewals = tokio::time::interval(std::time::Duration::from_millis(250));

    let close = loop {
        tokio::select! {
            received = stream.recv() => match received {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    last_seen = tokio::time::Instant::now();
                    let reply = match serde_json::from_str::<ClientMessage>(&text) {
                        Ok(ClientMessage::AcquireLease { collection, id, ttl_seconds }) => {
                            Some(acquire_lease(&state, &principal, &mut held, &collection, &id, ttl_seconds).await)
                        }
                        Ok(ClientMessage::ReleaseLease { collection, id }) => Some(release_lease(&mut held, &collection, &id).await),
                        parsed => handle_message(&state, &principal, parsed, &mut subscriptions, &sink).await,
                    };
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
                    last_seen = tokio::time::Instant::now();
                    if session.pong(&bytes).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => last_seen = tokio::time::Instant::now(),
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
            _ = renewals.tick(), if !held.held.is_empty() => {
                // Leases are renewed only while the client responds, so a
                // client that hangs without closing loses them.
                if last_seen.elapsed() > heartbeat * 2 {
                    continue;
                }
                for lost in renew_due(&mut held).await {
                    if session.text(lost.to_string()).await.is_err() {
                        break;
                    }
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
    drop(held);
    let _ = session.close(close).await;
}

async fn acquire_lease(state: &AppState, principal: &Principal, held: &mut HeldLeases, collection: &str, id: &str, ttl_seconds: Option<u64>) -> Value {
    let target = json!({"collection": collection, "id": id});
    let result = async {
        let name = CollectionName::parse(collection)
            .map_err(|error| ApiError::bad_request("invalid-collection-name", format!("Invalid collection name {collection:?}: {error}.")))?;
        let record_id = RecordId::parse(id).map_err(|_| ApiError::bad_request("invalid-record-id", format!("Invalid record id {id:?}: record ids are UUIDs.")))?;
        let policy = state.collections.get(&name).ok_or_else(|| ServiceError::CollectionNotFound { name: name.to_string() })?;
        if !policy.allows(principal, Access::Write) {
            return Err(ServiceError::Forbidden { name: name.to_string(), access: "write" }.into());
        }
        if policy.leases == LeaseMode::Off {
            return Err(ApiError::LeasesOff { collection: name.to_string() });
        }
        let ttl = leases::lifetime(&policy, ttl_seconds)?;
        let (token, lease) = leases::acquire(&state.db, &name, record_id, &principal.name, ttl).await?;
        Ok::<_, ApiError>((name, record_id, token, lease, ttl))
    }
    .await;

    match result {
        Ok((name, record_id, token, lease, ttl)) => {
            let renew_at = tokio::time::Instant::now() + (ttl / 3).to_std().unwrap_or_default();
            held.held.insert((collection.to_owned(), id.to_owned()), HeldLease { collection: name, id: record_id, token: token.clone(), ttl, renew_at });
            let mut payload = lease.to_json();
            payload["collection"] = target["collection"].clone();
            payload["id"] = target["id"].clone();
            payload["token"] = Value::String(token);
            json!({"type": "lease_acquired", "payload": payload})
        }
        Err(error) => lease_error(&target, error),
    }
}

async fn release_lease(held: &mut HeldLeases, collection: &str, id: &str) -> Value {
    let target = json!({"collection": collection, "id": id});
    let Some(lease) = held.held.remove(&(collection.to_owned(), id.to_owned())) else {
        return lease_error(&target, ServiceError::LeaseNotFound.into());
    };
    match leases::release(&held.db, &lease.collection, lease.id, &lease.token).await {
        Ok(()) => json!({"type": "lease_released", "payload": target}),
        Err(error) => lease_error(&target, error.into()),
    }
}

/// Renews the held leases that are a third of the way to expiry. Checked
/// every 250 ms, even a one-second lease is renewed in time. Returns a
/// `lease_lost` message for each lease that was broken or lost meanwhile.
async fn renew_due(held: &mut HeldLeases) -> Vec<Value> {
    let now = tokio::time::Instant::now();
    let mut lost = Vec::new();
    let due: Vec<(String, String)> = held.held.iter().filter(|(_, lease)| lease.renew_at <= now).map(|(key, _)| key.clone()).collect();
    for key in due {
        let Some(lease) = held.held.get_mut(&key) else { continue };
        match leases::renew(&held.db, &lease.collection, lease.id, &lease.token, lease.ttl).await {
            Ok(_) => lease.renew_at = now + (lease.ttl / 3).to_std().unwrap_or_default(),
            // A database error may pass; the next tick tries again.
            Err(error) if !matches!(error, ServiceError::LeaseGone) => {
                tracing::warn!(error = %error, collection = %lease.collection, record.id = %lease.id, "failed to renew a WebSocket lease; retrying");
            }
            Err(error) => {
                held.held.remove(&key);
                let target = json!({"collection": key.0, "id": key.1});
                let mut message = lease_error(&target, error.into());
                message["type"] = Value::String("lease_lost".to_owned());
                lost.push(message);
            }
        }
    }
    lost
}

/// Builds the `error` message for a lease request, with the problem's type
/// slug as its code and the problem's members (such as `holder`) in its payload.
fn lease_error(target: &Value, error: ApiError) -> Value {
    let (_, problem) = error.to_problem();
    let code = problem["type"].as_str().and_then(|kind| kind.rsplit('/').next()).unwrap_or("error").to_owned();
    let mut payload = json!({"code": code, "message": problem["detail"], "collection": target["collection"], "id": target["id"]});
    for member in ["holder", "expires_at"] {
        if let Some(value) = problem.get(member) {
            payload[member] = value.clone();
        }
    }
    json!({"type": "error", "subscription": null, "payload": payload})
}

/// Handles a subscription or ping message; returns the immediate reply, if
/// any.
async fn handle_message(
    state: &Arc<AppState>,
    principal: &Principal,
    parsed: Result<ClientMessage, serde_json::Error>,
    subscriptions: &mut Subscriptions,
    sink: &mpsc::Sender<Tagged>,
) -> Option<Value> {
    let message = match parsed {
        Ok(message) => message,
        Err(error) => return Some(error_message(None, "invalid-message", &format!("The message is not a valid client message: {error}."))),
    };

    match message {
        // Lease messages need the database and are handled by the caller.
        ClientMessage::AcquireLease { .. } | ClientMessage::ReleaseLease { .. } => None,
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
                Ok(Some(since)) => match changes::check_resumable(&state.db, since).await {
                    Ok(()) => Some(since),
                    Err(error) => return Some(subscription_error(&id, ApiError::from(error))),
                },
                Ok(None) => None,
                Err(error) => return Some(subscription_error(&id, error)),
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

/// Builds the server message for a push message, tagged with its
/// subscription. Heartbeats are sent as WebSocket pings instead.
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

/// Reports a subscription the server cannot start, with the problem's
/// detail as the message.
fn subscription_error(subscription: &str, error: ApiError) -> Value {
    let (_, problem) = error.to_problem();
    let detail = problem["detail"].as_str().unwrap_or("The subscription is invalid.").to_owned();
    error_message(Some(subscription), "invalid-subscription", &detail)
}

fn error_message(subscription: Option<&str>, code: &str, message: &str) -> Value {
    json!({"type": "error", "subscription": subscription, "payload": {"code": code, "message": message}})
}

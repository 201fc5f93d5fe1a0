//! One subscriber's stream: catch up from a cursor, then follow the live
//! fan-out, with heartbeats, until the client leaves, falls behind or the
//! server stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::Hub;
use super::event::{self, PushEvent};
use crate::service::ServiceError;
use crate::storage::feed::{self, FeedFilter, FeedPosition};

/// Messages queued per subscriber before its catch-up waits for the client.
const QUEUE: usize = 64;
const CATCH_UP_BATCH: i64 = 500;

/// A message to a subscriber.
#[derive(Debug, Clone)]
pub enum PushMessage {
    /// Catch-up is done; later commits arrive live.
    Ready,
    Event(Arc<PushEvent>),
    /// The subscriber cannot continue from where it is: its cursor is older
    /// than the retained history, or it fell behind (`lagged`). It must
    /// reload.
    Reset { reason: &'static str, lagged: bool },
    Heartbeat,
    /// The server is stopping.
    Shutdown,
}

/// Starts a subscription and returns its message queue. The subscription
/// ends when the queue's receiver is dropped, after a reset, or at shutdown.
pub fn subscribe(hub: Arc<Hub>, filter: FeedFilter, since: Option<FeedPosition>, heartbeat: Duration) -> mpsc::Receiver<PushMessage> {
    let (sink, messages) = mpsc::channel(QUEUE);
    // Subscribe before reading the table, so that every change is either
    // in the catch-up read or in the live stream.
    let live = hub.subscribe();
    let start = since.unwrap_or_else(|| hub.head());
    tokio::spawn(async move {
        if let Err(error) = follow(hub, filter, start, live, sink, heartbeat).await {
            tracing::warn!(error = %error, "push subscription ended by a database error");
        }
    });
    messages
}

async fn follow(
    hub: Arc<Hub>,
    filter: FeedFilter,
    start: FeedPosition,
    mut live: broadcast::Receiver<Arc<PushEvent>>,
    sink: mpsc::Sender<PushMessage>,
    heartbeat: Duration,
) -> Result<(), ServiceError> {
    let mut last = start;
    if !catch_up(&hub, &filter, &mut last, &sink).await? {
        return Ok(());
    }
    if sink.send(PushMessage::Ready).await.is_err() {
        return Ok(());
    }

    let mut client_blocked = false;
    let mut shutdown = hub.shutdown_signal();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    // Both waits live across the loop. Made anew for each event they would
    // leave and rejoin the waiter lists on every change, and the shutdown
    // list is shared by every subscriber of the instance.
    let stopping = shutdown.changed();
    let client_left = sink.closed();
    tokio::pin!(stopping, client_left);
    loop {
        let message = tokio::select! {
            received = live.recv() => match received {
                Ok(event) if event.position > last && filter.matches(&event.collection, &event.id) => {
                    last = event.position;
                    PushMessage::Event(event)
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // A client that never filled its queue while live keeps
                    // up: the live stream ran ahead while this task was busy,
                    // for example with a long catch-up. The table still has
                    // the changes, so read them from there. A client that
                    // filled its queue is slow and is reset.
                    if !client_blocked {
                        if !catch_up(&hub, &filter, &mut last, &sink).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    let _ = sink.send(PushMessage::Reset { reason: "the subscriber fell too far behind", lagged: true }).await;
                    return Ok(());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = ticks.tick() => PushMessage::Heartbeat,
            _ = &mut stopping => {
                let _ = sink.send(PushMessage::Shutdown).await;
                return Ok(());
            }
            () = &mut client_left => return Ok(()),
        };
        // A full queue means the client reads slower than changes arrive.
        // Waiting here lets the live stream lag, which ends in a reset
        // instead of unbounded memory.
        if sink.capacity() == 0 {
            client_blocked = true;
        }
        if sink.send(message).await.is_err() {
            return Ok(());
        }
    }
}

/// Sends every change after `last` from the table, moving `last` on.
/// Returns `false` when the subscription is over: the client left, or the
/// cursor was older than the retained history (a reset was sent).
async fn catch_up(hub: &Hub, filter: &FeedFilter, last: &mut FeedPosition, sink: &mpsc::Sender<PushMessage>) -> Result<bool, ServiceError> {
    loop {
        let (filter, after) = (filter.clone(), *last);
        let (events, horizon) = hub
            .database()
            .read(move |conn| {
                let events = event::load(conn, after, &filter, CATCH_UP_BATCH)?;
                Ok::<_, ServiceError>((events, feed::horizon(conn)?))
            })
            .await?;
        // The horizon is read after the changes, so a cursor that
        // retention passed during the read is caught here.
        if *last < horizon {
            let _ = sink.send(PushMessage::Reset { reason: "the cursor is older than the retained change history", lagged: false }).await;
            return Ok(false);
        }
        let Some(newest) = events.last().map(|event| event.position) else {
            return Ok(true);
        };
        for event in events {
            if sink.send(PushMessage::Event(Arc::new(event))).await.is_err() {
                return Ok(false);
            }
        }
        *last = newest;
    }
}

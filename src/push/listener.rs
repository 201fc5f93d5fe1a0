//! The PostgreSQL wake-up: each instance announces its commits with a
//! `NOTIFY` on the changes channel and keeps a `LISTEN` on it, so that a
//! commit on any instance wakes every instance's feed reader at once.
//! A notification carries only the sending instance's tag, so that an
//! instance skips its own. The change table stays the source of truth, and
//! the reader polls faster while this connection is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::storage::Database;
use crate::storage::records::CHANGES_CHANNEL;

/// Shortest time between two notifications from this instance.
const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(2);

/// How long to wait before reconnecting after the connection fails.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Keeps a `LISTEN` connection open until shutdown, reconnecting after
/// failures. `connected` shows the feed reader whether wake-ups arrive.
// TODO: the listener connects without TLS; a database that requires TLS
// leaves it down, and the reader then relies on its fast poll alone.
pub async fn listen(url: String, own_tag: Arc<str>, wake: Arc<Notify>, connected: Arc<AtomicBool>, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            result = listen_once(&url, &own_tag, &wake, &connected) => {
                connected.store(false, Ordering::Relaxed);
                failures += 1;
                // Logged on the first failure and then every 60th, so a
                // long outage does not flood the log.
                if failures % 60 == 1 {
                    match result {
                        Ok(()) => tracing::warn!(failures, "change notification connection closed; polling until it is back"),
                        Err(error) => tracing::warn!(error = %error, failures, "change notification connection failed; polling until it is back"),
                    }
                }
            }
            _ = shutdown.changed() => return,
        }
        // A missed notification is harmless, but wake the reader in case
        // one was lost while the connection was down.
        wake.notify_one();
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_DELAY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends one notification after each burst of local commits, until
/// shutdown. Commits that happen while a notification is being sent are
/// announced by the next one, so a busy instance sends about one per round
/// trip, not one per write.
pub async fn announce(db: Database, own_tag: Arc<str>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    let committed = db.announce_signal();
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = committed.notified() => {}
            _ = shutdown.changed() => return,
        }
        let started = tokio::time::Instant::now();
        let announced = db.announce_commits(own_tag.clone()).await;
        // The listener skips this instance's own notification. Its arrival
        // also meant that every transaction that notified before it had
        // ended, which may make held-back changes readable, so the reader
        // is woken here instead.
        if announced.is_ok() {
            wake.notify_one();
        }
        if let Err(error) = announced {
            // Other instances still find the changes by polling.
            failures += 1;
            if failures % 60 == 1 {
                tracing::warn!(error = %error, failures, "announcing commits to other instances failed; they will find them by polling");
            }
        }
        // One notification covers every commit before it, so pausing
        // between them costs other instances at most the pause.
        tokio::time::sleep_until(started + MIN_ANNOUNCE_INTERVAL).await;
    }
}

/// Listens until the connection ends.
async fn listen_once(url: &str, own_tag: &Arc<str>, wake: &Notify, connected: &AtomicBool) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;

    // The connection must be driven while the LISTEN runs, so a task moves
    // its notifications into a channel.
    let (sender, mut notifications) = mpsc::unbounded_channel();
    let own_tag = own_tag.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(notification)) if notification.payload() != &*own_tag => {
                    if sender.send(()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });

    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
    connected.store(true, Ordering::Relaxed);
    tracing::info!("listening for change notifications");

    while notifications.recv().await.is_some() {
        wake.notify_one();
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

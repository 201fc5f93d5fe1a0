//! The per-instance feed reader and its fan-out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use super::event::{self, PushEvent};
use super::listener;
use crate::service::ServiceError;
use crate::storage::feed::{self, FeedFilter, FeedPosition};
use crate::storage::{Backend, Database};

/// Changes read per query by the feed reader.
const READ_BATCH: i64 = 500;

/// Shortest time between two reads of the feed by the reader.
const MIN_READ_INTERVAL: Duration = Duration::from_millis(2);

/// Reads the change feed once for this instance and broadcasts every change
/// to the subscribers in memory.
pub struct Hub {
    db: Database,
    events: broadcast::Sender<Arc<PushEvent>>,
    head: watch::Sender<FeedPosition>,
    wake: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    /// Whether the PostgreSQL notification connection is up.
    listening: Arc<AtomicBool>,
    /// Seconds between the last change's write and the moment the reader
    /// read it.
    lag: prometheus::Gauge,
}

impl Hub {
    /// Starts the reader at the current end of the feed. `buffer` is how
    /// many events a subscriber may fall behind before it is reset.
    ///
    /// # Errors
    ///
    /// A database error while finding the end of the feed.
    pub async fn start(db: Database, buffer: usize) -> Result<Arc<Self>, ServiceError> {
        let end = db.read(|conn| feed::end(conn).map_err(ServiceError::from)).await?;
        let (events, _) = broadcast::channel(buffer.max(1));
        let hub = Arc::new(Self {
            wake: db.commit_signal(),
            db,
            events,
            head: watch::Sender::new(end),
            shutdown: watch::Sender::new(false),
            listening: Arc::default(),
            lag: prometheus::Gauge::new(
                "versa_feed_lag_seconds",
                "Seconds between a change's write and its reading by this instance's feed reader, for the last change read.",
            )
            .map_err(|error| ServiceError::Storage(crate::storage::StorageError::Corrupt(error.to_string())))?,
        });
        if let Some(url) = hub.db.url().postgres_url() {
            // Tags this instance's notifications, so that it skips its own.
            let own_tag: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
            tokio::spawn(listener::listen(url.to_owned(), own_tag.clone(), hub.wake.clone(), hub.listening.clone(), hub.shutdown.subscribe()));
            tokio::spawn(listener::announce(hub.db.clone(), own_tag, hub.wake.clone(), hub.shutdown.subscribe()));
        }
        tokio::spawn(hub.clone().run());
        Ok(hub)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Returns the feed lag gauge, for the metrics registry.
    pub fn lag_gauge(&self) -> prometheus::Gauge {
        self.lag.clone()
    }

    /// Open subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.events.receiver_count()
    }

    /// Receives every change read after this call.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<PushEvent>> {
        self.events.subscribe()
    }

    /// Returns the position of the last change read.
    pub fn head(&self) -> FeedPosition {
        *self.head.borrow()
    }

    /// Changes each time the reader moves on.
    pub fn watch_head(&self) -> watch::Receiver<FeedPosition> {
        self.head.subscribe()
    }

    /// Looks for new changes now, for a wake-up from another instance.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops the reader and tells every subscriber to close.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Becomes `true` at shutdown.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Reads new changes whenever a write commits here, a notification
    /// arrives from another instance, or the poll interval passes.
    ///
    /// On PostgreSQL a change becomes readable only once every older
    /// transaction has ended, which no notification announces when the
    /// older transaction is not a Versa write, so the reader also polls:
    /// every second while notifications arrive, every 100 ms while the
    /// notification connection is down. On SQLite, writes by another
    /// instance on the same file are found by the one-second poll.
    async fn run(self: Arc<Self>) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            let started = tokio::time::Instant::now();
            if let Err(error) = self.read_new().await {
                tracing::warn!(error = %error, "change feed reader failed; retrying");
            }
            // Under a steady stream of commits, reading after each one would
            // cost a query per write. After a short pause, one read takes
            // every commit of the pause. A commit after a quiet spell is
            // still read at once.
            tokio::time::sleep_until(started + MIN_READ_INTERVAL).await;
            let poll = match self.db.backend() {
                Backend::Postgres if !self.listening.load(Ordering::Relaxed) => Duration::from_millis(100),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Moves the head to the newest change without loading any event, while
    /// no one subscribes: the head is all that long polls and new
    /// subscriptions need. Returns `false`, having moved nothing, when a
    /// subscription started during the read.
    ///
    /// Subscribers are counted after the read. A subscription that starts
    /// later gets every skipped change from its catch-up, because the
    /// catch-up reads the table after it subscribed, and so after this read.
    async fn skip_to_newest(&self) -> Result<bool, ServiceError> {
        let newest = self.db.read(|conn| feed::newest(conn).map_err(ServiceError::from)).await?;
        if self.events.receiver_count() != 0 {
            return Ok(false);
        }
        if let Some((position, written)) = newest
            && position > self.head()
        {
            self.record_lag(written.and_utc());
            self.head.send_replace(position);
        }
        Ok(true)
    }

    fn record_lag(&self, written: chrono::DateTime<chrono::Utc>) {
        let lag = crate::storage::models::now() - written;
        self.lag.set(lag.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
    }

    async fn read_new(&self) -> Result<(), ServiceError> {
        if self.events.receiver_count() == 0 && self.skip_to_newest().await? {
            return Ok(());
        }
        loop {
            let after = self.head();
            let events = self
                .db
                .read(move |conn| event::load(conn, after, &FeedFilter::default(), READ_BATCH).map_err(ServiceError::from))
                .await?;
            let Some(last) = events.last().map(|event| event.position) else {
                return Ok(());
            };
            if let Some(written) = events.last().map(|event| event.changed_at) {
                self.record_lag(written);
            }
            let full = events.len() as i64 == READ_BATCH;
            for event in events {
                // No subscriber is not an error.
                let _ = self.events.send(Arc::new(event));
            }
            self.head.send_replace(last);
            if !full {
                return Ok(());
            }
        }
    }
}

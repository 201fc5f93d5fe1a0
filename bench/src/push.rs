//! The push scenario: many SSE subscribers, a steady write rate, and the
//! time from a write's request to its delivery to a sampled subscriber.
//!
//! The writer is open-loop. It sends one write per tick of a fixed
//! schedule, each on its own task, so a slow response does not delay the
//! next write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Subscribers that parse every event and record its delivery time. The
/// others only read the bytes, so that the load generator does not become
/// the bottleneck.
const MEASURED_SUBSCRIBERS: usize = 20;

/// The maximum number of writes awaiting a response. A tick that finds this
/// many in flight sends nothing and is counted as skipped, so the backlog
/// of a server that cannot keep up stays bounded.
const MAX_WRITES_IN_FLIGHT: usize = 64;

pub struct PushOutcome {
    pub subscribers: usize,
    pub target_writes_per_second: u32,
    pub writes_per_second: f64,
    pub written: u64,
    /// Writes that failed or did not return 201.
    pub failed: u64,
    /// Ticks that sent nothing because `MAX_WRITES_IN_FLIGHT` writes were
    /// awaiting a response.
    pub skipped_ticks: u64,
    pub delivered: u64,
    latencies_micros: Vec<u64>,
}

impl PushOutcome {
    fn percentile(&self, fraction: f64) -> f64 {
        crate::load::percentile_ms(&self.latencies_micros, fraction)
    }

    pub fn row(&self) -> String {
        format!(
            "{:<12} {} subscribers, {:.0} writes/s of {} scheduled ({} failed, {} ticks skipped): delivered {} of {} to the sampled subscribers, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            "push",
            self.subscribers,
            self.writes_per_second,
            self.target_writes_per_second,
            self.failed,
            self.skipped_ticks,
            self.delivered,
            self.written * MEASURED_SUBSCRIBERS.min(self.subscribers) as u64,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(1.0)
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": "push",
            "subscribers": self.subscribers,
            "target_writes_per_second": self.target_writes_per_second,
            "writes_per_second": self.writes_per_second,
            "written": self.written,
            "failed": self.failed,
            "skipped_ticks": self.skipped_ticks,
            "delivered_to_sampled": self.delivered,
            "latency_ms": {"p50": self.percentile(0.5), "p99": self.percentile(0.99), "max": self.percentile(1.0)},
        })
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_micros() as u64).unwrap_or_default()
}

/// The open SSE streams and what their readers collect.
pub struct Subscription {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Request-to-delivery times in microseconds, from the sampled subscribers.
    latencies: Arc<Mutex<Vec<u64>>>,
    /// Events delivered to the sampled subscribers.
    delivered: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// Opens `subscribers` SSE streams and waits until each reports ready.
pub async fn subscribe(base: &str, subscribers: usize) -> Result<Subscription, BoxError> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers.max(1));

    let mut tasks = Vec::with_capacity(subscribers);
    for index in 0..subscribers {
        let url = format!("{base}/v1/_events?collections=bench-push");
        let (latencies, delivered, stop, ready) = (latencies.clone(), delivered.clone(), stop.clone(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            let measured = index < MEASURED_SUBSCRIBERS;
            let Ok(response) = reqwest::Client::new().get(url).send().await else { return };
            let mut response = response;
            let mut buffer = String::new();
            let mut announced = false;
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(chunk)) = response.chunk().await else { break };
                if !measured {
                    if !announced {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    continue;
                }
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    if frame.starts_with(": ready") && !announced {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    if let Some(data) = frame.lines().find_map(|line| line.strip_prefix("data: "))
                        && let Ok(message) = serde_json::from_str::<Value>(data)
                        && let Some(sent) = message["payload"]["sent_at_micros"].as_u64()
                    {
                        let latency = now_micros().saturating_sub(sent);
                        latencies.lock().await.push(latency);
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        if tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await.ok().flatten().is_none() {
            return Err("subscribers did not all connect within 60 s".into());
        }
    }
    Ok(Subscription { tasks, latencies, delivered, stop })
}

/// Writes on a fixed schedule of `rate` per second for `duration` while the
/// subscribers read, then collects the delivery times. The achieved rate
/// counts the writes that returned 201 over the time until the last
/// response arrived.
pub async fn run(
    base: &str,
    subscribers: usize,
    rate: u32,
    duration: Duration,
    subscription: Subscription,
) -> Result<PushOutcome, BoxError> {
    let Subscription { tasks, latencies, delivered, stop } = subscription;
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/bench-push");
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_WRITES_IN_FLIGHT));
    let written = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut skipped_ticks = 0u64;

    // Each tick's time is computed from the start, not from the previous
    // tick, so a late wake-up is made up at once and the schedule keeps
    // its rate.
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let started = tokio::time::Instant::now();
    for tick in 0u32.. {
        let due = started + interval * tick;
        if due >= started + duration {
            break;
        }
        tokio::time::sleep_until(due).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped_ticks += 1;
            continue;
        };
        let (client, url, written, failed) = (client.clone(), url.clone(), written.clone(), failed.clone());
        tokio::spawn(async move {
            let created = match client.post(url).json(&json!({"sent_at_micros": now_micros()})).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Reading the body to its end lets the connection go
                    // back to the pool for a later write.
                    response.bytes().await.is_ok() && status == 201
                }
                Err(_) => false,
            };
            if created {
                written.fetch_add(1, Ordering::Relaxed);
            } else {
                failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
    // All permits are free again once every write has finished.
    let _ = in_flight.acquire_many(MAX_WRITES_IN_FLIGHT as u32).await?;
    let written = written.load(Ordering::Relaxed);
    let writes_per_second = written as f64 / started.elapsed().as_secs_f64();

    // Let the last changes arrive, then stop the readers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies_micros = std::mem::take(&mut *latencies.lock().await);
    latencies_micros.sort_unstable();
    Ok(PushOutcome {
        subscribers,
        target_writes_per_second: rate,
        writes_per_second,
        written,
        failed: failed.load(Ordering::Relaxed),
        skipped_ticks,
        delivered: delivered.load(Ordering::Relaxed),
        latencies_micros,
    })
}

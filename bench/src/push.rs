//! The push scenario: many SSE subscribers, a steady write rate, and the
//! time from a write's request to its delivery to a sampled subscriber.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::Mutex;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Subscribers that parse every event and record its delivery time. The
/// others only read the bytes, so that the load generator does not become
/// the bottleneck.
const MEASURED_SUBSCRIBERS: usize = 20;

pub struct PushOutcome {
    pub subscribers: usize,
    pub writes_per_second: f64,
    pub written: u64,
    pub delivered: u64,
    latencies_micros: Vec<u64>,
}

impl PushOutcome {
    fn percentile(&self, fraction: f64) -> f64 {
        crate::load::percentile_ms(&self.latencies_micros, fraction)
    }

    pub fn row(&self) -> String {
        format!(
            "push       {} subscribers, {:.0} writes/s: delivered {} of {} to the sampled subscribers, p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.subscribers,
            self.writes_per_second,
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
            "writes_per_second": self.writes_per_second,
            "written": self.written,
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

/// Writes at `rate` per second for `duration` while the subscribers read,
/// then collects the delivery times.
pub async fn run(
    base: &str,
    subscribers: usize,
    rate: u32,
    duration: Duration,
    subscription: Subscription,
) -> Result<PushOutcome, BoxError> {
    let Subscription { tasks, latencies, delivered, stop } = subscription;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = 0u64;
    while started.elapsed() < duration {
        ticks.tick().await;
        let response = client.post(format!("{base}/v1/bench-push")).json(&json!({"sent_at_micros": now_micros()})).send().await?;
        if response.status().as_u16() == 201 {
            written += 1;
        }
    }
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
    Ok(PushOutcome { subscribers, writes_per_second, written, delivered: delivered.load(Ordering::Relaxed), latencies_micros })
}

//! Scenarios: each runs `clients` tasks, every task with its own keep-alive
//! connection, for a fixed time, and records each request's latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Update,
    UpdateHot,
    Create,
    Read,
    Read304,
    List,
    DbLimit,
    DbStatement,
    Push,
}

impl Scenario {
    // The HTTP update scenarios run first, while every seeded record is at
    // version 1 and their version cache is right from the start. The direct
    // database scenarios run last: the server finds their changes only by
    // its once-a-second feed poll, and reading that backlog would delay the
    // deliveries that the push scenario measures.
    const ALL: [Scenario; 9] = [
        Self::Update,
        Self::UpdateHot,
        Self::Create,
        Self::Read,
        Self::Read304,
        Self::List,
        Self::Push,
        Self::DbLimit,
        Self::DbStatement,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::UpdateHot => "update-hot",
            Self::Create => "create",
            Self::Read => "read",
            Self::Read304 => "read-304",
            Self::List => "list",
            Self::DbLimit => "db-limit",
            Self::DbStatement => "db-statement",
            Self::Push => "push",
        }
    }

    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        if text == "all" {
            return Ok(Self::ALL.to_vec());
        }
        text.split(',')
            .map(|name| Self::ALL.into_iter().find(|scenario| scenario.name() == name).ok_or_else(|| format!("unknown scenario {name:?}")))
            .collect()
    }
}

/// The result of one scenario.
pub struct Outcome {
    pub scenario: Scenario,
    pub ok: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub elapsed: Duration,
    latencies_micros: Vec<u64>,
    /// For update-hot: whether the final records equal the acknowledged writes.
    pub no_lost_update: Option<bool>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, fraction: f64) -> f64 {
        percentile_ms(&self.latencies_micros, fraction)
    }

    pub fn row(&self) -> String {
        let conflict_rate = if self.ok + self.conflicts > 0 { self.conflicts as f64 * 100.0 / (self.ok + self.conflicts) as f64 } else { 0.0 };
        let mut row = format!(
            "{:<12} {:>9.0} ok/s  {:>5.1}% 409  errors {:<4} p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            self.scenario.name(),
            self.per_second(),
            conflict_rate,
            self.errors,
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.99),
            self.percentile(1.0)
        );
        if let Some(intact) = self.no_lost_update {
            row.push_str(if intact { "  no lost update" } else { "  LOST UPDATES" });
        }
        row
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario.name(),
            "ok": self.ok,
            "ok_per_second": self.per_second(),
            "conflicts": self.conflicts,
            "conflicts_per_second": self.conflicts as f64 / self.elapsed.as_secs_f64(),
            "errors": self.errors,
            "latency_ms": {"p50": self.percentile(0.5), "p90": self.percentile(0.9), "p99": self.percentile(0.99), "max": self.percentile(1.0)},
            "no_lost_update": self.no_lost_update,
        })
    }
}

/// Returns the latency at `fraction` (0 to 1) of sorted microsecond
/// latencies, in milliseconds; 0 when there are none.
pub fn percentile_ms(sorted_micros: &[u64], fraction: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let index = ((sorted_micros.len() as f64 - 1.0) * fraction).round() as usize;
    sorted_micros[index] as f64 / 1000.0
}

/// Counts of one task.
#[derive(Default)]
pub(crate) struct Tally {
    pub ok: u64,
    pub conflicts: u64,
    pub errors: u64,
    /// Microseconds per request, in the order they finished.
    pub latencies: Vec<u64>,
}

impl Tally {
    /// Adds the counts and latencies of another task.
    pub(crate) fn add(&mut self, part: Tally) {
        self.ok += part.ok;
        self.conflicts += part.conflicts;
        self.errors += part.errors;
        self.latencies.extend(part.latencies);
    }

    pub(crate) fn into_outcome(mut self, scenario: Scenario, elapsed: Duration) -> Outcome {
        self.latencies.sort_unstable();
        Outcome { scenario, ok: self.ok, conflicts: self.conflicts, errors: self.errors, elapsed, latencies_micros: self.latencies, no_lost_update: None }
    }
}

/// Creates `count` records and returns their ids.
pub async fn seed(base: &str, count: usize, clients: usize) -> Result<Vec<String>, BoxError> {
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut ids = Vec::new();
            for n in (client_index..count).step_by(clients) {
                let body: Value = client.post(format!("{base}/v1/bench")).json(&json!({"n": n, "count": 0})).send().await?.json().await?;
                ids.push(body["id"].as_str().ok_or("no id in the create response")?.to_owned());
            }
            Ok::<_, BoxError>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(task.await??);
    }
    Ok(ids)
}

/// Runs an HTTP scenario on `ids`.
pub async fn run(base: &str, scenario: Scenario, ids: &[String], clients: usize, duration: Duration) -> Result<Outcome, BoxError> {
    // Known version and count of each record, shared by all clients and
    // refreshed from every response, so a 409 needs no extra read.
    let state = Arc::new(Shared::new(base, ids).await?);
    let started = Instant::now();
    let deadline = started + duration;

    let mut tasks = Vec::new();
    for _ in 0..clients {
        let state = state.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move { client_loop(&base, scenario, &state, deadline).await }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(task.await??);
    }
    let elapsed = started.elapsed();

    let mut outcome = tally.into_outcome(scenario, elapsed);
    if scenario == Scenario::UpdateHot {
        outcome.no_lost_update = Some(state.verify(base).await?);
    }
    Ok(outcome)
}

struct Shared {
    ids: Vec<String>,
    /// The newest known (version, count) of each record. Kept as one pair,
    /// as a real client keeps a record, so that a write is never built from
    /// the count of one version and the version of another.
    known: Vec<std::sync::Mutex<(i64, i64)>>,
    acknowledged: Vec<AtomicI64>,
    start_versions: Vec<i64>,
    start_counts: Vec<i64>,
}

impl Shared {
    fn known(&self, index: usize) -> (i64, i64) {
        self.known[index].lock().map(|pair| *pair).unwrap_or((0, 0))
    }

    /// Records a newer state of a record; older ones, which concurrent
    /// responses can deliver late, are ignored.
    fn learn(&self, index: usize, version: i64, count: i64) {
        if let Ok(mut pair) = self.known[index].lock()
            && version > pair.0
        {
            *pair = (version, count);
        }
    }

    async fn new(base: &str, ids: &[String]) -> Result<Self, BoxError> {
        let client = reqwest::Client::new();
        let mut versions = Vec::new();
        let mut counts = Vec::new();
        // Only small sets are read up front; large ones learn versions
        // from their first 409.
        for id in ids {
            let (version, count) = if ids.len() <= 100 {
                let record: Value = client.get(format!("{base}/v1/bench/{id}")).send().await?.json().await?;
                (record["version"].as_i64().unwrap_or(1), record["count"].as_i64().unwrap_or(0))
            } else {
                (1, 0)
            };
            versions.push(version);
            counts.push(count);
        }
        Ok(Self {
            ids: ids.to_vec(),
            known: versions.iter().zip(&counts).map(|(version, count)| std::sync::Mutex::new((*version, *count))).collect(),
            acknowledged: ids.iter().map(|_| AtomicI64::new(0)).collect(),
            start_versions: versions,
            start_counts: counts,
        })
    }

    /// `true` when every record's count and version equal its start plus
    /// the writes acknowledged to clients.
    async fn verify(&self, base: &str) -> Result<bool, BoxError> {
        let client = reqwest::Client::new();
        for (index, id) in self.ids.iter().enumerate() {
            let record: Value = client.get(format!("{base}/v1/bench/{id}")).send().await?.json().await?;
            let acknowledged = self.acknowledged[index].load(Ordering::SeqCst);
            if record["count"].as_i64() != Some(self.start_counts[index] + acknowledged)
                || record["version"].as_i64() != Some(self.start_versions[index] + acknowledged)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

async fn client_loop(base: &str, scenario: Scenario, state: &Shared, deadline: Instant) -> Result<Tally, BoxError> {
    let client = reqwest::Client::new();
    let mut tally = Tally::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let index = rand::rng().random_range(0..state.ids.len());
        let id = &state.ids[index];
        let started = Instant::now();
        let response = match scenario {
            Scenario::Update | Scenario::UpdateHot => {
                let (version, count) = state.known(index);
                client
                    .patch(format!("{base}/v1/bench/{id}"))
                    .header("content-type", "application/merge-patch+json")
                    .header("if-match", format!("\"{version}\""))
                    .body(json!({"count": count + 1}).to_string())
                    .send()
                    .await
            }
            Scenario::Create => {
                n += 1;
                client.post(format!("{base}/v1/bench-created")).json(&json!({"n": n})).send().await
            }
            Scenario::Read => client.get(format!("{base}/v1/bench/{id}")).send().await,
            Scenario::Read304 => {
                let (version, _) = state.known(index);
                client.get(format!("{base}/v1/bench/{id}")).header("if-none-match", format!("\"{version}\"")).send().await
            }
            Scenario::List => client.get(format!("{base}/v1/bench?limit=50")).send().await,
            Scenario::DbLimit | Scenario::DbStatement | Scenario::Push => unreachable!("db-limit, db-statement and push have runners of their own"),
        };
        let Ok(response) = response else {
            tally.errors += 1;
            continue;
        };
        let status = response.status().as_u16();
        let body = match scenario {
            Scenario::Update | Scenario::UpdateHot | Scenario::Read => response.json::<Value>().await.ok(),
            _ => {
                let _ = response.bytes().await;
                None
            }
        };
        tally.latencies.push(started.elapsed().as_micros() as u64);

        match (scenario, status) {
            (Scenario::Update | Scenario::UpdateHot, 200) => {
                let record = body.unwrap_or_default();
                state.learn(index, record["version"].as_i64().unwrap_or(0), record["count"].as_i64().unwrap_or(0));
                state.acknowledged[index].fetch_add(1, Ordering::SeqCst);
                tally.ok += 1;
            }
            (Scenario::Update | Scenario::UpdateHot, 409) => {
                let problem = body.unwrap_or_default();
                state.learn(index, problem["current_version"].as_i64().unwrap_or(0), problem["current"]["count"].as_i64().unwrap_or(0));
                tally.conflicts += 1;
            }
            (Scenario::Read, 200) => {
                if let Some(record) = body {
                    state.learn(index, record["version"].as_i64().unwrap_or(0), record["count"].as_i64().unwrap_or(0));
                }
                tally.ok += 1;
            }
            (Scenario::Read304, 304) | (Scenario::Read304, 200) | (Scenario::List, 200) | (Scenario::Create, 201) => tally.ok += 1,
            _ => tally.errors += 1,
        }
    }
    Ok(tally)
}

/// Measures the database's own limit: the same conditional write (update, revision,
/// change, one transaction) through the library, without HTTP, with the
/// same concurrency and durability.
pub async fn db_limit(database_url: &str, ids: &[String], clients: usize, duration: Duration) -> Result<Outcome, BoxError> {
    use versa::domain::{CollectionName, ExpectedVersion, RecordId};
    use versa::service::records::{self, Change, WriteContext};

    let url = versa::storage::DatabaseUrl::parse(database_url)?;
    let db = tokio::task::spawn_blocking(move || versa::storage::Database::connect(&url, clients as u32, Duration::from_secs(5))).await??;
    let collection = CollectionName::parse("bench")?;
    let versions: Arc<Vec<AtomicI64>> = Arc::new(ids.iter().map(|_| AtomicI64::new(0)).collect());
    let ids: Arc<Vec<RecordId>> = Arc::new(ids.iter().filter_map(|id| RecordId::parse(id).ok()).collect());

    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (db, collection, versions, ids) = (db.clone(), collection.clone(), versions.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            // Versions are learned from the first write to each record,
            // which is unconditional for that reason.
            let policy = versa::domain::collection::CollectionPolicy { allow_unconditional_writes: true, ..Default::default() };
            let context = WriteContext { principal: "bench".into(), policy: Arc::new(policy), lease_token: None };
            let mut tally = Tally::default();
            while Instant::now() < deadline {
                let index = rand::rng().random_range(0..ids.len());
                let known = versions[index].load(Ordering::SeqCst);
                let expected = if known == 0 { ExpectedVersion::Any } else { ExpectedVersion::Exactly(known) };
                let mut patch = serde_json::Map::new();
                patch.insert("count".into(), json!(known));
                let begun = Instant::now();
                let result = records::write(&db, &collection, ids[index], Some(expected), Change::MergePatch(patch), &context).await;
                tally.latencies.push(begun.elapsed().as_micros() as u64);
                match result {
                    Ok(written) => {
                        versions[index].store(written.record.meta.version, Ordering::SeqCst);
                        tally.ok += 1;
                    }
                    Err(versa::service::ServiceError::Conflict(report)) => {
                        versions[index].store(report.current_version, Ordering::SeqCst);
                        tally.conflicts += 1;
                    }
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(task.await?);
    }
    Ok(tally.into_outcome(Scenario::DbLimit, started.elapsed()))
}

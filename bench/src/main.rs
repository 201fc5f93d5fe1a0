//! `versa-bench`: starts a Versa server, loads it with named scenarios over
//! HTTP/1.1 keep-alive from this machine, measures the database's own limit
//! for the same write through the library without HTTP and as single
//! statements without the library, and reports a table and a JSON file.
//! All traffic goes to 127.0.0.1.

mod load;
mod push;
mod server;
mod statement;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde_json::{Value, json};

use load::{Outcome, Scenario};

#[derive(Debug, Parser)]
#[command(name = "versa-bench", about = "Load Versa with named scenarios and compare with the database's own limit.")]
struct Args {
    /// The versa binary to start.
    #[arg(long, default_value = "target/release/versa")]
    versa: PathBuf,
    /// Database URL for the server; a fresh SQLite file when absent.
    #[arg(long)]
    database_url: Option<String>,
    /// Comma-separated scenarios: update, update-hot, create, read, read-304, list, db-limit, db-statement, push, or all.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Records seeded for the update and read scenarios.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// SSE subscribers in the push scenario.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Writes per second in the push scenario.
    #[arg(long, default_value_t = 500)]
    push_rate: u32,
    /// Path of the JSON report.
    #[arg(long, default_value = "bench-report.json")]
    json: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let scenarios = Scenario::parse_list(&args.scenarios)?;
    let duration = Duration::from_secs(args.seconds);

    let dir = std::env::temp_dir().join(format!("versa-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let database_url = args.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("bench.db").display()));

    let server = server::Server::start(&args.versa, &database_url, &dir).await?;
    println!("server ready in {:.0} ms, idle RSS {:.1} MiB ({})", server.ready_after.as_secs_f64() * 1000.0, server.rss_mib()?, redact(&database_url));

    let base = format!("http://{}", server.address);
    let ids = load::seed(&base, args.records, args.clients).await?;
    let hot: Vec<String> = ids.iter().take(10).cloned().collect();

    let mut results = Vec::new();
    let mut push_report = None;
    let mut update_cpu = None;
    for scenario in scenarios {
        if scenario == Scenario::Push {
            let before = server.rss_mib()?;
            let subscription = push::subscribe(&base, args.subscribers).await?;
            let per_subscriber_kib = (server.rss_mib()? - before) * 1024.0 / args.subscribers.max(1) as f64;
            let outcome = push::run(&base, args.subscribers, args.push_rate, duration, subscription).await?;
            println!("{}  {per_subscriber_kib:.1} KiB server memory per idle subscriber", outcome.row());
            let mut report = outcome.to_json();
            report["server_kib_per_idle_subscriber"] = json!(per_subscriber_kib);
            push_report = Some(report);
            continue;
        }
        let cpu_before = server.cpu_seconds()?;
        let outcome = match scenario {
            Scenario::DbLimit => load::db_limit(&database_url, &ids, args.clients, duration).await?,
            Scenario::DbStatement => statement::run(&database_url, &ids, args.clients, duration).await?,
            Scenario::UpdateHot => load::run(&base, scenario, &hot, args.clients, duration).await?,
            _ => load::run(&base, scenario, &ids, args.clients, duration).await?,
        };
        if scenario == Scenario::Update && outcome.ok > 0 {
            update_cpu = Some((server.cpu_seconds()? - cpu_before) * 1000.0 / outcome.ok as f64);
        }
        println!("{}", outcome.row());
        results.push(outcome);
    }

    let db_limit_ratio = update_ratio(&results, Scenario::DbLimit);
    let statement_limit_ratio = update_ratio(&results, Scenario::DbStatement);
    let peak = server.peak_rss_mib()?;
    println!("peak RSS {peak:.1} MiB");
    if let Some(cpu) = update_cpu {
        println!("server CPU seconds per 1,000 committed updates: {cpu:.3}");
    }
    if let Some(ratio) = db_limit_ratio {
        println!("update over HTTP / direct database limit: {ratio:.2}");
    }
    if let Some(ratio) = statement_limit_ratio {
        println!("update over HTTP / single-statement database limit: {ratio:.2}");
    }

    let report = json!({
        "database": redact(&database_url),
        "clients": args.clients,
        "seconds_per_scenario": args.seconds,
        "records": args.records,
        "ready_ms": server.ready_after.as_millis() as u64,
        "idle_rss_mib": server.idle_rss_mib,
        "peak_rss_mib": peak,
        "cpu_seconds_per_1000_updates": update_cpu,
        "update_to_db_limit_ratio": db_limit_ratio,
        "update_to_statement_limit_ratio": statement_limit_ratio,
        "scenarios": results.iter().map(Outcome::to_json).collect::<Vec<Value>>(),
        "push": push_report,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", args.json.display());

    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Returns update ok/s divided by `limit` ok/s, when both ran and `limit`
/// committed anything.
fn update_ratio(results: &[Outcome], limit: Scenario) -> Option<f64> {
    let update = results.iter().find(|outcome| outcome.scenario == Scenario::Update)?;
    let limit = results.iter().find(|outcome| outcome.scenario == limit)?;
    (limit.ok > 0).then(|| update.per_second() / limit.per_second())
}

/// Hides a password in a database URL.
fn redact(url: &str) -> String {
    versa::storage::DatabaseUrl::parse(url).map(|url| url.to_string()).unwrap_or_else(|_| url.to_owned())
}

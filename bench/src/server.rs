//! The server under test: a `versa serve` child process on 127.0.0.1.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Server {
    child: Child,
    pid: u32,
    pub address: String,
    pub ready_after: Duration,
    pub idle_rss_mib: f64,
}

impl Server {
    /// Starts the server and waits for `/readyz`; `ready_after` is the time
    /// from spawning to the first 200.
    pub async fn start(versa: &Path, database_url: &str, dir: &Path) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let versa = std::fs::canonicalize(versa)
            .map_err(|error| format!("cannot find {}: {error}; build it with cargo build --release", versa.display()))?;
        let started = Instant::now();
        let mut child = Command::new(&versa)
            .args(["serve", "--bind", "127.0.0.1:0", "--database-url", database_url])
            .env("RUST_LOG", "info,tracing_actix_web=error")
            .current_dir(dir)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}; build it with cargo build --release", versa.display()))?;
        let pid = child.id().ok_or("the server exited at once")?;

        let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let address = loop {
            let line = lines.next_line().await?.ok_or("the server exited before listening")?;
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap_or_default().to_owned();
            }
        };
        // The log is read to the end, so the server never blocks on a full
        // stderr pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let client = reqwest::Client::new();
        loop {
            if let Ok(response) = client.get(format!("http://{address}/readyz")).send().await
                && response.status().is_success()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready_after = started.elapsed();

        let mut server = Self { child, pid, address, ready_after, idle_rss_mib: 0.0 };
        server.idle_rss_mib = server.rss_mib()?;
        Ok(server)
    }

    pub fn rss_mib(&self) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
        status_kib(self.pid, "VmRSS:").map(|kib| kib / 1024.0)
    }

    pub fn peak_rss_mib(&self) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
        status_kib(self.pid, "VmHWM:").map(|kib| kib / 1024.0)
    }

    /// User plus system CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the line.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or("malformed /proc stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).ok_or("no utime")?.parse::<f64>()? + fields.get(12).ok_or("no stime")?.parse::<f64>()?;
        Ok(ticks / clock_ticks_per_second())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn status_kib(pid: u32, field: &str) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with(field)).ok_or("field missing from /proc status")?;
    Ok(line.split_whitespace().nth(1).ok_or("no value")?.parse()?)
}

/// Linux reports CPU time in clock ticks of 100 per second on every
/// architecture this harness runs on (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    100.0
}

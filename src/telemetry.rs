//! Logging through `tracing`: text or JSON lines on stderr, filtered by
//! `RUST_LOG` (default `info,tracing_actix_web=error`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; a second call does nothing.
pub fn init(format: LogFormat) {
    // tracing-actix-web logs every 4xx response at WARN; client mistakes
    // such as a stale version are part of normal operation, so by default
    // only its errors are shown.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,tracing_actix_web=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

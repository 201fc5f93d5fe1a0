//! Typed, layered configuration: built-in defaults, then the TOML file,
//! then `VERSA_*` environment variables and command-line flags (clap merges
//! those two, flags first).

mod auth;
mod collections;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::Authenticator;
use crate::domain::collection::Collections;
use crate::storage::DatabaseUrl;

pub const DEFAULT_BIND: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://versa.db";

#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub collections: Collections,
    pub auth: Authenticator,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind: String,
    /// Maximum request body size, in bytes.
    pub max_body_bytes: usize,
    /// Maximum nesting depth of arrays and objects in a request body.
    pub max_json_depth: usize,
    /// Maximum number of operations in one `POST /v1/_batch`.
    pub max_batch_operations: usize,
    /// Interval of heartbeat comments on idle push connections.
    pub heartbeat: Duration,
    /// Events a push subscriber may fall behind before it is reset.
    pub push_buffer: usize,
    /// Requests per second allowed to each principal; `None` sets no limit.
    pub rate_limit_per_second: Option<u32>,
    /// Requests a principal may send at once before the rate applies.
    pub rate_limit_burst: Option<u32>,
    /// Whether `/metrics` answers clients other than loopback ones.
    pub metrics_public: bool,
    /// Maximum subscriptions on one WebSocket.
    pub max_subscriptions: usize,
    /// Maximum size of one WebSocket message from a client, in bytes.
    pub max_ws_message_bytes: usize,
    /// Status of a stale-version response: 409 (default) or 412.
    pub conflict_status: u16,
    pub cors_origins: Vec<String>,
    /// HTTP worker threads; defaults to the number of CPU cores.
    pub workers: Option<usize>,
    /// How long a graceful shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: DatabaseUrl,
    pub pool_size: u32,
    /// How long a request waits for a free connection before 503.
    pub connect_timeout: Duration,
    /// How long the change feed keeps a change; a cursor older than that
    /// gets 410 Gone.
    pub change_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            server: ServerSettings {
                bind: DEFAULT_BIND.to_owned(),
                max_body_bytes: 1024 * 1024,
                max_json_depth: 64,
                max_batch_operations: 100,
                heartbeat: Duration::from_secs(15),
                push_buffer: 1024,
                rate_limit_per_second: None,
                rate_limit_burst: None,
                metrics_public: false,
                max_subscriptions: 16,
                max_ws_message_bytes: 64 * 1024,
                conflict_status: 409,
                cors_origins: Vec::new(),
                workers: None,
                shutdown_timeout: Duration::from_secs(30),
            },
            database: DatabaseSettings {
                url: DatabaseUrl::parse(DEFAULT_DATABASE_URL).unwrap_or_else(|_| unreachable!("the default URL parses")),
                pool_size: 8,
                connect_timeout: Duration::from_secs(5),
                change_retention: Duration::from_secs(7 * 24 * 60 * 60),
            },
            collections: Collections::default(),
            auth: Authenticator::default(),
        }
    }
}

/// A configuration problem, naming the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The file's shape. Other top-level sections are accepted and ignored, so
/// that a file written for a newer release loads. Inside the sections read
/// here an unknown key is an error, to catch typos.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    database: DatabaseFile,
    #[serde(default)]
    collections: std::collections::BTreeMap<String, collections::CollectionFile>,
    #[serde(default)]
    auth: auth::AuthFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    bind: Option<String>,
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_batch_operations: Option<usize>,
    heartbeat_seconds: Option<u64>,
    push_buffer: Option<usize>,
    max_subscriptions: Option<usize>,
    metrics_public: Option<bool>,
    rate_limit_per_second: Option<u32>,
    rate_limit_burst: Option<u32>,
    max_ws_message_bytes: Option<usize>,
    conflict_status: Option<u16>,
    cors_origins: Option<Vec<String>>,
    workers: Option<usize>,
    shutdown_timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseFile {
    url: Option<String>,
    pool_size: Option<u32>,
    connect_timeout_seconds: Option<u64>,
    change_retention_seconds: Option<u64>,
}

/// Values from the environment and flags, which override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bind: Option<String>,
    pub database_url: Option<String>,
}

impl Settings {
    /// Loads the file at `path` (if any) over the defaults, then applies
    /// `overrides`.
    ///
    /// # Errors
    ///
    /// An unreadable file, invalid TOML, an unknown key in `[server]` or
    /// `[database]`, or a value out of range.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let file = match path {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str(&text).map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string() })?
            }
        };

        let mut settings = Self::default();
        let server = &mut settings.server;
        if let Some(bind) = file.server.bind {
            server.bind = bind;
        }
        if let Some(bytes) = file.server.max_body_bytes {
            server.max_body_bytes = positive(bytes, "server.max_body_bytes")?;
        }
        if let Some(depth) = file.server.max_json_depth {
            server.max_json_depth = positive(depth, "server.max_json_depth")?;
        }
        if let Some(operations) = file.server.max_batch_operations {
            server.max_batch_operations = positive(operations, "server.max_batch_operations")?;
        }
        if let Some(seconds) = file.server.heartbeat_seconds {
            server.heartbeat = Duration::from_secs(positive(seconds as usize, "server.heartbeat_seconds")? as u64);
        }
        if let Some(events) = file.server.push_buffer {
            server.push_buffer = positive(events, "server.push_buffer")?;
        }
        if let Some(rate) = file.server.rate_limit_per_second {
            server.rate_limit_per_second = Some(positive(rate as usize, "server.rate_limit_per_second")? as u32);
        }
        if let Some(burst) = file.server.rate_limit_burst {
            server.rate_limit_burst = Some(positive(burst as usize, "server.rate_limit_burst")? as u32);
        }
        if let Some(public) = file.server.metrics_public {
            server.metrics_public = public;
        }
        if let Some(count) = file.server.max_subscriptions {
            server.max_subscriptions = positive(count, "server.max_subscriptions")?;
        }
        if let Some(bytes) = file.server.max_ws_message_bytes {
            server.max_ws_message_bytes = positive(bytes, "server.max_ws_message_bytes")?;
        }
        if let Some(status) = file.server.conflict_status {
            if status != 409 && status != 412 {
                return Err(ConfigError::Invalid { key: "server.conflict_status".to_owned(), message: format!("must be 409 or 412, got {status}") });
            }
            server.conflict_status = status;
        }
        if let Some(origins) = file.server.cors_origins {
            if let Some(bad) = origins.iter().find(|origin| !is_origin(origin)) {
                return Err(ConfigError::Invalid {
                    key: "server.cors_origins".to_owned(),
                    message: format!("{bad:?} is not an origin; write it as scheme://host[:port], such as \"https://admin.example.com\""),
                });
            }
            server.cors_origins = origins;
        }
        if let Some(workers) = file.server.workers {
            server.workers = Some(positive(workers, "server.workers")?);
        }
        if let Some(seconds) = file.server.shutdown_timeout_seconds {
            server.shutdown_timeout = Duration::from_secs(seconds);
        }

        let database = &mut settings.database;
        if let Some(url) = file.database.url {
            database.url = parse_url(&url)?;
        }
        if let Some(size) = file.database.pool_size {
            database.pool_size = positive(size as usize, "database.pool_size")? as u32;
        }
        if let Some(seconds) = file.database.change_retention_seconds {
            database.change_retention = Duration::from_secs(positive(seconds as usize, "database.change_retention_seconds")? as u64);
        }
        if let Some(seconds) = file.database.connect_timeout_seconds {
            database.connect_timeout = Duration::from_secs(positive(seconds as usize, "database.connect_timeout_seconds")? as u64);
        }

        let base_dir = path.and_then(Path::parent).unwrap_or(Path::new("."));
        settings.collections = collections::build(file.collections, base_dir)?;
        settings.auth = auth::build(file.auth, base_dir)?;

        if let Some(bind) = overrides.bind {
            settings.server.bind = bind;
        }
        if let Some(url) = overrides.database_url {
            settings.database.url = parse_url(&url)?;
        }
        Ok(settings)
    }
}

/// `true` for `http://` or `https://` followed by a host and an optional
/// port, with no path.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://")) else {
        return false;
    };
    !rest.is_empty() && !rest.contains('/') && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

fn positive(value: usize, key: &'static str) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::Invalid { key: key.to_owned(), message: "must be greater than 0".to_owned() });
    }
    Ok(value)
}

fn parse_url(url: &str) -> Result<DatabaseUrl, ConfigError> {
    DatabaseUrl::parse(url).map_err(|message| ConfigError::Invalid { key: "database.url".to_owned(), message })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::storage::Backend;

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn defaults_without_file() {
        let settings = Settings::load(None, Overrides::default()).unwrap();
        assert_eq!(settings.server.bind, "127.0.0.1:8080");
        assert_eq!(settings.database.url.to_string(), "sqlite://versa.db");
        assert_eq!(settings.server.conflict_status, 409);
    }

    #[test]
    fn file_then_overrides() {
        let file = write_config(
            "[server]\nbind = \"127.0.0.1:9000\"\nconflict_status = 412\n[database]\nurl = \"postgres://h/db\"\npool_size = 3\n\
             [auth.jwt]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"\naudience = \"versa\"\n[collections.notes]\nmerge = \"fields\"\n",
        );
        let settings = Settings::load(Some(file.path()), Overrides::default()).unwrap();
        assert_eq!(settings.server.bind, "127.0.0.1:9000");
        assert_eq!(settings.server.conflict_status, 412);
        assert_eq!(settings.database.url.backend(), Backend::Postgres);
        assert_eq!(settings.database.pool_size, 3);

        let overrides = Overrides { bind: Some("127.0.0.1:0".into()), database_url: Some("x.db".into()) };
        let settings = Settings::load(Some(file.path()), overrides).unwrap();
        assert_eq!(settings.server.bind, "127.0.0.1:0");
        assert_eq!(settings.database.url.backend(), Backend::Sqlite);
    }

    #[test]
    fn unknown_key_in_known_section_is_named() {
        let file = write_config("[server]\nbnd = \"x\"\n");
        let error = Settings::load(Some(file.path()), Overrides::default()).unwrap_err().to_string();
        assert!(error.contains("bnd"), "{error}");
    }

    #[test]
    fn invalid_values_are_named() {
        let file = write_config("[server]\nconflict_status = 400\n");
        let error = Settings::load(Some(file.path()), Overrides::default()).unwrap_err().to_string();
        assert_eq!(error, "invalid value for server.conflict_status: must be 409 or 412, got 400");
    }
}

//! The `versa` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::startup::{Application, open_database};
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Parser)]
#[command(name = "versa", version, about = "Versioned JSON records over HTTP, with conflict reports for concurrent edits.")]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, env = "VERSA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate(DatabaseArgs),
    /// Validate a configuration file, compiling every schema, and print
    /// what it configures.
    CheckConfig {
        /// The TOML configuration file to check.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct DatabaseArgs {
    /// TOML configuration file.
    #[arg(long, env = "VERSA_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: sqlite://FILE, a bare file path, or postgres://...
    /// [default: sqlite://versa.db]
    #[arg(long, env = "VERSA_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// Address and port to listen on. [default: 127.0.0.1:8080]
    #[arg(long, env = "VERSA_BIND")]
    bind: Option<String>,
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);

    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Migrate(args) => migrate(args),
        Command::CheckConfig { file } => check_config(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let mut message = error.to_string();
            let mut source = error.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn serve(args: ServeArgs) -> CliResult {
    let overrides = Overrides { bind: args.bind, database_url: args.database.database_url };
    let settings = Settings::load(args.database.config.as_deref(), overrides)?;

    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(settings).await?;
        application.run_until_stopped().await?;
        Ok(())
    })
}

fn migrate(args: DatabaseArgs) -> CliResult {
    let overrides = Overrides { bind: None, database_url: args.database_url };
    let settings = Settings::load(args.config.as_deref(), overrides)?;

    actix_web::rt::System::new().block_on(async move {
        open_database(&settings).await?;
        tracing::info!(database = %settings.database.url, "database schema is up to date");
        Ok(())
    })
}

fn check_config(file: &std::path::Path) -> CliResult {
    let settings = Settings::load(Some(file), Overrides::default())?;
    print!("{}", describe(file, &settings));
    Ok(())
}

/// Renders what a loaded configuration means, for `versa check-config`.
fn describe(file: &std::path::Path, settings: &Settings) -> String {
    use std::fmt::Write;

    let server = &settings.server;
    let mut text = String::new();
    let _ = writeln!(text, "{} is valid.", file.display());
    let _ = writeln!(
        text,
        "server: listens on {}, accepts bodies up to {} bytes nested up to {} levels, returns {} for stale writes",
        server.bind, server.max_body_bytes, server.max_json_depth, server.conflict_status
    );
    let database = &settings.database;
    let _ = writeln!(
        text,
        "database: {} with up to {} connections, keeps feed changes for {} seconds",
        database.url,
        database.pool_size,
        database.change_retention.as_secs()
    );

    let auth = &settings.auth;
    if auth.is_enabled() {
        let jwt = auth.jwt_algorithm().map(|algorithm| format!(", JWTs signed with {algorithm:?}")).unwrap_or_default();
        let tokens = match auth.token_count() {
            1 => "1 static token".to_owned(),
            count => format!("{count} static tokens"),
        };
        let _ = writeln!(text, "auth: {tokens}{jwt}; requests without a valid bearer token get 401");
    } else {
        let _ = writeln!(text, "auth: off; every request is anonymous and the server listens on loopback addresses only");
    }

    let declared: Vec<_> = settings.collections.declared().collect();
    if declared.is_empty() {
        let _ = writeln!(text, "collections: none declared, so every valid collection name is accepted, schemaless and strict");
        return text;
    }
    let _ = writeln!(text, "collections: {} declared; requests to any other collection get 404", declared.len());
    for (name, policy) in declared {
        let merge = match policy.merge {
            crate::domain::collection::MergePolicy::Strict => "strict (every stale write is a conflict)",
            crate::domain::collection::MergePolicy::Fields => "fields (stale writes to other fields are merged)",
        };
        let _ = writeln!(text, "  {name}:");
        let _ = writeln!(text, "    merge: {merge}");
        let _ = writeln!(text, "    schema: {}", if policy.schema.is_some() { "validated on every write" } else { "none" });
        if !policy.last_writer_wins.is_empty() {
            let _ = writeln!(text, "    last writer wins: {}", policy.last_writer_wins.join(", "));
        }
        match policy.keep_revisions {
            Some(keep) => {
                let _ = writeln!(text, "    history: the newest {keep} revisions per record");
            }
            None => {
                let _ = writeln!(text, "    history: every revision");
            }
        }
        let unconditional = if policy.allow_unconditional_writes { "allowed" } else { "rejected with 428" };
        let _ = writeln!(text, "    If-Match: *: {unconditional}");
        let roles = |list: &Option<Vec<String>>| match list {
            None => "any authenticated principal".to_owned(),
            Some(roles) => roles.join(", "),
        };
        let _ = writeln!(text, "    read: {}; write: {}", roles(&policy.read), roles(&policy.write));
    }
    text
}

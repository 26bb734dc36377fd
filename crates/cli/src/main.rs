use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use editthinker::{config::Config, roles, telemetry};

/// EditThinker Service: Think-while-Edit image editing jobs.
#[derive(Debug, Parser)]
#[command(name = "editthinker", version)]
struct Cli {
    /// Configuration file (TOML). Defaults to ./editthinker.toml when present.
    #[arg(long, global = true, env = "EDITTHINKER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// API and worker in one process (the embedded default).
    Serve,
    /// API only.
    Api,
    /// Worker only.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// API keys and tenants' webhook secrets (`[auth] mode = "api_keys"`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a key for a tenant and print it (it is shown only this once).
    Create {
        /// The tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A note to tell keys apart.
        #[arg(long)]
        label: Option<String>,
    },
    /// List every key (never the keys themselves).
    List,
    /// Revoke a key: every API replica refuses it within seconds.
    Revoke {
        /// The key's id (`keys list`).
        id: String,
    },
    /// Give a tenant a new webhook signing secret of its own and print it.
    RotateWebhookSecret {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// Runs a `keys` subcommand against the configured database (migrated
/// first, so it works on a fresh one).
async fn keys(config: Config, command: KeysCommand) -> anyhow::Result<()> {
    use anyhow::Context;
    use editthinker::keys;
    let store = editthinker_store::connect(&config.database_url)
        .await
        .context("database_url")?;
    store.migrate().await.context("applying migrations")?;
    match command {
        KeysCommand::Create { tenant, label } => {
            let (key, id) = keys::create(store.as_ref(), &tenant, label).await?;
            eprintln!("key {id} for tenant {tenant:?} (shown only now; store it safely):");
            println!("{key}");
        }
        KeysCommand::List => print!("{}", keys::list(store.as_ref()).await?),
        KeysCommand::Revoke { id } => {
            keys::revoke(store.as_ref(), &id).await?;
            eprintln!("revoked {id}");
        }
        KeysCommand::RotateWebhookSecret { tenant } => {
            let secret = keys::rotate_webhook_secret(store.as_ref(), &tenant).await?;
            eprintln!("new webhook secret of tenant {tenant:?} (shown only now):");
            println!("{secret}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        println!("{}", editthinker_api::openapi_json());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("editthinker: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log);
    let result = match cli.command {
        Command::Serve => roles::serve(config).await,
        Command::Api => roles::api(config).await,
        Command::Worker => roles::worker(config).await,
        Command::Migrate => roles::migrate(config).await,
        Command::Keys { command } => keys(config, command).await,
        Command::Openapi => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("editthinker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

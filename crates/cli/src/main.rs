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

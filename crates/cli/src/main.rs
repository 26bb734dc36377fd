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
    Serve {
        /// Run with the sandbox editor and thinker (test mode: made-up
        /// edits and critiques, no keys, no GPU) in place of the configured
        /// ones, and print the viewer's address.
        #[arg(long)]
        sandbox: bool,
    },
    /// API only.
    Api,
    /// Worker only.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Upload an image with an instruction and watch the job live; the
    /// result is saved to `--out` (default `<image stem>.edited.png`).
    Submit {
        #[command(flatten)]
        args: editthinker::client::commands::SubmitArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Look at and act on jobs of a running service.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[command(flatten)]
        remote: Remote,
    },
    /// API keys and tenants' webhook secrets (`[auth] mode = "api_keys"`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// A tenant's paid provider calls over a period, by editor, read from
    /// the configured database (the usage ledger; docs/api.md "Usage").
    Usage {
        /// The tenant (`default` without `[auth]`).
        #[arg(long, default_value = "default")]
        tenant: String,
        /// Start of the period: a date (`2026-12-01`, midnight UTC) or an
        /// RFC 3339 time (default: 30 days before `--until`).
        #[arg(long)]
        since: Option<String>,
        /// End of the period, exclusive (same forms; default: now).
        #[arg(long)]
        until: Option<String>,
    },
}

/// Which service a client command talks to, and as whom.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The service's base URL.
    #[arg(long, env = "EDITTHINKER_SERVER", default_value = editthinker::client::DEFAULT_SERVER, global = true)]
    server: String,
    /// An API key (`et_…`), when the service wants one.
    #[arg(
        long,
        env = "EDITTHINKER_API_KEY",
        hide_env_values = true,
        global = true
    )]
    key: Option<String>,
}

impl Remote {
    fn client(&self) -> editthinker::client::ApiClient {
        editthinker::client::ApiClient::new(&self.server, self.key.clone())
    }
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Recent jobs, newest first.
    List {
        /// Only jobs with this status.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "canceled"])]
        status: Option<String>,
        /// How many (1-100).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One job as JSON.
    Get {
        /// The job id.
        id: String,
    },
    /// Watch a job live until it ends.
    Watch {
        /// The job id.
        id: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Queue a failed job again.
    Retry {
        /// The job id.
        id: String,
    },
    /// Save the result image, or one turn's.
    Download {
        /// The job id.
        id: String,
        /// This turn's image instead of the result.
        #[arg(long)]
        turn: Option<u32>,
        /// Where to save it (default `<id>.png`, `<id>.turn<N>.png`).
        #[arg(long)]
        out: Option<PathBuf>,
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

/// Prints a tenant's usage from the configured database.
async fn usage(
    config: Config,
    tenant: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let store = editthinker_store::connect(&config.database_url)
        .await
        .context("database_url")?;
    store.migrate().await.context("applying migrations")?;
    let until = match until {
        Some(raw) => editthinker::usage::instant(raw).context("--until")?,
        None => chrono::Utc::now(),
    };
    let since = match since {
        Some(raw) => editthinker::usage::instant(raw).context("--since")?,
        None => until - chrono::Duration::days(30),
    };
    anyhow::ensure!(since < until, "--since must be before --until");
    let rows = store
        .tenant_usage(tenant, since, until)
        .await
        .context("reading the usage ledger")?;
    print!(
        "{}",
        editthinker::usage::table(tenant, since, until, &rows, &config.currency)
    );
    Ok(())
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
    use editthinker::client::commands;
    if matches!(
        cli.command,
        Command::Openapi | Command::Submit { .. } | Command::Jobs { .. }
    ) {
        // A client command piped into `head` ends quietly when the pipe
        // closes, like any Unix tool, instead of panicking on the write
        // (Rust ignores SIGPIPE). The server roles keep ignoring it.
        // SAFETY: no other thread exists yet that could race on the
        // signal disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Openapi => {
            println!("{}", editthinker_api::openapi_json());
            return ExitCode::SUCCESS;
        }
        // Client commands need no configuration: they talk to a server.
        Command::Submit { args, remote } => {
            return commands::submit(&remote.client(), args).await;
        }
        Command::Jobs { command, remote } => {
            let client = remote.client();
            return match command {
                JobsCommand::List { status, limit } => {
                    commands::list(&client, status.as_deref(), limit).await
                }
                JobsCommand::Get { id } => commands::print_job(client.job(&id).await),
                JobsCommand::Watch { id } => commands::watch_job(&client, &id, None, false).await,
                JobsCommand::Cancel { id } => commands::print_job(client.cancel(&id).await),
                JobsCommand::Retry { id } => commands::print_job(client.retry(&id).await),
                JobsCommand::Download { id, turn, out } => {
                    commands::download(&client, &id, turn, out).await
                }
            };
        }
        _ => {}
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) if matches!(cli.command, Command::Serve { sandbox: true }) => {
            config.with_sandbox()
        }
        Ok(config) => config,
        Err(e) => {
            eprintln!("editthinker: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(&config.log, &config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("editthinker: configuration error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match &config.loaded_from {
        Some(file) => tracing::info!(file = %file.display(), "configuration loaded"),
        None => tracing::info!(
            "no {} in the working directory and no --config: defaults and EDITTHINKER_* variables",
            editthinker::config::DEFAULT_CONFIG_FILE
        ),
    }
    let result = match cli.command {
        Command::Serve { .. } => roles::serve(config).await,
        Command::Api => roles::api(config).await,
        Command::Worker => roles::worker(config).await,
        Command::Migrate => roles::migrate(config).await,
        Command::Keys { command } => keys(config, command).await,
        Command::Usage {
            tenant,
            since,
            until,
        } => usage(config, &tenant, since.as_deref(), until.as_deref()).await,
        Command::Openapi | Command::Submit { .. } | Command::Jobs { .. } => {
            unreachable!("handled above")
        }
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command line's definition only when it is used; this
    /// checks every subcommand at once (duplicate names, groups, flags).
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}

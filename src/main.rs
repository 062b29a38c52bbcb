//! The `mlq` command: `mlq serve` runs everything, `mlq migrate` only
//! applies database migrations, `mlq devices` says where libtorch can run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use mlq::config::{Overrides, Settings};
use mlq::startup::Application;
use mlq::{db, telemetry};

#[derive(Parser)]
#[command(name = "mlq", version, about = "ML processing service")]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, global = true, env = "MLQ_CONFIG")]
    config: Option<PathBuf>,
    /// Postgres URL (overrides MLQ_DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// HTTP listen address (overrides MLQ_BIND).
    #[arg(long, global = true)]
    bind: Option<String>,
    /// Data directory (overrides MLQ_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// ML worker threads (overrides MLQ_WORKERS).
    #[arg(long, global = true)]
    workers: Option<usize>,
    /// Enable diagnostic commands such as `sleep`.
    #[arg(long, global = true)]
    diagnostics: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP API, the dispatcher and the ML pool.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print, as JSON, whether libtorch sees CUDA and how many GPUs.
    Devices,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user and print a new API token for it (only the token, on
    /// stdout, once: it is not stored).
    Create {
        name: String,
        /// An admin sees and manages every user's tasks and models.
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Revoke an API token (or a dashboard session) by id.
    Revoke { id: uuid::Uuid },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Devices = cli.command {
        // Needs neither configuration nor a database: it is what an
        // operator runs first on a new GPU machine.
        let report = mlq_actors::gpu::report();
        println!("{report:#}");
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        database_url: cli.database_url,
        bind: cli.bind,
        data_dir: cli.data_dir,
        workers: cli.workers,
        diagnostics: cli.diagnostics.then_some(true),
    };
    let settings = match Settings::load(cli.config.as_deref(), &overrides) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mlq: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve => {
                let app = Application::build(settings)
                    .await
                    .map_err(|e| e.to_string())?;
                app.run_until_stopped().await.map_err(|e| e.to_string())
            }
            Command::Devices => unreachable!("answered before configuration"),
            Command::User(command) => users(&settings, command).await,
            Command::Token(TokenCommand::Revoke { id }) => {
                let client = connect(&settings).await?;
                match mlq::db::users::revoke(&client, id, mlq::db::users::Viewer::SYSTEM).await {
                    Ok(Some(_)) => {
                        eprintln!("revoked {id}");
                        Ok(())
                    }
                    Ok(None) => Err(format!("no token with id {id}")),
                    Err(e) => Err(e.to_string()),
                }
            }
            Command::Migrate => match db::PgConfig::from_settings(&settings) {
                Ok(pg) => db::connect(&pg, 1)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlq: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A database connection for the management commands (migrating first).
async fn connect(settings: &Settings) -> Result<deadpool_postgres::Object, String> {
    let pg = db::PgConfig::from_settings(settings).map_err(|e| e.to_string())?;
    let pool = db::connect(&pg, 1).await.map_err(|e| e.to_string())?;
    pool.get().await.map_err(|e| e.to_string())
}

async fn users(settings: &Settings, command: UserCommand) -> Result<(), String> {
    let client = connect(settings).await?;
    match command {
        UserCommand::Create { name, admin } => {
            mlq::auth::check_user_name(&name)?;
            match mlq::auth::create_user(&client, &name, admin).await {
                Ok(Some((_, token))) => {
                    // Only the token on stdout, so `$(mlq user create …)`
                    // captures it.
                    println!("{token}");
                    Ok(())
                }
                Ok(None) => Err(format!("a user named {name:?} already exists")),
                Err(e) => Err(e.to_string()),
            }
        }
        UserCommand::List => {
            let users = mlq::db::users::list_users(&client)
                .await
                .map_err(|e| e.to_string())?;
            println!("{:<36}  {:<24}  {:<5}  created", "id", "name", "admin");
            for u in users {
                println!(
                    "{:<36}  {:<24}  {:<5}  {}",
                    u.id,
                    u.name,
                    if u.admin { "yes" } else { "no" },
                    u.created_at.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
            Ok(())
        }
    }
}

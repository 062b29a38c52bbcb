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

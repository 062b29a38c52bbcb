//! Building the whole application from its settings. `main` and the
//! integration tests start mlq through exactly this code.

use std::net::TcpListener;
use std::sync::Arc;

use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tracing_actix_web::TracingLogger;

use mlq_actors::commands::Commands;
use mlq_actors::dispatcher::{Dispatcher, DispatcherConfig, Drain};
use mlq_actors::pool::{MlWorker, WorkerBoard};
use mlq_actors::ports::ObjectStore;

use crate::config::{Settings, StorageKind};
use crate::db::{self, announcer::Announcer, queue::PgTaskStore, DbError, QueueConn};
use crate::events::Hub;
use crate::http::{self, AppState, FeedSettings};
use crate::storage::{collector, FsStore, S3Store};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] crate::storage::s3::S3SetupError),
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
}

pub struct Application {
    port: u16,
    server: Server,
    dispatcher: Addr<Dispatcher>,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database as needed),
    /// starts the ML pool, the dispatcher and the notification listener, and
    /// binds the HTTP server. Must run inside an actix system.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.validate().map_err(StartupError::Config)?;
        let pool = db::connect(&settings).await?;
        let objects: Arc<dyn ObjectStore> = match settings.storage {
            StorageKind::Fs => {
                Arc::new(FsStore::new(settings.objects_dir()).map_err(|source| {
                    StartupError::DataDir {
                        path: settings.objects_dir().display().to_string(),
                        source,
                    }
                })?)
            }
            StorageKind::S3 => Arc::new(S3Store::connect(&settings.s3()).await?),
        };
        std::fs::create_dir_all(settings.scratch_dir()).map_err(|source| {
            StartupError::DataDir {
                path: settings.scratch_dir().display().to_string(),
                source,
            }
        })?;
        sweep_scratch(&pool, &settings.scratch_dir()).await;
        let commands = Commands::standard(settings.diagnostics);
        let announcer = Announcer::start(db::queue_pool(&settings, 1, QueueConn::Announce)?);
        let submissions = db::queue_pool(
            &settings,
            settings.database_pool_size,
            QueueConn::Submissions,
        )?;
        let pool_config = settings.pool();
        let board = WorkerBoard::default();
        let ml = MlWorker::start_pool(pool_config, board.clone());
        tracing::info!(
            workers = pool_config.workers,
            torch_threads = pool_config.torch_threads,
            nice = pool_config.nice,
            "ML pool started"
        );

        let dispatcher = Dispatcher::new(
            DispatcherConfig {
                name: format!(
                    "{}:{}:{}",
                    hostname(),
                    std::process::id(),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                lease: settings.lease,
                heartbeat: settings.heartbeat,
                poll: settings.poll,
                rescue_every: settings.rescue_every,
                retry_base: settings.retry_base,
                progress_every: settings.progress_every,
                max_log_bytes: settings.max_log_bytes,
                scratch: settings.scratch_dir(),
            },
            // Its own connections, opened and driven on the dispatcher's
            // arbiter: busy HTTP handlers cannot starve the queue, and
            // stopping the HTTP workers does not close them.
            Arc::new(PgTaskStore::with_pools(
                db::queue_pool(&settings, pool_config.workers + 2, QueueConn::Outcomes)?,
                db::queue_pool(&settings, 2, QueueConn::Claims)?,
                db::queue_pool(&settings, pool_config.workers + 2, QueueConn::Fast)?,
                announcer.clone(),
            )),
            objects.clone(),
            commands.clone(),
            ml,
            pool_config.workers,
        )
        .start();
        let pg = settings
            .postgres()
            .map_err(|e| DbError::Config(e.to_string()))?;
        let hub = Hub::new(settings.ws_buffer);
        db::listener::spawn(pg, dispatcher.clone(), hub.clone(), pool.clone());
        collector::spawn(
            pool.clone(),
            objects.clone(),
            settings.collect_every,
            settings.orphan_grace,
        );

        let listener = TcpListener::bind(&settings.bind).map_err(|source| StartupError::Bind {
            bind: settings.bind.clone(),
            source,
        })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Bind {
                bind: settings.bind.clone(),
                source,
            })?
            .port();
        let state = web::Data::new(AppState {
            db: pool,
            objects,
            commands,
            board,
            workers: pool_config.workers,
            max_attempts: settings.max_attempts,
            limits: settings.upload_limits(),
            submissions,
            announcer,
            hub,
            feed: FeedSettings {
                ping_every: settings.ws_ping_every,
                timeout: settings.ws_timeout,
            },
        });
        let web_dir = settings.web_dir.clone();
        if !web_dir.join("index.html").is_file() {
            tracing::info!(
                "no dashboard build in {}; serving the API only (make run builds it)",
                web_dir.display()
            );
        }
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(|cfg| http::config(cfg, &web_dir))
        })
        // Live-feed frames are small and bursty: without this, Nagle's
        // algorithm holds a frame back until the client acknowledges the
        // one before it (tens of milliseconds with delayed ACKs).
        .on_connect(|connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
            }
        })
        .shutdown_timeout(10);
        if let Some(n) = settings.http_workers {
            server = server.workers(n.max(1));
        }
        let server = server
            .listen(listener)
            .map_err(|source| StartupError::Bind {
                bind: settings.bind.clone(),
                source,
            })?
            .run();
        tracing::info!(port, "mlq listening");
        Ok(Self {
            port,
            server,
            dispatcher,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the HTTP server (tests, signals).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server stops (SIGINT/SIGTERM or `handle().stop()`),
    /// then hands running tasks back to the queue.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Err(e) = self.dispatcher.send(Drain).await {
            tracing::warn!("could not drain the dispatcher: {e}");
        }
        result
    }
}

/// Removes scratch folders left by attempts that no longer run (a crashed
/// or killed process never cleans up after itself). Folders are named by
/// lease token; young ones are kept, as another process sharing the data
/// directory may have just claimed their task.
async fn sweep_scratch(pool: &deadpool_postgres::Pool, scratch: &std::path::Path) {
    let live: Vec<String> = match pool.get().await {
        Ok(client) => match client
            .query(
                "SELECT lease_token::text FROM tasks WHERE status = 'running'",
                &[],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(_) => return,
        },
        Err(_) => return,
    };
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < old);
        if stale && !live.contains(&name) {
            tracing::info!(folder = %name, "removing stale scratch folder");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "mlq".into())
}

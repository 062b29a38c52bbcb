//! Building the whole application from its settings. `main` and the
//! integration tests start mlq through exactly this code.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};
use tokio::sync::Semaphore;
use tracing_actix_web::TracingLogger;

use mlq_actors::commands::Commands;
use mlq_actors::dispatcher::{Dispatcher, DispatcherConfig, Drain, Recording};
use mlq_actors::pool::WorkerDevice;
use mlq_actors::pool::{Pool, WorkerBoard};
use mlq_actors::ports::ObjectStore;

use crate::config::{DeviceChoice, Settings, StorageKind};
use crate::db::{self, announcer::Announcer, queue::PgTaskStore, DbError, PgConfig, QueueConn};
use crate::events::Hub;
use crate::http::{self, AppState, FeedSettings, UploadLimits};
use crate::storage::{collector, FsStore, Janitor, S3Config, S3Store};

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
    #[error("device = cuda, but no GPU is usable: {0}")]
    NoGpu(String),
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
    stopping: Arc<AtomicBool>,
    uploads: Arc<Semaphore>,
    max_uploads: usize,
    drain_timeout: Duration,
    janitor: Janitor,
    _listener: db::listener::Listener,
}

impl Application {
    /// Connects to Postgres (creating and migrating the database as needed),
    /// starts the ML pool, the dispatcher and the notification listener, and
    /// binds the HTTP server. Must run inside an actix system.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        settings.validate().map_err(StartupError::Config)?;
        let pg = PgConfig::from_settings(&settings)?;
        let pool = db::connect(&pg, settings.database_pool_size).await?;
        let objects: Arc<dyn ObjectStore> = match settings.storage {
            StorageKind::Fs => {
                Arc::new(FsStore::new(settings.objects_dir()).map_err(|source| {
                    StartupError::DataDir {
                        path: settings.objects_dir().display().to_string(),
                        source,
                    }
                })?)
            }
            StorageKind::S3 => Arc::new(S3Store::connect(&S3Config::from(&settings)).await?),
        };
        std::fs::create_dir_all(settings.scratch_dir()).map_err(|source| {
            StartupError::DataDir {
                path: settings.scratch_dir().display().to_string(),
                source,
            }
        })?;
        sweep_scratch(&pool, &settings.scratch_dir()).await;
        let commands =
            Commands::standard(settings.diagnostics).with_content_types(&settings.content_types);
        let hub = Hub::new(settings.ws_buffer);
        let announcer = Announcer::start(db::queue_pool(&pg, 1, QueueConn::Announce)?, hub.clone());
        let submissions = db::queue_pool(&pg, settings.database_pool_size, QueueConn::Submissions)?;
        let mut pool_config = settings.pool();
        pool_config.device = worker_device(settings.device)?;
        if let (WorkerDevice::Cuda { count }, None) = (pool_config.device, settings.workers) {
            // One worker per GPU: libtorch spreads each job over its GPU.
            pool_config.workers = count;
        }
        let board = WorkerBoard::default();
        let ml = Pool::start(pool_config, board.clone());
        tracing::info!(
            workers = pool_config.workers,
            torch_threads = pool_config.torch_threads,
            nice = pool_config.nice,
            device = ?pool_config.device,
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
                timeouts: settings.task_timeouts.clone(),
                max_timeout: settings.max_task_timeout,
                stuck_after: settings.stuck_after,
            },
            // Its own connections, opened and driven on the dispatcher's
            // arbiter: busy HTTP handlers cannot starve the queue, and
            // stopping the HTTP workers does not close them.
            Arc::new(
                PgTaskStore::with_pools(
                    db::queue_pool(&pg, pool_config.workers + 2, QueueConn::Outcomes)?,
                    db::queue_pool(&pg, 2, QueueConn::Claims)?,
                    db::queue_pool(&pg, pool_config.workers + 2, QueueConn::Fast)?,
                    announcer.clone(),
                )
                .running_per_owner(settings.quota_running_tasks),
            ),
            objects.clone(),
            commands.clone(),
            ml,
            pool_config.workers,
        )
        .start();
        let notifications = db::listener::spawn(
            pg.config.clone(),
            dispatcher.clone(),
            hub.clone(),
            pool.clone(),
        );
        crate::auth::spawn_pruner(pool.clone());
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
        let stopping = Arc::new(AtomicBool::new(false));
        let uploads = Arc::new(Semaphore::new(settings.max_uploads));
        let janitor = Janitor::start(objects.clone());
        let state_db = pool.clone();
        let state = web::Data::new(AppState {
            uploads: uploads.clone(),
            max_uploads: settings.max_uploads,
            stopping: stopping.clone(),
            janitor: janitor.clone(),
            sockets: Arc::new(Semaphore::new(settings.max_sockets)),
            max_sockets: settings.max_sockets,
            db: pool,
            objects,
            commands,
            board,
            workers: pool_config.workers,
            max_stuck_workers: settings.max_stuck_workers,
            max_attempts: settings.max_attempts,
            limits: UploadLimits::from(&settings),
            submissions,
            announcer,
            hub,
            origins: http::origin::Origins::from_settings(&settings),
            session_ttl: settings.session_ttl,
            quotas: (&settings).into(),
            rate: crate::http::quota::RateLimiter::new(settings.quota_requests_per_second),
            refusals: crate::http::quota::FailureLimiter::new(settings.auth_failures_per_second),
            proxies: http::client::Proxies::from_settings(&settings),
            user_uploads: crate::http::quota::UserSlots::new(
                settings.quota_uploads,
                "uploads",
                "uploads at once",
            ),
            user_sockets: crate::http::quota::UserSlots::new(
                settings.quota_sockets,
                "sockets",
                "live-feed connections",
            ),
            credentials: Default::default(),
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
        let stalled_peer = settings.ws_timeout;
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(http::origin::check_host))
                .wrap(actix_web::middleware::from_fn(http::headers::secure))
                .wrap(actix_web::middleware::from_fn(http::request_id::tag))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(|cfg| http::config(cfg, &web_dir))
        })
        // Live-feed frames are small and bursty: without this, Nagle's
        // algorithm holds a frame back until the client acknowledges the
        // one before it (tens of milliseconds with delayed ACKs).
        //
        // A peer that stops reading (its window stays shut) is dropped by
        // the kernel once sent data has waited `ws_timeout` unacknowledged:
        // actix has no write timeout, and a stalled reader would otherwise
        // hold its connection, and the frames queued for it, for good.
        .on_connect(move |connection, _| {
            if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = tcp.set_nodelay(true);
                set_user_timeout(tcp, stalled_peer);
            }
        })
        // Signals are handled in `run_until_stopped`: readiness goes first,
        // then uploads get their drain, then the server stops.
        .disable_signals()
        // A client must send its request head within this, or the
        // connection is closed (408): slow-drip clients cannot hold
        // connections open.
        .client_request_timeout(settings.request_head_timeout)
        .shutdown_timeout(5);
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
        if settings.first_run_login {
            first_run(&state_db, &settings, port).await?;
        }
        Ok(Self {
            port,
            server,
            dispatcher,
            stopping,
            uploads,
            max_uploads: settings.max_uploads,
            drain_timeout: settings.drain_timeout,
            janitor,
            _listener: notifications,
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
    ///
    /// On a signal: `/readyz` answers 503 at once and the dispatcher stops
    /// claiming (its running tasks go back to the queue); new submissions
    /// are refused; uploads in flight get up to `drain_timeout` to finish.
    /// Then the server stops, and a request still running is dropped, its
    /// stored files deleted.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown_signal() => {
                self.stopping.store(true, Ordering::Relaxed);
                tracing::info!("shutting down: not ready, not claiming, draining uploads");
                if let Err(e) = self.dispatcher.send(Drain).await {
                    tracing::warn!("could not drain the dispatcher: {e}");
                }
                let all = self.max_uploads as u32;
                let deadline = tokio::time::Instant::now() + self.drain_timeout;
                let drained =
                    tokio::time::timeout_at(deadline, self.uploads.acquire_many(all)).await;
                if drained.is_err() {
                    tracing::warn!(
                        "uploads still running after {:?}; stopping them",
                        self.drain_timeout
                    );
                }
                // Finished jobs still recording their outcome get the rest
                // of the drain: their work is done and should not be lost.
                let recorded = tokio::time::timeout_at(deadline, async {
                    while self.dispatcher.send(Recording).await.unwrap_or(0) > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                if recorded.is_err() {
                    tracing::warn!("outcomes still being recorded after the drain; their tasks will be rescued");
                }
                // The server future carries out the stop: keep polling it.
                let ((), result) = tokio::join!(handle.stop(true), &mut server);
                result
            }
        };
        if let Err(e) = self.dispatcher.send(Drain).await {
            tracing::warn!("could not drain the dispatcher: {e}");
        }
        self.janitor.settle(Duration::from_secs(10)).await;
        result
    }
}

/// Prints the first run's one-time login link, as Jupyter does, so a
/// newcomer's first `make run` ends in a working dashboard.
async fn first_run(
    pool: &deadpool_postgres::Pool,
    settings: &Settings,
    port: u16,
) -> Result<(), StartupError> {
    let client = pool.get().await.map_err(DbError::from)?;
    let Some(code) = crate::auth::first_run(&client).await? else {
        return Ok(());
    };
    let base = match &settings.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = settings
                .bind
                .rsplit_once(':')
                .map_or("127.0.0.1", |(h, _)| h);
            let host = match host {
                "0.0.0.0" | "[::]" | "" => "127.0.0.1",
                h => h,
            };
            format!("http://{host}:{port}")
        }
    };
    // The code travels in the fragment: browsers do not send it to the
    // server, so it stays out of access logs and Referer headers.
    println!(
        "\n    mlq is running with a new admin user. To open the dashboard, visit this\n    \
         one-time login link (it works once, within 24 hours):\n\n        \
         {base}/login#code={code}\n"
    );
    tracing::info!("first run: printed a one-time login link for the admin user");
    Ok(())
}

/// Where the ML workers run, per the `device` setting.
fn worker_device(choice: DeviceChoice) -> Result<WorkerDevice, StartupError> {
    if choice == DeviceChoice::Cpu {
        return Ok(WorkerDevice::Cpu);
    }
    let loaded = mlq_actors::gpu::load_cuda();
    match &loaded {
        Ok(path) => tracing::info!("loaded {}", path.display()),
        Err(why) => tracing::debug!("no CUDA library: {why}"),
    }
    let count = mlq_actors::gpu::cuda_devices();
    if count > 0 {
        tracing::info!(gpus = count, "running ML workers on CUDA");
        return Ok(WorkerDevice::Cuda { count });
    }
    if choice == DeviceChoice::Cuda {
        return Err(StartupError::NoGpu(match loaded {
            Ok(path) => format!(
                "{} loaded, but libtorch sees no CUDA device",
                path.display()
            ),
            Err(why) => why,
        }));
    }
    Ok(WorkerDevice::Cpu)
}

/// Sets `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged
/// (zero-window probes included) before the kernel drops the connection.
/// Idle connections are unaffected.
fn set_user_timeout(tcp: &actix_web::rt::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let millis = timeout.as_millis().clamp(1000, u32::MAX as u128) as libc::c_uint;
    // SAFETY: a plain setsockopt on a live socket this connection owns,
    // with a pointer to a local of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            &millis as *const libc::c_uint as *const libc::c_void,
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!("TCP_USER_TIMEOUT: {}", std::io::Error::last_os_error());
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let terminate = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = terminate => {}
        _ = actix_web::rt::signal::ctrl_c() => {}
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

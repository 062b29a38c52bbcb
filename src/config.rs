//! Configuration, in layers: built-in defaults, then an optional TOML file,
//! then `MLQ_*` environment variables, then command-line flags. Defaults work
//! on a developer machine with a local Postgres.
//!
//! Durations are written the human way (`30s`, `250ms`), e.g.
//! `MLQ_LEASE=1m`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use mlq_actors::pool::PoolConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `MLQ_DATABASE_URL`: the Postgres that holds tasks. A missing user
    /// defaults to `$PGUSER`, then `$USER`, as libpq does.
    pub database_url: SecretString,
    /// `MLQ_DATABASE_POOL_SIZE`: connections for HTTP handlers and workers.
    pub database_pool_size: usize,
    /// `MLQ_DATABASE_WAIT_TIMEOUT`: longest wait for a database connection;
    /// while Postgres is down, requests answer 503 after this.
    #[serde(with = "humantime_serde")]
    pub database_wait_timeout: Duration,
    /// `MLQ_STATEMENT_TIMEOUT`: longest any one SQL statement may run.
    #[serde(with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// `MLQ_BIND`: HTTP listen address; port 0 picks a free port.
    pub bind: String,
    /// `MLQ_HTTP_WORKERS`: async HTTP arbiters (threads).
    pub http_workers: Option<usize>,
    /// `MLQ_DATA_DIR`: scratch space, and stored objects with `storage = "fs"`.
    pub data_dir: PathBuf,
    /// `MLQ_STORAGE`: where inputs and artifacts live, `fs` or `s3`.
    pub storage: StorageKind,
    /// `MLQ_S3_ENDPOINT`: e.g. `http://127.0.0.1:9000` for MinIO; unset for AWS.
    pub s3_endpoint: Option<String>,
    /// `MLQ_S3_REGION`.
    pub s3_region: String,
    /// `MLQ_S3_BUCKET`.
    pub s3_bucket: String,
    /// `MLQ_S3_PATH_STYLE`: `http://host/bucket/key` rather than
    /// `http://bucket.host/key` (MinIO and most self-hosted servers).
    pub s3_path_style: bool,
    /// `MLQ_S3_ACCESS_KEY` / `MLQ_S3_SECRET_KEY`; when unset, the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` are used.
    pub s3_access_key: Option<String>,
    pub s3_secret_key: Option<SecretString>,
    /// `MLQ_S3_CREATE_BUCKET`: create the bucket at start if it is missing.
    pub s3_create_bucket: bool,
    /// `MLQ_S3_PART_SIZE`: multipart part size in bytes (at least 5 MiB).
    pub s3_part_size: usize,
    /// `MLQ_S3_PARTS_IN_FLIGHT`: parts uploaded at once per file.
    pub s3_parts_in_flight: usize,
    /// `MLQ_WORKERS`: ML worker threads (default: cores − 1, at least 1).
    pub workers: Option<usize>,
    /// `MLQ_TORCH_THREADS`: libtorch threads per worker (default: (cores − 1) ÷ workers).
    pub torch_threads: Option<usize>,
    /// `MLQ_WORKER_NICE`: how much lower ML threads' OS priority is.
    pub worker_nice: i32,
    /// `MLQ_DEVICE`: where workers run libtorch: `auto` (a GPU if a
    /// CUDA-enabled libtorch finds one, else the CPU), `cpu` or `cuda`.
    pub device: DeviceChoice,
    /// `MLQ_MODEL_CACHE_BYTES`: loaded models each worker keeps, in bytes.
    pub model_cache_bytes: u64,
    /// `MLQ_LEASE`: how long a claim holds without a heartbeat.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// `MLQ_HEARTBEAT`: how often leases are extended.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// `MLQ_POLL`: how often the queue is polled when no notification came.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// `MLQ_RESCUE_EVERY`: how often expired leases are looked for.
    #[serde(with = "humantime_serde")]
    pub rescue_every: Duration,
    /// `MLQ_RETRY_BASE`: first retry delay, doubled per attempt.
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    /// `MLQ_PROGRESS_EVERY`: minimum time between progress writes per task.
    #[serde(with = "humantime_serde")]
    pub progress_every: Duration,
    /// `MLQ_COLLECT_EVERY`: how often unreferenced objects are looked for.
    #[serde(with = "humantime_serde")]
    pub collect_every: Duration,
    /// `MLQ_ORPHAN_GRACE`: how old an unreferenced object must be before it
    /// is deleted; longer than any upload or outcome takes to commit.
    #[serde(with = "humantime_serde")]
    pub orphan_grace: Duration,
    /// `MLQ_MAX_ATTEMPTS`: attempts per task before it fails for good.
    pub max_attempts: i32,
    /// `MLQ_TASK_TIMEOUTS`: time limits per command over the built-in ones
    /// (train 1h, predict 30m, sleep 15m), e.g. `{train = "4h"}`. A task's
    /// `timeout` param overrides both.
    #[serde(with = "humantime_map")]
    pub task_timeouts: BTreeMap<String, Duration>,
    /// `MLQ_MAX_TASK_TIMEOUT`: the longest time limit a task's `timeout`
    /// param may set; longer ones are cut to it.
    #[serde(with = "humantime_serde")]
    pub max_task_timeout: Duration,
    /// `MLQ_STUCK_AFTER`: how long a job told to stop (cancelled, or over its
    /// time limit) may take to come back before its worker thread is taken
    /// to be stuck in native code, abandoned and replaced.
    #[serde(with = "humantime_serde")]
    pub stuck_after: Duration,
    /// `MLQ_MAX_STUCK_WORKERS`: abandoned threads a process tolerates before
    /// `/readyz` reports it not ready (each may still hold memory and CPU).
    pub max_stuck_workers: usize,
    /// `MLQ_MAX_REQUEST_BYTES`: largest accepted request body.
    pub max_request_bytes: u64,
    /// `MLQ_MAX_FILE_BYTES`: largest accepted file part.
    pub max_file_bytes: u64,
    /// `MLQ_MAX_FILES`: most file parts in one request.
    pub max_files: usize,
    /// `MLQ_REQUEST_HEAD_TIMEOUT`: how long a client may take to send a
    /// request's line and headers before the connection is closed (against
    /// slow-drip clients holding connections).
    #[serde(with = "humantime_serde")]
    pub request_head_timeout: Duration,
    /// `MLQ_UPLOAD_IDLE`: how long an upload may send nothing before it is
    /// refused with 408 and what it stored is removed.
    #[serde(with = "humantime_serde")]
    pub upload_idle: Duration,
    /// `MLQ_DRAIN_TIMEOUT`: on SIGTERM, how long uploads in flight may take
    /// to finish before the server stops and they are removed.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// `MLQ_MAX_UPLOADS`: uploads one process takes at once; more get 503
    /// with `Retry-After` (each S3 upload buffers a few parts in memory).
    pub max_uploads: usize,
    /// `MLQ_CONTENT_TYPES`: replaces the file content types a command
    /// accepts, e.g. `{train = ["text/csv"]}` (`["*/*"]`: any). Commands
    /// not listed keep their own (`GET /api/v1/commands` shows them).
    pub content_types: BTreeMap<String, Vec<String>>,
    /// `MLQ_MAX_LOG_BYTES`: most log text kept per task; later lines are
    /// counted and dropped, with a note in the log.
    pub max_log_bytes: usize,
    /// `MLQ_WS_PING_EVERY`: how often WebSocket peers are pinged.
    #[serde(with = "humantime_serde")]
    pub ws_ping_every: Duration,
    /// `MLQ_WS_TIMEOUT`: how long a WebSocket peer may stay silent (no pong)
    /// before it is dropped.
    #[serde(with = "humantime_serde")]
    pub ws_timeout: Duration,
    /// `MLQ_MAX_SOCKETS`: WebSocket connections one process holds; more
    /// are refused with 503.
    pub max_sockets: usize,
    /// `MLQ_WS_BUFFER`: events queued per WebSocket connection before
    /// progress updates are coalesced; a connection that falls eight times
    /// this far behind on events that cannot be coalesced is closed, and
    /// its client resumes from its last sequence number.
    pub ws_buffer: usize,
    /// `MLQ_PUBLIC_URL`: the address users reach mlq at, e.g.
    /// `https://mlq.example.com` (the first run's login link uses it; its
    /// host is allowed). Default: the bind address.
    pub public_url: Option<String>,
    /// `MLQ_ALLOWED_HOSTS`: `Host` header values mlq answers (ports aside;
    /// `.example.com` allows its subdomains, `*` any host), against DNS
    /// rebinding. `localhost`, the loopback addresses, the bind address and
    /// the public URL's host are always allowed. `/healthz` and `/readyz`
    /// answer any host, for probes.
    #[serde(deserialize_with = "string_list")]
    pub allowed_hosts: Vec<String>,
    /// `MLQ_ALLOWED_ORIGINS`: web origins besides mlq's own (e.g.
    /// `https://app.example.com`) whose pages may call the API from a
    /// browser (CORS) and open the live feed. Closed by default.
    #[serde(deserialize_with = "string_list")]
    pub allowed_origins: Vec<String>,
    /// `MLQ_TRUSTED_PROXIES`: addresses of reverse proxies in front of mlq
    /// (e.g. `10.0.0.5,10.0.0.6`). For a request from one of them, the
    /// client's address is read from `X-Forwarded-For` (what limits per
    /// address count); from anyone else that header is ignored. Default:
    /// none.
    #[serde(deserialize_with = "string_list")]
    pub trusted_proxies: Vec<String>,
    /// `MLQ_FIRST_RUN_LOGIN`: with no users yet, create the admin `admin`
    /// and print a one-time login link at start.
    pub first_run_login: bool,
    /// `MLQ_SESSION_TTL`: how long a dashboard login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// `MLQ_QUOTA_QUEUED_TASKS`: tasks one user may have waiting; more are
    /// refused with 429. 0: no limit. (Every quota is per user.)
    pub quota_queued_tasks: u64,
    /// `MLQ_QUOTA_RUNNING_TASKS`: tasks of one user that run at once,
    /// across all processes; the rest wait their turn. 0: no limit.
    pub quota_running_tasks: u64,
    /// `MLQ_QUOTA_UPLOAD_BYTES_PER_DAY`: bytes one user may upload per UTC
    /// day (deleting them does not give the allowance back). 0: no limit.
    pub quota_upload_bytes_per_day: u64,
    /// `MLQ_QUOTA_STORED_BYTES`: bytes one user's tasks may hold in the
    /// object store (inputs and artifacts, models among them); uploads past
    /// it are refused. 0: no limit.
    pub quota_stored_bytes: u64,
    /// `MLQ_QUOTA_REQUESTS_PER_SECOND`: API requests one user may send each
    /// process per second, in bursts of up to twice that. 0: no limit.
    pub quota_requests_per_second: u32,
    /// `MLQ_AUTH_FAILURES_PER_SECOND`: refused credentials one client
    /// address may send each process per second, in bursts of up to twice
    /// that; past it the address gets 429 without a lookup. 0: no limit.
    pub auth_failures_per_second: u32,
    /// `MLQ_QUOTA_UPLOADS`: uploads one user may send each process at
    /// once, so one user's slow uploads cannot take every `max_uploads`
    /// slot. 0: no limit.
    pub quota_uploads: usize,
    /// `MLQ_QUOTA_SOCKETS`: live-feed connections one user may hold on
    /// each process, so one user cannot take every `max_sockets` slot.
    /// 0: no limit.
    pub quota_sockets: usize,
    /// `MLQ_WEB_DIR`: the built dashboard, served at `/` when present.
    pub web_dir: PathBuf,
    /// `MLQ_DIAGNOSTICS`: enables the `sleep` command (tests, benchmarks).
    pub diagnostics: bool,
    /// `MLQ_LOG`: log filter when `RUST_LOG` is unset.
    pub log: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("postgres://localhost:5432/mlq"),
            database_pool_size: 16,
            database_wait_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(30),
            bind: "127.0.0.1:8080".into(),
            http_workers: None,
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Fs,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_bucket: "mlq".into(),
            s3_path_style: true,
            s3_access_key: None,
            s3_secret_key: None,
            s3_create_bucket: false,
            s3_part_size: 8 << 20,
            s3_parts_in_flight: 2,
            workers: None,
            torch_threads: None,
            worker_nice: 10,
            device: DeviceChoice::Auto,
            model_cache_bytes: 512 << 20,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll: Duration::from_secs(1),
            rescue_every: Duration::from_secs(5),
            retry_base: Duration::from_secs(2),
            progress_every: Duration::from_millis(250),
            collect_every: Duration::from_secs(600),
            orphan_grace: Duration::from_secs(3600),
            max_attempts: 3,
            task_timeouts: BTreeMap::new(),
            max_task_timeout: Duration::from_secs(86_400),
            stuck_after: Duration::from_secs(30),
            max_stuck_workers: 2,
            max_request_bytes: 1 << 30,
            max_file_bytes: 1 << 30,
            max_files: 16,
            request_head_timeout: Duration::from_secs(5),
            upload_idle: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            max_uploads: 64,
            content_types: BTreeMap::new(),
            max_log_bytes: 1 << 20,
            ws_ping_every: Duration::from_secs(5),
            ws_timeout: Duration::from_secs(15),
            max_sockets: 10_000,
            ws_buffer: 256,
            public_url: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            first_run_login: true,
            session_ttl: Duration::from_secs(7 * 86_400),
            quota_queued_tasks: 10_000,
            quota_running_tasks: 16,
            quota_upload_bytes_per_day: 100 << 30,
            quota_stored_bytes: 500 << 30,
            quota_requests_per_second: 100,
            auth_failures_per_second: 10,
            quota_uploads: 8,
            quota_sockets: 64,
            web_dir: PathBuf::from("web/dist"),
            diagnostics: false,
            log: "info".into(),
        }
    }
}

/// A list given as a list (TOML) or as one comma-separated string
/// (`MLQ_ALLOWED_HOSTS=a.example,b.example`).
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Many(Vec<String>),
        One(String),
    }
    Ok(match List::deserialize(d)? {
        List::Many(items) => items,
        List::One(text) => text
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    })
}

/// A map of durations written the human way (`{train = "4h"}`).
mod humantime_map {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Duration>, D::Error> {
        let raw = BTreeMap::<String, String>::deserialize(d)?;
        raw.into_iter()
            .map(|(k, v)| {
                humantime::parse_duration(&v)
                    .map(|d| (k.clone(), d))
                    .map_err(|e| serde::de::Error::custom(format!("{k}: {e}")))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Fs,
    S3,
}

/// Every setting, as read from `MLQ_<KEY>` environment variables.
const ENV_KEYS: &[&str] = &[
    "database_url",
    "database_pool_size",
    "database_wait_timeout",
    "statement_timeout",
    "bind",
    "http_workers",
    "data_dir",
    "storage",
    "s3_endpoint",
    "s3_region",
    "s3_bucket",
    "s3_path_style",
    "s3_access_key",
    "s3_secret_key",
    "s3_create_bucket",
    "s3_part_size",
    "s3_parts_in_flight",
    "workers",
    "torch_threads",
    "worker_nice",
    "lease",
    "heartbeat",
    "poll",
    "rescue_every",
    "retry_base",
    "progress_every",
    "collect_every",
    "orphan_grace",
    "max_attempts",
    "task_timeouts",
    "max_task_timeout",
    "stuck_after",
    "max_stuck_workers",
    "max_request_bytes",
    "max_file_bytes",
    "max_files",
    "request_head_timeout",
    "upload_idle",
    "drain_timeout",
    "max_uploads",
    "content_types",
    "device",
    "model_cache_bytes",
    "max_log_bytes",
    "ws_ping_every",
    "ws_timeout",
    "max_sockets",
    "ws_buffer",
    "public_url",
    "allowed_hosts",
    "allowed_origins",
    "trusted_proxies",
    "first_run_login",
    "session_ttl",
    "quota_queued_tasks",
    "quota_running_tasks",
    "quota_upload_bytes_per_day",
    "quota_stored_bytes",
    "quota_requests_per_second",
    "auth_failures_per_second",
    "quota_uploads",
    "quota_sockets",
    "web_dir",
    "diagnostics",
    "log",
];

/// Values given on the command line; each overrides every other layer.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<bool>,
}

impl Settings {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            // Only settings: other MLQ_ variables (MLQ_CONFIG names the file
            // itself) must not make the service refuse to start.
            .merge(Env::prefixed("MLQ_").only(ENV_KEYS))
            .merge(Serialized::defaults(overrides))
            .extract::<Self>()
            .map_err(Box::new)
            .and_then(|s| s.validate().map(|()| s).map_err(|e| Box::new(e.into())))
    }

    /// Rejects combinations that would break the queue rather than fail
    /// loudly later.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("lease", self.lease),
            ("heartbeat", self.heartbeat),
            ("poll", self.poll),
            ("rescue_every", self.rescue_every),
            ("progress_every", self.progress_every),
            ("collect_every", self.collect_every),
            ("ws_ping_every", self.ws_ping_every),
            ("database_wait_timeout", self.database_wait_timeout),
            ("statement_timeout", self.statement_timeout),
            ("upload_idle", self.upload_idle),
            ("request_head_timeout", self.request_head_timeout),
            ("stuck_after", self.stuck_after),
            ("max_task_timeout", self.max_task_timeout),
            ("session_ttl", self.session_ttl),
        ];
        if let Some((command, _)) = self.task_timeouts.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("task_timeouts.{command} must be longer than zero"));
        }
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be longer than zero"));
        }
        if self.heartbeat * 2 > self.lease {
            return Err(format!(
                "heartbeat ({:?}) must be at most half the lease ({:?}), or leases expire while tasks run",
                self.heartbeat, self.lease
            ));
        }
        if self.s3_part_size < 5 << 20 {
            return Err("s3_part_size must be at least 5 MiB (5242880), the S3 minimum".into());
        }
        if self.ws_timeout <= self.ws_ping_every {
            return Err(format!(
                "ws_timeout ({:?}) must be longer than ws_ping_every ({:?}), or every peer is dropped",
                self.ws_timeout, self.ws_ping_every
            ));
        }
        if self.ws_buffer < 1 {
            return Err("ws_buffer must be at least 1".into());
        }
        if self.max_attempts < 1 {
            return Err("max_attempts must be at least 1".into());
        }
        if let Some(url) = &self.public_url {
            crate::http::origin::Origins::parse_origin(url)
                .ok_or_else(|| format!("public_url {url:?} is not an http(s) URL"))?;
        }
        for origin in &self.allowed_origins {
            crate::http::origin::Origins::parse_origin(origin).ok_or_else(|| {
                format!(
                    "allowed_origins: {origin:?} is not an origin (scheme://host[:port], \
                     e.g. https://app.example.com)"
                )
            })?;
        }
        for proxy in &self.trusted_proxies {
            crate::http::client::address(proxy).ok_or_else(|| {
                format!("trusted_proxies: {proxy:?} is not an IP address (e.g. 10.0.0.5)")
            })?;
        }
        if self.database_pool_size < 1
            || self.max_request_bytes < 1
            || self.workers == Some(0)
            || self.max_uploads < 1
            || self.max_sockets < 1
        {
            return Err(
                "database_pool_size, max_request_bytes, workers, max_uploads and max_sockets \
                 must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }

    /// The Postgres connection settings, with the user filled in as libpq
    /// would.
    pub fn postgres(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let mut config: tokio_postgres::Config = self.database_url.expose_secret().parse()?;
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into());
            config.user(user);
        }
        config.connect_timeout(Duration::from_secs(5));
        Ok(config)
    }

    pub fn pool(&self) -> PoolConfig {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut pool = PoolConfig::for_cores(cores, self.workers);
        if let Some(threads) = self.torch_threads {
            pool.torch_threads = threads.max(1);
        }
        pool.nice = self.worker_nice;
        pool.max_stuck = self.max_stuck_workers;
        pool.cache_bytes = self.model_cache_bytes;
        pool
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.data_dir.join("objects")
    }

    pub fn scratch_dir(&self) -> PathBuf {
        self.data_dir.join("scratch")
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's signature
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "mlq.toml",
                "bind = \"0.0.0.0:1\"\nworkers = 3\nlease = \"1m\"\n",
            )?;
            jail.set_env("MLQ_WORKERS", "5");
            let s = Settings::load(Some(Path::new("mlq.toml")), &Overrides::default())
                .map_err(|e| *e)?;
            assert_eq!(s.bind, "0.0.0.0:1");
            assert_eq!(s.workers, Some(5), "env beats the file");
            assert_eq!(s.lease, Duration::from_secs(60));
            assert_eq!(s.max_attempts, 3, "defaults fill the rest");
            let flags = Overrides {
                workers: Some(7),
                ..Overrides::default()
            };
            let s = Settings::load(Some(Path::new("mlq.toml")), &flags).map_err(|e| *e)?;
            assert_eq!(s.workers, Some(7), "flags beat env");
            Ok(())
        });
    }

    #[test]
    fn settings_that_would_break_the_queue_are_rejected() {
        let ok = Settings::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            Settings {
                max_attempts: 0,
                ..Settings::default()
            },
            Settings {
                heartbeat: Duration::from_secs(30),
                ..Settings::default()
            },
            Settings {
                poll: Duration::ZERO,
                ..Settings::default()
            },
            Settings {
                workers: Some(0),
                ..Settings::default()
            },
        ];
        for s in bad {
            assert!(s.validate().is_err(), "{s:?}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mlq.toml", "wrokers = 3\n")?;
            let err =
                Settings::load(Some(Path::new("mlq.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("wrokers"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn every_setting_can_come_from_the_environment() {
        // The file layer lists the fields it expects when it meets an
        // unknown one: the environment must know the same set.
        figment::Jail::expect_with(|jail| {
            jail.create_file("mlq.toml", "not_a_setting = 1\n")?;
            let err = Settings::load(Some(Path::new("mlq.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            let list = &err[err.find("one of ").unwrap() + 7..err.rfind("` for key").unwrap()];
            let mut expected: Vec<&str> = list.split(", ").map(|k| k.trim_matches('`')).collect();
            expected.sort_unstable();
            let mut known = ENV_KEYS.to_vec();
            known.sort_unstable();
            assert_eq!(expected, known, "{err}");
            Ok(())
        });
    }

    #[test]
    fn unrelated_mlq_variables_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MLQ_CONFIG", "elsewhere.toml");
            jail.set_env("MLQ_TEST_DATABASE_URL", "postgres://x");
            jail.set_env("MLQ_BIND", "127.0.0.1:9");
            let s = Settings::load(None, &Overrides::default()).map_err(|e| *e)?;
            assert_eq!(s.bind, "127.0.0.1:9");
            Ok(())
        });
    }

    #[test]
    fn missing_user_is_filled_in() {
        let s = Settings::default();
        let pg = s.postgres().unwrap();
        assert!(pg.get_user().is_some());
        assert_eq!(pg.get_dbname(), Some("mlq"));
    }
}

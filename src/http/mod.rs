//! The HTTP API. One module per resource, each exporting `config`; this
//! module composes them and turns actix's own extractor errors into mlq's
//! JSON error shape.

pub mod client;
mod commands;
mod dashboard;
mod download;
pub mod error;
mod events;
pub mod headers;
pub mod health;
pub mod models;
pub mod openapi;
pub mod origin;
pub mod quota;
pub mod request_id;
pub mod routes;
mod session;
pub(crate) mod submit;
pub mod tasks;
mod tokens;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;

use mlq_actors::commands::{AnyCommand, Commands};
use mlq_actors::pool::WorkerBoard;
use mlq_actors::ports::ObjectStore;

use self::error::{extractor_error, ApiError};
pub use self::events::FeedSettings;
use self::routes::Router;
use crate::db::announcer::Announcer;
use crate::events::Hub;

/// Largest JSON body the small endpoints (tokens, login, cancel) read.
const MAX_JSON_BYTES: usize = 64 << 10;

/// What handlers share.
pub struct AppState {
    pub db: Pool,
    pub objects: Arc<dyn ObjectStore>,
    pub commands: Commands,
    pub board: WorkerBoard,
    /// The configured pool size, to compare with the live one.
    pub workers: usize,
    /// Stuck (abandoned) worker threads tolerated before not ready.
    pub max_stuck_workers: usize,
    pub max_attempts: i32,
    pub limits: UploadLimits,
    /// Connections for inserting tasks: their events are announced by the
    /// announcer after they commit (see `db::announcer`).
    pub submissions: Pool,
    pub announcer: Announcer,
    pub hub: Arc<Hub>,
    pub feed: FeedSettings,
    /// Upload slots (`max_uploads`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    pub max_uploads: usize,
    /// Set when the process is shutting down: `/readyz` answers 503.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Live-feed connection slots (`max_sockets`).
    pub sockets: Arc<tokio::sync::Semaphore>,
    pub max_sockets: usize,
    /// Deletes what dropped requests stored.
    pub janitor: crate::storage::Janitor,
    /// Hosts answered and browser origins let in.
    pub origins: origin::Origins,
    /// How long a dashboard login lasts.
    pub session_ttl: std::time::Duration,
    /// Each user's limits on what they queue, upload and store.
    pub quotas: quota::Quotas,
    /// Each user's requests per second.
    pub rate: quota::RateLimiter,
    /// Each client address's refused credentials per second.
    pub refusals: quota::FailureLimiter,
    /// Who the client is behind trusted proxies.
    pub proxies: client::Proxies,
    /// Each user's uploads at once, of `max_uploads`.
    pub user_uploads: quota::UserSlots,
    /// Each user's live-feed connections, of `max_sockets`.
    pub user_sockets: quota::UserSlots,
    /// Credentials verified in the last second.
    pub credentials: crate::auth::recent::Recent,
}

/// What one submission may upload.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    pub max_request_bytes: u64,
    pub max_file_bytes: u64,
    pub max_files: usize,
    /// Longest a submission may spend uploading. Kept under the orphan
    /// collector's grace period: a file stored early in a longer upload
    /// could otherwise be collected before its task row commits.
    pub max_upload_time: std::time::Duration,
    /// Longest a submission may send nothing.
    pub idle: std::time::Duration,
}

impl From<&crate::config::Settings> for UploadLimits {
    fn from(s: &crate::config::Settings) -> Self {
        Self {
            max_request_bytes: s.max_request_bytes,
            max_file_bytes: s.max_file_bytes,
            max_files: s.max_files,
            max_upload_time: s.orphan_grace / 2,
            idle: s.upload_idle,
        }
    }
}

/// The whole HTTP surface; the dashboard is served from `web_dir` when it
/// was built.
pub fn config(cfg: &mut web::ServiceConfig, web_dir: &std::path::Path) {
    cfg.app_data(
        web::PathConfig::default().error_handler(|e, _| extractor_error("invalid_path", e)),
    )
    .app_data(web::QueryConfig::default().error_handler(|e, _| extractor_error("invalid_query", e)))
    .app_data(
        // JSON bodies are small (task submissions read their own); a
        // larger one is refused before it is read.
        web::JsonConfig::default()
            .limit(MAX_JSON_BYTES)
            .error_handler(|e, _| match e {
                actix_web::error::JsonPayloadError::OverflowKnownLength { .. }
                | actix_web::error::JsonPayloadError::Overflow { .. } => ApiError::JsonTooLarge {
                    limit: MAX_JSON_BYTES,
                }
                .into(),
                e => extractor_error("invalid_json", e),
            }),
    );
    // What is mounted here is listed by `routes::table` the same way.
    let mut table = Vec::new();
    health::config(&mut Router::new(cfg, "", &mut table));
    cfg.service(
        web::scope("/api/v1")
            .wrap(actix_web::middleware::from_fn(crate::auth::authenticate))
            .configure(|cfg| api_routes(&mut Router::new(cfg, "/api/v1", &mut table)))
            .default_service(web::to(not_found)),
    );
    dashboard::config(cfg, web_dir);
    cfg.default_service(web::to(not_found));
}

/// Every `/api/v1` route.
fn api_routes(r: &mut Router) {
    openapi::config(r);
    session::config(r);
    tokens::config(r);
    submit::config(r);
    tasks::config(r);
    models::config(r);
    commands::config(r);
    events::config(r);
}

/// The command called `name`, if users may submit it.
fn command<'a>(commands: &'a Commands, name: &str) -> Result<&'a Arc<dyn AnyCommand>, ApiError> {
    commands
        .submittable(name)
        .ok_or_else(|| ApiError::UnknownCommand {
            command: name.to_owned(),
            known: commands.submittable_names().collect::<Vec<_>>().join(", "),
        })
}

/// The command a form submits: one users may submit, or for a model upload
/// the internal `validate_model`.
fn command_or_internal<'a>(
    state: &'a AppState,
    name: &str,
    form: submit::Form,
) -> Result<&'a Arc<dyn AnyCommand>, ApiError> {
    match form {
        submit::Form::Task => command(&state.commands, name),
        submit::Form::Model => state
            .commands
            .get(name)
            .ok_or_else(|| ApiError::NotFound(format!("no command {name}"))),
    }
}

/// A page size: 50 unless given, at most 200.
fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(50) {
        n @ 1..=200 => Ok(n),
        n => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and 200, got {n}"),
        )),
    }
}

fn no_task(id: uuid::Uuid) -> ApiError {
    ApiError::NotFound(format!("no task with id {id}"))
}

/// What a request no route answers gets: 405 with `Allow` if its path is
/// served with other methods, else 404.
fn no_route(req: &actix_web::HttpRequest) -> ApiError {
    let allowed = routes::methods_at(req.path());
    if allowed.is_empty() {
        return ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()));
    }
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        allowed: allowed.iter().map(|m| m.to_string()).collect(),
    }
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(no_route(&req))
}

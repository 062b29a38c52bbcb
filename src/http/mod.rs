//! The HTTP API. One module per resource, each exporting `config`; this
//! module composes them and turns actix's own extractor errors into mlq's
//! JSON error shape.

mod dashboard;
mod download;
pub mod error;
mod events;
pub mod health;
pub mod models;
mod submit;
pub mod tasks;

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use deadpool_postgres::Pool;

use mlq_actors::commands::Commands;
use mlq_actors::pool::WorkerBoard;
use mlq_actors::ports::ObjectStore;

use self::error::{extractor_error, ApiError};
pub use self::events::FeedSettings;
use crate::db::announcer::Announcer;
use crate::events::Hub;

/// What handlers share.
pub struct AppState {
    pub db: Pool,
    pub objects: Arc<dyn ObjectStore>,
    pub commands: Commands,
    pub board: WorkerBoard,
    /// The configured pool size, to compare with the live one.
    pub workers: usize,
    pub max_attempts: i32,
    pub limits: UploadLimits,
    /// Connections for inserting tasks: their events are announced by the
    /// announcer after they commit (see `db::announcer`).
    pub submissions: Pool,
    pub announcer: Announcer,
    pub hub: Arc<Hub>,
    pub feed: FeedSettings,
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
    /// Accepted file content types per command; unlisted commands take any.
    pub content_types: std::collections::BTreeMap<String, Vec<String>>,
}

impl UploadLimits {
    /// The content types `command` accepts, if it restricts them and
    /// `content_type` is not among them.
    pub fn refuses(&self, command: &str, content_type: &str) -> Option<&[String]> {
        let allowed = self.content_types.get(command)?;
        let ok = allowed
            .iter()
            .any(|a| a == "*/*" || a.eq_ignore_ascii_case(content_type));
        (!ok).then_some(allowed.as_slice())
    }
}

/// The whole HTTP surface; the dashboard is served from `web_dir` when it
/// was built.
pub fn config(cfg: &mut web::ServiceConfig, web_dir: &std::path::Path) {
    cfg.app_data(
        web::PathConfig::default().error_handler(|e, _| extractor_error("invalid_path", e)),
    )
    .app_data(web::QueryConfig::default().error_handler(|e, _| extractor_error("invalid_query", e)))
    .app_data(web::JsonConfig::default().error_handler(|e, _| extractor_error("invalid_json", e)))
    .configure(health::config)
    .service(
        web::scope("/api/v1")
            .configure(tasks::config)
            .configure(models::config)
            .configure(events::config)
            .default_service(web::to(not_found)),
    );
    if !dashboard::config(cfg, web_dir) {
        cfg.default_service(web::to(not_found));
    }
}

fn not_found_error(req: &actix_web::HttpRequest) -> ApiError {
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.path()))
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(not_found_error(&req))
}

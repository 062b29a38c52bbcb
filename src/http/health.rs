//! `/healthz` (the process is alive) and `/readyz` (it can do its job: the
//! database answers and the ML pool is at full size).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::routes::Router;
use super::AppState;

pub fn config(r: &mut Router) {
    r.get("/healthz", healthz).get("/readyz", readyz);
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// Whether this process can do its job, and why not.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `not_ready` or `stopping`.
    pub status: &'static str,
    /// While stopping: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// `ok` or `unavailable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Workers>,
    /// Live-feed connections, of `max_sockets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedSlots>,
    /// Uploads running, of `max_uploads`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadSlots>,
}

/// The ML worker pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct Workers {
    pub configured: usize,
    pub alive: usize,
    /// Workers abandoned in a command that would not stop.
    pub stuck: usize,
    pub max_stuck: usize,
    /// Each worker and its task: for admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FeedSlots {
    pub connections: usize,
    pub max: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UploadSlots {
    pub running: usize,
    pub max: usize,
}

/// The process is alive.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    security(()),
    responses((status = 200, description = "Alive", body = Health)),
)]
pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Whether this process can do its job: the database answers and the ML
/// pool is at full size. Anyone (a load balancer, a probe) gets the
/// summary; the per-worker detail names running tasks, so only an admin's
/// credential gets it.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    security((), ("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, or stopping", body = Readiness),
    ),
)]
pub(super) async fn readyz(
    req: actix_web::HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    if state.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(Readiness {
            status: "stopping",
            reason: Some("the process is shutting down"),
            database: None,
            workers: None,
            feed: None,
            uploads: None,
        });
    }
    let database = tokio::time::timeout(Duration::from_secs(2), async {
        let client = state.db.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    if let Err(e) = &database {
        tracing::warn!(
            "readiness: the database is unavailable: {}",
            crate::telemetry::redact(e)
        );
    }
    let alive = state.board.alive();
    let stuck = state.board.stuck();
    let ready = database.is_ok() && alive == state.workers && stuck <= state.max_stuck_workers;
    let admin = crate::auth::caller_if_any(&req, &state)
        .await
        .is_some_and(|c| c.user.admin);
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" },
        reason: None,
        // The reason goes to the log, not to whoever probes.
        database: Some(if database.is_ok() {
            "ok"
        } else {
            "unavailable"
        }),
        workers: Some(Workers {
            configured: state.workers,
            alive,
            stuck,
            max_stuck: state.max_stuck_workers,
            detail: admin.then(|| serde_json::json!(state.board.snapshot())),
        }),
        feed: Some(FeedSlots {
            connections: state.hub.subscribers(),
            max: state.max_sockets,
        }),
        uploads: Some(UploadSlots {
            running: state.max_uploads - state.uploads.available_permits(),
            max: state.max_uploads,
        }),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

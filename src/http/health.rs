//! `/healthz` (the process is alive) and `/readyz` (it can do its job: the
//! database answers and the ML pool is at full size).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::routes::Router;
use super::AppState;

pub fn config(r: &mut Router) {
    r.get("/healthz", healthz).get("/readyz", readyz);
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Anyone (a load balancer, a probe) gets the summary; the per-worker
/// detail names running tasks, so only an admin's credential gets it.
async fn readyz(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if state.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "stopping",
            "reason": "the process is shutting down",
        }));
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
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        // The reason goes to the log, not to whoever probes.
        "database": if database.is_ok() { "ok" } else { "unavailable" },
        "workers": {
            "configured": state.workers,
            "alive": alive,
            "stuck": stuck,
            "max_stuck": state.max_stuck_workers,
        },
        "feed": {
            "connections": state.hub.subscribers(),
            "max": state.max_sockets,
        },
        "uploads": {
            "running": state.max_uploads - state.uploads.available_permits(),
            "max": state.max_uploads,
        },
    });
    if admin {
        body["workers"]["detail"] = json!(state.board.snapshot());
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

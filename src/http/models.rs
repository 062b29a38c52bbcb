//! `/api/v1/models`: models registered by `train`.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::ApiError;
use super::page_limit;
use super::AppState;
use crate::db::{self, models::ModelRow};

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/models")
            .route("", web::get().to(list))
            .route("/{id}", web::get().to(get)),
    );
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelView {
    pub id: Uuid,
    /// The `train` task that produced it.
    pub task_id: Uuid,
    pub kind: String,
    pub target: String,
    pub metrics: Value,
    /// The whole spec, on a single model's view only: with one entry per
    /// feature column it can be megabytes, too much for each row of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    pub weights_url: String,
    pub created_at: DateTime<Utc>,
}

impl From<ModelRow> for ModelView {
    fn from(m: ModelRow) -> Self {
        Self {
            weights_url: format!("/api/v1/tasks/{}/artifacts/model.safetensors", m.task_id),
            id: m.id,
            task_id: m.task_id,
            kind: m.kind,
            target: m.target,
            metrics: m.metrics,
            spec: Some(m.spec),
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    before: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ModelPage {
    pub models: Vec<ModelView>,
    pub next_before: Option<Uuid>,
}

async fn list(
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let client = state.db.get().await?;
    let models = db::models::list(&client, query.before, limit).await?;
    let next_before = (models.len() as i64 == limit)
        .then(|| models.last().map(|m| m.id))
        .flatten();
    Ok(HttpResponse::Ok().json(ModelPage {
        models: models
            .into_iter()
            .map(|m| ModelView {
                spec: None,
                ..ModelView::from(m)
            })
            .collect(),
        next_before,
    }))
}

async fn get(id: web::Path<Uuid>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let client = state.db.get().await?;
    let model = db::models::get(&client, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no model with id {id}")))?;
    Ok(HttpResponse::Ok().json(ModelView::from(model)))
}

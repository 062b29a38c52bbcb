//! `/api/v1/models`: the model registry. Models come from `train`, or are
//! uploaded (TorchScript with a spec) and become usable once a worker has
//! run them. Wherever a model is named, an id, a name (its latest ready
//! version) or `name@version` will do.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use mlq_actors::ml::registry::{self, ModelRef};

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::submit::{self, Form};
use super::{download, page_limit, AppState};
use crate::auth::Caller;
use crate::db::{self, models::ModelRow, tasks::Deleted, users::Viewer};

pub fn config(r: &mut Router) {
    r.get("/models", list)
        .post("/models", upload)
        .get("/models/{model}", get)
        .delete("/models/{model}", delete)
        .get("/models/{model}/download", download);
}

/// A model in the registry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    /// `name@version`: how to name exactly this model.
    pub reference: String,
    /// `validating`, `ready` or `invalid`.
    pub status: String,
    /// `trained` or `uploaded`.
    pub source: String,
    /// `tabular` or `image`.
    pub input: String,
    /// `mlq.mlp.v1` or `torchscript`.
    pub format: String,
    /// The task that trained it, or that validates it.
    pub task_id: Uuid,
    pub kind: String,
    pub target: Option<String>,
    /// How it scored on held-out data when trained.
    #[schema(value_type = Object)]
    pub metrics: Value,
    /// Why it is invalid: `{code, message}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Bytes of its weights file.
    pub size: Option<i64>,
    /// The whole spec, on a single model's view only: with one entry per
    /// feature column it can be megabytes, too much for each row of a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
    pub download_url: String,
    pub created_at: DateTime<Utc>,
}

impl From<ModelRow> for ModelView {
    fn from(m: ModelRow) -> Self {
        Self {
            download_url: format!("/api/v1/models/{}/download", m.id),
            reference: format!("{}@{}", m.name, m.version),
            id: m.id,
            name: m.name,
            version: m.version,
            status: m.status,
            source: m.source,
            input: m.input,
            format: m.format,
            task_id: m.task_id,
            kind: m.kind,
            target: m.target,
            metrics: m.metrics,
            error: m.error,
            size: m.size,
            spec: Some(m.spec),
            created_at: m.created_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Page size, 1 to 200 (50 if not given).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The `next_before` of the previous page.
    before: Option<Uuid>,
    /// Only the versions of this name.
    name: Option<String>,
}

/// One page of models, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ModelPage {
    pub models: Vec<ModelView>,
    pub next_before: Option<Uuid>,
}

/// The caller's models (an admin's: everyone's), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    params(ListQuery),
    responses((status = 200, description = "One page of models", body = ModelPage)),
)]
pub(super) async fn list(
    caller: Caller,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    if let Some(name) = &query.name {
        registry::check_name(name).map_err(|m| ApiError::bad_request("invalid_query", m))?;
    }
    let client = state.db.get().await?;
    let models = db::models::list(
        &client,
        caller.viewer(),
        query.name.as_deref(),
        query.before,
        limit,
    )
    .await?;
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

/// The model a path segment names, among those the viewer may see, or 404.
async fn find(state: &AppState, segment: &str, viewer: Viewer) -> Result<ModelRow, ApiError> {
    let model: ModelRef = segment
        .parse()
        .map_err(|m: String| ApiError::bad_request("invalid_model", m))?;
    let client = state.db.get().await?;
    db::models::resolve(&client, &model, viewer)
        .await?
        .ok_or_else(|| match &model {
            ModelRef::Latest(name) => ApiError::NotFound(format!("no ready model named {name}")),
            other => ApiError::NotFound(format!("no model {other}")),
        })
}

/// One model, with its whole spec.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "A model id, a name (its latest ready version) or `name@version`")),
    responses(
        (status = 200, description = "The model", body = ModelView),
        (status = 404, description = "No such model", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let model = find(&state, &path, caller.viewer()).await?;
    Ok(HttpResponse::Ok().json(ModelView::from(model)))
}

/// Uploads a TorchScript model (`file`) with its JSON `spec`. Answers 202
/// with the model, `validating`; a worker runs it once, and it becomes
/// `ready` or `invalid`.
#[utoipa::path(
    post,
    path = "/api/v1/models",
    tag = "models",
    request_body(content = submit::ModelForm, content_type = "multipart/form-data"),
    responses(
        (status = 202, description = "The model, validating", body = ModelView,
            headers(("Location" = String, description = "The model's URL"))),
        (status = 408, description = "The upload took too long, or stalled", body = ErrorBody),
        (status = 415, description = "Not multipart/form-data", body = ErrorBody),
        (status = 422, description = "The spec is not valid", body = ErrorBody),
    ),
)]
pub(super) async fn upload(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    submit::refuse_when_stopping(&state)?;
    let task = Uuid::new_v4();
    let accepted = submit::accept(&req, payload, &state, &caller, task, Form::Model).await?;
    let model = accepted.model.ok_or_else(|| {
        ApiError::bad_request(
            "missing_file",
            "the form has no \"file\" part: the TorchScript model",
        )
    })?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/models/{}", model.id)))
        .json(ModelView::from(model)))
}

/// Streams the model's weights: the TorchScript file as uploaded, or a
/// trained model's safetensors.
#[utoipa::path(
    get,
    path = "/api/v1/models/{model}/download",
    tag = "models",
    params(("model" = String, Path, description = "A model id, a name (its latest ready version) or `name@version`")),
    responses(
        (status = 200, description = "The weights", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ),
)]
pub(super) async fn download(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let model = find(&state, &path, caller.viewer()).await?;
    let client = state.db.get().await?;
    // The weights are the upload's input file, or the train task's artifact.
    let stored = if model.source == "uploaded" {
        db::tasks::input(&client, model.task_id, 0, Viewer::SYSTEM).await?
    } else {
        db::tasks::artifact(&client, model.task_id, "model.safetensors", Viewer::SYSTEM).await?
    };
    drop(client);
    let mut object = stored
        .filter(|o| o.key == model.weights_key)
        .ok_or_else(|| ApiError::NotFound(format!("model {} has no stored weights", model.id)))?;
    let extension = if model.format == "torchscript" {
        "pt"
    } else {
        "safetensors"
    };
    object.name = format!("{}-v{}.{extension}", model.name, model.version);
    object.content_type = "application/octet-stream".into();
    download::serve(&req, state.objects.as_ref(), &object).await
}

/// Deletes a model. An uploaded model goes with its validation task and
/// file; a trained model's weights stay with its `train` task, as its
/// artifacts.
#[utoipa::path(
    delete,
    path = "/api/v1/models/{model}",
    tag = "models",
    params(("model" = String, Path, description = "A model id, a name (its latest ready version) or `name@version`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 409, description = "Queued or running tasks read it (`model_in_use`)", body = ErrorBody),
    ),
)]
pub(super) async fn delete(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let model = find(&state, &path, caller.viewer()).await?;
    let mut client = state.db.get().await?;
    let deleted = db::models::delete(&mut client, model.id).await?;
    drop(client);
    match deleted {
        Deleted::Gone => Err(ApiError::NotFound(format!("no model {}", model.id))),
        Deleted::InUse(tasks) => Err(super::tasks::model_in_use(
            &format!("model {}@{}", model.name, model.version),
            &tasks,
        )),
        Deleted::Done { objects } => {
            for key in objects {
                if let Err(e) = state.objects.delete(&key).await {
                    // The orphan collector finds it later.
                    tracing::warn!(%key, "could not delete a deleted model's file: {e}");
                }
            }
            tracing::info!(model = %model.id, name = %model.name, version = model.version, "model deleted");
            Ok(HttpResponse::NoContent().finish())
        }
    }
}

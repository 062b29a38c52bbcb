//! `/api/v1/tasks`: read, list, cancel, retry and delete tasks; download
//! their inputs and artifacts. (Submitting is `submit`; following a task
//! and its log is `events`.)

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use mlq_actors::task::{InputFile, StoredArtifact, TaskStatus};

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::{download, no_task, page_limit, AppState};
use crate::auth::Caller;
use crate::db::{self, tasks::Cancel, tasks::Retry, tasks::TaskRecord};

pub fn config(r: &mut Router) {
    r.get("/tasks", list)
        .get("/tasks/{id}", get)
        .delete("/tasks/{id}", delete)
        .post("/tasks/{id}/cancel", cancel)
        .post("/tasks/{id}/retry", retry)
        .get("/tasks/{id}/artifacts/{name}", artifact)
        .get("/tasks/{id}/inputs/{n}", input);
}

/// A task as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    pub id: Uuid,
    pub command: String,
    pub status: TaskStatus,
    /// The command's latest progress report (`{}` until the first).
    #[schema(value_type = Object)]
    pub progress: Value,
    /// The params as checked, with defaults filled in.
    #[schema(value_type = Object)]
    pub params: Value,
    pub inputs: Vec<InputView>,
    pub artifacts: Vec<ArtifactView>,
    /// What a succeeded task returned.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Why a task failed: `{code, message}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The number of the task's latest status or progress change; events
    /// on the live feed with a higher number are newer.
    pub seq: i64,
}

/// An uploaded file, downloadable at `/api/v1/tasks/{id}/inputs/{n}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InputView {
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
}

/// A file a task wrote.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ArtifactView {
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub url: String,
}

impl From<TaskRecord> for TaskView {
    fn from(t: TaskRecord) -> Self {
        let id = t.id;
        Self {
            id,
            command: t.command,
            status: t.status,
            progress: t.progress,
            params: t.params,
            inputs: t.inputs.into_iter().map(InputView::from).collect(),
            artifacts: t
                .artifacts
                .into_iter()
                .map(|a| ArtifactView::new(id, a))
                .collect(),
            result: t.result,
            error: t.error,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            cancel_requested: t.cancel_requested,
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            seq: t.seq,
        }
    }
}

impl From<InputFile> for InputView {
    fn from(i: InputFile) -> Self {
        Self {
            name: i.name,
            size: i.size,
            sha256: i.sha256,
            content_type: i.content_type,
        }
    }
}

impl ArtifactView {
    fn new(task: Uuid, a: StoredArtifact) -> Self {
        Self {
            url: format!("/api/v1/tasks/{task}/artifacts/{}", a.name),
            name: a.name,
            size: a.size,
            sha256: a.sha256,
            content_type: a.content_type,
        }
    }
}

/// One task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 404, description = "No such task (or not the caller's)", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    caller: Caller,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let client = state.db.get().await?;
    let task = db::tasks::get(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| no_task(id))?;
    Ok(HttpResponse::Ok().json(TaskView::from(task)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only tasks with this status.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Page size, 1 to 200 (50 if not given).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// The `next_before` of the previous page.
    before: Option<Uuid>,
}

/// One page of tasks, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Pass as `before` to get the next page; null on the last page.
    pub next_before: Option<Uuid>,
}

/// The caller's tasks (an admin's: everyone's), newest first.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    params(ListQuery),
    responses((status = 200, description = "One page of tasks", body = TaskPage)),
)]
pub(super) async fn list(
    caller: Caller,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = q
        .status
        .as_deref()
        .map(|s| {
            TaskStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(
                    "invalid_status",
                    format!("status must be one of {}", all.join(", ")),
                )
            })
        })
        .transpose()?;
    let limit = page_limit(q.limit)?;
    let client = state.db.get().await?;
    let tasks = db::tasks::list(&client, caller.viewer(), status, q.before, limit).await?;
    let next_before = (tasks.len() as i64 == limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(HttpResponse::Ok().json(TaskPage {
        tasks: tasks.into_iter().map(TaskView::from).collect(),
        next_before,
    }))
}

/// Cancels a task: a queued task is cancelled at once; a running one stops
/// at its next check (between batches).
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, cancelled or asked to stop", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "The task has already finished (`task_finished`)", body = ErrorBody),
    ),
)]
pub(super) async fn cancel(
    caller: Caller,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut client = state.db.get().await?;
    match db::tasks::cancel(&mut client, id, caller.viewer()).await? {
        Cancel::NotFound => return Err(no_task(id)),
        Cancel::AlreadyFinished => {
            return Err(ApiError::Conflict {
                code: "task_finished",
                message: format!("task {id} has already finished"),
            })
        }
        Cancel::Cancelled | Cancel::Requested => {}
    }
    let task = db::tasks::get(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| no_task(id))?;
    Ok(HttpResponse::Ok().json(TaskView::from(task)))
}

/// Queues a failed or cancelled task again, keeping its id, inputs and log.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/retry",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, queued again", body = TaskView),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Not failed or cancelled (`task_not_retryable`), or a model it reads is gone (`model_not_ready`)", body = ErrorBody),
    ),
)]
pub(super) async fn retry(
    caller: Caller,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut client = state.db.get().await?;
    state.quotas.before_requeue(&client, &caller.user).await?;
    match db::tasks::retry(&mut client, id, caller.viewer()).await? {
        Retry::NotFound => return Err(no_task(id)),
        Retry::NotRetryable(status) => {
            return Err(ApiError::Conflict {
                code: "task_not_retryable",
                message: format!(
                    "task {id} is {status}; only failed or cancelled tasks can be retried"
                ),
            })
        }
        Retry::ModelGone => {
            return Err(ApiError::Conflict {
                code: "model_not_ready",
                message: "a model the task reads was deleted or is not ready; submit a new task"
                    .into(),
            })
        }
        Retry::Queued => {}
    }
    let task = db::tasks::get(&client, id, caller.viewer())
        .await?
        .ok_or_else(|| no_task(id))?;
    tracing::info!(task = %id, "task retried");
    Ok(HttpResponse::Ok().json(TaskView::from(task)))
}

/// Removes a task, its inputs and artifacts (objects included) and the
/// model it trained. A running task is cancelled first.
#[utoipa::path(
    delete,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such task", body = ErrorBody),
        (status = 409, description = "Queued or running tasks read the model it made (`model_in_use`)", body = ErrorBody),
    ),
)]
pub(super) async fn delete(
    caller: Caller,
    id: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let mut client = state.db.get().await?;
    let keys = match db::tasks::delete(&mut client, id, caller.viewer()).await? {
        db::tasks::Deleted::Gone => return Err(no_task(id)),
        db::tasks::Deleted::InUse(tasks) => {
            return Err(model_in_use("the model this task made", &tasks))
        }
        db::tasks::Deleted::Done { objects } => objects,
    };
    drop(client);
    // The rows are gone, so these objects are unreferenced: if a delete
    // fails here, the orphan collector removes the object later.
    for key in keys {
        if let Err(e) = state.objects.delete(&key).await {
            tracing::warn!(%key, "could not delete object of deleted task: {e}");
        }
    }
    tracing::info!(task = %id, "task deleted");
    Ok(HttpResponse::NoContent().finish())
}

/// 409 for deleting a model (or the task that made it) that tasks read.
pub(super) fn model_in_use(what: &str, tasks: &[Uuid]) -> ApiError {
    ApiError::Conflict {
        code: "model_in_use",
        message: format!(
            "{what} is read by queued or running tasks ({}); cancel them or wait for them to end",
            tasks
                .iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Streams a file the task wrote, or one byte range of it (`Range`).
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/artifacts/{name}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), ("name" = String, Path, description = "The artifact's name")),
    responses(
        (status = 200, description = "The file, with the content type it was stored with", content(("*/*"))),
        (status = 206, description = "The requested range", content(("*/*"))),
        (status = 404, description = "No such task or artifact", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ),
)]
pub(super) async fn artifact(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(Uuid, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    // No artifact is named with control characters, and Postgres refuses
    // a NUL in text: answered here, not as a database error.
    if name.chars().any(char::is_control) {
        return Err(ApiError::NotFound(format!(
            "task {id} has no artifact {name:?}"
        )));
    }
    let client = state.db.get().await?;
    let artifact = db::tasks::artifact(&client, id, &name, caller.viewer())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} has no artifact {name:?}")))?;
    drop(client);
    download::serve(&req, state.objects.as_ref(), &artifact).await
}

/// Streams an uploaded input (numbered from 0, in upload order), or one
/// byte range of it (`Range`).
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/inputs/{n}",
    tag = "tasks",
    params(("id" = Uuid, Path, description = "The task's id"), ("n" = i32, Path, description = "The input's position, from 0")),
    responses(
        (status = 200, description = "The file, with the content type it was stored with", content(("*/*"))),
        (status = 206, description = "The requested range", content(("*/*"))),
        (status = 404, description = "No such task or input", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ),
)]
pub(super) async fn input(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(Uuid, i32)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, position) = path.into_inner();
    let client = state.db.get().await?;
    let input = db::tasks::input(&client, id, position, caller.viewer())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("task {id} has no input {position}")))?;
    drop(client);
    download::serve(&req, state.objects.as_ref(), &input).await
}

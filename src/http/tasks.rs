//! `/api/v1/tasks`: read, list, cancel, retry and delete tasks; download
//! their inputs and artifacts. (Submitting is `submit`; following a task
//! and its log is `events`.)

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use mlq_actors::task::{InputFile, StoredArtifact, TaskStatus};

use super::error::ApiError;
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
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskView {
    pub id: Uuid,
    pub command: String,
    pub status: TaskStatus,
    pub progress: Value,
    pub params: Value,
    pub inputs: Vec<InputView>,
    pub artifacts: Vec<ArtifactView>,
    pub result: Option<Value>,
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

#[derive(Debug, Serialize, Deserialize)]
pub struct InputView {
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
}

#[derive(Debug, Serialize, Deserialize)]
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

async fn get(
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    before: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TaskPage {
    pub tasks: Vec<TaskView>,
    /// Pass as `before` to get the next page; null on the last page.
    pub next_before: Option<Uuid>,
}

/// `GET /api/v1/tasks?status=&limit=&before=`: newest first.
async fn list(
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

/// `POST /api/v1/tasks/{id}/cancel`: a queued task is cancelled at once; a
/// running one stops at its next check (between batches).
async fn cancel(
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

/// `POST /api/v1/tasks/{id}/retry`: queues a failed or cancelled task
/// again, keeping its id, inputs and log.
async fn retry(
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

/// `DELETE /api/v1/tasks/{id}`: removes the task, its inputs and artifacts
/// (objects included) and the model it trained. A running task is
/// cancelled first.
async fn delete(
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

/// `GET /api/v1/tasks/{id}/artifacts/{name}`: streams a result file, or
/// one byte range of it.
async fn artifact(
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

/// `GET /api/v1/tasks/{id}/inputs/{n}`: streams an uploaded input (numbered
/// from 0, in upload order), or one byte range of it.
async fn input(
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

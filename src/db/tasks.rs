//! Queries on tasks as users see them: create, read, list, cancel.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use mlq_actors::task::{InputFile, StoredArtifact, TaskStatus};

use super::listener::{CANCEL_CHANNEL, TASKS_CHANNEL};
use super::users::Viewer;
use super::DbError;

/// A task row with its inputs and artifacts.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: Uuid,
    pub command: String,
    pub params: Value,
    pub status: TaskStatus,
    pub progress: Value,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The number of the task's latest change (see the live feed).
    pub seq: i64,
    pub inputs: Vec<InputFile>,
    pub artifacts: Vec<StoredArtifact>,
}

impl TryFrom<Row> for TaskRecord {
    type Error = DbError;

    fn try_from(row: Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.try_get("id")?,
            command: row.try_get("command")?,
            params: row.try_get("params")?,
            status: status(&row)?,
            progress: row.try_get("progress")?,
            result: row.try_get("result")?,
            error: row.try_get("error")?,
            attempts: row.try_get("attempts")?,
            max_attempts: row.try_get("max_attempts")?,
            cancel_requested: row.try_get("cancel_requested")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            seq: row.try_get("seq")?,
            inputs: json_column(&row, "inputs")?,
            artifacts: json_column(&row, "artifacts")?,
        })
    }
}

fn status(row: &Row) -> Result<TaskStatus, DbError> {
    let text: &str = row.try_get("status")?;
    TaskStatus::parse(text).ok_or_else(|| DbError::RowShape(format!("unknown status {text:?}")))
}

pub(crate) fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row,
    name: &str,
) -> Result<T, DbError> {
    let value: Value = row.try_get(name)?;
    serde_json::from_value(value).map_err(|e| DbError::RowShape(format!("column {name}: {e}")))
}

/// A task to create.
pub struct NewTask<'a> {
    pub id: Uuid,
    pub owner: Uuid,
    pub command: &'a str,
    pub params: &'a Value,
    pub max_attempts: i32,
    pub inputs: &'a [InputFile],
    /// The models it reads, by id.
    pub models: &'a [Uuid],
}

/// Inserts a task and its inputs. Returns the task as it was accepted (a
/// dispatcher may claim it the moment this commits), or `None` when one of
/// its models is gone or no longer ready.
pub async fn insert(
    client: &impl GenericClient,
    task: NewTask<'_>,
) -> Result<Option<TaskRecord>, DbError> {
    let inputs = serde_json::to_value(task.inputs).unwrap_or(Value::Null);
    let statement = client
        .prepare_cached(include_str!("sql/insert_task.sql"))
        .await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &task.id,
                &task.command,
                task.params,
                &task.max_attempts,
                &inputs,
                &task.models,
                &task.owner,
            ],
        )
        .await?;
    row.map(TaskRecord::try_from).transpose()
}

/// The task `id`, if the viewer may see it.
pub async fn get(
    client: &impl GenericClient,
    id: Uuid,
    viewer: Viewer,
) -> Result<Option<TaskRecord>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT * FROM task_details WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)",
        )
        .await?;
    client
        .query_opt(&statement, &[&id, &viewer.owner()])
        .await?
        .map(TaskRecord::try_from)
        .transpose()
}

/// One page of the tasks the viewer may see, newest first, created before
/// the task `before`.
pub async fn list(
    client: &impl GenericClient,
    viewer: Viewer,
    status: Option<TaskStatus>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<TaskRecord>, DbError> {
    let status = status.map(TaskStatus::as_str);
    client
        .query(
            include_str!("sql/list_tasks.sql"),
            &[&status, &before, &limit, &viewer.owner()],
        )
        .await?
        .into_iter()
        .map(TaskRecord::try_from)
        .collect()
}

/// Locks a task's row for the rest of the transaction and reads its
/// status; `None` if there is no such task the viewer may see.
async fn locked_status(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    viewer: Viewer,
) -> Result<Option<TaskStatus>, DbError> {
    tx.query_opt(
        "SELECT status FROM tasks WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2) FOR UPDATE",
        &[&id, &viewer.owner()],
    )
    .await?
    .as_ref()
    .map(status)
    .transpose()
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The task was queued and is now cancelled.
    Cancelled,
    /// The task is running; its worker was told to stop.
    Requested,
    /// The task had already finished with this status.
    AlreadyFinished,
    NotFound,
}

/// Cancels a queued task at once, or asks the process running it to stop
/// (through `mlq_cancel` notifications, with heartbeats as the backstop).
pub async fn cancel(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    viewer: Viewer,
) -> Result<Cancel, DbError> {
    let tx = client.transaction().await?;
    let status = locked_status(&tx, id, viewer).await?;
    let outcome = match status {
        None => Cancel::NotFound,
        Some(TaskStatus::Queued) => {
            tx.execute(
                "UPDATE tasks
                 SET status = 'cancelled', cancel_requested = true, finished_at = now(),
                     updated_at = now(), error = $2
                 WHERE id = $1",
                &[&id, &super::queue::cancelled_error()],
            )
            .await?;
            Cancel::Cancelled
        }
        Some(TaskStatus::Running) => {
            tx.execute(
                "UPDATE tasks SET cancel_requested = true, updated_at = now() WHERE id = $1",
                &[&id],
            )
            .await?;
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CANCEL_CHANNEL, &id.to_string()],
            )
            .await?;
            Cancel::Requested
        }
        Some(_) => Cancel::AlreadyFinished,
    };
    tx.commit().await?;
    Ok(outcome)
}

/// What a retry request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    Queued,
    /// Only failed and cancelled tasks are retried; this one is in this status.
    NotRetryable(TaskStatus),
    /// A model it reads was deleted, or is not ready.
    ModelGone,
    NotFound,
}

/// Queues a failed or cancelled task again, as new: its attempts start
/// over, and its log says a user asked for it. The processes it crashed
/// are kept: a retried task that killed processes runs alone, and one more
/// crash fails it, so a retry cannot take down process after process.
pub async fn retry(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    viewer: Viewer,
) -> Result<Retry, DbError> {
    let tx = client.transaction().await?;
    let status = locked_status(&tx, id, viewer).await?;
    let outcome = match status {
        None => Retry::NotFound,
        Some(TaskStatus::Failed | TaskStatus::Cancelled) if !models_ready(&tx, id).await? => {
            Retry::ModelGone
        }
        Some(TaskStatus::Failed | TaskStatus::Cancelled) => {
            tx.execute(
                r#"INSERT INTO task_events (task_id, kind, data)
                   VALUES ($1, 'log', '{"level": "info", "message": "retry requested"}')"#,
                &[&id],
            )
            .await?;
            tx.execute(
                r#"UPDATE tasks
                   SET status = 'queued', attempts = 0, run_at = now(), cancel_requested = false,
                       error = NULL, result = NULL, started_at = NULL, finished_at = NULL,
                       progress = '{"fraction": 0, "stage": "queued", "message": "", "metrics": {}}',
                       updated_at = now()
                   WHERE id = $1"#,
                &[&id],
            )
            .await?;
            tx.execute("SELECT pg_notify($1, '')", &[&TASKS_CHANNEL])
                .await?;
            Retry::Queued
        }
        Some(other) => Retry::NotRetryable(other),
    };
    tx.commit().await?;
    Ok(outcome)
}

/// What deleting a task or a model did.
#[derive(Debug)]
pub enum Deleted {
    /// There is no such thing.
    Gone,
    /// Queued or running tasks read its model (these, at most 10): nothing
    /// was deleted.
    InUse(Vec<Uuid>),
    /// Deleted; these stored objects are no longer referenced.
    Done { objects: Vec<String> },
}

/// Whether every model the task reads is there and ready; each is
/// key-share locked until the transaction ends, as at submit, so a delete
/// cannot slip in before the task is queued again.
async fn models_ready(tx: &deadpool_postgres::Transaction<'_>, id: Uuid) -> Result<bool, DbError> {
    let row = tx
        .query_one(
            "WITH wanted AS (SELECT models FROM tasks WHERE id = $1),
                  pinned AS (SELECT m.id FROM models AS m, wanted
                             WHERE m.id = ANY (wanted.models) AND m.status = 'ready'
                             FOR KEY SHARE OF m)
             SELECT (SELECT count(*) FROM pinned) = (SELECT cardinality(models) FROM wanted)",
            &[&id],
        )
        .await?;
    Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(true))
}

/// Deletes a task with its inputs, artifacts and model, unless that model
/// is in use. A running task is told to stop first; whatever its worker
/// writes afterwards is fenced out, as its row is gone.
pub async fn delete(
    client: &mut deadpool_postgres::Client,
    id: Uuid,
    viewer: Viewer,
) -> Result<Deleted, DbError> {
    let tx = client.transaction().await?;
    let deleted = delete_in(&tx, id, viewer).await?;
    if matches!(deleted, Deleted::Done { .. }) {
        tx.commit().await?;
    }
    Ok(deleted)
}

/// [`delete`], inside a transaction the caller commits.
pub async fn delete_in(
    tx: &deadpool_postgres::Transaction<'_>,
    id: Uuid,
    viewer: Viewer,
) -> Result<Deleted, DbError> {
    let Some(status) = locked_status(tx, id, viewer).await? else {
        return Ok(Deleted::Gone);
    };
    // The model it made goes with it: not while a task reads that model.
    let made = tx
        .query_opt(
            "SELECT id FROM models WHERE task_id = $1 FOR UPDATE",
            &[&id],
        )
        .await?;
    if let Some(model) = made {
        let users = super::models::users(tx, model.get(0)).await?;
        if !users.is_empty() {
            return Ok(Deleted::InUse(users));
        }
    }
    if status == TaskStatus::Running {
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&CANCEL_CHANNEL, &id.to_string()],
        )
        .await?;
    }
    let objects = tx
        .query(
            "SELECT object_key FROM task_inputs WHERE task_id = $1
             UNION ALL
             SELECT object_key FROM artifacts WHERE task_id = $1",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.execute("DELETE FROM tasks WHERE id = $1", &[&id])
        .await?;
    Ok(Deleted::Done { objects })
}

/// An input file of a task the viewer may see, in the shape of an
/// artifact (for download).
pub async fn input(
    client: &impl GenericClient,
    task: Uuid,
    position: i32,
    viewer: Viewer,
) -> Result<Option<StoredArtifact>, DbError> {
    let row = client
        .query_opt(
            "SELECT i.name, i.size, i.sha256, i.content_type, i.object_key AS key
             FROM task_inputs AS i
             JOIN tasks AS t ON t.id = i.task_id
             WHERE i.task_id = $1 AND i.position = $2
               AND ($3::uuid IS NULL OR t.owner = $3)",
            &[&task, &position, &viewer.owner()],
        )
        .await?;
    row.map(stored_object).transpose()
}

fn stored_object(r: Row) -> Result<StoredArtifact, DbError> {
    Ok(StoredArtifact {
        name: r.try_get("name")?,
        size: r.try_get("size")?,
        sha256: r.try_get("sha256")?,
        content_type: r.try_get("content_type")?,
        key: r.try_get("key")?,
    })
}

/// A result file of a task the viewer may see.
pub async fn artifact(
    client: &impl GenericClient,
    task: Uuid,
    name: &str,
    viewer: Viewer,
) -> Result<Option<StoredArtifact>, DbError> {
    let row = client
        .query_opt(
            "SELECT a.name, a.size, a.sha256, a.content_type, a.object_key AS key
             FROM artifacts AS a
             JOIN tasks AS t ON t.id = a.task_id
             WHERE a.task_id = $1 AND a.name = $2
               AND ($3::uuid IS NULL OR t.owner = $3)",
            &[&task, &name, &viewer.owner()],
        )
        .await?;
    row.map(stored_object).transpose()
}

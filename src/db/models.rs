//! Queries on the model registry.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use mlq_actors::ml::registry::ModelRef;
use mlq_actors::ml::upload::UploadSpec;
use mlq_actors::task::InputFile;

use super::tasks::Deleted;
use super::users::Viewer;
use super::DbError;

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    /// `validating`, `ready` or `invalid`.
    pub status: String,
    /// `trained` or `uploaded`.
    pub source: String,
    /// `tabular` or `image`.
    pub input: String,
    pub format: String,
    /// The task that made it (`train`) or checked it (`validate_model`).
    pub task_id: Uuid,
    pub kind: String,
    pub target: Option<String>,
    pub spec: Value,
    pub metrics: Value,
    pub error: Option<Value>,
    pub weights_key: String,
    pub size: Option<i64>,
    pub owner: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<Row> for ModelRow {
    type Error = DbError;

    fn try_from(row: Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            version: row.try_get("version")?,
            status: row.try_get("status")?,
            source: row.try_get("source")?,
            input: row.try_get("input")?,
            format: row.try_get("format")?,
            task_id: row.try_get("task_id")?,
            kind: row.try_get("kind")?,
            target: row.try_get("target")?,
            spec: row.try_get("spec")?,
            metrics: row.try_get("metrics")?,
            error: row.try_get("error")?,
            weights_key: row.try_get("weights_key")?,
            size: row.try_get("size")?,
            owner: row.try_get("owner")?,
            created_at: row.try_get("created_at")?,
        })
    }
}

pub async fn get(client: &impl GenericClient, id: Uuid) -> Result<Option<ModelRow>, DbError> {
    client
        .query_opt("SELECT * FROM models WHERE id = $1", &[&id])
        .await?
        .map(ModelRow::try_from)
        .transpose()
}

/// One page of the models the viewer may see, newest first, created before
/// the model `before`; only versions of `name` when given.
pub async fn list(
    client: &impl GenericClient,
    viewer: Viewer,
    name: Option<&str>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ModelRow>, DbError> {
    client
        .query(
            include_str!("sql/list_models.sql"),
            &[&name, &before, &limit, &viewer.owner()],
        )
        .await?
        .into_iter()
        .map(ModelRow::try_from)
        .collect()
}

/// The model a reference names: by id (one the viewer may see), or among
/// the viewer's own models by name: its latest ready version, or
/// `name@version`.
pub async fn resolve(
    client: &impl GenericClient,
    model: &ModelRef,
    viewer: Viewer,
) -> Result<Option<ModelRow>, DbError> {
    let row = match model {
        ModelRef::Id(id) => {
            client
                .query_opt(
                    "SELECT * FROM models WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)",
                    &[id, &viewer.owner()],
                )
                .await?
        }
        ModelRef::Version(name, version) => {
            client
                .query_opt(
                    "SELECT * FROM models WHERE owner = $3 AND name = $1 AND version = $2",
                    &[name, version, &viewer.user],
                )
                .await?
        }
        ModelRef::Latest(name) => {
            client
                .query_opt(
                    "SELECT * FROM models
                     WHERE owner = $2 AND name = $1 AND status = 'ready'
                     ORDER BY version DESC
                     LIMIT 1",
                    &[name, &viewer.user],
                )
                .await?
        }
    };
    row.map(ModelRow::try_from).transpose()
}

/// Registers an uploaded TorchScript model as the next version of its
/// name, `validating` until its task `task` has run it.
pub async fn insert_uploaded(
    client: &impl GenericClient,
    id: Uuid,
    task: Uuid,
    spec: &UploadSpec,
    file: &InputFile,
) -> Result<ModelRow, DbError> {
    let spec_json = serde_json::to_value(spec).unwrap_or_default();
    let row = client
        .query_one(
            include_str!("sql/insert_model.sql"),
            &[
                &id,
                &task,
                // Known once validated (the trigger copies it from the result).
                &"classification",
                &None::<String>,
                &spec_json,
                &serde_json::json!({}),
                &file.key,
                &None::<String>,
                &spec.name,
                &spec.input.as_str(),
                &"torchscript",
                &Some(file.size),
                &"validating",
                &"uploaded",
            ],
        )
        .await?;
    ModelRow::try_from(row)
}

/// The model a task made or validates, if any.
pub async fn by_task(client: &impl GenericClient, task: Uuid) -> Result<Option<ModelRow>, DbError> {
    client
        .query_opt("SELECT * FROM models WHERE task_id = $1", &[&task])
        .await?
        .map(ModelRow::try_from)
        .transpose()
}

/// Queued or running tasks that read the model `id` (at most 10).
pub async fn users(client: &impl GenericClient, id: Uuid) -> Result<Vec<Uuid>, DbError> {
    let rows = client
        .query(
            "SELECT id FROM tasks
             WHERE models @> ARRAY[$1::uuid] AND models <> '{}'
               AND status IN ('queued', 'running')
             ORDER BY created_at
             LIMIT 10",
            &[&id],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Deletes a model, unless queued or running tasks read it. An uploaded
/// model goes with its validation task (and so its file); a trained model's
/// row alone goes, its weights staying with its `train` task.
pub async fn delete(client: &mut deadpool_postgres::Client, id: Uuid) -> Result<Deleted, DbError> {
    let tx = client.transaction().await?;
    // Its task's row is locked before the model's, in the order a finishing
    // validation takes them (its task, then, by trigger, its model), so the
    // two never deadlock. The model's lock makes a submission pinning it
    // (key-share, until it commits) finish first: the check below then sees
    // every task that reads it.
    let Some(task) = tx
        .query_opt("SELECT task_id FROM models WHERE id = $1", &[&id])
        .await?
    else {
        return Ok(Deleted::Gone);
    };
    let task: Uuid = task.try_get(0)?;
    tx.query_opt("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", &[&task])
        .await?;
    let Some(row) = tx
        .query_opt(
            "SELECT source, task_id FROM models WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
    else {
        return Ok(Deleted::Gone);
    };
    let users = users(&tx, id).await?;
    if !users.is_empty() {
        return Ok(Deleted::InUse(users));
    }
    let (source, task): (String, Uuid) = (row.try_get(0)?, row.try_get(1)?);
    let deleted = if source == "uploaded" {
        // The caller found the model, so may delete what goes with it.
        super::tasks::delete_in(&tx, task, Viewer::SYSTEM).await?
    } else {
        tx.execute("DELETE FROM models WHERE id = $1", &[&id])
            .await?;
        Deleted::Done {
            objects: Vec::new(),
        }
    };
    if matches!(deleted, Deleted::Done { .. }) {
        tx.commit().await?;
    }
    Ok(deleted)
}

//! Queries on registered models.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::DbError;

#[derive(Debug, Clone)]
pub struct ModelRow {
    pub id: Uuid,
    pub task_id: Uuid,
    pub kind: String,
    pub target: String,
    pub spec: Value,
    pub metrics: Value,
    pub weights_key: String,
    pub created_at: DateTime<Utc>,
}

impl TryFrom<Row> for ModelRow {
    type Error = DbError;

    fn try_from(row: Row) -> Result<Self, DbError> {
        Ok(Self {
            id: row.try_get("id")?,
            task_id: row.try_get("task_id")?,
            kind: row.try_get("kind")?,
            target: row.try_get("target")?,
            spec: row.try_get("spec")?,
            metrics: row.try_get("metrics")?,
            weights_key: row.try_get("weights_key")?,
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

/// One page of models, newest first, created before the model `before`.
pub async fn list(
    client: &impl GenericClient,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<ModelRow>, DbError> {
    client
        .query(
            "SELECT m.*
             FROM models AS m
             WHERE $1::uuid IS NULL
                OR (m.created_at, m.id) < (SELECT c.created_at, c.id FROM models AS c WHERE c.id = $1)
             ORDER BY m.created_at DESC, m.id DESC
             LIMIT $2",
            &[&before, &limit],
        )
        .await?
        .into_iter()
        .map(ModelRow::try_from)
        .collect()
}

/// The ids among `ids` that name no model.
pub async fn missing(client: &impl GenericClient, ids: &[Uuid]) -> Result<Vec<Uuid>, DbError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT id FROM unnest($1::uuid[]) AS wanted (id)
             WHERE NOT EXISTS (SELECT 1 FROM models AS m WHERE m.id = wanted.id)",
            &[&ids],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

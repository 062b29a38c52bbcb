//! Reading the feed back: events by number (for announcements too big to
//! carry their data), replays after a sequence number, and task logs.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;
use uuid::Uuid;

use super::users::Viewer;
use super::DbError;
use crate::events::{FeedEvent, Kind};

/// A stored event: a status change or a log line.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub task: Uuid,
    pub kind: String,
    pub data: Value,
    pub at: DateTime<Utc>,
}

impl TryFrom<&Row> for EventRow {
    type Error = DbError;

    fn try_from(row: &Row) -> Result<Self, DbError> {
        Ok(Self {
            seq: row.try_get("seq")?,
            task: row.try_get("task_id")?,
            kind: row.try_get("kind")?,
            data: row.try_get("data")?,
            at: row.try_get("at")?,
        })
    }
}

impl EventRow {
    pub fn into_feed(self) -> Option<FeedEvent> {
        let kind = Kind::parse(&self.kind)?;
        Some(FeedEvent::new(
            self.seq, self.task, kind, self.at, self.data,
        ))
    }
}

pub async fn by_seq(client: &impl GenericClient, seq: i64) -> Result<Option<EventRow>, DbError> {
    let statement = client
        .prepare_cached("SELECT seq, task_id, kind, data, at FROM task_events WHERE seq = $1")
        .await?;
    client
        .query_opt(&statement, &[&seq])
        .await?
        .as_ref()
        .map(EventRow::try_from)
        .transpose()
}

/// A task's current progress with its number, for a progress announcement
/// that came without its data.
pub async fn progress(
    client: &impl GenericClient,
    task: Uuid,
) -> Result<Option<(i64, Value)>, DbError> {
    let statement = client
        .prepare_cached("SELECT seq, progress FROM tasks WHERE id = $1")
        .await?;
    Ok(client
        .query_opt(&statement, &[&task])
        .await?
        .map(|row| (row.get(0), row.get(1))))
}

/// Events numbered after `after`, oldest first: one task's status changes
/// and log lines, or (no task) the status changes of every task the viewer
/// may see.
pub async fn replay(
    client: &impl GenericClient,
    task: Option<Uuid>,
    viewer: Viewer,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, DbError> {
    let rows = match task {
        Some(task) => {
            client
                .query(
                    "SELECT e.seq, e.task_id, e.kind, e.data, e.at
                     FROM task_events AS e
                     JOIN tasks AS t ON t.id = e.task_id
                     WHERE e.task_id = $1 AND e.seq > $2
                       AND ($4::uuid IS NULL OR t.owner = $4)
                     ORDER BY e.seq
                     LIMIT $3",
                    &[&task, &after, &limit, &viewer.owner()],
                )
                .await?
        }
        None => {
            client
                .query(
                    "SELECT e.seq, e.task_id, e.kind, e.data, e.at
                     FROM task_events AS e
                     JOIN tasks AS t ON t.id = e.task_id
                     WHERE e.seq > $1 AND e.kind = 'status'
                       AND ($3::uuid IS NULL OR t.owner = $3)
                     ORDER BY e.seq
                     LIMIT $2",
                    &[&after, &limit, &viewer.owner()],
                )
                .await?
        }
    };
    rows.iter().map(EventRow::try_from).collect()
}

/// A page of a task's log lines numbered after `after`, oldest first.
pub async fn logs(
    client: &impl GenericClient,
    task: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<EventRow>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT seq, task_id, kind, data, at FROM task_events
             WHERE task_id = $1 AND kind = 'log' AND seq > $2
             ORDER BY seq
             LIMIT $3",
        )
        .await?;
    let rows = client.query(&statement, &[&task, &after, &limit]).await?;
    rows.iter().map(EventRow::try_from).collect()
}

/// How many log lines of a task were dropped over the cap; `None` if there
/// is no such task the viewer may see.
pub async fn log_dropped(
    client: &impl GenericClient,
    task: Uuid,
    viewer: Viewer,
) -> Result<Option<i32>, DbError> {
    let statement = client
        .prepare_cached(
            "SELECT log_dropped FROM tasks WHERE id = $1 AND ($2::uuid IS NULL OR owner = $2)",
        )
        .await?;
    Ok(client
        .query_opt(&statement, &[&task, &viewer.owner()])
        .await?
        .map(|row| row.get(0)))
}

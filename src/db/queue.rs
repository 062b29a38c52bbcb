//! The durable queue: Postgres behind the dispatcher's [`TaskStore`] port.
//!
//! Claims use one `FOR UPDATE SKIP LOCKED` statement, so any number of
//! processes can claim from one table without handing a task out twice.
//! Every write about a running task names its lease token: a worker whose
//! lease was lost (and whose task was rescued and re-run) changes nothing.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use mlq_actors::ports::{Rescued, StoreError, TaskStore};
use mlq_actors::progress::{Progress, Report};
use mlq_actors::task::{
    retry_delay, ClaimedTask, Finish, HeartbeatReport, Lease, ModelDraft, ModelRecord,
    StoredArtifact,
};
use mlq_actors::JobError;

use super::announcer::Announcer;
use super::tasks::json_column;
use super::DbError;

/// Three pools (see [`super::QueueConn`]): outcomes commit durably;
/// claims, heartbeats, progress and rescues commit without waiting for the
/// WAL flush. Losing one of those in a database crash is harmless: the task
/// is still queued or its lease simply expires, and fencing rejects
/// whatever an orphaned attempt writes. Only a recorded outcome must
/// survive, and it waits for the flush. Claims and outcomes are announced to
/// the live feed by the [`Announcer`] after they commit.
pub struct PgTaskStore {
    durable: Pool,
    claims: Pool,
    fast: Pool,
    announcer: Option<Announcer>,
    /// Most tasks one owner runs at once, across processes (0: no limit).
    running_per_owner: i64,
}

// Each ends an attempt, fenced by its lease ($1 task, $2 token), keeping
// the job's last progress report ($3) when one is given. No row: the lease
// was lost, or (see `outcome_recorded`) this very outcome was recorded by
// an earlier try whose answer was lost. The number returned is the status
// change's.
const SUCCEEDED: &str = include_str!("sql/finish_succeeded.sql");
const FAILED: &str = include_str!("sql/finish_failed.sql");
const RETRY: &str = include_str!("sql/finish_retry.sql");
const CANCELLED: &str = include_str!("sql/finish_cancelled.sql");
const PROGRESS: &str = include_str!("sql/progress.sql");
const LOGS: &str = include_str!("sql/append_logs.sql");

/// What appending log lines did.
struct Appended {
    /// The lease held.
    held: bool,
    /// The number of the first line, if any was stored.
    first: Option<i64>,
}

/// Appends a report's log lines.
async fn insert_logs(
    tx: &deadpool_postgres::Transaction<'_>,
    lease: &Lease,
    report: &Report,
) -> Result<Appended, StoreError> {
    if report.logs.is_empty() && report.dropped == 0 {
        return Ok(Appended {
            held: true,
            first: None,
        });
    }
    let lines: Vec<Value> = report
        .logs
        .iter()
        .map(|l| {
            let mut line = json!({"level": l.level, "message": l.message});
            if let Some(data) = &l.data {
                line["data"] = data.clone();
            }
            jsonb(&line)
        })
        .collect();
    let times: Vec<DateTime<Utc>> = report.logs.iter().map(|l| l.at).collect();
    let bytes = i32::try_from(report.log_bytes()).unwrap_or(i32::MAX);
    let dropped = i32::try_from(report.dropped).unwrap_or(i32::MAX);
    let statement = tx.prepare_cached(LOGS).await.map_err(query)?;
    let row = tx
        .query_one(
            &statement,
            &[
                &lease.task_id,
                &lease.token,
                &bytes,
                &dropped,
                &lines,
                &times,
            ],
        )
        .await
        .map_err(query)?;
    Ok(Appended {
        held: row.get::<_, i64>("held") == 1,
        first: row.get("first"),
    })
}

fn progress_json(progress: &Progress) -> Value {
    jsonb(&serde_json::to_value(progress).unwrap_or(Value::Null))
}

/// Inserts a successful attempt's artifacts and model, inside its
/// completion transaction.
async fn record_outputs(
    tx: &deadpool_postgres::Transaction<'_>,
    lease: &Lease,
    artifacts: &[StoredArtifact],
    model: Option<&ModelDraft>,
) -> Result<(), StoreError> {
    for a in artifacts {
        tx.execute(
            include_str!("sql/insert_artifact.sql"),
            &[
                &lease.task_id,
                &a.name,
                &a.size,
                &a.sha256,
                &a.content_type,
                &a.key,
            ],
        )
        .await
        .map_err(query)?;
    }
    if let Some(m) = model {
        let key_of = |name: &str| {
            artifacts
                .iter()
                .find(|a| a.name == name)
                .map(|a| a.key.clone())
                .ok_or_else(|| {
                    StoreError::Rejected(format!("model artifact {name} was not stored"))
                })
        };
        let size = artifacts
            .iter()
            .find(|a| a.name == m.weights_artifact)
            .map(|a| a.size);
        tx.execute(
            include_str!("sql/insert_model.sql"),
            &[
                &m.id,
                &lease.task_id,
                &m.kind,
                &m.target,
                &jsonb(&m.spec),
                &jsonb(&m.metrics),
                &key_of(&m.weights_artifact)?,
                &key_of(&m.spec_artifact)?,
                &m.name,
                &m.input,
                &m.format,
                &size,
                &"ready",
                &"trained",
            ],
        )
        .await
        .map_err(query)?;
    }
    Ok(())
}

impl PgTaskStore {
    /// A store on one pool, committing everything durably; its triggers
    /// announce every change as it commits.
    pub fn new(pool: Pool) -> Self {
        Self {
            durable: pool.clone(),
            claims: pool.clone(),
            fast: pool,
            announcer: None,
            running_per_owner: 0,
        }
    }

    /// Claims leave an owner's tasks queued while `n` of them run (0: no
    /// limit; `quota_running_tasks`).
    pub fn running_per_owner(mut self, n: u64) -> Self {
        self.running_per_owner = i64::try_from(n).unwrap_or(i64::MAX);
        self
    }

    /// The dispatcher's store: pools made by [`super::queue_pool`] for each
    /// [`super::QueueConn`], and the announcer of what they commit.
    pub fn with_pools(outcomes: Pool, claims: Pool, fast: Pool, announcer: Announcer) -> Self {
        Self {
            announcer: Some(announcer),
            durable: outcomes,
            claims,
            fast,
            running_per_owner: 0,
        }
    }

    fn announce(&self, task: Uuid, first: i64, last: i64) {
        if let Some(announcer) = &self.announcer {
            announcer.events(task, first, last);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.durable.get().await.map_err(|e| unavailable(e.into()))
    }

    async fn fast_client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.fast.get().await.map_err(|e| unavailable(e.into()))
    }

    /// One try at recording an outcome.
    async fn finish_once(
        &self,
        lease: &Lease,
        finish: &Finish,
        report: &Report,
    ) -> Result<(), StoreError> {
        let progress = report.progress.as_ref().map(progress_json);
        let mut client = self.client().await?;
        let (result, error, delay, cancelled);
        let (sql, extra): (&str, Vec<&(dyn ToSql + Sync)>) = match finish {
            Finish::Succeeded { result: r, .. } => {
                result = jsonb(r);
                (SUCCEEDED, vec![&result])
            }
            Finish::Failed(e) => {
                error = jsonb(&e.to_json());
                (FAILED, vec![&error])
            }
            Finish::Retry { error: e, delay: d } => {
                (error, delay, cancelled) = (jsonb(&e.to_json()), millis(*d), cancelled_error());
                (RETRY, vec![&error, &delay, &cancelled])
            }
            Finish::Cancelled => {
                error = cancelled_error();
                (CANCELLED, vec![&error])
            }
        };
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&lease.task_id, &lease.token, &progress];
        params.extend(extra);
        let fenced = |row: Option<tokio_postgres::Row>| match row {
            Some(row) => Ok(row.get::<_, i64>("seq")),
            None => Err(StoreError::LeaseLost(lease.task_id)),
        };
        let outputs = match finish {
            Finish::Succeeded {
                artifacts, model, ..
            } if !artifacts.is_empty() || model.is_some() => Some((artifacts, model)),
            _ => None,
        };
        let (since, seq) = if outputs.is_none() && report.logs.is_empty() && report.dropped == 0 {
            // The common case is one statement: no transaction round trips.
            let statement = client.prepare_cached(sql).await.map_err(query)?;
            let seq = fenced(client.query_opt(&statement, &params).await.map_err(query)?)?;
            (seq, seq)
        } else {
            // The outcome, its log lines, artifacts and model land together
            // or not at all. Log lines go first, so they are numbered before
            // the status change that ends the attempt.
            let tx = client.transaction().await.map_err(query)?;
            let appended = insert_logs(&tx, lease, report).await?;
            if !appended.held {
                return Err(StoreError::LeaseLost(lease.task_id));
            }
            let statement = tx.prepare_cached(sql).await.map_err(query)?;
            let seq = fenced(tx.query_opt(&statement, &params).await.map_err(query)?)?;
            if let Some((artifacts, model)) = outputs {
                record_outputs(&tx, lease, artifacts, model.as_deref()).await?;
            }
            tx.commit().await.map_err(query)?;
            (appended.first.unwrap_or(seq), seq)
        };
        self.announce(lease.task_id, since, seq);
        Ok(())
    }

    /// Whether this lease's outcome is already recorded.
    async fn outcome_recorded(&self, lease: &Lease) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                include_str!("sql/outcome_recorded.sql"),
                &[&lease.task_id, &lease.token],
            )
            .await
            .map_err(query)?;
        Ok(row.get(0))
    }
}

fn unavailable(e: DbError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Errors about the statement itself are rejections: retrying the same
/// write fails the same way. Anything else (a dropped connection, a
/// restarting or overloaded server) is worth another try.
fn query(e: tokio_postgres::Error) -> StoreError {
    let described = super::describe(&e);
    let server_going = e.code().is_some_and(|c| {
        let c = c.code();
        // Connection exceptions, a server shutting down or starting, a
        // standby that took over read-only, no connection slots: the
        // server is away for a while, not refusing this write.
        c.starts_with("08") || matches!(c, "57P01" | "57P02" | "57P03" | "25006" | "53300")
    });
    if super::is_statement_error(&e) {
        StoreError::Rejected(described)
    } else if server_going {
        StoreError::Unavailable(described)
    } else if e.code().is_some() {
        StoreError::Busy(described)
    } else {
        unavailable(DbError::Query(e))
    }
}

/// A copy of `value` that Postgres accepts as jsonb: it refuses the NUL
/// character, which job output can carry over from user data.
fn jsonb(value: &Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.iter().map(jsonb).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.replace('\0', "\u{fffd}"), jsonb(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The error every cancelled task ends with.
pub(crate) fn cancelled_error() -> Value {
    JobError::cancelled().to_json()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[async_trait]
impl TaskStore for PgTaskStore {
    async fn claim(
        &self,
        worker: &str,
        commands: &[&str],
        limit: usize,
        lease: Duration,
        suspects: bool,
    ) -> Result<Vec<ClaimedTask>, StoreError> {
        let client = self.claims.get().await.map_err(|e| unavailable(e.into()))?;
        let statement = client
            .prepare_cached(include_str!("sql/claim.sql"))
            .await
            .map_err(query)?;
        let rows = client
            .query(
                &statement,
                &[
                    &commands,
                    &(limit as i64),
                    &millis(lease),
                    &worker,
                    &suspects,
                    &self.running_per_owner,
                ],
            )
            .await
            .map_err(query)?;
        for row in &rows {
            let seq: i64 = row.try_get("seq").map_err(query)?;
            self.announce(row.try_get("id").map_err(query)?, seq, seq);
        }
        rows.into_iter()
            .map(|row| {
                Ok(ClaimedTask {
                    lease: Lease {
                        task_id: row.try_get("id").map_err(query)?,
                        token: row.try_get("lease_token").map_err(query)?,
                        attempt: row.try_get("attempts").map_err(query)?,
                    },
                    command: row.try_get("command").map_err(query)?,
                    params: row.try_get("params").map_err(query)?,
                    max_attempts: row.try_get("max_attempts").map_err(query)?,
                    log_bytes: i64::from(row.try_get::<_, i32>("log_bytes").map_err(query)?),
                    inputs: json_column(&row, "inputs").map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<HeartbeatReport, StoreError> {
        let ids: Vec<Uuid> = leases.iter().map(|l| l.task_id).collect();
        let tokens: Vec<Uuid> = leases.iter().map(|l| l.token).collect();
        let client = self.fast_client().await?;
        let rows = client
            .query(
                include_str!("sql/heartbeat.sql"),
                &[&ids, &tokens, &millis(lease)],
            )
            .await
            .map_err(query)?;
        let held: Vec<(Uuid, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        Ok(HeartbeatReport {
            lost: tokens
                .iter()
                .filter(|token| !held.iter().any(|(h, _)| h == *token))
                .copied()
                .collect(),
            cancel_requested: held.iter().filter(|(_, c)| *c).map(|(t, _)| *t).collect(),
        })
    }

    async fn save_report(&self, lease: &Lease, report: &Report) -> Result<bool, StoreError> {
        let mut client = self.fast_client().await?;
        if report.logs.is_empty() && report.dropped == 0 {
            let Some(progress) = &report.progress else {
                return Ok(true);
            };
            let statement = client.prepare_cached(PROGRESS).await.map_err(query)?;
            let n = client
                .execute(
                    &statement,
                    &[&lease.task_id, &lease.token, &progress_json(progress)],
                )
                .await
                .map_err(query)?;
            return Ok(n == 1);
        }
        let tx = client.transaction().await.map_err(query)?;
        if let Some(progress) = &report.progress {
            let statement = tx.prepare_cached(PROGRESS).await.map_err(query)?;
            tx.execute(
                &statement,
                &[&lease.task_id, &lease.token, &progress_json(progress)],
            )
            .await
            .map_err(query)?;
        }
        let appended = insert_logs(&tx, lease, report).await?;
        tx.commit().await.map_err(query)?;
        Ok(appended.held)
    }

    async fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        report: &Report,
    ) -> Result<(), StoreError> {
        match self.finish_once(lease, &finish, report).await {
            Err(StoreError::LeaseLost(id)) if self.outcome_recorded(lease).await? => {
                tracing::info!(task = %id, "an earlier try recorded this outcome; its answer was lost");
                Ok(())
            }
            result => result,
        }
    }

    async fn rescue_expired(
        &self,
        backoff_base: Duration,
        live: &[Uuid],
        commands: &[&str],
    ) -> Result<Rescued, StoreError> {
        let client = self.fast_client().await?;
        // The backoff after each attempt number, from the one formula.
        let delays: Vec<f64> = (1..=32)
            .map(|attempt| millis(retry_delay(backoff_base, attempt)))
            .collect();
        let rows = client
            .query(
                include_str!("sql/rescue.sql"),
                &[&delays, &live, &cancelled_error()],
            )
            .await
            .map_err(query)?;
        for row in &rows {
            let (id, status, verdict): (Uuid, String, String) =
                (row.get(0), row.get(1), row.get(2));
            tracing::warn!(task = %id, %status, %verdict, "lease expired");
        }
        let suspects_waiting = client
            .query_one(include_str!("sql/suspects_waiting.sql"), &[&commands])
            .await
            .map_err(query)?
            .get(0);
        Ok(Rescued {
            tasks: rows.len() as u64,
            suspects_waiting,
        })
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let client = self.fast_client().await?;
        client
            .execute(
                include_str!("sql/release.sql"),
                &[&lease.task_id, &lease.token],
            )
            .await
            .map_err(query)?;
        Ok(())
    }

    async fn model(&self, id: Uuid) -> Result<Option<ModelRecord>, StoreError> {
        let client = self.client().await?;
        let row = super::models::get(&client, id).await.map_err(unavailable)?;
        Ok(row.map(|m| ModelRecord {
            id: m.id,
            format: m.format,
            spec: m.spec,
            metrics: m.metrics,
            weights_key: m.weights_key,
        }))
    }
}

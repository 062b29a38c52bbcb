//! The orphan collector: deletes stored objects that no task references.
//!
//! Objects are written before the row that references them commits (an
//! upload streams to the store, then the task is inserted; an artifact is
//! stored, then the outcome is recorded). Objects younger than the grace
//! period are therefore never touched, and anything older that no row
//! names is garbage: an upload whose request died, a deleted task's file
//! whose delete failed, an attempt whose outcome was never recorded. Every
//! process runs one; running them concurrently is harmless.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::Pool;
use uuid::Uuid;

use mlq_actors::ports::{ObjectKey, ObjectStore};

/// Starts collecting every `every`, on the current arbiter.
pub fn spawn(db: Pool, objects: Arc<dyn ObjectStore>, every: Duration, grace: Duration) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match collect(&db, objects.as_ref(), grace).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("deleted {n} unreferenced object(s)"),
                Err(e) => tracing::warn!("orphan collection failed: {e}"),
            }
        }
    });
}

/// Keys checked against the database per statement.
const CHECK_BATCH: usize = 10_000;

/// One pass; returns how many objects (and unfinished writes) it deleted.
pub async fn collect(
    db: &Pool,
    objects: &dyn ObjectStore,
    grace: Duration,
) -> Result<usize, String> {
    let cutoff = SystemTime::now() - grace;
    // Writes begun before the grace period that never finished belong to a
    // process that died mid-upload: on S3 their parts are kept (and billed)
    // until aborted.
    let aborted = match objects.abort_stale_writes(cutoff).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("could not clean up unfinished uploads: {e}");
            0
        }
    };
    let mut candidates: Vec<(Uuid, String)> = Vec::new();
    for prefix in ObjectKey::PREFIXES {
        for object in objects.list(prefix).await.map_err(|e| e.to_string())? {
            // Keys not in mlq's layout are not ours to delete.
            let task = object.key.split('/').nth(1).and_then(|t| t.parse().ok());
            if let (Some(task), true) = (task, object.modified < cutoff) {
                candidates.push((task, object.key));
            }
        }
    }
    if candidates.is_empty() {
        return Ok(aborted);
    }
    // Checked in batches: one statement for a million keys would outlast
    // the statement timeout on every pass, and nothing would be collected.
    let client = db.get().await.map_err(|e| e.to_string())?;
    let mut orphans: Vec<String> = Vec::new();
    for batch in candidates.chunks(CHECK_BATCH) {
        let (tasks, keys): (Vec<Uuid>, Vec<String>) = batch.iter().cloned().unzip();
        let rows = client
            .query(
                "SELECT c.key
                 FROM unnest($1::uuid[], $2::text[]) AS c (task, key)
                 WHERE NOT EXISTS (SELECT 1 FROM task_inputs AS i
                                   WHERE i.task_id = c.task AND i.object_key = c.key)
                   AND NOT EXISTS (SELECT 1 FROM artifacts AS a
                                   WHERE a.task_id = c.task AND a.object_key = c.key)",
                &[&tasks, &keys],
            )
            .await
            .map_err(|e| e.to_string())?;
        orphans.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    drop(client);
    let mut deleted = aborted;
    for key in &orphans {
        match objects.delete(key).await {
            Ok(()) => deleted += 1,
            Err(e) => tracing::warn!(%key, "could not delete orphan: {e}"),
        }
    }
    Ok(deleted)
}

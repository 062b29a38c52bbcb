//! Announcing the dispatcher's own changes to the live feed, in batches.
//!
//! A NOTIFY holds a database-wide lock from just before its transaction
//! commits until the commit is flushed, so notifying transactions commit
//! one at a time. Submissions, claims and outcomes are the queue's hot
//! path: their connections set `mlq.announce_after_commit`, which makes
//! V4's triggers store their events (and V1's wake-up) without announcing
//! them. The store hands each
//! committed change's numbers to this announcer, which announces whatever
//! has gathered in one statement, from a connection that does not wait for
//! the WAL flush. Under load one NOTIFY transaction carries many changes;
//! when idle, an announcement follows its commit at once.

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use uuid::Uuid;

/// Most changes announced by one statement.
const BATCH: usize = 1000;

// Announces stored events by task and number range, oldest first.
const ANNOUNCE: &str = "
    SELECT announce(e.seq, e.task_id, e.kind, e.at, e.data)
    FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r (task, first, last)
    JOIN task_events AS e ON e.task_id = r.task AND e.seq BETWEEN r.first AND r.last
    ORDER BY e.seq";

/// Events of one task numbered `first..=last`, stored and committed.
struct Range {
    task: Uuid,
    first: i64,
    last: i64,
    /// The task was just queued: dispatchers everywhere should look.
    queued: bool,
}

#[derive(Clone)]
pub struct Announcer {
    ranges: mpsc::UnboundedSender<Range>,
}

impl Announcer {
    /// Starts announcing on an arbiter (thread) of its own, off the
    /// dispatcher's, through `pool`, whose connections must not set
    /// `mlq.announce_after_commit`.
    pub fn start(pool: Pool) -> Self {
        let (ranges, pending) = mpsc::unbounded_channel();
        actix::Arbiter::new().spawn(run(pool, pending));
        Self { ranges }
    }

    /// Announces a task's stored events numbered `first..=last`.
    pub fn events(&self, task: Uuid, first: i64, last: i64) {
        let _ = self.ranges.send(Range {
            task,
            first,
            last,
            queued: false,
        });
    }

    /// Announces a new task (its event numbered `seq`) and wakes the
    /// dispatchers of every process.
    pub fn queued(&self, task: Uuid, seq: i64) {
        let _ = self.ranges.send(Range {
            task,
            first: seq,
            last: seq,
            queued: true,
        });
    }
}

async fn run(pool: Pool, mut pending: mpsc::UnboundedReceiver<Range>) {
    let mut batch = Vec::with_capacity(BATCH);
    while pending.recv_many(&mut batch, BATCH).await > 0 {
        let tasks: Vec<Uuid> = batch.iter().map(|r| r.task).collect();
        let firsts: Vec<i64> = batch.iter().map(|r| r.first).collect();
        let lasts: Vec<i64> = batch.iter().map(|r| r.last).collect();
        let wake = batch.iter().any(|r| r.queued);
        batch.clear();
        // Should this fail, the events are stored all the same, and feed
        // clients catch up when they reconnect.
        let announced = async {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let statement = client
                .prepare_cached(ANNOUNCE)
                .await
                .map_err(|e| e.to_string())?;
            client
                .execute(&statement, &[&tasks, &firsts, &lasts])
                .await
                .map_err(|e| e.to_string())?;
            if wake {
                client
                    .execute("SELECT pg_notify('mlq_tasks', '')", &[])
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = announced.await {
            tracing::warn!(
                "could not announce {} change(s) to the live feed: {e}",
                tasks.len()
            );
        }
    }
}

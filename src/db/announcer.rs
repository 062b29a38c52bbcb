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

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::listener::{EVENTS_CHANNEL, GAP, TASKS_CHANNEL};
use crate::events::Hub;

/// Most changes announced by one statement.
const BATCH: usize = 1000;

// Announces stored events by task and number range, oldest first, each
// with its task's owner (looked up once a range here, rather than once an
// event inside `announce`).
const ANNOUNCE: &str = "
    SELECT announce_owned(e.seq, e.task_id, e.kind, e.at, e.data, t.owner)
    FROM unnest($1::uuid[], $2::bigint[], $3::bigint[]) AS r (task, first, last)
    LEFT JOIN tasks AS t ON t.id = r.task
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
    /// `mlq.announce_after_commit`. `hub` is this process's feed, closed
    /// when announcements are lost.
    pub fn start(pool: Pool, hub: Arc<Hub>) -> Self {
        let (ranges, pending) = mpsc::unbounded_channel();
        actix::Arbiter::new().spawn(run(pool, pending, hub));
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

/// Tries per batch before its events are given up on.
const TRIES: u32 = 3;

async fn run(pool: Pool, mut pending: mpsc::UnboundedReceiver<Range>, hub: Arc<Hub>) {
    let mut batch = Vec::with_capacity(BATCH);
    // Announcements were lost: the next batch that goes out first tells
    // every process's feed clients to resync.
    let mut gap = false;
    loop {
        let received = if gap {
            // Say it again until it is heard, even if nothing else happens.
            let wait = pending.recv_many(&mut batch, BATCH);
            match tokio::time::timeout(Duration::from_secs(1), wait).await {
                Ok(n) => n,
                Err(_) => {
                    gap = announce(&pool, &[], &[], &[], false, true).await.is_err();
                    continue;
                }
            }
        } else {
            pending.recv_many(&mut batch, BATCH).await
        };
        if received == 0 {
            return;
        }
        let tasks: Vec<Uuid> = batch.iter().map(|r| r.task).collect();
        let firsts: Vec<i64> = batch.iter().map(|r| r.first).collect();
        let lasts: Vec<i64> = batch.iter().map(|r| r.last).collect();
        let wake = batch.iter().any(|r| r.queued);
        batch.clear();
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            tries += 1;
            match announce(&pool, &tasks, &firsts, &lasts, wake, gap).await {
                Ok(()) => {
                    gap = false;
                    break;
                }
                Err(e) if tries < TRIES => {
                    tracing::warn!(
                        "could not announce {} change(s), retrying: {e}",
                        tasks.len()
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    // The events are stored all the same: clients that
                    // would have missed them resync from Postgres.
                    tracing::warn!(
                        "could not announce {} change(s) to the live feed: {e}",
                        tasks.len()
                    );
                    hub.interrupt(
                        "some events could not be announced; reconnect with ?after=<the last seq \
                         you saw>",
                    );
                    gap = true;
                    break;
                }
            }
        }
    }
}

/// Longest one announcement may take: a connection that stopped answering
/// must not hold every later announcement back.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

async fn announce(
    pool: &Pool,
    tasks: &[Uuid],
    firsts: &[i64],
    lasts: &[i64],
    wake: bool,
    gap: bool,
) -> Result<(), String> {
    tokio::time::timeout(ANNOUNCE_TIMEOUT, async {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        if gap {
            client
                .execute("SELECT pg_notify($1, $2)", &[&EVENTS_CHANNEL, &GAP])
                .await
                .map_err(|e| e.to_string())?;
        }
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
                .execute("SELECT pg_notify($1, '')", &[&TASKS_CHANNEL])
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
    .map_err(|_| format!("no answer within {ANNOUNCE_TIMEOUT:?}"))?
}

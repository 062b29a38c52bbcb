//! Deleting objects that a dropped request left behind.
//!
//! A request future can be dropped at any await: its client went away, or
//! shutdown stopped waiting for it. Its stored uploads must not wait for the
//! orphan collector's grace period, but a destructor cannot await a delete.
//! It hands the keys to the janitor, which runs on the main arbiter and so
//! outlives the HTTP workers; shutdown waits for it to settle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use mlq_actors::ports::ObjectStore;

#[derive(Clone)]
pub struct Janitor {
    keys: mpsc::UnboundedSender<String>,
    pending: Arc<AtomicUsize>,
}

impl Janitor {
    /// Starts deleting on the current arbiter.
    pub fn start(objects: Arc<dyn ObjectStore>) -> Self {
        let (keys, mut queued) = mpsc::unbounded_channel::<String>();
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        actix::spawn(async move {
            while let Some(key) = queued.recv().await {
                if let Err(e) = objects.delete(&key).await {
                    tracing::warn!(%key, "could not delete an abandoned upload: {e}");
                }
                left.fetch_sub(1, Ordering::AcqRel);
            }
        });
        Self { keys, pending }
    }

    pub fn delete(&self, key: String) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        if self.keys.send(key).is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits until every handed-over key is deleted, and none has come for
    /// a moment, or `within` passes. The moment matters at shutdown: an
    /// upload stopped by the drain drops its request (and hands over its
    /// stored files) on an HTTP worker thread that may still be winding
    /// down after the server has returned, so an empty queue seen once is
    /// not yet the end.
    pub async fn settle(&self, within: Duration) {
        const QUIET: Duration = Duration::from_millis(300);
        let deadline = tokio::time::Instant::now() + within;
        let mut quiet_since = tokio::time::Instant::now();
        while tokio::time::Instant::now() < deadline {
            if self.pending.load(Ordering::Acquire) > 0 {
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= QUIET {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

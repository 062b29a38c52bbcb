//! The two ports the actor system is plugged into: where task state lives
//! ([`TaskStore`], Postgres in production) and where bytes live
//! ([`ObjectStore`], a filesystem or S3).
//!
//! Keeping them as traits keeps this crate free of database and HTTP code and
//! lets the dependency arrows point one way: the service crate depends on
//! this one, never the reverse.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::stream::BoxStream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::progress::Report;
use crate::task::{ClaimedTask, Finish, HeartbeatReport, Lease, ModelRecord};

/// Errors the task store reports to the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The lease no longer holds: the task was rescued and handed to another
    /// attempt, or cancelled. The write was not made.
    #[error("lease lost for task {0}")]
    LeaseLost(Uuid),
    /// The store could not be reached (no connection, or it dropped).
    #[error("task store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error that may pass: a statement timeout,
    /// a deadlock, a lack of resources. The write itself may be the cause
    /// (an outcome too big to store in time), so retries are few.
    #[error("task store busy: {0}")]
    Busy(String),
    /// The store refused the write itself (bad data, a broken constraint):
    /// retrying the same write cannot help.
    #[error("task store rejected the write: {0}")]
    Rejected(String),
}

/// What a rescue pass did and found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rescued {
    /// Tasks whose expired lease was settled.
    pub tasks: u64,
    /// A suspect (a task a process died running) is due.
    pub suspects_waiting: bool,
}

/// Durable task state: the queue the dispatcher claims from.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Claims up to `limit` due tasks for `worker`, each with a fresh lease.
    /// Only tasks whose command is in `commands` are claimed, so processes
    /// with different command sets can share a queue. `suspects` claims
    /// only tasks a process died running (to run alone), else only others.
    async fn claim(
        &self,
        worker: &str,
        commands: &[&str],
        limit: usize,
        lease: Duration,
        suspects: bool,
    ) -> Result<Vec<ClaimedTask>, StoreError>;

    /// Extends the given leases and reports which are lost or cancelled.
    async fn heartbeat(
        &self,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<HeartbeatReport, StoreError>;

    /// Records progress and log lines, fenced by the lease. Returns whether
    /// it held.
    async fn save_report(&self, lease: &Lease, report: &Report) -> Result<bool, StoreError>;

    /// Ends an attempt, fenced by the lease, recording with it whatever the
    /// job (and the dispatcher) reported that is not yet written.
    async fn finish(
        &self,
        lease: &Lease,
        finish: Finish,
        report: &Report,
    ) -> Result<(), StoreError>;

    /// Re-queues (with backoff) or fails tasks whose lease expired because
    /// the process running them died; a task on which a second process
    /// died fails with `worker_crashed`. Leases in `live` (the caller's own
    /// running attempts) are never taken. Returns how many were rescued.
    async fn rescue_expired(
        &self,
        backoff_base: Duration,
        live: &[Uuid],
        commands: &[&str],
    ) -> Result<Rescued, StoreError>;

    /// Hands a running task back to the queue at once, without using up an
    /// attempt (graceful shutdown).
    async fn release(&self, lease: &Lease) -> Result<(), StoreError>;

    async fn model(&self, id: Uuid) -> Result<Option<ModelRecord>, StoreError>;
}

/// Where a stored object lives. The server generates every key; a client's
/// file name is only ever metadata, so no request can steer a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectKey {
    /// The `position`-th input file of a task.
    Input { task: Uuid, position: i32 },
    /// An artifact of one attempt of a task. Keyed by the attempt's lease
    /// token, which no other attempt ever holds, so a worker whose lease was
    /// lost can never overwrite a newer attempt's file.
    Artifact {
        task: Uuid,
        lease: Uuid,
        name: String,
    },
}

impl ObjectKey {
    /// The prefixes of every key mlq writes: whatever else shares the
    /// bucket is never touched by its clean-ups.
    pub const PREFIXES: [&'static str; 2] = ["inputs/", "artifacts/"];

    pub fn as_string(&self) -> String {
        match self {
            Self::Input { task, position } => format!("inputs/{task}/{position}"),
            Self::Artifact { task, lease, name } => format!("artifacts/{task}/{lease}/{name}"),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

/// Errors the object store reports.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("object store: {0}")]
    Backend(String),
}

/// A streamed object body with its length.
pub struct ObjectBody {
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes, ObjectError>>,
}

/// One object being written. Nothing is visible under the key until
/// [`ObjectWriter::finish`] succeeds; [`ObjectWriter::abort`] leaves no trace.
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectError>;
    async fn finish(self: Box<Self>) -> Result<(), ObjectError>;
    async fn abort(self: Box<Self>);
}

/// A stored object, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

/// Byte storage for inputs and artifacts.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    async fn writer(
        &self,
        key: &str,
        content_type: &str,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError>;
    async fn open(&self, key: &str) -> Result<ObjectBody, ObjectError>;
    /// Bytes `start..=end` of an object; `end` must be below its size.
    async fn open_range(&self, key: &str, start: u64, end: u64) -> Result<ObjectBody, ObjectError>;
    /// Deleting an object that does not exist succeeds.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError>;

    /// Removes the remains of writes begun before `before` and never
    /// finished (a process died mid-upload): S3 multipart uploads, or
    /// temporary files. Returns how many it removed.
    async fn abort_stale_writes(&self, before: std::time::SystemTime)
        -> Result<usize, ObjectError>;

    /// Copies an object to a local file, for jobs that need random access.
    async fn fetch_to(&self, key: &str, path: &Path) -> Result<(), ObjectError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let mut body = self.open(key).await?;
        let mut file = tokio::fs::File::create(path).await?;
        while let Some(chunk) = body.stream.next().await {
            file.write_all(&chunk?).await?;
        }
        file.flush().await?;
        Ok(())
    }
}

/// The size and sha256 of an object, computed while it streams through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

/// Streams bytes into an object while counting and hashing them.
pub struct Upload {
    writer: Box<dyn ObjectWriter>,
    hasher: Sha256,
    size: u64,
}

impl Upload {
    pub async fn start(
        store: &dyn ObjectStore,
        key: &str,
        content_type: &str,
    ) -> Result<Self, ObjectError> {
        Ok(Self {
            writer: store.writer(key, content_type).await?,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The sha256 of what was written so far, in hex.
    pub fn sha256(&self) -> String {
        hex_digest(self.hasher.clone())
    }

    pub async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectError> {
        self.hasher.update(&chunk);
        self.size += chunk.len() as u64;
        self.writer.write(chunk).await
    }

    pub async fn finish(self) -> Result<Stored, ObjectError> {
        self.writer.finish().await?;
        Ok(Stored {
            size: self.size,
            sha256: hex_digest(self.hasher),
        })
    }

    pub async fn abort(self) {
        self.writer.abort().await
    }
}

/// Stores a local file as an artifact object.
pub async fn put_file(
    store: &dyn ObjectStore,
    key: &str,
    path: &Path,
    content_type: &str,
) -> Result<Stored, ObjectError> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut upload = Upload::start(store, key, content_type).await?;
    loop {
        let mut buf = vec![0u8; 256 * 1024];
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                upload.abort().await;
                return Err(e.into());
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        if let Err(e) = upload.write(Bytes::from(buf)).await {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.finish().await
}

fn hex_digest(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

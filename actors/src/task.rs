//! The vocabulary of a task's life: what a claim hands out, what a job sees,
//! and what it hands back.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::JobError;
use crate::ml::loaded::ModelCache;
use crate::ml::registry::ModelRef;
use crate::progress::Reporter;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// As stored in the `status` column and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// A finished task changes no more (unless a user retries it).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a task waits before attempt `attempt + 1` after attempt
/// `attempt` failed transiently or its process died: `base`, doubled for
/// each attempt so far (at most 2¹⁶ times).
pub fn retry_delay(base: std::time::Duration, attempt: i32) -> std::time::Duration {
    base.saturating_mul(2u32.saturating_pow((attempt - 1).clamp(0, 16) as u32))
}

/// The right to run one attempt of a task. Every write a worker makes about
/// its task names the lease, so a worker whose lease was lost (and whose task
/// was handed to someone else) writes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub task_id: Uuid,
    pub token: Uuid,
    pub attempt: i32,
}

/// A stored input file, as recorded when it was uploaded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputFile {
    pub position: i32,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub key: String,
}

/// A task as handed out by a claim.
#[derive(Debug, Clone)]
pub struct ClaimedTask {
    pub lease: Lease,
    pub command: String,
    pub params: Value,
    pub inputs: Vec<InputFile>,
    pub max_attempts: i32,
    /// Bytes of log text the task already stored (earlier attempts).
    pub log_bytes: i64,
}

/// A registered model, as a job that uses it needs to see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: Uuid,
    /// How its weights file is read: `mlq.mlp.v1`, `torchscript`, …
    pub format: String,
    pub spec: Value,
    /// What training or validation found (`outputs`, `kind`, …).
    pub metrics: Value,
    pub weights_key: String,
}

/// An input staged on local disk for a job.
#[derive(Debug, Clone)]
pub struct LocalInput {
    pub name: String,
    pub content_type: String,
    pub path: PathBuf,
}

/// A model staged on local disk for a job.
#[derive(Debug, Clone)]
pub struct LocalModel {
    pub record: ModelRecord,
    pub weights: PathBuf,
}

/// Set when a task must stop: the user cancelled it, its lease was lost,
/// or it ran past its time limit. Jobs check it between batches.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicU8>);

const RUNNING: u8 = 0;
const CANCELLED: u8 = 1;
const TIMED_OUT: u8 = 2;

impl CancelToken {
    pub fn cancel(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, CANCELLED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Stops the job because it ran past its time limit.
    pub fn time_out(&self) {
        let _ = self
            .0
            .compare_exchange(RUNNING, TIMED_OUT, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed) != RUNNING
    }

    /// Stopped by its time limit rather than by a user or a lost lease.
    pub fn timed_out(&self) -> bool {
        self.0.load(Ordering::Relaxed) == TIMED_OUT
    }

    /// Resolves once the token is cancelled (or timed out), for async code
    /// that waits on something else meanwhile.
    pub async fn stopped(&self) {
        while !self.is_cancelled() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `Err(cancelled)` once cancelled, for `?` between batches.
    pub fn check(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::cancelled())
        } else {
            Ok(())
        }
    }
}

/// Everything a job may touch: its inputs and models on local disk, a
/// scratch folder for artifacts, progress reporting and cancellation; and,
/// once a worker takes it, that worker's device and model cache.
pub struct JobContext {
    pub task_id: Uuid,
    pub inputs: Vec<LocalInput>,
    pub models: Vec<LocalModel>,
    pub workdir: PathBuf,
    pub cancel: CancelToken,
    /// Progress and log lines for the task's watchers.
    pub report: Reporter,
    /// Where the worker runs libtorch.
    pub device: tch::Device,
    /// The worker's loaded models, lent for the job.
    pub cache: std::cell::RefCell<ModelCache>,
}

impl JobContext {
    /// A model the task was submitted with (its params name it by id once
    /// submitted).
    pub fn model(&self, model: &ModelRef) -> Result<&LocalModel, JobError> {
        self.models
            .iter()
            .find(|m| matches!(model, ModelRef::Id(id) if *id == m.record.id))
            .ok_or_else(|| {
                JobError::new(
                    crate::ErrorCode::ModelNotFound,
                    format!("model {model} does not exist"),
                )
            })
    }

    /// A path in the scratch folder for an artifact named `name`. The
    /// folder is made on first use: most jobs of small commands have none.
    pub fn artifact_path(&self, name: &str) -> PathBuf {
        let dir = self.workdir.join("artifacts");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            // Writing the artifact will fail and report it.
            tracing::warn!("creating {}: {e}", dir.display());
        }
        dir.join(name)
    }
}

/// A file a job produced, to be stored as an artifact of its task.
#[derive(Debug, Clone)]
pub struct ArtifactFile {
    pub name: String,
    pub content_type: String,
    pub path: PathBuf,
}

/// A model a `train` job produced, registered when the task completes.
#[derive(Debug, Clone)]
pub struct ModelDraft {
    pub id: Uuid,
    /// Registered as the next version of this name.
    pub name: String,
    /// `tabular` or `image`.
    pub input: String,
    pub format: String,
    pub kind: String,
    pub target: Option<String>,
    pub spec: Value,
    pub metrics: Value,
    /// Names of the artifacts holding the weights and the spec.
    pub weights_artifact: String,
    pub spec_artifact: String,
}

/// What a successful job hands back.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub result: Value,
    pub artifacts: Vec<ArtifactFile>,
    pub model: Option<ModelDraft>,
}

/// An artifact after it was stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredArtifact {
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub key: String,
}

/// How an attempt ends, as recorded in the store.
#[derive(Debug, Clone)]
pub enum Finish {
    Succeeded {
        result: Value,
        artifacts: Vec<StoredArtifact>,
        model: Option<Box<ModelDraft>>,
    },
    /// Failed for good.
    Failed(JobError),
    /// Failed, but worth another attempt after `delay`.
    Retry {
        error: JobError,
        delay: std::time::Duration,
    },
    Cancelled,
}

/// What a heartbeat learns about the leases it extended, by lease token.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReport {
    /// Leases that no longer hold: the task was rescued or finished elsewhere.
    pub lost: Vec<Uuid>,
    /// Leases whose task a user asked to cancel.
    pub cancel_requested: Vec<Uuid>,
}

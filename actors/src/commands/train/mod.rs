//! `train`: fits a network to one file and registers it as a model. A CSV
//! file trains an MLP on its columns (`table`); a zip of images, one
//! folder per class, trains a small CNN (`images`).

mod images;
mod table;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn;
use uuid::Uuid;

use super::{Command, Params, SubmitError};
use crate::error::{ErrorCode, JobError};
use crate::ml::archive;
use crate::ml::image::Resize;
use crate::ml::spec::ProblemKind;
use crate::progress::{Level, Progress};
use crate::task::{ArtifactFile, JobContext, ModelDraft, Outcome};

pub const MAX_EPOCHS: u32 = 1000;
pub const MAX_LAYERS: usize = 8;
pub const MAX_WIDTH: u32 = 1024;
pub const MAX_BATCH: u32 = 65_536;
/// Keeps one task from eating a worker's memory: about 200 MB of f32 weights
/// plus Adam's two moments.
pub const MAX_PARAMETERS: i64 = 16_000_000;
/// Most memory one training batch may take: its copy of the inputs, and
/// each layer's activations, kept for the backward pass with their
/// gradients.
pub const MAX_BATCH_BYTES: u64 = 2 << 30;
/// Largest side an image is brought to for training.
pub const MAX_IMAGE_SIDE: u32 = 512;

/// Params that apply to one kind of input say so with `x-mlq-input`
/// (`csv` or `zip`) in their schema: the dashboard shows each only for its
/// kind of file.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// CSV files: the column to predict (required). An image zip's classes
    /// are its folders.
    #[serde(default)]
    #[schemars(length(min = 1))]
    #[schemars(extend("x-mlq-input" = "csv"))]
    pub target: Option<String>,
    /// The registered model's name; versions count up per name. The input
    /// file's name (without extension) when absent.
    #[serde(default)]
    #[schemars(length(min = 1, max = crate::ml::registry::MAX_NAME_CHARS))]
    pub name: Option<String>,
    /// CSV files: inferred from the target column when absent. Image zips
    /// are classification.
    #[serde(default)]
    #[schemars(extend("x-mlq-input" = "csv"))]
    pub kind: Option<ProblemKind>,
    #[serde(default = "defaults::epochs")]
    #[schemars(range(min = 1, max = MAX_EPOCHS))]
    pub epochs: u32,
    #[serde(default = "defaults::batch_size")]
    #[schemars(range(min = 1, max = MAX_BATCH))]
    pub batch_size: u32,
    #[serde(default = "defaults::learning_rate")]
    #[schemars(extend("exclusiveMinimum" = 0), range(max = 1))]
    pub learning_rate: f64,
    /// CSV files: hidden layer sizes, input side first.
    #[serde(default = "defaults::hidden")]
    #[schemars(length(max = MAX_LAYERS), inner(range(min = 1, max = MAX_WIDTH)))]
    #[schemars(extend("x-mlq-input" = "csv"))]
    pub hidden: Vec<u32>,
    /// The share of rows (or images) held out to measure the model.
    #[serde(default = "defaults::validation_split")]
    #[schemars(range(min = 0, max = 0.5))]
    pub validation_split: f64,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// CSV files: feature columns; all columns but the target when absent.
    #[serde(default)]
    #[schemars(length(min = 1))]
    #[schemars(extend("x-mlq-input" = "csv"))]
    pub features: Option<Vec<String>>,
    /// Image zips: the width images are brought to (32 when absent).
    #[serde(default)]
    #[schemars(range(min = 8, max = MAX_IMAGE_SIDE))]
    #[schemars(extend("x-mlq-input" = "zip"))]
    pub width: Option<u32>,
    /// Image zips: the height images are brought to (32 when absent).
    #[serde(default)]
    #[schemars(range(min = 8, max = MAX_IMAGE_SIDE))]
    #[schemars(extend("x-mlq-input" = "zip"))]
    pub height: Option<u32>,
    /// Image zips: 3 for RGB (when absent), 1 for grayscale.
    #[serde(default)]
    #[schemars(range(min = 1, max = 3))]
    #[schemars(extend("x-mlq-input" = "zip"))]
    pub channels: Option<u8>,
    /// Image zips: how an image is brought to width × height (stretch when
    /// absent).
    #[serde(default)]
    #[schemars(extend("x-mlq-input" = "zip"))]
    pub resize: Option<Resize>,
}

impl TrainParams {
    /// The first image-only param given, if any.
    fn image_param(&self) -> Option<&'static str> {
        [
            ("width", self.width.is_some()),
            ("height", self.height.is_some()),
            ("channels", self.channels.is_some()),
            ("resize", self.resize.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }
}

mod defaults {
    pub fn epochs() -> u32 {
        20
    }
    pub fn batch_size() -> u32 {
        32
    }
    pub fn learning_rate() -> f64 {
        0.01
    }
    pub fn hidden() -> Vec<u32> {
        vec![64, 64]
    }
    pub fn validation_split() -> f64 {
        0.2
    }
    pub fn seed() -> u64 {
        42
    }
}

impl Params for TrainParams {
    fn validate(&self) -> Result<(), SubmitError> {
        if let Some(target) = &self.target {
            if target.trim().is_empty() {
                return Err(SubmitError::param("target", "must name a column"));
            }
        }
        if let Some(name) = &self.name {
            crate::ml::registry::check_name(name).map_err(|m| SubmitError::param("name", m))?;
        }
        if let (Some(features), Some(target)) = (&self.features, &self.target) {
            if features.contains(target) {
                return Err(SubmitError::param(
                    "features",
                    "must not include the target column",
                ));
            }
        }
        if self.channels == Some(2) {
            return Err(SubmitError::param("channels", "must be 1 or 3, got 2"));
        }
        let csv = self.target.is_some() || self.features.is_some();
        if csv && self.image_param().is_some() {
            return Err(SubmitError::param(
                if self.target.is_some() {
                    "target"
                } else {
                    "features"
                },
                "is for CSV files, and width, height, channels and resize are for image zips; \
                 give one kind",
            ));
        }
        Ok(())
    }

    /// A file named as a CSV needs a target. Which kind a file is is
    /// decided by its bytes when it runs; here a `.csv` name (not the
    /// declared type, which clients get wrong both ways) is held to it, so
    /// the common mistake is a 422 rather than a failed task.
    fn validate_inputs(&self, inputs: &[crate::task::InputFile]) -> Result<(), SubmitError> {
        let named_csv = |f: &crate::task::InputFile| f.name.to_ascii_lowercase().ends_with(".csv");
        if !inputs.iter().any(named_csv) {
            return Ok(());
        }
        if let Some(name) = self.image_param() {
            return Err(SubmitError::param(
                name,
                "is for zips of images, and the file is a CSV",
            ));
        }
        if self.target.is_none() {
            return Err(SubmitError::param(
                "target",
                "is required for a CSV file: name the column to predict",
            ));
        }
        Ok(())
    }
}

/// A CSV file, or a zip of images in class folders.
const TYPES: &[&str] = &[
    "text/csv",
    "application/csv",
    "text/plain",
    "application/vnd.ms-excel",
    "application/octet-stream",
    "application/zip",
    "application/x-zip-compressed",
];

pub struct Train;

impl Command for Train {
    const NAME: &'static str = "train";
    const SUMMARY: &'static str = "Fits a neural network to a CSV file's columns, or to a zip of \
         images with one folder per class, and registers it as a model.";
    const CONTENT_TYPES: &'static [&'static str] = TYPES;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
    const FILES: std::ops::RangeInclusive<usize> = 1..=1;
    type Params = TrainParams;

    fn run(&self, p: TrainParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        // By the bytes, not the declared type: browsers label zips and
        // CSVs alike as application/octet-stream.
        if archive::is_zip(&ctx.inputs[0].path) {
            images::train(&p, ctx)
        } else {
            table::train(&p, ctx)
        }
    }
}

/// Refuses a loss that is no longer a number.
fn check_loss(p: &TrainParams, epoch: u32, train_loss: f64) -> Result<(), JobError> {
    if train_loss.is_finite() {
        return Ok(());
    }
    Err(JobError::new(
        ErrorCode::Diverged,
        format!(
            "training diverged in epoch {epoch} (the loss is not a finite number); try a lower \
             learning_rate than {}",
            p.learning_rate
        ),
    ))
}

/// Refuses non-finite epoch metrics, then reports them: as progress with
/// metrics (the dashboard's charts) and as a log line.
fn epoch_done(
    p: &TrainParams,
    ctx: &JobContext,
    epoch: u32,
    metrics: &BTreeMap<String, f64>,
) -> Result<(), JobError> {
    if let Some((name, value)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(JobError::new(
            ErrorCode::NonFiniteResult,
            format!(
                "epoch {epoch}: the validation metric {name} is {value}, not a finite number; \
                 the validation data holds values the model cannot score (try a lower \
                 learning_rate than {}, or scale the data)",
                p.learning_rate
            ),
        ));
    }
    let mut progress = Progress::new(
        f64::from(epoch) / f64::from(p.epochs),
        format!("epoch {epoch}/{}", p.epochs),
    );
    for (name, value) in metrics {
        progress = progress.with_metric(name, *value);
    }
    ctx.report.progress(progress);
    let summary: Vec<String> = metrics.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
    let mut data = json!(metrics);
    data["epoch"] = json!(epoch);
    ctx.report.log(
        Level::Info,
        format!("epoch {epoch}/{}: {}", p.epochs, summary.join(", ")),
        Some(data),
    );
    Ok(())
}

/// What a finished training run registers.
struct Trained {
    /// `tabular` or `image`.
    input: &'static str,
    format: &'static str,
    kind: ProblemKind,
    target: Option<String>,
    spec: Value,
    metrics: BTreeMap<String, f64>,
}

/// Writes the weights (safetensors) and the spec (`model.json`) as
/// artifacts, and describes the model to register. `result` gains the
/// model's id, name and metrics.
fn save(
    p: &TrainParams,
    ctx: &JobContext,
    vs: &nn::VarStore,
    trained: Trained,
    mut result: Value,
) -> Result<Outcome, JobError> {
    let mut saving = Progress::new(1.0, "saving model");
    saving.metrics = trained.metrics.clone();
    ctx.report.progress(saving);
    let model_id = Uuid::new_v4();
    let weights = ctx.artifact_path("model.safetensors");
    let spec_path = ctx.artifact_path("model.json");
    vs.save(&weights)?;
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&trained.spec).unwrap_or_default(),
    )
    .map_err(|e| JobError::storage(format!("writing model.json: {e}")))?;

    let model_name = p
        .name
        .clone()
        .unwrap_or_else(|| crate::ml::registry::name_from_file(&ctx.inputs[0].name));
    let metrics = json!(trained.metrics);
    result["model_id"] = json!(model_id);
    result["model_name"] = json!(model_name);
    result["kind"] = json!(trained.kind);
    result["metrics"] = metrics.clone();
    result["epochs"] = json!(p.epochs);
    Ok(Outcome {
        result,
        artifacts: vec![
            ArtifactFile {
                name: "model.safetensors".into(),
                content_type: "application/octet-stream".into(),
                path: weights,
            },
            ArtifactFile {
                name: "model.json".into(),
                content_type: "application/json".into(),
                path: spec_path,
            },
        ],
        model: Some(ModelDraft {
            id: model_id,
            name: model_name,
            input: trained.input.into(),
            format: trained.format.into(),
            kind: trained.kind.as_str().into(),
            target: trained.target,
            spec: trained.spec,
            metrics,
            weights_artifact: "model.safetensors".into(),
            spec_artifact: "model.json".into(),
        }),
    })
}

/// An empty vector with room for `n` items, or `data_too_large` when the
/// allocator cannot give it: never an abort.
fn fallible_vec<T>(n: usize, what: &str) -> Result<Vec<T>, JobError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        JobError::new(
            ErrorCode::DataTooLarge,
            format!("not enough memory for the {what} of {n} rows"),
        )
    })?;
    Ok(v)
}

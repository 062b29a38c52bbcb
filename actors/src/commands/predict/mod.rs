//! `predict`: runs a registered model over the task's files. What the
//! files must be follows from the model: a CSV for a tabular model (mlq's
//! own MLP, or a user's TorchScript one), images or zips of images for an
//! image model, each optionally cropped to a region first.

mod images;
mod table;

use serde::{Deserialize, Serialize};

use super::{Command, Params, SubmitError};
use crate::error::{ErrorCode, JobError};
use crate::ml::cnn::{self, CnnSpec};
use crate::ml::image::Region;
use crate::ml::loaded::{file_size, Loaded};
use crate::ml::registry::ModelRef;
use crate::ml::spec::{self, Feature, ModelSpec, ProblemKind, Scale};
use crate::ml::upload::{InputKind, Output, UploadSpec};
use crate::task::{JobContext, LocalModel, Outcome};

/// Predictions returned inline in the task result; all of them go to the
/// artifacts.
pub const INLINE_PREDICTIONS: usize = 100;
/// Classes shown per inline prediction (the likeliest), so a model with a
/// thousand classes does not put a thousand numbers in each.
pub const INLINE_CLASSES: usize = 5;
pub const MAX_BATCH: u32 = 1024;
pub const MAX_TOP_K: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictParams {
    /// The model: its id, its name (the latest ready version), or
    /// name@version.
    pub model: ModelRef,
    /// Image models: the part of each image to classify, in the original
    /// image's pixels. Corners may come in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
    /// Image models: images per forward pass.
    #[serde(default = "defaults::batch_size")]
    #[schemars(range(min = 1, max = MAX_BATCH))]
    pub batch_size: u32,
    /// Image models: classes reported per image, likeliest first.
    #[serde(default = "defaults::top_k")]
    #[schemars(range(min = 1, max = MAX_TOP_K))]
    pub top_k: u32,
}

mod defaults {
    pub fn batch_size() -> u32 {
        32
    }
    pub fn top_k() -> u32 {
        5
    }
}

impl Params for PredictParams {
    fn validate(&self) -> Result<(), SubmitError> {
        Ok(())
    }

    fn models(&self) -> Vec<(&'static str, ModelRef)> {
        vec![("model", self.model.clone())]
    }

    fn model_input(&self) -> Option<(&'static str, &'static str)> {
        self.region.as_ref().map(|_| ("region", "image"))
    }
}

/// Images and archives, as browsers and curl label them.
const TYPES: &[&str] = &[
    "text/csv",
    "application/csv",
    "text/plain",
    "application/vnd.ms-excel",
    "application/octet-stream",
    "image/png",
    "image/jpeg",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "image/webp",
    "application/zip",
    "application/x-zip-compressed",
];

pub struct Predict;

impl Command for Predict {
    const NAME: &'static str = "predict";
    const SUMMARY: &'static str = "Runs a registered model over a CSV file, or over images \
         (optionally a region of each), and writes its predictions.";
    const CONTENT_TYPES: &'static [&'static str] = TYPES;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1800);
    /// One CSV, or up to a form's worth of images and zips.
    const FILES: std::ops::RangeInclusive<usize> = 1..=1000;
    type Params = PredictParams;

    fn run(&self, p: PredictParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        let model = ctx.model(&p.model)?;
        let id = model.record.id;
        let size = file_size(&model.weights);
        match model.record.format.as_str() {
            spec::FORMAT => {
                let spec = ModelSpec::from_json(&model.record.spec)?;
                tabular_only(&p, ctx)?;
                let mut cache = ctx.cache.borrow_mut();
                let net = cache
                    .get_or_load(id, size, || Loaded::mlp(&spec, &model.weights, ctx.device))?;
                table::predict(ctx, id, &spec, net, true)
            }
            cnn::FORMAT => {
                let spec = CnnSpec::from_json(&model.record.spec)?;
                // A batch's activations, not only its inputs, bound how many
                // images go through at once.
                let per_image = cnn::batch_memory(1, &spec.input, &spec.filters).max(1);
                let cap = (super::train::MAX_BATCH_BYTES / per_image).clamp(1, MAX_BATCH as u64);
                let p = PredictParams {
                    batch_size: p.batch_size.min(cap as u32),
                    ..p.clone()
                };
                let mut cache = ctx.cache.borrow_mut();
                let net = cache
                    .get_or_load(id, size, || Loaded::cnn(&spec, &model.weights, ctx.device))?;
                let spec = spec.as_image_model();
                images::predict(&p, ctx, id, &spec, net)
            }
            "torchscript" => {
                let spec: UploadSpec = serde_json::from_value(model.record.spec.clone())
                    .map_err(|e| incompatible(format!("its spec is unreadable: {e}")))?;
                let mut cache = ctx.cache.borrow_mut();
                let net =
                    cache.get_or_load(id, size, || Loaded::script(&model.weights, ctx.device))?;
                match spec.input {
                    InputKind::Image => images::predict(&p, ctx, id, &spec, net),
                    InputKind::Tabular => {
                        tabular_only(&p, ctx)?;
                        let table_spec = script_table_spec(model, &spec)?;
                        let softmax = spec.output == Output::Logits;
                        table::predict(ctx, id, &table_spec, net, softmax)
                    }
                }
            }
            other => Err(incompatible(format!(
                "its format {other} is not one this version of mlq runs"
            ))),
        }
    }
}

fn incompatible(message: String) -> JobError {
    JobError::new(ErrorCode::ModelIncompatible, message)
}

/// A tabular model reads one CSV file, and has no use for a region.
fn tabular_only(p: &PredictParams, ctx: &JobContext) -> Result<(), JobError> {
    if p.region.is_some() {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            "region is for image models; this model reads a CSV file",
        ));
    }
    if ctx.inputs.len() != 1 {
        return Err(JobError::new(
            ErrorCode::WrongInput,
            format!(
                "this model reads one CSV file; the task has {} files",
                ctx.inputs.len()
            ),
        ));
    }
    Ok(())
}

/// A user's tabular TorchScript model, described as the table predictor
/// reads specs: its columns go in as numbers, as they are.
fn script_table_spec(model: &LocalModel, spec: &UploadSpec) -> Result<ModelSpec, JobError> {
    let outputs = model
        .record
        .metrics
        .get("outputs")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| incompatible("it has not been validated".into()))?;
    let regression =
        model.record.metrics.get("kind").and_then(|k| k.as_str()) == Some("regression");
    Ok(ModelSpec {
        format: spec::FORMAT.into(),
        kind: if regression {
            ProblemKind::Regression
        } else {
            ProblemKind::Classification
        },
        target: String::new(),
        features: spec
            .features
            .iter()
            .flatten()
            .map(|name| Feature::Raw { name: name.clone() })
            .collect(),
        classes: if regression {
            Vec::new()
        } else {
            spec.labels
                .clone()
                .unwrap_or_else(|| (0..outputs).map(|i| i.to_string()).collect())
        },
        target_scale: regression.then_some(Scale {
            mean: 0.0,
            std: 1.0,
        }),
        hidden: Vec::new(),
    })
}

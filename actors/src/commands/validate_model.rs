//! `validate_model`: checks a user's uploaded TorchScript model before it
//! can be used. Run by mlq itself for each upload (`POST /api/v1/models`),
//! on a worker thread like any job: the module is loaded there and given a
//! dummy batch of the declared shape. Whatever is wrong with the file (not
//! TorchScript, a forward that throws, the wrong output shape, non-finite
//! output) ends the task, and so the model, `invalid` with libtorch's
//! reason; the worker goes on.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use super::{Command, Params, SubmitError};
use crate::error::{ErrorCode, JobError};
use crate::ml::loaded::Loaded;
use crate::ml::upload::{InputKind, Output, UploadSpec};
use crate::progress::Progress;
use crate::task::{JobContext, Outcome};

/// Rows in the dummy batches: one, then three, so a module traced with its
/// batch size fixed is caught here rather than at its first real batch.
const DUMMY_BATCHES: [i64; 2] = [1, 3];

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateParams {
    pub spec: UploadSpec,
}

impl Params for ValidateParams {
    fn validate(&self) -> Result<(), SubmitError> {
        self.spec.clone().normalized().map(drop)
    }
}

pub struct ValidateModel;

impl Command for ValidateModel {
    const NAME: &'static str = "validate_model";
    const SUMMARY: &'static str =
        "Loads an uploaded TorchScript model and runs it on a dummy input of its declared shape.";
    const FILES: std::ops::RangeInclusive<usize> = 1..=1;
    const CONTENT_TYPES: &'static [&'static str] = &[];
    const INTERNAL: bool = true;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
    type Params = ValidateParams;

    fn run(&self, p: ValidateParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        let spec = p
            .spec
            .normalized()
            .map_err(|e| JobError::new(ErrorCode::InvalidParams, e.to_string()))?;
        ctx.report
            .progress(Progress::new(0.1, "loading the module"));
        let model = Loaded::script(&ctx.inputs[0].path, ctx.device)?;
        ctx.cancel.check()?;
        let run = |batch: i64| -> Result<(Tensor, Vec<i64>, f64), JobError> {
            let shape = spec.input_shape(batch);
            ctx.report.progress(Progress::new(
                0.5,
                format!("running a dummy batch of shape {shape:?}"),
            ));
            let x = Tensor::f_zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu))?;
            let started = Instant::now();
            let out = model.forward(&x).map_err(|e| {
                JobError::new(
                    ErrorCode::ModelInvalid,
                    format!(
                        "the module failed on a dummy batch of shape {shape:?} (as the spec \
                         declares, with {batch} row(s)): {}",
                        e.message
                            .trim_start_matches("the model failed on its input: ")
                    ),
                )
            })?;
            Ok((out, shape, started.elapsed().as_secs_f64() * 1e3))
        };
        let mut outputs = 0;
        let mut last = None;
        for batch in DUMMY_BATCHES {
            ctx.cancel.check()?;
            let (out, shape, ms) = run(batch)?;
            let size = out.size();
            let k = match (size.as_slice(), spec.input) {
                ([n], InputKind::Tabular) if *n == batch => 1,
                ([n, k], InputKind::Tabular) if *n == batch && *k >= 1 => *k,
                // Classes per image: at least two.
                ([n, k], InputKind::Image) if *n == batch && *k >= 2 => *k,
                _ => {
                    return Err(JobError::new(
                        ErrorCode::ModelInvalid,
                        format!(
                            "the module returned shape {size:?} for a batch of {batch}; it must \
                             return [{batch}, classes]{}",
                            if spec.input == InputKind::Image {
                                " with at least two classes"
                            } else {
                                " (or [batch] for one value per row)"
                            }
                        ),
                    ))
                }
            };
            if outputs != 0 && k != outputs {
                return Err(JobError::new(
                    ErrorCode::ModelInvalid,
                    format!("the module returned {outputs} values per row for one batch and {k} for another"),
                ));
            }
            outputs = k;
            last = Some((out, shape, ms, size));
        }
        let (out, shape, forward_ms, size) = last.expect("at least one dummy batch");
        if let Some(labels) = &spec.labels {
            if labels.len() as i64 != outputs {
                return Err(JobError::new(
                    ErrorCode::ModelInvalid,
                    format!(
                        "the spec names {} labels, but the module returns {outputs} values per \
                         row",
                        labels.len()
                    ),
                ));
            }
        }
        let values = Vec::<f32>::try_from(out.to_kind(Kind::Float).reshape([-1]))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(JobError::new(
                ErrorCode::ModelInvalid,
                "the module's output on a dummy batch is not finite (NaN or infinite)",
            ));
        }
        // One output and no labels: a value per row (regression); else
        // classes.
        let kind = if outputs == 1 && spec.labels.is_none() {
            "regression"
        } else {
            "classification"
        };
        if kind == "classification" && spec.output == Output::Probabilities && outputs == 1 {
            return Err(JobError::new(
                ErrorCode::ModelInvalid,
                "a classifier returning probabilities needs at least two classes",
            ));
        }
        ctx.report.info(format!(
            "the module returned {size:?} for input {shape:?} in {forward_ms:.1} ms"
        ));
        Ok(Outcome {
            result: json!({
                "kind": kind,
                "outputs": outputs,
                "input_shape": spec.input_shape(-1),
                "checked_shape": shape,
                "output_shape": [-1, outputs],
                "forward_ms": forward_ms,
                "bytes": model.bytes,
            }),
            ..Outcome::default()
        })
    }
}

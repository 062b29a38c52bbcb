//! `predict`: runs a registered model over one CSV file.

use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};
use uuid::Uuid;

use super::{Command, Params};
use crate::error::{ErrorCode, JobError};
use crate::ml::spec::{ModelSpec, ProblemKind};
use crate::ml::table::{self, ColumnData, ColumnKind, MISSING_CODE};
use crate::ml::{metrics, network};
use crate::progress::Progress;
use crate::task::{ArtifactFile, JobContext, Outcome};

/// Predictions returned inline in the task result; all of them go to
/// `predictions.csv`.
pub const INLINE_PREDICTIONS: usize = 100;
/// Rows per forward pass: bounds memory and lets a cancel land quickly.
const CHUNK_ROWS: i64 = 8192;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictParams {
    /// The id of a model registered by `train`.
    pub model: Uuid,
}

impl Params for PredictParams {
    fn models(&self) -> Vec<(&'static str, Uuid)> {
        vec![("model", self.model)]
    }
}

pub struct Predict;

impl Command for Predict {
    const NAME: &'static str = "predict";
    const FILES: std::ops::RangeInclusive<usize> = 1..=1;
    type Params = PredictParams;

    fn run(&self, p: PredictParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        let model = ctx.model(p.model)?;
        let spec = ModelSpec::from_json(&model.record.spec)?;
        let path = &ctx.inputs[0].path;
        ctx.report.progress(Progress::new(0.0, "reading data"));

        let headers = table::read_headers(path)?;
        let mut kinds: Vec<(String, ColumnKind)> = spec
            .features
            .iter()
            .map(|f| (f.name().to_owned(), f.kind()))
            .collect();
        if let Some(missing) = kinds.iter().find(|(n, _)| !headers.contains(n)) {
            return Err(JobError::new(
                ErrorCode::UnknownColumn,
                format!(
                    "the model needs column \"{}\", which is not in the file",
                    missing.0
                ),
            ));
        }
        let mut has_target = headers.contains(&spec.target);
        if has_target {
            kinds.push((
                spec.target.clone(),
                match spec.kind {
                    ProblemKind::Classification => ColumnKind::Categorical,
                    ProblemKind::Regression => ColumnKind::Numeric,
                },
            ));
        }
        let mut note = None;
        let data = match table::load(path, &headers, &kinds, &ctx.cancel) {
            Ok(data) => data,
            // The target column is only used for scoring: if it is the
            // problem, predict without it (a feature column that is the
            // problem fails the reload the same way).
            Err(e) if has_target && !e.is_cancelled() => {
                note = Some(format!("target column not scored: {}", e.message));
                kinds.pop();
                has_target = false;
                table::load(path, &headers, &kinds, &ctx.cancel)?
            }
            Err(e) => return Err(e),
        };
        if data.rows == 0 {
            return Err(JobError::new(
                ErrorCode::TooFewRows,
                "the file has no data rows",
            ));
        }
        spec.check_size(data.rows)?;
        let width = spec.input_width();
        let rows = data.rows;
        let mut columns = data.columns;
        let target = if has_target { columns.pop() } else { None };
        let x = network::encode(&spec, columns, rows, |r| r)?;

        let mut vs = nn::VarStore::new(Device::Cpu);
        let net = network::mlp(
            &vs.root(),
            width as i64,
            &spec.hidden,
            spec.output_width() as i64,
        );
        vs.load(&model.weights).map_err(|e| {
            JobError::new(
                ErrorCode::ModelIncompatible,
                format!("model weights do not fit the model spec: {e}"),
            )
        })?;

        let mut outputs = Vec::new();
        let chunks = x.split(CHUNK_ROWS, 0);
        let total = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            ctx.cancel.check()?;
            outputs.push(tch::no_grad(|| net.forward(&chunk)));
            ctx.report.progress(Progress::new(
                (i + 1) as f64 / total as f64,
                format!("predicting {}/{total}", i + 1),
            ));
        }
        ctx.report
            .info(format!("predicted {rows} rows with model {}", p.model));
        let out = Tensor::cat(&outputs, 0);
        let predictions = Predictions::from_output(&spec, &out)?;

        let metrics = target.map(|t| predictions.score(&spec, &t.data));
        let csv_path = ctx.artifact_path("predictions.csv");
        predictions
            .write_csv(&spec, &csv_path)
            .map_err(|e| JobError::storage(format!("writing predictions.csv: {e}")))?;

        Ok(Outcome {
            result: json!({
                "model_id": p.model,
                "kind": spec.kind,
                "rows": rows,
                "predictions": predictions.inline(&spec, INLINE_PREDICTIONS),
                "metrics": metrics,
                "note": note,
            }),
            artifacts: vec![ArtifactFile {
                name: "predictions.csv".into(),
                content_type: "text/csv".into(),
                path: csv_path,
            }],
            model: None,
        })
    }
}

/// What the network said, in the target's own terms.
enum Predictions {
    Classes {
        labels: Vec<usize>,
        probabilities: Vec<Vec<f32>>,
    },
    Values(Vec<f64>),
}

impl Predictions {
    fn from_output(spec: &ModelSpec, out: &Tensor) -> Result<Self, JobError> {
        let rows = out.size()[0] as usize;
        match spec.kind {
            ProblemKind::Classification => {
                let probs = out.softmax(-1, Kind::Float);
                let flat = Vec::<f32>::try_from(probs.reshape([-1]))?;
                let classes = spec.classes.len();
                let probabilities: Vec<Vec<f32>> =
                    flat.chunks(classes).map(<[f32]>::to_vec).collect();
                let labels = probabilities
                    .iter()
                    .map(|p| {
                        p.iter()
                            .enumerate()
                            .max_by(|a, b| a.1.total_cmp(b.1))
                            .map_or(0, |(i, _)| i)
                    })
                    .collect();
                debug_assert_eq!(probabilities.len(), rows);
                Ok(Self::Classes {
                    labels,
                    probabilities,
                })
            }
            ProblemKind::Regression => {
                let scale = spec.target_scale.ok_or_else(|| {
                    JobError::new(
                        ErrorCode::ModelIncompatible,
                        "regression model has no target scale",
                    )
                })?;
                let flat = Vec::<f32>::try_from(out.reshape([-1]))?;
                Ok(Self::Values(
                    flat.into_iter()
                        .map(|v| f64::from(v) * scale.std + scale.mean)
                        .collect(),
                ))
            }
        }
    }

    /// Accuracy or RMSE against the target column, over rows that have one.
    fn score(&self, spec: &ModelSpec, target: &ColumnData) -> Value {
        match (self, target) {
            (Self::Classes { labels, .. }, ColumnData::Categorical { codes, levels }) => {
                let (mut predicted, mut truth) = (Vec::new(), Vec::new());
                for (label, &code) in labels.iter().zip(codes) {
                    if code != MISSING_CODE {
                        // Compare by label text: this file's levels need not
                        // match the training levels.
                        let actual = &levels[code as usize];
                        let actual = spec.classes.iter().position(|c| c == actual);
                        predicted.push(*label as i64);
                        truth.push(actual.map_or(-1, |a| a as i64));
                    }
                }
                json!({ "accuracy": metrics::accuracy(&predicted, &truth), "scored_rows": truth.len() })
            }
            (Self::Values(values), ColumnData::Numeric(actual)) => {
                let (p, t): (Vec<f64>, Vec<f64>) = values
                    .iter()
                    .zip(actual)
                    .filter(|(_, a)| !a.is_nan())
                    .map(|(p, a)| (*p, f64::from(*a)))
                    .unzip();
                json!({ "rmse": metrics::rmse(&p, &t), "scored_rows": t.len() })
            }
            _ => Value::Null,
        }
    }

    fn inline(&self, spec: &ModelSpec, limit: usize) -> Vec<Value> {
        match self {
            Self::Classes { labels, probabilities } => labels
                .iter()
                .zip(probabilities)
                .take(limit)
                .enumerate()
                .map(|(i, (label, probs))| {
                    let probs: serde_json::Map<String, Value> = spec
                        .classes
                        .iter()
                        .zip(probs)
                        .map(|(c, p)| (c.clone(), json!(p)))
                        .collect();
                    json!({"row": i + 1, "prediction": spec.classes[*label], "probabilities": probs})
                })
                .collect(),
            Self::Values(values) => values
                .iter()
                .take(limit)
                .enumerate()
                .map(|(i, v)| json!({"row": i + 1, "prediction": v}))
                .collect(),
        }
    }

    fn write_csv(&self, spec: &ModelSpec, path: &std::path::Path) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
        match self {
            Self::Classes {
                labels,
                probabilities,
            } => {
                let mut header = vec!["row".to_owned(), "prediction".to_owned()];
                header.extend(spec.classes.iter().map(|c| format!("p_{c}")));
                w.write_record(&header)?;
                for (i, (label, probs)) in labels.iter().zip(probabilities).enumerate() {
                    let mut record = vec![(i + 1).to_string(), spec.classes[*label].clone()];
                    record.extend(probs.iter().map(|p| format!("{p:.6}")));
                    w.write_record(&record)?;
                }
            }
            Self::Values(values) => {
                w.write_record(["row", "prediction"])?;
                for (i, v) in values.iter().enumerate() {
                    w.write_record([(i + 1).to_string(), v.to_string()])?;
                }
            }
        }
        let mut inner = w.into_inner().map_err(|e| e.into_error())?;
        inner.flush()
    }
}

//! `predict` on a CSV file, with mlq's own MLP or a tabular TorchScript
//! model.
//!
//! The file streams through in chunks: each chunk of rows is encoded,
//! run through the network, written to `predictions.csv` and scored, then
//! dropped. Memory stays the size of one chunk however many rows the file
//! has, and a cancel lands between chunks.

use std::io::Write;

use serde_json::{json, Value};
use tch::{Kind, Tensor};
use uuid::Uuid;

use crate::error::{quote, shorten, ErrorCode, JobError};
use crate::ml::loaded::Loaded;
use crate::ml::records::Record;
use crate::ml::spec::{ModelSpec, ProblemKind};
use crate::ml::table;
use crate::progress::Progress;
use crate::task::{ArtifactFile, JobContext, Outcome};

use super::{INLINE_CLASSES, INLINE_PREDICTIONS};

/// Rows per forward pass, at most: bounds memory and lets a cancel land
/// quickly.
const CHUNK_ROWS: usize = 8192;
/// Encoded values per chunk, at most: a wide model takes fewer rows at once.
const CHUNK_CELLS: usize = 4 << 20;

/// Predicts with `net`, described by `spec`, over the task's CSV file.
/// `softmax`: the network returns scores rather than probabilities.
pub(super) fn predict(
    ctx: &JobContext,
    model_id: Uuid,
    spec: &ModelSpec,
    net: &Loaded,
    softmax: bool,
) -> Result<Outcome, JobError> {
    let path = &ctx.inputs[0].path;
    ctx.report.progress(Progress::new(0.0, "reading data"));

    let headers = table::read_headers(path)?;
    let index = table::column_index(&headers);
    let columns = spec
        .features
        .iter()
        .map(|f| {
            index.get(f.name()).copied().ok_or_else(|| {
                JobError::new(
                    ErrorCode::UnknownColumn,
                    format!(
                        "the model needs column {}, which is not in the file",
                        quote(f.name())
                    ),
                )
            })
        })
        .collect::<Result<Vec<usize>, JobError>>()?;
    // Scored against the target column when the file has it (a user's
    // TorchScript model names none).
    let target = (!spec.target.is_empty())
        .then(|| index.get(spec.target.as_str()).copied())
        .flatten();

    let width = spec.input_width();
    let csv_path = ctx.artifact_path("predictions.csv");
    let file_size = std::fs::metadata(path).map_or(1, |m| m.len().max(1));
    let chunk_rows = (CHUNK_CELLS / width.max(1)).clamp(1, CHUNK_ROWS);
    let mut run = Run {
        spec,
        net,
        softmax,
        width,
        chunk_rows,
        matrix: fallible_zeros(chunk_rows * width)?,
        truth: Vec::with_capacity(chunk_rows),
        pending: 0,
        rows: 0,
        inline: Vec::new(),
        writer: PredictionWriter::create(&csv_path, spec)
            .map_err(|e| JobError::storage(format!("writing predictions.csv: {e}")))?,
        score: target.map(|_| Score::default()),
        note: None,
    };
    let mut read = 0u64;
    table::for_each_record(path, &headers, &ctx.cancel, |row, record| {
        read += record_bytes(record);
        run.push(row, record, &columns, target)?;
        if run.pending == run.chunk_rows {
            ctx.cancel.check()?;
            run.flush()?;
            ctx.report.progress(Progress::new(
                read as f64 / file_size as f64,
                format!("predicted {} rows", run.rows),
            ));
        }
        Ok(())
    })?;
    run.flush()?;
    if run.rows == 0 {
        return Err(JobError::new(
            ErrorCode::TooFewRows,
            "the file has no data rows",
        ));
    }
    let rows = run.rows;
    run.writer
        .finish()
        .map_err(|e| JobError::storage(format!("writing predictions.csv: {e}")))?;
    ctx.report
        .info(format!("predicted {rows} rows with model {model_id}"));
    let metrics = run.score.map(|s| s.to_json(spec.kind));
    Ok(Outcome {
        result: json!({
            "model_id": model_id,
            "kind": spec.kind,
            "rows": rows,
            "predictions": run.inline,
            "metrics": metrics,
            "note": run.note,
        }),
        artifacts: vec![ArtifactFile {
            name: "predictions.csv".into(),
            content_type: "text/csv".into(),
            path: csv_path,
        }],
        model: None,
    })
}

/// Roughly the bytes a record took in the file, for progress.
fn record_bytes(record: &Record<'_>) -> u64 {
    (record.iter().map(str::len).sum::<usize>() + record.len()) as u64
}

/// A zeroed buffer of `n` values, or `data_too_large`.
fn fallible_zeros(n: usize) -> Result<Vec<f32>, JobError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        JobError::new(
            ErrorCode::DataTooLarge,
            format!("not enough memory for a chunk of {n} encoded values"),
        )
    })?;
    v.resize(n, 0.0);
    Ok(v)
}

/// The target value of a row, when the file has the target column: a
/// class as its index among the model's classes (`None`: a label the
/// model does not know, never predicted), or a number.
enum Truth {
    Missing,
    Class(Option<usize>),
    Value(f64),
}

/// One streaming pass: the chunk being filled and what is kept of the rest.
struct Run<'a> {
    spec: &'a ModelSpec,
    net: &'a Loaded,
    softmax: bool,
    width: usize,
    chunk_rows: usize,
    matrix: Vec<f32>,
    truth: Vec<Truth>,
    pending: usize,
    rows: usize,
    inline: Vec<Value>,
    writer: PredictionWriter,
    /// Accumulated while the target column is usable.
    score: Option<Score>,
    note: Option<String>,
}

impl Run<'_> {
    fn push(
        &mut self,
        row: usize,
        record: &Record<'_>,
        columns: &[usize],
        target: Option<usize>,
    ) -> Result<(), JobError> {
        let at = self.pending * self.width;
        self.spec
            .encode_row(row, record, columns, &mut self.matrix[at..at + self.width])?;
        if let (Some(i), Some(_)) = (target, &self.score) {
            let cell = record.get(i).unwrap_or("").trim();
            let truth = if table::is_missing(cell) {
                Ok(Truth::Missing)
            } else {
                match self.spec.kind {
                    ProblemKind::Classification => Ok(Truth::Class(
                        self.spec
                            .classes
                            .binary_search_by(|c| c.as_str().cmp(cell))
                            .ok(),
                    )),
                    ProblemKind::Regression => table::parse_number(row, &self.spec.target, cell)
                        .map(|v| Truth::Value(f64::from(v))),
                }
            };
            match truth {
                Ok(t) => self.truth.push(t),
                // The target column is only used for scoring: if it is the
                // problem, predict without it.
                Err(e) => {
                    self.note = Some(format!("target column not scored: {}", e.message));
                    self.score = None;
                    self.truth.clear();
                }
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Runs the network over the pending rows and hands their predictions
    /// on.
    fn flush(&mut self) -> Result<(), JobError> {
        if self.pending == 0 {
            return Ok(());
        }
        let n = self.pending;
        let x = Tensor::from_slice(&self.matrix[..n * self.width])
            .reshape([n as i64, self.width as i64]);
        let out = self.net.forward(&x)?;
        let size = out.size();
        let fits = match (self.spec.kind, size.as_slice()) {
            (ProblemKind::Classification, [rows, k]) => {
                *rows == n as i64 && *k == self.spec.classes.len() as i64
            }
            (ProblemKind::Regression, [rows]) | (ProblemKind::Regression, [rows, 1]) => {
                *rows == n as i64
            }
            _ => false,
        };
        if !fits {
            return Err(JobError::new(
                ErrorCode::ModelIncompatible,
                format!("the model returned shape {size:?} for {n} rows"),
            ));
        }
        let first = self.rows + 1;
        match self.spec.kind {
            ProblemKind::Classification => {
                let classes = self.spec.classes.len();
                let out = if self.softmax {
                    out.f_softmax(-1, Kind::Float)?
                } else {
                    out.to_kind(Kind::Float)
                };
                let probs = Vec::<f32>::try_from(out.reshape([-1]))?;
                if probs.len() != n * classes {
                    return Err(JobError::new(
                        ErrorCode::ModelIncompatible,
                        format!(
                            "the model returned {} values for {n} rows of {classes} classes",
                            probs.len()
                        ),
                    ));
                }
                for (i, p) in probs.chunks(classes).enumerate() {
                    let row = first + i;
                    check_finite(row, p)?;
                    let label = p
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    if let (Some(score), Some(Truth::Class(actual))) =
                        (&mut self.score, self.truth.get(i))
                    {
                        score.count(f64::from(u8::from(*actual == Some(label))));
                    }
                    if self.inline.len() < INLINE_PREDICTIONS {
                        self.inline.push(inline_class(self.spec, row, label, p));
                    }
                    self.writer.class(row, &self.spec.classes[label], p)?;
                }
            }
            ProblemKind::Regression => {
                let scale = self.spec.target_scale.ok_or_else(|| {
                    JobError::new(
                        ErrorCode::ModelIncompatible,
                        "regression model has no target scale",
                    )
                })?;
                let values = Vec::<f32>::try_from(out.reshape([-1]))?;
                for (i, v) in values.into_iter().enumerate() {
                    let row = first + i;
                    let value = f64::from(v) * scale.std + scale.mean;
                    check_finite(row, &[value as f32])?;
                    if let (Some(score), Some(Truth::Value(actual))) =
                        (&mut self.score, self.truth.get(i))
                    {
                        score.count((value - actual).powi(2));
                    }
                    if self.inline.len() < INLINE_PREDICTIONS {
                        self.inline.push(json!({"row": row, "prediction": value}));
                    }
                    self.writer.value(row, value)?;
                }
            }
        }
        self.rows += n;
        self.pending = 0;
        self.truth.clear();
        self.matrix[..n * self.width].fill(0.0);
        Ok(())
    }
}

fn check_finite(row: usize, values: &[f32]) -> Result<(), JobError> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(JobError::new(
        ErrorCode::NonFiniteResult,
        format!(
            "row {row}: the model's prediction is not a finite number (its inputs are too large \
             for it, or the model is broken)"
        ),
    ))
}

/// An inline classification: the label and the likeliest classes'
/// probabilities.
fn inline_class(spec: &ModelSpec, row: usize, label: usize, p: &[f32]) -> Value {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
    let probs: serde_json::Map<String, Value> = order
        .into_iter()
        .take(INLINE_CLASSES)
        .map(|c| (shorten(&spec.classes[c]), json!(p[c])))
        .collect();
    json!({"row": row, "prediction": shorten(&spec.classes[label]), "probabilities": probs})
}

/// Accuracy (a sum of hits) or squared error, over rows with a target.
#[derive(Debug, Default)]
struct Score {
    sum: f64,
    rows: usize,
}

impl Score {
    fn count(&mut self, value: f64) {
        self.sum += value;
        self.rows += 1;
    }

    fn to_json(&self, kind: ProblemKind) -> Value {
        let mean = if self.rows == 0 {
            0.0
        } else {
            self.sum / self.rows as f64
        };
        match kind {
            ProblemKind::Classification => json!({"accuracy": mean, "scored_rows": self.rows}),
            ProblemKind::Regression => json!({"rmse": mean.sqrt(), "scored_rows": self.rows}),
        }
    }
}

/// Largest `predictions.csv` a job writes: a file of tiny rows against a
/// model with many classes would otherwise fill the scratch disk.
pub const MAX_OUTPUT_BYTES: u64 = 8 << 30;

/// `predictions.csv`, written as chunks are predicted.
struct PredictionWriter {
    out: csv::Writer<std::io::BufWriter<std::fs::File>>,
    bytes: u64,
}

impl PredictionWriter {
    fn create(path: &std::path::Path, spec: &ModelSpec) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
        match spec.kind {
            ProblemKind::Classification => {
                let mut header = vec!["row".to_owned(), "prediction".to_owned()];
                header.extend(spec.classes.iter().map(|c| format!("p_{c}")));
                w.write_record(&header)?;
            }
            ProblemKind::Regression => w.write_record(["row", "prediction"])?,
        }
        Ok(Self { out: w, bytes: 0 })
    }

    fn class(&mut self, row: usize, label: &str, probs: &[f32]) -> Result<(), JobError> {
        let mut record = vec![row.to_string(), label.to_owned()];
        record.extend(probs.iter().map(|p| format!("{p:.6}")));
        self.write(&record)
    }

    fn value(&mut self, row: usize, value: f64) -> Result<(), JobError> {
        self.write(&[row.to_string(), value.to_string()])
    }

    fn write(&mut self, record: &[String]) -> Result<(), JobError> {
        self.bytes += record.iter().map(|f| f.len() as u64 + 1).sum::<u64>();
        if self.bytes > MAX_OUTPUT_BYTES {
            return Err(JobError::new(
                ErrorCode::DataTooLarge,
                format!(
                    "predictions.csv would pass {MAX_OUTPUT_BYTES} bytes; predict on fewer rows \
                     at a time"
                ),
            ));
        }
        self.out.write_record(record).map_err(write_error)
    }

    fn finish(self) -> std::io::Result<()> {
        let mut inner = self.out.into_inner().map_err(|e| e.into_error())?;
        inner.flush()
    }
}

fn write_error(e: csv::Error) -> JobError {
    JobError::storage(format!("writing predictions.csv: {e}"))
}

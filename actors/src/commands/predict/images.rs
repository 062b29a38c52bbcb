//! `predict` on images: each file (or each entry of a zip) is decoded with
//! limits, cropped to the region, resized and normalised per the model's
//! spec, and classified in batches. A file that cannot be used fails alone,
//! with its error in the result; the task fails only when no image could be
//! used at all.
//!
//! Results stream to `predictions.csv` and `predictions.json` as batches
//! finish; the first 100 are also returned inline.

use std::fs::File;
use std::io::{BufWriter, Write};

use serde::Serialize;
use serde_json::{json, Value};
use tch::{Kind, Tensor};
use uuid::Uuid;

use super::{PredictParams, INLINE_PREDICTIONS};
use crate::error::{shorten, ErrorCode, JobError};
use crate::ml::archive::{self, Entries};
use crate::ml::image::{self, ImageFailure, ImageInput, Rect};
use crate::ml::loaded::Loaded;
use crate::ml::upload::{Output, UploadSpec};
use crate::progress::Progress;
use crate::task::{ArtifactFile, JobContext, Outcome};

/// Most input values in one batch (1 GiB of f32): a big input size takes
/// fewer images per forward pass than `batch_size` asks.
const MAX_BATCH_VALUES: usize = 1 << 28;

/// Most files held between forward passes (failed ones included).
const MAX_PENDING: usize = 1024;

/// One class of one image's prediction.
#[derive(Debug, Clone, Serialize)]
struct Class {
    label: String,
    index: usize,
    probability: f32,
}

/// What became of one file.
#[derive(Debug, Clone, Serialize)]
struct ImageResult {
    file: String,
    /// Which of the task's files it is (absent for an entry of a zip).
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    /// The part of the image classified, corners in order.
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<Rect>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top: Vec<Class>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ImageFailure>,
}

pub(super) fn predict(
    p: &PredictParams,
    ctx: &JobContext,
    model_id: Uuid,
    spec: &UploadSpec,
    net: &Loaded,
) -> Result<Outcome, JobError> {
    let input = spec.image_input().ok_or_else(|| {
        JobError::new(
            ErrorCode::ModelIncompatible,
            "the model's spec has no image input size",
        )
    })?;
    let batch_cap = (MAX_BATCH_VALUES / input.numel().max(1)).max(1);
    let mut run = Run {
        input: &input,
        net,
        labels: spec.labels.as_deref(),
        softmax: spec.output == Output::Logits,
        top_k: p.top_k as usize,
        region: p.region,
        batch: Batch::new(p.batch_size as usize, batch_cap, input.numel())?,
        writer: Writer::create(ctx)?,
        inline: Vec::new(),
        done: 0,
        classified: 0,
        first_error: None,
    };
    let total = count_images(ctx)?;
    ctx.report
        .progress(Progress::new(0.0, format!("classifying {total} image(s)")));
    for (input_no, input) in ctx.inputs.iter().enumerate() {
        let input_no = Some(input_no);
        ctx.cancel.check()?;
        if archive::is_zip(&input.path) {
            let (file, size) = open(input)?;
            // A zip that cannot be read, or that passes the caps part way,
            // fails as one file; the others go on.
            let mut entries = match Entries::open(std::io::BufReader::new(file), size) {
                Ok(entries) => entries,
                Err(e) => {
                    run.fail(ctx, input.name.clone(), archive_failure(e), input_no, total)?;
                    continue;
                }
            };
            while let Some(entry) = entries.next_entry() {
                ctx.cancel.check()?;
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        run.fail(ctx, input.name.clone(), archive_failure(e), input_no, total)?;
                        break;
                    }
                };
                let name = format!("{}/{}", input.name, entry.name);
                match entry.bytes {
                    Ok(bytes) => run.add(ctx, name, &bytes, None, total)?,
                    Err(message) => run.fail(
                        ctx,
                        name,
                        ImageFailure {
                            code: "invalid_archive_entry",
                            message,
                        },
                        None,
                        total,
                    )?,
                }
            }
        } else {
            let bytes = read_bounded(&input.path).map_err(|e| match e {
                Read::Failure(f) => f,
                Read::Io(e) => ImageFailure {
                    code: "storage_error",
                    message: format!("reading the file: {e}"),
                },
            });
            match bytes {
                Ok(bytes) => run.add(ctx, input.name.clone(), &bytes, input_no, total)?,
                Err(failure) => run.fail(ctx, input.name.clone(), failure, input_no, total)?,
            }
        }
    }
    run.flush(ctx, total)?;
    if run.classified == 0 {
        let why = run
            .first_error
            .map(|(file, f)| format!(": {file}: {}", f.message))
            .unwrap_or_default();
        return Err(JobError::new(
            ErrorCode::NoImages,
            format!("none of the {} file(s) could be classified{why}", run.done),
        ));
    }
    let artifacts = run.writer.finish()?;
    ctx.report.info(format!(
        "classified {} of {} image(s) with model {model_id}",
        run.classified, run.done
    ));
    Ok(Outcome {
        result: json!({
            "model_id": model_id,
            "kind": "classification",
            "images": run.done,
            "classified": run.classified,
            "failed": run.done - run.classified,
            "region": p.region,
            "predictions": run.inline,
        }),
        artifacts,
        model: None,
    })
}

/// Images in the task's files, for progress: each file, or each entry of
/// a zip (folders and clutter included; a guess, not a promise).
fn count_images(ctx: &JobContext) -> Result<usize, JobError> {
    let mut total = 0;
    for input in &ctx.inputs {
        if archive::is_zip(&input.path) {
            let (file, size) = open(input)?;
            total += Entries::open(std::io::BufReader::new(file), size).map_or(1, |e| e.len());
        } else {
            total += 1;
        }
    }
    Ok(total.max(1))
}

fn open(input: &crate::task::LocalInput) -> Result<(File, u64), JobError> {
    let file = File::open(&input.path)
        .map_err(|e| JobError::storage(format!("reading {}: {e}", input.name)))?;
    let size = file.metadata().map_or(0, |m| m.len());
    Ok((file, size))
}

/// An archive's own error, as the failure of that one file.
fn archive_failure(e: JobError) -> ImageFailure {
    ImageFailure {
        code: e.code.as_str(),
        message: e.message,
    }
}

enum Read {
    Failure(ImageFailure),
    Io(std::io::Error),
}

/// A file's bytes, if it is not over the size an image may have.
fn read_bounded(path: &std::path::Path) -> Result<Vec<u8>, Read> {
    let len = std::fs::metadata(path).map_err(Read::Io)?.len();
    if len > image::MAX_IMAGE_BYTES {
        return Err(Read::Failure(ImageFailure {
            code: "image_too_large",
            message: format!(
                "the file has {len} bytes; an image may have at most {}",
                image::MAX_IMAGE_BYTES
            ),
        }));
    }
    std::fs::read(path).map_err(Read::Io)
}

/// Encoded images waiting for a forward pass.
struct Batch {
    values: Vec<f32>,
    capacity: usize,
    /// The files since the last forward pass, in input order: images
    /// waiting for it, and files that failed (kept here so results stay in
    /// input order).
    items: Vec<ImageResult>,
    /// Of `items`, the images with values in `values`.
    images: usize,
}

impl Batch {
    fn new(asked: usize, cap: usize, numel: usize) -> Result<Self, JobError> {
        let capacity = asked.min(cap).max(1);
        let mut values = Vec::new();
        values.try_reserve_exact(capacity * numel).map_err(|_| {
            JobError::new(
                ErrorCode::DataTooLarge,
                format!("not enough memory for a batch of {capacity} images"),
            )
        })?;
        Ok(Self {
            values,
            capacity,
            items: Vec::with_capacity(capacity),
            images: 0,
        })
    }

    /// Time for a forward pass: the batch is full, or many failed files
    /// are waiting behind it.
    fn is_full(&self) -> bool {
        self.images >= self.capacity || self.items.len() >= MAX_PENDING
    }
}

struct Run<'a> {
    input: &'a ImageInput,
    net: &'a Loaded,
    labels: Option<&'a [String]>,
    softmax: bool,
    top_k: usize,
    region: Option<image::Region>,
    batch: Batch,
    writer: Writer,
    inline: Vec<Value>,
    /// Files seen, and classified.
    done: usize,
    classified: usize,
    first_error: Option<(String, ImageFailure)>,
}

impl Run<'_> {
    fn add(
        &mut self,
        ctx: &JobContext,
        file: String,
        bytes: &[u8],
        input: Option<usize>,
        total: usize,
    ) -> Result<(), JobError> {
        let decoded = image::decode_bytes(bytes);
        let image = match decoded {
            Ok(image) => image,
            Err(failure) => return self.fail(ctx, file, failure, input, total),
        };
        let (width, height) = (image.width(), image.height());
        let region = match &self.region {
            Some(r) => match r.within(width, height) {
                Ok(rect) => Some(rect),
                Err(message) => {
                    return self.fail(
                        ctx,
                        file,
                        ImageFailure {
                            code: "invalid_region",
                            message,
                        },
                        input,
                        total,
                    )
                }
            },
            None => None,
        };
        match image::encode(&image, self.region.as_ref(), self.input) {
            Ok(values) => {
                drop(image);
                self.batch.values.extend_from_slice(&values);
                self.batch.images += 1;
                self.batch.items.push(ImageResult {
                    file,
                    input,
                    width: Some(width),
                    height: Some(height),
                    region,
                    top: Vec::new(),
                    error: None,
                });
                if self.batch.is_full() {
                    self.flush(ctx, total)?;
                }
                Ok(())
            }
            Err(failure) => self.fail(ctx, file, failure, input, total),
        }
    }

    fn fail(
        &mut self,
        ctx: &JobContext,
        file: String,
        failure: ImageFailure,
        input: Option<usize>,
        total: usize,
    ) -> Result<(), JobError> {
        if self.first_error.is_none() {
            self.first_error = Some((file.clone(), failure.clone()));
        }
        self.batch.items.push(ImageResult {
            file,
            input,
            width: None,
            height: None,
            region: None,
            top: Vec::new(),
            error: Some(failure),
        });
        if self.batch.is_full() {
            self.flush(ctx, total)?;
        }
        Ok(())
    }

    fn record(&mut self, result: ImageResult) -> Result<(), JobError> {
        self.writer.write(&result)?;
        if self.inline.len() < INLINE_PREDICTIONS {
            let mut value = serde_json::to_value(&result).unwrap_or(Value::Null);
            // Inline results stay small: short labels (top_k is at most 100).
            if let Some(top) = value.get_mut("top").and_then(Value::as_array_mut) {
                for class in top.iter_mut() {
                    if let Some(Value::String(l)) = class.get_mut("label") {
                        *l = shorten(l);
                    }
                }
            }
            self.inline.push(value);
        }
        Ok(())
    }

    /// Classifies the pending images, and records every pending file's
    /// result in input order.
    fn flush(&mut self, ctx: &JobContext, total: usize) -> Result<(), JobError> {
        let n = self.batch.images;
        let items = std::mem::take(&mut self.batch.items);
        let probs = if n > 0 {
            ctx.cancel.check()?;
            self.forward(n)?
        } else {
            Vec::new()
        };
        let classes = probs.len() / n.max(1);
        let mut chunks = probs.chunks(classes.max(1));
        for mut item in items {
            self.done += 1;
            if item.error.is_none() {
                let p = chunks.next().unwrap_or(&[]);
                if p.iter().any(|v| !v.is_finite()) {
                    return Err(JobError::new(
                        ErrorCode::NonFiniteResult,
                        format!(
                            "{}: the model's output is not a finite number",
                            crate::error::quote(&item.file)
                        ),
                    ));
                }
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
                item.top = order
                    .into_iter()
                    .take(self.top_k)
                    .map(|index| Class {
                        label: self
                            .labels
                            .and_then(|l| l.get(index).cloned())
                            .unwrap_or_else(|| index.to_string()),
                        index,
                        probability: p[index],
                    })
                    .collect();
                self.classified += 1;
            }
            self.record(item)?;
        }
        self.batch.values.clear();
        self.batch.images = 0;
        ctx.report.progress(Progress::new(
            (self.done as f64 / total as f64).min(1.0),
            format!("classified {} image(s)", self.classified),
        ));
        Ok(())
    }

    /// The model's class probabilities for the `n` pending images, row
    /// after row.
    fn forward(&mut self, n: usize) -> Result<Vec<f32>, JobError> {
        let shape = self.input.shape(n as i64);
        let x = Tensor::from_slice(&self.batch.values).reshape(shape);
        let out = self.net.forward(&x)?;
        let out = if self.softmax {
            out.f_softmax(-1, Kind::Float)?
        } else {
            out.to_kind(Kind::Float)
        };
        let size = out.size();
        match size.as_slice() {
            [rows, k] if *rows == n as i64 && *k >= 1 => {}
            _ => {
                return Err(JobError::new(
                    ErrorCode::ModelIncompatible,
                    format!("the model returned shape {size:?} for a batch of {n} images"),
                ))
            }
        }
        Ok(Vec::<f32>::try_from(out.reshape([-1]))?)
    }
}

/// `predictions.csv` (one row per class reported, or per failed file) and
/// `predictions.json` (an array of results), written as batches finish.
struct Writer {
    csv: csv::Writer<BufWriter<File>>,
    json: BufWriter<File>,
    csv_path: std::path::PathBuf,
    json_path: std::path::PathBuf,
    first: bool,
}

impl Writer {
    fn create(ctx: &JobContext) -> Result<Self, JobError> {
        let csv_path = ctx.artifact_path("predictions.csv");
        let json_path = ctx.artifact_path("predictions.json");
        let open = |path: &std::path::Path| {
            File::create(path)
                .map(BufWriter::new)
                .map_err(|e| JobError::storage(format!("writing {}: {e}", path.display())))
        };
        let mut csv = csv::Writer::from_writer(open(&csv_path)?);
        csv.write_record(["file", "rank", "label", "index", "probability", "error"])
            .map_err(write_error)?;
        let mut json = open(&json_path)?;
        json.write_all(b"[").map_err(|e| write_error(e.into()))?;
        Ok(Self {
            csv,
            json,
            csv_path,
            json_path,
            first: true,
        })
    }

    fn write(&mut self, r: &ImageResult) -> Result<(), JobError> {
        match &r.error {
            Some(e) => self
                .csv
                .write_record([
                    r.file.as_str(),
                    "",
                    "",
                    "",
                    "",
                    &format!("{}: {}", e.code, e.message),
                ])
                .map_err(write_error)?,
            None => {
                for (rank, c) in r.top.iter().enumerate() {
                    self.csv
                        .write_record([
                            r.file.as_str(),
                            &(rank + 1).to_string(),
                            &c.label,
                            &c.index.to_string(),
                            &format!("{:.6}", c.probability),
                            "",
                        ])
                        .map_err(write_error)?;
                }
            }
        }
        if !self.first {
            self.json
                .write_all(b",\n")
                .map_err(|e| write_error(e.into()))?;
        }
        self.first = false;
        serde_json::to_writer(&mut self.json, r)
            .map_err(|e| JobError::storage(format!("writing predictions.json: {e}")))
    }

    fn finish(mut self) -> Result<Vec<ArtifactFile>, JobError> {
        self.json
            .write_all(b"]\n")
            .map_err(|e| write_error(e.into()))?;
        self.json.flush().map_err(|e| write_error(e.into()))?;
        self.csv.flush().map_err(|e| write_error(e.into()))?;
        Ok(vec![
            ArtifactFile {
                name: "predictions.csv".into(),
                content_type: "text/csv".into(),
                path: self.csv_path,
            },
            ArtifactFile {
                name: "predictions.json".into(),
                content_type: "application/json".into(),
                path: self.json_path,
            },
        ])
    }
}

fn write_error(e: csv::Error) -> JobError {
    JobError::storage(format!("writing predictions: {e}"))
}

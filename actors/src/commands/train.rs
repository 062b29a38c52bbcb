//! `train`: fits an MLP to one CSV file and registers it as a model.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use uuid::Uuid;

use super::{Command, Params, SubmitError};
use crate::error::{quote, ErrorCode, JobError};
use crate::ml::network;
use crate::ml::spec::{self, Feature, ModelSpec, ProblemKind, Scale, FORMAT};
use crate::ml::table::{self, ColumnData, ColumnKind, ColumnStats, MAX_LEVELS};
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

/// About the bytes a batch of `batch` rows takes in training: the batch's
/// inputs, then per layer its output, the ReLU's and their gradients.
fn batch_memory(batch: usize, width: usize, hidden: &[i64], output: i64) -> u64 {
    let values: u64 =
        width as u64 + hidden.iter().map(|&h| 4 * h as u64).sum::<u64>() + 2 * output as u64;
    (batch as u64).saturating_mul(values).saturating_mul(4)
}

/// Most bytes of category levels and class labels a model's spec keeps.
pub const MAX_SPEC_LEVEL_BYTES: usize = 1 << 20;
/// Validation rows per forward pass when computing epoch metrics.
const EVAL_CHUNK: i64 = 65_536;
/// A numeric target with at most this many distinct whole numbers is taken
/// as class labels when `kind` is not given.
const MAX_INFERRED_CLASSES: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// The column to predict.
    #[schemars(length(min = 1))]
    pub target: String,
    /// The registered model's name; versions count up per name. The input
    /// file's name (without extension) when absent.
    #[serde(default)]
    #[schemars(length(min = 1, max = crate::ml::registry::MAX_NAME_CHARS))]
    pub name: Option<String>,
    /// Inferred from the target column when absent.
    #[serde(default)]
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
    /// Hidden layer sizes, input side first.
    #[serde(default = "defaults::hidden")]
    #[schemars(length(max = MAX_LAYERS), inner(range(min = 1, max = MAX_WIDTH)))]
    pub hidden: Vec<u32>,
    /// The share of rows held out to measure the model.
    #[serde(default = "defaults::validation_split")]
    #[schemars(range(min = 0, max = 0.5))]
    pub validation_split: f64,
    #[serde(default = "defaults::seed")]
    pub seed: u64,
    /// Feature columns; all columns but the target when absent.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub features: Option<Vec<String>>,
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
        if self.target.trim().is_empty() {
            return Err(SubmitError::param("target", "must name a column"));
        }
        if let Some(name) = &self.name {
            crate::ml::registry::check_name(name).map_err(|m| SubmitError::param("name", m))?;
        }
        if let Some(features) = &self.features {
            if features.contains(&self.target) {
                return Err(SubmitError::param(
                    "features",
                    "must not include the target column",
                ));
            }
        }
        Ok(())
    }
}

pub struct Train;

impl Command for Train {
    const NAME: &'static str = "train";
    const SUMMARY: &'static str =
        "Fits a neural network to a CSV file's columns and registers it as a model.";
    const CONTENT_TYPES: &'static [&'static str] = super::CSV_TYPES;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);
    const FILES: std::ops::RangeInclusive<usize> = 1..=1;
    type Params = TrainParams;

    fn run(&self, p: TrainParams, ctx: &JobContext) -> Result<Outcome, JobError> {
        let prepared = prepare(&p, ctx)?;
        let (vs, last) = fit(&p, ctx, &prepared)?;
        save(&p, ctx, prepared, &vs, last)
    }
}

/// The data, encoded and split, and the model's description.
struct Prepared {
    spec: ModelSpec,
    fit: Fit,
    n_train: usize,
    n_val: usize,
    parameters: i64,
}

/// Reads the file twice: a scan that types each column and finds bad
/// input, then a parse straight into the training matrix. Every size an
/// uploader controls is checked before the memory it decides is spent.
fn prepare(p: &TrainParams, ctx: &JobContext) -> Result<Prepared, JobError> {
    let path = &ctx.inputs[0].path;
    ctx.report.progress(Progress::new(0.0, "reading data"));
    let headers = table::read_headers(path)?;
    let features: Vec<String> = match &p.features {
        Some(f) => f.clone(),
        None => headers
            .iter()
            .filter(|h| **h != p.target)
            .cloned()
            .collect(),
    };
    if !headers.contains(&p.target) {
        return Err(JobError::new(
            ErrorCode::UnknownColumn,
            format!("target column {} is not in the file", quote(&p.target)),
        ));
    }
    if features.is_empty() {
        return Err(JobError::new(
            ErrorCode::UnknownColumn,
            "the file has no columns besides the target to learn from",
        ));
    }
    let mut names = features.clone();
    names.push(p.target.clone());
    ctx.report.progress(Progress::new(0.0, "scanning data"));
    let (rows, stats) = table::scan(path, &headers, &names, Some(&p.target), &ctx.cancel)?;
    let min_rows = if p.validation_split > 0.0 { 2 } else { 1 };
    if rows < min_rows {
        return Err(JobError::new(
            ErrorCode::TooFewRows,
            format!("the file has {rows} data row(s); training needs at least {min_rows}"),
        ));
    }
    // Each feature is at least one input: refuse before any per-row
    // memory is allocated.
    spec::check_cells(rows, features.len())?;
    let target_stats = &stats[features.len()];
    let kind = problem_kind(p, target_stats)?;
    ctx.report.info(format!(
        "read {rows} rows; {} feature column(s); target {} ({})",
        features.len(),
        quote(&p.target),
        kind.as_str()
    ));
    let mut kinds = Vec::with_capacity(features.len());
    for (name, s) in features.iter().zip(&stats) {
        kinds.push((name.clone(), table::infer_kind(name, s)?));
    }

    // Where each feature goes: levels are known from the first pass.
    let mut slots = Vec::with_capacity(features.len());
    let mut width = 0;
    for ((name, kind), s) in kinds.iter().zip(&stats) {
        let slot = match kind {
            ColumnKind::Numeric => table::Slot::Numeric { offset: width },
            ColumnKind::Categorical => table::Slot::Categorical {
                offset: width,
                levels: s.levels(name)?,
            },
        };
        width += match &slot {
            table::Slot::Numeric { .. } => 1,
            table::Slot::Categorical { levels, .. } => levels.len(),
        };
        slots.push((name.clone(), slot));
    }
    // Levels and class labels are stored in the model's spec, which every
    // view of the model carries.
    let level_bytes: usize = slots
        .iter()
        .filter_map(|(_, slot)| match slot {
            table::Slot::Categorical { levels, .. } => {
                Some(levels.iter().map(String::len).sum::<usize>())
            }
            table::Slot::Numeric { .. } => None,
        })
        .sum::<usize>()
        + target_stats.distinct.iter().map(String::len).sum::<usize>();
    if level_bytes > MAX_SPEC_LEVEL_BYTES {
        return Err(JobError::new(
            ErrorCode::DataTooLarge,
            format!(
                "the text columns' categories come to {} KiB, over the limit of {} KiB a model \
                 may keep; leave wide text columns out with the `features` param",
                level_bytes >> 10,
                MAX_SPEC_LEVEL_BYTES >> 10
            ),
        ));
    }
    let output = match kind {
        ProblemKind::Classification => target_stats.distinct.len(),
        ProblemKind::Regression => 1,
    } as i64;
    let hidden: Vec<i64> = p.hidden.iter().map(|&h| h as i64).collect();
    let parameters = network::parameter_count(width as i64, &hidden, output);
    if parameters > MAX_PARAMETERS {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            format!(
                "the network would have {parameters} parameters (limit {MAX_PARAMETERS}); \
                 use smaller `hidden` layers or fewer categorical features"
            ),
        ));
    }
    spec::check_cells(rows, width)?;
    let batch_bytes = batch_memory(rows.min(p.batch_size as usize), width, &hidden, output);
    if batch_bytes > MAX_BATCH_BYTES {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            format!(
                "a batch of {} rows through these layers needs about {} MiB (limit {} MiB); \
                 use a smaller `batch_size` or smaller `hidden` layers",
                p.batch_size,
                batch_bytes >> 20,
                MAX_BATCH_BYTES >> 20
            ),
        ));
    }

    // Split once, with the seed, so a re-run sees the same rows. The
    // shuffled order decides where each row goes in the matrix: training
    // rows first, then validation rows, so both sets are views of one
    // matrix rather than copies. 4-byte indices: at millions of rows,
    // index vectors are a large part of the memory.
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    let mut place: Vec<u32> = fallible_vec(rows, "row order")?;
    place.extend(0..rows as u32);
    place.shuffle(&mut rng);
    let n_val = if p.validation_split > 0.0 {
        ((rows as f64 * p.validation_split).round() as usize).clamp(1, rows - 1)
    } else {
        0
    };
    let n_train = rows - n_val;

    // Second pass: parse straight into the tensor, then standardize the
    // numeric inputs with their training rows' statistics.
    ctx.report.progress(Progress::new(0.0, "encoding data"));
    let target_kind = kinds_target(kind);
    let (x, (target, moments)) = network::matrix(rows, width, |out| {
        let loaded = table::load_matrix(
            path,
            &headers,
            &slots,
            (&p.target, target_kind),
            width,
            out,
            |r| place[r] as usize,
            |r| (place[r] as usize) < n_train,
            &ctx.cancel,
        )?;
        for ((_, slot), m) in slots.iter().zip(&loaded.1) {
            if let table::Slot::Numeric { offset } = slot {
                ctx.cancel.check()?;
                let Scale { mean, std } = Scale::from_moments(m);
                for row in out.chunks_exact_mut(width) {
                    let v = row[*offset];
                    row[*offset] = if v.is_nan() {
                        0.0
                    } else {
                        ((f64::from(v) - mean) / std) as f32
                    };
                }
            }
        }
        Ok(loaded)
    })?;
    ctx.cancel.check()?;
    let (y, classes, scale) = encode_target(&target, &place, n_train)?;
    drop((target, place));
    let spec = ModelSpec {
        format: FORMAT.into(),
        kind,
        target: p.target.clone(),
        features: slots
            .into_iter()
            .zip(&moments)
            .map(|((name, slot), m)| match slot {
                table::Slot::Numeric { .. } => {
                    let Scale { mean, std } = Scale::from_moments(m);
                    Feature::Numeric { name, mean, std }
                }
                table::Slot::Categorical { levels, .. } => Feature::Categorical { name, levels },
            })
            .collect(),
        classes,
        target_scale: scale,
        hidden,
    };
    let (t, v) = (n_train as i64, n_val as i64);
    Ok(Prepared {
        spec,
        fit: Fit {
            x_train: x.narrow(0, 0, t),
            y_train: y.narrow(0, 0, t),
            x_val: x.narrow(0, t, v),
            y_val: y.narrow(0, t, v),
        },
        n_train,
        n_val,
        parameters,
    })
}

/// Trains the network, reporting each epoch. Batches are ranges of one
/// shuffled index tensor, made one at a time: a batch size of 1 over
/// millions of rows holds no more than a batch size of 1,000.
fn fit(
    p: &TrainParams,
    ctx: &JobContext,
    prepared: &Prepared,
) -> Result<(nn::VarStore, BTreeMap<String, f64>), JobError> {
    let Prepared {
        spec, fit, n_train, ..
    } = prepared;
    let (kind, n_train) = (spec.kind, *n_train as i64);
    tch::manual_seed(p.seed as i64);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = network::mlp(
        &vs.root(),
        spec.input_width() as i64,
        &spec.hidden,
        spec.output_width() as i64,
    );
    let mut opt = nn::Adam::default().build(&vs, p.learning_rate)?;
    let mut last = BTreeMap::new();
    let batch_size = i64::from(p.batch_size);
    ctx.report.progress(Progress::new(
        0.0,
        format!("training: epoch 1/{}", p.epochs),
    ));
    for epoch in 1..=p.epochs {
        // libtorch's generator, seeded above: no index vector in Rust.
        let order = Tensor::randperm(n_train, (Kind::Int64, Device::Cpu));
        let mut loss_sum = 0.0;
        for start in (0..n_train).step_by(batch_size as usize) {
            ctx.cancel.check()?;
            let batch = order.narrow(0, start, batch_size.min(n_train - start));
            let xb = fit.x_train.index_select(0, &batch);
            let yb = fit.y_train.index_select(0, &batch);
            let loss = loss(kind, &net.forward(&xb), &yb);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * batch.size()[0] as f64;
        }
        let train_loss = loss_sum / n_train as f64;
        if !train_loss.is_finite() {
            return Err(JobError::new(
                ErrorCode::Diverged,
                format!(
                    "training diverged in epoch {epoch} (the loss is not a finite number); \
                     try a lower learning_rate than {}",
                    p.learning_rate
                ),
            ));
        }
        last = fit.evaluate(kind, &net, spec, train_loss, &ctx.cancel)?;
        if let Some((name, value)) = last.iter().find(|(_, v)| !v.is_finite()) {
            return Err(JobError::new(
                ErrorCode::NonFiniteResult,
                format!(
                    "epoch {epoch}: the validation metric {name} is {value}, not a finite \
                     number; the validation rows hold values the model cannot score (try a \
                     lower learning_rate than {}, or scale the data)",
                    p.learning_rate
                ),
            ));
        }
        let mut progress = Progress::new(
            f64::from(epoch) / f64::from(p.epochs),
            format!("epoch {epoch}/{}", p.epochs),
        );
        for (name, value) in &last {
            progress = progress.with_metric(name, *value);
        }
        ctx.report.progress(progress);
        let summary: Vec<String> = last.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
        let mut data = json!(last);
        data["epoch"] = json!(epoch);
        ctx.report.log(
            Level::Info,
            format!("epoch {epoch}/{}: {}", p.epochs, summary.join(", ")),
            Some(data),
        );
    }
    Ok((vs, last))
}

/// Writes the weights and the spec as artifacts, and describes the model
/// to register.
fn save(
    p: &TrainParams,
    ctx: &JobContext,
    prepared: Prepared,
    vs: &nn::VarStore,
    last: BTreeMap<String, f64>,
) -> Result<Outcome, JobError> {
    let Prepared {
        spec,
        n_train,
        n_val,
        parameters,
        ..
    } = prepared;
    let mut saving = Progress::new(1.0, "saving model");
    saving.metrics = last.clone();
    ctx.report.progress(saving);
    let model_id = Uuid::new_v4();
    let weights = ctx.artifact_path("model.safetensors");
    let spec_path = ctx.artifact_path("model.json");
    vs.save(&weights)?;
    let spec_json = serde_json::to_value(&spec).expect("spec serializes");
    std::fs::write(
        &spec_path,
        serde_json::to_vec_pretty(&spec_json).unwrap_or_default(),
    )
    .map_err(|e| JobError::storage(format!("writing model.json: {e}")))?;

    let model_name = p
        .name
        .clone()
        .unwrap_or_else(|| crate::ml::registry::name_from_file(&ctx.inputs[0].name));
    let metrics = json!(last);
    Ok(Outcome {
        result: json!({
            "model_id": model_id,
            "model_name": model_name,
            "kind": spec.kind,
            "target": p.target,
            "metrics": metrics,
            "epochs": p.epochs,
            "rows": {"train": n_train, "validation": n_val},
            "parameters": parameters,
        }),
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
            name: model_name.clone(),
            input: "tabular".into(),
            format: FORMAT.into(),
            kind: spec.kind.as_str().into(),
            target: Some(spec.target.clone()),
            spec: spec_json,
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

/// The train/validation tensors.
struct Fit {
    x_train: Tensor,
    y_train: Tensor,
    x_val: Tensor,
    y_val: Tensor,
}

impl Fit {
    /// Epoch metrics: the training loss, plus validation loss and accuracy
    /// (or RMSE in the target's own units) when there is a validation set.
    fn evaluate(
        &self,
        kind: ProblemKind,
        net: &impl Module,
        spec: &ModelSpec,
        train_loss: f64,
        cancel: &crate::task::CancelToken,
    ) -> Result<BTreeMap<String, f64>, JobError> {
        let mut m = BTreeMap::from([("train_loss".to_owned(), train_loss)]);
        if self.y_val.size()[0] == 0 {
            return Ok(m);
        }
        // In chunks: one forward pass over millions of validation rows
        // would hold every row's hidden activations at once.
        let rows = self.y_val.size()[0];
        let (mut loss_sum, mut hits, mut squared) = (0.0, 0i64, 0.0);
        tch::no_grad(|| {
            for start in (0..rows).step_by(EVAL_CHUNK as usize) {
                cancel.check()?;
                let len = EVAL_CHUNK.min(rows - start);
                let (x, y) = (
                    &self.x_val.narrow(0, start, len),
                    &self.y_val.narrow(0, start, len),
                );
                let out = net.forward(x);
                let n = y.size()[0] as f64;
                loss_sum += loss(kind, &out, y).double_value(&[]) * n;
                match kind {
                    ProblemKind::Classification => {
                        hits += out
                            .argmax(-1, false)
                            .eq_tensor(y)
                            .sum(Kind::Int64)
                            .int64_value(&[]);
                    }
                    ProblemKind::Regression => {
                        squared += (out.reshape([-1]) - y)
                            .square()
                            .sum(Kind::Double)
                            .double_value(&[]);
                    }
                }
            }
            Ok::<_, JobError>(())
        })?;
        let n = rows as f64;
        m.insert("val_loss".into(), loss_sum / n);
        match kind {
            ProblemKind::Classification => {
                m.insert("val_accuracy".into(), hits as f64 / n);
            }
            ProblemKind::Regression => {
                // Standardized errors, scaled back to the target's units.
                let s = spec.target_scale.expect("regression has a scale");
                m.insert("val_rmse".into(), s.std * (squared / n).sqrt());
            }
        }
        Ok(m)
    }
}

fn loss(kind: ProblemKind, out: &Tensor, y: &Tensor) -> Tensor {
    match kind {
        ProblemKind::Classification => out.cross_entropy_for_logits(y),
        ProblemKind::Regression => out.reshape([-1]).mse_loss(y, tch::Reduction::Mean),
    }
}

/// Decides classification or regression, and rejects unusable targets.
fn problem_kind(p: &TrainParams, s: &ColumnStats) -> Result<ProblemKind, JobError> {
    if let Some(row) = s.first_missing {
        return Err(JobError::new(
            ErrorCode::MissingValue,
            format!(
                "row {row}, column {}: the target value is missing",
                quote(&p.target)
            ),
        ));
    }
    let kind = match p.kind {
        Some(kind) => kind,
        None if s.text > 0 => ProblemKind::Classification,
        None if s.all_integer && s.distinct.len() <= MAX_INFERRED_CLASSES => {
            ProblemKind::Classification
        }
        None => ProblemKind::Regression,
    };
    if kind == ProblemKind::Classification {
        s.check_level_lengths(&p.target)?;
    }
    match kind {
        ProblemKind::Classification if s.distinct.len() < 2 => Err(JobError::new(
            ErrorCode::SingleClass,
            format!(
                "target column {} has only one class ({}): classification needs at least two",
                quote(&p.target),
                quote(s.distinct.iter().next().map(String::as_str).unwrap_or(""))
            ),
        )),
        ProblemKind::Classification if s.distinct.len() > MAX_LEVELS => Err(JobError::new(
            ErrorCode::TooManyCategories,
            format!(
                "target column {} has more than {MAX_LEVELS} classes",
                quote(&p.target)
            ),
        )),
        ProblemKind::Regression if s.text > 0 => {
            let (row, value) = s.first_text.clone().unwrap_or_default();
            Err(JobError::new(
                ErrorCode::InvalidNumber,
                format!(
                    "row {row}, column {}: {value} is not a number, and regression needs \
                     a numeric target (use kind \"classification\" for labels)",
                    quote(&p.target)
                ),
            ))
        }
        kind => Ok(kind),
    }
}

/// How the target column is read for a problem kind.
fn kinds_target(kind: ProblemKind) -> ColumnKind {
    match kind {
        ProblemKind::Classification => ColumnKind::Categorical,
        ProblemKind::Regression => ColumnKind::Numeric,
    }
}

/// The target as a tensor with row `r` at `place[r]`: class indices, or
/// values standardized with the statistics of the training rows (those
/// placed below `n_train`).
fn encode_target(
    column: &table::Column,
    place: &[u32],
    n_train: usize,
) -> Result<(Tensor, Vec<String>, Option<Scale>), JobError> {
    match &column.data {
        ColumnData::Categorical { codes, levels } => {
            // Missing targets were rejected before loading.
            let mut y = fallible_vec(codes.len(), "target")?;
            y.resize(codes.len(), 0i64);
            for (r, &code) in codes.iter().enumerate() {
                y[place[r] as usize] = i64::from(code);
            }
            Ok((Tensor::from_slice(&y), levels.clone(), None))
        }
        ColumnData::Numeric(values) => {
            let mut moments = table::Moments::default();
            for (r, &v) in values.iter().enumerate() {
                if (place[r] as usize) < n_train {
                    moments.add(f64::from(v));
                }
            }
            let Scale { mean, std } = Scale::from_moments(&moments);
            let mut y = fallible_vec(values.len(), "target")?;
            y.resize(values.len(), 0f32);
            for (r, &v) in values.iter().enumerate() {
                y[place[r] as usize] = ((f64::from(v) - mean) / std) as f32;
            }
            Ok((
                Tensor::from_slice(&y),
                Vec::new(),
                Some(Scale { mean, std }),
            ))
        }
    }
}

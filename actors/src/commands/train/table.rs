//! `train` on a CSV file: fits an MLP to its columns.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::{
    check_loss, epoch_done, fallible_vec, save, TrainParams, Trained, MAX_BATCH_BYTES,
    MAX_PARAMETERS,
};
use crate::error::{quote, ErrorCode, JobError};
use crate::ml::network;
use crate::ml::spec::{self, Feature, ModelSpec, ProblemKind, Scale, FORMAT};
use crate::ml::table::{self, ColumnData, ColumnKind, ColumnStats, MAX_LEVELS};
use crate::progress::Progress;
use crate::task::{JobContext, Outcome};

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

pub(super) fn train(p: &TrainParams, ctx: &JobContext) -> Result<Outcome, JobError> {
    if let Some(name) = p.image_param() {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            format!("{name}: is for image zips, and the input is a CSV file"),
        ));
    }
    let target = p.target.as_deref().ok_or_else(|| {
        JobError::new(
            ErrorCode::InvalidParams,
            "target: a CSV file needs the `target` param, the column to predict",
        )
    })?;
    let prepared = prepare(p, target, ctx)?;
    let (vs, last) = fit(p, ctx, &prepared)?;
    let Prepared {
        spec,
        n_train,
        n_val,
        parameters,
        ..
    } = prepared;
    let result = json!({
        "target": target,
        "rows": {"train": n_train, "validation": n_val},
        "parameters": parameters,
    });
    let trained = Trained {
        input: "tabular",
        format: FORMAT,
        kind: spec.kind,
        target: Some(spec.target.clone()),
        spec: serde_json::to_value(&spec).expect("spec serializes"),
        metrics: last,
    };
    save(p, ctx, &vs, trained, result)
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
fn prepare(p: &TrainParams, target: &str, ctx: &JobContext) -> Result<Prepared, JobError> {
    let path = &ctx.inputs[0].path;
    ctx.report.progress(Progress::new(0.0, "reading data"));
    let headers = table::read_headers(path)?;
    let features: Vec<String> = match &p.features {
        Some(f) => f.clone(),
        None => headers.iter().filter(|h| **h != target).cloned().collect(),
    };
    if !headers.iter().any(|h| h == target) {
        return Err(JobError::new(
            ErrorCode::UnknownColumn,
            format!("target column {} is not in the file", quote(target)),
        ));
    }
    if features.is_empty() {
        return Err(JobError::new(
            ErrorCode::UnknownColumn,
            "the file has no columns besides the target to learn from",
        ));
    }
    let mut names = features.clone();
    names.push(target.to_owned());
    ctx.report.progress(Progress::new(0.0, "scanning data"));
    let (rows, stats) = table::scan(path, &headers, &names, Some(target), &ctx.cancel)?;
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
    let kind = problem_kind(p, target, target_stats)?;
    ctx.report.info(format!(
        "read {rows} rows; {} feature column(s); target {} ({})",
        features.len(),
        quote(target),
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
    let (x, (column, moments)) = network::matrix(rows, width, |out| {
        let loaded = table::load_matrix(
            path,
            &headers,
            &slots,
            (target, target_kind),
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
    let (y, classes, scale) = encode_target(&column, &place, n_train)?;
    drop((column, place));
    let spec = ModelSpec {
        format: FORMAT.into(),
        kind,
        target: target.to_owned(),
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
    // The data stays on the CPU; each batch goes to the worker's device.
    let device = ctx.device;
    let vs = nn::VarStore::new(device);
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
            let xb = fit.x_train.index_select(0, &batch).to_device(device);
            let yb = fit.y_train.index_select(0, &batch).to_device(device);
            let loss = loss(kind, &net.forward(&xb), &yb);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * batch.size()[0] as f64;
        }
        let train_loss = loss_sum / n_train as f64;
        check_loss(p, epoch, train_loss)?;
        last = fit.evaluate(kind, &net, spec, train_loss, device, &ctx.cancel)?;
        epoch_done(p, ctx, epoch, &last)?;
    }
    Ok((vs, last))
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
        device: Device,
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
                    &self.x_val.narrow(0, start, len).to_device(device),
                    &self.y_val.narrow(0, start, len).to_device(device),
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
fn problem_kind(p: &TrainParams, target: &str, s: &ColumnStats) -> Result<ProblemKind, JobError> {
    if let Some(row) = s.first_missing {
        return Err(JobError::new(
            ErrorCode::MissingValue,
            format!(
                "row {row}, column {}: the target value is missing",
                quote(target)
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
        s.check_level_lengths(target)?;
    }
    match kind {
        ProblemKind::Classification if s.distinct.len() < 2 => Err(JobError::new(
            ErrorCode::SingleClass,
            format!(
                "target column {} has only one class ({}): classification needs at least two",
                quote(target),
                quote(s.distinct.iter().next().map(String::as_str).unwrap_or(""))
            ),
        )),
        ProblemKind::Classification if s.distinct.len() > MAX_LEVELS => Err(JobError::new(
            ErrorCode::TooManyCategories,
            format!(
                "target column {} has more than {MAX_LEVELS} classes",
                quote(target)
            ),
        )),
        ProblemKind::Regression if s.text > 0 => {
            let (row, value) = s.first_text.clone().unwrap_or_default();
            Err(JobError::new(
                ErrorCode::InvalidNumber,
                format!(
                    "row {row}, column {}: {value} is not a number, and regression needs \
                     a numeric target (use kind \"classification\" for labels)",
                    quote(target)
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

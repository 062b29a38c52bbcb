//! `train` on a zip of images, one folder per class: a small CNN.
//!
//! Every entry is decoded with the same limits as `predict` uses, and
//! brought to the training size the same way, so a model sees at predict
//! time what it saw in training. An entry that is not an image, or sits
//! outside a class folder, is skipped with a warning naming it; the task
//! fails only when what is left cannot train a classifier.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use tch::nn::{self, ModuleT, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use super::{check_loss, epoch_done, save, TrainParams, Trained, MAX_BATCH_BYTES};
use crate::error::{quote, ErrorCode, JobError};
use crate::ml::archive::{self, Entries};
use crate::ml::cnn::{self, Cnn, CnnSpec};
use crate::ml::image::{self, ImageInput};
use crate::ml::spec::ProblemKind;
use crate::ml::table::MAX_LEVELS;
use crate::progress::Progress;
use crate::task::{JobContext, Outcome};

/// The training size when `width` or `height` is not given.
const DEFAULT_SIDE: u32 = 32;
/// Most input values all training images may come to (600 MB of f32; the
/// tensor is built from them, so the peak while it is built is twice that).
pub const MAX_VALUES: usize = 150_000_000;
/// Skipped entries named one by one in the log; the rest are counted.
const MAX_SKIP_WARNINGS: usize = 20;
/// Images per forward pass when measuring the validation set.
const EVAL_CHUNK: i64 = 256;
/// Most bytes of class names a model's spec keeps.
const MAX_CLASS_BYTES: usize = 1 << 20;

pub(super) fn train(p: &TrainParams, ctx: &JobContext) -> Result<Outcome, JobError> {
    // A file that only starts like a zip is a corrupt archive, whatever
    // the params: say that first.
    open(ctx)?;
    refuse_table_params(p)?;
    let channels = p.channels.unwrap_or(3);
    let input = ImageInput {
        width: p.width.unwrap_or(DEFAULT_SIDE),
        height: p.height.unwrap_or(DEFAULT_SIDE),
        channels,
        // Raw [0, 1] values while reading; the training images' own
        // statistics replace these before training.
        mean: vec![0.0; channels as usize],
        std: vec![1.0; channels as usize],
        resize: p.resize.unwrap_or_default(),
    };
    input
        .check()
        .map_err(|(field, m)| JobError::new(ErrorCode::InvalidParams, format!("{field}: {m}")))?;
    let filters = cnn::FILTERS.to_vec();
    let data = read(ctx, &input)?;
    let n = data.labels.len();
    let n_val = if p.validation_split > 0.0 {
        ((n as f64 * p.validation_split).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    let n_train = n - n_val;
    let batch_bytes = cnn::batch_memory(
        u64::from(p.batch_size).min(n_train as u64),
        &input,
        &filters,
    );
    if batch_bytes > MAX_BATCH_BYTES {
        return Err(JobError::new(
            ErrorCode::InvalidParams,
            format!(
                "a batch of {} images of {}×{} needs about {} MiB in training (limit {} MiB); \
                 use a smaller `batch_size`, `width` or `height`",
                p.batch_size.min(n_train as u32),
                input.width,
                input.height,
                batch_bytes >> 20,
                MAX_BATCH_BYTES >> 20
            ),
        ));
    }

    ctx.report.info(format!(
        "read {n} images in {} classes ({}); {} skipped; {n_train} to train on, {n_val} to \
         validate",
        data.classes.len(),
        data.classes
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", "),
        data.skipped
    ));

    // One tensor for every image; training and validation sets are index
    // lists into it, so neither is a copy.
    // The split and each epoch's order come from the task's own generator:
    // libtorch's is shared by every worker in the process.
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed);
    tch::manual_seed(p.seed as i64);
    let x = Tensor::f_from_slice(&data.values)
        .and_then(|t| t.f_view(input.shape(n as i64)))
        .map_err(|e| {
            JobError::new(
                ErrorCode::DataTooLarge,
                format!(
                    "not enough memory for {n} images of {}×{}: {}",
                    input.width,
                    input.height,
                    crate::ml::loaded::first_line(&e.to_string())
                ),
            )
        })?;
    let classes = data.classes;
    let labels: Vec<i64> = data.labels.iter().map(|&l| i64::from(l)).collect();
    drop(data.values);
    let y = Tensor::from_slice(&labels);
    let mut order: Vec<i64> = (0..n as i64).collect();
    order.shuffle(&mut rng);
    let train_idx = Tensor::from_slice(&order[..n_train]);
    let val_idx = Tensor::from_slice(&order[n_train..]);
    let (mean, std) = standardize(&x, &train_idx, &ctx.cancel)?;
    let input = ImageInput { mean, std, ..input };

    let set = Sets {
        x,
        y,
        train: train_idx,
        val: val_idx,
    };
    let (vs, metrics) = fit(
        p,
        ctx,
        &set,
        &input,
        &filters,
        classes.len() as i64,
        &mut rng,
    )?;
    let parameters = cnn::parameter_count(i64::from(channels), &filters, classes.len() as i64);
    let spec = CnnSpec {
        format: cnn::FORMAT.into(),
        input,
        classes: classes.clone(),
        filters,
    };
    let result = json!({
        "classes": classes,
        "images": {"train": n_train, "validation": n_val, "skipped": data.skipped},
        "input": {
            "width": spec.input.width,
            "height": spec.input.height,
            "channels": spec.input.channels,
            "resize": spec.input.resize,
        },
        "parameters": parameters,
    });
    let trained = Trained {
        input: "image",
        format: cnn::FORMAT,
        kind: ProblemKind::Classification,
        target: None,
        spec: serde_json::to_value(&spec).expect("spec serializes"),
        metrics,
    };
    save(p, ctx, &vs, trained, result)
}

/// A zip's classes are its folders: the CSV-only params mean nothing here,
/// and silently ignoring them would hide a mistake.
fn refuse_table_params(p: &TrainParams) -> Result<(), JobError> {
    let wrong = |m: &str| JobError::new(ErrorCode::InvalidParams, m.to_owned());
    if p.target.is_some() {
        return Err(wrong(
            "target: the input is a zip of images, whose classes are its folders; `target` is \
             for CSV files",
        ));
    }
    if p.features.is_some() {
        return Err(wrong(
            "features: is for CSV files; the input is a zip of images",
        ));
    }
    if p.kind == Some(ProblemKind::Regression) {
        return Err(wrong(
            "kind: a zip of images in class folders trains a classifier, not a regression",
        ));
    }
    Ok(())
}

/// Every usable image, encoded at the training size, and its class.
struct Data {
    /// `labels.len()` images, one after another, CHW.
    values: Vec<f32>,
    /// Index into `classes`.
    labels: Vec<u32>,
    /// Folder names, sorted: the model's output order.
    classes: Vec<String>,
    skipped: usize,
}

/// The task's zip, its central directory read.
fn open(ctx: &JobContext) -> Result<Entries<BufReader<File>>, JobError> {
    let local = &ctx.inputs[0];
    let file = File::open(&local.path)
        .map_err(|e| JobError::storage(format!("reading {}: {e}", local.name)))?;
    let size = file.metadata().map_or(0, |m| m.len());
    Entries::open(BufReader::new(file), size)
}

fn read(ctx: &JobContext, input: &ImageInput) -> Result<Data, JobError> {
    let mut entries = open(ctx)?;
    let total = entries.len();
    let numel = input.numel();
    let mut values: Vec<f32> = Vec::new();
    // Each kept image's first and second folder; classes are decided once
    // every entry is read.
    let mut folders: Vec<(String, Option<String>)> = Vec::new();
    let mut skipped = 0;
    let mut skip = |name: &str, why: &str| {
        skipped += 1;
        if skipped <= MAX_SKIP_WARNINGS {
            ctx.report.warn(format!("{name}: skipped: {why}"));
        }
    };
    let mut done = 0;
    ctx.report.progress(Progress::new(
        0.0,
        format!("reading images: 0/{total} entries"),
    ));
    while let Some(entry) = entries.next_entry() {
        ctx.cancel.check()?;
        done += 1;
        if done % 256 == 0 {
            ctx.report.progress(Progress::new(
                0.0,
                format!("reading images: {done}/{total} entries"),
            ));
        }
        let entry = entry?;
        let Some(place) = archive::class_folders(&entry.path) else {
            skip(
                &entry.name,
                "not in a class folder (put each class's images in a folder named after it)",
            );
            continue;
        };
        let bytes = match entry.bytes {
            Ok(bytes) => bytes,
            Err(why) => {
                skip(&entry.name, &why);
                continue;
            }
        };
        let encoded = image::decode_bytes(&bytes).and_then(|img| image::encode(&img, None, input));
        let encoded = match encoded {
            Ok(v) => v,
            Err(failure) => {
                skip(&entry.name, &failure.message);
                continue;
            }
        };
        if values.len() + numel > MAX_VALUES {
            return Err(JobError::new(
                ErrorCode::DataTooLarge,
                format!(
                    "the images come to more than {MAX_VALUES} values at {}×{}×{} each (over \
                     {} images); use a smaller `width` and `height`, or fewer images",
                    input.channels,
                    input.height,
                    input.width,
                    MAX_VALUES / numel
                ),
            ));
        }
        if values.try_reserve(numel).is_err() {
            return Err(JobError::new(
                ErrorCode::DataTooLarge,
                format!("not enough memory for {} images", folders.len() + 1),
            ));
        }
        values.extend_from_slice(&encoded);
        folders.push(place);
    }
    if skipped > MAX_SKIP_WARNINGS {
        ctx.report.warn(format!(
            "{} more entries skipped",
            skipped - MAX_SKIP_WARNINGS
        ));
    }
    // A zip of the dataset's folder rather than of its class folders
    // (`shapes/disc/1.png`, …): the classes are one level down.
    let one_root = folders.windows(2).all(|w| w[0].0 == w[1].0);
    let nested = folders.iter().all(|(_, second)| second.is_some());
    let class_names: Vec<String> = folders
        .into_iter()
        .map(|(first, second)| match second {
            Some(second) if one_root && nested => second,
            _ => first,
        })
        .collect();
    // Output order is the classes' sorted names, whatever order the zip
    // listed them in.
    let mut classes = class_names.clone();
    classes.sort();
    classes.dedup();
    check_classes(&classes, class_names.len(), skipped)?;
    let labels = class_names
        .iter()
        .map(|n| classes.binary_search(n).expect("a class it holds") as u32)
        .collect();
    Ok(Data {
        values,
        labels,
        classes,
        skipped,
    })
}

fn check_classes(classes: &[String], images: usize, skipped: usize) -> Result<(), JobError> {
    if images == 0 {
        return Err(JobError::new(
            ErrorCode::NoImages,
            format!(
                "the zip holds no usable image in a class folder ({skipped} entries skipped; the \
                 log names them); put each class's images in a folder named after it, as in \
                 cats/1.png and dogs/2.png"
            ),
        ));
    }
    if classes.len() < 2 {
        return Err(JobError::new(
            ErrorCode::SingleClass,
            format!(
                "the zip has one class folder ({}): a classifier needs at least two",
                quote(&classes[0])
            ),
        ));
    }
    if classes.len() > MAX_LEVELS {
        return Err(JobError::new(
            ErrorCode::TooManyCategories,
            format!(
                "the zip has {} class folders; at most {MAX_LEVELS} are trained",
                classes.len()
            ),
        ));
    }
    let bytes: usize = classes.iter().map(String::len).sum();
    if bytes > MAX_CLASS_BYTES {
        return Err(JobError::new(
            ErrorCode::DataTooLarge,
            format!(
                "the class folders' names come to {} KiB; a model keeps at most {} KiB",
                bytes >> 10,
                MAX_CLASS_BYTES >> 10
            ),
        ));
    }
    if images < 2 {
        return Err(JobError::new(
            ErrorCode::TooFewRows,
            "the zip has one usable image; training needs at least two",
        ));
    }
    Ok(())
}

/// Per-channel mean and standard deviation of the training images, and
/// `x` standardized with them in place: the spec keeps them, so `predict`
/// prepares each image the same way.
fn standardize(
    x: &Tensor,
    train: &Tensor,
    cancel: &crate::task::CancelToken,
) -> Result<(Vec<f32>, Vec<f32>), JobError> {
    let channels = x.size()[1];
    let n = train.size()[0];
    let mut sum = Tensor::zeros([channels], (Kind::Double, Device::Cpu));
    let mut squares = Tensor::zeros([channels], (Kind::Double, Device::Cpu));
    // In chunks of about 4 M values: a copy of every training image at
    // once would double the memory the data takes.
    let per_image = (x.numel() as i64 / x.size()[0].max(1)).max(1);
    let step = ((4 << 20) / per_image).max(1);
    for start in (0..n).step_by(step as usize) {
        cancel.check()?;
        let chunk = x.index_select(0, &train.narrow(0, start, step.min(n - start)));
        sum += chunk
            .sum_dim_intlist([0, 2, 3].as_slice(), false, Kind::Float)
            .to_kind(Kind::Double);
        squares += chunk
            .square()
            .sum_dim_intlist([0, 2, 3].as_slice(), false, Kind::Float)
            .to_kind(Kind::Double);
    }
    let count = (n * x.size()[2] * x.size()[3]).max(1) as f64;
    let mean = &sum / count;
    let var = (&squares / count - mean.square()).clamp_min(0.0);
    // A constant channel is left unscaled rather than divided by zero.
    let std = var.sqrt();
    let std = std.where_self(&std.gt(1e-6), &std.ones_like());
    let (mean, std) = (Vec::<f64>::try_from(&mean)?, Vec::<f64>::try_from(&std)?);
    let view = |v: &[f64]| {
        Tensor::from_slice(&v.iter().map(|&v| v as f32).collect::<Vec<_>>())
            .view([1, channels, 1, 1])
    };
    let _ = x.shallow_clone().g_sub_(&view(&mean)).g_div_(&view(&std));
    Ok((
        mean.iter().map(|&v| v as f32).collect(),
        std.iter().map(|&v| v as f32).collect(),
    ))
}

/// The images and their classes; the two sets index into them.
struct Sets {
    x: Tensor,
    y: Tensor,
    train: Tensor,
    val: Tensor,
}

fn fit(
    p: &TrainParams,
    ctx: &JobContext,
    set: &Sets,
    input: &ImageInput,
    filters: &[i64],
    classes: i64,
    rng: &mut rand::rngs::StdRng,
) -> Result<(nn::VarStore, BTreeMap<String, f64>), JobError> {
    let device = ctx.device;
    let vs = nn::VarStore::new(device);
    let net = Cnn::new(&vs.root(), i64::from(input.channels), filters, classes);
    let mut opt = nn::Adam::default().build(&vs, p.learning_rate)?;
    let n_train = set.train.size()[0];
    let batch = i64::from(p.batch_size);
    let mut shuffled = Vec::<i64>::try_from(&set.train)?;
    // Evaluation keeps no activations for a backward pass, but holds a
    // chunk's: as many images as a training batch may have.
    let eval_chunk = (MAX_BATCH_BYTES / cnn::batch_memory(1, input, filters).max(1))
        .clamp(1, EVAL_CHUNK as u64) as i64;
    let mut last = BTreeMap::new();
    ctx.report.progress(Progress::new(
        0.0,
        format!("training: epoch 1/{}", p.epochs),
    ));
    for epoch in 1..=p.epochs {
        shuffled.shuffle(rng);
        let order = Tensor::from_slice(&shuffled);
        let (mut loss_sum, mut hits) = (0.0, 0i64);
        for start in (0..n_train).step_by(batch as usize) {
            ctx.cancel.check()?;
            let idx = order.narrow(0, start, batch.min(n_train - start));
            let xb = set.x.index_select(0, &idx).to_device(device);
            let yb = set.y.index_select(0, &idx).to_device(device);
            let out = net.forward_t(&xb, true);
            let loss = out.cross_entropy_for_logits(&yb);
            opt.backward_step(&loss);
            loss_sum += loss.double_value(&[]) * idx.size()[0] as f64;
            hits += out
                .argmax(-1, false)
                .eq_tensor(&yb)
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        let train_loss = loss_sum / n_train as f64;
        check_loss(p, epoch, train_loss)?;
        last = BTreeMap::from([
            ("train_loss".to_owned(), train_loss),
            ("train_accuracy".to_owned(), hits as f64 / n_train as f64),
        ]);
        evaluate(&net, set, device, eval_chunk, &ctx.cancel, &mut last)?;
        epoch_done(p, ctx, epoch, &last)?;
    }
    Ok((vs, last))
}

/// Validation loss and accuracy, in eval mode (batch norm's running
/// statistics, as `predict` uses).
fn evaluate(
    net: &Cnn,
    set: &Sets,
    device: Device,
    chunk: i64,
    cancel: &crate::task::CancelToken,
    metrics: &mut BTreeMap<String, f64>,
) -> Result<(), JobError> {
    let n = set.val.size()[0];
    if n == 0 {
        return Ok(());
    }
    let (mut loss_sum, mut hits) = (0.0, 0i64);
    tch::no_grad(|| {
        for start in (0..n).step_by(chunk as usize) {
            cancel.check()?;
            let idx = set.val.narrow(0, start, chunk.min(n - start));
            let x = set.x.index_select(0, &idx).to_device(device);
            let y = set.y.index_select(0, &idx).to_device(device);
            let out = net.forward_t(&x, false);
            loss_sum += out.cross_entropy_for_logits(&y).double_value(&[]) * idx.size()[0] as f64;
            hits += out
                .argmax(-1, false)
                .eq_tensor(&y)
                .sum(Kind::Int64)
                .int64_value(&[]);
        }
        Ok::<_, JobError>(())
    })?;
    metrics.insert("val_loss".into(), loss_sum / n as f64);
    metrics.insert("val_accuracy".into(), hits as f64 / n as f64);
    Ok(())
}

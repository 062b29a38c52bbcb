//! The small convolutional network `train` fits to images, and its spec.
//!
//! Each block is a 3×3 convolution, batch normalisation, ReLU and a 2×2 max
//! pool; global average pooling and one linear layer give the class
//! scores. Average pooling makes the head independent of the input size,
//! so the same layers serve any width and height.

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::Tensor;

use crate::error::{ErrorCode, JobError};
use crate::ml::image::ImageInput;
use crate::ml::upload::{InputKind, Output, UploadSpec};

pub const FORMAT: &str = "mlq.cnn.v1";

/// Output channels of each block, in order.
pub const FILTERS: [i64; 3] = [16, 32, 64];

/// A trained CNN's description: stored as `model.json` next to the
/// safetensors weights and in the `models` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnnSpec {
    pub format: String,
    /// What it reads, and how an image is brought to it; `mean` and `std`
    /// are the training images' own, per channel.
    pub input: ImageInput,
    /// Class labels, in output order: the zip's folder names.
    pub classes: Vec<String>,
    pub filters: Vec<i64>,
}

impl CnnSpec {
    /// Parses a stored spec, rejecting ones this version cannot run.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, JobError> {
        let incompatible = |m: String| JobError::new(ErrorCode::ModelIncompatible, m);
        let spec: Self = serde_json::from_value(value.clone())
            .map_err(|e| incompatible(format!("model spec is unreadable: {e}")))?;
        if spec.format != FORMAT {
            return Err(incompatible(format!(
                "model format {} is not {FORMAT}",
                spec.format
            )));
        }
        spec.input
            .check()
            .map_err(|(field, m)| incompatible(format!("model spec's {field} {m}")))?;
        if spec.classes.len() < 2 || spec.filters.is_empty() {
            return Err(incompatible(
                "model spec needs two classes and one block or more".into(),
            ));
        }
        if spec.filters.iter().any(|f| !(1..=1024).contains(f)) {
            return Err(incompatible("model spec's filters are out of range".into()));
        }
        Ok(spec)
    }

    /// The spec as `predict` reads an image model's: the same preparation
    /// of each image, and the classes as labels.
    pub fn as_image_model(&self) -> UploadSpec {
        UploadSpec {
            // Registered models are named by the registry, not their spec.
            name: String::new(),
            input: InputKind::Image,
            width: Some(self.input.width),
            height: Some(self.input.height),
            channels: Some(self.input.channels),
            mean: Some(self.input.mean.clone()),
            std: Some(self.input.std.clone()),
            resize: Some(self.input.resize),
            features: None,
            labels: Some(self.classes.clone()),
            output: Output::Logits,
        }
    }
}

#[derive(Debug)]
pub struct Cnn {
    blocks: Vec<(nn::Conv2D, nn::BatchNorm)>,
    output: nn::Linear,
}

impl Cnn {
    /// Variable names are fixed (`conv0`, `norm0`, …, `output`) because
    /// saved weights are matched by name.
    pub fn new(root: &nn::Path, channels: i64, filters: &[i64], classes: i64) -> Self {
        let mut blocks = Vec::with_capacity(filters.len());
        let mut width = channels;
        for (i, &f) in filters.iter().enumerate() {
            let conv = nn::conv2d(
                root / format!("conv{i}"),
                width,
                f,
                3,
                nn::ConvConfig {
                    padding: 1,
                    bias: false,
                    ..Default::default()
                },
            );
            let norm = nn::batch_norm2d(root / format!("norm{i}"), f, Default::default());
            blocks.push((conv, norm));
            width = f;
        }
        let output = nn::linear(root / "output", width, classes, Default::default());
        Self { blocks, output }
    }
}

impl ModuleT for Cnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.shallow_clone();
        for (conv, norm) in &self.blocks {
            x = x.apply(conv).apply_t(norm, train).relu();
            // Small inputs stop shrinking rather than pool to nothing.
            let size = x.size();
            if size[2] >= 2 && size[3] >= 2 {
                x = x.max_pool2d_default(2);
            }
        }
        x.adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.output)
    }
}

/// Weights and batch-norm statistics of such a network.
pub fn parameter_count(channels: i64, filters: &[i64], classes: i64) -> i64 {
    let mut total = 0;
    let mut width = channels;
    for &f in filters {
        // Convolution (no bias), then the norm's weight, bias and its two
        // running statistics.
        total += width * f * 9 + 4 * f;
        width = f;
    }
    total + width * classes + classes
}

/// About the bytes a training batch of `batch` images takes: per block,
/// the convolution's, the norm's and the ReLU's outputs, the pool's, and a
/// gradient for each, at that block's resolution.
pub fn batch_memory(batch: u64, input: &ImageInput, filters: &[i64]) -> u64 {
    let (mut h, mut w) = (input.height as u64, input.width as u64);
    let mut values = input.channels as u64 * h * w;
    for &f in filters {
        values = values.saturating_add(f as u64 * h * w * 8);
        if h >= 2 && w >= 2 {
            h /= 2;
            w /= 2;
        }
    }
    batch.saturating_mul(values).saturating_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn any_input_size_gives_one_score_per_class() {
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Cnn::new(&vs.root(), 3, &FILTERS, 4);
        for (h, w) in [(32, 32), (5, 9), (1, 1)] {
            let out = net.forward_t(
                &Tensor::rand([2, 3, h, w], (Kind::Float, Device::Cpu)),
                false,
            );
            assert_eq!(out.size(), [2, 4], "{h}×{w}");
        }
        let counted: i64 = vs
            .variables()
            .values()
            .map(Tensor::numel)
            .map(|n| n as i64)
            .sum();
        assert_eq!(counted, parameter_count(3, &FILTERS, 4));
    }
}

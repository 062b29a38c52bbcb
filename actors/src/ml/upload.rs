//! The spec a user uploads with their own TorchScript model: its name, what
//! it reads, and how to read what it returns.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commands::SubmitError;
use crate::ml::image::{ImageInput, Resize};
use crate::ml::registry;

/// Most class labels a model may have.
pub const MAX_LABELS: u32 = 10_000;
/// Most feature columns a tabular model may read.
pub const MAX_FEATURES: u32 = 5_000;
/// Most bytes of labels or feature names a spec keeps: the spec travels in
/// its validation task's params, which are capped at 64 KiB.
pub const MAX_TEXT_BYTES: usize = 56 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Image,
    Tabular,
}

impl InputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Tabular => "tabular",
        }
    }
}

/// What the model's output holds, per row: raw scores (a softmax gives
/// probabilities) or probabilities already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    #[default]
    Logits,
    Probabilities,
}

/// A TorchScript model's spec, as uploaded with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadSpec {
    /// The model's name; each upload of a name is its next version.
    #[schemars(length(min = 1, max = registry::MAX_NAME_CHARS))]
    pub name: String,
    /// What the model reads: images, or rows of numeric columns.
    pub input: InputKind,
    /// Image models: the input width and height in pixels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::ml::image::MAX_INPUT_SIDE))]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = crate::ml::image::MAX_INPUT_SIDE))]
    pub height: Option<u32>,
    /// Image models: 3 (RGB, the default) or 1 (grayscale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3))]
    pub channels: Option<u8>,
    /// Image models: per-channel mean and standard deviation, applied to
    /// pixel values scaled to [0, 1]. Default 0 and 1 (no normalisation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// Image models: how an image is brought to the input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<Resize>,
    /// Tabular models: the CSV columns it reads, in input order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_FEATURES))]
    pub features: Option<Vec<String>>,
    /// Class names, in output order. Without them, classes are numbered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_LABELS))]
    pub labels: Option<Vec<String>>,
    #[serde(default)]
    pub output: Output,
}

impl UploadSpec {
    /// Checks the fields against each other, and fills in defaults.
    pub fn normalized(mut self) -> Result<Self, SubmitError> {
        let field = |f: &str| format!("spec.{f}");
        registry::check_name(&self.name).map_err(|m| SubmitError::param(&field("name"), m))?;
        match self.input {
            InputKind::Image => {
                for (name, missing) in [
                    ("width", self.width.is_none()),
                    ("height", self.height.is_none()),
                ] {
                    if missing {
                        return Err(SubmitError::param(
                            &field(name),
                            "is required for an image model",
                        ));
                    }
                }
                if self.features.is_some() {
                    return Err(SubmitError::param(
                        &field("features"),
                        "is for tabular models; an image model has width and height",
                    ));
                }
                let channels = self.channels.unwrap_or(3);
                self.channels = Some(channels);
                self.mean
                    .get_or_insert_with(|| vec![0.0; channels as usize]);
                self.std.get_or_insert_with(|| vec![1.0; channels as usize]);
                self.resize.get_or_insert(Resize::Stretch);
                if let Some(input) = self.image_input() {
                    input
                        .check()
                        .map_err(|(f, m)| SubmitError::param(&field(f), m))?;
                }
            }
            InputKind::Tabular => {
                for (name, given) in [
                    ("width", self.width.is_some()),
                    ("height", self.height.is_some()),
                    ("channels", self.channels.is_some()),
                    ("mean", self.mean.is_some()),
                    ("std", self.std.is_some()),
                    ("resize", self.resize.is_some()),
                ] {
                    if given {
                        return Err(SubmitError::param(
                            &field(name),
                            "is for image models; a tabular model has features",
                        ));
                    }
                }
                let features = self.features.as_deref().ok_or_else(|| {
                    SubmitError::param(&field("features"), "is required for a tabular model")
                })?;
                let mut seen = std::collections::HashSet::new();
                if let Some(dup) = features.iter().find(|f| !seen.insert(f.as_str())) {
                    return Err(SubmitError::param(
                        &field("features"),
                        format!("names column {} twice", crate::error::quote(dup)),
                    ));
                }
                check_text(&field("features"), features)?;
            }
        }
        if let Some(labels) = &self.labels {
            check_text(&field("labels"), labels)?;
        }
        Ok(self)
    }

    /// An image model's input description (after `normalized`).
    pub fn image_input(&self) -> Option<ImageInput> {
        Some(ImageInput {
            width: self.width?,
            height: self.height?,
            channels: self.channels?,
            mean: self.mean.clone()?,
            std: self.std.clone()?,
            resize: self.resize.unwrap_or_default(),
        })
    }

    /// The shape of an input batch of `n`.
    pub fn input_shape(&self, n: i64) -> Vec<i64> {
        match (self.input, self.image_input(), &self.features) {
            (InputKind::Image, Some(i), _) => i.shape(n).to_vec(),
            (_, _, Some(f)) => vec![n, f.len() as i64],
            _ => vec![n],
        }
    }
}

fn check_text(field: &str, items: &[String]) -> Result<(), SubmitError> {
    let bytes: usize = items.iter().map(String::len).sum();
    if bytes > MAX_TEXT_BYTES {
        return Err(SubmitError::param(
            field,
            format!("comes to {bytes} bytes; at most {MAX_TEXT_BYTES} are kept"),
        ));
    }
    if items.iter().any(|i| i.trim().is_empty()) {
        return Err(SubmitError::param(field, "must not hold empty names"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> Result<UploadSpec, SubmitError> {
        serde_json::from_value::<UploadSpec>(value)
            .unwrap()
            .normalized()
    }

    fn field(r: Result<UploadSpec, SubmitError>) -> String {
        match r.unwrap_err() {
            SubmitError::InvalidParams { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_specs_get_defaults_and_are_checked() {
        let s = spec(json!({"name": "net", "input": "image", "width": 32, "height": 24})).unwrap();
        let i = s.image_input().unwrap();
        assert_eq!(
            (i.channels, i.mean.len(), i.resize),
            (3, 3, Resize::Stretch)
        );
        assert_eq!(s.input_shape(2), vec![2, 3, 24, 32]);
        assert_eq!(
            field(spec(json!({"name": "net", "input": "image", "width": 32}))),
            "spec.height"
        );
        assert_eq!(
            field(spec(
                json!({"name": "net", "input": "image", "width": 8, "height": 8, "channels": 1, "mean": [0.5, 0.5]})
            )),
            "spec.mean"
        );
        assert_eq!(
            field(spec(
                json!({"name": "net", "input": "image", "width": 8, "height": 8, "std": [0, 1, 1]})
            )),
            "spec.std"
        );
        assert_eq!(
            field(spec(
                json!({"name": "net", "input": "image", "width": 8, "height": 8, "features": ["a"]})
            )),
            "spec.features"
        );
    }

    #[test]
    fn tabular_specs_need_unique_features() {
        let s = spec(json!({"name": "t", "input": "tabular", "features": ["a", "b"]})).unwrap();
        assert_eq!(s.input_shape(4), vec![4, 2]);
        assert_eq!(
            field(spec(json!({"name": "t", "input": "tabular"}))),
            "spec.features"
        );
        assert_eq!(
            field(spec(
                json!({"name": "t", "input": "tabular", "features": ["a", "a"]})
            )),
            "spec.features"
        );
        assert_eq!(
            field(spec(
                json!({"name": "t", "input": "tabular", "features": ["a"], "width": 3})
            )),
            "spec.width"
        );
        assert_eq!(
            field(spec(
                json!({"name": "../x", "input": "tabular", "features": ["a"]})
            )),
            "spec.name"
        );
    }
}

//! A trained model's description: which columns it reads, how it encodes
//! them, and what it predicts. Stored as `model.json` next to the weights and
//! in the `models` table, so a model can be used without its training data.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, JobError};
use crate::ml::records::Record;
use crate::ml::table::{is_missing, parse_number, ColumnKind};

pub const FORMAT: &str = "mlq.mlp.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Classification,
    Regression,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::Regression => "regression",
        }
    }
}

/// How one input column becomes network inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Feature {
    /// Standardized with the training rows' mean and standard deviation;
    /// a missing value becomes the mean.
    Numeric { name: String, mean: f64, std: f64 },
    /// One-hot over the levels seen in training; a missing or unseen value
    /// becomes all zeros.
    Categorical { name: String, levels: Vec<String> },
    /// A number handed to the model as it is (a user's TorchScript model
    /// does its own scaling); a missing one is an error.
    Raw { name: String },
}

impl Feature {
    pub fn name(&self) -> &str {
        match self {
            Self::Numeric { name, .. } | Self::Categorical { name, .. } | Self::Raw { name } => {
                name
            }
        }
    }

    pub fn kind(&self) -> ColumnKind {
        match self {
            Self::Numeric { .. } | Self::Raw { .. } => ColumnKind::Numeric,
            Self::Categorical { .. } => ColumnKind::Categorical,
        }
    }

    fn width(&self) -> usize {
        match self {
            Self::Numeric { .. } | Self::Raw { .. } => 1,
            Self::Categorical { levels, .. } => levels.len(),
        }
    }
}

/// Scale of a regression target: the network predicts standardized values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scale {
    pub mean: f64,
    pub std: f64,
}

impl Scale {
    /// From running moments; a constant or empty column gets std 1.
    pub fn from_moments(m: &crate::ml::table::Moments) -> Self {
        let std = m.std();
        let std = if std > 1e-12 * m.mean.abs().max(1.0) {
            std
        } else {
            1.0
        };
        Self { mean: m.mean, std }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub format: String,
    pub kind: ProblemKind,
    pub target: String,
    pub features: Vec<Feature>,
    /// Class labels, in output order (classification only).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Target scale (regression only).
    #[serde(default)]
    pub target_scale: Option<Scale>,
    pub hidden: Vec<i64>,
}

impl ModelSpec {
    pub fn input_width(&self) -> usize {
        self.features.iter().map(Feature::width).sum()
    }

    pub fn output_width(&self) -> usize {
        match self.kind {
            ProblemKind::Classification => self.classes.len(),
            ProblemKind::Regression => 1,
        }
    }

    /// Parses a stored spec, rejecting ones this version cannot run.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, JobError> {
        let spec: Self = serde_json::from_value(value.clone()).map_err(|e| {
            JobError::new(
                ErrorCode::ModelIncompatible,
                format!("model spec is unreadable: {e}"),
            )
        })?;
        if spec.format != FORMAT {
            return Err(JobError::new(
                ErrorCode::ModelIncompatible,
                format!("model format {} is not {FORMAT}", spec.format),
            ));
        }
        Ok(spec)
    }

    /// Encodes one record's features into `out` (`input_width` values,
    /// zeroed): numbers standardized (a missing one becomes the mean),
    /// levels one-hot (a missing or unseen one becomes all zeros, however
    /// many distinct values the file holds). `columns` gives each
    /// feature's column in the record.
    pub fn encode_row(
        &self,
        row: usize,
        record: &Record<'_>,
        columns: &[usize],
        out: &mut [f32],
    ) -> Result<(), JobError> {
        let mut offset = 0;
        for (feature, &i) in self.features.iter().zip(columns) {
            let cell = record.get(i).unwrap_or("").trim();
            match feature {
                Feature::Numeric { name, mean, std } => {
                    let v = if is_missing(cell) {
                        *mean
                    } else {
                        f64::from(parse_number(row, name, cell)?)
                    };
                    out[offset] = ((v - mean) / std) as f32;
                }
                Feature::Raw { name } => {
                    if is_missing(cell) {
                        return Err(JobError::new(
                            ErrorCode::MissingValue,
                            format!(
                                "row {row}: column {} is empty, and the model needs a number",
                                crate::error::quote(name)
                            ),
                        ));
                    }
                    out[offset] = parse_number(row, name, cell)?;
                }
                Feature::Categorical { levels, .. } => {
                    if !is_missing(cell) {
                        if let Ok(slot) = levels.binary_search_by(|l| l.as_str().cmp(cell)) {
                            out[offset + slot] = 1.0;
                        }
                    }
                }
            }
            offset += feature.width();
        }
        Ok(())
    }
}

/// Largest encoded matrix (rows × network inputs) a job may build: 1.2 GB
/// of f32. Training holds it once: it is parsed straight into the tensor,
/// and the train and validation rows are views of it.
pub const MAX_CELLS: usize = 300_000_000;

/// Refuses a `rows × width` matrix over the memory budget.
pub fn check_cells(rows: usize, width: usize) -> Result<(), JobError> {
    match rows.checked_mul(width) {
        Some(cells) if cells <= MAX_CELLS => Ok(()),
        _ => Err(JobError::new(
            ErrorCode::DataTooLarge,
            format!(
                "{rows} rows × {width} encoded inputs exceed the limit of {MAX_CELLS} values; \
                 use fewer rows, or leave wide text columns out with the `features` param"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::CancelToken;

    #[test]
    fn encodes_standardized_numbers_and_one_hot_levels() {
        let spec = ModelSpec {
            format: FORMAT.into(),
            kind: ProblemKind::Regression,
            target: "y".into(),
            // Training saw "blue" and "red": "green" is unseen and encodes
            // as zeros, as do the thousands of other unseen values.
            features: vec![
                Feature::Numeric {
                    name: "x".into(),
                    mean: 2.0,
                    std: 1.0,
                },
                Feature::Categorical {
                    name: "c".into(),
                    levels: vec!["blue".into(), "red".into()],
                },
            ],
            classes: vec![],
            target_scale: None,
            hidden: vec![],
        };
        assert_eq!(spec.input_width(), 3);
        let mut text = String::from("c,x\ngreen,1\nred,3\n,\n");
        for i in 0..5000 {
            text.push_str(&format!("unseen{i},2\n"));
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        let headers = crate::ml::table::read_headers(f.path()).unwrap();
        let mut rows = Vec::new();
        crate::ml::table::for_each_record(
            f.path(),
            &headers,
            &CancelToken::default(),
            |row, record| {
                let mut out = vec![0.0; 3];
                spec.encode_row(row, record, &[1, 0], &mut out)?;
                rows.push(out);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(rows[0], [-1.0, 0.0, 0.0]);
        assert_eq!(rows[1], [1.0, 0.0, 1.0]);
        assert_eq!(rows[2], [0.0, 0.0, 0.0], "missing: the mean, no level");
        assert!(rows[3..].iter().all(|r| *r == [0.0, 0.0, 0.0]));
    }
}

//! A trained model's description: which columns it reads, how it encodes
//! them, and what it predicts. Stored as `model.json` next to the weights and
//! in the `models` table, so a model can be used without its training data.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, JobError};
use crate::ml::table::{Column, ColumnData, ColumnKind};

pub const FORMAT: &str = "mlq.mlp.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Feature {
    pub fn name(&self) -> &str {
        match self {
            Self::Numeric { name, .. } | Self::Categorical { name, .. } => name,
        }
    }

    pub fn kind(&self) -> ColumnKind {
        match self {
            Self::Numeric { .. } => ColumnKind::Numeric,
            Self::Categorical { .. } => ColumnKind::Categorical,
        }
    }

    fn width(&self) -> usize {
        match self {
            Self::Numeric { .. } => 1,
            Self::Categorical { levels, .. } => levels.len(),
        }
    }

    /// Fits the encoding on the training rows only, so validation metrics
    /// are honest.
    pub fn fit(name: &str, data: &ColumnData, train_rows: &[usize]) -> Result<Self, JobError> {
        Ok(match data {
            ColumnData::Numeric(values) => {
                let Scale { mean, std } = Scale::fit(name, values, train_rows)?;
                Self::Numeric {
                    name: name.to_owned(),
                    mean,
                    std,
                }
            }
            ColumnData::Categorical { levels, .. } => Self::Categorical {
                name: name.to_owned(),
                levels: levels.clone(),
            },
        })
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

    /// Mean and standard deviation of column `name`'s `values` over `rows`,
    /// skipping missing (NaN) values. A constant column gets std 1, so
    /// scaling never divides by zero. Values are divided by their largest
    /// magnitude first, so sums of huge values cannot overflow.
    pub fn fit(name: &str, values: &[f32], rows: &[usize]) -> Result<Self, JobError> {
        let present: Vec<f64> = rows
            .iter()
            .map(|&r| f64::from(values[r]))
            .filter(|v| !v.is_nan())
            .collect();
        let n = present.len().max(1) as f64;
        let peak = present.iter().fold(0f64, |m, v| m.max(v.abs()));
        let unit = if peak > 0.0 { peak } else { 1.0 };
        let mean = present.iter().map(|v| v / unit).sum::<f64>() / n;
        let var = present
            .iter()
            .map(|v| (v / unit - mean).powi(2))
            .sum::<f64>()
            / n;
        let (mean, std) = (mean * unit, var.sqrt() * unit);
        if !mean.is_finite() || !std.is_finite() {
            return Err(JobError::new(
                ErrorCode::NonFiniteValue,
                format!("column \"{name}\" has values too large to scale"),
            ));
        }
        let std = if std > 1e-12 * unit.max(1.0) {
            std
        } else {
            1.0
        };
        Ok(Self { mean, std })
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

    /// Encodes `columns` (each feature column with its kind; others are
    /// ignored) into `out`, a row-major `rows × input_width` matrix, writing
    /// row `r` at row `place(r)`. Columns are consumed one by one, so the
    /// parsed table shrinks as the matrix fills.
    pub fn encode_into(
        &self,
        columns: Vec<Column>,
        out: &mut [f32],
        place: impl Fn(usize) -> usize,
    ) -> Result<(), JobError> {
        let width = self.input_width();
        let mut columns: Vec<Option<Column>> = columns.into_iter().map(Some).collect();
        let mut offset = 0;
        for feature in &self.features {
            let column = columns
                .iter_mut()
                .find(|c| c.as_ref().is_some_and(|c| c.name == feature.name()))
                .and_then(Option::take)
                .ok_or_else(|| {
                    JobError::new(
                        ErrorCode::UnknownColumn,
                        format!("the model needs column \"{}\"", feature.name()),
                    )
                })?;
            match (feature, column.data) {
                (Feature::Numeric { mean, std, .. }, ColumnData::Numeric(values)) => {
                    for (row, v) in values.iter().enumerate() {
                        let v = if v.is_nan() { *mean } else { f64::from(*v) };
                        out[place(row) * width + offset] = ((v - mean) / std) as f32;
                    }
                }
                (
                    Feature::Categorical { levels, .. },
                    ColumnData::Categorical {
                        codes,
                        levels: seen,
                    },
                ) => {
                    // Map this file's levels onto the training levels by value.
                    let lookup: Vec<Option<usize>> =
                        seen.iter().map(|l| levels.binary_search(l).ok()).collect();
                    for (row, &code) in codes.iter().enumerate() {
                        if let Some(Some(slot)) = lookup.get(code as usize) {
                            out[place(row) * width + offset + slot] = 1.0;
                        }
                    }
                }
                _ => {
                    return Err(JobError::new(
                        ErrorCode::ModelIncompatible,
                        format!(
                            "column \"{}\" has the wrong type for this model",
                            feature.name()
                        ),
                    ))
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

impl ModelSpec {
    /// Refuses data whose encoded matrix would not fit the memory budget,
    /// before allocating it.
    pub fn check_size(&self, rows: usize) -> Result<(), JobError> {
        check_cells(rows, self.input_width())
    }
}

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
    use crate::ml::table::Table;

    #[test]
    fn huge_values_scale_without_overflow() {
        let s = Scale::fit("x", &[3e38, -3e38, 3e38], &[0, 1, 2]).unwrap();
        assert!(s.mean.is_finite() && s.std.is_finite(), "{s:?}");
        let s = Scale::fit("x", &[5.0, 5.0], &[0, 1]).unwrap();
        assert_eq!(
            s,
            Scale {
                mean: 5.0,
                std: 1.0
            }
        );
    }

    #[test]
    fn encodes_standardized_numbers_and_one_hot_levels() {
        let table = Table {
            rows: 3,
            headers: vec![],
            columns: vec![
                Column {
                    name: "x".into(),
                    data: ColumnData::Numeric(vec![1.0, 3.0, f32::NAN]),
                },
                Column {
                    name: "c".into(),
                    data: ColumnData::Categorical {
                        codes: vec![0, 1, crate::ml::table::MISSING_CODE],
                        levels: vec!["green".into(), "red".into()],
                    },
                },
            ],
        };
        let x = Feature::fit("x", &table.columns[0].data, &[0, 1]).unwrap();
        assert_eq!(
            x,
            Feature::Numeric {
                name: "x".into(),
                mean: 2.0,
                std: 1.0
            }
        );
        let spec = ModelSpec {
            format: FORMAT.into(),
            kind: ProblemKind::Regression,
            target: "y".into(),
            // Training saw "blue" and "red": "green" is unseen and encodes as zeros.
            features: vec![
                x,
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
        let mut encoded = vec![0.0; 9];
        spec.encode_into(table.columns.clone(), &mut encoded, |r| r)
            .unwrap();
        assert_eq!(encoded, vec![-1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        // Rows land where `place` puts them.
        let mut reversed = vec![0.0; 9];
        spec.encode_into(table.columns, &mut reversed, |r| 2 - r)
            .unwrap();
        assert_eq!(reversed, vec![0.0, 0.0, 0.0, 1.0, 0.0, 1.0, -1.0, 0.0, 0.0]);
    }
}

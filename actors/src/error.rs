//! How a job ends when it does not succeed.
//!
//! Every failure carries a stable, machine-readable code and a message a user
//! can act on. Whether it is retried is decided here, once: bad input fails
//! at once (running it again would fail the same way), while trouble reaching
//! storage or the database is transient and earns another attempt.

use serde::Serialize;

/// Stable error codes. They are part of the API: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Params that passed submit-time checks but cannot be used.
    InvalidParams,
    /// A task needs an input file it was not given.
    MissingInput,
    EmptyFile,
    NoHeader,
    NotCsv,
    RaggedRow,
    InvalidNumber,
    NonFiniteValue,
    MissingValue,
    UnknownColumn,
    DuplicateColumn,
    TooManyCategories,
    /// The encoded data would not fit the memory budget.
    DataTooLarge,
    /// Training produced a non-finite loss.
    Diverged,
    SingleClass,
    TooFewRows,
    ModelNotFound,
    ModelIncompatible,
    /// The job panicked; the pool caught it and stayed at full size.
    WorkerPanic,
    /// libtorch reported an error.
    Torch,
    /// Reading inputs or writing artifacts failed.
    Storage,
    /// The worker's lease expired too often (the process running it died).
    LeaseExpired,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParams => "invalid_params",
            Self::MissingInput => "missing_input",
            Self::EmptyFile => "empty_file",
            Self::NoHeader => "no_header",
            Self::NotCsv => "not_csv",
            Self::RaggedRow => "ragged_row",
            Self::InvalidNumber => "invalid_number",
            Self::NonFiniteValue => "non_finite_value",
            Self::MissingValue => "missing_value",
            Self::UnknownColumn => "unknown_column",
            Self::DuplicateColumn => "duplicate_column",
            Self::TooManyCategories => "too_many_categories",
            Self::DataTooLarge => "data_too_large",
            Self::Diverged => "diverged",
            Self::SingleClass => "single_class",
            Self::TooFewRows => "too_few_rows",
            Self::ModelNotFound => "model_not_found",
            Self::ModelIncompatible => "model_incompatible",
            Self::WorkerPanic => "worker_panic",
            Self::Torch => "torch_error",
            Self::Storage => "storage_error",
            Self::LeaseExpired => "lease_expired",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }

    /// Transient failures are worth another attempt; everything else would
    /// fail the same way again.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Storage)
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a job ends with.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, "the task was cancelled")
    }

    pub fn storage(message: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::Storage, message.to_string())
    }

    pub fn is_cancelled(&self) -> bool {
        self.code == ErrorCode::Cancelled
    }

    pub fn is_transient(&self) -> bool {
        self.code.is_transient()
    }

    /// The `{code, message}` object stored with a failed task.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }
}

impl From<tch::TchError> for JobError {
    fn from(e: tch::TchError) -> Self {
        Self::new(ErrorCode::Torch, format!("libtorch: {e}"))
    }
}

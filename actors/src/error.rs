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
    /// The header has more columns than a file may have.
    TooManyColumns,
    /// One cell, or one record, is larger than the limit.
    FieldTooLarge,
    /// A metric or prediction came out NaN or infinite.
    NonFiniteResult,
    /// Training produced a non-finite loss.
    Diverged,
    SingleClass,
    TooFewRows,
    ModelNotFound,
    ModelIncompatible,
    /// An uploaded model failed its check: not TorchScript, the wrong
    /// output shape, or it threw on a dummy input.
    ModelInvalid,
    /// The inputs are not what the model reads (a CSV for an image model).
    WrongInput,
    /// A zip archive that cannot be read.
    InvalidArchive,
    /// A zip archive over the entry or inflated-size caps.
    ArchiveTooLarge,
    /// No input image could be used; each file's error is in the message.
    NoImages,
    /// The job panicked; the pool caught it and stayed at full size.
    WorkerPanic,
    /// libtorch reported an error.
    Torch,
    /// Reading inputs or writing artifacts failed.
    Storage,
    /// The worker's lease expired too often (the process running it died).
    LeaseExpired,
    /// Two processes died while running the task: its input is taken to
    /// have killed them, and it is not run a third time.
    WorkerCrashed,
    /// The task ran past its time limit.
    Timeout,
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
            Self::TooManyColumns => "too_many_columns",
            Self::FieldTooLarge => "field_too_large",
            Self::NonFiniteResult => "non_finite_result",
            Self::Diverged => "diverged",
            Self::SingleClass => "single_class",
            Self::TooFewRows => "too_few_rows",
            Self::ModelNotFound => "model_not_found",
            Self::ModelIncompatible => "model_incompatible",
            Self::ModelInvalid => "model_invalid",
            Self::WrongInput => "wrong_input",
            Self::InvalidArchive => "invalid_archive",
            Self::ArchiveTooLarge => "archive_too_large",
            Self::NoImages => "no_images",
            Self::WorkerPanic => "worker_panic",
            Self::Torch => "torch_error",
            Self::Storage => "storage_error",
            Self::LeaseExpired => "lease_expired",
            Self::WorkerCrashed => "worker_crashed",
            Self::Timeout => "timeout",
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

/// What a cancelled task's error says (also written by the queue's SQL).
pub const CANCELLED_MESSAGE: &str = "the task was cancelled";

/// Longest error message kept, in bytes. A message quotes user data (cell
/// values, column names, libtorch's text); whatever the input, the task's
/// JSON, the task list and the live feed stay small.
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Longest quoted value in a message, in characters.
pub const MAX_QUOTE_CHARS: usize = 100;

/// `value` in double quotes, cut to [`MAX_QUOTE_CHARS`] characters with a
/// note of how long it really was: messages name a bad cell without
/// carrying it whole.
pub fn quote(value: &str) -> String {
    let mut chars = value.char_indices();
    match chars.nth(MAX_QUOTE_CHARS) {
        None => format!("\"{value}\""),
        Some((end, _)) => format!("\"{}…\" ({} bytes)", &value[..end], value.len()),
    }
}

/// `value` cut to [`MAX_QUOTE_CHARS`] characters, marked with an ellipsis
/// when cut: for user text shown inline (labels in results), unquoted.
pub fn shorten(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTE_CHARS) {
        None => value.to_owned(),
        Some((end, _)) => format!("{}…", &value[..end]),
    }
}

/// `text` cut to at most `max` bytes on a character boundary, marked with
/// an ellipsis when cut.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
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
            message: truncate(message.into(), MAX_MESSAGE_BYTES),
        }
    }

    pub fn cancelled() -> Self {
        Self::new(ErrorCode::Cancelled, CANCELLED_MESSAGE)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_messages_stay_small() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(10_000);
        let q = quote(&long);
        assert!(q.chars().count() < MAX_QUOTE_CHARS + 30, "{q}");
        assert!(q.contains("20000 bytes"), "{q}");
        let e = JobError::new(ErrorCode::InvalidNumber, "x".repeat(1 << 20));
        assert!(e.message.len() <= MAX_MESSAGE_BYTES);
        assert!(e.message.ends_with('…'));
        let e = JobError::new(ErrorCode::InvalidNumber, "ü".repeat(5000));
        assert!(e.message.len() <= MAX_MESSAGE_BYTES);
    }
}

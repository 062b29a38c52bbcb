//! The one place errors become HTTP responses.
//!
//! Policy: anything the client can fix is a 4xx whose JSON body names the
//! problem (`{"error": {"code", "message", "field"?}}`); a database that is
//! down, or a process at its limits, is a 503 the client may retry after
//! `Retry-After`; anything else is a 500, never caused by input alone. A
//! 5xx body says only its code, a generic message and the request id: the
//! details (which may name hosts, keys or URLs) go to the log, redacted,
//! under the same id.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use mlq_actors::commands::SubmitError;
use mlq_actors::error::{truncate, MAX_MESSAGE_BYTES};
use mlq_actors::ports::ObjectError;

use crate::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("unknown command {command:?}; known commands: {known}")]
    UnknownCommand { command: String, known: String },
    #[error("invalid params: {field}: {message}")]
    InvalidParams { field: String, message: String },
    #[error("{0}")]
    MissingFile(String),
    #[error("{0}")]
    TooManyFiles(String),
    #[error("request body is larger than the limit of {limit} bytes (max_request_bytes)")]
    TooLarge { limit: u64 },
    #[error("the request's headers take more than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("the JSON body is larger than this endpoint's limit of {limit} bytes")]
    JsonTooLarge { limit: usize },
    #[error("file {name:?} is larger than the limit of {limit} bytes per file (max_file_bytes)")]
    FileTooLarge { name: String, limit: u64 },
    #[error("a request may carry at most {limit} files (max_files)")]
    TooManyParts { limit: usize },
    #[error("the upload took longer than {0:?}, half of orphan_grace; raise orphan_grace for slower uploads")]
    UploadTimeout(std::time::Duration),
    #[error("the upload sent nothing for {0:?} (upload_idle); nothing of it was kept")]
    UploadIdle(std::time::Duration),
    /// This process is at one of its limits; the client may retry later.
    #[error("{message}")]
    Busy {
        code: &'static str,
        message: String,
        retry_after: u32,
    },
    /// The caller is over one of their own limits (`quota_*`); the message
    /// names it, and `Retry-After` says when to try again.
    #[error("{0}")]
    OverQuota(crate::http::quota::Exceeded),
    #[error("{command} does not accept files of type {content_type:?}; accepted: {}", allowed.join(", "))]
    UnsupportedFileType {
        command: String,
        content_type: String,
        allowed: Vec<String>,
    },
    #[error("file {name:?} does not match its {algorithm} checksum: expected {expected}, received {actual}")]
    ChecksumMismatch {
        name: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },
    #[error("unsupported content type {content_type:?}: send {expected}")]
    UnsupportedMediaType {
        content_type: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Unauthorized(crate::auth::Unauthorized),
    /// Authenticated, or not needing to be, but refused all the same (a
    /// missing CSRF token, an Origin or Host not allowed).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{method} is not allowed here; allowed: {}", allowed.join(", "))]
    MethodNotAllowed {
        method: String,
        allowed: Vec<String>,
    },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("the requested range is outside the object's {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("object storage: {0}")]
    Storage(#[from] ObjectError),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Forbidden { code, .. } => code,
            Self::Unauthorized(_) => "unauthorized",
            Self::UnknownCommand { .. } => "unknown_command",
            Self::InvalidParams { .. } => "invalid_params",
            Self::MissingFile(_) => "missing_file",
            Self::TooManyFiles(_) => "too_many_files",
            Self::TooLarge { .. } | Self::JsonTooLarge { .. } => "payload_too_large",
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::FileTooLarge { .. } => "file_too_large",
            Self::TooManyParts { .. } => "too_many_parts",
            Self::UploadTimeout(_) => "upload_timeout",
            Self::UploadIdle(_) => "upload_idle",
            Self::Busy { code, .. } => code,
            Self::OverQuota(e) => e.code(),
            Self::UnsupportedFileType { .. } => "unsupported_file_type",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            Self::Db(e) => e.code(),
            Self::Storage(_) => "storage_error",
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::InvalidParams { field, message } => Self::InvalidParams { field, message },
            SubmitError::MissingFile(m) => Self::MissingFile(m),
            SubmitError::TooManyFiles(m) => Self::TooManyFiles(m),
        }
    }
}

impl From<crate::auth::Unauthorized> for ApiError {
    fn from(e: crate::auth::Unauthorized) -> Self {
        Self::Unauthorized(e)
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(e.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } | Self::UnknownCommand { .. } => StatusCode::BAD_REQUEST,
            Self::InvalidParams { .. } | Self::MissingFile(_) | Self::TooManyFiles(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::TooLarge { .. }
            | Self::JsonTooLarge { .. }
            | Self::FileTooLarge { .. }
            | Self::TooManyParts { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedFileType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UploadTimeout(_) | Self::UploadIdle(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::OverQuota(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ChecksumMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::Db(e) if e.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Db(_) | Self::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let mut response = HttpResponse::build(status);
        let body = if status.is_server_error() {
            let request_id = super::request_id::current();
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(code = self.code(), "request failed: {self}");
            } else {
                tracing::warn!(code = self.code(), "request refused: {self}");
            }
            let retry_after = match self {
                Self::Busy { retry_after, .. } => Some(*retry_after),
                _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
                _ => None,
            };
            if let Some(seconds) = retry_after {
                response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
            }
            json!({
                "code": self.code(),
                "message": self.public_message(),
                "request_id": request_id,
            })
        } else {
            // Messages may quote what the client sent: keep them small.
            let message = truncate(self.to_string(), MAX_MESSAGE_BYTES);
            let mut body = json!({ "code": self.code(), "message": message });
            if let Self::InvalidParams { field, .. } = self {
                body["field"] = json!(truncate(field.clone(), 256));
            }
            if let Self::OverQuota(e) = self {
                body["limit"] = json!(e.limit);
                response.insert_header((
                    actix_web::http::header::RETRY_AFTER,
                    e.retry_after.to_string(),
                ));
            }
            body
        };
        if let Self::Unauthorized(why) = self {
            // RFC 6750: say the scheme, and whether what was sent was bad.
            let challenge = match why {
                crate::auth::Unauthorized::Missing => r#"Bearer realm="mlq""#,
                _ => r#"Bearer realm="mlq", error="invalid_token""#,
            };
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        if let Self::MethodNotAllowed { allowed, .. } = self {
            response.insert_header((actix_web::http::header::ALLOW, allowed.join(", ")));
        }
        if let Self::RangeNotSatisfiable { size } = self {
            response.insert_header((
                actix_web::http::header::CONTENT_RANGE,
                format!("bytes */{size}"),
            ));
        }
        response.json(json!({ "error": body }))
    }
}

impl ApiError {
    /// What a 5xx body says: nothing of the cause but its kind.
    fn public_message(&self) -> String {
        match self {
            // Written by mlq itself, about its own limits: safe and useful.
            Self::Busy { message, .. } => message.clone(),
            Self::Db(e) if e.is_unavailable() => {
                "the database is unavailable; retry shortly (the request id names the details \
                 in the server log)"
                    .into()
            }
            _ => "internal error; the server log has the details under this request id".into(),
        }
    }
}

/// Turns actix's own extractor errors (bad JSON, bad path or query) into the
/// same JSON shape.
pub fn extractor_error(code: &'static str, err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::bad_request(code, err.to_string()).into()
}

//! `POST /api/v1/tasks`: reading a submission, `multipart/form-data` with
//! files or JSON, and queueing its task.
//!
//! File parts stream straight into the object store as they arrive, hashed
//! on the way; nothing is held whole in memory. The stored inputs belong to
//! the request until the task row that references them commits: a request
//! that fails part way (bad field, over a limit, idle, client gone, server
//! shutting down) deletes what it stored. Only when the insert's own outcome
//! is unknown (the connection dropped after it was sent) are they kept, for
//! the orphan collector to settle once the row is known to be absent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_multipart::{Field, Multipart};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::{StreamExt, TryStreamExt};
use md5::Digest;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use mlq_actors::commands::validate_model::ValidateModel;
use mlq_actors::commands::{Command, Commands};
use mlq_actors::ml::registry::ModelRef;
use mlq_actors::ml::upload::UploadSpec;
use mlq_actors::ports::{ObjectKey, ObjectStore, Upload};
use mlq_actors::task::InputFile;

use super::error::ApiError;
use super::openapi::ErrorBody;
use super::routes::Router;
use super::tasks::TaskView;
use super::AppState;
use crate::auth::Caller;
use crate::db::{self, models::ModelRow, tasks::TaskRecord, users::Viewer, DbError};
use crate::storage::Janitor;

pub fn config(r: &mut Router) {
    r.post("/tasks", create);
}

/// Submits a task: its command, params and input files. Files stream into
/// storage as they arrive; the task is queued once all are stored and
/// checked. A command without files may also be sent as JSON.
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    tag = "tasks",
    request_body(content(
        (TaskForm = "multipart/form-data"),
        (JsonSubmission = "application/json"),
    )),
    responses(
        (status = 202, description = "The task, queued", body = TaskView,
            headers(("Location" = String, description = "The task's URL"))),
        (status = 408, description = "The upload took too long, or stalled", body = ErrorBody),
        (status = 409, description = "A model the params name is not ready (`model_not_ready`)", body = ErrorBody),
        (status = 415, description = "Neither multipart/form-data nor JSON, or a file type the command does not take", body = ErrorBody),
        (status = 422, description = "Params, files or checksums that are not valid; `field` names the param", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    refuse_when_stopping(&state)?;
    let id = Uuid::new_v4();
    let accepted = accept(&req, payload, &state, &caller, id, Form::Task).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((header::LOCATION, format!("/api/v1/tasks/{id}")))
        .json(TaskView::from(accepted.task)))
}

pub(super) fn refuse_when_stopping(state: &AppState) -> Result<(), ApiError> {
    if state.stopping.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::Busy {
            code: "shutting_down",
            message: "this process is shutting down; send the request to another one, or \
                      retry shortly"
                .into(),
            retry_after: 1,
        });
    }
    Ok(())
}

/// What a request submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `POST /api/v1/tasks`: `command`, `params` and `file` parts, or JSON.
    Task,
    /// `POST /api/v1/models`: `spec` and one `file` part; queued as its
    /// `validate_model` task, with the model registered as `validating`.
    Model,
}

/// A queued task, and the model it validates for [`Form::Model`].
pub(super) struct Accepted {
    pub task: TaskRecord,
    pub model: Option<ModelRow>,
}

/// Reads a submission and queues its task: the one place that owns stored
/// inputs until their row commits.
pub(super) async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    form: Form,
) -> Result<Accepted, ApiError> {
    let started = Instant::now();
    let mut stored = StoredInputs::new(state);
    let result = async {
        let submission = read(req, payload, state, caller, id, form, &mut stored).await?;
        // Checked again at the last moment: a file stored early in an upload
        // that took longer could already have been collected as an orphan.
        if started.elapsed() > state.limits.max_upload_time {
            return Err(Registered::Refused(ApiError::UploadTimeout(
                state.limits.max_upload_time,
            )));
        }
        register(state, caller, id, &submission, form, &mut stored).await
    }
    .await;
    match result {
        Ok(task) => {
            stored.keep();
            Ok(task)
        }
        Err(Registered::Refused(e)) => {
            // Refused bytes were still sent: they count against the day's
            // uploads, or failing at the last moment would cost nothing.
            let received: i64 = stored.inputs.iter().map(|i| i.size).sum();
            stored.discard().await;
            if received > 0 {
                count_refused(state, caller, received).await;
            }
            Err(e)
        }
        Err(Registered::Unknown(e)) => match committed(state, id).await {
            Some(Some(accepted)) => {
                stored.keep();
                state.announcer.queued(id, accepted.task.seq);
                tracing::info!(task = %id, "the task was queued although its insert's answer was lost");
                Ok(accepted)
            }
            Some(None) => {
                // Not there now; an insert still in flight could yet land,
                // so its files are left to the orphan collector.
                stored.keep();
                Err(e)
            }
            None => {
                stored.keep();
                Err(e)
            }
        },
    }
}

/// How registering a submission failed.
enum Registered {
    /// The task certainly does not exist.
    Refused(ApiError),
    /// The insert may or may not have committed.
    Unknown(ApiError),
}

impl<E: Into<ApiError>> From<E> for Registered {
    fn from(e: E) -> Self {
        Self::Refused(e.into())
    }
}

/// Counts the bytes a refused submission stored against the user's day.
async fn count_refused(state: &AppState, caller: &Caller, bytes: i64) {
    let counted = async {
        let client = state.db.get().await?;
        db::usage::add_upload(&client, caller.user.id, bytes).await
    }
    .await;
    if let Err(e) = counted {
        tracing::warn!(user = %caller.user.name, bytes, "could not count a refused upload: {e}");
    }
}

/// The task as committed, if it was: `Some(None)` when it certainly is not
/// there now, `None` when that cannot be told either.
async fn committed(state: &AppState, id: Uuid) -> Option<Option<Accepted>> {
    let client = state.db.get().await.ok()?;
    let Some(task) = db::tasks::get(&client, id, Viewer::SYSTEM).await.ok()? else {
        return Some(None);
    };
    // The task is there, so its model is too (one transaction); a failed
    // lookup must not turn a committed upload into an error.
    let model = db::models::by_task(&client, id).await.ok().flatten();
    Some(Some(Accepted { task, model }))
}

async fn register(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
    submission: &Submission,
    form: Form,
    stored: &mut StoredInputs,
) -> Result<Accepted, Registered> {
    let command = super::command_or_internal(state, &submission.command, form)?;
    let checked = command
        .check(submission.params.clone(), submission.inputs.len())
        .map_err(ApiError::from)?;
    command
        .check_inputs(&checked.params, &submission.inputs)
        .map_err(ApiError::from)?;
    let mut client = state.submissions.get().await.map_err(ApiError::from)?;
    let mut params = checked.params;
    let models = pin_models(
        &client,
        caller.viewer(),
        &checked.models,
        checked.model_input,
        &mut params,
    )
    .await?;
    // The model an upload registers, with its spec's defaults filled in.
    let upload = match form {
        Form::Task => None,
        Form::Model => {
            let spec: UploadSpec = serde_json::from_value(params["spec"].take()).map_err(|e| {
                ApiError::InvalidParams {
                    field: "spec".into(),
                    message: e.to_string(),
                }
            })?;
            let spec = spec.normalized().map_err(ApiError::from)?;
            params["spec"] = serde_json::to_value(&spec).unwrap_or_default();
            Some(spec)
        }
    };
    stored.committing = true;
    let unknown = |e: DbError| match e {
        // The server answered: the statement failed, nothing committed.
        DbError::Query(ref q) if q.as_db_error().is_some() => Registered::Refused(e.into()),
        DbError::Query(_) => Registered::Unknown(e.into()),
        e => Registered::Refused(e.into()),
    };
    let tx = client.transaction().await.map_err(|e| unknown(e.into()))?;
    let bytes: i64 = submission.inputs.iter().map(|i| i.size).sum();
    state
        .quotas
        .admit(&tx, &caller.user, bytes.max(0) as u64)
        .await
        .map_err(Registered::Refused)?;
    let task = db::tasks::insert(
        &tx,
        db::tasks::NewTask {
            id,
            owner: caller.user.id,
            command: &submission.command,
            params: &params,
            max_attempts: state.max_attempts,
            inputs: &submission.inputs,
            models: &models,
        },
    )
    .await
    .map_err(unknown)?
    .ok_or_else(|| {
        Registered::Refused(ApiError::Conflict {
            code: "model_not_ready",
            message: "a model the task reads was deleted or is no longer ready".into(),
        })
    })?;
    let model = match (&upload, submission.inputs.first()) {
        (Some(spec), Some(file)) => Some(
            db::models::insert_uploaded(&tx, Uuid::new_v4(), id, spec, file)
                .await
                .map_err(unknown)?,
        ),
        _ => None,
    };
    tx.commit().await.map_err(|e| unknown(e.into()))?;
    state.announcer.queued(id, task.seq);
    match &model {
        Some(m) => {
            tracing::info!(task = %id, model = %m.id, name = %m.name, version = m.version, "model uploaded; validating")
        }
        None => {
            tracing::info!(task = %id, user = %caller.user.name, command = %submission.command, inputs = submission.inputs.len(), "task queued")
        }
    }
    Ok(Accepted { task, model })
}

/// Looks up the models a task names, which must be ready, and pins them:
/// the stored params name each by id, so the task runs the version it was
/// submitted with whatever is registered meanwhile.
async fn pin_models(
    client: &deadpool_postgres::Client,
    viewer: Viewer,
    models: &[(&'static str, ModelRef)],
    model_input: Option<(&'static str, &'static str)>,
    params: &mut Value,
) -> Result<Vec<Uuid>, ApiError> {
    let mut ids = Vec::with_capacity(models.len());
    for (field, model) in models {
        let row = db::models::resolve(client, model, viewer)
            .await?
            .ok_or_else(|| ApiError::InvalidParams {
                field: (*field).into(),
                message: match model {
                    ModelRef::Latest(name) => format!("no ready model named {name}"),
                    other => format!("no model {other}"),
                },
            })?;
        if row.status != "ready" {
            return Err(ApiError::Conflict {
                code: "model_not_ready",
                message: format!(
                    "model {}@{} is {}{}",
                    row.name,
                    row.version,
                    row.status,
                    if row.status == "validating" {
                        "; submit again once it is ready"
                    } else {
                        ""
                    }
                ),
            });
        }
        if let Some((param, kind)) = model_input {
            if row.input != kind {
                return Err(ApiError::InvalidParams {
                    field: param.into(),
                    message: format!(
                        "is for {kind} models; model {}@{} reads {} input",
                        row.name, row.version, row.input
                    ),
                });
            }
        }
        if let Some(slot) = params.get_mut(*field) {
            *slot = Value::String(row.id.to_string());
        }
        ids.push(row.id);
    }
    Ok(ids)
}

/// The inputs a request has stored. Dropped without `keep` or `discard`
/// (the request was cancelled: the client left, or the server stopped
/// waiting for it at shutdown), it has the janitor delete them.
struct StoredInputs {
    objects: Arc<dyn ObjectStore>,
    janitor: Janitor,
    inputs: Vec<InputFile>,
    /// The insert that references them was sent: if the request is dropped
    /// now, its row may still commit, so they are left to the collector.
    committing: bool,
}

impl StoredInputs {
    fn new(state: &AppState) -> Self {
        Self {
            objects: state.objects.clone(),
            janitor: state.janitor.clone(),
            inputs: Vec::new(),
            committing: false,
        }
    }

    /// A row references them now (or may): they stay.
    fn keep(&mut self) {
        self.inputs.clear();
    }

    async fn discard(&mut self) {
        for input in std::mem::take(&mut self.inputs) {
            if let Err(e) = self.objects.delete(&input.key).await {
                tracing::warn!(key = %input.key, "could not delete orphaned input: {e}");
            }
        }
    }
}

impl Drop for StoredInputs {
    fn drop(&mut self) {
        if self.committing {
            return;
        }
        for input in std::mem::take(&mut self.inputs) {
            self.janitor.delete(input.key);
        }
    }
}

/// Largest `command` or `params` form field.
const MAX_TEXT_FIELD: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Submission {
    pub command: String,
    pub params: Value,
    pub inputs: Vec<InputFile>,
}

/// A submission without files, as JSON.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct JsonSubmission {
    /// One of `GET /api/v1/commands`.
    command: String,
    /// The command's params, as its JSON Schema in `GET /api/v1/commands`
    /// describes them.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Value,
}

/// A submission as a form. Parts are read in order: send `command` (and
/// `params`) before the files, so a bad submission is refused before its
/// files are uploaded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct TaskForm {
    /// One of `GET /api/v1/commands`.
    command: String,
    /// The params, as a JSON object.
    params: Option<String>,
    /// The input files, each its own `file` part. A part may carry
    /// `x-checksum-sha256` (hex or base64) or `Content-MD5`.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

/// A model upload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct ModelForm {
    /// The model's spec, as a JSON object: `name`, `input`, and for images
    /// the size and classes.
    spec: String,
    /// The TorchScript file.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Reads the body of `POST /api/v1/tasks` for task `task`, storing its
/// files into `stored`.
async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    caller: &Caller,
    task: Uuid,
    form: Form,
    stored: &mut StoredInputs,
) -> Result<Submission, ApiError> {
    let limit = state.limits.max_request_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let mime = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let essence = mime
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "multipart/form-data" => {
            // One user's slow uploads may not take every slot; a user at
            // their cap is refused before anything else is spent on them.
            let _user_slot = state
                .user_uploads
                .take(&caller.user)
                .map_err(ApiError::OverQuota)?;
            // A caller already at their upload or storage limit is told so
            // before sending the bytes.
            let client = state.db.get().await?;
            state
                .quotas
                .before_upload(&client, &caller.user, declared)
                .await?;
            drop(client);
            // Each upload to S3 buffers a few parts: cap how many run at once.
            let _slot = state
                .uploads
                .clone()
                .try_acquire_owned()
                .map_err(|_| ApiError::Busy {
                    code: "too_many_uploads",
                    message: format!(
                        "this process is taking its limit of {} uploads at once (max_uploads); \
                         retry shortly",
                        state.max_uploads
                    ),
                    retry_after: 1,
                })?;
            let intake = Intake {
                limits: &state.limits,
                commands: &state.commands,
                objects: state.objects.as_ref(),
            };
            read_multipart(
                req.headers(),
                payload,
                &intake,
                task,
                form,
                &mut stored.inputs,
            )
            .await
        }
        // Small, but still a slot and a buffer: a body that trickles in is
        // held to the same deadline as an upload.
        "application/json" if form == Form::Task => tokio::time::timeout(
            state.limits.max_upload_time,
            read_json(payload, limit, state.limits.idle),
        )
        .await
        .map_err(|_| ApiError::UploadTimeout(state.limits.max_upload_time))?,
        _ => Err(ApiError::UnsupportedMediaType {
            content_type: mime,
            expected: match form {
                Form::Task => "multipart/form-data or application/json",
                Form::Model => "multipart/form-data",
            },
        }),
    }
}

/// The next item of a request body, or 408 when the client sends nothing
/// for `idle`.
async fn next_or_idle<T>(
    idle: Duration,
    next: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(idle, next)
        .await
        .map_err(|_| ApiError::UploadIdle(idle))
}

async fn read_json(
    mut payload: web::Payload,
    limit: u64,
    idle: Duration,
) -> Result<Submission, ApiError> {
    let limit = limit.min(MAX_TEXT_FIELD as u64) as usize;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = next_or_idle(idle, payload.next()).await? {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge {
                limit: limit as u64,
            });
        }
        body.extend_from_slice(&chunk);
    }
    let parsed: JsonSubmission = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))?;
    Ok(Submission {
        command: parsed.command,
        params: params_object(parsed.params)?,
        inputs: Vec::new(),
    })
}

/// What reading a form needs of the app.
pub(crate) struct Intake<'a> {
    pub limits: &'a super::UploadLimits,
    pub commands: &'a Commands,
    pub objects: &'a dyn ObjectStore,
}

/// Reads a `multipart/form-data` body, storing each file part as input
/// `inputs.len()` of `task` as it arrives; stored files are pushed onto
/// `inputs` at once, so the caller can delete them if the form fails.
pub(crate) async fn read_multipart(
    headers: &header::HeaderMap,
    payload: impl futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>
        + 'static,
    intake: &Intake<'_>,
    task: Uuid,
    form: Form,
    inputs: &mut Vec<InputFile>,
) -> Result<Submission, ApiError> {
    let limits = intake.limits;
    let mut multipart = Multipart::new(headers, payload);
    let mut budget = Budget::new();
    let mut command: Option<String> = (form == Form::Model).then(|| ValidateModel::NAME.to_owned());
    let mut params = Value::Null;
    while let Some(field) = next_or_idle(limits.idle, multipart.try_next())
        .await?
        .map_err(multipart_error)?
    {
        let name = field.name().unwrap_or("").to_owned();
        match (form, name.as_str()) {
            (Form::Model, "spec") => {
                let text = read_text(field, &mut budget, limits).await?;
                let value: Value =
                    serde_json::from_str(&text).map_err(|e| ApiError::InvalidParams {
                        field: "spec".into(),
                        message: format!("not valid JSON: {e}"),
                    })?;
                if !value.is_object() {
                    return Err(ApiError::InvalidParams {
                        field: "spec".into(),
                        message: "must be a JSON object".into(),
                    });
                }
                params = params_object(serde_json::json!({ "spec": value }))?;
            }
            (Form::Task, "command") => {
                let text = read_text(field, &mut budget, limits).await?;
                let text = text.trim().to_owned();
                // Reject an unknown command before any file is uploaded.
                super::command(intake.commands, &text)?;
                for input in inputs.iter() {
                    check_type(intake.commands, &text, &input.content_type)?;
                }
                command = Some(text);
            }
            (Form::Task, "params") => {
                let text = read_text(field, &mut budget, limits).await?;
                let value: Value =
                    serde_json::from_str(&text).map_err(|e| ApiError::InvalidParams {
                        field: "params".into(),
                        message: format!("not valid JSON: {e}"),
                    })?;
                params = params_object(value)?;
            }
            (_, "file") => {
                if inputs.len() >= limits.max_files {
                    return Err(ApiError::TooManyParts {
                        limit: limits.max_files,
                    });
                }
                let position = inputs.len() as i32;
                let input = store_file(
                    field,
                    intake,
                    command.as_deref(),
                    task,
                    position,
                    &mut budget,
                )
                .await?;
                inputs.push(input);
            }
            (_, other) => {
                return Err(ApiError::bad_request(
                    "unexpected_field",
                    format!(
                        "unexpected form field {other:?}: expected {}",
                        match form {
                            Form::Task => "command, params and file",
                            Form::Model => "spec and file",
                        }
                    ),
                ))
            }
        }
    }
    let command = command.ok_or_else(|| {
        ApiError::bad_request("missing_command", "the form has no \"command\" field")
    })?;
    if form == Form::Model && params.is_null() {
        return Err(ApiError::InvalidParams {
            field: "spec".into(),
            message: "the form has no \"spec\" field: the model's name and input, as JSON".into(),
        });
    }
    Ok(Submission {
        command,
        params,
        inputs: inputs.clone(),
    })
}

fn check_type(commands: &Commands, command: &str, content_type: &str) -> Result<(), ApiError> {
    commands
        .check_type(command, content_type)
        .map_err(|allowed| ApiError::UnsupportedFileType {
            command: command.to_owned(),
            content_type: content_type.to_owned(),
            allowed: allowed.to_vec(),
        })
}

/// Checksums a client sent with a file part, verified before the object
/// is completed: a mismatch leaves nothing stored.
struct Expected {
    /// `x-checksum-sha256`, hex or base64.
    sha256: Option<String>,
    /// `Content-MD5`, base64 as in RFC 1864.
    md5: Option<(String, md5::Md5)>,
}

impl Expected {
    fn from_headers(field: &Field) -> Result<Self, ApiError> {
        let header = |name: &str| {
            field
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_owned())
        };
        let sha256 = header("x-checksum-sha256")
            .map(|v| normalize_sha256(&v))
            .transpose()?;
        Ok(Self {
            sha256,
            md5: header("content-md5").map(|v| (v, md5::Md5::new())),
        })
    }

    fn update(&mut self, chunk: &[u8]) {
        if let Some((_, hasher)) = &mut self.md5 {
            hasher.update(chunk);
        }
    }

    fn verify(self, name: &str, sha256: &str) -> Result<(), ApiError> {
        use base64::Engine;
        if let Some(expected) = self.sha256.filter(|e| e != sha256) {
            return Err(ApiError::ChecksumMismatch {
                name: name.to_owned(),
                algorithm: "sha256",
                expected,
                actual: sha256.to_owned(),
            });
        }
        if let Some((expected, hasher)) = self.md5 {
            let actual = base64::engine::general_purpose::STANDARD.encode(hasher.finalize());
            if expected != actual {
                return Err(ApiError::ChecksumMismatch {
                    name: name.to_owned(),
                    algorithm: "md5",
                    expected,
                    actual,
                });
            }
        }
        Ok(())
    }
}

/// A sha256 as lowercase hex, from hex or base64.
fn normalize_sha256(value: &str) -> Result<String, ApiError> {
    use base64::Engine;
    if value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(value.to_ascii_lowercase());
    }
    match base64::engine::general_purpose::STANDARD.decode(value) {
        Ok(bytes) if bytes.len() == 32 => Ok(hex::encode(bytes)),
        _ => Err(ApiError::bad_request(
            "invalid_checksum",
            format!("x-checksum-sha256 {value:?} is neither 64 hex digits nor base64 of 32 bytes"),
        )),
    }
}

async fn read_text(
    mut field: Field,
    budget: &mut Budget,
    limits: &super::UploadLimits,
) -> Result<String, ApiError> {
    let name = field.name().unwrap_or("").to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = next_or_idle(limits.idle, field.try_next())
        .await?
        .map_err(multipart_error)?
    {
        budget.count(chunk.len(), limits)?;
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(ApiError::bad_request(
                "field_too_large",
                format!("form field {name:?} is larger than {MAX_TEXT_FIELD} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| {
        ApiError::bad_request(
            "invalid_field",
            format!("form field {name:?} is not UTF-8 text"),
        )
    })
}

async fn store_file(
    mut field: Field,
    intake: &Intake<'_>,
    command: Option<&str>,
    task: Uuid,
    position: i32,
    budget: &mut Budget,
) -> Result<InputFile, ApiError> {
    let limits = intake.limits;
    let key = ObjectKey::Input { task, position }.as_string();
    let filename = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .map(sanitize_name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("file{}", position + 1));
    let content_type = field
        .content_type()
        .map(|m| m.essence_str().to_owned())
        .unwrap_or_else(|| "application/octet-stream".into());
    // Checked here when the command came first; otherwise once it arrives.
    if let Some(command) = command {
        check_type(intake.commands, command, &content_type)?;
    }
    let mut expected = Expected::from_headers(&field)?;
    let mut upload = Upload::start(intake.objects, &key, &content_type).await?;
    let result = async {
        while let Some(chunk) = next_or_idle(limits.idle, field.try_next())
            .await?
            .map_err(multipart_error)?
        {
            budget.count(chunk.len(), limits)?;
            if upload.size() + chunk.len() as u64 > limits.max_file_bytes {
                return Err(ApiError::FileTooLarge {
                    name: filename.clone(),
                    limit: limits.max_file_bytes,
                });
            }
            expected.update(&chunk);
            upload.write(chunk).await?;
        }
        expected.verify(&filename, &upload.sha256())
    }
    .await;
    if let Err(e) = result {
        upload.abort().await;
        return Err(e);
    }
    let stored = upload.finish().await?;
    Ok(InputFile {
        position,
        name: filename,
        size: stored.size as i64,
        sha256: stored.sha256,
        content_type,
        key,
    })
}

/// What a request has used of its limits so far.
struct Budget {
    received: u64,
    started: std::time::Instant,
}

impl Budget {
    fn new() -> Self {
        Self {
            received: 0,
            started: std::time::Instant::now(),
        }
    }

    /// Counts `n` more bytes against the request's size and time limits.
    fn count(&mut self, n: usize, limits: &super::UploadLimits) -> Result<(), ApiError> {
        self.received += n as u64;
        if self.received > limits.max_request_bytes {
            return Err(ApiError::TooLarge {
                limit: limits.max_request_bytes,
            });
        }
        if self.started.elapsed() > limits.max_upload_time {
            return Err(ApiError::UploadTimeout(limits.max_upload_time));
        }
        Ok(())
    }
}

/// A client's file name is metadata only; keep it printable and short.
fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    base.chars().filter(|c| !c.is_control()).take(255).collect()
}

/// Largest params object, serialized: params live in the task row and in
/// every view of the task.
const MAX_PARAMS_BYTES: usize = 64 << 10;

fn params_object(value: Value) -> Result<Value, ApiError> {
    let size = value.to_string().len();
    if size > MAX_PARAMS_BYTES {
        return Err(ApiError::InvalidParams {
            field: "params".into(),
            message: format!("{size} bytes is over the limit of {MAX_PARAMS_BYTES}"),
        });
    }
    match value {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(_) => Ok(value),
        _ => Err(ApiError::InvalidParams {
            field: "params".into(),
            message: "must be a JSON object".into(),
        }),
    }
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    ApiError::bad_request(
        "invalid_multipart",
        format!("malformed multipart body: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_lose_their_paths() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\data\\train.csv"), "train.csv");
        assert_eq!(sanitize_name("a\u{0}b.csv"), "ab.csv");
    }

    #[test]
    fn params_must_be_an_object() {
        assert!(params_object(Value::Null)
            .unwrap()
            .as_object()
            .unwrap()
            .is_empty());
        assert!(matches!(
            params_object(serde_json::json!([1])),
            Err(ApiError::InvalidParams { field, .. }) if field == "params"
        ));
    }
}

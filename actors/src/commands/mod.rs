//! The ML commands a task can run.
//!
//! Each command is a type implementing [`Command`], and owns all of its
//! facts: its name, how many input files it takes and of which content
//! types, its time limit, and its typed params, whose JSON Schema (ranges
//! and defaults included) is derived from the type ([`schema`]). Params are
//! parsed with serde, then checked against that schema, so a bad value is
//! rejected at submit time with the field named. `run` executes on an ML
//! worker thread. [`Commands`] is the one list that registers them all.

pub mod predict;
pub mod schema;
pub mod sleep;
pub mod train;
pub mod validate_model;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::ml::registry::ModelRef;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{ErrorCode, JobError};
use crate::task::{InputFile, JobContext, Outcome};

/// Why a submission was refused before it became a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid params: {field}: {message}")]
    InvalidParams { field: String, message: String },
    #[error("{0}")]
    MissingFile(String),
    #[error("{0}")]
    TooManyFiles(String),
}

impl SubmitError {
    pub fn param(field: &str, message: impl Into<String>) -> Self {
        Self::InvalidParams {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Typed params of a command.
pub trait Params: DeserializeOwned + Serialize + schemars::JsonSchema {
    /// Checks across fields, which the schema cannot express.
    fn validate(&self) -> Result<(), SubmitError> {
        Ok(())
    }

    /// Models the task reads, with the param naming each. They are looked
    /// up when it is submitted, must be ready, and are pinned: the stored
    /// params name each by id.
    fn models(&self) -> Vec<(&'static str, ModelRef)> {
        Vec::new()
    }

    /// A param that only makes sense for models reading one kind of input
    /// (`image` or `tabular`): `(param, kind)`. Checked against the models
    /// when the task is submitted, so the mistake is a 400, not a failed
    /// task.
    fn model_input(&self) -> Option<(&'static str, &'static str)> {
        None
    }

    /// Checks against the uploaded files' names and declared types (the
    /// bytes are not read at submission).
    fn validate_inputs(&self, _inputs: &[InputFile]) -> Result<(), SubmitError> {
        Ok(())
    }
}

/// CSV as browsers, curl and spreadsheets label it (curl sends
/// `application/octet-stream` for a `.csv` file).
pub const CSV_TYPES: &[&str] = &[
    "text/csv",
    "application/csv",
    "text/plain",
    "application/vnd.ms-excel",
    "application/octet-stream",
];

/// The param every command takes besides its own: the task's time limit,
/// in seconds or as text such as `"90s"` or `"2h"`.
pub const TIMEOUT_PARAM: &str = "timeout";
/// The longest time limit a task may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// A command, as its implementor writes it.
pub trait Command: Send + Sync + 'static {
    const NAME: &'static str;
    /// One line for users: what it does.
    const SUMMARY: &'static str;
    /// How many `file` parts it takes.
    const FILES: std::ops::RangeInclusive<usize>;
    /// The content types its files may have; a deployment's config can
    /// replace the list (`content_types`). Empty: any.
    const CONTENT_TYPES: &'static [&'static str];
    /// Run by mlq itself, never submitted by users (`validate_model`).
    const INTERNAL: bool = false;
    /// Its time limit when neither the task nor the deployment sets one.
    const TIMEOUT: Duration = Duration::from_secs(3600);
    type Params: Params;

    fn run(&self, params: Self::Params, ctx: &JobContext) -> Result<Outcome, JobError>;
}

/// Params that passed every check, normalized with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub params: Value,
    pub models: Vec<(&'static str, ModelRef)>,
    /// See [`Params::model_input`].
    pub model_input: Option<(&'static str, &'static str)>,
    /// The task's own time limit, if it set one.
    pub timeout: Option<Duration>,
}

/// What `GET /api/v1/commands` says of a command.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CommandInfo {
    pub name: String,
    pub summary: String,
    pub files: FileCount,
    pub content_types: Vec<String>,
    /// Its time limit in seconds, unless a task or the deployment sets one.
    pub timeout_seconds: u64,
    /// JSON Schema (2020-12) of its params, with ranges and defaults.
    #[schema(value_type = Object)]
    pub params: Value,
}

/// How many files a command takes.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FileCount {
    pub min: usize,
    pub max: usize,
}

/// A command with its params type erased, as the registry holds it.
pub trait AnyCommand: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_timeout(&self) -> Duration;
    fn is_internal(&self) -> bool;
    fn content_types(&self) -> &'static [&'static str];
    /// Its facts, for users and the dashboard.
    fn describe(&self) -> CommandInfo;
    fn check(&self, params: Value, files: usize) -> Result<Checked, SubmitError>;
    /// Checks params (as `check` returned them) against the uploaded
    /// files' names and declared types.
    fn check_inputs(&self, params: &Value, inputs: &[InputFile]) -> Result<(), SubmitError>;
    fn run(&self, params: Value, ctx: &JobContext) -> Result<Outcome, JobError>;
}

impl<C: Command> AnyCommand for C {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn default_timeout(&self) -> Duration {
        C::TIMEOUT
    }

    fn is_internal(&self) -> bool {
        C::INTERNAL
    }

    fn content_types(&self) -> &'static [&'static str] {
        C::CONTENT_TYPES
    }

    fn describe(&self) -> CommandInfo {
        let mut params = params_schema::<C::Params>();
        // Every command takes `timeout` besides its own params.
        if let Some(props) = params.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                TIMEOUT_PARAM.into(),
                serde_json::json!({
                    "description": "The task's time limit: seconds, or a duration such as \"90s\" or \"2h\".",
                    "type": ["number", "string", "null"],
                    "minimum": 1,
                    "maximum": MAX_TIMEOUT.as_secs(),
                }),
            );
        }
        CommandInfo {
            name: C::NAME.into(),
            summary: C::SUMMARY.into(),
            files: FileCount {
                min: *C::FILES.start(),
                max: *C::FILES.end(),
            },
            content_types: C::CONTENT_TYPES.iter().map(|t| (*t).to_owned()).collect(),
            timeout_seconds: C::TIMEOUT.as_secs(),
            params,
        }
    }

    fn check(&self, params: Value, files: usize) -> Result<Checked, SubmitError> {
        let (params, timeout) = split_timeout(params)?;
        let parsed: C::Params = parse_params(params.clone())?;
        schema::check(&params_schema::<C::Params>(), &params)?;
        parsed.validate()?;
        let range = C::FILES;
        if files < *range.start() {
            return Err(SubmitError::MissingFile(format!(
                "{} needs {} file part(s) named \"file\", got {files}",
                C::NAME,
                range.start()
            )));
        }
        if files > *range.end() {
            return Err(SubmitError::TooManyFiles(format!(
                "{} takes at most {} file part(s), got {files}",
                C::NAME,
                range.end()
            )));
        }
        let mut normalized = serde_json::to_value(&parsed).unwrap_or(Value::Null);
        if let (Some(t), Value::Object(map)) = (timeout, &mut normalized) {
            map.insert(TIMEOUT_PARAM.into(), serde_json::json!(t.as_secs_f64()));
        }
        Ok(Checked {
            models: parsed.models(),
            model_input: parsed.model_input(),
            params: normalized,
            timeout,
        })
    }

    fn check_inputs(&self, params: &Value, inputs: &[InputFile]) -> Result<(), SubmitError> {
        let (params, _) = split_timeout(params.clone())?;
        parse_params::<C::Params>(params)?.validate_inputs(inputs)
    }

    fn run(&self, params: Value, ctx: &JobContext) -> Result<Outcome, JobError> {
        // Params were checked at submit time; failing here means the stored
        // row was edited or written by another version.
        let parsed: C::Params = split_timeout(params)
            .and_then(|(params, _)| parse_params(params))
            .map_err(|e| JobError::new(ErrorCode::InvalidParams, e.to_string()))?;
        Command::run(self, parsed, ctx)
    }
}

/// The schema of a params type, made once per type: submissions check
/// against it on the hot path.
fn params_schema<P: Params + 'static>() -> Value {
    use std::any::TypeId;
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<TypeId, Value>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .entry(TypeId::of::<P>())
        .or_insert_with(schema::of::<P>)
        .clone()
}

/// Takes the `timeout` param out of `params`, checked.
pub fn split_timeout(params: Value) -> Result<(Value, Option<Duration>), SubmitError> {
    let Value::Object(mut map) = params else {
        return Ok((params, None));
    };
    let Some(value) = map.remove(TIMEOUT_PARAM) else {
        return Ok((Value::Object(map), None));
    };
    let bad = |why: &str| SubmitError::param(TIMEOUT_PARAM, why);
    let limit = match &value {
        Value::Null => None,
        Value::Number(n) => {
            let seconds = n.as_f64().unwrap_or(-1.0);
            if !(seconds >= 1.0 && seconds <= MAX_TIMEOUT.as_secs_f64()) {
                return Err(bad(&format!(
                    "must be between 1 and {} seconds, got {n}",
                    MAX_TIMEOUT.as_secs()
                )));
            }
            Some(Duration::from_secs_f64(seconds))
        }
        Value::String(text) => {
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                bad(&format!(
                    "{}: give seconds, or a duration such as \"90s\" or \"2h\" ({e})",
                    crate::error::quote(text)
                ))
            })?;
            if d < Duration::from_secs(1) || d > MAX_TIMEOUT {
                return Err(bad(&format!(
                    "must be between 1 second and {}, got {}",
                    humantime::format_duration(MAX_TIMEOUT),
                    crate::error::quote(text)
                )));
            }
            Some(d)
        }
        _ => {
            return Err(bad(
                "must be a number of seconds or a duration such as \"10m\"",
            ))
        }
    };
    Ok((Value::Object(map), limit))
}

/// Parses params, naming the offending field on failure.
fn parse_params<P: DeserializeOwned>(params: Value) -> Result<P, SubmitError> {
    let params = if params.is_null() {
        Value::Object(Default::default())
    } else {
        params
    };
    if let Some(field) = nul_string(&params, String::new()) {
        // Postgres cannot store NUL in text or JSON; no real param needs it.
        return Err(SubmitError::param(
            if field.is_empty() { "params" } else { &field },
            "must not contain NUL characters",
        ));
    }
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names the field of a missing or unknown key in its message;
        // the path is then just the parent (".").
        let field = if path == "." {
            field_in_message(&inner).unwrap_or_else(|| "params".into())
        } else {
            path
        };
        SubmitError::InvalidParams {
            field,
            message: inner,
        }
    })
}

/// The path of the first string (key or value) holding a NUL character.
fn nul_string(value: &Value, path: String) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(path),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_string(v, format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(path.clone())
            } else {
                nul_string(v, here)
            }
        }),
        _ => None,
    }
}

fn field_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

/// The registered commands, with the content types each accepts.
#[derive(Clone)]
pub struct Commands(BTreeMap<&'static str, Registered>);

#[derive(Clone)]
struct Registered {
    command: Arc<dyn AnyCommand>,
    /// The command's own list, or the deployment's replacement. Empty: any.
    content_types: Vec<String>,
}

impl Commands {
    /// The standard commands, plus `sleep` when `diagnostics` is on.
    pub fn standard(diagnostics: bool) -> Self {
        let mut all: Vec<Arc<dyn AnyCommand>> = vec![
            Arc::new(train::Train),
            Arc::new(predict::Predict),
            Arc::new(validate_model::ValidateModel),
        ];
        if diagnostics {
            all.push(Arc::new(sleep::Sleep));
        }
        Self(
            all.into_iter()
                .map(|c| {
                    let content_types = c.content_types().iter().map(|t| (*t).to_owned()).collect();
                    (
                        c.name(),
                        Registered {
                            command: c,
                            content_types,
                        },
                    )
                })
                .collect(),
        )
    }

    /// Replaces commands' accepted content types (the `content_types`
    /// setting); `*/*` accepts any.
    pub fn with_content_types(mut self, overrides: &BTreeMap<String, Vec<String>>) -> Self {
        for (name, types) in overrides {
            if let Some(r) = self.0.get_mut(name.as_str()) {
                r.content_types = if types.iter().any(|t| t == "*/*") {
                    Vec::new()
                } else {
                    types.clone()
                };
            }
        }
        self
    }

    /// Any registered command, internal ones included (the dispatcher runs
    /// them all).
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnyCommand>> {
        self.0.get(name).map(|r| &r.command)
    }

    /// A command users may submit.
    pub fn submittable(&self, name: &str) -> Option<&Arc<dyn AnyCommand>> {
        self.get(name).filter(|c| !c.is_internal())
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
    }

    /// The names of the commands users may submit.
    pub fn submittable_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0
            .iter()
            .filter(|(_, r)| !r.command.is_internal())
            .map(|(n, _)| *n)
    }

    /// `Err(accepted)` when `command` does not take files of `content_type`.
    pub fn check_type(&self, command: &str, content_type: &str) -> Result<(), &[String]> {
        match self.0.get(command) {
            Some(r)
                if !r.content_types.is_empty()
                    && !r
                        .content_types
                        .iter()
                        .any(|t| t.eq_ignore_ascii_case(content_type)) =>
            {
                Err(&r.content_types)
            }
            _ => Ok(()),
        }
    }

    /// The commands users may submit, described.
    pub fn describe(&self) -> Vec<CommandInfo> {
        self.0
            .values()
            .filter(|r| !r.command.is_internal())
            .map(|r| CommandInfo {
                content_types: r.content_types.clone(),
                ..r.command.describe()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let commands = Commands::standard(false);
        let train = commands.get("train").unwrap();
        // No param is required: `target` is for CSV files only.
        train.check(json!({}), 1).unwrap();
        let err = train.check(json!({"target": ""}), 1).unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "target"),
            "{err:?}"
        );
        let err = train
            .check(json!({"width": 8, "channels": 2}), 1)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "channels"),
            "{err:?}"
        );
        let err = train
            .check(json!({"target": "y", "epoch": 3}), 1)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "epoch"),
            "{err:?}"
        );
        let err = train
            .check(json!({"target": "y", "epochs": "ten"}), 1)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "epochs"),
            "{err:?}"
        );
        let err = train
            .check(json!({"target": "y", "hidden": [8, -1]}), 1)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "hidden[1]"),
            "{err:?}"
        );
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let commands = Commands::standard(false);
        let train = commands.get("train").unwrap();
        let err = train.check(json!({"target": "y\0"}), 1).unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "target"),
            "{err:?}"
        );
        let err = train
            .check(json!({"target": "y", "features": ["a", "\0"]}), 1)
            .unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "features[1]"),
            "{err:?}"
        );
    }

    #[test]
    fn file_counts_are_checked() {
        let commands = Commands::standard(false);
        let train = commands.get("train").unwrap();
        assert!(matches!(
            train.check(json!({"target": "y"}), 0),
            Err(SubmitError::MissingFile(_))
        ));
        assert!(matches!(
            train.check(json!({"target": "y"}), 2),
            Err(SubmitError::TooManyFiles(_))
        ));
        assert!(train.check(json!({"target": "y"}), 1).is_ok());
    }

    #[test]
    fn the_timeout_param_is_checked_and_kept() {
        let commands = Commands::standard(true);
        let sleep = commands.get("sleep").unwrap();
        let checked = sleep.check(json!({"ms": 1, "timeout": "90s"}), 0).unwrap();
        assert_eq!(checked.timeout, Some(Duration::from_secs(90)));
        assert_eq!(checked.params["timeout"], 90.0);
        // What was stored runs: the param is taken out before parsing.
        let again = sleep.check(checked.params.clone(), 0).unwrap();
        assert_eq!(again.timeout, Some(Duration::from_secs(90)));
        for bad in [json!(0), json!(-5), json!("soon"), json!([1]), json!("30d")] {
            let err = sleep.check(json!({"timeout": bad}), 0).unwrap_err();
            assert!(
                matches!(&err, SubmitError::InvalidParams { field, .. } if field == "timeout"),
                "{err:?}"
            );
        }
        assert_eq!(sleep.check(json!({}), 0).unwrap().timeout, None);
    }

    #[test]
    fn sleep_is_registered_only_with_diagnostics() {
        assert!(Commands::standard(false).get("sleep").is_none());
        assert!(Commands::standard(true).get("sleep").is_some());
    }
}

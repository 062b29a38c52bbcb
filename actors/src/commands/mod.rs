//! The ML commands a task can run.
//!
//! Each command is a type implementing [`Command`]: its name, how many input
//! files it takes, its typed params (parsed with serde, then range-checked,
//! so a bad value is rejected at submit time with the field named), and a
//! synchronous `run` that executes on an ML worker thread. [`Commands`] is
//! the one list that registers them all.

pub mod predict;
pub mod sleep;
pub mod train;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{ErrorCode, JobError};
use crate::task::{JobContext, Outcome};

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
pub trait Params: DeserializeOwned + Serialize {
    /// Range checks serde cannot express.
    fn validate(&self) -> Result<(), SubmitError> {
        Ok(())
    }

    /// Models the task reads, with the param naming each; they must exist
    /// when it is submitted.
    fn models(&self) -> Vec<(&'static str, Uuid)> {
        Vec::new()
    }
}

/// The param every command takes besides its own: the task's time limit,
/// in seconds or as text such as `"90s"` or `"2h"`.
pub const TIMEOUT_PARAM: &str = "timeout";
/// The longest time limit a task may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);

/// A command, as its implementor writes it.
pub trait Command: Send + Sync + 'static {
    const NAME: &'static str;
    /// How many `file` parts it takes.
    const FILES: std::ops::RangeInclusive<usize>;
    /// Its time limit when neither the task nor the deployment sets one.
    const TIMEOUT: Duration = Duration::from_secs(3600);
    type Params: Params;

    fn run(&self, params: Self::Params, ctx: &JobContext) -> Result<Outcome, JobError>;
}

/// Params that passed every check, normalized with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub params: Value,
    pub models: Vec<(&'static str, Uuid)>,
    /// The task's own time limit, if it set one.
    pub timeout: Option<Duration>,
}

/// A command with its params type erased, as the registry holds it.
pub trait AnyCommand: Send + Sync {
    fn name(&self) -> &'static str;
    fn default_timeout(&self) -> Duration;
    fn check(&self, params: Value, files: usize) -> Result<Checked, SubmitError>;
    fn run(&self, params: Value, ctx: &JobContext) -> Result<Outcome, JobError>;
}

impl<C: Command> AnyCommand for C {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn default_timeout(&self) -> Duration {
        C::TIMEOUT
    }

    fn check(&self, params: Value, files: usize) -> Result<Checked, SubmitError> {
        let (params, timeout) = split_timeout(params)?;
        let parsed: C::Params = parse_params(params)?;
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
            params: normalized,
            timeout,
        })
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

/// The registered commands.
#[derive(Clone)]
pub struct Commands(BTreeMap<&'static str, Arc<dyn AnyCommand>>);

impl Commands {
    /// The standard commands, plus `sleep` when `diagnostics` is on.
    pub fn standard(diagnostics: bool) -> Self {
        let mut all: Vec<Arc<dyn AnyCommand>> =
            vec![Arc::new(train::Train), Arc::new(predict::Predict)];
        if diagnostics {
            all.push(Arc::new(sleep::Sleep));
        }
        Self(all.into_iter().map(|c| (c.name(), c)).collect())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnyCommand>> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.keys().copied()
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
        let err = train.check(json!({}), 1).unwrap_err();
        assert!(
            matches!(&err, SubmitError::InvalidParams { field, .. } if field == "target"),
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

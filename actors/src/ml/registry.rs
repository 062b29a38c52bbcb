//! Model names, versions and references.
//!
//! Every model has a name and a version, `name@3`. Wherever a model is
//! expected, a user may give its id, its name (meaning its latest ready
//! version) or `name@version`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const MAX_NAME_CHARS: u32 = 128;

/// Checks a model name: letters, digits, `.`, `_` and `-`, starting with a
/// letter or digit, and not itself an id (which would be ambiguous).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS as usize {
        return Err(format!("must have 1 to {MAX_NAME_CHARS} characters"));
    }
    let mut chars = name.chars();
    let first = chars.next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{} is not a model name: use letters, digits, '.', '_' and '-', starting with a \
             letter or digit",
            crate::error::quote(name)
        ));
    }
    if Uuid::parse_str(name).is_ok() {
        return Err("must not be a model id".into());
    }
    Ok(())
}

/// A name made from a file name: `Iris data (2).csv` → `Iris-data-2`.
pub fn name_from_file(file: &str) -> String {
    let stem = file.rsplit(['/', '\\']).next().unwrap_or(file);
    let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
    let mut name = String::new();
    for c in stem.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name: String = name
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(MAX_NAME_CHARS as usize)
        .collect();
    if check_name(&name).is_ok() {
        name
    } else {
        "model".into()
    }
}

/// How a request names a model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ModelRef {
    Id(Uuid),
    /// The latest ready version of a name.
    Latest(String),
    Version(String, i32),
}

impl FromStr for ModelRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(id) = Uuid::parse_str(text) {
            return Ok(Self::Id(id));
        }
        match text.rsplit_once('@') {
            Some((name, version)) => {
                check_name(name)?;
                let v: i32 = version.parse().ok().filter(|v| *v >= 1).ok_or_else(|| {
                    format!(
                        "{} is not a version: give a whole number from 1, as in {name}@3",
                        crate::error::quote(version)
                    )
                })?;
                Ok(Self::Version(name.to_owned(), v))
            }
            None => {
                check_name(text)
                    .map_err(|e| format!("give a model id, a name, or name@version: {e}"))?;
                Ok(Self::Latest(text.to_owned()))
            }
        }
    }
}

impl TryFrom<String> for ModelRef {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<ModelRef> for String {
    fn from(r: ModelRef) -> String {
        r.to_string()
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Latest(name) => f.write_str(name),
            Self::Version(name, v) => write!(f, "{name}@{v}"),
        }
    }
}

impl schemars::JsonSchema for ModelRef {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ModelRef".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A model: its id, its name (the latest ready version), or name@version.",
            "minLength": 1,
            "x-mlq-model": true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let id = Uuid::new_v4();
        assert_eq!(id.to_string().parse::<ModelRef>(), Ok(ModelRef::Id(id)));
        assert_eq!(
            "iris".parse::<ModelRef>(),
            Ok(ModelRef::Latest("iris".into()))
        );
        assert_eq!(
            "iris-v2.x@12".parse::<ModelRef>(),
            Ok(ModelRef::Version("iris-v2.x".into(), 12))
        );
        for bad in [
            "", "iris@", "iris@0", "iris@-1", "iris@x", "@3", "-iris", "a b", "ü", "x/y",
        ] {
            assert!(bad.parse::<ModelRef>().is_err(), "{bad:?}");
        }
        assert_eq!(ModelRef::Version("a".into(), 3).to_string(), "a@3");
    }

    #[test]
    fn names_from_files() {
        assert_eq!(name_from_file("Iris data (2).csv"), "Iris-data-2");
        assert_eq!(name_from_file("../../x.csv"), "x");
        assert_eq!(name_from_file("???.csv"), "model");
        assert_eq!(name_from_file("archive.tar.gz"), "archive.tar");
    }
}

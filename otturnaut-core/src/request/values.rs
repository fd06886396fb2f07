//! The checks of single values of a [`super::DeployRequest`] that front
//! ends also need on their own: an env entry as it is read from a file, a
//! duration, a health check. Messages never repeat a secret.

use std::time::Duration;

use serde::Deserialize;

use super::InvalidField;
use crate::{EnvName, HealthKind, HttpPath, MAX_DURATION, Secret};

fn invalid(field: &'static str) -> impl Fn(crate::Error) -> InvalidField {
    move |e| InvalidField::new(field, e.to_string())
}

/// A number or its text: `cpus = 1.5` and `"cpus": "1.5"` read alike, as do
/// `memory = 536870912` and `memory = "512m"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    /// A whole number: `8080`, `536870912`.
    Int(i64),
    /// A number with a fraction: `1.5`.
    Float(f64),
    /// Text, with a unit where one applies: `512m`.
    Text(String),
}

impl Scalar {
    /// The value as a user would have typed it.
    pub fn text(&self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s.clone(),
        }
    }
}

/// `type: [number, string]`: a derived `oneOf` of integer, number and
/// string would call every integer invalid (it matches two of them).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Scalar {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Number, Type::String]))
            .description(Some("A number, or its text with a unit where one applies (`512m`)"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Scalar {}

impl From<String> for Scalar {
    fn from(s: String) -> Self {
        Scalar::Text(s)
    }
}

/// A command line as one string (split like a shell would, never run by
/// one) or as its list of words.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum CommandInput {
    /// One string, split into words like a shell would: `"puma -p 8080"`.
    Line(String),
    /// The words as they are: `["puma", "-p", "8080"]`.
    Words(Vec<String>),
}

impl CommandInput {
    pub(super) fn parse(&self, field: &'static str) -> Result<crate::CommandLine, InvalidField> {
        match self {
            CommandInput::Line(line) => line.parse().map_err(invalid(field)),
            CommandInput::Words(words) => crate::CommandLine::try_from(words.clone()).map_err(invalid(field)),
        }
    }
}

/// An env variable or build arg: its name checked, its value kept secret.
/// The message shows at most the name-like start of a bad name: the "name"
/// may hold a value behind another separator (`DB:postgres://u:p@h/db`).
pub fn env_entry(key: &str, value: &Secret) -> Result<(EnvName, Secret), String> {
    let name = env_name(key)?;
    if value.expose().contains('\0') {
        return Err(format!("the value of {name} contains a NUL byte, which cannot be passed on"));
    }
    Ok((name, value.clone()))
}

/// The letters, digits and `_` an argument starts with: all of it that is
/// safe to repeat in a message.
pub fn name_like_prefix(raw: &str) -> String {
    raw.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect()
}

fn env_name(key: &str) -> Result<EnvName, String> {
    key.parse::<EnvName>().map_err(|e| {
        let shown = name_like_prefix(key);
        if shown.len() == key.len() {
            // Only letters, digits and '_': nothing in it can be a value.
            e.to_string()
        } else {
            format!(
                "the name starting {shown:?} holds a character other than letters, digits and '_' \
                 (the rest is not shown: it may hold a secret)"
            )
        }
    })
}

/// The most build secrets a deploy takes.
pub const MAX_BUILD_SECRETS: usize = 100;
/// The largest build secret in bytes: BuildKit's session refuses bigger ones.
pub const MAX_BUILD_SECRET_SIZE: usize = 500 * 1024;

/// A build secret's id as `RUN --mount=type=secret,id=ID` names it: 1 to 64
/// letters, digits, `_`, `.` or `-`.
pub fn build_secret_id(id: &str) -> Result<(), String> {
    let ok =
        (1..=64).contains(&id.len()) && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(format!("{:?}: the id must be 1 to 64 letters, digits, '_', '.' or '-'", name_like_prefix(id)));
    }
    Ok(())
}

/// `running`, `tcp`, `http` (GET /) or `http:/PATH`.
pub fn health_kind(raw: &str) -> Result<HealthKind, InvalidField> {
    let field = "health";
    match raw {
        "running" => Ok(HealthKind::Running),
        "tcp" => Ok(HealthKind::Tcp),
        "http" => Ok(HealthKind::Http { path: HttpPath::try_from("/").map_err(invalid(field))?, expected_status: 200 }),
        _ => match raw.strip_prefix("http:") {
            Some(path) => Ok(HealthKind::Http { path: path.parse().map_err(invalid(field))?, expected_status: 200 }),
            None => {
                let shown: String = raw.chars().take(64).collect();
                Err(InvalidField::new(
                    field,
                    format!("{shown:?} is not a health check; use running, tcp or http:/PATH"),
                ))
            }
        },
    }
}

/// `30s`, `2m`, `1m30s`, `500ms`; above zero and at most 24 hours.
pub fn duration(field: &'static str, raw: &str) -> Result<Duration, InvalidField> {
    let shown: String = raw.chars().take(64).collect();
    let d = humantime::parse_duration(raw).map_err(|e| {
        InvalidField::new(field, format!("{shown:?} is not a duration ({e}); use e.g. 30s, 2m or 1m30s"))
    })?;
    if d.is_zero() {
        return Err(InvalidField::new(field, format!("{shown:?} must be longer than zero")));
    }
    if d > MAX_DURATION {
        return Err(InvalidField::new(
            field,
            format!("{shown:?} is longer than the maximum, {}", humantime::format_duration(MAX_DURATION)),
        ));
    }
    Ok(d)
}

//! `deploy APP --spec FILE`: a [`DeployRequest`] read from a TOML file, the
//! same schema as the daemon's JSON body. The flags given as well are laid
//! over it ([`DeployRequest::merged`]); unknown keys are refused with their
//! line, and a bad value that came from the file is reported with its key
//! and line instead of a flag.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use otturnaut_core::{DeployRequest, InvalidField};

use crate::exit::Invalid;
use crate::files;

const FLAG: &str = "--spec";

/// Map-valued keys: the flags' entries join the file's instead of replacing
/// them, so the file's entries stay the file's.
const MERGED_KEYS: [&str; 4] = ["env", "build_args", "build_secrets", "build_secret_files"];

/// Where the file's values came from: its path and the line of each key.
#[derive(Debug, Clone)]
pub struct SpecFile {
    path: PathBuf,
    lines: BTreeMap<String, usize>,
    given: BTreeSet<&'static str>,
}

impl SpecFile {
    /// The file's key behind a refused `field`, unless the flags gave it:
    /// the field itself, or the `*_file` key read into it.
    fn key_of(&self, field: &'static str, by_flags: &BTreeSet<&'static str>) -> Option<&'static str> {
        let read_from = match field {
            "env" => Some("env_file"),
            "build_args" => Some("build_arg_file"),
            "build_secrets" => Some("build_secret_files"),
            "repo_credentials" => Some("repo_credentials_file"),
            "ssh_key" => Some("ssh_key_file"),
            _ => None,
        };
        [Some(field), read_from]
            .into_iter()
            .flatten()
            .find(|key| self.given.contains(key) && (MERGED_KEYS.contains(key) || !by_flags.contains(key)))
    }

    /// `e` as a message about the file's key and line when the value came
    /// from the file; `None` when it came from a flag (or from nowhere).
    pub fn locate(&self, e: &InvalidField, by_flags: &BTreeSet<&'static str>) -> Option<Invalid> {
        let key = self.key_of(e.field, by_flags)?;
        let line = self.lines.get(key).map(|l| format!(" line {l}")).unwrap_or_default();
        Some(Invalid::new(FLAG, format!("{}{line}, {key}: {}", self.path.display(), e.message)))
    }
}

/// Reads the request in `path`.
pub fn read(path: &Path) -> Result<(DeployRequest, SpecFile), Invalid> {
    let text = files::read_capped(path, files::MAX_SETTINGS_FILE).map_err(|m| Invalid::new(FLAG, m))?;
    let lines = key_lines(&text);
    let request: DeployRequest = toml::from_str(&text).map_err(|e| parse_error(path, &text, &lines, &e))?;
    let given = request.given();
    Ok((request, SpecFile { path: path.to_owned(), lines, given }))
}

/// The line each top-level key (or table header) starts on.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return BTreeMap::new();
    };
    table.get_ref().iter().map(|(k, _)| (k.get_ref().to_string(), line_of(text, k.span().start))).collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// toml's error as `FILE line N, KEY: reason`. Never the source line toml
/// quotes, nor a value serde quotes: either may be a secret (`env`).
fn parse_error(path: &Path, text: &str, lines: &BTreeMap<String, usize>, e: &toml::de::Error) -> Invalid {
    let message = e.message().trim();
    let reason = if ["invalid type", "invalid value", "invalid length"].iter().any(|k| message.starts_with(k)) {
        match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("wrong type or value (not shown), expected {expected}"),
            None => "wrong type or value (not shown)".to_owned(),
        }
    } else {
        message.replace('\n', " ")
    };
    let Some(line) = e.span().map(|s| line_of(text, s.start)) else {
        return Invalid::new(FLAG, format!("{} is not a valid spec file: {reason}", path.display()));
    };
    // The key the line belongs to: the last one starting at or before it.
    let key = lines.iter().filter(|(_, l)| **l <= line).max_by_key(|(_, l)| **l).map(|(k, _)| k);
    match key {
        Some(key) => Invalid::new(FLAG, format!("{} line {line}, {key}: {reason}", path.display())),
        None => Invalid::new(FLAG, format!("{} line {line}: {reason}", path.display())),
    }
}

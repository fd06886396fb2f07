//! `deploy APP --spec FILE`: every deploy setting from a TOML file, with the
//! flags given as well overriding it. The file's keys are the flags' names
//! with `_` for `-` (lists and tables where a flag repeats); unknown keys
//! are refused with their line.
//!
//! The file is merged into [`DeployArgs`] and then checked by
//! [`crate::input::deploy_spec`] like flags are; a bad value from the file is
//! reported with its key and line instead of a flag.
//!
//! (Interim: issue 12 moves the CLI's input into one serde request struct
//! shared with the daemon; this file's [`SpecFile`] then becomes that struct.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::args::DeployArgs;
use crate::exit::Invalid;
use crate::files;

const FLAG: &str = "--spec";

/// A number or a string: `cpus = 1.5` and `cpus = "1.5"` both read.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

/// The spec file, key by key. Every key is optional here; what a deploy
/// needs (`container_port`, `repo` or `image`) may come from flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    repo: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    dockerfile: Option<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
    build_arg_file: Option<PathBuf>,
    /// Secret id → file path.
    #[serde(default)]
    build_secrets: BTreeMap<String, PathBuf>,
    repo_credentials_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    #[serde(default)]
    allow_insecure_git: bool,
    image: Option<String>,
    pull_timeout: Option<String>,
    container_port: Option<Scalar>,
    #[serde(default)]
    domains: Vec<String>,
    /// Values are secrets, like `--env`'s.
    #[serde(default)]
    env: BTreeMap<String, String>,
    env_file: Option<PathBuf>,
    health: Option<String>,
    health_timeout: Option<String>,
    #[serde(default)]
    volumes: Vec<String>,
    memory: Option<Scalar>,
    cpus: Option<Scalar>,
    pids_limit: Option<Scalar>,
    #[serde(default)]
    networks: Vec<String>,
    command: Option<String>,
    entrypoint: Option<String>,
    #[serde(default)]
    log_opts: Vec<String>,
    stop_timeout: Option<String>,
    drain_timeout: Option<String>,
}

/// Where the file's values came from: its path and the line of each key.
#[derive(Debug, Clone)]
pub struct Origin {
    path: PathBuf,
    lines: BTreeMap<String, usize>,
    /// The keys whose values the flags did not override.
    from_file: BTreeSet<&'static str>,
}

impl Origin {
    /// Rewrites a message about `flag` as one about the file's key and line,
    /// when the value came from the file.
    pub fn locate(&self, e: Invalid) -> Invalid {
        let Some(key) = key_of(&e.what).filter(|k| self.from_file.contains(k)) else {
            return e;
        };
        let line = self.lines.get(key).map(|l| format!(" line {l}")).unwrap_or_default();
        Invalid::new(FLAG, format!("{}{line}, {key}: {}", self.path.display(), e.message))
    }
}

/// The file key each flag (as messages name it) reads.
fn key_of(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "--repo" => "repo",
        "--ref" => "ref",
        "--dockerfile" => "dockerfile",
        "--build-arg" => "build_args",
        "--build-arg-file" => "build_arg_file",
        "--build-secret" => "build_secrets",
        "--repo-credentials-file" => "repo_credentials_file",
        "--ssh-key" => "ssh_key",
        "--image" => "image",
        "--pull-timeout" => "pull_timeout",
        "--container-port" => "container_port",
        "--domain" => "domains",
        "--env" => "env",
        "--env-file" => "env_file",
        "--health" => "health",
        "--health-timeout" => "health_timeout",
        "--volume" => "volumes",
        "--memory" => "memory",
        "--cpus" => "cpus",
        "--pids-limit" => "pids_limit",
        "--network" => "networks",
        "--command" => "command",
        "--entrypoint" => "entrypoint",
        "--log-opt" => "log_opts",
        "--stop-timeout" => "stop_timeout",
        "--drain-timeout" => "drain_timeout",
        _ => return None,
    })
}

/// Reads `path` and fills every setting of `args` that no flag gave.
pub fn merge(path: &Path, args: &mut DeployArgs) -> Result<Origin, Invalid> {
    let text = files::read_capped(path, files::MAX_SETTINGS_FILE).map_err(|m| Invalid::new(FLAG, m))?;
    // toml's messages carry the line and column, and quote only the key.
    let file: SpecFile = toml::from_str(&text)
        .map_err(|e| Invalid::new(FLAG, format!("{} is not a valid spec file: {}", path.display(), first_lines(&e))))?;
    let lines = key_lines(&text);
    let mut from_file = BTreeSet::new();
    let mut take = |key: &'static str, flag: &mut Option<String>, value: Option<String>| {
        if flag.is_none() && value.is_some() {
            *flag = value;
            from_file.insert(key);
        }
    };
    let path_text = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
    take("repo", &mut args.repo, file.repo);
    take("ref", &mut args.git_ref, file.git_ref);
    take("dockerfile", &mut args.dockerfile, file.dockerfile);
    take("image", &mut args.image, file.image);
    take("pull_timeout", &mut args.pull_timeout, file.pull_timeout);
    take("container_port", &mut args.container_port, file.container_port.map(Scalar::text));
    take("health_timeout", &mut args.health_timeout, file.health_timeout);
    let r = &mut args.runtime;
    take("memory", &mut r.memory, file.memory.map(Scalar::text));
    take("cpus", &mut r.cpus, file.cpus.map(Scalar::text));
    take("pids_limit", &mut r.pids_limit, file.pids_limit.map(Scalar::text));
    take("command", &mut r.command, file.command);
    take("entrypoint", &mut r.entrypoint, file.entrypoint);
    take("stop_timeout", &mut r.stop_timeout, file.stop_timeout);
    take("drain_timeout", &mut r.drain_timeout, file.drain_timeout);
    let mut take_path = |key: &'static str, flag: &mut Option<PathBuf>, value: Option<PathBuf>| {
        if flag.is_none() && value.is_some() {
            *flag = value;
            from_file.insert(key);
        }
    };
    take_path("env_file", &mut args.env_file, file.env_file);
    take_path("build_arg_file", &mut args.build_arg_file, file.build_arg_file);
    take_path("repo_credentials_file", &mut args.repo_credentials_file, file.repo_credentials_file);
    take_path("ssh_key", &mut args.ssh_key, file.ssh_key);
    // Lists: flags given replace the file's list.
    let mut take_list = |key: &'static str, flag: &mut Vec<String>, value: Vec<String>| {
        if flag.is_empty() && !value.is_empty() {
            *flag = value;
            from_file.insert(key);
        }
    };
    take_list("domains", &mut args.domains, file.domains);
    take_list("volumes", &mut args.runtime.volumes, file.volumes);
    take_list("networks", &mut args.runtime.networks, file.networks);
    take_list("log_opts", &mut args.runtime.log_opts, file.log_opts);
    let secrets: Vec<String> = file
        .build_secrets
        .into_iter()
        .map(|(id, p)| format!("{id}={}", path_text(Some(p)).unwrap_or_default()))
        .collect();
    take_list("build_secrets", &mut args.build_secrets, secrets);
    // Tables: the file's entries first, so that a flag's entry of the same
    // key overrides them.
    let mut prepend = |key: &'static str, flag: &mut Vec<String>, table: BTreeMap<String, String>| {
        if !table.is_empty() {
            let mut entries: Vec<String> = table.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            entries.append(flag);
            *flag = entries;
            from_file.insert(key);
        }
    };
    prepend("env", &mut args.env, file.env);
    prepend("build_args", &mut args.build_args, file.build_args);
    if args.health.is_none()
        && let Some(health) = file.health
    {
        args.health = Some(health);
        from_file.insert("health");
    }
    args.allow_insecure_git |= file.allow_insecure_git;
    Ok(Origin { path: path.to_owned(), lines, from_file })
}

/// The line each top-level key (or table header) starts on.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    let Ok(table) = toml::de::DeTable::parse(text) else {
        return BTreeMap::new();
    };
    let line_of = |offset: usize| text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1;
    table.get_ref().iter().map(|(k, _)| (k.get_ref().to_string(), line_of(k.span().start))).collect()
}

/// toml's message without the quoted source line, which may hold a secret
/// value (`env`), keeping the `TOML parse error at line N, column M` head
/// and the reason.
fn first_lines(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines().filter(|l| !l.trim_start().starts_with('|') && !l.trim().is_empty());
    let head = lines.next().unwrap_or_default().to_owned();
    let reason: Vec<&str> = lines.filter(|l| !l.chars().next().is_some_and(|c| c.is_ascii_digit())).collect();
    format!("{head}: {}", reason.join(" ")).trim_end_matches(": ").to_owned()
}

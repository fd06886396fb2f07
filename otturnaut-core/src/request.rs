// Long file: every field of the one deploy schema, its layering and its single validation belong together.
//! The one schema of a deploy: [`DeployRequest`]. The daemon's JSON body, the
//! CLI's spec file (TOML) and the CLI's flags all become one, and
//! [`DeployRequest::validate`] alone turns it into the library's
//! [`DeploySpec`], so a value is accepted or refused the same way by every
//! front end, and the error names the field it came from.
//!
//! Values of `env`, `build_args`, `build_secrets`, `ssh_key` and
//! `repo_credentials` are secrets: messages name only their keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use crate::{
    AppId, ContainerPort, DeploySpec, DockerfilePath, Domain, GitRef, HealthCheck, ImageRef, MAX_RUNTIME_ITEMS,
    RepoUrl, RuntimeOptions, Secret, Source, Transport,
};

#[cfg(test)]
mod tests;
mod values;

pub use values::{
    CommandInput, MAX_BUILD_SECRET_SIZE, MAX_BUILD_SECRETS, Scalar, build_secret_id, duration, env_entry, health_kind,
    name_like_prefix,
};

/// The most `domains` a deploy takes: each one is a matcher in Caddy.
pub const MAX_DOMAINS: usize = 100;

/// The most env variables and, separately, the most build args.
pub const MAX_ENV: usize = 1000;

/// A deploy of one app, field by field: the JSON body of
/// `POST /v1/apps/{app}/deployments`, the keys of `otturnaut deploy --spec
/// FILE` and, with `-` for `_`, the flags of `otturnaut deploy`. Every field
/// is optional here; [`DeployRequest::validate`] says what a deploy needs.
///
/// The `*_file` fields name files on the machine that runs the CLI, which
/// reads them into the fields they stand for (`env_file` into `env`…) before
/// validating; [`DeployRequest::validate`] refuses them, so the HTTP API
/// takes the values themselves.
#[derive(Debug, Default, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Git repository to build: https://, ssh://, git@host:path, git:// or file:///path.
    #[serde(default)]
    pub repo: Option<String>,
    /// Branch, tag or full commit SHA (default `main`).
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// Dockerfile path inside the repository (default `Dockerfile`).
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// Build arguments; values are secrets.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub build_args: BTreeMap<String, Secret>,
    /// Secrets for `RUN --mount=type=secret,id=ID` steps (BuildKit), by id: never in the
    /// image, its history or any output. At most 100, each at most 500 KiB.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub build_secrets: BTreeMap<String, Secret>,
    /// Credentials for an https:// repo: a token, or USER:PASSWORD.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub repo_credentials: Option<Secret>,
    /// A private key (its text) for ssh:// and git@host:path repositories.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub ssh_key: Option<Secret>,
    /// Accept a git:// repo on another host (neither authenticated nor encrypted).
    #[serde(default)]
    pub allow_insecure_git: bool,
    /// A prebuilt image to run instead of a repo.
    #[serde(default)]
    pub image: Option<String>,
    /// How long pulling `image` may take, e.g. `10m` (at most 24h).
    #[serde(default)]
    pub pull_timeout: Option<String>,

    /// The port the app listens on inside its container (required).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, minimum = 1, maximum = 65535))]
    pub container_port: Option<u64>,
    /// Domains Caddy routes to the app (at most 100).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Environment variables of the app; values are secrets.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, String>))]
    pub env: BTreeMap<String, Secret>,
    /// `running`, `tcp` (default) or `http:/PATH`.
    #[serde(default)]
    pub health: Option<String>,
    /// How long the new container may take to become healthy, e.g. `30s` (at most 24h).
    #[serde(default)]
    pub health_timeout: Option<String>,

    /// `NAME:/path[:ro]` (a named volume, created if missing, kept across releases) or
    /// `/host/path:/path[:ro]` (an existing host path); at most 64.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Memory limit, e.g. `512m` or `2g` (at least 6m), or bytes.
    #[serde(default)]
    pub memory: Option<Scalar>,
    /// CPU limit in CPUs, e.g. `0.5` or `2`.
    #[serde(default)]
    pub cpus: Option<Scalar>,
    /// The most processes and threads the container may run (1 to 4194304).
    #[serde(default)]
    pub pids_limit: Option<Scalar>,
    /// User-defined Docker networks to join (created if missing); the app answers to
    /// its name on each. At most 64.
    #[serde(default)]
    pub networks: Vec<String>,
    /// Replaces the image's CMD: one string split like a shell would (never run by one),
    /// or the list of words.
    #[serde(default)]
    pub command: Option<CommandInput>,
    /// Replaces the image's ENTRYPOINT, like `command`.
    #[serde(default)]
    pub entrypoint: Option<CommandInput>,
    /// json-file log options `KEY=VALUE` (max-size, max-file, compress, labels, env, tag…)
    /// on top of the defaults max-size=10m, max-file=3.
    #[serde(default)]
    pub log_opts: Vec<String>,
    /// Grace between SIGTERM and SIGKILL when a release is stopped, e.g. `20s` (default 10s).
    #[serde(default)]
    pub stop_timeout: Option<String>,
    /// How long requests in flight to the previous release may take after the switch
    /// (default 30s).
    #[serde(default)]
    pub drain_timeout: Option<String>,

    /// A file of `KEY=VALUE` lines, read into `env` (whose entries win). CLI only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub env_file: Option<PathBuf>,
    /// A file of `KEY=VALUE` lines, read into `build_args` (whose entries win). CLI only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub build_arg_file: Option<PathBuf>,
    /// Build secrets by id, each read from a file into `build_secrets`. CLI only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub build_secret_files: BTreeMap<String, PathBuf>,
    /// A file holding `repo_credentials`. CLI only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub repo_credentials_file: Option<PathBuf>,
    /// A file holding `ssh_key`. CLI only.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub ssh_key_file: Option<PathBuf>,
}

/// A refused value: `field` names it as [`DeployRequest`] does (`"app"` for
/// the app's name). The message never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    /// The refused field, as [`DeployRequest`] names it.
    pub field: &'static str,
    /// What is wrong with it, and what is accepted.
    pub message: String,
}

impl InvalidField {
    /// A refusal of `field` with `message`, which must not hold a secret value.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        InvalidField { field, message: message.into() }
    }
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for InvalidField {}

fn invalid(field: &'static str) -> impl Fn(crate::Error) -> InvalidField {
    move |e| InvalidField::new(field, e.to_string())
}

/// An app's name, as the first part of every request.
pub fn app_id(raw: &str) -> Result<AppId, InvalidField> {
    raw.parse().map_err(invalid("app"))
}

/// A field's value as one layer of a request: given or not, and laid over
/// another layer's. A value given on top wins; a list given on top
/// replaces the list; a map's entries on top win key by key.
trait Layer {
    fn is_given(&self) -> bool;
    fn lay(&mut self, over: Self);
}

impl<T> Layer for Option<T> {
    fn is_given(&self) -> bool {
        self.is_some()
    }
    fn lay(&mut self, over: Self) {
        if over.is_some() {
            *self = over;
        }
    }
}

impl<T> Layer for Vec<T> {
    fn is_given(&self) -> bool {
        !self.is_empty()
    }
    fn lay(&mut self, over: Self) {
        if !over.is_empty() {
            *self = over;
        }
    }
}

impl<K: Ord, V> Layer for BTreeMap<K, V> {
    fn is_given(&self) -> bool {
        !self.is_empty()
    }
    fn lay(&mut self, over: Self) {
        self.extend(over);
    }
}

impl Layer for bool {
    fn is_given(&self) -> bool {
        *self
    }
    fn lay(&mut self, over: Self) {
        *self |= over;
    }
}

/// [`DeployRequest::merged`] and [`DeployRequest::given`] from one list of
/// the fields with their serde names (a unit test checks it is complete).
macro_rules! layered_fields {
    ($($field:ident = $name:literal),* $(,)?) => {
        impl DeployRequest {
            /// `self` with `over`'s values on top: a spec file's request
            /// with the command line's over it. A value given in `over`
            /// wins, a list given there replaces the list, and a map's
            /// entries there win key by key.
            pub fn merged(mut self, over: DeployRequest) -> DeployRequest {
                $( self.$field.lay(over.$field); )*
                self
            }

            /// The fields given (by their serde names), for a front end
            /// that says where a value came from.
            pub fn given(&self) -> BTreeSet<&'static str> {
                let mut given = BTreeSet::new();
                $( if self.$field.is_given() { given.insert($name); } )*
                given
            }
        }
    };
}

layered_fields!(
    repo = "repo",
    git_ref = "ref",
    dockerfile = "dockerfile",
    build_args = "build_args",
    build_secrets = "build_secrets",
    repo_credentials = "repo_credentials",
    ssh_key = "ssh_key",
    allow_insecure_git = "allow_insecure_git",
    image = "image",
    pull_timeout = "pull_timeout",
    container_port = "container_port",
    domains = "domains",
    env = "env",
    health = "health",
    health_timeout = "health_timeout",
    volumes = "volumes",
    memory = "memory",
    cpus = "cpus",
    pids_limit = "pids_limit",
    networks = "networks",
    command = "command",
    entrypoint = "entrypoint",
    log_opts = "log_opts",
    stop_timeout = "stop_timeout",
    drain_timeout = "drain_timeout",
    env_file = "env_file",
    build_arg_file = "build_arg_file",
    build_secret_files = "build_secret_files",
    repo_credentials_file = "repo_credentials_file",
    ssh_key_file = "ssh_key_file",
);

impl DeployRequest {
    /// Checks every value and builds the spec for `app`; nothing is touched
    /// and nothing is read (a bind mount's host path is checked by the
    /// caller, on the machine that runs the containers).
    pub fn validate(&self, app: &str) -> Result<DeploySpec, InvalidField> {
        let app = app_id(app)?;
        self.refuse_files()?;
        let source = self.source()?;
        let container_port: ContainerPort = match self.container_port {
            Some(port) => port.to_string().parse().map_err(invalid("container_port"))?,
            None => return Err(InvalidField::new("container_port", "required")),
        };
        let mut spec = DeploySpec::new(app, source, container_port);

        if self.domains.len() > MAX_DOMAINS {
            let n = self.domains.len();
            return Err(InvalidField::new("domains", format!("{n} domains given; at most {MAX_DOMAINS}")));
        }
        for raw in &self.domains {
            let domain: Domain = raw.parse().map_err(invalid("domains"))?;
            if !spec.domains.contains(&domain) {
                spec.domains.push(domain);
            }
        }

        if self.env.len() > MAX_ENV {
            return Err(InvalidField::new("env", format!("{} variables; at most {MAX_ENV}", self.env.len())));
        }
        for (key, value) in &self.env {
            let (name, value) = env_entry(key, value).map_err(|m| InvalidField::new("env", m))?;
            spec.env.insert(name, value);
        }

        spec.health = HealthCheck::new(health_kind(self.health.as_deref().unwrap_or("tcp"))?);
        let durations = [
            ("health_timeout", &self.health_timeout, &mut spec.health.deadline),
            ("pull_timeout", &self.pull_timeout, &mut spec.timeouts.pull),
            ("stop_timeout", &self.stop_timeout, &mut spec.timeouts.stop),
            ("drain_timeout", &self.drain_timeout, &mut spec.timeouts.drain),
        ];
        for (field, raw, into) in durations {
            if let Some(raw) = raw {
                *into = duration(field, raw)?;
            }
        }
        spec.runtime = self.runtime()?;
        spec.check_limits().map_err(invalid("health_timeout"))?;
        Ok(spec)
    }

    /// The `*_file` fields are for the CLI to read; a request that still
    /// names a file came from somewhere that cannot read it.
    fn refuse_files(&self) -> Result<(), InvalidField> {
        let files = [
            ("env_file", self.env_file.is_some(), "env"),
            ("build_arg_file", self.build_arg_file.is_some(), "build_args"),
            ("build_secret_files", !self.build_secret_files.is_empty(), "build_secrets"),
            ("repo_credentials_file", self.repo_credentials_file.is_some(), "repo_credentials"),
            ("ssh_key_file", self.ssh_key_file.is_some(), "ssh_key"),
        ];
        match files.into_iter().find(|(_, given, _)| *given) {
            Some((field, _, instead)) => Err(InvalidField::new(
                field,
                format!("names a file on the machine that runs the CLI, which reads it; give {instead} instead"),
            )),
            None => Ok(()),
        }
    }

    fn source(&self) -> Result<Source, InvalidField> {
        match (&self.repo, &self.image) {
            (Some(repo), None) => {
                if self.pull_timeout.is_some() {
                    return Err(InvalidField::new("pull_timeout", "only applies to an image deploy"));
                }
                self.git_source(repo)
            }
            (None, Some(image)) => {
                let git_only = [
                    ("ref", self.git_ref.is_some()),
                    ("dockerfile", self.dockerfile.is_some()),
                    ("build_args", !self.build_args.is_empty()),
                    ("build_secrets", !self.build_secrets.is_empty()),
                    ("repo_credentials", self.repo_credentials.is_some()),
                    ("ssh_key", self.ssh_key.is_some()),
                ];
                if let Some((field, _)) = git_only.iter().find(|(_, given)| *given) {
                    return Err(InvalidField::new(field, "only applies to a repo deploy, not to an image"));
                }
                Ok(Source::Image { reference: image.parse::<ImageRef>().map_err(invalid("image"))? })
            }
            (Some(_), Some(_)) => Err(InvalidField::new("repo", "give either a repo or an image, not both")),
            (None, None) => Err(InvalidField::new("repo", "a source is required: give a repo URL or an image")),
        }
    }

    fn git_source(&self, repo: &str) -> Result<Source, InvalidField> {
        let mut url = RepoUrl::parse_allowing_file(repo).map_err(invalid("repo"))?;
        if url.transport() == Transport::Git && !self.allow_insecure_git && !url.host().is_some_and(is_loopback) {
            return Err(InvalidField::new(
                "repo",
                format!(
                    "{url}: git:// is neither authenticated nor encrypted, so anyone on the path can change \
                     what gets deployed; use https:// or ssh://, or allow it with --allow-insecure-git \
                     (allow_insecure_git = true)"
                ),
            ));
        }
        if let Some(credentials) = &self.repo_credentials {
            let credentials = Secret::new(credentials.expose().trim_end_matches(['\n', '\r']));
            url = url.with_credentials(&credentials).map_err(invalid("repo_credentials"))?;
        }
        let git_ref: GitRef = match &self.git_ref {
            Some(r) => r.parse().map_err(invalid("ref"))?,
            None => GitRef::default(),
        };
        let dockerfile: DockerfilePath = match &self.dockerfile {
            Some(d) => d.parse().map_err(invalid("dockerfile"))?,
            None => DockerfilePath::default(),
        };
        if self.build_args.len() > MAX_ENV {
            let n = self.build_args.len();
            return Err(InvalidField::new("build_args", format!("{n} build args; at most {MAX_ENV}")));
        }
        // Docker takes any ARG name; holding them to env-name rules keeps odd
        // characters out of the build request.
        let mut build_args = BTreeMap::new();
        for (key, value) in &self.build_args {
            let (name, value) = env_entry(key, value).map_err(|m| InvalidField::new("build_args", m))?;
            build_args.insert(name.to_string(), value);
        }
        if let Some(key) = &self.ssh_key
            && !key.expose().trim_start().starts_with("-----BEGIN")
        {
            return Err(InvalidField::new(
                "ssh_key",
                "is not a private key (its text starts with -----BEGIN); a key in a file is ssh_key_file",
            ));
        }
        Ok(Source::Git {
            url,
            git_ref,
            dockerfile,
            build_args,
            build_secrets: self.build_secrets()?,
            ssh_key: self.ssh_key.clone(),
        })
    }

    fn build_secrets(&self) -> Result<BTreeMap<String, Secret>, InvalidField> {
        let field = "build_secrets";
        if self.build_secrets.len() > MAX_BUILD_SECRETS {
            let n = self.build_secrets.len();
            return Err(InvalidField::new(field, format!("{n} given; at most {MAX_BUILD_SECRETS}")));
        }
        for (id, value) in &self.build_secrets {
            build_secret_id(id).map_err(|m| InvalidField::new(field, m))?;
            if value.expose().len() > MAX_BUILD_SECRET_SIZE {
                return Err(InvalidField::new(field, format!("{id} is larger than {MAX_BUILD_SECRET_SIZE} bytes")));
            }
        }
        Ok(self.build_secrets.clone())
    }

    fn runtime(&self) -> Result<RuntimeOptions, InvalidField> {
        fn each<T>(field: &'static str, raw: &[String]) -> Result<Vec<T>, InvalidField>
        where
            T: std::str::FromStr<Err = crate::Error>,
        {
            if raw.len() > MAX_RUNTIME_ITEMS {
                return Err(InvalidField::new(
                    field,
                    format!("given {} times; at most {MAX_RUNTIME_ITEMS}", raw.len()),
                ));
            }
            raw.iter().map(|v| v.parse().map_err(invalid(field))).collect()
        }
        fn one<T>(field: &'static str, raw: &Option<Scalar>) -> Result<Option<T>, InvalidField>
        where
            T: std::str::FromStr<Err = crate::Error>,
        {
            raw.as_ref().map(|v| v.text().parse().map_err(invalid(field))).transpose()
        }
        let options = RuntimeOptions {
            volumes: each("volumes", &self.volumes)?,
            memory: one("memory", &self.memory)?,
            cpus: one("cpus", &self.cpus)?,
            pids_limit: one("pids_limit", &self.pids_limit)?,
            networks: each("networks", &self.networks)?,
            command: self.command.as_ref().map(|c| c.parse("command")).transpose()?,
            entrypoint: self.entrypoint.as_ref().map(|c| c.parse("entrypoint")).transpose()?,
            log_opts: each("log_opts", &self.log_opts)?,
        };
        options.check().map_err(|e| {
            let field = match &e {
                crate::Error::Invalid { what: "network name", .. } => "networks",
                crate::Error::Invalid { what: "log option", .. } => "log_opts",
                _ => "volumes",
            };
            InvalidField::new(field, e.to_string())
        })?;
        Ok(options)
    }
}

/// `localhost`, `127.x.y.z` or `::1`: a git:// server on this machine, which
/// nobody can tamper with on the way.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

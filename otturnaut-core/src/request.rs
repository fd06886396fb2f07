//! A deploy as a front end receives it: raw values, one per CLI flag or JSON
//! field, turned into a validated [`DeploySpec`] by [`DeployRequest::validate`].
//! The CLI and the HTTP API share this code, so a value is accepted or refused
//! the same way by both, and the error names the field it came from.
//!
//! Values of `env`, `build_args`, `ssh_key` and `repo_credentials` are
//! secrets: messages name only their keys.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::{
    AppId, ContainerPort, DeploySpec, DockerfilePath, Domain, EnvName, GitRef, HealthCheck, HealthKind, HttpPath,
    ImageRef, MAX_DURATION, RepoUrl, Secret, Source, Transport,
};

/// The most `domains` a deploy takes: each one is a matcher in Caddy.
pub const MAX_DOMAINS: usize = 100;

/// The most env variables and, separately, the most build args.
pub const MAX_ENV: usize = 1000;

/// The deploy of one app, field by field as the CLI flags name them. New
/// fields go here (with `#[serde(default)]`) and into [`DeployRequest::validate`].
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
    /// The port the app listens on inside its container.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 65535))]
    pub container_port: u64,
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
}

/// A refused value: `field` names it as [`DeployRequest`] does (`"app"` for
/// the app's name). The message never carries a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
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

impl DeployRequest {
    /// Checks every value and builds the spec for `app`; nothing is touched.
    pub fn validate(&self, app: &str) -> Result<DeploySpec, InvalidField> {
        let app = app_id(app)?;
        let source = self.source()?;
        let container_port: ContainerPort =
            self.container_port.to_string().parse().map_err(invalid("container_port"))?;
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
        if let Some(raw) = &self.health_timeout {
            spec.health.deadline = duration("health_timeout", raw)?;
        }
        if let Some(raw) = &self.pull_timeout {
            if self.image.is_none() {
                return Err(InvalidField::new("pull_timeout", "only applies to an image deploy"));
            }
            spec.timeouts.pull = duration("pull_timeout", raw)?;
        }
        spec.check_limits().map_err(invalid("health_timeout"))?;
        Ok(spec)
    }

    fn source(&self) -> Result<Source, InvalidField> {
        match (&self.repo, &self.image) {
            (Some(repo), None) => self.git_source(repo),
            (None, Some(image)) => {
                let git_only = [
                    ("ref", self.git_ref.is_some()),
                    ("dockerfile", self.dockerfile.is_some()),
                    ("build_args", !self.build_args.is_empty()),
                    ("repo_credentials", self.repo_credentials.is_some()),
                    ("ssh_key", self.ssh_key.is_some()),
                ];
                if let Some((field, _)) = git_only.iter().find(|(_, given)| *given) {
                    return Err(InvalidField::new(field, "only applies to a repo deploy, not to an image"));
                }
                Ok(Source::Image { reference: image.parse::<ImageRef>().map_err(invalid("image"))? })
            }
            (Some(_), Some(_)) => Err(InvalidField::new("repo", "give either a repo or an image, not both")),
            (None, None) => Err(InvalidField::new("repo", "give a repo URL or an image")),
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
                     (allow_insecure_git in the API)"
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
        Ok(Source::Git {
            url,
            git_ref,
            dockerfile,
            build_args,
            build_secrets: Default::default(),
            ssh_key: self.ssh_key.clone(),
        })
    }
}

/// `localhost`, `127.x.y.z` or `::1`: a git:// server on this machine, which
/// nobody can tamper with on the way.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Result<DeployRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn a_json_body_becomes_the_same_spec_as_the_flags() {
        let r = request(
            r#"{"repo": "file:///srv/shop", "ref": "v1.2", "build_args": {"TOKEN": "s3cret"},
                "container_port": 8080, "domains": ["Shop.Example.com", "shop.example.com"],
                "env": {"A": "1"}, "health": "http:/healthz", "health_timeout": "1m30s"}"#,
        )
        .expect("parses");
        let spec = r.validate("shop").expect("valid");
        assert_eq!(spec.domains.len(), 1);
        assert_eq!(spec.health.deadline, Duration::from_secs(90));
        assert_eq!(spec.env.values().map(Secret::expose).collect::<Vec<_>>(), ["1"]);
        assert!(matches!(&spec.source, Source::Git { git_ref, build_args, .. }
            if git_ref.as_str() == "v1.2" && build_args.get("TOKEN").map(Secret::expose) == Some("s3cret")));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = request(r#"{"image": "x", "container_port": 80, "volumes": []}"#).expect_err("unknown field");
        assert!(e.to_string().contains("volumes"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field_and_never_a_secret() {
        for (json, field) in [
            (r#"{"image": "x", "container_port": 0}"#, "container_port"),
            (r#"{"image": "x", "container_port": 70000}"#, "container_port"),
            (r#"{"container_port": 80}"#, "repo"),
            (r#"{"image": "x", "repo": "https://h/r", "container_port": 80}"#, "repo"),
            (r#"{"image": "x", "ref": "v1", "container_port": 80}"#, "ref"),
            (r#"{"repo": "https://h/r", "pull_timeout": "1m", "container_port": 80}"#, "pull_timeout"),
            (r#"{"repo": "git://example.com/r", "container_port": 80}"#, "repo"),
            (r#"{"image": "x", "container_port": 80, "domains": ["a_b.com"]}"#, "domains"),
            (r#"{"image": "x", "container_port": 80, "env": {"1BAD": "hunter2"}}"#, "env"),
            (r#"{"image": "x", "container_port": 80, "env": {"OK": "hun\u0000ter2"}}"#, "env"),
            (r#"{"repo": "https://h/r", "container_port": 80, "build_args": {"a-b": "hunter2"}}"#, "build_args"),
            (r#"{"image": "x", "container_port": 80, "health": "ping"}"#, "health"),
            (r#"{"image": "x", "container_port": 80, "health_timeout": "25h"}"#, "health_timeout"),
        ] {
            let e = request(json).expect("parses").validate("a").expect_err(json);
            assert_eq!(e.field, field, "{json}: {e}");
            assert!(!e.message.contains("hunter2") && !e.message.contains("ter2"), "{json}: {e}");
        }
        let e = request(r#"{"image": "x", "container_port": 80}"#).expect("parses").validate("Bad_App");
        assert_eq!(e.expect_err("bad app").field, "app");
    }
}

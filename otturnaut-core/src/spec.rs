//! What to deploy: the [`DeploySpec`] a caller hands to a strategy.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::string_newtype;
use crate::{
    AppId, CommitSha, ContainerPort, DeploymentId, DockerfilePath, Domain, EnvName, Error, GitRef, ImageRef, RepoUrl,
    Secret,
};

/// A complete deploy request. Every field is already validated, so a spec that
/// exists can be deployed without further input checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploySpec {
    pub app: AppId,
    pub source: Source,
    pub container_port: ContainerPort,
    #[serde(default)]
    pub env: BTreeMap<EnvName, Secret>,
    #[serde(default)]
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub health: HealthCheck,
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl DeploySpec {
    /// A spec with defaults for everything but the essentials.
    pub fn new(app: AppId, source: Source, container_port: ContainerPort) -> Self {
        DeploySpec {
            app,
            source,
            container_port,
            env: BTreeMap::new(),
            domains: Vec::new(),
            health: HealthCheck::default(),
            timeouts: Timeouts::default(),
        }
    }

    /// The release this spec makes live again, for a rollback.
    pub fn rollback_of(&self) -> Option<&DeploymentId> {
        match &self.source {
            Source::Release { deployment, .. } => Some(deployment),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    /// Clone `url` at `git_ref` and build the Dockerfile found there.
    Git {
        url: RepoUrl,
        #[serde(rename = "ref", default)]
        git_ref: GitRef,
        #[serde(default)]
        dockerfile: DockerfilePath,
        #[serde(default)]
        build_args: BTreeMap<String, Secret>,
        /// A private key for SSH URLs; written 0600 for the clone, then deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssh_key: Option<Secret>,
    },
    /// Run an image that already exists (locally or in a registry).
    Image { reference: ImageRef },
    /// Run a retained release's image again: a rollback. Made by
    /// `otturnaut_steps::rollback_spec` from what the release recorded, so
    /// the rest of the spec is that release's too.
    Release {
        deployment: DeploymentId,
        /// The image as the user knows it (the release's [`crate::Release::image`]).
        image: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<CommitSha>,
    },
}

/// How to tell that the new container is ready for traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: HealthKind,
    #[serde(with = "humantime_serde", default = "defaults::interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "defaults::attempt_timeout")]
    pub attempt_timeout: Duration,
    #[serde(with = "humantime_serde", default = "defaults::deadline")]
    pub deadline: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::new(HealthKind::Tcp)
    }
}

impl HealthCheck {
    pub fn new(kind: HealthKind) -> Self {
        HealthCheck {
            kind,
            interval: defaults::interval(),
            attempt_timeout: defaults::attempt_timeout(),
            deadline: defaults::deadline(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "lowercase")]
pub enum HealthKind {
    /// The container is running (and has not exited).
    Running,
    /// A TCP connection to the published port succeeds.
    Tcp,
    /// `GET path` answers with `expected_status`.
    Http {
        path: HttpPath,
        #[serde(default = "defaults::status")]
        expected_status: u16,
    },
}

/// An absolute URL path for HTTP health checks, e.g. `/healthz?full=1`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct HttpPath(String);
string_newtype!(HttpPath);

impl FromStr for HttpPath {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let ok =
            s.starts_with('/') && s.len() <= 2048 && !s.starts_with("//") && s.chars().all(|c| c.is_ascii_graphic());
        if !ok {
            return Err(Error::invalid(
                "health check path",
                s,
                "must start with a single '/' and contain only printable ASCII without spaces",
            ));
        }
        Ok(HttpPath(s.to_owned()))
    }
}

/// Time limits of the steps that wait on the outside world.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(with = "humantime_serde", default = "defaults::fetch")]
    pub fetch: Duration,
    #[serde(with = "humantime_serde", default = "defaults::build")]
    pub build: Duration,
    /// How long to wait for in-flight requests to the old release to finish.
    #[serde(with = "humantime_serde", default = "defaults::drain")]
    pub drain: Duration,
    /// Grace between SIGTERM and SIGKILL when stopping the old release.
    #[serde(with = "humantime_serde", default = "defaults::stop")]
    pub stop: Duration,
    /// How long pulling a `Source::Image` that is not present may take: the
    /// app's lock is held meanwhile.
    #[serde(with = "humantime_serde", default = "defaults::pull")]
    pub pull: Duration,
}

/// The longest duration any setting accepts. Beyond it a value is a typo or
/// an attack: `u64::MAX` seconds overflows every deadline computed from it.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

impl Timeouts {
    /// Every timeout of the spec with its name, for checks such as
    /// [`MAX_DURATION`].
    pub fn all(&self) -> [(&'static str, Duration); 5] {
        [("fetch", self.fetch), ("build", self.build), ("drain", self.drain), ("stop", self.stop), ("pull", self.pull)]
    }
}

impl DeploySpec {
    /// Checks what serde cannot: every duration at most [`MAX_DURATION`]
    /// (and the health check's above zero).
    pub fn check_limits(&self) -> Result<(), Error> {
        let h = &self.health;
        let all = self.timeouts.all().into_iter().chain([
            ("health interval", h.interval),
            ("health attempt timeout", h.attempt_timeout),
            ("health deadline", h.deadline),
        ]);
        for (what, d) in all {
            if d > MAX_DURATION {
                return Err(Error::invalid(
                    "duration",
                    humantime::format_duration(d).to_string(),
                    format!("{what} must be at most {}", humantime::format_duration(MAX_DURATION)),
                ));
            }
        }
        Ok(())
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            fetch: defaults::fetch(),
            build: defaults::build(),
            drain: defaults::drain(),
            stop: defaults::stop(),
            pull: defaults::pull(),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn attempt_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn deadline() -> Duration {
        Duration::from_secs(30)
    }
    pub fn status() -> u16 {
        200
    }
    pub fn fetch() -> Duration {
        Duration::from_secs(300)
    }
    pub fn build() -> Duration {
        Duration::from_secs(600)
    }
    pub fn drain() -> Duration {
        Duration::from_secs(30)
    }
    pub fn stop() -> Duration {
        Duration::from_secs(10)
    }
    pub fn pull() -> Duration {
        Duration::from_secs(600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json_with_defaults() {
        let json = r#"{
            "app": "shop",
            "source": {"type": "git", "url": "https://h/o/r.git", "ref": "v1"},
            "container_port": 8080,
            "env": {"DATABASE_URL": "postgres://secret"},
            "domains": ["shop.example.com"],
            "health": {"check": "http", "path": "/healthz"}
        }"#;
        let spec: DeploySpec = serde_json::from_str(json).expect("valid spec");
        assert_eq!(spec.health.deadline, Duration::from_secs(30));
        assert_eq!(
            spec.health.kind,
            HealthKind::Http { path: "/healthz".parse().expect("path"), expected_status: 200 }
        );
        assert!(!format!("{spec:?}").contains("postgres://secret"));
        let again: DeploySpec = serde_json::from_str(&serde_json::to_string(&spec).expect("ser")).expect("de");
        assert_eq!(again.app, spec.app);
        assert!(spec.check_limits().is_ok());
    }

    #[test]
    fn serializing_a_spec_leaks_no_secret() {
        let json = r#"{
            "app": "shop",
            "source": {"type": "git", "url": "https://T0KEN@h/o/r.git", "build_args": {"NPM": "npmsecret"},
                       "ssh_key": "-----BEGIN KEYSECRET"},
            "container_port": 8080,
            "env": {"DATABASE_URL": "postgres://u:dbsecret@h/db"}
        }"#;
        let spec: DeploySpec = serde_json::from_str(json).expect("valid spec");
        let out = serde_json::to_string(&spec).expect("ser");
        for secret in ["T0KEN", "npmsecret", "KEYSECRET", "dbsecret"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        match &spec.source {
            Source::Git { url, build_args, .. } => {
                assert_eq!(url.expose(), "https://T0KEN@h/o/r.git");
                assert_eq!(build_args.get("NPM").map(Secret::expose), Some("npmsecret"));
            }
            Source::Image { .. } | Source::Release { .. } => panic!("git source expected"),
        }
    }

    #[test]
    fn durations_beyond_a_day_are_refused() {
        let json = r#"{"app": "a", "source": {"type": "image", "reference": "x"}, "container_port": 80,
                       "health": {"check": "tcp", "deadline": "25h"}}"#;
        let spec: DeploySpec = serde_json::from_str(json).expect("parses");
        let e = spec.check_limits().expect_err("too long").to_string();
        assert!(e.contains("health deadline") && e.contains("1day"), "{e}");
    }

    #[test]
    fn bad_fields_are_refused_with_the_field_named() {
        let json = r#"{"app": "Shop!", "source": {"type": "image", "reference": "x"}, "container_port": 80}"#;
        let err = serde_json::from_str::<DeploySpec>(json).expect_err("bad app id").to_string();
        assert!(err.contains("app id"), "{err}");
        let json = r#"{"app": "a", "source": {"type": "git", "url": "ext::sh"}, "container_port": 80}"#;
        assert!(serde_json::from_str::<DeploySpec>(json).is_err());
    }
}

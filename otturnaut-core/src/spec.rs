//! What to deploy: the [`DeploySpec`] a caller hands to a strategy.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::string_newtype;
use crate::options::{CommandLine, Cpus, LogOpt, MemorySize, NetworkName, PidsLimit, VolumeSpec};
use crate::{
    AppId, CommitSha, ContainerPort, DeploymentId, DockerfilePath, Domain, EnvName, Error, GitRef, ImageRef, RepoUrl,
    Secret,
};

/// A complete deploy request. Every field is already validated, so a spec that
/// exists can be deployed without further input checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeploySpec {
    /// The app deployed: it names the containers, images, labels and the Caddy
    /// route of every release.
    pub app: AppId,
    /// Where the release's image comes from.
    pub source: Source,
    /// The port the app listens on inside the container; it is published on a
    /// loopback host port taken from the pool.
    pub container_port: ContainerPort,
    /// The container's environment. Values are secrets: serialised and shown
    /// as [`crate::REDACTED`], passed only to the container (a rollback reads
    /// them back from it).
    #[serde(default)]
    pub env: BTreeMap<EnvName, Secret>,
    /// Hosts Caddy routes to the release, each served by one app only. Empty:
    /// the release is not routed and is reached by its host port.
    #[serde(default)]
    pub domains: Vec<Domain>,
    /// When the new release is ready for traffic (default: TCP connect).
    #[serde(default)]
    pub health: HealthCheck,
    /// Limits of the steps that wait on the outside world.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Volumes, resource limits, networks, command and logging of the container.
    #[serde(default)]
    pub runtime: RuntimeOptions,
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
            runtime: RuntimeOptions::default(),
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

/// How the release's container runs beyond image, env and port: volumes,
/// limits, networks, command and logging. None of it is secret: it is
/// recorded with the release (a container label) so that a rollback
/// re-creates the container exactly, and `status --json` shows it.
///
/// Always applied besides these: `no-new-privileges`, an init process, and
/// json-file logs rotated at [`LogOpt::DEFAULTS`] unless `log_opts` says
/// otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeOptions {
    /// Named volumes (created if missing, labelled with the app, never
    /// removed but by `undeploy --volumes`) and bind mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeSpec>,
    /// Memory limit of the container; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySize>,
    /// CPU limit of the container; none: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Process limit of the container; none: the Docker daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<PidsLimit>,
    /// User-defined networks to join (created if missing); on each the
    /// container answers to the app's name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkName>,
    /// Replaces the image's `CMD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandLine>,
    /// Replaces the image's `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<CommandLine>,
    /// json-file log options on top of (or replacing) the defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_opts: Vec<LogOpt>,
}

/// The most volumes, networks and log options a release takes, each.
pub const MAX_RUNTIME_ITEMS: usize = 64;

impl RuntimeOptions {
    /// True if no runtime option is set: the container gets only the
    /// always-applied settings.
    pub fn is_default(&self) -> bool {
        *self == RuntimeOptions::default()
    }

    /// Checks what the single values cannot: no two volumes on one container
    /// path, no network or log option twice, at most [`MAX_RUNTIME_ITEMS`]
    /// of each.
    pub fn check(&self) -> Result<(), Error> {
        let counts =
            [("volumes", self.volumes.len()), ("networks", self.networks.len()), ("log options", self.log_opts.len())];
        for (what, n) in counts {
            if n > MAX_RUNTIME_ITEMS {
                return Err(Error::invalid(
                    "runtime options",
                    format!("{n} {what}"),
                    format!("at most {MAX_RUNTIME_ITEMS} {what}"),
                ));
            }
        }
        let mut targets = std::collections::BTreeSet::new();
        for v in &self.volumes {
            if !targets.insert(v.target.as_str()) {
                return Err(Error::invalid("volume", v.to_string(), format!("a second volume on {}", v.target)));
            }
        }
        let mut networks = std::collections::BTreeSet::new();
        for n in &self.networks {
            if !networks.insert(n) {
                return Err(Error::invalid("network name", n.as_str(), "given twice"));
            }
        }
        let mut keys = std::collections::BTreeSet::new();
        for o in &self.log_opts {
            if !keys.insert(o.key()) {
                return Err(Error::invalid("log option", o.to_string(), format!("{} given twice", o.key())));
            }
        }
        Ok(())
    }

    /// The json-file options the container gets: the defaults, overridden
    /// key by key by `log_opts`.
    pub fn effective_log_opts(&self) -> BTreeMap<String, String> {
        let mut opts: BTreeMap<String, String> =
            LogOpt::DEFAULTS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        for o in &self.log_opts {
            opts.insert(o.key().to_owned(), o.value().to_owned());
        }
        opts
    }
}

/// Where a release's image comes from.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Source {
    /// Clone `url` at `git_ref` and build the Dockerfile found there.
    Git {
        /// The repository; credentials in it are secret (shown as `***`).
        url: RepoUrl,
        /// The branch, tag or full commit SHA to check out (default `main`).
        #[serde(rename = "ref", default)]
        git_ref: GitRef,
        /// The Dockerfile, relative to the repository root (default `Dockerfile`).
        #[serde(default)]
        dockerfile: DockerfilePath,
        /// `--build-arg`s by name; values are secrets, masked as `***` in
        /// events and errors (in the build log, those of 4 characters or more).
        #[serde(default)]
        build_args: BTreeMap<String, Secret>,
        /// Files for `RUN --mount=type=secret,id=ID` (BuildKit), by id:
        /// mounted during that step only, never in the image or its history.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        build_secrets: BTreeMap<String, Secret>,
        /// A private key for SSH URLs; written 0600 for the clone, then deleted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ssh_key: Option<Secret>,
    },
    /// Run an image that already exists (locally or in a registry).
    Image {
        /// The image to run, pulled if not present (within [`Timeouts::pull`]).
        reference: ImageRef,
    },
    /// Run a retained release's image again: a rollback. Made by
    /// `otturnaut_steps::rollback_spec` from what the release recorded, so
    /// the rest of the spec is that release's too.
    Release {
        /// The kept release to make live again.
        deployment: DeploymentId,
        /// The image as the user knows it (the release's [`crate::Release::image`]).
        image: ImageRef,
        /// The commit the release was built from, if it came from git.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<CommitSha>,
    },
}

/// How to tell that the new container is ready for traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is probed (default [`HealthKind::Tcp`]).
    #[serde(flatten)]
    pub kind: HealthKind,
    /// Pause between two probes (default 1s).
    #[serde(with = "humantime_serde", default = "defaults::interval")]
    pub interval: Duration,
    /// How long one probe may take (default 5s).
    #[serde(with = "humantime_serde", default = "defaults::attempt_timeout")]
    pub attempt_timeout: Duration,
    /// How long all probes together may take (default 30s): past it the
    /// deploy fails and is undone.
    #[serde(with = "humantime_serde", default = "defaults::deadline")]
    pub deadline: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck::new(HealthKind::Tcp)
    }
}

impl HealthCheck {
    /// A check of `kind` with the default interval (1s), probe timeout (5s)
    /// and deadline (30s).
    pub fn new(kind: HealthKind) -> Self {
        HealthCheck {
            kind,
            interval: defaults::interval(),
            attempt_timeout: defaults::attempt_timeout(),
            deadline: defaults::deadline(),
        }
    }
}

/// What a health probe asks of the new container. Every kind also fails
/// at once if the container exits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "check", rename_all = "lowercase")]
pub enum HealthKind {
    /// The container is running (and has not exited).
    Running,
    /// A TCP connection to the published port succeeds.
    Tcp,
    /// `GET path` answers with `expected_status`.
    Http {
        /// The path requested on the container's host port.
        path: HttpPath,
        /// The status that counts as healthy (default 200); any other fails the
        /// probe.
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
    /// How long cloning the repository may take (default 5m).
    #[serde(with = "humantime_serde", default = "defaults::fetch")]
    pub fetch: Duration,
    /// How long building the image may take (default 10m).
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
        self.runtime.check()?;
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
    fn runtime_options_round_trip_and_are_checked() {
        let json = r#"{"app": "a", "source": {"type": "image", "reference": "x"}, "container_port": 80,
                       "runtime": {"volumes": ["data:/data", "/srv/c:/etc/c:ro"], "memory": "1g", "cpus": "0.5",
                                   "pids_limit": "64", "networks": ["backend"], "command": "a 'b c'",
                                   "entrypoint": ["/init"], "log_opts": ["max-file=5"]}}"#;
        let spec: DeploySpec = serde_json::from_str(json).expect("parses");
        assert!(spec.check_limits().is_ok());
        let again: DeploySpec = serde_json::from_str(&serde_json::to_string(&spec).expect("ser")).expect("de");
        assert_eq!(again.runtime, spec.runtime);
        assert_eq!(spec.runtime.command.as_ref().map(|c| c.words().len()), Some(2));
        let bad = json.replace("\"max-file=5\"]", "\"max-file=5\", \"max-file=6\"]");
        let spec: DeploySpec = serde_json::from_str(&bad).expect("parses");
        assert!(spec.check_limits().is_err(), "a log option twice");
        let unknown = json.replace("\"cpus\"", "\"cpu\"");
        assert!(serde_json::from_str::<DeploySpec>(&unknown).is_err(), "unknown runtime keys are refused");
        let defaults: DeploySpec = serde_json::from_str(
            r#"{"app": "a", "source": {"type": "image", "reference": "x"},
            "container_port": 80}"#,
        )
        .expect("parses");
        assert_eq!(defaults.runtime, RuntimeOptions::default());
        assert_eq!(serde_json::to_string(&defaults.runtime).expect("ser"), "{}");
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

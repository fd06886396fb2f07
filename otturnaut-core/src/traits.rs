//! The port traits: everything the pipeline needs from the outside world.
//!
//! Each acquiring call has a matching release call that is safe to repeat
//! (idempotent) and that needs only names known *before* the acquiring call
//! (app, deployment, the deterministic image tag and container name). The
//! pipeline arms an undo before each side effect, so a call that did its work
//! and then failed (a lost response) is undone too.
//!
//! Architecture invariant: that pairing holds for every acquiring method
//! added here; a new side effect without such a release cannot be undone.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    AppId, CommitSha, ContainerId, ContainerPort, ContainerStatus, DeploymentId, DockerfilePath, Domain, EnvName,
    EventSink, GitRef, HealthCheck, HostPort, ImageRef, ManagedContainer, ManagedImage, RecordedRelease, Release,
    ReleaseRecord, RepoUrl, Result, RouteTarget, RuntimeOptions, Secret,
};

/// A source tree checked out for one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedSource {
    /// A directory owned by this deployment, removed by [`SourceFetcher::remove`].
    pub dir: PathBuf,
    /// The commit checked out.
    pub commit: CommitSha,
}

/// What [`SourceFetcher::fetch`] needs to check out one deployment's source.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// The app fetched for.
    pub app: AppId,
    /// The deployment fetched for: it names the directory.
    pub deployment: DeploymentId,
    /// The repository.
    pub url: RepoUrl,
    /// The branch, tag or commit to check out.
    pub git_ref: GitRef,
    /// A deploy key for an SSH URL (written 0600, deleted after the fetch).
    pub ssh_key: Option<Secret>,
    /// How long the fetch may take.
    pub timeout: Duration,
}

/// Fetches a deployment's source tree (git).
#[async_trait]
pub trait SourceFetcher: Send + Sync {
    /// Shallow-clones `req.url` at `req.git_ref` into a fresh directory whose
    /// location is determined by app and deployment alone.
    async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource>;
    /// Deletes the tree (and any key file) fetched for this deployment.
    /// Succeeds if there is none: the pipeline calls it even when `fetch`
    /// failed, since a failure may come after the side effect.
    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()>;
    /// Every deployment that still has a fetched tree or key file on disk.
    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>>;
}

/// What [`ImageBuilder::build`] needs to build one deployment's image.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    /// The app built for.
    pub app: AppId,
    /// The deployment built for: it names the tag.
    pub deployment: DeploymentId,
    /// The build context (the fetched tree).
    pub context_dir: PathBuf,
    /// The Dockerfile, relative to the context.
    pub dockerfile: DockerfilePath,
    /// `--build-arg`s; secret: redacted from logs and errors.
    pub build_args: BTreeMap<String, Secret>,
    /// Contents for `RUN --mount=type=secret,id=ID`, by id (BuildKit only).
    pub build_secrets: BTreeMap<String, Secret>,
    /// Recorded as labels on the image.
    pub repo: RepoUrl,
    /// The commit built (recorded as a label too).
    pub commit: CommitSha,
    /// How long the build may take.
    pub timeout: Duration,
}

impl BuildRequest {
    /// The tag every built image gets: `otturnaut-{app}:{deployment}`.
    pub fn tag(&self) -> ImageRef {
        image_tag(&self.app, &self.deployment)
    }
}

/// The release tag, `otturnaut-{app}:{deployment}`: every release's image has
/// it (built, prebuilt or rolled back to), and its container runs it.
pub fn image_tag(app: &AppId, deployment: &DeploymentId) -> ImageRef {
    ImageRef::ours(app, format_args!("{deployment}"))
}

/// The live mark: a second tag on the release image, `otturnaut-{app}:live-{deployment}`.
/// Writing it is the commit point of a deploy (see [`crate::live_container`]).
/// `live-` cannot start a deployment id, so the two kinds of tag never mix.
pub fn live_tag(app: &AppId, deployment: &DeploymentId) -> ImageRef {
    ImageRef::ours(app, format_args!("{LIVE_PREFIX}{deployment}"))
}

/// What starts the tag of a live mark.
pub const LIVE_PREFIX: &str = "live-";

/// The kept mark: a tag on the image of a release that was live once and is
/// retained for a rollback, `otturnaut-{app}:kept-{deployment}`. Written when
/// the release is retired, before its live mark is removed.
pub fn kept_tag(app: &AppId, deployment: &DeploymentId) -> ImageRef {
    ImageRef::ours(app, format_args!("{KEPT_PREFIX}{deployment}"))
}

/// What starts the tag of a kept mark.
pub const KEPT_PREFIX: &str = "kept-";

/// The container of a release, `otturnaut-{app}-{deployment}`.
pub fn container_name(app: &AppId, deployment: &DeploymentId) -> String {
    format!("otturnaut-{app}-{deployment}")
}

/// Images: builds, pulls, our tags and the listing of release images.
#[async_trait]
pub trait ImageBuilder: Send + Sync {
    /// Builds and tags the image, streaming log lines to `events`. Returns the
    /// image reference to run (the tag).
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef>;
    /// Makes sure a prebuilt image is present locally (pulling it if not) and
    /// tags it as the release's own `tag` ([`image_tag`]), which pins the exact
    /// image for this release even if the reference later moves.
    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()>;
    /// Tags `image` (an image id or reference) as `tag`, moving the tag if it
    /// exists. Atomic.
    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()>;
    /// Removes a tag of ours; the image goes with its last tag. Succeeds if
    /// it is already gone.
    async fn remove_image(&self, image: &ImageRef) -> Result<()>;
    /// Our release images, found by their tags (see [`ManagedImage`]).
    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>>;
    /// Removes untagged images left by the agent's own builds (of `app`, or
    /// of every app), that no container uses.
    async fn prune_dangling(&self, app: Option<&AppId>) -> Result<Pruned>;
}

/// What [`ImageBuilder::prune_dangling`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Image ids.
    pub removed: Vec<String>,
    /// Bytes freed, as Docker reports them.
    pub freed_bytes: u64,
}

/// What [`ContainerRuntime::start`] needs to create and start one
/// release's container.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The app.
    pub app: AppId,
    /// The deployment: it names the container.
    pub deployment: DeploymentId,
    /// What the container runs: the release tag ([`image_tag`]).
    pub image: ImageRef,
    /// The image as the user knows it, recorded in a label for `status`.
    pub reference: ImageRef,
    /// The host port the container port is published on (loopback).
    pub host_port: HostPort,
    /// The port the app listens on inside the container.
    pub container_port: ContainerPort,
    /// The environment; values are secrets, never recorded in labels.
    pub env: BTreeMap<EnvName, Secret>,
    /// The domains the release serves (recorded in a label).
    pub domains: Vec<Domain>,
    /// Recorded with the release (with the env's names) for a rollback.
    pub health: HealthCheck,
    /// The commit deployed, for a git deploy.
    pub commit: Option<CommitSha>,
    /// Set when this release rolls back to an earlier one.
    pub rollback_of: Option<DeploymentId>,
    /// Volumes, limits, networks, command and logging; recorded with the
    /// release too.
    pub options: RuntimeOptions,
    /// Grace between SIGTERM and SIGKILL, set as the container's own stop
    /// timeout too, so that an operator's `docker stop` honours it.
    pub stop_timeout: std::time::Duration,
    /// How long the drain of this release may wait; recorded for a rollback.
    pub drain_timeout: std::time::Duration,
}

impl RunRequest {
    /// What is recorded on the container about this release.
    pub fn record(&self) -> ReleaseRecord {
        ReleaseRecord {
            health: self.health.clone(),
            env: self.env.keys().cloned().collect(),
            commit: self.commit.clone(),
            rollback_of: self.rollback_of.clone(),
            runtime: self.options.clone(),
            stop_timeout: Some(self.stop_timeout),
            drain_timeout: Some(self.drain_timeout),
        }
    }

    /// The container's name, [`container_name`].
    pub fn name(&self) -> String {
        container_name(&self.app, &self.deployment)
    }
}

/// Containers: start, stop, remove, inspect, list.
#[async_trait]
pub trait ContainerRuntime: Send + Sync {
    /// Creates and starts the container. Either it is running afterwards or
    /// nothing was left behind. A host port someone else took is reported as
    /// [`crate::Error::PortTaken`] so the caller can try another.
    async fn start(&self, req: &RunRequest) -> Result<ContainerId>;
    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()>;
    /// Kills (if running) and removes, by id or name. Succeeds if it is already gone.
    async fn remove(&self, id: &ContainerId) -> Result<()>;
    /// Whether it runs (and its exit code if not).
    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus>;
    /// Its last `tail` log lines (for the error of a failed health check).
    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>>;
    /// Our genuine containers (of `app`, or of every app).
    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>>;
    /// What the container was started with ([`RecordedRelease`]), env values
    /// included, so that a rollback can start the release again.
    async fn recorded(&self, id: &ContainerId) -> Result<RecordedRelease>;
    /// Removes the named volumes made for `app` (`undeploy --volumes`; no
    /// other caller: volumes hold data across releases), returning their
    /// names. A runtime without volumes has none to remove.
    async fn remove_volumes(&self, app: &AppId) -> Result<Vec<String>> {
        let _ = app;
        Ok(Vec::new())
    }
}

/// Caddy's routes of our apps.
#[async_trait]
pub trait Router: Send + Sync {
    /// Where the app's route points now, if it has one.
    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>>;
    /// Creates or replaces the app's route in one config change. Fails with
    /// [`crate::Error::DomainTaken`], changing nothing, if another app's route
    /// serves one of the domains.
    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()>;
    /// Creates or replaces every listed app's route in **one** config change
    /// (one Caddy reload however many apps), with the same domain rule.
    async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()>;
    /// Deletes the app's route. Succeeds if there is none.
    async fn remove_route(&self, app: &AppId) -> Result<()>;
    /// Requests currently in flight to the upstream on `port`.
    async fn in_flight(&self, port: HostPort) -> Result<u64>;
    /// Every app route we own (for state rebuild and reconcile).
    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>>;
    /// Whether the app's route must be written again although it targets
    /// the right port: where the release runs has changed since (a cluster
    /// moved its tasks). `reconcile` rewrites such a route. On one host the
    /// upstream is always `host:port`, so never.
    async fn needs_rewrite(&self, app: &AppId) -> Result<bool> {
        let _ = app;
        Ok(false)
    }
    /// `Some(delay)` when upgraded streams (WebSockets, SSE) outlive a
    /// switch and only [`Router::close_streams`] ends them with a close frame,
    /// `delay` after it is asked: the drain asks that long before its
    /// deadline. `None` when switches already close them (a reload per
    /// switch), or nothing can.
    async fn stream_close_delay(&self) -> Result<Option<Duration>> {
        Ok(None)
    }
    /// Has the proxy close every upgraded stream it holds open (every app's,
    /// not only a retiring release's) with a close frame after
    /// [`Router::stream_close_delay`]; clients reconnect to what is live.
    async fn close_streams(&self) -> Result<()> {
        Ok(())
    }
}

/// Host ports for new containers.
#[async_trait]
pub trait PortAllocator: Send + Sync {
    /// Reserves a free host port for `owner` (a deployment holds at most one);
    /// `avoid` lists ports a previous attempt found taken.
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort>;
    /// Returns `owner`'s port to the pool. Succeeds if it holds none: the
    /// pipeline calls it even when `allocate` failed.
    async fn release(&self, owner: &DeploymentId) -> Result<()>;
}

/// Decides when a new container is ready for traffic.
#[async_trait]
pub trait HealthProbe: Send + Sync {
    /// Waits until the container passes `check` or the check's deadline passes.
    /// Fails at once if the container exits.
    async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()>;
}

/// Which release of an app is live: read, recorded at the commit point,
/// restored when a commit is undone.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The live release of `app`, rebuilt from the outside world.
    async fn load(&self, app: &AppId) -> Result<Option<Release>>;
    /// Records `release` as live: the commit point of a deploy.
    async fn record(&self, release: &Release) -> Result<()>;
    /// Puts back what was recorded for `app` before (`None`: nothing), the
    /// undo of a `record` whose outcome is in doubt.
    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()>;
}

/// Every port a strategy drives, as shared trait objects.
#[derive(Clone)]
pub struct Adapters {
    /// git.
    pub fetcher: Arc<dyn SourceFetcher>,
    /// Images: build, pull, tag, remove, list.
    pub builder: Arc<dyn ImageBuilder>,
    /// Containers.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Caddy's routes.
    pub router: Arc<dyn Router>,
    /// Host ports.
    pub ports: Arc<dyn PortAllocator>,
    /// Health checks.
    pub health: Arc<dyn HealthProbe>,
    /// Which release is live (the live mark).
    pub state: Arc<dyn StateStore>,
}

impl fmt::Debug for Adapters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Adapters { .. }")
    }
}

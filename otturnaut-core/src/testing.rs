// Long file: one fake plays all seven ports over one shared world, so its parts cannot drift apart.
//! Recording fakes of the port traits, for tests of the pipeline and of
//! front ends. One [`Fake`] plays the whole outside world: it keeps the
//! resources that exist (dirs, image tags, ports, containers, routes), logs
//! every acquire and release in order, and fails, hangs or panics wherever its
//! [`FaultPlan`] says.
//!
//! It has no state store of its own: what is live is read from its image tags
//! (the live marks), by the production store (`otturnaut_steps::LabelState`)
//! handed to [`Fake::adapters`], so tests prove the real commit semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::faults::{Call, Fault, FaultPlan, Phase};
use crate::traits::{
    Adapters, BuildRequest, ContainerRuntime, FetchRequest, FetchedSource, HealthProbe, ImageBuilder, PortAllocator,
    Router, RunRequest, SourceFetcher, StateStore, container_name, image_tag, live_tag,
};
use crate::traits::{KEPT_PREFIX, LIVE_PREFIX};
use crate::{
    AppId, CommitSha, ContainerId, ContainerStatus, DeploymentId, Error, EventSink, HealthCheck, HostPort, ImageRef,
    ManagedContainer, ManagedImage, Release, Result, RouteTarget,
};

/// A resource the fake world can hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// A deployment's fetched source tree.
    Source(DeploymentId),
    /// An image tag (a release tag, a live or kept mark).
    Image(ImageRef),
    /// A host port held for a deployment.
    Port(DeploymentId, HostPort),
    /// A container, by name.
    Container(String),
    /// An app's route pointing at a port.
    Route(AppId, HostPort),
}

/// One entry of the fake's acquire/release log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// The resource came into existence.
    Acquire(Resource),
    /// The resource went away.
    Release(Resource),
}

/// A container in the fake world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeContainer {
    /// The app it belongs to.
    pub app: AppId,
    /// The deployment that started it.
    pub deployment: DeploymentId,
    /// The image tag it runs (the release tag, [`image_tag`]).
    pub image: ImageRef,
    /// The image as the user knows it ([`RunRequest::reference`]).
    pub reference: ImageRef,
    /// Its host port.
    pub port: HostPort,
    /// False once stopped.
    pub running: bool,
    /// The domains it was started for.
    pub domains: Vec<crate::Domain>,
}

/// Everything that exists in the fake world. Compare two snapshots to see
/// what a deploy changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    /// Fetched source trees.
    pub sources: BTreeSet<(AppId, DeploymentId)>,
    /// Image tags: release tags, live marks and kept marks.
    pub images: BTreeSet<ImageRef>,
    /// Host ports held, by deployment.
    pub ports: BTreeMap<DeploymentId, HostPort>,
    /// Containers, by name.
    pub containers: BTreeMap<String, FakeContainer>,
    /// Caddy's routes, by app.
    pub routes: BTreeMap<AppId, RouteTarget>,
}

#[derive(Debug, Default)]
struct Inner {
    world: World,
    log: Vec<Op>,
    calls: Vec<Call>,
    next_port: u16,
    /// The commit each built release tag was built from (image labels, in Docker).
    commits: BTreeMap<ImageRef, CommitSha>,
}

/// The fake outside world. Cheap to clone; clones share the world.
#[derive(Clone, Debug, Default)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// Where calls fail, hang or panic.
    pub faults: Arc<FaultPlan>,
}

impl Fake {
    /// An empty world with no faults planned.
    pub fn new() -> Self {
        Fake::default()
    }

    /// The same world without the fault plan: what a state store is built
    /// over, as in the agent, where fault injection wraps the store from
    /// outside and never the ports it calls.
    pub fn unfaulted(&self) -> Fake {
        Fake { inner: self.inner.clone(), faults: Arc::new(FaultPlan::default()) }
    }

    /// The six other port traits backed by this fake, and `state` (a store
    /// over [`Fake::unfaulted`]) behind the fault points `load_state` and
    /// `record_state`.
    pub fn adapters(&self, state: Arc<dyn StateStore>) -> Adapters {
        Adapters {
            fetcher: Arc::new(self.clone()),
            builder: Arc::new(self.clone()),
            runtime: Arc::new(self.clone()),
            router: Arc::new(self.clone()),
            ports: Arc::new(self.clone()),
            health: Arc::new(self.clone()),
            state: Arc::new(FaultyState { fake: self.clone(), inner: state }),
        }
    }

    /// Plans one more fault.
    pub fn fail(&self, fault: Fault) {
        self.faults.add(fault);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A snapshot of everything that exists now.
    pub fn world(&self) -> World {
        self.lock().world.clone()
    }

    /// Every acquire and release, in the order they happened.
    pub fn log(&self) -> Vec<Op> {
        self.lock().log.clone()
    }

    /// Every adapter call, in order (fault point names).
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the log and the calls so far.
    pub fn clear_log(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.calls.clear();
    }

    /// Sets up a live release of `app`, as a previous deploy would have left it.
    pub fn seed_release(&self, app: &AppId, domains: Vec<crate::Domain>) -> Result<Release> {
        // A second older than now: ULIDs made in the same millisecond are
        // not ordered, and the newer live mark must be the newer deploy's.
        let now = ulid::Ulid::new();
        let older = ulid::Ulid::from_parts(now.timestamp_ms().saturating_sub(1000), now.random());
        let deployment: DeploymentId = older.to_string().to_ascii_lowercase().parse()?;
        let image = image_tag(app, &deployment);
        let name = container_name(app, &deployment);
        let mut inner = self.lock();
        let port = next_port(&mut inner);
        let w = &mut inner.world;
        w.images.insert(image.clone());
        w.images.insert(live_tag(app, &deployment));
        w.ports.insert(deployment.clone(), port);
        w.containers.insert(
            name.clone(),
            FakeContainer {
                app: app.clone(),
                deployment: deployment.clone(),
                image: image.clone(),
                reference: image.clone(),
                port,
                running: true,
                domains: domains.clone(),
            },
        );
        if !domains.is_empty() {
            w.routes.insert(app.clone(), RouteTarget { domains: domains.clone(), port });
        }
        Ok(Release {
            app: app.clone(),
            deployment,
            container: ContainerId(name),
            image,
            host_port: port,
            domains,
            commit: None,
        })
    }

    /// One fault point: yields first (so every call is an await point a
    /// cancelling test can stop at), then consults the plan.
    async fn point(&self, call: Call, phase: Phase) -> Result<()> {
        tokio::task::yield_now().await;
        if phase == Phase::Before {
            self.lock().calls.push(call);
        }
        self.faults.hit(call, phase).await
    }

    fn acquire(&self, r: Resource) {
        self.lock().log.push(Op::Acquire(r));
    }

    fn release(&self, r: Resource) {
        self.lock().log.push(Op::Release(r));
    }
}

fn next_port(inner: &mut Inner) -> HostPort {
    inner.next_port = inner.next_port.max(20000) + 1;
    HostPort::try_from(inner.next_port).unwrap_or_else(|_| unreachable!("fake ports start at 20001"))
}

#[async_trait]
impl SourceFetcher for Fake {
    async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource> {
        self.point(Call::Fetch, Phase::Before).await?;
        self.lock().world.sources.insert((req.app.clone(), req.deployment.clone()));
        self.acquire(Resource::Source(req.deployment.clone()));
        self.point(Call::Fetch, Phase::After).await?;
        let commit: CommitSha = "0123456789abcdef0123456789abcdef01234567".parse()?;
        Ok(FetchedSource { dir: format!("/fake/src/{}-{}", req.app, req.deployment).into(), commit })
    }

    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>> {
        Ok(self.lock().world.sources.iter().cloned().collect())
    }

    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()> {
        self.point(Call::RemoveSource, Phase::Before).await?;
        if self.lock().world.sources.remove(&(app.clone(), deployment.clone())) {
            self.release(Resource::Source(deployment.clone()));
        }
        self.point(Call::RemoveSource, Phase::After).await
    }
}

#[async_trait]
impl ImageBuilder for Fake {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        self.point(Call::Build, Phase::Before).await?;
        events.emit(crate::DeployEvent::BuildLog { line: "Step 1/1 : FROM scratch".into() });
        let tag = req.tag();
        {
            let mut inner = self.lock();
            inner.world.images.insert(tag.clone());
            inner.commits.insert(tag.clone(), req.commit.clone());
        }
        self.acquire(Resource::Image(tag.clone()));
        self.point(Call::Build, Phase::After).await?;
        Ok(tag)
    }

    async fn ensure_image(&self, _reference: &ImageRef, tag: &ImageRef, _events: &EventSink) -> Result<()> {
        self.point(Call::EnsureImage, Phase::Before).await?;
        if self.lock().world.images.insert(tag.clone()) {
            self.acquire(Resource::Image(tag.clone()));
        }
        self.point(Call::EnsureImage, Phase::After).await
    }

    async fn tag_image(&self, _image: &str, tag: &ImageRef) -> Result<()> {
        if self.lock().world.images.insert(tag.clone()) {
            self.acquire(Resource::Image(tag.clone()));
        }
        Ok(())
    }

    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        self.point(Call::RemoveImage, Phase::Before).await?;
        if self.lock().world.images.remove(image) {
            self.release(Resource::Image(image.clone()));
        }
        self.point(Call::RemoveImage, Phase::After).await
    }

    /// Groups the tags by deployment, as the Docker adapter does. A tag
    /// names one image, so every tag of a deployment shares the release
    /// tag's name as its id.
    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        let inner = self.lock();
        let mut found: BTreeMap<(AppId, DeploymentId), ManagedImage> = BTreeMap::new();
        for tag in &inner.world.images {
            let Some((of, rest)) = tag.as_str().strip_prefix("otturnaut-").and_then(|t| t.split_once(':')) else {
                continue;
            };
            let (kind, deployment) = match (rest.strip_prefix(LIVE_PREFIX), rest.strip_prefix(KEPT_PREFIX)) {
                (Some(d), _) => (LIVE_PREFIX, d),
                (_, Some(d)) => (KEPT_PREFIX, d),
                _ => ("", rest),
            };
            let (Ok(of), Ok(deployment)) = (of.parse::<AppId>(), deployment.parse::<DeploymentId>()) else { continue };
            if app.is_some_and(|a| *a != of) {
                continue;
            }
            let release_tag = image_tag(&of, &deployment);
            let image = found.entry((of.clone(), deployment.clone())).or_insert_with(|| ManagedImage {
                commit: inner.commits.get(&release_tag).cloned(),
                ..ManagedImage::bare(release_tag.to_string(), of, deployment)
            });
            match kind {
                LIVE_PREFIX => {
                    image.live = true;
                    image.tags.insert(0, tag.clone());
                }
                KEPT_PREFIX => {
                    image.kept = true;
                    image.tags.push(tag.clone());
                }
                _ => {
                    image.released = true;
                    image.tags.push(tag.clone());
                }
            }
        }
        Ok(found.into_values().collect())
    }

    async fn prune_dangling(&self, _app: Option<&AppId>) -> Result<crate::traits::Pruned> {
        Ok(crate::traits::Pruned::default())
    }
}

#[async_trait]
impl PortAllocator for Fake {
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort> {
        self.point(Call::AllocatePort, Phase::Before).await?;
        let port = {
            let mut inner = self.lock();
            let mut port = next_port(&mut inner);
            while avoid.contains(&port) {
                port = next_port(&mut inner);
            }
            inner.world.ports.insert(owner.clone(), port);
            port
        };
        self.acquire(Resource::Port(owner.clone(), port));
        self.point(Call::AllocatePort, Phase::After).await?;
        Ok(port)
    }

    async fn release(&self, owner: &DeploymentId) -> Result<()> {
        self.point(Call::ReleasePort, Phase::Before).await?;
        let released = self.lock().world.ports.remove(owner);
        if let Some(port) = released {
            Fake::release(self, Resource::Port(owner.clone(), port));
        }
        self.point(Call::ReleasePort, Phase::After).await
    }
}

#[async_trait]
impl ContainerRuntime for Fake {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        self.point(Call::StartContainer, Phase::Before).await?;
        let name = req.name();
        self.lock().world.containers.insert(
            name.clone(),
            FakeContainer {
                app: req.app.clone(),
                deployment: req.deployment.clone(),
                image: req.image.clone(),
                reference: req.reference.clone(),
                port: req.host_port,
                running: true,
                domains: req.domains.clone(),
            },
        );
        self.acquire(Resource::Container(name.clone()));
        self.point(Call::StartContainer, Phase::After).await?;
        Ok(ContainerId(name))
    }

    async fn stop(&self, id: &ContainerId, _grace: Duration) -> Result<()> {
        self.point(Call::StopContainer, Phase::Before).await?;
        if let Some(c) = self.lock().world.containers.get_mut(&id.0) {
            c.running = false;
        }
        self.point(Call::StopContainer, Phase::After).await
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        self.point(Call::RemoveContainer, Phase::Before).await?;
        if self.lock().world.containers.remove(&id.0).is_some() {
            self.release(Resource::Container(id.0.clone()));
        }
        self.point(Call::RemoveContainer, Phase::After).await
    }

    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let running = self.lock().world.containers.get(&id.0).is_some_and(|c| c.running);
        Ok(ContainerStatus { running, restarting: false, exit_code: (!running).then_some(0), started: None })
    }

    async fn logs(&self, _id: &ContainerId, _tail: usize) -> Result<Vec<String>> {
        Ok(vec!["fake log line".into()])
    }

    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        let inner = self.lock();
        Ok(inner
            .world
            .containers
            .iter()
            .filter(|(_, c)| app.is_none_or(|a| *a == c.app))
            .map(|(name, c)| ManagedContainer {
                id: ContainerId(name.clone()),
                name: name.clone(),
                app: c.app.clone(),
                deployment: c.deployment.clone(),
                image: c.reference.to_string(),
                // The fake names images by their release tag (see `list_images`).
                image_id: c.image.to_string(),
                legacy: false,
                host_port: Some(c.port),
                container_port: None,
                domains: c.domains.clone(),
                running: c.running,
                state: if c.running { "running" } else { "exited" }.into(),
                // Deployment ids sort by creation time, so they stand in for it.
                created: 0,
                record: None,
            })
            .collect())
    }

    async fn recorded(&self, id: &ContainerId) -> Result<crate::RecordedRelease> {
        Err(Error::failed(format!("reading what container {id} was started with"), "the fake records nothing"))
    }
}

#[async_trait]
impl HealthProbe for Fake {
    async fn check(&self, container: &ContainerId, _port: HostPort, _check: &HealthCheck) -> Result<()> {
        self.point(Call::HealthCheck, Phase::Before).await?;
        let running = self.lock().world.containers.get(&container.0).is_some_and(|c| c.running);
        if !running {
            return Err(Error::ContainerExited { container: container.clone(), exit_code: 1, logs: Vec::new() });
        }
        self.point(Call::HealthCheck, Phase::After).await
    }
}

#[async_trait]
impl Router for Fake {
    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        Ok(self.lock().world.routes.get(app).cloned())
    }

    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        self.point(Call::SwitchRoute, Phase::Before).await?;
        let old = self.lock().world.routes.insert(app.clone(), target.clone());
        if let Some(old) = old {
            self.release(Resource::Route(app.clone(), old.port));
        }
        self.acquire(Resource::Route(app.clone(), target.port));
        self.point(Call::SwitchRoute, Phase::After).await
    }

    async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()> {
        for (app, target) in routes {
            let old = self.lock().world.routes.insert(app.clone(), target.clone());
            if let Some(old) = old {
                self.release(Resource::Route(app.clone(), old.port));
            }
            self.acquire(Resource::Route(app.clone(), target.port));
        }
        Ok(())
    }

    async fn remove_route(&self, app: &AppId) -> Result<()> {
        self.point(Call::RemoveRoute, Phase::Before).await?;
        let old = self.lock().world.routes.remove(app);
        if let Some(old) = old {
            self.release(Resource::Route(app.clone(), old.port));
        }
        self.point(Call::RemoveRoute, Phase::After).await
    }

    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        Ok(self.lock().world.routes.iter().map(|(a, t)| (a.clone(), t.clone())).collect())
    }

    async fn in_flight(&self, _port: HostPort) -> Result<u64> {
        self.point(Call::Drain, Phase::Before).await?;
        self.point(Call::Drain, Phase::After).await?;
        Ok(0)
    }
}

/// The fault points of a state store around the one under test.
struct FaultyState {
    fake: Fake,
    inner: Arc<dyn StateStore>,
}

#[async_trait]
impl StateStore for FaultyState {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        self.fake.point(Call::LoadState, Phase::Before).await?;
        let found = self.inner.load(app).await?;
        self.fake.point(Call::LoadState, Phase::After).await?;
        Ok(found)
    }

    async fn record(&self, release: &Release) -> Result<()> {
        self.fake.point(Call::RecordState, Phase::Before).await?;
        self.inner.record(release).await?;
        self.fake.point(Call::RecordState, Phase::After).await
    }

    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()> {
        self.fake.point(Call::RecordState, Phase::Before).await?;
        self.inner.restore(app, previous).await?;
        self.fake.point(Call::RecordState, Phase::After).await
    }
}

//! Recording fakes of every port trait, for tests of the pipeline and of
//! front ends. One [`Fake`] plays the whole outside world: it keeps the
//! resources that exist (dirs, images, ports, containers, routes, recorded
//! state), logs every acquire and release in order, and fails, hangs or panics
//! wherever its [`FaultPlan`] says.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::faults::{Fault, FaultPlan, Phase};
use crate::traits::{
    Adapters, BuildRequest, ContainerRuntime, FetchRequest, FetchedSource, HealthProbe, ImageBuilder, PortAllocator,
    Router, RunRequest, SourceFetcher, StateStore, container_name, image_tag, live_tag,
};
use crate::{
    AppId, CommitSha, ContainerId, ContainerStatus, DeploymentId, Error, EventSink, HealthCheck, HostPort, ImageRef,
    ManagedContainer, ManagedImage, Release, Result, RouteTarget,
};

/// A resource the fake world can hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Source(DeploymentId),
    Image(String),
    Port(DeploymentId, HostPort),
    Container(String),
    /// An app's route pointing at a port.
    Route(AppId, HostPort),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Acquire(Resource),
    Release(Resource),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeContainer {
    pub app: AppId,
    pub deployment: DeploymentId,
    pub image: String,
    pub port: HostPort,
    pub running: bool,
    pub domains: Vec<crate::Domain>,
}

/// Everything that exists in the fake world. Compare two snapshots to see
/// what a deploy changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct World {
    pub sources: BTreeSet<(AppId, DeploymentId)>,
    pub images: BTreeSet<String>,
    pub ports: BTreeMap<DeploymentId, HostPort>,
    pub containers: BTreeMap<String, FakeContainer>,
    pub routes: BTreeMap<AppId, RouteTarget>,
    pub recorded: BTreeMap<AppId, Release>,
}

#[derive(Debug, Default)]
struct Inner {
    world: World,
    log: Vec<Op>,
    calls: Vec<String>,
    next_port: u16,
}

/// The fake outside world. Cheap to clone; clones share the world.
#[derive(Clone, Debug, Default)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    pub faults: Arc<FaultPlan>,
}

impl Fake {
    pub fn new() -> Self {
        Fake::default()
    }

    /// All seven port traits backed by this fake.
    pub fn adapters(&self) -> Adapters {
        Adapters {
            fetcher: Arc::new(self.clone()),
            builder: Arc::new(self.clone()),
            runtime: Arc::new(self.clone()),
            router: Arc::new(self.clone()),
            ports: Arc::new(self.clone()),
            health: Arc::new(self.clone()),
            state: Arc::new(self.clone()),
        }
    }

    pub fn fail(&self, fault: Fault) {
        self.faults.add(fault);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn world(&self) -> World {
        self.lock().world.clone()
    }

    /// Every acquire and release, in the order they happened.
    pub fn log(&self) -> Vec<Op> {
        self.lock().log.clone()
    }

    /// Every adapter call, in order (fault point names).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn clear_log(&self) {
        let mut inner = self.lock();
        inner.log.clear();
        inner.calls.clear();
    }

    /// Sets up a live release of `app`, as a previous deploy would have left it.
    pub fn seed_release(&self, app: &AppId, domains: Vec<crate::Domain>) -> Release {
        let deployment = DeploymentId::generate();
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
                port,
                running: true,
                domains: domains.clone(),
            },
        );
        if !domains.is_empty() {
            w.routes.insert(app.clone(), RouteTarget { domains: domains.clone(), port });
        }
        let release = Release {
            app: app.clone(),
            deployment,
            container: ContainerId(name),
            image,
            host_port: port,
            domains,
            commit: None,
        };
        w.recorded.insert(app.clone(), release.clone());
        release
    }

    /// One fault point: yields first (so every call is an await point a
    /// cancelling test can stop at), then consults the plan.
    async fn point(&self, call: &str, phase: Phase) -> Result<()> {
        tokio::task::yield_now().await;
        if phase == Phase::Before {
            self.lock().calls.push(call.to_owned());
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
        self.point("fetch", Phase::Before).await?;
        self.lock().world.sources.insert((req.app.clone(), req.deployment.clone()));
        self.acquire(Resource::Source(req.deployment.clone()));
        self.point("fetch", Phase::After).await?;
        let commit: CommitSha = "0123456789abcdef0123456789abcdef01234567".parse()?;
        Ok(FetchedSource { dir: format!("/fake/src/{}-{}", req.app, req.deployment).into(), commit })
    }

    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>> {
        Ok(self.lock().world.sources.iter().cloned().collect())
    }

    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()> {
        self.point("remove_source", Phase::Before).await?;
        if self.lock().world.sources.remove(&(app.clone(), deployment.clone())) {
            self.release(Resource::Source(deployment.clone()));
        }
        self.point("remove_source", Phase::After).await
    }
}

#[async_trait]
impl ImageBuilder for Fake {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<String> {
        self.point("build", Phase::Before).await?;
        events.emit(crate::DeployEvent::BuildLog { line: "Step 1/1 : FROM scratch".into() });
        let tag = req.tag();
        self.lock().world.images.insert(tag.clone());
        self.acquire(Resource::Image(tag.clone()));
        self.point("build", Phase::After).await?;
        Ok(tag)
    }

    async fn ensure_image(&self, _reference: &ImageRef, tag: &str, _events: &EventSink) -> Result<()> {
        self.point("ensure_image", Phase::Before).await?;
        if self.lock().world.images.insert(tag.to_owned()) {
            self.acquire(Resource::Image(tag.to_owned()));
        }
        self.point("ensure_image", Phase::After).await
    }

    async fn tag_image(&self, _image: &str, tag: &str) -> Result<()> {
        if self.lock().world.images.insert(tag.to_owned()) {
            self.acquire(Resource::Image(tag.to_owned()));
        }
        Ok(())
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        self.point("remove_image", Phase::Before).await?;
        if self.lock().world.images.remove(image) {
            self.release(Resource::Image(image.to_owned()));
        }
        self.point("remove_image", Phase::After).await
    }

    async fn list_images(&self, _app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        Ok(Vec::new())
    }

    async fn prune_dangling(&self, _app: Option<&AppId>) -> Result<crate::traits::Pruned> {
        Ok(crate::traits::Pruned::default())
    }
}

#[async_trait]
impl PortAllocator for Fake {
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort> {
        self.point("allocate_port", Phase::Before).await?;
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
        self.point("allocate_port", Phase::After).await?;
        Ok(port)
    }

    async fn release(&self, owner: &DeploymentId) -> Result<()> {
        self.point("release_port", Phase::Before).await?;
        let released = self.lock().world.ports.remove(owner);
        if let Some(port) = released {
            Fake::release(self, Resource::Port(owner.clone(), port));
        }
        self.point("release_port", Phase::After).await
    }
}

#[async_trait]
impl ContainerRuntime for Fake {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        self.point("start_container", Phase::Before).await?;
        let name = req.name();
        self.lock().world.containers.insert(
            name.clone(),
            FakeContainer {
                app: req.app.clone(),
                deployment: req.deployment.clone(),
                image: req.image.clone(),
                port: req.host_port,
                running: true,
                domains: req.domains.clone(),
            },
        );
        self.acquire(Resource::Container(name.clone()));
        self.point("start_container", Phase::After).await?;
        Ok(ContainerId(name))
    }

    async fn stop(&self, id: &ContainerId, _grace: Duration) -> Result<()> {
        self.point("stop_container", Phase::Before).await?;
        if let Some(c) = self.lock().world.containers.get_mut(&id.0) {
            c.running = false;
        }
        self.point("stop_container", Phase::After).await
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        self.point("remove_container", Phase::Before).await?;
        if self.lock().world.containers.remove(&id.0).is_some() {
            self.release(Resource::Container(id.0.clone()));
        }
        self.point("remove_container", Phase::After).await
    }

    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        let running = self.lock().world.containers.get(&id.0).is_some_and(|c| c.running);
        Ok(ContainerStatus { running, restarting: false, exit_code: (!running).then_some(0) })
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
                image: c.image.clone(),
                // The fake names images by tag only.
                image_id: c.image.clone(),
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
        self.point("health_check", Phase::Before).await?;
        let running = self.lock().world.containers.get(&container.0).is_some_and(|c| c.running);
        if !running {
            return Err(Error::ContainerExited { container: container.clone(), exit_code: 1, logs: Vec::new() });
        }
        self.point("health_check", Phase::After).await
    }
}

#[async_trait]
impl Router for Fake {
    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        Ok(self.lock().world.routes.get(app).cloned())
    }

    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        self.point("switch_route", Phase::Before).await?;
        let old = self.lock().world.routes.insert(app.clone(), target.clone());
        if let Some(old) = old {
            self.release(Resource::Route(app.clone(), old.port));
        }
        self.acquire(Resource::Route(app.clone(), target.port));
        self.point("switch_route", Phase::After).await
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
        self.point("remove_route", Phase::Before).await?;
        let old = self.lock().world.routes.remove(app);
        if let Some(old) = old {
            self.release(Resource::Route(app.clone(), old.port));
        }
        self.point("remove_route", Phase::After).await
    }

    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        Ok(self.lock().world.routes.iter().map(|(a, t)| (a.clone(), t.clone())).collect())
    }

    async fn in_flight(&self, _port: HostPort) -> Result<u64> {
        self.point("drain", Phase::Before).await?;
        self.point("drain", Phase::After).await?;
        Ok(0)
    }
}

#[async_trait]
impl StateStore for Fake {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        self.point("load_state", Phase::Before).await?;
        let found = self.lock().world.recorded.get(app).cloned();
        self.point("load_state", Phase::After).await?;
        Ok(found)
    }

    /// Like the real store, recording writes the live mark, an image tag.
    async fn record(&self, release: &Release) -> Result<()> {
        self.point("record_state", Phase::Before).await?;
        let mark = live_tag(&release.app, &release.deployment);
        let new = {
            let mut inner = self.lock();
            inner.world.recorded.insert(release.app.clone(), release.clone());
            inner.world.images.insert(mark.clone())
        };
        if new {
            self.acquire(Resource::Image(mark));
        }
        self.point("record_state", Phase::After).await
    }

    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()> {
        self.point("record_state", Phase::Before).await?;
        let keep = previous.as_ref().map(|p| live_tag(app, &p.deployment));
        let prefix = format!("otturnaut-{app}:live-");
        let removed: Vec<String> = {
            let mut inner = self.lock();
            match previous {
                Some(release) => inner.world.recorded.insert(app.clone(), release),
                None => inner.world.recorded.remove(app),
            };
            let marks: Vec<String> = inner
                .world
                .images
                .iter()
                .filter(|i| i.starts_with(&prefix) && Some(*i) != keep.as_ref())
                .cloned()
                .collect();
            marks.into_iter().filter(|m| inner.world.images.remove(m)).collect()
        };
        for mark in removed {
            self.release(Resource::Image(mark));
        }
        self.point("record_state", Phase::After).await
    }
}

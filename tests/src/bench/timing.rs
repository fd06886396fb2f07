//! A decorator over every port trait that measures how long the pipeline
//! spends awaiting the outside world (Docker, Caddy, git, probes), so the
//! agent's own overhead is what is left of a deploy's wall time.
//!
//! Calls can overlap (loading state runs beside fetch and build), so besides
//! the time per service it keeps the union of all awaited intervals: the
//! wall time during which at least one external call was pending.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use otturnaut_core::traits::{
    BuildRequest, ContainerRuntime, FetchRequest, FetchedSource, HealthProbe, ImageBuilder, PortAllocator, Router,
    RunRequest, SourceFetcher, StateStore,
};
use otturnaut_core::{
    Adapters, AppId, ContainerId, ContainerStatus, DeploymentId, EventSink, HealthCheck, HostPort, ImageRef,
    ManagedContainer, ManagedImage, Release, Result, RouteTarget,
};

/// What an awaited call waited on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Service {
    Docker,
    Caddy,
    Git,
    Probe,
    Ports,
    State,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Docker => "docker",
            Service::Caddy => "caddy",
            Service::Git => "git",
            Service::Probe => "health probe",
            Service::Ports => "port allocation",
            Service::State => "state (docker+caddy)",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: u32,
    busy_since: Option<Instant>,
    union: Duration,
    per_service: BTreeMap<Service, (Duration, u32)>,
}

/// Accumulates awaited time. Cheap to share.
#[derive(Debug, Default, Clone)]
pub struct Clock(Arc<Mutex<State>>);

/// What a [`Clock`] measured since its last reset.
#[derive(Debug, Clone, Default)]
pub struct Awaited {
    /// Wall time during which at least one external call was pending.
    pub union: Duration,
    /// Total time and call count per service (overlapping calls both count).
    pub per_service: BTreeMap<Service, (Duration, u32)>,
}

impl Clock {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets everything measured so far. Calls pending now still count
    /// from the moment of the reset.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.union = Duration::ZERO;
        s.per_service.clear();
        if s.pending > 0 {
            s.busy_since = Some(Instant::now());
        }
    }

    pub fn snapshot(&self) -> Awaited {
        let s = self.lock();
        let ongoing = s.busy_since.map_or(Duration::ZERO, |t| t.elapsed());
        Awaited { union: s.union + ongoing, per_service: s.per_service.clone() }
    }

    async fn time<T>(&self, service: Service, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        {
            let mut s = self.lock();
            if s.pending == 0 {
                s.busy_since = Some(started);
            }
            s.pending += 1;
        }
        // Counted when the call ends or is dropped (a timed-out deploy).
        let _end = End { clock: self, service, started };
        call.await
    }
}

struct End<'a> {
    clock: &'a Clock,
    service: Service,
    started: Instant,
}

impl Drop for End<'_> {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut s = self.clock.lock();
        let entry = s.per_service.entry(self.service).or_default();
        entry.0 += now - self.started;
        entry.1 += 1;
        s.pending = s.pending.saturating_sub(1);
        if s.pending == 0
            && let Some(since) = s.busy_since.take()
        {
            s.union += now.saturating_duration_since(since);
        }
    }
}

/// `adapters` with every call timed on `clock`.
pub fn timed(adapters: &Adapters, clock: &Clock) -> Adapters {
    Adapters {
        fetcher: Arc::new(Timed { inner: adapters.fetcher.clone(), clock: clock.clone() }),
        builder: Arc::new(Timed { inner: adapters.builder.clone(), clock: clock.clone() }),
        runtime: Arc::new(Timed { inner: adapters.runtime.clone(), clock: clock.clone() }),
        router: Arc::new(Timed { inner: adapters.router.clone(), clock: clock.clone() }),
        ports: Arc::new(Timed { inner: adapters.ports.clone(), clock: clock.clone() }),
        health: Arc::new(Timed { inner: adapters.health.clone(), clock: clock.clone() }),
        state: Arc::new(Timed { inner: adapters.state.clone(), clock: clock.clone() }),
    }
}

struct Timed<T: ?Sized> {
    inner: Arc<T>,
    clock: Clock,
}

#[async_trait]
impl SourceFetcher for Timed<dyn SourceFetcher> {
    async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource> {
        self.clock.time(Service::Git, self.inner.fetch(req)).await
    }
    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()> {
        self.clock.time(Service::Git, self.inner.remove(app, deployment)).await
    }
    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>> {
        self.clock.time(Service::Git, self.inner.leftovers()).await
    }
}

#[async_trait]
impl ImageBuilder for Timed<dyn ImageBuilder> {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        self.clock.time(Service::Docker, self.inner.build(req, events)).await
    }
    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()> {
        self.clock.time(Service::Docker, self.inner.ensure_image(reference, tag, events)).await
    }
    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()> {
        self.clock.time(Service::Docker, self.inner.tag_image(image, tag)).await
    }
    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        self.clock.time(Service::Docker, self.inner.remove_image(image)).await
    }
    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        self.clock.time(Service::Docker, self.inner.list_images(app)).await
    }
    async fn prune_dangling(&self, app: Option<&AppId>) -> Result<otturnaut_core::traits::Pruned> {
        self.clock.time(Service::Docker, self.inner.prune_dangling(app)).await
    }
}

#[async_trait]
impl ContainerRuntime for Timed<dyn ContainerRuntime> {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        self.clock.time(Service::Docker, self.inner.start(req)).await
    }
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        self.clock.time(Service::Docker, self.inner.stop(id, grace)).await
    }
    async fn remove(&self, id: &ContainerId) -> Result<()> {
        self.clock.time(Service::Docker, self.inner.remove(id)).await
    }
    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        self.clock.time(Service::Docker, self.inner.status(id)).await
    }
    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>> {
        self.clock.time(Service::Docker, self.inner.logs(id, tail)).await
    }
    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        self.clock.time(Service::Docker, self.inner.list(app)).await
    }
    async fn recorded(&self, id: &ContainerId) -> Result<otturnaut_core::RecordedRelease> {
        self.clock.time(Service::Docker, self.inner.recorded(id)).await
    }
}

#[async_trait]
impl Router for Timed<dyn Router> {
    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        self.clock.time(Service::Caddy, self.inner.route(app)).await
    }
    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        self.clock.time(Service::Caddy, self.inner.set_route(app, target)).await
    }
    async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()> {
        self.clock.time(Service::Caddy, self.inner.set_routes(routes)).await
    }
    async fn remove_route(&self, app: &AppId) -> Result<()> {
        self.clock.time(Service::Caddy, self.inner.remove_route(app)).await
    }
    async fn in_flight(&self, port: HostPort) -> Result<u64> {
        self.clock.time(Service::Caddy, self.inner.in_flight(port)).await
    }
    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        self.clock.time(Service::Caddy, self.inner.routes()).await
    }
    async fn needs_rewrite(&self, app: &AppId) -> Result<bool> {
        self.clock.time(Service::Caddy, self.inner.needs_rewrite(app)).await
    }
    async fn stream_close_delay(&self) -> Result<Option<std::time::Duration>> {
        self.clock.time(Service::Caddy, self.inner.stream_close_delay()).await
    }
    async fn close_streams(&self) -> Result<()> {
        self.clock.time(Service::Caddy, self.inner.close_streams()).await
    }
}

#[async_trait]
impl PortAllocator for Timed<dyn PortAllocator> {
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort> {
        self.clock.time(Service::Ports, self.inner.allocate(owner, avoid)).await
    }
    async fn release(&self, owner: &DeploymentId) -> Result<()> {
        self.clock.time(Service::Ports, self.inner.release(owner)).await
    }
}

#[async_trait]
impl HealthProbe for Timed<dyn HealthProbe> {
    async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()> {
        self.clock.time(Service::Probe, self.inner.check(container, port, check)).await
    }
}

#[async_trait]
impl StateStore for Timed<dyn StateStore> {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        self.clock.time(Service::State, self.inner.load(app)).await
    }
    async fn record(&self, release: &Release) -> Result<()> {
        self.clock.time(Service::State, self.inner.record(release)).await
    }
    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()> {
        self.clock.time(Service::State, self.inner.restore(app, previous)).await
    }
}

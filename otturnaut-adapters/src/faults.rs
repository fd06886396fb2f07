//! Fault injection over real adapters (feature `faults`, off by default and
//! never in release builds): every side-effecting call gets a point before
//! and after its side effect, named as in [`Call`].
//! `after` means the real work was done and then an error is returned — the
//! lost-response case the pipeline must undo.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otturnaut_core::faults::{Call, FaultPlan, Phase};
use otturnaut_core::traits::{
    BuildRequest, ContainerRuntime, FetchRequest, FetchedSource, HealthProbe, ImageBuilder, PortAllocator, Pruned,
    Router, RunRequest, SourceFetcher, StateStore,
};
use otturnaut_core::{
    Adapters, AppId, ContainerId, ContainerStatus, DeploymentId, EventSink, HealthCheck, HostPort, ImageRef,
    ManagedContainer, ManagedImage, RecordedRelease, Release, Result, RouteTarget,
};

/// The environment variable the CLI reads a plan from.
pub const ENV: &str = "OTTURNAUT_FAULTS";

/// Wraps every adapter so that `plan` decides where calls fail, hang or panic.
pub fn inject(inner: Adapters, plan: Arc<FaultPlan>) -> Adapters {
    let faulty = Arc::new(Faulty { inner, plan });
    Adapters {
        fetcher: faulty.clone(),
        builder: faulty.clone(),
        runtime: faulty.clone(),
        router: faulty.clone(),
        ports: faulty.clone(),
        health: faulty.clone(),
        state: faulty,
    }
}

struct Faulty {
    inner: Adapters,
    plan: Arc<FaultPlan>,
}

impl Faulty {
    async fn around<T>(&self, call: Call, work: impl Future<Output = Result<T>>) -> Result<T> {
        self.hit(call, Phase::Before).await?;
        let out = work.await?;
        self.hit(call, Phase::After).await?;
        Ok(out)
    }

    /// Logs (at error level: the CLI prints it on stderr) when a fault fires:
    /// a failure that a retry then hides must still be visible to the harness
    /// that planted it.
    async fn hit(&self, call: Call, phase: Phase) -> Result<()> {
        let hit = self.plan.hit(call, phase).await;
        if let Err(e) = &hit {
            tracing::error!("otturnaut (fault injection): {e}");
        }
        hit
    }
}

#[async_trait]
impl SourceFetcher for Faulty {
    async fn fetch(&self, req: &FetchRequest) -> Result<FetchedSource> {
        self.around(Call::Fetch, self.inner.fetcher.fetch(req)).await
    }
    async fn remove(&self, app: &AppId, deployment: &DeploymentId) -> Result<()> {
        self.around(Call::RemoveSource, self.inner.fetcher.remove(app, deployment)).await
    }
    async fn leftovers(&self) -> Result<Vec<(AppId, DeploymentId)>> {
        self.inner.fetcher.leftovers().await
    }
}

#[async_trait]
impl ImageBuilder for Faulty {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        self.around(Call::Build, self.inner.builder.build(req, events)).await
    }
    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()> {
        self.around(Call::EnsureImage, self.inner.builder.ensure_image(reference, tag, events)).await
    }
    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()> {
        self.around(Call::TagImage, self.inner.builder.tag_image(image, tag)).await
    }
    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        self.around(Call::RemoveImage, self.inner.builder.remove_image(image)).await
    }
    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        self.inner.builder.list_images(app).await
    }
    async fn prune_dangling(&self, app: Option<&AppId>) -> Result<Pruned> {
        self.around(Call::RemoveImage, self.inner.builder.prune_dangling(app)).await
    }
}

#[async_trait]
impl ContainerRuntime for Faulty {
    async fn start(&self, req: &RunRequest) -> Result<ContainerId> {
        self.around(Call::StartContainer, self.inner.runtime.start(req)).await
    }
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        self.around(Call::StopContainer, self.inner.runtime.stop(id, grace)).await
    }
    async fn remove(&self, id: &ContainerId) -> Result<()> {
        self.around(Call::RemoveContainer, self.inner.runtime.remove(id)).await
    }
    async fn status(&self, id: &ContainerId) -> Result<ContainerStatus> {
        self.inner.runtime.status(id).await
    }
    async fn logs(&self, id: &ContainerId, tail: usize) -> Result<Vec<String>> {
        self.inner.runtime.logs(id, tail).await
    }
    async fn list(&self, app: Option<&AppId>) -> Result<Vec<ManagedContainer>> {
        self.inner.runtime.list(app).await
    }

    async fn remove_volumes(&self, app: &AppId) -> Result<Vec<String>> {
        self.inner.runtime.remove_volumes(app).await
    }

    async fn recorded(&self, id: &ContainerId) -> Result<RecordedRelease> {
        self.inner.runtime.recorded(id).await
    }
}

#[async_trait]
impl Router for Faulty {
    async fn route(&self, app: &AppId) -> Result<Option<RouteTarget>> {
        self.inner.router.route(app).await
    }
    async fn set_route(&self, app: &AppId, target: &RouteTarget) -> Result<()> {
        self.around(Call::SwitchRoute, self.inner.router.set_route(app, target)).await
    }
    async fn set_routes(&self, routes: &[(AppId, RouteTarget)]) -> Result<()> {
        self.inner.router.set_routes(routes).await
    }
    async fn remove_route(&self, app: &AppId) -> Result<()> {
        self.around(Call::RemoveRoute, self.inner.router.remove_route(app)).await
    }
    async fn in_flight(&self, port: HostPort) -> Result<u64> {
        self.around(Call::Drain, self.inner.router.in_flight(port)).await
    }
    async fn routes(&self) -> Result<Vec<(AppId, RouteTarget)>> {
        self.inner.router.routes().await
    }
    async fn needs_rewrite(&self, app: &AppId) -> Result<bool> {
        self.inner.router.needs_rewrite(app).await
    }
    async fn stream_close_delay(&self) -> Result<Option<std::time::Duration>> {
        self.inner.router.stream_close_delay().await
    }
    async fn close_streams(&self) -> Result<()> {
        self.inner.router.close_streams().await
    }
}

#[async_trait]
impl PortAllocator for Faulty {
    async fn allocate(&self, owner: &DeploymentId, avoid: &[HostPort]) -> Result<HostPort> {
        self.around(Call::AllocatePort, self.inner.ports.allocate(owner, avoid)).await
    }
    async fn release(&self, owner: &DeploymentId) -> Result<()> {
        self.around(Call::ReleasePort, self.inner.ports.release(owner)).await
    }
}

#[async_trait]
impl HealthProbe for Faulty {
    async fn check(&self, container: &ContainerId, port: HostPort, check: &HealthCheck) -> Result<()> {
        self.around(Call::HealthCheck, self.inner.health.check(container, port, check)).await
    }
}

#[async_trait]
impl StateStore for Faulty {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        self.around(Call::LoadState, self.inner.state.load(app)).await
    }
    async fn record(&self, release: &Release) -> Result<()> {
        self.around(Call::RecordState, self.inner.state.record(release)).await
    }
    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()> {
        self.around(Call::RecordState, self.inner.state.restore(app, previous)).await
    }
}

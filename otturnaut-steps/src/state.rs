//! The live state of an app, rebuilt from the outside world. Nothing is
//! stored by the agent itself: the durable record of which release is live is
//! a Docker tag, the live mark `otturnaut-{app}:live-{deployment}` on the
//! release's image ([`otturnaut_core::live_container`] says how it is read).
//! Caddy's route is derived state: `reconcile` rebuilds it from the mark.
//!
//! Recording a release (the commit point of a deploy) first checks that the
//! outside world already routes to it and that it runs, then writes the mark
//! in one atomic tag call. The previous release's live mark is replaced by
//! its kept mark when it is retired; until then the newer mark wins.
//!
//! Architecture invariant: [`LabelState`] is pure logic over the
//! `ContainerRuntime`, `ImageBuilder` and `Router` ports, so the model test
//! (`tests/model.rs`) runs this very store on the fakes: the commit semantics
//! it proves are the production ones. Undoing a `record` removes only live
//! marks newer than the previous release's, never an older one.

use std::sync::Arc;

use async_trait::async_trait;
use otturnaut_core::traits::{ContainerRuntime, ImageBuilder, Router, StateStore, image_tag, live_tag};
use otturnaut_core::{AppId, Error, ManagedContainer, ManagedImage, Release, Result, live_container};

/// The production [`StateStore`]: reads and writes the live mark through the
/// ports, and checks the route and the container before committing.
#[derive(Clone)]
pub struct LabelState {
    runtime: Arc<dyn ContainerRuntime>,
    images: Arc<dyn ImageBuilder>,
    router: Arc<dyn Router>,
}

impl std::fmt::Debug for LabelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelState")
    }
}

impl LabelState {
    /// A store over the agent's ports (in tests, the fakes without their
    /// fault plan: fault injection wraps the store itself).
    pub fn new(runtime: Arc<dyn ContainerRuntime>, images: Arc<dyn ImageBuilder>, router: Arc<dyn Router>) -> Self {
        LabelState { runtime, images, router }
    }
}

/// The release a live container is, as the pipeline and `status` see it.
/// An image label that is no valid reference (a container made by hand) is
/// read as the release tag the container runs.
pub fn release_of(app: &AppId, c: &ManagedContainer, images: &[ManagedImage]) -> Option<Release> {
    Some(Release {
        app: app.clone(),
        deployment: c.deployment.clone(),
        container: c.id.clone(),
        image: c.image.parse().unwrap_or_else(|_| image_tag(app, &c.deployment)),
        host_port: c.host_port?,
        domains: c.domains.clone(),
        commit: images.iter().find(|i| i.deployment == c.deployment).and_then(|i| i.commit.clone()),
    })
}

#[async_trait]
impl StateStore for LabelState {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        let (containers, images, route) =
            tokio::try_join!(self.runtime.list(Some(app)), self.images.list_images(Some(app)), self.router.route(app))?;
        Ok(live_container(app, &containers, &images, route.as_ref().map(|r| r.port))
            .and_then(|c| release_of(app, c, &images)))
    }

    async fn record(&self, release: &Release) -> Result<()> {
        let op = format!("recording {} as the live release of {}", release.deployment, release.app);
        let route = self.router.route(&release.app).await?;
        match route {
            Some(r) if r.port != release.host_port => {
                return Err(Error::failed(
                    op,
                    format!(
                        "Caddy routes {} to port {}, not to the new release's port {}",
                        release.app, r.port, release.host_port
                    ),
                ));
            }
            None if !release.domains.is_empty() => {
                return Err(Error::failed(op, format!("Caddy has no route for {}", release.app)));
            }
            _ => {}
        }
        let status = self.runtime.status(&release.container).await?;
        if !status.running {
            return Err(Error::failed(op, format!("container {} is no longer running", release.container)));
        }
        // The commit point: one atomic tag call.
        self.images
            .tag_image(
                image_tag(&release.app, &release.deployment).as_str(),
                &live_tag(&release.app, &release.deployment),
            )
            .await
    }

    /// Removes the live marks of `app` newer than `previous`'s (all of them
    /// when there was none): whatever `record` wrote is gone, and the mark
    /// that was live before is live again. Older marks are left alone: a
    /// crash during an earlier retirement can leave one on a retained release.
    async fn restore(&self, app: &AppId, previous: Option<Release>) -> Result<()> {
        let images = self.images.list_images(Some(app)).await?;
        let keep = previous.map(|p| p.deployment);
        let newer = |d: &otturnaut_core::DeploymentId| keep.as_ref().is_none_or(|k| d > k);
        for image in images.iter().filter(|i| i.live && newer(&i.deployment)) {
            self.images.remove_image(&live_tag(app, &image.deployment)).await?;
        }
        Ok(())
    }
}

//! The live state of an app, rebuilt from the outside world: Docker labels and
//! Caddy's routes. Nothing is stored by the agent itself.
//!
//! The live release of an app is the managed container Caddy routes the app to;
//! for an app without a route (no domains), its newest running managed
//! container (see [`otturnaut_core::live_container`]). Recording a release is therefore a check that the outside world
//! already says so (the route switch made it true), which is what makes it a
//! sound commit point.

use std::sync::Arc;

use async_trait::async_trait;
use otturnaut_core::traits::{ContainerRuntime, Router, StateStore, image_tag};
use otturnaut_core::{AppId, Error, ManagedContainer, Release, Result, live_container};

#[derive(Clone)]
pub struct LabelState {
    runtime: Arc<dyn ContainerRuntime>,
    router: Arc<dyn Router>,
}

impl std::fmt::Debug for LabelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LabelState")
    }
}

impl LabelState {
    pub fn new(runtime: Arc<dyn ContainerRuntime>, router: Arc<dyn Router>) -> Self {
        LabelState { runtime, router }
    }
}

fn release_of(app: &AppId, c: &ManagedContainer) -> Option<Release> {
    Some(Release {
        app: app.clone(),
        deployment: c.deployment.clone(),
        container: c.id.clone(),
        image_owned: c.image == image_tag(app, &c.deployment),
        image: c.image.clone(),
        host_port: c.host_port?,
        domains: c.domains.clone(),
        commit: None,
    })
}

#[async_trait]
impl StateStore for LabelState {
    async fn load(&self, app: &AppId) -> Result<Option<Release>> {
        let (containers, route) = tokio::try_join!(self.runtime.list(Some(app)), self.router.route(app))?;
        Ok(live_container(&containers, route.as_ref().map(|r| r.port)).and_then(|c| release_of(app, c)))
    }

    async fn record(&self, release: &Release) -> Result<()> {
        let op = format!("recording {} as the live release of {}", release.deployment, release.app);
        let route = self.router.route(&release.app).await?;
        match route {
            Some(r) if r.port != release.host_port => Err(Error::failed(
                op,
                format!(
                    "Caddy routes {} to port {}, not to the new release's port {}",
                    release.app, r.port, release.host_port
                ),
            )),
            None if !release.domains.is_empty() => {
                Err(Error::failed(op, format!("Caddy has no route for {}", release.app)))
            }
            _ => {
                let status = self.runtime.status(&release.container).await?;
                if status.running {
                    Ok(())
                } else {
                    Err(Error::failed(op, format!("container {} is no longer running", release.container)))
                }
            }
        }
    }

    async fn restore(&self, _app: &AppId, _previous: Option<Release>) -> Result<()> {
        // Nothing is stored: what is live follows the route, and putting the
        // route back is the route switch's own undo.
        Ok(())
    }
}

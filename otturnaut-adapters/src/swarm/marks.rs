//! The live and kept marks on a cluster: labels of the release's service,
//! held in the Swarm's replicated store, not tags on one daemon's images.
//!
//! [`SwarmImages`] is the manager's [`Docker`] as the image port, except
//! that writing, removing and listing a mark (`otturnaut-APP:live-DEPLOYMENT`,
//! `…:kept-…`) reads and updates the service `otturnaut-APP-DEPLOYMENT`'s
//! labels. A label-only update of a service spec is one atomic call (guarded
//! by the spec's version) and restarts no task. So the commit point of a
//! deploy is one write to the Swarm, and status, releases, rollback and
//! reconcile read the marks from the Swarm whichever manager answers.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{ListImagesOptionsBuilder, RemoveImageOptionsBuilder, UpdateServiceOptionsBuilder};
use otturnaut_core::traits::{
    BuildRequest, ImageBuilder, KEPT_PREFIX, LIVE_PREFIX, Pruned, container_name, image_tag, kept_tag, live_tag,
};
use otturnaut_core::{AppId, ContainerId, DeploymentId, EventSink, ImageRef, ManagedImage, Result, labels};

use super::{Swarm, app_filter, our_services, spec};
use crate::docker::{Docker, is_not_found};

/// The service label of a live mark.
pub const LIVE_LABEL: &str = "otturnaut.live";
/// The service label of a kept mark.
pub const KEPT_LABEL: &str = "otturnaut.kept";

/// How often a label update is retried when the spec changed under it.
const ATTEMPTS: u32 = 10;
/// How often, and how far apart, the registry copy's removal is tried while
/// Swarm is still removing a task container made from it.
const UNTAG_ATTEMPTS: u32 = 20;
const UNTAG_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// The image port on a cluster: images on the manager, marks on services.
#[derive(Clone, Debug)]
pub struct SwarmImages {
    swarm: Swarm,
}

impl SwarmImages {
    /// The image port of `swarm`'s manager.
    pub fn new(swarm: Swarm) -> Self {
        SwarmImages { swarm }
    }

    fn docker(&self) -> &Docker {
        &self.swarm.docker
    }

    /// Sets or clears a mark's label on the release's service. Clearing one
    /// on a service that is gone succeeds (nothing is marked); setting one
    /// there fails: a mark must name a release that exists.
    async fn set_mark(&self, mark: &Mark, on: bool) -> Result<()> {
        let name = ContainerId(container_name(&mark.app, &mark.deployment));
        let op = format!("{} the {} mark of {}", if on { "writing" } else { "removing" }, mark.kind, name);
        for _ in 0..ATTEMPTS {
            let Some(service) = self.swarm.inspect(&name).await? else {
                return if on { Err(otturnaut_core::Error::failed(op, "the service does not exist")) } else { Ok(()) };
            };
            let version = service.version.and_then(|v| v.index).unwrap_or_default();
            let mut spec = service.spec.unwrap_or_default();
            let labels = spec.labels.get_or_insert_with(HashMap::new);
            let present = labels.contains_key(mark.label());
            if present == on {
                return Ok(());
            }
            if on {
                labels.insert(mark.label().to_owned(), "true".to_owned());
            } else {
                labels.remove(mark.label());
            }
            let options = UpdateServiceOptionsBuilder::default().version(i32::try_from(version).unwrap_or(0)).build();
            match self.docker().client().update_service(&name.0, spec, options, None).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) && !on => return Ok(()),
                // Someone updated the spec since we read it: read it again.
                Err(BollardError::DockerResponseServerError { message, .. }) if message.contains("out of sequence") => {
                    continue;
                }
                Err(e) => return Err(self.docker().error(op, e)),
            }
        }
        Err(otturnaut_core::Error::failed(op, "the service's spec kept changing"))
    }

    /// Removes `REGISTRY/IMAGE` from the manager. Docker refuses while a
    /// container made from that name exists, and Swarm removes the containers
    /// of a removed service on its own time: so it is tried for a while, then
    /// fails (the copy is then residue, which [`SwarmImages::list_images`]
    /// shows, so reconcile and undeploy remove it later).
    async fn untag_registry_copy(&self, image: &ImageRef) -> Result<()> {
        let copy = format!("{}/{image}", self.swarm.config.registry);
        let op = format!("removing image {copy} (the manager's registry copy of {image})");
        let options = RemoveImageOptionsBuilder::default().force(false).build();
        for _ in 0..UNTAG_ATTEMPTS {
            match self.docker().client().remove_image(&copy, Some(options.clone()), None).await {
                Ok(_) => return Ok(()),
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => {
                    tokio::time::sleep(UNTAG_PAUSE).await;
                }
                Err(e) => return Err(self.docker().error(op, e)),
            }
        }
        Err(otturnaut_core::Error::failed(op, "a container made from it still exists"))
    }

    /// The manager's registry copies (`REGISTRY/otturnaut-APP:DEPLOYMENT`)
    /// of releases of `app` (or every app): `(app, deployment, image id)`.
    async fn registry_copies(&self, app: Option<&AppId>) -> Result<Vec<(AppId, DeploymentId, String)>> {
        let registry = &self.swarm.config.registry;
        let pattern = match app {
            Some(app) => format!("{registry}/otturnaut-{app}"),
            None => format!("{registry}/otturnaut-*"),
        };
        let filters = HashMap::from([("reference", vec![pattern])]);
        let options = ListImagesOptionsBuilder::default().filters(&filters).build();
        let images = self
            .docker()
            .client()
            .list_images(Some(options))
            .await
            .map_err(|e| self.docker().error("listing the manager's registry copies of releases", e))?;
        let prefix = format!("{registry}/");
        let prefix = prefix.as_str();
        Ok(images
            .into_iter()
            .flat_map(|image| {
                let id = image.id;
                image.repo_tags.into_iter().filter_map(move |tag| {
                    let (repo, deployment) = tag.strip_prefix(prefix)?.rsplit_once(':')?;
                    let app: AppId = repo.strip_prefix("otturnaut-")?.parse().ok()?;
                    Some((app, deployment.parse().ok()?, id.clone()))
                })
            })
            .filter(|(a, _, _)| app.is_none_or(|app| a == app))
            .collect())
    }

    /// Our services of `app` (or every app) and their mark labels.
    async fn marked_services(&self, app: Option<&AppId>) -> Result<Vec<MarkedService>> {
        let services = our_services(self.docker(), app_filter(app), "listing the marks on services").await?;
        Ok(services
            .into_iter()
            .filter_map(|s| {
                let created = s.created_at.map(|t| t.unix_timestamp()).unwrap_or_default();
                let spec = s.spec?;
                let labels = spec.labels.unwrap_or_default();
                let app: AppId = labels.get(labels::APP)?.parse().ok()?;
                let deployment: DeploymentId = labels.get(labels::DEPLOYMENT)?.parse().ok()?;
                // Only a service with the name its labels imply (see ManagedContainer).
                (spec.name? == container_name(&app, &deployment)).then(|| MarkedService {
                    live: labels.contains_key(LIVE_LABEL),
                    kept: labels.contains_key(KEPT_LABEL),
                    image_id: labels.get(spec::IMAGE_ID).cloned().unwrap_or_default(),
                    app,
                    deployment,
                    created,
                })
            })
            .collect())
    }
}

struct MarkedService {
    app: AppId,
    deployment: DeploymentId,
    live: bool,
    kept: bool,
    image_id: String,
    created: i64,
}

#[derive(Clone, Copy)]
enum Kind {
    Live,
    Kept,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Live => "live",
            Kind::Kept => "kept",
        })
    }
}

struct Mark {
    app: AppId,
    deployment: DeploymentId,
    kind: Kind,
}

impl Mark {
    /// The mark a tag of ours names, if it is one.
    fn of(tag: &str) -> Option<Mark> {
        let (repo, name) = tag.rsplit_once(':')?;
        let app: AppId = repo.strip_prefix("otturnaut-")?.parse().ok()?;
        let (kind, deployment) = if let Some(d) = name.strip_prefix(LIVE_PREFIX) {
            (Kind::Live, d)
        } else {
            (Kind::Kept, name.strip_prefix(KEPT_PREFIX)?)
        };
        Some(Mark { app, deployment: deployment.parse().ok()?, kind })
    }

    fn label(&self) -> &'static str {
        match self.kind {
            Kind::Live => LIVE_LABEL,
            Kind::Kept => KEPT_LABEL,
        }
    }
}

#[async_trait]
impl ImageBuilder for SwarmImages {
    async fn build(&self, req: &BuildRequest, events: &EventSink) -> Result<ImageRef> {
        self.docker().build(req, events).await
    }

    async fn ensure_image(&self, reference: &ImageRef, tag: &ImageRef, events: &EventSink) -> Result<()> {
        self.docker().ensure_image(reference, tag, events).await
    }

    async fn tag_image(&self, image: &str, tag: &ImageRef) -> Result<()> {
        match Mark::of(tag.as_str()) {
            Some(mark) => self.set_mark(&mark, true).await,
            None => self.docker().tag_image(image, tag).await,
        }
    }

    /// A mark's label, or the release tag and the manager's copy of it
    /// under the registry's name (pushed from there, or pulled for the
    /// manager's own task).
    async fn remove_image(&self, image: &ImageRef) -> Result<()> {
        if let Some(mark) = Mark::of(image.as_str()) {
            return self.set_mark(&mark, false).await;
        }
        self.docker().remove_image(image).await?;
        self.untag_registry_copy(image).await
    }

    /// The manager's release images, with the marks their services carry
    /// (a mark on a service whose image is gone is listed too, as a live
    /// mark without its release tag is on one host). A registry copy left
    /// without its release tag (an undo that could not remove it) is listed
    /// under the release tag, whose removal removes the copy.
    async fn list_images(&self, app: Option<&AppId>) -> Result<Vec<ManagedImage>> {
        let (mut images, services, copies) =
            tokio::try_join!(self.docker().list_images(app), self.marked_services(app), self.registry_copies(app))?;
        for (app, deployment, id) in copies {
            if !images.iter().any(|i| i.app == app && i.deployment == deployment) {
                let tags = vec![image_tag(&app, &deployment)];
                images.push(ManagedImage { tags, ..ManagedImage::bare(id, app, deployment) });
            }
        }
        for image in &mut images {
            // Marks live on services only: a stray tag-mark on the manager counts for nothing.
            image.live = false;
            image.kept = false;
            image.tags.retain(|t| Mark::of(t.as_str()).is_none());
        }
        for s in services.into_iter().filter(|s| s.live || s.kept) {
            let index = match images.iter().position(|i| i.app == s.app && i.deployment == s.deployment) {
                Some(i) => i,
                None => {
                    images.push(ManagedImage {
                        created: s.created,
                        ..ManagedImage::bare(s.image_id.clone(), s.app.clone(), s.deployment.clone())
                    });
                    images.len() - 1
                }
            };
            let image = &mut images[index];
            // Marks first, as on one host: removing every tag clears them before the release tag.
            if s.kept {
                image.kept = true;
                image.tags.insert(0, kept_tag(&s.app, &s.deployment));
            }
            if s.live {
                image.live = true;
                image.tags.insert(0, live_tag(&s.app, &s.deployment));
            }
        }
        Ok(images)
    }

    async fn prune_dangling(&self, app: Option<&AppId>) -> Result<Pruned> {
        self.docker().prune_dangling(app).await
    }
}

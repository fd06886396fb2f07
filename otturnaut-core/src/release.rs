//! What is live: releases, containers and images as Otturnaut finds them.

use std::fmt;

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::{
    AppId, CommitSha, ContainerPort, DeploymentId, Domain, EnvName, HealthCheck, HostPort, ImageRef, RuntimeOptions,
    Secret,
};

/// A Docker container id (or name).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ContainerId(pub String);

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Full ids are 64 hex digits; 12 is what `docker ps` shows.
        f.write_str(self.0.get(..12).filter(|_| self.0.len() == 64).unwrap_or(&self.0))
    }
}

/// The live release of an app: the one its durable live mark names (see
/// [`live_container`]).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Release {
    /// The app.
    pub app: AppId,
    /// The deployment that made it.
    pub deployment: DeploymentId,
    /// Its container.
    pub container: ContainerId,
    /// The image as the user knows it: the tag Otturnaut built, or the
    /// prebuilt reference deployed. The container itself runs the release's
    /// own tag, [`crate::traits::image_tag`], which pins the exact image.
    pub image: ImageRef,
    /// The host port Caddy routes to.
    pub host_port: HostPort,
    /// The domains it serves (none: not routed).
    pub domains: Vec<Domain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The commit it was built from (git deploys).
    pub commit: Option<CommitSha>,
}

/// Where Caddy sends an app's domains.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RouteTarget {
    /// The app's domains.
    pub domains: Vec<Domain>,
    /// The host port they go to.
    pub port: HostPort,
}

/// Whether a container runs, as the runtime reports it.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ContainerStatus {
    /// Docker says it runs.
    pub running: bool,
    /// Docker is restarting it (it crashed).
    pub restarting: bool,
    /// How it ended, when it is not running.
    pub exit_code: Option<i64>,
    /// When it last started, as the runtime reports it (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
}

/// A container carrying our labels, as listed from Docker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
///
/// Architecture invariant: only genuine containers are ever listed, whose name
/// is `otturnaut-{app}-{deployment}` for the app and deployment their labels
/// name. Anything else carrying our labels (a build's intermediate container
/// given a Dockerfile's `LABEL`s, a container made by hand) is invisible to
/// status, reconcile, undeploy and the port pool: never live, never removed.
pub struct ManagedContainer {
    /// Docker's id.
    pub id: ContainerId,
    /// `otturnaut-{app}-{deployment}`.
    pub name: String,
    /// The app (label [`crate::labels::APP`]).
    pub app: AppId,
    /// The deployment that made it.
    pub deployment: DeploymentId,
    /// The image as the user knows it (see [`Release::image`]).
    pub image: String,
    /// The id of the image the container runs (`sha256:…`).
    pub image_id: String,
    /// Made by an agent from before live marks (no `otturnaut.marked` label).
    pub legacy: bool,
    /// Its host port, from its label.
    pub host_port: Option<HostPort>,
    /// The port the app listens on inside it.
    pub container_port: Option<ContainerPort>,
    /// The domains it was deployed for.
    pub domains: Vec<Domain>,
    /// Docker says it runs.
    pub running: bool,
    /// Docker's state word: running, exited, created, restarting…
    pub state: String,
    /// Unix seconds.
    pub created: i64,
    /// What the release was deployed with ([`ReleaseRecord`]); `None` for
    /// containers made before it was recorded.
    pub record: Option<ReleaseRecord>,
}

/// The non-secret settings of a release, recorded on its container (label
/// [`crate::labels::RELEASE`], JSON) so that a rollback brings the release
/// back exactly as it was deployed. Env values are secrets: only their names
/// are recorded here; the values are in the container's own config.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ReleaseRecord {
    #[serde(default)]
    /// How its health was checked.
    pub health: HealthCheck,
    /// The names of the env variables given at deploy time.
    #[serde(default)]
    pub env: Vec<EnvName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// The commit it was built from.
    pub commit: Option<CommitSha>,
    /// Set when this release was made by rolling back to an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<DeploymentId>,
    /// Volumes, limits, networks, command and logging.
    #[serde(default, skip_serializing_if = "RuntimeOptions::is_default")]
    pub runtime: RuntimeOptions,
    /// Grace between SIGTERM and SIGKILL it was deployed with (absent on
    /// releases recorded before it was).
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<std::time::Duration>,
    /// How long its drain could wait for in-flight requests.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<std::time::Duration>,
}

/// Everything needed to run a release again, read back from its container
/// ([`crate::traits::ContainerRuntime::recorded`]).
#[derive(Clone, Debug)]
pub struct RecordedRelease {
    /// The image as the user knows it (see [`Release::image`]).
    pub image: ImageRef,
    /// The port the app listens on inside the container.
    pub container_port: ContainerPort,
    /// Its domains.
    pub domains: Vec<Domain>,
    /// Its environment, values included (from the container's config).
    pub env: BTreeMap<EnvName, Secret>,
    /// Its non-secret settings.
    pub record: ReleaseRecord,
}

/// One release's image, as listed from Docker by its tags: the release tag
/// `otturnaut-{app}:{deployment}` ([`crate::traits::image_tag`]) and, for the
/// release recorded as live, the live mark `otturnaut-{app}:live-{deployment}`
/// ([`crate::traits::live_tag`]). Only these tags make an image ours: an
/// image that merely carries our labels (a build's intermediate layer) is not
/// listed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ManagedImage {
    /// The image id the release tag points to (`sha256:…`); for a live mark
    /// left without its release tag, the id the mark points to.
    pub id: String,
    /// Our tags of this deployment, the live mark first: removing them all
    /// removes the release's image (or only untags a prebuilt one).
    pub tags: Vec<ImageRef>,
    /// The app, from the tag.
    pub app: AppId,
    /// The deployment, from the tag.
    pub deployment: DeploymentId,
    /// True when the release tag exists (false: only a stale live mark is left).
    pub released: bool,
    /// True when the live mark exists: this release was committed as live.
    pub live: bool,
    /// True when the kept mark `otturnaut-{app}:kept-{deployment}` exists:
    /// the release was live once and is retained for a rollback.
    pub kept: bool,
    /// The commit, from the labels of an image built for this very release.
    pub commit: Option<CommitSha>,
    /// Unix seconds.
    pub created: i64,
    /// Bytes, as Docker reports the image's size.
    pub size: i64,
}

impl ManagedImage {
    /// A release image as first found: no tag, no mark, no commit, size and
    /// age unknown; listings fill in what they see.
    pub fn bare(id: String, app: AppId, deployment: DeploymentId) -> ManagedImage {
        ManagedImage {
            id,
            tags: Vec::new(),
            app,
            deployment,
            released: false,
            live: false,
            kept: false,
            commit: None,
            created: 0,
            size: 0,
        }
    }
}

/// Which of an app's containers is its live release, from what Docker holds
/// durably: the release named by the newest live mark whose container exists
/// and runs exactly the image of that release's tag. Caddy is not consulted:
/// its routes are derived from this, and are rebuilt from it after a restart.
///
/// Architecture invariant: the commit point of a deploy writes the live mark
/// (one atomic Docker tag call), and the previous mark is removed only after
/// it. If a crash leaves two marks, the newer deployment (deployment ids are
/// ULIDs, ordered by creation time) is the one committed last.
///
/// Releases deployed before live marks existed have none: for an app without
/// any mark, the old rule picks among those *legacy* containers only (the
/// running one Caddy routes to; without a route, after Caddy lost it, the
/// newest running one), and `reconcile` writes its mark. A container of this
/// agent without a mark never committed: it is never live.
pub fn live_container<'a>(
    app: &AppId,
    containers: &'a [ManagedContainer],
    images: &[ManagedImage],
    routed_port: Option<HostPort>,
) -> Option<&'a ManagedContainer> {
    let mut marked: Vec<&ManagedImage> = images.iter().filter(|i| i.app == *app && i.live).collect();
    if marked.is_empty() {
        return legacy_live(app, containers, routed_port);
    }
    marked.sort_by(|a, b| b.deployment.cmp(&a.deployment));
    marked.iter().find_map(|mark| {
        let release = images.iter().find(|i| i.app == *app && i.deployment == mark.deployment && i.released)?;
        containers.iter().find(|c| c.app == *app && c.deployment == mark.deployment && c.image_id == release.id)
    })
}

fn legacy_live<'a>(
    app: &AppId,
    containers: &'a [ManagedContainer],
    routed_port: Option<HostPort>,
) -> Option<&'a ManagedContainer> {
    let mut running = containers.iter().filter(|c| c.app == *app && c.running && c.legacy);
    match routed_port {
        Some(port) => running.find(|c| c.host_port == Some(port)),
        // Caddy lost the route (a restart): the newest is the best guess,
        // and far better than taking the app down.
        None => running.max_by(|a, b| (a.created, &a.deployment).cmp(&(b.created, &b.deployment))),
    }
}

/// True when a release has no live mark anywhere for its app, so the legacy
/// rule of [`live_container`] decides (and `reconcile` should write the mark).
pub fn unmarked(app: &AppId, images: &[ManagedImage]) -> bool {
    !images.iter().any(|i| i.app == *app && i.live)
}

/// Whether a release serves traffic or is kept for a rollback.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    /// Serving: the live release.
    Live,
    /// Stopped, kept for `otturnaut rollback`.
    Retained,
}

/// One release of an app as `otturnaut releases` shows it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ReleaseInfo {
    /// The app.
    pub app: AppId,
    /// The deployment that made it.
    pub deployment: DeploymentId,
    /// Live or retained.
    pub state: ReleaseState,
    /// The image as the user knows it (see [`Release::image`]).
    pub image: String,
    /// The commit it was built from.
    pub commit: Option<CommitSha>,
    /// Unix seconds (the container's creation).
    pub created: i64,
    /// The domains it was deployed for.
    pub domains: Vec<Domain>,
    /// The port the app listens on inside its container.
    pub container_port: Option<ContainerPort>,
    /// Its host port.
    pub host_port: Option<HostPort>,
    /// Set when it was made by rolling back to an earlier release.
    pub rollback_of: Option<DeploymentId>,
    /// Its container.
    pub container: ContainerId,
    /// Docker says its container runs.
    pub running: bool,
}

/// The releases of `app`, newest first: the live one ([`live_container`])
/// and every retained one.
///
/// Architecture invariant: a release is retained when it was committed once
/// (it has a kept mark, or a live mark older than the live release's, left by
/// a crash during retirement) and both its container and its release tag
/// still exist, the container running that tag's image. Nothing else of the
/// app is a release: whatever has no mark never committed, and reconcile
/// removes it.
pub fn releases(
    app: &AppId,
    containers: &[ManagedContainer],
    images: &[ManagedImage],
    routed_port: Option<HostPort>,
) -> Vec<ReleaseInfo> {
    let live = live_container(app, containers, images, routed_port);
    let mut found: Vec<ReleaseInfo> = containers
        .iter()
        .filter(|c| c.app == *app)
        .filter_map(|c| {
            let is_live = live.is_some_and(|l| l.id == c.id);
            let image = images.iter().find(|i| i.app == *app && i.deployment == c.deployment && i.released);
            let retained = image.is_some_and(|i| (i.kept || i.live) && i.id == c.image_id);
            if !is_live && !retained {
                return None;
            }
            let record = c.record.as_ref();
            Some(ReleaseInfo {
                app: app.clone(),
                deployment: c.deployment.clone(),
                state: if is_live { ReleaseState::Live } else { ReleaseState::Retained },
                image: c.image.clone(),
                commit: record.and_then(|r| r.commit.clone()).or_else(|| image.and_then(|i| i.commit.clone())),
                created: c.created,
                domains: c.domains.clone(),
                container_port: c.container_port,
                host_port: c.host_port,
                rollback_of: record.and_then(|r| r.rollback_of.clone()),
                container: c.id.clone(),
                running: c.running,
            })
        })
        .collect();
    found.sort_by(|a, b| b.deployment.cmp(&a.deployment));
    found
}

/// The retained releases beyond the newest `keep` (of [`releases`]): what
/// retention removes. Never the live release.
pub fn beyond_keep(releases: &[ReleaseInfo], keep: usize) -> Vec<&ReleaseInfo> {
    releases.iter().filter(|r| r.state == ReleaseState::Retained).skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppId {
        "shop".parse().expect("app")
    }

    fn container(deployment: &DeploymentId, image_id: &str, port: u16, legacy: bool) -> ManagedContainer {
        ManagedContainer {
            id: ContainerId(format!("c-{deployment}")),
            name: format!("otturnaut-shop-{deployment}"),
            app: app(),
            deployment: deployment.clone(),
            image: "img".into(),
            image_id: image_id.into(),
            legacy,
            host_port: Some(HostPort::try_from(port).expect("port")),
            container_port: None,
            domains: vec!["shop.example".parse().expect("domain")],
            running: true,
            state: "running".into(),
            created: 0,
            record: None,
        }
    }

    fn image(deployment: &DeploymentId, id: &str, live: bool) -> ManagedImage {
        ManagedImage {
            id: id.into(),
            tags: Vec::new(),
            app: app(),
            deployment: deployment.clone(),
            released: true,
            live,
            kept: false,
            commit: None,
            created: 0,
            size: 0,
        }
    }

    fn ids() -> (DeploymentId, DeploymentId) {
        let a = DeploymentId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        (a, DeploymentId::generate())
    }

    #[test]
    fn the_newest_live_mark_with_its_container_and_image_wins() {
        let (old, new) = ids();
        let containers = [container(&old, "sha256:a", 10001, false), container(&new, "sha256:b", 10002, false)];
        let both = [image(&old, "sha256:a", true), image(&new, "sha256:b", true)];
        let port = |r: Option<&ManagedContainer>| r.and_then(|c| c.host_port).map(HostPort::get);
        assert_eq!(port(live_container(&app(), &containers, &both, None)), Some(10002), "the newer mark");
        // Caddy's route does not matter once there is a mark.
        let routed = Some(HostPort::try_from(10001).expect("port"));
        assert_eq!(port(live_container(&app(), &containers, &both, routed)), Some(10002));
        // A mark whose container runs another image is no release.
        let wrong = [image(&old, "sha256:a", true), image(&new, "sha256:other", true)];
        assert_eq!(port(live_container(&app(), &containers, &wrong, None)), Some(10001));
        // A mark whose container is gone names nothing; the older one does.
        assert_eq!(port(live_container(&app(), &containers[..1], &both, None)), Some(10001));
        // Not live at all: no mark (this agent's containers are never legacy).
        let unmarked = [image(&old, "sha256:a", false), image(&new, "sha256:b", false)];
        assert_eq!(port(live_container(&app(), &containers, &unmarked, routed)), None, "never committed");
    }

    #[test]
    fn legacy_containers_follow_the_route_or_else_the_newest() {
        let (old, new) = ids();
        let mut containers = vec![container(&old, "sha256:a", 10001, true), container(&new, "sha256:b", 10002, true)];
        containers[1].created = 5;
        let port = |r: Option<&ManagedContainer>| r.and_then(|c| c.host_port).map(HostPort::get);
        let routed = Some(HostPort::try_from(10001).expect("port"));
        assert_eq!(port(live_container(&app(), &containers, &[], routed)), Some(10001), "the routed one");
        assert_eq!(port(live_container(&app(), &containers, &[], None)), Some(10002), "route lost: the newest");
        assert!(unmarked(&app(), &[]), "reconcile writes its mark");
    }
}

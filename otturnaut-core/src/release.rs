//! What is live: releases, containers and images as Otturnaut finds them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AppId, CommitSha, ContainerPort, DeploymentId, Domain, HostPort};

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

/// The live release of an app: what Caddy routes to (or, for an app without
/// domains, its newest running managed container).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Release {
    pub app: AppId,
    pub deployment: DeploymentId,
    pub container: ContainerId,
    /// Image reference or id the container runs.
    pub image: String,
    /// True when Otturnaut built the image and so may remove it.
    pub image_owned: bool,
    pub host_port: HostPort,
    pub domains: Vec<Domain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSha>,
}

/// Where Caddy sends an app's domains.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RouteTarget {
    pub domains: Vec<Domain>,
    pub port: HostPort,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub running: bool,
    pub restarting: bool,
    pub exit_code: Option<i64>,
}

/// A container carrying our labels, as listed from Docker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ManagedContainer {
    pub id: ContainerId,
    pub name: String,
    pub app: AppId,
    pub deployment: DeploymentId,
    pub image: String,
    pub host_port: Option<HostPort>,
    pub container_port: Option<ContainerPort>,
    pub domains: Vec<Domain>,
    pub running: bool,
    /// Docker's state word: running, exited, created, restarting…
    pub state: String,
    /// Unix seconds.
    pub created: i64,
}

/// An image carrying our labels, as listed from Docker.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ManagedImage {
    pub id: String,
    pub tags: Vec<String>,
    pub app: AppId,
    pub deployment: DeploymentId,
    pub commit: Option<CommitSha>,
    /// Unix seconds.
    pub created: i64,
}

/// Which of an app's managed containers is its live release: the running one
/// Caddy routes the app to; for an app without a route, the newest running
/// container deployed without domains. A container deployed with domains that
/// Caddy does not route to never served as live (its deploy did not reach the
/// route switch), so it is never picked.
pub fn live_container(containers: &[ManagedContainer], routed_port: Option<HostPort>) -> Option<&ManagedContainer> {
    let mut running = containers.iter().filter(|c| c.running);
    match routed_port {
        Some(port) => running.find(|c| c.host_port == Some(port)),
        None => running
            .filter(|c| c.domains.is_empty())
            .max_by(|a, b| (a.created, &a.deployment).cmp(&(b.created, &b.deployment))),
    }
}

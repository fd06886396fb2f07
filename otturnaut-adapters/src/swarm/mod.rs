//! The Docker Swarm runtime: the same [`ContainerRuntime`] port, with each
//! release one Swarm service instead of one container.
//!
//! A release `DEPLOYMENT` of `APP` is the service `otturnaut-APP-DEPLOYMENT`
//! (the name a container would have), with `replicas` tasks, at most one per
//! node, running the release tag pushed to the cluster's registry. Its port
//! is published in host mode on every node that runs a task (endpoint mode
//! `dnsrr`: no routing mesh, no IPVS), so Caddy has one upstream per task,
//! `node-address:port` ([`Swarm`] is the Caddy adapter's
//! [`UpstreamHosts`](crate::caddy::UpstreamHosts)). The service carries the
//! labels a container carries on one host; a retained release is a service
//! scaled to zero, which holds no port anywhere.
//!
//! "Running" means every task of the service runs: the runtime waits on task
//! states, never on the service's update status, which says "completed"
//! before the last old task has exited.
//!
//! Images are built and tagged on the manager's daemon (the [`Docker`] this
//! adapter wraps); the live and kept marks, the durable record of which
//! release is live, are labels of the services ([`SwarmImages`]), kept in
//! the Swarm's replicated store.
//!
//! [`ContainerRuntime`]: otturnaut_core::traits::ContainerRuntime

mod health;
mod marks;
mod runtime;
mod spec;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{NodeState, Task, TaskState};
use bollard::query_parameters::{ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use otturnaut_core::{AppId, ContainerId, Error, HostPort, Result, labels};

use crate::docker::{Docker, LogStream};

pub use health::SwarmProbe;
pub use marks::{KEPT_LABEL, LIVE_LABEL, SwarmImages};

/// How many tasks a release runs when not told otherwise.
pub const DEFAULT_REPLICAS: u32 = 2;

/// How long a new service's tasks may take to all run (pull included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What the Swarm runtime needs besides the manager's daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmConfig {
    /// `HOST:PORT` of the registry the nodes pull release images from; the
    /// manager pushes them there.
    pub registry: String,
    /// Tasks per release (each on its own node).
    pub replicas: NonZeroU32,
}

/// The Swarm runtime, speaking to a manager node's daemon. Cheap to clone.
#[derive(Clone)]
pub struct Swarm {
    docker: Docker,
    config: SwarmConfig,
    start_timeout: Duration,
}

impl fmt::Debug for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Swarm").field("manager", &self.docker.address()).field("config", &self.config).finish()
    }
}

impl Swarm {
    /// The runtime on the manager `docker` connects to. Fails if that daemon
    /// is not a Swarm manager, or the registry address is no `HOST:PORT`.
    pub async fn connect(docker: Docker, config: SwarmConfig) -> Result<Swarm> {
        check_registry(&config.registry)?;
        let info = docker.client().info().await.map_err(|e| docker.error("asking Docker about its Swarm", e))?;
        let manager = info.swarm.and_then(|s| s.control_available).unwrap_or(false);
        if !manager {
            return Err(Error::failed(
                format!("using the Swarm runtime on {}", docker.address()),
                "that Docker daemon is not a Swarm manager (docker swarm init, or point DOCKER_HOST at a manager)",
            ));
        }
        Ok(Swarm { docker, config, start_timeout: START_TIMEOUT })
    }

    /// The manager's daemon (builds, tags and marks happen there).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// What it was made with.
    pub fn config(&self) -> &SwarmConfig {
        &self.config
    }

    /// The addresses of the nodes running a task of `service` (by name or
    /// id), one per running task, sorted. A task on a lost node is not
    /// running, whatever it last reported.
    pub async fn task_hosts(&self, service: &str) -> Result<Vec<IpAddr>> {
        let (tasks, nodes) = tokio::try_join!(self.tasks(service), self.nodes())?;
        let mut hosts: BTreeSet<IpAddr> = BTreeSet::new();
        for task in tasks.iter().filter(|t| nodes.runs(t)) {
            let node = task.node_id.as_deref().unwrap_or_default();
            match nodes.addresses.get(node) {
                Some(addr) => {
                    hosts.insert(*addr);
                }
                None => tracing::warn!(service, node, "a running task on a node without a known address"),
            }
        }
        Ok(hosts.into_iter().collect())
    }

    /// Streams a service's output (stdout and stderr of its tasks, as the
    /// manager gathers it from the nodes), the last `tail` lines of each task
    /// and, with `follow`, what comes after (`otturnaut logs` on a cluster).
    /// The tasks' lines interleave as they arrive; a node that is down
    /// contributes nothing.
    pub fn stream_logs(&self, id: &ContainerId, tail: usize, follow: bool) -> LogStream {
        let stream = self.docker.client().service_logs(&id.0, Some(crate::docker::log_options(tail, follow)));
        self.docker.lines_of(format!("service {id}"), stream)
    }

    /// The tasks of `service` that Swarm wants running (the current ones).
    async fn tasks(&self, service: &str) -> Result<Vec<Task>> {
        let filters = HashMap::from([("service", vec![service.to_owned()]), ("desired-state", vec!["running".into()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        self.docker
            .client()
            .list_tasks(Some(options))
            .await
            .map_err(|e| self.docker.error(format!("listing the tasks of service {service}"), e))
    }

    /// What the manager knows of the nodes now.
    pub(super) async fn nodes(&self) -> Result<Nodes> {
        let nodes = self
            .docker
            .client()
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| self.docker.error("listing the Swarm's nodes", e))?;
        let mut view = Nodes::default();
        for node in nodes {
            let (Some(id), Some(status)) = (node.id, node.status) else { continue };
            if let Some(addr) = status.addr.and_then(|a| a.parse().ok()) {
                view.addresses.insert(id.clone(), addr);
            }
            if !matches!(status.state, Some(NodeState::DOWN | NodeState::DISCONNECTED)) {
                view.up.insert(id);
            }
        }
        Ok(view)
    }

    /// The name of our service publishing `port`, if any.
    async fn service_on(&self, port: HostPort) -> Result<Option<String>> {
        let also = vec![format!("{}={port}", labels::HOST_PORT)];
        let services = our_services(&self.docker, also, &format!("finding the service on port {port}")).await?;
        Ok(services.into_iter().filter_map(|s| s.spec?.name).find(|n| spec::is_ours(n)))
    }
}

/// Our services (label `managed=true`) that also carry every label of
/// `also` (`KEY=VALUE`), in one listing; `doing` names it in an error.
async fn our_services(docker: &Docker, also: Vec<String>, doing: &str) -> Result<Vec<bollard::models::Service>> {
    let mut wanted = vec![format!("{}=true", labels::MANAGED)];
    wanted.extend(also);
    let filters = HashMap::from([("label", wanted)]);
    let options = ListServicesOptionsBuilder::default().filters(&filters).build();
    docker.client().list_services(Some(options)).await.map_err(|e| docker.error(doing, e))
}

/// The label filter for `app`'s services; none for every app.
fn app_filter(app: Option<&AppId>) -> Vec<String> {
    app.map(|app| format!("{}={app}", labels::APP)).into_iter().collect()
}

#[async_trait]
impl crate::caddy::UpstreamHosts for Swarm {
    async fn hosts(&self, port: HostPort) -> Result<Vec<String>> {
        let Some(service) = self.service_on(port).await? else {
            return Ok(Vec::new());
        };
        Ok(self.task_hosts(&service).await?.into_iter().map(|ip| ip.to_string()).collect())
    }
}

fn is_running(task: &Task) -> bool {
    task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
}

/// The nodes as the manager sees them: each one's address, and which are
/// up (ready, or not yet known).
#[derive(Debug, Default)]
pub(super) struct Nodes {
    addresses: HashMap<String, IpAddr>,
    up: HashSet<String>,
}

impl Nodes {
    /// Whether the task is on a node that is down, disconnected or no longer
    /// in the Swarm. Such a task reports nothing more: its last state (often
    /// "running", with its container still up on the lost daemon) is stale,
    /// and Swarm has started a replacement on another node. It only ends
    /// when the node comes back, so nothing may wait for it.
    pub(super) fn lost(&self, task: &Task) -> bool {
        task.node_id.as_deref().is_some_and(|n| !self.up.contains(n))
    }

    /// Whether the task runs on a node that is up.
    pub(super) fn runs(&self, task: &Task) -> bool {
        is_running(task) && !self.lost(task)
    }
}

/// Checks a registry address: `HOST:PORT`, nothing else (it becomes part of
/// every release's image name).
pub fn check_registry(registry: &str) -> Result<()> {
    let invalid = |why: &str| Error::invalid("--registry", registry, why);
    let (host, port) = registry.rsplit_once(':').ok_or_else(|| invalid("must be HOST:PORT"))?;
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')) {
        return Err(invalid("the host must be a name or an IPv4 address"));
    }
    port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| invalid("the port must be 1 to 65535"))?;
    Ok(())
}

/// The app a service name could belong to, for the listing's sanity check.
fn app_label(labels: &HashMap<String, String>) -> Option<AppId> {
    labels.get(labels::APP)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_is_host_and_port() {
        assert!(check_registry("10.213.7.1:5000").is_ok());
        assert!(check_registry("registry.example.com:443").is_ok());
        for bad in ["", "10.213.7.1", ":5000", "a b:1", "host:0", "host:x", "user@host:5000", "host/path:5000"] {
            assert!(check_registry(bad).is_err(), "{bad}");
        }
    }
}

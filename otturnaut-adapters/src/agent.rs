//! Wiring: one [`AgentConfig`] in, every adapter connected and ready out.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

use otturnaut_core::{Adapters, ContainerId, PortRange, Result};
use otturnaut_steps::LabelState;

use crate::caddy::{Caddy, CaddyConfig};
use crate::docker::{Docker, LogStream};
use crate::git::GitFetcher;
use crate::health::Probe;
use crate::ports::PortPool;
use crate::swarm::{Swarm, SwarmConfig, SwarmImages, SwarmProbe};

/// Everything the agent needs to know about its host.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Caddy's admin API, e.g. `http://127.0.0.1:2019`.
    pub caddy_admin: String,
    /// Addresses our Caddy server listens on, e.g. `:80`, `:443`.
    pub listen: Vec<String>,
    /// Let Caddy obtain certificates for the apps' domains (URLs are then `https`).
    pub auto_https: bool,
    /// Host ports handed to new containers.
    pub port_range: PortRange,
    /// Where fetched sources, keys and locks live.
    pub work_dir: PathBuf,
    /// Host address container ports are published on (Caddy dials it).
    pub bind_address: IpAddr,
    /// An OpenSSH known_hosts file pinning the keys of SSH git servers; none
    /// means trust on first use (see [`GitFetcher::with_known_hosts`]).
    pub ssh_known_hosts: Option<PathBuf>,
    /// How many releases besides the live one are kept for a rollback.
    pub keep: usize,
    /// Where releases run: this host's Docker, or a Swarm cluster.
    pub runtime: RuntimeKind,
    /// The Docker daemon (a Swarm manager for [`RuntimeKind::Swarm`]):
    /// `None` is `DOCKER_HOST`, or the default socket.
    pub docker_host: Option<String>,
}

/// Which implementation of the runtime port the agent drives.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    /// One container per release on the Docker daemon of `DOCKER_HOST`.
    #[default]
    Docker,
    /// One service per release on the Swarm whose manager is `DOCKER_HOST`.
    Swarm(SwarmConfig),
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            caddy_admin: "http://127.0.0.1:2019".into(),
            listen: vec![":80".into(), ":443".into()],
            auto_https: true,
            port_range: PortRange::default(),
            work_dir: PathBuf::from("/var/lib/otturnaut"),
            bind_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ssh_known_hosts: None,
            keep: otturnaut_steps::DEFAULT_KEEP,
            runtime: RuntimeKind::Docker,
            docker_host: None,
        }
    }
}

impl AgentConfig {
    /// Where a person reaches `domain` through our Caddy server.
    pub fn url(&self, domain: &otturnaut_core::Domain) -> String {
        let ports: Vec<u16> =
            self.listen.iter().filter_map(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())).collect();
        let (scheme, default) = if self.auto_https { ("https", 443) } else { ("http", 80) };
        let port = if ports.contains(&default) { default } else { ports.first().copied().unwrap_or(default) };
        if port == default { format!("{scheme}://{domain}/") } else { format!("{scheme}://{domain}:{port}/") }
    }

    /// [`AgentConfig::url`] of each domain.
    pub fn urls(&self, domains: &[otturnaut_core::Domain]) -> Vec<String> {
        domains.iter().map(|d| self.url(d)).collect()
    }
}

/// The connected adapters, plus the concrete ones for what the traits don't
/// cover (following logs, Caddy bootstrap, work-dir housekeeping).
#[derive(Clone, Debug)]
pub struct Agent {
    /// The port traits, as the pipeline drives them.
    pub adapters: Adapters,
    /// The Docker adapter itself (logs, volumes, builder probe).
    pub docker: Docker,
    /// The Caddy adapter itself (server bootstrap, route listing).
    pub caddy: Caddy,
    /// The git adapter itself (work-dir housekeeping).
    pub git: GitFetcher,
    /// What it was connected with.
    pub config: AgentConfig,
    /// The Swarm runtime itself, with [`RuntimeKind::Swarm`].
    swarm: Option<Swarm>,
}

impl Agent {
    /// Connects to Docker and Caddy; both must answer. Changes nothing:
    /// read-only commands use this as is, deploys call [`Agent::prepare`].
    pub async fn connect(config: &AgentConfig) -> Result<Agent> {
        let caddy = Caddy::new(CaddyConfig {
            admin_url: config.caddy_admin.clone(),
            listen: config.listen.clone(),
            automatic_https: config.auto_https,
            upstream_host: config.bind_address.to_string(),
            ..CaddyConfig::default()
        })?;
        let connect = async {
            match &config.docker_host {
                Some(host) => Docker::connect_to(host).await,
                None => Docker::connect().await,
            }
        };
        let (docker, _) = tokio::try_join!(connect, caddy.list_routes())?;
        let docker = docker.with_bind_address(config.bind_address);
        let git = GitFetcher::new(&config.work_dir).with_known_hosts(config.ssh_known_hosts.clone());
        if let RuntimeKind::Swarm(swarm) = &config.runtime {
            return Agent::on_swarm(config, docker, caddy, git, swarm.clone()).await;
        }
        let runtime: Arc<Docker> = Arc::new(docker.clone());
        let router: Arc<Caddy> = Arc::new(caddy.clone());
        let adapters = Adapters {
            fetcher: Arc::new(git.clone()),
            builder: runtime.clone(),
            runtime: runtime.clone(),
            router: router.clone(),
            ports: Arc::new(PortPool::new(config.port_range, runtime.clone())),
            health: Arc::new(Probe::new(runtime.clone())?.with_host(config.bind_address)),
            state: Arc::new(LabelState::new(runtime.clone(), runtime, router)),
        };
        Ok(Agent { adapters, docker, caddy, git, config: config.clone(), swarm: None })
    }

    /// The same ports with the Swarm runtime: services instead of
    /// containers, health per task, one upstream per task. Images are built
    /// on the manager's daemon; the live and kept marks are service labels.
    async fn on_swarm(
        config: &AgentConfig,
        docker: Docker,
        caddy: Caddy,
        git: GitFetcher,
        swarm: SwarmConfig,
    ) -> Result<Agent> {
        let swarm = Swarm::connect(docker.clone(), swarm).await?;
        let caddy = caddy.with_upstream_hosts(Arc::new(swarm.clone()));
        let runtime: Arc<Swarm> = Arc::new(swarm.clone());
        let images: Arc<SwarmImages> = Arc::new(SwarmImages::new(swarm.clone()));
        let router: Arc<Caddy> = Arc::new(caddy.clone());
        let adapters = Adapters {
            fetcher: Arc::new(git.clone()),
            builder: images.clone(),
            runtime: runtime.clone(),
            router: router.clone(),
            ports: Arc::new(PortPool::new(config.port_range, runtime.clone())),
            health: Arc::new(SwarmProbe::new(swarm.clone())?),
            state: Arc::new(LabelState::new(runtime, images, router)),
        };
        Ok(Agent { adapters, docker, caddy, git, config: config.clone(), swarm: Some(swarm) })
    }

    /// Streams a release's output, the last `tail` lines and, with
    /// `follow`, what comes after: its container's, or on a cluster its
    /// service's tasks' (the last `tail` of each task). What `otturnaut logs`
    /// and the daemon's logs endpoint print.
    pub fn stream_logs(&self, id: &ContainerId, tail: usize, follow: bool) -> LogStream {
        match &self.swarm {
            Some(swarm) => swarm.stream_logs(id, tail, follow),
            None => self.docker.stream_logs(id, tail, follow),
        }
    }

    /// Makes sure our Caddy server exists with the configured listen
    /// addresses, before a deploy routes to it.
    pub async fn prepare(&self) -> Result<()> {
        self.caddy.ensure_server().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &[&str], auto_https: bool) -> AgentConfig {
        AgentConfig { listen: listen.iter().map(|s| s.to_string()).collect(), auto_https, ..AgentConfig::default() }
    }

    #[test]
    fn urls_show_the_port_people_must_use() {
        let d: otturnaut_core::Domain = "shop.example.com".parse().expect("domain");
        assert_eq!(config(&[":80", ":443"], true).url(&d), "https://shop.example.com/");
        assert_eq!(config(&[":80", ":443"], false).url(&d), "http://shop.example.com/");
        assert_eq!(config(&["127.0.0.1:8080"], false).url(&d), "http://shop.example.com:8080/");
        assert_eq!(config(&["127.0.0.1:18080"], true).url(&d), "https://shop.example.com:18080/");
    }
}

//! The Docker Swarm cluster of `cargo xtask services up --swarm N`, as its
//! `cluster.json` describes it. A missing cluster fails the test loudly.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use otturnaut_adapters::docker::Docker;
use otturnaut_adapters::swarm::SwarmConfig;

const HOW: &str = "build it with `cargo xtask services up --swarm 3`";

/// A node: its name and the address its published ports answer on.
#[derive(Clone, Debug)]
pub struct Node {
    /// `ott-swarm-n1`.
    pub name: String,
    /// `10.213.7.11`.
    pub address: IpAddr,
    /// The node's own daemon, `unix:///run/otturnaut-swarm/n1.sock`.
    pub docker_host: String,
}

/// The cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The manager's daemon.
    pub manager: String,
    /// `HOST:PORT` of the registry the nodes pull from.
    pub registry: String,
    /// Every node, the manager first.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// The Swarm runtime's settings for this cluster, with `replicas` tasks per release.
    pub fn config(&self, replicas: u32) -> SwarmConfig {
        SwarmConfig {
            registry: self.registry.clone(),
            replicas: NonZeroU32::new(replicas).unwrap_or_else(|| panic!("replicas must be at least 1")),
        }
    }
}

fn cluster_file() -> PathBuf {
    let state = std::env::var_os("OTTURNAUT_DEV_STATE").map_or_else(|| "/var/lib/otturnaut-dev".into(), PathBuf::from);
    state.join("swarm").join("cluster.json")
}

/// Reads the cluster's description and checks that its manager answers as a
/// Swarm manager with every node ready; panics saying how to build it if not.
pub async fn require_swarm() -> Cluster {
    let path = cluster_file();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no Swarm cluster ({} cannot be read: {e}): {HOW}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON ({e}): {HOW}", path.display()));
    let field = |v: &serde_json::Value, key: &str| -> String {
        v.get(key)
            .and_then(|x| x.as_str())
            .unwrap_or_else(|| panic!("{} has no {key}: {HOW}", path.display()))
            .to_owned()
    };
    let nodes: Vec<Node> = json
        .get("nodes")
        .and_then(|n| n.as_array())
        .unwrap_or_else(|| panic!("{} lists no nodes: {HOW}", path.display()))
        .iter()
        .map(|n| Node {
            name: field(n, "name"),
            address: field(n, "address")
                .parse()
                .unwrap_or_else(|e| panic!("a node address in {}: {e}", path.display())),
            docker_host: field(n, "docker_host"),
        })
        .collect();
    let cluster = Cluster { manager: field(&json, "manager"), registry: field(&json, "registry"), nodes };
    let docker = Docker::connect_to(&cluster.manager)
        .await
        .unwrap_or_else(|e| panic!("the Swarm manager at {} does not answer ({e}): {HOW}", cluster.manager));
    let (ok, ready) = docker_cli(&cluster.manager, &["node", "ls", "--format", "{{.Status}}"]);
    let ready = ready.lines().filter(|l| l.trim() == "Ready").count();
    assert!(ok && ready == cluster.nodes.len(), "{ready} of {} Swarm nodes are ready: {HOW}", cluster.nodes.len());
    drop(docker);
    cluster
}

/// `docker --host HOST …`, for what the adapter does not expose; panics if it cannot run.
pub fn docker_cli(host: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .arg("--host")
        .arg(host)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
